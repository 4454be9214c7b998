"""Writes tests/fixtures/jpeg/corpus/damaged_*.jpg and .png: JPEGs with damaged entropy data
that libjpeg-turbo reads with a warning, and the pixels PIL decoded from each.

libjpeg's recovery decides what a training pipeline saw for such a file: a bit pattern that is
no Huffman code reads as symbol 0 (17 bits dropped), and once a block needs bits past the next
marker it is completed with zeros and the rest of the restart interval is left undecoded (grey
for sequential files, unchanged coefficients for progressive ones). kiln reproduces that; these
files pin it (corpus_equals_pil_exactly in crates/kiln-preprocess/tests/jpeg.rs).

Each file: a shared photo re-encoded small by Pillow (baseline 4:2:0, progressive, grey,
restart intervals), then a few bytes of its scan data overwritten, including 0xFF bytes that
become markers in the middle of the scan. A damaged file PIL cannot read is not kept.

Needs Pillow 13.0.0 (libjpeg-turbo 3.2.0):
    python python/make_jpeg_damaged_fixtures.py [--shared ../shared]
"""

import argparse
import io
import os
import random

from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "jpeg", "corpus")

KINDS = [
    ("base420", dict(quality=85, subsampling=2)),
    ("prog420", dict(quality=85, subsampling=2, progressive=True)),
    ("gray", dict(quality=80)),
    ("base444_rst", dict(quality=90, subsampling=0, restart_marker_blocks=6)),
]


def scan_start(data):
    """Offset just past the first SOS segment."""
    i = 2
    while i < len(data):
        assert data[i] == 0xFF
        m = data[i + 1]
        n = (data[i + 2] << 8) | data[i + 3]
        if m == 0xDA:
            return i + 2 + n
        i += 2 + n
    raise ValueError("no SOS")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                     "shared"))
    args = ap.parse_args()
    d = os.path.join(args.shared, "imagenet-sample")
    photos = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpeg", ".jpg")))
    kept = 0
    for pi, photo in enumerate(photos[10:13]):
        src = Image.open(os.path.join(d, photo)).convert("RGB")
        src = src.resize((96 + 16 * pi, 72 + 8 * pi), Image.BILINEAR)
        for kind, opts in KINDS:
            im = src.convert("L") if kind == "gray" else src
            buf = io.BytesIO()
            im.save(buf, "JPEG", **opts)
            good = buf.getvalue()
            start = scan_start(good)
            for seed in range(3):
                rng = random.Random(1000 * pi + 10 * seed + len(kind))
                data = bytearray(good)
                end = len(data) - 2
                for _ in range(1 + seed):
                    at = rng.randrange(start, end)
                    # Keep the EOI and never write over a restart marker's own bytes.
                    if data[at - 1] == 0xFF or data[at] == 0xFF:
                        continue
                    data[at] = rng.choice([0xFF, 0x00, 0x5A, data[at] ^ 0x81])
                    if data[at] == 0xFF and data[at + 1] == 0x00:
                        data[at + 1] = 0x01
                name = f"damaged_{kind}_{pi}_{seed}"
                try:
                    out = Image.open(io.BytesIO(bytes(data)))
                    out.load()
                    rgb = out.convert("RGB")
                except Exception as e:  # PIL refuses it: not a fixture for this test
                    print(name, "PIL refuses:", e)
                    continue
                open(os.path.join(OUT, name + ".jpg"), "wb").write(bytes(data))
                rgb.save(os.path.join(OUT, name + ".png"))
                kept += 1
    print(kept, "damaged JPEGs written")


if __name__ == "__main__":
    main()

"""Writes crates/kiln-preprocess/tests/fixtures/ccitt/: bilevel TIFFs in every CCITT scheme and
option libtiff writes, plus damaged copies, and pil.tsv with PIL's reading of each.

PIL reads (and, here, writes) CCITT TIFFs through libtiff, so the files cover what kiln's
libtiff-exact fax decoder (crates/kiln-preprocess/src/decode/ccitt.rs) must reproduce:
Modified Huffman (compression 2), Group 3 1-D and 2-D (T4Options bit 0, with fill bits bit 2),
Group 4, FillOrder 2, WhiteIsZero and BlackIsZero, several strips per image. The damaged files
flip bytes inside the strip data, so libtiff's recovery rules (a bad code word ends the row,
runs trimmed or padded to the width, Group 4 keeping the rows before the damage) decide their
pixels; a file libtiff cannot read is recorded with PIL's error, and kiln must refuse it too.

pil.tsv columns: name, "ok" or "error", width, height, sha256 of PIL's
`ImageOps.exif_transpose(im).convert("RGB")` bytes (or the error text).

Needs Pillow (13.0.0, bundling libtiff 4.7.2, made the committed files) and numpy:
    python python/make_ccitt_fixtures.py [--shared ../shared]
"""

import argparse
import hashlib
import os
import random

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "kiln-preprocess", "tests",
                   "fixtures", "ccitt")

# (name, compression, extra tags)
VARIANTS = [
    ("mh", "tiff_ccitt", {}),
    ("mh_fill2", "tiff_ccitt", {266: 2}),
    ("mh_white0", "tiff_ccitt", {262: 0}),
    ("g3_1d", "group3", {}),
    ("g3_1d_fill2", "group3", {266: 2}),
    ("g3_2d", "group3", {292: 1}),
    ("g3_2d_fillbits", "group3", {292: 5}),
    ("g3_2d_white0_strips", "group3", {292: 1, 262: 0, 278: 16}),
    ("g4", "group4", {}),
    ("g4_fill2", "group4", {266: 2}),
    ("g4_white0", "group4", {262: 0}),
    ("g4_strips", "group4", {278: 16}),
]

# Variants also written damaged (bytes flipped inside the strip data), with the seed.
DAMAGED = ["mh", "g3_1d", "g3_2d", "g4", "g4_strips"]


def source(shared):
    """A real photo, thresholded to bilevel: text-like edges and large runs."""
    d = os.path.join(shared, "imagenet-sample")
    name = sorted(f for f in os.listdir(d) if f.lower().endswith((".jpeg", ".jpg")))[3]
    im = Image.open(os.path.join(d, name)).convert("L").resize((301, 203), Image.BILINEAR)
    return im.point(lambda v: 255 if v > 110 else 0).convert("1")


def strip_ranges(path):
    im = Image.open(path)
    return list(zip(im.tag_v2[273], im.tag_v2[279]))


def damage(src, dst, seed):
    data = bytearray(open(src, "rb").read())
    rng = random.Random(seed)
    for off, count in strip_ranges(src):
        # Damage the middle of each strip: a few flipped bytes.
        for _ in range(3):
            i = off + count // 3 + rng.randrange(max(1, count // 3))
            data[i] ^= rng.choice([0x01, 0x10, 0x5A, 0xFF])
    open(dst, "wb").write(bytes(data))


def pil_reading(path):
    try:
        im = Image.open(path)
        rgb = ImageOps.exif_transpose(im).convert("RGB")
        raw = rgb.tobytes()
        return ["ok", str(rgb.width), str(rgb.height), hashlib.sha256(raw).hexdigest()]
    except Exception as e:  # PIL's refusal is the expected result
        return ["error", "0", "0", f"{type(e).__name__}: {e}".replace("\t", " ")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..",
                                                     "shared"))
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    im = source(args.shared)
    rows = []
    for name, comp, extra in VARIANTS:
        info = TiffImagePlugin.ImageFileDirectory_v2()
        for k, v in extra.items():
            info[k] = v
        path = os.path.join(OUT, name + ".tif")
        im.save(path, compression=comp, tiffinfo=info)
        back = Image.open(path)
        for k, v in extra.items():
            got = back.tag_v2.get(k)
            assert got == v or got == (v,), (name, k, got)
        rows.append([name + ".tif"] + pil_reading(path))
        if name in DAMAGED:
            for seed in (1, 2):
                dname = f"{name}_damaged{seed}.tif"
                damage(path, os.path.join(OUT, dname), seed)
                rows.append([dname] + pil_reading(os.path.join(OUT, dname)))
    with open(os.path.join(OUT, "pil.tsv"), "w") as f:
        f.write("# made by python/make_ccitt_fixtures.py\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    for r in rows:
        print(r[0], r[1], r[4][:60] if r[1] == "error" else "")


if __name__ == "__main__":
    main()

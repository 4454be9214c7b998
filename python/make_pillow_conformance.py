"""Records what PIL makes of every file in ../shared/pillow-images (Pillow's own test images).

What it makes: tests/fixtures/pillow/pil_results.tsv, one line per file, sorted by name:

    file  status  width  height  sha256  format  mode  n_frames  orientation  lossy  detail

- status `ok`: PIL read the file; width/height are the size after `ImageOps.exif_transpose`,
  sha256 is the hash of `.convert("RGB").tobytes()` (row-major RGB, 8 bits), detail is empty.
- status `error`: PIL raised; detail is `ExceptionClass: message` (tabs/newlines flattened);
  width/height/sha256 are `-`.
- format, mode, n_frames, orientation: what `Image.open` saw before any conversion (EXIF tag
  0x0112, `-` when absent), to explain the differences in the conformance report.
- lossy: `jpeg` when the pixels come from a JPEG codec (JPEG, MPO, TIFF with JPEG compression),
  `webp` for lossy (VP8) WebP, `-` otherwise: a lossless file must match PIL exactly.

The pipeline is exactly the one training code runs: `Image.open(f)` →
`ImageOps.exif_transpose(im)` → `.convert("RGB")` (which loads the first frame, as PIL does for
animations and multipage files).

Rerun from the repository root (Pillow 13.0.0, the version the shared references were made with):

    /work/venv/bin/python python/make_pillow_conformance.py [--shared ../shared]

The Rust test `crates/kiln-preprocess/tests/pillow_conformance.rs` compares kiln with this file.
"""

import argparse
import hashlib
import os
import sys
import warnings

import PIL
from PIL import Image, ImageOps


def flat(s):
    return " ".join(str(s).split())


def record(path):
    name = os.path.basename(path)
    info = {"format": "-", "mode": "-", "n_frames": "-", "orientation": "-", "lossy": "-"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(path)
            info["format"] = im.format or "-"
            info["mode"] = im.mode
            info["n_frames"] = str(getattr(im, "n_frames", 1))
            try:
                # On a separate `Image.open`: `getexif()` may load the image, and a load that
                # fails there would be swallowed and leave `im` half-loaded, so that the pipeline
                # below "reads" a file the pipeline alone refuses (PIL does not retry a load).
                with Image.open(path) as probe:
                    o = probe.getexif().get(0x0112)
                if o is not None:
                    info["orientation"] = str(o)
            except Exception:
                info["orientation"] = "?"
            if im.format in ("JPEG", "MPO") or (
                im.format == "TIFF" and im.info.get("compression") in ("jpeg", "tiff_jpeg")
            ):
                info["lossy"] = "jpeg"
            elif im.format == "WEBP":
                with open(path, "rb") as f:
                    head = f.read(4096)
                if b"VP8 " in head and b"VP8L" not in head:
                    info["lossy"] = "webp"
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
            data = rgb.tobytes()
        return [name, "ok", str(rgb.width), str(rgb.height), hashlib.sha256(data).hexdigest(),
                info["format"], info["mode"], info["n_frames"], info["orientation"], info["lossy"], ""]
    except Exception as e:  # noqa: BLE001 - PIL's refusal is the recorded result
        return [name, "error", "-", "-", "-", info["format"], info["mode"], info["n_frames"],
                info["orientation"], info["lossy"], flat(f"{type(e).__name__}: {e}".replace(path, name))[:300]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "pillow", "pil_results.tsv"))
    a = ap.parse_args()
    d = os.path.join(a.shared, "pillow-images")
    names = sorted(n for n in os.listdir(d) if not n.endswith(".md"))
    rows = [record(os.path.join(d, n)) for n in names]
    with open(a.out, "w") as f:
        f.write(f"# PIL {PIL.__version__}: Image.open -> ImageOps.exif_transpose -> convert('RGB'); "
                "made by python/make_pillow_conformance.py\n")
        f.write("file\tstatus\twidth\theight\tsha256\tformat\tmode\tn_frames\torientation\tlossy\tdetail\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    ok = sum(r[1] == "ok" for r in rows)
    print(f"{len(rows)} files: {ok} read by PIL, {len(rows) - ok} refused -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

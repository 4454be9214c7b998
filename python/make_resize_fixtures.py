"""Fixtures proving kiln's resizing equals Pillow's and its eval transforms equal torchvision's.

What it makes (in crates/kiln-preprocess/tests/fixtures/resize/):

- ``pillow_cases.txt``: one line per (source, target size, filter) case,
  ``SOURCE W H FILTER KIND SHA256_16``: the first 16 hex digits of the SHA-256 of the raw RGB
  bytes of ``src.resize((W, H), FILTER)`` under Pillow. Sources are real photos from
  ``../shared/reference/decoded/*.png`` (exactly the pixels PIL decoded, so no JPEG decoder is
  involved), whole or cropped; ``sources.txt`` lists them (``ID FILE LEFT TOP RIGHT BOTTOM``).
  Target sizes: random from 1x1 to 2x the source, of five kinds (``squash``: both axes random;
  ``aspect``: torchvision's shorter-side rule; ``up``/``down``: both axes larger/smaller;
  ``oneaxis``: one axis unchanged), plus the sizes issue 18 reported (296x500 -> 224x224, ...).
  Filters: nearest, box, bilinear, hamming, bicubic, lanczos.
- ``torchvision_transforms.jsonl``: whole eval transforms (torchvision.transforms on PIL images:
  Resize(int), Resize((h, w)), CenterCrop smaller and larger than the image, timm's crop_pct rule
  ``Resize(floor(size / crop_pct)) -> CenterCrop(size)``, ToTensor, Normalize), one JSON object per
  case with the SHA-256 of the float32 CHW tensor's little-endian bytes and of the uint8 pixels
  after the geometric steps.

The Rust test ``crates/kiln-preprocess/tests/resize_pillow.rs`` requires kiln's output to hash
equal on every case (float tensors compared bit for bit).

Rerun from the repository root (Pillow 13.0.0, torch 2.15.0, torchvision 0.29.2; ~1 min):

    python python/make_resize_fixtures.py [--shared ../shared]

The sizes come from a fixed seed, so a rerun with the same versions rewrites identical files.
"""

import argparse
import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/kiln-preprocess/tests/fixtures/resize"

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# ID, file in reference/decoded, crop box (None: whole image), random sizes, fixed sizes.
# The large sources are the geometries issue 18 reported; the small crops carry most of the
# random cases because they keep the Rust test fast.
SOURCES = [
    ("gown296x500", "n02669723_academic_gown.png", (0, 40, 296, 540), 12,
     [(224, 224), (224, 378), (112, 500)]),
    ("tench500x375", "n01440764_tench.png", None, 12, [(363, 94), (341, 256), (224, 224)]),
    ("gown375x500", "n02669723_academic_gown.png", (10, 40, 385, 540), 12,
     [(337, 222), (312, 368), (224, 224)]),
    ("gown400x500", "n02669723_academic_gown.png", (5, 40, 405, 540), 12, [(348, 305)]),
    ("tench320x240", "n01440764_tench.png", (90, 60, 410, 300), 12, [(341, 256), (256, 192)]),
    ("soap135x97", "n04254120_soap_dispenser.png", None, 60, [(1, 1), (270, 194)]),
    ("beaker61x43", "n02815834_beaker.png", (130, 80, 191, 123), 85, [(1, 1), (122, 86)]),
    ("terrier23x37", "n02097474_Tibetan_terrier.png", (200, 150, 223, 187), 85, [(1, 1)]),
    ("hook9x6", "n03532672_hook.png", (240, 160, 249, 166), 45, [(1, 1), (18, 12)]),
]


def h16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def shorter_side(w, h, s):
    # torchvision's Resize(int): the long side is int(s * long / short).
    if w <= h:
        return s, max(1, int(s * h / w))
    return max(1, int(s * w / h)), s


def random_size(rng, w, h, kind):
    if kind == "squash":
        return rng.randint(1, 2 * w), rng.randint(1, 2 * h)
    if kind == "aspect":
        return shorter_side(w, h, rng.randint(1, 2 * min(w, h)))
    if kind == "up":
        return rng.randint(w, 2 * w), rng.randint(h, 2 * h)
    if kind == "down":
        return rng.randint(1, w), rng.randint(1, h)
    if rng.random() < 0.5:
        return w, rng.randint(1, 2 * h)
    return rng.randint(1, 2 * w), h


def pillow_cases(decoded: Path):
    rng = random.Random(18)
    kinds = ["squash", "aspect", "up", "down", "oneaxis"]
    src_lines, lines = [], []
    for sid, file, box, n_random, fixed in SOURCES:
        im = Image.open(decoded / file).convert("RGB")
        if box is not None:
            im = im.crop(box)
        l, t, r, b = box if box is not None else (0, 0, *im.size)
        src_lines.append(f"{sid} {file} {l} {t} {r} {b}")
        w, h = im.size
        sizes = [(sw, sh, "issue") for sw, sh in fixed]
        for i in range(n_random):
            kind = kinds[i % len(kinds)]
            sw, sh = random_size(rng, w, h, kind)
            sizes.append((sw, sh, kind))
        for sw, sh, kind in sizes:
            for fname, f in FILTERS.items():
                out = im.resize((sw, sh), f)
                assert out.mode == "RGB" and out.size == (sw, sh)
                lines.append(f"{sid} {sw} {sh} {fname} {kind} {h16(out.tobytes())}")
    return src_lines, lines


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
TFLITE = ([127 / 255] * 3, [128 / 255] * 3)


def transform_cases(decoded: Path):
    import torch
    from torchvision import transforms as T

    interp = {
        "nearest": T.InterpolationMode.NEAREST,
        "bilinear": T.InterpolationMode.BILINEAR,
        "bicubic": T.InterpolationMode.BICUBIC,
        "lanczos": T.InterpolationMode.LANCZOS,
    }
    # (name, resize: ("short", s) | ("size", h, w) | None, crop (h, w) | None, interpolation,
    #  normalisation)
    recipes = [
        ("resize256_crop224_bilinear", ("short", 256), (224, 224), "bilinear", IMAGENET),
        ("resize160_crop128_bicubic", ("short", 160), (128, 128), "bicubic", TFLITE),
        ("resize97_crop96_nearest", ("short", 97), (96, 96), "nearest", IMAGENET),
        ("resize150_crop129x131_lanczos", ("short", 150), (129, 131), "lanczos", IMAGENET),
        ("squash224_bilinear", ("size", 224, 224), None, "bilinear", IMAGENET),
        ("squash224_bicubic", ("size", 224, 224), None, "bicubic", IMAGENET),
        ("squash224_nearest", ("size", 224, 224), None, "nearest", IMAGENET),
        ("squash200x300_lanczos", ("size", 200, 300), None, "lanczos", TFLITE),
        ("squash180x260_crop224_bilinear", ("size", 180, 260), (224, 224), "bilinear", IMAGENET),
        ("crop_larger_300", None, (300, 300), "bilinear", IMAGENET),
        ("crop_smaller_99x101", None, (99, 101), "bilinear", IMAGENET),
        # timm's eval transform: scale_size = floor(img_size / crop_pct), then CenterCrop.
        ("timm_crop_pct_0.875_bicubic", ("short", math.floor(224 / 0.875)), (224, 224), "bicubic",
         IMAGENET),
        ("timm_crop_pct_0.95_bicubic", ("short", math.floor(224 / 0.95)), (224, 224), "bicubic",
         IMAGENET),
        ("timm_crop_pct_0.9_bilinear", ("short", math.floor(160 / 0.9)), (160, 160), "bilinear",
         IMAGENET),
    ]
    files = [
        "n04254120_soap_dispenser.png",  # 135x97: CenterCrop larger than the image, upscaling
        "n02815834_beaker.png",  # 320x221
        "n01440764_tench.png",  # 500x375
        "n02669723_academic_gown.png",  # 413x580, portrait
        "n03584829_iron.png",  # 100x100
    ]
    rows = []
    for file in files:
        im = Image.open(decoded / file).convert("RGB")
        for name, resize, crop, ip, (mean, std) in recipes:
            steps = []
            if resize is not None:
                size = resize[1] if resize[0] == "short" else [resize[1], resize[2]]
                steps.append(T.Resize(size, interpolation=interp[ip]))
            if crop is not None:
                steps.append(T.CenterCrop(list(crop)))
            geo = T.Compose(steps)(im) if steps else im
            tensor = T.Normalize(mean, std)(T.ToTensor()(geo))
            assert tensor.dtype == torch.float32
            data = tensor.contiguous().numpy().astype("<f4").tobytes()
            rows.append({
                "case": name,
                "file": file,
                "resize_shorter_side": resize[1] if resize and resize[0] == "short" else None,
                "resize_size": [resize[1], resize[2]] if resize and resize[0] == "size" else None,
                "center_crop": list(crop) if crop else None,
                "interpolation": ip,
                "mean": mean,
                "std": std,
                "shape": list(tensor.shape),
                "pixels_sha256": hashlib.sha256(np.asarray(geo).tobytes()).hexdigest(),
                "tensor_sha256": hashlib.sha256(data).hexdigest(),
            })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = ap.parse_args()
    decoded = Path(args.shared) / "reference/decoded"
    import torch
    import torchvision

    OUT.mkdir(parents=True, exist_ok=True)
    src_lines, lines = pillow_cases(decoded)
    header = (f"# Pillow {PIL.__version__}: SOURCE W H FILTER KIND SHA256_16 of src.resize((W, H), "
              f"FILTER).tobytes(); made by python/make_resize_fixtures.py\n")
    (OUT / "sources.txt").write_text(
        "# ID FILE(reference/decoded) LEFT TOP RIGHT BOTTOM (PIL crop box)\n"
        + "\n".join(src_lines) + "\n")
    (OUT / "pillow_cases.txt").write_text(header + "\n".join(lines) + "\n")
    rows = transform_cases(decoded)
    with open(OUT / "torchvision_transforms.jsonl", "w") as f:
        f.write(json.dumps({"versions": {"pillow": PIL.__version__, "torch": torch.__version__,
                                         "torchvision": torchvision.__version__}}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(lines)} Pillow cases, {len(rows)} torchvision transform cases -> {OUT}")


if __name__ == "__main__":
    main()

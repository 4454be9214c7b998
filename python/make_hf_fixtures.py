"""Fixtures for kiln's tensor-path resize and for Hugging Face transformers models.

What it makes (under tests/fixtures/hf/):

* ``tensor_resize.safetensors``: a deterministic 3x47x61 uint8 image (``input``) and what
  ``torchvision.transforms.v2.functional.resize`` (PyTorch's CPU ``interpolate`` kernels) makes
  of it, for every mode (nearest, nearest-exact, bilinear, bicubic, lanczos), ``antialias``
  True/False and five output sizes (down, up, mixed), both on the uint8 tensor (``u8/...``: the
  result torchvision rounds back to uint8) and on the float32 tensor ``input / 255``
  (``f32/...``).
* ``mobilenet_v2_*/``: transformers ``MobileNetV2ForImageClassification`` models (see
  ``MOBILENET_V2``: the default config with Google's 1001 classes and TensorFlow "SAME" padding,
  a 0.5 multiplier with torch padding, a 0.35 multiplier at an odd input size), each with its own
  ``weights.json`` recipe under transformers' names, the configs ``save_pretrained`` wrote for the
  model and its ``MobileNetV2ImageProcessor``, and ``expected.json`` as below.
* ``weights.json``: the "kiln-fixture-v1" recipe (see make_parity_fixtures.py) of a small
  transformers ``ResNetForImageClassification`` (resnet18 layout, 5 classes), listed under
  transformers' own tensor names; the Rust tests regenerate the weights bit for bit from it
  instead of committing a 45 MB file.
* ``MODEL/config.json`` + ``MODEL/preprocessor_config.json`` for each model below, written by
  transformers' ``save_pretrained`` (the model's weights file is dropped, see above), and
  ``MODEL/expected.json``: for each backend (``pil``: the ``...ImageProcessorPil`` class;
  ``torchvision``: the default ``...ImageProcessor`` class of transformers 5) and each photo
  (PIL-decoded PNGs from ../shared/reference/decoded/, so no JPEG decoder is involved), the
  model's softmax probabilities on the processor's ``pixel_values``, the FNV-1a 64 hash of the
  uint8 image after resize + crop (the step before rescale/normalise), and the processor that
  ran.

Rerun (needs torch, torchvision, transformers 5.x, Pillow, numpy, safetensors; CPU only):

    python python/make_hf_fixtures.py [--shared ../shared]

Figures may move in the last bits between torch builds; the recipe and the images never do.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file
from torchvision.transforms.v2 import functional as tvF

sys.path.insert(0, str(Path(__file__).parent))
from make_parity_fixtures import RECIPE, f32, fnv1a64, recipe_tensor  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hf"

PHOTOS = [
    "n01440764_tench.png",  # 500x375: odd long-side crop offsets
    "n02669723_academic_gown.png",  # 413x580, portrait
    "n02815834_beaker.png",  # 320x221
    "n03584829_iron.png",  # 100x100: upscaled
]

# ------------------------------------------------------------------------------------------
# Tensor resize


def tensor_resize_fixture() -> None:
    rng = np.random.default_rng(20)
    img = rng.integers(0, 256, size=(3, 47, 61), dtype=np.uint8)
    # Smooth regions as well as noise, so interpolation is exercised on both.
    yy, xx = np.mgrid[0:47, 0:61]
    img[1] = ((xx * 4 + yy * 2) % 256).astype(np.uint8)
    t = torch.from_numpy(img)
    tf = t.to(torch.float32) / 255.0
    out = {"input": img}
    sizes = [(23, 31), (10, 13), (60, 70), (60, 30), (47, 20)]
    modes = {
        "nearest": tvF.InterpolationMode.NEAREST,
        "nearest-exact": tvF.InterpolationMode.NEAREST_EXACT,
        "bilinear": tvF.InterpolationMode.BILINEAR,
        "bicubic": tvF.InterpolationMode.BICUBIC,
        "lanczos": tvF.InterpolationMode.LANCZOS,
    }
    for name, mode in modes.items():
        for aa in (True, False):
            if name.startswith("nearest") and aa:
                continue  # torchvision ignores antialias for nearest
            if name == "lanczos" and not aa:
                continue  # refused by torchvision
            for h, w in sizes:
                key = f"{name}/{'aa' if aa else 'noaa'}/{h}x{w}"
                out[f"u8/{key}"] = tvF.resize(t, [h, w], interpolation=mode, antialias=aa).numpy()
                out[f"f32/{key}"] = tvF.resize(tf, [h, w], interpolation=mode, antialias=aa).numpy()
    save_file(out, str(OUT / "tensor_resize.safetensors"),
              metadata={"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()})
    print(f"tensor_resize.safetensors: {len(out) - 1} cases")


# ------------------------------------------------------------------------------------------
# transformers models

NUM_LABELS = 5
MEAN_IMAGENET = [0.485, 0.456, 0.406]
STD_IMAGENET = [0.229, 0.224, 0.225]

# name -> (processor family, kwargs)
MODELS = {
    "convnext_224_bicubic": ("ConvNext", dict(size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
                                              image_mean=MEAN_IMAGENET, image_std=STD_IMAGENET)),
    "convnext_224_bilinear_crop090": ("ConvNext", dict(size={"shortest_edge": 224}, crop_pct=0.9, resample=2,
                                                       image_mean=MEAN_IMAGENET, image_std=STD_IMAGENET)),
    "convnext_384_warp": ("ConvNext", dict(size={"shortest_edge": 384}, resample=3,
                                           image_mean=MEAN_IMAGENET, image_std=STD_IMAGENET)),
    "vit_224_nearest": ("ViT", dict(size={"height": 224, "width": 224}, resample=0)),
    "vit_224_lanczos": ("ViT", dict(size={"height": 224, "width": 224}, resample=1)),
    "vit_224_bilinear": ("ViT", dict(size={"height": 224, "width": 224}, resample=2, do_center_crop=False)),
    "vit_200x240_bicubic": ("ViT", dict(size={"height": 200, "width": 240}, resample=3)),
}


def processor_classes(family: str):
    if family == "ConvNext":
        from transformers import ConvNextImageProcessor as Tv
        from transformers.models.convnext.image_processing_pil_convnext import ConvNextImageProcessorPil as Pil
    else:
        from transformers import ViTImageProcessor as Tv
        from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil as Pil
    return {"torchvision": Tv, "pil": Pil}


def recipe_ab(name: str, shape) -> tuple[float, float]:
    """The (a, b) of make_parity_fixtures.choose_ab, for transformers' ResNet names."""
    if len(shape) >= 2:
        fan_in = float(np.prod(shape[1:], dtype=np.float64))
        return 0.0, f32(math.sqrt(6.0 / fan_in))
    module, _, leaf = name.rpartition(".")
    # The last batch norm of each residual branch (BasicBlock: layer.1) starts small.
    last_bn = module.endswith("layer.1.normalization")
    if leaf == "weight":
        return (0.2, f32(0.05)) if last_bn else (1.0, 0.25)
    if leaf in ("bias", "running_mean"):
        return 0.0, f32(0.1)
    if leaf == "running_var":
        return 1.0, 0.5
    raise ValueError(f"{name}: no recipe rule")


def make_model():
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic",
                       embedding_size=64, num_labels=NUM_LABELS,
                       id2label={i: f"class {i}" for i in range(NUM_LABELS)},
                       label2id={f"class {i}": i for i in range(NUM_LABELS)})
    model = ResNetForImageClassification(cfg).eval()
    sd = model.state_dict()
    entries, new_sd = [], {}
    for name, t in sd.items():
        if not t.is_floating_point():
            new_sd[name] = t
            continue
        shape = list(t.shape)
        a, b = recipe_ab(name, shape)
        new_sd[name] = torch.from_numpy(recipe_tensor(name, shape, a, b))
        entries.append({"name": name, "shape": shape, "a": f32(a), "b": f32(b)})
    model.load_state_dict(new_sd, strict=True)
    return model, entries


# name -> (MobileNetV2Config kwargs, MobileNetV2ImageProcessor kwargs)
MOBILENET_V2 = {
    # google/mobilenet_v2_1.0_224's layout: defaults (tf_padding, eps 1e-3), 1001 classes.
    "mobilenet_v2_default_1001": (dict(num_labels=1001), dict()),
    "mobilenet_v2_050_torchpad": (dict(depth_multiplier=0.5, tf_padding=False, layer_norm_eps=1e-5,
                                       num_labels=NUM_LABELS), dict()),
    # An odd crop, so TensorFlow's padding is symmetric at some stride-2 layers and not others.
    "mobilenet_v2_035_odd": (dict(depth_multiplier=0.35, num_labels=NUM_LABELS),
                             dict(size={"shortest_edge": 170}, crop_size={"height": 147, "width": 147},
                                  resample=3)),
}


def make_mobilenet_v2(cfg_kwargs):
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    n = cfg_kwargs["num_labels"]
    names = {i: f"class {i}" for i in range(n)}
    cfg = MobileNetV2Config(**cfg_kwargs, id2label=names, label2id={v: k for k, v in names.items()})
    model = MobileNetV2ForImageClassification(cfg).eval()
    residual = {f"mobilenet_v2.layer.{i}.reduce_1x1.normalization"
                for i, layer in enumerate(model.mobilenet_v2.layer) if layer.use_residual}
    sd = model.state_dict()
    entries, new_sd = [], {}
    for name, t in sd.items():
        if not t.is_floating_point():
            new_sd[name] = t
            continue
        shape = list(t.shape)
        module, _, leaf = name.rpartition(".")
        if len(shape) >= 2:
            a, b = 0.0, f32(math.sqrt(6.0 / float(np.prod(shape[1:], dtype=np.float64))))
        elif leaf == "weight":
            a, b = (0.2, f32(0.05)) if module in residual else (1.0, 0.25)
        elif leaf in ("bias", "running_mean"):
            a, b = 0.0, f32(0.1)
        elif leaf == "running_var":
            a, b = 1.0, 0.5
        else:
            raise ValueError(f"{name}: no recipe rule")
        new_sd[name] = torch.from_numpy(recipe_tensor(name, shape, a, b))
        entries.append({"name": name, "shape": shape, "a": f32(a), "b": f32(b)})
    model.load_state_dict(new_sd, strict=True)
    return model, entries


def fnv_hex(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & ((1 << 64) - 1)
    return f"{h:016x}"


def run_processor(proc, img: Image.Image):
    """pixel_values and the uint8 HWC image the processor had before rescale/normalise."""
    captured = []
    if proc.backend == "torchvision":
        orig = proc.rescale_and_normalize

        def cap(images, *a, **k):
            captured.append(images[0].permute(1, 2, 0).contiguous().numpy())
            return orig(images, *a, **k)

        proc.rescale_and_normalize = cap
    else:
        orig = proc.rescale

        def cap(image, *a, **k):
            captured.append(np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0)))
            return orig(image, *a, **k)

        proc.rescale = cap
    pv = proc(images=img, return_tensors="pt")["pixel_values"]
    (u8,) = captured
    assert u8.dtype == np.uint8, u8.dtype
    return pv, u8


def hf_fixtures(shared: Path) -> None:
    import transformers
    from transformers import MobileNetV2ImageProcessor
    from transformers.models.mobilenet_v2.image_processing_pil_mobilenet_v2 import (
        MobileNetV2ImageProcessorPil)

    resnet, entries = make_model()
    (OUT / "weights.json").write_text(json.dumps({
        "recipe": RECIPE, "transformers": transformers.__version__,
        "tensors": entries}, indent=0) + "\n")
    photos = {p: Image.open(shared / "reference" / "decoded" / p).convert("RGB") for p in PHOTOS}
    jobs = [(name, resnet, processor_classes(family), kwargs, None)
            for name, (family, kwargs) in MODELS.items()]
    for name, (cfg_kwargs, kwargs) in MOBILENET_V2.items():
        model, entries = make_mobilenet_v2(cfg_kwargs)
        jobs.append((name, model, {"torchvision": MobileNetV2ImageProcessor, "pil": MobileNetV2ImageProcessorPil},
                     kwargs, entries))
    for name, model, classes, kwargs, own_weights in jobs:
        d = OUT / name
        if d.exists():
            shutil.rmtree(d)
        model.save_pretrained(d)
        for f in d.iterdir():
            if f.name not in ("config.json",):
                f.unlink()
        if own_weights is not None:
            (d / "weights.json").write_text(json.dumps({
                "recipe": RECIPE, "transformers": transformers.__version__,
                "tensors": own_weights}, indent=0) + "\n")
        classes["torchvision"](**kwargs).save_pretrained(d)
        expected = {"transformers": transformers.__version__, "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "backends": {}}
        for backend, cls in classes.items():
            proc = cls(**kwargs)
            rows = {}
            for p, img in photos.items():
                pv, u8 = run_processor(proc, img)
                with torch.no_grad():
                    probs = torch.softmax(model(pixel_values=pv).logits, -1)[0]
                rows[p] = {"probs": [float(x) for x in probs], "geometry_shape": list(u8.shape),
                           "geometry_fnv1a64": fnv_hex(u8.tobytes()),
                           "pixel_values_sum": float(pv.double().sum())}
            expected["backends"][backend] = {"processor": type(proc).__name__, "images": rows}
        (d / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        tops = [max(r["probs"]) for b in expected["backends"].values() for r in b["images"].values()]
        print(f"{name}: top-1 probabilities {min(tops):.3f}..{max(tops):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared")
    ap.add_argument("--only", choices=["resize", "hf"])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.only in (None, "resize"):
        tensor_resize_fixture()
    if args.only in (None, "hf"):
        hf_fixtures(args.shared)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Export a trained PyTorch classifier for kiln: weights plus the training spec.

kiln takes every preprocessing constant (resize, crop, scaling, mean/std) from a *training spec*
written at export time, never from guesses at inference time. This module derives that spec from
the very transform objects used to evaluate the model, so the two cannot drift apart.

Library use::

    import torchvision
    from torchvision import transforms
    from kiln_export import export

    model = torchvision.models.resnet50(num_classes=10)
    model.load_state_dict(torch.load("trained.pth", weights_only=True))
    eval_tf = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    export(model, eval_tf, "resnet50-pets.safetensors", "resnet50", labels=class_names)

writes

* ``resnet50-pets.safetensors``: the state dict (``num_batches_tracked`` dropped, tensors made
  contiguous) with the spec JSON embedded in the header metadata under ``kiln.spec``;
* ``resnet50-pets.spec.json``: the same spec, for people and tools that read JSON;
* ``resnet50-pets.labels.txt``: one label per line, when labels are given.

Command line (loads a state dict into a torchvision architecture, then exports)::

    python python/kiln_export.py --arch resnet50 --state-dict trained.pth --out resnet50.safetensors \\
        [--num-classes 10] [--labels labels.txt] [--arch-param width_mult=0.5] \\
        [--resize 256 | --resize H W] [--crop 224 | --crop H W] [--interpolation bilinear] \\
        [--mean 0.485 0.456 0.406] [--std 0.229 0.224 0.225]

Without transform flags the CLI builds torchvision's standard ImageNet eval transform
(``Resize(256)``, ``CenterCrop(224)``, ``ToTensor()``, ``Normalize(ImageNet mean/std)``) as a
``transforms.Compose`` and derives the spec from that object, like the library does.

Understood transforms (torchvision ``transforms`` and ``transforms.v2``): ``Compose``,
``Resize`` (no ``max_size``), ``CenterCrop``, ``ToTensor``, ``PILToTensor``/``ToImage`` followed by
``ConvertImageDtype``/``ToDtype(float, scale=True)``, ``Normalize``, and the weights presets'
``ImageClassification`` (``Weights.transforms()``). Anything else -- random augmentation, ``Pad``,
``Grayscale``, ``Lambda``, ``Resize(max_size=...)``, ... -- raises ``ValueError`` naming it,
because kiln could not reproduce it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import numbers
import sys
from pathlib import Path
from typing import Any

import torch

SPEC_METADATA_KEY = "kiln.spec"
SPEC_VERSION = 1
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

__all__ = ["export", "spec_from_transform", "build_spec", "num_classes_of", "SPEC_METADATA_KEY"]


# --------------------------------------------------------------------------------------------
# Transform -> spec
# --------------------------------------------------------------------------------------------


def _interpolation_name(mode: Any, where: str) -> str:
    from torchvision.transforms import InterpolationMode

    if isinstance(mode, int) and not isinstance(mode, bool):  # legacy PIL constants
        pil = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}
        if mode in pil:
            return pil[mode]
    names = {
        InterpolationMode.NEAREST: "nearest",
        InterpolationMode.BILINEAR: "bilinear",
        InterpolationMode.BICUBIC: "bicubic",
        InterpolationMode.LANCZOS: "lanczos",
    }
    if mode in names:
        return names[mode]
    raise ValueError(f"{where}: interpolation {mode!r} is not supported by kiln "
                     "(use NEAREST, BILINEAR, BICUBIC or LANCZOS)")


def _hw(size: Any, where: str) -> list[int]:
    """A crop size as [h, w]."""
    if isinstance(size, numbers.Integral):
        return [int(size), int(size)]
    size = list(size)
    if len(size) == 1:
        return [int(size[0]), int(size[0])]
    if len(size) == 2:
        return [int(size[0]), int(size[1])]
    raise ValueError(f"{where}: size {size!r} is not an int or (h, w)")


def _resize_entry(size: Any, interpolation: Any, antialias: Any, max_size: Any, where: str) -> dict:
    if max_size is not None:
        raise ValueError(f"{where}: Resize with max_size={max_size} cannot be expressed in a kiln spec")
    entry: dict[str, Any] = {}
    if isinstance(size, numbers.Integral):
        entry["shorter_side"] = int(size)
    else:
        size = list(size)
        if len(size) == 1:
            entry["shorter_side"] = int(size[0])
        elif len(size) == 2:
            entry["size"] = [int(size[0]), int(size[1])]
        else:
            raise ValueError(f"{where}: size {size!r} is not an int or (h, w)")
    entry["interpolation"] = _interpolation_name(interpolation, where)
    # torchvision: antialias None/True both antialias (and PIL inputs always do).
    entry["antialias"] = antialias is None or bool(antialias)
    return entry


def _float_list(v: Any, where: str) -> list[float]:
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, numbers.Real):
        v = [v]
    v = [float(x) for x in v]
    if len(v) == 1:
        v = v * 3
    if len(v) != 3:
        raise ValueError(f"{where}: expected 1 or 3 channel values, got {v}")
    return v


def _flatten(transform: Any) -> list:
    from torchvision import transforms as T

    composes = [T.Compose]
    try:
        from torchvision.transforms import v2

        composes.append(v2.Compose)
    except ImportError:  # pragma: no cover - old torchvision
        pass
    if isinstance(transform, tuple(composes)):
        return [s for t in transform.transforms for s in _flatten(t)]
    if isinstance(transform, torch.nn.Sequential):
        return [s for t in transform for s in _flatten(t)]
    if isinstance(transform, (list, tuple)):
        return [s for t in transform for s in _flatten(t)]
    return [transform]


def _classes(name: str) -> tuple:
    """The v1 and (if present) v2 class called `name`."""
    from torchvision import transforms as T

    out = [getattr(T, name)] if hasattr(T, name) else []
    try:
        from torchvision.transforms import v2

        if hasattr(v2, name):
            out.append(getattr(v2, name))
    except ImportError:  # pragma: no cover
        pass
    return tuple(out)


def spec_from_transform(transform: Any) -> dict:
    """The preprocessing fields of a kiln spec, derived from a torchvision eval transform.

    Returns a dict with ``input_size``, optional ``resize``, optional ``center_crop``, ``scale``,
    ``mean``, ``std``, ``channel_order`` and ``layout``. Raises ``ValueError`` naming any transform
    that kiln cannot reproduce exactly.
    """
    from torchvision.transforms._presets import ImageClassification

    resize: dict | None = None
    crop: list[int] | None = None
    scale: str | None = None  # None: still an image; "uint8": uint8 tensor; else the final scale
    mean = std = None

    def refuse(t: Any, why: str) -> ValueError:
        return ValueError(f"cannot express {type(t).__name__} in a kiln spec: {why}")

    for t in _flatten(transform):
        name = type(t).__name__
        if isinstance(t, ImageClassification):
            if resize or crop or scale or mean is not None:
                raise refuse(t, "a weights preset must be the whole transform")
            if t.resize_size is not None:
                resize = _resize_entry(t.resize_size, t.interpolation, t.antialias, None, name)
            crop = _hw(t.crop_size, name)
            scale = "unit"
            mean, std = _float_list(t.mean, name), _float_list(t.std, name)
        elif isinstance(t, _classes("Resize")):
            if resize is not None:
                raise refuse(t, "more than one Resize")
            if crop is not None:
                raise refuse(t, "Resize after CenterCrop")
            if scale not in (None, "uint8"):
                raise refuse(t, "Resize after conversion to float; resize the image before ToTensor")
            resize = _resize_entry(t.size, t.interpolation, getattr(t, "antialias", True),
                                   getattr(t, "max_size", None), name)
        elif isinstance(t, _classes("CenterCrop")):
            if crop is not None:
                raise refuse(t, "more than one CenterCrop")
            crop = _hw(t.size, name)
        elif isinstance(t, _classes("ToTensor")):
            if scale is not None:
                raise refuse(t, f"image already converted ({scale})")
            scale = "unit"
        elif isinstance(t, _classes("PILToTensor") + _classes("ToImage")):
            if scale is not None:
                raise refuse(t, f"image already converted ({scale})")
            scale = "uint8"
        elif isinstance(t, _classes("ConvertImageDtype") + _classes("ToDtype")):
            dtype = t.dtype
            if isinstance(dtype, dict):
                raise refuse(t, "per-type dtype dicts are not supported; pass a single dtype")
            if not dtype.is_floating_point:
                raise refuse(t, f"conversion to {dtype} (kiln feeds float input)")
            rescales = getattr(t, "scale", True)  # ConvertImageDtype always rescales
            if scale == "uint8":
                scale = "unit" if rescales else "raw"
            elif scale is None:
                raise refuse(t, "dtype conversion before PILToTensor/ToImage")
            # float -> float: a no-op for values
        elif isinstance(t, _classes("Normalize")):
            if scale in (None, "uint8"):
                raise refuse(t, "Normalize before conversion to float")
            if mean is not None:
                raise refuse(t, "more than one Normalize")
            mean, std = _float_list(t.mean, name), _float_list(t.std, name)
        elif name.startswith("Random"):
            raise refuse(t, "random transforms are training-time augmentation; pass the eval transform")
        else:
            raise refuse(t, "kiln's preprocessing has no equivalent for it")

    if scale is None or scale == "uint8":
        raise ValueError("the transform never produces a float tensor "
                         "(add ToTensor(), or PILToTensor() + ConvertImageDtype(torch.float))")
    if mean is None:
        mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if any(not s > 0 for s in std):
        raise ValueError(f"Normalize std {std} must be all > 0")

    if crop is not None:
        input_size = crop
        if resize is not None:
            limit = [resize["shorter_side"]] * 2 if "shorter_side" in resize else resize["size"]
            if crop[0] > limit[0] or crop[1] > limit[1]:
                raise ValueError(f"CenterCrop {crop} is larger than the Resize ({resize}); "
                                 "torchvision would pad, which kiln does not")
    elif resize is not None and "size" in resize:
        input_size = resize["size"]
    else:
        raise ValueError("the transform does not fix the input size: add a CenterCrop, "
                         "or use Resize((h, w)) with an exact size")

    out: dict[str, Any] = {"input_size": input_size}
    if resize is not None:
        out["resize"] = resize
    if crop is not None:
        out["center_crop"] = crop
    out.update({"scale": scale, "mean": mean, "std": std, "channel_order": "rgb", "layout": "nchw"})
    return out


# --------------------------------------------------------------------------------------------
# Model -> spec, export
# --------------------------------------------------------------------------------------------


def num_classes_of(model: torch.nn.Module) -> int:
    """Outputs of the final Linear: ``model.fc`` (ResNet family) or ``model.classifier[-1]``."""
    fc = getattr(model, "fc", None)
    if isinstance(fc, torch.nn.Linear):
        return fc.out_features
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, torch.nn.Sequential) and isinstance(classifier[-1], torch.nn.Linear):
        return classifier[-1].out_features
    if isinstance(classifier, torch.nn.Linear):
        return classifier.out_features
    raise ValueError(f"cannot find the classifier of {type(model).__name__}: "
                     "expected a Linear `fc` or `classifier[-1]`")


def build_spec(model: torch.nn.Module, transform: Any, architecture: str,
               arch_params: dict | None = None, labels_name: str | None = None) -> dict:
    """The full kiln spec (a JSON-ready dict) for `model` evaluated with `transform`."""
    import torchvision

    if not architecture or not architecture.strip():
        raise ValueError("architecture must be a name such as 'resnet50'")
    pre = spec_from_transform(transform)
    spec: dict[str, Any] = {
        "kiln_spec": SPEC_VERSION,
        "architecture": architecture,
        "arch_params": dict(arch_params or {}),
        "num_classes": num_classes_of(model),
    }
    if labels_name is not None:
        spec["labels"] = labels_name
    spec.update(pre)
    spec["source"] = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "exported_by": "kiln_export.py",
    }
    return spec


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix == ".safetensors" else path


def export(model: torch.nn.Module, transform: Any, path: str | Path, architecture: str,
           arch_params: dict | None = None, labels: list[str] | None = None,
           labels_file: str | Path | None = None) -> dict:
    """Writes `path` (safetensors with the spec embedded), `<stem>.spec.json` and, when labels are
    given (as a list or as a file with one label per line), `<stem>.labels.txt`. Returns the spec.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if labels is not None and labels_file is not None:
        raise ValueError("give labels or labels_file, not both")
    if labels_file is not None:
        labels = Path(labels_file).read_text(encoding="utf-8").splitlines()
        while labels and not labels[-1].strip():
            labels.pop()
    labels_path = None
    if labels is not None:
        labels = [str(l) for l in labels]
        n = num_classes_of(model)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for a model with {n} classes")
        if any("\n" in l or "\r" in l for l in labels):
            raise ValueError("labels must not contain line breaks")
        labels_path = _stem(path).with_name(_stem(path).name + ".labels.txt")

    model.eval()
    spec = build_spec(model, transform, architecture, arch_params,
                      labels_path.name if labels_path is not None else None)
    spec_text = json.dumps(spec, indent=2)

    tensors = {k: v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={SPEC_METADATA_KEY: spec_text})
    spec_path = _stem(path).with_name(_stem(path).name + ".spec.json")
    spec_path.write_text(spec_text + "\n", encoding="utf-8")
    if labels_path is not None:
        labels_path.write_text("".join(l + "\n" for l in labels), encoding="utf-8")
    return spec


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# Where training code puts the weights in a checkpoint dict, the model's own before EMA copies.
_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "state_dict_ema")


def _load_state_dict(path: str, expected=None, strip_prefix: str | None = None) -> dict:
    """Reads the weights as training code saves them and fits their names to ``expected``.

    Accepts a plain state dict, or a checkpoint dict holding one under one of ``_WEIGHT_KEYS``
    (the first present wins; the others are named on stderr). Keys carrying a wrapper prefix
    (``module.`` from DataParallel/DDP, ``backbone.``, ``model.``, ``net.``, ``encoder.``, or
    several) are renamed: ``strip_prefix`` when given, else the shortest prefix after which every
    expected key is present. Keys outside that prefix are dropped and named on stderr. When
    nothing fits, raises ``ValueError`` naming the first unmatched keys and the nearest expected.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        found = [k for k in _WEIGHT_KEYS if isinstance(sd.get(k), dict)]
        if found:
            if len(found) > 1:
                print(f"kiln_export: {path}: using the weights under {found[0]!r} "
                      f"(also present: {', '.join(found[1:])})", file=sys.stderr)
            sd = sd[found[0]]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict (and no dict of tensors under "
                         f"{', '.join(_WEIGHT_KEYS)})")
    if expected is None:
        prefix = strip_prefix or ("module." if sd and all(k.startswith("module.") for k in sd) else "")
    else:
        expected = set(expected)
        prefix = strip_prefix if strip_prefix is not None else _find_prefix(sd, expected)
        if prefix is None:
            # Report against the prefix that fits best, so the message names what is really missing.
            best = max(_prefix_candidates(sd, expected) + [""],
                       key=lambda p: sum(p + k in sd for k in expected))
            present = sum(best + k in sd for k in expected)
            missing = sorted(k for k in expected if best + k not in sd)[:5]
            unmatched = sorted(k for k in sd if not (k.startswith(best) and k[len(best):] in expected))[:5]
            near = {k: difflib.get_close_matches(best + k, list(sd), n=1, cutoff=0.3) for k in missing}
            raise ValueError(
                f"{path}: the keys do not fit the architecture and no wrapper prefix makes them fit "
                f"(best: prefix {best!r}, {present} of {len(expected)} expected keys present); "
                "expected keys missing (nearest in the file): "
                + ", ".join(f"{k} ({n[0] if n else '-'})" for k, n in near.items())
                + f"; first unmatched keys: {unmatched}; pass --strip-prefix P to choose the prefix")
    if prefix:
        dropped = [k for k in sd if not k.startswith(prefix)]
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        print(f"kiln_export: {path}: stripped the prefix {prefix!r} from {len(sd)} keys"
              + (f"; dropped {len(dropped)} keys outside it (first: {dropped[0]})" if dropped else ""),
              file=sys.stderr)
    return sd


def _prefix_candidates(sd: dict, expected: set) -> list:
    """Prefixes that turn some key of ``sd`` into an expected key, shortest first."""
    found = set()
    for e in expected:
        found.update(k[: -len(e)] for k in sd if k.endswith("." + e))
    return sorted(found, key=lambda p: (len(p), p))


def _find_prefix(sd: dict, expected: set) -> str | None:
    """The shortest prefix after which every expected key is in ``sd`` ("" if none is needed)."""
    if expected <= set(sd):
        return ""
    for p in _prefix_candidates(sd, expected):
        if all(p + k in sd for k in expected):
            return p
    return None


def main(argv: list[str] | None = None) -> int:
    import torchvision
    from torchvision import transforms as T

    ap = argparse.ArgumentParser(description="Export a torchvision classifier's weights and kiln spec.")
    ap.add_argument("--arch", required=True, help="torchvision model function, e.g. resnet50, mobilenet_v2")
    ap.add_argument("--state-dict", required=True, help="trained weights (.pth/.pt state dict or .safetensors)")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--labels", help="label file, one label per line, in class-index order")
    ap.add_argument("--arch-param", type=_parse_param, action="append", default=[], metavar="KEY=VALUE",
                    help="architecture parameter passed to the constructor and recorded, e.g. width_mult=0.5")
    ap.add_argument("--resize", type=int, nargs="+", metavar="N", help="shorter side N, or exact H W")
    ap.add_argument("--crop", type=int, nargs="+", metavar="N",
                    help="centre crop N, or H W (default 224; none when --resize H W is given alone)")
    ap.add_argument("--interpolation", choices=["nearest", "bilinear", "bicubic", "lanczos"])
    ap.add_argument("--mean", type=float, nargs=3)
    ap.add_argument("--std", type=float, nargs=3)
    ap.add_argument("--strip-prefix", metavar="P",
                    help="strip P from every weight name (default: detect a wrapper prefix such as module. or backbone.)")
    args = ap.parse_args(argv)

    arch_params = dict(args.arch_param)
    ctor = getattr(torchvision.models, args.arch, None)
    if ctor is None or not callable(ctor):
        ap.error(f"torchvision.models has no {args.arch!r}")
    model = ctor(weights=None, num_classes=args.num_classes, **arch_params)
    expected = [k for k in model.state_dict()]
    try:
        sd = _load_state_dict(args.state_dict, expected, args.strip_prefix)
    except ValueError as e:
        print(f"kiln_export: error: {e}", file=sys.stderr)
        return 2
    model.load_state_dict(sd, strict=True)

    for flag in ("resize", "crop"):
        v = getattr(args, flag)
        if v is not None and len(v) not in (1, 2):
            ap.error(f"--{flag} takes N or H W")
    resize = args.resize or [256]
    # An exact --resize H W with no --crop feeds the resized image as is; otherwise crop (224).
    crop = args.crop or (None if len(resize) == 2 else [224])
    interpolation = T.InterpolationMode(args.interpolation or "bilinear")
    steps = [T.Resize(resize[0] if len(resize) == 1 else tuple(resize), interpolation=interpolation)]
    if crop is not None:
        steps.append(T.CenterCrop(crop[0] if len(crop) == 1 else tuple(crop)))
    steps += [T.ToTensor(), T.Normalize(args.mean or IMAGENET_MEAN, args.std or IMAGENET_STD)]
    transform = T.Compose(steps)
    try:
        spec = export(model, transform, args.out, args.arch, arch_params, labels_file=args.labels)
    except ValueError as e:
        print(f"kiln_export: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"wrote {out} and {_stem(out).name}.spec.json"
          + (f" and {spec['labels']}" if "labels" in spec else ""))
    print(json.dumps({k: v for k, v in spec.items() if k != "source"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

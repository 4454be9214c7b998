#!/usr/bin/env python3
"""Generate the PyTorch parity fixtures that kiln's Rust tests compare against.

What it makes
-------------
``tests/fixtures/parity/NAME.json`` and ``tests/fixtures/parity/NAME.logits.safetensors`` for

    resnet18 resnet34 resnet50 resnet101 resnet152 wide_resnet50_2 resnext50_32x4d
    mobilenet_v2_w050 mobilenet_v2_w075 mobilenet_v2_w100 mobilenet_v2_w140
    mobilenet_v3_small mobilenet_v3_large

Each is a torchvision model (``weights=None``, 1000 classes) whose every floating tensor is
overwritten with values from the deterministic "kiln-fixture-v1" recipe below, run in eval mode on
two deterministic batch-2 inputs, ``[2,3,224,224]`` and ``[2,3,160,200]``. The weights themselves
are NOT stored: the ``.json`` manifest lists every tensor (name, shape, a, b) and the Rust test
regenerates them bit for bit; the ``.logits.safetensors`` file holds the eval-mode logits
(``"224x224"`` and ``"160x200"``, each ``[2, 1000]`` float32).

It also writes ``tests/fixtures/convert/resnet18_subset.{legacy.pth,zip.pth,json}``: a subset of a
10-class torchvision resnet18 state dict with recipe values (``conv1.*``, ``bn1.*``, ``layer1.0.*``,
``fc.*``, the int64 ``num_batches_tracked`` entries kept), plus ``extra.transposed`` (a
non-contiguous ``[6,4]`` view with strides ``(1,6)`` of the recipe tensor ``[4,6]``) and
``extra.half`` (float16), saved in both the legacy and the zip ``torch.save`` formats, for testing
kiln's ``.pth`` reader.

How to rerun
------------
    /path/to/python python/make_parity_fixtures.py          # from the repository root
    /path/to/python python/make_parity_fixtures.py --only resnet18 mobilenet_v2_w050

Needs torch, torchvision, numpy and safetensors. Outputs are deterministic given the torch version
(the logits may move in the last bits between torch builds; the recipe values never do).

The recipe ("kiln-fixture-v1")
------------------------------
For a tensor (or input) called ``name`` with recorded float32 constants ``(a, b)``:

* seed = FNV-1a 64 of ``name.encode("utf-8")`` (offset 0xcbf29ce484222325, prime 0x100000001b3).
* splitmix64 from state = seed; for element i (row-major), i = 0, 1, ...:
  state += 0x9E3779B97F4A7C15; z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
  z ^= z >> 31                                  (all mod 2^64)
* u = f32(z >> 40) / f32(16777216) * f32(2) - f32(1)          (float32 ops, exact, in [-1, 1))
* value = (f32(b) * u) + f32(a)                               (float32 multiply, then float32 add)

(a, b) per tensor, chosen here and recorded in the manifest:

* weights with ndim >= 2: a = 0, b = f32(sqrt(6 / fan_in)), fan_in = prod(shape[1:])
* 1-D ``*.weight`` (BN gamma): a = 1, b = 0.25, except the last BN of each residual branch
  (ResNet ``layerX.Y.bn3`` / ``bn2`` for BasicBlock; MobileNetV2 / MobileNetV3 residual
  InvertedResidual's final BN): a = 0.2, b = 0.05
* 1-D ``*.bias``: a = 0, b = 0.1;  ``*.running_mean``: a = 0, b = 0.1;  ``*.running_var``: a = 1, b = 0.5
* inputs ``input/224x224`` and ``input/160x200``: a = 0, b = 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.numpy import load_file

RECIPE = "kiln-fixture-v1"

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)

INPUTS = [("input/224x224", (2, 3, 224, 224), "224x224"), ("input/160x200", (2, 3, 160, 200), "160x200")]

REPO = Path(__file__).resolve().parent.parent
PARITY_DIR = REPO / "tests" / "fixtures" / "parity"
CONVERT_DIR = REPO / "tests" / "fixtures" / "convert"


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def fnv1a64(name: str) -> int:
    h = FNV_OFFSET
    for byte in name.encode("utf-8"):
        h ^= byte
        h = (h * FNV_PRIME) & MASK64
    return h


def recipe_uniform(name: str, count: int) -> np.ndarray:
    """The recipe's u values in [-1, 1) (float32) for the first `count` elements of `name`."""
    seed = np.uint64(fnv1a64(name))
    with np.errstate(over="ignore"):
        # state after i+1 steps = seed + (i+1) * GAMMA  (mod 2^64)
        z = np.arange(1, count + 1, dtype=np.uint64)
        z *= GAMMA
        z += seed
        z ^= z >> np.uint64(30)
        z *= MIX1
        z ^= z >> np.uint64(27)
        z *= MIX2
        z ^= z >> np.uint64(31)
    top24 = (z >> np.uint64(40)).astype(np.float32)  # < 2^24: exact in float32
    u = top24 / np.float32(16777216.0)
    u = u * np.float32(2.0)
    u = u - np.float32(1.0)
    assert u.dtype == np.float32
    return u


def recipe_tensor(name: str, shape, a: float, b: float) -> np.ndarray:
    """value = f32(b) * u + f32(a), in float32, shaped row-major."""
    count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    u = recipe_uniform(name, count)
    t = np.float32(b) * u
    v = t + np.float32(a)
    assert v.dtype == np.float32
    return v.reshape(tuple(shape))


def f32(x: float) -> float:
    """The float32 rounding of x, as a Python float (repr round-trips through JSON)."""
    return float(np.float32(x))


# --------------------------------------------------------------------------------------------
# Which (a, b) each tensor gets
# --------------------------------------------------------------------------------------------


def residual_final_bns(model: torch.nn.Module) -> set[str]:
    """Module names of the last BatchNorm of every residual branch, found from the structure."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.mobilenetv3 import InvertedResidual as InvertedResidualV3
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out = set()
    for mname, m in model.named_modules():
        if isinstance(m, Bottleneck):
            out.add(f"{mname}.bn3")
        elif isinstance(m, BasicBlock):
            out.add(f"{mname}.bn2")
        elif isinstance(m, InvertedResidual) and m.use_res_connect:
            last = m.conv[-1]
            assert isinstance(last, torch.nn.BatchNorm2d), mname
            out.add(f"{mname}.conv.{len(m.conv) - 1}")
        elif isinstance(m, InvertedResidualV3) and m.use_res_connect:
            # The projection, a Conv2dNormActivation: its BatchNorm is `.1`.
            out.add(f"{mname}.block.{len(m.block) - 1}.1")
    for n in out:
        assert isinstance(model.get_submodule(n), torch.nn.BatchNorm2d), n
    return out


def choose_ab(name: str, shape, last_bns: set[str]) -> tuple[float, float]:
    if len(shape) >= 2:
        fan_in = float(np.prod(shape[1:], dtype=np.float64))
        return 0.0, f32(math.sqrt(6.0 / fan_in))
    if len(shape) != 1:
        raise ValueError(f"{name}: unexpected floating tensor of shape {list(shape)}")
    module, _, leaf = name.rpartition(".")
    if leaf == "weight":
        return (0.2, f32(0.05)) if module in last_bns else (1.0, 0.25)
    if leaf == "bias":
        return 0.0, f32(0.1)
    if leaf == "running_mean":
        return 0.0, f32(0.1)
    if leaf == "running_var":
        return 1.0, 0.5
    raise ValueError(f"{name}: no recipe rule for this tensor")


def apply_recipe(model: torch.nn.Module) -> list[dict]:
    """Overwrites every floating tensor of model's state dict; returns the manifest entries."""
    last_bns = residual_final_bns(model)
    sd = model.state_dict()
    entries, new_sd = [], {}
    for name, t in sd.items():
        if not t.is_floating_point():
            assert name.endswith("num_batches_tracked"), name
            new_sd[name] = t
            continue
        shape = list(t.shape)
        a, b = choose_ab(name, shape, last_bns)
        new_sd[name] = torch.from_numpy(recipe_tensor(name, shape, a, b))
        entries.append({"name": name, "shape": shape, "a": f32(a), "b": f32(b)})
    model.load_state_dict(new_sd, strict=True)
    # Self-check: what the model now holds is exactly the recipe output, bit for bit.
    for e in entries:
        held = model.state_dict()[e["name"]].detach().cpu().numpy()
        want = recipe_tensor(e["name"], e["shape"], e["a"], e["b"])
        assert held.dtype == np.float32 and held.shape == want.shape, e["name"]
        assert np.array_equal(held.view(np.uint32), want.view(np.uint32)), e["name"]
    return entries


# --------------------------------------------------------------------------------------------
# Parity fixtures
# --------------------------------------------------------------------------------------------


def fixtures() -> dict[str, tuple[str, dict]]:
    out = {name: (name, {}) for name in [
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d",
    ]}
    for w, tag in [(0.5, "050"), (0.75, "075"), (1.0, "100"), (1.4, "140")]:
        out[f"mobilenet_v2_w{tag}"] = ("mobilenet_v2", {"width_mult": w})
    # Hard-swish, squeeze-excite with hard-sigmoid, a two-layer classifier.
    for arch in ("mobilenet_v3_small", "mobilenet_v3_large"):
        out[arch] = (arch, {})
    return out


def dump_manifest(obj: dict) -> str:
    """Indented JSON with one line per tensor entry (small diffs, small files)."""
    head = {k: v for k, v in obj.items() if k not in ("tensors", "inputs")}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    for key in ("tensors", "inputs"):
        lines.append(f"  {json.dumps(key)}: [")
        rows = [f"    {json.dumps(e)}" for e in obj[key]]
        lines.append(",\n".join(rows))
        lines.append("  ]," if key == "tensors" else "  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == obj
    return text


def save_safetensors_f32(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file with a byte-stable header (sorted keys), so regenerating identical logits
    leaves the file unchanged (safetensors' own writer orders the metadata map at random)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key], dtype="<f4")
        data = arr.tobytes()
        header[key] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def make_parity(name: str, arch: str, params: dict) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(0)  # irrelevant (everything is overwritten), but keeps construction quiet
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000, **params)
    entries = apply_recipe(model)
    model.eval()
    inputs, logits = [], {}
    with torch.no_grad():
        for iname, shape, key in INPUTS:
            x = torch.from_numpy(recipe_tensor(iname, shape, 0.0, 1.0))
            y = model(x)
            assert y.shape == (2, 1000) and y.dtype == torch.float32
            logits[key] = np.ascontiguousarray(y.numpy())
            inputs.append({"name": iname, "shape": list(shape), "a": 0.0, "b": 1.0})
    manifest = {
        "recipe": RECIPE,
        "architecture": arch,
        "arch_params": params,
        "num_classes": 1000,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tensors": entries,
        "inputs": inputs,
    }
    PARITY_DIR.mkdir(parents=True, exist_ok=True)
    (PARITY_DIR / f"{name}.json").write_text(dump_manifest(manifest))
    logits_path = PARITY_DIR / f"{name}.logits.safetensors"
    save_safetensors_f32(logits, logits_path,
                         {"recipe": RECIPE, "torch": torch.__version__, "torchvision": torchvision.__version__})
    back = load_file(str(logits_path))
    assert set(back) == set(logits) and all(np.array_equal(back[k], v) for k, v in logits.items())
    stats = {}
    for key, y in logits.items():
        if not np.all(np.isfinite(y)):
            raise RuntimeError(f"{name} {key}: non-finite logits")
        stats[key] = (float(y.std()), float(np.abs(y).max()))
    n_values = sum(int(np.prod(e["shape"])) for e in entries)
    print(f"{name:20s} {len(entries):4d} tensors {n_values / 1e6:7.2f}M values  "
          + "  ".join(f"{k}: std {s:9.4f} max|.| {m:9.4f}" for k, (s, m) in stats.items())
          + f"  ({time.perf_counter() - t0:.1f}s)", flush=True)
    return stats


# --------------------------------------------------------------------------------------------
# .pth conversion fixtures
# --------------------------------------------------------------------------------------------


def same_state_dict(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if (x.dtype, x.shape, x.stride(), x.storage_offset()) != (y.dtype, y.shape, y.stride(), y.storage_offset()):
            return False
        if x.untyped_storage().nbytes() != y.untyped_storage().nbytes() or not torch.equal(x, y):
            return False
    return True


def save_if_changed(sd: dict, path: Path, legacy: bool) -> None:
    if path.exists():
        try:
            with open(path, "rb") as f:
                is_zip = f.read(4) == b"PK\x03\x04"
            if is_zip != (not legacy):
                raise ValueError("wrong format")
            if same_state_dict(torch.load(path, weights_only=True), sd):
                return
        except Exception:  # unreadable or different: rewrite
            pass
    if legacy:
        torch.save(sd, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(sd, path)


def make_convert() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    entries = {e["name"]: e for e in apply_recipe(model)}
    prefixes = ("conv1.", "bn1.", "layer1.0.", "fc.")
    sd, keys = {}, []
    for name, t in model.state_dict().items():
        if not name.startswith(prefixes):
            continue
        sd[name] = t.detach().clone()
        if t.is_floating_point():
            e = entries[name]
            keys.append({"name": name, "shape": e["shape"], "dtype": "float32", "a": e["a"], "b": e["b"]})
        else:
            assert name.endswith("num_batches_tracked") and t.dtype == torch.int64
            keys.append({"name": name, "shape": list(t.shape), "dtype": "int64", "value": int(t.item())})
    assert sd["fc.weight"].shape == (10, 512) and sd["fc.bias"].shape == (10,)

    base = torch.from_numpy(recipe_tensor("extra.transposed", [4, 6], 0.0, 1.0))
    tr = base.t()  # a view: shape [6, 4], strides (1, 6), NOT made contiguous
    assert tr.stride() == (1, 6) and not tr.is_contiguous()
    sd["extra.transposed"] = tr
    keys.append({"name": "extra.transposed", "shape": [6, 4], "dtype": "float32", "a": 0.0, "b": 1.0,
                 "transposed_of": [4, 6]})

    half = torch.from_numpy(recipe_tensor("extra.half", [3], 0.0, 1.0)).to(torch.float16)
    sd["extra.half"] = half
    keys.append({"name": "extra.half", "shape": [3], "dtype": "float16", "a": 0.0, "b": 1.0})

    CONVERT_DIR.mkdir(parents=True, exist_ok=True)
    legacy = CONVERT_DIR / "resnet18_subset.legacy.pth"
    zipped = CONVERT_DIR / "resnet18_subset.zip.pth"
    # The legacy format keys storages by memory address, so its bytes change on every save; only
    # replace a file whose content differs, to keep regeneration free of spurious diffs.
    save_if_changed(sd, legacy, legacy=True)
    save_if_changed(sd, zipped, legacy=False)
    manifest = {
        "recipe": RECIPE,
        "source": "torchvision resnet18(num_classes=10), recipe values, subset conv1./bn1./layer1.0./fc. "
                  "plus extra.transposed (recipe([4,6]).T, strides (1,6)) and extra.half (recipe in f32, cast to f16)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "files": [legacy.name, zipped.name],
        "tensors": keys,
    }
    text = "{\n" + ",\n".join(
        f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in manifest.items() if k != "tensors"
    ) + ',\n  "tensors": [\n' + ",\n".join(f"    {json.dumps(e)}" for e in keys) + "\n  ]\n}\n"
    assert json.loads(text) == manifest
    (CONVERT_DIR / "resnet18_subset.json").write_text(text)

    # Round-trip check of both files against the manifest.
    for path in (legacy, zipped):
        loaded = torch.load(path, weights_only=True)
        assert list(loaded) == [e["name"] for e in keys], path
        for e in keys:
            t = loaded[e["name"]]
            assert list(t.shape) == e["shape"], (path, e["name"])
            if e["dtype"] == "int64":
                assert t.dtype == torch.int64 and int(t.item()) == e["value"]
                continue
            want = recipe_tensor(e["name"], e.get("transposed_of", e["shape"]), e["a"], e["b"])
            if "transposed_of" in e:
                want = want.T
                assert t.stride() == (1, 6), (path, t.stride())
            if e["dtype"] == "float16":
                want = want.astype(np.float16)
            got = t.numpy()
            assert got.dtype == want.dtype and np.array_equal(got, want), (path, e["name"])
    print(f"convert: {len(keys)} keys -> {legacy.name} ({legacy.stat().st_size} B), "
          f"{zipped.name} ({zipped.stat().st_size} B)", flush=True)


# --------------------------------------------------------------------------------------------


def self_test_recipe() -> None:
    """Spot-checks the vectorised stream against a plain-integer splitmix64."""
    for name in ("conv1.weight", "input/224x224", "features.0.0.weight"):
        state = fnv1a64(name)
        ref = []
        for _ in range(5):
            state = (state + 0x9E3779B97F4A7C15) & MASK64
            z = state
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            z ^= z >> 31
            ref.append((z >> 40) / 16777216.0 * 2.0 - 1.0)  # exact in float64 too
        got = recipe_uniform(name, 5)
        assert [float(v) for v in got] == ref, (name, got, ref)
    assert fnv1a64("") == FNV_OFFSET and fnv1a64("a") == 0xAF63DC4C8601EC8C


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", help="fixture names to (re)make; default all, plus convert")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    self_test_recipe()
    todo = fixtures()
    names = args.only if args.only else list(todo) + ["convert"]
    for name in names:
        if name == "convert":
            make_convert()
        elif name in todo:
            make_parity(name, *todo[name])
        else:
            ap.error(f"unknown fixture {name!r}; known: {', '.join(todo)}, convert")
    print(f"done in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoints as training code saves them, for `kiln convert`'s prefix and wrapper-dict handling.

What it makes:

- ``tests/fixtures/checkpoints/*.pth`` (a few KB each) and ``manifest.json``: a tiny ResNet-like
  state dict (``conv1.weight``, ``bn1.*``, ``fc.*``; small random values) saved in each shape users
  save: bare, with a wrapper prefix (``backbone.``, ``module.model.``), under ``state_dict``,
  ``model_state_dict`` (with ``epoch`` and ``optimizer_state_dict`` beside it), ``model``,
  ``ema``, ``model`` + ``model_ema`` (different values: kiln must take ``model``), and one whose keys
  fit no architecture. The manifest gives, per file, the dict kiln should use, the prefix it
  should strip, and every expected key with its float32 values.
- ``tests/fixtures/finetune/``: torchvision's ``mobilenet_v2`` with the shipped weights
  (``weights/mobilenet_v2.safetensors``) inside a wrapper module (``self.backbone``), a new
  10-class head, fine-tuned for 4 SGD steps on 16 of the shared photos, saved as users do:
  ``torch.save({"epoch": ..., "model_state_dict": model.state_dict(), "optimizer_state_dict":
  ...}, "mobilenet_v2_wrapped.pth")`` (~14 MB); ``spec.json`` (eval transform
  ``Resize((224, 224))`` squash, bilinear, ImageNet mean/std); ``reference.json``: PyTorch's
  softmax probabilities on the 12 PIL-decoded PNGs in ``../shared/reference/decoded/``.

Rerun from the repository root (torch 2.15.0, torchvision 0.29.2, Pillow 13.0.0; ~1 min, CPU):

    python python/make_checkpoint_fixtures.py [--shared ../shared]
"""

import argparse
import json
from pathlib import Path

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parent.parent
CK = ROOT / "tests/fixtures/checkpoints"
FT = ROOT / "tests/fixtures/finetune"


def tiny(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "conv1.weight": r(2, 3, 1, 1),
        "bn1.weight": r(2),
        "bn1.bias": r(2),
        "bn1.running_mean": r(2),
        "bn1.running_var": r(2).abs(),
        "bn1.num_batches_tracked": torch.tensor(7),
        "fc.weight": r(3, 2),
        "fc.bias": r(3),
    }


def prefixed(sd, p):
    return {p + k: v for k, v in sd.items()}


def checkpoints():
    CK.mkdir(parents=True, exist_ok=True)
    a, b = tiny(1), tiny(2)
    opt = {"state": {}, "param_groups": [{"lr": 0.01}]}
    cases = {
        "bare.pth": (a, None, None, a),
        "backbone_prefix.pth": (prefixed(a, "backbone."), None, "backbone.", a),
        "module_model_prefix.pth": (prefixed(a, "module.model."), None, "module.model.", a),
        "state_dict.pth": ({"state_dict": prefixed(a, "net."), "epoch": 1}, "state_dict", "net.", a),
        "model_state_dict.pth": (
            {"epoch": 3, "model_state_dict": prefixed(a, "backbone."), "optimizer_state_dict": opt},
            "model_state_dict", "backbone.", a),
        "model.pth": ({"model": prefixed(a, "encoder."), "args": {"lr": 0.1}}, "model", "encoder.", a),
        "ema.pth": ({"ema": prefixed(a, "module."), "updates": 10}, "ema", "module.", a),
        "model_and_ema.pth": ({"model": a, "model_ema": prefixed(b, "module.")}, "model", None, a),
    }
    manifest = {}
    for name, (obj, key, prefix, want) in cases.items():
        torch.save(obj, CK / name)
        manifest[name] = {
            "dict_key": key,
            "prefix": prefix,
            "tensors": {k: v.flatten().tolist() for k, v in want.items()
                        if not k.endswith("num_batches_tracked")},
        }
    torch.save({"trunk.conv.weight": torch.zeros(2, 3, 1, 1), "head.weight": torch.zeros(3, 2)},
               CK / "unfit.pth")
    manifest["unfit.pth"] = {"dict_key": None, "prefix": None, "tensors": None}
    (CK / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


class Wrapped(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone = torchvision.models.mobilenet_v2()
        self.backbone.load_state_dict(load_file(str(ROOT / "weights/mobilenet_v2.safetensors")))
        self.backbone.classifier[1] = torch.nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.backbone(x)


def finetune(shared: Path):
    FT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    eval_tf = T.Compose([
        T.Resize((224, 224), interpolation=T.InterpolationMode.BILINEAR),
        T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    model = Wrapped(10)
    lines = (shared / "imagenet-sample/labels.csv").read_text().splitlines()[1:17]
    files = [ln.split(",")[0] for ln in lines]
    x = torch.stack([eval_tf(Image.open(shared / "imagenet-sample" / f).convert("RGB"))
                     for f in files])
    y = torch.tensor([int(ln.split(",")[1]) % 10 for ln in lines])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for step in range(4):
        idx = torch.arange(step * 4, step * 4 + 8) % 16
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.save({"epoch": 4, "model_state_dict": model.state_dict(),
                # The momentum buffers (another 14 MB) are left out to keep the fixture small.
                "optimizer_state_dict": {"param_groups": opt.state_dict()["param_groups"]},
                "loss": float(loss.detach())},
               FT / "mobilenet_v2_wrapped.pth")
    spec = {
        "kiln_spec": 1, "architecture": "mobilenet_v2", "arch_params": {"width_mult": 1.0},
        "num_classes": 10, "input_size": [224, 224],
        "resize": {"size": [224, 224], "interpolation": "bilinear", "antialias": True},
        "scale": "unit", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "channel_order": "rgb", "layout": "nchw",
        "source": {"framework": "pytorch", "transform": "Resize((224, 224)) -> ToTensor -> Normalize",
                   "made_by": "python/make_checkpoint_fixtures.py"},
    }
    (FT / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    ref = {}
    with torch.no_grad():
        for png in sorted((shared / "reference/decoded").glob("*.png")):
            t = eval_tf(Image.open(png).convert("RGB"))[None]
            ref[png.name] = torch.softmax(model(t), 1)[0].tolist()
    (FT / "reference.json").write_text(json.dumps(
        {"torch": torch.__version__, "torchvision": torchvision.__version__,
         "probabilities": ref}, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    args = ap.parse_args()
    checkpoints()
    finetune(Path(args.shared))
    print(f"wrote {CK} and {FT}")


if __name__ == "__main__":
    main()

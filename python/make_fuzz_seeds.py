"""Seed inputs for the fuzz targets in fuzz/ (what each target does: fuzz/harness.rs).

Written by hand from the formats' specifications, with no torch or safetensors import, so that
the seeds say exactly which bytes they hold:

- ``fuzz/corpus/preprocess/``: small images of every container kiln reads (PNG 8/16-bit, gray,
  palette, RGBA, JPEG baseline/progressive/CMYK/EXIF-rotated, GIF, BMP, TIFF, WebP), made with
  Pillow at 20-60 px so that one execution costs well under a millisecond.
- ``fuzz/corpus/weights/``: safetensors files with an embedded ``kiln.spec``: a complete
  MobileNetV2 (torchvision key names) at ``width_mult`` 0.05 with 3 classes and a 32x32 input,
  float16, that builds and runs (~90 KB); the same header with no data; a header only; a spec
  naming an unknown architecture.
- ``fuzz/corpus/pth/``: the zip checkpoints of tests/fixtures/checkpoints, and a legacy-format
  (pre-1.6) checkpoint pickled here with stand-in ``torch`` classes (Python's own pickle writes
  the same GLOBAL/BINPERSID opcodes torch.save does); the same file is
  ``tests/fixtures/malformed/legacy.pth``, which tests/malformed.rs reads and then corrupts.
- ``fuzz/corpus/config/``: the shipped specs, timm and transformers configs, and a
  preprocessor_config + config pair joined by a NUL byte.
- ``fuzz/corpus/request/``: Open Inference Protocol requests: REST JSON with a base64 image,
  FP32 pixels in JSON, binary tensor extension bodies (BYTES and FP32), and gRPC
  ``ModelInferRequest`` messages encoded here field by field.

Rerun from the repository root (Pillow 13.0.0, numpy):

    python python/make_fuzz_seeds.py
"""

import base64
import io
import json
import math
import pickle
import shutil
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def out(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def photo(w, h, mode="RGB"):
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7) % 256], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode) if mode != "RGB" else Image.fromarray(rgb.astype(np.uint8))


def save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def images():
    im = photo(48, 36)
    out("preprocess", "rgb.png", save(im, "PNG"))
    out("preprocess", "gray.png", save(photo(40, 40, "L"), "PNG"))
    out("preprocess", "rgba.png", save(photo(33, 41, "RGBA"), "PNG"))
    out("preprocess", "palette.png", save(im.quantize(16), "PNG"))
    g16 = Image.fromarray((np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50))
    out("preprocess", "gray16.png", save(g16, "PNG"))
    out("preprocess", "base.jpg", save(im, "JPEG", quality=80))
    out("preprocess", "prog420.jpg", save(photo(57, 45), "JPEG", quality=70, progressive=True))
    out("preprocess", "gray.jpg", save(photo(30, 30, "L"), "JPEG"))
    out("preprocess", "cmyk.jpg", save(photo(32, 32, "CMYK"), "JPEG"))
    exif = Image.Exif()
    exif[0x0112] = 6
    out("preprocess", "rot6.jpg", save(photo(40, 30), "JPEG", exif=exif.tobytes()))
    out("preprocess", "anim.gif", save(im.quantize(8), "GIF"))
    out("preprocess", "rgb.bmp", save(photo(31, 29), "BMP"))
    out("preprocess", "rgb.tiff", save(photo(30, 30), "TIFF"))
    out("preprocess", "lzw.tiff", save(photo(30, 30), "TIFF", compression="tiff_lzw"))
    out("preprocess", "rgb.webp", save(photo(30, 30), "WEBP", quality=60))
    out("preprocess", "tiny_1x1.png", save(photo(1, 1), "PNG"))
    return save(im, "JPEG", quality=80)


# --- safetensors -------------------------------------------------------------------------

def make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


def mobilenet_v2_shapes(width, classes):
    """torchvision's MobileNetV2 state dict names and shapes (BN buffers included)."""
    shapes = []

    def bn(p, c):
        for n in ("weight", "bias", "running_mean", "running_var"):
            shapes.append((f"{p}.{n}", [c]))

    inp = make_divisible(32 * width)
    last = make_divisible(1280 * max(1.0, width))
    shapes.append(("features.0.0.weight", [inp, 3, 3, 3]))
    bn("features.0.1", inp)
    i = 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        oup = make_divisible(c * width)
        for _ in range(n):
            hid = int(round(inp * t))
            p = f"features.{i}.conv"
            j = 0
            if t != 1:
                shapes.append((f"{p}.0.0.weight", [hid, inp, 1, 1]))
                bn(f"{p}.0.1", hid)
                j = 1
            shapes.append((f"{p}.{j}.0.weight", [hid, 1, 3, 3]))
            bn(f"{p}.{j}.1", hid)
            shapes.append((f"{p}.{j + 1}.weight", [oup, hid, 1, 1]))
            bn(f"{p}.{j + 2}", oup)
            inp = oup
            i += 1
    shapes.append((f"features.{i}.0.weight", [last, inp, 1, 1]))
    bn(f"features.{i}.1", last)
    shapes.append(("classifier.1.weight", [classes, last]))
    shapes.append(("classifier.1.bias", [classes]))
    return shapes


def safetensors(tensors, metadata):
    """tensors: [(name, dtype string, shape, raw bytes)]."""
    header = {"__metadata__": metadata}
    off = 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def tiny_spec(arch="mobilenet_v2", classes=3):
    return {
        "kiln_spec": 1, "architecture": arch, "arch_params": {"width_mult": 0.05},
        "num_classes": classes, "input_size": [32, 32],
        "resize": {"shorter_side": 36, "interpolation": "bilinear", "antialias": True},
        "center_crop": [32, 32], "scale": "unit", "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "channel_order": "rgb", "layout": "nchw",
    }


def weights():
    rng = np.random.default_rng(7)
    tensors = []
    for name, shape in mobilenet_v2_shapes(0.05, 3):
        n = math.prod(shape)
        if name.endswith("running_var"):
            v = np.ones(n)
        elif name.endswith("running_mean") or name.endswith("bias"):
            v = np.zeros(n)
        else:
            v = rng.normal(0, 0.1, n)
        tensors.append((name, "F16", shape, v.astype("<f2").tobytes()))
    tensors.append(("features.0.1.num_batches_tracked", "I64", [], struct.pack("<q", 10)))
    meta = {"kiln.spec": json.dumps(tiny_spec())}
    full = safetensors(tensors, meta)
    out("weights", "mobilenet_v2_w005_3class.safetensors", full)
    out("weights", "header_only.safetensors", full[: 8 + struct.unpack("<Q", full[:8])[0]])
    out("weights", "one_tensor.safetensors", safetensors(tensors[:1], meta))
    out("weights", "unknown_arch.safetensors", safetensors(tensors[:1], {"kiln.spec": json.dumps(tiny_spec("alexnet"))}))
    out("weights", "no_spec.safetensors", safetensors(tensors[-3:], {}))
    return len(full)


# --- .pth ----------------------------------------------------------------------------------

class FloatStorage:
    pass


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


class StandIn:
    """Pickles as torch's tensor reduce: _rebuild_tensor_v2((storage pid), offset, size, stride, False, OrderedDict())."""

    def __init__(self, key, shape):
        self.key, self.shape = key, shape

    def __reduce__(self):
        stride = []
        acc = 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        from collections import OrderedDict
        return (_rebuild_tensor_v2, (StoragePid(self.key, math.prod(self.shape)), 0, tuple(self.shape), tuple(stride), False, OrderedDict()))


class StoragePid:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


def install_stand_ins():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    FloatStorage.__module__ = "torch"
    _rebuild_tensor_v2.__module__ = "torch._utils"
    torch.FloatStorage = FloatStorage
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, StoragePid):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def legacy_pth():
    install_stand_ins()
    from collections import OrderedDict
    state = OrderedDict()
    storages = []
    for i, (name, shape) in enumerate([("conv1.weight", [4, 3, 1, 1]), ("fc.weight", [2, 4]), ("fc.bias", [2])]):
        key = str(i)
        state[name] = StandIn(key, shape)
        storages.append((key, np.arange(math.prod(shape), dtype="<f4") / 10))
    b = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(obj, b, protocol=2)
    Pickler(b, protocol=2).dump(state)
    pickle.dump([k for k, _ in storages], b, protocol=2)
    for _, v in storages:
        b.write(struct.pack("<q", v.size))
        b.write(v.tobytes())
    out("pth", "legacy.pth", b.getvalue())
    # Also the base of tests/malformed.rs's lying legacy checkpoints (its last 112 bytes are the
    # three storages: i64 count + 12, 8 and 2 float32 values).
    fx = ROOT / "tests/fixtures/malformed"
    fx.mkdir(parents=True, exist_ok=True)
    (fx / "legacy.pth").write_bytes(b.getvalue())
    for f in sorted((ROOT / "tests/fixtures/checkpoints").glob("*.pth")):
        shutil.copy(f, CORPUS / "pth" / f.name)


# --- configs ------------------------------------------------------------------------------

def configs():
    for f in ("mobilenet_v2.spec.json", "efficientnet_lite0.spec.json"):
        out("config", f, (ROOT / "weights" / f).read_bytes())
    out("config", "timm_config.json", json.dumps({
        "architecture": "mobilenetv2_050", "num_classes": 10,
        "label_names": [f"c{i}" for i in range(10)],
        "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.875,
                           "crop_mode": "center", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                           "num_classes": 10}}).encode())
    hf = ROOT / "tests/fixtures/hf"
    for d in sorted(p for p in hf.iterdir() if (p / "preprocessor_config.json").exists()):
        pre = (d / "preprocessor_config.json").read_bytes()
        cfg = (d / "config.json").read_bytes()
        out("config", f"hf_{d.name}.pair", pre + b"\0" + cfg)
        out("config", f"hf_{d.name}_config.json", cfg)
    out("config", "labels.txt", b"tench\ngoldfish\ngreat white shark\n")


# --- requests -----------------------------------------------------------------------------

def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)


def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def grpc_request(model, inputs, raw=None, params=None):
    """ModelInferRequest: model_name=1, model_version=2, id=3, parameters=4, inputs=5, outputs=6, raw_input_contents=7."""
    m = field(1, 2, model.encode()) + field(3, 2, b"req-1")
    for name, value in (params or {}).items():
        # InferParameter: bool_param=1, int64_param=2, string_param=3
        p = field(2, 0, varint(value)) if isinstance(value, int) else field(3, 2, value.encode())
        m += field(4, 2, field(1, 2, name.encode()) + field(2, 2, p))
    for name, dt, shape, contents in inputs:
        # InferInputTensor: name=1, datatype=2, shape=3 (packed int64), parameters=4, contents=5
        t = field(1, 2, name.encode()) + field(2, 2, dt.encode()) + field(3, 2, b"".join(varint(s) for s in shape))
        if contents is not None:
            # InferTensorContents: fp32_contents=7 (packed float), bytes_contents=8
            if dt == "BYTES":
                c = b"".join(field(8, 2, x) for x in contents)
            else:
                c = field(7, 2, b"".join(struct.pack("<f", x) for x in contents))
            t += field(5, 2, c)
        m += field(5, 2, t)
    m += field(6, 2, field(1, 2, b"top_k_labels"))
    for r in raw or []:
        m += field(7, 2, r)
    return m


def requests(jpeg):
    no_header = b"\xff\xff"
    b64 = base64.b64encode(jpeg).decode()
    j = {"id": "1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64]}],
         "parameters": {"top_k": 3}, "outputs": [{"name": "top_k_labels"}]}
    out("request", "rest_json_image", no_header + json.dumps(j).encode())
    px = {"inputs": [{"name": "pixels", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [[0.5] * 12]}],
          "parameters": {"threshold": 0.2, "tta": "flip"}}
    out("request", "rest_json_pixels", no_header + json.dumps(px).encode())
    body = struct.pack("<I", len(jpeg)) + jpeg
    h = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": len(body)}}],
                    "parameters": {"binary_data_output": True}}).encode()
    out("request", "rest_binary_image", struct.pack("<H", len(h)) + h + body)
    raw = struct.pack("<12f", *([0.25] * 12))
    h = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, 2, 2], "datatype": "FP32",
                                "parameters": {"binary_data_size": len(raw)}}],
                    "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    out("request", "rest_binary_pixels", struct.pack("<H", len(h)) + h + raw)
    out("request", "grpc_image", grpc_request("mobilenet_v2", [("image", "BYTES", [1], [jpeg])], params={"top_k": 2}))
    out("request", "grpc_raw_pixels", grpc_request("mobilenet_v2", [("pixels", "FP32", [1, 3, 2, 2], None)], raw=[raw]))
    out("request", "grpc_typed_pixels", grpc_request("m", [("pixels", "FP32", [1, 3, 2, 2], [0.1] * 12)], params={"tta": "none"}))


def huffman_regressions(jpeg):
    """fuzz/regressions/jpeg_decode/: the baseline seed JPEG with its first DHT's code-length
    counts changed, total unchanged: 3 codes of length 1 (oversubscribed: kiln's lookup fill
    indexed past its table, a panic the `request` target hit) and 2 codes of length 1 (the
    all-ones code libjpeg refuses with JERR_BAD_HUFF_TABLE; kiln accepted it)."""
    d = ROOT / "fuzz" / "regressions" / "jpeg_decode"
    d.mkdir(parents=True, exist_ok=True)
    at = jpeg.index(b"\xff\xc4") + 5  # marker, length (2), class/id (1): the 16 counts
    for name, ones in (("huffman_oversubscribed.jpg", 3), ("huffman_all_ones_code.jpg", 2)):
        b = bytearray(jpeg)
        counts = list(b[at:at + 16])
        take = ones - counts[0]
        for i in range(15, 0, -1):  # keep the total: take the codes from the longest lengths
            t = min(take, counts[i])
            counts[i] -= t
            take -= t
        assert take == 0
        counts[0] = ones
        b[at:at + 16] = bytes(counts)
        (d / name).write_bytes(bytes(b))


def main():
    # Seeds are (re)written by name; the hash-named inputs kept from fuzzing runs stay.
    jpeg = images()
    n = weights()
    legacy_pth()
    configs()
    requests(jpeg)
    huffman_regressions(jpeg)
    print(f"seeds written; tiny MobileNetV2 safetensors: {n} bytes")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Self-test for kiln_export.py. Run: /path/to/python python/test_kiln_export.py (no downloads)."""

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torchvision  # noqa: E402
from safetensors import safe_open  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import kiln_export  # noqa: E402
from kiln_export import SPEC_METADATA_KEY, export, spec_from_transform  # noqa: E402

IMAGENET_TAIL = {
    "scale": "unit",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "channel_order": "rgb",
    "layout": "nchw",
}


class SpecFromTransform(unittest.TestCase):
    def test_weights_preset(self):
        # Constructing the enum member and its transforms() downloads nothing.
        tf = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
        self.assertEqual(spec_from_transform(tf), {
            "input_size": [224, 224],
            "resize": {"shorter_side": 256, "interpolation": "bilinear", "antialias": True},
            "center_crop": [224, 224],
            **IMAGENET_TAIL,
        })
        # The V2 recipe resizes to 232: read from the object, not assumed.
        tf2 = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
        self.assertEqual(spec_from_transform(tf2)["resize"]["shorter_side"], 232)

    def test_default_compose_matches_preset(self):
        compose = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                             T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        preset = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
        self.assertEqual(spec_from_transform(compose), spec_from_transform(preset))

    def test_v2_and_exact_size(self):
        compose = v2.Compose([v2.ToImage(), v2.Resize((200, 300), interpolation=T.InterpolationMode.BICUBIC),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5], [0.5])])
        self.assertEqual(spec_from_transform(compose), {
            "input_size": [200, 300],
            "resize": {"size": [200, 300], "interpolation": "bicubic", "antialias": True},
            "scale": "unit", "mean": [0.5] * 3, "std": [0.5] * 3, "channel_order": "rgb", "layout": "nchw",
        })
        raw = T.Compose([T.CenterCrop(64), T.PILToTensor(), v2.ToDtype(torch.float32, scale=False)])
        self.assertEqual(spec_from_transform(raw)["scale"], "raw")

    def test_refusals(self):
        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        cases = {
            "RandomResizedCrop": T.Compose([T.RandomResizedCrop(224), T.ToTensor(), norm]),
            "RandomHorizontalFlip": T.Compose([T.Resize(256), T.CenterCrop(224), T.RandomHorizontalFlip(),
                                               T.ToTensor(), norm]),
            "max_size": T.Compose([T.Resize(256, max_size=300), T.CenterCrop(224), T.ToTensor()]),
            "Pad": T.Compose([T.Pad(4), T.CenterCrop(224), T.ToTensor()]),
            "Grayscale": T.Compose([T.Grayscale(3), T.CenterCrop(224), T.ToTensor()]),
            "Lambda": T.Compose([T.Lambda(lambda x: x), T.CenterCrop(224), T.ToTensor()]),
            "input size": T.Compose([T.Resize(256), T.ToTensor()]),
            "float tensor": T.Compose([T.Resize(256), T.CenterCrop(224)]),
            "larger than": T.Compose([T.Resize(200), T.CenterCrop(224), T.ToTensor()]),
            "Resize after conversion": T.Compose([T.ToTensor(), T.Resize(256), T.CenterCrop(224)]),
            "interpolation": T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BOX),
                                        T.CenterCrop(224), T.ToTensor()]),
        }
        for needle, tf in cases.items():
            with self.subTest(needle):
                with self.assertRaises(ValueError) as cm:
                    spec_from_transform(tf)
                self.assertIn(needle, str(cm.exception))


class Export(unittest.TestCase):
    def test_export_roundtrip(self):
        model = torchvision.models.resnet18(weights=None, num_classes=10)
        model.train()
        tf = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
        labels = [f"class {i}" for i in range(10)]
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "pets.safetensors"
            spec = export(model, tf, out, "resnet18", labels=labels)
            self.assertFalse(model.training)
            sidecar = json.loads((Path(d) / "pets.spec.json").read_text())
            with safe_open(str(out), "pt") as f:
                embedded = json.loads(f.metadata()[SPEC_METADATA_KEY])
                keys = set(f.keys())
                fc = f.get_tensor("fc.weight")
            self.assertEqual(embedded, sidecar)
            self.assertEqual(embedded, spec)
            self.assertEqual(spec["num_classes"], 10)
            self.assertEqual(spec["labels"], "pets.labels.txt")
            self.assertEqual((Path(d) / "pets.labels.txt").read_text().splitlines(), labels)
            self.assertEqual(spec["kiln_spec"], 1)
            self.assertEqual(spec["architecture"], "resnet18")
            self.assertEqual(spec["source"]["framework"], "pytorch")
            self.assertFalse(any(k.endswith("num_batches_tracked") for k in keys))
            self.assertEqual(keys, {k for k in model.state_dict() if not k.endswith("num_batches_tracked")})
            self.assertTrue(torch.equal(fc, model.fc.weight.detach()))
            with self.assertRaises(ValueError):
                export(model, tf, out, "resnet18", labels=labels[:9])

    def test_mobilenet_classifier_and_cli(self):
        model = torchvision.models.mobilenet_v2(weights=None, num_classes=3, width_mult=0.5)
        self.assertEqual(kiln_export.num_classes_of(model), 3)
        with tempfile.TemporaryDirectory() as d:
            sd_path = Path(d) / "trained.pth"
            torch.save({"state_dict": model.state_dict()}, sd_path)
            (Path(d) / "labels.txt").write_text("a\nb\nc\n")
            out = Path(d) / "m.safetensors"
            rc = kiln_export.main(["--arch", "mobilenet_v2", "--state-dict", str(sd_path), "--out", str(out),
                                   "--num-classes", "3", "--labels", str(Path(d) / "labels.txt"),
                                   "--arch-param", "width_mult=0.5"])
            self.assertEqual(rc, 0)
            spec = json.loads((Path(d) / "m.spec.json").read_text())
            self.assertEqual(spec["arch_params"], {"width_mult": 0.5})
            self.assertEqual(spec["num_classes"], 3)
            self.assertEqual(spec["labels"], "m.labels.txt")
            default = spec_from_transform(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms())
            self.assertEqual({k: spec[k] for k in default}, default)



class CheckpointShapes(unittest.TestCase):
    """Weights as training code saves them: wrapper prefixes and checkpoint dicts."""

    def setUp(self):
        self.model = torchvision.models.resnet18(weights=None, num_classes=10)
        self.sd = self.model.state_dict()
        self.expected = list(self.sd)
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def save(self, obj) -> str:
        path = str(Path(self.tmp.name) / "ckpt.pth")
        torch.save(obj, path)
        return path

    def test_prefixes_and_wrapper_dicts(self):
        cases = {
            "bare": self.sd,
            "module.": {"module." + k: v for k, v in self.sd.items()},
            "backbone. + an extra head": {**{"backbone." + k: v for k, v in self.sd.items()},
                                          "aux_head.weight": torch.zeros(2)},
            "model_state_dict, module.model.": {
                "epoch": 3, "model_state_dict": {"module.model." + k: v for k, v in self.sd.items()}},
            "state_dict + ema": {"state_dict": {"net." + k: v for k, v in self.sd.items()},
                                 "ema": {"encoder." + k: v * 0 for k, v in self.sd.items()}},
            "model_ema only": {"model_ema": dict(self.sd), "optimizer": {"lr": 0.1}},
        }
        for name, obj in cases.items():
            with self.subTest(name):
                got = kiln_export._load_state_dict(self.save(obj), self.expected)
                self.assertEqual(set(got), set(self.expected))
                for k in self.expected:
                    self.assertTrue(torch.equal(got[k], self.sd[k]), k)
                self.model.load_state_dict(got, strict=True)

    def test_explicit_prefix_and_clear_error(self):
        path = self.save({"trunk." + k: v for k, v in self.sd.items() if k != "fc.bias"})
        with self.assertRaises(ValueError) as e:
            kiln_export._load_state_dict(path, self.expected)
        msg = str(e.exception)
        self.assertIn("first unmatched keys", msg)
        self.assertIn("fc.bias", msg)
        got = kiln_export._load_state_dict(self.save({"x." + k: v for k, v in self.sd.items()}),
                                           self.expected, strip_prefix="x.")
        self.assertEqual(set(got), set(self.expected))

if __name__ == "__main__":
    torch.set_num_threads(2)
    unittest.main(verbosity=2)

#!/usr/bin/env python3
"""Unit tests of gpu_check.py's comparison and tables on small fake inputs (no torch, no GPU).
Run by ``cargo test --test gpu_check`` (``python3 -m unittest python/test_gpu_check.py``)."""

import json
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402


def kiln_rec(name, top):
    return {"path": f"/photos/{name}", "top": [{"index": i, "label": str(i), "prob": p} for i, p in top]}


def torch_row(name, top):
    return {"file": name, "top": [{"index": i, "prob": p} for i, p in top]}


class Compare(unittest.TestCase):
    def test_agreement_and_worst_difference(self):
        kiln = [kiln_rec("a.jpg", [(1, 0.9), (2, 0.05)]), kiln_rec("b.jpg", [(3, 0.5), (4, 0.4)]),
                kiln_rec("c.jpg", [(5, 0.7)])]
        torch = [torch_row("a.jpg", [(1, 0.90003)]), torch_row("b.jpg", [(4, 0.45)]), torch_row("c.jpg", [(5, 0.7)])]
        r = gpu_check.compare(kiln, torch, "f32")
        self.assertEqual((r["photos"], r["agree"]), (3, 2))
        self.assertAlmostEqual(r["max_top1_prob_diff"], 0.05, places=6)  # b.jpg: class 4, 0.4 vs 0.45
        self.assertEqual(r["worst_file"], "b.jpg")
        self.assertFalse(r["within_tolerance"])
        r = gpu_check.compare(kiln[:1], torch[:1], "f32")
        self.assertTrue(r["within_tolerance"])

    def test_tolerance_per_dtype(self):
        kiln = [kiln_rec("a.jpg", [(1, 0.905)])]
        torch = [torch_row("a.jpg", [(1, 0.9)])]
        self.assertFalse(gpu_check.compare(kiln, torch, "f32")["within_tolerance"])
        self.assertTrue(gpu_check.compare(kiln, torch, "f16")["within_tolerance"])
        self.assertTrue(gpu_check.compare(kiln, torch, "bf16")["within_tolerance"])

    def test_missing_and_failed_photos_fail(self):
        kiln = [kiln_rec("a.jpg", [(1, 0.9)]), {"path": "/photos/b.jpg", "error": "corrupt"}]
        torch = [torch_row("a.jpg", [(1, 0.9)]), torch_row("b.jpg", [(1, 0.9)]), torch_row("c.jpg", [(1, 0.9)])]
        r = gpu_check.compare(kiln, torch, "f16")
        self.assertEqual(r["missing"], ["b.jpg", "c.jpg"])
        self.assertFalse(r["within_tolerance"])


class Table(unittest.TestCase):
    def test_ratios_and_targets(self):
        def row(engine, model, batch, ips, p50):
            r = {"model": model, "dtype": "f16", "batch": batch, "images_per_s": ips, "p50_ms": p50}
            if engine:
                r["engine"] = engine
            return r

        kiln = [row(None, "mobilenet_v2", 64, 2000.0, 32.0), row(None, "mobilenet_v2", 1, 500.0, 2.0)]
        kiln[0]["h2d_ms"] = 1.5
        kiln[0]["peak_device_mem_mib"] = 900.0
        torch = [row("pytorch", "mobilenet_v2", 64, 1000.0, 64.0), row("pytorch", "mobilenet_v2", 1, 1000.0, 1.0)]
        agreement = {"model": "mobilenet_v2", "dtype": "f16", "photos": 500, "agree": 499, "agreement": 0.998,
                     "max_top1_prob_diff": 0.003, "tolerance": 0.01, "within_tolerance": True}
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            (d / "kiln.json").write_text(json.dumps(kiln))
            (d / "torch.json").write_text(json.dumps(torch))
            (d / "agree.json").write_text(json.dumps(agreement))
            gpu_check.main(["table", "--bench", str(d / "kiln.json"), "--bench", str(d / "torch.json"),
                            "--agreement", str(d / "agree.json"), "--out", str(d / "t.md")])
            text = (d / "t.md").read_text()
        line64 = next(l for l in text.splitlines() if l.startswith("| mobilenet_v2 | f16 | 64 |"))
        cells = [c.strip() for c in line64.strip("|").split("|")]
        self.assertEqual(cells[3:9], ["2000.0", "1000.0", "2.00", "32.00", "64.00", "0.50"])
        self.assertEqual(cells[9:], ["900", "1.500"])
        self.assertIn("mobilenet_v2: images/s at batch 64, f16 vs PyTorch eager: met", text)
        self.assertIn("mobilenet_v2: p50 latency at batch 1, f16 vs PyTorch eager: NOT met", text)
        self.assertIn("resnet50: images/s at batch 64, f16 vs PyTorch eager: not measured", text)
        self.assertIn("f16 top-1 agreement 99.8% (target 99.6%): met", text)
        self.assertIn("| mobilenet_v2 | f16 | 500 | 499 (99.8%) |", text)

    def test_percentile_is_nearest_rank(self):
        s = [float(i) for i in range(1, 101)]
        self.assertEqual(gpu_check.percentile(s, 50), 50.0)
        self.assertEqual(gpu_check.percentile(s, 99), 99.0)
        self.assertEqual(gpu_check.percentile([3.0], 99), 3.0)


if __name__ == "__main__":
    unittest.main()

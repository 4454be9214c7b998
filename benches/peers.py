#!/usr/bin/env python3
"""kiln next to ONNX Runtime and PyTorch, same architectures, same threads, interleaved.

For each (model, batch) the script times, in alternating rounds so that background load hits all
three alike:
  - kiln:         `kiln bench --model M --batch B --threads T --format json` (one process per round;
                  only its timed forward passes count, not its start-up);
  - ONNX Runtime: the torchvision model exported to ONNX (opset 17), CPUExecutionProvider,
                  intra_op_num_threads = T, inter_op_num_threads = 1, all graph optimisations;
  - PyTorch:      the same torchvision model in eager mode, torch.set_num_threads(T),
                  torch.inference_mode().
The weights are random (weights=None): timings do not depend on their values. Input is 224×224.

It prints a markdown table of the medians (ms per forward pass of the batch) and the ratios
kiln/ORT and kiln/PyTorch (< 1: kiln is faster), plus the machine it ran on.

Dependencies (any recent versions; measured with torch 2.15, onnxruntime 1.32):
    pip install torch torchvision onnx onnxruntime
Build kiln first: `cargo build --release`.

Usage:
    python benches/peers.py [--models mobilenet_v2 resnet50] [--batches 1 8] [--threads 2]
                            [--rounds 5] [--iters 10] [--warmup 3] [--kiln target/release/kiln]
                            [--json results.json]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def export_onnx(name, batch, path):
    import torch
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        torch.onnx.export(model, (x,), str(path), opset_version=17, input_names=["x"], output_names=["y"],
                          dynamo=False)
    return model


def time_calls(fn, iters):
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10, help="timed passes per engine per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    ap.add_argument("--json", help="also write all samples here")
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="kiln-peers-"))
    rows, dump = [], {}
    for name in args.models:
        for batch in args.batches:
            onnx_path = tmp / f"{name}_b{batch}.onnx"
            model = export_onnx(name, batch, onnx_path)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            x_np = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
            x_t = torch.from_numpy(x_np)

            def run_ort():
                sess.run(None, {"x": x_np})

            def run_torch():
                with torch.inference_mode():
                    model(x_t)

            for _ in range(args.warmup):
                run_ort()
                run_torch()
            samples = {"kiln": [], "ort": [], "torch": []}
            for r in range(args.rounds):
                # Alternate the order too, so neither engine always runs right after another.
                order = ["kiln", "ort", "torch"] if r % 2 == 0 else ["torch", "ort", "kiln"]
                for eng in order:
                    if eng == "kiln":
                        cmd = [args.kiln, "bench", "--model", name, "--batch", str(batch), "--threads",
                               str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters),
                               "--format", "json"]
                        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                        samples["kiln"] += res[0]["samples_ms"]
                    elif eng == "ort":
                        samples["ort"] += time_calls(run_ort, args.iters)
                    else:
                        samples["torch"] += time_calls(run_torch, args.iters)
                print(f"{name} b{batch} round {r + 1}/{args.rounds}: "
                      + ", ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in samples.items()),
                      file=sys.stderr)
            med = {k: statistics.median(v) for k, v in samples.items()}
            rows.append((name, batch, med))
            dump[f"{name}/b{batch}"] = samples

    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} logical CPUs; {args.threads} threads each; "
          f"onnxruntime {ort.__version__}, torch {torch.__version__}; fp32, 224×224; "
          f"{args.rounds} interleaved rounds × {args.iters} passes; medians, ms per forward pass of the batch.\n")
    print("| model | batch | kiln ms | ORT ms | PyTorch ms | kiln/ORT | kiln/PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, m in rows:
        print(f"| {name} | {batch} | {m['kiln']:.2f} | {m['ort']:.2f} | {m['torch']:.2f} | "
              f"{m['kiln'] / m['ort']:.2f} | {m['kiln'] / m['torch']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "samples_ms": dump}, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Load benchmark for `kiln serve` against KServe's own Python model server (a benchmark, not a test).

C closed-loop clients (default C = 1, 4, 16, 64) on 127.0.0.1 each send real photos from
../shared/imagenet-sample, one per request, as a BYTES tensor over the Open Inference Protocol v2
REST endpoint with Triton's binary tensor extension (`Inference-Header-Content-Length`), and ask
for the top-5 indices and probabilities. Servers, each in its own process, all up at once and
measured interleaved (for each C: every server in turn), on the same cores:

- `kiln-batch`   kiln serve with dynamic batching on (--max-batch 16, --max-queue-delay-us 2000)
- `kiln-nobatch` kiln serve with dynamic batching off (--max-batch 1)
  (kiln over REST with the binary extension, and kiln-batch over gRPC too, for a same-transport
  comparison with KServe)
- `kserve-ort`   KServe's ModelServer (`kserve` from PyPI) serving torchvision's MobileNetV2 through
                 ONNX Runtime, preprocessing with torchvision's eval transform (PIL decode,
                 MobileNet_V2_Weights.IMAGENET1K_V1.transforms()): what users deploy today.
                 Over gRPC with raw_input_contents: KServe's REST binary-extension decoder cannot
                 carry a non-UTF-8 BYTES element (see GrpcClient).

Both serve the same weights (weights/mobilenet_v2.safetensors, torchvision's IMAGENET1K_V1),
exported here to ONNX. Reported per server and C: images/s, p50 and p99 latency, errors (a non-200
answer, a malformed answer, or a connection failure), and the top-1 agreement of each server with
the others on the photos both classified.

    cargo build --release
    /work/venv/bin/pip install kserve onnxruntime onnx
    /work/venv/bin/python benches/serve_load.py [--seconds 10] [--clients 1,4,16,64]

Needs torch, torchvision, safetensors, onnx, onnxruntime, kserve (Python) and target/release/kiln.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilenet_v2"
TOP_K = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The KServe side: ONNX export and the model server (run in its own process).


def export_onnx(path):
    """torchvision's MobileNetV2 with kiln's shipped weights (the same IMAGENET1K_V1 tensors)."""
    import torch
    import torchvision
    from safetensors.torch import load_file

    net = torchvision.models.mobilenet_v2(weights=None)
    state = load_file(str(ROOT / "weights" / "mobilenet_v2.safetensors"))
    missing, unexpected = net.load_state_dict(state, strict=False)
    # kiln convert drops BN's num_batches_tracked counters (unused in eval); nothing else may differ.
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (
        missing,
        unexpected,
    )
    net.eval()
    x = torch.randn(2, 3, 224, 224)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    import numpy as np
    import onnxruntime as ort

    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )[0]
    with torch.no_grad():
        want = net(x).numpy()
    diff = float(np.abs(got - want).max())
    assert diff < 1e-3, f"ONNX Runtime differs from PyTorch by {diff}"
    print(f"exported {path} (ONNX Runtime vs PyTorch max |diff| {diff:.2e})", file=sys.stderr)


def serve_kserve(port, grpc_port, onnx_path):
    import io

    import kserve
    import numpy as np
    import onnxruntime as ort
    from kserve import InferOutput, InferRequest, InferResponse
    from PIL import Image
    from torchvision.models import MobileNet_V2_Weights

    transform = MobileNet_V2_Weights.IMAGENET1K_V1.transforms()

    class Mobilenet(kserve.Model):
        def __init__(self):
            super().__init__(MODEL)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = os.cpu_count() or 1
            self.session = ort.InferenceSession(
                onnx_path, sess_options=opts, providers=["CPUExecutionProvider"]
            )
            self.ready = True

        def predict(self, payload: InferRequest, headers=None):
            images = payload.inputs[0].as_numpy().reshape(-1)
            batch = []
            for b in images:
                with Image.open(io.BytesIO(bytes(b))) as im:
                    batch.append(transform(im.convert("RGB")).numpy())
            logits = self.session.run(None, {"input": np.stack(batch)})[0]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            idx = np.argsort(-probs, axis=1)[:, :TOP_K]
            top_p = np.take_along_axis(probs, idx, axis=1).astype(np.float32)
            out_i = InferOutput("top_k_indices", list(idx.shape), "INT64")
            out_i.set_data_from_numpy(idx.astype(np.int64), binary_data=False)
            out_p = InferOutput("top_k_probabilities", list(top_p.shape), "FP32")
            out_p.set_data_from_numpy(top_p, binary_data=False)
            return InferResponse(
                model_name=MODEL, infer_outputs=[out_i, out_p], response_id=payload.id
            )

    model = Mobilenet()
    kserve.ModelServer(http_port=port, grpc_port=grpc_port, enable_grpc=True, workers=1).start(
        [model]
    )


# ---------------------------------------------------------------------------------------------
# The load generator.


def oip_body(photo):
    """One-image BYTES request in the binary extension: JSON header, then the tensor's bytes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",  # replaced per server by its metadata's input name
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(photo)},
                }
            ],
            "outputs": [
                {"name": "top_k_indices", "parameters": {"binary_data": False}},
                {"name": "top_k_probabilities", "parameters": {"binary_data": False}},
            ],
            "parameters": {"top_k": TOP_K},
        }
    )
    return header, struct.pack("<I", len(photo)) + photo


def input_name(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", f"/v2/models/{MODEL}")
    r = c.getresponse()
    meta = json.loads(r.read())
    c.close()
    # KServe's custom models list no inputs in their metadata; any name is taken there.
    return meta["inputs"][0]["name"] if meta.get("inputs") else "image"


def wait_ready(port, proc, what, limit=300):
    start = time.time()
    while time.time() - start < limit:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}) before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", f"/v2/models/{MODEL}/ready")
            if c.getresponse().status == 200:
                c.close()
                return
            c.close()
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready after {limit} s")


def parse_top1(resp_headers, body):
    n = resp_headers.get("Inference-Header-Content-Length")
    header = json.loads(body[: int(n)] if n else body)
    for out in header["outputs"]:
        if out["name"] == "top_k_indices":
            if "data" in out:
                return int(out["data"][0])
            raise ValueError("top_k_indices sent in binary although JSON was asked for")
    raise ValueError("no top_k_indices in the answer")


class RestClient:
    """OIP v2 REST with the binary tensor extension, on one keep-alive connection."""

    @staticmethod
    def prepare(in_name, photos):
        bodies = []
        for p in photos:
            header, tensor = oip_body(p)
            header = header.replace('"INPUT"', json.dumps(in_name), 1).encode()
            bodies.append((header + tensor, len(header)))
        return bodies

    def __init__(self, port, bodies):
        self.port = port
        self.bodies = bodies
        self.conn = None

    def infer(self, j):
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body, hlen = self.bodies[j]
        try:
            self.conn.request(
                "POST",
                f"/v2/models/{MODEL}/infer",
                body=body,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(hlen),
                },
            )
            r = self.conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if r.status != 200:
            raise ValueError(f"HTTP {r.status}")
        return parse_top1(r.headers, data)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class GrpcClient:
    """OIP v2 gRPC (inference.GRPCInferenceService/ModelInfer), the image in raw_input_contents.

    Used for KServe: its REST binary-extension decoder turns a BYTES input into JSON strings
    (kserve/protocol/infer_type.py, InferRequest.from_bytes: set_data_from_numpy(...,
    binary_data=False)) and answers 500 for any JPEG, which is not UTF-8; its gRPC path keeps
    raw bytes."""

    @staticmethod
    def prepare(in_name, photos):
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        requests = []
        for p in photos:
            req = pb.ModelInferRequest(model_name=MODEL)
            t = req.inputs.add()
            t.name, t.datatype = in_name, "BYTES"
            t.shape.append(1)
            for name in ("top_k_indices", "top_k_probabilities"):
                req.outputs.add().name = name
            req.parameters["top_k"].int64_param = TOP_K
            req.raw_input_contents.append(struct.pack("<I", len(p)) + p)
            requests.append(req)
        return requests

    def __init__(self, port, requests):
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        self.grpc = grpc
        # One channel (one HTTP/2 connection) per client, as REST has one connection per client.
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_send_message_length", 64 << 20),
                     ("grpc.max_receive_message_length", 64 << 20)],
        )
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.requests = requests

    def infer(self, j):
        try:
            resp = self.stub.ModelInfer(self.requests[j], timeout=60)
        except self.grpc.RpcError as e:
            raise ValueError(str(e.code())) from e
        for i, out in enumerate(resp.outputs):
            if out.name == "top_k_indices":
                if resp.raw_output_contents:
                    return struct.unpack_from("<q", resp.raw_output_contents[i])[0]
                return int(out.contents.int64_contents[0])
        raise ValueError("no top_k_indices in the answer")

    def close(self):
        self.channel.close()


def run_load(make_client, names, clients, warmup, seconds):
    lat, errors, top1 = [], [0], {}
    lock = threading.Lock()
    cl = [make_client() for _ in range(clients)]
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + seconds

    def client(i):
        conn = cl[i]
        k = i * 7919
        my_lat, my_err, my_top = [], 0, {}
        while True:
            j = k % len(names)
            k += 1
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            ok = False
            try:
                my_top[names[j]] = conn.infer(j)
                ok = True
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                pass
            t1 = time.perf_counter()
            if t_measure <= t1 <= t_end:  # completed inside the measured window
                if ok:
                    my_lat.append(t1 - t0)
                else:
                    my_err += 1
        with lock:
            lat.extend(my_lat)
            errors[0] += my_err
            top1.update(my_top)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in cl:
        c.close()
    lat.sort()

    def q(p):
        return 1000 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    return {
        "images_per_s": len(lat) / seconds,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "errors": errors[0],
        "requests": len(lat),
        "top1": top1,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", default=str(ROOT / "target" / "release" / "kiln"))
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "imagenet-sample"))
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per cell")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per cell")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--servers",
                    default="kiln-batch:rest,kiln-nobatch:rest,kiln-batch:grpc,kserve-ort:grpc",
                    help="NAME:TRANSPORT,... (rest: OIP REST + binary extension; grpc: OIP gRPC)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--serve-kserve", nargs=3, metavar=("PORT", "GRPC_PORT", "ONNX"),
                    help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.serve_kserve:
        port, grpc_port, onnx_path = args.serve_kserve
        serve_kserve(int(port), int(grpc_port), onnx_path)
        return

    files = sorted(p for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    photos = [p.read_bytes() for p in files]
    names = [p.name for p in files]
    clients = [int(c) for c in args.clients.split(",")]
    spec = [s.split(":") for s in args.servers.split(",")]
    wanted = [f"{n}/{t}" for n, t in spec]
    process_names = list(dict.fromkeys(n for n, _ in spec))
    print(f"{len(photos)} photos from {args.photos}; {os.cpu_count()} CPUs", file=sys.stderr)

    tmp = tempfile.mkdtemp(prefix="kiln-serve-load-")
    procs, ports, grpc_ports = {}, {}, {}
    try:
        for name in process_names:
            port, grpc_port = free_port(), free_port()
            log = open(Path(tmp) / f"{name}.log", "w")
            if name.startswith("kiln"):
                batch = args.max_batch if name == "kiln-batch" else 1
                cmd = [args.kiln, "serve", "--host", "127.0.0.1", "--port", str(port),
                       "--grpc-port", str(grpc_port), "--model", MODEL,
                       "--max-batch", str(batch),
                       "--max-queue-delay-us", str(args.max_queue_delay_us if batch > 1 else 0)]
            elif name == "kserve-ort":
                onnx_path = Path(tmp) / "mobilenet_v2.onnx"
                export_onnx(onnx_path)
                cmd = [sys.executable, __file__, "--serve-kserve", str(port), str(grpc_port),
                       str(onnx_path)]
            # A server given twice (two transports) runs once.
            else:
                raise SystemExit(f"unknown server {name}")
            procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            ports[name], grpc_ports[name] = port, grpc_port
        for name in process_names:
            wait_ready(ports[name], procs[name], name)
        makers = {}
        for (name, transport), label in zip(spec, wanted):
            in_name = input_name(ports[name])
            if transport == "rest":
                bodies = RestClient.prepare(in_name, photos)
                makers[label] = (lambda p, b: lambda: RestClient(p, b))(ports[name], bodies)
            elif transport == "grpc":
                reqs = GrpcClient.prepare(in_name, photos)
                makers[label] = (lambda p, r: lambda: GrpcClient(p, r))(grpc_ports[name], reqs)
            else:
                raise SystemExit(f"unknown transport {transport}")

        results = {n: {} for n in wanted}
        for c in clients:
            for name in wanted:  # interleaved: every server at this C before the next C
                r = run_load(makers[name], names, c, args.warmup, args.seconds)
                results[name][c] = r
                print(f"{name:18} C={c:<3} {r['images_per_s']:8.1f} img/s  p50 {r['p50_ms']:8.1f} ms"
                      f"  p99 {r['p99_ms']:8.1f} ms  errors {r['errors']}", file=sys.stderr)
    finally:
        print(f"server logs in {tmp}", file=sys.stderr)
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    # Top-1 agreement between servers on the photos both classified (all C together).
    top = {n: {} for n in wanted}
    for n in wanted:
        for r in results[n].values():
            top[n].update(r.pop("top1"))
    agree = {}
    for i, a in enumerate(wanted):
        for b in wanted[i + 1:]:
            both = set(top[a]) & set(top[b])
            same = sum(top[a][k] == top[b][k] for k in both)
            agree[f"{a} vs {b}"] = (same, len(both))

    print("| server | clients | images/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in clients:
        for n in wanted:
            r = results[n][c]
            print(f"| {n} | {c} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['errors']} |")
    for k, (same, both) in agree.items():
        print(f"\ntop-1 agreement {k}: {same}/{both} photos", end="")
    print()
    kb = next((n for n in wanted if n.startswith("kiln-batch/")), None)
    ks = next((n for n in wanted if n.startswith("kserve-ort/")), None)
    if kb and ks:
        for c in clients:
            k, s = results[kb][c], results[ks][c]
            if s["images_per_s"] > 0:
                print(f"C={c}: {kb} / {ks} images/s = "
                      f"{k['images_per_s'] / s['images_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "agreement": agree}, indent=1))


if __name__ == "__main__":
    main()

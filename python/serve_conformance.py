"""Drives a running `kiln serve` with Triton's own Python clients (tritonclient HTTP and gRPC).

Run by crates/kiln-serve/tests/conformance.rs, which starts the server, and passes a JSON file
of expectations computed in Rust by `Classifier::classify_path` (the `kiln classify` pipeline):
    {"model": "mobilenet_v2", "images": [[path, top1_index], ...],
     "tensor": path_to_raw_f32_[1,3,224,224], "tensor_top1": index}
Exits non-zero with the failed check's message on the first failure.
"""

import argparse
import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def expect_error(fn, needle, what):
    try:
        fn()
    except InferenceServerException as e:
        check(needle in str(e), f"{what}: error names the cause ({e})")
        return
    check(False, f"{what}: no error raised")


def run(mod, client, exp, kind):
    model = exp["model"]
    check(client.is_server_live(), f"{kind} server live")
    check(client.is_server_ready(), f"{kind} server ready")
    check(client.is_model_ready(model), f"{kind} model ready")
    meta = client.get_server_metadata()
    name = meta["name"] if isinstance(meta, dict) else meta.name
    check(name == "kiln", f"{kind} server metadata name")
    md = client.get_model_metadata(model)
    inputs = md["inputs"] if isinstance(md, dict) else [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in md.inputs]
    check({"name": "image", "datatype": "BYTES", "shape": [-1]} in inputs, f"{kind} metadata BYTES input")
    check({"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]} in inputs,
          f"{kind} metadata FP32 input")

    paths = [p for p, _ in exp["images"]]
    want = [i for _, i in exp["images"]]
    blobs = [open(p, "rb").read() for p in paths]

    def infer_bytes(binary, data):
        inp = mod.InferInput("image", [len(data)], "BYTES")
        arr = np.array(data, dtype=np.object_)
        if kind == "http":
            inp.set_data_from_numpy(arr, binary_data=binary)
            outs = [mod.InferRequestedOutput("top_k_indices", binary_data=binary),
                    mod.InferRequestedOutput("top_k_labels", binary_data=binary)]
        else:
            inp.set_data_from_numpy(arr)
            outs = [mod.InferRequestedOutput("top_k_indices"), mod.InferRequestedOutput("top_k_labels")]
        return client.infer(model, [inp], outputs=outs)

    r = infer_bytes(True, blobs)
    idx = r.as_numpy("top_k_indices")
    check(idx.shape == (len(blobs), 5), f"{kind} BYTES binary: top_k_indices shape {idx.shape}")
    check(list(idx[:, 0]) == want, f"{kind} BYTES binary: top-1 {list(idx[:, 0])} == {want}")
    labels = r.as_numpy("top_k_labels")
    check(labels.shape == (len(blobs), 5) and len(labels[0, 0]) > 0, f"{kind} BYTES labels")
    check(r.as_numpy("probabilities") is None, f"{kind} only requested outputs are sent")

    if kind == "http":
        # JSON form: BYTES elements are strings, so images travel base64-encoded.
        r = infer_bytes(False, [base64.b64encode(b) for b in blobs])
        idx = r.as_numpy("top_k_indices")
        check(list(idx[:, 0]) == want, f"http BYTES JSON (base64): top-1 {list(idx[:, 0])} == {want}")

    t = np.fromfile(exp["tensor"], dtype="<f4").reshape(1, 3, 224, 224)
    inp = mod.InferInput("input", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(t)
    r = client.infer(model, [inp])
    p = r.as_numpy("probabilities")
    check(p.shape == (1, 1000) and abs(float(p.sum()) - 1.0) < 1e-3, f"{kind} FP32 probabilities")
    check(int(p[0].argmax()) == exp["tensor_top1"], f"{kind} FP32 top-1 {int(p[0].argmax())}")

    bad = mod.InferInput("input", [1, 3, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    expect_error(lambda: client.infer(model, [bad]), "224", f"{kind} wrong FP32 shape")
    junk = mod.InferInput("image", [1], "BYTES")
    junk.set_data_from_numpy(np.array([b"not an image at all"], dtype=np.object_))
    expect_error(lambda: client.infer(model, [junk]), "image[0]", f"{kind} not an image")
    good = mod.InferInput("image", [1], "BYTES")
    good.set_data_from_numpy(np.array([blobs[0]], dtype=np.object_))
    expect_error(lambda: client.infer("no_such_model", [good]), "no_such_model", f"{kind} unknown model")
    expect_error(lambda: client.infer(model, [good], model_version="9"), "version", f"{kind} unknown version")
    wrong = mod.InferInput("image", [1], "INT32")
    wrong.set_data_from_numpy(np.zeros((1,), dtype=np.int32))
    expect_error(lambda: client.infer(model, [wrong]), "INT32", f"{kind} wrong datatype")
    r = client.infer(model, [good], outputs=[mod.InferRequestedOutput("top_k_indices")])
    check(int(r.as_numpy("top_k_indices")[0, 0]) == want[0], f"{kind} a good request after the errors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--expect", required=True)
    a = ap.parse_args()
    exp = json.load(open(a.expect))
    run(httpclient, httpclient.InferenceServerClient(url=a.http), exp, "http")
    run(grpcclient, grpcclient.InferenceServerClient(url=a.grpc), exp, "grpc")
    print("all conformance checks passed")


if __name__ == "__main__":
    main()

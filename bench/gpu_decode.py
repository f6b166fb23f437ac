#!/usr/bin/env python3
"""GPU decode benchmark: moec's GPU kernels at decode token counts, as a fraction of the device's own
device-to-device copy bandwidth measured in the same run, beside a PyTorch eager MoE layer on the same GPU.

Two phases, because moec (LLVM) runs here and the GPU is on a lent machine without it:

  gpu_decode.py --moec build/bin/moec --prepare DIR      generate the layers, compile them (--target=cpu,hip,cuda,
                                                         bf16 weights), gzip artifacts (weights compress: constant)
  gpu_decode.py --moert build/bin/moert --run DIR        on the GPU: copy bandwidth, then each layer x T

Shapes: OLMoE-like (H 2048, F 1024, E 64, k 8), Mixtral-like (H 4096, F 14336, E 8, k 2), each with bf16 and
int8 weights (`_int8`: one f16 scale per 32 weights, counted in the bytes), and a tiny layer (H 256, F 128, E 8,
k 2) whose time is the per-layer fixed cost. Weights are constant (the timing of the
kernels does not depend on values) so the artifacts compress for transfer; the router and inputs are random,
so tokens pick different experts. Bytes = weights read by one call (chosen experts' rows + router), from the
tile table the kernels built. Time = device time per call, 200 calls back to back (no host sync in between).
"""
import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

SHAPES = {
    "tiny": dict(h=256, f=128, e=8, k=2),
    "olmoe": dict(h=2048, f=1024, e=64, k=8),
    "mixtral": dict(h=4096, f=14336, e=8, k=2),
    "olmoe_int8": dict(h=2048, f=1024, e=64, k=8, weights="int8"),
    "mixtral_int8": dict(h=4096, f=14336, e=8, k=2, weights="int8"),
}
TOKENS = [1, 2, 4, 8]


def make_model(path, h, f, e, k):
    """The layer as com.microsoft.MoE with its expert weights in an external data file written in pieces (the
    Mixtral-like one is over protobuf's 2 GiB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    data = os.path.basename(path) + ".data"
    inits = []
    with open(path + ".data", "wb") as out:
        for name, shape in (("w1", (e, 2 * f, h)), ("w2", (e, h, f))):
            t = TensorProto()
            t.name, t.data_type = name, TensorProto.FLOAT
            t.dims.extend(shape)
            offset = out.tell()
            row = np.full(shape[1:], 0.01, np.float32).tobytes()
            for _ in range(shape[0]):
                out.write(row)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data), ("offset", str(offset)), ("length", str(out.tell() - offset))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            inits.append(t)
    inits.append(numpy_helper.from_array(rng.standard_normal((h, e)).astype(np.float32), "wr"))
    nodes = [helper.make_node("MatMul", ["x", "wr"], ["logits"]),
             helper.make_node("MoE", ["x", "logits", "w1", "", "w2"], ["y"], domain="com.microsoft", k=k,
                              activation_type="swiglu", normalize_routing_weights=1, swiglu_fusion=1)]
    g = helper.make_graph(nodes, "moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


def prepare(args):
    os.makedirs(args.prepare, exist_ok=True)
    rng = np.random.default_rng(2)
    for name, s in SHAPES.items():
        onnx_path = os.path.join(args.prepare, name + ".onnx")
        moex = os.path.join(args.prepare, name + ".moex")
        print(f"{name}: generating and compiling {s}", flush=True)
        make_model(onnx_path, s["h"], s["f"], s["e"], s["k"])
        subprocess.run([args.moec, "compile", onnx_path, "-o", moex, "--target=cpu,hip,cuda",
                        f"--weights={s.get('weights', 'bf16')}", "--quiet"], check=True)
        os.remove(onnx_path)
        os.remove(onnx_path + ".data")
        with open(moex, "rb") as src, gzip.open(moex + ".gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.remove(moex)
        for t in TOKENS:
            np.save(os.path.join(args.prepare, f"{name}_x{t}.npy"), rng.standard_normal((t, s["h"])).astype(np.float32))
    with open(os.path.join(args.prepare, "shapes.json"), "w") as f:
        json.dump({"shapes": SHAPES, "tokens": TOKENS}, f)


def torch_layer_us(s, x_np, repeats=200):
    """PyTorch eager: router, top-k, and per chosen expert gate/up matmul, SwiGLU, down matmul (bf16)."""
    import torch
    h, f, e, k = s["h"], s["f"], s["e"], s["k"]
    dev = "cuda"
    w1 = torch.full((e, 2 * f, h), 0.01, dtype=torch.bfloat16, device=dev)
    w2 = torch.full((e, h, f), 0.01, dtype=torch.bfloat16, device=dev)
    wr = torch.randn(h, e, device=dev)
    x = torch.from_numpy(x_np).to(dev)

    def layer():
        p = torch.softmax(x @ wr, -1)
        w, idx = torch.topk(p, k, -1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        xb = x.to(torch.bfloat16)
        for ex in torch.unique(idx).tolist():
            tok, slot = (idx == ex).nonzero(as_tuple=True)
            gu = xb[tok] @ w1[ex].T
            a = torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]
            out.index_add_(0, tok, (a @ w2[ex].T).float() * w[tok, slot, None])
        return out

    for _ in range(5):
        layer()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        layer()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000.0 / repeats


def run(args):
    d = args.run
    with open(os.path.join(d, "shapes.json")) as f:
        meta = json.load(f)
    probe = subprocess.run([args.moert, "devices", "--device", args.device, "--bandwidth"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        print("no GPU: " + probe.stderr.strip())
        return 77
    print(probe.stdout.strip())
    copy = float(re.search(r"copy (\d+) GB/s", probe.stdout).group(1))
    rows = []
    for name, s in meta["shapes"].items():
        moex = os.path.join("/tmp", name + ".moex")
        with gzip.open(os.path.join(d, name + ".moex.gz"), "rb") as src, open(moex, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        for t in meta["tokens"]:
            x = os.path.join(d, f"{name}_x{t}.npy")
            r = subprocess.run([args.moert, "run", moex, "--input", f"x={x}", f"--device={args.device}",
                                "--output-dir", "/tmp/gpu_decode_out", "--repeat", "20", "--gpu-time", "200"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{name} T={t}: {r.stderr.strip()}")
                return 1
            g = re.search(r"gpu dispatch 0: ([\d.]+) us per call .*?, ([\d.]+) MB of weights read, (\d+) GB/s", r.stdout)
            call = re.search(r"best ([\d.]+) ms", r.stdout)
            us, mb, gbs = float(g.group(1)), float(g.group(2)), float(g.group(3))
            try:  # the PyTorch layer is bf16: compared with the bf16 rows only
                tus = torch_layer_us(s, np.load(x)) if s.get("weights", "bf16") == "bf16" else float("nan")
            except Exception as e:  # noqa: BLE001 - the baseline is optional
                tus = float("nan")
                print(f"(PyTorch baseline failed: {e})")
            rows.append((name, t, us, float(call.group(1)) * 1000, mb, gbs, gbs / copy, tus))
        os.remove(moex)
    print(f"\n| layer | T | moec GPU kernels (µs) | moert run call (µs, host copies incl.) | weights read (MB) | "
          f"GB/s | fraction of copy bandwidth ({copy:.0f} GB/s) | PyTorch eager (µs) | PyTorch / moec |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, t, us, call_us, mb, gbs, frac, tus in rows:
        print(f"| {name} | {t} | {us:.1f} | {call_us:.0f} | {mb:.1f} | {gbs:.0f} | {frac:.2f} | {tus:.1f} | "
              f"{tus / us:.1f}x |")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec")
    ap.add_argument("--moert")
    ap.add_argument("--device", default="gpu")
    ap.add_argument("--prepare", metavar="DIR")
    ap.add_argument("--run", metavar="DIR")
    args = ap.parse_args()
    if args.prepare:
        prepare(args)
        return 0
    if args.run and args.moert:
        return run(args)
    ap.error("give --moec ... --prepare DIR or --moert ... --run DIR")


if __name__ == "__main__":
    sys.exit(main())

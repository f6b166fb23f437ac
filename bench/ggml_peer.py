#!/usr/bin/env python3
"""llama.cpp's ggml as a peer on the single MoE-layer workloads of bench/run.py: the same weights, router and
inputs, the layer built the way llama.cpp builds a MoE FFN (ggml_mul_mat_id for gate, up and down; softmax
top-k gating renormalised over the chosen experts), timed the same way (a warm-up call, then one call per fresh
input; best and median).

bench/ggml_moe.cpp is compiled here against the ggml that llama-cpp-python installs (its shared libraries; the
headers from the package when it ships them, else from its source distribution, fetched once into
bench/.cache). Expert weights are quantised by ggml from the fp32 weights (F32, BF16, Q8_0, Q4_0: equal bits to
moec's fp32, bf16, int8, int4) and repacked the way llama.cpp does at load where ggml's CPU backend does that for
mul_mat_id (Q4_0 and Q8_0 on AVX2). The layer's output is checked against NumPy before its times count.

Differences, said in the table: ORT's MoE (which moec compiles) applies ORT's SwiGLU (x * sigmoid(1.702 x) *
(up + 1)) to interleaved gate/up rows; ggml here applies plain SiLU(gate) * up to the same rows de-interleaved --
the same work per element.

    python3 bench/ggml_peer.py [--threads N] [--types f32,q8_0,q4_0]   # the ZAYA1 layer, standalone
"""
import glob
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
sys.path.insert(0, HERE)
from llama_peer import PAIRS as _LLAMA_PAIRS  # noqa: E402

# ggml type each moec storage is compared with (equal bits): llama_peer's pairing, looked up from moec's side
PAIRS = {storage: ggml for ggml, storage in _LLAMA_PAIRS.items()}
# relative L2 error of ggml's output against the fp64 NumPy layer above which its times are not reported: ggml
# quantises the activations too for Q8_0/Q4_0 (to Q8), so these bound the weights' and activations' rounding.
# Q4_0 rounds Gaussian weights with a step of about max/8 = 0.26 sigma per block of 32 (7.5% rms each of the
# layer's two products), hence 0.2.
MAX_ERROR = {"f32": 1e-4, "bf16": 2e-2, "q8_0": 2e-2, "q4_0": 0.2}


def _ggml_dirs():
    """(include dir, lib dir) of the ggml llama-cpp-python installed, or raises ImportError."""
    import llama_cpp
    pkg = os.path.dirname(llama_cpp.__file__)
    libs = [d for d in (os.path.join(pkg, "lib"), pkg) if glob.glob(os.path.join(d, "libggml*.so*"))]
    if not libs:
        raise ImportError(f"no libggml shared library under {pkg}")
    inc = os.path.join(pkg, "include")
    if os.path.exists(os.path.join(inc, "ggml-backend.h")) and os.path.exists(os.path.join(inc, "ggml-cpu.h")):
        return inc, libs[0]
    # The headers of the same version, from its source distribution.
    version = llama_cpp.__version__
    inc = os.path.join(CACHE, f"ggml-include-{version}")
    if not os.path.exists(os.path.join(inc, "ggml-cpu.h")):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", tmp], check=True)
            (sdist,) = glob.glob(os.path.join(tmp, "*.tar.gz"))
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if "/vendor/llama.cpp/ggml/include/" in m.name
                           and m.name.endswith(".h")]
                if not members:
                    raise ImportError("llama-cpp-python's source distribution has no ggml headers")
                os.makedirs(inc, exist_ok=True)
                for m in members:
                    with open(os.path.join(inc, os.path.basename(m.name)), "wb") as out:
                        out.write(tar.extractfile(m).read())
    return inc, libs[0]


def build():
    """Compiles bench/ggml_moe.cpp (once per llama-cpp-python version); returns the executable's path."""
    inc, lib = _ggml_dirs()
    import llama_cpp
    exe = os.path.join(CACHE, f"ggml_moe-{llama_cpp.__version__}")
    src = os.path.join(HERE, "ggml_moe.cpp")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(src):
        return exe
    os.makedirs(CACHE, exist_ok=True)
    libs = sorted({os.path.basename(p).split(".so")[0][3:] for p in glob.glob(os.path.join(lib, "libggml*.so*"))})
    subprocess.run(["clang++-19", "-O2", "-std=c++17", "-I", inc, src, "-o", exe, "-L", lib,
                    *[f"-l{name}" for name in libs], f"-Wl,-rpath,{lib}"], check=True)
    return exe


def reference(x, gate, up, down, router, k):
    """The layer in float64: softmax gating, top-k renormalised, SiLU(gate x) * up x through down."""
    logits = x.astype(np.float64) @ router.astype(np.float64).T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, ids, axis=1)
    w /= w.sum(axis=1, keepdims=True)
    y = np.zeros(x.shape, np.float64)
    for j in np.unique(ids):
        rows, slot = np.nonzero(ids == j)
        xs = x[rows].astype(np.float64)
        g = xs @ gate[j].astype(np.float64).T
        a = g / (1 + np.exp(-g)) * (xs @ up[j].astype(np.float64).T)
        y[rows] += w[rows, slot][:, None] * (a @ down[j].astype(np.float64).T)
    return y


def run_layer(key, w1, w2, wr, k, inputs, types, threads):
    """Times ggml on one layer: w1 [E, 2F, H] (ORT's interleaved gate/up rows), w2 [E, H, F], wr [H, E], inputs
    {T: [arrays [T, H]]} (the first a warm-up). Returns {(ggml type, T): (best ms, median ms, repacked)}."""
    exe = build()
    e, f2, h = w1.shape
    f = f2 // 2
    d = os.path.join(CACHE, f"ggml_{key}")
    os.makedirs(d, exist_ok=True)
    gate, up = w1[:, 0::2, :], w1[:, 1::2, :]
    router = np.ascontiguousarray(wr.T)
    for name, arr in (("gate", gate), ("up", up), ("down", w2), ("router", router)):
        np.ascontiguousarray(arr, np.float32).tofile(os.path.join(d, f"{name}.f32"))
    calls = None
    for t, xs in inputs.items():
        calls = len(xs) - 1
        np.concatenate([np.asarray(x, np.float32).reshape(t, h) for x in xs]).tofile(os.path.join(d, f"x_{t}.f32"))
    refs = {t: reference(np.asarray(xs[0], np.float32).reshape(t, h), gate, up, w2, router, k)
            for t, xs in inputs.items() if t <= 64}
    out = {}
    for ty in types:
        proc = subprocess.run([exe, d, str(h), str(f), str(e), str(k), ty, str(threads),
                               ",".join(map(str, inputs)), str(calls)], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"   ggml {ty}: failed: {proc.stderr.strip()}", flush=True)
            continue
        for line in proc.stdout.splitlines():
            r = json.loads(line)
            t = r["tokens"]
            if t in refs:
                y = np.fromfile(os.path.join(d, f"y_{t}_{ty}.f32"), np.float32).reshape(t, h)
                err = float(np.linalg.norm(y - refs[t]) / np.linalg.norm(refs[t]))
                if not err <= MAX_ERROR[ty]:
                    print(f"   ggml {ty} T={t}: output off by {err:.2e} (relative L2) from NumPy: not reported",
                          flush=True)
                    continue
            out[(ty, t)] = (r["best_ms"], r["median_ms"], r["repacked"])
            print(f"   ggml {ty:5s} T={t:4d} {r['best_ms']:9.3f} ms (median {r['median_ms']:.3f})"
                  f"{' repacked' if r['repacked'] else ''}", flush=True)
    for p in glob.glob(os.path.join(d, "*.f32")):
        os.remove(p)
    return out


def main():
    import argparse
    from run import fresh_inputs, layer_weights
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--types", default="f32,q8_0,q4_0")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--tokens", default="1,8,64,512")
    args = ap.parse_args()
    h, f, e, k = 2048, 2048, 16, 1
    _, w1, w2, wr = layer_weights(0, h, f, e)
    inputs = {t: fresh_inputs(1000 + t, (t, h), args.repeat + 1) for t in map(int, args.tokens.split(","))}
    run_layer("zaya1", w1, w2, wr, k, inputs, args.types.split(","), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())

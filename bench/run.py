#!/usr/bin/env python3
"""moec vs ONNX Runtime vs this machine's roofline, in one run.

    python3 bench/run.py [--quick] [--build build] [--threads N] [--repeat N] [--out bench/results]

1. Measures the roofline with all threads (bench/roofline.c, compiled here): one-pass read bandwidth and
   triad bandwidth over buffers far larger than the last-level cache, and the FP32 FMA peak; again at the
   end, the better measurement counting (a noisy moment would understate the machine).
2. For each workload, generates the ONNX model (cached in bench/.cache, never committed), compiles it with
   `moec compile --cpu=native`, loads it in-process through libmoert's C API (ctypes) and in ONNX Runtime
   with the same thread count, and times both on the same inputs: a fresh random input per call (so the
   experts a call touches change like in real traffic and are not all sitting in the cache), a warm-up call,
   then --repeat timed calls; best and median.
3. Reports per workload and token count: ms per call for each, moec/ORT speed-up, bytes of weights the call
   touched (the distinct experts its tokens chose, from the same routing computed in NumPy), FLOPs, and
   moec's roofline fraction = max(bytes / read BW, FLOPs / peak) / time (medians: a call's bytes vary with its
   routing).
4. Writes bench/results/latest.json, latest.md (the table) and latest.png (time vs tokens with the roofline).

moec runs each layer with every weight storage in --weights (fp32, bf16, int8, int4; ONNX Runtime always fp32);
the roofline's bytes follow the storage. --quick runs the ZAYA1 layer with fp32 and int8 (about a minute here);
the full run adds OLMoE-like, the MoE++ layer with its 10% predictor mask (ORT runs the same layer unmasked) and
ONNX Runtime on OLMoE's block as PyTorch exports it (moec compiling the same file), the compile time / load
time of a 32-layer MoE stack and Mixtral-like (bf16 weights for moec, ~9 GB of memory; --no-mixtral skips
it), and copies the table into README.md. Where llama-cpp-python is installed, llama.cpp's ggml runs the ZAYA1
and OLMoE-like layers too, on the same weights (quantised by ggml at equal bits) and inputs
(bench/ggml_peer.py; --no-ggml skips it).
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

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(HERE, ".cache")


# ---- the roofline ------------------------------------------------------------------------------------------

def roofline(threads):
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "roofline")
        # (clang 19's -march=native warns about AVX10.1 on CPUs that report it, once per function: quiet)
        subprocess.run(["clang-19", "-O3", "-march=native", "-Wno-invalid-feature-combination", "-pthread",
                        os.path.join(HERE, "roofline.c"), "-o", exe], check=True)
        out = subprocess.run([exe, str(threads), "1024"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


# ---- models ------------------------------------------------------------------------------------------------

def external(arrays, path):
    """TensorProtos whose bytes live in `path`.data (written here, 64-byte aligned): models over protobuf's 2 GB
    limit never pass through one message."""
    data = path + ".data"
    protos = []
    with open(data, "wb") as f:
        for name, a in arrays:
            offset = f.tell()
            f.write(np.ascontiguousarray(a, np.float32).tobytes())
            f.write(b"\0" * ((-f.tell()) % 64))
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=a.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in [("location", os.path.basename(data)), ("offset", str(offset)), ("length", str(a.nbytes))]:
                e = t.external_data.add()
                e.key, e.value = k, v
            protos.append(t)
    return protos


def fresh_inputs(seed, shape, n):
    """n different random f32 inputs from one generator: each call of a timing gets its own (so its tokens pick
    other experts, read from memory, not the cache the previous call left warm)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(n)]


def layer_weights(seed, h, f, e):
    """A layer's expert weights (fc1 [E, 2F, H], fc2 [E, H, F]) and router [H, E], always drawn in this order
    from `seed`, so the timing loop can regenerate the router both sides use."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((e, 2 * f, h), dtype=np.float32) * np.float32(0.02)
    w2 = rng.standard_normal((e, h, f), dtype=np.float32) * np.float32(0.02)
    return rng, w1, w2, rng.standard_normal((h, e), dtype=np.float32)


def ort_moe_model(path, h, f, e, k, seed=0):
    """com.microsoft.MoE (SwiGLU, interleaved rows, renormalised top-k) with its router MatMul in front."""
    if os.path.exists(path):
        return
    rng, w1, w2, wr = layer_weights(seed, h, f, e)
    inits = external([("w1", w1), ("w2", w2), ("wr", wr)], path)
    del w1, w2
    nodes = [helper.make_node("MatMul", ["x", "wr"], ["logits"]),
             helper.make_node("MoE", ["x", "logits", "w1", "", "w2"], ["y"], domain="com.microsoft", k=k,
                              activation_type="swiglu", swiglu_fusion=1, normalize_routing_weights=1)]
    save(path, nodes, inits, h, "moe")


def moepp_model(path, h, f, e, rank, keep, seed=0):
    """moec.SparseMoE: top-1 of `e` experts with a low-rank predictor choosing `keep` of F dims per token."""
    if os.path.exists(path):
        return
    rng, w1, w2, wr = layer_weights(seed, h, f, e)
    pa = rng.standard_normal((e, h, rank), dtype=np.float32) * np.float32(0.02)
    pb = rng.standard_normal((e, rank, f), dtype=np.float32) * np.float32(0.02)
    inits = external([("wr", wr), ("w1", w1), ("w2", w2), ("pa", pa), ("pb", pb)], path)
    del w1, w2
    nodes = [helper.make_node("SparseMoE", ["x", "wr", "", "w1", "", "w2", "", "", "pa", "pb"], ["y"], domain="moec",
                              k=1, keep=keep, activation="swiglu")]
    save(path, nodes, inits, h, "moec")


def stack_model(path, layers, h, f, e, k, seed=0):
    """`layers` com.microsoft.MoE layers in a row (router MatMul, SwiGLU experts, residual Add each)."""
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    arrays, nodes, prev = [], [], "x"
    for i in range(layers):
        arrays += [(f"wr{i}", rng.standard_normal((h, e), dtype=np.float32)),
                   (f"w1_{i}", rng.standard_normal((e, 2 * f, h), dtype=np.float32) * np.float32(0.02)),
                   (f"w2_{i}", rng.standard_normal((e, h, f), dtype=np.float32) * np.float32(0.02))]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"wr{i}"], [f"logits{i}"]),
                  helper.make_node("MoE", [prev, f"logits{i}", f"w1_{i}", "", f"w2_{i}"], [f"moe{i}"],
                                   domain="com.microsoft", k=k, activation_type="swiglu", swiglu_fusion=1,
                                   normalize_routing_weights=1),
                  helper.make_node("Add", [prev, f"moe{i}"], [out])]
        prev = out
    save(path, nodes, external(arrays, path), h, "moe")


def exported_block_model(path, family, h, f, e, k, seed=0):
    """A transformers MoE block with its post-attention RMSNorm and residual, as an exporter writes it: the graph
    a user without moec runs in ONNX Runtime. Saves the RMSNorm and router weights next to it (for the routing
    the bench needs to count touched bytes). Needs torch and transformers.

      olmoe:   OlmoeSparseMoeBlock with transformers' batched_mm experts, `torch.onnx.export(dynamo=True)`
      mixtral: MixtralSparseMoeBlock with its default eager experts through the TorchScript exporter
               (`dynamo=False`, Optimum's and older scripts' path): the loop over the experts a batch hits,
               traced with an input that hits all of them, so the graph holds a NonZero / Gather / MatMul /
               ScatterElements body per expert; moec raises them to one dispatch"""
    if os.path.exists(path):
        return
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch
    if family == "olmoe":
        from transformers import OlmoeConfig as Config
        from transformers.models.olmoe.modeling_olmoe import OlmoeRMSNorm as Norm, OlmoeSparseMoeBlock as Block
        cfg = Config(hidden_size=h, intermediate_size=f, num_experts=e, num_experts_per_tok=k, norm_topk_prob=False)
        cfg._experts_implementation = "batched_mm"
    else:
        from transformers import MixtralConfig as Config
        from transformers.models.mixtral.modeling_mixtral import MixtralRMSNorm as Norm, MixtralSparseMoeBlock as Block
        cfg = Config(hidden_size=h, intermediate_size=f, num_local_experts=e, num_experts_per_tok=k)
    block = Block(cfg)
    block.experts.config._experts_implementation = "batched_mm" if family == "olmoe" else "eager"

    class Sub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.moe = Norm(h, eps=cfg.rms_norm_eps), block

        def forward(self, x):
            y = self.moe(self.norm(x))
            return x + (y[0] if isinstance(y, tuple) else y)

    model = Sub().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():  # transformers leaves them uninitialised outside from_pretrained
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if p.dim() == 1
                    else 0.02 * torch.randn(p.shape, generator=gen))
        if family == "olmoe":
            torch.onnx.export(model, (torch.randn(1, 4, h),), path, dynamo=True, input_names=["hidden_states"],
                              output_names=["output"], dynamic_shapes=({1: torch.export.Dim("seq", min=1, max=4096)},),
                              external_data=True, verbose=False)
        else:
            torch.onnx.export(model, (torch.randn(1, 256, h, generator=gen),), path, dynamo=False, opset_version=17,
                              input_names=["hidden_states"], output_names=["output"],
                              dynamic_axes={"hidden_states": {1: "seq"}, "output": {1: "seq"}})
    np.savez(path + ".router.npz", norm=model.norm.weight.detach().numpy(),
             gate=block.gate.weight.detach().numpy().T.copy(), eps=cfg.rms_norm_eps)


def save(path, nodes, inits, h, domain):
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])], inits)
    opsets = [helper.make_opsetid("", 17)]
    opsets.append(helper.make_opsetid("com.microsoft" if domain == "moe" else "moec", 1))
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())


# ---- moert through its C API --------------------------------------------------------------------------------

# libmoert through its C API: runtime/python/moert.py (ctypes).
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
import moert  # noqa: E402

import ggml_peer  # noqa: E402  (bench/ggml_peer.py: llama.cpp's ggml on the same layers)


# ---- timing -------------------------------------------------------------------------------------------------

def time_calls(fn, inputs, warm_all=False):
    """(best, median) ms over inputs[1:] after a warm-up call on inputs[0] (page faults, thread start), or with
    `warm_all` on every input: each weight a timed call reads was used once before (mapped in, checksummed,
    resident, as the weights ggml holds in its own buffers are), while consecutive calls still read other
    experts, from memory."""
    for x in inputs if warm_all else inputs[:1]:
        fn(x)
    times = []
    for x in inputs[1:]:
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)


def compile_and_load(moec, rt, src, art, threads, *flags):
    """`moec compile` src -> art (for this CPU), then load it; returns (model, compile seconds, load ms). The
    kernel cache is off: the compile time is the compiler's."""
    t0 = time.time()
    subprocess.run([moec, "compile", src, "-o", art, "--cpu=native", "--quiet", "--kernel-cache=off", *flags],
                   check=True,
                   stderr=subprocess.DEVNULL)
    compile_s = time.time() - t0
    t0 = time.time()
    model = rt.load(art, threads=threads)
    return model, compile_s, (time.time() - t0) * 1e3


def ort_session(ort, path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def bound(bytes_touched, flops, roof, weights=""):
    """The roofline's time in ms: reading the touched weights once at the read bandwidth, or the FLOPs at peak
    (the BF16 dot-product peak for a variant with bf16 activations, where the CPU has one)."""
    peak = roof.get("bf16_gflops") if weights.endswith("+a16") else None
    return max(bytes_touched / (roof["read_gbs"] * 1e9), flops / ((peak or roof["fp32_gflops"]) * 1e9)) * 1e3


def report_row(key, weights, title, t, moec, ort_, bytes_touched, flops, roof, compile_s, load_ms):
    """One table row (printed as it is measured): times (best, median) for moec and ORT, the roofline bound."""
    """`ort_` is None where ONNX Runtime cannot run the file (the row says "fails")."""
    bound_ms = bound(bytes_touched, flops, roof, weights)
    ort_ = ort_ or (None, None)
    row = dict(workload=key, weights=weights, title=title, tokens=t, moec_ms=round(moec[0], 3),
               moec_median_ms=round(moec[1], 3),
               ort_ms=round(ort_[0], 3) if ort_[0] else "fails", ort_median_ms=round(ort_[1], 3) if ort_[1] else "-",
               speedup=round(ort_[0] / moec[0], 2) if ort_[0] else "-", bytes_touched=int(bytes_touched),
               flops=int(flops), roofline_ms=round(bound_ms, 3), roofline_fraction=round(bound_ms / moec[1], 2),
               compile_s=round(compile_s, 1), load_ms=round(load_ms, 1))
    ort_text = f"{ort_[0]:9.3f} ms  x{row['speedup']:5.2f}" if ort_[0] else "    fails"
    print(f"   {weights:5s} T={t:4d} moec {moec[0]:9.3f} ms  ORT {ort_text}  "
          f"{bytes_touched / 1e6:8.1f} MB  {flops / 1e9:7.2f} GFLOP  roofline {row['roofline_fraction']:.2f}",
          flush=True)
    return row


def routed_experts(x, wr, k):
    logits = x.astype(np.float64) @ wr.astype(np.float64)
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-mixtral", action="store_true",
                    help="skip the Mixtral-like layer (5.6 GB of fp32 weights for ONNX Runtime, ~9 GB of memory)")
    ap.add_argument("--weights", default=None,
                    help="moec weight storages to time, comma-separated (default: fp32,bf16,int8,int4; --quick: "
                         "fp32,int8)")
    ap.add_argument("--no-readme", action="store_true", help="do not copy the table into README.md")
    ap.add_argument("--no-ggml", action="store_true",
                    help="skip llama.cpp's ggml on the ZAYA1 and OLMoE-like layers (bench/ggml_peer.py)")
    ap.add_argument("--only", default=None,
                    help="run only these workloads, comma-separated: zaya1, olmoe, moepp, mixtral, olmoe_pytorch, "
                         "mixtral_torchscript, stack32, whole, ep (implies --no-readme)")
    args = ap.parse_args()
    import onnxruntime as ort
    os.makedirs(CACHE, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    moec = os.path.join(args.build, "bin", "moec")
    rt = moert.Runtime(os.path.join(args.build, "lib", "libmoert.so"))

    variants = (args.weights or ("fp32,int8" if args.quick else "fp32,bf16,int8,int4")).split(",")
    for w in variants:
        act = w.partition("+")[2]
        if variant_storage(w) not in WEIGHT_BYTES or not (act in ("", "a8") or act == "a16" and w == "bf16+a16"):
            ap.error(f"--weights: unknown storage '{w}' (fp32, bf16, fp16, int8, int4; int8+a8, int4+a8: with "
                     "int8 activations; bf16+a16: with bf16 activations)")

    roof = roofline(args.threads)
    bf16_peak = roof.get("bf16_gflops")
    print(f"roofline ({args.threads} threads): read {roof['read_gbs']} GB/s, triad {roof['triad_gbs']} GB/s, "
          f"FP32 FMA peak {roof['fp32_gflops']} GFLOP/s, BF16 peak "
          f"{bf16_peak if bf16_peak else 'n/a (no AVX512-BF16)'}", flush=True)

    # name, H, F, E, k, kind, ORT-side note
    workloads = [("ZAYA1-8B MoE layer (16 experts, top-1; ORT and moec without the skip class)", "zaya1",
                  2048, 2048, 16, 1, "moe")]
    if not args.quick:
        workloads += [("OLMoE-like (64 experts, top-8, F=1024)", "olmoe", 2048, 1024, 64, 8, "moe"),
                      ("MoE++ layer (128 experts, top-1, F=512, predictor rank 64 keeps 10%; ORT: unmasked)",
                       "moepp", 4096, 512, 128, 1, "moepp"),
                      ]
    if (not args.quick and not args.no_mixtral) or "mixtral" in (args.only or "").split(","):
        workloads.append(("Mixtral-like (8 experts, top-2, F=14336; moec bf16 weights, ORT fp32)", "mixtral",
                          4096, 14336, 8, 2, "moe-bf16"))
    only = set(args.only.split(",")) if args.only else None
    if only:
        args.no_readme = True
        workloads = [w for w in workloads if w[1] in only]
    tokens = [1, 8, 64, 512]
    rows, stack = [], None
    for title, key, h, f, e, k, kind in workloads:
        print(f"== {title}", flush=True)
        ort_path = os.path.join(CACHE, f"{key}.onnx")
        t0 = time.time()
        ort_moe_model(ort_path, h, f, e, k)
        moec_src = ort_path
        if kind == "moepp":
            moec_src = os.path.join(CACHE, f"{key}_moec.onnx")
            moepp_model(moec_src, h, f, e, 64, max(1, f // 10))
        print(f"   models generated in {time.time() - t0:.1f} s", flush=True)
        sess = ort_session(ort, ort_path, args.threads)
        wr = layer_weights(0, h, f, e)[3]  # the router both models were generated with
        inputs = {t: fresh_inputs(1000 + t, (t, h), args.repeat + 1) for t in tokens}
        ort_times = {t: time_calls(lambda x: sess.run(None, {"x": x}), inputs[t], warm_all=True) for t in tokens}
        touched = {t: statistics.median(len(np.unique(routed_experts(x, wr, k))) for x in inputs[t][1:])
                   for t in tokens}
        del sess
        peer = {}
        if key in GGML_WORKLOADS and not args.no_ggml:  # llama.cpp's ggml on the same weights and inputs
            try:
                _, w1, w2, _ = layer_weights(0, h, f, e)
                types = sorted({ggml_peer.PAIRS[variant_storage(w)] for w in variants})
                peer = ggml_peer.run_layer(key, w1, w2, wr, k, inputs, types, args.threads)
                del w1, w2
            except (ImportError, subprocess.CalledProcessError) as err:
                print(f"   ggml peer skipped: {err} (pip install llama-cpp-python)", flush=True)
        # (the Mixtral-like layer runs bf16 weights only: those of the variants asked for, else plain bf16)
        for w in ([v for v in variants if variant_storage(v) == "bf16"] or ["bf16"] if kind == "moe-bf16"
                  else variants):
            model, compile_s, load_ms = compile_and_load(moec, rt, moec_src, os.path.join(CACHE, f"{key}_{w}.moex"),
                                                         args.threads, *variant_flags(w))
            active_f = max(1, f // 10) if kind == "moepp" else f
            per_expert = 3 * h * active_f * WEIGHT_BYTES[variant_storage(w)] + ((h * 64 + 64 * f) * 4 if kind == "moepp" else 0)
            print(f"   {w}: compiled in {compile_s:.1f} s, loaded in {load_ms:.0f} ms", flush=True)
            for t in tokens:
                m_best, m_med = time_calls(lambda x: model.run({"x": x}), inputs[t], warm_all=True)
                o_best, o_med = ort_times[t]
                bytes_touched = touched[t] * per_expert + h * e * 4
                flops = t * k * 6 * h * active_f + 2 * t * h * e
                # Medians on both sides: the bytes a call touches vary with its routing.
                rows.append(report_row(key, w, title, t, (m_best, m_med), (o_best, o_med), bytes_touched, flops,
                                       roof, compile_s, load_ms))
                ggml_type = ggml_peer.PAIRS.get(variant_storage(w))
                if (ggml_type, t) in peer:
                    g_best, g_med, repacked = peer[(ggml_type, t)]
                    rows[-1].update(ggml_type=ggml_type + (" repacked" if repacked else ""), ggml_ms=round(g_best, 3),
                                    ggml_median_ms=round(g_med, 3), vs_ggml=round(g_best / m_best, 2))
            model.close()

    # MoE blocks as exporters write them: ORT runs the unfused export, moec compiles the same file.
    exported = [("olmoe_pytorch", "olmoe", 2048, 1024, 64, 8, [1, 8, 64],
                 "OLMoE block as PyTorch exports it (64 experts, top-8, F=1024, RMSNorm + residual; ORT runs the "
                 "unfused export, moec compiles the same file)"),
                ("mixtral_torchscript", "mixtral", 2048, 1024, 8, 2, [1, 8, 64, 512],
                 "Mixtral-like block as the TorchScript exporter writes eager experts (8 experts, top-2, F=1024, "
                 "RMSNorm + residual; a NonZero/Gather/ScatterElements body per expert: ORT runs those ops, moec "
                 "compiles the same file to one dispatch)")]
    for key, family, h, f, e, k, token_counts, title in exported:
        if args.quick or (only and key not in only):
            continue
        print(f"== {title}", flush=True)
        src = os.path.join(CACHE, f"{key}.onnx")
        try:
            exported_block_model(src, family, h, f, e, k)
        except ImportError as err:
            print(f"   skipped: {err} (needs torch and transformers)", flush=True)
            continue
        model, compile_s, load_ms = compile_and_load(moec, rt, src, os.path.join(CACHE, f"{key}.moex"),
                                                     args.threads)
        sess = ort_session(ort, src, args.threads)
        r = np.load(src + ".router.npz")
        # (OLMoE's batched_mm export gathers each token's k experts' weights: T=512 would copy 100 GB.)
        for t in token_counts:
            rng = np.random.default_rng(2000 + t)
            inputs = [rng.standard_normal((1, t, h), dtype=np.float32) for _ in range(args.repeat + 1)]
            m_best, m_med = time_calls(lambda x: model.run({"hidden_states": x}), inputs)
            try:
                ort_t = time_calls(lambda x: sess.run(None, {"hidden_states": x}),
                                   inputs[:4] if t >= 64 and key == "olmoe_pytorch" else inputs)
            except Exception as err:  # the TorchScript trace runs only on inputs that hit every expert
                print(f"   ONNX Runtime fails at T={t}: {str(err).splitlines()[-1][:160]}", flush=True)
                ort_t = None
            xs = [x[0] / np.sqrt(np.mean(x[0].astype(np.float64) ** 2, axis=1, keepdims=True) + r["eps"]) * r["norm"]
                  for x in inputs[1:]]
            touched = statistics.median(len(np.unique(routed_experts(x, r["gate"], k))) for x in xs)
            bytes_touched = touched * 3 * h * f * 4 + h * e * 4
            flops = t * k * 6 * h * f + 2 * t * h * e
            rows.append(report_row(key, "fp32", title, t, (m_best, m_med), ort_t, bytes_touched, flops, roof,
                                   compile_s, load_ms))
        model.close()
        del sess

    if not args.quick and (not only or "stack32" in only):  # a 32-layer stack's compile and load time
        layers, h, f, e, k = 32, 1024, 512, 8, 2
        print(f"== {layers}-layer MoE stack (H={h}, {e} experts, top-{k}, F={f}, fp32)", flush=True)
        src = os.path.join(CACHE, "stack32.onnx")
        stack_model(src, layers, h, f, e, k)
        art = os.path.join(CACHE, "stack32.moex")
        model, compile_s, load_ms = compile_and_load(moec, rt, src, art, args.threads)
        x = np.random.default_rng(0).standard_normal((1, h), dtype=np.float32)
        decode_best, _ = time_calls(lambda v: model.run({"x": v}), [x] * (args.repeat + 1))
        model.close()
        stack = dict(layers=layers, hidden=h, experts=e, top_k=k, ffn=f, weights_gb=round(os.path.getsize(
            src + ".data") / 1e9, 2), artifact_gb=round(os.path.getsize(art) / 1e9, 2), compile_s=round(compile_s, 1),
            load_ms=round(load_ms, 1), decode_ms=round(decode_best, 2))
        print(f"   compiled in {compile_s:.1f} s ({stack['weights_gb']} GB of weights, artifact "
              f"{stack['artifact_gb']} GB), loaded in {load_ms:.0f} ms, one token through all layers "
              f"{decode_best:.2f} ms", flush=True)

    whole_rows = []
    if not args.quick and (not only or "whole" in only):  # a whole MoE LM with its KV cache (bench/whole_model.py)
        print("== Qwen3-MoE-like decoder with KV cache (H 2048, 32q/4kv heads, 32 experts top-4, F 768, vocab "
              "32000, 2 layers)", flush=True)
        import whole_model
        import llama_peer
        try:
            whole_rows = whole_model.run(args.build, args.threads, variants, roof, min(args.repeat, 5))
            types = [t for t, s in llama_peer.PAIRS.items() if s in map(variant_storage, variants)]
            whole_model.add_peer(whole_rows, llama_peer.run(args.threads, types, min(args.repeat, 5)))
        except ImportError as err:
            print(f"   skipped: {err} (needs torch and transformers)", flush=True)

    ep = None
    if not args.quick and (not only or "ep" in only):  # one MoE layer on 1, 2, 4 ranks (bench/expert_parallel.py)
        import shutil
        import expert_parallel
        if shutil.which("mpirun") and shutil.which("mpicc"):
            ep = expert_parallel.run(args.build, "olmoe", repeat=min(args.repeat, 10), cores=args.threads)
        else:
            print("== expert parallelism: skipped (needs Open MPI: mpirun, mpicc)", flush=True)

    # The roofline once more at the end: a noisy moment at the start would understate the machine and inflate
    # every fraction. The best of the two measurements counts, and the fractions are computed from it.
    again = roofline(args.threads)
    for key in ("read_gbs", "triad_gbs", "fp32_gflops"):
        roof[key] = max(roof[key], again[key])
    print(f"roofline at the end: read {again['read_gbs']} GB/s, FP32 peak {again['fp32_gflops']} GFLOP/s; using the "
          f"best: read {roof['read_gbs']} GB/s, FP32 peak {roof['fp32_gflops']} GFLOP/s", flush=True)
    for row in rows:
        bound_ms = bound(row["bytes_touched"], row["flops"], roof, row["weights"])
        row["roofline_ms"] = round(bound_ms, 3)
        row["roofline_fraction"] = round(bound_ms / row["moec_median_ms"], 2)

    result = dict(machine=dict(cpu=platform.processor() or platform.machine(), threads=args.threads, roofline=roof),
                  date=time.strftime("%Y-%m-%d %H:%M"), quick=args.quick, rows=rows, stack=stack, whole=whole_rows,
                  expert_parallel=ep)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Measured {result['date']} with {args.threads} threads. Roofline: read {roof['read_gbs']} GB/s, triad "
             f"{roof['triad_gbs']} GB/s, FP32 peak {roof['fp32_gflops']} GFLOP/s, BF16 peak "
             f"{bf16_peak or 'n/a'}. ONNX Runtime runs fp32 weights; moec's weight storage is the second column. "
             f"Best of {args.repeat} calls, fresh input per call.", "",
             "| workload | moec weights | T | moec ms (best / median) | ORT ms (best / median) | "
             "moec/ORT speed-up (best) | weights touched MB (median) | GFLOP | roofline ms | "
             "moec fraction of roofline (median) | llama.cpp's ggml ms (type; best / median) | moec/ggml speed-up "
             "(best) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peer_cells = (f"{r['ggml_type']}: {r['ggml_ms']} / {r['ggml_median_ms']} | {r['vs_ggml']}" if "ggml_ms" in r
                      else "- | -")
        lines.append(f"| {r['workload']} | {r['weights']} | {r['tokens']} | {r['moec_ms']} / {r['moec_median_ms']} | "
                     f"{r['ort_ms']} / {r['ort_median_ms']} | {r['speedup']} | "
                     f"{r['bytes_touched'] / 1e6:.1f} | {r['flops'] / 1e9:.2f} | {r['roofline_ms']} | "
                     f"{r['roofline_fraction']} | {peer_cells} |")
    if any("ggml_ms" in r for r in rows):
        lines += ["", "llama.cpp's ggml (bench/ggml_peer.py, the llama-cpp-python build): the layer as llama.cpp builds "
                  "a MoE FFN (ggml_mul_mat_id; softmax top-k gating), the same weights quantised by ggml (F32 / BF16 / "
                  "Q8_0 / Q4_0 at equal bits; 'repacked': interleaved as llama.cpp does at load), the same inputs; "
                  "SiLU(gate) * up where ORT's file has ORT's SwiGLU (the same work per element)."]
    if stack:
        lines += ["", f"Compile time of a {stack['layers']}-layer MoE stack (H={stack['hidden']}, {stack['experts']} "
                  f"experts, top-{stack['top_k']}, F={stack['ffn']}, {stack['weights_gb']} GB of fp32 weights): "
                  f"{stack['compile_s']} s; artifact {stack['artifact_gb']} GB, loaded in {stack['load_ms']} ms; one "
                  f"token through all layers {stack['decode_ms']} ms."]
    if whole_rows:
        lines += ["", "Whole model: a Qwen3-MoE-like decoder with KV cache (hidden 2048, 32 query / 4 KV heads of 128, "
                  "32 experts top-4 with F 768, vocab 32000, 2 layers; random weights, exported by torch.onnx with "
                  "past_key_values). moec's --weights sets experts and dense layers; ONNX Runtime runs the fp32 "
                  "file; llama.cpp runs the same weights as GGUF (F32 / BF16 / Q8_0 / Q4_0). Roofline: every byte a "
                  "call reads (weights, chosen experts, KV cache) at the read bandwidth, or its FLOPs at the FP32 peak.",
                  "", whole_model.table(whole_rows)]
    if ep:
        lines += ["", f"Expert parallelism ({ep['layer']}; `mpirun -np N moert run`, the ranks sharing this machine's "
                  f"{ep['cores']} cores; bench/expert_parallel.py): time per layer call, and rank 0's exchanges (bytes "
                  "it sent, their share of its dispatch time, waiting for the other ranks included).", "",
                  expert_parallel.table(ep)]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    if not args.quick and not args.no_readme:
        update_readme(table)
    try:
        plot(rows, os.path.join(args.out, "latest.png"))
    except ImportError:
        print("(matplotlib not installed: no plot; pip install matplotlib)")
    return 0


GGML_WORKLOADS = ("zaya1", "olmoe")  # the layers ggml runs too (bench/ggml_peer.py)


def _abi_define(name):
    """An integer #define of kernels/cpu/moert_kernel_abi.h (the one place the storage facts are written)."""
    import re
    with open(os.path.join(HERE, "..", "kernels", "cpu", "moert_kernel_abi.h")) as f:
        return int(re.search(rf"#define {name} (\d+)", f.read()).group(1))


# Bytes per weight as moec stores it, block scales included: int8/int4 codes with one MOERT_QSCALE_BYTES (f16)
# scale per MOERT_EXPERT_QBLOCK weights, experts and linear layers alike.
_SCALE = _abi_define("MOERT_QSCALE_BYTES") / _abi_define("MOERT_EXPERT_QBLOCK")
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1 + _SCALE, "int4": 0.5 + _SCALE}


def variant_flags(v):
    """moec flags of a bench variant: a storage (`int4`), a storage with int8 activations (`int4+a8`:
    --activations=int8, integer dot products in decode) or bf16 with bf16 activations (`bf16+a16`:
    --activations=bf16, bf16 pair products in prefill)."""
    storage, _, act = v.partition("+")
    return [f"--weights={storage}"] + {"a8": ["--activations=int8"], "a16": ["--activations=bf16"]}.get(act, [])


def variant_storage(v):
    return v.partition("+")[0]


def update_readme(table):
    """Puts the table between README.md's bench markers."""
    path = os.path.join(ROOT, "README.md")
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    text = open(path).read()
    if begin in text and end in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
        with open(path, "w") as f:
            f.write(text)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = sorted({r["workload"] for r in rows}, key=[r["workload"] for r in rows].index)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rs = [r for r in rows if r["workload"] == key]
        first = [r for r in rs if r["weights"] == rs[0]["weights"]]
        t = [r["tokens"] for r in first]
        for w in sorted({r["weights"] for r in rs}, key=[r["weights"] for r in rs].index):
            rw = [r for r in rs if r["weights"] == w]
            ax.loglog([r["tokens"] for r in rw], [r["moec_ms"] for r in rw], "o-", label=f"moec {w}")
            ax.loglog([r["tokens"] for r in rw], [r["roofline_ms"] for r in rw], "--", alpha=0.5,
                      label=f"roofline {w}")
        ax.loglog(t, [r["ort_ms"] for r in first], "ks-", label="ONNX Runtime (fp32)")
        ax.set_title(key)
        ax.set_xlabel("tokens per call")
        ax.set_ylabel("ms per call")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())

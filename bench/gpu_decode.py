#!/usr/bin/env python3
"""GPU decode benchmark: moec's GPU kernels at decode token counts, as a fraction of the device's own
device-to-device copy bandwidth measured in the same run, beside a PyTorch eager MoE layer on the same GPU.

Two phases, because moec (LLVM) runs here and the GPU is on a lent machine without it:

  gpu_decode.py --moec build/bin/moec --prepare DIR      generate the layers, compile them (--target=cpu,hip,cuda,
                                                         bf16 weights), gzip artifacts (weights compress: constant)
  gpu_decode.py --moert build/bin/moert --run DIR        on the GPU: copy bandwidth, then each layer x T

Linear layers (`moe.linear` dispatches): a Qwen3-MoE-like LM head (K 2048, N 32000) in fp32, bf16, int8 and
int4, and merged Q/K/V projections (K 2048 -> 4096 + 512 + 512, bf16: one dispatch, three outputs), at M = 1 and 8 rows (decode: the GEMV,
bandwidth-bound: bytes = all its weights) and M = 512 (prefill: the GEMM, reported in TFLOP/s and as a fraction
of the bf16 matmul rate PyTorch reaches in the same run, an 8192^3 bf16 matmul: the matrix-core peak the
issue's prefill target is a fraction of), beside PyTorch's bf16 `F.linear` on the same GPU.

MoE shapes: OLMoE-like (H 2048, F 1024, E 64, k 8), Mixtral-like (H 4096, F 14336, E 8, k 2), each with bf16 and
int8 weights (`_int8`: one f16 scale per 32 weights, counted in the bytes), and a tiny layer (H 256, F 128, E 8,
k 2) whose time is the per-layer fixed cost. Weights are constant (the timing of the
kernels does not depend on values) so the artifacts compress for transfer; the router and inputs are random,
so tokens pick different experts. Bytes = weights read by one call (chosen experts' rows + router), from the
tile table the kernels built. Time = device time per call, 200 calls back to back (no host sync in between).
MoE prefill (the bf16 OLMoE-like and Mixtral-like layers at T = 512: the experts on matrix cores, `up_mma` /
`down_mma`): TFLOP/s of the experts' products (6 T k H F) and that as a fraction of the same bf16 matmul rate,
beside the PyTorch eager layer.

Whole model (`whole`): bench/whole_model.py's Qwen3-MoE-like decoder (2 layers of hidden 2048, 32 query / 4
KV heads of 128, 32 experts top-4 of F 768, vocab 32000), bf16 weights (constant but for the routers, so the
artifact compresses), run as `moert generate --device=gpu` runs it, through libmoert's Python binding: a
session's decode step after 128 / 1024 / 4096 cached positions (bf16 KV caches in device memory; wall time
per token, the host's part of a step included) and a prompt of 128 / 512 tokens into an empty cache. Bytes a
token reads = whole_model.token_cost (the weights of the attention projections, LM head, routers, the 4 chosen
experts of each layer, the KV cache), as a fraction of the copy bandwidth; beside transformers' eager
Qwen3MoeForCausalLM in bf16 on the same GPU with the same config (when transformers is installed there).
`whole_tiny` is the same at toy sizes, to try the path on the emulated device
(`--targets cpu,emu --only whole_tiny`, then `--run DIR --device emu`).

Fixed cost per layer (`fixed`): that toy decoder with 2 and with 8 layers, decoded by `moert generate` (128
tokens after a 16-token prompt, best of 3): at toy sizes the kernels take next to nothing, so a decode step is
the runtime's fixed costs, and (t8 - t2) / 6 is the cost of a layer (the target: under 10 µs), t2 - 2 x that
the cost of a token outside the layers (its session, sampling, the mask and positions). On the emulated device
(`--device emu`) kernels are skipped (MOERT_EMU_SKIP_KERNELS=1: launches counted, not run), so the rows give
libmoert's own host-side cost and the kernels a token makes (staged uploads' copy kernels included). With graphs
on (the default; MOERT_GPU_GRAPHS=0 in the environment launches each kernel directly) the rows also give the
graphs launched, their nodes updated in place and graphs built per decode step (`gpu graphs:` of moert generate):
on a real driver those, not the kernels, are the driver calls a step makes. Each row is measured twice in the
same run, alternating: graphs (the default, or MOERT_GPU_GRAPHS from the environment) and direct launches
(MOERT_GPU_GRAPHS=0).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SHAPES = {
    "tiny": dict(h=256, f=128, e=8, k=2),
    "olmoe": dict(h=2048, f=1024, e=64, k=8),
    "mixtral": dict(h=4096, f=14336, e=8, k=2),
    "olmoe_int8": dict(h=2048, f=1024, e=64, k=8, weights="int8"),
    "mixtral_int8": dict(h=4096, f=14336, e=8, k=2, weights="int8"),
}
TOKENS = [1, 2, 4, 8]
MOE_PREFILL = {"olmoe": [512], "mixtral": [512]}  # T of the MoE prefill rows (inputs made by --run: 8 MB)
LINEAR = {
    "lm_head_fp32": dict(k=2048, n=[32000], weights="fp32"),
    "lm_head": dict(k=2048, n=[32000], weights="bf16"),
    "lm_head_int8": dict(k=2048, n=[32000], weights="int8"),
    "lm_head_int4": dict(k=2048, n=[32000], weights="int4"),
    "qkv": dict(k=2048, n=[4096, 512, 512], weights="bf16"),
}
LINEAR_ROWS = [1, 8, 512]
# Whole models: bench/whole_model.py's CFG with these sizes changed.
WHOLE = {"whole": {},
         "whole_tiny": dict(hidden=64, heads=4, kv_heads=2, head_dim=16, experts=8, top_k=2, ffn=32, vocab=256)}
WHOLE_PAST = {"whole": [128, 1024, 4096], "whole_tiny": [16]}
FIXED_LAYERS = [2, 8]  # the toy decoder's layer counts for the fixed-cost rows
WHOLE_PROMPT = {"whole": [128, 512], "whole_tiny": [8]}


def external(name, shape, out, data, fill=0.01):
    """A constant f32 initializer written to the open external-data file `out` (named `data`)."""
    from onnx import TensorProto
    t = TensorProto()
    t.name, t.data_type = name, TensorProto.FLOAT
    t.dims.extend(shape)
    offset = out.tell()
    row = np.full(shape[1:], fill, np.float32).tobytes()
    for _ in range(shape[0]):
        out.write(row)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data), ("offset", str(offset)), ("length", str(out.tell() - offset))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def make_linear_model(path, k, ns):
    """x [T, k] times one constant weight [k, n] per entry of `ns` (several: projections of one input, which
    moec merges into one dispatch)."""
    import onnx
    from onnx import TensorProto, helper
    data = os.path.basename(path) + ".data"
    with open(path + ".data", "wb") as out:
        inits = [external(f"w{i}", (k, n), out, data) for i, n in enumerate(ns)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(len(ns))]
    if len(ns) > 1:  # the projections' results feed one op (not graph outputs): moec merges them
        nodes.append(helper.make_node("Concat", [f"y{i}" for i in range(len(ns))], ["y"], axis=-1))
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
                          [helper.make_tensor_value_info("y" if len(ns) > 1 else "y0", TensorProto.FLOAT,
                                                         ["T", sum(ns)])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def make_model(path, h, f, e, k):
    """The layer as com.microsoft.MoE with its expert weights in an external data file written in pieces (the
    Mixtral-like one is over protobuf's 2 GiB)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    data = os.path.basename(path) + ".data"
    with open(path + ".data", "wb") as out:
        inits = [external(name, shape, out, data) for name, shape in (("w1", (e, 2 * f, h)), ("w2", (e, h, f)))]
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
    targets = [f"--target={args.targets}"] + ([f"--cuda-arch={args.cuda_arch}"] if args.cuda_arch else [])

    def wanted(name):
        return not args.only or any(part in name for part in args.only.split(","))

    def decoder(name, sizes):
        """whole_model.py's decoder with `sizes` changed, exported (constant weights but for the routers),
        compiled in bf16 and gzipped as DIR/<name>.moex.gz; its config."""
        sys.path.insert(0, HERE)
        import whole_model
        cfg = {**whole_model.CFG, **sizes}
        onnx_path, moex = os.path.join(args.prepare, name + ".onnx"), os.path.join(args.prepare, name + ".moex")
        print(f"{name}: exporting and compiling {cfg}", flush=True)
        whole_model.export(onnx_path, None, cfg, constant=True)
        subprocess.run([args.moec, "compile", onnx_path, "-o", moex, *targets, "--weights=bf16", "--quiet"],
                       check=True)
        for f in os.listdir(args.prepare):  # the export's external data files
            if f.startswith(name + ".onnx"):
                os.remove(os.path.join(args.prepare, f))
        with open(moex, "rb") as src, gzip.open(moex + ".gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.remove(moex)
        return cfg

    whole = {name: decoder(name, sizes) for name, sizes in WHOLE.items()
             if wanted(name) and (name != "whole_tiny" or args.only)}  # the toy model only when asked for
    fixed = {}
    for n in FIXED_LAYERS:
        if wanted(f"fixed{n}"):
            cfg = decoder(f"fixed{n}", {**WHOLE["whole_tiny"], "layers": n})
            np.save(os.path.join(args.prepare, "fixed_prompt.npy"), rng.integers(0, cfg["vocab"], 16, dtype=np.int64))
            fixed[f"fixed{n}"] = n
    layers = {**{n: s for n, s in SHAPES.items()}, **{n: s for n, s in LINEAR.items()}}
    for name, s in layers.items():
        if not wanted(name):
            continue
        onnx_path = os.path.join(args.prepare, name + ".onnx")
        moex = os.path.join(args.prepare, name + ".moex")
        print(f"{name}: generating and compiling {s}", flush=True)
        if name in LINEAR:
            make_linear_model(onnx_path, s["k"], s["n"])
        else:
            make_model(onnx_path, s["h"], s["f"], s["e"], s["k"])
        subprocess.run([args.moec, "compile", onnx_path, "-o", moex, *targets,
                        f"--weights={s.get('weights', 'bf16')}", "--quiet"], check=True)
        os.remove(onnx_path)
        os.remove(onnx_path + ".data")
        with open(moex, "rb") as src, gzip.open(moex + ".gz", "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        os.remove(moex)
        for t in TOKENS if name in SHAPES else []:  # the linear layers' inputs are made by --run (M = 512: 4 MB)
            np.save(os.path.join(args.prepare, f"{name}_x{t}.npy"), rng.standard_normal((t, s["h"])).astype(np.float32))
    with open(os.path.join(args.prepare, "shapes.json"), "w") as f:
        json.dump({"shapes": {n: s for n, s in SHAPES.items() if wanted(n)},
                   "tokens": TOKENS, "linear": {n: s for n, s in LINEAR.items() if wanted(n)},
                   "linear_rows": LINEAR_ROWS, "whole": whole, "fixed": fixed,
                   "moe_prefill": {n: t for n, t in MOE_PREFILL.items() if wanted(n)}}, f)


def cuda_us(layer, repeats):
    """Device time per call of `layer()` (5 warm-up calls, then `repeats` between two CUDA events)."""
    import torch
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


def torch_linear_us(k, ns, x_np, repeats=200):
    """PyTorch eager: bf16 F.linear per weight (the input cast once), on the same GPU."""
    import torch
    ws = [torch.full((n, k), 0.01, dtype=torch.bfloat16, device="cuda") for n in ns]
    x = torch.from_numpy(x_np).to("cuda")

    def layer():
        xb = x.to(torch.bfloat16)
        return [torch.nn.functional.linear(xb, w) for w in ws]

    return cuda_us(layer, repeats)


def torch_bf16_peak_tflops(n=8192, repeats=20):
    """The device's bf16 matrix-core rate as PyTorch (cuBLAS / hipBLASLt) reaches it: an n x n x n bf16 matmul,
    `repeats` back to back, in TFLOP/s (the peak the prefill GEMM rows are a fraction of)."""
    import torch
    a = torch.full((n, n), 0.01, dtype=torch.bfloat16, device="cuda")
    b = torch.full((n, n), 0.01, dtype=torch.bfloat16, device="cuda")
    us = cuda_us(lambda: a @ b, repeats)
    return 2.0 * n * n * n / (us * 1e-6) / 1e12


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

    return cuda_us(layer, repeats)


def torch_whole(cfg, past, prompt, repeats=20, device="cuda"):
    """transformers' eager Qwen3MoeForCausalLM (bf16, the same config) on the GPU: (ms per decode token after each
    `past`, ms per prompt of each `prompt` length), wall time with a device sync per call."""
    import time
    import torch
    import whole_model
    from transformers import AutoModelForCausalLM, DynamicCache
    model = AutoModelForCausalLM.from_config(whole_model.hf_config(cfg)).to(device, torch.bfloat16).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(f):
        best = float("inf")
        for _ in range(repeats + 2):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            best = min(best, (time.perf_counter() - t0) * 1e3)
        return best

    decode, prompts = {}, {}
    with torch.no_grad():
        for p in past:
            ids = torch.randint(0, cfg["vocab"], (1, p), device=device)
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, past_key_values=cache, use_cache=True)
            one = torch.randint(0, cfg["vocab"], (1, 1), device=device)

            def step():
                model(input_ids=one, past_key_values=cache, use_cache=True)
                cache.crop(-1)  # back to p positions

            decode[p] = timed(step)
        for t in prompt:
            ids = torch.randint(0, cfg["vocab"], (1, t), device=device)
            prompts[t] = timed(lambda: model(input_ids=ids, logits_to_keep=1))
    return decode, prompts


def run_whole(args, d, meta, copy):
    """The whole-model rows: moec's decode and prompt through a device session, beside transformers eager."""
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
    import time
    import moert
    import whole_model
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.moert))), "lib", "libmoert.so")
    rt = moert.Runtime(lib)
    rows = []
    for name, cfg in meta.get("whole", {}).items():
        moex = unpack(d, name)
        model = rt.load(moex, device=args.device)
        rng = np.random.default_rng(0)
        past, prompt = WHOLE_PAST[name], WHOLE_PROMPT[name]
        reps = 20 if args.device != "emu" else 2
        try:
            ref_decode, ref_prompt = torch_whole(cfg, past, prompt) if args.device != "emu" else ({}, {})
        except Exception as e:  # noqa: BLE001 - the baseline is optional
            print(f"(transformers baseline failed: {e})")
            ref_decode, ref_prompt = {}, {}
        for p in past:
            sess = model.session(max_context=p + 1, cache_dtype="bf16")
            for p0 in range(0, p, 512):
                sess.append(rng.integers(0, cfg["vocab"], min(512, p - p0)))
            times = []
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                sess.append(rng.integers(0, cfg["vocab"], 1))
                times.append((time.perf_counter() - t0) * 1e3)
                sess.rewind(p)
            up, down = model.gpu_copies()
            sess.close()
            best = min(times[1:])
            bytes_, _ = whole_model.token_cost("bf16", 1, p, 2, c=cfg)
            rows.append((name, f"decode after {p}", best, 1e3 / best, bytes_ / 1e6, bytes_ / (best * 1e-3) / 1e9 / copy,
                         up + down, ref_decode.get(p, float("nan"))))
        for t in prompt:
            sess = model.session(max_context=t, cache_dtype="bf16")
            times = []
            for _ in range(reps + 1):
                ids = rng.integers(0, cfg["vocab"], t)
                t0 = time.perf_counter()
                sess.append(ids)
                times.append((time.perf_counter() - t0) * 1e3)
                sess.rewind(0)
            up, down = model.gpu_copies()
            sess.close()
            best = min(times[1:])
            bytes_, _ = whole_model.token_cost("bf16", t, 0, 2, last_logits=True, c=cfg)
            rows.append((name, f"prompt {t}", best, t * 1e3 / best, bytes_ / 1e6,
                         bytes_ / (best * 1e-3) / 1e9 / copy, up + down, ref_prompt.get(t, float("nan"))))
        model.close()
        os.remove(moex)
    if rows:
        print(f"\n| whole model (bf16) | step | moec (ms) | tokens/s | bytes read (MB) | fraction of copy bandwidth "
              f"({copy:.0f} GB/s) | host <-> device bytes a step | transformers eager bf16 (ms) | eager / moec |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, what, ms, tps, mb, frac, copied, ref in rows:
            print(f"| {name} | {what} | {ms:.2f} | {tps:.0f} | {mb:.1f} | {frac:.2f} | {copied} | {ref:.2f} | "
                  f"{ref / ms:.2f}x |")
    return 0


def run_fixed(args, d, meta):
    """The fixed-cost rows: `moert generate` decode time of the toy decoder at 2 and 8 layers, with the kernels
    sent as graphs (the default) and launched one by one (MOERT_GPU_GRAPHS=0), alternating, in the same run."""
    env = dict(os.environ)
    if args.device == "emu":
        env["MOERT_EMU_SKIP_KERNELS"] = "1"
    modes = {"graphs": env.get("MOERT_GPU_GRAPHS", "16"), "direct": "0"}
    rows = {mode: {} for mode in modes}
    for name, layers in meta.get("fixed", {}).items():
        moex = unpack(d, name)
        for mode, graphs_env in modes.items():
            rows[mode][layers] = (float("inf"), {}, {})
        for tokens in (129, 129, 129, 17):
            for mode, graphs_env in modes.items():
                best, launches, graphs = rows[mode][layers]
                r = subprocess.run([args.moert, "generate", moex, "--prompt-ids",
                                    os.path.join(d, "fixed_prompt.npy"), f"--device={args.device}",
                                    "--max-new-tokens", str(tokens)],
                                   capture_output=True, text=True, env={**env, "MOERT_GPU_GRAPHS": graphs_env})
                m = re.search(r"decode: (\d+) tokens in ([\d.]+) ms", r.stdout)
                if r.returncode != 0 or not m:
                    print(f"{name}: {r.stderr.strip() or r.stdout.strip()}")
                    return 1
                if tokens == 129:
                    best = min(best, float(m.group(2)) * 1e3 / int(m.group(1)))
                if k := re.search(r"(\d+) kernel launches", r.stderr):
                    launches[tokens] = int(k.group(1))
                if g := re.search(r"gpu graphs: (on|off).*: (\d+) launched, (\d+) built, (\d+) nodes updated",
                                  r.stdout):
                    graphs[tokens] = (g.group(1), *map(int, g.group(2, 4, 3)))  # launched, updated, built
                rows[mode][layers] = (best, launches, graphs)
        os.remove(moex)
    what = "host only: kernels skipped" if args.device == "emu" else "kernels at toy size"
    for mode, by_layers in rows.items():
        if len(by_layers) < 2:
            return 0
        table = {}
        for layers, (best, launches, graphs) in by_layers.items():
            per_token = (launches[129] - launches[17]) / 112 if len(launches) == 2 else float("nan")
            g = (tuple((a - b) / 112 for a, b in zip(graphs[129][1:], graphs[17][1:]))
                 if len(graphs) == 2 and graphs[129][0] == "on" else None)
            table[layers] = (best, per_token, g)
        (l0, (t0, n0, g0)), (l1, (t1, n1, g1)) = sorted(table.items())[:2]
        layer = (t1 - t0) / (l1 - l0)
        print(f"\n| toy decoder ({what}; {mode}) | layers | decode µs per token | kernels per token | graphs "
              "launched per token | graph nodes updated per token | graphs built per token |")
        print("|---|---|---|---|---|---|---|")
        for layers, (t, n, g) in sorted(table.items()):
            gs = " | ".join(f"{v:.2f}" for v in g) if g else "graphs off | - | -"
            print(f"| fixed{layers} | {layers} | {t:.1f} | {n:.1f} | {gs} |")
        graphs = (f", {(g1[0] - g0[0]) / (l1 - l0):.2f} graphs and {(g1[1] - g0[1]) / (l1 - l0):.2f} node "
                  "updates" if g0 and g1 else "")
        print(f"per layer ({mode}): {layer:.1f} µs and {(n1 - n0) / (l1 - l0):.1f} kernels{graphs}; per token "
              f"outside the layers: {t0 - l0 * layer:.1f} µs")
    return 0


def unpack(d, name):
    """The prepared artifact `name`, gunzipped into /tmp."""
    moex = os.path.join("/tmp", name + ".moex")
    with gzip.open(os.path.join(d, name + ".moex.gz"), "rb") as src, open(moex, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
    return moex


def timed_run(args, moex, x):
    """moert run on the GPU, then each dispatch's kernels 200 times back to back (--gpu-time)."""
    return subprocess.run([args.moert, "run", moex, "--input", f"x={x}", f"--device={args.device}",
                           "--output-dir", "/tmp/gpu_decode_out", "--repeat", "20", "--gpu-time", "200"],
                          capture_output=True, text=True)


LINEAR_TIMES = r"gpu linear \d+: ([\d.]+) us per call .*?, ([\d.]+) MB of weights read"  # moert run --gpu-time


def run_rows(args, moex, name, rows, width, pattern):
    """moert run (timed_run) on `rows` random rows of `width` inputs (a file in /tmp): (the rows' file, the
    run, re.findall(pattern) of its output), or None after printing why when it failed."""
    x = os.path.join("/tmp", f"{name}_x{rows}.npy")
    np.save(x, np.random.default_rng(rows).standard_normal((rows, width)).astype(np.float32))
    r = timed_run(args, moex, x)
    g = re.findall(pattern, r.stdout)
    if r.returncode != 0 or not g:
        print(f"{name} rows={rows}: {r.stderr.strip() or r.stdout.strip()}")
        return None
    return x, r, g


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
    if run_fixed(args, d, meta) or run_whole(args, d, meta, copy):
        return 1
    rows, lrows = [], []
    for name, s in meta.get("linear", {}).items():
        moex = unpack(d, name)
        for t in meta["linear_rows"]:
            # Every linear dispatch of the layer (projections moec did not merge run one after another).
            got = run_rows(args, moex, name, t, s["k"], LINEAR_TIMES)
            if not got:
                return 1
            x, r, g = got
            call = re.search(r"best ([\d.]+) ms", r.stdout)
            us, mb = sum(float(a) for a, _ in g), sum(float(b) for _, b in g)
            try:
                tus = torch_linear_us(s["k"], s["n"], np.load(x))
            except Exception as e:  # noqa: BLE001 - the baseline is optional
                tus = float("nan")
                print(f"(PyTorch baseline failed: {e})")
            flops = 2.0 * t * s["k"] * sum(s["n"])
            lrows.append((name, s["weights"], t, us, float(call.group(1)) * 1000, mb, mb * 1e6 / (us * 1e-6) / 1e9,
                          flops / (us * 1e-6) / 1e12, tus))
        os.remove(moex)
    prows = []
    for name, ts in meta.get("moe_prefill", {}).items():
        s, moex = meta["shapes"][name], unpack(d, name)
        for t in ts:
            got = run_rows(args, moex, name, t, s["h"], r"gpu dispatch 0: ([\d.]+) us per call")
            if not got:
                return 1
            x, _, g = got
            us = float(g[0])
            try:
                tus = torch_layer_us(s, np.load(x), repeats=20)
            except Exception as e:  # noqa: BLE001 - the baseline is optional
                tus = float("nan")
                print(f"(PyTorch baseline failed: {e})")
            prows.append((name, t, us, 6.0 * t * s["k"] * s["h"] * s["f"] / (us * 1e-6) / 1e12, tus))
        os.remove(moex)
    peak = float("nan")
    if lrows or prows:
        try:
            peak = torch_bf16_peak_tflops()
        except Exception as e:  # noqa: BLE001 - the peak needs PyTorch on the device machine
            print(f"(bf16 matmul peak not measured: {e})")
    if prows:
        print(f"\n| MoE layer, prefill (bf16) | T | moec GPU kernels (µs) | experts' TFLOP/s | fraction of the bf16 "
              f"matmul rate ({peak:.0f} TFLOP/s) | PyTorch eager (µs) | PyTorch / moec |")
        print("|---|---|---|---|---|---|---|")
        for name, t, us, tf, tus in prows:
            print(f"| {name} | {t} | {us:.1f} | {tf:.2f} | {tf / peak:.2f} | {tus:.1f} | {tus / us:.2f}x |")
    if lrows:
        print(f"\n| linear layer | weights | M | moec GPU kernels (µs) | moert run call (µs) | weights (MB) | GB/s | "
              f"fraction of copy bandwidth ({copy:.0f} GB/s) | TFLOP/s | fraction of the bf16 matmul rate "
              f"({peak:.0f} TFLOP/s) | PyTorch bf16 F.linear (µs) | PyTorch / moec |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, w, t, us, call_us, mb, gbs, tf, tus in lrows:
            print(f"| {name} | {w} | {t} | {us:.1f} | {call_us:.0f} | {mb:.1f} | {gbs:.0f} | {gbs / copy:.2f} | "
                  f"{tf:.2f} | {tf / peak:.2f} | {tus:.1f} | {tus / us:.2f}x |")
    for name, s in meta["shapes"].items():
        moex = unpack(d, name)
        for t in meta["tokens"]:
            x = os.path.join(d, f"{name}_x{t}.npy")
            r = timed_run(args, moex, x)
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
    if not rows:
        return 0
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
    ap.add_argument("--targets", default="cpu,hip,cuda", help="moec --target for --prepare")
    ap.add_argument("--cuda-arch", help="moec --cuda-arch for --prepare (default moec's)")
    ap.add_argument("--only", help="prepare only the layers whose name contains one of these (comma-separated)")
    args = ap.parse_args()
    if args.prepare:
        prepare(args)
        return 0
    if args.run and args.moert:
        return run(args)
    ap.error("give --moec ... --prepare DIR or --moert ... --run DIR")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A whole MoE language model with its KV cache: moec vs ONNX Runtime vs the whole-token roofline.

The model is Qwen3-MoE-like at real layer sizes (hidden 2048, 32 query / 4 KV heads of 128, 32 experts top-4
with F = 768, vocab 32000, 2 decoder layers, 1.9 GB of fp32 weights), random-initialised by transformers and
exported by `torch.onnx.export(dynamo=True)` with `batched_mm` experts as a decoder with past
(`past_key_values.{i}.key/value` in, `present.*` out), cached in bench/.cache (never committed).

For each moec weight storage (`--weights=`: experts and dense layers alike; ONNX Runtime always runs the fp32
file) it times
  - decode: 1 new token after `past` = 128, 1024 and 4096 cached positions (ms per token), through a session
    as `moert generate` runs it (KV caches held by the runtime, appended in place, stored as each of
    `--kv-cache`; ONNX Runtime is given f32 caches as inputs); with `--batch`, also sessions of several
    sequences decoding side by side (tokens/s counts every sequence's token),
  - prefill: T = 128 and 512 tokens from an empty cache (tokens per second), logits for every token (as the
    ONNX model computes them: `moert run`),
  - prompt: the same T tokens through a session, as `moert generate` reads a prompt: logits for the last
    token only (llama.cpp: its default, `logits_all=False`; ONNX Runtime has no such mode: not run), the
    cache stored as each of `--kv-cache`,
and reports the whole-token roofline: every weight byte a token reads (attention projections, LM head, the
router, the 4 chosen experts of each layer, one embedding row, the KV cache) at the measured read bandwidth,
or the FLOPs at the FP32 peak, as a fraction of moec's time; and the share of moec's time in compiled
dispatches (linear, MoE, attention) vs op steps, from a profile of one call (the session's for decode, a
`moert run --profile` trace for prefill).

llama.cpp runs the same weights (bench/llama_peer.py: GGUF F32 / BF16 / Q8_0 / Q4_0 next to moec's fp32 / bf16 /
int8 / int4, its KV cache in f16, llama.cpp's default: compare with moec's `--kv-cache f16` rows; moec's
`--kv-cache int8` decode rows are set next to llama.cpp with its KV cache in Q8_0) when llama-cpp-python and gguf
are installed.

    python3 bench/whole_model.py [--build build] [--threads N] [--weights fp32,bf16,int8,int4]
                                 [--kv-cache f32,bf16,f16,int8]
                                 [--batch 1,4] [--no-llama] [--no-ort] [--baseline BUILD] [--json FILE]
    (also run by bench/run.py: `make bench`, or `--only whole`)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(HERE, ".cache")
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))

CFG = dict(hidden=2048, heads=32, kv_heads=4, head_dim=128, experts=32, top_k=4, ffn=768, vocab=32000, layers=2)


def _int8_row_bytes(dim):
    """Bytes of a cached key/value row in an int8 cache: moert_kv_int8_row_bytes in moert_kernel_abi.h (codes
    padded to 4 bytes, one f32 scale per MOERT_KV_INT8_BLOCK dims)."""
    from run import _abi_define
    block = _abi_define("MOERT_KV_INT8_BLOCK")
    return -(-dim // 4) * 4 + 4 * -(-dim // block)


# Bytes per cached key/value element, per session cache_dtype.
KV_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "int8": _int8_row_bytes(CFG["head_dim"]) / CFG["head_dim"]}


def hf_config(c=CFG):
    """The transformers config of a Qwen3-MoE-like model of sizes `c` (CFG's keys)."""
    import transformers as tf
    cfg = tf.Qwen3MoeConfig(hidden_size=c["hidden"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
                            head_dim=c["head_dim"], num_experts=c["experts"], num_experts_per_tok=c["top_k"],
                            moe_intermediate_size=c["ffn"], intermediate_size=c["ffn"] * 4, vocab_size=c["vocab"],
                            num_hidden_layers=c["layers"], max_position_embeddings=4096, norm_topk_prob=True,
                            tie_word_embeddings=False)
    cfg._experts_implementation = "batched_mm"
    return cfg


def export(path, hf_dir, c=CFG, constant=False):
    """Random-initialised Qwen3-MoE-like decoder with past, exported once (about 2 minutes here). With
    `constant`, every weight but the routers' is 0.01 (norms 1): the file then compresses to almost nothing,
    for carrying a compiled artifact to a lent GPU (bench/gpu_decode.py), and the bytes a token reads are the
    same; `hf_dir` None: the transformers checkpoint is not written."""
    import torch
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "transformers"))
    from make_fixtures import with_past  # the same decoder-with-past wrapper as the test fixtures
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(c)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif constant and not name.endswith("mlp.gate.weight"):
                p.fill_(0.01)
            else:
                p.normal_(0.0, 0.02)
    if hf_dir:
        model.save_pretrained(hf_dir)  # the same weights for llama.cpp's converter
    layers = c["layers"]
    wrapped, names, outs = with_past(model, torch)
    # Batch, new tokens and past length are dynamic (traced at batch 2: torch.export specialises a size-1 dim).
    args = [torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 7, dtype=torch.int64)] + \
           [torch.zeros(2, c["kv_heads"], 4, c["head_dim"]) for _ in range(2 * layers)]
    batch = torch.export.Dim("batch", min=1, max=64)
    dims = ({0: batch, 1: torch.export.Dim("seq", min=1, max=4096)},
            {0: batch, 1: torch.export.Dim("total", min=1, max=8192)},
            tuple({0: batch, 2: torch.export.Dim("past", min=0, max=4096)} for _ in range(2 * layers)))
    torch.onnx.export(wrapped, tuple(args), path, dynamo=True, input_names=names, output_names=outs,
                      dynamic_shapes=dims, external_data=True)


def feeds(t, past, rng):
    c = CFG
    f = {"input_ids": rng.integers(0, c["vocab"], (1, t)).astype(np.int64),
         "attention_mask": np.ones((1, t + past), np.int64)}
    for i in range(c["layers"]):
        for k in ("key", "value"):
            f[f"past_key_values.{i}.{k}"] = rng.standard_normal((1, c["kv_heads"], past, c["head_dim"])).astype(np.float32)
    return f


def token_cost(storage, t, past, kv_element=4, batch=1, last_logits=False, c=CFG):
    """(bytes, FLOPs) of one call of `batch` sequences of t new tokens: weights read once per call (the experts
    its tokens choose: all 32 once T is large, top-4 per layer at T = 1), each sequence's KV cache, and 2 FLOPs
    per weight per token plus attention (`last_logits`: the LM head for each sequence's last token only)."""
    h, q, kv = c["hidden"], c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    dense = c["layers"] * (h * q + 2 * h * kv + q * h) + h * c["vocab"]
    expert = 3 * h * c["ffn"]
    touched = min(c["experts"], batch * t * c["top_k"]) * expert * c["layers"]  # upper bound on distinct experts
    router = c["layers"] * h * c["experts"] * 4
    kv_bytes = batch * c["layers"] * 2 * kv * (past + t) * kv_element
    from run import WEIGHT_BYTES, variant_storage  # per weight, block scales included
    bytes_ = (dense + touched) * WEIGHT_BYTES[variant_storage(storage)] + router + h * 4 + kv_bytes
    flops = batch * (2 * t * (dense + c["top_k"] * expert * c["layers"]) +
                     c["layers"] * 4 * t * (past + t) * q)  # Q K^T and P V
    if last_logits:
        flops -= batch * 2 * (t - 1) * h * c["vocab"]
    return bytes_, flops


def profile_shares(moert_cli, art, f, threads, tmp):
    """Share of one call's time in linear, MoE and attention dispatches and op steps (a moert --profile trace)."""
    cmd = [moert_cli, "run", art, "--threads", str(threads), "--repeat", "3", "--profile", os.path.join(tmp, "t.json"),
           "--output-dir", os.path.join(tmp, "out")]
    for name, value in f.items():
        p = os.path.join(tmp, f"{name}.npy")
        np.save(p, value)
        cmd += ["--input", f"{name}={p}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return shares_of(json.load(open(os.path.join(tmp, "t.json")))["traceEvents"])


def session_decode(model, past, repeat, rng, cache_dtype="f32", batch=1):
    """Decode as `moert generate` runs it: a session of `batch` sequences holding `past` positions each (random
    prompts), then one token per sequence per call (the caches appended in place, stored as `cache_dtype`),
    rewound to `past` after each; (best ms, median ms, the shares of the last call's time)."""
    sess = model.session(max_context=past + 1, profile=True, cache_dtype=cache_dtype, batch=batch)
    for p0 in range(0, past, 512):  # the prompts in parts: a [batch, past] prefill's temporaries are large
        sess.append(rng.integers(0, CFG["vocab"], (batch, min(512, past - p0))))
    times = []
    for _ in range(repeat + 1):
        token = rng.integers(0, CFG["vocab"], (batch, 1))
        t0 = time.perf_counter()
        sess.append(token)
        times.append((time.perf_counter() - t0) * 1e3)
        sess.rewind(past)
    shares = shares_of(json.loads(sess.profile())["traceEvents"])
    sess.close()
    times = sorted(times[1:])  # the first call is a warm-up
    return times[0], times[len(times) // 2], shares


def session_prompt(model, t, repeat, rng, cache_dtype="f32"):
    """A prompt of t tokens as `moert generate` reads it: one session call into an empty cache (stored as
    `cache_dtype`), the logits of the last token only; (best ms, median ms, the shares of the last call's time)."""
    sess = model.session(max_context=t, profile=True, cache_dtype=cache_dtype)
    times = []
    for _ in range(repeat + 1):
        ids = rng.integers(0, CFG["vocab"], (1, t))
        t0 = time.perf_counter()
        sess.append(ids)
        times.append((time.perf_counter() - t0) * 1e3)
        sess.rewind(0)
    shares = shares_of(json.loads(sess.profile())["traceEvents"])
    sess.close()
    times = sorted(times[1:])  # the first call is a warm-up
    return times[0], times[len(times) // 2], shares


def shares_of(events):
    share = {"linear": 0.0, "moe": 0.0, "attention": 0.0, "op": 0.0}
    for e in events:
        kind = ("linear" if e["name"].startswith("linear") else "moe" if e["name"].startswith("moe dispatch")
                else "attention" if e["name"].startswith("attention") else "op")
        share[kind] += e["dur"]
    total = sum(share.values()) or 1.0
    return {k: v / total for k, v in share.items()}


def run(build, threads, storages, roof, repeat=5, with_ort=True, kv_caches=("f32",), batches=(1,)):
    """Times every storage; returns table rows (dicts)."""
    import onnxruntime as ort
    import moert
    from run import bound, time_calls, variant_flags
    os.makedirs(CACHE, exist_ok=True)
    src = os.path.join(CACHE, "qwen3moe_decoder.onnx")  # (batch dynamic; "qwen3moe_whole.onnx" had batch 1)
    if not os.path.exists(src):
        t0 = time.time()
        print("   exporting the Qwen3-MoE-like model (once)...", flush=True)
        export(src, os.path.join(CACHE, "qwen3moe_hf"))
        print(f"   exported in {time.time() - t0:.0f} s", flush=True)
    moec = os.path.join(build, "bin", "moec")
    moert_cli = os.path.join(build, "bin", "moert")
    rt = moert.Runtime(os.path.join(build, "lib", "libmoert.so"))
    rng = np.random.default_rng(0)
    cases = [("decode", 1, 128), ("decode", 1, 1024), ("decode", 1, 4096), ("prefill", 128, 0), ("prefill", 512, 0),
             ("prompt", 128, 0), ("prompt", 512, 0)]
    inputs = {(t, p): [feeds(t, p, rng) for _ in range(repeat + 1)] for k, t, p in cases if k != "prompt"}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]) if with_ort else None
    ort_times = {(t, p): (float("nan"), float("nan")) for _, t, p in cases}
    for _, t, p in [c for c in cases if c[0] != "prompt"] if with_ort else []:
        ins = inputs[(t, p)] if t < 512 else inputs[(t, p)][:3]
        try:
            ort_times[(t, p)] = time_calls(lambda f: sess.run(None, f), ins)
        except Exception as err:  # the batched_mm export gathers every token's experts: 25 GB at T = 512
            print(f"   ONNX Runtime T={t}: {str(err).splitlines()[0][:160]}", flush=True)
            ort_times[(t, p)] = (float("nan"), float("nan"))
    del sess
    rows = []
    for s in storages:
        art = os.path.join(CACHE, f"qwen3moe_whole_{s}.moex")
        t0 = time.time()
        subprocess.run([moec, "compile", src, "-o", art, "--cpu=native", "--quiet", *variant_flags(s)], check=True)
        compile_s = time.time() - t0
        model = rt.load(art, threads=threads)
        for kind, t, p, kv, b in [(k, t, p, kv, b) for k, t, p in cases
                                  for kv in (kv_caches if k in ("decode", "prompt") else ["f32"])
                                  for b in (batches if k == "decode" else [1])]:
            if kind == "decode":
                best, med, shares = session_decode(model, p, repeat, rng, kv, b)
            elif kind == "prompt":
                best, med, shares = session_prompt(model, t, repeat, rng, kv)
            else:
                best, med = time_calls(lambda f: model.run(f), inputs[(t, p)])
                with tempfile.TemporaryDirectory() as tmp:
                    shares = profile_shares(moert_cli, art, inputs[(t, p)][0], threads, tmp)
            bytes_, flops = token_cost(s, t, p, KV_BYTES[kv], b, last_logits=kind == "prompt")
            bound_ms = bound(bytes_, flops, roof, s)
            ort_run = b == 1 and kind != "prompt"  # ORT: batch 1, every token's logits
            o_best, o_med = ort_times[(t, p)] if ort_run else (float("nan"), float("nan"))
            row = dict(storage=s, kind=kind, tokens=t, past=p, kv_cache=kv, batch=b, moec_ms=round(best, 2),
                       moec_median_ms=round(med, 2), ort_ms=round(o_best, 2), ort_median_ms=round(o_med, 2),
                       speedup=round(o_best / best, 2) if o_best == o_best else None, ort_timed=with_ort and ort_run,
                       tokens_per_s=round(b * t / best * 1e3, 1), mb=round(bytes_ / 1e6, 1),
                       gflop=round(flops / 1e9, 2), roofline_ms=round(bound_ms, 2),
                       roofline_fraction=round(bound_ms / med, 2), compile_s=round(compile_s, 1),
                       linear_share=round(shares["linear"], 2), moe_share=round(shares["moe"], 2),
                       attention_share=round(shares["attention"], 2), op_share=round(shares["op"], 2))
            print(f"   {s:5s} {kind:7s} T={t:3d} past={p:3d} kv {kv} batch {b}: moec {best:8.2f} ms ({row['tokens_per_s']} tok/s)  "
                  f"ORT {o_best:8.2f} ms  x{row['speedup']}  roofline {row['roofline_fraction']:.2f}  time in "
                  f"linear {shares['linear']:.0%} / moe {shares['moe']:.0%} / attention {shares['attention']:.0%} / "
                  f"op steps {shares['op']:.0%}", flush=True)
            rows.append(row)
        model.close()
    return rows


def add_baseline(rows, build, args):
    """Times moec from another build (`--baseline`: e.g. the previous commit's) in a child process, same weights
    and cases, and adds its times to the rows (one libmoert per process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "baseline.json")
        subprocess.run([sys.executable, os.path.abspath(__file__), "--build", build, "--threads", str(args.threads),
                        "--weights", args.weights, "--repeat", str(args.repeat), "--no-llama", "--no-ort",
                        "--kv-cache", args.kv_cache, "--batch", args.batch, "--json", out], check=True)
        base = {(r["storage"], r["kind"], r["tokens"], r["past"], r.get("kv_cache", "f32"), r.get("batch", 1)): r
                for r in json.load(open(out))}
    for r in rows:
        b = base.get((r["storage"], r["kind"], r["tokens"], r["past"], r["kv_cache"], r["batch"]))
        if b:
            r["baseline_ms"], r["baseline_median_ms"] = b["moec_ms"], b["moec_median_ms"]
            r["vs_baseline"] = round(b["moec_ms"] / r["moec_ms"], 2)


def add_peer(rows, peer):
    """Adds llama.cpp's times (bench/llama_peer.py: {(storage, step, T, past, KV type): (best, median, type)}) to
    the rows: moec's int8-cache rows next to llama.cpp's Q8_0 cache, every other row next to its f16 cache (its
    default, whatever moec's row keeps)."""
    from run import variant_storage
    for r in rows:
        kv = "q8_0" if r.get("kv_cache") == "int8" else "f16"
        hit = peer.get((variant_storage(r["storage"]), r["kind"], r["tokens"], r["past"], kv))
        if hit and r.get("batch", 1) == 1:  # llama.cpp runs one sequence
            r["llama_ms"], r["llama_median_ms"] = round(hit[0], 2), round(hit[1], 2)
            r["llama_type"] = hit[2] + (", q8_0 cache" if kv == "q8_0" else "")
            r["vs_llama"] = round(hit[0] / r["moec_ms"], 2)


def table(rows):
    lines = ["| moec weights | step | T | past | KV cache | batch | moec ms (best / median) | tokens/s | ORT fp32 ms (best / median) | "
             "moec/ORT | llama.cpp ms (type; best / median) | moec/llama.cpp | MB read | GFLOP | roofline ms | "
             "moec fraction of roofline | time in linear / MoE / attention / op steps |" +
             (" baseline ms (best / median) | speed-up over baseline |" if any("baseline_ms" in r for r in rows) else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" +
             ("---|---|" if any("baseline_ms" in r for r in rows) else "")]
    for r in rows:
        ort_cell = ("not run" if not r.get("ort_timed", True) else "out of memory" if r["speedup"] is None
                    else f"{r['ort_ms']} / {r['ort_median_ms']}")
        llama_cell = (f"{r['llama_type']}: {r['llama_ms']} / {r['llama_median_ms']}" if "llama_ms" in r else "-")
        lines.append(f"| {r['storage']} | {r['kind']} | {r['tokens']} | {r['past']} | {r.get('kv_cache', 'f32')} | "
                     f"{r.get('batch', 1)} | "
                     f"{r['moec_ms']} / "
                     f"{r['moec_median_ms']} | {r['tokens_per_s']} | {ort_cell} | {r['speedup'] or '-'} | "
                     f"{llama_cell} | {r.get('vs_llama', '-')} | {r['mb']} | {r['gflop']} | {r['roofline_ms']} | "
                     f"{r['roofline_fraction']} | "
                     f"{r['linear_share']:.0%} / {r['moe_share']:.0%} / {r.get('attention_share', 0):.0%} / "
                     f"{r['op_share']:.0%} |" +
                     (f" {r['baseline_ms']} / {r['baseline_median_ms']} | {r['vs_baseline']} |" if "baseline_ms" in r
                      else ""))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--weights", default="fp32,bf16,int8,int4")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp (bench/llama_peer.py)")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    ap.add_argument("--baseline", metavar="BUILD", help="also time moec from this build directory (a child process "
                    "before the main run): the table gets its times and the speed-up over it")
    ap.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    ap.add_argument("--kv-cache", default="f32", help="KV cache storages to decode and read prompts with "
                    "(sessions' cache_dtype): e.g. f32,bf16,f16,int8")
    ap.add_argument("--batch", default="1", help="sequences per decode session (e.g. 1,4): rows per batch, "
                    "tokens/s counting every sequence's token (ONNX Runtime and llama.cpp at batch 1 only)")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    from run import roofline, variant_storage
    roof = roofline(args.threads)
    print(f"roofline: read {roof['read_gbs']} GB/s, FP32 peak {roof['fp32_gflops']} GFLOP/s", flush=True)
    if args.baseline:
        print(f"   baseline: moec from {args.baseline}", flush=True)
    rows = run(args.build, args.threads, args.weights.split(","), roof, args.repeat, not args.no_ort,
               args.kv_cache.split(","), [int(b) for b in args.batch.split(",")])
    if args.baseline:
        add_baseline(rows, args.baseline, args)
    if not args.no_llama:
        import llama_peer
        types = [t for t, s in llama_peer.PAIRS.items() if s in map(variant_storage, args.weights.split(","))]
        kv = ["f16"] + (["q8_0"] if "int8" in args.kv_cache.split(",") else [])
        add_peer(rows, llama_peer.run(args.threads, types, args.repeat, kv))
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()

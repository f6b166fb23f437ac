#!/usr/bin/env python3
"""llama.cpp as a peer on the whole-model workload: the same random-initialised Qwen3-MoE-like weights.

bench/whole_model.py saves the transformers model it exports (save_pretrained, bench/.cache/qwen3moe_hf). This
script writes those weights as GGUF files for llama.cpp (the `gguf` package's writer and quantisers: F32, BF16,
Q8_0, Q4_0; architecture `qwen3moe`, no tokenizer: tokens go in as ids) and times llama.cpp through
llama-cpp-python (which builds llama.cpp from source) with the same thread count:
  - decode: one token at a time after a prefill of 128, 1024 or 4096 tokens (the KV cache then holds that many
    positions and a few more),
  - prefill: T = 128 and 512 tokens into an empty cache, logits for every token (as the ONNX model computes),
  - prompt: the same, the last token's logits only (llama.cpp's default; `logits_all` off for these rows).

Equal bits: moec int8/int4 store one f16 scale per 32 weights (8.5 / 4.5 bits a weight with the scale), as Q8_0 /
Q4_0 do; the layouts differ (moec's panels and rows, ggml's blocks). With int8 activations (`+a8`) both multiply
integers on activations rounded per block of 32; without them moec multiplies the codes by f32 activations.

    python3 bench/llama_peer.py [--threads N] [--types f32,bf16,q8_0,q4_0] [--kv-cache f16,q8_0]

With --kv-cache q8_0 (whole_model.py asks for it next to moec's `--kv-cache int8` rows) llama.cpp also decodes
with its KV cache in Q8_0 (32 values and an f16 scale a block; moec's int8 cache keeps an f32 scale per 32).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
HF = os.path.join(CACHE, "qwen3moe_hf")
# moec storage each llama.cpp type is compared with (equal bits)
PAIRS = {"f32": "fp32", "bf16": "bf16", "q8_0": "int8", "q4_0": "int4"}


def write_gguf(path, qtype):
    import gguf
    from safetensors import safe_open
    cfg = json.load(open(os.path.join(HF, "config.json")))
    st = safe_open(os.path.join(HF, "model.safetensors"), "np")
    w = gguf.GGUFWriter(path, "qwen3moe")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(cfg["num_local_experts"])
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("none")
    q = {"f32": gguf.GGMLQuantizationType.F32, "bf16": gguf.GGMLQuantizationType.BF16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]

    def add(name, arr, quantise=True):
        arr = np.ascontiguousarray(arr, np.float32)
        if not quantise or arr.ndim == 1 or q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
            return
        data = gguf.quants.quantize(arr, q)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=q)

    add("token_embd.weight", st.get_tensor("model.embed_tokens.weight"))
    add("output_norm.weight", st.get_tensor("model.norm.weight"))
    add("output.weight", st.get_tensor("lm_head.weight"))
    e = cfg["num_local_experts"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        b = f"blk.{i}."
        add(b + "attn_norm.weight", st.get_tensor(p + "input_layernorm.weight"))
        add(b + "ffn_norm.weight", st.get_tensor(p + "post_attention_layernorm.weight"))
        for ours, theirs in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            add(b + ours + ".weight", st.get_tensor(p + f"self_attn.{theirs}.weight"))
        add(b + "attn_q_norm.weight", st.get_tensor(p + "self_attn.q_norm.weight"))
        add(b + "attn_k_norm.weight", st.get_tensor(p + "self_attn.k_norm.weight"))
        add(b + "ffn_gate_inp.weight", st.get_tensor(p + "mlp.gate.weight"), quantise=False)  # the router: f32
        for ours, theirs in (("ffn_gate_exps", "gate_proj"), ("ffn_up_exps", "up_proj"), ("ffn_down_exps", "down_proj")):
            add(b + ours + ".weight", np.stack([st.get_tensor(p + f"mlp.experts.{x}.{theirs}.weight") for x in range(e)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def time_llama(path, threads, repeat, kv="f16"):
    """Times llama.cpp on `path`: out[(step, T, past)] = (best ms, median ms). kv "q8_0": its KV cache in Q8_0
    (keys and values; flash attention on, which a quantised V cache needs), decode rows only."""
    from llama_cpp import Llama
    quantised = dict(type_k=llama_cpp_q8_0(), type_v=llama_cpp_q8_0(), flash_attn=True) if kv == "q8_0" else {}
    llm = Llama(model_path=path, n_ctx=4224, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                logits_all=True, verbose=False, **quantised)
    rng = np.random.default_rng(0)
    out = {}

    def prompts(kind):
        """Prompts of 128 and 512 tokens into an emptied cache: out[(kind, T, 0)] = (best ms, median ms)."""
        for t in (128, 512):
            times = []
            for _ in range(repeat + 1):
                toks = rng.integers(0, 32000, t).tolist()
                llm.reset()
                llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
                t0 = time.perf_counter()
                llm.eval(toks)
                times.append((time.perf_counter() - t0) * 1e3)
            out[(kind, t, 0)] = (min(times[1:]), statistics.median(times[1:]))

    if kv == "f16":
        prompts("prefill")  # every token's logits (logits_all, as the ONNX model computes)
    llm._logits_all = False  # the prompt rows: the last token's logits only (llama.cpp's default)
    if kv == "f16":
        prompts("prompt")
    for past in (128, 1024, 4096):
        times = []
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        llm.eval(rng.integers(0, 32000, past).tolist())
        for _ in range(repeat + 1):
            t0 = time.perf_counter()
            llm.eval([int(rng.integers(0, 32000))])
            times.append((time.perf_counter() - t0) * 1e3)
        out[("decode", 1, past)] = (min(times[1:]), statistics.median(times[1:]))
    llm.close() if hasattr(llm, "close") else None
    return out


def llama_cpp_q8_0():
    import llama_cpp
    return llama_cpp.GGML_TYPE_Q8_0


def run(threads, types, repeat=5, kv_caches=("f16",)):
    """{(moec storage, step, T, past, llama.cpp KV cache type): (best ms, median ms, llama.cpp type)}; empty when
    llama.cpp is missing. kv_caches: "f16" (llama.cpp's default: every row) and / or "q8_0" (decode rows)."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as err:
        print(f"   llama.cpp peer skipped: {err} (pip install llama-cpp-python gguf)", flush=True)
        return {}
    if not os.path.exists(os.path.join(HF, "model.safetensors")):
        print("   llama.cpp peer skipped: run bench/whole_model.py first (it saves the weights)", flush=True)
        return {}
    res = {}
    for qt in types:
        path = os.path.join(CACHE, f"qwen3moe_{qt}.gguf")
        if not os.path.exists(path):
            t0 = time.time()
            write_gguf(path + ".tmp", qt)
            os.replace(path + ".tmp", path)
            print(f"   wrote {os.path.basename(path)} in {time.time() - t0:.0f} s", flush=True)
        for kv in kv_caches:
            for (step, t, past), (best, med) in time_llama(path, threads, repeat, kv).items():
                res[(PAIRS[qt], step, t, past, kv)] = (best, med, qt)
                print(f"   llama.cpp {qt:5s} {kv} cache {step:7s} T={t:3d} past={past:4d}: {best:8.2f} ms (median "
                      f"{med:.2f})", flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--types", default="f32,bf16,q8_0,q4_0")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--kv-cache", default="f16", help="llama.cpp KV cache types: f16 (its default), q8_0 (decode)")
    args = ap.parse_args()
    run(args.threads, args.types.split(","), args.repeat, args.kv_cache.split(","))


if __name__ == "__main__":
    main()

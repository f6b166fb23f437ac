#!/usr/bin/env python3
"""ONNX's own attention ops (opset 23: `Attention`, `RotaryEmbedding`, `RMSNormalization`; opset 24's
`nonpad_kv_seqlen`) through moec and moert, against ONNX Runtime and a NumPy reading of the ONNX spec.

torch.onnx's dynamo exporter writes these ops at `opset_version=23` (transformers' SDPA attention as one
`Attention` node after repeat_kv, its rotary embedding as `RotaryEmbedding` with cos/sin already gathered, its
RMSNorms as `RMSNormalization`). Checked here:

  - single-node models made with onnx.helper: Attention with 4-D and 3-D (q_num_heads / kv_num_heads) inputs,
    grouped-query heads, is_causal with and without a past (the causal frontier offset by the past length,
    bottom-right aligned), past / present caches, float and bool attn_mask of rank 2 and 4, scale, softcap,
    a value head size unlike the key's, a row masked entirely (a zero output row), opset 24's
    nonpad_kv_seqlen (a cache updated outside the op: padding keys and the causal offset per sequence);
    RotaryEmbedding 3-D with position_ids, 4-D without (cos/sin per position), interleaved, partial rotary;
    RMSNormalization. Each against ONNX Runtime (where ONNX Runtime 1.31 runs the case) and against the NumPy
    reading of the spec (tests/reference/attention.py for the attention itself), max |moec - ref| / max |ref|
    <= 1e-5.
  - tests/fixtures/transformers/past_qwen3_moe_opset23.onnx (make_fixtures.py, torch.onnx at opset 23): every
    attention layer one attention dispatch reading the unrepeated KV heads, caches appended in place; a
    prefill and a decode step against ONNX Runtime (1e-4); `moert generate --greedy` gives ONNX Runtime's
    greedy loop's 16 tokens; a session's logits over a prompt and 3 steps against ONNX Runtime (1e-4).
    whole_mixtral_opset23.onnx and whole_deepseek_v3_opset23.onnx (no cache; DeepSeek's Dv != Dk): every
    Attention node one dispatch, logits against ONNX Runtime at 3 lengths (1e-4).
  - bad input: the qk_matmul_output output, 3-D inputs without head counts, f16 inputs, past_key without
    past_value: one error line naming the node, a non-zero exit, no artifact.

    check_onnx_attention_e2e.py --moec build/bin/moec --moert build/bin/moert --lib build/lib/libmoert.so
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
sys.path.insert(0, HERE)
from attention import attention  # noqa: E402
import moert  # noqa: E402

TOL = 1e-5
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "transformers", "past_qwen3_moe_opset23.onnx")
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def rel(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return np.inf
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def single_node(op, inputs, outputs, opset, **attrs):
    """A model of one node; inputs / outputs: (name, elem type, shape) with None for an omitted optional."""
    node = helper.make_node(op, [i[0] if i else "" for i in inputs], [o[0] if o else "" for o in outputs],
                            **attrs)
    vi = lambda i: helper.make_tensor_value_info(i[0], i[1], i[2])  # noqa: E731
    graph = helper.make_graph([node], op.lower(), [vi(i) for i in inputs if i], [vi(o) for o in outputs if o])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


# ---- the ONNX spec's Attention, read in NumPy -------------------------------------------------------------

def spec_attention(q, k, v, mask=None, past=None, nonpad=None, causal=False, scale=None, softcap=0.0,
                   heads=None):
    """Y (and presents) as the ONNX Attention spec (opset 23 / 24, with the 1.23 errata) defines them."""
    three = q.ndim == 3
    if three:
        hq, hkv = heads
        to4 = lambda x, h: x.reshape(x.shape[0], x.shape[1], h, -1).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = to4(q, hq), to4(k, hkv), to4(v, hkv)
    if past is not None:
        k, v = np.concatenate([past[0], k], 2), np.concatenate([past[1], v], 2)
    b, s, length = q.shape[0], q.shape[2], k.shape[2]
    bias = np.zeros((b, 1, s, length))
    i, j = np.arange(s)[:, None], np.arange(length)[None, :]
    for bi in range(b):
        if nonpad is not None:
            bias[bi, :, :, nonpad[bi]:] = -np.inf
        if causal:
            offset = past[0].shape[2] if past is not None else (nonpad[bi] - s if nonpad is not None else 0)
            bias[bi, 0][j > i + offset] = -np.inf
    if mask is not None:
        m = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        bias = bias + (np.where(m, 0.0, -np.inf) if m.dtype == np.bool_ else m)
    y = attention(q, k, v, bias, scale=scale, nan_to_zero=True, softcap=softcap)
    if three:
        y = y.transpose(0, 2, 1, 3).reshape(b, s, -1)
    return y, k, v


def spec_rotary(x, cos, sin, pos=None, interleaved=False, rot=0, heads=0):
    """RotaryEmbedding as the ONNX spec's algorithm states it."""
    shape = x.shape
    x = x.transpose(0, 2, 1, 3) if x.ndim == 4 else x.reshape(shape[0], shape[1], heads, -1)
    rot = rot or x.shape[3]
    if pos is not None:
        cos, sin = cos[pos], sin[pos]
    c, s_ = cos[:, :, None, :], sin[:, :, None, :]
    xr, rest = x[..., :rot], x[..., rot:]
    x1, x2 = (xr[..., 0::2], xr[..., 1::2]) if interleaved else np.split(xr, 2, axis=-1)
    real, imag = c * x1 - s_ * x2, s_ * x1 + c * x2
    y = np.stack([real, imag], -1).reshape(xr.shape) if interleaved else np.concatenate([real, imag], -1)
    y = np.concatenate([y, rest], -1)
    return y.reshape(shape) if len(shape) == 3 else y.transpose(0, 2, 1, 3)


def attention_cases(rng):
    """(name, opset, attrs, feeds, spec kwargs, [with present outputs]) for Attention."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    cases = []
    # 4-D GQA, causal, no past
    cases.append(("4-D GQA (4 / 2 heads), causal prompt", 23, dict(is_causal=1),
                  dict(Q=f(1, 4, 5, 8), K=f(1, 2, 5, 8), V=f(1, 2, 5, 8)), {}, False))
    # past + present, causal with 3 new tokens after 6 cached: the frontier offset by the past
    cases.append(("4-D past of 6 + 3 new, causal, presents", 23, dict(is_causal=1),
                  dict(Q=f(2, 4, 3, 8), K=f(2, 2, 3, 8), V=f(2, 2, 3, 8), past_key=f(2, 2, 6, 8),
                       past_value=f(2, 2, 6, 8)), {}, True))
    # decode step with a float padding mask [B, 1, 1, L]
    m = np.zeros((2, 1, 1, 10), np.float32)
    m[1, :, :, :3] = -np.inf
    m[0, :, :, 0] = np.finfo(np.float32).min
    cases.append(("4-D decode, float mask [B, 1, 1, L] (-inf / lowest padding)", 23, {},
                  dict(Q=f(2, 4, 1, 8), K=f(2, 2, 1, 8), V=f(2, 2, 1, 8), attn_mask=m, past_key=f(2, 2, 9, 8),
                       past_value=f(2, 2, 9, 8)), {}, True))
    # 3-D inputs, bool 2-D mask, scale, softcap, Dv != Dk
    bm = rng.random((4, 6)) < 0.7
    bm[:, 0] = True
    cases.append(("3-D inputs (q_num_heads 6, kv_num_heads 3), bool mask [S, L], scale, softcap, Dv 12", 23,
                  dict(q_num_heads=6, kv_num_heads=3, scale=0.2, softcap=3.0),
                  dict(Q=f(2, 4, 48), K=f(2, 6, 24), V=f(2, 6, 36), attn_mask=bm), dict(heads=(6, 3)), False))
    # a row masked entirely: zero output
    bz = np.ones((1, 1, 3, 5), np.bool_)
    bz[0, 0, 1] = False
    cases.append(("bool mask [1, 1, S, L] with a row masked entirely (zeros)", 23, {},
                  dict(Q=f(1, 2, 3, 8), K=f(1, 2, 5, 8), V=f(1, 2, 5, 8), attn_mask=bz), {}, False))
    # causal cross-attention without a past: offset 0 (query i sees keys j <= i)
    cases.append(("causal, 3 queries over 7 keys, no past (top-left frontier)", 23, dict(is_causal=1),
                  dict(Q=f(1, 2, 3, 8), K=f(1, 2, 7, 8), V=f(1, 2, 7, 8)), {}, False))
    # opset 24: a cache updated outside the op, valid lengths per sequence
    cases.append(("opset 24 nonpad_kv_seqlen [5, 8] over 8 cached keys, causal, 2 queries", 24, dict(is_causal=1),
                  dict(Q=f(2, 4, 2, 8), K=f(2, 2, 8, 8), V=f(2, 2, 8, 8), nonpad_kv_seqlen=np.array([5, 8])),
                  {}, False))
    return cases


def run_attention_case(args, rt, ort, tmp, case):
    name, opset, attrs, feeds, extra, presents = case
    order = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    elem = lambda a: {np.float32: TensorProto.FLOAT, np.bool_: TensorProto.BOOL, np.int64: TensorProto.INT64}[a.dtype.type]  # noqa: E731,E501
    inputs = [(n, elem(feeds[n]), list(feeds[n].shape)) if n in feeds else None for n in order]
    while inputs[-1] is None:
        inputs.pop()
    want, k_all, v_all = spec_attention(
        feeds["Q"], feeds["K"], feeds["V"], feeds.get("attn_mask"),
        (feeds["past_key"], feeds["past_value"]) if "past_key" in feeds else None, feeds.get("nonpad_kv_seqlen"),
        bool(attrs.get("is_causal", 0)), attrs.get("scale"), attrs.get("softcap", 0.0), **extra)
    outputs = [("Y", TensorProto.FLOAT, list(want.shape))]
    if presents:
        outputs += [("present_key", TensorProto.FLOAT, list(k_all.shape)),
                    ("present_value", TensorProto.FLOAT, list(v_all.shape))]
    model = single_node("Attention", inputs, outputs, opset, **attrs)
    path, art = os.path.join(tmp, "att.onnx"), os.path.join(tmp, "att.moex")
    onnx.save(model, path)
    c = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
    if c.returncode:
        check(f"Attention: {name}", False, "compile: " + c.stderr.strip())
        return
    text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
    dispatch = "attention 0: attention" in text and "op Softmax" not in text
    m = rt.load(art, threads=2)
    got = m.run(feeds)
    m.close()
    err = rel(got["Y"], want)
    if presents:
        err = max(err, rel(got["present_key"], k_all), rel(got["present_value"], v_all))
    try:
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
        ort_err = max(rel(g_, w_) for g_, w_ in zip([got[o[0]] for o in outputs], ref))
        ort_text = f"vs ONNX Runtime {ort_err:.2e}"
    except Exception as e:  # noqa: BLE001  (ONNX Runtime refusing a case the spec defines)
        ort_err, ort_text = 0.0, "ONNX Runtime: " + str(e).splitlines()[0][:120]
    check(f"Attention: {name}", dispatch and err <= TOL and ort_err <= TOL,
          f"one attention dispatch: {dispatch}; max rel error vs the spec {err:.2e}, {ort_text} (bound {TOL:g})")


def rotary_and_norm_cases(args, rt, ort, tmp, rng):
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    angles = rng.random((32, 4)) * 6.0
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    pos = rng.integers(0, 32, (2, 5)).astype(np.int64)
    cases = [
        ("3-D, num_heads 2, position_ids, half-split", dict(num_heads=2),
         dict(X=f(2, 5, 16), cos_cache=cos, sin_cache=sin, position_ids=pos), {}),
        ("4-D, cos/sin per position (no position_ids), interleaved", dict(interleaved=1),
         dict(X=f(2, 3, 5, 8), cos_cache=cos[pos], sin_cache=sin[pos]), dict(interleaved=True)),
        ("3-D, partial rotary (4 of 8 dims), position_ids", dict(num_heads=2, rotary_embedding_dim=4),
         dict(X=f(2, 5, 16), cos_cache=cos[:, :2].copy(), sin_cache=sin[:, :2].copy(), position_ids=pos),
         dict(rot=4)),
    ]
    for name, attrs, feeds, extra in cases:
        want = spec_rotary(feeds["X"], feeds["cos_cache"], feeds["sin_cache"], feeds.get("position_ids"),
                           heads=attrs.get("num_heads", 0), **extra)
        order = ["X", "cos_cache", "sin_cache", "position_ids"]
        inputs = [(n, TensorProto.INT64 if n == "position_ids" else TensorProto.FLOAT, list(feeds[n].shape))
                  for n in order if n in feeds]
        path, art = os.path.join(tmp, "rot.onnx"), os.path.join(tmp, "rot.moex")
        onnx.save(single_node("RotaryEmbedding", inputs, [("Y", TensorProto.FLOAT, list(want.shape))], 23,
                              **attrs), path)
        c = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if c.returncode:
            check(f"RotaryEmbedding: {name}", False, "compile: " + c.stderr.strip())
            continue
        m = rt.load(art, threads=2)
        got = m.run(feeds)["Y"]
        m.close()
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        err, ort_err = rel(got, want), rel(got, ref)
        check(f"RotaryEmbedding: {name}", err <= TOL and ort_err <= TOL,
              f"max rel error vs the spec {err:.2e}, vs ONNX Runtime {ort_err:.2e} (bound {TOL:g})")
    # RMSNormalization over the last axis
    x, scale = f(2, 3, 16), (1 + 0.1 * f(16)).astype(np.float32)
    path, art = os.path.join(tmp, "rms.onnx"), os.path.join(tmp, "rms.moex")
    model = single_node("RMSNormalization", [("X", TensorProto.FLOAT, [2, 3, 16]), ("scale", TensorProto.FLOAT, [16])],
                        [("Y", TensorProto.FLOAT, [2, 3, 16])], 23, epsilon=1e-6)
    onnx.save(model, path)
    c = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
    if c.returncode:
        check("RMSNormalization", False, "compile: " + c.stderr.strip())
        return
    m = rt.load(art, threads=2)
    got = m.run({"X": x, "scale": scale})["Y"]
    m.close()
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-6) * scale
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"X": x, "scale": scale})[0]
    check("RMSNormalization (last axis, epsilon 1e-6)", rel(got, want) <= TOL and rel(got, ref) <= TOL,
          f"max rel error vs NumPy {rel(got, want):.2e}, vs ONNX Runtime {rel(got, ref):.2e} (bound {TOL:g})")


def exported_decoder(args, rt, ort, tmp, rng):
    """The opset-23 torch.onnx export of the Qwen3-MoE-like decoder with KV caches."""
    from check_generate import ort_greedy, ort_logits
    art = os.path.join(tmp, "past23.moex")
    c = subprocess.run([args.moec, "compile", FIXTURE, "-o", art, "--quiet"], capture_output=True, text=True)
    if c.returncode:
        check("opset-23 decoder", False, "compile: " + c.stderr.strip())
        return
    text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
    ops = [n.op_type for n in onnx.load(FIXTURE).graph.node]
    atts = [ln for ln in text.splitlines() if "attention " in ln and ": attention" in ln]
    in_place = "appending to the caches in place" in text
    check("opset-23 decoder: every Attention node one dispatch, KV heads unrepeated, caches in place",
          len(atts) == ops.count("Attention") == 2 and all("4 query / 2 key-value heads" in a for a in atts) and
          in_place and "op Softmax" not in text and ops.count("RotaryEmbedding") > 0 and
          ops.count("RMSNormalization") > 0,
          f"{ops.count('Attention')} Attention / {ops.count('RotaryEmbedding')} RotaryEmbedding / "
          f"{ops.count('RMSNormalization')} RMSNormalization nodes; {len(atts)} attention dispatches "
          f"({atts[0].split(': ', 1)[1] if atts else '-'}); caches in place: {in_place}")
    # Model.run on a prefill and a decode step (batch 1: ONNX Runtime 1.31's RotaryEmbedding refuses the
    # exporter's batch-1 cos/sin with a larger batch), presents fed back, against ONNX Runtime.
    sess = ort.InferenceSession(FIXTURE, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    m = rt.load(art, threads=2)
    worst, past = 0.0, {n: np.zeros((1, 2, 0, 8), np.float32) for n in names[2:]}
    total = 0
    for t in (6, 1, 1):
        total += t
        feeds = dict(past, input_ids=rng.integers(0, 32, (1, t)).astype(np.int64),
                     attention_mask=np.ones((1, total), np.int64))
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        got = m.run(feeds)
        worst = max([worst] + [rel(got[k], want[k]) for k in want])
        past = {n: want[n.replace("past_key_values", "present")] for n in past}
    check("opset-23 decoder: prefill of 6 and two decode steps through Model.run", worst <= 1e-4,
          f"max rel error vs ONNX Runtime {worst:.2e} (bound 1e-4), every output")
    # Sessions: greedy generation and logits per call against ONNX Runtime's loop.
    prompt = rng.integers(0, 32, 5)
    npy = os.path.join(tmp, "prompt.npy")
    np.save(npy, prompt.reshape(1, -1))
    want_tokens = ort_greedy(FIXTURE, prompt.tolist(), 16)
    run = subprocess.run([args.moert, "generate", art, "--prompt-ids", npy, "--greedy", "--max-new-tokens", "16"],
                         capture_output=True, text=True)
    got_tokens = [int(t) for t in next((ln.split(":", 1)[1] for ln in run.stdout.splitlines()
                                        if ln.startswith("tokens")), "").split()]
    check("opset-23 decoder: moert generate --greedy", run.returncode == 0 and got_tokens == want_tokens,
          f"moert {got_tokens[:8]}... ORT {want_tokens[:8]}... {run.stderr.strip()}")
    sess_ = m.session()
    steps = [sess_.append(prompt)] + [sess_.append([t]) for t in want_tokens[:3]]
    sess_.close()
    m.close()
    err = max(rel(a, b) for a, b in zip(steps, ort_logits(FIXTURE, prompt.tolist(), want_tokens[:3])))
    check("opset-23 decoder: a session's logits (prompt, 3 steps)", err <= 1e-4,
          f"max rel error vs ONNX Runtime {err:.2e} (bound 1e-4)")


def whole_models(args, rt, ort, tmp, rng):
    """The whole tiny models exported at opset 23 (no KV cache): every Attention node one dispatch, logits
    against ONNX Runtime at several lengths."""
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "transformers", "whole_*_opset23.onnx"))):
        name = os.path.basename(path)[:-5]
        art = os.path.join(tmp, name + ".moex")
        c = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        if c.returncode:
            check(name, False, "compile: " + c.stderr.strip())
            continue
        text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
        atts = len([ln for ln in text.splitlines() if ": attention " in ln])
        nodes = [n.op_type for n in onnx.load(path).graph.node].count("Attention")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        m = rt.load(art, threads=2)
        saved = np.load(path[:-5] + ".npz")
        feeds = [saved["input_ids"]] + [rng.integers(0, 32, (1, t)).astype(np.int64) for t in (3, 9)]
        err = max(rel(m.run({"input_ids": ids})["logits"], sess.run(None, {"input_ids": ids})[0]) for ids in feeds)
        m.close()
        check(f"{name}: every Attention node one dispatch, logits vs ONNX Runtime",
              atts == nodes > 0 and "op Softmax" not in text and err <= 1e-4,
              f"{nodes} Attention nodes, {atts} attention dispatches; lengths 6, 3, 9: max rel error {err:.2e} "
              "(bound 1e-4)")


def bad_input(args, tmp):
    f4 = lambda n, s: (n, TensorProto.FLOAT, s)  # noqa: E731
    cases = [
        ("qk_matmul_output requested", single_node(
            "Attention", [f4("Q", [1, 2, 3, 8]), f4("K", [1, 2, 3, 8]), f4("V", [1, 2, 3, 8])],
            [f4("Y", [1, 2, 3, 8]), None, None, f4("qk", [1, 2, 3, 3])], 23), "qk_matmul_output"),
        ("3-D inputs without head counts", single_node(
            "Attention", [f4("Q", [1, 3, 16]), f4("K", [1, 3, 16]), f4("V", [1, 3, 16])], [f4("Y", [1, 3, 16])],
            23), "q_num_heads"),
        ("f16 inputs", single_node(
            "Attention", [("Q", TensorProto.FLOAT16, [1, 2, 3, 8]), ("K", TensorProto.FLOAT16, [1, 2, 3, 8]),
                          ("V", TensorProto.FLOAT16, [1, 2, 3, 8])], [("Y", TensorProto.FLOAT16, [1, 2, 3, 8])],
            23), "f16"),
        ("past_key without past_value", single_node(
            "Attention", [f4("Q", [1, 2, 1, 8]), f4("K", [1, 2, 1, 8]), f4("V", [1, 2, 1, 8]), None,
                          f4("pk", [1, 2, 4, 8])], [f4("Y", [1, 2, 1, 8])], 23), "past_value"),
    ]
    for what, model, needle in cases:
        path, art = os.path.join(tmp, "bad.onnx"), os.path.join(tmp, "bad.moex")
        onnx.save(model, path)
        if os.path.exists(art):
            os.remove(art)
        r = subprocess.run([args.moec, "compile", path, "-o", art], capture_output=True, text=True)
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln]
        check(f"bad input: {what}", r.returncode != 0 and len(errors) == 1 and needle in errors[0] and
              "Attention" in errors[0] and not os.path.exists(art), errors[0] if errors else r.stderr.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort
    rt = moert.Runtime(args.lib)
    rng = np.random.default_rng(23)
    with tempfile.TemporaryDirectory() as tmp:
        for case in attention_cases(rng):
            run_attention_case(args, rt, ort, tmp, case)
        rotary_and_norm_cases(args, rt, ort, tmp, rng)
        exported_decoder(args, rt, ort, tmp, rng)
        whole_models(args, rt, ort, tmp, rng)
        bad_input(args, tmp)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""ONNX Runtime's com.microsoft.GroupQueryAttention through moec and moert, against ONNX Runtime itself.

Each case builds (onnx.helper) a two-layer decoder the way ONNX Runtime GenAI's model builder writes one: token
embedding, a QKV projection (packed into one MatMul, or three), GroupQueryAttention with `seqlens_k` =
sum(attention_mask) - 1 and `total_sequence_length` = attention_mask's length, rotary embedding from cos/sin
caches (half-split or interleaved, all of the head or part of it), head sinks or a sliding window in one case
each, an output projection with a residual, and an
LM head; inputs `input_ids`, `attention_mask`, `past_key_values.{i}.key/value`, outputs `logits`,
`present.{i}.key/value`. The checks:
  - every GroupQueryAttention becomes one attention dispatch, and sessions append to its caches in place
    (`moert inspect`);
  - a prefill and four decode steps with the presents fed back as pasts (past buffers that grow), at batch 1
    and 2, match ONNX Runtime's logits and presents within 1e-4 (relative to the largest magnitude);
  - the fixed-size cache form (past buffers of a fixed length, `seqlens_k` saying how much is filled) too;
  - `moert generate --greedy` gives the same 16 tokens as a greedy loop over ONNX Runtime, for one prompt and for
    each of a batch of two, also with prompts of different lengths (left-padded as moert takes them);
  - a right-padded batch through moert_run (the form ONNX Runtime takes a batch of prompts in: each sequence's
    mask ones then zeros) and 3 decode steps against ONNX Runtime on the same inputs (1e-4);
  - a padded batch session (its caches hold each sequence from row 0, as seqlens_k says: the session moves
    each sequence's prompt to the front of its row), caches appended in place (f32 and f16) and taken over
    per call (--no-fusion): each sequence's logits at every call against ONNX Runtime running it alone (1e-4;
    f16 caches 1e-2), also after a rewind to 0 over the stale rows; padding after the prompt and a sequence
    leaving the batch are one error each;
  - a sliding window (local_window_size), head sinks, smooth_softmax, softcap, and position_ids (shifted
    rotary positions) with an attention_bias match too;
  - attributes out of range (local_window_size 0, softcap -1, sliding_window_cache without a window) are one
    error naming the node. (Window-sized caches themselves: tests/e2e/check_exporter_fixtures_e2e.py's gpt-oss.)

    check_gqa_e2e.py --moec build/bin/moec --moert build/bin/moert --lib build/lib/libmoert.so
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

VOCAB, HIDDEN, HQ, HKV, LAYERS = 48, 32, 4, 2, 2
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def build(path, head_dim, rotary_dim, interleaved, packed, rng, extra_attrs=None, sinks=False, extra_inputs=()):
    """The decoder described above, random weights; returns nothing (writes `path`). `extra_inputs` may name
    GroupQueryAttention's optional `position_ids` and `attention_bias`, which become graph inputs."""
    nodes, inits = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, domain=domain, name=outs[0] + "_node", **attrs))
        return outs[0]

    w = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)
    const("embed", w(VOCAB, HIDDEN))
    x = node("Gather", ["embed", "input_ids"], ["x0"])
    # seqlens_k and total_sequence_length from the mask, as GenAI's builder computes them.
    node("ReduceSum", ["attention_mask", const("one_axis", np.array([1], np.int64))], ["mask_sum"], keepdims=0)
    node("Sub", ["mask_sum", const("one_i64", np.array(1, np.int64))], ["seqlens_i64"])
    node("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", const("idx1", np.array(1, np.int64))], ["total_i64"], axis=0)
    node("Cast", ["total_i64"], ["total_len"], to=TensorProto.INT32)
    positions = 64
    inv = 1.0 / (10000 ** (np.arange(0, rotary_dim, 2) / rotary_dim))
    ang = np.outer(np.arange(positions), inv)
    const("cos_cache", np.cos(ang).astype(np.float32))
    const("sin_cache", np.sin(ang).astype(np.float32))
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])]
    if "position_ids" in extra_inputs:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
    if "attention_bias" in extra_inputs:
        inputs.append(helper.make_tensor_value_info("attention_bias", TensorProto.FLOAT, ["batch", 1, "seq", "total"]))
    q_width, kv_width = HQ * head_dim, HKV * head_dim
    for i in range(LAYERS):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT,
                                                        ["batch", HKV, "past", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT,
                                                         ["batch", HKV, "present", head_dim]))
        if packed:
            qkv = [node("MatMul", [x, const(f"wqkv{i}", w(HIDDEN, q_width + 2 * kv_width))], [f"qkv{i}"]), "", ""]
        else:
            qkv = [node("MatMul", [x, const(f"w{n}{i}", w(HIDDEN, width))], [f"{n}{i}"])
                   for n, width in (("q", q_width), ("k", kv_width), ("v", kv_width))]
        attrs = dict(num_heads=HQ, kv_num_heads=HKV, do_rotary=1, rotary_interleaved=int(interleaved))
        attrs.update(extra_attrs or {})
        sink_inputs = ["", "", const(f"head_sink{i}", (rng.standard_normal(HQ) * 2).astype(np.float32))] if sinks else []
        if extra_inputs:
            sink_inputs = ["position_ids" if "position_ids" in extra_inputs else "",
                           "attention_bias" if "attention_bias" in extra_inputs else ""]
        node("GroupQueryAttention", qkv + [f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                                           "total_len", "cos_cache", "sin_cache"] + sink_inputs,
             [f"attn{i}", f"present.{i}.key", f"present.{i}.value"], domain="com.microsoft", **attrs)
        o = node("MatMul", [f"attn{i}", const(f"wo{i}", w(q_width, HIDDEN))], [f"o{i}"])
        x = node("Add", [x, o], [f"x{i + 1}"])
    node("MatMul", [x, const("lm_head", w(HIDDEN, VOCAB))], ["logits"])
    graph = helper.make_graph(nodes, "gqa_decoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, path)


def run_steps(ort_sess, model, head_dim, batch, prompt_len, steps, rng, fixed=0):
    """Prefill then `steps` greedy decode steps through both runtimes, each given its own presents back (or
    fixed-size buffers of `fixed` positions); the worst relative error over logits and presents."""
    ids = rng.integers(0, VOCAB, (batch, prompt_len)).astype(np.int64)
    length = 0
    pasts = {f"past_key_values.{i}.{k}": np.zeros((batch, HKV, fixed, head_dim), np.float32)
             for i in range(LAYERS) for k in ("key", "value")}
    ort_pasts, moe_pasts = dict(pasts), dict(pasts)
    names = [o.name for o in ort_sess.get_outputs()]
    extra = {i.name for i in ort_sess.get_inputs()}
    worst = 0.0
    for _ in range(steps + 1):
        length += ids.shape[1]
        mask = np.ones((batch, length), np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        s = ids.shape[1]
        if "position_ids" in extra:  # rotary positions shifted by 3 (ignoring them would show)
            feeds["position_ids"] = np.tile(np.arange(length - s, length) + 3, (batch, 1)).astype(np.int64)
        if "attention_bias" in extra:
            feeds["attention_bias"] = rng.standard_normal((batch, 1, s, length)).astype(np.float32)
        want = dict(zip(names, ort_sess.run(None, {**feeds, **ort_pasts})))
        got = model.run({**feeds, **moe_pasts})
        for k, v in want.items():
            if got[k].shape != v.shape:
                return float("inf")
            worst = max(worst, float(np.abs(got[k] - v).max() / np.abs(v).max()))
        ort_pasts = {k: want["present." + k[len("past_key_values."):]] for k in pasts}
        moe_pasts = {k: got["present." + k[len("past_key_values."):]] for k in pasts}
        ids = want["logits"][:, -1].argmax(-1).reshape(batch, 1).astype(np.int64)
    return worst


def padded_run(ort_sess, model, head_dim, rng, steps=3):
    """A right-padded batch (prompts of 5 and 2 tokens, the mask ones then zeros, as ONNX Runtime takes a batch of
    first prompts), then `steps` greedy decode steps with each sequence's mask of its own count, through
    moert_run and ONNX Runtime, each fed its own presents: the worst relative error over the real tokens'
    logits and each sequence's filled present rows."""
    counts = [5, 2]
    ids = rng.integers(0, VOCAB, (2, 5)).astype(np.int64)
    pasts = {f"past_key_values.{i}.{k}": np.zeros((2, HKV, 0, head_dim), np.float32)
             for i in range(LAYERS) for k in ("key", "value")}
    ort_pasts, moe_pasts = dict(pasts), dict(pasts)
    names = [o.name for o in ort_sess.get_outputs()]
    worst, total = 0.0, 5
    for step in range(steps + 1):
        mask = np.array([[1] * c + [0] * (total - c) for c in counts], np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        want = dict(zip(names, ort_sess.run(None, {**feeds, **ort_pasts})))
        got = model.run({**feeds, **moe_pasts})
        rows = [c - 1 for c in counts] if step == 0 else [0, 0]
        for b in range(2):
            w, g = want["logits"][b, rows[b]], got["logits"][b, rows[b]]
            worst = max(worst, float(np.abs(g - w).max() / np.abs(w).max()))
            for k in pasts:
                name = "present." + k[len("past_key_values."):]
                w, g = want[name][b, :, :counts[b]], got[name][b, :, :counts[b]]
                worst = max(worst, np.inf if g.shape != w.shape else float(np.abs(g - w).max() / np.abs(w).max()))
        ort_pasts = {k: want["present." + k[len("past_key_values."):]] for k in pasts}
        moe_pasts = {k: got["present." + k[len("past_key_values."):]] for k in pasts}
        ids = np.array([[int(want["logits"][b, rows[b]].argmax())] for b in range(2)], np.int64)
        counts = [c + 1 for c in counts]
        total += 1
    return worst


def padded_session(rt, path, art, rng, what, cache_dtype="f32", bound=1e-4):
    """A session of two whose prompts (5 and 2 tokens) are a left-padded batch, then 4 greedy decode steps: each
    sequence's logits at every call against ONNX Runtime running that sequence alone (its own tokens, no
    padding); then a rewind to 0 and the same prompts again (the caches' rows now stale); then the errors."""
    import moert
    from check_generate import OrtDecoder
    seqs = [rng.integers(0, VOCAB, 5).tolist(), rng.integers(0, VOCAB, 2).tolist()]
    refs = [OrtDecoder(path), OrtDecoder(path)]
    model = rt.load(art, threads=2)
    sess = model.session(batch=2, max_context=32, cache_dtype=cache_dtype)
    ids = np.array([seqs[0], [7, 7, 7] + seqs[1]], np.int64)
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]], np.int64)
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    got = sess.append(ids, mask)
    first = [refs[i].step(seqs[i]) for i in range(2)]
    errs = [rel(got[i], first[i]) for i in range(2)]
    for _ in range(4):
        nxt = [int(np.argmax(got[i])) for i in range(2)]
        got = sess.append(np.array(nxt, np.int64)[:, None])
        errs += [rel(got[i], refs[i].step([nxt[i]])) for i in range(2)]
    length = len(sess)  # the longer sequence's 9
    sess.rewind(0)
    got = sess.append(ids, mask)
    errs += [rel(got[i], first[i]) for i in range(2)]
    errors = []
    for call in (lambda: sess.append(ids, mask), lambda: sess.reset_sequence(1)):
        try:
            call()
            errors.append("no error")
        except moert.Error as e:
            errors.append(str(e))
    sess.close()
    model.close()
    err = max(errs)
    check(f"a padded batch session, {what}", err <= bound and length == 9,
          f"{len(errs)} sequence-calls, logits max rel error {err:.2e} vs ONNX Runtime per sequence (bound "
          f"{bound:g}); length {length} (want 9)")
    check(f"bad input ({what}): padding after the prompt, a sequence leaving the batch",
          "no padding (mask 0) then" in errors[0] and "cannot leave or join" in errors[1], " | ".join(errors))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    ap.add_argument("--cpu", default="x86-64-v3")
    args = ap.parse_args()
    import onnxruntime as ort
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime", "python"))
    import moert
    from check_generate import ort_greedy, tokens_of  # the reference greedy loop over ONNX Runtime
    rt = moert.Runtime(args.lib)
    rng = np.random.default_rng(7)
    cases = [("packed QKV, half-split rotary", 16, 16, False, True, False),
             ("separate Q/K/V, interleaved rotary", 16, 16, True, False, False),
             ("packed QKV, rotary over half the head", 32, 16, False, True, False),
             ("head sinks (gpt-oss)", 16, 16, False, True, True),
             ("sliding window of 3 (local_window_size)", 16, 16, False, True, {"local_window_size": 3}),
             ("smooth_softmax", 16, 16, True, False, {"smooth_softmax": 1}),
             ("softcap 2", 16, 16, False, True, {"softcap": 2.0}),
             ("position_ids and attention_bias", 16, 16, False, True, ("position_ids", "attention_bias"))]
    with tempfile.TemporaryDirectory() as tmp:
        for n, (what, head_dim, rot, inter, packed, sinks) in enumerate(cases):
            path, art = os.path.join(tmp, f"gqa{n}.onnx"), os.path.join(tmp, f"gqa{n}.moex")
            build(path, head_dim, rot, inter, packed, rng, sinks=sinks is True,
                  extra_attrs=sinks if isinstance(sinks, dict) else None,
                  extra_inputs=sinks if isinstance(sinks, tuple) else ())
            c = subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--quiet"],
                               capture_output=True, text=True)
            if c.returncode != 0:
                check(what, False, "moec compile failed: " + c.stderr.strip())
                continue
            text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
            attention = sum(ln.strip().startswith("attention ") for ln in text.splitlines())
            check(f"{what}: one attention dispatch per layer", attention == LAYERS, f"{attention} attention dispatches")
            decoder = next((ln for ln in text.splitlines() if ln.startswith("decoder")), "no decoder line")
            check(f"{what}: sessions append to the caches in place, each sequence from row 0",
                  "appending to the caches in place" in decoder and "positions from row 0" in decoder, decoder)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            model = rt.load(art, threads=2)
            for batch in (1, 2):
                err = run_steps(sess, model, head_dim, batch, 5, 4, rng)
                check(f"{what}: batch {batch}, prefill 5 + 4 decode steps", err <= 1e-4,
                      f"logits and presents max rel error {err:.2e} vs ONNX Runtime")
            if not isinstance(sinks, tuple):  # (position_ids and a bias would need padding of their own)
                err = padded_run(sess, model, head_dim, rng)
                check(f"{what}: a right-padded batch (prompts of 5 and 2) + 3 decode steps", err <= 1e-4,
                      f"real tokens' logits and filled present rows, max rel error {err:.2e} vs ONNX Runtime")
            if not isinstance(sinks, tuple):  # (an attention_bias spans the total length, not the buffer)
                err = run_steps(sess, model, head_dim, 1, 5, 4, rng, fixed=16)
                check(f"{what}: fixed-size caches of 16 positions", err <= 1e-4,
                      f"logits and presents max rel error {err:.2e} vs ONNX Runtime")
            model.close()
            if n == 0:  # moert generate against a greedy loop over ONNX Runtime
                prompt = rng.integers(0, VOCAB, 4).astype(np.int64)
                tokens = ort_greedy(path, prompt.tolist(), 16)
                np.save(os.path.join(tmp, "prompt.npy"), prompt)
                r = subprocess.run([args.moert, "generate", art, "--prompt-ids", os.path.join(tmp, "prompt.npy"),
                                    "--greedy", "--max-new-tokens", "16", "--threads", "2"], capture_output=True, text=True)
                got = tokens_of(r)
                check("moert generate --greedy", got == tokens, f"moert {got} ONNX Runtime {tokens} {r.stderr.strip()}")
                # A batch of two prompts of one length (no padding): each sequence's tokens are its own greedy
                # loop's.
                prompts = np.stack([prompt, rng.integers(0, VOCAB, 4).astype(np.int64)])
                want = [tokens, ort_greedy(path, prompts[1].tolist(), 16)]
                np.save(os.path.join(tmp, "prompts.npy"), prompts)
                r = subprocess.run([args.moert, "generate", art, "--prompt-ids", os.path.join(tmp, "prompts.npy"),
                                    "--greedy", "--max-new-tokens", "16", "--threads", "2"], capture_output=True, text=True)
                rows = [[int(x) for x in ln.split()[1:]] for ln in r.stdout.splitlines() if ln.startswith("tokens[")]
                check("moert generate, a batch of two", rows == want, f"moert {rows} ONNX Runtime {want} {r.stderr.strip()}")
                # Prompts of 4 and 2 tokens, left-padded: each sequence's tokens are its own greedy loop's.
                short = prompts[1, 2:]
                np.save(os.path.join(tmp, "mask.npy"), np.array([[1, 1, 1, 1], [0, 0, 1, 1]], np.int64))
                want = [tokens, ort_greedy(path, short.tolist(), 16)]
                r = subprocess.run([args.moert, "generate", art, "--prompt-ids", os.path.join(tmp, "prompts.npy"),
                                    "--attention-mask", os.path.join(tmp, "mask.npy"), "--greedy",
                                    "--max-new-tokens", "16", "--threads", "2"], capture_output=True, text=True)
                rows = [[int(x) for x in ln.split()[1:]] for ln in r.stdout.splitlines() if ln.startswith("tokens[")]
                check("moert generate, a padded batch of two (prompts of 4 and 2 tokens)", rows == want,
                      f"moert {rows} ONNX Runtime {want} {r.stderr.strip()}")
                padded_session(rt, path, art, rng, "in place, f32 caches")
                padded_session(rt, path, art, rng, "in place, f16 caches", cache_dtype="f16", bound=1e-2)
                plain = os.path.join(tmp, "plain.moex")
                subprocess.run([args.moec, "compile", path, "-o", plain, f"--cpu={args.cpu}", "--quiet",
                                "--no-fusion"], check=True, capture_output=True)
                padded_session(rt, path, plain, rng, "caches taken over per call (--no-fusion)")
        # Unsupported attributes: one error naming the node, no artifact.
        for attrs, needle in (({"local_window_size": 0}, "local_window_size"), ({"softcap": -1.0}, "softcap"),
                              ({"sliding_window_cache": 1}, "sliding_window_cache needs local_window_size")):
            path, art = os.path.join(tmp, "bad.onnx"), os.path.join(tmp, "bad.moex")
            build(path, 16, 16, False, True, rng, attrs)
            c = subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--quiet"],
                               capture_output=True, text=True)
            lines = c.stderr.strip().splitlines()
            check(f"bad input: {needle}", c.returncode != 0 and not os.path.exists(art) and
                  any(needle in ln and "GroupQueryAttention" in ln for ln in lines), lines[-1] if lines else "(no error)")
    if failures:
        print(f"{len(failures)} GroupQueryAttention check(s) failed")
        return 1
    print("all GroupQueryAttention checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

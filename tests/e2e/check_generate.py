#!/usr/bin/env python3
"""`moert generate` and the session API against a reference generation loop over ONNX Runtime.

For the decoder-with-past fixtures (Qwen3-MoE-like and Mixtral-like exports with past_key_values.* inputs and
present.* outputs), the reference loop runs the ONNX file in ONNX Runtime: the prompt with empty caches, then one
token at a time with the presents fed back as pasts and an all-ones attention_mask, picking the most likely
token (the lowest id on ties). `moert generate --greedy` must give the same 32 tokens, and so must the Python
binding's Model.generate (also given text, with a word-level tokenizer.json next to the model: the same tokens
and their words back as text); the session API's logits match ONNX Runtime's call by call and repeat after a rewind;
sessions with bf16 / f16 / int8 caches match ONNX Runtime on the model with its new keys/values rounded the same
way (Cast there and back before the cache's Concat; int8: Round per block of 32 dims as the cache stores them),
logits within 1e-4 and the same greedy tokens; a
batch of two with left padding matches ONNX Runtime over a prefill and three decode steps through Model.run, and
through a session of batch 2 (prompt + 5 decode steps, a rewind), `moert generate --attention-mask` and
Model.generate(attention_mask=) give ONNX Runtime's greedy tokens for each sequence of such a batch; sequences
leave and join a running batch session (moert_session_reset_sequence) with every sequence's logits matching ONNX
Runtime on that sequence alone (a fixture given a position_ids input; f32, f16 and int8 caches, the last against
the int8-rounded model within 1e-4). Sampling: top-k 1 is greedy whatever the temperature; the same seed gives the same
tokens; every token is in the vocabulary. Bad input is one error line and a non-zero exit: a prompt longer than
--max-context, an empty prompt, ids of rank 3, a padding mask with padding after a token, of another shape than
the ids, or with a sequence of padding only, float ids, an unknown --kv-cache, bf16 caches for a model
whose caches are copied, a model that is not a decoder, and a session of two sequences over a decoder exported
for batch 1, a padded batch for a decoder that takes no attention_mask; caches given
to Model.run with the wrong head count, head dim or dtype, lengths that differ across layers, a batch that differs
from the ids', or a mask shorter than past + new.

    check_generate.py --moec build/bin/moec --moert build/bin/moert --lib build/lib/libmoert.so
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "transformers")
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
NEW_TOKENS = 32
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


class OrtDecoder:
    """The reference: the ONNX file in ONNX Runtime, caches fed back by name, an all-ones attention mask."""

    def __init__(self, path):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.pasts = {}
        for inp in onnx.load(path, load_external_data=False).graph.input:
            if inp.name.startswith("past_key_values."):
                dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
                self.pasts[inp.name] = np.zeros((1, dims[1], 0, dims[3]), np.float32)
        self.out_names = [o.name for o in self.sess.get_outputs()]
        self.positions = "position_ids" in [i.name for i in self.sess.get_inputs()]
        self.length = 0

    def step(self, ids):
        """Runs `ids` after what came before; the last position's logits."""
        extra = {"position_ids": np.arange(self.length, self.length + len(ids), dtype=np.int64)[None]} \
            if self.positions else {}
        res = dict(zip(self.out_names, self.sess.run(None, {
            "input_ids": np.array([list(ids)], np.int64),
            "attention_mask": np.ones((1, self.length + len(ids)), np.int64), **extra, **self.pasts})))
        self.length += len(ids)
        self.pasts = {name: res["present." + name[len("past_key_values."):]] for name in self.pasts}
        return res["logits"][0, -1]


def ort_greedy(path, prompt, new_tokens):
    """The reference greedy loop: the most likely token each step (the lowest id on ties)."""
    dec = OrtDecoder(path)
    tokens = [int(np.argmax(dec.step(prompt)))]
    while len(tokens) < new_tokens:
        tokens.append(int(np.argmax(dec.step([tokens[-1]]))))
    return tokens


def ort_logits(path, prompt, tokens):
    """ONNX Runtime's last-position logits for the prompt, then for each of `tokens` fed one at a time."""
    dec = OrtDecoder(path)
    return [dec.step(prompt)] + [dec.step([t]) for t in tokens]


def session_greedy(rt, art, prompt, steps, **session_options):
    """A fresh session's logits for the prompt, then for `steps` greedy tokens fed one at a time; (logits, tokens)."""
    model = rt.load(art, threads=2)
    sess = model.session(**session_options)
    got, follow = [sess.append(prompt)], []
    for _ in range(steps):
        follow.append(int(np.argmax(got[-1])))
        got.append(sess.append([follow[-1]]))
    sess.close()
    model.close()
    return got, follow


def max_rel(got, want):
    """max over calls of max |got - want| / max |want|."""
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(got, want))


def check_batch(rt, path, art, rng):
    import onnxruntime as ort
    name = os.path.basename(path)[:-5]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    model = rt.load(art, threads=2)
    graph = onnx.load(path, load_external_data=False).graph
    pasts = {}
    for inp in graph.input:
        if inp.name.startswith("past_key_values."):
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            pasts[inp.name] = np.zeros((2, dims[1], 0, dims[3]), np.float32)
    ids = rng.integers(0, 32, (2, 5)).astype(np.int64)
    mask = np.ones((2, 5), np.int64)
    mask[1, :2] = 0
    worst, outs = 0.0, [o.name for o in sess.get_outputs()]
    for _ in range(4):
        feeds = {"input_ids": ids, "attention_mask": mask, **pasts}
        want = dict(zip(outs, sess.run(None, feeds)))
        got = model.run(feeds)
        for k, w in want.items():
            worst = max(worst, float(np.abs(got[k] - w).max() / np.abs(w).max()))
        pasts = {k: got["present." + k[len("past_key_values."):]] for k in pasts}
        ids = want["logits"][:, -1].argmax(-1).reshape(2, 1).astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    model.close()
    check(f"{name}: batch of two, left-padded, prefill + 3 decode steps", worst <= 1e-4,
          f"logits and presents max rel error {worst:.2e} vs ONNX Runtime")


def ort_batch_greedy(path, ids, mask, steps):
    """ONNX Runtime over a batch: the prompts ([B, n], left-padded where `mask` is 0), then `steps` greedy tokens
    per sequence fed back one at a time; the last position's logits [B, vocab] of each of the steps + 1 calls,
    and the tokens [B, steps]."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    pasts = {}
    for inp in onnx.load(path, load_external_data=False).graph.input:
        if inp.name.startswith("past_key_values."):
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            pasts[inp.name] = np.zeros((ids.shape[0], dims[1], 0, dims[3]), np.float32)
    logits, tokens = [], []
    for i in range(steps + 1):
        res = dict(zip(outs, sess.run(None, {"input_ids": ids, "attention_mask": mask, **pasts})))
        logits.append(res["logits"][:, -1])
        if i == steps:
            break
        ids = logits[-1].argmax(-1).reshape(-1, 1).astype(np.int64)
        tokens.append(ids[:, 0])
        pasts = {k: res["present." + k[len("past_key_values."):]] for k in pasts}
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], 1)
    return logits, np.stack(tokens, 1)


def check_batch_session(args, rt, path, art, tmp, rng):
    """Batched generation: a session of two sequences, the second left-padded by three positions, against
    ONNX Runtime given the same ids and mask: the prompt's and 5 decode steps' logits (1e-4), a rewind, and
    `moert generate --attention-mask` / Model.generate(attention_mask=) giving ONNX Runtime's 8 greedy tokens
    per sequence."""
    name = os.path.basename(path)[:-5]
    ids = rng.integers(0, 32, (2, 7)).astype(np.int64)
    mask = np.ones((2, 7), np.int64)
    mask[1, :3] = 0
    want, follow = ort_batch_greedy(path, ids, mask, 8)
    model = rt.load(art, threads=2)
    sess = model.session(batch=2, max_context=64, profile=True)
    got = [sess.append(ids, mask)]
    # The prompt's logits layer (the last linear dispatch) multiplies each sequence's last row only.
    lin = [e["name"] for e in json.loads(sess.profile())["traceEvents"] if e["name"].startswith("linear")]
    head = re.fullmatch(r"linear \d+ \((\d+)x\d+x(\d+)\)", lin[-1]) if lin else None
    check(f"{name}: a session's prompt computes the last positions' logits only",
          head is not None and head.groups() == ("2", str(got[0].shape[-1])),
          f"the logits layer's profile event: {lin[-1] if lin else 'none'} (want 2 rows: one per sequence)")
    got += [sess.append(follow[:, i:i + 1]) for i in range(5)]
    err = max_rel(got, want)
    sess.rewind(7)
    again = sess.append(follow[:, :1])
    sess.close()
    check(f"{name}: batch session of two, left-padded", err <= 1e-4 and np.array_equal(again, got[1]),
          f"prompt + 5 decode steps: logits max rel error {err:.2e} vs ONNX Runtime; after a rewind to the "
          f"prompt the next logits {'repeat' if np.array_equal(again, got[1]) else 'DIFFER'}")
    ids_path, mask_path, out_path = (os.path.join(tmp, f) for f in ("bids.npy", "bmask.npy", "bout.npy"))
    np.save(ids_path, ids)
    np.save(mask_path, mask.astype(np.int32))
    r = generate(args, art, ids_path, "--attention-mask", mask_path, "--greedy", "--max-new-tokens", "8",
                 "--output", out_path)
    rows = [[int(x) for x in ln.split()[1:]] for ln in r.stdout.splitlines() if ln.startswith("tokens[")]
    saved = np.load(out_path).tolist() if r.returncode == 0 else None
    check(f"{name}: moert generate, a left-padded batch of two", r.returncode == 0 and rows == follow.tolist() and
          saved == rows, f"moert {rows} vs ONNX Runtime {follow.tolist()}{'' if r.returncode == 0 else ' ' + r.stderr}")
    py, stats = model.generate(ids, attention_mask=mask, max_new_tokens=8)
    try:
        model.session(batch=2).append(ids[:1])
        wrong = "no error"
    except Exception as e:  # moert.Error
        wrong = str(e)
    model.close()
    check(f"{name}: a batch session given one sequence", "batch 2" in wrong, wrong)
    check(f"{name}: Python generate, a left-padded batch of two", [t.tolist() for t in py] == follow.tolist() and
          stats["prompt_tokens"] == 11 and stats["new_tokens"] == 16,
          f"{[t.tolist() for t in py]}, {stats['prompt_tokens']} prompt and {stats['new_tokens']} new tokens")


def position_ids_model(path, out_path):
    """A copy of a decoder fixture that takes `position_ids` [batch, seq] as an input, as the exports of
    transformers' generate path do: the fixtures compute the rotary positions from the cache index (past length +
    arange), which a batch with padding between a sequence's tokens cannot follow. The input replaces the
    [1, seq, 1] index tensor the rotary embedding's frequencies multiply."""
    m = onnx.load(path)
    g = m.graph
    mul = next(n for n in g.node if n.op_type == "Mul" and any(i.endswith("rotary_emb.inv_freq") for i in n.input))
    cast = next(n for n in g.node if mul.input[0] in n.output and n.op_type == "Cast")
    g.input.insert(2, helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]))
    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "position_ids_axis"))
    g.node.insert(0, helper.make_node("Unsqueeze", ["position_ids", "position_ids_axis"], ["position_ids_3d"]))
    cast.input[0] = "position_ids_3d"
    onnx.save(m, out_path)


def check_continuous_batch(rt, path, art, rng, cache_dtype="f32", bound=None):
    """Sequences leaving and joining a running batch (moert_session_reset_sequence): a session of two where B
    ends, its place sits a call out, C joins with a prompt while A decodes, then A ends and D joins. Every
    sequence's logits at every call against ONNX Runtime running that sequence alone (its own tokens, no
    padding, positions from 0; 1e-4 with f32 caches, 1e-2 with f16, `bound` when the reference rounds as the
    caches do), the idle place's logits NaN, and the
    length after each reset the most tokens any sequence still holds (the padding dropped). `path` takes
    position_ids (position_ids_model): the session gives each token its count of earlier tokens."""
    name = os.path.basename(art)[:-5]
    tok = lambda n: rng.integers(0, 32, n).tolist()  # noqa: E731
    a, b, c, d = tok(5), tok(3), tok(4), tok(2)
    x, y, z = tok(4), tok(1), tok(2)  # A's, B's and C's decode tokens
    refs = {k: OrtDecoder(path) for k in "ABCD"}
    model = rt.load(art, threads=2)
    sess = model.session(batch=2, max_context=64, cache_dtype=cache_dtype)
    errs, lengths, idle = [], [], None

    def call(rows, want):
        """rows: two lists of tokens (padding as None, on the left); want: per row a sequence name or None."""
        n = max(len(r) for r in rows)
        ids = np.zeros((2, n), np.int64)
        mask = np.zeros((2, n), np.int64)
        for i, r in enumerate(rows):
            r = [None] * (n - len(r)) + r
            ids[i] = [t or 0 for t in r]
            mask[i] = [t is not None for t in r]
        got = sess.append(ids, mask)
        for i, (r, k) in enumerate(zip(rows, want)):
            if k is not None:
                ref = refs[k].step([t for t in r if t is not None])
                errs.append(float(np.abs(got[i] - ref).max() / np.abs(ref).max()))
        return got

    call([a, b], "AB")
    call([[x[0]], y], "AB")
    sess.reset_sequence(1)  # B ends
    lengths.append(len(sess))  # A holds 6 tokens, no padding: 6
    got = call([[x[1]], [None]], ["A", None])  # B's place sits the call out
    idle = bool(np.isnan(got[1]).all())
    call([[None] * 3 + [x[2]], c], "AC")  # C joins with its prompt while A decodes
    call([[x[3]], [z[0]]], "AC")
    sess.reset_sequence(0)  # A ends: C's 5 tokens are all that is kept
    lengths.append(len(sess))
    call([d, [None, z[1]]], "DC")  # D joins in A's place
    lengths.append(len(sess))
    sess.close()
    model.close()
    err = max(errs)
    bound = bound or (1e-4 if cache_dtype == "f32" else 1e-2)
    check(f"{name}: sequences leave and join a running batch ({cache_dtype} caches)",
          err <= bound and idle and lengths == [6, 5, 7],
          f"{len(errs)} sequence-calls, logits max rel error {err:.2e} vs ONNX Runtime per sequence (bound "
          f"{bound:g}); idle place's logits {'NaN' if idle else 'NOT NaN'}; lengths after the resets and the "
          f"last join {lengths} (want [6, 5, 7])")


def reset_error(rt, art, sequence, first=None):
    """The message of the moert.Error that ending `sequence` of a batch session of two raises (after appending
    `first`, [2, n] tokens, when given), or "no error"."""
    import moert
    model = rt.load(art, threads=2)
    sess = model.session(batch=2)
    try:
        if first is not None:
            sess.append(first)
        sess.reset_sequence(sequence)
        return "no error"
    except moert.Error as e:
        return str(e)
    finally:
        sess.close()
        model.close()


def error_of(args, rt, onnx_path, call):
    """Compiles `onnx_path` next to it, loads it and gives the message of the moert.Error that call(model) raises
    ("no error" when it raises none)."""
    import moert
    art = onnx_path + ".moex"
    subprocess.run([args.moec, "compile", onnx_path, "-o", art, f"--cpu={args.cpu}", "--quiet"], check=True,
                   capture_output=True)
    model = rt.load(art, threads=2)
    try:
        call(model)
        return "no error"
    except moert.Error as e:
        return str(e)
    finally:
        model.close()


def no_mask_model(path, out_path):
    """The decoder with its attention_mask input made inside the graph (all ones over past + new positions): a
    decoder that takes no mask, so a session cannot mask padding for it."""
    from onnx import helper, TensorProto
    m = onnx.load(path)
    g = m.graph
    past0 = next(i.name for i in g.input if i.name.startswith("past_key_values."))
    kept = [i for i in g.input if i.name != "attention_mask"]
    del g.input[:]
    g.input.extend(kept)
    for name, v in (("_zero", 0), ("_one", 1), ("_two", 2)):
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], [v]))
    made = [helper.make_node("Shape", ["input_ids"], ["_ids_shape"]),
            helper.make_node("Shape", [past0], ["_past_shape"]),
            helper.make_node("Gather", ["_ids_shape", "_zero"], ["_b"], axis=0),
            helper.make_node("Gather", ["_ids_shape", "_one"], ["_s"], axis=0),
            helper.make_node("Gather", ["_past_shape", "_two"], ["_p"], axis=0),
            helper.make_node("Add", ["_p", "_s"], ["_t"]),
            helper.make_node("Concat", ["_b", "_t"], ["_mask_shape"], axis=0),
            helper.make_node("Expand", ["_one", "_mask_shape"], ["attention_mask"])]
    nodes = made + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(m, out_path)


def int8_rows(x, out, dim, opset):
    """Nodes rounding x [B, H, S, dim] (f32) as a session's int8 cache stores it (kernels/cpu/moert_kernel_abi.h,
    MOERT_KV_INT8_BLOCK), written independently of moert: per block of 32 dims (the last one shorter, zero
    padded here, which leaves its max alone) q = Round(x * (127 / max|x|)) (ONNX's Round: half to even; 0 for a
    block of zeros), back as q * (max|x| / 127)."""
    nb, p = -(-dim // 32), x + "_i8"
    c = lambda name, v: helper.make_node("Constant", [], [f"{p}_{name}"], value=numpy_helper.from_array(
        np.array(v, dtype=np.int64 if isinstance(v, list) else np.float32), f"{p}_{name}"))
    nodes = [c("pads", [0, 0, 0, 0, 0, 0, 0, nb * 32 - dim]), c("blocks", [0, 0, 0, nb, 32]),
             c("rows", [0, 0, 0, nb * 32]), c("axis", [-1]), c("start", [0]), c("end", [dim]), c("qmax", 127.0),
             c("zero", 0.0),
             helper.make_node("Pad", [x, f"{p}_pads"], [f"{p}_padded"]),
             helper.make_node("Reshape", [f"{p}_padded", f"{p}_blocks"], [f"{p}_x"]),
             helper.make_node("Abs", [f"{p}_x"], [f"{p}_abs"]),
             helper.make_node("ReduceMax", [f"{p}_abs", f"{p}_axis"], [f"{p}_amax"], keepdims=1),
             helper.make_node("Greater", [f"{p}_amax", f"{p}_zero"], [f"{p}_live"]),
             helper.make_node("Div", [f"{p}_qmax", f"{p}_amax"], [f"{p}_inv_any"]),
             helper.make_node("Where", [f"{p}_live", f"{p}_inv_any", f"{p}_zero"], [f"{p}_inv"]),
             helper.make_node("Mul", [f"{p}_x", f"{p}_inv"], [f"{p}_scaled"]),
             helper.make_node("Round", [f"{p}_scaled"], [f"{p}_q"]),
             helper.make_node("Div", [f"{p}_amax", f"{p}_qmax"], [f"{p}_scale"]),
             helper.make_node("Mul", [f"{p}_q", f"{p}_scale"], [f"{p}_deq"]),
             helper.make_node("Reshape", [f"{p}_deq", f"{p}_rows"], [f"{p}_flat"]),
             helper.make_node("Slice", [f"{p}_flat", f"{p}_start", f"{p}_end", f"{p}_axis"], [out])]
    assert opset >= 18, "ReduceMax with axes as an input"
    return nodes


def rounded_cache_model(path, out_path, dtype):
    """The ONNX file with every new key/value rounded to `dtype` before it joins its cache: bf16 / f16 by a Cast
    there and back (ONNX Runtime's Cast rounds to nearest even, as a session appending to a bf16/f16 cache
    does), int8 by int8_rows. This model's logits are what a session with narrow caches must give (past and new
    keys alike are rounded)."""
    m = onnx.load(path)
    producer = {o: n for n in m.graph.node for o in n.output}
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.output}
    added = []
    for out in m.graph.output:
        if not out.name.startswith("present."):
            continue
        n = producer[out.name]
        assert n.op_type == "Concat" and n.input[0].startswith("past_key_values."), (out.name, n.op_type)
        narrow, back = n.input[1] + "_narrow", n.input[1] + "_rounded"
        if dtype == "int8":
            added += int8_rows(n.input[1], back, dims[out.name][3], opset)
        else:
            to = {"bf16": TensorProto.BFLOAT16, "f16": TensorProto.FLOAT16}[dtype]
            added += [helper.make_node("Cast", [n.input[1]], [narrow], to=to),
                      helper.make_node("Cast", [narrow], [back], to=TensorProto.FLOAT)]
        n.input[1] = back
    m.graph.node.extend(added)
    onnx.save(m, out_path)


def check_narrow_caches(args, rt, path, art, tmp, rng):
    """Sessions keeping bf16 / f16 / int8 caches: logits call by call and greedy tokens against ONNX Runtime on
    the model with its new keys/values rounded the same way (rounded_cache_model), within 1e-4."""
    name = os.path.basename(path)[:-5]
    for dtype in ("bf16", "f16", "int8"):
        ref_path = os.path.join(tmp, f"{name}_{dtype}.onnx")
        rounded_cache_model(path, ref_path, dtype)
        prompt = rng.integers(0, 32, 250).tolist()
        got, follow = session_greedy(rt, art, prompt, 10, max_context=1024, cache_dtype=dtype)
        err = max_rel(got, ort_logits(ref_path, prompt, follow))
        off = max_rel(got, ort_logits(path, prompt, follow))
        check(f"{name}: session with {dtype} caches", err <= 1e-4,
              f"250 prompt tokens then 10 decode steps: logits max rel error {err:.2e} vs ONNX Runtime with "
              f"keys/values rounded to {dtype} ({off:.2e} vs the f32 model)")
        prompt_path = os.path.join(tmp, f"{name}_{dtype}_prompt.npy")
        short = rng.integers(0, 32, 6).astype(np.int64)
        np.save(prompt_path, short)
        run = generate(args, art, prompt_path, "--greedy", "--kv-cache", dtype, "--max-new-tokens", str(NEW_TOKENS))
        want_t = ort_greedy(ref_path, short.tolist(), NEW_TOKENS)
        check(f"{name}: generate --kv-cache {dtype}", run.returncode == 0 and tokens_of(run) == want_t,
              f"moert {tokens_of(run)[:8]}... ORT {want_t[:8]}..."
              f"{'' if run.returncode == 0 else ' ' + run.stderr.strip()}")


def check_bf16_attention(args, rt, path, art, tmp, rng):
    """`--activations=bf16`: attention over bf16 caches multiplies bf16 pairs. With bf16 caches the logits stay
    near ONNX Runtime's on the model with its keys/values rounded to bf16 (and differ from the plain artifact's:
    the rounding is on); with f32 caches they equal the plain artifact's bit for bit.

    The bound: rounding each query and softmax term to bf16 (2^-9 relative; moe.attention's contract) perturbs
    the same products by the same relative amount as rounding the keys and values into the cache does, so the
    logits may move from the rounded-cache reference by about as much as the rounded cache moves them from the
    f32 model: twice that is the bound (measured 2026-12-06: 1.1e-3 against a bound of 5.0e-3 on the Qwen3
    fixture, 1.25e-2 against 2.6e-2 on the Mixtral one)."""
    name = os.path.basename(path)[:-5]
    act = os.path.join(tmp, name + "_bf16act.moex")
    c = subprocess.run([args.moec, "compile", path, "-o", act, f"--cpu={args.cpu}", "--quiet", "--activations=bf16"],
                       capture_output=True, text=True)
    if c.returncode != 0:
        check(f"{name}: --activations=bf16", False, "moec compile failed: " + c.stderr.strip())
        return
    text = subprocess.run([args.moert, "inspect", act], capture_output=True, text=True).stdout
    marked = [ln for ln in text.splitlines() if ln.strip().startswith("attention ")]
    check(f"{name}: --activations=bf16 marks every attention dispatch",
          marked and all("bf16 activations over bf16 caches" in ln for ln in marked),
          f"{len(marked)} attention dispatches: {marked[0].strip() if marked else 'none'}")
    ref_path = os.path.join(tmp, f"{name}_bf16.onnx")
    rounded_cache_model(path, ref_path, "bf16")
    prompt = rng.integers(0, 32, 250).tolist()
    got, follow = session_greedy(rt, act, prompt, 10, max_context=1024, cache_dtype="bf16")
    model = rt.load(art, threads=2)  # the plain artifact on the same tokens
    sess = model.session(max_context=1024, cache_dtype="bf16")
    plain = [sess.append(prompt)] + [sess.append([t]) for t in follow]
    sess.close()
    model.close()
    err = max_rel(got, ort_logits(ref_path, prompt, follow))
    bound = 2 * max_rel(plain, ort_logits(path, prompt, follow))  # the rounded cache's own drift, twice
    moved = max_rel(got, plain)
    check(f"{name}: bf16 attention over bf16 caches", err <= bound and moved > 0,
          f"250 prompt tokens then 10 decode steps: logits max rel error {err:.2e} vs ONNX Runtime with keys/values "
          f"rounded to bf16 (bound {bound:.2e}: twice the bf16 cache's own drift from the f32 model); {moved:.2e} "
          "from the artifact without --activations=bf16")
    same, _ = session_greedy(rt, act, prompt[:40], 3, max_context=64)
    plain32, _ = session_greedy(rt, art, prompt[:40], 3, max_context=64)
    check(f"{name}: --activations=bf16 with f32 caches", all(np.array_equal(a, b) for a, b in zip(same, plain32)),
          "logits equal to the plain artifact's over 4 calls" if all(np.array_equal(a, b) for a, b in zip(same, plain32))
          else f"logits differ by {max_rel(same, plain32):.2e}")


def check_bad_caches(rt, art):
    """Inconsistent caches given to Model.run: one error naming the input."""
    model = rt.load(art, threads=2)

    def feeds(b=1, t=2, past=(3, 3), heads=2, hd=8, dtype=np.float32, ids_b=None, total=None):
        f = {"input_ids": np.zeros((ids_b or b, t), np.int64),
             "attention_mask": np.ones((b, total or t + past[0]), np.int64)}
        for i in range(2):
            for k in ("key", "value"):
                f[f"past_key_values.{i}.{k}"] = np.zeros((b, heads, past[i], hd), dtype)
        return f

    cases = {"a past cache with the wrong head count": (feeds(heads=3), "past_key_values.0.key': dim 1 is 3"),
             "a past cache with the wrong head dim": (feeds(hd=4), "past_key_values.0.key': dim 3 is 4"),
             "a past cache in f16": (feeds(dtype=np.float16), "past_key_values.0.key': dtype f16"),
             "past lengths that differ across layers": (feeds(past=(3, 4)), "past_key_values.1.key"),
             "batch of the ids and the caches differ": (feeds(b=2, ids_b=1), "batch"),
             "a mask shorter than past + new": (feeds(total=3), "attention_mask': 3 positions")}
    for what, (f, needle) in cases.items():
        try:
            model.run(f)
            check(f"bad caches: {what}", False, "ran")
        except Exception as e:  # moert.Error
            check(f"bad caches: {what}", needle in str(e) and "\n" not in str(e), str(e))
    model.close()


def generate(args, art, prompt_path, *extra):
    return subprocess.run([args.moert, "generate", art, "--prompt-ids", prompt_path, "--threads", "2", *extra],
                          capture_output=True, text=True)


def text_generation(rt, art, onnx_path, vocab, tmp, rng, moert_cli, moec_cli, cpu):
    """Text in, text out: a word-level tokenizer.json ("w0" .. "w{vocab-1}", made with the `tokenizers`
    package) next to a copy of the artifact; Model.generate("w3 w1 ...") must give ONNX Runtime's greedy tokens
    for those ids and their words as text; a text prompt without a tokenizer is one error."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    words = {f"w{i}": i for i in range(vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    d = os.path.join(tmp, "with_tokenizer")
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    copy = os.path.join(d, "model.moex")
    with open(art, "rb") as src, open(copy, "wb") as dst:
        dst.write(src.read())
    prompt = rng.integers(0, vocab, 5).tolist()
    want = ort_greedy(onnx_path, prompt, 8)
    model = rt.load(copy, threads=2)
    got, stats = model.generate(" ".join(f"w{i}" for i in prompt), max_new_tokens=8)
    model.close()
    text = " ".join(f"w{i}" for i in want)
    check(f"{os.path.basename(onnx_path)}: text prompt and text out (tokenizer.json next to the model)",
          got.tolist() == want and stats.get("text") == text, f"{stats.get('text')!r} (want {text!r})")
    # A batch of two texts of different lengths: left-padded by the binding, ONNX Runtime's batch loop given the
    # same padded ids and mask.
    short = rng.integers(0, vocab, 3).tolist()
    ids = np.array([prompt, [0, 0] + short], np.int64)
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]], np.int64)
    _, follow = ort_batch_greedy(onnx_path, ids, mask, 6)
    model = rt.load(copy, threads=2)
    got, stats = model.generate([" ".join(f"w{i}" for i in p) for p in (prompt, short)], max_new_tokens=6)
    model.close()
    texts = [" ".join(f"w{i}" for i in row) for row in follow.tolist()]
    check(f"{os.path.basename(onnx_path)}: a batch of two texts", [g.tolist() for g in got] == follow.tolist() and
          stats.get("text") == texts, f"{stats.get('text')!r} (want {texts!r})")
    model = rt.load(art, threads=2)
    try:
        model.generate("w1 w2", max_new_tokens=2)
        ok, msg = False, "no error"
    except Exception as err:
        ok, msg = "needs a tokenizer" in str(err), str(err)
    model.close()
    check("a text prompt without a tokenizer: one error", ok, msg)
    # The CLI the same way: `moert generate --prompt TEXT` (the tokenizer.json next to the model) prints ONNX
    # Runtime's greedy tokens and their text; two --prompt a batch, left-padded; --tokenizer names one elsewhere.
    name = os.path.basename(onnx_path)

    def cli(model_path, *extra):
        return subprocess.run([moert_cli, "generate", model_path, "--threads", "2", *extra], capture_output=True,
                              text=True)

    r = cli(copy, "--prompt", " ".join(f"w{i}" for i in prompt), "--max-new-tokens", "8")
    lines = dict(ln.split(": ", 1) for ln in r.stdout.splitlines() if ": " in ln)
    check(f"{name}: moert generate --prompt", r.returncode == 0 and lines.get("tokens", "").split() ==
          [str(i) for i in want] and lines.get("text") == text, r.stdout.strip() or r.stderr.strip())
    r = cli(copy, "--prompt", " ".join(f"w{i}" for i in prompt), "--max-new-tokens", "8", "--stream")
    lines = dict(ln.split(": ", 1) for ln in r.stdout.splitlines() if ": " in ln)
    check(f"{name}: moert generate --prompt --stream (the text as each token comes)", r.returncode == 0 and
          lines.get("tokens", "").split() == [str(i) for i in want] and lines.get("text") == text,
          r.stdout.strip() or r.stderr.strip())
    # Python's streaming hook: every token as it comes; a true result stops after that token; an exception in it
    # ends the call with that exception.
    model = rt.load(copy, threads=2)
    seen = []
    got, _ = model.generate(prompt, max_new_tokens=8, on_token=lambda b, t: seen.append(t))
    stopped, _ = model.generate(prompt, max_new_tokens=8, on_token=lambda b, t: t == want[2] or None)
    try:
        model.generate(prompt, max_new_tokens=8, on_token=lambda b, t: 1 / 0)
        raised = "no exception"
    except ZeroDivisionError:
        raised = "ZeroDivisionError"
    model.close()
    check(f"{name}: Model.generate(on_token=...)", seen == want and got.tolist() == want and
          stopped.tolist() == want[:want.index(want[2]) + 1] and raised == "ZeroDivisionError",
          f"streamed {seen}, stopped at {stopped.tolist()}, an exception in it: {raised}")
    r = cli(copy, *[a for p in (prompt, short) for a in ("--prompt", " ".join(f"w{i}" for i in p))],
            "--max-new-tokens", "6")
    lines = dict(ln.split(": ", 1) for ln in r.stdout.splitlines() if ": " in ln)
    got = [lines.get(f"tokens[{b}]", "").split() for b in range(2)]
    check(f"{name}: moert generate with two --prompt (a batch)", r.returncode == 0 and
          got == [[str(i) for i in row] for row in follow.tolist()] and
          [lines.get(f"text[{b}]") for b in range(2)] == texts, r.stdout.strip() or r.stderr.strip())
    r = cli(art, "--prompt", "w1 w2", "--tokenizer", os.path.join(d, "tokenizer.json"), "--max-new-tokens", "3")
    check(f"{name}: moert generate --tokenizer", r.returncode == 0 and "text: " in r.stdout,
          r.stdout.strip() or r.stderr.strip())
    ids_path = os.path.join(tmp, "text_ids.npy")
    np.save(ids_path, np.array(prompt, np.int64))
    for what, model_path, extra, needle in (
            ("--prompt without a tokenizer", art, ["--prompt", "w1"], "--prompt needs a tokenizer"),
            ("--prompt and --prompt-ids", copy, ["--prompt", "w1", "--prompt-ids", ids_path], "one way"),
            ("a tokenizer.json that is not one", art, ["--prompt", "w1", "--tokenizer", ids_path],
             "not a tokenizer.json"),
            ("a text that is no tokens", copy, ["--prompt", "   "], "the text is no tokens")):
        r = cli(model_path, *extra)
        errs = r.stderr.strip().splitlines()
        check(f"moert generate: {what}: one error", r.returncode == 1 and len(errs) == 1 and needle in errs[0] and
              not r.stdout, errs[-1] if errs else "(no error)")
    # The tokenizer inside the artifact: moec compile --tokenizer, and by default the tokenizer.json next to the
    # ONNX file; moert generate --prompt, moert tokenize and Model.generate(text) read it when no tokenizer.json
    # sits next to the artifact.
    inside = os.path.join(tmp, "inside")
    os.makedirs(inside, exist_ok=True)
    src_dir = os.path.join(tmp, "src_with_tokenizer")
    os.makedirs(src_dir, exist_ok=True)
    with open(onnx_path, "rb") as f, open(os.path.join(src_dir, "model.onnx"), "wb") as g:
        g.write(f.read())
    tok.save(os.path.join(src_dir, "tokenizer.json"))
    compiled = {}
    for how, src, extra in (("--tokenizer", onnx_path, ["--tokenizer", os.path.join(d, "tokenizer.json")]),
                            ("the tokenizer.json next to the ONNX file", os.path.join(src_dir, "model.onnx"), []),
                            ("--no-tokenizer", os.path.join(src_dir, "model.onnx"), ["--no-tokenizer"])):
        out = os.path.join(inside, f"m{len(compiled)}.moex")
        c = subprocess.run([moec_cli, "compile", src, "-o", out, f"--cpu={cpu}", *extra], capture_output=True,
                           text=True)
        compiled[how] = (out, c)
    for how in ("--tokenizer", "the tokenizer.json next to the ONNX file"):
        out, c = compiled[how]
        r = cli(out, "--prompt", " ".join(f"w{i}" for i in prompt), "--max-new-tokens", "8")
        lines = dict(ln.split(": ", 1) for ln in r.stdout.splitlines() if ": " in ln)
        inspect = subprocess.run([moert_cli, "inspect", out], capture_output=True, text=True).stdout
        model = rt.load(out, threads=2)
        py, py_stats = model.generate(" ".join(f"w{i}" for i in prompt), max_new_tokens=8)
        model.close()
        tk = subprocess.run([moert_cli, "tokenize", out, "--text", "w3 w9"], capture_output=True, text=True)
        check(f"{name}: the tokenizer inside the artifact ({how})",
              c.returncode == 0 and "embedding the tokenizer" in c.stderr and "tokenizer: tokenizer.json inside" in
              inspect and lines.get("tokens", "").split() == [str(i) for i in want] and lines.get("text") == text
              and py.tolist() == want and py_stats.get("text") == text and tk.stdout.split() == ["3", "9"],
              f"moert: {lines.get('text')!r}, Python: {py_stats.get('text')!r}, tokenize: {tk.stdout.strip()!r}"
              + (f"; compile: {c.stderr.strip()}" if c.returncode else ""))
    out, c = compiled["--no-tokenizer"]
    r = cli(out, "--prompt", "w1")
    tk = subprocess.run([moert_cli, "tokenize", out, "--text", "w1"], capture_output=True, text=True)
    check(f"{name}: moec compile --no-tokenizer leaves it out", c.returncode == 0 and r.returncode == 1 and
          "--prompt needs a tokenizer" in r.stderr and tk.returncode == 1 and
          "no tokenizer.json next to it or in it" in tk.stderr, r.stderr.strip() + " / " + tk.stderr.strip())
    # Bad tokenizers at compile time: one error, no artifact; a JSON tokenizer moert's reader cannot use is
    # embedded with a warning (the Python binding's tokenizers may read it).
    unigram = os.path.join(tmp, "unigram.json")
    with open(unigram, "w") as f:
        json.dump({"version": "1.0", "model": {"type": "Unigram", "unk_id": 0, "vocab": [["w0", -1.0]]}}, f)
    for what, extra, code, needle in (
            ("a missing --tokenizer", ["--tokenizer", os.path.join(tmp, "none.json")], 1, "cannot read it"),
            ("a --tokenizer that is not JSON", ["--tokenizer", ids_path], 1, "not a tokenizer.json"),
            ("--tokenizer and --no-tokenizer", ["--tokenizer", unigram, "--no-tokenizer"], 1, "give one"),
            ("a Unigram tokenizer", ["--tokenizer", unigram], 0, "model 'Unigram' is not supported")):
        out = os.path.join(inside, "bad.moex")
        if os.path.exists(out):
            os.remove(out)
        c = subprocess.run([moec_cli, "compile", onnx_path, "-o", out, f"--cpu={cpu}", "--quiet", *extra],
                           capture_output=True, text=True)
        errs = c.stderr.strip().splitlines()
        check(f"moec compile: {what}", c.returncode == code and any(needle in e for e in errs) and
              os.path.exists(out) == (code == 0), errs[-1] if errs else "(no message)")


def tokens_of(run):
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("tokens:")), "tokens:")
    return [int(x) for x in line.split()[1:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    ap.add_argument("--cpu", default="x86-64-v3")
    args = ap.parse_args()
    import moert
    rt = moert.Runtime(args.lib)
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("past_qwen3_moe", "past_mixtral"):
            path = os.path.join(FIXTURES, name + ".onnx")
            art = os.path.join(tmp, name + ".moex")
            c = subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--quiet"],
                               capture_output=True, text=True)
            if c.returncode != 0:
                check(name, False, "moec compile failed: " + c.stderr.strip())
                continue
            text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
            check(name + ": a decoder, caches appended in place",
                  "decoder: 4 KV caches" in text and "appending to the caches in place" in text,
                  next((ln for ln in text.splitlines() if ln.startswith("decoder")), "no decoder line"))
            vocab = 32
            for p_len in (1, 6):
                prompt = rng.integers(0, vocab, p_len).astype(np.int64)
                prompt_path = os.path.join(tmp, f"{name}_{p_len}.npy")
                np.save(prompt_path, prompt.reshape(1, -1))
                want = ort_greedy(path, prompt.tolist(), NEW_TOKENS)
                run = generate(args, art, prompt_path, "--greedy", "--max-new-tokens", str(NEW_TOKENS))
                got = tokens_of(run)
                check(f"{name}: greedy, prompt of {p_len}", run.returncode == 0 and got == want,
                      f"moert {got[:8]}... ORT {want[:8]}... ({sum(a == b for a, b in zip(got, want))}/{NEW_TOKENS} "
                      f"equal){'' if run.returncode == 0 else ' ' + run.stderr.strip()}; "
                      + " ".join(ln for ln in run.stdout.splitlines() if not ln.startswith("tokens")))
                model = rt.load(art, threads=2)
                py, stats = model.generate(prompt, max_new_tokens=NEW_TOKENS)
                model.close()
                check(f"{name}: Python generate, prompt of {p_len}", py.tolist() == want,
                      f"{py[:8].tolist()}..., {stats['new_tokens']} new tokens")
            text_generation(rt, art, path, vocab, tmp, rng, args.moert, args.moec, args.cpu)
            # The session API: logits of each step against ONNX Runtime's; rewinding to the prompt and feeding
            # the first generated token again gives that step's logits again.
            model = rt.load(art, threads=2)
            sess = model.session()
            ref_logits = ort_logits(path, prompt.tolist(), want[:3])
            steps = [sess.append(prompt)] + [sess.append([t]) for t in want[:3]]
            err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(steps, ref_logits))
            sess.rewind(len(prompt))
            again = sess.append([want[0]])
            n_after = len(sess)
            sess.close()
            model.close()
            check(f"{name}: session append / rewind", err <= 1e-4 and np.array_equal(again, steps[1]) and
                  n_after == len(prompt) + 1, f"logits max rel error {err:.2e} vs ONNX Runtime over 4 calls; after "
                  f"rewinding to the prompt the next logits {'repeat' if np.array_equal(again, steps[1]) else 'DIFFER'}; "
                  f"length {n_after}")
            # A long prompt and decode steps past the session's first cache buffer (256 positions; it doubles).
            long_prompt = rng.integers(0, vocab, 250).tolist()
            got, follow = session_greedy(rt, art, long_prompt, 12, max_context=1024)
            err = max_rel(got, ort_logits(path, long_prompt, follow))
            check(f"{name}: session past its first cache buffer", err <= 1e-4,
                  f"250 prompt tokens then 12 decode steps to 262 positions: logits max rel error {err:.2e} vs "
                  "ONNX Runtime")
            check_narrow_caches(args, rt, path, art, tmp, rng)
            check_bf16_attention(args, rt, path, art, tmp, rng)
            # A batch of two, the second left-padded by two positions, through Model.run: the prefill and three
            # greedy decode steps, presents fed back as pasts, every output against ONNX Runtime's.
            check_batch(rt, path, art, rng)
            check_batch_session(args, rt, path, art, tmp, rng)
            if name == "past_qwen3_moe":  # sequences joining and leaving a batch: a model taking position_ids
                pos_path = os.path.join(tmp, "past_qwen3_moe_positions.onnx")
                position_ids_model(path, pos_path)
                pos_art = os.path.join(tmp, "past_qwen3_moe_positions.moex")
                subprocess.run([args.moec, "compile", pos_path, "-o", pos_art, f"--cpu={args.cpu}", "--quiet"],
                               check=True, capture_output=True)
                check_continuous_batch(rt, pos_path, pos_art, rng)
                check_continuous_batch(rt, pos_path, pos_art, rng, cache_dtype="f16")
                # int8 rows (codes and scales) move whole: against ONNX Runtime on the int8-rounded model.
                rounded_pos = os.path.join(tmp, "past_qwen3_moe_positions_int8.onnx")
                rounded_cache_model(pos_path, rounded_pos, "int8")
                check_continuous_batch(rt, rounded_pos, pos_art, rng, cache_dtype="int8", bound=1e-4)
                plain_pos = os.path.join(tmp, "past_qwen3_moe_positions_plain.moex")
                subprocess.run([args.moec, "compile", pos_path, "-o", plain_pos, f"--cpu={args.cpu}", "--quiet",
                                "--no-fusion"], check=True, capture_output=True)
                check_continuous_batch(rt, pos_path, plain_pos, rng)  # caches taken over from each call
                # Without position_ids the rotary positions are cache indices: ending a sequence is refused.
                refused = reset_error(rt, art, 1, rng.integers(0, 32, (2, 3)))
                check(f"{name}: without position_ids, ending a sequence of a batch refused",
                      "position_ids" in refused, refused)
                refused = reset_error(rt, pos_art, 2)
                check(f"{name}: ending sequence 2 of a batch of two refused", "batch of 2" in refused, refused)
            # Sampling.
            one = generate(args, art, prompt_path, "--temperature", "0.7", "--top-k", "1", "--seed", "5")
            check(f"{name}: top-k 1 sampling is greedy", tokens_of(one) == want, f"{tokens_of(one)[:8]}...")
            a = generate(args, art, prompt_path, "--temperature", "1.3", "--top-p", "0.9", "--seed", "11")
            b = generate(args, art, prompt_path, "--temperature", "1.3", "--top-p", "0.9", "--seed", "11")
            ta, tb = tokens_of(a), tokens_of(b)
            check(f"{name}: sampling with a seed repeats", a.returncode == 0 and ta == tb and len(ta) == NEW_TOKENS
                  and all(0 <= t < vocab for t in ta), f"{ta[:8]}... / {tb[:8]}...")
            # A stop token ends generation right after it.
            eos = want[3]
            stop = tokens_of(generate(args, art, prompt_path, "--greedy", "--eos-id", str(eos)))
            check(f"{name}: --eos-id stops after it", stop == want[:want.index(eos) + 1], f"{stop}")
            # --profile: the last decode step's trace, the caches appended in place and read by attention.
            trace_path = os.path.join(tmp, "trace.json")
            r = generate(args, art, prompt_path, "--max-new-tokens", "4", "--profile", trace_path)
            names = [e["name"] for e in json.load(open(trace_path))["traceEvents"]] if r.returncode == 0 else []
            check(f"{name}: generate --profile", sum(n.startswith("attention") for n in names) == 2 and
                  sum(n == "Concat (cache append in place)" for n in names) == 4,
                  f"{len(names)} steps traced, {sum(n.startswith('attention') for n in names)} attention, "
                  f"{sum(n == 'Concat (cache append in place)' for n in names)} in-place appends")
        # Without the attention dispatch (--no-fusion) op steps read the caches, so sessions take each call's
        # presents over instead of appending in place: the same tokens and logits.
        path = os.path.join(FIXTURES, "past_qwen3_moe.onnx")
        plain = os.path.join(tmp, "plain.moex")
        subprocess.run([args.moec, "compile", path, "-o", plain, f"--cpu={args.cpu}", "--quiet", "--no-fusion"],
                       check=True, capture_output=True)
        text = subprocess.run([args.moert, "inspect", plain], capture_output=True, text=True).stdout
        prompt = rng.integers(0, 32, 5).tolist()
        want = ort_greedy(path, prompt, 8)
        model = rt.load(plain, threads=2)
        sess = model.session()
        steps = [sess.append(prompt)] + [sess.append([t]) for t in want[:3]]
        sess.rewind(len(prompt))
        again = sess.append([want[0]])
        sess.close()
        model.close()
        ref = ort_logits(path, prompt, want[:3])
        err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(steps, ref))
        check("past_qwen3_moe --no-fusion: caches copied, session append / rewind",
              "copying the caches each call" in text and err <= 1e-4 and np.array_equal(again, steps[1]),
              f"logits max rel error {err:.2e} vs ONNX Runtime over 4 calls; after a rewind "
              f"{'the same' if np.array_equal(again, steps[1]) else 'DIFFERENT'} logits")
        # Caches copied each call stay f32: asking for bf16 ones is an error.
        model = rt.load(plain, threads=2)
        try:
            model.session(cache_dtype="bf16").close()
            narrow = "no error"
        except moert.Error as e:
            narrow = str(e)
        model.close()
        check("past_qwen3_moe --no-fusion: bf16 caches refused", "in place" in narrow, narrow)
        # A decoder exported for batch 1 (static dim 0): a session of two sequences is refused when it is made.
        m = onnx.load(path)
        for inp in m.graph.input:
            if inp.type.tensor_type.shape.dim and inp.type.tensor_type.shape.dim[0].dim_param:
                inp.type.tensor_type.shape.dim[0].dim_value = 1
        one = os.path.join(tmp, "batch1.onnx")
        onnx.save(m, one)
        static = error_of(args, rt, one, lambda model: model.session(batch=2).close())
        check("a decoder exported for batch 1: a session of two refused", "batch of 1" in static, static)
        # A decoder without an attention_mask input: a padded batch is refused (nothing would mask the padding).
        nomask = os.path.join(tmp, "nomask.onnx")
        no_mask_model(path, nomask)
        unmasked = error_of(args, rt, nomask, lambda model: model.generate(
            np.zeros((2, 3), np.int64), attention_mask=[[1, 1, 1], [0, 1, 1]], max_new_tokens=2))
        check("a decoder without attention_mask: a padded batch refused", "no attention_mask" in unmasked, unmasked)
        # Bad input: one error line, non-zero exit.
        art = os.path.join(tmp, "past_qwen3_moe.moex")
        masks = {"gap": [[1, 0, 1], [1, 1, 1]], "wide": [[1, 1, 1, 1], [1, 1, 1, 1]], "empty": [[1, 1, 1], [0, 0, 0]]}
        for k, m in masks.items():
            np.save(os.path.join(tmp, f"mask_{k}.npy"), np.array(m, np.int64))
        bad = {"longer than the context": (np.arange(10, dtype=np.int64), ["--max-context", "8"], "context"),
               "prompt and new tokens past the context": (np.arange(5, dtype=np.int64),
                                                          ["--max-context", "20", "--max-new-tokens", "32"],
                                                          "context"),
               "empty prompt": (np.zeros((1, 0), np.int64), [], "empty"),
               "ids of rank 3": (np.zeros((1, 2, 3), np.int64), [], "[n] or [B, n]"),
               "padding after a token": (np.zeros((2, 3), np.int64),
                                         ["--attention-mask", os.path.join(tmp, "mask_gap.npy")], "left-padded"),
               "a mask of another shape": (np.zeros((2, 3), np.int64),
                                           ["--attention-mask", os.path.join(tmp, "mask_wide.npy")], "shape"),
               "a sequence of padding only": (np.zeros((2, 3), np.int64),
                                              ["--attention-mask", os.path.join(tmp, "mask_empty.npy")], "padding"),
               "float ids": (np.zeros(3, np.float32), [], "int64 or int32"),
               "an unknown cache dtype": (np.arange(3, dtype=np.int64), ["--kv-cache", "int4"], "--kv-cache")}
        for what, (ids, extra, needle) in bad.items():
            p = os.path.join(tmp, "bad.npy")
            np.save(p, ids)
            r = generate(args, art, p, *extra)
            lines = r.stderr.strip().splitlines()
            check(f"bad input: {what}", r.returncode != 0 and len(lines) == 1 and needle in lines[0],
                  lines[0] if lines else "(no error)")
        check_bad_caches(rt, art)
        block = os.path.join(tmp, "block.moex")
        subprocess.run([args.moec, "compile", os.path.join(FIXTURES, "mixtral.onnx"), "-o", block,
                        f"--cpu={args.cpu}", "--quiet"], check=True, capture_output=True)
        np.save(os.path.join(tmp, "ok.npy"), np.arange(3, dtype=np.int64))
        r = generate(args, block, os.path.join(tmp, "ok.npy"))
        lines = r.stderr.strip().splitlines()
        check("bad input: not a decoder", r.returncode != 0 and len(lines) == 1 and "not a decoder" in lines[0],
              lines[0] if lines else "(no error)")
    if failures:
        print(f"{len(failures)} generate check(s) failed")
        return 1
    print("all generate checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Rotary embedding and norms as one step each (moe.rotary, moe.norm) through moec and moert, against ONNX Runtime.

Models built with onnx.helper, each a projection (MatMul) feeding what is tested:
  - ONNX Runtime's com.microsoft.RotaryEmbedding: [B, S, H * D] input with num_heads (half-split, all of the head;
    interleaved over part of it), [B, H, S, D] input, position_ids [B, S] or one offset, and num_heads left out
    (the head size read from the caches); each becomes one `moec.Rotary` step;
  - transformers' apply_rotary_pos_emb as PyTorch exports it (`q * cos + Concat(-q[..., h:], q[..., :h]) * sin`
    on the transposed projection, cos/sin computed from position ids) with Qwen3's q_norm in front, and a partial
    rotary with the untouched dims concatenated: one `moec.Rotary` step with the norm and the transpose folded in,
    no Neg / Transpose / ReduceMean op step left;
  - the pair layouts other families' exports write (GPT-OSS's halves by Split, halves by Slices, DeepSeek's MLA
    even / odd dims written back as halves, Ernie-4.5's interleaved pairs with a repeat-interleaved table), full and
    partial: one `moec.Rotary` step each, no Neg / Sub / Split / Transpose step left;
  - an RMSNorm as exported and a LayerNormalization: one `moec.Norm` step each;
and every output matches ONNX Runtime within 1e-4 relative to the largest magnitude (the RotaryEmbedding cases
also the NumPy oracle of moe.rotary's contract, tests/reference/attention.py), at batch 1 and 2 and several
sequence lengths. Bad RotaryEmbedding attributes are one error naming the node, and no artifact.

With `--device emu` the artifacts also carry GPU code for the emulated device (`--target=cpu,emu`) and run there:
every moec.Rotary / moec.Norm step must be marked `[gpu]` by `moert inspect --device emu` (their kernels in
kernels/hip/ops_gpu.h), against the same references and bound (ctest `rotary-e2e-emu`).

    check_rotary_e2e.py --moec build/bin/moec --moert build/bin/moert --lib build/lib/libmoert.so [--device emu]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HID, TOL = 32, 1e-4
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


class Graph:
    def __init__(self, rng):
        self.nodes, self.inits, self.rng = [], [], rng

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, ins, outs, domain="", **attrs):
        self.nodes.append(helper.make_node(op, ins, outs, domain=domain, name=outs[0] + "_node", **attrs))
        return outs[0]

    def weight(self, name, *shape):
        return self.const(name, (self.rng.standard_normal(shape) * 0.3).astype(np.float32))

    def save(self, path, inputs, outputs, opset=17):
        used = {i for n in self.nodes for i in n.input}  # (ONNX Runtime warns of unused initializers)
        g = helper.make_graph(self.nodes, "g", inputs, outputs, [t for t in self.inits if t.name in used])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
        onnx.save(m, path)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def i64(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.INT64, shape)


def ort_rotary(path, rng, heads, head_dim, rot, interleaved, layout, positions, attrs=None, name_heads=True):
    """x [B, S, HID] -> MatMul -> (Reshape + Transpose to [B, H, S, D] for layout 'bhsd') -> RotaryEmbedding
    (num_heads given for the 3-D layout unless `name_heads` is false)."""
    g = Graph(rng)
    width = heads * head_dim
    y = g.node("MatMul", ["x", g.weight("w", HID, width)], ["proj"])
    if layout == "bhsd":
        y = g.node("Reshape", [y, g.const("split", np.array([0, 0, heads, head_dim], np.int64))], ["heads"])
        y = g.node("Transpose", [y], ["heads_t"], perm=[0, 2, 1, 3])
    pos_len = 128  # ONNX Runtime refuses positions past the caches
    g.const("cos", np.cos(rng.uniform(0, 6, (pos_len, rot // 2))).astype(np.float32))
    g.const("sin", np.sin(rng.uniform(0, 6, (pos_len, rot // 2))).astype(np.float32))
    a = dict(interleaved=int(interleaved), rotary_embedding_dim=rot if rot != head_dim else 0)
    if name_heads:  # (ONNX Runtime wants it whenever rotary_embedding_dim is set)
        a["num_heads"] = heads
    a.update(attrs or {})
    g.node("RotaryEmbedding", [y, "pos", "cos", "sin"], ["out"], domain="com.microsoft", **a)
    pos_shape = ["B", "S"] if positions == "ids" else [1]
    out_shape = ["B", "S", width] if layout == "bsh" else ["B", heads, "S", head_dim]
    g.save(path, [f32("x", ["B", "S", HID]), i64("pos", pos_shape)], [f32("out", out_shape)])


def frequencies(g, rot):
    """The rotary frequencies as transformers computes them in the graph: position ids [B, S] (input 'pos') times
    inv_freq (R / 2 values) -> 'freqs' [B, S, R / 2]; returns (inv_freq, the freqs' name)."""
    inv = (1.0 / (10000 ** (np.arange(0, rot, 2) / rot))).astype(np.float32)
    g.const("inv_freq", inv.reshape(1, 1, -1))
    p = g.node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT)
    p = g.node("Unsqueeze", [p, g.const("ax_last", np.array([-1], np.int64))], ["pos_u"])
    return inv, g.node("Mul", [p, "inv_freq"], ["freqs"])


def exported_rotary(path, rng, heads, head_dim, rot, q_norm):
    """transformers' attention-side rotary as the dynamo exporter writes it: cos/sin from position ids and
    inv_freq, the projection viewed [B, S, H, D], q_norm (RMSNorm over D), Transpose, rotate_half; a partial
    rotary (rot < head_dim) rotates q[..., :rot] and concatenates q[..., rot:]."""
    g = Graph(rng)
    inv, fr = frequencies(g, rot)
    emb = g.node("Concat", [fr, fr], ["emb"], axis=-1)
    g.node("Cos", [emb], ["cos"])
    g.node("Sin", [emb], ["sin"])
    one = g.const("ax1", np.array([1], np.int64))
    cu = g.node("Unsqueeze", ["cos", one], ["cos_u"])
    su = g.node("Unsqueeze", ["sin", one], ["sin_u"])
    y = g.node("MatMul", ["x", g.weight("w", HID, heads * head_dim)], ["proj"])
    y = g.node("Reshape", [y, g.const("split", np.array([0, 0, heads, head_dim], np.int64))], ["view"])
    if q_norm:
        sq = g.node("Pow", [y, g.const("two", np.array(2.0, np.float32))], ["sq"])
        mean = g.node("ReduceMean", [sq], ["mean"], axes=[-1])
        eps = g.node("Add", [mean, g.const("eps", np.array(1e-6, np.float32))], ["eps_add"])
        rs = g.node("Reciprocal", [g.node("Sqrt", [eps], ["rt"])], ["rsqrt"])
        y = g.node("Mul", [y, rs], ["normed"])
        y = g.node("Mul", [g.const("qn_w", (1 + 0.2 * rng.standard_normal(head_dim)).astype(np.float32)), y], ["qn"])
    q = g.node("Transpose", [y], ["q"], perm=[0, 2, 1, 3])
    ax = g.const("ax3", np.array([3], np.int64))
    step = g.const("step1", np.array([1], np.int64))
    big = g.const("big", np.array([2 ** 63 - 1], np.int64))
    zero = g.const("zero", np.array([0], np.int64))

    def sl(x, b, e, name):
        return g.node("Slice", [x, b, e, ax, step], [name])

    xr = q
    if rot < head_dim:
        xr = sl(q, zero, g.const("rot", np.array([rot], np.int64)), "q_rot")
        qp = sl(q, "rot", big, "q_pass")
    half = g.const("half", np.array([rot // 2], np.int64))
    lo, hi = sl(xr, zero, half, "lo"), sl(xr, half, big, "hi")
    rh = g.node("Concat", [g.node("Neg", [hi], ["neg"]), lo], ["rot_half"], axis=-1)
    out = g.node("Add", [g.node("Mul", [xr, cu], ["xc"]), g.node("Mul", [rh, su], ["rs"])], ["rotated"])
    if rot < head_dim:
        out = g.node("Concat", [out, qp], ["rotated_all"], axis=-1)
    g.node("Identity", [out], ["out"])
    g.save(path, [f32("x", ["B", "S", HID]), i64("pos", ["B", "S"])], [f32("out", ["B", heads, "S", head_dim])],
           opset=13)


def exported_pairs_rotary(path, rng, heads, head_dim, rot, form):
    """Rotary forms other exporters write, on the transposed projection [B, H, S, D] (cos / sin from position
    ids, R / 2 frequencies):
      - 'split' (GPT-OSS): a, b = Split(x) into halves; Concat(a * cos - b * sin, b * cos + a * sin), cos / sin of
        R / 2 values per position;
      - 'slices': the same with a, b = Slices [0, h), [h, R);
      - 'even_odd' (DeepSeek's MLA): a, b = x[..., 0::2], x[..., 1::2] (pairs interleaved in x, written as halves);
      - 'interleaved' (Ernie-4.5): x * cos + Reshape(stack(-x[..., 1::2], x[..., 0::2])) * sin with cos / sin the
        first half of the duplicated table, repeat-interleaved.
    With rot < head_dim the rotation reads q[..., :rot] and the untouched q[..., rot:] is concatenated after it."""
    g = Graph(rng)
    inv, fr = frequencies(g, rot)
    one = g.const("ax1", np.array([1], np.int64))
    ax = g.const("ax3", np.array([3], np.int64))
    step1, step2 = g.const("step1", np.array([1], np.int64)), g.const("step2", np.array([2], np.int64))
    big = g.const("big", np.array([2 ** 63 - 1], np.int64))
    zero = g.const("zero", np.array([0], np.int64))
    half = g.const("half", np.array([rot // 2], np.int64))

    def sl(x, b, e, name, step=step1):
        return g.node("Slice", [x, b, e, ax, step], [name])

    if form == "interleaved":
        emb = g.node("Concat", [fr, fr], ["emb"], axis=-1)
        tables = []
        for fn in ("Cos", "Sin"):
            t = g.node("Unsqueeze", [g.node(fn, [emb], [fn.lower()]), one], [fn.lower() + "_u"])
            t = g.node("Unsqueeze", [sl(t, zero, half, fn.lower() + "_half"), "ax_last"], [fn.lower() + "_5d"])
            t = g.node("Expand", [t, g.const(fn + "_rep", np.array([1, 1, 1, 1, 2], np.int64))], [fn.lower() + "_x"])
            tables.append(g.node("Reshape", [t, g.const(fn + "_ri", np.array([0, 1, -1, rot], np.int64))],
                                 [fn.lower() + "_ri"]))
        cu, su = tables
    else:
        cu = g.node("Unsqueeze", [g.node("Cos", [fr], ["cos"]), one], ["cos_u"])
        su = g.node("Unsqueeze", [g.node("Sin", [fr], ["sin"]), one], ["sin_u"])
    y = g.node("MatMul", ["x", g.weight("w", HID, heads * head_dim)], ["proj"])
    y = g.node("Reshape", [y, g.const("split", np.array([0, 0, heads, head_dim], np.int64))], ["view"])
    q = g.node("Transpose", [y], ["q"], perm=[0, 2, 1, 3])
    xr = q
    if rot < head_dim:
        xr = sl(q, zero, g.const("rot", np.array([rot], np.int64)), "q_rot")
        qp = sl(q, "rot", big, "q_pass")
    if form == "interleaved":
        ev, od = sl(xr, zero, big, "even", step2), sl(xr, one, big, "odd", step2)
        last = g.const("ax_new", np.array([-1], np.int64))
        st = g.node("Concat", [g.node("Unsqueeze", [g.node("Neg", [od], ["neg"]), last], ["neg_u"]),
                               g.node("Unsqueeze", [ev, last], ["even_u"])], ["stack"], axis=-1)
        rh = g.node("Reshape", [st, g.const("merge", np.array([0, 0, -1, rot], np.int64))], ["rot_half"])
        out = g.node("Add", [g.node("Mul", [xr, cu], ["xc"]), g.node("Mul", [rh, su], ["rs"])], ["rotated"])
    else:
        if form == "split":
            a, b = "a", "b"
            g.node("Split", [xr, g.const("halves", np.array([rot // 2, rot // 2], np.int64))], [a, b], axis=3)
        elif form == "slices":
            a, b = sl(xr, zero, half, "a"), sl(xr, half, big, "b")
        else:
            a, b = sl(xr, zero, big, "a", step2), sl(xr, one, big, "b", step2)
        first = g.node("Sub", [g.node("Mul", [a, cu], ["ac"]), g.node("Mul", [b, su], ["bs"])], ["first"])
        second = g.node("Add", [g.node("Mul", [su, a], ["as"]), g.node("Mul", [b, cu], ["bc"])], ["second"])
        out = g.node("Concat", [first, second], ["rotated"], axis=-1)
    if rot < head_dim:
        out = g.node("Concat", [out, qp], ["rotated_all"], axis=-1)
    g.node("Identity", [out], ["out"])
    g.save(path, [f32("x", ["B", "S", HID]), i64("pos", ["B", "S"])], [f32("out", ["B", heads, "S", head_dim])],
           opset=13)
    return inv


def norms(path, rng):
    g = Graph(rng)
    y = g.node("MatMul", ["x", g.weight("w", HID, HID)], ["proj"])
    sq = g.node("Pow", [y, g.const("two", np.array(2.0, np.float32))], ["sq"])
    mean = g.node("ReduceMean", [sq], ["mean"], axes=[-1])
    rs = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [mean, g.const("eps", np.array(1e-5, np.float32))],
                                                      ["eps_add"])], ["rt"])], ["rsqrt"])
    rms = g.node("Mul", [g.const("w_rms", (1 + 0.2 * rng.standard_normal(HID)).astype(np.float32)),
                         g.node("Mul", [y, rs], ["normed"])], ["rms"])
    g.node("LayerNormalization", [rms, g.const("ln_s", (1 + 0.2 * rng.standard_normal(HID)).astype(np.float32)),
                                  g.const("ln_b", (0.1 * rng.standard_normal(HID)).astype(np.float32))], ["out"],
           axis=-1, epsilon=1e-5)
    g.save(path, [f32("x", ["B", "S", HID])], [f32("out", ["B", "S", HID])])


def steps_of(text, op):
    return len(re.findall(rf"^\s*op {re.escape(op)} ", text, re.M))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    ap.add_argument("--cpu", default="x86-64-v3")
    ap.add_argument("--device", default="cpu", choices=["cpu", "emu"],
                    help="emu: GPU code for the emulated device too, and the models run there")
    args = ap.parse_args()
    targets = ["--target=cpu,emu"] if args.device == "emu" else []
    import onnxruntime as ort
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "runtime", "python"))
    import moert
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
    from attention import rotary as reference_rotary  # moe.rotary's contract in NumPy
    rt = moert.Runtime(args.lib)
    rng = np.random.default_rng(5)

    def compile_model(path, art):
        return subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--quiet", *targets],
                              capture_output=True, text=True)

    def compare(what, path, art, feeds_of, expect, oracle=None):
        c = compile_model(path, art)
        if c.returncode != 0:
            check(what, False, "moec compile failed: " + c.stderr.strip())
            return
        text = subprocess.run([args.moert, "inspect", art, "--device", args.device], capture_output=True,
                              text=True).stdout
        counts = {op: steps_of(text, op) for op in expect}
        check(f"{what}: steps", counts == expect, f"{counts} (want {expect})")
        if args.device != "cpu":
            fused = [ln.strip() for ln in text.splitlines() if re.match(r"\s*op moec\.(Rotary|Norm) ", ln)]
            check(f"{what}: on the device", bool(fused) and all(ln.endswith("[gpu]") for ln in fused),
                  "; ".join(fused) or "no moec.Rotary / moec.Norm step")
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        model = rt.load(art, threads=2, device=args.device)
        worst, worst_oracle = 0.0, 0.0
        for batch, seq in ((1, 1), (1, 7), (2, 5), (2, 70)):
            feeds = feeds_of(batch, seq)
            want = sess.run(None, feeds)[0]
            got = model.run(feeds)["out"]
            if got.shape != want.shape:
                worst = float("inf")
                break
            worst = max(worst, float(np.abs(got - want).max() / np.abs(want).max()))
            if oracle:
                ref = oracle(feeds)
                worst_oracle = max(worst_oracle, float(np.abs(got - ref).max() / np.abs(ref).max()))
        model.close()
        detail = f"max rel error {worst:.2e}" + (f" ({worst_oracle:.2e} vs the oracle)" if oracle else "")
        check(f"{what}: vs ONNX Runtime", max(worst, worst_oracle) <= TOL, detail + " (batch 1 and 2, S = 1 .. 70)")

    def x_of(batch, seq):
        return rng.standard_normal((batch, seq, HID)).astype(np.float32)

    def ids_feeds(batch, seq):
        start = rng.integers(0, 10, (batch, 1))
        return {"x": x_of(batch, seq), "pos": (start + np.arange(seq)[None]).astype(np.int64)}

    def offset_feeds(batch, seq):
        return {"x": x_of(batch, seq), "pos": np.array([rng.integers(0, 10)], np.int64)}

    with tempfile.TemporaryDirectory() as tmp:
        path, art = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.moex")
        rotary = {"moec.Rotary": 1, "Neg": 0, "Concat": 0}
        ort_cases = [("RotaryEmbedding [B, S, H*D], half-split", 4, 8, 8, False, "bsh", "ids", True),
                     ("RotaryEmbedding [B, S, H*D], interleaved over 4 of 8 dims", 4, 8, 4, True, "bsh", "ids", True),
                     ("RotaryEmbedding [B, H, S, D], half-split over 8 of 16 dims", 2, 16, 8, False, "bhsd", "ids",
                      True),
                     ("RotaryEmbedding, one position offset", 4, 8, 8, False, "bsh", "offset", True),
                     # num_heads left out: the head size is 2 * cos_cache.dim(1)
                     ("RotaryEmbedding without num_heads", 4, 8, 8, True, "bsh", "ids", False)]
        for what, heads, d, rot, inter, layout, positions, named in ort_cases:
            ort_rotary(path, rng, heads, d, rot, inter, layout, positions, name_heads=named)
            init = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}

            def oracle(feeds, heads=heads, d=d, rot=rot, inter=inter, layout=layout, init=init):
                b, s = feeds["x"].shape[:2]
                pos = feeds["pos"] if feeds["pos"].ndim == 2 else feeds["pos"][0] + np.arange(s)[None]
                y = (feeds["x"].astype(np.float64) @ init["w"]).reshape(b, s, heads, d)
                out = reference_rotary(y if layout == "bsh" else y.transpose(0, 2, 1, 3), init["cos"][pos],
                                       init["sin"][pos], rot, interleaved=inter, seq_axis=1 if layout == "bsh" else 2)
                return out.reshape(b, s, heads * d) if layout == "bsh" else out

            compare(what, path, art, ids_feeds if positions == "ids" else offset_feeds, rotary, oracle)

        for q_norm, rot, d in ((True, 16, 16), (False, 8, 16)):
            what = ("exported rotary with q_norm" if q_norm else "exported partial rotary (8 of 16 dims)")
            exported_rotary(path, rng, 4, d, rot, q_norm)
            compare(what, path, art, ids_feeds,
                    {"moec.Rotary": 1, "Neg": 0, "Transpose": 0, "ReduceMean": 0, "Slice": 0})
            report = subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--report"],
                                    capture_output=True, text=True).stderr
            want = (f"rotary embeddings (one step each): 1 (the first: {rot} of {d} dims, half-split, transpose"
                    + (", rms_norm)" if q_norm else ")"))
            line = next((ln.strip() for ln in report.splitlines() if "rotary embeddings" in ln), "no rotary line")
            check(f"{what}: moec compile --report", line == want, line)

        # Other exporters' pair layouts: one moec.Rotary step each, against ONNX Runtime and the oracle.
        pair_cases = [("GPT-OSS halves by Split", "split", 16, 16, False, 0),
                      ("halves by Slices over 8 of 16 dims", "slices", 16, 8, False, 0),
                      ("DeepSeek MLA even / odd dims written as halves", "even_odd", 16, 16, True, 0),
                      ("DeepSeek MLA even / odd over 8 of 16 dims", "even_odd", 16, 8, True, 0),
                      # The tables' half Slices stay (the op reads the half tables; their repeat goes).
                      ("Ernie-4.5 interleaved pairs", "interleaved", 16, 16, True, 2)]
        for what, form, d, rot, inter, table_slices in pair_cases:
            inv = exported_pairs_rotary(path, rng, 4, d, rot, form)
            init = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}

            def oracle(feeds, d=d, rot=rot, inter=inter, form=form, init=init, inv=inv):
                b, s = feeds["x"].shape[:2]
                y = (feeds["x"].astype(np.float64) @ init["w"]).reshape(b, s, 4, d).transpose(0, 2, 1, 3)
                fr = feeds["pos"].astype(np.float64)[..., None] * inv.astype(np.float64)
                return reference_rotary(y, np.cos(fr), np.sin(fr), rot, interleaved=inter,
                                        deinterleave=form == "even_odd")

            compare(f"exported rotary, {what}", path, art, ids_feeds,
                    {"moec.Rotary": 1, "Neg": 0, "Sub": 0, "Split": 0, "Transpose": 0, "Expand": 0,
                     "Slice": table_slices},
                    oracle)

        norms(path, rng)
        compare("RMSNorm and LayerNormalization", path, art, lambda b, s: {"x": x_of(b, s)},
                {"moec.Norm": 2, "ReduceMean": 0, "LayerNormalization": 0})

        for attrs, needle in (({"is_packed_batching": 1}, "is_packed_batching"), ({"scale": 2.0}, "scale")):
            ort_rotary(path, rng, 4, 8, 8, False, "bsh", "ids", attrs=attrs)
            bad = os.path.join(tmp, "bad.moex")
            c = compile_model(path, bad)
            lines = c.stderr.strip().splitlines()
            check(f"bad input: RotaryEmbedding {needle}", c.returncode != 0 and not os.path.exists(bad) and
                  any(needle in ln and "RotaryEmbedding" in ln for ln in lines), lines[-1] if lines else "(no error)")
    if failures:
        print(f"{len(failures)} rotary/norm check(s) failed")
        return 1
    print("all rotary/norm checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

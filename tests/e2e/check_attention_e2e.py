#!/usr/bin/env python3
"""Attention dispatches end to end: ONNX attention graphs -> `moec compile` -> `moert run`, against ONNX Runtime
and the NumPy oracle (tests/reference/attention.py).

Each model is the chain PyTorch's exporter writes for transformers' SDPA / eager attention (built here with
onnx.helper): K and V repeated per query group (Unsqueeze -> Expand -> Reshape over Shape slices), K^T as a
Transpose or as the exporter's Reshape -> Transpose -> Reshape, the scale as Mul on Q and K^T or a Div of the
scores, an additive mask, and the Where(IsNaN) guard after the softmax. `moert inspect` must show one attention
dispatch and no Softmax / MatMul op step. The shapes cover every path of kernels/cpu/attention.h: decode with
the keys split into chunks and merged, prefill over several key blocks with causal and padding blocks skipped,
fewer than 4 rows (plain dot products), head dims that are not a multiple of the vector width, Dv != Dk, masks
broadcast along batch, heads or rows, rows masked entirely (-inf: 0 with the guard, NaN without; the finite
minimum: the uniform softmax), batch > 1, and no mask at all; and a static-shape export (the shape vectors
constants) with SDPA's bool attn_mask made additive by Where.

Tolerance: max |moec - reference| / max |reference| <= 1e-4 (NaN where the reference has NaN).

    check_attention_e2e.py --moec build/bin/moec --moert build/bin/moert [--cpu x86-64-v3]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from attention import attention  # noqa: E402

TOLERANCE = 1e-4
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def rel_error(got, want):
    """max |got - want| / max |want|, NaN positions required to agree."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape or not np.array_equal(np.isnan(got), np.isnan(want)):
        return np.inf
    fin = ~np.isnan(want)
    if not fin.any():
        return 0.0
    return float(np.max(np.abs(got[fin] - want[fin])) / max(np.max(np.abs(want[fin])), 1e-30))


def sdpa_model(hq, hkv, dk, dv, mask_dims, scale_form, kt_form, nan_guard, sinks=None, softcap=0.0, static=None,
               bool_mask=False):
    """q [B, hq, S, dk], k [B, hkv, T, dk], v [B, hkv, T, dv] (+ mask of `mask_dims`, symbols or 1) -> [B, hq, S, dv].
    `static` (B, S, T): every shape fixed, as an export with static shapes writes it: the shape vectors of the
    GQA repeat and of K^T's Reshape-Transpose-Reshape folded into constants. `bool_mask`: the mask a bool input
    (True: attend) made additive by Where(mask, 0, the f32 minimum), as the exporter writes SDPA's bool
    attn_mask."""
    g = hq // hkv
    nodes, inits = [], []

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    i0, i1, i2 = const("i0", [0]), const("i1", [1]), const("i2", [2])
    imax, im1, im2 = const("imax", [2**63 - 1]), const("im1", [-1]), const("im2", [-2])

    def repeat(x, d):
        if g == 1:
            return x
        if static:
            b, _, t = static
            e = node("Expand", [node("Unsqueeze", [x, i2], x + "_u"), const(x + "_target", [b, hkv, g, t, d])],
                     x + "_e")
            return node("Reshape", [e, const(x + "_rshape", [b, hq, t, d])], x + "_rep")
        shape = node("Shape", [x], x + "_shape")
        bh = node("Slice", [shape, i0, i2, i0, i1], x + "_bh")
        td = node("Slice", [shape, i2, imax, i0, i1], x + "_td")
        target = node("Concat", [bh, const(x + "_g", [g]), td], x + "_target", axis=0)
        u = node("Unsqueeze", [x, i2], x + "_u")
        e = node("Expand", [u, target], x + "_e")
        return node("Reshape", [e, const(x + "_rshape", [0, hq, -1, d])], x + "_rep")

    k, v = repeat("k", dk), repeat("v", dv)
    if kt_form == "transpose":
        kt = node("Transpose", [k], "kt", perm=[0, 1, 3, 2])
    elif static:
        b, _, t = static
        k3t = node("Transpose", [node("Reshape", [k, const("s3", [-1, t, dk])], "k3")], "k3t", perm=[0, 2, 1])
        kt = node("Reshape", [k3t, const("s4", [b, hq, dk, t])], "kt")
    else:  # the exporter's Reshape -> Transpose -> Reshape over Shape slices
        s = node("Shape", [k], "ks")
        d = node("Slice", [s, im1, imax, i0, i1], "kd")
        t = node("Slice", [s, im2, im1, i0, i1], "kt_len")
        bh = node("Slice", [s, const("imin", [-2**63]), im2, i0, i1], "kbh")
        k3 = node("Reshape", [k, node("Concat", [im1, t, d], "s3", axis=0)], "k3")
        k3t = node("Transpose", [k3], "k3t", perm=[0, 2, 1])
        kt = node("Reshape", [k3t, node("Concat", [bh, d, t], "s4", axis=0)], "kt")
    if scale_form == "mul":
        c = const("c", dk ** -0.25, np.float32)
        sc = node("MatMul", [node("Mul", ["q", c], "qs"), node("Mul", [kt, c], "kts")], "scores")
    else:
        sc = node("Div", [node("MatMul", ["q", kt], "qk"), const("c", np.sqrt(dk), np.float32)], "scores")
    if softcap:  # eager attention's logit softcapping: c * tanh(scores / c), before the mask
        sc = node("Mul", [node("Tanh", [node("Div", [sc, const("cap", softcap, np.float32)], "sc_div")], "sc_tanh"),
                          "cap"], "capped")
    if mask_dims is not None:
        m = "mask"
        if bool_mask:
            m = node("Where", ["mask", const("attend", 0.0, np.float32),
                               const("masked_out", np.finfo(np.float32).min, np.float32)], "mask_f")
        sc = node("Add", [sc, m], "masked")
    if sinks is not None:  # GPT-OSS: Concat the sinks as a last column, less the row max, softmax, drop it
        qs = node("Shape", ["q"], "q_shape")
        target = node("Concat", [node("Slice", [qs, i0, i1, i0, i1], "q_b"), const("hq", [hq]),
                                 node("Slice", [qs, i2, const("i3", [3]), i0, i1], "q_s"), i1], "sink_shape", axis=0)
        sk = node("Reshape", [const("sinks", sinks, np.float32), const("sink_4d", [1, hq, 1, 1])], "sinks4")
        sc = node("Concat", [sc, node("Expand", [sk, target], "sinks_e")], "combined", axis=-1)
        sc = node("Sub", [sc, node("ReduceMax", [sc], "row_max", axes=[-1], keepdims=1)], "shifted")
    p = node("Softmax", [sc], "p", axis=-1)
    if nan_guard:
        p = node("Where", [node("IsNaN", [p], "nan"), const("zero", 0.0, np.float32), p], "p0")
    if sinks is not None:
        p = node("Slice", [p, i0, im1, im1, i1], "p_keys")
    node("MatMul", [p, v], "out")
    f = TensorProto.FLOAT
    b, s, t = static or ("B", "S", "T")
    inputs = [helper.make_tensor_value_info("q", f, [b, hq, s, dk]),
              helper.make_tensor_value_info("k", f, [b, hkv, t, dk]),
              helper.make_tensor_value_info("v", f, [b, hkv, t, dv])]
    if mask_dims is not None:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL if bool_mask else f, mask_dims))
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", f, [b, hq, s, dv])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def causal_mask(b, s, t, pad, minimum):
    """[b, 1, s, t]: position i of the new tokens sees keys up to t - s + i; batch row j's first pad[j] keys are
    padding."""
    m = np.zeros((b, 1, s, t), np.float32)
    for i in range(s):
        m[:, 0, i, t - s + i + 1:] = minimum
    for j, n in enumerate(pad):
        m[j, 0, :, :n] = minimum
    return m


CASES = [
    # name, (hq, hkv, dk, dv), (B, S, T), mask, scale form, K^T form, NaN guard (+ "sinks": GPT-OSS's chain; "softcap")
    ("decode GQA 4:1, keys split in chunks", (8, 2, 64, 64), (1, 1, 300), "row", "mul", "reshape", True),
    ("prefill causal + padding, 3 key blocks", (4, 4, 32, 32), (2, 130, 130), "causal", "mul", "reshape", True),
    ("prefill with past, GQA 3:1, odd head dims", (6, 2, 12, 20), (1, 7, 70), "heads", "div", "transpose", True),
    ("2 rows: dot products, batch 3, no mask", (2, 2, 16, 16), (3, 1, 129), None, "div", "transpose", False),
    ("rows all -inf: NaN without the guard", (4, 2, 8, 4), (1, 5, 9), "inf rows", "mul", "reshape", False),
    ("rows all -inf: 0 with the guard, finite minimum: uniform", (4, 2, 8, 4), (2, 5, 9), "inf rows", "mul",
     "reshape", True),
    ("decode, a sequence all padding (finite minimum): uniform", (4, 2, 16, 16), (2, 1, 200), "dead", "mul",
     "reshape", True),
    ("decode batch 2, 16 heads of 128 over 2 kv heads", (16, 2, 128, 128), (2, 1, 1000), "row", "mul", "reshape",
     True),
    ("sinks: decode, keys split in chunks", (8, 2, 64, 64), (1, 1, 300), "row", "mul", "transpose", False, "sinks"),
    ("sinks: prefill causal + padding", (4, 2, 32, 32), (2, 70, 70), "causal", "mul", "transpose", False, "sinks"),
    ("sinks: rows all -inf give 0", (4, 2, 8, 4), (1, 5, 9), "inf rows", "mul", "transpose", False, "sinks"),
    ("softcap 0.5 (Div -> Tanh -> Mul): prefill causal", (4, 2, 32, 32), (2, 70, 70), "causal", "div", "transpose",
     True, "softcap"),
    ("softcap 0.5: decode, keys split in chunks", (8, 2, 64, 64), (1, 1, 300), "row", "mul", "reshape", True,
     "softcap"),
    # A static-shape export (constant shape vectors) with SDPA's bool attn_mask (Where(mask, 0, min) + Add).
    ("static shapes, bool mask: prefill causal + padding, GQA 2:1", (4, 2, 32, 32), (2, 20, 20), "causal", "mul",
     "reshape", True, "static", "bool"),
    ("static shapes: decode GQA 4:1, keys split in chunks", (8, 2, 64, 64), (1, 1, 300), "row", "mul", "reshape",
     True, "static"),
]


def make_mask(kind, b, hq, s, t, rng):
    minimum = np.float32(np.finfo(np.float32).min)
    if kind is None:
        return None, None
    if kind == "row":  # [B, 1, 1, T]: a padded batch's first keys masked
        m = np.zeros((b, 1, 1, t), np.float32)
        m[-1, 0, 0, :t // 5] = minimum
        return m, [b, 1, 1, "T"]
    if kind == "dead":  # [B, 1, 1, T]: the last sequence is padding only (the finite minimum everywhere)
        m = np.zeros((b, 1, 1, t), np.float32)
        m[-1] = minimum
        return m, ["B", 1, 1, "T"]
    if kind == "causal":
        return causal_mask(b, s, t, [0] + [17] * (b - 1), minimum), ["B", 1, "S", "T"]
    if kind == "heads":  # [1, Hq, S, T]: per-head random masking of keys, causal over the new tokens
        m = np.where(rng.random((1, hq, s, t)) < 0.3, minimum, 0).astype(np.float32)
        m = np.minimum(m, causal_mask(1, s, t, [0], minimum))
        return m, [1, hq, "S", "T"]
    if kind == "inf rows":  # [B, Hq, S, T]: row 1 all -inf, row 3 all the finite minimum
        m = np.zeros((b, hq, s, t), np.float32)
        m[:, :, 1, :] = -np.inf
        m[:, :, 3, :] = minimum
        m[:, 1, 0, 2:] = -np.inf
        return m, ["B", hq, "S", "T"]
    raise ValueError(kind)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--cpu", default="x86-64-v3")
    args = ap.parse_args()
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (hq, hkv, dk, dv), (b, s, t), mk, scale_form, kt_form, guard, *extra) in enumerate(CASES):
            mask, mask_dims = make_mask(mk, b, hq, s, t, rng)
            sinks = rng.standard_normal(hq).astype(np.float32) * 2 if "sinks" in extra else None
            cap = 0.5 if "softcap" in extra else 0.0
            static = (b, s, t) if "static" in extra else None
            bool_mask = "bool" in extra
            if static and mask_dims is not None:
                mask_dims = [x if isinstance(x, int) else {"B": b, "S": s, "T": t}[x] for x in mask_dims]
            model = sdpa_model(hq, hkv, dk, dv, mask_dims, scale_form, kt_form, guard, sinks, cap, static, bool_mask)
            path, art = os.path.join(tmp, f"a{i}.onnx"), os.path.join(tmp, f"a{i}.moex")
            onnx.save(model, path)
            c = subprocess.run([args.moec, "compile", path, "-o", art, f"--cpu={args.cpu}", "--quiet"],
                               capture_output=True, text=True)
            if c.returncode != 0:
                check(name, False, "moec compile failed: " + c.stderr.strip())
                continue
            text = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True, check=True).stdout
            dispatches = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("attention ")]
            leftover = [ln.strip() for ln in text.splitlines()
                        if ln.strip().startswith(("op Softmax", "op MatMul", "op ReduceMax", "op Expand"))]
            check(name + ": one attention dispatch", len(dispatches) == 1 and not leftover,
                  "; ".join(dispatches + leftover) or "no attention dispatch")
            feeds = {"q": rng.standard_normal((b, hq, s, dk)).astype(np.float32),
                     "k": rng.standard_normal((b, hkv, t, dk)).astype(np.float32),
                     "v": rng.standard_normal((b, hkv, t, dv)).astype(np.float32)}
            if mask is not None:
                feeds["mask"] = mask == 0 if bool_mask else mask  # bool: True where a key is attended
            cmd = [args.moert, "run", art, "--output-dir", os.path.join(tmp, f"out{i}"), "--threads", "2"]
            for k, val in feeds.items():
                np.save(os.path.join(tmp, f"{i}_{k}.npy"), val)
                cmd += ["--input", f"{k}={os.path.join(tmp, f'{i}_{k}.npy')}"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                check(name, False, "moert run failed: " + r.stderr.strip())
                continue
            got = np.load(os.path.join(tmp, f"out{i}", "out.npy"))
            want = attention(feeds["q"], feeds["k"], feeds["v"], mask, 1.0 / np.sqrt(dk), nan_to_zero=guard,
                             sinks=sinks, softcap=cap)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            ref = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
            e_ref, e_ort, e_oracle = rel_error(got, want), rel_error(got, ref), rel_error(ref, want)
            check(name, max(e_ref, e_ort) <= TOLERANCE,
                  f"[B, Hq, S, T] = [{b}, {hq}, {s}, {t}] Hkv {hkv} Dk {dk} Dv {dv}: max rel error {e_ref:.2e} vs the "
                  f"oracle, {e_ort:.2e} vs ONNX Runtime (ORT vs oracle {e_oracle:.2e}), "
                  f"{int(np.isnan(got).sum())} NaN")
    if failures:
        print(f"{len(failures)} attention check(s) failed")
        return 1
    print("all attention checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

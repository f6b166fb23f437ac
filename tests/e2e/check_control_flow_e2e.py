#!/usr/bin/env python3
"""ONNX control flow (If, Loop, Scan) through moec and moert, against ONNX Runtime on the same file.

Models built with onnx.helper, each run with inputs that take every path:
  - If whose branches read values of the enclosing graph, one branch holding a MatMul with a constant weight
    (a linear dispatch inside a branch), the other yielding a view of an intermediate of the enclosing graph
    whose buffer the graph reuses after the If (the output must not alias it); cond true and false;
  - Loop with a trip count and a condition that stops it early, a carried value, a scan output, an outer
    value read in the body; trip counts 0, 3 and 6;
  - Scan with two states, a scan input along axis 1 read in reverse, scan outputs along axis 1 and reversed;
  - Scan-8 (opset 8: a batch dim first, scanned per batch entry), one of two scan inputs reversed;
  - a Loop whose body holds an If (nested blocks);
  - an If on a constant condition (folded at compile time: no If step in the artifact).
Every output matches ONNX Runtime within 1e-5 relative to the largest magnitude (exact shapes). A condition
of two elements at run time is one error naming the If.

    check_control_flow_e2e.py --moec build/bin/moec --moert build/bin/moert --lib build/lib/libmoert.so
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
sys.path.insert(0, os.path.join(HERE, "..", "..", "runtime", "python"))
import moert  # noqa: E402

D, TOL = 16, 1e-5
failures = []
F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def if_model(rng):
    w = numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32), "w")
    then = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Relu", ["mm"], ["then_y"]),
         helper.make_node("Mul", ["x", "x"], ["then_z"])],
        "then", [], [vi("then_y", F, None), vi("then_z", F, None)])
    other = helper.make_graph(
        [const("flat", np.array([-1, D], np.int64)), helper.make_node("Reshape", ["t", "flat"], ["else_y"]),
         helper.make_node("Identity", ["t"], ["else_z"])],
        "else", [], [vi("else_y", F, None), vi("else_z", F, None)])
    nodes = [helper.make_node("Add", ["x", "x"], ["t"]),
             helper.make_node("If", ["cond"], ["y", "z"], then_branch=then, else_branch=other),
             helper.make_node("Sigmoid", ["x"], ["u"]), helper.make_node("Neg", ["u"], ["v"]),
             helper.make_node("Add", ["y", "v"], ["out"]), helper.make_node("Sub", ["z", "v"], ["out2"])]
    g = helper.make_graph(nodes, "g", [vi("x", F, ["S", D]), vi("cond", B, [])],
                          [vi("out", F, ["S", D]), vi("out2", F, ["S", D])], [w])
    feeds = [{"x": rng.standard_normal((s, D)).astype(np.float32), "cond": np.array(c)}
             for s, c in [(3, True), (3, False), (5, True), (5, False)]]
    return g, feeds


def loop_model(rng):
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["x", "fi"], ["xi"]),
         helper.make_node("Add", ["acc", "xi"], ["acc_next"]),
         helper.make_node("ReduceSum", ["acc_next"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["go"]),
         helper.make_node("Identity", ["acc_next"], ["scan"])],
        "body", [vi("i", I64, []), vi("c", B, []), vi("acc", F, [D])],
        [vi("go", B, []), vi("acc_next", F, [D]), vi("scan", F, [D])])
    nodes = [helper.make_node("Loop", ["trip", "", "acc0"], ["acc_final", "scans"], body=body)]
    g = helper.make_graph(nodes, "g", [vi("trip", I64, []), vi("x", F, [D]), vi("acc0", F, [D]),
                                       vi("limit", F, [])],
                          [vi("acc_final", F, [D]), vi("scans", F, ["N", D])], [])
    x = np.abs(rng.standard_normal(D)).astype(np.float32)
    feeds = [{"trip": np.array(t, np.int64), "x": x, "acc0": rng.standard_normal(D).astype(np.float32),
              "limit": np.array(lim, np.float32)} for t, lim in [(3, 1e9), (6, 1e9), (6, float(x.sum() * 2.5)),
                                                                  (1, -1e9)]]
    return g, feeds


def scan_model(rng):
    body = helper.make_graph(
        [helper.make_node("Add", ["s1", "xs"], ["s1n"]), helper.make_node("Mul", ["s2", "xs"], ["s2n"]),
         helper.make_node("Sub", ["s1n", "s2n"], ["o1"]), helper.make_node("Neg", ["xs"], ["o2"])],
        "body", [vi("s1", F, [4]), vi("s2", F, [4]), vi("xs", F, [4])],
        [vi("s1n", F, [4]), vi("s2n", F, [4]), vi("o1", F, [4]), vi("o2", F, [4])])
    nodes = [helper.make_node("Scan", ["a", "b", "xs_all"], ["a_f", "b_f", "o1s", "o2s"], body=body,
                              num_scan_inputs=1, scan_input_axes=[1], scan_input_directions=[1],
                              scan_output_axes=[1, 0], scan_output_directions=[0, 1])]
    g = helper.make_graph(nodes, "g", [vi("a", F, [4]), vi("b", F, [4]), vi("xs_all", F, [4, "L"])],
                          [vi("a_f", F, [4]), vi("b_f", F, [4]), vi("o1s", F, [4, "L"]), vi("o2s", F, ["L", 4])],
                          [])
    feeds = [{"a": rng.standard_normal(4).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
              "xs_all": rng.standard_normal((4, n)).astype(np.float32)} for n in (1, 5)]
    return g, feeds


def scan8_model(rng):
    """Scan-8 (opset 8): batch dim first on states, scan inputs (scanned along dim 1) and outputs."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x1"], ["sn"]), helper.make_node("Mul", ["sn", "x2"], ["o"])],
        "body", [vi("s", F, [3]), vi("x1", F, [3]), vi("x2", F, [3])], [vi("sn", F, [3]), vi("o", F, [3])])
    nodes = [helper.make_node("Scan", ["", "s0", "xa", "xb"], ["s_f", "os"], body=body, num_scan_inputs=2,
                              directions=[0, 1])]
    g = helper.make_graph(nodes, "g", [vi("s0", F, ["B", 3]), vi("xa", F, ["B", "L", 3]), vi("xb", F, ["B", "L", 3])],
                          [vi("s_f", F, ["B", 3]), vi("os", F, ["B", "L", 3])], [])
    feeds = [{"s0": rng.standard_normal((b, 3)).astype(np.float32),
              "xa": rng.standard_normal((b, n, 3)).astype(np.float32),
              "xb": rng.standard_normal((b, n, 3)).astype(np.float32)} for b, n in ((1, 4), (3, 2))]
    return g, feeds


scan8_model.opset = 8


def nested_model(rng):
    then = helper.make_graph([helper.make_node("Add", ["acc", "x"], ["t_out"])], "then", [],
                             [vi("t_out", F, [D])])
    other = helper.make_graph([helper.make_node("Sub", ["acc", "x"], ["e_out"])], "else", [],
                              [vi("e_out", F, [D])])
    body = helper.make_graph(
        [const("two", np.array(2, np.int64)), helper.make_node("Mod", ["i", "two"], ["r"]),
         const("zero", np.array(0, np.int64)), helper.make_node("Equal", ["r", "zero"], ["even"]),
         helper.make_node("If", ["even"], ["acc_next"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["c"], ["c_out"])],
        "body", [vi("i", I64, []), vi("c", B, []), vi("acc", F, [D])], [vi("c_out", F, []), vi("acc_next", F, [D])])
    body.output[0].CopyFrom(vi("c_out", B, []))
    nodes = [helper.make_node("Loop", ["trip", "go", "acc0"], ["acc_final"], body=body)]
    g = helper.make_graph(nodes, "g", [vi("trip", I64, []), vi("go", B, []), vi("x", F, [D]), vi("acc0", F, [D])],
                          [vi("acc_final", F, [D])], [])
    feeds = [{"trip": np.array(t, np.int64), "go": np.array(True), "x": rng.standard_normal(D).astype(np.float32),
              "acc0": rng.standard_normal(D).astype(np.float32)} for t in (0, 1, 4)]
    return g, feeds


def constant_if_model(rng):
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["a"])], "then", [], [vi("a", F, ["S", D])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [], [vi("b", F, ["S", D])])
    nodes = [const("c", np.array(False)),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [vi("x", F, ["S", D])], [vi("y", F, ["S", D])], [])
    return g, [{"x": rng.standard_normal((2, D)).astype(np.float32)}]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(11)
    rt = moert.Runtime(args.lib)
    cases = [("If (outer values, a linear dispatch in a branch, a yielded view)", if_model),
             ("Loop (trip count, early stop, carried value, scan output)", loop_model),
             ("Scan (two states, reversed input along axis 1, output axes and directions)", scan_model),
             ("Scan-8 (batched, one scan input reversed; batches 1 and 3)", scan8_model),
             ("Loop holding an If", nested_model), ("If on a constant condition", constant_if_model)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in cases:
            g, feeds = build(rng)
            path, art = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.moex")
            opset = getattr(build, "opset", 17)
            onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)
            r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
            if r.returncode:
                check(name, False, "compile: " + r.stderr.strip())
                continue
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            m = rt.load(art, threads=2)
            worst, shapes = 0.0, True
            for f in feeds:
                want = sess.run(None, f)
                got = m.run(f)
                for o, wv in zip(g.output, want):
                    gv = got[o.name]
                    if gv.shape != wv.shape:
                        shapes = False
                        print(f"     {o.name}: shape {gv.shape}, ONNX Runtime {wv.shape}")
                        continue
                    if wv.size:
                        worst = max(worst, float(np.abs(gv - wv).max() / max(np.abs(wv).max(), 1e-30)))
            m.close()
            detail = f"{len(feeds)} input sets, max |moec - ORT| / max |ORT| = {worst:.2e} (bound {TOL:g})"
            if build is constant_if_model:
                steps = subprocess.run([args.moert, "inspect", art], capture_output=True, text=True).stdout
                folded = " op If " not in steps
                detail += "; If folded at compile time" if folded else "; the If was not folded"
                shapes &= folded
            check(name, shapes and worst <= TOL, detail)
        # Bad input at run time: a condition of two elements.
        then = helper.make_graph([helper.make_node("Relu", ["x"], ["a"])], "then", [], [vi("a", F, [D])])
        other = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [], [vi("b", F, [D])])
        g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="pick")],
                              "g", [vi("x", F, [D]), vi("c", B, ["N"])], [vi("y", F, [D])], [])
        path, art = os.path.join(tmp, "bad.onnx"), os.path.join(tmp, "bad.moex")
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
        r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
        msg = r.stderr.strip()
        if not r.returncode:
            m = rt.load(art, threads=1)
            try:
                m.run({"x": np.ones(D, np.float32), "c": np.array([True, False])})
                msg = "ran"
            except Exception as e:  # noqa: BLE001 - the binding raises on a run error
                msg = str(e)
            m.close()
        check("bad input: a condition of two elements", "If" in msg and "one element" in msg and "\n" not in msg,
              msg)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

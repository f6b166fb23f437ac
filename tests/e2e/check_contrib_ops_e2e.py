#!/usr/bin/env python3
"""ONNX Runtime's norm and GELU contrib ops through moec and moert, against ONNX Runtime on the same file.

Models built with onnx.helper (random weights as initializers, activations as graph inputs):
  - SimplifiedLayerNormalization (RMSNorm, in the default domain where ONNX Runtime registers it),
    SkipSimplifiedLayerNormalization
    and SkipLayerNormalization (with and without bias / beta, with the input_skip_bias_sum output), imported as
    one moe.norm each (the skip sum an Add);
  - FastGelu (tanh GELU, with and without bias), BiasGelu (erf GELU), QuickGelu (alpha 1.702 and another);
  - GatherBlockQuantized (a quantized embedding table, uint8: 4-bit codes with packed zero points, without
    them, and 8-bit; blocks of 16 and 32; 2-D indices).
Every output matches ONNX Runtime within 1e-5 relative to the largest magnitude, at two token counts. An
unsupported output (inv_std_var) or axis is one error naming the node, and no artifact.

    check_contrib_ops_e2e.py --moec build/bin/moec --lib build/lib/libmoert.so
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

D, TOL = 48, 1e-5
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def model(path, nodes, inputs, outputs, inits, ms_opset=True):
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_opset else [])
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=opsets, ir_version=8)
    onnx.save(m, path)


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cases(rng):
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    x3 = f32("x", ["B", "S", D])
    skip = f32("skip", ["B", "S", D])
    out = lambda n: f32(n, ["B", "S", D])
    ms = "com.microsoft"
    yield ("SimplifiedLayerNormalization (default domain)",
           [helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], epsilon=1e-6)],
           [x3], [out("y")], [w("g", D)])
    yield ("SimplifiedLayerNormalization axis -1",
           [helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1)],
           [x3], [out("y")], [w("g", D)])
    yield ("SkipSimplifiedLayerNormalization with bias and the sum",
           [helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g", "b"], ["y", "", "", "s"],
                             domain=ms, epsilon=1e-5)],
           [x3, skip], [out("y"), out("s")], [w("g", D), w("b", D)])
    yield ("SkipSimplifiedLayerNormalization",
           [helper.make_node("SkipSimplifiedLayerNormalization", ["x", "skip", "g"], ["y"], domain=ms)],
           [x3, skip], [out("y")], [w("g", D)])
    yield ("SkipLayerNormalization with beta, bias and the sum",
           [helper.make_node("SkipLayerNormalization", ["x", "skip", "g", "beta", "b"], ["y", "", "", "s"],
                             domain=ms, epsilon=1e-5)],
           [x3, skip], [out("y"), out("s")], [w("g", D), w("beta", D), w("b", D)])
    yield ("SkipLayerNormalization without beta",
           [helper.make_node("SkipLayerNormalization", ["x", "skip", "g"], ["y"], domain=ms)],
           [x3, skip], [out("y")], [w("g", D)])
    yield ("FastGelu with bias", [helper.make_node("FastGelu", ["x", "b"], ["y"], domain=ms)],
           [x3], [out("y")], [w("b", D)])
    yield ("FastGelu", [helper.make_node("FastGelu", ["x"], ["y"], domain=ms)], [x3], [out("y")], [])
    yield ("BiasGelu", [helper.make_node("BiasGelu", ["x", "b"], ["y"], domain=ms)], [x3], [out("y")], [w("b", D)])
    yield ("QuickGelu", [helper.make_node("QuickGelu", ["x"], ["y"], domain=ms)], [x3], [out("y")], [])
    yield ("QuickGelu alpha 1.5", [helper.make_node("QuickGelu", ["x"], ["y"], domain=ms, alpha=1.5)], [x3],
           [out("y")], [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(7)
    rt = moert.Runtime(args.lib)
    with tempfile.TemporaryDirectory() as tmp:
        for name, nodes, ins, outs, inits in cases(rng):
            path, art = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.moex")
            model(path, nodes, ins, outs, inits)
            r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
            if r.returncode:
                check(name, False, "compile: " + r.stderr.strip())
                continue
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            m = rt.load(art, threads=2)
            worst = 0.0
            for b, s in [(1, 3), (2, 17)]:
                feeds = {i.name: rng.standard_normal((b, s, D)).astype(np.float32) for i in ins}
                want = sess.run(None, feeds)
                got = m.run(feeds)
                for o, wv in zip(outs, want):
                    gv = got[o.name]
                    if gv.shape != wv.shape:
                        worst = np.inf
                        continue
                    worst = max(worst, float(np.abs(gv - wv).max() / max(np.abs(wv).max(), 1e-30)))
            m.close()
            check(name, worst <= TOL, f"max |moec - ORT| / max |ORT| = {worst:.2e} (bound {TOL:g})")
        # GatherBlockQuantized: the rows of a quantized table.
        V, C = 40, 64
        for bits, block, zp in ((4, 16, True), (4, 32, False), (8, 32, True), (2, 16, True)):
            name = f"GatherBlockQuantized bits {bits}, block {block}, {'with' if zp else 'without'} zero points"
            per = 8 // bits
            data = rng.integers(0, 256, (V, C // per)).astype(np.uint8)
            scales = (rng.random((V, C // block)) * 0.2 + 0.01).astype(np.float32)
            inits = [numpy_helper.from_array(data, "data"), numpy_helper.from_array(scales, "scales")]
            ins = ["data", "ids", "scales"]
            if zp:
                inits.append(numpy_helper.from_array(
                    rng.integers(0, 256, (V, (C // block + per - 1) // per)).astype(np.uint8), "zp"))
                ins.append("zp")
            path, art = os.path.join(tmp, "gbq.onnx"), os.path.join(tmp, "gbq.moex")
            model(path, [helper.make_node("GatherBlockQuantized", ins, ["y"], domain="com.microsoft", bits=bits,
                                          block_size=block, gather_axis=0, quantize_axis=1)],
                  [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])], [f32("y", ["B", "S", C])],
                  inits)
            r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
            if r.returncode:
                check(name, False, "compile: " + r.stderr.strip())
                continue
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            m = rt.load(art, threads=2)
            worst = 0.0
            for shape in [(1, 1), (2, 9)]:
                ids = rng.integers(0, V, shape).astype(np.int64)
                want, got = sess.run(None, {"ids": ids})[0], m.run({"ids": ids})["y"]
                worst = max(worst, np.inf if got.shape != want.shape else
                            float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)))
            m.close()
            check(name, worst <= TOL, f"max |moec - ORT| / max |ORT| = {worst:.2e} (bound {TOL:g})")
        # Bad input: an output moec does not compute, an axis other than the last.
        bad = [("inv_std_var output", helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y", "isv"]),
                [f32("y", [2, 3, D]), f32("isv", [2, 3, 1])], "the inv_std_var output is not supported"),
               ("axis 1", helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=1),
                [f32("y", [2, 3, D])], "only the last axis is supported")]
        for what, node, outs, expect in bad:
            path, art = os.path.join(tmp, "bad.onnx"), os.path.join(tmp, "bad.moex")
            model(path, [node], [f32("x", [2, 3, D])], outs,
                  [numpy_helper.from_array(np.ones(D, np.float32), "g")], ms_opset=False)
            r = subprocess.run([args.moec, "compile", path, "-o", art], capture_output=True, text=True)
            lines = r.stderr.strip().splitlines()
            ok = r.returncode != 0 and len(lines) == 1 and expect in lines[0] and "SimplifiedLayerNormalization" \
                in lines[0] and not os.path.exists(art)
            check(f"bad input: {what}", ok, lines[0] if lines else f"exit {r.returncode}")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Builds com.microsoft.MoE models with onnx.helper over a matrix of k, activations, biases, SwiGLU
layouts and odd sizes, imports each with `moec import`, and checks the moe.sparse_moe it produces: one op,
the right attributes and operand shapes. Prints one line per model and 'N passed, M failed'.

  ort_moe_matrix.py MOEC WORKDIR
"""
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(path, t, h, f, e, k, act, bias, fusion, normalize):
    rng = np.random.default_rng(0)
    gated = act == "swiglu"
    rows = 2 * f if gated and fusion == 1 else f
    inits = [numpy_helper.from_array(rng.standard_normal((e, rows, h)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((e, h, f)).astype(np.float32), "w2")]
    names = ["x", "logits", "w1", "", "w2", ""]
    if bias:
        inits += [numpy_helper.from_array(rng.standard_normal((e, rows)).astype(np.float32), "b1"),
                  numpy_helper.from_array(rng.standard_normal((e, h)).astype(np.float32), "b2")]
        names[3], names[5] = "b1", "b2"
    if gated and fusion == 0:
        inits.append(numpy_helper.from_array(rng.standard_normal((e, f, h)).astype(np.float32), "w3"))
        names += ["w3"]
        if bias:
            inits.append(numpy_helper.from_array(rng.standard_normal((e, f)).astype(np.float32), "b3"))
            names += ["b3"]
    while names[-1] == "":
        names.pop()
    attrs = dict(k=k, activation_type=act, normalize_routing_weights=normalize)
    if gated:
        attrs["swiglu_fusion"] = fusion
    node = helper.make_node("MoE", names, ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph([node], "moe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [t, h]),
                                              helper.make_tensor_value_info("logits", TensorProto.FLOAT, [t, e])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [t, h])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.microsoft", 1)], ir_version=8), path)


def main():
    moec, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    results = {"passed": 0, "failed": 0}
    cases = itertools.product([1, 2, 3], ["relu", "gelu", "silu", "identity", "swiglu"], [False, True], [0, 1])
    for i, (k, act, bias, normalize) in enumerate(cases):
        t, h, f, e = 3 + i % 4, 7 + 2 * (i % 5), 5 + i % 3, 4 + i % 3  # odd, varying sizes
        fusion = i % 2 if act == "swiglu" else 0
        path = os.path.join(work, f"moe_{i}.onnx")
        build(path, t, h, f, e, k, act, bias, fusion, normalize)
        out = subprocess.run([moec, "import", path], capture_output=True, text=True)
        ops = re.findall(r"moe\.sparse_moe .*", out.stdout)
        want = [f"k = {k} : i64", "router_kind = #moe.router<logits>",
                f"activation = #moe.activation<{'gelu_tanh' if act == 'gelu' else act}>"]
        if normalize:
            want.append("normalize = true")
        if act == "swiglu" and fusion == 1:
            want.append("gated_layout = #moe.gated_layout<interleaved>")
        rows = 2 * f if act == "swiglu" else f
        want.append(f"-> tensor<{t}x{h}xf32>")
        want.append(f"tensor<{e}x{h}x{f}xf32>")  # fc2
        if act != "swiglu" or fusion == 1:
            want.append(f"tensor<{e}x{rows}x{h}xf32>")  # fc1 as given
        if bias:
            want += ["fc1_bias", "fc2_bias"]
        problems = [] if out.returncode == 0 else [out.stderr.strip()]
        if len(ops) != 1:
            problems.append(f"{len(ops)} moe.sparse_moe ops")
        else:
            problems += [f"missing '{w}'" for w in want if w not in ops[0]]
            if not normalize and "normalize" in ops[0]:
                problems.append("unexpected normalize")
        ok = not problems
        results["passed" if ok else "failed"] += 1
        desc = f"k={k} {act} bias={int(bias)} normalize={normalize} fusion={fusion} T={t} H={h} F={f} E={e}"
        print(f"{'PASS' if ok else 'FAIL'}: {desc}" + ("" if ok else ": " + "; ".join(problems)))
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

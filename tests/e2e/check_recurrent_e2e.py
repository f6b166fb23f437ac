#!/usr/bin/env python3
"""RNN, GRU and LSTM through moec and moert, against ONNX Runtime on the same file.

The node tests cover the defaults (forward, zero or given initial states, peepholes, layout 1). Here, per op:
bidirectional with sequence_lens shorter than the sequence (and initial states), reverse with clip, non-default
activations with alpha / beta, GRU's linear_before_reset, LSTM's input_forget. Every output (Y, Y_h, LSTM's
Y_c) matches ONNX Runtime within 1e-5 relative to the largest magnitude.

    check_recurrent_e2e.py --moec build/bin/moec --lib build/lib/libmoert.so
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

S, N, I, H, TOL = 5, 3, 4, 6, 1e-5
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def case(op, rng, direction="forward", lens=False, init=False, **attrs):
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    w = lambda name, *shape: numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32), name)
    inits = [w("W", d, g * H, I), w("R", d, g * H, H), w("B", d, 2 * g * H)]
    ins = ["x", "W", "R", "B", "lens" if lens else "", "h0" if init else ""]
    graph_in = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [S, N, I])]
    feeds = {"x": rng.standard_normal((S, N, I)).astype(np.float32)}
    if lens:
        graph_in.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [N]))
        feeds["lens"] = np.array([S, 2, 4], np.int32)
    if init:
        graph_in.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, [d, N, H]))
        feeds["h0"] = rng.standard_normal((d, N, H)).astype(np.float32)
    outs = ["Y", "Y_h"]
    if op == "LSTM":
        ins += ["c0" if init else ""]
        if init:
            graph_in.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [d, N, H]))
            feeds["c0"] = rng.standard_normal((d, N, H)).astype(np.float32)
        outs.append("Y_c")
    while ins and ins[-1] == "":
        ins.pop()
    node = helper.make_node(op, ins, outs, hidden_size=H, direction=direction, **attrs)
    graph_out = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [S, d, N, H])] + \
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [d, N, H]) for o in outs[1:]]
    g_ = helper.make_graph([node], "g", graph_in, graph_out, inits)
    return helper.make_model(g_, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), feeds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True, help="libmoert.so, for the Python binding")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    rt = moert.Runtime(args.lib)
    cases = []
    for op in ("RNN", "GRU", "LSTM"):
        cases.append((f"{op} bidirectional, sequence_lens, initial states",
                      case(op, rng, "bidirectional", lens=True, init=True)))
        cases.append((f"{op} reverse, clip 0.5", case(op, rng, "reverse", clip=0.5)))
    cases.append(("RNN LeakyRelu 0.2", case("RNN", rng, activations=["LeakyRelu"], activation_alpha=[0.2])))
    cases.append(("GRU linear_before_reset, HardSigmoid / Softsign",
                  case("GRU", rng, linear_before_reset=1, activations=["HardSigmoid", "Softsign"],
                       activation_alpha=[0.3], activation_beta=[0.4])))
    cases.append(("LSTM input_forget, ScaledTanh", case("LSTM", rng, input_forget=1,
                                                        activations=["Sigmoid", "ScaledTanh", "Tanh"],
                                                        activation_alpha=[0.8], activation_beta=[1.2])))
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, feeds) in cases:
            path, art = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "m.moex")
            onnx.save(model, path)
            r = subprocess.run([args.moec, "compile", path, "-o", art, "--quiet"], capture_output=True, text=True)
            if r.returncode:
                check(name, False, "compile: " + r.stderr.strip())
                continue
            want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
            m = rt.load(art, threads=1)
            got = m.run(feeds)
            m.close()
            worst = 0.0
            for o, wv in zip(model.graph.output, want):
                gv = got[o.name]
                worst = max(worst, np.inf if gv.shape != wv.shape else
                            float(np.abs(gv - wv).max() / max(np.abs(wv).max(), 1e-30)))
            check(name, worst <= TOL, f"max |moec - ORT| / max |ORT| = {worst:.2e} (bound {TOL:g})")
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

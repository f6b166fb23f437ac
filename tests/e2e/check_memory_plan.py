#!/usr/bin/env python3
"""The artifact's memory plan at work: one loaded model runs a sequence of shapes (repeats reuse the learned
buffer sizes and the arena; new shapes grow them), each result checked against ONNX Runtime (max relative
error <= 1e-4), on whole transformers models (attention, embeddings, two MoE dispatches), a MoE layer, and a
chain of the ops libmoert runs as views of their input, each read after later values were made; and an
artifact whose plan gives a view a buffer of its own (as an older moec's did for Flatten), which must run
without the plan.

With `--device emu` (or gpu), the same models compiled for the CPU and that device run there: a run's planned
values then sit in a device arena laid out as its host arena (the same offsets), which the check also asks
libmoert to have made for the models with dispatches (moert_gpu_activation_memory; the views chain runs on the
host: its ops feed no device step).

  check_memory_plan.py --moec build/bin/moec --lib build/lib/libmoert.so [--device emu]
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "runtime", "python"))
import moert  # noqa: E402

SEQUENCE = [3, 3, 9, 3, 1, 9, 9, 2]


def views_model(path):
    """Each op libmoert runs as a view of its input's bytes (Identity, Reshape, Squeeze, Unsqueeze, Flatten)
    read after that input's last other use, by which time the memory plan may have given the input's buffer to a
    value made later: the plan must count the view as a use of it (a Flatten it did not know aliased the buffer
    the next value wrote into, from the second call on)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    N = helper.make_node
    views = [("Identity", []), ("Flatten", []), ("Reshape", ["shape"]), ("Unsqueeze", ["ax"]), ("Squeeze", ["ax"])]
    nodes, prev = [], "x"
    for i, (op, extra) in enumerate(views):  # relu -> view, then two values made before the view is read
        src = f"r{i}"
        nodes.append(N("Relu", [prev], [src]))
        if op == "Squeeze":  # of a [1, T, 8] view
            nodes.append(N("Unsqueeze", [src, "ax"], [f"u{i}"]))
            src = f"u{i}"
        nodes += [N(op, [src] + extra, [f"v{i}"], **({"axis": 1} if op == "Flatten" else {})),
                  N("Neg", [prev], [f"n{i}"]), N("Exp", [f"n{i}"], [f"e{i}"]),
                  N("Reshape", [f"v{i}", "back"], [f"vb{i}"]), N("Add", [f"vb{i}", f"e{i}"], [f"s{i}"])]
        prev = f"s{i}"
    inits = [numpy_helper.from_array(np.array([-1], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "ax"),
             numpy_helper.from_array(np.array([-1, 8], np.int64), "back")]
    graph = helper.make_graph(nodes, "views", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 8])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["T", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def compile_for(args, model, artifact):
    target = [] if args.device == "cpu" else [f"--target=cpu,{'emu' if args.device == 'emu' else 'gpu'}"]
    subprocess.run([args.moec, "compile", model, "-o", artifact, "--quiet"] + target, check=True,
                   stderr=subprocess.DEVNULL)


def old_plan_check(args, rt, tmp):
    """An artifact whose plan gives a view a buffer of its own (as moec did for Flatten before the view list was
    one), its Flatten's input buffer handed to the next value: libmoert must run it without the plan. Made by
    rewriting the plan in a fresh artifact's metadata (protoc's Python classes for runtime/artifact.proto)."""
    import struct
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    import onnx
    from check_bad_artifacts import reseal
    N = helper.make_node
    nodes = [N("Relu", ["x"], ["r"]), N("Flatten", ["r"], ["f"], axis=1), N("Neg", ["x"], ["n"]),
             N("Exp", ["n"], ["e"]), N("Reshape", ["f", "back"], ["fb"]), N("Add", ["fb", "e"], ["y"])]
    graph = helper.make_graph(nodes, "old_plan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 8])],
                              [numpy_helper.from_array(np.array([-1, 8], np.int64), "back")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path, artifact = os.path.join(tmp, "old_plan.onnx"), os.path.join(tmp, "old_plan.moex")
    onnx.save(model, path)
    compile_for(args, path, artifact)
    subprocess.run(["protoc", f"--python_out={tmp}", f"-I{os.path.join(ROOT, 'runtime')}",
                    os.path.join(ROOT, "runtime", "artifact.proto")], check=True)
    sys.path.insert(0, tmp)
    import artifact_pb2
    image = open(artifact, "rb").read()
    offset, size = struct.unpack_from("<QQ", image, 24)
    meta = artifact_pb2.Artifact()
    meta.ParseFromString(image[offset:offset + size])
    p = meta.program
    ops = [s.op for s in p.steps if s.HasField("op")]
    flatten = next(o for o in ops if o.op == b"Flatten")
    neg = next(o for o in ops if o.op == b"Neg")
    p.values[neg.outputs[0]].buffer = p.values[flatten.inputs[0]].buffer  # the Relu's buffer, free after Flatten
    p.values[flatten.outputs[0]].buffer = p.buffers  # the view given a buffer of its own
    p.buffers += 1
    new = meta.SerializeToString()
    image = bytearray(image[:offset] + new)
    struct.pack_into("<QQQ", image, 16, len(image), offset, len(new))  # file size, metadata offset and size
    open(artifact, "wb").write(reseal(bytes(image)))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    m = rt.load(artifact, threads=2, device=args.device)
    rng = np.random.default_rng(1)
    worst = 0.0
    for t in SEQUENCE:
        d = {"x": rng.standard_normal((t, 8)).astype(np.float32)}
        got, want = list(m.run(d).values())[0], sess.run(None, d)[0]
        worst = max(worst, float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)))
    m.close()
    ok = worst <= 1e-4
    print(f"{'ok  ' if ok else 'FAIL'} {'old plan (a view with a buffer)':20s} T={SEQUENCE} max rel error {worst:.2e}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--device", default="cpu", help="cpu (default), emu (libmoert's emulated GPU) or gpu")
    args = ap.parse_args()
    import onnxruntime as ort
    rt = moert.Runtime(args.lib)
    fixtures = os.path.join(ROOT, "tests", "fixtures", "transformers")
    cases = [("whole_qwen2_moe", lambda t, r: {"input_ids": r.integers(0, 32, (1, t)).astype(np.int64)}),
             ("whole_zaya", lambda t, r: {"input_ids": r.integers(0, 32, (1, t)).astype(np.int64)}),
             ("olmoe", lambda t, r: {"hidden_states": r.standard_normal((2, t, 32)).astype(np.float32)}),
             ("views", lambda t, r: {"x": r.standard_normal((t, 8)).astype(np.float32)})]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        views_model(os.path.join(tmp, "views.onnx"))
        for name, feeds in cases:
            model = os.path.join(tmp if name == "views" else fixtures, name + ".onnx")
            artifact = os.path.join(tmp, name + ".moex")
            compile_for(args, model, artifact)
            sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            try:
                m = rt.load(artifact, threads=2, device=args.device)
            except moert.Error as e:
                if args.device == "gpu" and "no " in str(e).lower():
                    print(f"skipped: no GPU ({e})")
                    return 77
                raise
            rng = np.random.default_rng(0)
            worst = 0.0
            why = ""
            for t in SEQUENCE:
                d = feeds(t, rng)
                want = sess.run(None, d)[0]
                try:
                    got = list(m.run(d).values())[0]
                except moert.Error as e:
                    why = f" (T={t}: {e})"
                    worst = np.inf
                    break
                err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
                worst = max(worst, err if got.shape == want.shape else np.inf)
            if args.device != "cpu" and name != "views" and not why and m.gpu_activation_memory()[0] == 0:
                why, worst = " (no device arena was made: the planned values took pooled buffers)", np.inf
            ok = worst <= 1e-4
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name:20s} T={SEQUENCE} max rel error {worst:.2e}{why}")
            m.close()
        failures += not old_plan_check(args, rt, tmp)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

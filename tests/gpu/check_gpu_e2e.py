#!/usr/bin/env python3
"""The GPU kernels end to end: the CPU e2e fixtures compiled with `--target=cpu,hip,cuda`, run by
`moert run --device=gpu`, compared with the same references as the CPU test (ONNX Runtime or the NumPy
oracle) and with moert's own CPU run of the same artifact (int8/int4 weights, moec's own and ONNX Runtime QMoE's,
included). Every output of a model is compared.

Linear dispatches run on the GPU too: the whole models and decoder-with-past fixtures (their projections and
LM heads; a prefill and a decode step with a past), check_linear_e2e's dense model (a fused LayerNorm, bias,
a residual, a transposed weight, Gemm, odd N and K) in every storage against ONNX Runtime on the weights as
stored, ONNX Runtime MatMulNBits models (4/8 bits, zero points, bias, K not a multiple of the block), and a
wider layer stack (K 512: a fused LayerNorm in front of merged Q/K/V projections, an output projection with a
residual, an LM head of 1001 columns) whose decode rows split K across blocks (the `reduce` kernel) and
whose prefill rows take the GEMM. Token embeddings (moec.Embedding) run on the device too: a table in every
storage against ONNX Runtime on the table as stored, and an index past the table is one error line.

Two phases, so the GPU half runs where moec cannot (a lent GPU machine without LLVM):

  check_gpu_e2e.py --moec build/bin/moec --moert build/bin/moert --prepare DIR [--targets cpu,cuda --cuda-arch sm_90]
                                                                                 compile + references into DIR
  check_gpu_e2e.py --moert build/bin/moert --run DIR [--device cuda]             run them on the GPU and compare
  check_gpu_e2e.py --moec ... --moert ...                                        both (ctest `gpu-e2e`)

With `--targets cpu,emu --device emu` the same cases run on libmoert's emulated device (the GPU kernels built
for the host against kernels/hip/gpu_emulation.h: ctest `gpu-e2e-emu`, everywhere). Every case also checks with
`moert inspect --device D` that each MoE and linear dispatch step runs on the device.

With no GPU driver or device, exits 77 (ctest: skipped). Tolerance: max |gpu - reference| / max |reference|
<= 1e-4 (f32 accumulation everywhere; the GPU sums slots and F splits with atomics, in no fixed order), and
the same bound between the GPU and CPU runs. bf16 transformers blocks and the int8 ones with quantised shared
experts are held to the CPU test's stated bounds (bf16 1e-2, int8 3e-2) against ONNX Runtime on the fp32 model,
and to 1e-4 against moert's CPU run of the artifact.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))

TOLERANCE = 1e-4
# The GPU kernels multiply f32 activations: `--activations=int8` changes only the CPU kernels (which round each
# 32-wide block of inputs to int8). Those cases hold the GPU to ONNX Runtime on the stored weights within
# TOLERANCE and to moert's CPU run within the CPU test's int8 bound.
ACT8_CPU_BOUND = 3e-2
# `--activations=bf16` (bf16 weights): the linear dispatches' GEMM rounds its rows to bf16 on the GPU as the CPU
# kernel's prefill does (more than 8 rows there, more than 6 on the CPU): against ONNX Runtime on the stored
# weights, and against moert's CPU run, within the CPU test's bound for it (check_linear_e2e's BF16_ACT_DRIFT:
# every layer's prefill inputs rounded, 2^-9 relative each at most). The MoE dispatches' matrix-core calls round
# their tokens and fc2's inputs the same way (the CPU kernels of an artifact with GPU code do not: experts in rows).
BF16_ACT_BOUND = 1e-2
TOKENS = [1, 3, 8, 40, 300]
# Linear cases: rows up to MOERT_GPU_LIN_GEMV_ROWS (8) take the GEMV, more the GEMM (70: two row tiles); the
# dense model's input is [2, T, H], so T = 4 is 8 rows and T = 9 is 18.
LIN_TOKENS = [1, 3, 4, 9, 70]


def rel_error(got, want, slack=0.0):
    """As check_cpu_e2e's (not imported: the --run phase needs only NumPy): each element's difference less its
    slack (an oracle's rounding ties, int8 activations) over max |want|."""
    want = np.asarray(want, np.float64)
    diff = np.maximum(np.abs(np.asarray(got, np.float64) - want) - slack, 0.0)
    return float(np.max(diff) / max(np.max(np.abs(want)), 1e-30))


def stack_model(path):
    """LayerNorm -> merged Q/K/V projections (K 512 -> 512 + 128 + 128: one dispatch with three outputs), Q's
    output projection with a residual, an LM head of 1001 columns over the residual stream: outputs K and V
    concatenated, and the logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(17)
    h, kv, vocab = 512, 128, 1001
    w = {"wq": (h, h), "wk": (h, kv), "wv": (h, kv), "wo": (h, h), "wlm": (h, vocab)}
    inits = [numpy_helper.from_array((rng.standard_normal(sh) / np.sqrt(sh[0])).astype(np.float32), n)
             for n, sh in w.items()]
    inits += [numpy_helper.from_array((1.0 + 0.2 * rng.standard_normal(h)).astype(np.float32), "ln_w"),
              numpy_helper.from_array((0.1 * rng.standard_normal(h)).astype(np.float32), "ln_b")]
    nodes = [helper.make_node("LayerNormalization", ["x", "ln_w", "ln_b"], ["xn"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["xn", "wq"], ["q"]),
             helper.make_node("MatMul", ["xn", "wk"], ["k"]),
             helper.make_node("MatMul", ["xn", "wv"], ["v"]),
             helper.make_node("Concat", ["k", "v"], ["kv"], axis=-1),
             helper.make_node("MatMul", ["q", "wo"], ["o"]),
             helper.make_node("Add", ["x", "o"], ["r"]),
             helper.make_node("MatMul", ["r", "wlm"], ["logits"])]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "T", c])
           for n, c in (("kv", 2 * kv), ("logits", vocab))]
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", h])],
                              out, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def graph_ops_model(path):
    """Two projections of x (K 64 -> N 48; one linear dispatch, two outputs a and b), then graph ops the device
    runs on them (kernels/hip/ops_gpu.h): Mul(a, b), Add of a [N] bias and Div by a [1, 1, N] scale
    (broadcasting), Sub(., a), Transpose to [1, N, T] and a Concat with b transposed: outputs the Concat and
    the Div's result."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(23)
    k, n = 64, 48
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) / 8).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((k, n)) / 8).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias"),
             numpy_helper.from_array((1.0 + rng.random((1, 1, n))).astype(np.float32), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["c"]), helper.make_node("Add", ["c", "bias"], ["d"]),
             helper.make_node("Div", ["d", "scale"], ["e"]), helper.make_node("Sub", ["e", "a"], ["f"]),
             helper.make_node("Transpose", ["f"], ["g"], perm=[0, 2, 1]),
             helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 2, 1]),
             helper.make_node("Concat", ["g", "bt"], ["cat"], axis=1)]
    graph = helper.make_graph(nodes, "graph_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", k])],
                              [helper.make_tensor_value_info("cat", TensorProto.FLOAT, [1, 2 * n, "T"]),
                               helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, "T", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def more_graph_ops_model(path):
    """The rest of the graph ops the device runs (kernels/hip/ops_gpu.h), each on a projection of x (a and b,
    [1, T, 48]: one linear dispatch with two outputs, so every op's input is on the device): activations and
    unary ops, Pow (integer and fractional exponents), Max / Min / PRelu, Clip with constant bounds; Slice
    (steps 2 and -3), Split (two outputs), Expand, Gather (three indices, and one scalar index); the
    reductions over the last axis, over T (keepdims 0) and over everything; Softmax over the last axis and
    over T (strided), LogSoftmax; a grouped, dilated, causal Conv1d with a bias, a Conv2d
    with stride 2; TopK (3 largest along the last axis; the smallest over T). Outputs: each group concatenated
    on the device."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(29)
    k, n = 64, 48
    c = {"w1": (rng.standard_normal((k, n)) / 4).astype(np.float32),
         "w2": (rng.standard_normal((k, n)) / 4).astype(np.float32),
         "one": np.ones(1, np.float32), "lo": np.array(-0.5, np.float32), "hi": np.array(0.75, np.float32),
         "p15": np.array(1.5, np.float32), "p3": np.array(3.0, np.float32), "p2": np.array(2.0, np.float32),
         "slope": rng.uniform(0.05, 0.5, n).astype(np.float32),
         "s_st": np.array([1], np.int64), "s_en": np.array([-1], np.int64), "ax2": np.array([2], np.int64),
         "s_step": np.array([2], np.int64), "r_st": np.array([-1], np.int64),
         "r_en": np.array([-1000], np.int64), "r_step": np.array([-3], np.int64),
         "sizes": np.array([16, 32], np.int64), "shape": np.array([1, 1, 8], np.int64),
         "idx": np.array([5, -1, 0], np.int64), "idx0": np.array(0, np.int64), "ax1": np.array([1], np.int64),
         "cw1": (rng.standard_normal((32, 12, 3)) / 6).astype(np.float32), "cb1": rng.standard_normal(32).astype(np.float32),
         "cw2": (rng.standard_normal((2, 1, 3, 3)) / 3).astype(np.float32), "ax0": np.array([0], np.int64),
         "k3": np.array([3], np.int64), "k1": np.array([1], np.int64)}
    inits = [numpy_helper.from_array(v, name) for name, v in c.items()]
    N = helper.make_node
    nodes = [N("MatMul", ["x", "w1"], ["a"]), N("MatMul", ["x", "w2"], ["b"]),
             N("Abs", ["a"], ["abs_a"]), N("Abs", ["b"], ["abs_b"]), N("Add", ["abs_b", "one"], ["b1"]),
             N("Sigmoid", ["a"], ["sig"]), N("Mul", ["a", "sig"], ["silu"]),
             N("Gelu", ["b"], ["gelu_t"], approximate="tanh"), N("Gelu", ["a"], ["gelu"]),
             N("Tanh", ["a"], ["tanh"]), N("Erf", ["b"], ["erf"]), N("Neg", ["abs_a"], ["neg"]),
             N("Exp", ["neg"], ["exp"]), N("Log", ["b1"], ["log"]), N("Sqrt", ["abs_a"], ["sqrt"]),
             N("Reciprocal", ["b1"], ["recip"]), N("Relu", ["a"], ["relu"]),
             N("LeakyRelu", ["b"], ["leaky"], alpha=0.2), N("Elu", ["a"], ["elu"], alpha=0.7),
             N("HardSigmoid", ["b"], ["hsig"], alpha=0.3, beta=0.4), N("Softplus", ["a"], ["softplus"]),
             N("Softsign", ["b"], ["softsign"]), N("Clip", ["a", "lo", "hi"], ["clip"]),
             N("Pow", ["sig", "p15"], ["pow15"]), N("Pow", ["clip", "p3"], ["pow3"]), N("Pow", ["sig", "p2"], ["pow2"]),
             N("Max", ["a", "b"], ["max"]), N("Min", ["a", "b"], ["min"]), N("PRelu", ["a", "slope"], ["prelu"]),
             N("Concat", ["silu", "gelu_t", "gelu", "tanh", "erf", "exp", "log", "sqrt", "recip", "relu", "leaky",
                          "elu", "hsig", "softplus", "softsign", "clip", "pow15", "pow3", "pow2", "max", "min",
                          "prelu"], ["elem"], axis=2),
             N("Slice", ["a", "s_st", "s_en", "ax2", "s_step"], ["sl1"]),
             N("Slice", ["b", "r_st", "r_en", "ax2", "r_step"], ["sl2"]),
             N("Split", ["b", "sizes"], ["sp1", "sp2"], axis=2),
             N("ReduceMean", ["a", "ax2"], ["mean_row"], keepdims=1),
             N("Expand", ["mean_row", "shape"], ["expand"]),
             N("Gather", ["a", "idx"], ["gat"], axis=2),
             N("Concat", ["sl1", "sl2", "sp2", "expand", "gat"], ["move"], axis=2),
             N("Gather", ["b", "idx0"], ["gat0"], axis=1),
             N("ReduceSum", ["a", "ax1"], ["sum_t"], keepdims=0),
             N("ReduceMax", ["b", "ax2"], ["rmax"]), N("ReduceMin", ["b", "ax2"], ["rmin"]),
             N("ReduceL1", ["a", "ax2"], ["rl1"]), N("ReduceL2", ["a", "ax2"], ["rl2"]),
             N("ReduceSumSquare", ["b", "ax2"], ["rss"]), N("ReduceLogSumExp", ["b", "ax2"], ["rlse"]),
             N("Concat", ["mean_row", "rmax", "rmin", "rl1", "rl2", "rss", "rlse"], ["rows"], axis=2),
             N("ReduceMean", ["b"], ["mean_all"], keepdims=1),
             N("Softmax", ["a"], ["sm"], axis=-1), N("Softmax", ["b"], ["sm_t"], axis=1),
             N("LogSoftmax", ["a"], ["lsm"], axis=2),
             N("Concat", ["sm", "sm_t", "lsm"], ["soft"], axis=2),
             N("Transpose", ["a"], ["a_ct"], perm=[0, 2, 1]),
             N("Conv", ["a_ct", "cw1", "cb1"], ["conv1"], group=4, kernel_shape=[3], pads=[4, 0], dilations=[2]),
             N("Unsqueeze", ["b", "ax0"], ["b4"]),
             N("Conv", ["b4", "cw2"], ["conv2"], pads=[1, 1, 1, 1], strides=[1, 2]),
             N("TopK", ["a", "k3"], ["tk_v", "tk_i"], axis=-1),
             N("TopK", ["b", "k1"], ["tk2_v", "tk2_i"], axis=1, largest=0)]
    f = TensorProto.FLOAT
    outs = [helper.make_tensor_value_info("elem", f, [1, "T", 22 * n]),
            helper.make_tensor_value_info("move", f, [1, "T", 23 + 16 + 32 + 8 + 3]),
            helper.make_tensor_value_info("sp1", f, [1, "T", 16]),
            helper.make_tensor_value_info("gat0", f, [1, n]), helper.make_tensor_value_info("sum_t", f, [1, n]),
            helper.make_tensor_value_info("rows", f, [1, "T", 7]),
            helper.make_tensor_value_info("mean_all", f, [1, 1, 1]),
            helper.make_tensor_value_info("soft", f, [1, "T", 3 * n]),
            helper.make_tensor_value_info("conv1", f, [1, 32, "T"]),
            helper.make_tensor_value_info("conv2", f, [1, 2, "T", 24]),
            helper.make_tensor_value_info("tk_v", f, [1, "T", 3]),
            helper.make_tensor_value_info("tk_i", TensorProto.INT64, [1, "T", 3]),
            helper.make_tensor_value_info("tk2_v", f, [1, 1, n]),
            helper.make_tensor_value_info("tk2_i", TensorProto.INT64, [1, 1, n])]
    graph = helper.make_graph(nodes, "more_graph_ops", [helper.make_tensor_value_info("x", f, [1, "T", k])], outs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    onnx.save(model, path)


def linear_cases(tmp):
    """(name, model, feeds(t, rng), reference, extra moec flags, tolerance) for the linear dispatches."""
    import check_linear_e2e as lin
    dense = os.path.join(tmp, "dense.onnx")
    lin.dense_model(dense)

    def dense_feeds(t, rng):
        return {"x": rng.standard_normal((2, t, lin.H)).astype(np.float32)}

    for storage in ("fp32", "bf16", "fp16", "int8", "int4"):
        ref = dense
        if storage != "fp32":
            ref = os.path.join(tmp, f"dense_ref_{storage}.onnx")
            lin.reference_copy(dense, ref, storage)
        yield f"linear/dense {storage}", dense, dense_feeds, ref, (f"--dense-weights={storage}",), TOLERANCE
        if storage == "bf16":
            yield ("linear/dense bf16, bf16 activations", dense, dense_feeds, ref,
                   ("--dense-weights=bf16", "--activations=bf16"), BF16_ACT_BOUND)
    for i, (k, n, bits, block, zp, bias) in enumerate([(70, 17, 4, 32, True, True), (96, 3, 8, 16, True, False),
                                                       (300, 33, 4, 128, False, True), (130, 1, 8, 128, True, True),
                                                       (1000, 48, 4, 32, True, True)]):
        path = os.path.join(tmp, f"nbits{i}.onnx")
        lin.nbits_model(path, k, n, bits, block, zp, bias, seed=i)
        yield (f"linear/MatMulNBits K={k} N={n} {bits}-bit block {block}{' zp' if zp else ''}{' bias' if bias else ''}",
               path, lambda t, rng, k=k: {"A": rng.standard_normal((t, k)).astype(np.float32)}, path, (), TOLERANCE)
    stack = os.path.join(tmp, "stack.onnx")
    stack_model(stack)
    for storage in ("fp32", "bf16", "int8", "int4"):
        ref = stack
        if storage != "fp32":  # the weights as stored (the LayerNorm's stay f32)
            ref = os.path.join(tmp, f"stack_ref_{storage}.onnx")
            import onnx
            from onnx import numpy_helper
            m = onnx.load(stack)
            for init in m.graph.initializer:
                if init.name.startswith("w"):
                    init.CopyFrom(numpy_helper.from_array(
                        lin.stored(storage, numpy_helper.to_array(init)).astype(np.float32), init.name))
            onnx.save(m, ref)
        yield (f"linear/stack K=512 {storage}", stack,
               lambda t, rng: {"x": rng.standard_normal((1, t, 512)).astype(np.float32)}, ref,
               (f"--dense-weights={storage}",), TOLERANCE)
    # Token embeddings (moec.Embedding on the device): every storage, negative indices; 48 columns in blocks of
    # 32 with the projection stored as --weights says, and 45 (int4 rows of odd length) in blocks of 16 with an
    # fp32 projection.
    for v, h, block in ((40, 48, 32), (33, 45, 16)):
        path = os.path.join(tmp, f"embed{h}.onnx")
        lin.embedding_model(path, v, h, 7)
        for storage in ("fp32", "bf16", "fp16", "int8", "int4"):
            ref = os.path.join(tmp, f"embed{h}_ref_{storage}.onnx")
            lin.embedding_reference(path, ref, storage, block, projection=block == 32)
            flags = ((f"--weights={storage}",) if block == 32 else
                     ("--dense-weights=fp32", f"--embedding-weights={storage}")) + (f"--weight-block={block}",)
            yield (f"linear/embedding {v}x{h} {storage}/{block}", path,
                   lambda t, rng, v=v: {"ids": rng.integers(-v, v, (2, t)).astype(np.int64)}, ref, flags, TOLERANCE)
    ops = os.path.join(tmp, "graph_ops.onnx")
    graph_ops_model(ops)
    yield ("linear/graph ops", ops, lambda t, rng: {"x": rng.standard_normal((1, t, 64)).astype(np.float32)}, ops,
           (), TOLERANCE)
    more = os.path.join(tmp, "more_graph_ops.onnx")
    more_graph_ops_model(more)
    yield ("linear/more graph ops", more, lambda t, rng: {"x": rng.standard_normal((1, t, 64)).astype(np.float32)},
           more, (), TOLERANCE)
    # Decoder-with-past fixtures: a step of T new tokens after 5 cached positions (logits and presents), and
    # after 600 (the attention kernel splits a decode step's keys across blocks and merges them).
    for family, past in (("mixtral", 5), ("qwen3_moe", 5), ("qwen3_moe", 600)):
        path = os.path.join(lin.FIXTURES, f"past_{family}.onnx")
        yield (f"linear/past_{family} (past {past})", path,
               lambda t, rng, path=path, past=past: lin.fixture_feeds(path, t, past, rng), path, (), TOLERANCE)


def gpu_cases(tmp):
    import check_cpu_e2e as e2e
    for name, model, feeds, ref, extra, tolerance in linear_cases(tmp):
        yield name, model, feeds, "ort", (ref, extra, tolerance, LIN_TOKENS), None
    cases = (list(e2e.transformers_cases()) + list(e2e.ort_moe_cases(tmp)) + list(e2e.qmoe_cases(tmp)) +
             list(e2e.sparse_moe_cases(tmp)))
    for name, model, feeds, reference in cases:
        extra, ref_model, tolerance = (), model, TOLERANCE
        if isinstance(reference, tuple):
            reference, ref_model, extra, drift = reference
            if ref_model is None:  # only the stated bound against the fp32 model (quantised shared experts)
                ref_model, tolerance = model, drift
            # int8: f32 activations on the GPU; bf16: rounded in the matrix-core calls (T = 300 here), not in
            # decode-sized ones, while the artifact's CPU kernels (experts in rows) take f32 inputs: ONNX Runtime
            # on the stored weights, within the mode's bound for bf16 (docs/gpu.md)
            if "--activations=int8" in extra or "--activations=bf16" in extra:
                reference = "ort"
            if "--activations=bf16" in extra:
                tolerance = BF16_ACT_BOUND
        yield name, model, feeds, reference, (ref_model, tuple(extra), tolerance, TOKENS), None
    # The bf16 transformers blocks (the weights a GPU deployment stores): against ONNX Runtime on the fp32 model
    # within the CPU test's stated bf16 bound, and against moert's CPU run of the same artifact within 1e-4.
    for family in ["mixtral", "qwen2_moe", "deepseek_v3"]:
        path = os.path.join(e2e.ROOT, "tests", "fixtures", "transformers", f"{family}.onnx")
        feeds = next(f for n, p, f, r in e2e.transformers_cases() if p == path)
        yield (f"transformers/{family} (bf16)", path, feeds, "ort",
               (path, ("--weights=bf16",), e2e.DRIFT["bf16"], TOKENS), None)


def prepare(args, out):
    os.makedirs(out, exist_ok=True)
    manifest = []
    targets = ([f"--target={args.targets}"] + ([f"--cuda-arch={args.cuda_arch}"] if args.cuda_arch else []) +
               ([f"--emu-arch={args.emu_arch}"] if args.emu_arch else []))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model, feeds, reference, ref, skip) in enumerate(gpu_cases(tmp)):
            if not selected(args, name):
                continue
            entry = {"name": name, "skip": skip, "runs": []}
            entry["cpu_tolerance"] = (ACT8_CPU_BOUND if "--activations=int8" in ref[1] else
                                      BF16_ACT_BOUND if "--activations=bf16" in ref[1] else TOLERANCE)
            manifest.append(entry)
            if skip:
                continue
            ref_model, extra, entry["tolerance"], tokens = ref
            artifact = os.path.join(out, f"case{i}.moex")
            run = subprocess.run([args.moec, "compile", model, "-o", artifact, *targets, "--quiet", *extra],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                entry["skip"] = "moec compile failed: " + run.stderr.strip().splitlines()[-1]
                continue
            entry["artifact"] = os.path.basename(artifact)
            rng = np.random.default_rng(3)
            for t in tokens:
                d = feeds(t, rng)
                want, slack = all_outputs(ref_model, d) if reference == "ort" else [reference(d)], None
                if reference != "ort" and isinstance(want[0], tuple):  # (output, slack): see rel_error
                    want, slack = [want[0][0]], want[0][1]
                files = {}
                for k, v in d.items():
                    files[k] = f"case{i}_T{t}_{k}.npy"
                    np.save(os.path.join(out, files[k]), v)
                wants = []
                for j, w in enumerate(want):
                    wants.append(f"case{i}_T{t}_want{j}.npy")
                    np.save(os.path.join(out, wants[-1]), np.asarray(w, np.float32))
                run = {"T": t, "inputs": files, "want": wants}
                if slack is not None:
                    run["slack"] = f"case{i}_T{t}_slack.npy"
                    np.save(os.path.join(out, run["slack"]), np.asarray(slack, np.float32))
                entry["runs"].append(run)
    # `moert generate` on the decoder-with-past fixtures: greedy and seeded sampling, the same tokens as the CPU.
    for family in ("mixtral", "qwen3_moe"):
        name = f"generate/past_{family}"
        if not selected(args, name):
            continue
        import onnx
        import check_linear_e2e as lin
        path = os.path.join(lin.FIXTURES, f"past_{family}.onnx")
        logits = next(o for o in onnx.load(path, load_external_data=False).graph.output if o.name == "logits")
        vocab = logits.type.tensor_type.shape.dim[-1].dim_value
        entry = {"name": name, "skip": None, "generate": f"gen_{family}.moex", "prompt": f"gen_{family}_ids.npy"}
        np.save(os.path.join(out, entry["prompt"]), np.random.default_rng(5).integers(0, vocab, 7, dtype=np.int64))
        run = subprocess.run([args.moec, "compile", path, "-o", os.path.join(out, entry["generate"]), *targets,
                              "--quiet"], capture_output=True, text=True)
        if run.returncode != 0:
            entry["skip"] = "moec compile failed: " + run.stderr.strip().splitlines()[-1]
        manifest.append(entry)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def selected(args, name):
    return not args.only or any(part in name for part in args.only.split(","))


def all_outputs(model, feeds):
    """Every output of `model` under ONNX Runtime, in graph order."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def moert_run(moert, artifact, inputs, device, tmp, traffic=None, repeat=1):
    """The outputs of `moert run`; with a list `traffic`, also appends the (to device, to host) bytes it
    reports for a GPU run (its last call's: the second of two leaves out the constants the first uploaded)."""
    outdir = os.path.join(tmp, "out")
    shutil.rmtree(outdir, ignore_errors=True)
    cmd = [moert, "run", artifact, "--output-dir", outdir, f"--device={device}", f"--repeat={repeat}"]
    for k, v in inputs.items():
        cmd += ["--input", f"{k}={v}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip())
    for ln in run.stdout.splitlines():
        if traffic is not None and ln.startswith("gpu copies (last call): "):
            words = ln.split()
            traffic.append((int(words[4]), int(words[9])))
    return [np.load(ln.split(" -> ")[1]) for ln in run.stdout.splitlines() if ln.startswith("output ")]


# Cases whose steps all run on the device: a run copies exactly its inputs to the device and its outputs back
# (the K-512 stack: Q reaches its output projection, the residual stream the LM head, and K and V the
# Concat on the device, kernels/hip/ops_gpu.h), and `moert inspect` counts those copies: (values to the
# device, values back) = (x; the concatenated K and V, logits); the graph-ops model likewise (x; cat, e).
DEVICE_RESIDENT = {"linear/stack": (1, 2), "linear/graph ops": (1, 2), "linear/more graph ops": (1, 14)}


def run_all(args, where):
    probe = subprocess.run([args.moert, "devices", "--device", args.device], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skipped: " + probe.stderr.strip())
        return 77
    print("device: " + probe.stdout.strip())
    with open(os.path.join(where, "manifest.json")) as f:
        manifest = json.load(f)
    entries = [e for e in manifest if selected(args, e["name"])]

    def generate(entry, device, sampled):
        cmd = [args.moert, "generate", os.path.join(where, entry["generate"]), "--prompt-ids",
               os.path.join(where, entry["prompt"]), "--max-new-tokens", "12", f"--device={device}"]
        run = subprocess.run(cmd + (["--temperature", "1", "--seed", "7"] if sampled else ["--greedy"]),
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(run.stderr.strip())
        return next(ln for ln in run.stdout.splitlines() if ln.startswith("tokens:"))

    def check(entry, tmp):
        """(passed, report lines) of one case: each T on the GPU and on the CPU against the reference."""
        if entry["skip"]:
            return None, [f"--   {entry['name']:48s} not run: {entry['skip']}"]
        if "generate" in entry:  # the device's tokens are the CPU's, greedy and sampled with one seed
            try:
                runs = [(generate(entry, args.device, s), generate(entry, "cpu", s)) for s in (False, True)]
            except RuntimeError as e:
                return False, [f"FAIL {entry['name']:48s} {e}"]
            same = all(g == c for g, c in runs)
            return same, [f"{'ok  ' if same else 'FAIL'} {entry['name']:48s} greedy {runs[0][0]}; sampled "
                          f"{runs[1][0]}" + ("" if same else f" (CPU: {runs[0][1]}; {runs[1][1]})")]
        os.makedirs(tmp, exist_ok=True)
        errors, worst, worst_cpu = [], 0.0, 0.0
        artifact = os.path.join(where, entry["artifact"])
        # Every MoE, linear and attention dispatch step, and every token embedding, must run on the device
        # (`moert inspect` marks those `[gpu]`).
        inspect = subprocess.run([args.moert, "inspect", artifact, "--device", args.device], capture_output=True,
                                 text=True)
        steps = [ln for ln in inspect.stdout.splitlines()
                 if ln.lstrip().startswith(("dispatch ", "linear ", "attention ", "op moec.Embedding "))]
        if inspect.returncode != 0 or not steps or not all(ln.endswith("[gpu]") for ln in steps):
            return False, [f"FAIL {entry['name']:48s} not every dispatch runs on the device: "
                           f"{inspect.stderr.strip() or [ln for ln in steps if not ln.endswith('[gpu]')] or 'none'}"]
        resident = next((v for k, v in DEVICE_RESIDENT.items() if entry["name"].startswith(k)), None)
        copies = re.search(r"gpu copies per call: (\d+) values? to the device, (\d+) back", inspect.stdout)
        if resident and (not copies or tuple(map(int, copies.groups())) != resident):
            errors.append(f"moert inspect: {copies.group(0) if copies else 'no gpu copies line'}, expected "
                          f"{resident[0]} to the device and {resident[1]} back")
        for r in entry["runs"]:
            inputs = {k: os.path.join(where, v) for k, v in r["inputs"].items()}
            wants = [np.load(os.path.join(where, w)) for w in r["want"]]
            slack = np.load(os.path.join(where, r["slack"])) if "slack" in r else 0.0
            try:
                traffic = []
                got = moert_run(args.moert, artifact, inputs, args.device, tmp, traffic, 2 if resident else 1)
                cpu = moert_run(args.moert, artifact, inputs, "cpu", tmp)
            except RuntimeError as e:
                errors.append(f"T={r['T']}: {e}")
                continue
            shapes = [g.shape for g in got], [w.shape for w in wants]
            if shapes[0] != shapes[1] or len(cpu) != len(got):
                errors.append(f"T={r['T']}: output shapes {shapes[0]}, reference {shapes[1]}")
                continue
            if resident:
                want_traffic = (sum(np.load(p).nbytes for p in inputs.values()), sum(g.nbytes for g in got))
                if traffic[:1] != [want_traffic]:
                    errors.append(f"T={r['T']}: copied {traffic} bytes (to device, to host), expected {want_traffic}")
            err = max(rel_error(g, w, slack) for g, w in zip(got, wants))
            err_cpu = max(rel_error(g, c) for g, c in zip(got, cpu))
            worst, worst_cpu = max(worst, err), max(worst_cpu, err_cpu)
            if not (err <= entry["tolerance"] and err_cpu <= entry.get("cpu_tolerance", TOLERANCE)):
                errors.append(f"T={r['T']}: {err:.2e} from the reference, {err_cpu:.2e} from moert's CPU run")
        if entry["name"].startswith("linear/embedding 40x48"):  # an index past the table, checked on the host
            bad = os.path.join(tmp, "bad_ids.npy")
            np.save(bad, np.array([[3, -40], [40, 1]], np.int64))
            run = subprocess.run([args.moert, "run", artifact, "--input", f"ids={bad}", f"--device={args.device}",
                                  "--output-dir", os.path.join(tmp, "bad")], capture_output=True, text=True)
            err = run.stderr.strip().splitlines()
            if run.returncode == 0 or len(err) != 1 or "index 40 out of range" not in err[0] or \
                    os.path.exists(os.path.join(tmp, "bad")):
                errors.append(f"an index past the table: {err or 'no error'} (exit {run.returncode})")
        lines = [f"{'ok  ' if not errors else 'FAIL'} {entry['name']:48s} T={[r['T'] for r in entry['runs']]} "
                 f"max rel error {worst:.2e} (bound {entry['tolerance']:g}; vs CPU run {worst_cpu:.2e}, bound "
                 f"{entry.get('cpu_tolerance', TOLERANCE):g})"]
        return not errors, lines + ["       " + e for e in errors]

    # Cases run in parallel (--jobs; each its own moert processes and output folder), reported in order.
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [os.path.join(tmp, str(i)) for i in range(len(entries))]
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(check, entries, dirs))
    if args.device == "emu":  # the emulated device's test knobs: a device too small, a device lost mid-run
        results += fault_checks(args, where, entries)
    if args.lib:
        results += concurrency_checks(args, where, entries)
    failures = ran = 0
    for passed, lines in results:
        print("\n".join(lines))
        if passed is not None:
            ran += 1
            failures += not passed
    print(f"{ran - failures}/{ran} cases match on the GPU within their bounds ({TOLERANCE:g} unless stated) "
          f"({sum(1 for e in entries if e['skip'])} not run)")
    return 1 if failures else 0


def concurrency_checks(args, where, entries):
    """One model loaded on the device, 8 threads running it at once (3 calls each, token counts 1 to 70 and
    their own inputs) through the C API: every result bitwise the one that input gives run alone (the device's
    calls are serialised; each run has its own Residency; scratch, state and the buffer pool are shared)."""
    import threading
    sys.path.insert(0, os.path.join(HERE, "..", "..", "runtime", "python"))
    import moert
    rt = moert.Runtime(args.lib)
    results = []
    for name in ("linear/graph ops", "transformers/qwen3_moe", "linear/past_qwen3_moe (past 5)"):
        entry = next((e for e in entries if e["name"] == name and not e["skip"]), None)
        if not entry:
            continue
        model = rt.load(os.path.join(where, entry["artifact"]), device=args.device, threads=1)
        feeds = [{k: np.load(os.path.join(where, v)) for k, v in r["inputs"].items()} for r in entry["runs"]]
        feeds = (feeds * 3)[:8]
        alone = [model.run(f) for f in feeds]
        bad = []

        def work(i):
            for rep in range(3):
                got = model.run(feeds[i])
                bad.extend((i, rep, k) for k in alone[i] if not np.array_equal(got[k], alone[i][k]))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results.append((not bad, [f"{'ok  ' if not bad else 'FAIL'} concurrency/{name:36s} {len(feeds)} threads x 3 "
                                  f"calls: {'each the result run alone gives' if not bad else bad[:4]}"]))
    return results


def fault_checks(args, where, entries):
    """On the emulated device (MOERT_EMU_MEMORY, MOERT_EMU_FAIL_LAUNCH; runtime/src/Gpu.cpp): a model larger
    than the device's memory, activations that do not fit beside the weights, and a device lost at the first,
    a middle and the last launch of a run or of `moert generate` (prefill and decode), and an artifact of graph
    ops only compiled without GPU code (which once ran on the CPU without a word) are each one error line naming
    the failure, exit 1 and no output written. With --no-round-trips (moert_load_options.no_round_trips), a step
    the CPU runs that reads a GPU step's value (the Llama-4-like block's residual Add) is one error naming the
    step, while a whole model and `moert generate` (its prompt's last rows gathered on the device) run as they
    do without it: the same outputs and tokens."""
    stack = next((e for e in entries if e["name"] == "linear/stack K=512 fp32" and not e["skip"]), None)
    gen = next((e for e in entries if e["name"] == "generate/past_qwen3_moe" and not e["skip"]), None)
    llama4 = next((e for e in entries if e["name"] == "transformers/llama4" and not e["skip"]), None)
    whole = next((e for e in entries if e["name"] == "transformers/whole_deepseek_v3" and not e["skip"]), None)
    checks, same = [], []  # same: (what, command) that must do exactly what it does without --no-round-trips
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        if stack:
            run = stack["runs"][-1]
            cmd = [args.moert, "run", os.path.join(where, stack["artifact"]), "--device=emu", "--output-dir", out]
            for k, v in run["inputs"].items():
                cmd += ["--input", f"{k}={os.path.join(where, v)}"]
            # the weights take 4.5 MiB: 1 MB of device memory cannot hold them, 4.7 MiB cannot hold activations too
            checks += [(f"memory 1 MB, T={run['T']}", cmd, {"MOERT_EMU_MEMORY": "1000000"}, "out of device memory"),
                       (f"memory 4.7 MiB, T={run['T']}", cmd, {"MOERT_EMU_MEMORY": str(4_930_000)},
                        "out of device memory")]
            checks += [(f"device lost at launch {n}", cmd, {"MOERT_EMU_FAIL_LAUNCH": str(n)}, "device lost")
                       for n in (1, 2, 4)]
        if gen:
            cmd = [args.moert, "generate", os.path.join(where, gen["generate"]), "--prompt-ids",
                   os.path.join(where, gen["prompt"]), "--max-new-tokens", "6", "--device=emu", "--output",
                   os.path.join(out, "ids.npy")]
            checks += [(f"generate: device lost at launch {n}", cmd, {"MOERT_EMU_FAIL_LAUNCH": str(n)},
                        "device lost") for n in (3, 40)]
            same.append(("generate", cmd))
        for entry, must in ((llama4, "Add 'output' runs on the CPU and reads"), (whole, None)):
            if not entry:
                continue
            run = entry["runs"][-1]
            cmd = [args.moert, "run", os.path.join(where, entry["artifact"]), "--device=emu", "--output-dir", out]
            for k, v in run["inputs"].items():
                cmd += ["--input", f"{k}={os.path.join(where, v)}"]
            if must:
                checks.append((f"{entry['name'].split('/')[-1]} with --no-round-trips", cmd + ["--no-round-trips"], {},
                               must))
            else:
                same.append((entry["name"].split("/")[-1], cmd))
        import onnx
        from onnx import TensorProto, helper
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
        relu = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        relu.ir_version = 8
        onnx.save(relu, os.path.join(tmp, "relu.onnx"))
        np.save(os.path.join(tmp, "x.npy"), np.ones((2, 3), np.float32))
        subprocess.run([args.moec, "compile", os.path.join(tmp, "relu.onnx"), "-o", os.path.join(tmp, "relu.moex"),
                        "--quiet"], check=True)  # no --target: CPU code only
        checks.append(("graph ops only, no GPU code", [args.moert, "run", os.path.join(tmp, "relu.moex"),
                                                        f"--device={args.device}", "--input",
                                                        f"x={os.path.join(tmp, 'x.npy')}", "--output-dir", out],
                       {}, "has no GPU code"))
        results = []
        for what, cmd, env, says in checks:
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            lines = r.stderr.strip().splitlines()
            ok = (r.returncode == 1 and len(lines) == 1 and lines[0].startswith("moert: error: ") and says in lines[0]
                  and not os.path.exists(out))
            results.append((ok, [f"{'ok  ' if ok else 'FAIL'} faults/{what:41s} "
                                 f"{lines[0] if len(lines) == 1 else lines} (exit {r.returncode}"
                                 f"{', output written' if os.path.exists(out) else ''})"]))
            shutil.rmtree(out, ignore_errors=True)
        for what, cmd in same:  # the same files and the same tokens with and without --no-round-trips
            got = []
            for strict in ([], ["--no-round-trips"]):
                os.makedirs(out, exist_ok=True)
                r = subprocess.run(cmd + strict, capture_output=True, text=True)
                files = sorted(glob.glob(os.path.join(out, "*.npy")))
                got.append((r.returncode, r.stderr.strip(), [np.load(f).tobytes() for f in files],
                            [ln for ln in r.stdout.splitlines() if ln.startswith("tokens")]))
                shutil.rmtree(out, ignore_errors=True)
            ok = got[0][0] == 0 and got[0] == got[1] and got[0][2]
            results.append((ok, [f"{'ok  ' if ok else 'FAIL'} faults/{what + ' with --no-round-trips':41s} "
                                 f"{'the same outputs as without it' if ok else got[1][:2]}"]))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec")
    ap.add_argument("--moert", required=True)
    ap.add_argument("--device", default="gpu", choices=["gpu", "cuda", "hip", "emu"])
    ap.add_argument("--prepare", metavar="DIR")
    ap.add_argument("--targets", default="cpu,hip,cuda", help="moec --target for --prepare (default cpu,hip,cuda)")
    ap.add_argument("--cuda-arch", help="moec --cuda-arch for --prepare (default moec's)")
    ap.add_argument("--emu-arch", help="moec --emu-arch for --prepare with --targets cpu,emu (default moec's)")
    ap.add_argument("--only", help="prepare / run only the cases whose name contains one of these (comma-separated)")
    ap.add_argument("--run", metavar="DIR")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    ap.add_argument("--lib", help="libmoert.so: also run one model from 8 threads at once (the C API)")
    args = ap.parse_args()
    if args.prepare:
        if not args.moec:
            ap.error("--prepare needs --moec")
        prepare(args, args.prepare)
        return 0
    if args.run:
        return run_all(args, args.run)
    if not args.moec:
        ap.error("--moec is needed unless --run DIR")
    probe = subprocess.run([args.moert, "devices", "--device", args.device], capture_output=True, text=True)
    if probe.returncode != 0:
        print("skipped: " + probe.stderr.strip())
        return 77
    with tempfile.TemporaryDirectory() as where:
        prepare(args, where)
        return run_all(args, where)


if __name__ == "__main__":
    sys.exit(main())

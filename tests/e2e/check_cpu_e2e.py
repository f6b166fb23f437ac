#!/usr/bin/env python3
"""End to end on the CPU: `moec compile` -> `moert run` -> compare with ONNX Runtime (or the NumPy oracle).

Every case is compiled to an artifact once and run at several token counts (decode T = 1, a few tokens, and
a prefill-sized batch), with random inputs, against the reference run live on the same inputs:

  - the transformers fixtures (tests/fixtures/transformers/<family>.onnx: RMSNorm + router + experts (+ shared
    experts) + residual, as PyTorch exports them) vs ONNX Runtime on the unfused model;
  - com.microsoft.MoE models (activations, k, renormalisation, biases, SwiGLU layout, a router MatMul in front
    or precomputed logits) vs ONNX Runtime;
  - moec.SparseMoE models (static mask, low-rank predictor + keep, zero experts, sigmoid gate, biases) vs
    tests/reference/sparse_moe.py (ONNX Runtime does not know the op).
(Grouped top-k, selection bias, shared experts and the fused norm are in the DeepSeek-V3 / Qwen2-MoE fixtures.)

Tolerance: max |moec - reference| / max |reference| <= 1e-4. For `--weights=bf16` artifacts the reference is
ONNX Runtime on a copy of the model whose expert weights are rounded to bf16 the same way (accumulation is f32
in both), so the same tolerance holds. Prints one line per case and exits 1 on any failure.

    check_cpu_e2e.py --moec build/bin/moec --moert build/bin/moert [--cpu x86-64-v3]
"""
import argparse
import glob
import math
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import sparse_moe as oracle  # noqa: E402
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "transformers"))
import make_fixtures  # noqa: E402  (the family lists; it imports torch only when exporting)

TOLERANCE = 1e-4
TOKENS = [1, 3, 40]
# Stated bounds for quantised expert weights against the fp32 model (max |diff| / max |fp32 output|, Gaussian
# weights; measured bf16 3e-3..4e-3, fp16 about 5e-4, int8 9e-3..1e-2, int4 0.15..0.31). The exact check is against ONNX Runtime on the same weights
# rounded the way moec stores them (within TOLERANCE).
DRIFT = {"bf16": 1e-2, "fp16": 2e-3, 8: 3e-2, 4: 0.5}


def ort_run(path, feeds):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def moert_run(args, artifact, feeds, tmp):
    cmd = [args.moert, "run", artifact, "--output-dir", os.path.join(tmp, "out")]
    for name, value in feeds.items():
        p = os.path.join(tmp, f"in_{name}.npy")
        np.save(p, value)
        cmd += ["--input", f"{name}={p}"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError("moert run failed: " + run.stderr.strip())
    outs = [ln.split(" -> ")[1] for ln in run.stdout.splitlines() if ln.startswith("output ")]
    return np.load(outs[0])


def compile_model(args, model, artifact, extra=()):
    run = subprocess.run([args.moec, "compile", model, "-o", artifact, f"--cpu={args.cpu}", "--quiet", *extra],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError("moec compile failed: " + run.stderr.strip().splitlines()[-1])


def rel_error(got, want, slack=0.0):
    """max |got - want| / max |want|; with `slack`, each element's difference less its slack (not below 0)."""
    want = np.asarray(want, np.float64)
    diff = np.maximum(np.abs(np.asarray(got, np.float64) - want) - slack, 0.0)
    return float(np.max(diff) / max(np.max(np.abs(want)), 1e-30))


# ---- cases -------------------------------------------------------------------------------------------------

def block_feeds(path):
    """Feeds for a MoE-block fixture: `hidden_states` [2, t, hidden], hidden read off the model's input."""
    m = onnx.load(path, load_external_data=False)
    hidden = m.graph.input[0].type.tensor_type.shape.dim[2].dim_value

    def feeds(t, rng):
        return {"hidden_states": rng.standard_normal((2, t, hidden)).astype(np.float32)}
    return feeds


def transformers_cases():
    for family in make_fixtures.FAMILIES:
        path = os.path.join(ROOT, "tests", "fixtures", "transformers", f"{family}.onnx")
        feeds = block_feeds(path)
        yield f"transformers/{family}", path, feeds, "ort"
        if family in ("qwen2_moe", "deepseek_v3"):  # with a shared expert, quantised like the routed ones
            yield f"transformers/{family} (int8)", path, feeds, ("ort", None, ("--weights=int8",), DRIFT[8])
    # tests/fixtures/handwritten: hand-written dense MoE blocks and Optimum's form of GPT-OSS
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "fixtures", "handwritten", "*.onnx"))):
        yield f"handwritten/{os.path.basename(path)[:-5]}", path, block_feeds(path), "ort"
    # Whole 2-layer models (embedding, attention with rotary embeddings and causal mask, MoE blocks, LM head):
    # the MoE layers become dispatches, everything else runs on libmoert's op kernels. T = sequence length.
    for family in make_fixtures.WHOLE_FAMILIES:
        path = os.path.join(ROOT, "tests", "fixtures", "transformers", f"whole_{family}.onnx")

        def feeds(t, rng):
            return {"input_ids": rng.integers(0, 32, (1, t)).astype(np.int64)}

        yield f"transformers/whole_{family}", path, feeds, "ort"


def ort_moe_model(path, h, f, e, k, act, normalize, bias, router, shared=0):
    # A seed of the configuration that is the same in every process (hash() of a str is salted per process,
    # which made these weights, and the quantisation drift measured on them, change from run to run).
    rng = np.random.default_rng(zlib.crc32(repr((h, f, e, k, act, normalize, bias, router, shared or None)
                                                 ).encode()))
    gated = act == "swiglu"
    rows = 2 * f if gated else f
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((e, rows, h))).astype(np.float32), "w1"),
             numpy_helper.from_array((0.3 * rng.standard_normal((e, h, f))).astype(np.float32), "w2")]
    names = ["x", "logits", "w1", "", "w2", ""]
    if bias:
        inits += [numpy_helper.from_array((0.1 * rng.standard_normal((e, rows))).astype(np.float32), "b1"),
                  numpy_helper.from_array((0.1 * rng.standard_normal((e, h))).astype(np.float32), "b2")]
        names[3], names[5] = "b1", "b2"
    while names[-1] == "":
        names.pop()
    attrs = dict(k=k, activation_type=act, normalize_routing_weights=normalize)
    if gated:
        attrs["swiglu_fusion"] = 1
    save_layer(path, "MoE", names, inits, attrs, h, e, router, rng, shared=shared)


def save_layer(path, op, node_inputs, inits, attrs, h, e, router, rng, extra_inputs=(), shared=0):
    """One com.microsoft `op` node on x [T, h]: router logits from a MatMul on x ("matmul", weights drawn
    from `rng`) or a graph input ("logits"); output y [T, h]. `extra_inputs`: more f32 [T, e] graph inputs.
    `shared` > 0: a gated shared expert of that many hidden dims added after the node, as ONNX Runtime GenAI's
    builder writes Qwen2-MoE's: y = moe + sigmoid(x @ g) * down(silu(x @ gate) * (x @ up))."""
    nodes, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["T", e]) for n in extra_inputs]
    if router == "matmul":
        inits.append(numpy_helper.from_array(rng.standard_normal((h, e)).astype(np.float32), "wr"))
        nodes.append(helper.make_node("MatMul", ["x", "wr"], ["logits"]))
    else:
        inputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", e]))
    nodes.append(helper.make_node(op, node_inputs, ["moe_y" if shared else "y"], domain="com.microsoft", **attrs))
    if shared:
        for name, shape in (("s_gate", (h, shared)), ("s_up", (h, shared)), ("s_down", (shared, h)), ("s_g", (h, 1))):
            inits.append(numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name))
        nodes += [helper.make_node("MatMul", ["x", "s_gate"], ["sg"]), helper.make_node("Sigmoid", ["sg"], ["sg_sig"]),
                  helper.make_node("Mul", ["sg", "sg_sig"], ["sg_silu"]), helper.make_node("MatMul", ["x", "s_up"], ["su"]),
                  helper.make_node("Mul", ["sg_silu", "su"], ["s_act"]),
                  helper.make_node("MatMul", ["s_act", "s_down"], ["s_out"]),
                  helper.make_node("MatMul", ["x", "s_g"], ["s_logit"]), helper.make_node("Sigmoid", ["s_logit"], ["s_w"]),
                  helper.make_node("Mul", ["s_w", "s_out"], ["s_y"]), helper.make_node("Add", ["moe_y", "s_y"], ["y"])]
    graph = helper.make_graph(nodes, op.lower(), inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, path)


bf16_round = oracle.round_bf16  # what `--weights=bf16` stores (check_linear_e2e uses it too)


def bf16_reference_model(path, out, rounding=None):
    """A copy of an ONNX Runtime MoE model with its expert weights (w1, w2) rounded to bf16 (or by `rounding`):
    ONNX Runtime on it is the exact reference for the bf16 artifact (the router stays f32 in both)."""
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name in ("w1", "w2"):
            init.CopyFrom(numpy_helper.from_array((rounding or bf16_round)(numpy_helper.to_array(init)), init.name))
    onnx.save(m, out)


def fp16_round(a):
    """f32 -> nearest IEEE half (ties to even), back as f32: what `moec compile --weights=fp16` stores."""
    return np.asarray(a, np.float32).astype(np.float16).astype(np.float32)


def quantize_rows(w, bits, block=32, scale_dtype=np.float16):
    """What `moec compile --weights=int8|int4` stores, dequantized: per row, blocks of `block` along the last
    (reduction) axis, scale = max|w| / qmax rounded to f16 (as the expert and linear weights moec quantises
    store it: MOERT_QSCALE_BYTES; scale_dtype=np.float32 keeps the f32 scale, as token-embedding tables do),
    q = round-half-even(w / scale) clipped, w' = q * scale."""
    w = np.asarray(w, np.float32)
    qmax, qmin = (127, -127) if bits == 8 else (7, -8)
    out = np.empty_like(w)
    for b0 in range(0, w.shape[-1], block):
        blk = w[..., b0:b0 + block]
        scale = np.max(np.abs(blk), axis=-1, keepdims=True) / np.float32(qmax)
        scale = np.minimum(scale, np.float32(65504)).astype(scale_dtype).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(scale > 0, np.clip(np.round(blk / scale), qmin, qmax), 0).astype(np.float32)
        out[..., b0:b0 + block] = q * scale
    return out


round_int8 = oracle.round_int8  # what --activations=int8 does to a row (check_linear_e2e uses it too)


def activations_reference(path, k, normalize, **rounding):
    """The oracle on an ONNX Runtime swiglu MoE model with given logits (`path`: its weights as moec stores
    them, see quantized_reference_model / bf16_reference_model) with rounded activations (`rounding`, see
    tests/reference/sparse_moe.py): int8_below=math.inf, int8 activations, every expert multiplies its tokens
    and its fc2 inputs rounded to int8 (these layers' fc2 is stored in panels, C::PANELS in
    kernels/cpu/sparse_moe.h, so token tiles of any size multiply integers); bf16_from=16, bf16 activations,
    experts computing 16 tokens or more (GEMM tiles) round them to bf16. Returns (output, slack): an fc2
    input the oracle finds within a hair of a rounding tie may round the other way in the kernel's f32
    arithmetic, and slack bounds what that changes (zero elsewhere)."""
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}

    def reference(d):
        return oracle.sparse_moe(d["x"], d["logits"], w["w1"], w["w2"], k=k, router_kind="logits",
                                 normalize=bool(normalize), activation="swiglu", gated_layout="interleaved",
                                 fc1_bias=w.get("b1"), fc2_bias=w.get("b2"), return_slack=True, **rounding)
    return reference


def quantized_reference_model(path, out, bits):
    """A copy of an ONNX Runtime MoE model with w1, w2 replaced by their int8/int4 round trip (see above)."""
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name in ("w1", "w2"):
            init.CopyFrom(numpy_helper.from_array(quantize_rows(numpy_helper.to_array(init), bits), init.name))
    onnx.save(m, out)


def ort_moe_fc3_cases(tmp):
    """com.microsoft.MoE with swiglu_fusion=0: the gate rows in fc1, the up rows in a separate fc3 (the form ONNX
    Runtime's GPU kernels take; its CPU kernel refuses it), against the NumPy oracle on fc1 and fc3 stacked
    (block layout)."""
    h, f, e, k = 32, 24, 4, 2
    rng = np.random.default_rng(31)
    r = lambda *shape: (rng.standard_normal(shape) * 0.3).astype(np.float32)  # noqa: E731
    w = {"w1": r(e, f, h), "b1": r(e, f), "w2": r(e, h, f), "b2": r(e, h), "w3": r(e, f, h), "b3": r(e, f)}
    name = "ort_moe/swiglu_fc3_k2_E4_H32_F24_bias_logits"
    path = os.path.join(tmp, name.replace("/", "_") + ".onnx")
    inits = [numpy_helper.from_array(a, n) for n, a in w.items()]
    save_layer(path, "MoE", ["x", "logits", "w1", "b1", "w2", "b2", "w3", "b3"], inits,
               dict(k=k, activation_type="swiglu", swiglu_fusion=0, normalize_routing_weights=1), h, e, "logits", rng)

    def feeds(t, rng):
        return {"x": rng.standard_normal((t, h)).astype(np.float32),
                "logits": rng.standard_normal((t, e)).astype(np.float32)}

    def reference(d):
        return oracle.sparse_moe(d["x"], d["logits"], np.concatenate([w["w1"], w["w3"]], axis=1), w["w2"], k=k,
                                 router_kind="logits", normalize=True, activation="swiglu", gated_layout="block",
                                 fc1_bias=np.concatenate([w["b1"], w["b3"]], axis=1), fc2_bias=w["b2"])
    yield name, path, feeds, reference


def qmoe_model(path, h, f, e, k, bits, block, router, zero_points=None, router_weights=False):
    """com.microsoft.QMoE with ONNX Runtime's own packed uint8 weights and scales; zero points 2^(bits-1), or
    (zero_points = (lo, hi)) uint8 ones drawn from [lo, hi) in the scales' shape (two 4-bit ones per byte along
    its last axis). 8-bit codes are drawn so that code - zero point fits int8 when the zero points' range
    allows it (a narrow range around 128), else from the whole byte."""
    rng = np.random.default_rng(bits * 100 + block + h + (7 if zero_points else 0))
    lo_code, hi_code = 0, 256
    if zero_points and bits == 8 and min(256, zero_points[0] + 128) - max(0, zero_points[1] - 129) >= 64:
        lo_code, hi_code = max(0, zero_points[1] - 129), min(256, zero_points[0] + 128)
    q1 = rng.integers(lo_code, hi_code, (e, 2 * f, h * bits // 8), dtype=np.uint8)
    q2 = rng.integers(lo_code, hi_code, (e, h, f * bits // 8), dtype=np.uint8)
    s1 = (rng.random((e, 2 * f) + ((h // block,) if block else ())) * 0.02).astype(np.float32)
    s2 = (rng.random((e, h) + ((f // block,) if block else ())) * 0.02).astype(np.float32)
    named = [("q1", q1), ("s1", s1), ("q2", q2), ("s2", s2)]
    node_inputs = ["x", "logits", "q1", "s1", "", "q2", "s2"]
    if zero_points:
        def zp(scales):
            z = rng.integers(zero_points[0], zero_points[1], scales.shape, dtype=np.uint8)
            if bits == 4:  # two per byte along the last axis, low nibble first
                z = np.concatenate([z, np.zeros(z.shape[:-1] + (z.shape[-1] % 2,), np.uint8)], axis=-1)
                z = (z[..., 0::2] | (z[..., 1::2] << 4)).astype(np.uint8)
            return z
        named += [("z1", zp(s1)), ("z2", zp(s2))]
        node_inputs += ["", "", "", "", "z1", "z2"]
    if router_weights:  # a graph input "rw" [T, e]: the selected experts' weights (router_probs selects)
        node_inputs += [""] * (14 - len(node_inputs)) + ["rw"]
    inits = [numpy_helper.from_array(a, n) for n, a in named]
    attrs = dict(k=k, activation_type="swiglu", swiglu_fusion=1, expert_weight_bits=bits)
    if block:
        attrs["block_size"] = block
    save_layer(path, "QMoE", node_inputs, inits, attrs, h, e, router, rng, ["rw"] if router_weights else ())


def weights_as_inputs_reference(path):
    """ONNX Runtime on `path` with its initializers turned into graph inputs (fed with the same values)."""
    m = onnx.load(path)
    weights = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for name, a in weights.items():
        m.graph.input.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                           list(a.shape)))
    del m.graph.initializer[:]
    blob = m.SerializeToString()

    def reference(d):
        import onnxruntime as ort
        return ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {**d, **weights})[0]
    return reference


def qmoe_cases(tmp):
    # Zero points: 4-bit ones any (codes minus them are int8 codes), 8-bit ones near 128 (the same) or any
    # (the weights are then dequantized to f32); docs/onnx-support.md.
    # router_weights: the experts router_probs selects weigh as they say (any sign, unnormalised).
    for bits, block, router, zps, rw in [(8, 0, "matmul", None, False), (4, 0, "logits", None, False),
                                         (4, 16, "matmul", None, False), (8, 16, "logits", None, False),
                                         (4, 0, "matmul", (0, 16), False), (4, 16, "logits", (0, 16), False),
                                         (8, 16, "matmul", (112, 144), False), (8, 0, "logits", (0, 256), False),
                                         (4, 16, "logits", None, True), (8, 0, "matmul", (0, 256), True)]:
        h, f, e = 64, 48, 4
        name = (f"ort_qmoe/int{bits}_block{block}_{router}" + (f"_zp{zps[0]}-{zps[1]}" if zps else "") +
                ("_router_weights" if rw else ""))
        path = os.path.join(tmp, name.replace("/", "_") + ".onnx")
        qmoe_model(path, h, f, e, 2, bits, block, router, zps, rw)

        def feeds(t, rng, e=e, h=h, router=router, rw=rw):
            d = {"x": rng.standard_normal((t, h)).astype(np.float32)}
            if router == "logits":
                d["logits"] = rng.standard_normal((t, e)).astype(np.float32)
            if rw:
                d["rw"] = rng.standard_normal((t, e)).astype(np.float32)
            return d

        # The reference is ONNX Runtime with the quantised weights fed as inputs: with them as initializers its
        # int8 block-wise path prepacks them and quantises the activations too (1e-2 away from the op's
        # definition, measured; int4 and per-row int8 agree either way). See docs/onnx-support.md.
        yield name, path, feeds, weights_as_inputs_reference(path)


def ort_moe_cases(tmp):
    configs = [
        dict(h=16, f=24, e=4, k=2, act="relu", normalize=1, bias=True, router="matmul"),
        dict(h=32, f=16, e=8, k=1, act="silu", normalize=0, bias=False, router="matmul"),
        dict(h=16, f=8, e=6, k=3, act="gelu", normalize=1, bias=False, router="logits"),
        dict(h=24, f=20, e=5, k=2, act="swiglu", normalize=1, bias=True, router="matmul"),
        # ONNX Runtime GenAI's layout of a Qwen2-MoE layer: router MatMul into the MoE node, a gated shared
        # expert added after it (both fused into the one dispatch; tests/e2e/ortgenai_shared_expert.test)
        dict(h=32, f=16, e=4, k=2, act="swiglu", normalize=1, bias=False, router="matmul", shared=24),
        dict(h=64, f=128, e=8, k=2, act="swiglu", normalize=1, bias=False, router="logits"),
        # token tiles past one register tile of panels (64 tokens), fc1 K blocks (H past 512, the last partial),
        # a partial column panel (H not a multiple of 16) and several dim blocks (F past 64)
        dict(h=552, f=144, e=3, k=2, act="swiglu", normalize=1, bias=True, router="matmul", tokens=[1, 3, 130]),
        # H past 2048: GEMM tiles copy fc1's rows for fewer dims than kMoeDB (48 here) and fc2's for fewer than
        # kMoeKC (113), so their copies stay within kMoePackBytes; a partial column panel (H = 2328)
        dict(h=2328, f=200, e=2, k=1, act="swiglu", normalize=1, bias=True, router="matmul", tokens=[1, 40]),
        # int8 activations' integer fc1 dot products: whole runs of 256 columns and a 64-column tail (H = 320),
        # token tiles of several tokens below a GEMM's
        dict(h=320, f=32, e=4, k=2, act="swiglu", normalize=1, bias=False, router="logits", tokens=[1, 6, 20, 70]),
        # int8 activations' integer fc2 over several super blocks of dims (kMoeFB) in a chunk, chunks starting
        # at whole input blocks; GEMM tiles reading fc2's panels (T = 40: about 20 tokens an expert)
        dict(h=64, f=2304, e=2, k=1, act="swiglu", normalize=0, bias=True, router="logits", tokens=[1, 7, 40]),
    ]
    for c in configs:
        tokens = c.pop("tokens", TOKENS)
        name = "ort_moe/{act}_k{k}_E{e}_H{h}_F{f}{b}_{router}".format(b="_bias" if c["bias"] else "", **c)
        if c.get("shared"):
            name += "_shared{}".format(c["shared"])
        path = os.path.join(tmp, name.replace("/", "_") + ".onnx")
        ort_moe_model(path, **c)

        def feeds(t, rng, c=c):
            d = {"x": rng.standard_normal((t, c["h"])).astype(np.float32)}
            if c["router"] == "logits":
                d["logits"] = rng.standard_normal((t, c["e"])).astype(np.float32)
            return d
        feeds.tokens = tokens

        yield name, path, feeds, "ort"
        # (the reference models round w1 / w2 only: a fused shared expert's weights are stored the same way)
        if (c["act"] == "swiglu" or c["bias"]) and not c.get("shared"):
            for bits in (8, 4):
                ref = path.replace(".onnx", f"_int{bits}ref.onnx")
                quantized_reference_model(path, ref, bits)
                yield name + f" (int{bits})", path, feeds, ("ort", ref, (f"--weights=int{bits}",), DRIFT[bits])
                if c["h"] % 64 == 0 and c["f"] % 32 == 0 and c["router"] == "logits":
                    # int8 activations: every expert rounds its inputs and fc2 inputs to int8 (integer fc1
                    # and fc2: decode, small token tiles and GEMM tiles): against the oracle doing the same on
                    # the same stored weights
                    yield (name + f" (int{bits}, int8 activations)", path, feeds,
                           (activations_reference(ref, c["k"], c["normalize"], int8_below=math.inf), ref,
                            (f"--weights=int{bits}", "--activations=int8"), DRIFT[bits]))
            ref = path.replace(".onnx", "_bf16ref.onnx")
            bf16_reference_model(path, ref)
            yield name + " (bf16)", path, feeds, ("ort", ref, ["--weights=bf16"], DRIFT["bf16"])
            if c["h"] % 16 == 0 and c["f"] % 16 == 0 and c["router"] == "logits" and c["act"] == "swiglu":
                # bf16 activations (experts in panels): GEMM tiles (16+ tokens an expert) round their tokens
                # and fc2 inputs to bf16 and multiply bf16 pairs; smaller ones take them as they are
                yield (name + " (bf16, bf16 activations)", path, feeds,
                       (activations_reference(ref, c["k"], c["normalize"], bf16_from=16), ref,
                        ("--weights=bf16", "--activations=bf16"), DRIFT["bf16"]))
            ref = path.replace(".onnx", "_fp16ref.onnx")
            bf16_reference_model(path, ref, fp16_round)
            yield name + " (fp16)", path, feeds, ("ort", ref, ["--weights=fp16"], DRIFT["fp16"])


def shared_expert_cases(tmp):
    """A com.microsoft.MoE layer (SiLU experts, logits given) plus an always-active SiLU MLP of its input added
    to its output, which moec folds into the dispatch as its shared expert (-moe-fuse-shared-expert). With
    int8/int4 weights and int8 activations, against the oracle on the stored weights: the shared expert takes
    every token, so T = 40 runs its integer GEMM tiles, T = 1 and 7 its decode."""
    h, f, fs, e, k = 64, 64, 96, 4, 2
    rng = np.random.default_rng(11)
    w1 = (0.3 * rng.standard_normal((e, f, h))).astype(np.float32)
    w2 = (0.3 * rng.standard_normal((e, h, f))).astype(np.float32)
    up = (0.3 * rng.standard_normal((h, fs))).astype(np.float32)  # x @ up
    down = (0.3 * rng.standard_normal((fs, h))).astype(np.float32)
    path = os.path.join(tmp, "shared_expert.onnx")
    nodes = [helper.make_node("MoE", ["x", "logits", "w1", "", "w2"], ["routed"], domain="com.microsoft", k=k,
                              activation_type="silu", normalize_routing_weights=1),
             helper.make_node("MatMul", ["x", "up"], ["u"]), helper.make_node("Sigmoid", ["u"], ["us"]),
             helper.make_node("Mul", ["u", "us"], ["a"]), helper.make_node("MatMul", ["a", "down"], ["s"]),
             helper.make_node("Add", ["routed", "s"], ["y"])]
    inits = [numpy_helper.from_array(v, n) for n, v in (("w1", w1), ("w2", w2), ("up", up), ("down", down))]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h]),
                                                helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", e])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, path)

    def feeds(t, rng):
        return {"x": rng.standard_normal((t, h)).astype(np.float32),
                "logits": rng.standard_normal((t, e)).astype(np.float32)}
    feeds.tokens = [1, 7, 40]
    for bits in (8, 4):
        def reference(d, bits=bits):
            return oracle.sparse_moe(d["x"], d["logits"], quantize_rows(w1, bits), quantize_rows(w2, bits), k=k,
                                     router_kind="logits", normalize=True, activation="silu",
                                     shared_fc1=quantize_rows(up.T, bits), shared_fc2=quantize_rows(down.T, bits),
                                     int8_below=math.inf, return_slack=True)
        yield (f"shared_expert/silu_H{h}_F{f}_Fs{fs} (int{bits}, int8 activations)", path, feeds,
               (reference, path, (f"--weights=int{bits}", "--activations=int8"), DRIFT[bits]))

    def bf16_reference(d):  # bf16 activations: the shared expert's 40 tokens and experts with 16+ round them
        r = bf16_round
        return oracle.sparse_moe(d["x"], d["logits"], r(w1), r(w2), k=k, router_kind="logits", normalize=True,
                                 activation="silu", shared_fc1=r(up.T), shared_fc2=r(down.T), bf16_from=16,
                                 return_slack=True)
    yield (f"shared_expert/silu_H{h}_F{f}_Fs{fs} (bf16, bf16 activations)", path, feeds,
           (bf16_reference, path, ("--weights=bf16", "--activations=bf16"), DRIFT["bf16"]))


def sparse_moe_cases(tmp):
    """moec.SparseMoE (docs/ops.md), checked against the NumPy oracle."""
    rng = np.random.default_rng(7)
    h, f, e = 16, 12, 6

    def arr(*shape, s=0.3):
        return (s * rng.standard_normal(shape)).astype(np.float32)

    cases = [
        ("mask_sigmoid_zero", dict(k=2, gate="sigmoid", normalize=1, scale=2.5, zero_experts=1, activation="silu"),
         dict(router=arr(h, e + 1), router_bias=arr(e + 1), fc1=arr(e, f, h), fc2=arr(e, h, f),
              mask=rng.random((e, f)) < 0.4)),
        # Expert 0 keeps every dim, so compile-time pruning gains nothing and the kernel applies the mask.
        ("mask_in_kernel", dict(k=2, activation="relu"),
         dict(router=arr(h, e), fc1=arr(e, f, h), fc2=arr(e, h, f),
              mask=np.concatenate([np.ones((1, f), bool), rng.random((e - 1, f)) < 0.5]))),
        ("predictor_keep", dict(k=2, keep=4, activation="swiglu"),
         dict(router=arr(h, e), fc1=arr(e, 2 * f, h), fc2=arr(e, h, f), pred_a=arr(e, h, 3), pred_b=arr(e, 3, f))),
        ("sigmoid_gelu_biases", dict(k=3, gate="sigmoid", activation="gelu"),
         dict(router=arr(h, e), fc1=arr(e, f, h), fc1_bias=arr(e, f), fc2=arr(e, h, f), fc2_bias=arr(e, h))),
    ]
    order = ["x", "router", "router_bias", "fc1", "fc1_bias", "fc2", "fc2_bias", "mask", "pred_a", "pred_b"]
    for name, attrs, w in cases:
        path = os.path.join(tmp, f"sparse_{name}.onnx")
        inits, names = [], []
        for key in order:
            if key == "x":
                names.append("x")
            elif key in w:
                v = w[key]
                inits.append(numpy_helper.from_array(v if v.dtype != bool else v, key))
                names.append(key)
            else:
                names.append("")
        while names[-1] == "":
            names.pop()
        node = helper.make_node("SparseMoE", names, ["y"], domain="moec", **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", h])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", h])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("moec", 1)])
        model.ir_version = 8
        onnx.save(model, path)
        kw = {k: v for k, v in attrs.items() if k not in ("activation", "keep")}
        kw["activation"] = attrs.get("activation", "swiglu")
        if "keep" in attrs:
            kw["keep"] = attrs["keep"]
        for key in ["router_bias", "fc1_bias", "fc2_bias", "mask", "pred_a", "pred_b"]:
            if key in w:
                kw[key] = w[key]

        def feeds(t, rng, h=h):
            return {"x": rng.standard_normal((t, h)).astype(np.float32)}
        # 130 tokens: experts get tiles past the 16 tokens that take the GEMM path (mask and biases included)
        feeds.tokens = TOKENS + [130]

        def reference(d, w=w, kw=kw):
            return oracle.sparse_moe(d["x"], w["router"], w["fc1"], w["fc2"], **kw)

        yield f"sparse_moe/{name}", path, feeds, reference


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moec", required=True)
    ap.add_argument("--moert", required=True)
    ap.add_argument("--cpu", default="x86-64-v3")
    ap.add_argument("--only", default="", help="run only the cases whose name contains one of these (comma-separated)")
    args = ap.parse_args()
    failures = total = 0
    with tempfile.TemporaryDirectory() as tmp:
        cases = (list(transformers_cases()) + list(ort_moe_cases(tmp)) + list(ort_moe_fc3_cases(tmp)) +
                 list(shared_expert_cases(tmp)) + list(qmoe_cases(tmp)) +
                 list(sparse_moe_cases(tmp)))
        for name, model, feeds, reference in cases:
            if not any(part in name for part in args.only.split(",")):
                continue
            total += 1
            artifact = os.path.join(tmp, name.replace("/", "_") + ".moex")
            errors = []
            extra, ref_model = (), model
            drift, drifts = None, []
            if isinstance(reference, tuple):  # ("ort" or a reference, reference model, moec flags, bound vs `model`)
                reference, ref_model, extra, drift = reference
            try:
                compile_model(args, model, artifact, extra)
                rng = np.random.default_rng(3)
                tokens = getattr(feeds, "tokens", TOKENS)
                for t in tokens:
                    d = feeds(t, rng)
                    got = moert_run(args, artifact, d, tmp)
                    if ref_model is not None:  # else only the stated bound against the fp32 model
                        want = ort_run(ref_model, d) if reference == "ort" else reference(d)
                        want, slack = want if isinstance(want, tuple) else (want, 0.0)
                        if got.shape != np.asarray(want).shape:
                            errors.append(f"T={t}: shape {got.shape}, reference {np.asarray(want).shape}")
                            continue
                        errors.append(rel_error(got, want, slack))
                    if drift is not None:
                        d_err = rel_error(got, ort_run(model, d))
                        drifts.append(d_err)
                        if not d_err <= drift:
                            errors.append(f"T={t}: {d_err:.2e} from the fp32 model, over the stated {drift:g}")
            except RuntimeError as e:
                errors = [str(e)]
            bad = [x for x in errors if isinstance(x, str) or not x <= TOLERANCE]
            worst = max((x for x in errors if not isinstance(x, str)), default=0.0)
            what = f"max rel error {worst:.2e}" if ref_model is not None else "(stated bound only)"
            if drifts:
                what += f", {max(drifts):.2e} from fp32 (bound {drift:g})"
            print(f"{'ok  ' if not bad else 'FAIL'} {name:48s} T={getattr(feeds, 'tokens', TOKENS)} {what}")
            for x in bad:
                print(f"       {x if isinstance(x, str) else f'{x:.2e} > {TOLERANCE}'}")
            failures += bool(bad)
    print(f"{total - failures}/{total} cases match their reference within {TOLERANCE:g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

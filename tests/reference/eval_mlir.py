"""Evaluates moec's graph IR (a printed MLIR module in generic form) with NumPy, float64.

An independent reference for what moec's passes produce: `onnx.*` ops are computed from the ONNX operator
spec, `moe.sparse_moe` by the oracle in sparse_moe.py (from the op's contract, not from moec's code).
Only the ops moec's fused graphs keep are supported; any other op is an error naming it.

    python3 eval_mlir.py MODULE.mlir input.npy ...     (prints each output's shape)

Print the module with `moec-opt --mlir-print-op-generic` (weights included: `moec compile
--elide-weights-larger-than=-1`).
"""
import math
import re
import sys

import numpy as np

import attention as attention_oracle
import sparse_moe as oracle

_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32,
           "i8": np.int8, "ui8": np.uint8, "i1": np.bool_}


def _tensor_type(text):
    """'tensor<2x?x32xf32>' -> ([2, -1, 32], 'f32')."""
    m = re.fullmatch(r"tensor<(.*)>", text.strip())
    parts = m.group(1).split("x")
    return [(-1 if p == "?" else int(p)) for p in parts[:-1]], parts[-1]


def _split_top(text, sep=","):
    """Splits at `sep` outside brackets and quotes."""
    out, depth, cur, quote = [], 0, "", False
    for ch in text:
        if ch == '"':
            quote = not quote
        if not quote:
            if ch in "([{<":
                depth += 1
            elif ch in ")]}>":
                depth -= 1
            elif ch == sep and depth == 0:
                out.append(cur)
                cur = ""
                continue
        cur += ch
    if cur.strip():
        out.append(cur)
    return [c.strip() for c in out]


def _dense(literal, shape, dtype, resources):
    np_type = _DTYPES[dtype]
    full = [d for d in shape]
    m = re.fullmatch(r'dense_resource<([^>]+)>', literal)
    if m:
        raw = bytes.fromhex(resources[m.group(1)][2:])[4:]  # 4-byte alignment header
        return np.frombuffer(raw, dtype=np_type).reshape(full).copy()
    m = re.fullmatch(r'dense<"0x([0-9A-Fa-f]*)">', literal)
    if m:
        data = np.frombuffer(bytes.fromhex(m.group(1)), dtype=np_type)
        n = int(np.prod(full)) if full else 1
        return (np.full(n, data[0]) if data.size == 1 else data).reshape(full).astype(np_type)
    m = re.fullmatch(r"dense<(.*)>", literal, re.S)
    body = m.group(1).replace("true", "1").replace("false", "0").replace("inf", "float('inf')")
    value = np.array(eval(body, {"float": float}), dtype=np.float64)
    if value.ndim == 0 and full:
        value = np.full(full, value)
    return value.reshape(full).astype(np_type)


def _attr(props, name, default=None):
    m = re.search(r"(?:^|[{,<] *)" + re.escape(name) + r' = (#[\w.]+<[^>]*>|"[^"]*"|[^,}]+)', props)
    if not m:
        return default
    v = m.group(1).strip()
    v = re.sub(r" : [a-z0-9]+$", "", v)
    em = re.fullmatch(r"#moe\.[a-z_]+<(\w+)>", v)
    if em:
        return em.group(1)
    if v in ("true", "false"):
        return v == "true"
    if v.startswith('"'):
        return v.strip('"')
    try:
        return int(v)
    except ValueError:
        return float(v)


def _reshape(x, shape, allowzero):
    shape = [int(s) for s in shape]
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _axes(vals, op, i):
    return tuple(int(a) for a in vals[op["operands"][i]]) if len(op["operands"]) > i else None


def _gelu(x, approximate):
    return oracle.gelu_tanh(x) if approximate == "tanh" else oracle.gelu(x)


ONNX = {
    "onnx.Add": lambda v, a, p: v[0] + v[1],
    "onnx.Sub": lambda v, a, p: v[0] - v[1],
    "onnx.Mul": lambda v, a, p: v[0] * v[1],
    "onnx.Div": lambda v, a, p: v[0] / v[1],
    "onnx.Pow": lambda v, a, p: np.power(v[0], v[1]),
    "onnx.MatMul": lambda v, a, p: np.matmul(v[0], v[1]),
    "onnx.Sqrt": lambda v, a, p: np.sqrt(v[0]),
    "onnx.Reciprocal": lambda v, a, p: 1.0 / v[0],
    "onnx.Sigmoid": lambda v, a, p: oracle.sigmoid(v[0]),
    "onnx.Tanh": lambda v, a, p: np.tanh(v[0]),
    "onnx.Relu": lambda v, a, p: np.maximum(v[0], 0),
    "onnx.Gelu": lambda v, a, p: _gelu(v[0], _attr(p, "approximate", "none")),
    "onnx.Identity": lambda v, a, p: v[0],
}


def evaluate(text, inputs):
    """Runs the module's single function on `inputs` (list of arrays); returns its results."""
    resources = dict(re.findall(r'^\s*([\w.$-]+): "(0x[0-9A-Fa-f]*)"', text, re.M))
    env = {}
    header = re.search(r"\^bb0\((.*?)\):", text)
    args = [a.split(":")[0].strip() for a in _split_top(header.group(1))] if header else []
    if len(args) != len(inputs):
        raise ValueError(f"the function takes {len(args)} inputs, {len(inputs)} given")
    for name, value in zip(args, inputs):
        env[name] = np.asarray(value, dtype=np.float64) if np.asarray(value).dtype.kind == "f" else value
    op_re = re.compile(r'^\s*(?:(%[\w]+)(?::(\d+))? = )?"([\w.]+)"\((.*?)\)\s*(<\{.*?\}>)?\s*(\{.*\})?\s*:\s*'
                       r'\((.*?)\) -> (.*)$')
    for line in text.splitlines():
        m = op_re.match(line)
        if not m:
            continue
        res, nres, name, operands, props, attrs, _, rtypes = m.groups()
        props = (props or "") + (attrs or "")
        ops = [o.strip() for o in operands.split(",") if o.strip()]
        vals = [env[o] for o in ops]
        if name == "func.return":
            return vals
        rtype = rtypes.strip().strip("()")
        if name in ("arith.constant", "onnx.Constant"):
            lit = re.search(r"value = (dense(?:_resource)?<.*?>) : (tensor<[^>]*>)", props)
            shape, dtype = _tensor_type(lit.group(2))
            out = _dense(lit.group(1), shape, dtype, resources)
            env[res] = out.astype(np.float64) if out.dtype.kind == "f" else out
            continue
        if name == "onnx.Reshape":
            out = _reshape(vals[0], vals[1], _attr(props, "allowzero", 0))
        elif name == "onnx.ReduceMean" or name == "onnx.ReduceSum":
            f = np.mean if name.endswith("Mean") else np.sum
            out = f(vals[0], axis=_axes(env, {"operands": ops}, 1), keepdims=bool(_attr(props, "keepdims", 1)))
        elif name == "onnx.Softmax":
            x = vals[0]
            axis = _attr(props, "axis", -1)
            e = np.exp(x - x.max(axis=axis, keepdims=True))
            out = e / e.sum(axis=axis, keepdims=True)
        elif name == "onnx.Gemm":
            a, b = vals[0], vals[1]
            if _attr(props, "transA", 0):
                a = a.T
            if _attr(props, "transB", 0):
                b = b.T
            out = _attr(props, "alpha", 1.0) * (a @ b)
            if len(vals) > 2:
                out = out + _attr(props, "beta", 1.0) * vals[2]
        elif name == "moe.sparse_moe":
            out = _sparse_moe(vals, props)
        elif name == "moe.linear":
            out = _linear(vals, props)
            if nres:  # several results: the columns split in order (the contract in ir/MoEOps.td)
                widths = [int(w) for w in re.findall(r"tensor<(?:[?\d]+x)*(\d+)x\w+>", rtype)]
                out = tuple(np.split(out, np.cumsum(widths)[:-1], axis=-1))
        elif name == "moe.norm":
            out = oracle.norm_rows(vals[0], _attr(props, "kind"), vals[1], vals[2] if len(vals) > 2 else None,
                                   _attr(props, "epsilon", 1e-5))
        elif name == "moe.rotary":
            unit = lambda a: re.search(r"[{,] *" + a + r" *[,}]", props) is not None
            out = attention_oracle.rotary(vals[0], vals[1], vals[2], _attr(props, "rotary_dim"),
                                          interleaved=unit("interleaved"), seq_axis=_attr(props, "seq_axis", 2),
                                          transpose=unit("transpose"), norm_weight=vals[3] if len(vals) > 3 else None,
                                          norm_epsilon=_attr(props, "norm_epsilon", 1e-6),
                                          deinterleave=unit("deinterleave"))
        elif name == "onnx.TopK":  # (values, indices); ties: the lower index first, as ONNX says
            x, k = vals[0], int(np.asarray(vals[1]).reshape(-1)[0])
            axis = _attr(props, "axis", -1)
            key = -x if _attr(props, "largest", 1) else x
            idx = np.take(np.argsort(key, axis=axis, kind="stable"), np.arange(k), axis=axis)
            out = (np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64))
        elif name == "onnx.Shape":  # the shape computations around a fused block (x.reshape(-1, H))
            shape = np.array(np.shape(vals[0]), np.int64)
            out = shape[_attr(props, "start", 0):_attr(props, "end", len(shape))]
        elif name == "onnx.Gather":
            out = np.take(vals[0], np.asarray(vals[1], np.int64), axis=_attr(props, "axis", 0))
        elif name == "onnx.Concat":
            out = np.concatenate([np.asarray(v) for v in vals], axis=_attr(props, "axis"))
        elif name in ("onnx.Unsqueeze", "onnx.Squeeze"):
            out = np.asarray(vals[0])
            axes = sorted(int(a) % (out.ndim + (len(vals[1]) if name.endswith("Unsqueeze") else 0))
                          for a in np.asarray(vals[1]).reshape(-1))
            out = np.expand_dims(out, tuple(axes)) if name.endswith("Unsqueeze") else np.squeeze(out, tuple(axes))
        elif name in ONNX:
            out = ONNX[name](vals, None, props)
        else:
            raise NotImplementedError(f"eval_mlir: op '{name}' is not supported by the reference evaluator")
        if isinstance(out, tuple):  # %r:n = ...: results %r#0 .. %r#(n-1)
            for i, o in enumerate(out):
                env[f"{res}#{i}"] = o
        else:
            env[res] = out
    raise ValueError("no func.return found")


_SEGMENTS = ["input", "router", "router_bias", "selection_bias", "fc1", "fc1_bias", "fc1_scales", "fc2", "fc2_bias",
             "fc2_scales", "mask", "pred_a", "pred_b", "norm_weight", "norm_bias", "shared_fc1", "shared_fc2",
             "shared_gate", "residual"]


def _linear(vals, props):
    """moe.linear from its contract (ir/MoEOps.td): norm(input) x W (+ bias) (+ residual), W [K, N] f32."""
    seg = [int(s) for s in re.search(r"operandSegmentSizes = array<i32: ([^>]*)>", props).group(1).split(",")]
    named, i = {}, 0
    for name, count in zip(["input", "weight", "scales", "zero_points", "bias", "residual", "norm_weight",
                            "norm_bias"], seg):
        if count:
            named[name] = vals[i]
            i += 1
    if _attr(props, "weight_quant") is not None:
        raise NotImplementedError("eval_mlir: moe.linear with imported quantised weights")
    norm = _attr(props, "norm", "none")
    x = oracle.norm_rows(named["input"], None if norm == "none" else norm, named.get("norm_weight"),
                         named.get("norm_bias"), _attr(props, "norm_epsilon", 1e-5))
    out = x @ np.asarray(named["weight"], np.float64)
    if "bias" in named:
        out = out + named["bias"]
    if "residual" in named:
        out = out + named["residual"]
    return out


def _sparse_moe(vals, props):
    seg = [int(s) for s in re.search(r"operandSegmentSizes = array<i32: ([^>]*)>", props).group(1).split(",")]
    named, i = {}, 0
    for name, count in zip(_SEGMENTS, seg):
        if count:
            named[name] = vals[i]
            i += 1
    if _attr(props, "fc1_quant") is not None or _attr(props, "fc2_quant") is not None:
        raise NotImplementedError("eval_mlir: quantised moe.sparse_moe")
    norm = _attr(props, "norm", "none")
    limit = _attr(props, "activation_limit")
    return oracle.sparse_moe(
        named["input"], named["router"], named["fc1"], named["fc2"], k=_attr(props, "k"),
        router_kind=_attr(props, "router_kind", "linear"), gate=_attr(props, "gate", "softmax"),
        normalize=_attr(props, "normalize", False), scale=_attr(props, "scale", 1.0),
        zero_experts=_attr(props, "zero_experts", 0), activation=_attr(props, "activation"),
        gated_layout=_attr(props, "gated_layout", "block"), alpha=_attr(props, "activation_alpha", 1.0),
        beta=_attr(props, "activation_beta", 0.0), limit=limit, router_bias=named.get("router_bias"),
        selection_bias=named.get("selection_bias"), expert_groups=_attr(props, "expert_groups", 1),
        group_topk=_attr(props, "group_topk"), group_score=_attr(props, "group_score", "top2_sum"),
        jitter_eps=_attr(props, "jitter_eps"), fc1_bias=named.get("fc1_bias"), fc2_bias=named.get("fc2_bias"),
        mask=named.get("mask"), pred_a=named.get("pred_a"), pred_b=named.get("pred_b"), keep=_attr(props, "keep"),
        norm=None if norm == "none" else norm, norm_weight=named.get("norm_weight"), norm_bias=named.get("norm_bias"),
        norm_epsilon=_attr(props, "norm_epsilon", 1e-5), shared_fc1=named.get("shared_fc1"),
        shared_fc2=named.get("shared_fc2"), shared_gate=named.get("shared_gate"), residual=named.get("residual"))


if __name__ == "__main__":
    text = open(sys.argv[1]).read()
    outs = evaluate(text, [np.load(p) for p in sys.argv[2:]])
    for o in outs:
        print(o.shape)

"""NumPy reference for moe.sparse_moe / moec.SparseMoE: the oracle for moec's MoE tests.

Written from the op's contract (ir/MoEOps.td, docs/ops.md), computed in float64, one token at a time, with
no attempt at speed. Ties in every top-k go to the lower index.
"""
import math

import numpy as np

_erf = np.vectorize(math.erf)


def gelu(a):
    return 0.5 * a * (1.0 + _erf(a / math.sqrt(2.0)))


def gelu_tanh(a):
    return 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3)))


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def silu(a):
    return a * sigmoid(a)


def topk_indices(values, k):
    """Indices of the k largest values, largest first; ties go to the lower index."""
    return np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:k]


def dequantize(q, scales, bits, block_size):
    """ONNX Runtime QMoE's symmetric integer weights: [E, rows, K*bits/8] uint8 -> [E, rows, K] float64."""
    q = np.asarray(q, dtype=np.uint8)
    if bits == 4:
        lo, hi = q & 0x0F, q >> 4
        vals = np.stack([lo, hi], axis=-1).reshape(q.shape[0], q.shape[1], q.shape[2] * 2)
    elif bits == 8:
        vals = q
    else:
        raise ValueError(f"bits {bits}")
    centred = vals.astype(np.float64) - float(1 << (bits - 1))
    s = np.asarray(scales, dtype=np.float64)
    if block_size == 0:
        return centred * s[:, :, None]
    return centred * np.repeat(s, block_size, axis=2)


def _activation(h, activation, f, gated_layout, alpha, beta, limit):
    if activation in ("swiglu", "geglu"):
        if gated_layout == "block":
            g, u = h[:f], h[f:]
        else:
            g, u = h[0::2], h[1::2]
        if limit is not None:
            g = np.minimum(g, limit)
            u = np.clip(u, -limit, limit)
        if activation == "swiglu":
            return g * sigmoid(alpha * g) * (u + beta)
        return gelu(g) * (u + beta)
    return {"identity": lambda a: a, "relu": lambda a: np.maximum(a, 0.0), "gelu": gelu, "gelu_tanh": gelu_tanh,
            "silu": silu}[activation](h)


def _gated_rows(dims, f, activation, gated_layout):
    """fc1 rows that hold hidden dims `dims`, in the order _activation expects."""
    if activation not in ("swiglu", "geglu"):
        return dims
    if gated_layout == "block":
        return np.concatenate([dims, dims + f])
    return np.stack([2 * dims, 2 * dims + 1], axis=1).reshape(-1)


def norm_rows(x, norm, weight, bias=None, eps=1e-5):
    """The norm in front of a dispatch (moe.sparse_moe's and moe.linear's `norm`) over the last axis, float64:
    "rms" x / sqrt(mean(x^2) + eps) * w; "layer" (x - mean) / sqrt(var + eps) * w (+ b); None: x."""
    x = np.asarray(x, dtype=np.float64)
    if norm == "rms":
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(weight, np.float64)
    if norm == "layer":
        c = x - x.mean(axis=-1, keepdims=True)
        x = c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + eps) * np.asarray(weight, np.float64)
        return x if bias is None else x + np.asarray(bias, np.float64)
    assert norm is None, norm
    return x


def sparse_moe(x, router, fc1, fc2, *, k=1, router_kind="linear", gate="softmax", normalize=False, scale=1.0,
               zero_experts=0, activation="swiglu", gated_layout="block", alpha=1.0, beta=0.0, limit=None,
               router_bias=None, selection_bias=None, expert_groups=1, group_topk=None, fc1_bias=None,
               fc2_bias=None, mask=None, pred_a=None, pred_b=None, keep=None, norm=None, norm_weight=None,
               norm_bias=None, norm_epsilon=1e-5, shared_fc1=None, shared_fc2=None, shared_gate=None,
               residual=None):
    """Y[t] = sum over chosen experts e < E of w[t, e] * (fc2[e][:, D] @ act(fc1[e][D, :] @ x[t] + b1) + b2)
    (+ shared expert + residual), with x = norm(input) when `norm` is "rms" or "layer"."""
    x = norm_rows(x, norm, norm_weight, norm_bias, norm_epsilon)
    fc1 = np.asarray(fc1, dtype=np.float64)
    fc2 = np.asarray(fc2, dtype=np.float64)
    n_tokens, _ = x.shape
    n_experts, _, f = fc2.shape
    n_cols = n_experts + zero_experts
    logits = x @ np.asarray(router, dtype=np.float64) if router_kind == "linear" else np.asarray(router, np.float64)
    if router_bias is not None:
        logits = logits + np.asarray(router_bias, dtype=np.float64)
    assert logits.shape == (n_tokens, n_cols)
    out = np.zeros_like(x)
    for t in range(n_tokens):
        if gate == "softmax":
            e = np.exp(logits[t] - logits[t].max())
            scores = e / e.sum()
        else:
            scores = sigmoid(logits[t])
        choice = scores + (np.asarray(selection_bias, np.float64) if selection_bias is not None else 0.0)
        if expert_groups > 1:
            per = n_cols // expert_groups
            grouped = choice.reshape(expert_groups, per)
            top2 = -np.sort(-grouped, axis=1)[:, : min(2, per)].sum(axis=1)
            keep_groups = topk_indices(top2, group_topk)
            allowed = np.zeros(n_cols, dtype=bool)
            for g in keep_groups:
                allowed[g * per:(g + 1) * per] = True
            choice = np.where(allowed, choice, -np.inf)
        chosen = topk_indices(choice, k)
        w = scores[chosen]
        if normalize:
            w = w / w.sum()
        w = w * scale
        for e_idx, weight in zip(chosen, w):
            if e_idx >= n_experts:
                continue  # zero expert: takes a slot and a share of the weight, adds nothing
            if pred_a is not None:
                dim_scores = (x[t] @ np.asarray(pred_a[e_idx], np.float64)) @ np.asarray(pred_b[e_idx], np.float64)
                dims = np.sort(topk_indices(dim_scores, keep))
            elif mask is not None:
                dims = np.nonzero(np.asarray(mask[e_idx]))[0]
            else:
                dims = np.arange(f)
            rows = _gated_rows(dims, f, activation, gated_layout)
            h = fc1[e_idx][rows] @ x[t]
            if fc1_bias is not None:
                h = h + np.asarray(fc1_bias, np.float64)[e_idx][rows]
            a = _activation(h, activation, len(dims), gated_layout, alpha, beta, limit)
            y = fc2[e_idx][:, dims] @ a
            if fc2_bias is not None:
                y = y + np.asarray(fc2_bias, np.float64)[e_idx]
            out[t] += weight * y
    if shared_fc1 is not None:
        s1, s2 = np.asarray(shared_fc1, np.float64), np.asarray(shared_fc2, np.float64)
        fs = s2.shape[1]
        for t in range(n_tokens):
            y = s2 @ _activation(s1 @ x[t], activation, fs, gated_layout, alpha, beta, limit)
            if shared_gate is not None:
                y = y * sigmoid(x[t] @ np.asarray(shared_gate, np.float64))
            out[t] += y
    if residual is not None:
        out = out + np.asarray(residual, np.float64)
    return out

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


# Rounding ties: an fc2 input within this many int8 steps of a half step may round either way in a kernel
# that computes it in f32 (its f32 sums differ from these float64 ones by about 1e-6 relative; a step is 1/127
# of the block's largest value).
TIE_WINDOW = 1e-3


def round_int8(x, block=32):
    """Rows rounded to int8 as `--activations=int8` rounds them (kernels/cpu/moert_kernel_abi.h): per block of
    `block` features along the last axis q = round-half-even(x * (127 / max|x|)) in f32, x = q * max|x| / 127."""
    x = np.asarray(x, np.float32)
    out = np.empty_like(x)
    for k0 in range(0, x.shape[-1], block):
        b = x[..., k0:k0 + block]
        amax = np.max(np.abs(b), axis=-1, keepdims=True)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
        out[..., k0:k0 + block] = np.rint(b * inv) * (amax / np.float32(127))
    return out


def round_bf16(x):
    """f32 -> nearest bf16 (ties to even; moert_f32_to_bf16 in kernels/cpu/moert_kernel_abi.h), back as f32:
    what `--weights=bf16` stores and `--activations=bf16` does to an input."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


def bf16_tie(c):
    """Which f32 values lie within TIE_WINDOW of a bf16 step of a rounding tie (a kernel computing them in f32
    may round them the other way), and the step (one bf16 unit in the last place) of each."""
    c32 = np.asarray(c, np.float32)
    u = c32.view(np.uint32)
    frac = (u & 0xFFFF).astype(np.float64) / 65536.0
    step = np.abs((u & 0xFFFF0000).view(np.float32).astype(np.float64)) * 2.0 ** -7
    return np.abs(frac - 0.5) < TIE_WINDOW, step


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
               router_bias=None, selection_bias=None, expert_groups=1, group_topk=None, group_score="top2_sum", jitter_eps=None, fc1_bias=None,
               fc2_bias=None, mask=None, pred_a=None, pred_b=None, keep=None, norm=None, norm_weight=None,
               norm_bias=None, norm_epsilon=1e-5, shared_fc1=None, shared_fc2=None, shared_gate=None,
               residual=None, int8_below=None, bf16_from=None, return_slack=False):
    """Y[t] = sum over chosen experts e < E of w[t, e] * (fc2[e][:, D] @ act(fc1[e][D, :] @ x[t] + b1) + b2)
    (+ shared expert + residual), with x = norm(input) when `norm` is "rms" or "layer".

    int8_below=n: int8 activations (`moec --activations=int8` on int8/int4 weights): an expert computing fewer
    than n of the call's tokens (the shared expert: fewer than n tokens in the call; math.inf: every expert, as
    moec does where fc2 is stored in panels) multiplies fc1 by its tokens rounded to int8 (round_int8 of x)
    and fc2 by its input, w[t, e] * act(...) over all F dims (0 where not kept), rounded the same way per block
    of 32 dims. With return_slack the result is (Y, slack): slack[t, h]
    bounds what rounding an fc2 input within TIE_WINDOW of a tie the other way would change in Y[t, h] (one
    step of its block, amax / 127, times |fc2[e][h, f]|), zero where there are no such ties.

    bf16_from=n: bf16 activations (`moec --activations=bf16` on bf16 experts in panels): an expert computing
    at least n of the call's tokens (the shared expert: a call of at least n tokens) multiplies fc1 by its
    tokens rounded to bf16 and fc2 by its input rounded to bf16 (round_bf16); slack as above, one bf16 step."""
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
    slack = np.zeros_like(x)
    xr = round_int8(x).astype(np.float64) if int8_below else x
    xb = round_bf16(x).astype(np.float64) if bf16_from else x

    def round_bf16_fc2(t, c, w2):
        near, step = bf16_tie(c)
        for j in np.nonzero(near)[0]:
            slack[t] += step[j] * np.abs(w2[:, j])
        return round_bf16(c).astype(np.float64)

    def round_fc2(t, c, w2):
        c32 = np.asarray(c, np.float32)
        for k0 in range(0, len(c32), 32):
            b = c32[k0:k0 + 32]
            amax = np.max(np.abs(b))
            if amax > 0:
                v = b * (np.float32(127) / amax)
                near = np.abs(np.abs(v - np.floor(v)) - 0.5) < TIE_WINDOW
                for j in np.nonzero(near)[0]:
                    slack[t] += float(amax) / 127 * np.abs(w2[:, k0 + j])
        return round_int8(c32).astype(np.float64)
    routes = []
    for t in range(n_tokens):
        if gate == "softmax":
            e = np.exp(logits[t] - logits[t].max())
            scores = e / e.sum()
        elif gate in ("identity", "sparsemixer"):  # the logits are the routing weights / sparsemixer's input
            scores = logits[t].copy()
        else:
            scores = sigmoid(logits[t])
        choice = scores + (np.asarray(selection_bias, np.float64) if selection_bias is not None else 0.0)
        if expert_groups > 1:
            per = n_cols // expert_groups
            grouped = choice.reshape(expert_groups, per)
            if group_score == "max":
                gscore = grouped.max(axis=1)
            else:  # top2_sum
                gscore = -np.sort(-grouped, axis=1)[:, : min(2, per)].sum(axis=1)
            keep_groups = topk_indices(gscore, group_topk)
            allowed = np.zeros(n_cols, dtype=bool)
            for g in keep_groups:
                allowed[g * per:(g + 1) * per] = True
            choice = np.where(allowed, choice, -np.inf)
        if gate == "sparsemixer":  # PhiMoE: slot by slot, a softmax over the free experts near the best
            free = np.ones(n_cols, dtype=bool)
            chosen, w = [], []
            for _ in range(k):
                c = int(np.argmax(np.where(free, scores, -np.inf)))  # first (lowest) index of the maximum
                m = scores[c]
                with np.errstate(invalid="ignore", divide="ignore"):
                    far = (m - scores) / np.maximum(np.abs(scores), m) > 2 * jitter_eps
                z = np.sum(np.exp(scores[free & ~far] - m))
                chosen.append(c)
                w.append(1.0 / z)
                free[c] = False
            routes.append((np.array(chosen), np.array(w) * scale))
            continue
        chosen = topk_indices(choice, k)
        w = scores[chosen]
        if normalize:
            w = w / w.sum()
        routes.append((chosen, w * scale))
    counts = np.bincount([e for chosen, _ in routes for e in chosen], minlength=n_cols)
    for t, (chosen, w) in enumerate(routes):
        for e_idx, weight in zip(chosen, w):
            small = int8_below is not None and counts[e_idx] < int8_below
            large = bf16_from is not None and counts[e_idx] >= bf16_from
            xt = xr[t] if small else xb[t] if large else x[t]
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
            h = fc1[e_idx][rows] @ xt
            if fc1_bias is not None:
                h = h + np.asarray(fc1_bias, np.float64)[e_idx][rows]
            a = _activation(h, activation, len(dims), gated_layout, alpha, beta, limit)
            c = np.zeros(f)
            c[dims] = weight * a
            if small:
                c = round_fc2(t, c, fc2[e_idx])
            elif large:
                c = round_bf16_fc2(t, c, fc2[e_idx])
            out[t] += fc2[e_idx] @ c
            if fc2_bias is not None:
                out[t] += weight * np.asarray(fc2_bias, np.float64)[e_idx]
    if shared_fc1 is not None:
        s1, s2 = np.asarray(shared_fc1, np.float64), np.asarray(shared_fc2, np.float64)
        fs = s2.shape[1]
        small = int8_below is not None and n_tokens < int8_below
        large = bf16_from is not None and n_tokens >= bf16_from
        for t in range(n_tokens):
            xt = xr[t] if small else xb[t] if large else x[t]
            c = _activation(s1 @ xt, activation, fs, gated_layout, alpha, beta, limit)
            if shared_gate is not None:
                c = c * sigmoid(x[t] @ np.asarray(shared_gate, np.float64))
            if small:
                c = round_fc2(t, c, s2)
            elif large:
                c = round_bf16_fc2(t, c, s2)
            out[t] += s2 @ c
    if residual is not None:
        out = out + np.asarray(residual, np.float64)
    return (out, slack) if return_slack else out

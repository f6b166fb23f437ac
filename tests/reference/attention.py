"""NumPy reference for moe.attention: the oracle for moec's attention tests.

Written from the op's contract (ir/MoEOps.td), in float64, with no attempt at speed: query [B, Hq, S, Dk],
key [B, Hkv, T, Dk], value [B, Hkv, T, Dv], query head h reads key/value head h // (Hq // Hkv), an additive
mask broadcast to [B, Hq, S, T]. A row whose every score is -inf gives 0 with nan_to_zero, else NaN. With
sinks [Hq], exp(sinks[h]) is one more term of head h's softmax denominator that weighs no value. With
softcap c > 0 the scaled dot product is c * tanh(scale * q.k / c) before the mask is added.
"""
import numpy as np


def attention(q, k, v, mask=None, scale=None, nan_to_zero=True, sinks=None, softcap=0.0):
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    b, hq, s, dk = q.shape
    hkv, t = k.shape[1], k.shape[2]
    assert hq % hkv == 0 and k.shape == (b, hkv, t, dk) and v.shape[:3] == (b, hkv, t)
    if scale is None:
        scale = 1.0 / np.sqrt(dk)
    out = np.zeros((b, hq, s, v.shape[3]))
    m = None if mask is None else np.broadcast_to(np.asarray(mask, dtype=np.float64), (b, hq, s, t))
    g = hq // hkv
    for bi in range(b):
        for h in range(hq):
            kh, vh = k[bi, h // g], v[bi, h // g]
            for si in range(s):
                score = scale * (kh @ q[bi, h, si])
                if softcap > 0:
                    score = softcap * np.tanh(score / softcap)
                if m is not None:
                    score = score + m[bi, h, si]
                top = score.max() if t else -np.inf
                if sinks is not None:
                    sink = float(sinks[h])
                    top = max(top, sink)
                    p = np.exp(score - top)
                    out[bi, h, si] = (p / (p.sum() + np.exp(sink - top))) @ vh
                    continue
                if top == -np.inf:  # no finite score: Softmax gives NaN
                    out[bi, h, si] = 0.0 if nan_to_zero else np.nan
                    continue
                p = np.exp(score - top)
                out[bi, h, si] = (p / p.sum()) @ vh
    return out


def rotary(x, cos, sin, rotary_dim, interleaved=False, seq_axis=2, transpose=False, norm_weight=None,
           norm_epsilon=1e-6, deinterleave=False):
    """moe.rotary from its contract (ir/MoEOps.td), float64: x [B, A1, A2, D] with the positions on `seq_axis`,
    cos / sin [1 or B, S, R or R / 2]; each row optionally RMS-normalised (times norm_weight), then rotated
    (half-split pairs (i, i + R/2) or interleaved pairs (2j, 2j + 1)) over its first R dims; with `transpose`
    the output swaps axes 1 and 2; with `deinterleave` (interleaved pairs) the rotated dims are written even
    dims first, then odd dims."""
    x = np.array(x, dtype=np.float64)
    if norm_weight is not None:
        x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + norm_epsilon) * np.asarray(norm_weight, np.float64)
    r, h = rotary_dim, rotary_dim // 2
    cos, sin = (np.asarray(t, np.float64) for t in (cos, sin))
    if cos.shape[-1] == h:  # one value per pair, spread over the pair's two dims
        idx = np.arange(r) // 2 if interleaved else np.arange(r) % h
        cos, sin = cos[..., idx], sin[..., idx]
    # [Bc, S, R] against x's [B, A1, A2, R]: the positions on seq_axis, broadcast over the heads.
    cos, sin = (np.expand_dims(t, 1 if seq_axis == 2 else 2) for t in (cos, sin))
    xr = x[..., :r]
    if interleaved:
        partner = np.empty_like(xr)
        partner[..., 0::2], partner[..., 1::2] = -xr[..., 1::2], xr[..., 0::2]
    else:
        partner = np.concatenate([-xr[..., h:], xr[..., :h]], axis=-1)
    out = x.copy()
    rotated = xr * cos + partner * sin
    if deinterleave:
        assert interleaved, "deinterleave needs interleaved pairs"
        rotated = np.concatenate([rotated[..., 0::2], rotated[..., 1::2]], axis=-1)
    out[..., :r] = rotated
    return out.transpose(0, 2, 1, 3) if transpose else out

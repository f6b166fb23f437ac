"""NumPy reference for moe.attention: the oracle for moec's attention tests.

Written from the op's contract (ir/MoEOps.td), in float64, with no attempt at speed: query [B, Hq, S, Dk],
key [B, Hkv, T, Dk], value [B, Hkv, T, Dv], query head h reads key/value head h // (Hq // Hkv), an additive
mask broadcast to [B, Hq, S, T]. A row whose every score is -inf gives 0 with nan_to_zero, else NaN. With
sinks [Hq], exp(sinks[h]) is one more term of head h's softmax denominator that weighs no value.
"""
import numpy as np


def attention(q, k, v, mask=None, scale=None, nan_to_zero=True, sinks=None):
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

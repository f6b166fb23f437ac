//===- attention_gpu.h - the attention dispatch as GPU kernels ----------------===//
//
// `moec compile --target=hip|cuda` specialises these templates per attention dispatch (`moe.attention`) with
// the same config struct `C` as the CPU kernel (kernels/cpu/attention.h: HQ, HKV, DK, DV, SCALE, NAN_ZERO,
// SOFTCAP) and the same arguments (moert_attention_args, kernels/cpu/moert_kernel_abi.h: element strides per
// batch / head / position, an additive mask broadcast by strides of 0, attention sinks). Launch geometry and
// scratch: kernels/hip/moert_gpu_abi.h (moert_gpu_attn_plan).
//
//   attend, attend_bf16, attend_f16 (f32 / bf16 / fp16 keys and values; grid: row blocks, B x HKV, key
//     splits): one warp per query row. A block's rows are WARPS of the
//     S x G rows (position s, query head g of the group) of one key/value head, so the warps of a block read
//     the same keys and values (G query heads share them: one read from memory, the rest from cache). Each
//     lane holds dims lane, lane + kWarp, ... of the query and of the accumulated output: a key's score is a
//     coalesced row read and a warp sum, KU keys at a time (independent sums in flight); the softmax runs
//     online (running max m and sum l, the output rescaled when the max grows), so no S x T score matrix
//     exists. Keys are split across blocks (z) when B x HKV x row blocks are too few to fill the device
//     (decode): each split writes (output, m, l) per row to scratch and `merge` combines them.
//   merge (grid: rows / WARPS): one warp per row, the splits' partial results in split order.
//
// Semantics are the CPU kernel's: a score of -inf adds no term, an attention sink (one logit per query head)
// starts the first split's running max and sum, a row whose every score is -inf gives 0 (NAN_ZERO) or NaN.
// Keys and values are f32, bf16 or fp16 (args.kv_storage picks the kernel); int8 session caches stay on
// the CPU kernel.
// Keys are skipped for their mask as the CPU kernel skips them: a warp first finds the first and last key its
// row's mask leaves (above MOERT_ATTN_MASKED) and, when there are any, reads only that range (causal prefill:
// the keys up to the position; a sliding window: the window's).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_ATTENTION_GPU_H
#define MOERT_ATTENTION_GPU_H

#include "gpu_common.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#include "moert_kernel_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

template <class C> struct AttentionKernels {
  static constexpr int BLOCK = MOERT_GPU_BLOCK, WARPS = BLOCK / kWarp, KU = MOERT_GPU_ATTN_KU;
  static constexpr int64_t HQ = C::HQ, HKV = C::HKV, G = HQ / HKV, DK = C::DK, DV = C::DV;
  static constexpr int KL = int((DK + kWarp - 1) / kWarp), VL = int((DV + kWarp - 1) / kWarp);
  static constexpr float NEG_INF = -INFINITY;

  /// One row's result from its accumulated output (this lane's dims) and sum.
  static GPU_INLINE void finish(const float (&acc)[VL], float l, float *out) {
    const bool none = !(l > 0.0f); // every score -inf (or no keys)
    const float fill = C::NAN_ZERO ? 0.0f : __builtin_nanf(""), inv = none ? 0.0f : 1.0f / l;
#pragma unroll
    for (int i = 0; i < VL; ++i) {
      const int64_t d = laneId() + int64_t(i) * kWarp;
      if (d < DV)
        out[d] = none ? fill : acc[i] * inv;
    }
  }

  // The partial result of (row, split): DV outputs, then m and l.
  static GPU_INLINE float *partial(const moert_gpu_attention_args &ga, int64_t row, int64_t split) {
    return static_cast<float *>(ga.a.scratch) + (row * ga.splits + split) * (DV + 2);
  }

  template <class KV> static GPU_INLINE void rows(const moert_gpu_attention_args &ga) {
    const moert_attention_args &a = ga.a;
    const int64_t r = int64_t(blockX()) * WARPS + warpId(); // row of this key/value head: s * G + g
    if (r >= a.q_len * G)
      return; // (no block-wide barrier below)
    const int64_t b = blockY() / HKV, hk = blockY() % HKV, split = blockZ();
    const int64_t s = r / G, h = hk * G + r % G, lane = laneId();
    const int64_t per = (a.kv_len + ga.splits - 1) / ga.splits, tb = split * per;
    const int64_t te = tb + per < a.kv_len ? tb + per : a.kv_len;
    const float *q = a.query + b * a.q_strides[0] + h * a.q_strides[1] + s * a.q_strides[2];
    float qv[KL];
#pragma unroll
    for (int i = 0; i < KL; ++i) {
      const int64_t d = lane + int64_t(i) * kWarp;
      qv[i] = d < DK ? q[d] : 0.0f;
    }
    const KV *kb = static_cast<const KV *>(a.key) + b * a.k_strides[0] + hk * a.k_strides[1];
    const KV *vb = static_cast<const KV *>(a.value) + b * a.v_strides[0] + hk * a.v_strides[1];
    const float *mrow =
        a.mask ? a.mask + b * a.mask_strides[0] + h * a.mask_strides[1] + s * a.mask_strides[2] : nullptr;
    const bool sink = a.sinks && split == 0;
    float m = sink ? a.sinks[h] : NEG_INF, l = sink ? 1.0f : 0.0f, acc[VL];
#pragma unroll
    for (int i = 0; i < VL; ++i)
      acc[i] = 0.0f;
    const int64_t ks = a.k_strides[2], vs = a.v_strides[2], ms = a.mask_strides[3];
    int64_t t = tb, end = te;
    if (mrow) { // only the keys the mask leaves: [lo, hi] of the whole row, when it leaves any
      int lo = -int(a.kv_len), hi = -1; // (lo negated: a warp max)
      for (int64_t k = lane; k < a.kv_len; k += kWarp)
        if (!(mrow[k * ms] <= MOERT_ATTN_MASKED))
          lo = lo > -int(k) ? lo : -int(k), hi = int(k);
      lo = -warpMax(lo), hi = warpMax(hi);
      if (hi >= lo)
        t = t > lo ? t : lo, end = end < hi + 1 ? end : hi + 1;
    }
    const KV *kr = kb + t * ks, *vr = vb + t * vs;
    const float *mr = mrow ? mrow + t * ms : nullptr;
    // One key's term: score x (its dot product summed over the warp) scaled, capped, masked; online softmax.
    auto term = [&](float dot, const KV *v, const float *mk) {
      float x = dot * C::SCALE;
      if constexpr (C::SOFTCAP > 0.0f) // c tanh(x / c) = c - 2c / (e^(2x / c) + 1)
        x = C::SOFTCAP - 2.0f * C::SOFTCAP / (expf(x * (2.0f / C::SOFTCAP)) + 1.0f);
      if (mk)
        x += *mk;
      if (x == NEG_INF) // no term (the same value in every lane: a uniform branch)
        return;
      const float mnew = maxf(m, x), corr = m == NEG_INF ? 0.0f : m == mnew ? 1.0f : expf(m - mnew);
      const float p = expf(x - mnew);
#pragma unroll
      for (int i = 0; i < VL; ++i) {
        const int64_t d = lane + int64_t(i) * kWarp;
        acc[i] = acc[i] * corr + (d < DV ? p * load1(v + d) : 0.0f);
      }
      l = l * corr + p, m = mnew;
    };
    auto dotOf = [&](const KV *k) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < KL; ++i) {
        const int64_t d = lane + int64_t(i) * kWarp;
        if (d < DK)
          dot += qv[i] * load1(k + d);
      }
      return dot;
    };
    for (; t + KU <= end; t += KU, kr += KU * ks, vr += KU * vs, mr = mr ? mr + KU * ms : nullptr) {
      float sc[KU];
#pragma unroll
      for (int u = 0; u < KU; ++u)
        sc[u] = dotOf(kr + u * ks);
#pragma unroll
      for (int u = 0; u < KU; ++u)
        sc[u] = warpSum(sc[u]);
#pragma unroll
      for (int u = 0; u < KU; ++u)
        term(sc[u], vr + u * vs, mr ? mr + u * ms : nullptr);
    }
    for (; t < end; ++t, kr += ks, vr += vs, mr = mr ? mr + ms : nullptr)
      term(warpSum(dotOf(kr)), vr, mr);
    const int64_t row = (b * HKV + hk) * a.q_len * G + r;
    if (ga.splits == 1) {
      finish(acc, l, a.output + b * a.out_strides[0] + h * a.out_strides[1] + s * a.out_strides[2]);
      return;
    }
    float *part = partial(ga, row, split);
#pragma unroll
    for (int i = 0; i < VL; ++i) {
      const int64_t d = lane + int64_t(i) * kWarp;
      if (d < DV)
        part[d] = acc[i];
    }
    if (lane == 0)
      part[DV] = m, part[DV + 1] = l;
  }

  // ---- attend: grid (row blocks, B x HKV, splits), one kernel per key/value element type (one kernel
  // switching between them would hold all three's uniform values at once: SGPR spills on AMD) -------------
  static GPU_INLINE void attend(const moert_gpu_attention_args &ga) { rows<float>(ga); }
  static GPU_INLINE void attend_bf16(const moert_gpu_attention_args &ga) { rows<uint16_t>(ga); }
  static GPU_INLINE void attend_f16(const moert_gpu_attention_args &ga) { rows<_Float16>(ga); }

  // ---- merge: grid (ceil(B x HKV x S x G / WARPS)) --------------------------------------------------------
  static GPU_INLINE void merge(const moert_gpu_attention_args &ga) {
    const moert_attention_args &a = ga.a;
    const int64_t row = int64_t(blockX()) * WARPS + warpId(), perHead = a.q_len * G;
    if (row >= a.batch * HKV * perHead)
      return;
    const int64_t bh = row / perHead, r = row % perHead, b = bh / HKV, hk = bh % HKV;
    const int64_t s = r / G, h = hk * G + r % G, lane = laneId();
    float mx = NEG_INF;
    for (int64_t c = 0; c < ga.splits; ++c)
      mx = maxf(mx, partial(ga, row, c)[DV]);
    float l = 0.0f, acc[VL];
#pragma unroll
    for (int i = 0; i < VL; ++i)
      acc[i] = 0.0f;
    if (mx != NEG_INF)
      for (int64_t c = 0; c < ga.splits; ++c) {
        const float *part = partial(ga, row, c);
        if (part[DV] == NEG_INF)
          continue;
        const float w = expf(part[DV] - mx);
        l += part[DV + 1] * w;
#pragma unroll
        for (int i = 0; i < VL; ++i) {
          const int64_t d = lane + int64_t(i) * kWarp;
          if (d < DV)
            acc[i] += part[d] * w;
        }
      }
    finish(acc, l, a.output + b * a.out_strides[0] + h * a.out_strides[1] + s * a.out_strides[2]);
  }
};

} // namespace moert_gpu

#endif // MOERT_ATTENTION_GPU_H

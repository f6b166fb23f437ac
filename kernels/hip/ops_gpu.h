//===- ops_gpu.h - graph ops between dispatches, as one strided GPU kernel -----===//
//
// The ops a transformer layer has between its dispatches that only move or combine f32 elements — NumPy-
// broadcast Add / Sub / Mul / Div, Transpose, Concat — are all one index computation: each output coordinate
// reads the inputs at their own strides (0 along a broadcast dim; permuted for a transpose) and writes the
// output at its strides plus an offset (a Concat input's place). libmoert plans the strides per op step and
// launches `moert_gpu_op_strided` (kernels/hip/moert_gpu_abi.h), so such steps run on the device and their
// values stay there (runtime/src/Gpu.cpp's Residency). The row-wise fused ops moec makes of rotary embeddings
// and norms (`moec.Rotary`, `moec.Norm`) and token embeddings (`moec.Embedding`) have a kernel each here too.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_OPS_GPU_H
#define MOERT_OPS_GPU_H

#include "gpu_common.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

// f(x [, z]) of a strided op's kind (moert_gpu_op_args; the CPU ops' definitions, runtime/src/ops/
// Elementwise.cpp).
GPU_INLINE float powf(float x, float z) {
  if (z == 2.0f)
    return x * x;
  if (z == 1.0f)
    return x;
  if (z == 0.0f)
    return 1.0f;
  if (z == 0.5f && x >= 0.0f)
    return sqrtf(x);
  const float zi = __builtin_truncf(z);
  if (zi == z && (z < 0.0f ? -z : z) <= 64.0f) { // an integer exponent: repeated squaring, any sign of x
    float r = 1.0f, b = x;
    for (int e = int(z < 0.0f ? -z : z); e; e >>= 1, b *= b)
      if (e & 1)
        r *= b;
    return z < 0.0f ? 1.0f / r : r;
  }
  if (x < 0.0f)
    return __builtin_nanf("");
  return x == 0.0f ? (z > 0.0f ? 0.0f : __builtin_inff()) : exp2f(z * log2f(x));
}
GPU_INLINE float applyOp(int kind, float x, float z, float alpha, float beta) {
  switch (kind) {
  case MOERT_GPU_OP_ADD:
    return x + z;
  case MOERT_GPU_OP_SUB:
    return x - z;
  case MOERT_GPU_OP_MUL:
    return x * z;
  case MOERT_GPU_OP_DIV:
    return x / z;
  case MOERT_GPU_OP_POW:
    return powf(x, z);
  case MOERT_GPU_OP_MAX: // a NaN wins, as on the host
    return x != x || z != z ? x + z : x > z ? x : z;
  case MOERT_GPU_OP_MIN:
    return x != x || z != z ? x + z : x < z ? x : z;
  case MOERT_GPU_OP_PRELU:
    return x < 0.0f ? x * z : x;
  case MOERT_GPU_OP_NEG:
    return -x;
  case MOERT_GPU_OP_ABS:
    return x < 0.0f ? -x : x;
  case MOERT_GPU_OP_RELU:
    return x > 0.0f ? x : 0.0f;
  case MOERT_GPU_OP_EXP:
    return expf(x);
  case MOERT_GPU_OP_LOG:
    return logf(x);
  case MOERT_GPU_OP_SQRT:
    return sqrtf(x);
  case MOERT_GPU_OP_RECIPROCAL:
    return 1.0f / x;
  case MOERT_GPU_OP_SIGMOID:
    return sigmoid(x);
  case MOERT_GPU_OP_TANH:
    return tanhf(x);
  case MOERT_GPU_OP_ERF:
    return erff(x);
  case MOERT_GPU_OP_GELU_ERF:
    return geluErf(x);
  case MOERT_GPU_OP_GELU_TANH:
    return geluTanh(x);
  case MOERT_GPU_OP_SOFTPLUS: // log(1 + e^x) without overflow for large x
    return x > 0.0f ? x + logf(1.0f + expf(-x)) : logf(1.0f + expf(x));
  case MOERT_GPU_OP_SOFTSIGN:
    return x / (1.0f + (x < 0.0f ? -x : x));
  case MOERT_GPU_OP_LEAKY_RELU:
    return x < 0.0f ? alpha * x : x;
  case MOERT_GPU_OP_ELU:
    return x < 0.0f ? alpha * (expf(x) - 1.0f) : x;
  case MOERT_GPU_OP_HARD_SIGMOID:
    return maxf(0.0f, minf(1.0f, alpha * x + beta));
  case MOERT_GPU_OP_CLIP:
    return x < alpha ? alpha : x > beta ? beta : x;
  default: // MOERT_GPU_OP_COPY
    return x;
  }
}

/// An f32 value in a bf16 / fp16 cache's storage (MOERT_STORAGE_BF16 / _F16), rounded to nearest even.
GPU_INLINE uint16_t narrow(float x, int storage) {
  return storage == MOERT_STORAGE_BF16 ? moert_f32_to_bf16(x) : moert_f32_to_f16(x);
}

struct GraphOps {
  static GPU_INLINE void strided(const moert_gpu_op_args &a) {
    const int64_t step = int64_t(gridX()) * MOERT_GPU_BLOCK;
    for (int64_t i = int64_t(blockX()) * MOERT_GPU_BLOCK + threadId(); i < a.n; i += step) {
      int64_t rest = i, ia = a.a_offset, ib = 0, io = a.out_offset;
      for (int d = a.rank - 1; d >= 0; --d) { // the coordinate of element i, innermost dim first
        const int64_t c = rest % a.dims[d];
        rest /= a.dims[d];
        ia += c * a.a_strides[d], ib += c * a.b_strides[d], io += c * a.out_strides[d];
      }
      const bool binary = a.kind != MOERT_GPU_OP_COPY && a.kind < MOERT_GPU_OP_UNARY;
      const float v = applyOp(a.kind, a.a[ia], binary ? a.b[ib] : 0.0f, a.alpha, a.beta);
      if (a.out_storage == MOERT_STORAGE_F32)
        a.out[io] = v;
      else // a session cache's bf16 / fp16 rows (moert_gpu_cache_dest)
        reinterpret_cast<uint16_t *>(a.out)[io] = narrow(v, a.out_storage);
    }
  }

  // Reductions and softmax: one warp per row (moert_gpu_reduce_args).
  static GPU_INLINE void reduce(const moert_gpu_reduce_args &a) {
    constexpr int WARPS = MOERT_GPU_BLOCK / kWarp;
    const int64_t r = int64_t(blockX()) * WARPS + warpId(), lane = laneId();
    if (r >= a.rows)
      return;
    int64_t base = 0;
    for (int64_t d = a.rank - 1, rest = r; d >= 0; --d) {
      base += (rest % a.dims[d]) * a.strides[d];
      rest /= a.dims[d];
    }
    auto at = [&](int64_t j) { // the input offset of the row's j-th reduced element
      int64_t o = base;
      for (int64_t d = a.red_rank - 1; d >= 0; --d) {
        o += (j % a.red_dims[d]) * a.red_strides[d];
        j /= a.red_dims[d];
      }
      return o;
    };
    const int kind = a.kind;
    const bool extreme = kind == MOERT_GPU_RED_MAX || kind == MOERT_GPU_RED_MIN ||
                         kind == MOERT_GPU_RED_LOG_SUM_EXP || kind >= MOERT_GPU_RED_SOFTMAX;
    float m = kind == MOERT_GPU_RED_MIN ? __builtin_inff() : -__builtin_inff();
    if (extreme) {
      const bool isMin = kind == MOERT_GPU_RED_MIN;
      for (int64_t j = lane; j < a.n; j += kWarp) {
        const float v = a.x[at(j)];
        m = v != v || (isMin ? v < m : v > m) ? v : m;
      }
#pragma unroll
      for (int s = kWarp / 2; s > 0; s /= 2) { // a NaN anywhere wins
        const float o = shflXor(m, s);
        m = o != o || (isMin ? o < m : o > m) ? o : m;
      }
      if (kind == MOERT_GPU_RED_MAX || kind == MOERT_GPU_RED_MIN) {
        if (lane == 0)
          a.out[r] = m;
        return;
      }
    }
    float sum = 0.0f;
    for (int64_t j = lane; j < a.n; j += kWarp) {
      const float v = a.x[at(j)];
      sum += extreme                                                        ? expf(v - m)
             : kind == MOERT_GPU_RED_L1                                     ? (v < 0.0f ? -v : v)
             : kind == MOERT_GPU_RED_L2 || kind == MOERT_GPU_RED_SUM_SQUARE ? v * v
                                                                            : v;
    }
    sum = warpSum(sum);
    if (kind >= MOERT_GPU_RED_SOFTMAX) {
      const float inv = 1.0f / sum, logSum = logf(sum);
      for (int64_t j = lane; j < a.n; j += kWarp) {
        const int64_t o = at(j);
        const float e = a.x[o] - m;
        a.out[o] = kind == MOERT_GPU_RED_LOG_SOFTMAX ? e - logSum : expf(e) * inv;
      }
      return;
    }
    if (lane == 0)
      a.out[r] = kind == MOERT_GPU_RED_MEAN          ? (a.n ? sum / float(a.n) : 0.0f)
                 : kind == MOERT_GPU_RED_L2          ? sqrtf(sum)
                 : kind == MOERT_GPU_RED_LOG_SUM_EXP ? m + logf(sum)
                                                     : sum;
  }

  // TopK: one warp per row, k passes (moert_gpu_topk_args).
  static GPU_INLINE void topk(const moert_gpu_topk_args &a) {
    constexpr int WARPS = MOERT_GPU_BLOCK / kWarp;
    const int64_t r = int64_t(blockX()) * WARPS + warpId(), lane = laneId();
    if (r >= a.rows)
      return;
    const int64_t outer = r / a.inner, in = r % a.inner;
    const float *x = a.x + outer * a.n * a.inner + in;
    const bool largest = a.largest != 0;
    // (u, i) ranks before (w, j): the better value, or the lower index of equal ones.
    auto before = [&](float u, int64_t i, float w, int64_t j) {
      return u == w ? i < j : largest ? u > w : u < w;
    };
    float pv = 0.0f;
    int64_t pi = -1; // the last one taken (none yet)
    for (int64_t j = 0; j < a.k; ++j) {
      float bv = 0.0f;
      int bi = -1; // this lane's best after (pv, pi)
      for (int64_t i = lane; i < a.n; i += kWarp) {
        const float v = x[i * a.inner];
        if ((pi < 0 || before(pv, pi, v, i)) && (bi < 0 || before(v, i, bv, bi)))
          bv = v, bi = int(i);
      }
#pragma unroll
      for (int s = kWarp / 2; s > 0; s /= 2) {
        const float ov = shflXor(bv, s);
        const int oi = shflXor(bi, s);
        if (oi >= 0 && (bi < 0 || before(ov, oi, bv, bi)))
          bv = ov, bi = oi;
      }
      if (lane == 0) {
        const int64_t o = (outer * a.k + j) * a.inner + in;
        a.values[o] = bi >= 0 ? bv : __builtin_nanf("");
        a.indices[o] = bi;
      }
      pv = bv, pi = bi;
    }
  }

  // Conv: one thread per output element (moert_gpu_conv_args; the CPU op's sums in its order).
  static GPU_INLINE void conv(const moert_gpu_conv_args &a) {
    const int64_t step = int64_t(gridX()) * MOERT_GPU_BLOCK, cg = a.C / a.group, mg = a.M / a.group;
    int64_t outPix = 1, inPix = 1, kPix = 1;
    for (int64_t d = 0; d < a.sp; ++d)
      outPix *= a.out_dims[d], inPix *= a.in_dims[d], kPix *= a.kern[d];
    for (int64_t i = int64_t(blockX()) * MOERT_GPU_BLOCK + threadId(); i < a.n; i += step) {
      const int64_t op = i % outPix, m = (i / outPix) % a.M, b = i / (outPix * a.M), g = m / mg;
      int64_t oi[MOERT_GPU_CONV_DIMS] = {0, 0, 0};
      for (int64_t d = a.sp, r = op; d-- > 0; r /= a.out_dims[d])
        oi[d] = r % a.out_dims[d];
      float acc = a.b ? a.b[m] : 0.0f;
      for (int64_t kp = 0; kp < kPix; ++kp) {
        int64_t off = 0;
        bool inside = true;
        for (int64_t d = a.sp, r = kp; d-- > 0; r /= a.kern[d]) {
          const int64_t pos = oi[d] * a.strides[d] - a.pads[d] + (r % a.kern[d]) * a.dil[d];
          inside = inside && pos >= 0 && pos < a.in_dims[d];
        }
        if (!inside)
          continue;
        for (int64_t d = 0, div = kPix; d < a.sp; ++d) {
          div /= a.kern[d];
          const int64_t k = (kp / div) % a.kern[d];
          off = off * a.in_dims[d] + (oi[d] * a.strides[d] - a.pads[d] + k * a.dil[d]);
        }
        const float *x = a.x + (b * a.C + g * cg) * inPix + off, *w = a.w + m * cg * kPix + kp;
        for (int64_t c = 0; c < cg; ++c)
          acc += x[c * inPix] * w[c * kPix];
      }
      a.y[i] = acc;
    }
  }

  // Bytes from one device buffer to another (moert_gpu_copy_args): a staged upload inside a graph.
  static GPU_INLINE void copy(const moert_gpu_copy_args &a) {
    const int64_t step = int64_t(gridX()) * MOERT_GPU_BLOCK,
                  first = int64_t(blockX()) * MOERT_GPU_BLOCK + threadId();
    if (((reinterpret_cast<size_t>(a.src) | reinterpret_cast<size_t>(a.dst) | size_t(a.bytes)) & 3) == 0) {
      const uint32_t *src = static_cast<const uint32_t *>(a.src);
      uint32_t *dst = static_cast<uint32_t *>(a.dst);
      for (int64_t i = first; i < a.bytes / 4; i += step)
        dst[i] = src[i];
      return;
    }
    const uint8_t *src = static_cast<const uint8_t *>(a.src);
    uint8_t *dst = static_cast<uint8_t *>(a.dst);
    for (int64_t i = first; i < a.bytes; i += step)
      dst[i] = src[i];
  }

  // A session cache's append on the device: one block per new row (moert_gpu_kv_append_args).
  static GPU_INLINE void kvAppend(const moert_gpu_kv_append_args &a) {
    const int64_t blk = blockX(), i = blk % a.S, bh = blk / a.S, b = bh / a.heads;
    const int64_t first = a.first ? a.first[b] : a.past;
    const int64_t zeroFrom = first + a.S > a.past ? first + a.S : a.past;
    const float *src = a.src + (bh * a.S + i) * a.D;
    const int64_t at = (bh * a.capacity + first + i) * a.D, zero = (bh * a.capacity + a.past + i) * a.D;
    const bool clear = a.past + i >= zeroFrom;
    for (int64_t d = threadId(); d < a.D; d += MOERT_GPU_BLOCK) {
      const float x = src[d];
      if (a.storage == MOERT_STORAGE_F32) {
        static_cast<float *>(a.cache)[at + d] = x;
        if (clear)
          static_cast<float *>(a.cache)[zero + d] = 0.0f;
      } else {
        uint16_t *c = static_cast<uint16_t *>(a.cache);
        c[at + d] = narrow(x, a.storage);
        if (clear)
          c[zero + d] = 0;
      }
    }
  }

  // moec.Embedding: one block per index (moert_gpu_embed_args; the indices checked by the host).
  static GPU_INLINE void embedding(const moert_gpu_embed_args &a) {
    const int64_t j = blockX();
    int64_t r = a.idx64 ? static_cast<const int64_t *>(a.idx)[j] : static_cast<const int32_t *>(a.idx)[j];
    if (r < 0)
      r += a.rows;
    const uint8_t *row = static_cast<const uint8_t *>(a.table) + r * a.row_bytes;
    const float *scale = a.scales ? a.scales + r * a.nb : nullptr;
    float *y = a.out + j * a.h;
    for (int64_t k = threadId(); k < a.h; k += MOERT_GPU_BLOCK) {
      float v;
      if (a.storage == MOERT_STORAGE_F32)
        v = load1(reinterpret_cast<const float *>(row) + k);
      else if (a.storage == MOERT_STORAGE_BF16)
        v = load1(reinterpret_cast<const uint16_t *>(row) + k);
      else if (a.storage == MOERT_STORAGE_F16)
        v = load1(reinterpret_cast<const _Float16 *>(row) + k);
      else if (a.storage == MOERT_STORAGE_INT8)
        v = float(int8_t(row[k])) * scale[k / a.block];
      else
        v = float(int((row[k >> 1] >> ((k & 1) * 4)) & 15) - 8) * scale[k / a.block];
      y[k] = v;
    }
  }

  // moec.Rotary: one warp per row (Fused.cpp's fusedRotary, output by output); the rows of part[0], then
  // those of part[1] (each part's fields read at constant offsets: a branch, not a selected struct).
  static GPU_INLINE void rotary(const moert_gpu_rotary_launch &l) {
    constexpr int WARPS = MOERT_GPU_BLOCK / kWarp;
    const int64_t r = int64_t(blockX()) * WARPS + warpId();
    if (r < l.part[0].rows)
      rotaryRow(l.part[0], r);
    else if (r - l.part[0].rows < l.part[1].rows)
      rotaryRow(l.part[1], r - l.part[0].rows);
  }
  static GPU_INLINE void rotaryRow(const moert_gpu_rotary_args &a, int64_t r) {
    const int64_t lane = laneId();
    const int64_t D = a.D, R = a.R, h = R / 2, i2 = r % a.A2, i1 = (r / a.A2) % a.A1, b = r / (a.A1 * a.A2);
    const int64_t s = a.seq_axis == 1 ? i1 : i2;
    const float *xr = a.x + r * D;
    // The output row: [B, A2, A1, D] transposed, else the input's; or a session cache's row of (b, h, s).
    const int64_t h2 = a.seq_axis == 1 ? i2 : i1; // the head
    const int64_t y0 = a.dest.cache  ? ((b * a.dest.heads + h2) * a.dest.capacity + a.dest.past + s) * D
                       : a.transpose ? ((b * a.A2 + i2) * a.A1 + i1) * D
                                     : r * D;
    float inv = 1.0f;
    if (a.norm_weight) { // y = w * (x * (1 / sqrt(mean(x^2) + eps)))
      float ss = 0.0f;
      for (int64_t i = lane; i < D; i += kWarp)
        ss += xr[i] * xr[i];
      inv = 1.0f / sqrtf(warpSum(ss) / float(D) + a.eps);
    }
    auto xv = [&](int64_t i) { return a.norm_weight ? a.norm_weight[i] * (xr[i] * inv) : xr[i]; };
    const float *cr = a.cos + (b * a.cos_batch * a.S + s) * a.W,
                *sr = a.sin + (b * a.cos_batch * a.S + s) * a.W;
    const bool wide = a.W == R;
    for (int64_t i = lane; i < D; i += kWarp) {
      float v;
      if (i >= R) {
        v = xv(i);
      } else if (!a.interleaved) { // halves: i with i + h
        const int64_t c = i < h || wide ? i : i - h;
        v = i < h ? xv(i) * cr[c] - xv(i + h) * sr[c] : xv(i) * cr[c] + xv(i - h) * sr[c];
      } else if (!a.deinterleave) { // pairs (2j, 2j + 1)
        const int64_t c = wide ? i : i / 2;
        v = i % 2 == 0 ? xv(i) * cr[c] - xv(i + 1) * sr[c] : xv(i) * cr[c] + xv(i - 1) * sr[c];
      } else { // pair j's even result to j, its odd result to h + j
        const int64_t j = i < h ? i : i - h, c = wide ? 2 * j + (i < h ? 0 : 1) : j;
        v = i < h ? xv(2 * j) * cr[c] - xv(2 * j + 1) * sr[c] : xv(2 * j + 1) * cr[c] + xv(2 * j) * sr[c];
      }
      if (!a.dest.cache || a.dest.storage == MOERT_STORAGE_F32)
        (a.dest.cache ? static_cast<float *>(a.dest.cache) : a.out)[y0 + i] = v;
      else
        static_cast<uint16_t *>(a.dest.cache)[y0 + i] = narrow(v, a.dest.storage);
    }
  }

  // moec.Norm: one block per row (y = (x - mean) * inv * w (+ b); mean 0 for RMSNorm).
  static GPU_INLINE void norm(const moert_gpu_norm_args &a) {
    constexpr int WARPS = MOERT_GPU_BLOCK / kWarp;
    GPU_SHARED float red[WARPS];
    const int64_t r = blockX();
    const float *xr = a.x + r * a.d;
    float mean = 0.0f, inv = 1.0f;
    if (a.kind == MOERT_NORM_LAYER)
      normStats<WARPS, MOERT_NORM_LAYER>(xr, a.d, a.eps, red, mean, inv);
    else
      normStats<WARPS, MOERT_NORM_RMS>(xr, a.d, a.eps, red, mean, inv);
    for (int64_t i = threadId(); i < a.d; i += MOERT_GPU_BLOCK)
      a.out[r * a.d + i] = a.w[i] * ((xr[i] - mean) * inv) + (a.b ? a.b[i] : 0.0f);
  }
};

} // namespace moert_gpu

#endif // MOERT_OPS_GPU_H

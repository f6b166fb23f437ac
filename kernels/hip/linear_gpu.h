//===- linear_gpu.h - the linear-layer dispatch as GPU kernels -----------------===//
//
// `moec compile --target=hip|cuda` specialises these templates per linear dispatch (`moe.linear`) with the
// same config struct `C` as the CPU kernel (kernels/cpu/linear.h: K, N, the weights' storage W / QBITS /
// QBLOCK / SCALE16 / AFFINE, HAS_BIAS, NORM, EPS, NOUT, SPLIT) and reads the same packed weights: panels of
// 16 output columns, K-major, plain rows of W (bf16: 32-bit feature pairs) or 4-byte groups of int8 / int4
// codes with per-block scales (kernels/cpu/moert_kernel_abi.h, MOERT_LIN_W). Launch geometry and scratch:
// kernels/hip/moert_gpu_abi.h.
//
//   norm (a fused RMSNorm / LayerNorm, before a GEMM; one block per row): the normalised rows into scratch.
//     The GEMV normalises the rows it stages itself (each block sums its rows' squares over all of K, from
//     L2 after the first: a launch less a decode step for K x M floats read again per block).
//   gemv (M <= MOERT_GPU_LIN_GEMV_ROWS; block (panel, K split)): the split's inputs staged in shared memory;
//     each thread owns 4 of the panel's columns and walks K units (4 threads a unit: one 16-byte load of
//     f32 / int8 / int4 weights, 8 bytes of fp16, 16 bytes of bf16 pairs of which the unit's feature is one
//     half: the pair's other unit reads the same bytes, in the same warp), so a warp reads 8 consecutive
//     units of the panel and every weight is read once from memory; int8 / int4 units are scaled once per
//     unit (w = code * s + o: sum w x = s sum code x + o sum x). Warp shuffles and one shared-memory pass sum
//     the threads of a column; one split writes the result (+ bias, + residual) to its output, several write
//     partial sums.
//   reduce: the partial sums of the splits in split order (deterministic), then the epilogue.
//   gemm (more rows): 64 x 64 output tiles, 16 input features a step staged in shared memory (weights
//     widened / dequantised to f32 once per tile), on matrix cores (NVIDIA sm_80+, CDNA gfx90a / gfx942,
//     RDNA3 gfx1100: gpu_mma.h): a warp computes 16 x 16 tiles from the staged inputs and weights split into
//     three bf16 parts each (f32 accuracy).
//
// Accumulation is f32 throughout. With int8 activations (moec --activations=int8, a CPU kernel mode) the GPU
// kernels still multiply f32 inputs by the stored weights: the CPU and GPU runs of such an artifact differ by
// the inputs' rounding (about 1/254 of a block's largest input).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_LINEAR_GPU_H
#define MOERT_LINEAR_GPU_H

#include "gpu_common.h"
#include "gpu_mma.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#include "moert_kernel_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

template <class C> struct LinearKernels {
  static constexpr int BLOCK = MOERT_GPU_BLOCK, WARPS = BLOCK / kWarp, NR = MOERT_LINEAR_NR;
  static constexpr int64_t K = C::K, N = C::N, NP = (N + NR - 1) / NR;
  static constexpr int QBITS = C::QBITS;
  static constexpr int64_t FU = MOERT_GPU_LIN_UNIT(QBITS); // input features a K unit holds
  static constexpr int64_t KU = (K + FU - 1) / FU, BLK = QBITS ? C::QBLOCK : K, KB = (K + BLK - 1) / BLK;
  static constexpr bool PAIRS = !QBITS && __is_same(typename C::W, uint16_t); // bf16: feature pairs
  static constexpr int64_t PANELB =
      QBITS ? KU * NR * 4 : MOERT_LIN_PLAIN_PANEL_BYTES(K, sizeof(typename C::W), PAIRS);
  static constexpr int64_t MD = MOERT_GPU_LIN_GEMV_ROWS, UNITS = MOERT_GPU_LIN_UNITS;
  static constexpr int BM = MOERT_GPU_LIN_BM, BN = MOERT_GPU_LIN_BN, BK = MOERT_GPU_LIN_BK;
  using W = typename C::W;
  using Scale = typename moert_gpu_scale<C::SCALE16>::type;
  static_assert(BLOCK == 4 * UNITS, "4 threads a unit");
  static_assert(!QBITS || BLK % FU == 0, "quantisation blocks of whole 4-byte groups");
  static_assert(BLOCK == (BM / 4) * (BN / 4), "4 x 4 outputs a GEMM thread");

  static GPU_INLINE char *scratch(const moert_gpu_linear_args &a) { return static_cast<char *>(a.scratch); }
  // The rows the GEMM reads: the input, or the normalised rows the norm kernel wrote to scratch.
  static GPU_INLINE const float *rowsIn(const moert_gpu_linear_args &a) {
    if (C::NORM == MOERT_NORM_NONE)
      return a.input;
    moert_gpu_linear_layout l = moert_gpu_lin_layout(K, N, 1, a.rows, a.k_splits);
    return reinterpret_cast<const float *>(scratch(a) + l.x);
  }

  // ---- norm: one block per row --------------------------------------------------------------------------
  static GPU_INLINE void norm(const moert_gpu_linear_args &a) {
    GPU_SHARED float red[WARPS];
    const int tid = threadId();
    const int64_t m = blockX();
    const float *in = a.input + m * K;
    const float *nw = static_cast<const float *>(a.weights[MOERT_LIN_NORM_W]);
    const float *nb = static_cast<const float *>(a.weights[MOERT_LIN_NORM_B]);
    float mean = 0.0f, inv = 1.0f;
    normStats<WARPS, C::NORM>(in, K, C::EPS, red, mean, inv);
    moert_gpu_linear_layout l = moert_gpu_lin_layout(K, N, 1, a.rows, a.k_splits);
    float *out = reinterpret_cast<float *>(scratch(a) + l.x) + m * K;
    for (int64_t k = tid; k < K; k += BLOCK)
      out[k] =
          (in[k] - mean) * inv * nw[k] + (C::NORM == MOERT_NORM_LAYER && C::HAS_NORM_BIAS ? nb[k] : 0.0f);
  }

  // ---- the epilogue: bias, residual, the output the column belongs to ----------------------------------
  static GPU_INLINE void store(const moert_gpu_linear_args &a, int64_t m, int64_t n, float v) {
    if (C::HAS_BIAS)
      v += static_cast<const float *>(a.weights[MOERT_LIN_BIAS])[n];
    if (a.residual)
      v += a.residual[m * N + n];
    // Constant indices only (selects, no indexed parameter array: no scratch).
    float *out = a.outputs[0];
    int64_t lo = 0, width = C::SPLIT[1];
#pragma unroll
    for (int o = 1; o < C::NOUT; ++o)
      if (n >= C::SPLIT[o])
        out = a.outputs[o], lo = C::SPLIT[o], width = C::SPLIT[o + 1] - C::SPLIT[o];
    out[m * width + (n - lo)] = v;
  }

  // ---- gemv: block (panel, split) ------------------------------------------------------------------------
  // Weights of 4 columns of unit u of panel p times the unit's inputs of each row (xs[m * stride + f], f <
  // FU) added to acc[m][0..3].
  static GPU_INLINE void unit(const moert_gpu_linear_args &a, int64_t p, int64_t u, int c4, const float *xs,
                              int64_t stride, int64_t rows, float (&acc)[MD][4]) {
    if constexpr (QBITS == 0) {
      F4 w;
      if constexpr (PAIRS) { // 4 columns' pairs holding feature u: its half of each
        struct alignas(16) Q {
          uint32_t g[4];
        };
        const Q q = *reinterpret_cast<const Q *>(static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) +
                                                 p * PANELB + ((u / 2) * NR + c4 * 4) * 4);
#pragma unroll
        for (int i = 0; i < 4; ++i)
          w.v[i] = __builtin_bit_cast(float, u % 2 ? q.g[i] & 0xffff0000u : q.g[i] << 16);
      } else {
        w = load4(static_cast<const W *>(a.weights[MOERT_LIN_W]) + (p * K + u) * NR + c4 * 4);
      }
#pragma unroll
      for (int m = 0; m < MD; ++m)
        if (m < rows) {
          const float xv = xs[m * stride];
#pragma unroll
          for (int i = 0; i < 4; ++i)
            acc[m][i] += w.v[i] * xv;
        }
    } else {
      struct alignas(16) Q {
        uint32_t g[4];
      };
      const Q q = *reinterpret_cast<const Q *>(static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) +
                                               p * PANELB + (u * NR + c4 * 4) * 4);
      const int64_t sb = (p * KB + (u * FU) / BLK) * NR + c4 * 4;
      const Scale *sc = static_cast<const Scale *>(a.weights[MOERT_LIN_SCALES]) + sb;
      const float *of = static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]);
      float s[4], o[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        s[i] = float(sc[i]);
        o[i] = C::AFFINE ? of[sb + i] : QBITS == 4 ? -8.0f * s[i] : 0.0f;
      }
#pragma unroll
      for (int m = 0; m < MD; ++m)
        if (m < rows) {
          const float *xm = xs + m * stride;
          float xsum = 0.0f;
#pragma unroll
          for (int f = 0; f < FU; ++f)
            xsum += xm[f];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            float d = 0.0f;
#pragma unroll
            for (int f = 0; f < FU; ++f)
              d += code(q.g[i], f) * xm[f];
            acc[m][i] += s[i] * d + o[i] * xsum;
          }
        }
    }
  }
  // Feature f of a column's 4-byte group: int8 byte f (signed); int4 byte f % 4, low nibble for f < 4.
  static GPU_INLINE float code(uint32_t g, int f) {
    if (QBITS == 8)
      return float(int8_t(g >> (8 * f)));
    return float((g >> (8 * (f % 4) + 4 * (f / 4))) & 15u);
  }
  static GPU_INLINE void gemv(const moert_gpu_linear_args &a) {
    GPU_SHARED float xs[MOERT_GPU_LIN_STAGE];
    const int tid = threadId(), c4 = tid % 4;
    const int64_t p = blockX(), split = blockY(), rows = a.rows;
    const int64_t su = moert_gpu_lin_split_units(K, QBITS, a.k_splits), u0 = split * su;
    const int64_t u1 = u0 + su < KU ? u0 + su : KU, sf = su * FU, f0 = u0 * FU; // staged features per row
    const float *in = a.input;
    if constexpr (C::NORM != MOERT_NORM_NONE) { // the rows normalised here (the norm kernel's arithmetic)
      // Each row's statistics in registers (constant indices: the rows unrolled); xs holds the block sums
      // until the staging.
      float mean[MD], inv[MD];
#pragma unroll
      for (int m = 0; m < MD; ++m) {
        mean[m] = 0.0f, inv[m] = 1.0f;
        if (m < rows)
          normStats<WARPS, C::NORM>(in + m * K, K, C::EPS, xs, mean[m], inv[m]);
      }
      sync();
      const float *nw = static_cast<const float *>(a.weights[MOERT_LIN_NORM_W]);
      const float *nb = static_cast<const float *>(a.weights[MOERT_LIN_NORM_B]);
#pragma unroll
      for (int m = 0; m < MD; ++m)
        if (m < rows)
          for (int64_t j = tid; j < sf; j += BLOCK) {
            const int64_t f = f0 + j;
            xs[m * sf + j] = f < K ? (in[m * K + f] - mean[m]) * inv[m] * nw[f] +
                                         (C::NORM == MOERT_NORM_LAYER && C::HAS_NORM_BIAS ? nb[f] : 0.0f)
                                   : 0.0f;
          }
    } else {
      // Stage the split's inputs, [m][sf]; features past K are zero (int4 codes there hold 0, not the
      // centre).
      for (int64_t i = tid; i < rows * sf; i += BLOCK) {
        const int64_t m = i / sf, f = f0 + i % sf;
        xs[i] = f < K ? in[m * K + f] : 0.0f;
      }
    }
    sync();
    float acc[MD][4];
#pragma unroll
    for (int m = 0; m < MD; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        acc[m][i] = 0.0f;
        // Loads of several units in flight (int4's 8 features a unit leave registers for two).
#pragma unroll(QBITS == 4 ? 2 : 4)
    for (int64_t u = u0 + tid / 4; u < u1; u += UNITS)
      unit(a, p, u, c4, xs + (u - u0) * FU, sf, rows, acc);
      // Sum the threads of each column: lanes of one c4 in a warp, then the warps.
#pragma unroll
    for (int m = 0; m < MD; ++m)
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int mask = 4; mask < kWarp; mask *= 2)
          acc[m][i] += shflXor(acc[m][i], mask);
    sync(); // xs is read no more: it holds the warps' sums [warp][m][16]
    if (laneId() < 4)
#pragma unroll
      for (int m = 0; m < MD; ++m)
        if (m < rows)
#pragma unroll
          for (int i = 0; i < 4; ++i)
            xs[(warpId() * MD + m) * NR + c4 * 4 + i] = acc[m][i];
    sync();
    if (tid < rows * NR) {
      const int64_t m = tid / NR, n = p * NR + tid % NR;
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w)
        v += xs[(w * MD + m) * NR + tid % NR];
      if (n < N) {
        if (a.k_splits == 1) {
          store(a, m, n, v);
        } else {
          moert_gpu_linear_layout l =
              moert_gpu_lin_layout(K, N, C::NORM != MOERT_NORM_NONE, rows, a.k_splits);
          reinterpret_cast<float *>(scratch(a) + l.partial)[(split * rows + m) * N + n] = v;
        }
      }
    }
  }

  // ---- reduce: one thread per output element ----------------------------------------------------------
  static GPU_INLINE void reduce(const moert_gpu_linear_args &a) {
    const int64_t i = int64_t(blockX()) * BLOCK + threadId(), rows = a.rows;
    if (i >= rows * N)
      return;
    moert_gpu_linear_layout l = moert_gpu_lin_layout(K, N, C::NORM != MOERT_NORM_NONE, rows, a.k_splits);
    const float *part = reinterpret_cast<const float *>(scratch(a) + l.partial);
    float v = 0.0f;
    for (int64_t s = 0; s < a.k_splits; ++s)
      v += part[s * rows * N + i];
    store(a, i / N, i % N, v);
  }

  // ---- gemm: a 64 x 64 output tile a block -----------------------------------------------------------
  // Weight (k, column c) of the tile's panels (column c of panel p0 + c / 16), widened to f32; 0 past K, N.
  static GPU_INLINE float weightAt(const moert_gpu_linear_args &a, int64_t k, int64_t n) {
    if (k >= K || n >= NP * NR)
      return 0.0f;
    const int64_t p = n / NR, j = n % NR;
    if constexpr (PAIRS) {
      return load1(static_cast<const W *>(a.weights[MOERT_LIN_W]) + p * (PANELB / 2) +
                   ((k / 2) * NR + j) * 2 + k % 2);
    } else if constexpr (QBITS == 0) {
      return load1(static_cast<const W *>(a.weights[MOERT_LIN_W]) + (p * K + k) * NR + j);
    } else {
      const uint32_t g = *reinterpret_cast<const uint32_t *>(
          static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) + p * PANELB + ((k / FU) * NR + j) * 4);
      const float c = code(g, int(k % FU));
      const int64_t sb = (p * KB + k / BLK) * NR + j;
      const float s = float(static_cast<const Scale *>(a.weights[MOERT_LIN_SCALES])[sb]);
      const float o = C::AFFINE    ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS])[sb]
                      : QBITS == 4 ? -8.0f * s
                                   : 0.0f;
      return c * s + o;
    }
  }

  // ---- gemm on matrix cores: a 64 x 64 output tile a block (gpu_mma.h's MmaBlockTile: 16 x 16 tiles of one
  // warp each, inputs and weights, widened / dequantised to f32 first (weightAt), in three bf16 parts: f32
  // accuracy; bf16 weights are exact in one part). With --activations=bf16 (bf16 weights) the inputs are
  // rounded to bf16 as the CPU kernel's prefill rounds them: one product a step.
  static constexpr int WP = PAIRS ? 1 : 3;       // the weights' parts
  static constexpr int XP = C::BF16_ACT ? 1 : 3; // the inputs' (--activations=bf16: rounded, one part)
  using Tile = MmaBlockTile<BM, BN, XP, WP, false>;
  static_assert(BK == Tile::BK, "the staged step is the tile's");

  static GPU_INLINE void gemm(const moert_gpu_linear_args &a) {
    const int64_t n0 = int64_t(blockX()) * BN, m0 = int64_t(blockY()) * BM, rows = a.rows;
    const float *in = rowsIn(a);
    Tile t;
    t.run(
        0, K, [&](int r, int64_t k) { return m0 + r < rows ? in[(m0 + r) * K + k] : 0.0f; },
        [&](int c, int64_t k) { return weightAt(a, k, n0 + c); });
#pragma unroll
    for (int j = 0; j < Tile::TPW; ++j)
#pragma unroll
      for (int i = 0; i < kMmaAcc; ++i) {
        const int64_t m = m0 + t.row(i), n = n0 + t.col(j, i);
        if (m < rows && n < N)
          store(a, m, n, t.acc[j][i]);
      }
  }
};

} // namespace moert_gpu

#endif // MOERT_LINEAR_GPU_H

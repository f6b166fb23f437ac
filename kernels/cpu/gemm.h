//===- gemm.h - the one register-blocked f32 GEMM micro-kernel of the CPU kernels
//------------------------===//
//
// The register-blocked core of the CPU kernels' GEMMs: the linear dispatches (kernels/cpu/linear.h: decode
// and prefill, weights packed in panels at compile time) and the MoE kernel's token tiles of 16 tokens or
// more (kernels/cpu/sparse_moe.h: each expert's panels as stored, or its rows packed into panels per tile
// as a BLAS packs B), and, with f32 / bf16 / fp16 experts in panels, the MoE kernel's decode too. One
// call adds to an M x (P * NR) block of the output held in registers:
//
//   acc[i][j * NV + v] += sum_{k < kn} a(i, k) * b(j, k)[v * VW ..]
//
// with b(j, k) the NR = 16 values of panel j at feature k (b + j * pstride + k * NR: panels K-major, f32 or a
// plain storage widened on load: fp16, or bf16 stored as feature pairs, see MOERT_LIN_W) and a(i, k) one
// value per row: packed (a[k * MR + i], a tile's MR rows feature-major, so one feature's values share a cache
// line) or row-major (a[i * lda + k]). For each feature it loads the P panels' rows once and broadcasts one
// value per row: M * P * NV FMAs per P * NV vector loads and M broadcasts. Tiles: MR = 6 rows x PW panels, PW
// = 1 on 8-lane vectors (6 x 16: 12 accumulators of AVX2's 16 registers) and 4 on 16-lane ones (6 x 64: 24 of
// AVX-512's 32; measured 2x the FLOP rate of a 12 x 16 tile here).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_GEMM_H
#define MOERT_KERNELS_CPU_GEMM_H

#include "moert_kernel_abi.h"
#include "simd.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace moert_cpu {

constexpr int64_t kGemmNR = MOERT_LINEAR_NR; // columns per panel
constexpr int64_t kGemmNV = kGemmNR / VW;    // vectors per panel row
constexpr int kGemmMR = 6;                   // rows of a register tile
constexpr int kGemmPW = VW == 16 ? 4 : 1;    // panels of a register tile
static_assert(kGemmNR % VW == 0, "a panel row is whole vectors");

/// acc += the micro-kernels' accumulator sets (U = 1 or 2, see gemmMicro), summed set by set.
template <int U, int M, int NA>
__attribute__((always_inline)) inline void addParts(const vf (&part)[U][M][NA], vf (&acc)[M][NA]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int v = 0; v < NA; ++v) {
      vf t = part[0][i][v];
      if (U == 2)
        t += part[U - 1][i][v];
      acc[i][v] += t;
    }
}

/// gemmMicro on bf16 panels as stored (MOERT_LIN_W: [K / 2][NR] 32-bit pairs, b + j * pstride + k * NR
/// uint16_t at an even feature k): one load a pair, widened by a shift (the even feature, low half) and a
/// mask (the odd one), two FMAs per row. The sums are gemmMicro's on the widened weights, in the same order:
/// with two accumulator sets (decode) even features go to the first and odd ones to the second, else feature
/// by feature. An odd kn's last pair adds only its even feature.
template <int M, int P, bool PACKED>
__attribute__((always_inline)) inline void gemmMicroBf16(const uint16_t *b, int64_t pstride, const float *a,
                                                         int64_t lda, int64_t kn, vf (&acc)[M][P * kGemmNV],
                                                         int64_t ahead) {
  constexpr int U = M <= 2 && P == 1 ? 2 : 1;
  vf part[U][M][P * kGemmNV] = {};
  auto x = [&](int i, int64_t k) __attribute__((always_inline)) {
    return splat(PACKED ? a[k * kGemmMR + i] : a[i * lda + k]);
  };
  auto step = [&](int64_t q, auto both) __attribute__((always_inline)) {
    vf e[P * kGemmNV], o[P * kGemmNV];
#pragma unroll
    for (int j = 0; j < P; ++j)
#pragma unroll
      for (int v = 0; v < kGemmNV; ++v) {
        u32xv w;
        std::memcpy(&w, b + j * pstride + 2 * q * kGemmNR + 2 * v * VW, sizeof w);
        e[j * kGemmNV + v] = __builtin_bit_cast(vf, w << 16);
        o[j * kGemmNV + v] = __builtin_bit_cast(vf, w & 0xffff0000u);
      }
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const vf x0 = x(i, 2 * q);
#pragma unroll
      for (int v = 0; v < P * kGemmNV; ++v)
        part[0][i][v] += x0 * e[v];
      if constexpr (decltype(both)::value) {
        const vf x1 = x(i, 2 * q + 1);
#pragma unroll
        for (int v = 0; v < P * kGemmNV; ++v)
          part[U - 1][i][v] += x1 * o[v];
      }
    }
  };
  int64_t q = 0;
  for (; 2 * q + 2 <= kn; ++q) {
    if (ahead)
#pragma unroll
      for (int j = 0; j < P; ++j)
        __builtin_prefetch(reinterpret_cast<const char *>(b + j * pstride + 2 * q * kGemmNR) + ahead);
    step(q, std::true_type{});
  }
  if (kn % 2)
    step(q, std::false_type{});
  addParts(part, acc);
}

/// acc[i][j * NV + v] += sum over features k < kn of a(i, k) * panel j's row k (see the file comment). Decode
/// (M <= 2, one panel) keeps two accumulator sets over alternate features so the FMA chains overlap.
/// `ahead` (bytes, 0 for none): each panel's cache lines that far past the features being read are
/// prefetched (decode streaming panels one after another from memory).
template <int M, int P, bool PACKED, class T>
__attribute__((always_inline)) inline void gemmMicro(const T *b, int64_t pstride, const float *a, int64_t lda,
                                                     int64_t kn, vf (&acc)[M][P * kGemmNV],
                                                     int64_t ahead = 0) {
  if constexpr (std::is_same_v<T, uint16_t>)
    return gemmMicroBf16<M, P, PACKED>(b, pstride, a, lda, kn, acc, ahead);
  constexpr int U = M <= 2 && P == 1 ? 2 : 1;
  constexpr int64_t STEP_BYTES = U * kGemmNR * int64_t(sizeof(T)); // panel bytes one loop step reads
  vf part[U][M][P * kGemmNV] = {};
  auto step = [&](int64_t k, int u) __attribute__((always_inline)) {
    vf w[P * kGemmNV];
#pragma unroll
    for (int j = 0; j < P; ++j)
#pragma unroll
      for (int v = 0; v < kGemmNV; ++v)
        w[j * kGemmNV + v] = loadv(b + j * pstride + k * kGemmNR + v * VW);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const vf x = splat(PACKED ? a[k * kGemmMR + i] : a[i * lda + k]);
#pragma unroll
      for (int v = 0; v < P * kGemmNV; ++v)
        part[u][i][v] += x * w[v];
    }
  };
  int64_t k = 0;
  for (; k + U <= kn; k += U) {
    if (ahead)
#pragma unroll
      for (int j = 0; j < P; ++j)
#pragma unroll
        for (int64_t off = 0; off < STEP_BYTES; off += 64)
          __builtin_prefetch(reinterpret_cast<const char *>(b + j * pstride + k * kGemmNR) + off + ahead);
#pragma unroll
    for (int u = 0; u < U; ++u)
      step(k + u, u);
  }
  for (; k < kn; ++k)
    step(k, 0);
  addParts(part, acc);
}

// ---- bf16 dot products (`--activations=bf16`: bf16 weights times inputs rounded to bf16) ----------------
// The same register tile on bf16 pairs: each 32-bit lane holds two consecutive features (the even one in the
// low half) of one column (the panels as stored, MOERT_LIN_W's bf16 pairs) or of one row (the inputs, packed
// [k / 2][MR]), and dpbf16 (simd.h: AVX512-BF16's vdpbf16ps) adds both products per lane, twice the FMA's
// products per instruction. The panels are paired at compile time: pairing two stored rows per load (one
// 512-bit permute per vector of pairs, on the FP pipes the products use) cost 4 shuffles per 24 vdpbf16ps in
// a 6-row tile and 4 per 8 in the 2-row one, and a copy of each panel set's K block as pairs into scratch
// before that took the panels' cache misses outside the micro-kernel (docs/linear.md).

/// Rows [0, m) of x (ldx floats apart, kn features) as the packed pairs of gemmMicroPairs: row i's pair q at
/// out[(i / MR) * tstride + q * MR + i % MR], rounded to bf16 (an odd kn's last pair has a zero high half;
/// the last tile's rows past m are left as they are: the micro-kernel reads only the tile's rows).
inline void packBf16Pairs(const float *x, int64_t ldx, int64_t m, int64_t kn, uint32_t *out,
                          int64_t tstride) {
  for (int64_t i = 0; i < m; ++i) {
    const float *src = x + i * ldx;
    uint32_t *dst = out + (i / kGemmMR) * tstride + i % kGemmMR;
    int64_t q = 0;
    for (; 2 * q + 2 * VW <= kn; q += VW) {
      const u32xv p = bf16Pairs(src + 2 * q);
#pragma unroll
      for (int j = 0; j < VW; ++j)
        dst[(q + j) * kGemmMR] = p[j];
    }
    for (; 2 * q < kn; ++q)
      dst[q * kGemmMR] = bf16Pair(src[2 * q], 2 * q + 1 < kn ? src[2 * q + 1] : 0.0f);
  }
}

/// gemmMicro on pairs: acc[i][j * NV + v] += the features [0, kn) of row i (its pairs a[q * MR + i], an odd
/// kn's last with a zero high half) times panel j's (b + j * pstride + k * NR uint16_t at an even feature k:
/// the bf16 pairs as stored; an odd kn's last pair with its high half dropped). The sums build in a local
/// copy of acc, which stays in registers: a caller indexing acc at run time (a layer with several outputs)
/// otherwise had every accumulator stored back on each step (measured: a merged Q/K/V layer, K 2048, N 5120,
/// M 512, 2x slower).
/// `pf` (or null): one cache line a pair step is prefetched from there on, kn / 2 lines in all (the same K
/// block of a panel the caller reads next, so its first reader does not wait on memory).
template <int M, int P>
__attribute__((always_inline)) inline void
gemmMicroPairs(const uint16_t *b, int64_t pstride, const uint32_t *a, int64_t kn, vf (&acc)[M][P * kGemmNV],
               const char *pf = nullptr) {
  vf sum[M][P * kGemmNV];
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int v = 0; v < P * kGemmNV; ++v)
      sum[i][v] = acc[i][v];
  auto step = [&](int64_t q, auto load) __attribute__((always_inline)) {
    u32xv w[P * kGemmNV];
#pragma unroll
    for (int j = 0; j < P; ++j)
#pragma unroll
      for (int v = 0; v < kGemmNV; ++v)
        w[j * kGemmNV + v] = load(b + j * pstride + 2 * q * kGemmNR + 2 * v * VW);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const u32xv x = splatu(a[q * kGemmMR + i]);
#pragma unroll
      for (int v = 0; v < P * kGemmNV; ++v)
        sum[i][v] = dpbf16(sum[i][v], x, w[v]);
    }
  };
  auto pairs = [](const uint16_t *r) __attribute__((always_inline)) {
    u32xv w;
    std::memcpy(&w, r, sizeof w);
    return w;
  };
  // an odd kn's last pair: its odd feature is past kn, its half dropped
  auto even = [&](const uint16_t *r) __attribute__((always_inline)) { return pairs(r) & 0xffffu; };
  int64_t q = 0;
  for (; 2 * q + 2 <= kn; ++q) {
    if (pf)
      __builtin_prefetch(pf + q * 64);
    step(q, pairs);
  }
  if (kn % 2)
    step(q, even);
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int v = 0; v < P * kGemmNV; ++v)
      acc[i][v] = sum[i][v];
}

/// Calls f(std::integral_constant<int, m>{}) for a run-time row count 1 <= m <= kGemmMR (tiles of fewer rows
/// are the matrix's last).
template <class F> __attribute__((always_inline)) inline void gemmRows(int64_t m, F &&f) {
  static_assert(kGemmMR == 6, "one case per row count");
  switch (m) {
  case 1:
    return f(std::integral_constant<int, 1>{});
  case 2:
    return f(std::integral_constant<int, 2>{});
  case 3:
    return f(std::integral_constant<int, 3>{});
  case 4:
    return f(std::integral_constant<int, 4>{});
  case 5:
    return f(std::integral_constant<int, 5>{});
  default:
    return f(std::integral_constant<int, 6>{});
  }
}

} // namespace moert_cpu

#endif // MOERT_KERNELS_CPU_GEMM_H

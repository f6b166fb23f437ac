//===- linear.h - the linear-layer (GEMM / GEMV) kernel template for CPUs -------===//
//
// `moec compile` specialises this template per linear dispatch (a MatMul / Gemm with a constant weight,
// `moe.linear` in the IR): the generated translation unit defines a config struct `C` and exports
// `moert_linear_<j>` (kernels/cpu/moert_kernel_abi.h). One call computes, for M rows,
//
//   output[m][n] = sum_k input[m][k] * W[k][n] (+ bias[n]) (+ residual[m][n])
//
// with f32 accumulation whatever the weights' storage (C::W elements, or C::QBITS-bit codes with per-block
// scales and optional offsets).
//
// Weights come packed in panels of NR = 16 output columns, K-major (panel p, feature k: NR weights in a row),
// so one code path serves decode and prefill:
//   - the micro-kernel keeps an MR x NR block of the output in registers (MR = 6 rows on 8-lane vectors,
//     12 on 16-lane ones) and for each k loads one panel row once and one input value per row (a
//     broadcast): MR * NR / VW FMAs per NR weights read;
//   - work items are (a block of MC rows) x (a group of panels) and run on all threads. Decode (M <= MR)
//     is one row block: the panels are split across threads and every weight is read exactly once
//     (bandwidth bound; int8/int4 codes are multiplied as they are and scaled once per block); prefill walks
//     K in blocks of KC features: the MC x KC slice of the input is packed tile by tile (L2), each panel's
//     KC x NR slice (int8/int4 dequantised once into f32) stays in L1 while every row tile uses it.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_LINEAR_H
#define MOERT_KERNELS_CPU_LINEAR_H

#include "moert_kernel_abi.h"
#include "simd.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace moert_cpu {

constexpr int64_t kLinNR = MOERT_LINEAR_NR; // output columns per panel
static_assert(kLinNR % VW == 0, "a panel row is whole vectors");
constexpr int64_t kLinKC = 256;  // input features per K block in prefill (a panel's slice: 16 KiB of f32)
constexpr int64_t kLinMC = 72;   // rows per work item in prefill (a multiple of every MR)
constexpr int64_t kLinMaxGroup = 8; // panels per work item at most

typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef float f32x16 __attribute__((vector_size(64)));

/// C: K, N (shapes); W (element type of plain weights: float, uint16_t = bf16, _Float16); QBITS (0, 8 or 4);
/// QBLOCK (input features per scale when quantised); AFFINE (offsets given: unsigned codes, w = code * scale
/// + offset; else int8 codes are signed and int4 ones centred on 8); HAS_BIAS.
template <class C> struct Linear {
  static constexpr int64_t K = C::K, N = C::N, NR = kLinNR, NV = NR / VW, NP = (N + NR - 1) / NR;
  static constexpr int QBITS = C::QBITS;
  static constexpr int64_t BLK = QBITS ? C::QBLOCK : K; // features per scale (one block when not quantised)
  static constexpr int64_t KB = (K + BLK - 1) / BLK;
  static constexpr int MR = VW == 8 ? 6 : 12; // rows of a register tile
  // Bytes of a panel: K rows of NR weights; int4 packs two features per 16-byte row (see PANELB).
  static constexpr int64_t ROWB = QBITS == 8 ? NR : NR * int64_t(QBITS ? 0 : sizeof(typename C::W));
  static constexpr int64_t PANELB = QBITS == 4 ? (K + 1) / 2 * NR : K * ROWB;
  static constexpr int64_t KC = K <= kLinKC ? K : !QBITS ? kLinKC : BLK >= K ? K : (kLinKC + BLK - 1) / BLK * BLK;
  static_assert(!QBITS || BLK % 2 == 0, "quantisation blocks of an even number of features");
  static_assert(NR == 16, "the int4 and int8 loads are written for 16-column panels");
  static_assert(kLinMC % MR == 0, "row blocks are whole tiles");
  // Prefill packs a row block's K block of inputs (kLinMC x KC floats on the stack): only for K blocks that fit.
  static constexpr bool PACK_A = KC <= 1024;

  /// Weight slot sizes (checked by moert against the artifact's sections).
  static uint64_t weightBytes(int slot) {
    switch (slot) {
    case MOERT_LIN_W:
      return uint64_t(NP) * PANELB;
    case MOERT_LIN_SCALES:
      return QBITS ? uint64_t(NP) * KB * NR * 4 : 0;
    case MOERT_LIN_OFFSETS:
      return QBITS && C::AFFINE ? uint64_t(NP) * KB * NR * 4 : 0;
    case MOERT_LIN_BIAS:
      return C::HAS_BIAS ? uint64_t(NP) * NR * 4 : 0;
    default:
      return 0;
    }
  }

  static inline void split(const f32x16 &f, vf *out) {
#pragma unroll
    for (int v = 0; v < NV; ++v)
      std::memcpy(&out[v], reinterpret_cast<const float *>(&f) + v * VW, sizeof(vf));
  }
  /// The NR codes of feature k (int8: signed, or unsigned with offsets) as f32, unscaled.
  static inline void codes8(const uint8_t *panel, int64_t k, vf *c) {
    if constexpr (C::AFFINE) {
      u8x16 b;
      std::memcpy(&b, panel + k * NR, 16);
      split(__builtin_convertvector(__builtin_convertvector(b, i32x16), f32x16), c);
    } else {
      i8x16 b;
      std::memcpy(&b, panel + k * NR, 16);
      split(__builtin_convertvector(__builtin_convertvector(b, i32x16), f32x16), c);
    }
  }
  /// The codes of features k and k + 1 (k even) of an int4 panel, unscaled: one 16-byte row holds column j of
  /// feature k in byte j's low nibble and of feature k + 1 in its high nibble.
  static inline void codes4(const uint8_t *panel, int64_t k, vf *c0, vf *c1) {
    u8x16 b;
    std::memcpy(&b, panel + (k / 2) * NR, 16);
    u32x16 x = __builtin_convertvector(b, u32x16);
    split(__builtin_convertvector(x & 15u, f32x16), c0);
    split(__builtin_convertvector(x >> 4, f32x16), c1);
  }
  /// Codes of features k and (when k + 1 < ke) k + 1, unscaled.
  static inline void codesPair(const uint8_t *panel, int64_t k, int64_t ke, vf *c0, vf *c1) {
    if constexpr (QBITS == 4) {
      codes4(panel, k, c0, c1);
    } else {
      codes8(panel, k, c0);
      if (k + 1 < ke)
        codes8(panel, k + 1, c1);
    }
  }
  /// Scales and offsets of the block starting at feature kb: w = code * s + o (o = -8 s for symmetric int4,
  /// 0 for symmetric int8, the stored offsets with zero points).
  static inline void blockScales(const float *sc, const float *of, int64_t kb, vf *s, vf *o) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      s[v] = loadv(sc + (kb / BLK) * NR + v * VW);
      o[v] = C::AFFINE ? loadv(of + (kb / BLK) * NR + v * VW) : QBITS == 4 ? s[v] * -8.0f : vf{};
    }
  }

  /// Input value (row i of the tile, feature k): rows of K features (decode), or packed (prefill: a K block
  /// of a tile's MR rows stored feature-major, [k - k0][MR], so one feature's MR values share a cache line and
  /// the rows' K-strided addresses do not fight over L1 sets).
  template <bool PK> static inline float ax(const float *a, int i, int64_t k, int64_t k0) {
    return PK ? a[(k - k0) * MR + i] : a[i * K + k];
  }

  /// Packs rows [r0, r1) x features [k0, k1) of the input tile by tile ([tile][k - k0][MR], rows past r1 zero).
  static void packA(const float *in, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float *out) {
    const int64_t kn = k1 - k0;
    for (int64_t t = 0; r0 + t * MR < r1; ++t) {
      float *dst = out + t * KC * MR;
      for (int i = 0; i < MR; ++i) {
        const int64_t row = r0 + t * MR + i;
        if (row < r1) {
          const float *src = in + row * K + k0;
          for (int64_t k = 0; k < kn; ++k)
            dst[k * MR + i] = src[k];
        } else {
          for (int64_t k = 0; k < kn; ++k)
            dst[k * MR + i] = 0.0f;
        }
      }
    }
  }

  /// acc[i] += input rows a[i * K + k0 .. k1) x panel p's features [k0, k1). k0 is a multiple of BLK.
  /// Plain weights: decode (M <= 2) keeps two accumulator sets over alternate features so the FMA chains
  /// overlap. Quantised weights (decode only, M <= 2: more rows go through dequant() and plainTile()) are
  /// summed as codes per block and scaled once per block (w = code * s + o, so sum w x = s * sum code x +
  /// o * sum x, with o = -8 s for symmetric int4): one FMA per weight vector.
  template <int M, bool PK = false>
  __attribute__((always_inline)) static inline void tile(const uint8_t *panel, const float *scales,
                                                         const float *offsets, const float *a, const float *xsum,
                                                         int64_t k0, int64_t k1, vf (&acc)[M][NV]) {
    constexpr int U = M <= 2 ? 2 : 1;
    constexpr bool OFFSET = C::AFFINE || QBITS == 4; // an offset term (zero points, or int4's centre 8)
    vf part[U][M][NV] = {};
    for (int64_t kb = k0; kb < k1; kb += BLK) {
      const int64_t ke = std::min<int64_t>(k1, kb + BLK);
      vf s[NV] = {}, o[NV] = {};
      if constexpr (QBITS != 0)
        blockScales(scales, offsets, kb, s, o);
      if constexpr (QBITS == 0) {
        const typename C::W *p = reinterpret_cast<const typename C::W *>(panel);
        int64_t k = kb;
        for (; k + U <= ke; k += U)
#pragma unroll
          for (int u = 0; u < U; ++u) {
            vf w[NV];
#pragma unroll
            for (int v = 0; v < NV; ++v)
              w[v] = loadv(p + (k + u) * NR + v * VW);
#pragma unroll
            for (int i = 0; i < M; ++i) {
              const vf x = splat(ax<PK>(a, i, k + u, k0));
#pragma unroll
              for (int v = 0; v < NV; ++v)
                part[u][i][v] += x * w[v];
            }
          }
        for (; k < ke; ++k)
#pragma unroll
          for (int i = 0; i < M; ++i) {
            const vf x = splat(ax<PK>(a, i, k, k0));
#pragma unroll
            for (int v = 0; v < NV; ++v)
              part[0][i][v] += x * loadv(p + k * NR + v * VW);
          }
      } else {
        // Four accumulator sets (features k..k+3) so four FMA chains overlap; sum x per block comes
        // precomputed (`xsum`, [M][KB]), shared by every panel.
        vf b[4][M][NV] = {};
        int64_t k = kb;
        for (; k + 4 <= ke; k += 4) {
          vf c[4][NV];
          if constexpr (QBITS == 4) {
            codes4(panel, k, c[0], c[1]);
            codes4(panel, k + 2, c[2], c[3]);
          } else {
#pragma unroll
            for (int u = 0; u < 4; ++u)
              codes8(panel, k + u, c[u]);
          }
#pragma unroll
          for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int i = 0; i < M; ++i) {
              const vf x = splat(a[i * K + k + u]);
#pragma unroll
              for (int v = 0; v < NV; ++v)
                b[u][i][v] += x * c[u][v];
            }
        }
        for (; k < ke; k += 2) { // the block's last features (a block of 2 mod 4, or K odd)
          vf c0[NV], c1[NV];
          codesPair(panel, k, ke, c0, c1);
#pragma unroll
          for (int i = 0; i < M; ++i)
#pragma unroll
            for (int v = 0; v < NV; ++v) {
              b[0][i][v] += splat(a[i * K + k]) * c0[v];
              if (k + 1 < ke)
                b[1][i][v] += splat(a[i * K + k + 1]) * c1[v];
            }
        }
#pragma unroll
        for (int i = 0; i < M; ++i)
#pragma unroll
          for (int v = 0; v < NV; ++v) {
            part[0][i][v] += s[v] * ((b[0][i][v] + b[1][i][v]) + (b[2][i][v] + b[3][i][v]));
            if (OFFSET)
              part[U - 1][i][v] += o[v] * xsum[i * KB + kb / BLK];
          }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int v = 0; v < NV; ++v) {
        vf t = part[0][i][v];
        if (U == 2)
          t += part[U - 1][i][v];
        acc[i][v] += t;
      }
  }

  /// acc[i] += a rows x a dequantised f32 slice `p` of a panel ([k1 - k0][NR], features k0..k1).
  template <int M, bool PK>
  __attribute__((always_inline)) static inline void plainTile(const float *p, const float *a, int64_t k0, int64_t k1,
                                                              vf (&acc)[M][NV]) {
    vf part[M][NV] = {};
    for (int64_t k = k0; k < k1; ++k) {
      vf w[NV];
#pragma unroll
      for (int v = 0; v < NV; ++v)
        w[v] = loadv(p + (k - k0) * NR + v * VW);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const vf x = splat(ax<PK>(a, i, k, k0));
#pragma unroll
        for (int v = 0; v < NV; ++v)
          part[i][v] += x * w[v];
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int v = 0; v < NV; ++v)
        acc[i][v] += part[i][v];
  }

  /// Features [k0, k1) of quantised panel p as f32 into `out` ([k1 - k0][NR]): done once per panel and K
  /// block in prefill, then every row tile of the block runs the f32 micro-kernel on it.
  static void dequant(const moert_linear_args &a, int64_t p, int64_t k0, int64_t k1, float *out) {
    const uint8_t *panel = static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) + p * PANELB;
    const float *sc = static_cast<const float *>(a.weights[MOERT_LIN_SCALES]) + p * KB * NR;
    const float *of = C::AFFINE ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]) + p * KB * NR : nullptr;
    constexpr bool OFFSET = C::AFFINE || QBITS == 4;
    for (int64_t kb = k0; kb < k1; kb += BLK) {
      const int64_t ke = std::min<int64_t>(k1, kb + BLK);
      vf s[NV], o[NV];
      blockScales(sc, of, kb, s, o);
      for (int64_t k = kb; k < ke; k += 2) {
        vf c0[NV], c1[NV];
        codesPair(panel, k, ke, c0, c1);
#pragma unroll
        for (int v = 0; v < NV; ++v) {
          storev(out + (k - k0) * NR + v * VW, OFFSET ? c0[v] * s[v] + o[v] : c0[v] * s[v]);
          if (k + 1 < ke)
            storev(out + (k + 1 - k0) * NR + v * VW, OFFSET ? c1[v] * s[v] + o[v] : c1[v] * s[v]);
        }
      }
    }
  }

  struct Ctx {
    const moert_linear_args *a;
    int64_t rowBlock, rowBlocks, group, groups;
    const float *xsum; // decode with quantised weights: [M][KB] sums of each row's inputs per block
  };

  /// Rows [r, r + M) x panel p over features [k0, k1): the first K block starts from the bias (or zero), the
  /// others from the output so far; the last adds the residual. Columns past N (the last panel's padding)
  /// are never stored.
  template <int M, bool DQ, bool PK>
  static void block(const moert_linear_args &a, const float *xsum, const float *deq, const float *ap, int64_t r,
                    int64_t p, int64_t k0, int64_t k1) {
    const uint8_t *w = static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) + p * PANELB;
    const float *sc = QBITS ? static_cast<const float *>(a.weights[MOERT_LIN_SCALES]) + p * KB * NR : nullptr;
    const float *of = QBITS && C::AFFINE ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]) + p * KB * NR
                                         : nullptr;
    const int64_t n0 = p * NR, cols = std::min<int64_t>(NR, N - n0);
    float *out = a.output + r * N + n0;
    vf acc[M][NV];
    if (k0 == 0) {
      const float *b = C::HAS_BIAS ? static_cast<const float *>(a.weights[MOERT_LIN_BIAS]) + n0 : nullptr;
#pragma unroll
      for (int i = 0; i < M; ++i)
#pragma unroll
        for (int v = 0; v < NV; ++v)
          acc[i][v] = b ? loadv(b + v * VW) : vf{};
    } else {
      for (int i = 0; i < M; ++i) {
        float tmp[NR] = {};
        std::memcpy(tmp, out + i * N, sizeof(float) * cols);
        for (int v = 0; v < NV; ++v)
          acc[i][v] = loadv(tmp + v * VW);
      }
    }
    const float *in = PK ? ap : a.input + r * K;
    if constexpr (DQ)
      plainTile<M, PK>(deq, in, k0, k1, acc);
    else
      tile<M, PK>(w, sc, of, in, xsum ? xsum + r * KB : nullptr, k0, k1, acc);
    const bool last = k1 == K;
    for (int i = 0; i < M; ++i) {
      float tmp[NR];
      for (int v = 0; v < NV; ++v)
        storev(tmp + v * VW, acc[i][v]);
      if (last && a.residual) {
        const float *res = a.residual + (r + i) * N + n0;
        for (int64_t c = 0; c < cols; ++c)
          tmp[c] += res[c];
      }
      std::memcpy(out + i * N, tmp, sizeof(float) * cols);
    }
  }

  template <bool DQ, bool PK>
  static void rows(const moert_linear_args &a, const float *xsum, const float *deq, const float *ap, int64_t m,
                   int64_t r, int64_t p, int64_t k0, int64_t k1) {
    static_assert(MR <= 12, "row tiles of at most 12");
    switch (m) {
#define MOERT_LIN_CASE(n)                                                                                      \
  case n:                                                                                                      \
    if constexpr (n <= MR)                                                                                     \
      return block<n, DQ, PK>(a, xsum, deq, ap, r, p, k0, k1);                                                                      \
    break;
      MOERT_LIN_CASE(1) MOERT_LIN_CASE(2) MOERT_LIN_CASE(3) MOERT_LIN_CASE(4) MOERT_LIN_CASE(5)
      MOERT_LIN_CASE(6) MOERT_LIN_CASE(7) MOERT_LIN_CASE(8) MOERT_LIN_CASE(9) MOERT_LIN_CASE(10)
      MOERT_LIN_CASE(11) MOERT_LIN_CASE(12)
#undef MOERT_LIN_CASE
    default:
      break;
    }
  }

  static void work(void *p, int64_t item, int) {
    const Ctx &c = *static_cast<const Ctx *>(p);
    const moert_linear_args &a = *c.a;
    const int64_t M = a.rows;
    const int64_t rb = item / c.groups, g = item % c.groups;
    const int64_t r0 = rb * c.rowBlock, r1 = std::min(M, r0 + c.rowBlock);
    const int64_t p0 = g * c.group, p1 = std::min(NP, p0 + c.group);
    if (M > MR && PACK_A)
      return prefill(c, r0, r1, p0, p1);
    // Decode (or a K too long to pack): rows read in place; int8/int4 with more than 2 rows dequantised per
    // panel and K block.
    const bool dq = QBITS && M > 2;
    const int64_t kc = M <= MR && !dq ? K : KC; // decode: one pass over K (no partial sums through memory)
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = std::min(K, k0 + kc);
      for (int64_t pp = p0; pp < p1; ++pp) {
        if (dq) {
          alignas(64) float deq[QBITS ? KC * NR : 1];
          dequant(a, pp, k0, k1, deq);
          for (int64_t r = r0; r < r1; r += MR)
            rows<true, false>(a, nullptr, deq, nullptr, std::min<int64_t>(MR, r1 - r), r, pp, k0, k1);
        } else {
          for (int64_t r = r0; r < r1; r += MR)
            rows<false, false>(a, c.xsum, nullptr, nullptr, std::min<int64_t>(MR, r1 - r), r, pp, k0, k1);
        }
      }
    }
  }

  /// Prefill: per K block, the item's input rows packed tile by tile (L2-resident), then for each panel
  /// (int8/int4: dequantised once into an f32 slice) every row tile runs the micro-kernel on it.
  __attribute__((noinline)) static void prefill(const Ctx &c, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    const moert_linear_args &a = *c.a;
    alignas(64) float ap[kLinMC * KC];
    alignas(64) float deq[QBITS ? KC * NR : 1];
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t k1 = std::min(K, k0 + KC);
      packA(a.input, r0, r1, k0, k1, ap);
      for (int64_t pp = p0; pp < p1; ++pp) {
        if constexpr (QBITS != 0) {
          dequant(a, pp, k0, k1, deq);
          for (int64_t r = r0; r < r1; r += MR)
            rows<true, true>(a, nullptr, deq, ap + (r - r0) / MR * KC * MR, std::min<int64_t>(MR, r1 - r), r, pp,
                             k0, k1);
        } else {
          for (int64_t r = r0; r < r1; r += MR)
            rows<false, true>(a, nullptr, nullptr, ap + (r - r0) / MR * KC * MR, std::min<int64_t>(MR, r1 - r), r,
                              pp, k0, k1);
        }
      }
    }
  }

  static int run(const moert_linear_args *a) {
    const int64_t M = a->rows;
    if (M <= 0)
      return 0;
    const moert_exec &ex = *a->exec;
    Ctx c{};
    c.a = a;
    c.rowBlock = M <= MR ? M : kLinMC;
    c.rowBlocks = (M + c.rowBlock - 1) / c.rowBlock;
    // Enough items for every thread (about 4 each), panels per item between 1 and kLinMaxGroup.
    const int64_t want = 4 * std::max(1, ex.threads);
    c.group = std::clamp<int64_t>(NP * c.rowBlocks / want, 1, kLinMaxGroup);
    c.groups = (NP + c.group - 1) / c.group;
    // Decode with quantised weights sums codes per block and needs each row's input sum per block.
    float xsum[QBITS ? 2 * KB : 1];
    if (QBITS && M <= 2) {
      for (int64_t i = 0; i < M; ++i)
        for (int64_t b = 0; b < KB; ++b) {
          float t = 0.0f;
          for (int64_t k = b * BLK; k < std::min<int64_t>(K, (b + 1) * BLK); ++k)
            t += a->input[i * K + k];
          xsum[i * KB + b] = t;
        }
      c.xsum = xsum;
    }
    const int64_t items = c.rowBlocks * c.groups;
    if (items == 1 || ex.threads <= 1) {
      for (int64_t i = 0; i < items; ++i)
        work(&c, i, 0);
    } else {
      ex.parallel_for(ex.pool, items, &c, &work);
    }
    return 0;
  }
};

} // namespace moert_cpu

#endif // MOERT_KERNELS_CPU_LINEAR_H

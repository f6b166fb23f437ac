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
//   - the micro-kernel (gemm.h's `gemmMicro`) keeps an MR x (PW * NR) block of the output in registers (6
//   rows x 1 panel
//     on 8-lane vectors, 6 rows x 4 panels on 16-lane ones: 24 accumulators) and for each k loads the PW
//     panels' rows once and one input value per row (a broadcast);
//   - work items are (a block of MC rows) x (a group of panels) and run on all threads. Decode (M <= MR)
//     is one row block: the panels are split across threads and every weight is read exactly once
//     (bandwidth bound); prefill walks K in blocks of KC features: the MC x KC slice of the input is packed
//     tile by tile (a tile's slice stays in L1), the PW panels' KC x NR slices (int8/int4 dequantised once
//     into f32) stay in L2 while every row tile of the item uses them.
//   - int8/int4 decode without INT8_ACT multiplies the codes by the inputs in f32 and scales once per block;
//   - with INT8_ACT (moec --activations=int8), int8/int4 weights multiply integers, as ggml does (decode,
//     M <= MQ rows, rounds the rows once up front; more rows are rounded per work item and K block): the
//     input rows are rounded to int8 per block of XB features (scale max|x| / 127, round half to even), each
//     group of 4 (int8) or 8 (int4) features of a column is 4 bytes of the panel, so one byte-multiply-add
//     instruction (AVX2's vpmaddubsw + vpmaddwd) sums 4 code x input products per column into an i32 lane;
//     the i32 sums are scaled once per block (w = code * s + o: sum w x = s xs sum code q + o xs sum q).
//     Results are those of the quantised weights on the rounded inputs, f32-accurate
//     (kernels/cpu/moert_kernel_abi.h states it).
//   - with BF16_ACT (moec --activations=bf16) and bf16 weights, prefill (more than MR rows) rounds the call's
//     rows to bf16 pairs once (in parallel, into the scratch) and multiplies bf16 pairs (gemm.h's
//     gemmMicroPairs: AVX512-BF16's vdpbf16ps, twice the FMA's products per instruction) on the panels as
//     stored (bf16 panels hold feature pairs, MOERT_LIN_W); decode reads the panels with f32 inputs, as
//     without it (each pair widened by a shift and a mask).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_LINEAR_H
#define MOERT_KERNELS_CPU_LINEAR_H

#include "gemm.h"
#include "moert_kernel_abi.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace moert_cpu {

// Input features per K block in prefill: a row tile's packed inputs (MR x KC floats, 12 KiB) stay in L1 and
// the PW panels' slices (KC x PW x NR floats) in L2 (measured: 256 and 1024 are slower here on AVX2 and
// AVX-512 alike).
constexpr int64_t kLinKC = 512;
// The same for bf16 pairs (BF16_ACT prefill): the PW panels' slices (KC x PW x NR bf16, 256 KiB at 2048) stay
// in L2 while the item's row tiles use them, and a K block fewer means one pass of the outputs fewer (each
// block reads the partial sums back through the outputs). Measured (linear_kernel_test --perf, K 2048, N
// 2048, 2 threads, 3 interleaved runs, ms at M = 128 / 512): 128 features 3.9-5.5 / 15.1-21.8, 256 3.2-4.2 /
// 12.5-16.5, 512 2.8-3.9 / 11.2-16.3, 1024 2.7-2.9 / 11.0-11.9, 2048 2.5-2.7 / 10.3-11.1; a merged Q/K/V
// layer (N 5120, 3 outputs) at M = 512 31.1-36.8 ms at 512 features, 26.5-27.1 at 2048.
constexpr int64_t kLinKCPairs = 2048;
constexpr int64_t kLinMC = 72;   // rows per work item in prefill (a multiple of every MR)
constexpr int64_t kLinMaxGroup = 8; // panels per work item at most
constexpr int64_t kLinQRows = 16;   // rows int8/int4 decode rounds and multiplies as integers, at most
constexpr int64_t kLinQBytes = 96 * 1024; // stack bytes for those rounded rows at most
// Bytes of integer panels prefetched ahead of the first row tile when decode reads panels one after another
// (the linear layers' int8-activation decode; the MoE kernel's fc1). The hardware prefetchers alone left
// both below the read roofline (measured, 2 threads, weights from memory, best / median ms):
// - an int4 linear layer, K 2048, N 32000 (36 MB, an LM head), one row: 1.84 / 1.94 without, 1.39 / 1.51 at
//   2 KiB, 1.40 / 1.52 at 4 KiB, 1.41 / 1.52 at 8 KiB, 1.45 / 1.57 at 16 KiB; int8 2.73 -> 2.32 at 8 KiB;
//   AVX2 int4 1.98 -> 1.50; four rows 2.45 -> 1.69;
// - the OLMoE-like MoE layer, int4, T = 1, fresh inputs: 1.17 / 1.37 without, 0.97 / 1.14 at 2 KiB,
//   0.90 / 1.12 at 4 KiB, 0.88 / 1.11 at 8 KiB, 0.90 / 1.12 at 16 KiB.
constexpr int64_t kLinIntAhead = 8192;
// The same for decode's f32 products: plain panels (f32, bf16, fp16) and int8/int4 codes widened against f32
// inputs. Measured as above (one row, 2 threads, K 2048, N 32000 from memory, best ms): f32 9.90 without,
// 8.18 / 8.04 / 8.12 / 8.94 at 0.5 / 1 / 2 / 4 KiB; bf16 5.14 -> 4.38 at 2 KiB (8 KiB 4.69); int4 codes
// 2.46 -> 1.84 at 2 KiB (1.79 at 8 KiB), int8 codes 3.17 -> 2.47.
constexpr int64_t kLinAhead = 2048;

typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef float f32x16 __attribute__((vector_size(64)));

/// C: K, N (shapes); W (element type of plain weights: float, uint16_t = bf16, _Float16); QBITS (0, 8 or 4);
/// QBLOCK (input features per scale when quantised); SCALE16 (the scales are f16, else f32); AFFINE (offsets
/// given: unsigned codes, w = code * scale + offset; else int8 codes are signed and int4 ones centred on 8);
/// HAS_BIAS; NORM (moert_norm: the rows are
/// normalised first, into the scratch), EPS, HAS_NORM_BIAS; INT8_ACT (decode rounds the
/// inputs to int8 and multiplies integers, see below); BF16_ACT (bf16 weights: prefill rounds the inputs to
/// bf16 and multiplies bf16 pairs); NOUT and SPLIT[NOUT + 1] (the outputs the N columns
/// go to: output j holds columns [SPLIT[j], SPLIT[j + 1]), SPLIT[0] = 0, SPLIT[NOUT] = N).
template <class C> struct Linear {
  static constexpr int64_t K = C::K, N = C::N, NR = kGemmNR, NV = kGemmNV, NP = (N + NR - 1) / NR;
  static constexpr int QBITS = C::QBITS;
  static constexpr int64_t BLK = QBITS ? C::QBLOCK : K; // features per scale (one block when not quantised)
  using Scale = std::conditional_t<C::SCALE16, _Float16, float>; // a block scale as stored (MOERT_LIN_SCALES)
  static_assert(!C::SCALE16 || (QBITS && !C::AFFINE), "f16 scales only for symmetric int8/int4 codes");
  static constexpr int64_t KB = (K + BLK - 1) / BLK;
  static constexpr int MR = kGemmMR, PW = kGemmPW; // register tile: MR rows x PW panels (gemm.h)
  // Quantised panels: 4 bytes per column per group of GK features (int8: 4 codes; int4: byte q holds feature
  // q in its low nibble and feature q + 4 in its high one), groups of a panel consecutive: [KG][NR][4] bytes.
  static constexpr int64_t GK = QBITS == 4 ? 8 : 4, KG = (K + GK - 1) / GK, KPAD = KG * GK;
  static constexpr int64_t PANELB =
      QBITS
          ? KG * NR * 4
          : MOERT_LIN_PLAIN_PANEL_BYTES(K, sizeof(typename C::W), (std::is_same_v<typename C::W, uint16_t>));
  static constexpr int64_t KC = K <= kLinKC ? K : kLinKC;
  static constexpr int64_t KCP = K <= kLinKCPairs ? K : kLinKCPairs; // K block of bf16 pairs (BF16_ACT)
  // bf16 pairs (BF16_ACT): a K block's feature pairs
  static constexpr bool PAIRS = C::BF16_ACT;
  static constexpr int64_t KP = (K + 1) / 2;
  static_assert(!C::BF16_ACT || (QBITS == 0 && std::is_same_v<typename C::W, uint16_t>),
                "bf16 activations with bf16 weights only");
  // Integer decode: inputs rounded per block of XB features (MOERT_INT8_ACT_BLOCK, or the weight block when
  // that is not a multiple of it), rows of up to MQ (MR, fewer when MR rounded rows would not fit kLinQBytes
  // of stack).
  static constexpr int64_t XB = !QBITS                           ? K
                                : BLK % MOERT_INT8_ACT_BLOCK == 0 ? MOERT_INT8_ACT_BLOCK
                                                                 : BLK,
                           KX = (K + XB - 1) / XB;
  static constexpr int64_t MQ = !QBITS || !C::INT8_ACT ? 0 : std::min<int64_t>(kLinQRows, kLinQBytes / KPAD);
  // int8/int4 decode with f32 inputs: up to CODE_ROWS rows multiply codes by the inputs in one pass
  // (codeTile); more dequantise each panel's K block first (DEQ). Measured (one layer, K 2048, N 32000, from
  // memory, 2 threads, best ms, codes / dequantised): int8 3 rows 3.3 / 7.3, 4 rows 4.4 / 7.4, 6 rows 6.0
  // / 8.1; int4 3 rows 3.1 / 5.3, but 4 rows 7.9 / 5.4 and 6 rows 10.3 / 5.9 (the int4 tile of 4+ rows runs
  // slower).
  static constexpr int64_t CODE_ROWS = !QBITS || C::INT8_ACT ? 0 : QBITS == 8 ? MR : 3;
  static_assert(!QBITS || BLK % GK == 0 || BLK >= K, "quantisation blocks of whole feature groups");
  static_assert(!QBITS || XB % GK == 0 || KX == 1, "input blocks of whole feature groups");
  static_assert(NR == 16, "the int4 and int8 loads are written for 16-column panels");
  static_assert(kLinMC % MR == 0, "row blocks are whole tiles");
  static_assert(C::NOUT >= 1 && C::NOUT <= MOERT_LIN_MAX_OUTPUTS && C::SPLIT[0] == 0 &&
                    C::SPLIT[C::NOUT] == N,
                "the outputs split the N columns");

  /// Columns [n0, n0 + cols) of result row r, copied out of (STORE = false) or into the outputs they belong
  /// to; a panel's columns may straddle two outputs.
  template <bool STORE>
  static inline void columns(const moert_linear_args &a, int64_t r, int64_t n0, int64_t cols, float *tmp) {
    if constexpr (C::NOUT == 1) {
      float *o = a.outputs[0] + r * N + n0;
      STORE ? std::memcpy(o, tmp, sizeof(float) * cols) : std::memcpy(tmp, o, sizeof(float) * cols);
    } else {
      int j = 0;
      while (C::SPLIT[j + 1] <= n0)
        ++j;
      for (int64_t done = 0; done < cols; ++j) {
        const int64_t c = n0 + done, w = std::min<int64_t>(cols - done, C::SPLIT[j + 1] - c);
        float *o = a.outputs[j] + r * (C::SPLIT[j + 1] - C::SPLIT[j]) + (c - C::SPLIT[j]);
        STORE ? std::memcpy(o, tmp + done, sizeof(float) * w) : std::memcpy(tmp + done, o, sizeof(float) * w);
        done += w;
      }
    }
  }

  /// Scratch bytes of a call: int8 activations with more rows than the stack holds keep the rounded rows
  /// there, bf16 activations in prefill their pairs.
  static size_t scratch(int64_t M, int threads) { return normBytes(M) + rowScratch(M, threads); }
  /// The normalised rows (a fused norm), ahead of the rest of the scratch.
  static size_t normBytes(int64_t M) {
    return C::NORM != MOERT_NORM_NONE ? (size_t(M) * K * sizeof(float) + 63) / 64 * 64 + 64 : 0;
  }
  static size_t rowScratch(int64_t M, int) {
    if (PAIRS) // prefill's rows as bf16 pairs, [row tile][KP][MR]
      return M > MR ? size_t((M + MR - 1) / MR) * KP * MR * sizeof(uint32_t) + 128 : 0;
    if (!QBITS || !C::INT8_ACT || M <= MQ)
      return 0;
    return size_t(M) * (KPAD + 8 * KX) + 128;
  }

  /// Weight slot sizes (checked by moert against the artifact's sections).
  static uint64_t weightBytes(int slot) {
    switch (slot) {
    case MOERT_LIN_W:
      return uint64_t(NP) * PANELB;
    case MOERT_LIN_SCALES:
      return QBITS ? uint64_t(NP) * KB * NR * sizeof(Scale) : 0;
    case MOERT_LIN_OFFSETS:
      return QBITS && C::AFFINE ? uint64_t(NP) * KB * NR * 4 : 0;
    case MOERT_LIN_BIAS:
      return C::HAS_BIAS ? uint64_t(NP) * NR * 4 : 0;
    case MOERT_LIN_NORM_W:
      return C::NORM != MOERT_NORM_NONE ? uint64_t(K) * 4 : 0;
    case MOERT_LIN_NORM_B:
      return C::NORM != MOERT_NORM_NONE && C::HAS_NORM_BIAS ? uint64_t(K) * 4 : 0;
    default:
      return 0;
    }
  }

  static inline void split(const f32x16 &f, vf *out) {
#pragma unroll
    for (int v = 0; v < NV; ++v)
      std::memcpy(&out[v], reinterpret_cast<const float *>(&f) + v * VW, sizeof(vf));
  }
  /// Scales and offsets of the block holding feature k: w = code * s + o (o = -8 s for symmetric int4, 0 for
  /// int8 without zero points, the stored offsets with them).
  static inline void blockScales(const Scale *sc, const float *of, int64_t k, vf *s, vf *o) {
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      s[v] = loadv(sc + (k / BLK) * NR + v * VW);
      o[v] = C::AFFINE ? loadv(of + (k / BLK) * NR + v * VW) : QBITS == 4 ? s[v] * -8.0f : vf{};
    }
  }
  /// Code of feature q (0 <= q < GK) of a group, for the 16 columns (`g`: their 4-byte lanes), unscaled.
  template <int Q> static inline f32x16 groupCodes(u32x16 g) {
    if constexpr (QBITS == 8)
      return __builtin_convertvector(i32x16(g << (24 - 8 * Q)) >> 24, f32x16);
    else
      return __builtin_convertvector((g >> (8 * (Q % 4) + 4 * (Q / 4))) & 15u, f32x16);
  }

  /// f(std::integral_constant<int, Q>, codes of feature Q) for each feature Q of a group (`g`: its 16 columns'
  /// 4-byte lanes), in order.
  template <class F> static inline void eachFeature(u32x16 g, F &&f) {
    f(std::integral_constant<int, 0>{}, groupCodes<0>(g));
    f(std::integral_constant<int, 1>{}, groupCodes<1>(g));
    f(std::integral_constant<int, 2>{}, groupCodes<2>(g));
    f(std::integral_constant<int, 3>{}, groupCodes<3>(g));
    if constexpr (GK == 8) {
      f(std::integral_constant<int, 4>{}, groupCodes<4>(g));
      f(std::integral_constant<int, 5>{}, groupCodes<5>(g));
      f(std::integral_constant<int, 6>{}, groupCodes<6>(g));
      f(std::integral_constant<int, 7>{}, groupCodes<7>(g));
    }
  }

  /// Rounds features [k0, k1) of one input row (`x` holds them from feature k0; k0 a multiple of XB) to int8
  /// per block of XB features (roundInt8), with each block's scale and sum of q: q[k - k0]; xs, xsq per block
  /// from k0 / XB; features past K up to a whole group are zero.
  static void quantizeRange(const float *x, int64_t k0, int64_t k1, int8_t *q, float *xs, float *xsq) {
    for (int64_t b = k0 / XB; b * XB < k1; ++b) {
      const int64_t kb = b * XB, ke = std::min<int64_t>(k1, kb + XB);
      int8_t *qb = q + (kb - k0);
      xsq[b - k0 / XB] =
          float(roundInt8(x + (kb - k0), ke - kb, xs[b - k0 / XB], [&](int64_t i, int8_t v) { qb[i] = v; }));
    }
    for (int64_t k = k1; k < std::min<int64_t>(KPAD, k0 + (k1 - k0 + GK - 1) / GK * GK); ++k)
      q[k - k0] = 0;
  }

  /// Rows rounded to int8 by quantizeRange from feature k0: row i's q at q + i * qstride, its block scales
  /// and sums of q at s / sq + i * sstride.
  struct Rounded {
    const int8_t *q;
    const float *s, *sq;
    int64_t qstride, sstride, k0;
  };

  /// The rounded inputs of features k..k+3 of row i, as one 32-bit word (what a group's byte products take).
  static inline int32_t quad(const Rounded &x, int i, int64_t k) {
    int32_t w;
    std::memcpy(&w, x.q + i * x.qstride + (k - x.k0), 4);
    return w;
  }

  /// isum[i][j] = sum over features [k0, k1) (whole groups) of code(j, k) * xq[i][k]: 4 products per column
  /// per byte-multiply-add (AVX-512 VNNI's vpdpbusd, or AVX2's vpmaddubsw + vpmaddwd), or plain integer loops
  /// elsewhere (the same exact sums). `ahead` (bytes, 0 for none): each group's cache line that far on is
  /// prefetched (the same features of a panel read next, when the panels are not read one after another).
  template <int M>
  __attribute__((always_inline)) static inline void groupDots(const uint8_t *panel, const Rounded &x,
                                                              int64_t k0, int64_t k1, int32_t (&isum)[M][NR],
                                                              int64_t ahead = 0) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    // AVX-512 VNNI: a group's 16 columns are one register; vpdpbusd sums 4 u8 x s8 products per i32 lane.
    const __m512i low = _mm512_set1_epi8(0x0F), zero = _mm512_setzero_si512();
    __m512i acc[M];
#pragma unroll
    for (int i = 0; i < M; ++i)
      acc[i] = zero;
    for (int64_t k = k0; k < k1; k += GK) {
      if (ahead)
        __builtin_prefetch(panel + (k / GK) * NR * 4 + ahead);
      const __m512i w = _mm512_loadu_si512(panel + (k / GK) * NR * 4);
      if constexpr (QBITS == 8) {
        const __m512i aw = _mm512_abs_epi8(w); // |w| as u8 (|-128| = 128), x takes w's sign
        const __mmask64 neg = _mm512_movepi8_mask(w);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const __m512i xb = _mm512_set1_epi32(quad(x, i, k));
          acc[i] = _mm512_dpbusd_epi32(acc[i], aw, _mm512_mask_sub_epi8(xb, neg, zero, xb));
        }
      } else {
        const __m512i lo = _mm512_and_si512(w, low), hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          acc[i] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i], lo, _mm512_set1_epi32(quad(x, i, k))), hi,
                                       _mm512_set1_epi32(quad(x, i, k + 4)));
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i)
      _mm512_storeu_si512(isum[i], acc[i]);
#elif defined(__AVX2__)
    const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
    __m256i acc[M][2];
#pragma unroll
    for (int i = 0; i < M; ++i)
      acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; k += GK) {
      const uint8_t *g = panel + (k / GK) * NR * 4;
      if (ahead)
        __builtin_prefetch(g + ahead);
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(g));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(g + 32));
      if constexpr (QBITS == 8) {
        // u8 x s8 multiply: |w| times x with w's sign (|products| <= 128 * 127, pairs fit in i16).
        const __m256i a0 = _mm256_sign_epi8(w0, w0), a1 = _mm256_sign_epi8(w1, w1);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const __m256i xb = _mm256_set1_epi32(quad(x, i, k));
          acc[i][0] = _mm256_add_epi32(
              acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(xb, w0)), ones));
          acc[i][1] = _mm256_add_epi32(
              acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(xb, w1)), ones));
        }
      } else {
        const __m256i l0 = _mm256_and_si256(w0, low), h0 = _mm256_and_si256(_mm256_srli_epi16(w0, 4), low);
        const __m256i l1 = _mm256_and_si256(w1, low), h1 = _mm256_and_si256(_mm256_srli_epi16(w1, 4), low);
#pragma unroll
        for (int i = 0; i < M; ++i) {
          const __m256i xa = _mm256_set1_epi32(quad(x, i, k)), xb = _mm256_set1_epi32(quad(x, i, k + 4));
          // codes 0..15 times |x| <= 127: each i16 pair sum of the two halves stays below 2^15
          acc[i][0] = _mm256_add_epi32(
              acc[i][0],
              _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(l0, xa), _mm256_maddubs_epi16(h0, xb)),
                                ones));
          acc[i][1] = _mm256_add_epi32(
              acc[i][1],
              _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(l1, xa), _mm256_maddubs_epi16(h1, xb)),
                                ones));
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
      _mm256_storeu_si256(reinterpret_cast<__m256i *>(isum[i]), acc[i][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i *>(isum[i] + 8), acc[i][1]);
    }
#else
    for (int i = 0; i < M; ++i)
      for (int64_t j = 0; j < NR; ++j)
        isum[i][j] = 0;
    for (int64_t k = k0; k < k1; k += GK) {
      const uint8_t *g = panel + (k / GK) * NR * 4;
      for (int64_t j = 0; j < NR; ++j)
        for (int q = 0; q < GK; ++q) {
          const uint8_t byte = g[j * 4 + q % 4];
          const int32_t code = QBITS == 8 ? int32_t(int8_t(byte)) : int32_t(q < 4 ? byte & 15 : byte >> 4);
          for (int i = 0; i < M; ++i)
            isum[i][j] += code * int32_t(x.q[i * x.qstride + (k - x.k0) + q]);
        }
    }
#endif
  }

  /// acc[i] += input rows a[i * K ..] x quantised panel p, every feature, in f32: codes times inputs summed
  /// per block, then scaled once (sum w x = s sum code x + o sum x; `xsum` [M][KB] the rows' sums per block).
  template <int M>
  __attribute__((always_inline)) static inline void
  codeTile(const uint8_t *panel, const Scale *sc, const float *of, const float *a, const float *xsum,
           vf (&acc)[M][NV], int64_t ahead = 0) {
    constexpr bool OFFSET = C::AFFINE || QBITS == 4;
    for (int64_t kb = 0; kb < K; kb += BLK) {
      const int64_t ke = std::min<int64_t>(K, kb + BLK);
      vf s[NV], o[NV];
      blockScales(sc, of, kb, s, o);
      vf b[2][M][NV] = {};
      // whole groups, then the block's last features (a partial group past K)
      auto group = [&](int64_t k, auto guard) {
        u32x16 g;
        if (ahead)
          __builtin_prefetch(panel + (k / GK) * NR * 4 + ahead);
        std::memcpy(&g, panel + (k / GK) * NR * 4, sizeof g);
        eachFeature(g, [&](auto q, f32x16 codes) {
          constexpr int Q = decltype(q)::value;
          if (decltype(guard)::value && k + Q >= ke)
            return;
          vf cv[NV];
          split(codes, cv);
#pragma unroll
          for (int i = 0; i < M; ++i) {
            const vf x = splat(a[i * K + k + Q]);
#pragma unroll
            for (int v = 0; v < NV; ++v)
              b[Q % 2][i][v] += x * cv[v];
          }
        });
      };
      int64_t k = kb;
      for (; k + GK <= ke; k += GK)
        group(k, std::false_type{});
      if (k < ke)
        group(k, std::true_type{});
#pragma unroll
      for (int i = 0; i < M; ++i)
#pragma unroll
        for (int v = 0; v < NV; ++v) {
          acc[i][v] += s[v] * (b[0][i][v] + b[1][i][v]);
          if (OFFSET)
            acc[i][v] += o[v] * xsum[i * KB + kb / BLK];
        }
    }
  }

  /// acc[i] += rounded input rows i x panel p over features [k0, k1) (k0 a multiple of XB): integer sums per
  /// input block, scaled once each (`ahead`: as groupDots').
  template <int M>
  __attribute__((always_inline)) static inline void intTile(const uint8_t *panel, const Scale *sc,
                                                            const float *of, const Rounded &x, int64_t k0,
                                                            int64_t k1, vf (&acc)[M][NV], int64_t ahead = 0) {
    constexpr bool OFFSET = C::AFFINE || QBITS == 4;
    for (int64_t b = k0 / XB; b * XB < k1; ++b) {
      const int64_t kb = b * XB, ke = std::min<int64_t>(k1 == K ? KPAD : k1, kb + XB);
      alignas(64) int32_t isum[M][NR];
      groupDots<M>(panel, x, kb, ke, isum, ahead);
      vf s[NV], o[NV];
      blockScales(sc, of, kb, s, o);
      const int64_t bi = b - x.k0 / XB;
#pragma unroll
      for (int i = 0; i < M; ++i) {
        const float xsc = x.s[i * x.sstride + bi], xsum = x.sq[i * x.sstride + bi];
#pragma unroll
        for (int v = 0; v < NV; ++v) {
          i32xv is;
          std::memcpy(&is, isum[i] + v * VW, sizeof is);
          vf t = __builtin_convertvector(is, vf) * s[v];
          if (OFFSET)
            t += o[v] * xsum;
          acc[i][v] += t * xsc;
        }
      }
    }
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

  /// Features [k0, k1) of quantised panel p as f32 into `out` ([k1 - k0][NR]; k0 a multiple of GK): done
  /// once per panel and K block in prefill, then every row tile of the block runs the f32 micro-kernel on it.
  static void dequant(const moert_linear_args &a, int64_t p, int64_t k0, int64_t k1, float *out) {
    dequantPanel(static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) + p * PANELB,
                 static_cast<const Scale *>(a.weights[MOERT_LIN_SCALES]) + p * KB * NR,
                 C::AFFINE ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]) + p * KB * NR : nullptr,
                 k0, k1, out);
  }
  /// The same for the panel at `panel` with its scales `sc` ([KB][NR]) and offsets `of` (AFFINE).
  static void dequantPanel(const uint8_t *panel, const Scale *sc, const float *of, int64_t k0, int64_t k1,
                           float *out) {
    vf s[NV], o[NV];
    for (int64_t k = k0; k < k1; k += GK) {
      if (k == k0 || k % BLK == 0)
        blockScales(sc, of, k, s, o);
      u32x16 g;
      std::memcpy(&g, panel + (k / GK) * NR * 4, sizeof g);
      float *dst = out + (k - k0) * NR;
      eachFeature(g, [&](auto q, f32x16 c) {
        constexpr int Q = decltype(q)::value;
        if (k + Q >= k1)
          return;
        vf cv[NV];
        split(c, cv);
#pragma unroll
        for (int v = 0; v < NV; ++v)
          storev(dst + Q * NR + v * VW, cv[v] * s[v] + o[v]);
      });
    }
  }

  struct Ctx {
    const moert_linear_args *a;
    int64_t rowBlock, rowBlocks, group, groups;
    // int8/int4 decode: the rows rounded to int8 ([M][KPAD]), their scales and sums of q per block ([M][KX])
    const int8_t *xq;
    const float *xs, *xsq;
    const float *xsum; // int8/int4 decode in f32: each row's input sum per block ([M][KB])
    const uint32_t *xp; // PAIRS prefill: the rows rounded to bf16 pairs, [row tile][KP][MR]
  };

  // plain panels; a dequantised f32 slice; codes times f32 inputs (decode); integer dot products (decode);
  // bf16 pairs (prefill with BF16_ACT: the panels' pairs as stored; `ap` the rows' pairs)
  enum Mode { PLAIN, DEQ, CODES, INT, PAIR };

  /// Rows [r, r + M) x panels [p, p + P) over features [k0, k1): the first K block starts from the bias (or
  /// zero), the others from the output so far; the last adds the residual. Columns past N (the last panel's
  /// padding) are never stored. `deq`: the P panels' dequantised slices, KC * NR floats apart (DEQ).
  template <int M, Mode MODE, bool PK, int P = 1>
  static void block(const moert_linear_args &a, const Ctx &c, const float *deq, const float *ap,
                    const Rounded *rx, int64_t r, int64_t p, int64_t k0, int64_t k1, int64_t ahead = 0) {
    static_assert(P == 1 || MODE == PLAIN || MODE == DEQ || MODE == PAIR,
                  "several panels at once only in f32 and bf16 pairs");
    const uint8_t *w = static_cast<const uint8_t *>(a.weights[MOERT_LIN_W]) + p * PANELB;
    vf acc[M][P * NV];
    const float *bias = C::HAS_BIAS ? static_cast<const float *>(a.weights[MOERT_LIN_BIAS]) : nullptr;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int64_t n0 = (p + j) * NR, cols = std::min<int64_t>(NR, N - n0);
      if (k0 == 0) {
#pragma unroll
        for (int i = 0; i < M; ++i)
#pragma unroll
          for (int v = 0; v < NV; ++v)
            acc[i][j * NV + v] = bias ? loadv(bias + n0 + v * VW) : vf{};
      } else {
        for (int i = 0; i < M; ++i) {
          float tmp[NR] = {};
          columns<false>(a, r + i, n0, cols, tmp);
          for (int v = 0; v < NV; ++v)
            acc[i][j * NV + v] = loadv(tmp + v * VW);
        }
      }
    }
    const float *in = PK ? ap : a.input + r * K;
    if constexpr (MODE == PAIR) {
      static_assert(PK, "pairs are packed");
      gemmMicroPairs<M, P>(reinterpret_cast<const uint16_t *>(w) + k0 * NR, PANELB / 2,
                           reinterpret_cast<const uint32_t *>(ap), k1 - k0, acc);
    } else if constexpr (MODE == DEQ) {
      gemmMicro<M, P, PK>(deq, KC * NR, PK ? in : in + k0, K, k1 - k0, acc);
    } else if constexpr (MODE == CODES) {
      const Scale *sc = static_cast<const Scale *>(a.weights[MOERT_LIN_SCALES]) + p * KB * NR;
      const float *of =
          C::AFFINE ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]) + p * KB * NR : nullptr;
      codeTile<M>(w, sc, of, in, c.xsum + r * KB, acc, ahead);
    } else if constexpr (MODE == INT) {
      const Scale *sc = static_cast<const Scale *>(a.weights[MOERT_LIN_SCALES]) + p * KB * NR;
      const float *of =
          C::AFFINE ? static_cast<const float *>(a.weights[MOERT_LIN_OFFSETS]) + p * KB * NR : nullptr;
      intTile<M>(w, sc, of, *rx, k0, k1, acc, ahead);
    } else if constexpr (QBITS == 0) {
      gemmMicro<M, P, PK>(reinterpret_cast<const typename C::W *>(w) + k0 * NR,
                          PANELB / int64_t(sizeof(typename C::W)), PK ? in : in + k0, K, k1 - k0, acc, ahead);
    }
    const bool last = k1 == K;
#pragma unroll
    for (int j = 0; j < P; ++j) {
      const int64_t n0 = (p + j) * NR, cols = std::min<int64_t>(NR, N - n0);
      for (int i = 0; i < M; ++i) {
        float tmp[NR];
        for (int v = 0; v < NV; ++v)
          storev(tmp + v * VW, acc[i][j * NV + v]);
        if (last && a.residual) {
          const float *res = a.residual + (r + i) * N + n0;
          for (int64_t q = 0; q < cols; ++q)
            tmp[q] += res[q];
        }
        columns<true>(a, r + i, n0, cols, tmp);
      }
    }
  }

  template <Mode MODE, bool PK, int P = 1>
  static void rows(const moert_linear_args &a, const Ctx &c, const float *deq, const float *ap,
                   const Rounded *rx, int64_t m, int64_t r, int64_t p, int64_t k0, int64_t k1,
                   int64_t ahead = 0) {
    gemmRows(m,
             [&](auto n) { block<decltype(n)::value, MODE, PK, P>(a, c, deq, ap, rx, r, p, k0, k1, ahead); });
  }

  static void work(void *p, int64_t item, int) {
    const Ctx &c = *static_cast<const Ctx *>(p);
    const moert_linear_args &a = *c.a;
    const int64_t M = a.rows;
    const int64_t rb = item / c.groups, g = item % c.groups;
    const int64_t r0 = rb * c.rowBlock, r1 = std::min(M, r0 + c.rowBlock);
    const int64_t p0 = g * c.group, p1 = std::min(NP, p0 + c.group);
    if constexpr (QBITS != 0 && C::INT8_ACT) {
      // rows rounded once by run(); integer dot products over all of K, one pass per row tile and panel (the
      // panel stays in L1 while the item's row tiles use it)
      for (int64_t pp = p0; pp < p1; ++pp)
        for (int64_t r = r0; r < r1; r += MR) {
          const Rounded rx{c.xq + r * KPAD, c.xs + r * KX, c.xsq + r * KX, KPAD, KX, 0};
          rows<INT, false>(a, c, nullptr, nullptr, &rx, std::min<int64_t>(MR, r1 - r), r, pp, 0, K,
                           r == r0 ? kLinIntAhead : 0);
        }
      return;
    }
    if (M > MR)
      return prefill(c, r0, r1, p0, p1);
    if (QBITS && c.xsum) { // int8/int4 decode of up to CODE_ROWS rows in f32: codes times inputs, one pass
      for (int64_t pp = p0; pp < p1; ++pp)
        rows<CODES, false>(a, c, nullptr, nullptr, nullptr, r1 - r0, r0, pp, 0, K, kLinAhead);
      return;
    }
    // Decode (M <= MR): plain panels in one pass over K (no partial sums through memory); int8/int4 ones
    // (3 or more rows in f32) dequantised per K block. Rows read in place.
    const int64_t kc = !QBITS ? K : KC;
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      const int64_t k1 = std::min(K, k0 + kc);
      for (int64_t pp = p0; pp < p1; ++pp) {
        if constexpr (QBITS != 0) {
          alignas(64) float deq[KC * NR];
          dequant(a, pp, k0, k1, deq);
          for (int64_t r = r0; r < r1; r += MR)
            rows<DEQ, false>(a, c, deq, nullptr, nullptr, std::min<int64_t>(MR, r1 - r), r, pp, k0, k1);
        } else {
          for (int64_t r = r0; r < r1; r += MR)
            rows<PLAIN, false>(a, c, nullptr, nullptr, nullptr, std::min<int64_t>(MR, r1 - r), r, pp, k0, k1,
                               r == r0 ? kLinAhead : 0);
        }
      }
    }
  }

  /// Prefill: per K block, the item's input rows packed tile by tile (L2-resident), then for each set of PW
  /// panels (int8/int4: dequantised once into f32 slices; BF16_ACT: the stored pairs) every row
  /// tile runs the micro-kernel on them.
  __attribute__((noinline)) static void prefill(const Ctx &c, int64_t r0, int64_t r1, int64_t p0, int64_t p1) {
    const moert_linear_args &a = *c.a;
    if constexpr (PAIRS) { // the rows' pairs packed once per call (layer); the panels' pairs as stored
      for (int64_t k0 = 0; k0 < K; k0 += KCP) {
        const int64_t k1 = std::min(K, k0 + KCP);
        for (int64_t pp = p0; pp < p1;) {
          const int64_t np = p1 - pp >= PW ? PW : 1;
          for (int64_t r = r0; r < r1; r += MR) {
            const float *at = reinterpret_cast<const float *>(c.xp + r / MR * KP * MR + k0 / 2 * MR);
            const int64_t m = std::min<int64_t>(MR, r1 - r);
            if (np == PW)
              rows<PAIR, true, PW>(a, c, nullptr, at, nullptr, m, r, pp, k0, k1);
            else
              rows<PAIR, true>(a, c, nullptr, at, nullptr, m, r, pp, k0, k1);
          }
          pp += np;
        }
      }
      return;
    }
    alignas(64) float ap[kLinMC * KC];
    alignas(64) float deq[QBITS ? PW * KC * NR : 1];
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
      const int64_t k1 = std::min(K, k0 + KC);
      packA(a.input, r0, r1, k0, k1, ap);
      for (int64_t pp = p0; pp < p1;) {
        const int64_t np = p1 - pp >= PW ? PW : 1;
        if constexpr (QBITS != 0)
          for (int64_t j = 0; j < np; ++j)
            dequant(a, pp + j, k0, k1, deq + j * KC * NR);
        constexpr Mode MODE = QBITS ? DEQ : PLAIN;
        for (int64_t r = r0; r < r1; r += MR) {
          const float *at = ap + (r - r0) / MR * KC * MR;
          const int64_t m = std::min<int64_t>(MR, r1 - r);
          if (np == PW)
            rows<MODE, true, PW>(a, c, deq, at, nullptr, m, r, pp, k0, k1);
          else
            rows<MODE, true>(a, c, deq, at, nullptr, m, r, pp, k0, k1);
        }
        pp += np;
      }
    }
  }

  static int run(const moert_linear_args *a) {
    if constexpr (C::NORM != MOERT_NORM_NONE) {
      // A fused norm: the rows normalised into the scratch (in parallel), then the layer on them.
      const int64_t M = a->rows;
      if (M <= 0)
        return 0;
      char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(a->scratch) + 63) & ~uintptr_t(63));
      moert_linear_args na = *a;
      na.input = reinterpret_cast<const float *>(base);
      na.scratch = base + normBytes(M) - 64;
      struct Norm {
        const moert_linear_args *a;
        float *y;
        static void row(void *p, int64_t i, int) {
          const Norm &n = *static_cast<const Norm *>(p);
          normRow<C::NORM>(n.a->input + i * K, static_cast<const float *>(n.a->weights[MOERT_LIN_NORM_W]),
                           static_cast<const float *>(n.a->weights[MOERT_LIN_NORM_B]), C::EPS, K,
                           n.y + i * K);
        }
      } norm{a, reinterpret_cast<float *>(base)};
      if (M == 1 || a->exec->threads <= 1)
        for (int64_t i = 0; i < M; ++i)
          Norm::row(&norm, i, 0);
      else
        a->exec->parallel_for(a->exec->pool, M, &norm, &Norm::row);
      return layer(&na);
    }
    return layer(a);
  }

  /// The layer on rows already normalised (or without a norm).
  static int layer(const moert_linear_args *a) {
    const int64_t M = a->rows;
    if (M <= 0)
      return 0;
    const moert_exec &ex = *a->exec;
    Ctx c{};
    c.a = a;
    // int8 activations: the rows rounded to int8 once, shared by every panel (on the stack for decode, in the
    // scratch for more rows, rounded in parallel).
    const bool intDecode = QBITS && C::INT8_ACT && M <= MQ;
    c.rowBlock = M <= MR || intDecode ? M : kLinMC;
    c.rowBlocks = (M + c.rowBlock - 1) / c.rowBlock;
    // Enough items for every thread (about 4 each), panels per item between 1 and kLinMaxGroup.
    const int64_t want = 4 * std::max(1, ex.threads);
    c.group = std::clamp<int64_t>(NP * c.rowBlocks / want, 1, kLinMaxGroup);
    if (M > MR && c.group > PW)
      c.group = c.group / PW * PW; // whole register tiles of PW panels
    c.groups = (NP + c.group - 1) / c.group;
    alignas(64) int8_t xq[MQ ? MQ * KPAD : 1];
    float xs[MQ ? MQ * KX : 1], xsq[MQ ? MQ * KX : 1];
    if (intDecode) {
      for (int64_t i = 0; i < M; ++i)
        quantizeRange(a->input + i * K, 0, K, xq + i * KPAD, xs + i * KX, xsq + i * KX);
      c.xq = xq, c.xs = xs, c.xsq = xsq;
    } else if (QBITS && C::INT8_ACT) {
      char *base = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(a->scratch) + 63) & ~uintptr_t(63));
      c.xq = reinterpret_cast<int8_t *>(base);
      c.xs = reinterpret_cast<float *>(base + (size_t(M) * KPAD + 63) / 64 * 64);
      c.xsq = c.xs + M * KX;
      struct Round {
        const moert_linear_args *a;
        int8_t *q;
        float *s, *sq;
        static void row(void *p, int64_t i, int) {
          const Round &r = *static_cast<const Round *>(p);
          quantizeRange(r.a->input + i * K, 0, K, r.q + i * KPAD, r.s + i * KX, r.sq + i * KX);
        }
      } round{a, const_cast<int8_t *>(c.xq), const_cast<float *>(c.xs), const_cast<float *>(c.xsq)};
      ex.parallel_for(ex.pool, M, &round, &Round::row);
    }
    if (PAIRS && M > MR) { // prefill with bf16 activations: the rows rounded to pairs once, in parallel
      c.xp =
          reinterpret_cast<const uint32_t *>((reinterpret_cast<uintptr_t>(a->scratch) + 63) & ~uintptr_t(63));
      struct Pack {
        const moert_linear_args *a;
        uint32_t *xp;
        static void tile(void *p, int64_t t, int) {
          const Pack &k = *static_cast<const Pack *>(p);
          packBf16Pairs(k.a->input + t * MR * K, K, std::min<int64_t>(MR, k.a->rows - t * MR), K,
                        k.xp + t * KP * MR, KP * MR);
        }
      } pack{a, const_cast<uint32_t *>(c.xp)};
      ex.parallel_for(ex.pool, (M + MR - 1) / MR, &pack, &Pack::tile);
    }
    float xsum[CODE_ROWS ? CODE_ROWS * KB : 1];
    if (CODE_ROWS && M <= CODE_ROWS) {
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

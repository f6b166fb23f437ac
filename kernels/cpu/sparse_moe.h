//===- sparse_moe.h - the fused sparse MoE kernel template for CPUs ------------===//
//
// `moec compile` specialises this template per `moe.sparse_moe` dispatch: it writes a translation unit that
// defines a config struct `C` (every shape, k, activation, flag as a compile-time constant), includes this
// header and exports `moert_dispatch_<i>` (kernels/cpu/moert_kernel_abi.h). clang-19 then compiles it for the
// target CPU (-march), so loops over H and F have known trip counts and vectorise for AVX-512 / AVX2.
//
// One call computes, for T tokens, exactly `moe.sparse_moe`'s contract (ir/MoEOps.td):
//
//   A. per token (parallel): optional RMSNorm/LayerNorm, router logits, softmax/sigmoid/identity, selection
//   bias,
//      grouped top-k, top-k (ties: lower index), renormalise, scale;
//   B. tokens grouped by expert (counting sort, token order kept);
//   C. work items (parallel): one expert x a tile of up to TT tokens x a chunk of the hidden dims. Each
//      weight row is read once per tile and used for every token in it; only the chosen experts' rows (and
//      only kept dims: masked or predicted) are read. A token's contribution goes to its own partial buffer
//      P[t][slot][chunk], so no two items write the same memory;
//   D. per token (parallel): output = residual + sum over slots, then chunks, of P — a fixed order, so the
//      result does not depend on which thread ran what (it does depend on the chunk count, which follows
//      T and the thread count).
//
// Expert parallelism (moert_moe_phase, docs/scale-out.md) runs A alone (ROUTE), the shared expert's items of
// C (SHARED), the routed experts of rows other ranks sent through Kernel<PreRouted<C>> (B-D with one slot per
// row: moert_dispatch_<i>_rows), and D over the returned slots (COMBINE): the same code as a whole layer, in
// pieces.
//
// Decode (few tokens) splits F into chunks so every thread streams a part of each chosen expert (bandwidth
// bound); prefill uses token tiles of up to kTile tokens and one chunk: tiles of kGemmTokens or more run as
// two GEMMs on gemm.h's micro-kernel (the one the linear dispatches use; each expert's rows packed into
// panels per tile), smaller ones reuse each weight row for the tile's tokens in register-blocked loops.
// Where codegen stores the experts in the linear kernel's panels (C::PANELS: f32 / bf16 / fp16 experts, and
// int8 / int4 ones with int8 activations, on CPU targets), every tile runs on them: the same micro-kernel
// reading the panels where they lie (plain), or linear.h's integer tiles.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_SPARSE_MOE_H
#define MOERT_KERNELS_CPU_SPARSE_MOE_H

#include "gemm.h"
#include "linear.h"
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

constexpr int64_t kTile = 128;    // tokens per work item at most: each weight row is reused this many times
constexpr int64_t kTokBlock = 6;  // tokens sharing each gate/up weight load (register blocking)
constexpr int64_t kDimBlock = 64; // the most hidden dims per block (the coefficient buffer's row length)
constexpr int64_t kL2Budget = 192 * 1024; // bytes of a dim block's gate/up rows meant to stay in L2
constexpr int64_t kMaxChunks = 16;        // hidden-dim chunks per expert visit (parallelism in decode)
// Token tiles of at least kGemmTokens tokens run on gemm.h's micro-kernel (see Kernel::gemmTile). With the
// experts' rows copied into panels per tile, fc1 walks K in blocks of kMoeKC features and fc2 in blocks of up
// to kMoeKC dims, so that PW panels' slices (kMoeKC x PW x NR floats: 32 KiB on AVX-512) stay in L1 while
// every row tile of the tile's tokens uses them (panels stored at compile time take the linear kernel's
// longer blocks, see gemmTile); each copy of
// an expert's rows (fc1: up to kMoeDB dims, every feature; fc2: every column) is at most kMoePackBytes and
// stays in L2 while the GEMM reads it; fc2 runs after each super block of kMoeFB dims' activations.
constexpr int64_t kGemmTokens = 16;
constexpr int64_t kMoeKC = 128;
constexpr int64_t kMoePackBytes = 1 << 20;
constexpr int64_t kMoeFB = 512;
// Decode and token tiles under kGemmTokens with fc2 panels (Kernel::intDecode) take up to kMoeDecodeFB dims a
// pass: fc2's panels are then read whole when an expert's dims fit one pass, one stream instead of a slice
// of every panel per pass (measured, OLMoE-like int8+a8 decode, T = 1/4/8, 2 threads, alternating with
// passes of kMoeFB dims: 1.01-1.03x median, within noise at best).
constexpr int64_t kMoeDecodeFB = 2048;
constexpr int64_t kMoeDB = 64;
// Plain panels' decode (Kernel::plainDecode) prefetches the next fc2 panel's slice when a slice is at most
// this long (see there).
constexpr int64_t kNextSliceBytes = 16 * 1024;
constexpr int64_t kTileRows = (kTile + kGemmMR - 1) / kGemmMR * kGemmMR; // a tile's tokens in whole row tiles

// ---- weight rows
// ------------------------------------------------------------------------------------------- The kernels
// read expert weights through a row view: load(h) gives VW weights from column h (a multiple of VW) as f32,
// at(h) one. Plain rows are f32 or bf16; quantised rows hold symmetric integers and scales of type S (f16
// where moec quantised them, C::SCALE16; f32 otherwise):
//   QBlock<BITS, BLK>: fc1 rows, one scale per BLK consecutive columns (BLK a multiple of 16, or >= H);
//   QVec<BITS>:        fc2 rows (fc2 transposed), one scale per column, shared by a block of rows.
// 8-bit values are int8; 4-bit ones are nibbles (low first, zero point 8), two per byte along the row.
template <typename T> struct Plain {
  static constexpr int64_t LINE = 64 / int64_t(sizeof(T)); // elements per cache line
  const T *p;
  vf load(int64_t h) const { return loadv(p + h); }
  void prefetch(int64_t h) const { __builtin_prefetch(p + h); }
  float at(int64_t h) const { return tofloat(p[h]); }
  Plain off(int64_t h) const { return {p + h}; }
};

typedef int8_t i8xv __attribute__((vector_size(VW)));
typedef uint8_t u8xv __attribute__((vector_size(VW)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
/// 8 nibbles of a little-endian word (element k in bits 4k..4k+3), centred: value - 8.
inline u32x8 nibbles(uint32_t w) {
  const u32x8 shifts = {0, 4, 8, 12, 16, 20, 24, 28};
  return (u32x8{w, w, w, w, w, w, w, w} >> shifts) & 15u;
}
template <int BITS> inline vf loadQ(const uint8_t *q, int64_t h) {
  if constexpr (BITS == 8) {
    i8xv b;
    std::memcpy(&b, q + h, sizeof b);
    return __builtin_convertvector(__builtin_convertvector(b, i32xv), vf);
  } else {
#if MOERT_VW == 8
    uint32_t w;
    std::memcpy(&w, q + h / 2, sizeof w);
    return __builtin_convertvector(nibbles(w), vf) - 8.0f;
#else
    uint32_t w[2];
    std::memcpy(w, q + h / 2, sizeof w);
    u32xv n = __builtin_shufflevector(nibbles(w[0]), nibbles(w[1]), 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                      13, 14, 15);
    return __builtin_convertvector(n, vf) - 8.0f;
#endif
  }
}
template <int BITS> inline float atQ(const uint8_t *q, int64_t h) {
  if constexpr (BITS == 8)
    return float(int8_t(q[h]));
  else
    return float(int((q[h >> 1] >> ((h & 1) * 4)) & 15) - 8);
}

template <int BITS, int64_t BLK, class S> struct QBlock {
  static constexpr int64_t LINE = 64 * 8 / BITS;
  const uint8_t *q;
  const S *s;
  vf load(int64_t h) const { return loadQ<BITS>(q, h) * tofloat(s[h / BLK]); }
  float at(int64_t h) const { return atQ<BITS>(q, h) * tofloat(s[h / BLK]); }
  void prefetch(int64_t h) const { __builtin_prefetch(q + h * BITS / 8); }
};

template <int BITS, class S> struct QVec {
  static constexpr int64_t LINE = 64 * 8 / BITS;
  const uint8_t *q;
  const S *s;
  vf load(int64_t h) const { return loadQ<BITS>(q, h) * loadv(s + h); }
  float at(int64_t h) const { return atQ<BITS>(q, h) * tofloat(s[h]); }
  QVec off(int64_t h) const { return {q + h * BITS / 8, s + h}; }
  void prefetch(int64_t h) const { __builtin_prefetch(q + h * BITS / 8); }
};

/// Prefetches row r's cache lines `ahead` elements past [h, h + SPAN), for a loop that reads SPAN elements a
/// step: each line once (a step shorter than a line asks on the steps that start one).
template <int64_t SPAN, class Row> inline void prefetchAhead(const Row &r, int64_t h, int64_t ahead) {
  if (SPAN < Row::LINE && h % Row::LINE != 0)
    return;
  for (int64_t e = 0; e < std::max<int64_t>(SPAN, Row::LINE); e += Row::LINE)
    r.prefetch(h + ahead + e);
}

/// a . b with four independent vector accumulators (hides the FMA latency of a single chain). AHEAD (bytes, 0
/// for none): the row's cache lines that far on are prefetched (decode reads rows one after another).
template <int64_t AHEAD = 0, class Row> inline float dot(Row a, const float *__restrict b, int64_t n) {
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t i = 0;
  for (; i + 4 * VW <= n; i += 4 * VW) {
    if constexpr (AHEAD > 0)
      prefetchAhead<4 * VW>(a, i, AHEAD / 64 * Row::LINE);
    s0 += a.load(i) * loadv(b + i);
    s1 += a.load(i + VW) * loadv(b + i + VW);
    s2 += a.load(i + 2 * VW) * loadv(b + i + 2 * VW);
    s3 += a.load(i + 3 * VW) * loadv(b + i + 3 * VW);
  }
  for (; i + VW <= n; i += VW)
    s0 += a.load(i) * loadv(b + i);
  float acc = hsum((s0 + s1) + (s2 + s3));
  for (; i < n; ++i)
    acc += a.at(i) * b[i];
  return acc;
}
inline float dot(const float *a, const float *b, int64_t n) { return dot(Plain<float>{a}, b, n); }

/// For NT tokens at once: g[i] = ra . x[i] and (TWO) u[i] = rb . x[i]. Each weight chunk is loaded once for
/// all NT tokens, with 2 * NT independent accumulators in registers (the blocking that lets prefill use the
/// FMA units instead of waiting on loads).
/// AHEAD: as dot's (the rows' first reader prefetches them; later token blocks find them in L2).
template <bool TWO, int NT, int64_t AHEAD, class Row>
inline void dotsN(Row ra, Row rb, const float *const *x, int64_t n, float *g, float *u) {
  vf ag[NT] = {}, au[NT] = {};
  int64_t h = 0;
  for (; h + VW <= n; h += VW) {
    if constexpr (AHEAD > 0) {
      prefetchAhead<VW>(ra, h, AHEAD / 64 * Row::LINE);
      if (TWO)
        prefetchAhead<VW>(rb, h, AHEAD / 64 * Row::LINE);
    }
    vf wa = ra.load(h);
    vf wb = TWO ? rb.load(h) : vf{};
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      vf xv = loadv(x[i] + h);
      ag[i] += wa * xv;
      if (TWO)
        au[i] += wb * xv;
    }
  }
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    g[i] = hsum(ag[i]);
    u[i] = TWO ? hsum(au[i]) : 0.0f;
    for (int64_t k = h; k < n; ++k) {
      g[i] += ra.at(k) * x[i][k];
      if (TWO)
        u[i] += rb.at(k) * x[i][k];
    }
  }
}

template <bool TWO, int64_t AHEAD, class Row>
inline void dotsTokens(Row ra, Row rb, const float *const *x, int64_t nt, int64_t n, float *g, float *u) {
  switch (nt) {
  case 6:
    return dotsN<TWO, 6, AHEAD>(ra, rb, x, n, g, u);
  case 5:
    return dotsN<TWO, 5, AHEAD>(ra, rb, x, n, g, u);
  case 4:
    return dotsN<TWO, 4, AHEAD>(ra, rb, x, n, g, u);
  case 3:
    return dotsN<TWO, 3, AHEAD>(ra, rb, x, n, g, u);
  case 2:
    return dotsN<TWO, 2, AHEAD>(ra, rb, x, n, g, u);
  default:
    return dotsN<TWO, 1, AHEAD>(ra, rb, x, n, g, u);
  }
}

template <int64_t AHEAD = 0, class Row> inline void axpy(float *__restrict y, float a, Row x, int64_t n) {
  int64_t i = 0;
  const vf av = splat(a);
  for (; i + VW <= n; i += VW) {
    if constexpr (AHEAD > 0) // as dot's
      prefetchAhead<VW>(x, i, AHEAD / 64 * Row::LINE);
    storev(y + i, loadv(y + i) + av * x.load(i));
  }
  for (; i < n; ++i)
    y[i] += a * x.at(i);
}
inline void axpy(float *y, float a, const float *x, int64_t n) { axpy(y, a, Plain<float>{x}, n); }

// ---- integer dot products for quantised fc1 rows (decode) ------------------------------------------------
// A token whose fc1 rows are int8/int4 in blocks of a multiple of kXBlock columns is rounded once to int8 per
// block of kXBlock: q = round-half-even(x * (127 / max|x|)), x ~ q * max|x| / 127 (as the linear kernel's
// decode and ggml's Q8_0 do). A row's dot product is then integer sums per block, scaled once each. int4 rows
// hold column 2i in byte i's low nibble and 2i + 1 in its high one, so the rounded token is stored with each
// 64 columns' even ones first, then the odd ones: one byte multiply-add per nibble half.
constexpr int64_t kXBlock = MOERT_INT8_ACT_BLOCK;
constexpr int64_t kQAhead = 2048; // bytes of rows prefetched ahead of the decode loops
constexpr int64_t kZpLanes = 4;   // i32 lanes of an AVX2 vector one input block's int4 products land in
struct QTok {
  const int8_t *q;   // [H] (int4 rows: per 64 columns, the even ones then the odd ones)
  const float *s;    // [H / kXBlock] scales
  const int32_t *zp; // [H / kXBlock][kZpLanes]: each block's 2 * (sum of q), once per lane (int4's zero point
                     // of 8 comes off the 4 lanes a block's products land in)
};

template <int BITS> inline void roundToken(const float *x, int64_t n, int8_t *q, float *s, int32_t *zp) {
  for (int64_t b = 0; b < n / kXBlock; ++b) {
    const int32_t sq = roundInt8(x + b * kXBlock, kXBlock, s[b], [&](int64_t i, int8_t v) {
      const int64_t h =
          b * kXBlock + i; // int4: column h of a 64-column chunk goes to (h % 2) * 32 + (h % 64) / 2
      q[BITS == 4 ? (h / 64) * 64 + (h % 2) * 32 + (h % 64) / 2 : h] = v;
    });
    if constexpr (BITS == 4) // (int8 codes have no zero point)
      for (int64_t l = 0; l < kZpLanes; ++l)
        zp[b * kZpLanes + l] = 2 * sq;
  }
}

#if defined(__AVX2__)
/// The i32 sums of one step of a quantised row times a rounded token: int8, columns c..c+31 (one input block,
/// partial sums in all 8 lanes); int4, columns c..c+63 (lanes 0-3: the first input block, 4-7: the second;
/// codes are centred on 8, taken off as 2 * (sum of q) per lane).
template <int BITS> inline __m256i qsums(const uint8_t *w, const QTok &x, int64_t c) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + c));
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.q + c));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
  } else {
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(w + c / 2));
    const __m256i lo = _mm256_and_si256(b, low), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
    const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.q + c));
    const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.q + c + 32));
    const __m256i p =
        _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo)), ones);
    return _mm256_sub_epi32(
        p, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x.zp + c / kXBlock * kZpLanes)));
  }
}
#endif

#if defined(__AVX2__)
inline __m256 load8(const float *p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const _Float16 *p) { // F16C: every AVX2 target moec generates for has it
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}
#endif

/// sum_h w[h] * x[h] of a quantised row (codes `w`, a scale per BLK columns `ws`) and a rounded token.
template <int BITS, int64_t BLK, int64_t H, class S>
inline float qdot(const uint8_t *w, const S *ws, const QTok &x) {
  static_assert(BLK % kXBlock == 0 && H % (BITS == 4 ? 64 : 32) == 0, "whole blocks");
#if defined(__AVX2__)
  constexpr int64_t STEP = BITS == 4 ? 64 : 32; // columns per step
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  auto add = [&](int64_t step, __m256i p, __m256 sc) __attribute__((always_inline)) {
    if (step % 2) // two accumulators: the FMAs of consecutive steps overlap
      acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc1);
    else
      acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc0);
  };
  int64_t h = 0;
  if constexpr (BLK == kXBlock) {
    // A scale per input block: the scale products of 8 blocks (256 columns) in one vector, each step's taken
    // out of it by a lane permutation (instead of scalar products and broadcasts per step).
    for (; h + 256 <= H; h += 256) {
      const __m256 sc = _mm256_mul_ps(load8(ws + h / kXBlock), _mm256_loadu_ps(x.s + h / kXBlock));
#pragma unroll
      for (int k = 0; k < 256 / STEP; ++k) {
        const int64_t c = h + STEP * k;
        if ((c * BITS / 8) % 64 == 0) // rows are read one after another: ask for the bytes kQAhead further on
          __builtin_prefetch(w + c * BITS / 8 + kQAhead);
        // int8: the step's block; int4: its two blocks, in lanes 0-3 and 4-7
        const __m256i lanes = BITS == 8 ? _mm256_set1_epi32(k)
                                        : _mm256_setr_epi32(2 * k, 2 * k, 2 * k, 2 * k, 2 * k + 1, 2 * k + 1,
                                                            2 * k + 1, 2 * k + 1);
        add(k, qsums<BITS>(w, x, c), _mm256_permutevar8x32_ps(sc, lanes));
      }
    }
  }
  // Scales per block of BLK > kXBlock columns, or the columns after the last 256: scale products per step.
  for (; h < H; h += STEP) {
    if ((h * BITS / 8) % 64 == 0)
      __builtin_prefetch(w + h * BITS / 8 + kQAhead);
    const int64_t j = h / kXBlock;
    const __m256 sc = BITS == 8 ? _mm256_set1_ps(tofloat(ws[h / BLK]) * x.s[j])
                                : _mm256_set_m128(_mm_set1_ps(tofloat(ws[(h + 32) / BLK]) * x.s[j + 1]),
                                                  _mm_set1_ps(tofloat(ws[h / BLK]) * x.s[j]));
    add(h / STEP, qsums<BITS>(w, x, h), sc);
  }
  const __m256 a = _mm256_add_ps(acc0, acc1);
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
#else
  float acc = 0.0f;
  for (int64_t j = 0; j < H / kXBlock; ++j) {
    int32_t t = 0;
    for (int64_t i = 0; i < kXBlock; ++i) {
      const int64_t h = j * kXBlock + i;
      if constexpr (BITS == 8)
        t += int32_t(int8_t(w[h])) * x.q[h];
      else
        t += (int32_t((w[h / 2] >> ((h & 1) * 4)) & 15) - 8) *
             x.q[(h / 64) * 64 + (h % 2) * 32 + (h % 64) / 2];
    }
    acc += float(t) * (tofloat(ws[j * kXBlock / BLK]) * x.s[j]);
  }
  return acc;
#endif
}

/// How a dispatch's expert weights are stored (C::QBITS: 0 = C::W elements, 8 or 4 = quantised): the row
/// views of expert e (or the shared expert, e = -1) with `fdim` hidden dims.
template <class C, int BITS = C::QBITS> struct ExpertRows {
  using R1 = Plain<typename C::W>;
  using R2 = Plain<typename C::W>;
  const typename C::W *w1, *w2;
  int64_t fdim;
  ExpertRows(const moert_moe_args &a, int64_t e, int64_t fdim, int64_t g) : fdim(fdim) {
    bool shared = e < 0;
    w1 = static_cast<const typename C::W *>(a.weights[shared ? MOERT_SHARED1 : MOERT_FC1]) +
         (shared ? 0 : e * fdim * g * C::H);
    w2 = static_cast<const typename C::W *>(a.weights[shared ? MOERT_SHARED2 : MOERT_FC2]) +
         (shared ? 0 : e * fdim * C::H);
  }
  R1 row1(int64_t r) const { return {w1 + r * C::H}; } // r = f * G + part
  R2 row2(int64_t f) const { return {w2 + f * C::H}; }
  // C::PANELS: fc1 and fc2 are instead the linear kernel's panels of kGemmNR columns, K-major: fc1's panel
  // p = (f / kGemmNR) * G + part over the H features ([H][NR]), fc2's panel p over the expert's fdim dims
  // ([fdim][NR], columns p * NR ..).
  const typename C::W *panel1(int64_t p) const { return w1 + p * C::H * kGemmNR; }
  const typename C::W *panel2(int64_t p) const { return w2 + p * fdim * kGemmNR; }
};

template <class C> struct QuantRows {
  static constexpr int BITS = C::QBITS;
  using Scale = std::conditional_t<C::SCALE16, _Float16, float>; // as stored (MOERT_FC1_SCALES, ...)
  static constexpr int64_t BLK = C::QBLOCK1;     // fc1 columns per scale
  static constexpr int64_t RB = C::H * BITS / 8; // bytes per row
  static constexpr int64_t NB1 = (C::H + BLK - 1) / BLK;
  using R1 = QBlock<BITS, BLK, Scale>;
  using R2 = QVec<BITS, Scale>;
  const uint8_t *q1, *q2;
  const Scale *s1, *s2;
  int64_t blk2; // fc2 rows per scale row
  QuantRows(const moert_moe_args &a, int64_t e, int64_t fdim, int64_t g) {
    bool shared = e < 0;
    int64_t ex = shared ? 0 : e;
    blk2 = C::QBLOCK2 > 0 ? C::QBLOCK2 : fdim;
    int64_t nb2 = (fdim + blk2 - 1) / blk2;
    q1 = static_cast<const uint8_t *>(a.weights[shared ? MOERT_SHARED1 : MOERT_FC1]) + ex * fdim * g * RB;
    q2 = static_cast<const uint8_t *>(a.weights[shared ? MOERT_SHARED2 : MOERT_FC2]) + ex * fdim * RB;
    s1 = static_cast<const Scale *>(a.weights[shared ? MOERT_SHARED1_SCALES : MOERT_FC1_SCALES]) +
         ex * fdim * g * NB1;
    s2 = static_cast<const Scale *>(a.weights[shared ? MOERT_SHARED2_SCALES : MOERT_FC2_SCALES]) +
         ex * nb2 * C::H;
  }
  R1 row1(int64_t r) const { return {q1 + r * RB, s1 + r * NB1}; }
  R2 row2(int64_t f) const { return {q2 + f * RB, s2 + (f / blk2) * C::H}; }
  // C::PANELS: fc1 is instead the linear kernel's panels (MOERT_FC1), panel p = (f / kGemmNR) * G + part
  // holding part `part` of kGemmNR dims, and its scales ([KB][kGemmNR] a panel).
  const uint8_t *panel1(int64_t p) const { return q1 + p * RB * kGemmNR; }
  const Scale *panelScales1(int64_t p) const { return s1 + p * NB1 * kGemmNR; }
};
template <class C> struct ExpertRows<C, 8> : QuantRows<C> { using QuantRows<C>::QuantRows; };
template <class C> struct ExpertRows<C, 4> : QuantRows<C> { using QuantRows<C>::QuantRows; };

/// An expert's weights as the linear kernel (linear.h) sees them, for the integer tiles of C::PANELS: K_
/// features in, N_ columns out, blocks of QBLOCK_ features, symmetric codes with f16 (S16) or f32 scales,
/// rounded int8 inputs.
template <class C, int64_t K_, int64_t N_, int64_t QBLOCK_, bool S16> struct ExpertLayer {
  using W = uint8_t;
  static constexpr int QBITS = C::QBITS, NORM = MOERT_NORM_NONE, NOUT = 1;
  static constexpr int64_t K = K_, N = N_, QBLOCK = QBLOCK_;
  static constexpr bool AFFINE = false, HAS_BIAS = false, HAS_NORM_BIAS = false, INT8_ACT = true,
                        BF16_ACT = false;
  static constexpr bool SCALE16 = S16;
  static constexpr float EPS = 0.0f;
  static constexpr int64_t SPLIT[2] = {0, N_};
};
/// The fc2 of an expert with FD hidden dims stored in the linear kernel's panels (C::PANELS, see
/// MOERT_FC2): K = FD dims in, N = H columns out, blocks of QBLOCK2 dims (one block when 0), scales as
/// stored.
template <class C, int64_t FD>
using Fc2Layer = ExpertLayer<C, FD, C::H, (C::QBLOCK2 > 0 ? C::QBLOCK2 : FD), C::SCALE16>;
/// One panel of fc1 (kGemmNR hidden dims, one part of a gated pair) as stored with C::PANELS (see MOERT_FC1):
/// K = H features in, blocks of QBLOCK1, scales as stored.
template <class C>
using Fc1Layer = ExpertLayer<C, C::H, kGemmNR, (C::QBLOCK1 > 0 ? C::QBLOCK1 : C::H), C::SCALE16>;

inline float sigmoid(float a) { return 1.0f / (1.0f + std::exp(-a)); }
inline float gelu_erf(float a) { return 0.5f * a * (1.0f + std::erf(a * 0.70710678118654752f)); }
inline float gelu_tanh(float a) {
  return 0.5f * a * (1.0f + std::tanh(0.79788456080286536f * (a + 0.044715f * a * a * a)));
}

constexpr size_t align64(size_t n) { return (n + 63) & ~size_t(63); }

// Expert parallelism's rows (moert_dispatch_<i>_rows): a layer's config turned into one whose "tokens" are
// rows that each name their expert and weight (moert_moe_args.routes / route_weights) and that need no norm,
// router, shared expert or residual: one slot per row, the routed experts' code path unchanged.
template <class C> struct PreRouted : C {
  static constexpr int64_t K = 1, N = C::E, FS = 0, GROUPS = 1, GROUP_TOPK = 0;
  static constexpr int NORM = MOERT_NORM_NONE;
  static constexpr bool LINEAR_ROUTER = false, HAS_SHARED = false, NORMALIZE = false, SPARSEMIXER = false,
                        PREROUTED = true;
};
template <class C, class = void> struct IsPreRouted : std::false_type {};
template <class C>
struct IsPreRouted<C, std::void_t<decltype(C::PREROUTED)>> : std::bool_constant<C::PREROUTED> {};

template <class C> struct Kernel {
  static constexpr int64_t H = C::H, F = C::F, E = C::E, N = C::N, K = C::K;
  static constexpr bool PREROUTED = IsPreRouted<C>::value;
  static_assert(!PREROUTED || (K == 1 && !C::HAS_SHARED && C::NORM == MOERT_NORM_NONE),
                "rows: one slot each");
  static constexpr int64_t G = (C::ACT == MOERT_ACT_SWIGLU || C::ACT == MOERT_ACT_GEGLU) ? 2 : 1;
  static constexpr int64_t S = K + (C::HAS_SHARED ? 1 : 0); // slots: k routed + the shared expert
  // Hidden dims per block in prefill: as many as keep their gate/up rows within kL2Budget (4..64).
  static constexpr int64_t WBITS = C::QBITS ? C::QBITS : 8 * int64_t(sizeof(typename C::W));
  static constexpr int64_t DB =
      std::max<int64_t>(4, std::min<int64_t>(kDimBlock, kL2Budget * 8 / (G * H * WBITS) / 4 * 4));
  // With INT8_ACT, decode and token tiles smaller than a GEMM's (kGemmTokens) multiply int8/int4 fc1 rows by
  // the tokens rounded to int8 (integer dot products, see QTok) when their blocks are whole input blocks and
  // H whole vectors of codes; GEMM tiles use f32.
  static constexpr bool INT_FC1 =
      C::QBITS != 0 && C::INT8_ACT && C::QBLOCK1 % kXBlock == 0 && H % (C::QBITS == 4 ? 64 : 32) == 0;
  static constexpr int64_t XBS = INT_FC1 ? H / kXBlock : 0; // input blocks of a token
  // C::PANELS (codegen's choice, with INT8_ACT on CPU targets): fc1 and fc2 are stored in the linear
  // kernel's panels (MOERT_FC1, MOERT_FC2); every expert rounds its tokens per tile and its fc2 inputs (the
  // activations times the routing weight) to int8 per block of kXBlock dims, and both layers are integer dot
  // products on linear.h's code (Fc1::intTile, Fc2<FD>::intTile), whatever the expert's token count.
  // Chunks of dims start at multiples of kXBlock, so the rounding blocks are the same whatever the chunking,
  // and fc1's panels are whole.
  static constexpr bool INT_FC2 = C::PANELS && C::QBITS != 0;
  // C::PANELS with plain weights (f32, bf16, fp16; codegen's choice on CPU targets): fc1 and fc2 are stored
  // in the linear kernel's panels (MOERT_FC1, MOERT_FC2; ExpertRows::panel1 / panel2), so GEMM tiles read
  // them where they lie instead of copying each expert's rows into panels per tile, and decode and smaller
  // tiles run the same micro-kernel on them (plainDecode). Chunks of dims are whole fc1 panels.
  static constexpr bool PLAIN_PANELS = C::PANELS && C::QBITS == 0;
  // C::BF16_ACT (--activations=bf16, bf16 experts) with the experts in panels: GEMM tiles round their
  // tokens and fc2's inputs to bf16 and multiply bf16 pairs (gemm.h's gemmMicroPairs on the panels' pairs as
  // stored, MOERT_LIN_W); decode and smaller tiles (plainDecode) take f32 inputs. Experts in rows (an
  // artifact with GPU code) take f32 inputs here; the GPU's matrix-core kernels round (sparse_moe_gpu.h).
  static constexpr bool PAIRS = C::BF16_ACT && C::PANELS;
  static_assert(!C::BF16_ACT || std::is_same_v<typename C::W, uint16_t>,
                "bf16 activations need bf16 experts");
  static_assert(!PAIRS || PLAIN_PANELS, "bf16 pairs in plain panels");
  // Tokens rounded once in the routing pass (QTok form, for fc1's rows): integer fc1 without panels.
  static constexpr bool ROUND_IN_ROUTE = INT_FC1 && !INT_FC2;
  static constexpr int64_t FSX = C::HAS_SHARED ? C::FS : F; // the shared expert's dims (F without one)
  template <int64_t FD> using Fc2 = Linear<Fc2Layer<C, FD>>;
  using Fc1 = Linear<Fc1Layer<C>>;
  static_assert(!INT_FC2 || (INT_FC1 && !C::HAS_PRED && H % kGemmNR == 0 && F % kXBlock == 0 &&
                             FSX % kXBlock == 0 && C::QBLOCK2 % kXBlock == 0),
                "panels need integer fc1, no predictor, whole column panels and whole input blocks of dims");
  static_assert(!INT_FC2 || kXBlock % kGemmNR == 0, "chunks of dims are whole fc1 panels");
  static_assert(!PLAIN_PANELS || (!C::HAS_PRED && H % kGemmNR == 0 && F % kGemmNR == 0 && FSX % kGemmNR == 0),
                "plain panels need no predictor and whole panels of columns and of dims");
  // chunks of dims start at multiples of this
  static constexpr int64_t DIM_GRAIN = INT_FC2 ? kXBlock : PLAIN_PANELS ? kGemmNR : 1;

  struct Item {
    int32_t expert;     // -1: shared expert
    int32_t begin, end; // range in the entry list (routed) or token range (shared)
    int32_t f0, f1, chunk;
  };

  struct Layout {
    int64_t T, chunks, maxItems, fmax;
    size_t x, chosen, weight, counts, entries, items, partial, pred, coef, xq, xs, xsq, gemm, dec, total;
  };

  // gemmTile's copies of an expert's weights: fc1's rows for DB1 dims (a multiple of NR, at most kMoeDB) and
  // fc2's rows for KC2 dims (at most kMoeKC), each over every feature / column, so a copy reads whole rows
  // (one contiguous stretch of the expert's weights) and its f32 panels stay in L2 (kMoePackBytes) while the
  // GEMM reads them.
  static constexpr int64_t H16 = H / kGemmNR * kGemmNR; // columns in whole panels
  static constexpr int64_t DB1 = std::clamp<int64_t>(
      kMoePackBytes / int64_t(sizeof(float) * G * H) / kGemmNR * kGemmNR, kGemmNR, kMoeDB);
  static constexpr int64_t KC2 = std::clamp<int64_t>(kMoePackBytes / int64_t(sizeof(float) * H), 1, kMoeKC) /
                                 (PAIRS ? 2 : 1) * (PAIRS ? 2 : 1); // whole pairs of dims with PAIRS
  static_assert(KC2 >= 1 && kMoeKC % 2 == 0, "fc1's K blocks and fc2's are whole pairs");
  // Per-thread buffers of gemmTile (floats): the tile's tokens packed for the micro-kernel ([row
  // tile][H][MR]), fc1's panels for DB1 dims ([G * DB1 / NR panels][H][NR]), their outputs ([kTileRows][G *
  // DB1]), the coefficients of a super block of dims ([row tile][kMoeFB][MR]), fc2's panels for KC2 dims in
  // f32 ([H16 / NR panels][KC2][NR]), and the tile's output rows (LDO floats apart: H plus a cache line, so
  // rows do not share cache sets the way the partial buffers' rows, 64 KiB apart with 8 slots of H = 2048,
  // do). With PAIRS the tokens and coefficients are bf16 pairs in the first half of theirs.
  static constexpr int64_t LDO = H + 16;
  static constexpr int64_t GA = kTileRows * H, GB1 = PLAIN_PANELS ? 0 : G * DB1 * H,
                           GH1 = kTileRows * G * DB1, GCF = kTileRows * kMoeFB,
                           GB2 = PLAIN_PANELS ? 0 : KC2 * H16, GO = kTileRows * LDO;
  static constexpr size_t kF32GemmBytes = sizeof(float) * (GA + GB1 + GH1 + GCF + GB2 + GO) + 6 * 64;
  // intGemm's (INT_FC2): the tile's tokens rounded to int8 ([kTile][Fc1::KPAD]) with their scales and sums
  // of q ([kTile][Fc1::KX] each), fc1's outputs for a panel ([kTile][G][NR]), the fc2 inputs of a super block
  // of dims ([kTile][kMoeFB]) and them rounded ([kTile][kMoeFB], scales and sums [kTile][kMoeFB / kXBlock]).
  struct IntBufs {
    int8_t *xq;
    float *xs, *xsq;
    float *h, *cf;
    int8_t *q2;
    float *qs, *qsum;
  };
  static constexpr size_t kIntXq = align64(size_t(kTile) * Fc1::KPAD),
                          kIntXs = align64(sizeof(float) * kTile * Fc1::KX),
                          kIntH = align64(sizeof(float) * kTile * G * kGemmNR),
                          kIntCf = align64(sizeof(float) * kTile * kMoeFB),
                          kIntQ2 = align64(size_t(kTile) * kMoeFB),
                          kIntQs = align64(sizeof(float) * kTile * (kMoeFB / kXBlock));
  static constexpr size_t kIntGemmBytes = kIntXq + 2 * kIntXs + kIntH + kIntCf + kIntQ2 + 2 * kIntQs + 64;
  static constexpr size_t kGemmThreadBytes = INT_FC2 ? kIntGemmBytes : kF32GemmBytes;
  // intDecode's (INT_FC2), for tiles of up to `rows` tokens: the fc2 inputs of a pass of DFB dims
  // ([rows][DFB]) and them rounded ([rows][DFB], scales and sums [rows][DFB / kXBlock]), the tokens rounded
  // ([rows][Fc1::KPAD], scales and sums [rows][Fc1::KX]) and fc1's outputs for a panel ([rows][G][NR]).
  static constexpr int64_t DFB =
      std::min<int64_t>(kMoeDecodeFB, (std::max<int64_t>(F, FSX) + kXBlock - 1) / kXBlock * kXBlock);
  // plainDecode's (PLAIN_PANELS), for tiles of up to `rows` tokens: the tokens' rows side by side
  // ([rows][H]), fc1's outputs for a panel ([rows][G][NR]) and the fc2 inputs of a pass of DFB dims
  // ([rows][DFB]).
  static constexpr size_t decBytes(int64_t rows) {
    if (PLAIN_PANELS)
      return align64(sizeof(float) * rows * H) + align64(sizeof(float) * rows * G * kGemmNR) +
             align64(sizeof(float) * rows * DFB);
    return align64(sizeof(float) * rows * DFB) + align64(size_t(rows) * DFB) +
           2 * align64(sizeof(float) * rows * (DFB / kXBlock)) + align64(size_t(rows) * Fc1::KPAD) +
           2 * align64(sizeof(float) * rows * Fc1::KX) + align64(sizeof(float) * rows * G * kGemmNR);
  }
  static constexpr int64_t decRows(int64_t T) { return std::min<int64_t>(T, kGemmTokens); }
  static IntBufs intBufs(char *mine) {
    char *p = reinterpret_cast<char *>(alignTo64(mine));
    IntBufs b;
    auto take = [&](size_t bytes) {
      char *at = p;
      p += bytes;
      return at;
    };
    b.xq = reinterpret_cast<int8_t *>(take(kIntXq));
    b.xs = reinterpret_cast<float *>(take(kIntXs));
    b.xsq = reinterpret_cast<float *>(take(kIntXs));
    b.h = reinterpret_cast<float *>(take(kIntH));
    b.cf = reinterpret_cast<float *>(take(kIntCf));
    b.q2 = reinterpret_cast<int8_t *>(take(kIntQ2));
    b.qs = reinterpret_cast<float *>(take(kIntQs));
    b.qsum = reinterpret_cast<float *>(take(kIntQs));
    return b;
  }

  static int64_t chunkCount(int64_t T, int threads) {
    if (C::HAS_PRED)
      return 1;
    int64_t tiles = (T * K + kTile - 1) / kTile + (C::HAS_SHARED ? (T + kTile - 1) / kTile : 0);
    int64_t want = tiles >= 2 * threads ? 1 : (2 * threads + tiles - 1) / tiles;
    int64_t byDims = std::max<int64_t>(1, F / std::max<int64_t>(16, DIM_GRAIN));
    return std::max<int64_t>(1, std::min({want, kMaxChunks, byDims}));
  }

  static Layout layout(int64_t T, int threads) {
    Layout l{};
    l.T = T;
    l.chunks = chunkCount(T, threads);
    l.maxItems = ((T * K + kTile - 1) / kTile + E + (T + kTile - 1) / kTile + 1) * l.chunks + T * K;
    size_t off = 0;
    auto take = [&](size_t bytes) {
      size_t at = off;
      off += align64(bytes);
      return at;
    };
    l.x = take(C::NORM != MOERT_NORM_NONE ? sizeof(float) * T * H : 0);
    l.chosen = take(sizeof(int32_t) * T * K);
    l.weight = take(sizeof(float) * T * K);
    l.counts = take(sizeof(int64_t) * (E + 1));
    l.entries = take(sizeof(int32_t) * 2 * T * K);
    l.items = take(sizeof(Item) * l.maxItems);
    l.partial = take(sizeof(float) * T * S * l.chunks * H);
    l.pred = take(C::HAS_PRED ? (sizeof(float) * (C::R + F) + sizeof(int32_t) * F) * threads : 0);
    l.fmax = std::max<int64_t>(F, C::FS);
    l.coef = take(sizeof(float) * kTile * kDimBlock * threads);
    l.xq = take(ROUND_IN_ROUTE ? size_t(T * H) : 0);
    l.xs = take(ROUND_IN_ROUTE ? sizeof(float) * T * XBS : 0);
    // int4 zero points (QTok::zp)
    l.xsq = take(ROUND_IN_ROUTE && C::QBITS == 4 ? sizeof(int32_t) * T * XBS * kZpLanes : 0);
    l.gemm = take(!C::HAS_PRED && T >= kGemmTokens ? kGemmThreadBytes * threads : 0);
    l.dec = take(C::PANELS ? decBytes(decRows(T)) * threads : 0);
    l.total = off;
    return l;
  }

  struct Ctx {
    const moert_moe_args *a;
    Layout l;
    const float *X; // normalised input rows
    int32_t *chosen;
    float *weight;
    int64_t *counts;
    int32_t *entries;
    Item *items;
    float *partial;
    char *pred;
    float *coef; // per thread: [kTile][kDimBlock] activations times routing weight
    int8_t *xq;  // ROUND_IN_ROUTE: each token rounded to int8 ([T][H]), scales ([T][XBS]), zero-point terms
                 // ([T][XBS][kZpLanes], see QTok)
    float *xs;
    int32_t *xsq;
    char *gemm; // gemmTile's buffers, kGemmThreadBytes per thread
    char *dec;  // intDecode's buffers, decBytes(decRows(T)) per thread
  };

  // ---- A: normalise and route one token ----------------------------------------------------------------
  static void route(void *p, int64_t t, int) {
    Ctx &c = *static_cast<Ctx *>(p);
    const moert_moe_args &a = *c.a;
    const float *in = a.input + t * H;
    const float *x = in;
    if constexpr (PREROUTED) { // a row sent to this expert's rank: its expert and weight come with it
      c.chosen[t] = a.routes[t];
      c.weight[t] = a.route_weights[t];
      if constexpr (ROUND_IN_ROUTE)
        roundToken<C::QBITS>(x, H, c.xq + t * H, c.xs + t * XBS, c.xsq + t * XBS * kZpLanes);
      return;
    }
    if constexpr (C::NORM != MOERT_NORM_NONE) {
      float *xn = const_cast<float *>(c.X) + t * H;
      normRow<C::NORM>(in, static_cast<const float *>(a.weights[MOERT_NORM_W]),
                       static_cast<const float *>(a.weights[MOERT_NORM_B]), C::EPS, H, xn);
      x = xn;
    }
    if constexpr (ROUND_IN_ROUTE)
      roundToken<C::QBITS>(x, H, c.xq + t * H, c.xs + t * XBS, c.xsq + t * XBS * kZpLanes);
    float logits[N], scores[N], choice[N];
    if (C::LINEAR_ROUTER) {
      const float *r = static_cast<const float *>(a.weights[MOERT_ROUTER]);
      const float *rb = static_cast<const float *>(a.weights[MOERT_ROUTER_BIAS]);
      for (int64_t n = 0; n < N; ++n)
        logits[n] = dot(r + n * H, x, H) + (rb ? rb[n] : 0.0f);
    } else {
      std::memcpy(logits, a.logits + t * N, sizeof(logits));
    }
    if (C::IDENTITY_GATE || C::SPARSEMIXER) { // the logits are the routing weights / sparsemixer's input
      std::memcpy(scores, logits, sizeof(scores));
    } else if (C::SIGMOID_GATE) {
      for (int64_t n = 0; n < N; ++n)
        scores[n] = sigmoid(logits[n]);
    } else {
      float mx = logits[0];
      for (int64_t n = 1; n < N; ++n)
        mx = std::max(mx, logits[n]);
      float sum = 0.0f;
      for (int64_t n = 0; n < N; ++n)
        sum += scores[n] = std::exp(logits[n] - mx);
      for (int64_t n = 0; n < N; ++n)
        scores[n] /= sum;
    }
    const float *sb = static_cast<const float *>(a.weights[MOERT_SEL_BIAS]);
    for (int64_t n = 0; n < N; ++n)
      choice[n] = scores[n] + (sb ? sb[n] : 0.0f);
    if (C::GROUPS > 1) {
      constexpr int64_t per = N / C::GROUPS;
      float groupScore[C::GROUPS];
      bool keepGroup[C::GROUPS] = {};
      for (int64_t g = 0; g < C::GROUPS; ++g) {
        float best = -INFINITY, second = -INFINITY;
        for (int64_t j = 0; j < per; ++j) {
          float v = choice[g * per + j];
          if (v > best) {
            second = best;
            best = v;
          } else if (v > second) {
            second = v;
          }
        }
        groupScore[g] = per >= 2 && !C::GROUP_MAX ? best + second : best;
      }
      for (int64_t pick = 0; pick < C::GROUP_TOPK; ++pick) {
        int64_t arg = -1;
        for (int64_t g = 0; g < C::GROUPS; ++g)
          if (!keepGroup[g] && (arg < 0 || groupScore[g] > groupScore[arg]))
            arg = g;
        keepGroup[arg] = true;
      }
      for (int64_t n = 0; n < N; ++n)
        if (!keepGroup[n / per])
          choice[n] = -INFINITY;
    }
    bool taken[N] = {};
    int32_t *chosen = c.chosen + t * K;
    float *w = c.weight + t * K;
    float wsum = 0.0f;
    for (int64_t s = 0; s < K; ++s) {
      int64_t arg = -1;
      for (int64_t n = 0; n < N; ++n)
        if (!taken[n] && (arg < 0 || choice[n] > choice[arg]))
          arg = n;
      if (C::SPARSEMIXER) {
        // A softmax over the experts still free whose logit is within 2 jitter_eps (relative) of the best.
        const float m = scores[arg];
        float z = 0.0f;
        for (int64_t n = 0; n < N; ++n)
          if (!taken[n] && !((m - scores[n]) / std::max(std::fabs(scores[n]), m) > 2.0f * C::JITTER_EPS))
            z += std::exp(scores[n] - m);
        taken[arg] = true;
        chosen[s] = int32_t(arg);
        w[s] = 1.0f / z;
        wsum += w[s];
        continue;
      }
      taken[arg] = true;
      chosen[s] = int32_t(arg);
      w[s] = scores[arg];
      wsum += w[s];
    }
    for (int64_t s = 0; s < K; ++s)
      w[s] = (C::NORMALIZE ? w[s] / wsum : w[s]) * C::SCALE;
  }

  /// Row r of fc1 (r = f * G + part) times token t's (normalised) input x.
  static float fc1(const Ctx &c, const ExpertRows<C> &rows, int64_t r, const float *x, int64_t t) {
    if constexpr (INT_FC1) {
      const auto row = rows.row1(r);
      return qdot<C::QBITS, C::QBLOCK1, H>(row.q, row.s,
                                           QTok{c.xq + t * H, c.xs + t * XBS, c.xsq + t * XBS * kZpLanes});
    } else {
      return dot<kQAhead>(rows.row1(r), x, H);
    }
  }

  static float activate(float g, float u) {
    if (G == 2) {
      if (C::LIMIT > 0.0f) {
        g = std::min(g, C::LIMIT);
        u = std::min(std::max(u, -C::LIMIT), C::LIMIT);
      }
      if (C::ACT == MOERT_ACT_SWIGLU)
        return g * sigmoid(C::ALPHA * g) * (u + C::BETA);
      return gelu_erf(g) * (u + C::BETA);
    }
    switch (C::ACT) {
    case MOERT_ACT_RELU:
      return g > 0.0f ? g : 0.0f;
    case MOERT_ACT_GELU:
      return gelu_erf(g);
    case MOERT_ACT_GELU_TANH:
      return gelu_tanh(g);
    case MOERT_ACT_SILU:
      return g * sigmoid(g);
    default:
      return g;
    }
  }

  /// d[h] += sum_j cf[j] * fc2t[fi[j]][h] for quantised rows that share one scale row (one fc2 row block):
  /// the codes times cf summed first, then each column scaled once.
  static void downScaledOnce(const ExpertRows<C> &rows, const int64_t *fi, const float *cf, int64_t nf,
                             float *d) {
    if constexpr (C::QBITS != 0) {
      const auto *sc = rows.row2(fi[0]).s;
      int64_t h = 0;
      if constexpr (C::QBITS == 4) {
        // int4: VW bytes hold 2 * VW columns; each byte widened once gives its even column (low nibble) and
        // its odd one (high nibble) in two vectors, as stored (0..15: the zero point comes off once per
        // column as 8 * sum cf), and the even / odd sums are put back in column order as each column is
        // scaled. (Measured, whole-model int4 decode: the MoE dispatches 11-19% faster than widening each
        // nibble into column order.)
        float csum = 0.0f;
        for (int64_t j = 0; j < nf; ++j)
          csum += cf[j];
        const vf off = splat(8.0f * csum);
        for (; h + 4 * VW <= H; h += 4 * VW) {
          vf e0 = {}, o0 = {}, e1 = {}, o1 = {};
          for (int64_t j = 0; j < nf; ++j) {
            const uint8_t *q = rows.row2(fi[j]).q + h / 2;
            __builtin_prefetch(q + 8 * 2 * VW);
            u8xv b0, b1;
            std::memcpy(&b0, q, sizeof b0);
            std::memcpy(&b1, q + VW, sizeof b1);
            const u32xv w0 = __builtin_convertvector(b0, u32xv), w1 = __builtin_convertvector(b1, u32xv);
            const vf cj = splat(cf[j]);
            e0 += cj * __builtin_convertvector(w0 & 15u, vf);
            o0 += cj * __builtin_convertvector(w0 >> 4, vf);
            e1 += cj * __builtin_convertvector(w1 & 15u, vf);
            o1 += cj * __builtin_convertvector(w1 >> 4, vf);
          }
          storeInterleaved(d + h, sc + h, e0 - off, o0 - off);
          storeInterleaved(d + h + 2 * VW, sc + h + 2 * VW, e1 - off, o1 - off);
        }
      } else {
        for (; h + 4 * VW <= H; h += 4 * VW) {
          vf a0 = {}, a1 = {}, a2 = {}, a3 = {};
          for (int64_t j = 0; j < nf; ++j) {
            const uint8_t *q = rows.row2(fi[j]).q;
            // nf rows advance side by side, one stream each: too many for the hardware prefetcher to follow
            __builtin_prefetch(q + h + 8 * 4 * VW);
            const vf cj = splat(cf[j]);
            a0 += cj * loadQ<C::QBITS>(q, h);
            a1 += cj * loadQ<C::QBITS>(q, h + VW);
            a2 += cj * loadQ<C::QBITS>(q, h + 2 * VW);
            a3 += cj * loadQ<C::QBITS>(q, h + 3 * VW);
          }
          storev(d + h, loadv(d + h) + a0 * loadv(sc + h));
          storev(d + h + VW, loadv(d + h + VW) + a1 * loadv(sc + h + VW));
          storev(d + h + 2 * VW, loadv(d + h + 2 * VW) + a2 * loadv(sc + h + 2 * VW));
          storev(d + h + 3 * VW, loadv(d + h + 3 * VW) + a3 * loadv(sc + h + 3 * VW));
        }
      }
      for (; h < H; ++h) { // the last columns (H not a multiple of 4 vectors)
        float a = 0.0f;
        for (int64_t j = 0; j < nf; ++j)
          a += cf[j] * atQ<C::QBITS>(rows.row2(fi[j]).q, h);
        d[h] += a * tofloat(sc[h]);
      }
    }
  }

  /// fc2 on integer tiles (INT_FC2) for dims [fb, fe) (at most SB) of an expert with FD dims: the n tokens'
  /// fc2 inputs (`cf`, row i at cf + i * ldc holding dims from fb) rounded to int8 per kXBlock dims (into q,
  /// qs, qsum: [n][SB], [n][SB / kXBlock]), then fc2 panel by panel on the linear kernel's integer tiles (a
  /// panel's slice of dims used by every token while in L1), added to each token's row dst[i].
  template <int64_t FD, int64_t SB>
  static void fc2Ints(const ExpertRows<C> &rows, const float *cf, int64_t ldc, int64_t n, int64_t fb,
                      int64_t fe, int8_t *q, float *qs, float *qsum, float *const *dst) {
    using L = Fc2<FD>;
    static_assert(L::XB == kXBlock && SB % kXBlock == 0, "fc2 inputs rounded per input block");
    constexpr int64_t XN = SB / kXBlock, NR = kGemmNR, MR = kGemmMR;
    for (int64_t i = 0; i < n; ++i)
      L::quantizeRange(cf + i * ldc, fb, fe, q + i * SB, qs + i * XN, qsum + i * XN);
    for (int64_t p = 0; p < L::NP; ++p) {
      const uint8_t *panel = rows.q2 + p * L::PANELB;
      const auto *sc = rows.s2 + p * L::KB * NR;
      for (int64_t i0 = 0; i0 < n; i0 += MR)
        gemmRows(std::min<int64_t>(MR, n - i0), [&](auto m) {
          constexpr int M = decltype(m)::value;
          vf acc[M][kGemmNV] = {};
          const typename L::Rounded rx{q + i0 * SB, qs + i0 * XN, qsum + i0 * XN, SB, XN, fb};
          // the next panel's slice is PANELB further on, past the hardware prefetchers' page
          L::template intTile<M>(panel, sc, nullptr, rx, fb, fe, acc, i0 == 0 ? L::PANELB : 0);
#pragma unroll
          for (int i = 0; i < M; ++i)
#pragma unroll
            for (int64_t v = 0; v < kGemmNV; ++v) {
              float *d = dst[i0 + i] + p * NR + v * VW;
              storev(d, loadv(d) + acc[i][v]);
            }
        });
    }
  }

  /// fc1 on integer tiles (INT_FC2) for dims [fb, fe) (whole panels) of n tokens rounded as Fc1's inputs
  /// (`xq` [n][KPAD], `xs` / `xsq` [n][KX]): per panel of kGemmNR dims, both parts' sums for every token
  /// (into `h`, [n][G][NR]), then cf[i * ldc + f - fb] = ws[i] * activate(gate, up), fc1's bias added, masked
  /// dims 0.
  static void fc1Ints(const ExpertRows<C> &rows, int64_t fb, int64_t fe, int64_t n, const int8_t *xq,
                      const float *xs, const float *xsq, const float *ws, const float *b1,
                      const uint8_t *mask, float *h, float *cf, int64_t ldc) {
    constexpr int64_t NR = kGemmNR, MR = kGemmMR, KPAD = Fc1::KPAD, KX = Fc1::KX;
    for (int64_t f0 = fb; f0 < fe; f0 += NR) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t p = (f0 / NR) * G + g;
        for (int64_t i0 = 0; i0 < n; i0 += MR)
          gemmRows(std::min<int64_t>(MR, n - i0), [&](auto m) {
            constexpr int M = decltype(m)::value;
            vf acc[M][kGemmNV] = {};
            const typename Fc1::Rounded rx{xq + i0 * KPAD, xs + i0 * KX, xsq + i0 * KX, KPAD, KX, 0};
            Fc1::template intTile<M>(rows.panel1(p), rows.panelScales1(p), nullptr, rx, 0, H, acc,
                                     i0 == 0 ? kLinIntAhead : 0);
#pragma unroll
            for (int i = 0; i < M; ++i)
#pragma unroll
              for (int64_t v = 0; v < kGemmNV; ++v)
                storev(h + ((i0 + i) * G + g) * NR + v * VW, acc[i][v]);
          });
      }
      activatePanel(h, n, f0, fe, fb, ws, b1, mask, cf, ldc);
    }
  }

  /// One fc1 panel's results for n tokens (`h`, [n][G][NR], dims f0 .. f0 + NR - 1 up to fe) turned into
  /// fc2 inputs: cf[i * ldc + f - fb] = ws[i] * activate(gate, up), fc1's bias added, masked dims 0.
  static void activatePanel(const float *h, int64_t n, int64_t f0, int64_t fe, int64_t fb, const float *ws,
                            const float *b1, const uint8_t *mask, float *cf, int64_t ldc) {
    constexpr int64_t NR = kGemmNR;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < NR && f0 + j < fe; ++j) {
        const int64_t f = f0 + j;
        float v = 0.0f;
        if (!mask || mask[f]) {
          const float gv = h[(i * G) * NR + j] + (b1 ? b1[f * G] : 0.0f);
          const float uv = G == 2 ? h[(i * G + 1) * NR + j] + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
          v = ws[i] * activate(gv, uv);
        }
        cf[i * ldc + (f - fb)] = v;
      }
  }

  /// Decode and token tiles smaller than a GEMM's with panels (INT_FC2), for an expert with FD dims: the
  /// tokens rounded, then per pass of up to DFB dims their fc2 inputs (fc1Ints) and fc2Ints (in `thread`'s
  /// buffers, c.dec).
  template <int64_t FD>
  static void intDecode(const Ctx &c, int thread, const ExpertRows<C> &rows, const Item &it, int64_t n,
                        const float *const *xs, const float *ws, const float *b1, const uint8_t *mask,
                        float *const *dst) {
    constexpr int64_t SB = DFB, XN = SB / kXBlock;
    const int64_t R = decRows(c.l.T);
    char *p = c.dec + size_t(thread) * decBytes(R);
    auto take = [&](size_t bytes) {
      char *at = p;
      p += align64(bytes);
      return at;
    };
    float *cf = reinterpret_cast<float *>(take(sizeof(float) * R * SB));
    int8_t *q = reinterpret_cast<int8_t *>(take(size_t(R) * SB));
    float *qs = reinterpret_cast<float *>(take(sizeof(float) * R * XN));
    float *qsum = reinterpret_cast<float *>(take(sizeof(float) * R * XN));
    int8_t *xq = reinterpret_cast<int8_t *>(take(size_t(R) * Fc1::KPAD));
    float *xsc = reinterpret_cast<float *>(take(sizeof(float) * R * Fc1::KX));
    float *xsq = reinterpret_cast<float *>(take(sizeof(float) * R * Fc1::KX));
    float *h = reinterpret_cast<float *>(take(sizeof(float) * R * G * kGemmNR));
    intPasses<FD, SB>(rows, it, n, xs, ws, b1, mask, dst, xq, xsc, xsq, h, cf, q, qs, qsum);
  }

  /// intDecode's and intGemm's body, in their buffers: the n tokens rounded as Fc1's inputs (xq, xs, xsq),
  /// then per pass of SB dims of the item fc1Ints (h, cf) and fc2Ints (q, qs, qsum).
  template <int64_t FD, int64_t SB>
  static void intPasses(const ExpertRows<C> &rows, const Item &it, int64_t n, const float *const *x,
                        const float *ws, const float *b1, const uint8_t *mask, float *const *dst, int8_t *xq,
                        float *xs, float *xsq, float *h, float *cf, int8_t *q, float *qs, float *qsum) {
    for (int64_t i = 0; i < n; ++i)
      Fc1::quantizeRange(x[i], 0, H, xq + i * Fc1::KPAD, xs + i * Fc1::KX, xsq + i * Fc1::KX);
    for (int64_t fb = it.f0; fb < it.f1; fb += SB) {
      const int64_t fe = std::min<int64_t>(it.f1, fb + SB);
      fc1Ints(rows, fb, fe, n, xq, xs, xsq, ws, b1, mask, h, cf, SB);
      fc2Ints<FD, SB>(rows, cf, SB, n, fb, fe, q, qs, qsum, dst);
    }
  }

  /// A token tile of kGemmTokens or more with panels (INT_FC2), for an expert with FD dims: the tokens
  /// rounded to int8 once; per super block of kMoeFB dims, fc1Ints then fc2Ints. dst rows are zeroed by the
  /// caller.
  template <int64_t FD>
  static void intGemm(const Ctx &c, const Item &it, const ExpertRows<C> &rows, int64_t n,
                      const float *const *xs, float *const *dst, const float *ws, const float *b1,
                      const uint8_t *mask, int thread) {
    const IntBufs b = intBufs(c.gemm + size_t(thread) * kGemmThreadBytes);
    intPasses<FD, kMoeFB>(rows, it, n, xs, ws, b1, mask, dst, b.xq, b.xs, b.xsq, b.h, b.cf, b.q2, b.qs,
                          b.qsum);
  }

  /// Decode and token tiles smaller than a GEMM's with plain panels (PLAIN_PANELS), for an expert with FD
  /// dims, in `thread`'s buffers (c.dec): the tokens' rows side by side (the micro-kernel's rows), then per
  /// pass of up to DFB dims of the item fc1 panel by panel (both parts of NR dims for every row tile, the
  /// panels read one after another; activations times the routing weight as fc2's input, masked dims 0) and
  /// fc2 column panel by column panel (the pass's slice of each panel, prefetched as below), added to each
  /// token's row dst[i]. A panel's slice is read from memory by the first row tile and from cache by the
  /// rest.
  template <int64_t FD>
  static void plainDecode(const Ctx &c, int thread, const ExpertRows<C> &rows, const Item &it, int64_t n,
                          const float *const *xs, const float *ws, const float *b1, const uint8_t *mask,
                          float *const *dst) {
    constexpr int64_t NR = kGemmNR, MR = kGemmMR, NV = kGemmNV, SB = DFB;
    using W = typename C::W;
    const int64_t R = decRows(c.l.T);
    char *p = c.dec + size_t(thread) * decBytes(R);
    float *ap = reinterpret_cast<float *>(p);
    float *h = reinterpret_cast<float *>(p + align64(sizeof(float) * R * H));
    float *cf = reinterpret_cast<float *>(reinterpret_cast<char *>(h) + align64(sizeof(float) * R * G * NR));
    for (int64_t i = 0; i < n; ++i) // [n][H]
      std::memcpy(ap + i * H, xs[i], sizeof(float) * H);
    for (int64_t fb = it.f0; fb < it.f1; fb += SB) {
      const int64_t fe = std::min<int64_t>(it.f1, fb + SB);
      for (int64_t f0 = fb; f0 < fe; f0 += NR) {
        for (int64_t g = 0; g < G; ++g) {
          const W *panel = rows.panel1(f0 / NR * G + g);
          for (int64_t i0 = 0; i0 < n; i0 += MR)
            gemmRows(std::min<int64_t>(MR, n - i0), [&](auto m) {
              constexpr int M = decltype(m)::value;
              vf acc[M][NV] = {};
              gemmMicro<M, 1, false>(panel, 0, ap + i0 * H, H, H, acc, i0 == 0 ? kLinAhead : 0);
#pragma unroll
              for (int i = 0; i < M; ++i)
#pragma unroll
                for (int64_t v = 0; v < NV; ++v)
                  storev(h + ((i0 + i) * G + g) * NR + v * VW, acc[i][v]);
            });
        }
        activatePanel(h, n, f0, fe, fb, ws, b1, mask, cf, SB); // [n][SB]
      }
      // fc2's panels are read a slice of (fe - fb) x NR weights each, FD * NR weights apart. Software
      // prefetch, measured (2 threads, best of 20-40 calls against the row layout's decode): short slices
      // (OLMoE-like f32, 256 dims a chunk: 16 KiB) gain from the next panel's slice prefetched while this one
      // is read (T = 8: 33.8 -> 31.7 ms), longer ones (ZAYA1-like f32, 512 dims: 32 KiB) lose (T = 1: 1.64 ->
      // 1.95 ms) and keep 2 KiB ahead in the slice (bf16 T = 8: 6.36 ms without any, 5.80 with).
      const int64_t slice = (fe - fb) * NR * int64_t(sizeof(W));
      const int64_t ahead = slice <= kNextSliceBytes ? FD * NR * int64_t(sizeof(W)) : kLinAhead;
      for (int64_t q = 0; q < H / NR; ++q) {
        const W *panel = rows.panel2(q) + fb * NR;
        for (int64_t i0 = 0; i0 < n; i0 += MR)
          gemmRows(std::min<int64_t>(MR, n - i0), [&](auto m) {
            constexpr int M = decltype(m)::value;
            vf acc[M][NV] = {};
            gemmMicro<M, 1, false>(panel, 0, cf + i0 * SB, SB, fe - fb, acc, i0 == 0 ? ahead : 0);
#pragma unroll
            for (int i = 0; i < M; ++i)
#pragma unroll
              for (int64_t v = 0; v < NV; ++v) {
                float *d = dst[i0 + i] + q * NR + v * VW;
                storev(d, loadv(d) + acc[i][v]);
              }
          });
      }
    }
  }

  /// d[2i] += e[i] * s[2i] and d[2i + 1] += o[i] * s[2i + 1] for i < VW: even and odd columns' sums put back
  /// in column order, then scaled.
  template <class S> static void storeInterleaved(float *d, const S *s, vf e, vf o) {
#if MOERT_VW == 16
    const vf lo = __builtin_shufflevector(e, o, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const vf hi = __builtin_shufflevector(e, o, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
#else
    const vf lo = __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11);
    const vf hi = __builtin_shufflevector(e, o, 4, 12, 5, 13, 6, 14, 7, 15);
#endif
    storev(d, loadv(d) + lo * loadv(s));
    storev(d + VW, loadv(d + VW) + hi * loadv(s + VW));
  }

  /// d[i][h] += sum_{j < fn} c[i * kDimBlock + j] * row2(f0 + j)[h] for NT tokens, h in [h0, h1). PF: the
  /// rows' first reader: each row's columns 8 vectors on are prefetched (the fn rows advance side by side,
  /// more streams than the hardware prefetcher follows).
  template <int NT, bool PF, class Rows>
  static void downN(const Rows &rows, int64_t f0, int64_t fn, const float *c, float *const *d, int64_t h0,
                    int64_t h1) {
    int64_t h = h0;
    for (; h + 2 * VW <= h1; h += 2 * VW) {
      vf acc[NT][2];
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        acc[i][0] = loadv(d[i] + h);
        acc[i][1] = loadv(d[i] + h + VW);
      }
      for (int64_t j = 0; j < fn; ++j) {
        auto r = rows.row2(f0 + j);
        if constexpr (PF)
          prefetchAhead<2 * VW>(r, h, 8 * VW);
        vf w0 = r.load(h), w1 = r.load(h + VW);
#pragma unroll
        for (int i = 0; i < NT; ++i) {
          vf b = splat(c[i * kDimBlock + j]);
          acc[i][0] += b * w0;
          acc[i][1] += b * w1;
        }
      }
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        storev(d[i] + h, acc[i][0]);
        storev(d[i] + h + VW, acc[i][1]);
      }
    }
    if (h < h1) // the last columns (H not a multiple of 2 * VW)
      for (int i = 0; i < NT; ++i)
        for (int64_t j = 0; j < fn; ++j) {
          auto r = rows.row2(f0 + j);
          for (int64_t k = h; k < h1; ++k)
            d[i][k] += c[i * kDimBlock + j] * r.at(k);
        }
  }

  template <class Rows>
  static void down4(const Rows &rows, int64_t f0, int64_t fn, const float *c, float *const *d, int64_t nt,
                    int64_t h0, int64_t h1, bool first) {
    auto run = [&](auto pf) {
      constexpr bool PF = decltype(pf)::value;
      switch (nt) {
      case 4:
        return downN<4, PF>(rows, f0, fn, c, d, h0, h1);
      case 3:
        return downN<3, PF>(rows, f0, fn, c, d, h0, h1);
      case 2:
        return downN<2, PF>(rows, f0, fn, c, d, h0, h1);
      default:
        return downN<1, PF>(rows, f0, fn, c, d, h0, h1);
      }
    };
    first ? run(std::true_type{}) : run(std::false_type{});
  }

  // ---- C, prefill: a token tile on gemm.h's micro-kernel ------------------------------------------------
  // fc1 is a GEMM of the tile's tokens (rows, packed once: [row tile][H][MR]) by fc1's rows for a block of
  // DB1 dims, packed here into K-major panels of NR dims per part (gate, up) over every feature (int8/int4
  // rows dequantised once per tile, not once per token block), then walked kMoeKC features at a time; the
  // activations of a super block of kMoeFB dims become fc2's packed left operand ([row tile][dim][MR], times
  // the routing weight), and fc2 is a GEMM over those dims, its rows (fc2 transposed: row f holds dim f's
  // weights for every column) copied into f32 panels of every column KC2 dims at a time. Columns past the
  // last whole panel (H not a multiple of NR) take a scalar loop. This is the packing of a BLAS GEMM done per
  // tile (the weights stay in the row layout the decode loops and the GPU kernels read); its cost is a pass
  // over the expert's weights per tile, against 2 x (tokens in the tile) FLOPs per weight, which is why small
  // tiles keep the loops below. Each copy reads whole rows, one stretch of memory: copies of a 512-byte slice
  // of 128 rows 8 KiB apart (kMoeKC features at a time) were 3-7% slower over a whole layer (docs/linear.md,
  // "The MoE GEMM tiles copy whole rows"). Prefetching the next copy's stretch while the GEMM runs (a stream
  // stepped by the micro-kernel) gained nothing more: its misses compete with the GEMM's own reads of the
  // L2-resident panels. With plain panels (PLAIN_PANELS: f32 / bf16 / fp16 experts on CPU targets) nothing is
  // copied: fc1's and fc2's panels are stored in this layout at compile time and the GEMMs read them where
  // they lie (bf16 / fp16 widened on load), fc2's panel slices FD * NR weights apart (bf16: FD / 2 pairs of
  // NR; slices start at even dims).
  static float *alignTo64(char *p) {
    return reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
  }

  /// Part g of fc1's rows for dims [db, de) as panels of NR dims over every feature: panel q * G + g,
  /// feature k, dim db + q * NR + j at out[(q * G + g) * H * NR + k * NR + j]; dims past de and masked ones
  /// are zero.
  static void packFc1(const ExpertRows<C> &rows, const uint8_t *mask, int64_t db, int64_t de, float *out) {
    constexpr int64_t NR = kGemmNR, KV = H / VW * VW;
    using Row = decltype(rows.row1(0));
    const int64_t panels = (de - db + NR - 1) / NR;
    for (int64_t q = 0; q < panels; ++q)
      for (int64_t g = 0; g < G; ++g) {
        float *dst = out + (q * G + g) * H * NR;
        for (int64_t j0 = 0; j0 < NR; j0 += VW) { // VW dims at a time: VW x VW blocks transposed in registers
          Row row[VW];
          bool live[VW];
          for (int64_t l = 0; l < VW; ++l) {
            const int64_t f = db + q * NR + j0 + l;
            live[l] = f < de && (!mask || mask[f]);
            row[l] = rows.row1((live[l] ? f : db) * G + g);
          }
          for (int64_t k = 0; k < KV; k += VW) {
            vf r[VW];
#pragma unroll
            for (int l = 0; l < VW; ++l)
              r[l] = live[l] ? row[l].load(k) : vf{};
            transpose(r);
#pragma unroll
            for (int l = 0; l < VW; ++l)
              storev(dst + (k + l) * NR + j0, r[l]);
          }
          for (int64_t k = KV; k < H; ++k)
            for (int64_t l = 0; l < VW; ++l)
              dst[k * NR + j0 + l] = live[l] ? row[l].at(k) : 0.0f;
        }
      }
  }

  /// fc2's weights for dims [kb, ke) and the columns of every whole panel as f32 panels ([H16 /
  /// NR][KC2][NR]): its rows (fc2 transposed) copied, or its panels (INT_FC2) dequantised.
  static void packFc2(const ExpertRows<C> &rows, bool shared, int64_t kb, int64_t ke, float *out) {
    constexpr int64_t NR = kGemmNR;
    if constexpr (INT_FC2) {
      auto deq = [&](auto fc2) {
        using L = decltype(fc2);
        for (int64_t p = 0; p < H16 / NR; ++p)
          L::dequantPanel(rows.q2 + p * L::PANELB, rows.s2 + p * L::KB * NR, nullptr, kb, ke,
                          out + p * KC2 * NR);
      };
      shared ? deq(Fc2<FSX>{}) : deq(Fc2<F>{});
    } else {
      for (int64_t f = kb; f < ke; ++f) {
        const auto row = rows.row2(f);
        for (int64_t p = 0; p < H16 / NR; ++p)
#pragma unroll
          for (int64_t v = 0; v < kGemmNV; ++v)
            storev(out + p * KC2 * NR + (f - kb) * NR + v * VW, row.load(p * NR + v * VW));
      }
    }
  }

  /// acc = rows c[i] at column col (or zero) for M rows x P panels, then the micro-kernel over kn features
  /// (PAIRS_: on bf16 pairs), then back.
  template <int M, int P, bool PAIRS_ = false, class T, class A>
  __attribute__((always_inline)) static inline void gemmInto(float *const *c, int64_t col, bool zero,
                                                             const T *b, int64_t pstride, const A *ap,
                                                             int64_t kn, const char *pf = nullptr) {
    constexpr int64_t NV = kGemmNV;
    vf acc[M][P * NV];
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int v = 0; v < P * NV; ++v)
        acc[i][v] = zero ? vf{} : loadv(c[i] + col + v * VW);
    if constexpr (PAIRS_)
      gemmMicroPairs<M, P>(b, pstride, ap, kn, acc, pf);
    else
      gemmMicro<M, P, true>(b, pstride, ap, 0, kn, acc);
#pragma unroll
    for (int i = 0; i < M; ++i)
#pragma unroll
      for (int v = 0; v < P * NV; ++v)
        storev(c[i] + col + v * VW, acc[i][v]);
  }

  /// Rows c[0..n) at column col (+= or, `zero`, =) the n packed rows (row tile t at ap + t * apstride) times
  /// panels [0, np) of b (pstride apart, kn features): PW panels at a time where there are as many, each set
  /// used by every row tile while it is in L1.
  template <class T>
  static void gemmPanels(int64_t n, const float *ap, int64_t apstride, const T *b, int64_t np,
                         int64_t pstride, int64_t kn, float *const *c, int64_t col, bool zero) {
    constexpr int MR = kGemmMR, PW = kGemmPW;
    for (int64_t p = 0; p < np;) {
      const int64_t pw = np - p >= PW ? PW : 1;
      const T *bp = b + p * pstride;
      for (int64_t r = 0; r < n; r += MR) {
        const float *at = ap + (r / MR) * apstride;
        gemmRows(std::min<int64_t>(MR, n - r), [&](auto m) {
          constexpr int M = decltype(m)::value;
          if (pw == PW)
            gemmInto<M, PW>(c + r, col + p * kGemmNR, zero, bp, pstride, at, kn);
          else
            gemmInto<M, 1>(c + r, col + p * kGemmNR, zero, bp, pstride, at, kn);
        });
      }
      p += pw;
    }
  }

  /// gemmPanels on bf16 pairs (PAIRS): the row tiles of `ap` hold the rows' feature pairs ([kn / 2][MR],
  /// apstride pairs apart), `b` the bf16 panels as stored (feature pairs, MOERT_LIN_W); each set of PW panels
  /// (or one) is used by every row tile while it is in L1.
  static void gemmPanelsPairs(int64_t n, const uint32_t *ap, int64_t apstride, const uint16_t *b, int64_t np,
                              int64_t pstride, int64_t kn, float *const *c, int64_t col, bool zero) {
    constexpr int MR = kGemmMR, PW = kGemmPW;
    for (int64_t p = 0; p < np;) {
      const int64_t pw = np - p >= PW ? PW : 1;
      const uint16_t *bp = b + p * pstride;
      for (int64_t r = 0; r < n; r += MR) {
        const uint32_t *at = ap + (r / MR) * apstride;
        // Row tiles after the first prefetch the next set's panels, one panel each: the next set's first row
        // tile then reads them from cache instead of waiting on memory (ZAYA1-like layer, bf16+a16, T = 512,
        // 2 threads, artifacts alternating in one process: median 38.4-41.8 -> 37.0-37.8 ms a call; the
        // linear kernel's prefill, its weights in cache in linear_kernel_test --perf, gained nothing and
        // does not prefetch).
        const int64_t next = p + pw + r / MR - 1;
        const char *pf = r > 0 && next < np && next < p + pw + PW
                             ? reinterpret_cast<const char *>(b + next * pstride)
                             : nullptr;
        gemmRows(std::min<int64_t>(MR, n - r), [&](auto m) {
          constexpr int M = decltype(m)::value;
          if (pw == PW)
            gemmInto<M, PW, true>(c + r, col + p * kGemmNR, zero, bp, pstride, at, kn, pf);
          else
            gemmInto<M, 1, true>(c + r, col + p * kGemmNR, zero, bp, pstride, at, kn, pf);
        });
      }
      p += pw;
    }
  }

  static void gemmTile(const Ctx &c, const Item &it, const ExpertRows<C> &rows, int64_t n,
                       const float *const *xs, float *const *dst, const float *ws, const float *b1,
                       const uint8_t *mask, int thread) {
    constexpr int64_t MR = kGemmMR, NR = kGemmNR, FB = kMoeFB;
    // K blocks: fc1's features and fc2's dims a pass of the micro-kernel sums before its partial sums go
    // back through memory. Copied panels: kMoeKC (L1-resident slices). Panels as stored (PLAIN_PANELS): the
    // linear kernel's blocks (kLinKC features, kLinKCPairs with PAIRS), slices read from L2, and fc2 over the
    // super block's dims at once. Measured (ZAYA1-like layer, T = 512, 2 threads, old and new artifacts
    // alternating in one process, best ms): kMoeKC everywhere 74.0-74.8 (f32) and 40.5-41.9 (bf16+a16);
    // these blocks 67.9-68.1 and 37.2-38.1.
    constexpr int64_t KC1 = !PLAIN_PANELS ? kMoeKC : std::min<int64_t>(H, PAIRS ? kLinKCPairs : kLinKC);
    constexpr int64_t KB2 = PLAIN_PANELS ? FB : KC2;
    if (it.f0 >= it.f1) { // no dims in this chunk: no contribution
      for (int64_t r = 0; r < n; ++r)
        std::memset(dst[r], 0, sizeof(float) * H);
      return;
    }
    char *mine = c.gemm + size_t(thread) * kGemmThreadBytes;
    float *ap = alignTo64(mine);
    float *b1p = alignTo64(reinterpret_cast<char *>(ap + GA));
    float *h1 = alignTo64(reinterpret_cast<char *>(b1p + GB1));
    float *cfp = alignTo64(reinterpret_cast<char *>(h1 + GH1));
    float *b2p = alignTo64(reinterpret_cast<char *>(cfp + GCF));
    float *ot = alignTo64(reinterpret_cast<char *>(b2p + GB2));
    const int64_t rowTiles = (n + MR - 1) / MR;
    uint32_t *app = reinterpret_cast<uint32_t *>(ap);  // PAIRS
    uint16_t *cfh = reinterpret_cast<uint16_t *>(cfp); // PAIRS: the coefficients' pairs, as bf16 halves
    // the tokens, packed for the micro-kernel (rows past n zero; PAIRS: as bf16 pairs, [H / 2][MR] a tile)
    if constexpr (PAIRS)
      for (int64_t r = 0; r < n; ++r) // (the last tile's rows past n are not read)
        packBf16Pairs(xs[r], H, 1, H, app + (r / MR) * (H / 2) * MR + r % MR, (H / 2) * MR);
    else
      for (int64_t t = 0; t < rowTiles; ++t)
        for (int64_t i = 0; i < MR; ++i) {
          float *d = ap + t * H * MR + i;
          const int64_t r = t * MR + i;
          if (r < n) {
            const float *x = xs[r];
            for (int64_t h = 0; h < H; ++h)
              d[h * MR] = x[h];
          } else {
            for (int64_t h = 0; h < H; ++h)
              d[h * MR] = 0.0f;
          }
        }
    constexpr int64_t LD1 = G * DB1; // h1's row length
    float *h1rows[kTile], *orows[kTile];
    for (int64_t r = 0; r < n; ++r) {
      h1rows[r] = h1 + r * LD1;
      orows[r] = ot + r * LDO;
    }
    for (int64_t r = 0; r < n; ++r) // the first fc2 block stores its panels' columns; the rest add
      for (int64_t h = H16; h < H; ++h)
        orows[r][h] = 0.0f;
    for (int64_t fb = it.f0; fb < it.f1; fb += FB) {
      const int64_t fe = std::min<int64_t>(it.f1, fb + FB);
      // fc1 and the activations, DB1 dims at a time
      for (int64_t db = fb; db < fe; db += DB1) {
        const int64_t de = std::min<int64_t>(fe, db + DB1);
        const int64_t np = (de - db + NR - 1) / NR * G;
        // fc1's panels for these dims: as stored (PLAIN_PANELS: db is a multiple of NR; masked dims get
        // their activations zeroed below) or copied
        const auto *b1s = [&] {
          if constexpr (PLAIN_PANELS)
            return rows.panel1(db / NR * G);
          else
            return (packFc1(rows, mask, db, de, b1p), static_cast<const float *>(b1p));
        }();
        for (int64_t k0 = 0; k0 < H; k0 += KC1) {
          const int64_t k1 = std::min<int64_t>(H, k0 + KC1);
          if constexpr (PAIRS)
            gemmPanelsPairs(n, app + k0 / 2 * MR, H / 2 * MR, b1s + k0 * NR, np, H * NR, k1 - k0, h1rows, 0,
                            k0 == 0);
          else
            gemmPanels(n, ap + k0 * MR, H * MR, b1s + k0 * NR, np, H * NR, k1 - k0, h1rows, 0, k0 == 0);
        }
        for (int64_t r = 0; r < n; ++r) {
          float *cf = cfp + (r / MR) * FB * MR + r % MR;
          const float *hr = h1 + r * LD1;
          for (int64_t f = db; f < de; ++f) {
            const int64_t q = (f - db) / NR, j = (f - db) % NR;
            float v = 0.0f;
            if (!mask || mask[f]) {
              const float g = hr[q * G * NR + j] + (b1 ? b1[f * G] : 0.0f);
              const float u = G == 2 ? hr[(q * G + 1) * NR + j] + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
              v = ws[r] * activate(g, u);
            }
            if constexpr (PAIRS)
              cfh[((r / MR) * (FB / 2) * MR + (f - fb) / 2 * MR + r % MR) * 2 + (f - fb) % 2] =
                  moert_f32_to_bf16(v);
            else
              cf[(f - fb) * MR] = v;
          }
        }
      }
      // fc2 over the super block's dims: dst[r][h] += sum_f cf[r][f] * fc2t[f][h], KC2 dims at a time (their
      // rows copied into f32 panels of every column), PW panels of columns at a time
      for (int64_t kb = fb; kb < fe; kb += KB2) {
        const int64_t ke = std::min<int64_t>(fe, kb + KB2);
        if constexpr (PAIRS) {
          gemmPanelsPairs(n, reinterpret_cast<const uint32_t *>(cfh) + (kb - fb) / 2 * MR, FB / 2 * MR,
                          rows.panel2(0) + kb * NR, H / NR, rows.fdim * NR, ke - kb, orows, 0, kb == it.f0);
        } else if constexpr (PLAIN_PANELS) {
          gemmPanels(n, cfp + (kb - fb) * MR, FB * MR, rows.panel2(0) + kb * NR, H / NR, rows.fdim * NR,
                     ke - kb, orows, 0, kb == it.f0);
        } else {
          packFc2(rows, it.expert < 0, kb, ke, b2p);
          gemmPanels(n, cfp + (kb - fb) * MR, FB * MR, static_cast<const float *>(b2p), H16 / NR, KC2 * NR,
                     ke - kb, orows, 0, kb == it.f0);
        }
      }
      for (int64_t r = 0; r < n; ++r) // the columns past the last whole panel
        for (int64_t h = H16; h < H; ++h) {
          float s = 0.0f;
          for (int64_t f = fb; f < fe; ++f)
            s += cfp[(r / MR) * FB * MR + (f - fb) * MR + r % MR] * rows.row2(f).at(h);
          orows[r][h] += s;
        }
    }
    for (int64_t r = 0; r < n; ++r)
      std::memcpy(dst[r], orows[r], sizeof(float) * H);
  }

  // ---- C: one expert (or the shared expert) over a token tile and a chunk of hidden dims ----------------
  static void work(void *p, int64_t index, int thread) {
    const FlushDenormals ftz;
    Ctx &c = *static_cast<Ctx *>(p);
    const moert_moe_args &a = *c.a;
    const Item &it = c.items[index];
    const int64_t chunks = c.l.chunks;
    const float *xs[kTile];
    int64_t tok[kTile];
    float *dst[kTile];
    float ws[kTile];
    int64_t n = 0;
    const float *b1 = nullptr, *b2 = nullptr;
    const uint8_t *mask = nullptr;
    const int64_t fdim = it.expert >= 0 ? F : C::FS;
    const ExpertRows<C> rows(a, it.expert, fdim, G);
    if (it.expert >= 0) {
      const int64_t e = it.expert;
      if (a.weights[MOERT_FC1_BIAS])
        b1 = static_cast<const float *>(a.weights[MOERT_FC1_BIAS]) + e * F * G;
      if (a.weights[MOERT_FC2_BIAS])
        b2 = static_cast<const float *>(a.weights[MOERT_FC2_BIAS]) + e * H;
      if (a.weights[MOERT_MASK])
        mask = static_cast<const uint8_t *>(a.weights[MOERT_MASK]) + e * F;
      for (int64_t j = it.begin; j < it.end; ++j, ++n) {
        int64_t t = c.entries[2 * j], slot = c.entries[2 * j + 1];
        xs[n] = c.X + t * H;
        tok[n] = t;
        ws[n] = c.weight[t * K + slot];
        dst[n] = c.partial + ((t * S + slot) * chunks + it.chunk) * H;
      }
    } else {
      const float *gate = static_cast<const float *>(a.weights[MOERT_SHARED_GATE]);
      for (int64_t t = it.begin; t < it.end; ++t, ++n) {
        xs[n] = c.X + t * H;
        tok[n] = t;
        ws[n] = gate ? sigmoid(dot(gate, xs[n], H)) : 1.0f;
        dst[n] = c.partial + ((t * S + K) * chunks + it.chunk) * H;
      }
    }
    // gemmTile stores whole rows: no zeroing first
    const bool gemm = !C::HAS_PRED && !INT_FC2 && n >= kGemmTokens;
    if (!gemm)
      for (int64_t i = 0; i < n; ++i)
        std::memset(dst[i], 0, sizeof(float) * H);
    // Token i's coefficient for hidden dim f: its routing weight times the activation of fc1's rows.
    auto coefAt = [&](int64_t i, int64_t f) {
      const float g = fc1(c, rows, f * G, xs[i], tok[i]) + (b1 ? b1[f * G] : 0.0f);
      const float u = G == 2 ? fc1(c, rows, f * G + 1, xs[i], tok[i]) + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
      return ws[i] * activate(g, u);
    };
    auto lone = [&](int64_t f) { return coefAt(0, f); };

    if (C::HAS_PRED && it.expert >= 0) {
      // One token: score every hidden dim with the low-rank predictor, keep the top KEEP (ties: lower
      // index), and compute only those, in ascending order.
      const int64_t e = it.expert;
      char *mine = c.pred + size_t(thread) * ((sizeof(float) * (C::R + F) + sizeof(int32_t) * F));
      float *pr = reinterpret_cast<float *>(mine);
      float *sc = pr + C::R;
      int32_t *idx = reinterpret_cast<int32_t *>(sc + F);
      const float *pa = static_cast<const float *>(a.weights[MOERT_PRED_A]) + e * C::R * H;
      const float *pb = static_cast<const float *>(a.weights[MOERT_PRED_B]) + e * C::R * F;
      for (int64_t r = 0; r < C::R; ++r)
        pr[r] = dot(pa + r * H, xs[0], H);
      std::memset(sc, 0, sizeof(float) * F);
      for (int64_t r = 0; r < C::R; ++r)
        axpy(sc, pr[r], pb + r * F, F);
      for (int64_t f = 0; f < F; ++f)
        idx[f] = int32_t(f);
      std::partial_sort(idx, idx + C::KEEP, idx + F,
                        [&](int32_t x, int32_t y) { return sc[x] > sc[y] || (sc[x] == sc[y] && x < y); });
      std::sort(idx, idx + C::KEEP);
      for (int64_t j = 0; j < C::KEEP; ++j) {
        const int64_t f = idx[j];
        axpy<kQAhead>(dst[0], lone(f), rows.row2(f), H);
      }
    } else if (INT_FC2) {
      if constexpr (INT_FC2) {
        if (n < kGemmTokens && it.expert >= 0)
          intDecode<F>(c, thread, rows, it, n, xs, ws, b1, mask, dst);
        else if (n < kGemmTokens)
          intDecode<FSX>(c, thread, rows, it, n, xs, ws, b1, mask, dst);
        else if (it.expert >= 0)
          intGemm<F>(c, it, rows, n, xs, dst, ws, b1, mask, thread);
        else
          intGemm<FSX>(c, it, rows, n, xs, dst, ws, b1, mask, thread);
      }
    } else if (PLAIN_PANELS && !gemm) {
      if constexpr (PLAIN_PANELS) {
        if (it.expert >= 0)
          plainDecode<F>(c, thread, rows, it, n, xs, ws, b1, mask, dst);
        else
          plainDecode<FSX>(c, thread, rows, it, n, xs, ws, b1, mask, dst);
      }
    } else if (C::QBITS != 0 && (n == 1 || (INT_FC1 && n < kGemmTokens))) {
      // Decode, quantised (one token, or with integer fc1 dot products a tile smaller than a GEMM's): per run
      // of kept dims sharing fc2's scale row, each token's fc1 rows by integer dot products (the rows stay in
      // L1 across the tile's tokens), then its down projection sums codes times activations and scales each
      // column once (not once per code; the run's fc2 rows stay in L2 across the tokens).
      if constexpr (C::QBITS != 0) {
        float cf[kGemmTokens][kDimBlock];
        int64_t fi[kDimBlock];
        for (int64_t fb = it.f0; fb < it.f1;) {
          const int64_t blk2 = rows.blk2,
                        fe = std::min<int64_t>({it.f1, (fb / blk2 + 1) * blk2, fb + kDimBlock});
          int64_t nf = 0;
          for (int64_t f = fb; f < fe; ++f) {
            if (mask && !mask[f])
              continue;
            for (int64_t i = 0; i < n; ++i)
              cf[i][nf] = coefAt(i, f);
            fi[nf++] = f;
          }
          if (nf)
            for (int64_t i = 0; i < n; ++i)
              downScaledOnce(rows, fi, cf[i], nf, dst[i]);
          fb = fe;
        }
      }
    } else if (n == 1) {
      // Decode: stream each kept dim's gate, up and down rows once.
      for (int64_t f = it.f0; f < it.f1; ++f) {
        if (mask && !mask[f])
          continue;
        axpy<kQAhead>(dst[0], lone(f), rows.row2(f), H);
      }
    } else if (gemm) {
      gemmTile(c, it, rows, n, xs, dst, ws, b1, mask, thread);
    } else {
      // A token tile, by blocks of DB hidden dims whose gate/up rows fit kL2Budget: they stay in L2 while
      // every token of the tile uses them, so weights come from memory about once per tile. Activations for
      // (token, dim) first (each gate/up weight load shared by kTokBlock tokens in registers), then the down
      // projection by column blocks, whose rows for the dim block stay in L1. (Measured: larger down blocks,
      // reading the partial sums less often, are slower here; their rows leave L1.)
      float *cf = c.coef + size_t(thread) * kTile * kDimBlock;
      // Rows widened on load (bf16 / fp16, int8 / int4): token blocks of equal size (8 tokens 4 + 4, not
      // 6 + 2, whose second block widens every row again for 2 tokens; OLMoE-like bf16 T = 64 58.6 -> 56.6
      // ms). f32 rows keep kTokBlock (4 + 4 measured 1.4% slower there: fewer FMAs per load).
      const int64_t nblocks = (n + kTokBlock - 1) / kTokBlock;
      const int64_t tb = WBITS == 32 ? kTokBlock : (n + nblocks - 1) / nblocks;
      for (int64_t fb = it.f0; fb < it.f1; fb += DB) {
        const int64_t fe = std::min<int64_t>(it.f1, fb + DB), fn = fe - fb;
        for (int64_t i0 = 0; i0 < n; i0 += tb) {
          int64_t nt = std::min<int64_t>(tb, n - i0);
          for (int64_t f = fb; f < fe; ++f) {
            float *col = cf + (f - fb);
            if (mask && !mask[f]) {
              for (int64_t i = 0; i < nt; ++i)
                col[(i0 + i) * kDimBlock] = 0.0f;
              continue;
            }
            float g[kTokBlock], u[kTokBlock];
            if (i0 == 0) // the rows come from memory once, for the first token block
              dotsTokens<G == 2, kQAhead>(rows.row1(f * G), rows.row1(f * G + (G - 1)), xs + i0, nt, H, g, u);
            else
              dotsTokens<G == 2, 0>(rows.row1(f * G), rows.row1(f * G + (G - 1)), xs + i0, nt, H, g, u);
            for (int64_t i = 0; i < nt; ++i) {
              float gg = g[i] + (b1 ? b1[f * G] : 0.0f);
              float uu = G == 2 ? u[i] + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
              col[(i0 + i) * kDimBlock] = ws[i0 + i] * activate(gg, uu);
            }
          }
        }
        // Down projection: dst[i][h] += sum_j cf[i][j] * fc2t[fb + j][h], as a register-blocked micro-kernel
        // (4 tokens x 2 vectors of accumulators, each weight vector used by 4 tokens) over column blocks
        // whose rows for this dim block stay in L2.
        constexpr int64_t kBlock = 256;
        for (int64_t hb = 0; hb < H; hb += kBlock) {
          const int64_t he = std::min<int64_t>(H, hb + kBlock);
          for (int64_t i0 = 0; i0 < n; i0 += 4)
            down4(rows, fb, fn, cf + i0 * kDimBlock, dst + i0, std::min<int64_t>(4, n - i0), hb, he, i0 == 0);
        }
      }
    }
    if (b2 && it.chunk == 0)
      for (int64_t i = 0; i < n; ++i)
        axpy(dst[i], ws[i], b2, H);
  }

  // ---- D: sum one token's slots in a fixed order --------------------------------------------------------
  static void combine(void *p, int64_t t, int) {
    Ctx &c = *static_cast<Ctx *>(p);
    const moert_moe_args &a = *c.a;
    float *out = a.output + t * H;
    if (a.residual)
      std::memcpy(out, a.residual + t * H, sizeof(float) * H);
    else
      std::memset(out, 0, sizeof(float) * H);
    for (int64_t s = 0; s < S; ++s) {
      if (s < K && c.chosen[t * K + s] >= E)
        continue; // a zero expert: a slot and a share of the weight, no output
      if (s < K && a.slot_results) { // COMBINE: the slot's expert ran elsewhere (expert parallelism)
        const float *src = a.slot_results + a.slot_index[t * K + s] * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h)
          out[h] += src[h];
        continue;
      }
      for (int64_t ch = 0; ch < c.l.chunks; ++ch) {
        const float *src = c.partial + ((t * S + s) * c.l.chunks + ch) * H;
#pragma omp simd
        for (int64_t h = 0; h < H; ++h)
          out[h] += src[h];
      }
    }
  }

  static size_t scratch(int64_t T, int threads) { return layout(T, threads).total; }

  static int run(const moert_moe_args *a) {
    const int64_t T = a->tokens;
    if (T <= 0)
      return 0;
    const moert_exec &ex = *a->exec;
    Ctx c{};
    c.a = a;
    c.l = layout(T, ex.threads);
    char *base = static_cast<char *>(a->scratch);
    c.X = C::NORM != MOERT_NORM_NONE ? reinterpret_cast<float *>(base + c.l.x) : a->input;
    c.chosen = reinterpret_cast<int32_t *>(base + c.l.chosen);
    c.weight = reinterpret_cast<float *>(base + c.l.weight);
    c.counts = reinterpret_cast<int64_t *>(base + c.l.counts);
    c.entries = reinterpret_cast<int32_t *>(base + c.l.entries);
    c.items = reinterpret_cast<Item *>(base + c.l.items);
    c.partial = reinterpret_cast<float *>(base + c.l.partial);
    c.pred = base + c.l.pred;
    c.coef = reinterpret_cast<float *>(base + c.l.coef);
    c.xq = reinterpret_cast<int8_t *>(base + c.l.xq);
    c.xs = reinterpret_cast<float *>(base + c.l.xs);
    c.xsq = reinterpret_cast<int32_t *>(base + c.l.xsq);
    c.gemm = base + c.l.gemm;
    c.dec = base + c.l.dec;

    // Expert parallelism's phases (moert_moe_phase): ROUTE stops after A, leaving the routes, the normalised
    // rows and the rounded tokens in the scratch; SHARED runs the shared expert's items (C) over them into
    // the scratch's partial sums; COMBINE runs D, the routed slots' results given.
    const int phase = a->phase;
    if (phase == MOERT_MOE_WHOLE || phase == MOERT_MOE_ROUTE)
      ex.parallel_for(ex.pool, T, &c, &route);
    if (phase == MOERT_MOE_ROUTE) {
      std::memcpy(a->routes_out, c.chosen, sizeof(int32_t) * T * K);
      std::memcpy(a->route_weights_out, c.weight, sizeof(float) * T * K);
      std::memcpy(a->normed_out, c.X, sizeof(float) * T * H);
      return 0;
    }
    if (phase == MOERT_MOE_COMBINE) {
      ex.parallel_for(ex.pool, T, &c, &combine);
      return 0;
    }
    const bool routed = phase == MOERT_MOE_WHOLE; // SHARED: the shared expert alone

    // B: group (token, slot) pairs by expert, keeping token order (counting sort).
    std::memset(c.counts, 0, sizeof(int64_t) * (E + 1));
    for (int64_t i = 0; routed && i < T * K; ++i)
      if (c.chosen[i] < E)
        ++c.counts[c.chosen[i] + 1];
    for (int64_t e = 0; e < E; ++e)
      c.counts[e + 1] += c.counts[e];
    if (a->touched)
      for (int64_t e = 0; e < E; ++e)
        if (c.counts[e + 1] > c.counts[e])
          a->touched[e] = 1;
    int64_t fill[E];
    for (int64_t e = 0; e < E; ++e)
      fill[e] = c.counts[e];
    for (int64_t t = 0; routed && t < T; ++t)
      for (int64_t s = 0; s < K; ++s) {
        int32_t e = c.chosen[t * K + s];
        if (e >= E)
          continue;
        int64_t at = fill[e]++;
        c.entries[2 * at] = int32_t(t);
        c.entries[2 * at + 1] = int32_t(s);
      }

    // Work items: expert x token tile x hidden-dim chunk (predicted layers: one token per item).
    int64_t items = 0;
    const int64_t chunks = c.l.chunks, tile = C::HAS_PRED ? 1 : kTile;
    // An expert's tokens in as few tiles as hold them, of equal size (a lone extra token does not make a
    // tile that reads the expert's weights again for itself).
    auto addTiles = [&](int32_t expert, int64_t begin, int64_t end, int64_t fdim) {
      const int64_t n = end - begin, tiles = (n + tile - 1) / tile;
      for (int64_t i = 0; i < tiles; ++i)
        for (int64_t ch = 0; ch < chunks; ++ch)
          c.items[items++] = Item{expert,
                                  int32_t(begin + n * i / tiles),
                                  int32_t(begin + n * (i + 1) / tiles),
                                  int32_t(fdim / DIM_GRAIN * ch / chunks * DIM_GRAIN),
                                  int32_t(fdim / DIM_GRAIN * (ch + 1) / chunks * DIM_GRAIN),
                                  int32_t(ch)};
    };
    for (int64_t e = 0; e < E; ++e)
      addTiles(int32_t(e), c.counts[e], c.counts[e + 1], F);
    if (C::HAS_SHARED)
      addTiles(-1, 0, T, C::FS);
    // Largest tiles first: threads take items in order, so the last ones to start are the shortest.
    std::stable_sort(c.items, c.items + items,
                     [](const Item &x, const Item &y) { return x.end - x.begin > y.end - y.begin; });
    ex.parallel_for(ex.pool, items, &c, &work);
    if (phase == MOERT_MOE_SHARED)
      return 0;
    ex.parallel_for(ex.pool, T, &c, &combine);
    return 0;
  }
};

} // namespace moert_cpu

#endif // MOERT_KERNELS_CPU_SPARSE_MOE_H

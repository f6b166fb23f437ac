//===- simd.h - vector types and loads shared by moec's CPU kernel templates ----===//
//
// One vector type `vf` of VW floats and loads that widen every weight storage moec writes (f32, bf16, fp16)
// to it, and a KV cache's int8 rows. Included by every kernel template (sparse_moe.h, linear.h, attention.h);
// they may share one translation unit.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_SIMD_H
#define MOERT_KERNELS_CPU_SIMD_H

#include "moert_kernel_abi.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace moert_cpu {

// VW floats per vector: 16 (one AVX-512 register) when the code is built for AVX-512, else 8 (one AVX2
// register, or two SSE registers on baseline x86-64). Unaligned loads and stores.
#ifndef MOERT_VW
#if defined(__AVX512F__)
#define MOERT_VW 16
#else
#define MOERT_VW 8
#endif
#endif
constexpr int VW = MOERT_VW;
static_assert(VW == 8 || VW == 16, "vector width");
typedef float vf __attribute__((vector_size(VW * 4)));
inline vf loadv(const float *p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void storev(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
/// Every lane a (lane by lane, not `vf{} + a`: adding zero keeps an extra scalar add and a register broadcast
/// per call, where this is one broadcast load).
inline vf splat(float a) {
  vf v;
#pragma unroll
  for (int i = 0; i < VW; ++i)
    v[i] = a;
  return v;
}

/// Transposes the VW x VW matrix held in r[0..VW) (row i in r[i]) in place: log2(VW) stages, each swapping
/// the off-diagonal D x D blocks of every 2D x 2D block (VW log2(VW) two-source shuffles in all).
template <int D, bool HI, size_t... I> inline vf swapBlocks(vf a, vf b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (HI ? ((I & D) ? VW + I : I + D) : ((I & D) ? VW + I - D : I))...);
}
template <int D = VW / 2> inline void transpose(vf (&r)[VW]) {
#pragma unroll
  for (int i = 0; i < VW; ++i)
    if (!(i & D)) {
      const vf a = r[i], b = r[i + D];
      r[i] = swapBlocks<D, false>(a, b, std::make_index_sequence<VW>{});
      r[i + D] = swapBlocks<D, true>(a, b, std::make_index_sequence<VW>{});
    }
  if constexpr (D > 1)
    transpose<D / 2>(r);
}

/// e^x lane by lane, within 3 ulp of the exact value for x in [-87.3, 88]; 0 below -87.3 (and for -inf), as
/// the flushed denormals would be. x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact),
/// e^r by its degree-6 Taylor polynomial (remainder < 1.2e-7 relative), 2^n put into the exponent bits.
inline vf expv(vf x) {
  typedef int32_t vi __attribute__((vector_size(VW * 4)));
  const vi live = x >= splat(-87.3f);
  x = x < splat(88.0f) ? x : splat(88.0f);
  x = x > splat(-87.3f) ? x : splat(-87.3f);
  const vf shift = splat(12582912.0f); // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (x * splat(1.44269504f) + shift) - shift;
  const vf r = (x - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
  vf p = splat(1.0f / 720.0f);
  p = p * r + splat(1.0f / 120.0f);
  p = p * r + splat(1.0f / 24.0f);
  p = p * r + splat(1.0f / 6.0f);
  p = p * r + splat(0.5f);
  p = p * r + splat(1.0f);
  p = p * r + splat(1.0f);
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two;
  std::memcpy(&two, &e, sizeof two);
  const vf y = p * two;
  vi bits;
  std::memcpy(&bits, &y, sizeof bits);
  bits &= live;
  vf out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

/// While alive, the calling thread flushes denormal results to zero and reads denormal inputs as zero (x86's
/// MXCSR FTZ and DAZ bits; restored on exit). Products of tiny routing weights (a top-k softmax over many
/// experts reaches 1e-40) with activations are denormal, and every instruction touching one takes a microcode
/// assist: measured 6x slower fc2 GEMMs on an OLMoE-like layer. Results change by less than 1.2e-38 each.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// bf16 weights (`--weights=bf16`): the upper 16 bits of an f32, widened on load; accumulation stays f32.
typedef uint16_t u16xv __attribute__((vector_size(VW * 2)));
typedef uint32_t u32xv __attribute__((vector_size(VW * 4)));
typedef int32_t i32xv __attribute__((vector_size(VW * 4)));
inline vf loadv(const uint16_t *p) {
  u16xv h;
  std::memcpy(&h, p, sizeof h);
  u32xv w = __builtin_convertvector(h, u32xv) << 16;
  vf f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
// fp16 weights (`--weights=fp16`): IEEE half, widened on load (F16C's vcvtph2ps on x86-64-v3).
typedef _Float16 f16xv __attribute__((vector_size(VW * 2)));
inline vf loadv(const _Float16 *p) {
  f16xv h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, vf);
}
// bf16 dot products (`--activations=bf16`, bf16 weights): each 32-bit lane holds two bf16 of consecutive
// features (the even one in the low half).
inline u32xv splatu(uint32_t a) { return __builtin_bit_cast(u32xv, splat(__builtin_bit_cast(float, a))); }
/// 2 VW inputs x[0..2 VW) rounded to bf16 as moert_f32_to_bf16 does (its vector form: nearest even; a NaN
/// stays a quiet NaN),
/// as VW pairs: lane j holds x[2j] in its low half and x[2j + 1] in its high one.
inline u32xv bf16Pairs(const float *x) {
  auto round = [](vf v) {
    const u32xv u = __builtin_bit_cast(u32xv, v);
    const u32xv r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r;
  };
  const u32xv lo = round(loadv(x)), hi = round(loadv(x + VW));
#if MOERT_VW == 16
  const u32xv even =
      __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const u32xv odd =
      __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#else
  const u32xv even = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
  const u32xv odd = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15);
#endif
  return even | odd << 16;
}
/// Two rows of VW bf16 as VW pairs: lane j holds even[j] in its low half and odd[j] in its high one (one
/// permute of the two loads); pairRows(even) leaves the high halves zero.
inline u32xv pairRows(const uint16_t *even, const uint16_t *odd) {
  u16xv e, o;
#if MOERT_VW == 16
  if (odd == even + VW) { // one load and a one-source permute (vpermw) where the rows are adjacent
    typedef uint16_t u16x2v __attribute__((vector_size(VW * 4)));
    u16x2v eo;
    std::memcpy(&eo, even, sizeof eo);
    return __builtin_bit_cast(u32xv, __builtin_shufflevector(eo, eo, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21,
                                                             6, 22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12,
                                                             28, 13, 29, 14, 30, 15, 31));
  }
#endif
  std::memcpy(&e, even, sizeof e);
  std::memcpy(&o, odd, sizeof o);
#if MOERT_VW == 16
  return __builtin_bit_cast(u32xv, __builtin_shufflevector(e, o, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6,
                                                           22, 7, 23, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                                           13, 29, 14, 30, 15, 31));
#else
  return __builtin_bit_cast(
      u32xv, __builtin_shufflevector(e, o, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15));
#endif
}
inline u32xv pairRows(const uint16_t *even) {
  u16xv e;
  std::memcpy(&e, even, sizeof e);
  return __builtin_convertvector(e, u32xv);
}
/// Two inputs rounded to bf16 (moert_f32_to_bf16) as one pair: bf16Pairs' scalar form.
inline uint32_t bf16Pair(float even, float odd) {
  return uint32_t(moert_f32_to_bf16(even)) | uint32_t(moert_f32_to_bf16(odd)) << 16;
}
/// acc + a.odd x b.odd + a.even x b.even in every f32 lane, a and b holding bf16 pairs: AVX512-BF16's
/// vdpbf16ps where the build has it, else the same two products in the same order as f32 FMAs (a product of
/// two bf16 is exact in f32, so only the instruction's flush of denormals differs).
inline vf dpbf16(vf acc, u32xv a, u32xv b) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
  typedef __bf16 bfv __attribute__((vector_size(VW * 4)));
#if MOERT_VW == 16
  return __builtin_ia32_dpbf16ps_512(acc, __builtin_bit_cast(bfv, a), __builtin_bit_cast(bfv, b));
#else
  return __builtin_ia32_dpbf16ps_256(acc, __builtin_bit_cast(bfv, a), __builtin_bit_cast(bfv, b));
#endif
#else
  constexpr uint32_t HI = 0xffff0000u;
  const vf ao = __builtin_bit_cast(vf, a & HI), bo = __builtin_bit_cast(vf, b & HI);
  const vf ae = __builtin_bit_cast(vf, a << 16), be = __builtin_bit_cast(vf, b << 16);
  acc += ao * bo;
  acc += ae * be;
  return acc;
#endif
}
/// One lane of dpbf16 (a tail past whole vectors): acc + a.odd x b.odd + a.even x b.even, in that order.
inline float dpbf16(float acc, uint32_t a, uint32_t b) {
  acc += __builtin_bit_cast(float, a & 0xffff0000u) * __builtin_bit_cast(float, b & 0xffff0000u);
  acc += __builtin_bit_cast(float, a << 16) * __builtin_bit_cast(float, b << 16);
  return acc;
}
inline float tofloat(_Float16 x) { return float(x); }
inline float tofloat(float x) { return x; }
inline float tofloat(uint16_t x) {
  uint32_t w = uint32_t(x) << 16;
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
/// Rounds n inputs to int8 as int8 activations do (kernels/cpu/moert_kernel_abi.h, MOERT_INT8_ACT_BLOCK):
/// q = round-half-even(x * (127 / max|x|)), scale max|x| / 127 (a block of zeros: 0; a non-finite input: NaN,
/// every q 0, so the outputs are NaN). put(i, q) stores each; returns the sum of q.
template <class Put> inline int32_t roundInt8(const float *x, int64_t n, float &scale, Put put) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    amax = std::max(amax, std::fabs(x[i]));
  if (!(amax <= 3.0e38f)) {
    for (int64_t i = 0; i < n; ++i)
      put(i, int8_t(0));
    scale = NAN;
    return 0;
  }
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t v = int32_t(std::nearbyint(x[i] * inv));
    put(i, int8_t(v));
    sum += v;
  }
  scale = amax / 127.0f;
  return sum;
}

/// One position's key or value row (D floats) as a session's int8 KV cache stores it (moert_kernel_abi.h,
/// MOERT_KV_INT8_BLOCK): the codes of each block of 32 dims by roundInt8, then the blocks' f32 scales, into
/// moert_kv_int8_row_bytes(D) bytes at `row`.
inline void encodeKvInt8Row(const float *x, int64_t D, char *row) {
  std::memset(row + D, 0, size_t(moert_kv_int8_codes_bytes(D) - D));
  char *scales = row + moert_kv_int8_codes_bytes(D);
  for (int64_t b = 0; b * MOERT_KV_INT8_BLOCK < D; ++b) {
    const int64_t d0 = b * MOERT_KV_INT8_BLOCK;
    float s;
    roundInt8(x + d0, std::min<int64_t>(MOERT_KV_INT8_BLOCK, D - d0), s,
              [&](int64_t i, int8_t q) { row[d0 + i] = char(q); });
    std::memcpy(scales + 4 * b, &s, 4);
  }
}

inline float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < VW; ++i)
    s += v[i];
  return s;
}

/// The norm in front of a dispatch over one row of n values (NORM: moert_norm; MoE and linear dispatches
/// alike): RMS y = x / sqrt(mean(x^2) + eps) * w; LAYER y = (x - mean) / sqrt(var + eps) * w (+ b, if given).
template <int NORM>
inline void normRow(const float *x, const float *w, const float *b, float eps, int64_t n, float *y) {
  static_assert(NORM == 1 || NORM == 2, "MOERT_NORM_RMS or MOERT_NORM_LAYER");
  if constexpr (NORM == 1) {
    vf s0 = {}, s1 = {}, s2 = {}, s3 = {}; // four chains, as a dot product
    int64_t i = 0;
    for (; i + 4 * VW <= n; i += 4 * VW) {
      vf a0 = loadv(x + i), a1 = loadv(x + i + VW), a2 = loadv(x + i + 2 * VW), a3 = loadv(x + i + 3 * VW);
      s0 += a0 * a0, s1 += a1 * a1, s2 += a2 * a2, s3 += a3 * a3;
    }
    for (; i + VW <= n; i += VW) {
      vf a0 = loadv(x + i);
      s0 += a0 * a0;
    }
    float ss = hsum((s0 + s1) + (s2 + s3));
    for (; i < n; ++i)
      ss += x[i] * x[i];
    const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
    for (int64_t h = 0; h < n; ++h)
      y[h] = x[h] * inv * w[h];
  } else {
    float mean = 0.0f;
    for (int64_t h = 0; h < n; ++h)
      mean += x[h];
    mean /= float(n);
    float var = 0.0f;
    for (int64_t h = 0; h < n; ++h)
      var += (x[h] - mean) * (x[h] - mean);
    const float inv = 1.0f / std::sqrt(var / float(n) + eps);
    for (int64_t h = 0; h < n; ++h)
      y[h] = (x[h] - mean) * inv * w[h] + (b ? b[h] : 0.0f);
  }
}

} // namespace moert_cpu

#endif // MOERT_KERNELS_CPU_SIMD_H

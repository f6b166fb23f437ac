//===- attention.h - the attention dispatch's CPU kernel template ------------===//
//
// moe.attention (ir/MoEOps.td) for one layer, specialised by codegen through a config struct C:
//
//   C::HQ, C::HKV, C::DK, C::DV   query heads, key/value heads, the key and value head dims
//   C::SCALE                      the factor on q . k
//   C::NAN_ZERO                   a row whose every score is -inf gives 0 (else NaN, as Softmax does)
//   C::SOFTCAP                    0, or c: each scaled score becomes c * tanh(score / c) before the mask
//
// Work items are (batch, key/value head, a block of query positions) and, when those are too few to keep
// every thread busy (decode), also a chunk of the keys. An item's rows are all G = HQ / HKV query heads of
// its key/value head at each of its positions, so every key and value it reads serves G x positions rows.
// For each block of kAttnKB keys it computes the rows' scores (keys transposed into a [DK][kAttnKB] slice and
// a register-blocked product, or plain dot products for fewer than 4 rows), adds the mask, and runs the
// softmax online (flash-style: running max m and sum l per row, the accumulated output rescaled when the
// max grows), so no S x T score matrix exists. A key block whose mask is at or below kAttnMasked for every
// row of the item is skipped (causal blocks past the diagonal, padding) when every row has some key above
// it: those terms are exactly 0 after the exponential. Keys and values are f32, or bf16 / fp16 / int8 rows
// with block scales when a session keeps its caches narrow (args.kv_storage; KvRead): widened on load,
// everything else in f32. Key chunks
// write (output, m, l) per row to scratch, and a second pass merges them. Attention sinks (args.sinks, one
// logit per query head) start each row's running max and sum, so they count once in the softmax's denominator
// and weigh no value.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_KERNELS_CPU_ATTENTION_H
#define MOERT_KERNELS_CPU_ATTENTION_H

#include "moert_kernel_abi.h"
#include "simd.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace moert_cpu {

constexpr int64_t kAttnKB = 64;       // keys per block: a row's scores of a block are kAttnKB / VW vectors
constexpr int64_t kAttnRows = 64;     // query rows per work item at most (G heads x positions)
constexpr float kAttnMasked = MOERT_ATTN_MASKED; // mask values at or below this make a score's term exactly 0

inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < VW; ++i)
    m = v[i] > m ? v[i] : m;
  return m;
}

/// Software prefetch of a byte range spread over a loop: each step() asks for the next two cache lines, so
/// the next key block streams in while this one computes (a burst of prefetches would stall the loads behind
/// it instead). Into L2, not L1: a block of f32 keys (32 KB at a head dim of 128) is an L1 of its own, and
/// the block computing now (with its transposed copy) would evict what was fetched for the next one before
/// use.
struct Prefetch {
  const char *p = nullptr, *end = nullptr;
  void step() {
    if (p < end) {
      __builtin_prefetch(p, 0, 2);
      __builtin_prefetch(p + 64, 0, 2);
      p += 128;
    }
  }
};

/// Reads a key or value row of D dims in each cache storage: f32 / bf16 / fp16 elements, or an int8 row
/// (moert_kernel_abi.h, MOERT_KV_INT8_BLOCK: codes, then a scale per block of 32 dims). load(row, d) widens
/// dims [d, d + VW) (d a multiple of VW, inside one scale block since 32 % VW == 0); at(row, d) one dim.
template <int64_t D> struct KvRead {
  static_assert(MOERT_KV_INT8_BLOCK % VW == 0, "a vector of int8 codes shares one scale");
  template <class KV> static vf load(const KV *row, int64_t d) { return loadv(row + d); }
  template <class KV> static float at(const KV *row, int64_t d) { return tofloat(row[d]); }
  static float scale(const int8_t *row, int64_t d) {
    float s;
    std::memcpy(&s,
                reinterpret_cast<const char *>(row) + moert_kv_int8_codes_bytes(D) +
                    4 * (d / MOERT_KV_INT8_BLOCK),
                4);
    return s;
  }
  static vf load(const int8_t *row, int64_t d) {
    typedef int8_t i8xv __attribute__((vector_size(VW)));
    i8xv q;
    std::memcpy(&q, row + d, sizeof q);
    return __builtin_convertvector(q, vf) * splat(scale(row, d));
  }
  static float at(const int8_t *row, int64_t d) { return float(row[d]) * scale(row, d); }
};

template <class C> struct Attention {
  static constexpr int64_t HQ = C::HQ, HKV = C::HKV, DK = C::DK, DV = C::DV, G = HQ / HKV;
  static_assert(HQ % HKV == 0, "query heads must be a multiple of key/value heads");
  static constexpr int64_t SB = G >= kAttnRows ? 1 : kAttnRows / G; // query positions per item
  static constexpr int64_t R = G * SB;                              // rows per item at most
  static constexpr int64_t DVP = (DV + VW - 1) / VW * VW;           // an accumulator row, whole vectors
  static constexpr int64_t NV = kAttnKB / VW;                       // score vectors per row and block
  static constexpr int64_t RB = VW == 16 ? 4 : 1;                   // rows per score micro-tile
  static constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
  /// bf16 pair products over bf16 caches (C::BF16_ACT, `moec --activations=bf16`): the queries and the
  /// softmax's probabilities rounded to bf16, each lane summing two bf16 x bf16 products (dpbf16).
  static constexpr bool PAIRS = C::BF16_ACT;
  static_assert(!PAIRS || DK % 2 == 0, "bf16 pair products take an even key head dim");
  static constexpr int64_t DKP = DK / 2;      // a key's dim pairs
  static constexpr int64_t KBP = kAttnKB / 2; // a block's key pairs

  struct Plan {
    int64_t sBlocks, base, chunks, chunkKeys, items;
  };
  static Plan plan(int64_t B, int64_t S, int64_t T, int threads) {
    Plan p;
    p.sBlocks = (S + SB - 1) / SB;
    p.base = B * HKV * p.sBlocks;
    const int64_t blocks = std::max<int64_t>(1, (T + kAttnKB - 1) / kAttnKB);
    const int64_t want = 2 * std::max(1, threads);
    int64_t chunks =
        p.base >= want ? 1 : std::min(blocks, (want + p.base - 1) / std::max<int64_t>(1, p.base));
    p.chunkKeys = (blocks + chunks - 1) / chunks * kAttnKB;
    p.chunks = std::max<int64_t>(1, (T + p.chunkKeys - 1) / p.chunkKeys);
    p.items = p.base * p.chunks;
    return p;
  }
  static constexpr size_t threadFloats() {
    return DK * kAttnKB + R * kAttnKB + R * DVP + 2 * R + 16 + (PAIRS ? R * DKP + R * KBP + KBP * DVP : 0);
  }
  static size_t partialFloats(const Plan &p) { return p.chunks > 1 ? size_t(p.items) * R * (DVP + 2) : 0; }
  static size_t scratch(int64_t B, int64_t S, int64_t T, int threads) {
    return sizeof(float) * (threadFloats() * std::max(1, threads) + partialFloats(plan(B, S, T, threads))) +
           128;
  }

  struct Ctx {
    const moert_attention_args *a;
    Plan p;
    float *thread0;  // per-thread working memory, threadFloats() each
    float *partials; // chunks > 1: per item R x (DVP + 2)
  };

  /// The rows' scores for keys [t0, t0 + nk) into sc[r][j] (unscaled q . k): dot products along the head dim
  /// for fewer than 4 rows, else the block's keys transposed into kt[d][j] (zero past nk, VW x VW at a time)
  /// and a register-blocked product. With bf16 pair products (P: bf16 keys, the rows' queries rounded into
  /// pairs, qb[r][i] = bf16 dims 2i and 2i + 1 of row r's query) the same on dim pairs: a pair is 32 bits, so
  /// the f32 transposes move them into kt[i][j], and each step of the product is dpbf16's two products.
  template <bool P, class KV>
  static void scores(const float *const *qp, const uint32_t *qb, int64_t nr, const KV *k0, int64_t ks,
                     int64_t nk, float *kt, float *sc, Prefetch &pf) {
    constexpr int64_t DD = P ? DKP : DK; // the product's depth: dims, or dim pairs
    auto pairAt = [](const KV *row, int64_t i) {
      uint32_t u;
      std::memcpy(&u, row + 2 * i, 4);
      return u;
    };
    if (nr < 4) {
      for (int64_t j = 0; j < nk; ++j) {
        pf.step();
        const KV *kr = k0 + j * ks;
        for (int64_t r = 0; r < nr; ++r) {
          vf acc = {};
          int64_t d = 0;
          float s;
          if constexpr (P) {
            for (; d + VW <= DD; d += VW) {
              u32xv qv, kv;
              std::memcpy(&qv, qb + r * DKP + d, sizeof qv);
              std::memcpy(&kv, kr + 2 * d, sizeof kv);
              acc = dpbf16(acc, qv, kv);
            }
            s = hsum(acc);
            for (; d < DD; ++d)
              s = dpbf16(s, qb[r * DKP + d], pairAt(kr, d));
          } else {
            for (; d + VW <= DD; d += VW)
              acc += loadv(qp[r] + d) * KvRead<DK>::load(kr, d);
            s = hsum(acc);
            for (; d < DD; ++d)
              s += qp[r][d] * KvRead<DK>::at(kr, d);
          }
          sc[r * kAttnKB + j] = s;
        }
      }
      return;
    }
    if constexpr (DD % VW == 0) {
      for (int64_t j0 = 0; j0 < kAttnKB; j0 += VW)
        for (int64_t d0 = 0; d0 < DD; d0 += VW) {
          vf r[VW];
          for (int i = 0; i < VW; ++i) {
            r[i] = vf{};
            if (j0 + i >= nk)
              continue;
            if constexpr (P)
              std::memcpy(&r[i], k0 + (j0 + i) * ks + 2 * d0, sizeof r[i]);
            else
              r[i] = KvRead<DK>::load(k0 + (j0 + i) * ks, d0);
          }
          transpose(r);
          for (int i = 0; i < VW; ++i)
            storev(kt + (d0 + i) * kAttnKB + j0, r[i]);
        }
    } else {
      for (int64_t d = 0; d < DD; ++d)
        for (int64_t j = 0; j < kAttnKB; ++j) {
          if constexpr (P)
            kt[d * kAttnKB + j] = __builtin_bit_cast(float, j < nk ? pairAt(k0 + j * ks, d) : 0u);
          else
            kt[d * kAttnKB + j] = j < nk ? KvRead<DK>::at(k0 + j * ks, d) : 0.0f;
        }
    }
    int64_t r = 0;
    for (; r + RB <= nr; r += RB)
      scoreTile<RB, P>(qp + r, qb + r * DKP, kt, sc + r * kAttnKB, pf);
    for (; r < nr; ++r)
      scoreTile<1, P>(qp + r, qb + r * DKP, kt, sc + r * kAttnKB, pf);
  }
  template <int M, bool P>
  static void scoreTile(const float *const *qp, const uint32_t *qb, const float *kt, float *sc,
                        Prefetch &pf) {
    vf acc[M][NV] = {};
    for (int64_t d = 0; d < (P ? DKP : DK); ++d) {
      pf.step();
      vf kv[NV];
#pragma unroll
      for (int v = 0; v < NV; ++v)
        kv[v] = loadv(kt + d * kAttnKB + v * VW);
#pragma unroll
      for (int i = 0; i < M; ++i) {
        if constexpr (P) {
          const u32xv q = splatu(qb[i * DKP + d]);
#pragma unroll
          for (int v = 0; v < NV; ++v)
            acc[i][v] = dpbf16(acc[i][v], q, __builtin_bit_cast(u32xv, kv[v]));
        } else {
          const vf q = splat(qp[i][d]);
#pragma unroll
          for (int v = 0; v < NV; ++v)
            acc[i][v] += q * kv[v];
        }
      }
    }
    for (int i = 0; i < M; ++i)
      for (int v = 0; v < NV; ++v)
        storev(sc + i * kAttnKB + v * VW, acc[i][v]);
  }

  /// acc[r] += sum_j p[r][j] v[j] for keys [0, nk) of the block: RA rows at a time, CV vectors of each (16
  /// accumulators at VW 16, 8 at VW 8), so each value vector loaded (and widened) serves RA rows. With bf16
  /// pair products (P: bf16 values) acc[r] += sum_j bf16(p[r][j]) v[j], two keys a step: the block's values
  /// are first laid out in key pairs (vp[jp][d] = values of keys 2jp and 2jp + 1 at dim d; a missing odd key
  /// is 0) and the rows' probabilities rounded into pairs (pp).
  static constexpr int64_t RA = VW == 16 ? 4 : 2;
  template <bool P, class KV>
  static void accumulate(int64_t nr, const KV *v0, int64_t vs, int64_t nk, const float *p, float *acc,
                         uint32_t *pp, uint32_t *vp, Prefetch &pf) {
    constexpr int64_t VEC = DV / VW * VW; // vector part of a row
    constexpr int64_t CV = 4;
    const int64_t n = P ? (nk + 1) / 2 : nk; // steps: keys, or key pairs
    if constexpr (P) {
      const int64_t steps = (4 * vs + 127) / 128; // prefetch steps covering two value rows
      for (int64_t jp = 0; jp < n; ++jp) {
        for (int64_t i = 0; i < steps; ++i)
          pf.step();
        const KV *a = v0 + 2 * jp * vs, *b = 2 * jp + 1 < nk ? a + vs : nullptr;
        for (int64_t d = 0; d < VEC; d += VW) {
          const u32xv w = b ? pairRows(a + d, b + d) : pairRows(a + d);
          std::memcpy(vp + jp * DVP + d, &w, sizeof w);
        }
        for (int64_t d = VEC; d < DV; ++d)
          vp[jp * DVP + d] = uint32_t(a[d]) | uint32_t(b ? b[d] : 0) << 16;
      }
      for (int64_t r = 0; r < nr; ++r) // probabilities past nk are 0 (exp(-inf))
        for (int64_t jp = 0; jp < KBP; jp += VW) {
          const u32xv w = bf16Pairs(p + r * kAttnKB + 2 * jp);
          std::memcpy(pp + r * KBP + jp, &w, sizeof w);
        }
    }
    for (int64_t r = 0; r < nr; r += RA) {
      const int64_t nrr = std::min<int64_t>(RA, nr - r);
      const float *pr[RA]; // the rows' probabilities: f32, or (P) bf16 pairs
      const uint32_t *pq[RA];
      float *ar[RA];
      for (int i = 0; i < RA; ++i) { // rows past nr repeat the last one (computed, not stored)
        pr[i] = p + (r + std::min<int64_t>(i, nrr - 1)) * kAttnKB;
        pq[i] = pp + (r + std::min<int64_t>(i, nrr - 1)) * KBP;
        ar[i] = acc + (r + std::min<int64_t>(i, nrr - 1)) * DVP;
      }
      for (int64_t c0 = 0; c0 < VEC; c0 += CV * VW) {
        const int64_t nc = std::min<int64_t>(CV, (VEC - c0) / VW);
        vf x[RA][CV];
        for (int i = 0; i < RA; ++i)
          for (int c = 0; c < CV; ++c)
            x[i][c] = c < nc ? loadv(ar[i] + c0 + c * VW) : vf{};
        for (int64_t j = 0; j < n; ++j) {
          if constexpr (!P)
            pf.step();
          vf w[RA];
#pragma unroll
          for (int i = 0; i < RA; ++i)
            w[i] = P ? __builtin_bit_cast(vf, splatu(pq[i][j])) : splat(pr[i][j]);
#pragma unroll
          for (int c = 0; c < CV; ++c)
            if (c < nc) {
              if constexpr (P) {
                u32xv vv;
                std::memcpy(&vv, vp + j * DVP + c0 + c * VW, sizeof vv);
#pragma unroll
                for (int i = 0; i < RA; ++i)
                  x[i][c] = dpbf16(x[i][c], __builtin_bit_cast(u32xv, w[i]), vv);
              } else {
                const vf vv = KvRead<DV>::load(v0 + j * vs, c0 + c * VW);
#pragma unroll
                for (int i = 0; i < RA; ++i)
                  x[i][c] += w[i] * vv;
              }
            }
        }
        for (int i = 0; i < nrr; ++i)
          for (int c = 0; c < nc; ++c)
            storev(ar[i] + c0 + c * VW, x[i][c]);
      }
      for (int64_t d = VEC; d < DV; ++d)
        for (int64_t j = 0; j < n; ++j)
          for (int i = 0; i < nrr; ++i)
            if constexpr (P) {
              ar[i][d] = dpbf16(ar[i][d], pq[i][j], vp[j * DVP + d]);
            } else {
              ar[i][d] += pr[i][j] * KvRead<DV>::at(v0 + j * vs, d);
            }
    }
  }

  /// [lo, hi): from the first to past the last of the T mask values m[t * mt] above kAttnMasked (a NaN
  /// counts as above); lo == hi when there is none. Contiguous rows (mt == 1) are scanned a vector at a time
  /// from both ends, so a window's or a causal row's masked stretch costs T / VW comparisons.
  static void keptRange(const float *m, int64_t mt, int64_t T, int64_t &lo, int64_t &hi) {
    auto kept = [&](int64_t t) { return !(m[t * mt] <= kAttnMasked); };
    auto anyKept = [&](int64_t t) { // t .. t + VW - 1, mt == 1
      typedef int32_t vi __attribute__((vector_size(VW * 4)));
      const vi masked = loadv(m + t) <= splat(kAttnMasked);
      int32_t all = -1;
      for (int i = 0; i < VW; ++i)
        all &= masked[i];
      return all == 0;
    };
    lo = 0;
    if (mt == 1)
      while (lo + VW <= T && !anyKept(lo))
        lo += VW;
    while (lo < T && !kept(lo))
      ++lo;
    hi = T;
    if (mt == 1)
      while (hi - VW >= lo && !anyKept(hi - VW))
        hi -= VW;
    while (hi > lo && !kept(hi - 1))
      --hi;
  }

  /// One row's result from its accumulated output, sum and max.
  static void finish(const float *acc, float l, float *out) {
    if (!(l > 0.0f)) { // every score -inf (or no keys)
      const float fill = C::NAN_ZERO ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      for (int64_t d = 0; d < DV; ++d)
        out[d] = fill;
      return;
    }
    const float inv = 1.0f / l;
    for (int64_t d = 0; d < DV; ++d)
      out[d] = acc[d] * inv;
  }

  template <class KV> static void work(void *vctx, int64_t item, int thread) {
    FlushDenormals ftz;
    const Ctx &x = *static_cast<const Ctx *>(vctx);
    const moert_attention_args &a = *x.a;
    const Plan &p = x.p;
    const int64_t chunk = item % p.chunks, bi = item / p.chunks;
    const int64_t sb = bi % p.sBlocks, hk = (bi / p.sBlocks) % HKV, b = bi / (p.sBlocks * HKV);
    const int64_t s0 = sb * SB, ns = std::min<int64_t>(SB, a.q_len - s0), nr = ns * G;
    const int64_t tb = chunk * p.chunkKeys, te = std::min<int64_t>(a.kv_len, tb + p.chunkKeys);
    float *kt = x.thread0 + size_t(thread) * threadFloats();
    float *sc = kt + DK * kAttnKB, *acc = sc + R * kAttnKB, *m = acc + R * DVP, *l = m + R;
    // bf16 pair products (bf16 caches): the rows' rounded queries, probabilities and a block's value pairs.
    constexpr bool P = PAIRS && std::is_same_v<KV, uint16_t>;
    uint32_t *qb = reinterpret_cast<uint32_t *>(l + R + 16), *pp = qb + R * DKP, *vp = pp + R * KBP;
    const float *qp[R];
    const float *mp[R];
    for (int64_t si = 0; si < ns; ++si)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = si * G + g, h = hk * G + g, s = s0 + si;
        qp[r] = a.query + b * a.q_strides[0] + h * a.q_strides[1] + s * a.q_strides[2];
        mp[r] =
            a.mask ? a.mask + b * a.mask_strides[0] + h * a.mask_strides[1] + s * a.mask_strides[2] : nullptr;
      }
    if constexpr (P)
      for (int64_t r = 0; r < nr; ++r) {
        int64_t i = 0;
        for (; i + VW <= DKP; i += VW) {
          const u32xv w = bf16Pairs(qp[r] + 2 * i);
          std::memcpy(qb + r * DKP + i, &w, sizeof w);
        }
        for (; i < DKP; ++i)
          qb[r * DKP + i] = bf16Pair(qp[r][2 * i], qp[r][2 * i + 1]);
      }
    for (int64_t r = 0; r < nr; ++r) {
      // An attention sink is one more term of the softmax that weighs no value: the running max starts at
      // it with its exp(0) = 1 in the sum (in the first key chunk only; the merge adds the chunks).
      const bool sink = a.sinks && chunk == 0;
      m[r] = sink ? a.sinks[hk * G + r % G] : NEG_INF, l[r] = sink ? 1.0f : 0.0f;
      for (int64_t d = 0; d < DVP; ++d)
        acc[r * DVP + d] = 0.0f;
    }
    // Each row's keys the mask leaves lie in [lo, hi) (outside it every mask value is at or below
    // kAttnMasked); rows of one position share a mask row when the mask is broadcast over heads. Blocks may
    // be skipped only when every row has some key the mask leaves (else the row is all masked and its softmax
    // is over every key): then only blocks meeting some row's range are computed.
    const int64_t mt = a.mask_strides[3];
    int64_t lo[R], hi[R], first = tb, last = te;
    bool skippable = a.mask != nullptr;
    for (int64_t r = 0; r < nr && skippable; ++r) {
      if (r > 0 && mp[r] == mp[r - 1])
        lo[r] = lo[r - 1], hi[r] = hi[r - 1];
      else
        keptRange(mp[r], mt, a.kv_len, lo[r], hi[r]);
      skippable = lo[r] < hi[r];
    }
    if (skippable) {
      int64_t minLo = hi[0], maxHi = lo[0];
      for (int64_t r = 0; r < nr; ++r)
        minLo = std::min(minLo, lo[r]), maxHi = std::max(maxHi, hi[r]);
      first = tb + std::max<int64_t>(0, minLo - tb) / kAttnKB * kAttnKB; // block starts stay tb + 64 k
      last = std::min(te, maxHi);
    }
    const KV *kb = static_cast<const KV *>(a.key) + b * a.k_strides[0] + hk * a.k_strides[1];
    const KV *vb = static_cast<const KV *>(a.value) + b * a.v_strides[0] + hk * a.v_strides[1];
    for (int64_t t0 = first; t0 < last; t0 += kAttnKB) {
      const int64_t nk = std::min<int64_t>(kAttnKB, te - t0);
      if (skippable) {
        bool outside = true;
        for (int64_t r = 0; r < nr && outside; ++r)
          outside = t0 + nk <= lo[r] || t0 >= hi[r];
        if (outside)
          continue;
      }
      // The next block's keys stream in during this block's scores, its values during this block's sums (each
      // block's positions are contiguous: the row stride is the row's size, an int8 row's scales included).
      const int64_t nn = std::min<int64_t>(kAttnKB, te - t0 - kAttnKB);
      auto ahead = [&](const KV *base, int64_t stride) {
        Prefetch f;
        if (nn > 0) {
          f.p = reinterpret_cast<const char *>(base + (t0 + kAttnKB) * stride);
          f.end = f.p + nn * stride * int64_t(sizeof(KV));
        }
        return f;
      };
      Prefetch pk = ahead(kb, a.k_strides[2]), pv = ahead(vb, a.v_strides[2]);
      scores<P>(qp, qb, nr, kb + t0 * a.k_strides[2], a.k_strides[2], nk, kt, sc, pk);
      for (int64_t r = 0; r < nr; ++r) {
        float *row = sc + r * kAttnKB;
        if constexpr (C::SOFTCAP > 0.0f) { // c tanh(x / c) = c - 2c / (e^(2x / c) + 1)
          for (int v = 0; v < NV; ++v) {
            const vf z = expv(loadv(row + v * VW) * splat(2.0f * C::SCALE / C::SOFTCAP));
            storev(row + v * VW, splat(C::SOFTCAP) - splat(2.0f * C::SOFTCAP) / (z + splat(1.0f)));
          }
          if (mp[r])
            for (int64_t j = 0; j < nk; ++j)
              row[j] += mp[r][(t0 + j) * mt];
        } else {
          for (int64_t j = 0; j < nk; ++j)
            row[j] = row[j] * C::SCALE + (mp[r] ? mp[r][(t0 + j) * mt] : 0.0f);
        }
        for (int64_t j = nk; j < kAttnKB; ++j)
          row[j] = NEG_INF;
        vf mx = loadv(row);
        for (int v = 1; v < NV; ++v)
          mx = mx > loadv(row + v * VW) ? mx : loadv(row + v * VW);
        const float mnew = std::max(m[r], hmax(mx));
        if (mnew == NEG_INF) { // nothing but -inf so far: no terms
          for (int64_t j = 0; j < kAttnKB; ++j)
            row[j] = 0.0f;
          continue;
        }
        vf sum = {};
        for (int v = 0; v < NV; ++v) {
          const vf e = expv(loadv(row + v * VW) - splat(mnew));
          storev(row + v * VW, e);
          sum += e;
        }
        const float corr = m[r] == NEG_INF ? 0.0f : std::exp(m[r] - mnew);
        if (corr != 1.0f)
          for (int64_t d = 0; d < DVP; ++d)
            acc[r * DVP + d] *= corr;
        l[r] = l[r] * corr + hsum(sum);
        m[r] = mnew;
      }
      accumulate<P>(nr, vb + t0 * a.v_strides[2], a.v_strides[2], nk, sc, acc, pp, vp, pv);
    }
    if (p.chunks == 1) {
      for (int64_t si = 0; si < ns; ++si)
        for (int64_t g = 0; g < G; ++g) {
          const int64_t r = si * G + g;
          finish(acc + r * DVP, l[r],
                 a.output + b * a.out_strides[0] + (hk * G + g) * a.out_strides[1] +
                     (s0 + si) * a.out_strides[2]);
        }
      return;
    }
    float *part = x.partials + size_t(item) * R * (DVP + 2);
    for (int64_t r = 0; r < nr; ++r) {
      std::memcpy(part + r * (DVP + 2), acc + r * DVP, DVP * sizeof(float));
      part[r * (DVP + 2) + DVP] = m[r];
      part[r * (DVP + 2) + DVP + 1] = l[r];
    }
  }

  /// Merges the key chunks' partial results of base item `bi`.
  static void merge(void *vctx, int64_t bi, int thread) {
    const Ctx &x = *static_cast<const Ctx *>(vctx);
    const moert_attention_args &a = *x.a;
    const Plan &p = x.p;
    const int64_t sb = bi % p.sBlocks, hk = (bi / p.sBlocks) % HKV, b = bi / (p.sBlocks * HKV);
    const int64_t s0 = sb * SB, ns = std::min<int64_t>(SB, a.q_len - s0);
    float *acc = x.thread0 + size_t(thread) * threadFloats();
    for (int64_t si = 0; si < ns; ++si)
      for (int64_t g = 0; g < G; ++g) {
        const int64_t r = si * G + g;
        float mx = NEG_INF;
        for (int64_t c = 0; c < p.chunks; ++c)
          mx = std::max(mx, x.partials[(size_t(bi * p.chunks + c) * R + r) * (DVP + 2) + DVP]);
        float l = 0.0f;
        for (int64_t d = 0; d < DV; ++d)
          acc[d] = 0.0f;
        if (mx != NEG_INF)
          for (int64_t c = 0; c < p.chunks; ++c) {
            const float *part = x.partials + (size_t(bi * p.chunks + c) * R + r) * (DVP + 2);
            if (part[DVP] == NEG_INF)
              continue;
            const float w = std::exp(part[DVP] - mx);
            l += part[DVP + 1] * w;
            for (int64_t d = 0; d < DV; ++d)
              acc[d] += part[d] * w;
          }
        finish(acc, l,
               a.output + b * a.out_strides[0] + (hk * G + g) * a.out_strides[1] +
                   (s0 + si) * a.out_strides[2]);
      }
  }

  static int run(const moert_attention_args *a) {
    if (a->batch < 0 || a->q_len < 0 || a->kv_len < 0)
      return 1;
    if (a->kv_storage != MOERT_STORAGE_F32 && a->kv_storage != MOERT_STORAGE_BF16 &&
        a->kv_storage != MOERT_STORAGE_F16 && a->kv_storage != MOERT_STORAGE_INT8)
      return 2;
    if (a->batch == 0 || a->q_len == 0)
      return 0;
    const moert_exec &ex = *a->exec;
    Ctx c{a, plan(a->batch, a->q_len, a->kv_len, ex.threads), nullptr, nullptr};
    float *base = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(a->scratch) + 63) & ~uintptr_t(63));
    c.thread0 = base;
    c.partials = base + threadFloats() * std::max(1, ex.threads);
    ex.parallel_for(ex.pool, c.p.items, &c,
                    a->kv_storage == MOERT_STORAGE_BF16   ? &work<uint16_t>
                    : a->kv_storage == MOERT_STORAGE_F16  ? &work<_Float16>
                    : a->kv_storage == MOERT_STORAGE_INT8 ? &work<int8_t>
                                                          : &work<float>);
    if (c.p.chunks > 1)
      ex.parallel_for(ex.pool, c.p.base, &c, &merge);
    return 0;
  }
};

} // namespace moert_cpu

#endif // MOERT_KERNELS_CPU_ATTENTION_H

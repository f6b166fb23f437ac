//===- sparse_moe_gpu.h - the fused sparse MoE layer as GPU kernels ------------===//
//
// `moec compile --target=hip|cuda` specialises these templates per `moe.sparse_moe` dispatch with the same
// config struct `C` as the CPU kernels (kernels/cpu/sparse_moe.h: every shape, k, activation and flag a
// compile-time constant) and exports five to seven kernels (kernels/hip/moert_gpu_abi.h), of which a call
// launches three to five:
//
//   logits (linear routers; block (t, y), one warp per router column): the router's dot products with the
//     (normalised) input, so the router's weights stream through many SMs, not one;
//   route (one block per token): optional RMSNorm/LayerNorm, the logits (given or from `logits`),
//     softmax/sigmoid/identity, selection bias, grouped top-k, top-k (ties: lower index), renormalise, scale;
//     the shared expert's sigmoid gate; output row = residual or 0. Counts per expert with atomics; the last
//     block to finish (a ticket counter) turns the counts into tiles of up to TILE (token, slot) entries per
//     expert (prefix sum, entries in token order, like vLLM's moe_align_block_size) and zeroes the counts.
//   predict (a low-rank predictor only; block (token, slot)): the chosen expert's dim scores and the KEEP
//     dims kept for that entry (a keep row per entry; up computes only kept dims, zero for the others);
//   up (tile x chunk of FCHUNK hidden dims): one warp per hidden dim reads the dim's gate and up rows once
//     and applies them to every entry of the tile (fp32 accumulation, weights widened from bf16/fp16 or
//     int8/int4 times their block scales), then
//     the activation; masked dims are skipped (their activation is 0).
//   down (tile x 1024 output columns x a split of F): each thread owns 4 columns and the tile's entries;
//     the fc2 row of each kept dim is read once per tile; the weighted sums go to the output with f32
//     atomic adds (the weighted combine is the epilogue), plus the fc2 bias once per entry.
//   up_mma, down_mma: `up` and `down` on matrix cores (gpu_mma.h's MmaBlockTile), for calls whose tiles have
//     64 entries (prefill-sized calls: moert_gpu_tile_entries).
//
// Decode (T <= 8): 4 launches per layer (3 with precomputed logits), all reading weights of chosen experts
// and kept dims only; `down` splits F so the grid fills the GPU. Summation order across slots and F splits
// depends on the atomics' order: results differ from run to run in the last bits.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SPARSE_MOE_GPU_H
#define MOERT_SPARSE_MOE_GPU_H

#include "gpu_common.h"
#include "gpu_mma.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#include "moert_kernel_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

constexpr int BLOCK = MOERT_GPU_BLOCK, TILE = MOERT_GPU_TILE, WARPS = BLOCK / kWarp;
constexpr int PIECE = 128; // activations staged in shared memory per step of `down`

// The expert weights of one expert (or the shared one) as rows of f32 values, whatever their storage:
// C::W elements (f32, bf16, fp16), or (C::QBITS 8 / 4) symmetric integers packed along H (int4: two a byte,
// low nibble first, zero point 8) with f16 (C::SCALE16: moec quantised them) or f32 scales — fc1 rows one per
// QBLOCK1 columns, fc2 one per column per block of QBLOCK2 rows (kernels/cpu/moert_kernel_abi.h). load4 needs
// h % 4 == 0 and H % 4 == 0.
template <class C, int BITS = C::QBITS> struct Rows {
  using W = typename C::W;
  const W *w1, *w2;
  GPU_INLINE Rows(const moert_gpu_args &a, bool shared, int64_t ex, int64_t fdim, int64_t g) {
    w1 = static_cast<const W *>(a.weights[shared ? MOERT_SHARED1 : MOERT_FC1]) + ex * fdim * g * C::H;
    w2 = static_cast<const W *>(a.weights[shared ? MOERT_SHARED2 : MOERT_FC2]) + ex * fdim * C::H;
  }
  GPU_INLINE F4 load1x4(int64_t r, int64_t h) const { return load4(w1 + r * C::H + h); } // r = f * G + part
  GPU_INLINE float at1(int64_t r, int64_t h) const { return load1(w1 + r * C::H + h); }
  GPU_INLINE F4 load2x4(int64_t f, int64_t c) const { return load4(w2 + f * C::H + c); }
  GPU_INLINE float at2(int64_t f, int64_t c) const { return load1(w2 + f * C::H + c); }
};
template <class C, int BITS> struct QuantRows {
  static constexpr int64_t RB = C::H * BITS / 8, BLK = C::QBLOCK1, NB1 = (C::H + BLK - 1) / BLK;
  using Scale = typename moert_gpu_scale<C::SCALE16>::type; // as stored (MOERT_FC1_SCALES, ...)
  const uint8_t *q1, *q2;
  const Scale *s1, *s2;
  int64_t blk2;
  GPU_INLINE QuantRows(const moert_gpu_args &a, bool shared, int64_t ex, int64_t fdim, int64_t g) {
    blk2 = C::QBLOCK2 > 0 ? C::QBLOCK2 : fdim;
    int64_t nb2 = (fdim + blk2 - 1) / blk2;
    q1 = static_cast<const uint8_t *>(a.weights[shared ? MOERT_SHARED1 : MOERT_FC1]) + ex * fdim * g * RB;
    q2 = static_cast<const uint8_t *>(a.weights[shared ? MOERT_SHARED2 : MOERT_FC2]) + ex * fdim * RB;
    s1 = static_cast<const Scale *>(a.weights[shared ? MOERT_SHARED1_SCALES : MOERT_FC1_SCALES]) +
         ex * fdim * g * NB1;
    s2 = static_cast<const Scale *>(a.weights[shared ? MOERT_SHARED2_SCALES : MOERT_FC2_SCALES]) +
         ex * nb2 * C::H;
  }
  // Four integers from row bytes `q` at element h (h % 4 == 0).
  static GPU_INLINE F4 ints4(const uint8_t *q, int64_t h) {
    if (BITS == 8) {
      uint32_t u = *reinterpret_cast<const uint32_t *>(q + h);
      return F4{{float(int8_t(u)), float(int8_t(u >> 8)), float(int8_t(u >> 16)), float(int8_t(u >> 24))}};
    }
    uint32_t u = *reinterpret_cast<const uint16_t *>(q + h / 2);
    return F4{{float(int(u & 15) - 8), float(int(u >> 4 & 15) - 8), float(int(u >> 8 & 15) - 8),
               float(int(u >> 12 & 15) - 8)}};
  }
  static GPU_INLINE float int1(const uint8_t *q, int64_t h) {
    if (BITS == 8)
      return float(int8_t(q[h]));
    return float(int(q[h / 2] >> ((h & 1) * 4) & 15) - 8);
  }
  GPU_INLINE F4 load1x4(int64_t r, int64_t h) const { // a block of QBLOCK1 (a multiple of 16, or H) holds all 4
    F4 v = ints4(q1 + r * RB, h);
    float sc = load1(s1 + r * NB1 + h / BLK);
    return F4{{v.v[0] * sc, v.v[1] * sc, v.v[2] * sc, v.v[3] * sc}};
  }
  GPU_INLINE float at1(int64_t r, int64_t h) const {
    return int1(q1 + r * RB, h) * load1(s1 + r * NB1 + h / BLK);
  }
  // Sixteen int8 weights of fc1 row r at h (h % 16 == 0, H % 16 == 0): one 16-byte load, one scale.
  GPU_INLINE void load1x16(int64_t r, int64_t h, float (&w)[16]) const {
    struct alignas(16) Q { uint32_t u[4]; };
    Q q = *reinterpret_cast<const Q *>(q1 + r * RB + h);
    float sc = load1(s1 + r * NB1 + h / BLK);
#pragma unroll
    for (int i = 0; i < 16; ++i)
      w[i] = float(int8_t(q.u[i / 4] >> (8 * (i % 4)))) * sc;
  }
  GPU_INLINE F4 load2x4(int64_t f, int64_t c) const {
    F4 v = ints4(q2 + f * RB, c), sc = load4(s2 + (f / blk2) * C::H + c);
    return F4{{v.v[0] * sc.v[0], v.v[1] * sc.v[1], v.v[2] * sc.v[2], v.v[3] * sc.v[3]}};
  }
  GPU_INLINE float at2(int64_t f, int64_t c) const {
    return int1(q2 + f * RB, c) * load1(s2 + (f / blk2) * C::H + c);
  }
};
template <class C> struct Rows<C, 8> : QuantRows<C, 8> { using QuantRows<C, 8>::QuantRows; };
template <class C> struct Rows<C, 4> : QuantRows<C, 4> { using QuantRows<C, 4>::QuantRows; };

template <class C> struct Kernels {
  static constexpr int64_t H = C::H, F = C::F, E = C::E, N = C::N, K = C::K, FS = C::FS;
  static constexpr int64_t S = K + (C::HAS_SHARED ? 1 : 0);
  static constexpr int64_t G = (C::ACT == MOERT_ACT_SWIGLU || C::ACT == MOERT_ACT_GEGLU) ? 2 : 1;
  static constexpr int64_t FMAX = F > FS ? F : FS;
  static constexpr bool VEC = H % 4 == 0; // rows 4-element aligned: vector loads
  // int8 rows 16-byte aligned, 16 columns inside one scale block: 16-wide loads in `up`
  static constexpr bool WIDE8 = C::QBITS == 8 && H % 16 == 0 && (C::QBLOCK1 % 16 == 0);
  static constexpr int64_t NPL = (N + kWarp - 1) / kWarp; // router columns per lane in warp 0

  static GPU_INLINE moert_gpu_shape shape() {
    moert_gpu_shape s{H, F, FS, E, N, K, C::NORM != MOERT_NORM_NONE, C::HAS_PRED};
    return s;
  }
  static GPU_INLINE char *scratch(const moert_gpu_args &a) { return static_cast<char *>(a.scratch); }

  // RMSNorm / LayerNorm statistics of one token's row (block-wide; every thread gets them).
  static GPU_INLINE void normStats(const float *in, float *red, float &mean, float &inv) {
    moert_gpu::normStats<WARPS, C::NORM>(in, H, C::EPS, red, mean, inv);
  }

  static GPU_INLINE float activate(float g, float u) {
    if (G == 2) {
      if (C::LIMIT > 0.0f) {
        g = minf(g, C::LIMIT);
        u = minf(maxf(u, -C::LIMIT), C::LIMIT);
      }
      if (C::ACT == MOERT_ACT_SWIGLU)
        return g * sigmoid(C::ALPHA * g) * (u + C::BETA);
      return geluErf(g) * (u + C::BETA);
    }
    switch (C::ACT) {
    case MOERT_ACT_RELU:
      return g > 0.0f ? g : 0.0f;
    case MOERT_ACT_GELU:
      return geluErf(g);
    case MOERT_ACT_GELU_TANH:
      return geluTanh(g);
    case MOERT_ACT_SILU:
      return g * sigmoid(g);
    default:
      return g;
    }
  }

  // ---- logits (linear routers): block (t, y), one warp per router column, the norm applied on the fly --
  static GPU_INLINE void logits(const moert_gpu_args &a) {
    GPU_SHARED float red[WARPS];
    const int tid = threadId();
    const int64_t T = a.tokens, t = blockX(), n = int64_t(blockY()) * WARPS + warpId();
    const moert_gpu_shape sh = shape();
    const moert_gpu_layout l = moert_gpu_scratch_layout(&sh, T);
    const float *in = a.input + t * H;
    const float *nw = static_cast<const float *>(a.weights[MOERT_NORM_W]);
    const float *nb = static_cast<const float *>(a.weights[MOERT_NORM_B]);
    float mean = 0.0f, inv = 1.0f;
    if (C::NORM != MOERT_NORM_NONE) // the same statistics as `route` computes
      normStats(in, red, mean, inv);
    if (n >= N)
      return;
    const float *r = static_cast<const float *>(a.weights[MOERT_ROUTER]) + n * H;
    const float *rb = static_cast<const float *>(a.weights[MOERT_ROUTER_BIAS]);
    auto xAt = [&](int64_t h, float v) {
      if (C::NORM == MOERT_NORM_NONE)
        return v;
      return (v - mean) * inv * nw[h] + (C::NORM == MOERT_NORM_LAYER && nb ? nb[h] : 0.0f);
    };
    float acc = 0.0f;
    if (VEC) {
#pragma unroll 4
      for (int64_t h = int64_t(laneId()) * 4; h < H; h += kWarp * 4) {
        F4 xv = load4(in + h), w = load4(r + h);
#pragma unroll
        for (int c = 0; c < 4; ++c)
          acc += w.v[c] * xAt(h + c, xv.v[c]);
      }
    } else {
      for (int64_t h = laneId(); h < H; h += kWarp)
        acc += r[h] * xAt(h, in[h]);
    }
    acc = warpSum(acc);
    if (laneId() == 0)
      reinterpret_cast<float *>(scratch(a) + l.logits)[t * N + n] = acc + (rb ? rb[n] : 0.0f);
  }

  // ---- route: one block per token; the last block groups entries into tiles --------------------------
  static GPU_INLINE void route(const moert_gpu_args &a) {
    GPU_SHARED float red[WARPS];
    GPU_SHARED float logit[N];
    GPU_SHARED float score[N];
    GPU_SHARED int last;
    const int tid = threadId();
    const int64_t T = a.tokens, t = blockX();
    const moert_gpu_shape sh = shape();
    const moert_gpu_layout l = moert_gpu_scratch_layout(&sh, T);
    int32_t *chosen = reinterpret_cast<int32_t *>(scratch(a) + l.chosen);
    float *weight = reinterpret_cast<float *>(scratch(a) + l.weight);
    int32_t *counts = static_cast<int32_t *>(a.state), *ticket = counts + E;
    const float *in = a.input + t * H;
    float *out = a.output + t * H;
    for (int64_t h = tid; h < H; h += BLOCK)
      out[h] = a.residual ? a.residual[t * H + h] : 0.0f;

    const float *x = in;
    if (C::NORM != MOERT_NORM_NONE) {
      float *xn = reinterpret_cast<float *>(scratch(a) + l.x) + t * H;
      const float *w = static_cast<const float *>(a.weights[MOERT_NORM_W]);
      const float *b = static_cast<const float *>(a.weights[MOERT_NORM_B]);
      float mean = 0.0f, inv = 1.0f;
      normStats(in, red, mean, inv);
      for (int64_t h = tid; h < H; h += BLOCK)
        xn[h] = (in[h] - mean) * inv * w[h] + (C::NORM == MOERT_NORM_LAYER && b ? b[h] : 0.0f);
      sync();
      x = xn;
    }

    if (C::LINEAR_ROUTER) { // computed by the `logits` kernel
      const float *lg = reinterpret_cast<const float *>(scratch(a) + l.logits);
      for (int64_t n = tid; n < N; n += BLOCK)
        logit[n] = lg[t * N + n];
    } else {
      for (int64_t n = tid; n < N; n += BLOCK)
        logit[n] = a.logits[t * N + n];
    }
    float sharedGate = 1.0f;
    if (C::HAS_SHARED && a.weights[MOERT_SHARED_GATE]) {
      const float *g = static_cast<const float *>(a.weights[MOERT_SHARED_GATE]);
      float s = 0.0f;
      for (int64_t h = tid; h < H; h += BLOCK)
        s += g[h] * x[h];
      sharedGate = sigmoid(blockSum<WARPS>(s, red));
    }
    sync();

    if (warpId() == 0) {
      const int lane = laneId();
      float sc[NPL], ch[NPL];
      const float *sb = static_cast<const float *>(a.weights[MOERT_SEL_BIAS]);
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < NPL; ++j) {
        int64_t n = lane + j * kWarp;
        sc[j] = n < N ? logit[n] : -INFINITY;
        mx = maxf(mx, sc[j]);
      }
      if (C::IDENTITY_GATE || C::SPARSEMIXER) {
        // the logits are the routing weights / sparsemixer's input
      } else if (C::SIGMOID_GATE) {
#pragma unroll
        for (int j = 0; j < NPL; ++j)
          sc[j] = sigmoid(sc[j]);
      } else {
        mx = warpMax(mx);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < NPL; ++j) {
          int64_t n = lane + j * kWarp;
          sc[j] = n < N ? expf(sc[j] - mx) : 0.0f;
          sum += sc[j];
        }
        sum = warpSum(sum);
#pragma unroll
        for (int j = 0; j < NPL; ++j)
          sc[j] /= sum;
      }
#pragma unroll
      for (int j = 0; j < NPL; ++j) {
        int64_t n = lane + j * kWarp;
        ch[j] = n < N ? sc[j] + (sb ? sb[n] : 0.0f) : -INFINITY;
        if (n < N)
          score[n] = ch[j];
      }
      if (C::GROUPS >
          1) { // grouped top-k: keep the GROUP_TOPK groups of best top-2 sum or max (lane 0, in order)
        constexpr int64_t per = N / C::GROUPS;
        warpSync(); // every lane's scores written before lane 0 reads them (no lock-step to rely on)
        if (lane == 0) {
          float gs[C::GROUPS];
          bool keep[C::GROUPS];
          for (int64_t g = 0; g < C::GROUPS; ++g) {
            float best = -INFINITY, second = -INFINITY;
            for (int64_t j = 0; j < per; ++j) {
              float v = score[g * per + j];
              if (v > best) {
                second = best;
                best = v;
              } else if (v > second) {
                second = v;
              }
            }
            gs[g] = per >= 2 && !C::GROUP_MAX ? best + second : best;
            keep[g] = false;
          }
          for (int64_t pick = 0; pick < C::GROUP_TOPK; ++pick) {
            int64_t arg = -1;
            for (int64_t g = 0; g < C::GROUPS; ++g)
              if (!keep[g] && (arg < 0 || gs[g] > gs[arg]))
                arg = g;
            keep[arg] = true;
          }
          for (int64_t n = 0; n < N; ++n)
            if (!keep[n / per])
              score[n] = -INFINITY;
        }
        warpSync();
#pragma unroll
        for (int j = 0; j < NPL; ++j) {
          int64_t n = lane + j * kWarp;
          if (n < N)
            ch[j] = *const_cast<volatile float *>(&score[n]);
        }
      }
      // Top-k: K rounds of a warp argmax over (choice, -index); `taken` marks this lane's picked columns.
      static_assert(NPL <= 64, "at most 64 router columns per lane");
      unsigned long long taken = 0;
      float wsum = 0.0f, mine = 0.0f;
      int myExpert = 0;
      for (int64_t s = 0; s < K; ++s) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
#pragma unroll
        for (int j = 0; j < NPL; ++j) {
          int n = lane + j * kWarp;
          if (n < N && !(taken >> j & 1) && (ch[j] > bv || (ch[j] == bv && n < bi))) {
            bv = ch[j];
            bi = n;
          }
        }
#pragma unroll
        for (int m = kWarp / 2; m > 0; m /= 2) {
          float ov = shflXor(bv, m);
          int oi = shflXor(bi, m);
          if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
          }
        }
        // bi: the winner, the same on every lane. Its owner marks it taken.
        float z = 0.0f; // sparsemixer: a softmax over the free experts within 2 jitter_eps of the best (bv)
        if (C::SPARSEMIXER) {
#pragma unroll
          for (int j = 0; j < NPL; ++j) {
            int n = lane + j * kWarp;
            if (n < N && !(taken >> j & 1) &&
                !((bv - sc[j]) / maxf(__builtin_fabsf(sc[j]), bv) > 2.0f * C::JITTER_EPS))
              z += expf(sc[j] - bv);
          }
          z = warpSum(z);
        }
#pragma unroll
        for (int j = 0; j < NPL; ++j)
          if (lane + j * kWarp == bi)
            taken |= 1ull << j;
        float w = 0.0f;
#pragma unroll
        for (int j = 0; j < NPL; ++j)
          if (lane + j * kWarp == bi)
            w = sc[j];
        w = C::SPARSEMIXER ? 1.0f / z : warpSum(w);
        wsum += w;
        if (lane == s) {
          mine = w;
          myExpert = bi;
        }
      }
      if (lane < K) {
        float w = (C::NORMALIZE ? mine / wsum : mine) * C::SCALE;
        chosen[t * K + lane] = myExpert;
        weight[t * S + lane] = w;
        if (myExpert < E)
          atomicAddI32(&counts[myExpert], 1);
      }
      if (C::HAS_SHARED && lane == 0)
        weight[t * S + K] = sharedGate;
    }

    // The last block to finish groups every block's choices.
    sync();
    if (tid == 0) {
      fenceDevice();
      last = atomicAddI32(ticket, 1) == gridX() - 1;
    }
    sync();
    if (!last)
      return;
    fenceDevice();
    group(a, l, T);
  }

  static GPU_INLINE void group(const moert_gpu_args &a, const moert_gpu_layout &l, int64_t T) {
    constexpr int CHUNK = 1024; // choices staged in shared memory per pass
    GPU_SHARED int32_t offset[E + 1];
    GPU_SHARED int32_t count[E];
    GPU_SHARED int32_t stage[CHUNK];
    const int tid = threadId();
    const moert_gpu_shape sh = shape();
    volatile int32_t *counts = static_cast<int32_t *>(a.state);
    volatile const int32_t *chosen = reinterpret_cast<int32_t *>(scratch(a) + l.chosen);
    int32_t *entries = reinterpret_cast<int32_t *>(scratch(a) + l.entries);
    int32_t *tiles = reinterpret_cast<int32_t *>(scratch(a) + l.tiles);
    const int64_t maxTiles = moert_gpu_max_tiles(&sh, T), R = moert_gpu_tile_entries(&sh, T);
    for (int64_t e = tid; e < E; e += BLOCK) // every count at once (the loads are L2 round trips)
      count[e] = counts[e];
    sync();
    if (tid == 0) {
      int32_t at = 0, nt = 0;
      for (int64_t e = 0; e < E; ++e) {
        int32_t c = count[e];
        offset[e] = at;
        for (int32_t b = 0; b < c; b += int32_t(R)) {
          tiles[3 * nt] = int32_t(e);
          tiles[3 * nt + 1] = at + b;
          tiles[3 * nt + 2] = at + (b + R < c ? b + int32_t(R) : c);
          ++nt;
        }
        at += c;
      }
      offset[E] = at;
      if (C::HAS_SHARED)
        for (int64_t b = 0; b < T; b += R) {
          tiles[3 * nt] = int32_t(E);
          tiles[3 * nt + 1] = at + int32_t(b);
          tiles[3 * nt + 2] = at + int32_t(b + R < T ? b + R : T);
          ++nt;
        }
      tiles[3 * maxTiles] = nt;
    }
    sync();
    // Entries of expert e in token order: the choices pass through shared memory a chunk at a time, and the
    // thread of expert e appends its own.
    int32_t pos[(E + BLOCK - 1) / BLOCK];
#pragma unroll
    for (int64_t i = 0; i < (E + BLOCK - 1) / BLOCK; ++i)
      pos[i] = tid + i * BLOCK < E ? offset[tid + i * BLOCK] : 0;
    for (int64_t c0 = 0; c0 < T * K; c0 += CHUNK) {
      const int64_t len = T * K - c0 < CHUNK ? T * K - c0 : CHUNK;
      for (int64_t i = tid; i < len; i += BLOCK)
        stage[i] = chosen[c0 + i];
      sync();
#pragma unroll
      for (int64_t i = 0; i < (E + BLOCK - 1) / BLOCK; ++i) {
        const int64_t e = tid + i * BLOCK;
        if (e < E)
          for (int64_t j = 0; j < len; ++j)
            if (stage[j] == e)
              entries[pos[i]++] = int32_t(((c0 + j) / K) * S + (c0 + j) % K);
      }
      sync();
    }
    if (C::HAS_SHARED)
      for (int64_t t = tid; t < T; t += BLOCK)
        entries[offset[E] + t] = int32_t(t * S + K);
    for (int64_t e = tid; e < E + 1; e += BLOCK) // counts and the ticket back to zero for the next call
      counts[e] = 0;
  }

  // The tile this block works on and the call's scratch layout `l`; false when the call has fewer tiles.
  struct Tile {
    int64_t expert, begin, n;
  };
  static GPU_INLINE bool tile(const moert_gpu_args &a, moert_gpu_layout &l, Tile &tl) {
    const moert_gpu_shape sh = shape();
    l = moert_gpu_scratch_layout(&sh, a.tokens);
    const int64_t maxTiles = moert_gpu_max_tiles(&sh, a.tokens);
    const int32_t *tiles = reinterpret_cast<const int32_t *>(scratch(a) + l.tiles);
    int64_t i = blockX();
    if (i >= uniform(tiles[3 * maxTiles])) // read by every thread: the same values (in scalar registers)
      return false;
    tl.expert = uniform(tiles[3 * i]);
    tl.begin = uniform(tiles[3 * i + 1]);
    tl.n = uniform(tiles[3 * i + 2]) - tl.begin;
    return true;
  }

  // ---- predict (low-rank predictor): block (token, slot)
  // --------------------------------------------------- The chosen expert's dim scores sc = (pred_a . x) .
  // pred_b (pred_a's R rows dotted with the (normalised) input, then sc[f] = sum over r in order of p[r] *
  // pred_b[r][f], as the CPU kernel sums them), and the KEEP best dims (ties: lower index) marked in the
  // entry's keep row. O(F^2) comparisons a block: a dim is kept when fewer than KEEP dims beat it.
  static GPU_INLINE void predict(const moert_gpu_args &a) {
    if constexpr (C::HAS_PRED) {
      GPU_SHARED float red[WARPS];
      GPU_SHARED float p[C::R];
      const int tid = threadId();
      const int64_t T = a.tokens, t = blockX(), slot = blockY();
      const moert_gpu_shape sh = shape();
      const moert_gpu_layout l = moert_gpu_scratch_layout(&sh, T);
      const int64_t e = reinterpret_cast<const int32_t *>(scratch(a) + l.chosen)[t * K + slot];
      const float *x =
          (C::NORM != MOERT_NORM_NONE ? reinterpret_cast<const float *>(scratch(a) + l.x) : a.input) + t * H;
      const float *pa = static_cast<const float *>(a.weights[MOERT_PRED_A]) + e * C::R * H;
      const float *pb = static_cast<const float *>(a.weights[MOERT_PRED_B]) + e * C::R * F;
      for (int64_t r = 0; r < C::R; ++r) {
        float s = 0.0f;
        for (int64_t h = tid; h < H; h += BLOCK)
          s += pa[r * H + h] * x[h];
        s = blockSum<WARPS>(s, red);
        if (tid == 0)
          p[r] = s;
      }
      sync();
      float *sc = reinterpret_cast<float *>(scratch(a) + l.pscore) + (t * K + slot) * F;
      for (int64_t f = tid; f < F; f += BLOCK) {
        float v = 0.0f;
        for (int64_t r = 0; r < C::R; ++r)
          v += p[r] * pb[r * F + f];
        sc[f] = v;
      }
      sync();
      uint8_t *keep = reinterpret_cast<uint8_t *>(scratch(a) + l.keep) + (t * S + slot) * F;
      for (int64_t f = tid; f < F; f += BLOCK) {
        const float v = sc[f];
        int64_t better = 0;
        for (int64_t g = 0; g < F; ++g) {
          const float u = sc[g];
          better += u > v || (u == v && g < f);
        }
        keep[f] = better < C::KEEP;
      }
    }
  }

  // ---- up: gate/up projections and activation for a tile x FCHUNK dims --------------------------------
  static GPU_INLINE void up(const moert_gpu_args &a) {
    moert_gpu_layout l;
    Tile tl;
    if (!tile(a, l, tl))
      return;
    const bool isShared = tl.expert == E;
    const int64_t fdim = isShared ? FS : F, f0 = int64_t(blockY()) * MOERT_GPU_FCHUNK;
    if (f0 >= fdim)
      return;
    const int64_t f1 = f0 + MOERT_GPU_FCHUNK < fdim ? f0 + MOERT_GPU_FCHUNK : fdim;
    const int32_t *entries = reinterpret_cast<const int32_t *>(scratch(a) + l.entries);
    const float *X = C::NORM != MOERT_NORM_NONE ? reinterpret_cast<const float *>(scratch(a) + l.x) : a.input;
    float *act = reinterpret_cast<float *>(scratch(a) + l.act);
    const Rows<C> rows(a, isShared, isShared ? 0 : tl.expert, fdim, G);
    const float *b1 = isShared || !a.weights[MOERT_FC1_BIAS]
                          ? nullptr
                          : static_cast<const float *>(a.weights[MOERT_FC1_BIAS]) + tl.expert * F * G;
    const uint8_t *mask = isShared || !a.weights[MOERT_MASK]
                              ? nullptr
                              : static_cast<const uint8_t *>(a.weights[MOERT_MASK]) + tl.expert * F;
    const float *xs[TILE];
    const uint8_t *kept[TILE]; // a predicted layer's keep row per entry (routed experts only)
#pragma unroll
    for (int m = 0; m < TILE; ++m) {
      xs[m] = X + (m < tl.n ? entries[tl.begin + m] / S : 0) * H;
      kept[m] =
          C::HAS_PRED && !isShared && m < tl.n
              ? reinterpret_cast<const uint8_t *>(scratch(a) + l.keep) + int64_t(entries[tl.begin + m]) * F
              : nullptr;
    }
    const int lane = laneId();
    for (int64_t f = f0 + warpId(); f < f1; f += WARPS) {
      bool any = true; // a predicted dim some entry of the tile keeps
      if (C::HAS_PRED && !isShared) {
        any = false;
#pragma unroll
        for (int m = 0; m < TILE; ++m)
          any = any || (m < tl.n && kept[m][f]);
      }
      if ((mask && !mask[f]) || !any) {
        if (lane < tl.n)
          act[(tl.begin + lane) * FMAX + f] = 0.0f;
        continue;
      }
      const int64_t rg = f * G, ru = rg + (G == 2 ? 1 : 0);
      float g[TILE] = {}, u[TILE] = {};
      if constexpr (WIDE8) { // int8: 16 weights a lane a load (a 4-byte load a lane would leave it latency bound)
#pragma unroll 2
        for (int64_t h = int64_t(lane) * 16; h < H; h += kWarp * 16) {
          float wg[16], wu[16];
          rows.load1x16(rg, h, wg);
          if (G == 2)
            rows.load1x16(ru, h, wu);
#pragma unroll
          for (int m = 0; m < TILE; ++m)
            if (m < tl.n) {
#pragma unroll
              for (int q = 0; q < 4; ++q) {
                F4 xv = load4(xs[m] + h + 4 * q);
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                  g[m] += wg[4 * q + c] * xv.v[c];
                  if (G == 2)
                    u[m] += wu[4 * q + c] * xv.v[c];
                }
              }
            }
        }
      } else if (VEC) {
#pragma unroll 4
        for (int64_t h = int64_t(lane) * 4; h < H; h += kWarp * 4) {
          F4 wg = rows.load1x4(rg, h), wu = G == 2 ? rows.load1x4(ru, h) : wg;
#pragma unroll
          for (int m = 0; m < TILE; ++m)
            if (m < tl.n) {
              F4 xv = load4(xs[m] + h);
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                g[m] += wg.v[c] * xv.v[c];
                if (G == 2)
                  u[m] += wu.v[c] * xv.v[c];
              }
            }
        }
      } else {
        for (int64_t h = lane; h < H; h += kWarp) {
          float wg = rows.at1(rg, h), wu = G == 2 ? rows.at1(ru, h) : 0.0f;
#pragma unroll
          for (int m = 0; m < TILE; ++m)
            if (m < tl.n) {
              g[m] += wg * xs[m][h];
              if (G == 2)
                u[m] += wu * xs[m][h];
            }
        }
      }
#pragma unroll
      for (int m = 0; m < TILE; ++m)
        if (m < tl.n) {
          float gv = warpSum(g[m]) + (b1 ? b1[f * G] : 0.0f);
          float uv = G == 2 ? warpSum(u[m]) + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
          if (lane == m)
            act[(tl.begin + m) * FMAX + f] = kept[m] && !kept[m][f] ? 0.0f : activate(gv, uv);
        }
    }
  }

  // ---- down: fc2 over a split of F for 4 columns per thread, weighted atomic combine ------------------
  static GPU_INLINE void down(const moert_gpu_args &a) {
    GPU_SHARED float hs[TILE][PIECE];
    moert_gpu_layout l;
    Tile tl;
    if (!tile(a, l, tl))
      return;
    const bool isShared = tl.expert == E;
    const int64_t fdim = isShared ? FS : F, splits = a.f_splits, z = blockZ();
    const int64_t fa = fdim * z / splits, fb = fdim * (z + 1) / splits;
    if (fa >= fb)
      return;
    const int tid = threadId();
    const int64_t c0 = int64_t(blockY()) * MOERT_GPU_DOWN_COLS + int64_t(tid) * 4;
    const int32_t *entries = reinterpret_cast<const int32_t *>(scratch(a) + l.entries);
    const float *act = reinterpret_cast<const float *>(scratch(a) + l.act);
    const float *weight = reinterpret_cast<const float *>(scratch(a) + l.weight);
    const Rows<C> rows(a, isShared, isShared ? 0 : tl.expert, fdim, G);
    const uint8_t *mask = isShared || !a.weights[MOERT_MASK]
                              ? nullptr
                              : static_cast<const uint8_t *>(a.weights[MOERT_MASK]) + tl.expert * F;
    float acc[TILE][4] = {};
    for (int64_t p0 = fa; p0 < fb; p0 += PIECE) {
      const int64_t len = fb - p0 < PIECE ? fb - p0 : PIECE;
      sync();
      for (int64_t i = tid; i < TILE * PIECE; i += BLOCK) {
        int64_t m = i / PIECE, j = i % PIECE;
        if (m < tl.n && j < len)
          hs[m][j] = act[(tl.begin + m) * FMAX + p0 + j];
      }
      sync();
      if (c0 >= H)
        continue;
#pragma unroll 4
      for (int64_t j = 0; j < len; ++j) {
        const int64_t f = p0 + j;
        if (mask && !mask[f])
          continue;
        F4 w;
        if (VEC) {
          w = rows.load2x4(f, c0);
        } else {
#pragma unroll
          for (int c = 0; c < 4; ++c)
            w.v[c] = c0 + c < H ? rows.at2(f, c0 + c) : 0.0f;
        }
#pragma unroll
        for (int m = 0; m < TILE; ++m)
          if (m < tl.n) {
            float hv = hs[m][j];
#pragma unroll
            for (int c = 0; c < 4; ++c)
              acc[m][c] += hv * w.v[c];
          }
      }
    }
    if (c0 >= H)
      return;
    const float *b2 = isShared || z != 0 || !a.weights[MOERT_FC2_BIAS]
                          ? nullptr
                          : static_cast<const float *>(a.weights[MOERT_FC2_BIAS]) + tl.expert * H;
#pragma unroll
    for (int m = 0; m < TILE; ++m)
      if (m < tl.n) {
        int64_t ent = entries[tl.begin + m], t = ent / S;
        float w = weight[ent];
#pragma unroll
        for (int c = 0; c < 4; ++c)
          if (c0 + c < H)
            atomicAddF32(a.output + t * H + c0 + c, w * (acc[m][c] + (b2 ? b2[c0 + c] : 0.0f)));
      }
  }

  // ---- up_mma and down_mma, `up` and `down` on matrix cores: the kernels of calls whose tiles have MR
  // entries (prefill-sized calls, moert_gpu_tile_entries) ----------------------------------------------
  // gpu_mma.h's MmaBlockTile: inputs and weights (widened / dequantised to f32) in three bf16 parts each,
  // f32 accuracy (bf16 weights are exact in one part); with C::BF16_ACT (--activations=bf16, bf16 experts)
  // the tokens and fc2's inputs rounded to bf16 instead, one product a step (the CPU kernel's GEMM tiles
  // round the same; decode-sized calls, on `up` / `down`, take f32 inputs as its small tiles do). Every dim
  // of the chunk is computed; masked dims and dims a predictor does not keep for an entry get activation 0,
  // as on the FMA path.
  static constexpr int64_t MR = MOERT_GPU_MMA_TILE;
  static constexpr int WP = C::QBITS == 0 && __is_same(typename C::W, uint16_t) ? 1 : 3;
  static constexpr int XP = C::BF16_ACT ? 1 : 3;
  using UpTile = MmaBlockTile<MR, MOERT_GPU_FCHUNK * G, XP, WP, true>;
  using DownTile = MmaBlockTile<MR, MOERT_GPU_MMA_COLS, XP, WP, false>;
  static_assert(UpTile::TPW % G == 0 && MOERT_GPU_FCHUNK % 16 == 0, "a lane holds a dim's gate and up");

  // up: block (tile, chunk of FCHUNK dims) = the tile's rows x the chunk's G * FCHUNK fc1 rows. Staged
  // column c is dim f0 + 16 (c / 16 / G) + c % 16, the gate (tile c / 16 even) or the up projection (odd)
  // of gated activations: a warp's tiles j, j + 1 (j even) hold the gate and up of the same dims, so each
  // lane has both for the activation.
  static GPU_INLINE void upMma(const moert_gpu_args &a) {
    GPU_SHARED int32_t tok[MR]; // the token of each row (-1 past the tile's entries)
    moert_gpu_layout l;
    Tile tl;
    if (!tile(a, l, tl))
      return;
    const bool isShared = tl.expert == E;
    const int64_t fdim = isShared ? FS : F, f0 = int64_t(blockY()) * MOERT_GPU_FCHUNK;
    if (f0 >= fdim)
      return;
    const int32_t *entries = reinterpret_cast<const int32_t *>(scratch(a) + l.entries);
    for (int m = threadId(); m < MR; m += BLOCK)
      tok[m] = m < tl.n ? entries[tl.begin + m] / int32_t(S) : -1;
    sync();
    const float *X = C::NORM != MOERT_NORM_NONE ? reinterpret_cast<const float *>(scratch(a) + l.x) : a.input;
    const Rows<C> rows(a, isShared, isShared ? 0 : tl.expert, fdim, G);
    auto dim = [&](int c) { return f0 + (c / 16 / G) * 16 + c % 16; };
    UpTile t;
    t.run(
        0, H, [&](int r, int64_t h) { return tok[r] >= 0 ? X[int64_t(tok[r]) * H + h] : 0.0f; },
        [&](int c, int64_t h) {
          const int64_t f = dim(c);
          return f < fdim ? rows.at1(f * G + (c / 16) % G, h) : 0.0f;
        });
    float *act = reinterpret_cast<float *>(scratch(a) + l.act);
    const float *b1 = isShared || !a.weights[MOERT_FC1_BIAS]
                          ? nullptr
                          : static_cast<const float *>(a.weights[MOERT_FC1_BIAS]) + tl.expert * F * G;
    const uint8_t *mask = isShared || !a.weights[MOERT_MASK]
                              ? nullptr
                              : static_cast<const uint8_t *>(a.weights[MOERT_MASK]) + tl.expert * F;
#pragma unroll
    for (int j = 0; j < UpTile::TPW; j += G)
#pragma unroll
      for (int i = 0; i < kMmaAcc; ++i) {
        const int m = t.row(i);
        const int64_t f = dim(t.col(j, i)), ent = tl.begin + m;
        if (m >= tl.n || f >= fdim)
          continue;
        bool off = mask && !mask[f];
        if (C::HAS_PRED && !isShared)
          off = off || !reinterpret_cast<const uint8_t *>(scratch(a) + l.keep)[int64_t(entries[ent]) * F + f];
        const float gv = t.acc[j][i] + (b1 ? b1[f * G] : 0.0f);
        const float uv = G == 2 ? t.acc[j + G - 1][i] + (b1 ? b1[f * G + 1] : 0.0f) : 0.0f;
        act[ent * FMAX + f] = off ? 0.0f : activate(gv, uv);
      }
  }

  // down: block (tile, MMA_COLS output columns, split of F) = the tile's activation rows x fc2's columns
  // over the split's dims (masked dims' rows read as 0); the weighted sums go to the output with f32 atomics.
  static GPU_INLINE void downMma(const moert_gpu_args &a) {
    GPU_SHARED int32_t rowOut[MR];             // each row's output row (its token)
    GPU_SHARED float rowW[MR];                 // and its combine weight
    GPU_SHARED float bias[MOERT_GPU_MMA_COLS]; // fc2's bias of the block's columns (0: none, or not split 0)
    moert_gpu_layout l;
    Tile tl;
    if (!tile(a, l, tl))
      return;
    const bool isShared = tl.expert == E;
    const int64_t fdim = isShared ? FS : F, splits = a.f_splits, z = blockZ();
    const int fa = uniform(int(fdim * z / splits)), fb = uniform(int(fdim * (z + 1) / splits));
    if (fa >= fb)
      return;
    const int32_t *entries = reinterpret_cast<const int32_t *>(scratch(a) + l.entries);
    const float *weight = reinterpret_cast<const float *>(scratch(a) + l.weight);
    for (int m = threadId(); m < tl.n; m += BLOCK) {
      const int32_t ent = entries[tl.begin + m];
      rowOut[m] = ent / int32_t(S), rowW[m] = weight[ent];
    }
    const int n = int(tl.n), h0 = int(blockY()) * MOERT_GPU_MMA_COLS, hc = int(H) - h0;
    const float *b2 = isShared || z != 0 || !a.weights[MOERT_FC2_BIAS]
                          ? nullptr
                          : static_cast<const float *>(a.weights[MOERT_FC2_BIAS]) + tl.expert * H;
    for (int c = threadId(); c < MOERT_GPU_MMA_COLS; c += BLOCK)
      bias[c] = b2 && c < hc ? b2[h0 + c] : 0.0f;
    const float *act = reinterpret_cast<const float *>(scratch(a) + l.act) + tl.begin * FMAX;
    const Rows<C> rows(a, isShared, isShared ? 0 : tl.expert, fdim, G);
    const uint8_t *mask = isShared || !a.weights[MOERT_MASK]
                              ? nullptr
                              : static_cast<const uint8_t *>(a.weights[MOERT_MASK]) + tl.expert * F;
    DownTile t; // 32-bit offsets from the tile's rows (fewer registers than 64-bit addresses a value)
    t.run(
        fa, fb, [&](int r, int64_t f) { return r < n ? act[int(r * FMAX + f)] : 0.0f; },
        [&](int c, int64_t f) { return c < hc && !(mask && !mask[f]) ? rows.at2(int(f), h0 + c) : 0.0f; });
#pragma unroll
    for (int j = 0; j < DownTile::TPW; ++j)
#pragma unroll
      for (int i = 0; i < kMmaAcc; ++i) {
        const int m = t.row(i), c = t.col(j, i);
        if (m < n && c < hc)
          atomicAddF32(a.output + int64_t(rowOut[m]) * H + h0 + c, rowW[m] * (t.acc[j][i] + bias[c]));
      }
  }
};

} // namespace moert_gpu

#endif // MOERT_SPARSE_MOE_GPU_H

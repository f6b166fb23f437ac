//===- gpu_mma.h - one warp's 16 x 16 x 16 bf16 tile product on matrix cores ------===//
//
// The operand loads and the accumulator's coordinates for the instruction kernels/hip/gpu_vendor.h's mma16
// issues (MOERT_GPU_MMA: 1 = NVIDIA mma.sync.m16n8k16, 2 = CDNA v_mfma_f32_16x16x16bf16_1k, 3 = RDNA3
// v_wmma_f32_16x16x16_bf16), so a kernel written against them runs on any of them:
//
//   mmaLoadA(a, p, ld)   A (16 x 16, row m, feature k) = p[m * ld + k]  (bf16 bits in shared memory)
//   mmaLoadB(b, p, ld)   B (16 x 16, feature k, column n) = p[n * ld + k]
//   mma16(d, a, b)       d += A B
//   mmaRow(i), mmaCol(i) where the lane's d[i] sits in D
//
// ld even (pairs of features are read as one 32-bit word). The emulated device (gpu_emulation.h) runs the
// instruction from the ISA's own statement of which lane holds which element, so the loads here are checked
// against it in CI; that statement and these loads are both taken from the vendors' documentation (PTX ISA
// "Matrix Fragments for mma.m16n8k16 with floating point type"; AMD's matrix instruction calculator,
// github.com/ROCm/amd_matrix_instruction_calculator, --matrix-layout for gfx90a / gfx1100), and only a device
// shows they match the silicon.
//
// Also the f32 -> bf16 split the GEMMs use to keep f32 accuracy on bf16 matrix cores: x = p0 + p1 + p2 + e,
// each part bf16, |p1| <= 2^-9 |x|, |p2| <= 2^-18 |x|, |e| <= 2^-27 |x|; and MmaBlockTile, the block tile
// the GEMMs are written with (the linear layers' and the MoE experts' prefill).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPU_MMA_H
#define MOERT_GPU_MMA_H

#include "gpu_common.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

/// x as p[0] + p[1] + p[2], each bf16 (each part the rounded remainder of those before it, exact in f32).
/// (moert_f32_to_bf16 rounds, gpu_common.h's load1 widens.)
GPU_INLINE void bf16Split3(float x, uint16_t &p0, uint16_t &p1, uint16_t &p2) {
  p0 = moert_f32_to_bf16(x);
  const float r = x - load1(&p0);
  p1 = moert_f32_to_bf16(r);
  p2 = moert_f32_to_bf16(r - load1(&p1));
}

#if !defined(MOERT_GPU_MMA)
#error "no matrix-core instruction for this architecture (gpu_vendor.h's MOERT_GPU_MMA)"
#endif

/// Features k and k + 1 of a row (k even, so 4-byte aligned): one 32-bit load, feature k in the low half.
GPU_INLINE uint32_t bf16Pair(const uint16_t *p) {
#if !defined(MOERT_GPU_DEVICE_CODE) // emulated: what a device would fault on (or read wrongly)
  if (reinterpret_cast<uintptr_t>(p) % 4) {
    std::fprintf(stderr, "gpu emulation: a bf16 pair read from an address not 4-byte aligned\n");
    std::abort();
  }
#endif
  uint32_t v;
  __builtin_memcpy(&v, __builtin_assume_aligned(p, 4), sizeof v);
  return v;
}

#if MOERT_GPU_MMA == 1
// mma.m16n8k16: lane = 4 g + t. A's registers: rows g, g + 8 (register 0, 1), features 2t, 2t + 1, then the
// same 8 features on (registers 2, 3). B's, per 8 columns h: column 8h + g, features 2t, 2t + 1 (register 2h)
// and 8 on (2h + 1). D, per 8 columns h: rows g, g + 8, columns 8h + 2t, 8h + 2t + 1.
GPU_INLINE void mmaLoadA(uint32_t (&a)[kMmaA], const uint16_t *p, int ld) {
  const int g = laneId() >> 2, t = laneId() & 3;
  a[0] = bf16Pair(p + g * ld + 2 * t), a[1] = bf16Pair(p + (g + 8) * ld + 2 * t);
  a[2] = bf16Pair(p + g * ld + 2 * t + 8), a[3] = bf16Pair(p + (g + 8) * ld + 2 * t + 8);
}
GPU_INLINE void mmaLoadB(uint32_t (&b)[kMmaB], const uint16_t *p, int ld) {
  const int g = laneId() >> 2, t = laneId() & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h)
    b[2 * h] = bf16Pair(p + (8 * h + g) * ld + 2 * t),
          b[2 * h + 1] = bf16Pair(p + (8 * h + g) * ld + 2 * t + 8);
}
GPU_INLINE int mmaRow(int i) { return (laneId() >> 2) + 8 * ((i & 3) >> 1); }
GPU_INLINE int mmaCol(int i) { return 8 * (i >> 2) + 2 * (laneId() & 3) + (i & 1); }
#elif MOERT_GPU_MMA == 2
// v_mfma_f32_16x16x16bf16_1k (64 lanes): lane = r + 16 q holds A's row r, features 4q .. 4q + 3; B's column
// r, the same features; D's column r, rows 4q .. 4q + 3.
GPU_INLINE void mmaLoadA(uint32_t (&a)[kMmaA], const uint16_t *p, int ld) {
  const int r = laneId() & 15, q = laneId() >> 4;
  a[0] = bf16Pair(p + r * ld + 4 * q), a[1] = bf16Pair(p + r * ld + 4 * q + 2);
}
GPU_INLINE void mmaLoadB(uint32_t (&b)[kMmaB], const uint16_t *p, int ld) { mmaLoadA(b, p, ld); }
GPU_INLINE int mmaRow(int i) { return 4 * (laneId() >> 4) + i; }
GPU_INLINE int mmaCol(int) { return laneId() & 15; }
#elif MOERT_GPU_MMA == 3
// v_wmma_f32_16x16x16_bf16 (32 lanes): lane = r + 16 h holds A's row r, all 16 features (both halves of the
// wave the same); B's column r, the same; D's column r, rows h, h + 2, .., h + 14.
GPU_INLINE void mmaLoadA(uint32_t (&a)[kMmaA], const uint16_t *p, int ld) {
  const int r = laneId() & 15;
#pragma unroll
  for (int i = 0; i < kMmaA; ++i)
    a[i] = bf16Pair(p + r * ld + 2 * i);
}
GPU_INLINE void mmaLoadB(uint32_t (&b)[kMmaB], const uint16_t *p, int ld) { mmaLoadA(b, p, ld); }
GPU_INLINE int mmaRow(int i) { return 2 * i + (laneId() >> 4); }
GPU_INLINE int mmaCol(int) { return laneId() & 15; }
#else
#error "unknown MOERT_GPU_MMA layout"
#endif

/// One block's BM x BN tile of a product X W on matrix cores, f32 in, f32 accumulated: each warp owns TPW
/// 16 x 16 tiles in one row of tiles (they share the inputs' fragment). `run` stages BK features a step in
/// shared memory, X's rows and W's columns each split into XP / WP bf16 parts (bf16Split3; one part: rounded
/// to bf16, exact for bf16 weights), and accumulates the products of parts i, j with i + j <= 2, the inputs'
/// smaller parts first: with three parts each, what is left out is about 2^-25 of a product (f32 rounds to
/// 2^-24), so the sums are as close to f32 FMA sums as those are in another order. The caller's
/// x(r, k) / w(c, k) give X's row r and W's column c at feature k (0 past their rows and columns; the tile
/// asks only k in [k0, k1)). W_ALONG_K: a column's features are consecutive in memory (weights stored as
/// rows of features), so the staging threads walk k fastest; else c fastest (panels, K-major rows): either
/// way consecutive threads read consecutive addresses.
template <int BM, int BN, int XP, int WP, bool W_ALONG_K> struct MmaBlockTile {
  // MT x MT warp tiles, BK features a step, LDS 16-bit features a staged row (+2: rows 9 banks apart)
  static constexpr int MT = 16, BK = 16, LDS = BK + 2;
  static constexpr int BLOCK = MOERT_GPU_BLOCK, WARPS = BLOCK / kWarp;
  static constexpr int TILES = (BM / MT) * (BN / MT), TPW = TILES / WARPS;
  static_assert(LDS % 2 == 0, "rows of whole 32-bit words");
  static_assert(TILES % WARPS == 0 && (BN / MT) % TPW == 0, "a warp's tiles in one row of tiles");
  static_assert((BM * BK) % BLOCK == 0 && (BN * BK) % BLOCK == 0, "whole staging rounds");
  static_assert((XP == 1 || XP == 3) && (WP == 1 || WP == 3), "one bf16 part (rounded or exact) or three");

  float acc[TPW][kMmaAcc];
  int tm, tn0; // the warp's row of tiles and its first tile column

  GPU_INLINE MmaBlockTile() : tm(warpId() * TPW / (BN / MT)), tn0(warpId() * TPW % (BN / MT)) {
#pragma unroll
    for (int j = 0; j < TPW; ++j)
#pragma unroll
      for (int i = 0; i < kMmaAcc; ++i)
        acc[j][i] = 0.0f;
  }
  /// Where the lane's acc[j][i] sits in the block's tile.
  GPU_INLINE int row(int i) const { return tm * MT + mmaRow(i); }
  GPU_INLINE int col(int j, int i) const { return (tn0 + j) * MT + mmaCol(i); }

  template <class X, class Wt> GPU_INLINE void run(int64_t k0, int64_t k1, X x, Wt w) {
    // 4-byte aligned at least: the loads read feature pairs as 32-bit words (a uint16_t array alone gets 2)
    alignas(16) GPU_SHARED uint16_t xs[XP][BM][LDS];
    alignas(16) GPU_SHARED uint16_t ws[WP][BN][LDS];
    const int tid = threadId();
    // The step's values, fetched from memory a step ahead (in flight while the matrix cores work), staged
    // after the step before has been read.
    float xv[XN], wv[WN];
    fetch(k0, k1, x, w, xv, wv);
#pragma unroll 1 // not unrolled: unrolled steps' operands would all be live at once (past 128 VGPRs on RDNA3)
    for (int64_t s = k0; s < k1; s += BK) {
#pragma unroll
      for (int i = 0; i < XN; ++i)
        stage<XP>(xv[i], xs, xRow(tid, i), xCol(tid, i));
#pragma unroll
      for (int i = 0; i < WN; ++i)
        stage<WP>(wv[i], ws, wRow(tid, i), wCol(tid, i));
      sync();
      if (s + BK < k1)
        fetch(s + BK, k1, x, w, xv, wv);
      uint32_t xa[XP][kMmaA];
#pragma unroll
      for (int p = 0; p < XP; ++p)
        mmaLoadA(xa[p], &xs[p][tm * MT][0], LDS);
#pragma unroll
      for (int j = 0; j < TPW; ++j) {
#pragma unroll
        for (int q = 0; q < WP; ++q) {
          uint32_t wb[kMmaB];
          mmaLoadB(wb, &ws[q][(tn0 + j) * MT][0], LDS);
#pragma unroll
          for (int p = (2 - q < XP - 1 ? 2 - q : XP - 1); p >= 0; --p)
            mma16(acc[j], xa[p], wb);
          fragmentFence();
        }
      }
      sync();
    }
  }

private:
  // RDNA3's operands are 8 registers a lane: left alone, the scheduler loads every B fragment of a step
  // before the first product (132 VGPRs in the MoE `down_mma`, past the budget); one fragment at a time.
  static GPU_INLINE void fragmentFence() {
#if MOERT_GPU_MMA == 3 && defined(__AMDGCN__)
    __builtin_amdgcn_sched_barrier(0);
#endif
  }
  static constexpr int XN = BM * BK / BLOCK, WN = BN * BK / BLOCK; // values a thread stages a step
  // Thread tid's i-th staged value: X's (row, feature), W's (column, feature), consecutive threads at
  // consecutive addresses (features of a row; W's along k or along c, W_ALONG_K).
  static GPU_INLINE int xRow(int tid, int i) { return (tid + i * BLOCK) / BK; }
  static GPU_INLINE int xCol(int tid, int i) { return (tid + i * BLOCK) % BK; }
  static GPU_INLINE int wRow(int tid, int i) {
    return W_ALONG_K ? (tid + i * BLOCK) / BK : (tid + i * BLOCK) % BN;
  }
  static GPU_INLINE int wCol(int tid, int i) {
    return W_ALONG_K ? (tid + i * BLOCK) % BK : (tid + i * BLOCK) / BN;
  }
  // Loads first, all of them (they are in flight together), features past k1 as 0.
  template <class X, class Wt>
  static GPU_INLINE void fetch(int64_t s, int64_t k1, X &x, Wt &w, float (&xv)[XN], float (&wv)[WN]) {
    const int tid = threadId();
#pragma unroll
    for (int i = 0; i < XN; ++i)
      xv[i] = s + xCol(tid, i) < k1 ? x(xRow(tid, i), s + xCol(tid, i)) : 0.0f;
#pragma unroll
    for (int i = 0; i < WN; ++i)
      wv[i] = s + wCol(tid, i) < k1 ? w(wRow(tid, i), s + wCol(tid, i)) : 0.0f;
  }
  template <int P, int R> static GPU_INLINE void stage(float v, uint16_t (&to)[P][R][LDS], int r, int kk) {
    if constexpr (P == 1)
      to[0][r][kk] = moert_f32_to_bf16(v);
    else
      bf16Split3(v, to[0][r][kk], to[1][r][kk], to[2][r][kk]);
  }
};

} // namespace moert_gpu

#endif // MOERT_GPU_MMA_H

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
// each part bf16, |p1| <= 2^-9 |x|, |p2| <= 2^-18 |x|, |e| <= 2^-27 |x|.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPU_MMA_H
#define MOERT_GPU_MMA_H

#include "gpu_common.h"

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

} // namespace moert_gpu

#endif // MOERT_GPU_MMA_H

//===- gpu_common.h - helpers the GPU kernel templates share ---------------------===//
//
// Weight loads widened to f32 (f32, bf16, fp16) and a block-wide sum, for kernels/hip/sparse_moe_gpu.h and
// kernels/hip/linear_gpu.h, written against kernels/hip/gpu_vendor.h's primitives.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPU_COMMON_H
#define MOERT_GPU_COMMON_H

#include "gpu_vendor.h"
#pragma clang force_cuda_host_device begin
#include "moert_kernel_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

// Four consecutive weights widened to f32 (p 4-element aligned when H % 4 == 0).
struct F4 {
  float v[4];
};
GPU_INLINE F4 load4(const float *p) {
  struct alignas(16) Q {
    float v[4];
  };
  Q q = *reinterpret_cast<const Q *>(p);
  return F4{{q.v[0], q.v[1], q.v[2], q.v[3]}};
}
GPU_INLINE F4 load4(const uint16_t *p) { // bf16
  struct alignas(8) Q {
    uint32_t lo, hi;
  };
  Q q = *reinterpret_cast<const Q *>(p);
  return F4{{__builtin_bit_cast(float, q.lo << 16), __builtin_bit_cast(float, q.lo & 0xffff0000u),
             __builtin_bit_cast(float, q.hi << 16), __builtin_bit_cast(float, q.hi & 0xffff0000u)}};
}
GPU_INLINE F4 load4(const _Float16 *p) {
  struct alignas(8) Q {
    _Float16 v[4];
  };
  Q q = *reinterpret_cast<const Q *>(p);
  return F4{{float(q.v[0]), float(q.v[1]), float(q.v[2]), float(q.v[3])}};
}
GPU_INLINE float load1(const float *p) { return *p; }
GPU_INLINE float load1(const uint16_t *p) { return __builtin_bit_cast(float, uint32_t(*p) << 16); }
GPU_INLINE float load1(const _Float16 *p) { return float(*p); }

// Activations written with exp2 (no device library).
GPU_INLINE float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }
// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): no device library here.
GPU_INLINE float erff(float x) {
  float s = x < 0.0f ? -1.0f : 1.0f, a = x * s;
  float t = 1.0f / (1.0f + 0.3275911f * a);
  float y =
      ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return s * (1.0f - y * expf(-a * a));
}
GPU_INLINE float tanhf(float x) {
  float e = expf(-2.0f * (x < 0.0f ? -x : x));
  float r = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -r : r;
}
GPU_INLINE float geluErf(float a) { return 0.5f * a * (1.0f + erff(a * 0.70710678118654752f)); }
GPU_INLINE float geluTanh(float a) {
  return 0.5f * a * (1.0f + tanhf(0.79788456080286536f * (a + 0.044715f * a * a * a)));
}

/// A quantised block's scale as stored: f16 where moec quantised the weights (C::SCALE16), else f32.
template <bool F16> struct moert_gpu_scale { using type = float; };
template <> struct moert_gpu_scale<true> { using type = _Float16; };

/// Sum over a block of WARPS warps; every thread gets the result. `red` holds WARPS floats of shared memory.
template <int WARPS> GPU_INLINE float blockSum(float v, float *red) {
  v = warpSum(v);
  sync();
  if (laneId() == 0)
    red[warpId()] = v;
  sync();
  float s = 0.0f;
#pragma unroll
  for (int w = 0; w < WARPS; ++w)
    s += red[w];
  return s;
}

/// RMSNorm / LayerNorm (NORM: a moert_norm) statistics of one row of n values, block-wide (every thread gets
/// them): y = (x - mean) * inv * w (+ b); mean is 0 for RMSNorm.
template <int WARPS, int NORM>
GPU_INLINE void normStats(const float *in, int64_t n, float eps, float *red, float &mean, float &inv) {
  const int tid = threadId(), threads = WARPS * kWarp;
  mean = 0.0f;
  if (NORM == MOERT_NORM_LAYER) {
    float s = 0.0f;
    for (int64_t i = tid; i < n; i += threads)
      s += in[i];
    mean = blockSum<WARPS>(s, red) / float(n);
  }
  float q = 0.0f;
  for (int64_t i = tid; i < n; i += threads)
    q += (in[i] - mean) * (in[i] - mean);
  inv = 1.0f / sqrtf(blockSum<WARPS>(q, red) / float(n) + eps);
}

} // namespace moert_gpu

#endif // MOERT_GPU_COMMON_H

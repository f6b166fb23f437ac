//===- gpu_vendor.h - the few GPU primitives the kernels use, for AMD and NVIDIA --===//
//
// The MoE kernels are written once, in HIP/CUDA C++, against this header instead of <hip/hip_runtime.h> or
// <cuda_runtime.h>: clang-19 compiles them with `-x hip -nogpuinc -nogpulib` for AMDGPU (gfx90a, gfx942,
// gfx1100) and with `-x cuda -nocudainc -nocudalib` for NVPTX (sm_80, sm_90), so building code objects needs
// neither ROCm nor the CUDA toolkit (Debian's ROCm 5.2 device libraries know no gfx942; HIP 5.2's NVIDIA
// headers do not build against CUDA 13). Only clang builtins are used: no device library calls.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_GPU_VENDOR_H
#define MOERT_GPU_VENDOR_H

#define MOERT_GPU_DEVICE_CODE 1
typedef long long int64_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned long size_t;

#define GPU_GLOBAL __attribute__((global))
#define GPU_DEVICE __attribute__((device))
#define GPU_SHARED __attribute__((shared))
#define GPU_INLINE __attribute__((device, always_inline)) inline
#define GPU_LAUNCH_BOUNDS(n) __attribute__((launch_bounds(n)))
// A generated kernel entry point: codegen writes MOERT_GPU_KERNEL(moert_gpu_0_route, moert_gpu_args,
// moert_gpu::Kernels<C0>::route) for each kernel; gpu_emulation.h defines it for the host.
#define MOERT_GPU_KERNEL(name, Args, body)                                                                   \
  extern "C" GPU_GLOBAL GPU_LAUNCH_BOUNDS(MOERT_GPU_BLOCK) void name(Args a) { body(a); }
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif

namespace moert_gpu {

#if defined(__AMDGCN__)
constexpr int kWarp = __AMDGCN_WAVEFRONT_SIZE__; // 64 on CDNA (gfx90a, gfx942), 32 on RDNA3 (gfx1100)
GPU_INLINE int threadId() { return __builtin_amdgcn_workitem_id_x(); }
GPU_INLINE int blockX() { return __builtin_amdgcn_workgroup_id_x(); }
GPU_INLINE int blockY() { return __builtin_amdgcn_workgroup_id_y(); }
GPU_INLINE int blockZ() { return __builtin_amdgcn_workgroup_id_z(); }
GPU_INLINE int gridX() { return __builtin_amdgcn_grid_size_x() / __builtin_amdgcn_workgroup_size_x(); }
GPU_INLINE void sync() {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
GPU_INLINE void fenceDevice() { __builtin_amdgcn_fence(__ATOMIC_SEQ_CST, "agent"); }
GPU_INLINE void warpSync() {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
  __builtin_amdgcn_wave_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
}
GPU_INLINE float shflXor(float v, int mask) {
  int lane = threadId() & (kWarp - 1);
  return __builtin_bit_cast(float, __builtin_amdgcn_ds_bpermute((lane ^ mask) << 2, __builtin_bit_cast(int, v)));
}
GPU_INLINE int shflXor(int v, int mask) {
  int lane = threadId() & (kWarp - 1);
  return __builtin_amdgcn_ds_bpermute((lane ^ mask) << 2, v);
}
GPU_INLINE float exp2f(float x) { return __builtin_amdgcn_exp2f(x); }
GPU_INLINE float log2f(float x) { return __builtin_amdgcn_logf(x); }
GPU_INLINE void atomicAddF32(float *p, float v) {
  __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
GPU_INLINE int atomicAddI32(int *p, int v) {
  return __hip_atomic_fetch_add(p, v, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
GPU_INLINE int uniform(int v) { return __builtin_amdgcn_readfirstlane(v); }
#elif defined(__NVPTX__)
constexpr int kWarp = 32;
GPU_INLINE int threadId() { return __nvvm_read_ptx_sreg_tid_x(); }
GPU_INLINE int blockX() { return __nvvm_read_ptx_sreg_ctaid_x(); }
GPU_INLINE int blockY() { return __nvvm_read_ptx_sreg_ctaid_y(); }
GPU_INLINE int blockZ() { return __nvvm_read_ptx_sreg_ctaid_z(); }
GPU_INLINE int gridX() { return __nvvm_read_ptx_sreg_nctaid_x(); }
GPU_INLINE void sync() { __syncthreads(); }
GPU_INLINE void fenceDevice() { __nvvm_membar_gl(); }
GPU_INLINE void warpSync() { __nvvm_bar_warp_sync(0xffffffffu); }
GPU_INLINE float shflXor(float v, int mask) { return __nvvm_shfl_sync_bfly_f32(0xffffffffu, v, mask, 0x1f); }
GPU_INLINE int shflXor(int v, int mask) { return __nvvm_shfl_sync_bfly_i32(0xffffffffu, v, mask, 0x1f); }
GPU_INLINE float exp2f(float x) { return __nvvm_ex2_approx_f(x); }
GPU_INLINE float log2f(float x) { return __nvvm_lg2_approx_f(x); }
GPU_INLINE void atomicAddF32(float *p, float v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
GPU_INLINE int atomicAddI32(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
GPU_INLINE int uniform(int v) { return v; }
#else
#error "gpu_vendor.h is for device compilation (clang -x hip / -x cuda --cuda-device-only)"
#endif

// Matrix cores, where the architecture has the instruction: mma16(d, a, b) is one warp's
// D (16 x 16, f32) += A (16 x 16, bf16) B (16 x 16, bf16), the operands in registers as the instruction lays
// them out (kernels/hip/gpu_mma.h loads them from shared memory): kMmaA / kMmaB 32-bit registers of bf16
// pairs, kMmaAcc floats of D a lane. MOERT_GPU_MMA says which layout: 1 = NVIDIA mma.sync.m16n8k16 (sm_80 and
// later; two of them, one per 8 columns), 2 = CDNA v_mfma_f32_16x16x16bf16_1k (gfx90a, gfx942), 3 = RDNA3
// v_wmma_f32_16x16x16_bf16 (gfx1100, wave32). Every architecture moec builds for has one; gpu_mma.h refuses
// an architecture without.
#if defined(__NVPTX__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MOERT_GPU_MMA 1
constexpr int kMmaA = 4, kMmaB = 4, kMmaAcc = 8;
GPU_INLINE void mma16(float (&d)[kMmaAcc], const uint32_t (&a)[kMmaA], const uint32_t (&b)[kMmaB]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[4 * h]), "+f"(d[4 * h + 1]), "+f"(d[4 * h + 2]), "+f"(d[4 * h + 3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[2 * h]), "r"(b[2 * h + 1]));
}
#elif defined(__gfx90a__) || defined(__gfx942__)
#define MOERT_GPU_MMA 2
constexpr int kMmaA = 2, kMmaB = 2, kMmaAcc = 4;
typedef short MmaShort4 __attribute__((ext_vector_type(4)));
typedef float MmaFloat4 __attribute__((ext_vector_type(4)));
GPU_INLINE void mma16(float (&d)[kMmaAcc], const uint32_t (&a)[kMmaA], const uint32_t (&b)[kMmaB]) {
  MmaFloat4 c = __builtin_bit_cast(MmaFloat4, d);
  c = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(__builtin_bit_cast(MmaShort4, a),
                                                __builtin_bit_cast(MmaShort4, b), c, 0, 0, 0);
  __builtin_memcpy(d, &c, sizeof d);
}
#elif defined(__gfx1100__)
#define MOERT_GPU_MMA 3
constexpr int kMmaA = 8, kMmaB = 8, kMmaAcc = 8;
typedef short MmaShort16 __attribute__((ext_vector_type(16)));
typedef float MmaFloat8 __attribute__((ext_vector_type(8)));
GPU_INLINE void mma16(float (&d)[kMmaAcc], const uint32_t (&a)[kMmaA], const uint32_t (&b)[kMmaB]) {
  MmaFloat8 c = __builtin_bit_cast(MmaFloat8, d);
  c = __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32(__builtin_bit_cast(MmaShort16, a),
                                                  __builtin_bit_cast(MmaShort16, b), c);
  __builtin_memcpy(d, &c, sizeof d);
}
#endif

GPU_INLINE int laneId() { return threadId() & (kWarp - 1); }
GPU_INLINE int warpId() { return threadId() / kWarp; }

GPU_INLINE float expf(float x) { return exp2f(x * 1.4426950408889634f); }
GPU_INLINE float logf(float x) { return log2f(x) * 0.6931471805599453f; }
GPU_INLINE float sqrtf(float x) { return __builtin_sqrtf(x); }
GPU_INLINE float minf(float a, float b) { return a < b ? a : b; }
GPU_INLINE float maxf(float a, float b) { return a > b ? a : b; }

template <class T> GPU_INLINE T warpSum(T v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m /= 2)
    v += shflXor(v, m);
  return v;
}
template <class T> GPU_INLINE T warpMax(T v) {
#pragma unroll
  for (int m = kWarp / 2; m > 0; m /= 2) {
    T o = shflXor(v, m);
    v = o > v ? o : v;
  }
  return v;
}

} // namespace moert_gpu

#endif // MOERT_GPU_VENDOR_H

//===- ops_gpu.h - graph ops between dispatches, as one strided GPU kernel -----===//
//
// The ops a transformer layer has between its dispatches that only move or combine f32 elements — NumPy-
// broadcast Add / Sub / Mul / Div, Transpose, Concat — are all one index computation: each output coordinate
// reads the inputs at their own strides (0 along a broadcast dim; permuted for a transpose) and writes the
// output at its strides plus an offset (a Concat input's place). libmoert plans the strides per op step and
// launches `moert_gpu_op_strided` (kernels/hip/moert_gpu_abi.h), so such steps run on the device and their
// values stay there (runtime/src/Gpu.cpp's Residency).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_OPS_GPU_H
#define MOERT_OPS_GPU_H

#include "gpu_common.h"
#pragma clang force_cuda_host_device begin
#include "moert_gpu_abi.h"
#pragma clang force_cuda_host_device end

namespace moert_gpu {

struct GraphOps {
  static GPU_INLINE void strided(const moert_gpu_op_args &a) {
    const int64_t step = int64_t(gridX()) * MOERT_GPU_BLOCK;
    for (int64_t i = int64_t(blockX()) * MOERT_GPU_BLOCK + threadId(); i < a.n; i += step) {
      int64_t rest = i, ia = 0, ib = 0, io = a.out_offset;
      for (int d = a.rank - 1; d >= 0; --d) { // the coordinate of element i, innermost dim first
        const int64_t c = rest % a.dims[d];
        rest /= a.dims[d];
        ia += c * a.a_strides[d], ib += c * a.b_strides[d], io += c * a.out_strides[d];
      }
      const float x = a.a[ia];
      float y = x;
      if (a.kind != MOERT_GPU_OP_COPY) {
        const float z = a.b[ib];
        y = a.kind == MOERT_GPU_OP_ADD   ? x + z
            : a.kind == MOERT_GPU_OP_SUB ? x - z
            : a.kind == MOERT_GPU_OP_MUL ? x * z
                                         : x / z;
      }
      a.out[io] = y;
    }
  }
};

} // namespace moert_gpu

#endif // MOERT_OPS_GPU_H

//===- gpu_linear_emu_test.cpp - the GPU linear kernels, emulated, against a plain reference ---===//
//
// kernels/hip/linear_gpu.h compiled for the host against kernels/hip/gpu_emulation.h (each block's threads
// as fibers, warp shuffles through per-warp barriers) and launched as libmoert launches it on a device
// (moert_gpu_lin_plan: norm, then gemv + reduce or gemm), on the weights codegen/WeightPacking packs - every
// storage (f32, bf16, fp16, int8, int4, int8/int4 with zero points), odd shapes (N of 1, 3, 17; K not a
// multiple of the block), a fused RMS / layer norm, three outputs, a residual, rows on both paths (1..8: the
// GEMV, with K split across blocks where the plan splits it; 9, 70: the GEMM, on the emulated matrix cores)
// - against the same double-precision reference as the CPU kernel's test
// (tests/kernels/linear_cases.h), with its tolerance. Built three times: 32-lane warps with the matrix cores
// in mma.sync's layout (NVIDIA) and in WMMA's (RDNA3), 64-lane wavefronts with MFMA's (CDNA). What it cannot
// show (the device's memory model, speed, register budgets, that the vendors' documented layouts are the
// silicon's) is for gpu-e2e on a device and gpu-code-objects.
//
//===----------------------------------------------------------------------===//
#include "kernels/hip/gpu_emulation.h" // first: it stands in for kernels/hip/gpu_vendor.h

#include "kernels/hip/linear_gpu.h"
#include "tests/kernels/linear_cases.h"

#include <cstdio>

using namespace linear_cases;

namespace {

int failures = 0, cases = 0;

/// One call as libmoert makes it on a device: the plan's launches on host buffers standing for device ones.
template <class C>
void launch(const Case &c, int64_t m, const float *x, const float *res, std::vector<std::vector<float>> &outs,
            int64_t &splits) {
  using G = moert_gpu::LinearKernels<C>;
  const moert_gpu_linear_launches plan =
      moert_gpu_lin_plan(C::K, C::N, C::QBITS, C::NORM != MOERT_NORM_NONE, m);
  std::vector<char> scratch(plan.scratch + 256);
  moert_gpu_linear_args a{};
  a.rows = m, a.input = x, a.residual = res, a.scratch = scratch.data(), a.k_splits = plan.k_splits;
  for (int j = 0; j < C::NOUT; ++j)
    a.outputs[j] = outs[j].data();
  for (int s = 0; s < MOERT_LIN_SLOTS; ++s)
    a.weights[s] = c.packed.slots[s].empty() ? nullptr : c.packed.slots[s].data();
  if (plan.norm_blocks)
    moert_gpu::emulate(&G::norm, a, plan.norm_blocks);
  if (plan.gemm) {
    moert_gpu::emulate(&G::gemm, a, plan.gemm_grid[0], plan.gemm_grid[1]);
  } else {
    moert_gpu::emulate(&G::gemv, a, plan.gemv_grid[0], plan.gemv_grid[1]);
    if (plan.reduce_blocks)
      moert_gpu::emulate(&G::reduce, a, plan.reduce_blocks);
  }
  splits = plan.k_splits;
}

template <class C> void check(Kind kind, std::mt19937 &rng) {
  Case c = makeCase(kind, C::K, C::N, C::QBLOCK, C::HAS_BIAS, rng);
  std::vector<float> nw, nb;
  addNorm<C>(c, rng, nw, nb);
  std::normal_distribution<float> g(0.0f, 1.0f);
  int64_t mostSplits = 1;
  bool ok = true;
  for (int64_t m : {1, 3, 8, 9, 70}) {
    for (bool residual : {false, true}) {
      if (residual && C::NOUT > 1)
        continue; // a residual needs a single output
      std::vector<float> x(m * C::K), res(residual ? m * C::N : 0);
      for (float &v : x)
        v = 3.0f * g(rng) + 0.5f;
      for (float &v : res)
        v = g(rng);
      std::vector<std::vector<float>> outs(C::NOUT);
      for (int j = 0; j < C::NOUT; ++j)
        outs[j].assign(m * (C::SPLIT[j + 1] - C::SPLIT[j]), -7.0f);
      int64_t splits = 1;
      launch<C>(c, m, x.data(), residual ? res.data() : nullptr, outs, splits);
      mostSplits = std::max(mostSplits, splits);
      const std::vector<float> y = joinOutputs<C>(outs, m);
      const double worst = worstError<C>(c, y, x, m, res, nw, nb, MOERT_GPU_LIN_GEMV_ROWS);
      ++cases;
      if (!(worst <= 1.0)) {
        ++failures, ok = false;
        std::printf("FAIL %-8s K=%-4lld N=%-3lld M=%-3lld%s: error %.2fx the tolerance\n", kindName(kind),
                    (long long)C::K, (long long)C::N, (long long)m, residual ? " +residual" : "", worst);
      }
    }
  }
  std::printf(
      "%s %-8s K=%-4lld N=%-3lld block=%-3lld%s%s%s%s (M = 1, 3, 8 gemv, K in up to %lld splits; 9, 70 "
      "gemm on matrix cores)\n",
      ok ? "ok  " : "FAIL", kindName(kind), (long long)C::K, (long long)C::N, (long long)C::QBLOCK,
      C::HAS_BIAS ? " bias" : "", C::NOUT > 1 ? " 3 outputs" : "", C::BF16_ACT ? " bf16-activations" : "",
      C::NORM == MOERT_NORM_RMS     ? " rms-norm"
      : C::NORM == MOERT_NORM_LAYER ? " layer-norm"
                                    : "",
      (long long)mostSplits);
}

template <Kind KIND> void shapes(std::mt19937 &rng) {
  check<Cfg<KIND, 64, 1, false, 32>>(KIND, rng);
  check<Cfg<KIND, 70, 3, true, 32>>(KIND, rng);    // K past a block, 3 columns
  check<Cfg<KIND, 300, 17, true, 32>>(KIND, rng);  // K not a multiple of 32
  check<Cfg<KIND, 520, 33, true, 128>>(KIND, rng); // MatMulNBits-sized blocks, K not a multiple of them
  // Three outputs straddling panels (a panel's columns in two outputs)
  check<Split3<Cfg<KIND, 96, 96, true, 16>, 40, 88>>(KIND, rng);
}

} // namespace

int main() {
  std::mt19937 rng(20261204);
  std::printf("GPU linear kernels, emulated with %d-lane warps; matrix cores in the layout of %s\n",
              moert_gpu::kWarp,
              MOERT_GPU_MMA == 1   ? "NVIDIA mma.sync.m16n8k16"
              : MOERT_GPU_MMA == 2 ? "CDNA v_mfma_f32_16x16x16bf16_1k"
                                   : "RDNA3 v_wmma_f32_16x16x16_bf16");
  shapes<F32>(rng);
  shapes<BF16>(rng);
  shapes<F16>(rng);
  shapes<I8>(rng);
  shapes<I4>(rng);
  shapes<I8Z>(rng);
  shapes<I4Z>(rng);
  // Many K splits (a long K: the GEMV's reduce) and a norm fused in front
  check<Cfg<F32, 1500, 40, true, 32>>(F32, rng);
  check<Cfg<I4, 1000, 48, true, 32>>(I4, rng);
  check<Cfg<F32, 70, 3, true, 32, false, MOERT_NORM_RMS>>(F32, rng);
  check<Cfg<BF16, 300, 17, true, 32, false, MOERT_NORM_LAYER, true>>(BF16, rng);
  check<Cfg<I8, 520, 33, false, 32, false, MOERT_NORM_LAYER, true>>(I8, rng);
  check<Split3<Cfg<F32, 300, 40, true, 32, false, MOERT_NORM_RMS>, 17, 33>>(F32, rng);
  // --activations=bf16 (bf16 weights): the GEMM's rows rounded to bf16 (one matrix-core product), the GEMV's
  // not
  check<Cfg<BF16, 300, 17, true, 32, true>>(BF16, rng);
  check<Cfg<BF16, 520, 33, false, 128, true>>(BF16, rng); // (no norm: its rows, computed apart, round apart)
  check<Split3<Cfg<BF16, 96, 96, true, 16, true>, 40, 88>>(BF16, rng);
  std::printf("%d of %d cases within tolerance\n", cases - failures, cases);
  return failures ? 1 : 0;
}

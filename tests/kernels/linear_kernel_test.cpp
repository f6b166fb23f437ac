//===- linear_kernel_test.cpp - the linear kernel against a plain reference -----===//
//
// The ggml way of testing kernels: every variant of kernels/cpu/linear.h - weight storage (f32, bf16, fp16,
// int8, int4, and int8/int4 with zero points as MatMulNBits stores them; int8/int4 with and without int8
// activations; bf16 with and without bf16 activations) x decode / prefill paths (M from 1 to past one row
// block) x odd shapes (N of 1, 3, 17; K not a multiple of the quantisation block nor of the K block) - packed
// by codegen/WeightPacking and run, against a double-precision matmul over the weights the packing meant
// (rounded or dequantised independently of the kernel). Built twice: 8-lane and 16-lane vectors.
//
//   linear_kernel_test            test mode: exit 0 when every case is within tolerance
//   linear_kernel_test --perf     perf mode: GFLOP/s and weight GB/s per storage at K = N = 2048 (all
//   threads; bf16+a16 also as a merged Q/K/V layer, K 2048, N 5120 in three outputs)
//
// Tolerance: |kernel - reference| <= 1e-5 * sum_k |x[m][k] * w[k][n]| + 1e-6 per element (f32 accumulation
// against double; the bound scales with the terms summed, not with K alone).
//
//===----------------------------------------------------------------------===//
#include "kernels/cpu/linear.h"
#include "tests/kernels/kernel_exec.h"
#include "tests/kernels/linear_cases.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace moec::codegen;
using namespace linear_cases;
using namespace kernel_exec;

namespace {

int failures = 0, cases = 0;

template <class C> void check(Kind kind, std::mt19937 &rng) {
  using L = moert_cpu::Linear<C>;
  Case c = makeCase(kind, C::K, C::N, C::QBLOCK, C::HAS_BIAS, rng);
  std::vector<float> nw, nb; // the norm's weight and bias, when the layer has one
  addNorm<C>(c, rng, nw, nb);
  for (int s = 0; s < MOERT_LIN_SLOTS; ++s)
    if (c.packed.slots[s].size() != L::weightBytes(s)) {
      std::printf("FAIL %s K=%lld N=%lld: slot %d packed %zu bytes, kernel expects %llu\n", kindName(kind),
                  (long long)C::K, (long long)C::N, s, c.packed.slots[s].size(),
                  (unsigned long long)L::weightBytes(s));
      ++failures;
      return;
    }
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t m : {1, 2, 3, 5, 7, 13, 40, 150}) {
    for (bool residual : {false, true}) {
      if (residual && C::NOUT > 1)
        continue; // a residual needs a single output
      std::vector<float> x(m * C::K), res(residual ? m * C::N : 0);
      std::vector<std::vector<float>> outs(C::NOUT); // each output's [m][N_j]
      for (float &v : x)
        v = 3.0f * g(rng) + 0.5f; // a norm has something to do
      for (float &v : res)
        v = g(rng);
      moert_exec ex{&reverseFor, nullptr, 4};
      std::vector<char> scratch(L::scratch(m, ex.threads));
      moert_linear_args a{};
      a.rows = m, a.input = x.data(), a.residual = residual ? res.data() : nullptr, a.exec = &ex;
      for (int j = 0; j < C::NOUT; ++j) {
        outs[j].assign(m * (C::SPLIT[j + 1] - C::SPLIT[j]), -7.0f);
        a.outputs[j] = outs[j].data();
      }
      a.scratch = scratch.data();
      for (int s = 0; s < MOERT_LIN_SLOTS; ++s)
        a.weights[s] = c.packed.slots[s].empty() ? nullptr : c.packed.slots[s].data();
      L::run(&a);
      const std::vector<float> y = joinOutputs<C>(outs, m);
      const double worst = worstError<C>(c, y, x, m, res, nw, nb);
      ++cases;
      if (!(worst <= 1.0)) {
        ++failures;
        std::printf("FAIL %-8s K=%-4lld N=%-3lld M=%-4lld%s: error %.2fx the tolerance\n", kindName(kind),
                    (long long)C::K, (long long)C::N, (long long)m, residual ? " +residual" : "", worst);
      }
    }
  }
  std::printf("ok   %-8s K=%-4lld N=%-3lld block=%-3lld%s%s%s%s (M = 1..150%s)\n", kindName(kind),
              (long long)C::K, (long long)C::N, (long long)C::QBLOCK, C::HAS_BIAS ? " bias" : "",
              C::INT8_ACT   ? " int8-activations"
              : C::BF16_ACT ? " bf16-activations"
                            : "",
              C::NOUT > 1 ? " 3 outputs" : "",
              C::NORM == MOERT_NORM_RMS     ? " rms-norm"
              : C::NORM == MOERT_NORM_LAYER ? " layer-norm"
                                            : "",
              C::NOUT > 1 ? "" : ", with and without residual");
}

template <Kind KIND, bool ACT = false> void shapes(std::mt19937 &rng) {
  check<Cfg<KIND, 64, 1, false, 32, ACT>>(KIND, rng);
  check<Cfg<KIND, 70, 3, true, 32, ACT>>(KIND, rng);   // K past a block, 3 columns
  check<Cfg<KIND, 300, 17, true, 32, ACT>>(KIND, rng); // K not a multiple of 32
  // K past the prefill K block (512); 25 panels, the last partial: work items of 4-panel register tiles
  // (16-lane vectors) and single panels
  check<Cfg<KIND, 600, 390, true, 32, ACT>>(KIND, rng);
  check<Cfg<KIND, 96, 48, false, 16, ACT>>(KIND, rng);
  check<Cfg<KIND, 520, 33, true, 128, ACT>>(KIND,
                                            rng); // MatMulNBits-sized blocks, K not a multiple of them
  // Three outputs (merged Q/K/V): on panel edges (96 = 64 + 16 + 16), and straddling panels (390 columns)
  check<Split3<Cfg<KIND, 96, 96, true, 16, ACT>, 64, 80>>(KIND, rng);
  check<Split3<Cfg<KIND, 600, 390, false, 32, ACT>, 250, 333>>(KIND, rng);
}

template <class C> void perf(Kind kind, Pool &pool, int threads) {
  using L = moert_cpu::Linear<C>;
  std::mt19937 rng(1);
  Case c = makeCase(kind, C::K, C::N, C::QBLOCK, false, rng);
  for (int64_t m : {1, 8, 128, 512}) {
    std::vector<float> x(m * C::K, 0.5f);
    std::vector<std::vector<float>> ys(C::NOUT);
    moert_exec ex{&Pool::run, &pool, threads};
    std::vector<char> scratch(L::scratch(m, threads));
    moert_linear_args a{};
    a.rows = m, a.input = x.data(), a.exec = &ex, a.scratch = scratch.data();
    for (int j = 0; j < C::NOUT; ++j) {
      ys[j].resize(m * (C::SPLIT[j + 1] - C::SPLIT[j]));
      a.outputs[j] = ys[j].data();
    }
    for (int s = 0; s < MOERT_LIN_SLOTS; ++s)
      a.weights[s] = c.packed.slots[s].empty() ? nullptr : c.packed.slots[s].data();
    double best = 1e30;
    int reps = m >= 128 ? 5 : 50;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      L::run(&a);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const std::string name = std::string(kindName(kind)) + (C::INT8_ACT   ? "+a8"  // int8 activations
                                                            : C::BF16_ACT ? "+a16" // bf16 activations
                                                                          : "");
    std::printf("perf %-8s K=%lld N=%lld%s M=%-4lld %8.3f ms  %7.1f GFLOP/s  %6.1f GB/s of weights\n",
                name.c_str(), (long long)C::K, (long long)C::N, C::NOUT > 1 ? " (3 outputs)" : "",
                (long long)m, best * 1e3, 2.0 * m * C::K * C::N / best / 1e9, c.packed.bytes() / best / 1e9);
  }
}

} // namespace

int main(int argc, char **argv) {
#ifdef MOERT_KERNEL_TEST_NEEDS_VNNI
  if (!__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vnni")) {
    std::printf("skipped: this CPU lacks AVX-512 VNNI (the build this binary tests)\n");
    return 77;
  }
#endif
#ifdef MOERT_KERNEL_TEST_NEEDS_BF16
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::printf("skipped: this CPU lacks AVX512-BF16 (the build this binary tests)\n");
    return 77;
  }
#endif
  if (argc > 1 && std::string(argv[1]) == "--perf") {
    int threads = int(std::thread::hardware_concurrency());
    Pool pool(threads);
    std::printf("perf mode: %d threads, %d-lane vectors\n", threads, moert_cpu::VW);
    perf<Cfg<F32, 2048, 2048, false>>(F32, pool, threads);
    perf<Cfg<BF16, 2048, 2048, false>>(BF16, pool, threads);
    perf<Cfg<BF16, 2048, 2048, false, 32, true>>(BF16, pool, threads);
    // merged Q/K/V (three outputs): the accumulators must stay in registers here too
    perf<Split3<Cfg<BF16, 2048, 5120, false, 32, true>, 4096, 4608>>(BF16, pool, threads);
    perf<Cfg<F16, 2048, 2048, false>>(F16, pool, threads);
    perf<Cfg<I8, 2048, 2048, false>>(I8, pool, threads);
    perf<Cfg<I4, 2048, 2048, false>>(I4, pool, threads);
    perf<Cfg<I8, 2048, 2048, false, 32, true>>(I8, pool, threads);
    perf<Cfg<I4, 2048, 2048, false, 32, true>>(I4, pool, threads);
    return 0;
  }
  std::mt19937 rng(20261201);
  std::printf("linear kernel, %d-lane vectors\n", moert_cpu::VW);
  shapes<F32>(rng);
  shapes<BF16>(rng);
  shapes<F16>(rng);
  shapes<I8>(rng);
  shapes<I4>(rng);
  shapes<I8Z>(rng);
  shapes<I4Z>(rng);
  shapes<BF16, true>(rng); // bf16-activation prefill: bf16 pair products on rounded inputs
  // ... with an odd K: a last pair of one feature, alone and after two whole K blocks
  check<Cfg<BF16, 301, 17, true, 32, true>>(BF16, rng);
  check<Cfg<BF16, 1031, 40, false, 32, true>>(BF16, rng);
  shapes<I8, true>(rng);   // int8-activation decode: integer dot products on rounded inputs
  shapes<I4, true>(rng);
  shapes<I8Z, true>(rng);
  shapes<I4Z, true>(rng);
  // A norm fused in front (the rows normalised into the scratch first; K past the vectors' tails).
  check<Cfg<F32, 70, 3, true, 32, false, MOERT_NORM_RMS>>(F32, rng);
  check<Cfg<F32, 600, 390, false, 32, false, MOERT_NORM_RMS>>(F32, rng);
  check<Cfg<BF16, 300, 17, true, 32, false, MOERT_NORM_LAYER, true>>(BF16, rng);
  check<Cfg<F32, 96, 48, false, 16, false, MOERT_NORM_LAYER, false>>(F32, rng);
  check<Cfg<I4, 300, 17, true, 32, false, MOERT_NORM_RMS>>(I4, rng);
  check<Cfg<I8, 520, 33, false, 32, false, MOERT_NORM_LAYER, true>>(I8, rng);
  check<Split3<Cfg<F32, 300, 40, true, 32, false, MOERT_NORM_RMS>, 17, 33>>(F32, rng);
  // (With int8 activations the normalised rows are rounded to int8: a reference normalising in double rounds
  // some of them the other way, so that combination is checked end to end, check_linear_e2e.py.)
  std::printf("%d of %d cases within tolerance\n", cases - failures, cases);
  return failures ? 1 : 0;
}

//===- linear_kernel_test.cpp - the linear kernel against a plain reference -----===//
//
// The ggml way of testing kernels: every variant of kernels/cpu/linear.h - weight storage (f32, bf16, fp16,
// int8, int4, and int8/int4 with zero points as MatMulNBits stores them; int8/int4 with and without int8
// activations) x decode / prefill paths (M from 1 to past one row block) x odd shapes (N of 1, 3, 17; K not a
// multiple of the quantisation block nor of the K block) - packed by codegen/WeightPacking and run, against a
// double-precision matmul over the weights the packing meant (rounded or dequantised independently of the
// kernel). Built twice: 8-lane and 16-lane vectors.
//
//   linear_kernel_test            test mode: exit 0 when every case is within tolerance
//   linear_kernel_test --perf     perf mode: GFLOP/s and weight GB/s per storage at K = N = 2048 (all
//   threads)
//
// Tolerance: |kernel - reference| <= 1e-5 * sum_k |x[m][k] * w[k][n]| + 1e-6 per element (f32 accumulation
// against double; the bound scales with the terms summed, not with K alone).
//
//===----------------------------------------------------------------------===//
#include "codegen/WeightPacking.h"
#include "kernels/cpu/linear.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace moec::codegen;

namespace {

// ---- execution: items in reverse order on one thread (test mode), or a small pool (perf mode) ---------------
void reverseFor(void *, int64_t n, void *ctx, moert_task_fn fn) {
  for (int64_t i = n - 1; i >= 0; --i)
    fn(ctx, i, 0);
}

struct Pool {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv, done;
  int64_t n = 0, generation = 0, finished = 0;
  std::atomic<int64_t> next{0};
  void *ctx = nullptr;
  moert_task_fn fn = nullptr;
  bool stop = false;
  explicit Pool(int threads) {
    for (int t = 1; t < threads; ++t)
      workers.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto &w : workers)
      w.join();
  }
  void drain(int t) {
    for (int64_t i; (i = next.fetch_add(1)) < n;)
      fn(ctx, i, t);
  }
  void loop(int t) {
    int64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return stop || generation != seen; });
        if (stop)
          return;
        seen = generation;
      }
      drain(t);
      std::lock_guard<std::mutex> l(mu);
      if (++finished == int64_t(workers.size()))
        done.notify_one();
    }
  }
  static void run(void *pool, int64_t n, void *ctx, moert_task_fn fn) {
    Pool &p = *static_cast<Pool *>(pool);
    {
      std::lock_guard<std::mutex> l(p.mu);
      p.n = n, p.ctx = ctx, p.fn = fn, p.finished = 0;
      p.next = 0;
      ++p.generation;
    }
    p.cv.notify_all();
    p.drain(0);
    std::unique_lock<std::mutex> l(p.mu);
    p.done.wait(l, [&] { return p.finished == int64_t(p.workers.size()); });
  }
};

// ---- configurations ------------------------------------------------------------------------------------------
enum Kind { F32, BF16, F16, I8, I4, I8Z, I4Z }; // I8Z / I4Z: unsigned codes with zero points (MatMulNBits)
const char *kindName(Kind k) {
  static const char *names[] = {"fp32", "bf16", "fp16", "int8", "int4", "int8+zp", "int4+zp"};
  return names[k];
}
template <Kind KIND> struct WType { using type = float; };
template <> struct WType<BF16> { using type = uint16_t; };
template <> struct WType<F16> { using type = _Float16; };

template <Kind KIND, int64_t K_, int64_t N_, bool BIAS, int64_t BLOCK = 32, bool INT8ACT = false,
          int NORM_ = MOERT_NORM_NONE, bool NORM_BIAS = false>
struct Cfg {
  using W = typename WType<KIND>::type;
  static constexpr int64_t K = K_, N = N_, QBLOCK = BLOCK;
  static constexpr int QBITS = KIND == I8 || KIND == I8Z ? 8 : KIND == I4 || KIND == I4Z ? 4 : 0;
  static constexpr bool AFFINE = KIND == I8Z || KIND == I4Z, HAS_BIAS = BIAS, INT8_ACT = INT8ACT;
  static constexpr bool SCALE16 = KIND == I8 || KIND == I4; // moec's own quantisation: f16 scales
  static constexpr int NORM = NORM_; // a fused RMS / layer norm in front (moert_norm)
  static constexpr bool HAS_NORM_BIAS = NORM_BIAS;
  static constexpr float EPS = 1e-5f;
  static constexpr int NOUT = 1;
  static constexpr int64_t SPLIT[NOUT + 1] = {0, N_};
};

/// Base's columns split into three outputs at A and B (merged projections: Q, K and V), wherever they fall
/// in the 16-column panels.
template <class Base, int64_t A, int64_t B> struct Split3 : Base {
  static constexpr int NOUT = 3;
  static constexpr int64_t SPLIT[NOUT + 1] = {0, A, B, Base::N};
};

/// Row i of x normalised as C::NORM says (double precision; identity without a norm).
template <class C>
std::vector<float> normalised(const std::vector<float> &x, int64_t m, const std::vector<float> &w,
                              const std::vector<float> &b) {
  if (C::NORM == MOERT_NORM_NONE)
    return x;
  std::vector<float> y(x.size());
  for (int64_t i = 0; i < m; ++i) {
    const float *r = x.data() + i * C::K;
    double mean = 0.0, sq = 0.0;
    for (int64_t k = 0; k < C::K; ++k)
      mean += r[k], sq += double(r[k]) * r[k];
    mean /= C::K;
    double var = 0.0;
    for (int64_t k = 0; k < C::K; ++k)
      var += (r[k] - mean) * (r[k] - mean);
    const double inv = C::NORM == MOERT_NORM_RMS ? 1.0 / std::sqrt(sq / C::K + C::EPS)
                                                 : 1.0 / std::sqrt(var / C::K + C::EPS);
    for (int64_t k = 0; k < C::K; ++k)
      y[i * C::K + k] =
          float((C::NORM == MOERT_NORM_RMS ? r[k] : r[k] - mean) * inv * w[k] + (b.empty() ? 0.0 : b[k]));
  }
  return y;
}

float bf16Round(float x) {
  std::vector<char> b = asBf16(F32Span(&x, 1));
  uint32_t w = uint32_t(uint8_t(b[0])) << 16 | uint32_t(uint8_t(b[1])) << 24;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}

struct Case {
  PackedLinear packed;
  std::vector<double> wq; // [K][N]: the weights the packing means (rounded / dequantised)
  std::vector<float> bias;
};

/// Packs random weights of `kind` and computes, independently of the kernel's layout, what they mean.
Case makeCase(Kind kind, int64_t k, int64_t n, int64_t block, bool bias, std::mt19937 &rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  Case c;
  std::vector<float> w(k * n);
  for (float &x : w)
    x = g(rng);
  if (bias)
    for (int64_t i = 0; i < n; ++i)
      c.bias.push_back(g(rng));
  c.wq.resize(k * n);
  const int64_t kb = (k + block - 1) / block;
  if (kind == I8Z || kind == I4Z) { // random codes, scales and zero points, as an importer hands them over
    const int bits = kind == I8Z ? 8 : 4, levels = 1 << bits;
    std::uniform_int_distribution<int> code(0, levels - 1);
    std::vector<uint8_t> codes(n * k);
    std::vector<float> scales(n * kb), zeros(n * kb);
    for (auto &x : codes)
      x = uint8_t(code(rng));
    for (int64_t i = 0; i < n * kb; ++i) {
      scales[i] = 0.01f + std::fabs(g(rng)) * 0.05f;
      zeros[i] = float(code(rng));
    }
    c.packed = packLinearCodes(codes, scales, zeros, bits, k, n, block, c.bias);
    for (int64_t col = 0; col < n; ++col)
      for (int64_t f = 0; f < k; ++f)
        c.wq[f * n + col] = (double(codes[col * k + f]) - zeros[col * kb + f / block]) * scales[col * kb + f / block];
    return c;
  }
  moert_storage st = kind == F32 ? MOERT_STORAGE_F32 : kind == BF16 ? MOERT_STORAGE_BF16 : kind == F16
                     ? MOERT_STORAGE_F16 : kind == I8 ? MOERT_STORAGE_INT8 : MOERT_STORAGE_INT4;
  c.packed = packLinear(w, false, k, n, st, block, c.bias, /*f16Scales=*/kind == I8 || kind == I4);
  if (kind == I8 || kind == I4) {
    // The reference's weights: symmetric per column and block, the scale rounded to f16
    // (MOERT_QSCALE_BYTES), q = round-half-even(w / scale) clamped.
    const int bits = kind == I8 ? 8 : 4;
    const float qmax = bits == 8 ? 127.0f : 7.0f;
    for (int64_t col = 0; col < n; ++col)
      for (int64_t b = 0; b < kb; ++b) {
        float m = 0.0f;
        for (int64_t f = b * block; f < std::min(k, (b + 1) * block); ++f)
          m = std::max(m, std::fabs(w[f * n + col]));
        const float s = float(_Float16(m / qmax));
        for (int64_t f = b * block; f < std::min(k, (b + 1) * block); ++f) {
          double q = s > 0 ? std::nearbyint(w[f * n + col] / s) : 0.0;
          c.wq[f * n + col] = std::clamp(q, -double(qmax), double(qmax)) * s;
        }
      }
    return c;
  }
  for (int64_t i = 0; i < k * n; ++i)
    c.wq[i] = kind == BF16 ? bf16Round(w[i]) : kind == F16 ? double(float(_Float16(w[i]))) : w[i];
  return c;
}

int failures = 0, cases = 0;

/// The inputs the kernel is meant to multiply: as given, or - int8/int4 weights with int8 activations - each
/// row rounded to int8 per block of 32 features (the weight block when it is not a multiple of 32): q =
/// round-half-even(x * (127 / max|x|)), x = q * max|x| / 127 (moert_kernel_abi.h).
template <class C> std::vector<double> inputsAsMultiplied(const std::vector<float> &x, int64_t m) {
  std::vector<double> r(x.begin(), x.end());
  if (!C::QBITS || !C::INT8_ACT)
    return r;
  const int64_t xb = C::QBLOCK % 32 == 0 ? 32 : C::QBLOCK;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k0 = 0; k0 < C::K; k0 += xb) {
      const int64_t k1 = std::min<int64_t>(C::K, k0 + xb);
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k)
        amax = std::max(amax, std::fabs(x[i * C::K + k]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, scale = amax / 127.0f;
      for (int64_t k = k0; k < k1; ++k)
        r[i * C::K + k] = double(std::nearbyint(x[i * C::K + k] * inv)) * double(scale);
    }
  return r;
}

template <class C> void check(Kind kind, std::mt19937 &rng) {
  using L = moert_cpu::Linear<C>;
  Case c = makeCase(kind, C::K, C::N, C::QBLOCK, C::HAS_BIAS, rng);
  std::vector<float> nw, nb; // the norm's weight and bias, when the layer has one
  if (C::NORM != MOERT_NORM_NONE) {
    std::normal_distribution<float> g(1.0f, 0.3f);
    for (int64_t k = 0; k < C::K; ++k)
      nw.push_back(g(rng));
    for (int64_t k = 0; C::HAS_NORM_BIAS && k < C::K; ++k)
      nb.push_back(g(rng) - 1.0f);
    c.packed.slots[MOERT_LIN_NORM_W] = asBytes(nw);
    if (C::HAS_NORM_BIAS)
      c.packed.slots[MOERT_LIN_NORM_B] = asBytes(nb);
  }
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
      std::vector<float> x(m * C::K), res(residual ? m * C::N : 0), y(m * C::N, -7.0f);
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
      for (int j = 0; j < C::NOUT; ++j) // the outputs side by side: the [m][N] result
        for (int64_t i = 0; i < m; ++i)
          for (int64_t col = C::SPLIT[j]; col < C::SPLIT[j + 1]; ++col)
            y[i * C::N + col] = outs[j][i * (C::SPLIT[j + 1] - C::SPLIT[j]) + col - C::SPLIT[j]];
      // The reference: rows normalised (double), then as the layer multiplies them (int8-rounded or not).
      const std::vector<double> xr = inputsAsMultiplied<C>(normalised<C>(x, m, nw, nb), m);
      double worst = 0.0;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t col = 0; col < C::N; ++col) {
          double ref = c.bias.empty() ? 0.0 : c.bias[col], mag = std::fabs(ref);
          for (int64_t f = 0; f < C::K; ++f) {
            ref += xr[i * C::K + f] * c.wq[f * C::N + col];
            mag += std::fabs(xr[i * C::K + f] * c.wq[f * C::N + col]);
          }
          if (residual)
            ref += res[i * C::N + col], mag += std::fabs(res[i * C::N + col]);
          double err = std::fabs(y[i * C::N + col] - ref), tol = 1e-5 * mag + 1e-6;
          worst = std::max(worst, err / tol);
        }
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
              C::INT8_ACT ? " int8-activations" : "", C::NOUT > 1 ? " 3 outputs" : "",
              C::NORM == MOERT_NORM_RMS     ? " rms-norm"
              : C::NORM == MOERT_NORM_LAYER ? " layer-norm"
                                            : "",
              C::NOUT > 1 ? "" : ", with and without residual");
}

template <Kind KIND, bool INT8ACT = false> void shapes(std::mt19937 &rng) {
  check<Cfg<KIND, 64, 1, false, 32, INT8ACT>>(KIND, rng);
  check<Cfg<KIND, 70, 3, true, 32, INT8ACT>>(KIND, rng); // K past a block, 3 columns
  check<Cfg<KIND, 300, 17, true, 32, INT8ACT>>(KIND, rng); // K not a multiple of 32
  // K past the prefill K block (512); 25 panels, the last partial: work items of 4-panel register tiles
  // (16-lane vectors) and single panels
  check<Cfg<KIND, 600, 390, true, 32, INT8ACT>>(KIND, rng);
  check<Cfg<KIND, 96, 48, false, 16, INT8ACT>>(KIND, rng);
  check<Cfg<KIND, 520, 33, true, 128, INT8ACT>>(KIND,
                                                rng); // MatMulNBits-sized blocks, K not a multiple of them
  // Three outputs (merged Q/K/V): on panel edges (96 = 64 + 16 + 16), and straddling panels (390 columns)
  check<Split3<Cfg<KIND, 96, 96, true, 16, INT8ACT>, 64, 80>>(KIND, rng);
  check<Split3<Cfg<KIND, 600, 390, false, 32, INT8ACT>, 250, 333>>(KIND, rng);
}

template <class C> void perf(Kind kind, Pool &pool, int threads) {
  using L = moert_cpu::Linear<C>;
  std::mt19937 rng(1);
  Case c = makeCase(kind, C::K, C::N, C::QBLOCK, false, rng);
  for (int64_t m : {1, 8, 128, 512}) {
    std::vector<float> x(m * C::K, 0.5f), y(m * C::N);
    moert_exec ex{&Pool::run, &pool, threads};
    std::vector<char> scratch(L::scratch(m, threads));
    moert_linear_args a{};
    a.rows = m, a.input = x.data(), a.outputs[0] = y.data(), a.exec = &ex, a.scratch = scratch.data();
    for (int s = 0; s < MOERT_LIN_SLOTS; ++s)
      a.weights[s] = c.packed.slots[s].empty() ? nullptr : c.packed.slots[s].data();
    double best = 1e30;
    int reps = m >= 128 ? 5 : 50;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      L::run(&a);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    const std::string name =
        std::string(kindName(kind)) + (C::INT8_ACT ? "+a8" : ""); // +a8: int8 activations
    std::printf("perf %-8s K=%lld N=%lld M=%-4lld %8.3f ms  %7.1f GFLOP/s  %6.1f GB/s of weights\n",
                name.c_str(), (long long)C::K, (long long)C::N, (long long)m, best * 1e3,
                2.0 * m * C::K * C::N / best / 1e9, c.packed.bytes() / best / 1e9);
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
  if (argc > 1 && std::string(argv[1]) == "--perf") {
    int threads = int(std::thread::hardware_concurrency());
    Pool pool(threads);
    std::printf("perf mode: %d threads, %d-lane vectors\n", threads, moert_cpu::VW);
    perf<Cfg<F32, 2048, 2048, false>>(F32, pool, threads);
    perf<Cfg<BF16, 2048, 2048, false>>(BF16, pool, threads);
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
  shapes<I8, true>(rng); // int8-activation decode: integer dot products on rounded inputs
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

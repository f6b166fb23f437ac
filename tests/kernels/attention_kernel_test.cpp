//===- attention_kernel_test.cpp - the attention kernel against a plain reference ------===//
//
// The ggml way of testing kernels: kernels/cpu/attention.h for every KV storage a session keeps (f32, bf16,
// f16 elements; int8 rows with a scale per 32 dims, moert_kernel_abi.h) x its paths: fewer than 4 rows per
// item (dot products) and more (keys transposed, with head dims that are and are not a multiple of the vector
// width), value dims with a tail, decode with the keys split into chunks and merged, prefill over several key
// blocks with causal blocks skipped, padding masks, sliding windows, masked keys inside a row's kept range,
// attention sinks, softcapping, int8 rows of one, several
// and a partial block - each run on keys/values stored in the cache's layout (rows `capacity` positions apart
// per head, as a session's buffer), against a double-precision attention over the values the storage holds
// (decoded here from the layout the ABI header describes, independently of the kernel's reader). Built twice:
// 8-lane and 16-lane vectors.
//
//   attention_kernel_test          test mode: exit 0 when every case is within tolerance
//   attention_kernel_test --perf   perf mode: a decode step per storage, 32 query / 4 KV heads of 128, over
//                                  1024 and 4096 cached positions (all threads): ms and GB/s of cache read
//                                  (at 4096 also from memory, copies of the caches in turn);
//                                  GPT-OSS's attention (64 / 8 heads of 64) decoding and on a 512-token
//                                  prompt after 3584 positions, unmasked, causal and in a 128-key window
//
// Tolerance: |kernel - reference| <= 2e-5 * max |v| + 1e-6 per output (an output is a convex combination of
// value rows: f32 scores and sums against double).
//
//===----------------------------------------------------------------------===//
#ifdef MOERT_ATTENTION_TEST_GPU
#include "kernels/hip/gpu_emulation.h" // first: it stands in for kernels/hip/gpu_vendor.h

#include "kernels/hip/attention_gpu.h"
#endif
#include "kernels/cpu/attention.h"
#include "tests/kernels/kernel_exec.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace kernel_exec;

namespace {

enum Storage { F32, BF16, F16, INT8 };
const char *storageName(Storage s) {
  return s == F32 ? "f32" : s == BF16 ? "bf16" : s == F16 ? "f16" : "int8";
}
int32_t abiStorage(Storage s) {
  return s == F32    ? MOERT_STORAGE_F32
         : s == BF16 ? MOERT_STORAGE_BF16
         : s == F16  ? MOERT_STORAGE_F16
                     : MOERT_STORAGE_INT8;
}

template <int64_t HQ_, int64_t HKV_, int64_t DK_, int64_t DV_, bool CAP_ = false, bool BF16_ = false>
struct Cfg {
  static constexpr int64_t HQ = HQ_, HKV = HKV_, DK = DK_, DV = DV_;
  static constexpr float SCALE = 0.3f;
  static constexpr bool NAN_ZERO = CAP_;
  static constexpr float SOFTCAP = CAP_ ? 0.5f : 0.0f;
  static constexpr bool BF16_ACT = BF16_; // bf16 pair products over bf16 caches
};

/// x as bf16 bits, rounded to nearest even (the test's own arithmetic, independent of the kernel's): how the
/// test stores a bf16 cache and rounds queries for the BF16_ACT reference.
uint16_t bf16Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float roundBf16(float x) {
  const uint32_t u = uint32_t(bf16Bits(x)) << 16;
  std::memcpy(&x, &u, 4);
  return x;
}

/// Rows of D values in a storage, `cap` positions per (batch, head): what a session's cache holds.
struct Cache {
  Storage storage;
  int64_t D, rowBytes;
  std::vector<char> bytes;
  Cache(Storage s, int64_t D, int64_t rows) : storage(s), D(D) {
    // The int8 row as moert_kernel_abi.h states it: D codes padded to 4 bytes, then one f32 per 32 dims.
    rowBytes = s == F32 ? 4 * D : s == INT8 ? (D + 3) / 4 * 4 + 4 * ((D + 31) / 32) : 2 * D;
    bytes.assign(size_t(rows * rowBytes), 0);
  }
  int64_t strideElems() const { return storage == F32 ? D : storage == INT8 ? rowBytes : D; }
  void put(int64_t row, const float *x) {
    char *p = bytes.data() + row * rowBytes;
    switch (storage) {
    case F32:
      std::memcpy(p, x, 4 * D);
      break;
    case BF16:
      for (int64_t d = 0; d < D; ++d) {
        const uint16_t h = bf16Bits(x[d]);
        std::memcpy(p + 2 * d, &h, 2);
      }
      break;
    case F16:
      for (int64_t d = 0; d < D; ++d) {
        const _Float16 h = _Float16(x[d]);
        std::memcpy(p + 2 * d, &h, 2);
      }
      break;
    case INT8:
      moert_cpu::encodeKvInt8Row(x, D, p);
      break;
    }
  }
  /// The value the storage holds for dim d of row `row`, decoded from the bytes.
  double get(int64_t row, int64_t d) const {
    const char *p = bytes.data() + row * rowBytes;
    switch (storage) {
    case F32: {
      float f;
      std::memcpy(&f, p + 4 * d, 4);
      return f;
    }
    case BF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * d, 2);
      const uint32_t w = uint32_t(h) << 16;
      float f;
      std::memcpy(&f, &w, 4);
      return f;
    }
    case F16: {
      _Float16 h;
      std::memcpy(&h, p + 2 * d, 2);
      return double(h);
    }
    case INT8: {
      float s;
      std::memcpy(&s, p + (D + 3) / 4 * 4 + 4 * (d / 32), 4);
      return double(int8_t(p[d])) * s;
    }
    }
    return 0;
  }
};

int failures = 0, cases = 0;

#ifdef MOERT_ATTENTION_TEST_GPU
// The GPU kernels (kernels/hip/attention_gpu.h) on the emulated device: attend, then merge when the keys are
// split (moert_gpu_attn_plan, as libmoert launches them).
constexpr bool kGpu = true;
template <class C> moert_gpu_attention_launches gpuPlan(int64_t B, int64_t S, int64_t T) {
  return moert_gpu_attn_plan(B, C::HKV, C::HQ / C::HKV, C::DV, S, T, MOERT_GPU_BLOCK / moert_gpu::kWarp);
}
template <class C> size_t kernelScratch(int64_t B, int64_t S, int64_t T, int) {
  return gpuPlan<C>(B, S, T).scratch;
}
int64_t lastSplits = 1;
template <class C> int runKernel(const moert_attention_args &a) {
  using K = moert_gpu::AttentionKernels<C>;
  const moert_gpu_attention_launches plan = gpuPlan<C>(a.batch, a.q_len, a.kv_len);
  const moert_gpu_attention_args ga{a, plan.splits};
  moert_gpu::emulate(a.kv_storage == MOERT_STORAGE_BF16  ? &K::attend_bf16
                     : a.kv_storage == MOERT_STORAGE_F16 ? &K::attend_f16
                                                         : &K::attend,
                     ga, plan.attend_grid[0], plan.attend_grid[1], plan.attend_grid[2]);
  if (plan.merge_blocks)
    moert_gpu::emulate(&K::merge, ga, plan.merge_blocks);
  lastSplits = plan.splits;
  return 0;
}
#else
constexpr bool kGpu = false;
template <class C> size_t kernelScratch(int64_t B, int64_t S, int64_t T, int threads) {
  return moert_cpu::Attention<C>::scratch(B, S, T, threads);
}
int64_t lastSplits = 0; // (not printed)
template <class C> int runKernel(const moert_attention_args &a) { return moert_cpu::Attention<C>::run(&a); }
#endif

/// The kernel's arguments for q [B][HQ][S][DK], k / v caches of `cap` positions a head, a [B][1][S][T] mask
/// (or none), out [B][HQ][S][DV].
template <class C>
moert_attention_args makeArgs(int64_t B, int64_t S, int64_t T, int64_t cap, const std::vector<float> &q,
                              const Cache &k, const Cache &v, const std::vector<float> &mask,
                              std::vector<float> &out, std::vector<char> &scratch, const moert_exec &ex) {
  constexpr int64_t HQ = C::HQ, HKV = C::HKV, DK = C::DK, DV = C::DV;
  moert_attention_args a{};
  a.batch = B, a.q_len = S, a.kv_len = T;
  a.query = q.data();
  a.key = k.bytes.data(), a.value = v.bytes.data();
  a.kv_storage = abiStorage(k.storage);
  a.q_strides[2] = DK, a.q_strides[1] = S * DK, a.q_strides[0] = HQ * S * DK;
  a.k_strides[2] = k.strideElems(), a.k_strides[1] = cap * a.k_strides[2], a.k_strides[0] = HKV * a.k_strides[1];
  a.v_strides[2] = v.strideElems(), a.v_strides[1] = cap * a.v_strides[2], a.v_strides[0] = HKV * a.v_strides[1];
  a.out_strides[2] = DV, a.out_strides[1] = S * DV, a.out_strides[0] = HQ * S * DV;
  if (!mask.empty()) {
    a.mask = mask.data();
    a.mask_strides[0] = S * T, a.mask_strides[1] = 0, a.mask_strides[2] = T, a.mask_strides[3] = 1;
  }
  a.output = out.data();
  a.scratch = scratch.data();
  a.exec = &ex;
  return a;
}

enum Mask { NONE, CAUSAL, PADDING, WINDOW, HOLES, LEFT_OUT };
const char *maskName(Mask m) {
  return m == NONE      ? "no mask"
         : m == CAUSAL  ? "causal"
         : m == PADDING ? "padding"
         : m == WINDOW  ? "window"
         : m == HOLES   ? "holes"
                        : "causal, sequence 1 all masked";
}

template <class C>
void check(Storage storage, int64_t B, int64_t S, int64_t T, Mask maskKind, bool sinks, std::mt19937 &rng) {
  constexpr int64_t HQ = C::HQ, HKV = C::HKV, DK = C::DK, DV = C::DV, G = HQ / HKV;
  const int64_t cap = T + 5; // rows a head apart, as a session's buffer with room for more
  // bf16 pair products (BF16_ACT over a bf16 cache, the CPU kernel): the reference rounds the queries as the
  // kernel does; the kernel also rounds each probability (2^-9 relative), which moves an output (a convex
  // combination of value rows) by at most 2^-9 max |v| more.
  const bool pairs = C::BF16_ACT && storage == BF16 && !kGpu;
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(B * HQ * S * DK), row(std::max(DK, DV));
  for (float &v : q)
    v = g(rng);
  Cache k(storage, DK, B * HKV * cap), v(storage, DV, B * HKV * cap);
  for (int64_t r = 0; r < B * HKV * cap; ++r) {
    for (int64_t d = 0; d < DK; ++d) // rows of different magnitudes, some with zero blocks
      row[d] = (r % 7 == 3 && d < 32) ? 0.0f : g(rng) * (1.0f + float(r % 5));
    k.put(r, row.data());
    for (int64_t d = 0; d < DV; ++d)
      row[d] = g(rng) * (1.0f + float(r % 3));
    v.put(r, row.data());
  }
  // Masks [B][1][S][T]: causal over the last S positions (finite minimum above the diagonal); padding:
  // sequence b's first 3b + 1 keys -inf; window: causal and the 70 latest keys only (-inf), as GPT-OSS's
  // sliding layers; holes: causal with a third of the keys before the diagonal masked (finite minimum) at
  // random, so a row's kept keys are not one range; left out: causal, and every key of sequence 1 at the
  // finite minimum (a row that keeps no key: its softmax is over every key, nothing may be skipped).
  std::vector<float> mask;
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  if (maskKind != NONE) {
    mask.assign(B * S * T, 0.0f);
    const float inf = std::numeric_limits<float>::infinity(), lowest = std::numeric_limits<float>::lowest();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t t = 0; t < T; ++t) {
          const int64_t pos = T - S + s;
          float &m = mask[(b * S + s) * T + t];
          if (maskKind == CAUSAL)
            m = t > pos ? lowest : 0.0f;
          else if (maskKind == PADDING)
            m = t < 3 * b + 1 ? -inf : 0.0f;
          else if (maskKind == WINDOW)
            m = t > pos || t <= pos - 70 ? -inf : 0.0f;
          else if (maskKind == LEFT_OUT)
            m = t > pos || b == 1 ? lowest : 0.0f;
          else
            m = t > pos || (t < pos && u(rng) < 0.33f) ? lowest : 0.0f;
        }
  }
  std::vector<float> sink(HQ);
  for (float &x : sink)
    x = 2.0f * g(rng);

  for (int threads : {1, 4}) {
    if (kGpu && threads > 1) // (one grid: the emulator runs its blocks in order)
      break;
    moert_exec ex{&reverseFor, nullptr, threads};
    std::vector<float> out(B * HQ * S * DV, -7.0f);
    std::vector<char> scratch(kernelScratch<C>(B, S, T, threads) + 64);
    moert_attention_args a = makeArgs<C>(B, S, T, cap, q, k, v, mask, out, scratch, ex);
    a.sinks = sinks ? sink.data() : nullptr;
    const int rc = runKernel<C>(a);
    double worst = 0.0; // the largest error / tolerance
    int64_t bad = 0;
    std::vector<double> sc(T), acc(DV);
    for (int64_t b = 0; b < B && rc == 0; ++b)
      for (int64_t h = 0; h < HQ; ++h)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t base = (b * HKV + h / G) * cap;
          double mx = sinks ? double(sink[h]) : -INFINITY, vmax = 0.0;
          for (int64_t t = 0; t < T; ++t) {
            double dot = 0.0;
            for (int64_t d = 0; d < DK; ++d) {
              const float qd = q[((b * HQ + h) * S + s) * DK + d];
              dot += double(pairs ? roundBf16(qd) : qd) * k.get(base + t, d);
            }
            dot *= C::SCALE;
            if (C::SOFTCAP > 0.0f)
              dot = C::SOFTCAP * std::tanh(dot / C::SOFTCAP);
            sc[t] = dot + (mask.empty() ? 0.0 : double(mask[(b * S + s) * T + t]));
            mx = std::max(mx, sc[t]);
          }
          double l = sinks ? std::exp(double(sink[h]) - mx) : 0.0;
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t t = 0; t < T; ++t) {
            const double p = std::exp(sc[t] - mx);
            l += p;
            for (int64_t d = 0; d < DV; ++d) {
              acc[d] += p * v.get(base + t, d);
              vmax = std::max(vmax, std::fabs(v.get(base + t, d)));
            }
          }
          const double tol = (pairs ? 2e-5 + std::ldexp(1.0, -9) : 2e-5) * vmax + 1e-6;
          for (int64_t d = 0; d < DV; ++d) {
            const double want = acc[d] / l, got = out[((b * HQ + h) * S + s) * DV + d];
            const double err = std::fabs(got - want);
            if (!(err <= tol))
              ++bad;
            worst = std::max(worst, err / tol);
          }
        }
    ++cases;
    const bool ok = rc == 0 && bad == 0;
    std::printf(
        "%s %-4s HQ=%lld HKV=%lld DK=%lld DV=%lld B=%lld S=%lld T=%lld %s%s%s%s %s%d: %s\n",
        ok ? "ok  " : "FAIL", storageName(storage), (long long)HQ, (long long)HKV, (long long)DK,
        (long long)DV, (long long)B, (long long)S, (long long)T, maskName(maskKind), sinks ? " sinks" : "",
        C::SOFTCAP > 0.0f ? " softcap" : "", C::BF16_ACT ? " bf16-act" : "",
        kGpu ? "key splits=" : "threads=", kGpu ? int(lastSplits) : threads,
        rc ? ("kernel returned " + std::to_string(rc)).c_str()
           : (std::to_string(bad) + " outputs off; worst error " + std::to_string(worst) + " x the bound")
                 .c_str());
    failures += !ok;
  }
}

template <class C> void checkAll(int64_t B, int64_t S, int64_t T, Mask m, bool sinks, std::mt19937 &rng) {
  for (Storage s : {F32, BF16, F16, INT8})
    if (!(kGpu && s == INT8)) // int8 session caches are read by the CPU kernel only
      check<C>(s, B, S, T, m, sinks, rng);
}

/// Every int8 code times its block's scale is within half a scale of the value encoded, and the scale is the
/// block's max |x| / 127 (the rounding the ABI states), for a row with a partial last block.
void checkEncoding(std::mt19937 &rng) {
  constexpr int64_t D = 70;
  std::normal_distribution<float> g(0.0f, 3.0f);
  std::vector<float> x(D);
  for (float &f : x)
    f = g(rng);
  for (int64_t d = 32; d < 64; ++d)
    x[d] = 0.0f; // a block of zeros: codes and scale 0
  Cache c(INT8, D, 1);
  c.put(0, x.data());
  int64_t bad = 0;
  for (int64_t b = 0; b * 32 < D; ++b) {
    float amax = 0.0f, s;
    for (int64_t d = b * 32; d < std::min<int64_t>(D, b * 32 + 32); ++d)
      amax = std::max(amax, std::fabs(x[d]));
    std::memcpy(&s, c.bytes.data() + (D + 3) / 4 * 4 + 4 * b, 4);
    bad += s != amax / 127.0f;
    for (int64_t d = b * 32; d < std::min<int64_t>(D, b * 32 + 32); ++d)
      bad += !(std::fabs(c.get(0, d) - x[d]) <= 0.5 * s * (1 + 1e-6));
  }
  ++cases;
  failures += bad != 0;
  std::printf("%s int8 row encoding (D=%lld, a block of zeros, a partial block): %lld values off\n",
              bad ? "FAIL" : "ok  ", (long long)D, (long long)bad);
}

template <class C>
void perf(Storage storage, int64_t T, Pool &pool, int threads, int64_t S = 1, int64_t window = 0,
          bool cold = false) {
  using A = moert_cpu::Attention<C>;
  constexpr int64_t HQ = C::HQ, HKV = C::HKV, DK = C::DK, DV = C::DV;
  std::mt19937 rng(1);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> q(HQ * S * DK), out(HQ * S * DV), row(DK);
  for (float &x : q)
    x = g(rng);
  // cold: as many copies of the caches as fill 96 MB, used in turn (a whole model's layers and weights
  // evict a layer's cache from the last-level cache between its steps), else one, read from the caches.
  std::vector<Cache> ks, vs;
  do {
    ks.emplace_back(storage, DK, HKV * T), vs.emplace_back(storage, DV, HKV * T);
    for (int64_t r = 0; r < HKV * T; ++r) {
      for (float &x : row)
        x = g(rng);
      ks.back().put(r, row.data());
      vs.back().put(r, row.data());
    }
  } while (cold && double(ks.size()) * double(ks[0].bytes.size() + vs[0].bytes.size()) < 96e6);
  moert_exec ex{&Pool::run, &pool, threads};
  std::vector<char> scratch(A::scratch(1, S, T, threads) + 64);
  // A sliding window (as GPT-OSS's exporter writes it: an additive [1, 1, S, T] mask, causal too).
  std::vector<float> mask(window ? S * T : 0, 0.0f);
  for (int64_t s = 0; s < S && window; ++s)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t pos = T - S + s;
      if (t > pos || t <= pos - window)
        mask[s * T + t] = -INFINITY;
    }
  std::vector<moert_attention_args> args;
  for (size_t c = 0; c < ks.size(); ++c)
    args.push_back(makeArgs<C>(1, S, T, T, q, ks[c], vs[c], mask, out, scratch, ex));
  std::vector<double> ms;
  for (int i = 0; i < 30; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    A::run(&args[i % args.size()]);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double bytes = double(ks[0].bytes.size() + vs[0].bytes.size());
  std::printf(
      "perf %-4s HQ=%lld HKV=%lld D=%lld S=%-3lld T=%-5lld %-10s %8.3f ms best %8.3f median  %6.1f GB/s "
      "of cache  %5.2f MB%s\n",
      storageName(storage), (long long)HQ, (long long)HKV, (long long)DK, (long long)S, (long long)T,
      window > T ? "causal"
      : window   ? ("window " + std::to_string(window)).c_str()
                 : "",
      ms[0], ms[ms.size() / 2], bytes / ms[0] / 1e6, bytes / 1e6,
      cold ? (" (" + std::to_string(ks.size()) + " copies in turn: from memory)").c_str() : "");
}

} // namespace

int main(int argc, char **argv) {
#ifdef MOERT_KERNEL_TEST_NEEDS_BF16
  if (!__builtin_cpu_supports("avx512bf16")) {
    std::printf("skipped: this CPU lacks AVX512-BF16 (the build this binary tests)\n");
    return 77;
  }
#endif
  if (argc > 1 && std::string(argv[1]) == "--perf") {
    if (kGpu) {
      std::printf("--perf: the emulated device's speed means nothing; time the GPU kernels on a GPU\n");
      return 1;
    }
    const int threads = std::max(1u, std::thread::hardware_concurrency());
    Pool pool(threads);
    std::printf("perf mode: %d threads, %d-lane vectors\n", threads, moert_cpu::VW);
    for (int64_t T : {1024, 4096})
      for (Storage s : {F32, BF16, F16, INT8})
        perf<Cfg<32, 4, 128, 128>>(s, T, pool, threads);
    for (Storage s : {F32, BF16, F16, INT8}) // as in a whole model: the caches come from memory
      perf<Cfg<32, 4, 128, 128>>(s, 4096, pool, threads, 1, 0, true);
    // GPT-OSS's attention (64 query / 8 key-value heads of 64): full, and its sliding-window layers (128
    // positions through the mask), a decode step and a 512-token prompt part after 3584 positions.
    for (int64_t S : {1, 512})
      for (int64_t window : {int64_t(0), int64_t(1) << 40, int64_t(128)}) // none, causal, sliding
        perf<Cfg<64, 8, 64, 64>>(F16, 4096, pool, threads, S, window);
    return 0;
  }
  std::mt19937 rng(5);
  checkEncoding(rng);
  using Gqa = Cfg<8, 2, 128, 128>;              // 4 query heads a key/value head: 4 rows a position
  checkAll<Gqa>(1, 1, 300, NONE, false, rng);   // decode: keys split in chunks, merged
  checkAll<Gqa>(2, 1, 130, PADDING, true, rng); // padding blocks, sinks
  checkAll<Gqa>(2, 70, 70, CAUSAL, false, rng); // prefill: causal blocks skipped
  checkAll<Gqa>(1, 3, 200, CAUSAL, true, rng);  // new positions after a past
  checkAll<Gqa>(1, 1, 700, WINDOW, false, rng); // decode: only the window's blocks, keys split in chunks
  checkAll<Gqa>(2, 90, 400, WINDOW, true, rng); // prefill after a past: windows slide across blocks
  checkAll<Gqa>(2, 40, 300, HOLES, false, rng); // masked keys inside a row's range
  checkAll<Gqa>(2, 3, 600, LEFT_OUT, false, rng); // a sequence whose rows keep no key
  using Mha = Cfg<4, 4, 80, 40>;                // one row a position: dot products; int8 blocks 32 + 32 + 16
  checkAll<Mha>(2, 1, 100, PADDING, false, rng);
  checkAll<Mha>(1, 9, 100, CAUSAL, false, rng);
  using Odd = Cfg<6, 2, 20, 6>; // 3 rows a position, head dims not a multiple of the vector width
  checkAll<Odd>(1, 1, 40, NONE, false, rng);
  checkAll<Odd>(2, 5, 40, CAUSAL, true, rng);
  checkAll<Odd>(1, 7, 150, WINDOW, false, rng);
  using Cap = Cfg<16, 2, 64, 64, true>; // softcap, rows of 8 heads
  checkAll<Cap>(1, 1, 1000, NONE, true, rng);
  checkAll<Cap>(1, 20, 90, CAUSAL, false, rng);
  // bf16 activations: pair products over bf16 caches (the other storages as without), each path: transposed
  // key pairs (4 rows and more), dot products (fewer), head dims whose pairs are not whole vectors, an odd
  // key count (the last value pair half empty), softcapping.
  using GqaBf = Cfg<8, 2, 128, 128, false, true>;
  checkAll<GqaBf>(1, 1, 301, NONE, false, rng);
  checkAll<GqaBf>(2, 70, 70, CAUSAL, true, rng);
  checkAll<GqaBf>(2, 40, 301, HOLES, false, rng);
  using MhaBf = Cfg<4, 4, 80, 40, false, true>;
  checkAll<MhaBf>(2, 1, 101, PADDING, false, rng);
  checkAll<MhaBf>(1, 9, 100, CAUSAL, false, rng);
  using OddBf = Cfg<6, 2, 20, 6, false, true>;
  checkAll<OddBf>(2, 5, 41, CAUSAL, true, rng);
  using CapBf = Cfg<16, 2, 64, 64, true, true>;
  checkAll<CapBf>(1, 1, 1000, NONE, true, rng);
  checkAll<CapBf>(1, 20, 90, CAUSAL, false, rng);
  std::printf("%d of %d cases passed\n", cases - failures, cases);
  return failures ? 1 : 0;
}

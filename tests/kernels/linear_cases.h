//===- linear_cases.h - linear-layer kernel test cases and their reference -------===//
//
// What the CPU and GPU linear-kernel tests share: the configurations (weight storage x shape x bias / norm /
// outputs, the config struct `C` codegen would write), random weights packed by codegen/WeightPacking with
// what they mean computed independently of any kernel's layout, and the double-precision reference.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_TESTS_LINEAR_CASES_H
#define MOERT_TESTS_LINEAR_CASES_H

#include "codegen/WeightPacking.h"
#include "kernels/cpu/moert_kernel_abi.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

namespace linear_cases {

using namespace moec::codegen;

// ---- configurations
// ------------------------------------------------------------------------------------------
enum Kind { F32, BF16, F16, I8, I4, I8Z, I4Z }; // I8Z / I4Z: unsigned codes with zero points (MatMulNBits)
const char *kindName(Kind k) {
  static const char *names[] = {"fp32", "bf16", "fp16", "int8", "int4", "int8+zp", "int4+zp"};
  return names[k];
}
template <Kind KIND> struct WType { using type = float; };
template <> struct WType<BF16> { using type = uint16_t; };
template <> struct WType<F16> { using type = _Float16; };

/// ACT: the storage's narrow activations - int8 for int8 / int4 weights (`--activations=int8`), bf16 for
/// bf16 ones (`--activations=bf16`).
template <Kind KIND, int64_t K_, int64_t N_, bool BIAS, int64_t BLOCK = 32, bool ACT = false,
          int NORM_ = MOERT_NORM_NONE, bool NORM_BIAS = false>
struct Cfg {
  using W = typename WType<KIND>::type;
  static constexpr int64_t K = K_, N = N_, QBLOCK = BLOCK;
  static constexpr int QBITS = KIND == I8 || KIND == I8Z ? 8 : KIND == I4 || KIND == I4Z ? 4 : 0;
  static constexpr bool AFFINE = KIND == I8Z || KIND == I4Z, HAS_BIAS = BIAS;
  static constexpr bool INT8_ACT = ACT && QBITS != 0, BF16_ACT = ACT && KIND == BF16;
  static constexpr bool SCALE16 = KIND == I8 || KIND == I4; // moec's own quantisation: f16 scales
  static constexpr int NORM = NORM_;                        // a fused RMS / layer norm in front (moert_norm)
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
        c.wq[f * n + col] =
            (double(codes[col * k + f]) - zeros[col * kb + f / block]) * scales[col * kb + f / block];
    return c;
  }
  moert_storage st = kind == F32    ? MOERT_STORAGE_F32
                     : kind == BF16 ? MOERT_STORAGE_BF16
                     : kind == F16  ? MOERT_STORAGE_F16
                     : kind == I8   ? MOERT_STORAGE_INT8
                                    : MOERT_STORAGE_INT4;
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

/// The inputs the kernel is meant to multiply: as given, or - int8/int4 weights with int8 activations - each
/// row rounded to int8 per block of 32 features (the weight block when it is not a multiple of 32): q =
/// round-half-even(x * (127 / max|x|)), x = q * max|x| / 127 (moert_kernel_abi.h).
/// With bf16 activations, calls of more than `bf16Above` rows (prefill: gemm.h's 6-row tile on the CPU, the
/// GEMV's MOERT_GPU_LIN_GEMV_ROWS on a GPU) round them to bf16.
template <class C>
std::vector<double> inputsAsMultiplied(const std::vector<float> &x, int64_t m, int64_t bf16Above = 6) {
  std::vector<double> r(x.begin(), x.end());
  if (C::BF16_ACT && m > bf16Above) {
    for (size_t i = 0; i < x.size(); ++i) {
      const uint32_t b = uint32_t(moert_f32_to_bf16(x[i])) << 16;
      float f;
      std::memcpy(&f, &b, sizeof f);
      r[i] = f;
    }
    return r;
  }
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

/// The worst error of `y` ([m][N], the outputs side by side) over the reference, as a multiple of the
/// tolerance |y - ref| <= 1e-5 * sum_k |x[m][k] * w[k][n]| + 1e-6 (f32 accumulation against double).
template <class C>
double worstError(const Case &c, const std::vector<float> &y, const std::vector<float> &x, int64_t m,
                  const std::vector<float> &res, const std::vector<float> &nw, const std::vector<float> &nb,
                  int64_t bf16Above = 6) {
  const std::vector<double> xr = inputsAsMultiplied<C>(normalised<C>(x, m, nw, nb), m, bf16Above);
  double worst = 0.0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t col = 0; col < C::N; ++col) {
      double ref = c.bias.empty() ? 0.0 : c.bias[col], mag = std::fabs(ref);
      for (int64_t f = 0; f < C::K; ++f) {
        ref += xr[i * C::K + f] * c.wq[f * C::N + col];
        mag += std::fabs(xr[i * C::K + f] * c.wq[f * C::N + col]);
      }
      if (!res.empty())
        ref += res[i * C::N + col], mag += std::fabs(res[i * C::N + col]);
      double err = std::fabs(y[i * C::N + col] - ref), tol = 1e-5 * mag + 1e-6;
      worst = std::max(worst, err / tol);
    }
  return worst;
}

/// The outputs side by side: the [m][N] result (output j holds columns C::SPLIT[j] .. C::SPLIT[j + 1]).
template <class C> std::vector<float> joinOutputs(const std::vector<std::vector<float>> &outs, int64_t m) {
  std::vector<float> y(m * C::N);
  for (int j = 0; j < C::NOUT; ++j)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t col = C::SPLIT[j]; col < C::SPLIT[j + 1]; ++col)
        y[i * C::N + col] = outs[j][i * (C::SPLIT[j + 1] - C::SPLIT[j]) + col - C::SPLIT[j]];
  return y;
}

/// Random norm weights (and bias) for a layer with a fused norm, put in the case's packed slots.
template <class C> void addNorm(Case &c, std::mt19937 &rng, std::vector<float> &nw, std::vector<float> &nb) {
  if (C::NORM == MOERT_NORM_NONE)
    return;
  std::normal_distribution<float> g(1.0f, 0.3f);
  for (int64_t k = 0; k < C::K; ++k)
    nw.push_back(g(rng));
  for (int64_t k = 0; C::HAS_NORM_BIAS && k < C::K; ++k)
    nb.push_back(g(rng) - 1.0f);
  c.packed.slots[MOERT_LIN_NORM_W] = asBytes(nw);
  if (C::HAS_NORM_BIAS)
    c.packed.slots[MOERT_LIN_NORM_B] = asBytes(nb);
}

} // namespace linear_cases

#endif // MOERT_TESTS_LINEAR_CASES_H

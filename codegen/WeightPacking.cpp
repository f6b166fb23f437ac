//===- WeightPacking.cpp - weights into the CPU kernels' storage and layouts --===//
#include "codegen/WeightPacking.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

namespace moec::codegen {

void parallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn) {
  static const int64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const int64_t parts = std::max<int64_t>(1, std::min(cores, n / std::max<int64_t>(grain, 1)));
  if (parts == 1) {
    if (n > 0)
      fn(0, n);
    return;
  }
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < parts; ++t)
    threads.emplace_back([&, t] { fn(n * t / parts, n * (t + 1) / parts); });
  fn(0, n / parts);
  for (auto &t : threads)
    t.join();
}

QRows quantizeRows(F32Span w, int64_t rows, int64_t k, int bits, int64_t blk, bool f16Scales) {
  QRows out;
  out.rows = rows, out.k = k, out.blk = blk, out.nb = (k + blk - 1) / blk;
  out.q.resize(rows * k);
  out.s.resize(rows * out.nb);
  const float qmax = bits == 8 ? 127.0f : 7.0f, qmin = bits == 8 ? -127.0f : -8.0f;
  parallelFor(rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t b = 0; b < out.nb; ++b) {
        int64_t c0 = b * blk, c1 = std::min(k, c0 + blk);
        float m = 0.0f;
        for (int64_t c = c0; c < c1; ++c)
          m = std::max(m, std::fabs(w[r * k + c]));
        float scale = m / qmax;
        if (f16Scales) // NaN stays NaN (and makes every code 0, as an f32 NaN scale does)
          scale = fromF16(toF16(std::min(scale, 65504.0f)));
        out.s[r * out.nb + b] = scale;
        for (int64_t c = c0; c < c1; ++c) {
          float v = scale > 0.0f ? std::nearbyint(w[r * k + c] / scale) : 0.0f;
          out.q[r * k + c] = static_cast<int8_t>(std::clamp(v, qmin, qmax));
        }
      }
  });
  return out;
}

std::vector<char> asBytes(F32Span v) {
  std::vector<char> b(v.size() * 4);
  if (!v.empty())
    std::memcpy(b.data(), v.begin(), b.size());
  return b;
}

uint16_t toBf16(float f) {
  uint32_t w;
  std::memcpy(&w, &f, 4);
  return std::isnan(f) ? uint16_t((w >> 16) | 0x40) : uint16_t((w + 0x7fff + ((w >> 16) & 1)) >> 16);
}

std::vector<char> asBf16(F32Span v) {
  std::vector<char> b(v.size() * 2);
  parallelFor(int64_t(v.size()), 1 << 20, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      uint16_t h = toBf16(v[i]);
      std::memcpy(&b[2 * i], &h, 2);
    }
  });
  return b;
}

uint16_t toF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) // inf or NaN (quiet)
    return uint16_t(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x47800000u) // >= 65536: past the largest half even before rounding
    return uint16_t(sign | 0x7c00u);
  if (ax < 0x38800000u) { // below 2^-14: a subnormal half, in units of 2^-24 (exact scaling, then RNE)
    float a;
    std::memcpy(&a, &ax, 4);
    return uint16_t(sign | uint32_t(std::nearbyint(a * 16777216.0f)));
  }
  uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7fffffu) >> 13));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
    ++h; // a carry into the exponent is right (up to infinity)
  return uint16_t(sign | h);
}

float fromF16(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const float a = e == 0 ? std::ldexp(float(m), -24)
                  : e == 31
                      ? (m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity())
                      : std::ldexp(float(m | 1024), e - 25);
  return h & 0x8000u ? -a : a;
}

std::vector<char> asF16(F32Span v) {
  std::vector<char> b(v.size() * 2);
  parallelFor(int64_t(v.size()), 1 << 20, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      uint16_t h = toF16(v[i]);
      std::memcpy(&b[2 * i], &h, 2);
    }
  });
  return b;
}

std::vector<char> packBits(const std::vector<int8_t> &q, int bits) {
  if (bits == 8)
    return std::vector<char>(q.begin(), q.end());
  std::vector<char> out((q.size() + 1) / 2, 0);
  parallelFor(int64_t(out.size()), 1 << 20, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const size_t i = 2 * b;
      uint8_t lo = uint8_t((q[i] + 8) & 15), hi = i + 1 < q.size() ? uint8_t((q[i + 1] + 8) & 15) : 0;
      out[b] = char(lo | (hi << 4));
    }
  });
  return out;
}

uint64_t PackedLinear::bytes() const {
  uint64_t b = 0;
  for (const auto &s : slots)
    b += s.size();
  return b;
}

namespace {
constexpr int64_t NR = MOERT_LINEAR_NR;

std::vector<char> packBias(const std::vector<float> &bias, int64_t n) {
  if (bias.empty())
    return {};
  int64_t np = (n + NR - 1) / NR;
  std::vector<float> b(np * NR, 0.0f);
  std::copy(bias.begin(), bias.end(), b.begin());
  return asBytes(b);
}

/// Codes [N][K] (one byte each; int8: the signed byte stored, int4: a nibble) and per-(column, block) scales
/// (f32, or f16 when `f16Scales`) and f32 offsets into panels of 4-byte column groups
/// (kernels/cpu/moert_kernel_abi.h, MOERT_LIN_W).
void packCodes(PackedLinear &out, const std::vector<uint8_t> &codes, const std::vector<float> &scales,
               const std::vector<float> *offsets, int bits, int64_t k, int64_t n, int64_t block,
               bool f16Scales = false) {
  const int64_t np = (n + NR - 1) / NR, kb = (k + block - 1) / block;
  // A group holds GK features of a column in 4 bytes: int8 feature 4g + q in byte q; int4 feature 8g + q in
  // byte q's low nibble, 8g + 4 + q in its high one. Groups [KG][NR][4] a panel.
  const int64_t gk = bits == 4 ? 8 : 4, groups = (k + gk - 1) / gk, panelBytes = groups * NR * 4;
  std::vector<char> w(np * panelBytes, 0);
  std::vector<float> s(np * kb * NR, 0.0f), o(offsets ? np * kb * NR : 0, 0.0f);
  // Panels in parallel: each writes only its own panel's bytes and scales.
  parallelFor(np, std::max<int64_t>(1, 65536 / std::max<int64_t>(k * NR, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t c = p0 * NR; c < std::min(n, p1 * NR); ++c) {
      const int64_t p = c / NR, j = c % NR;
      for (int64_t f = 0; f < k; ++f) {
        const uint8_t code = codes[c * k + f];
        const int64_t g = f / gk, q = f % gk;
        char &byte = w[p * panelBytes + (g * NR + j) * 4 + q % 4];
        if (bits == 8)
          byte = char(code);
        else
          byte = char(uint8_t(byte) | ((code & 15) << (q / 4 * 4)));
      }
      for (int64_t b = 0; b < kb; ++b) {
        s[(p * kb + b) * NR + j] = scales[c * kb + b];
        if (offsets)
          o[(p * kb + b) * NR + j] = (*offsets)[c * kb + b];
      }
    }
  });
  out.slots[MOERT_LIN_W] = std::move(w);
  out.slots[MOERT_LIN_SCALES] = f16Scales ? asF16(s) : asBytes(s);
  if (offsets)
    out.slots[MOERT_LIN_OFFSETS] = asBytes(o);
}
} // namespace

PackedLinear packLinear(F32Span w, bool transposed, int64_t k, int64_t n, moert_storage storage,
                        int64_t block, const std::vector<float> &bias, bool f16Scales) {
  PackedLinear out;
  out.slots[MOERT_LIN_BIAS] = packBias(bias, n);
  auto at = [&](int64_t f, int64_t c) { return transposed ? w[c * k + f] : w[f * n + c]; };
  if (storage == MOERT_STORAGE_INT8 || storage == MOERT_STORAGE_INT4) {
    const int bits = storage == MOERT_STORAGE_INT8 ? 8 : 4;
    std::vector<float> cols(n * k); // [N][K]: a column's features contiguous, as quantizeRows wants rows
    forEachTiled(1, n, k, [&](int64_t, int64_t c, int64_t f) { cols[c * k + f] = at(f, c); });
    QRows q = quantizeRows(cols, n, k, bits, block, f16Scales);
    std::vector<float>().swap(cols);
    std::vector<uint8_t> codes(n * k);
    for (size_t i = 0; i < codes.size(); ++i) // int8: the signed byte; int4: centred + 8
      codes[i] = bits == 8 ? uint8_t(q.q[i]) : uint8_t(q.q[i] + 8);
    packCodes(out, codes, q.s, nullptr, bits, k, n, block, f16Scales);
    return out;
  }
  const int64_t np = (n + NR - 1) / NR;
  if (storage == MOERT_STORAGE_BF16) { // feature pairs: [NP][KP][NR] 32-bit lanes, 2q low, 2q + 1 high
    const int64_t kp = (k + 1) / 2;
    std::vector<char> b(size_t(MOERT_LIN_PLAIN_PANEL_BYTES(k, 2, 1) * np), 0);
    uint16_t *h = reinterpret_cast<uint16_t *>(b.data());
    parallelFor(np, std::max<int64_t>(1, 65536 / std::max<int64_t>(k * NR, 1)), [&](int64_t p0, int64_t p1) {
      for (int64_t pi = p0; pi < p1; ++pi)
        for (int64_t f = 0; f < k; ++f)
          for (int64_t c = pi * NR; c < std::min(n, (pi + 1) * NR); ++c)
            h[((pi * kp + f / 2) * NR + c % NR) * 2 + f % 2] = toBf16(at(f, c));
    });
    out.slots[MOERT_LIN_W] = std::move(b);
    return out;
  }
  std::vector<float> p(np * k * NR, 0.0f);
  parallelFor(np, std::max<int64_t>(1, 65536 / std::max<int64_t>(k * NR, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t pi = p0; pi < p1; ++pi)
      for (int64_t f = 0; f < k; ++f)
        for (int64_t c = pi * NR; c < std::min(n, (pi + 1) * NR); ++c)
          p[(pi * k + f) * NR + c % NR] = at(f, c);
  });
  out.slots[MOERT_LIN_W] = storage == MOERT_STORAGE_F16 ? asF16(p) : asBytes(p);
  return out;
}

PackedLinear packLinearCodes(const std::vector<uint8_t> &codes, const std::vector<float> &scales,
                             const std::vector<float> &zeros, int bits, int64_t k, int64_t n, int64_t block,
                             const std::vector<float> &bias, bool f16Scales) {
  PackedLinear out;
  out.slots[MOERT_LIN_BIAS] = packBias(bias, n);
  if (zeros.empty()) {
    if (bits == 8) { // symmetric int8: the kernels read signed codes (code - 128)
      std::vector<uint8_t> c(codes.size());
      for (size_t i = 0; i < c.size(); ++i)
        c[i] = uint8_t(int(codes[i]) - 128);
      packCodes(out, c, scales, nullptr, bits, k, n, block, f16Scales);
    } else {
      packCodes(out, codes, scales, nullptr, bits, k, n, block, f16Scales);
    }
    return out;
  }
  // w = (code - zero) * scale = code * scale + offset. int8 codes are stored signed (code - 128, the offset
  // taking the 128 back) so the kernels have one int8 form.
  std::vector<float> off(scales.size());
  for (size_t i = 0; i < off.size(); ++i)
    off[i] = (bits == 8 ? 128.0f - zeros[i] : -zeros[i]) * scales[i];
  if (bits == 8) {
    std::vector<uint8_t> c(codes.size());
    for (size_t i = 0; i < c.size(); ++i)
      c[i] = uint8_t(int(codes[i]) - 128);
    packCodes(out, c, scales, &off, bits, k, n, block);
  } else {
    packCodes(out, codes, scales, &off, bits, k, n, block);
  }
  return out;
}

PackedTable packEmbedding(F32Span t, int64_t v, int64_t h, moert_storage storage, int64_t block) {
  PackedTable out;
  switch (storage) {
  case MOERT_STORAGE_F32:
    out.rows = asBytes(t), out.rowBytes = 4 * h;
    return out;
  case MOERT_STORAGE_BF16:
    out.rows = asBf16(t), out.rowBytes = 2 * h;
    return out;
  case MOERT_STORAGE_F16:
    out.rows = asF16(t), out.rowBytes = 2 * h;
    return out;
  case MOERT_STORAGE_INT8:
  case MOERT_STORAGE_INT4:
    break;
  }
  const int bits = storage == MOERT_STORAGE_INT8 ? 8 : 4;
  QRows q = quantizeRows(t, v, h, bits, block);
  out.scales = asBytes(q.s);
  // Rows start on whole bytes: an odd int4 row gets a zero code at its end.
  const int64_t hp = bits == 4 ? (h + 1) / 2 * 2 : h;
  std::vector<int8_t> codes(size_t(v * hp), 0);
  for (int64_t r = 0; r < v; ++r)
    std::copy(q.q.begin() + r * h, q.q.begin() + (r + 1) * h, codes.begin() + r * hp);
  out.rows = packBits(codes, bits);
  out.rowBytes = hp * bits / 8;
  return out;
}

} // namespace moec::codegen

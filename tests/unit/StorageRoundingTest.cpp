//===- StorageRoundingTest.cpp - f32 to bf16 / fp16 as the storage formats hold them --===//
//
// moert_f32_to_f16 and moert_f32_to_bf16 (kernels/cpu/moert_kernel_abi.h) are the one definition of how an
// f32 value becomes bf16 / fp16 storage: libmoert's Cast and narrow KV caches on the host, and the GPU kernel
// that appends a session's cache on the device. Checked over a sweep of f32 bit patterns (every 251st, and
// the boundaries: subnormal halves, the ties, overflow, inf, NaN) against the CPU's own conversion (F16C's
// vcvtps2ph, round to nearest even) for fp16, and against the nearest bf16 found in double arithmetic for
// bf16.
//
//===----------------------------------------------------------------------===//
#include "kernels/cpu/moert_kernel_abi.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <immintrin.h>
#include <vector>

namespace {

float bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

__attribute__((target("f16c"))) uint16_t hardwareF16(float f) {
  return uint16_t(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The bf16 nearest to x (ties to the even one), from the two candidates around it, compared in double; as in
// IEEE rounding, infinity counts as 2^128 there (a value at or past the midpoint above the largest bf16
// overflows to it).
double bf16Value(uint16_t h) {
  return (h & 0x7fff) == 0x7f80 ? std::copysign(std::ldexp(1.0, 128), double(bits(uint32_t(h) << 16)))
                                : double(bits(uint32_t(h) << 16));
}
uint16_t nearestBf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  const uint16_t lo = uint16_t(u >> 16), hi = uint16_t(lo + 1);
  const double dl = std::fabs(double(x) - bf16Value(lo)), dh = std::fabs(double(x) - bf16Value(hi));
  return dl < dh ? lo : dh < dl ? hi : (lo & 1) ? hi : lo;
}

std::vector<uint32_t> patterns() {
  std::vector<uint32_t> out;
  for (uint64_t u = 0; u <= 0xffffffffu; u += 251)
    out.push_back(uint32_t(u));
  for (uint32_t edge : {0x00000000u, 0x33000000u, 0x33000001u, 0x337fffffu, 0x387fffffu, 0x38800000u,
                        0x38801000u, 0x38802000u, 0x477fefffu, 0x477ff000u, 0x7f7fffffu, 0x7f800000u,
                        0x7f800001u, 0x7fc00000u, 0x3f808000u, 0x3f818000u, 0x3f7fffffu})
    for (uint32_t sign : {0u, 0x80000000u})
      for (int d = -2; d <= 2; ++d)
        out.push_back((edge + uint32_t(d)) ^ sign);
  return out;
}

TEST(StorageRounding, F16MatchesTheCpusConversion) {
  if (!__builtin_cpu_supports("f16c"))
    GTEST_SKIP() << "no F16C on this CPU";
  int64_t checked = 0;
  for (uint32_t u : patterns()) {
    const float x = bits(u);
    const uint16_t got = moert_f32_to_f16(x), want = hardwareF16(x);
    if (std::isnan(x)) { // a quiet NaN of the same sign (the hardware keeps payload bits; storage does not)
      ASSERT_EQ(got & 0xfe00, (want & 0x8000) | 0x7e00) << std::hex << u;
      continue;
    }
    ASSERT_EQ(got, want) << "f32 bits 0x" << std::hex << u << " (" << x << ")";
    ++checked;
  }
  EXPECT_GT(checked, int64_t(17000000));
}

TEST(StorageRounding, Bf16IsTheNearestTiesToEven) {
  for (uint32_t u : patterns()) {
    const float x = bits(u);
    const uint16_t got = moert_f32_to_bf16(x);
    if (std::isnan(x)) {
      ASSERT_TRUE((got & 0x7f80) == 0x7f80 && (got & 0x40)) << std::hex << u;
      continue;
    }
    ASSERT_EQ(got, nearestBf16(x)) << "f32 bits 0x" << std::hex << u << " (" << x << ")";
  }
}

} // namespace

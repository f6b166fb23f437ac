//===- WeightPacking.h - weights into the CPU kernels' storage and layouts ----===//
//
// Host-side conversions shared by every dispatch kind: rounding to bf16/fp16, symmetric block quantisation,
// nibble packing, and the linear kernels' panel layout (kernels/cpu/moert_kernel_abi.h, MOERT_LIN_*).
// Dependency-free (no LLVM/MLIR), so kernel tests link it too.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_WEIGHTPACKING_H
#define MOEC_CODEGEN_WEIGHTPACKING_H

#include "kernels/cpu/moert_kernel_abi.h"

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moec::codegen {

/// A read-only run of f32 values: a view of a constant's bytes where they lie (no copy), or of a vector.
struct F32Span {
  const float *p = nullptr;
  size_t n = 0;
  F32Span() = default;
  F32Span(const float *data, size_t count) : p(data), n(count) {}
  F32Span(const std::vector<float> &v) : p(v.data()), n(v.size()) {}
  const float &operator[](size_t i) const { return p[i]; }
  size_t size() const { return n; }
  bool empty() const { return n == 0; }
  const float *begin() const { return p; }
  const float *end() const { return p + n; }
};

/// Runs fn(begin, end) over [0, n) split into contiguous ranges on all cores (the calling thread takes one);
/// `grain`: the fewest items worth a thread. Packing is memory-bound loops over rows or columns.
void parallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn);

/// Calls fn(x, j, i) for every element of `batches` matrices of `rows` x `cols`, in 64 x 64 tiles (a
/// transpose reads one side with a stride, so untiled it misses the cache on every element), tiles in
/// parallel: the one transpose loop packing uses for experts' fc2 and linear weights.
template <typename Fn> void forEachTiled(int64_t batches, int64_t rows, int64_t cols, const Fn &fn) {
  const int64_t rt = (rows + 63) / 64;
  parallelFor(batches * rt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t x = t / rt, j0 = t % rt * 64, j1 = j0 + 64 < rows ? j0 + 64 : rows;
      for (int64_t i0 = 0; i0 < cols; i0 += 64)
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < (i0 + 64 < cols ? i0 + 64 : cols); ++i)
            fn(x, j, i);
    }
  });
}

/// Weight-only quantised rows: `rows` rows of `k` centred integers (q - zero point) with one f32 scale per
/// block of `blk` columns (`nb` blocks a row).
struct QRows {
  std::vector<int8_t> q;
  std::vector<float> s;
  int64_t rows = 0, k = 0, blk = 0, nb = 0;
};

/// Symmetric quantisation of f32 rows: scale = max|w| / qmax per block, q = round-half-even(w / scale)
/// clamped to the code range. `f16Scales`: each scale is first rounded to the nearest f16 (at most 65504; the
/// codes then come from that scale), as the layers storing f16 scales keep it (MOERT_QSCALE_BYTES).
QRows quantizeRows(F32Span w, int64_t rows, int64_t k, int bits, int64_t blk, bool f16Scales = false);

std::vector<char> asBytes(F32Span v);
/// f32 -> bf16, round to nearest even (NaN stays NaN).
uint16_t toBf16(float f);
std::vector<char> asBf16(F32Span v);
/// f32 -> IEEE fp16, round to nearest even (overflow to infinity, as the conversion instructions do).
uint16_t toF16(float f);
/// IEEE fp16 -> f32 (exact).
float fromF16(uint16_t h);
std::vector<char> asF16(F32Span v);
/// Kernel bytes of centred quantised rows: int8 as is, int4 as nibbles (centred + 8), two per byte, low first.
std::vector<char> packBits(const std::vector<int8_t> &q, int bits);

/// A linear layer's weight slots in the kernels' layout (moert_linear_slot): empty where unused.
struct PackedLinear {
  std::vector<char> slots[MOERT_LIN_SLOTS];
  uint64_t bytes() const;
};

/// Packs W given as f32 `[K][N]` (`transposed`: `[N][K]`) into panels in `storage`, quantising per column
/// and block of `block` input features when the storage is int8/int4, with f16 scales when `f16Scales` (the
/// kernel's C::SCALE16) and f32 ones otherwise. `bias` ([N]) may be empty.
PackedLinear packLinear(F32Span w, bool transposed, int64_t k, int64_t n, moert_storage storage,
                        int64_t block, const std::vector<float> &bias, bool f16Scales = false);

/// Packs already-quantised weights without re-quantising: `codes` [N][K] (one unsigned code per element,
/// 0..2^bits-1), `scales` [N][KB], `zeros` [N][KB] zero points (empty: symmetric, 2^(bits-1)). With zero
/// points the kernel computes w = code * scale + offset, offset = -zero * scale (int8: codes stored as
/// code - 128, offset (128 - zero) * scale). `f16Scales`: the scales stored as f16 (symmetric codes whose
/// scales are f16 values already, as quantizeRows' with f16Scales).
PackedLinear packLinearCodes(const std::vector<uint8_t> &codes, const std::vector<float> &scales,
                             const std::vector<float> &zeros, int bits, int64_t k, int64_t n, int64_t block,
                             const std::vector<float> &bias, bool f16Scales = false);

/// A token-embedding table in its storage (moert_kernel_abi.h, MOERT_EMBED_*): `rows` [V][row bytes] and, for
/// int8/int4, `scales` [V][ceil(H / block)] f32.
struct PackedTable {
  std::vector<char> rows, scales;
  int64_t rowBytes = 0;
};
/// Packs the f32 table `t` ([V][H]) in `storage`, quantising each row per block of `block` values.
PackedTable packEmbedding(F32Span t, int64_t v, int64_t h, moert_storage storage, int64_t block);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_WEIGHTPACKING_H

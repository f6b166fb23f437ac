//===- Ops.h - libmoert's kernels for graph ops around MoE dispatches --------===//
#ifndef MOERT_SRC_OPS_H
#define MOERT_SRC_OPS_H

#include "runtime/artifact.pb.h"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace moert {

/// An op's input (borrowed) or output (allocated by alloc(), 64-byte aligned, owned).
struct OpTensor {
  std::vector<int64_t> dims;
  const char *data = nullptr;
  std::shared_ptr<char> owned;
  void alloc(std::vector<int64_t> d) {
    dims = std::move(d);
    int64_t n = 1;
    for (int64_t x : dims)
      n *= x;
    void *p = nullptr;
    if (posix_memalign(&p, 64, n > 0 ? size_t(n) * 4 : 64) != 0)
      p = nullptr;
    owned = std::shared_ptr<char>(static_cast<char *>(p), [](char *q) { std::free(q); });
    data = owned.get();
  }
  float *f32() { return reinterpret_cast<float *>(owned.get()); }
};

bool isSupportedOp(const std::string &op);
/// Runs `s` on `in` (f32); returns an error message, empty on success.
std::string runOp(const proto::OpStep &s, const std::vector<OpTensor> &in, OpTensor &out);

} // namespace moert

#endif // MOERT_SRC_OPS_H

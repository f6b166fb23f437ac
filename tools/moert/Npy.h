//===- Npy.h - reading and writing NumPy .npy files (moert's I/O format) ------===//
#ifndef MOERT_TOOLS_NPY_H
#define MOERT_TOOLS_NPY_H

#include "moert/moert.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moert::npy {

struct Array {
  moert_dtype dtype = MOERT_DTYPE_UNKNOWN;
  std::vector<int64_t> dims;
  const char *data = nullptr; // row-major, little-endian: in the file's read-only mapping
  size_t bytes = 0;
  std::shared_ptr<const void> mapping; // keeps `data` mapped
};

/// Maps a C-order .npy file of a supported dtype (f32, f16, f64, the integer types, bool): its data is read
/// from the file as it is used, never copied, whatever its size. False + `error` (a truncated file, a shape
/// whose size overflows, a dtype moert has no type for).
bool read(const std::string &path, Array &out, std::string &error);
/// Writes `t` as a .npy file (version 1.0). False + `error`.
bool write(const std::string &path, const moert_tensor &t, std::string &error);

} // namespace moert::npy

#endif // MOERT_TOOLS_NPY_H

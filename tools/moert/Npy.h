//===- Npy.h - reading and writing NumPy .npy files (moert's I/O format) ------===//
#ifndef MOERT_TOOLS_NPY_H
#define MOERT_TOOLS_NPY_H

#include "moert/moert.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moert::npy {

struct Array {
  moert_dtype dtype = MOERT_DTYPE_UNKNOWN;
  std::vector<int64_t> dims;
  std::vector<char> data; // row-major, little-endian
};

/// Reads a C-order .npy file of a supported dtype (f32, f16, i64, i32, i8, u8, bool). False + `error`.
bool read(const std::string &path, Array &out, std::string &error);
/// Writes `t` as a .npy file (version 1.0). False + `error`.
bool write(const std::string &path, const moert_tensor &t, std::string &error);

} // namespace moert::npy

#endif // MOERT_TOOLS_NPY_H

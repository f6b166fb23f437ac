//===- Npy.cpp - reading and writing NumPy .npy files ------------------------===//
#include "Npy.h"

#include <cstdio>
#include <cstring>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace moert::npy;

namespace {
struct DescrInfo {
  const char *descr;
  moert_dtype dtype;
  size_t size;
};
const DescrInfo kDescrs[] = {{"<f4", MOERT_F32, 4}, {"<f2", MOERT_F16, 2}, {"<i8", MOERT_I64, 8},
                             {"<i4", MOERT_I32, 4}, {"|i1", MOERT_I8, 1},  {"|u1", MOERT_U8, 1},
                             {"|b1", MOERT_BOOL, 1}, {"<f8", MOERT_F64, 8}, {"<i2", MOERT_I16, 2},
                             {"<u2", MOERT_U16, 2},  {"<u4", MOERT_U32, 4}, {"<u8", MOERT_U64, 8}};

/// The value of `key` in the header's Python dict literal, up to the next top-level comma.
std::string field(const std::string &header, const std::string &key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos)
    return "";
  size_t colon = header.find(':', k);
  if (colon == std::string::npos)
    return "";
  size_t i = colon + 1;
  while (i < header.size() && header[i] == ' ')
    ++i;
  if (i < header.size() && header[i] == '(') {
    size_t end = header.find(')', i);
    return end == std::string::npos ? "" : header.substr(i, end - i + 1);
  }
  size_t end = header.find_first_of(",}", i);
  return header.substr(i, end - i);
}
} // namespace

bool moert::npy::read(const std::string &path, Array &out, std::string &error) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    error = path + ": cannot open" + (fd >= 0 ? " (not a regular file)" : "");
    if (fd >= 0)
      ::close(fd);
    return false;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void *map = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  ::close(fd);
  if (map == MAP_FAILED) {
    error = path + (size ? ": cannot map" : ": not a .npy file (empty)");
    return false;
  }
  out.mapping =
      std::shared_ptr<const void>(map, [size](const void *p) { ::munmap(const_cast<void *>(p), size); });
  const char *bytes = static_cast<const char *>(map);
  if (size < 10 || std::memcmp(bytes, "\x93NUMPY", 6) != 0) {
    error = path + ": not a .npy file";
    return false;
  }
  unsigned major = static_cast<unsigned char>(bytes[6]);
  size_t headerLen, at;
  if (major == 1) {
    headerLen = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    at = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) {
      error = path + ": truncated .npy header";
      return false;
    }
    headerLen = 0;
    for (int i = 0; i < 4; ++i)
      headerLen |= size_t(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    at = 12;
  } else {
    error = path + ": unsupported .npy version " + std::to_string(major);
    return false;
  }
  if (size - at < headerLen) {
    error = path + ": truncated .npy header";
    return false;
  }
  std::string header(bytes + at, headerLen);
  std::string descr = field(header, "descr"), order = field(header, "fortran_order"), shape = field(header, "shape");
  if (order.find("True") != std::string::npos) {
    error = path + ": Fortran-order arrays are not supported (save with np.ascontiguousarray)";
    return false;
  }
  const DescrInfo *info = nullptr;
  for (const auto &d : kDescrs)
    if (descr.find(d.descr) != std::string::npos)
      info = &d;
  if (!info) {
    error = path + ": unsupported dtype " + descr + " (f32, f64, f16, i64, i32, i16, i8, u64, u32, u16, u8 or bool, little-endian)";
    return false;
  }
  out.dtype = info->dtype;
  out.dims.clear();
  std::string inner = shape.size() >= 2 ? shape.substr(1, shape.size() - 2) : "";
  std::stringstream ss(inner);
  std::string part;
  uint64_t need = info->size; // bytes of data, checked for overflow as each dim multiplies it
  bool overflow = false;
  while (std::getline(ss, part, ',')) {
    if (part.find_first_not_of(' ') == std::string::npos)
      continue;
    char *end = nullptr;
    long long d = std::strtoll(part.c_str(), &end, 10);
    if (d < 0 || end == part.c_str()) {
      error = path + ": bad shape " + shape;
      return false;
    }
    out.dims.push_back(d);
    overflow |= __builtin_mul_overflow(need, uint64_t(d), &need);
  }
  if (overflow) {
    error = path + ": shape " + shape + " has more bytes than a 64-bit size holds";
    return false;
  }
  const size_t have = size - at - headerLen;
  if (have < need) {
    error = path + ": truncated data (" + std::to_string(have) + " of " + std::to_string(need) + " bytes)";
    return false;
  }
  out.data = bytes + at + headerLen;
  out.bytes = need;
  return true;
}

bool moert::npy::write(const std::string &path, const moert_tensor &t, std::string &error) {
  const DescrInfo *info = nullptr;
  for (const auto &d : kDescrs)
    if (d.dtype == t.dtype)
      info = &d;
  if (!info) {
    error = path + ": cannot write this dtype as .npy";
    return false;
  }
  std::string shape = "(";
  size_t count = 1;
  for (int i = 0; i < t.rank; ++i) {
    shape += std::to_string(t.dims[i]) + (t.rank == 1 ? "," : (i + 1 < t.rank ? ", " : ""));
    count *= size_t(t.dims[i]);
  }
  shape += ")";
  std::string header = "{'descr': '" + std::string(info->descr) + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::string tmp = path + ".partial";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    error = path + ": cannot write";
    return false;
  }
  unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, static_cast<unsigned char>(header.size() & 0xff),
                           static_cast<unsigned char>(header.size() >> 8)};
  bool ok = std::fwrite(pre, 1, 10, f) == 10 && std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(t.data, info->size, count, f) == count;
  ok &= std::fclose(f) == 0;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    error = path + ": cannot write";
    return false;
  }
  return true;
}

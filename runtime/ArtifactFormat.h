//===- ArtifactFormat.h - the fixed part of a .moex artifact file -------------===//
//
// Shared by the writer (codegen/Artifact.cpp, in moec) and the reader (runtime/src/Artifact.cpp, in
// libmoert). Dependency-free. docs/artifact-format.md is the specification.
//
//   [0, 64)            FileHeader
//   64-byte aligned    sections (weights, code), from offset 64, located by the metadata
//   after them         metadata: a serialized moert.proto.Artifact (runtime/artifact.proto), located by the
//   header
//
// The metadata comes last so that a writer can stream each section into the file as it is packed (its offset
// known when it is written) and describe them all at the end (version 2 put it at offset 64; readers take
// both).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_ARTIFACT_FORMAT_H
#define MOERT_ARTIFACT_FORMAT_H

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moert::format {

inline constexpr char kMagic[8] = {'M', 'O', 'E', 'X', '\0', '\x1a', '\r', '\n'};
inline constexpr uint32_t kVersion = 4; // bump on any change an older reader would misread (2: per-section
                                        // checksums; 3: metadata last; 4: attention steps' transpose_output)
inline constexpr uint32_t kOldestVersion = 2; // the oldest format this reader still reads
inline constexpr uint64_t kAlignment = 64; // every section starts at a multiple of this

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t headerSize;     // sizeof(FileHeader) = 64
  uint64_t fileSize;       // the whole file, in bytes
  uint64_t metadataOffset; // after the last section (version 2: 64)
  uint64_t metadataSize;
  uint64_t checksum;       // headChecksum(): the header (this field zeroed) and the metadata
  uint8_t reserved[16];    // zero
};
static_assert(sizeof(FileHeader) == 64, "the header is 64 bytes");

/// A fast 64-bit hash of `n` bytes (four interleaved multiply-xorshift lanes; not cryptographic). Detects
/// truncation and bit flips; it is not a defence against a crafted file.
inline uint64_t checksum(const void *data, size_t n, uint64_t seed = 0x6d6f65632d6d6f65ull) {
  const unsigned char *p = static_cast<const unsigned char *>(data);
  const uint64_t kMul = 0x9e3779b97f4a7c15ull;
  uint64_t lane[4] = {seed, seed ^ 0x1234567ull, seed ^ 0xabcdefull, seed ^ 0x7654321ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      lane[l] = (lane[l] ^ w) * kMul;
      lane[l] ^= lane[l] >> 29;
    }
  uint64_t h = lane[0] ^ (lane[1] * 3) ^ (lane[2] * 5) ^ (lane[3] * 7) ^ n;
  for (; i < n; ++i)
    h = (h ^ p[i]) * kMul;
  h ^= h >> 32;
  return h * kMul;
}

/// checksum() of the header `h` (its checksum field treated as zero), then of the `h.metadataSize` bytes of
/// `metadata`: what a reader checks before it trusts the section table. Each section's bytes have a
/// checksum() of their own in the metadata (Section.checksum), checked when the section is first used.
inline uint64_t headChecksum(FileHeader h, const unsigned char *metadata) {
  h.checksum = 0;
  uint64_t a = checksum(&h, sizeof h);
  return checksum(metadata, h.metadataSize, a);
}

/// The ops whose output is a view of their first input's bytes when libmoert runs them (runtime/src/Ops.cpp's
/// isView), so the program's memory plan (codegen/Artifact.cpp) counts a read of the output as a read of the
/// input's buffer. One list: a view the plan did not know of read a buffer the plan had given to a later
/// value.
inline bool viewOp(const char *op) {
  static const char *const kViews[] = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"};
  for (const char *v : kViews)
    if (std::strcmp(op, v) == 0)
      return true;
  return false;
}

inline uint64_t alignUp(uint64_t x) { return (x + kAlignment - 1) / kAlignment * kAlignment; }

} // namespace moert::format

#endif // MOERT_ARTIFACT_FORMAT_H

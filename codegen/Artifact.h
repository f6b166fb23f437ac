//===- Artifact.h - writing a .moex artifact file ----------------------------===//
//
// Collects sections (weights, code) and the metadata, then writes the file in one go: header, metadata,
// 64-byte-aligned sections, checksum (docs/artifact-format.md). The file appears only when complete.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_ARTIFACT_H
#define MOEC_CODEGEN_ARTIFACT_H

#include "runtime/artifact.pb.h"

#include "llvm/ADT/StringRef.h"

#include <string>
#include <vector>

namespace moec::codegen {

class ArtifactWriter {
public:
  /// Adds a section and returns its index in the metadata's section list.
  int addSection(llvm::StringRef name, moert::proto::Section::Kind kind, std::vector<char> bytes);
  moert::proto::Artifact &meta() { return meta_; }
  uint64_t sectionBytes(moert::proto::Section::Kind kind) const;
  /// Writes the artifact to `path` (atomically: a temporary file renamed into place). False + `error` on
  /// failure.
  bool write(llvm::StringRef path, std::string &error);

private:
  moert::proto::Artifact meta_;
  std::vector<std::vector<char>> payloads_;
};

/// Writes `bytes` to `path` (replacing it); false on any error.
bool writeFileBytes(llvm::StringRef path, llvm::StringRef bytes);

/// Writes kernel sources `files` ({name, text}) into `dir` for the compiler and, when `dumpDir` is set, into
/// it as well (--dump-kernels). False + `error` on failure.
bool stageSources(llvm::StringRef dir, const std::vector<std::pair<std::string, std::string>> &files,
                  const std::string &dumpDir, std::string &error);

/// The first `error:` line of a compiler log file (else its first line; "" when unreadable).
std::string firstErrorLine(llvm::StringRef logPath);

/// The static memory plan: assigns every intermediate that owns its bytes (an op or dispatch output that is
/// not a view) one of a few buffers, reusing a buffer once everything reading its value - directly or
/// through views (Reshape, Squeeze, Unsqueeze, Identity alias their input) - has run. Sets `Value.buffer` and
/// `Program.buffers`; buffer sizes depend on the symbolic dims and are resolved by the runtime.
void planMemory(moert::proto::Program &program);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_ARTIFACT_H

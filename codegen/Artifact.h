//===- Artifact.h - writing a .moex artifact file ----------------------------===//
//
// Streams an artifact into a temporary file next to its path: each section (weights, code) is written and
// checksummed when it is added, then freed, so a compile holds at most the section being packed; the metadata
// (which locates every section) and the header follow at the end, and the file is renamed into place only
// when complete (docs/artifact-format.md). A writer destroyed before finish() removes its temporary file.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_ARTIFACT_H
#define MOEC_CODEGEN_ARTIFACT_H

#include "runtime/artifact.pb.h"

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallString.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/raw_ostream.h"

#include <memory>
#include <string>
#include <vector>

namespace moec::codegen {

class ArtifactWriter {
public:
  ArtifactWriter() = default;
  ArtifactWriter(const ArtifactWriter &) = delete;
  ArtifactWriter &operator=(const ArtifactWriter &) = delete;
  ~ArtifactWriter();

  /// Starts the artifact at `path`: creates the temporary file the sections stream into. False + `error`.
  bool open(llvm::StringRef path, std::string &error);
  /// Writes a section now (64-byte aligned) and returns its index in the metadata's section list. A failed
  /// write is kept and reported by error() and finish().
  /// `chunks` > 1: the bytes are that many equal parts (a MoE dispatch's experts), checksummed one by one.
  int addSection(llvm::StringRef name, moert::proto::Section::Kind kind, llvm::ArrayRef<char> bytes,
                 int64_t chunks = 1);
  int addSection(llvm::StringRef name, moert::proto::Section::Kind kind, std::vector<char> bytes,
                 int64_t chunks = 1) {
    int index = addSection(name, kind, llvm::ArrayRef<char>(bytes), chunks);
    std::vector<char>().swap(bytes); // written: its memory goes back now
    return index;
  }
  moert::proto::Artifact &meta() { return meta_; }
  uint64_t sectionBytes(moert::proto::Section::Kind kind) const;
  /// The first write error ("cannot write 'PATH': reason"), or "".
  std::string error() const;
  /// Writes the metadata and the header and renames the file into place. False + `error` on failure (the
  /// temporary file is removed).
  bool finish(std::string &error);

private:
  moert::proto::Artifact meta_;
  std::string path_;
  llvm::SmallString<256> tmp_;
  std::unique_ptr<llvm::raw_fd_ostream> os_;
  uint64_t at_ = 0; // bytes written so far
};

/// Writes `bytes` to `path` (replacing it); false on any error.
bool writeFileBytes(llvm::StringRef path, llvm::StringRef bytes);

/// Writes kernel sources `files` ({name, text}) into `dir` for the compiler and, when `dumpDir` is set, into
/// it as well (--dump-kernels). False + `error` on failure.
bool stageSources(llvm::StringRef dir, const std::vector<std::pair<std::string, std::string>> &files,
                  const std::string &dumpDir, std::string &error);

/// The sanitizers `moec compile --sanitize` accepts (clang's -fsanitize= names).
const std::vector<std::string> &knownSanitizers();

/// The compiler flags that build generated host code (CPU kernels, the emulated GPU's) with `sanitizers`
/// (none when empty). The code's calls into the sanitizer runtime resolve against the process that loads it:
/// a sanitizer build of libmoert (make SANITIZE=...).
std::vector<std::string> sanitizerFlags(const std::vector<std::string> &sanitizers);

/// The first `error:` line of a compiler log file (else its first line; "" when unreadable).
std::string firstErrorLine(llvm::StringRef logPath);

/// The static memory plan: assigns every intermediate that owns its bytes (an op or dispatch output that is
/// not a view) one of a few buffers, reusing a buffer once everything reading its value - directly or
/// through views (the ops libmoert runs as views of their input, moert::format::viewOp, and the optional ops)
/// - has run. Sets `Value.buffer` and
/// `Program.buffers`; buffer sizes depend on the symbolic dims and are resolved by the runtime.
void planMemory(moert::proto::Program &program);

/// For a program with GPU kernels: "" when a call keeps every value on the device between its dispatches,
/// else one line naming the host steps that bring device values back each call, by op and count (libmoert's
/// load-time plan, runtime/src/GpuPlan.h, as `moert inspect --device` prints it).
std::string gpuCrossings(const moert::proto::Program &program);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_ARTIFACT_H

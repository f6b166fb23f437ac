//===- KernelCache.h - compiled kernel code kept by what it was built from ------------------------------===//
//
// moec compiles the generated kernel sources (the CPU dispatches, the GPU code objects) with clang for every
// artifact: seconds each, most of a small model's compile. The cache keeps each compile's output under a key
// of everything that went into it (the compiler executable, its arguments, every staged source file), as
// ccache and Triton's kernel cache do: compiling a model again, or another with the same dispatch shapes and
// options, reuses the code instead of running the compiler. An entry is written whole or not at all (a
// temporary file renamed into place) and checked on the way out (its length and hash): a damaged entry is a
// miss and is written again. The least recently used entries go when the cache outgrows its limit.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_KERNELCACHE_H
#define MOEC_CODEGEN_KERNELCACHE_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace moec::codegen {

struct KernelCache {
  std::string dir;                  // empty: no cache
  uint64_t limitBytes = 1ull << 30; // the most the entries may hold together

  /// The cache `option` names (moec compile --kernel-cache): a directory, or "off"; empty: $MOEC_KERNEL_CACHE
  /// (the same forms), else $XDG_CACHE_HOME/moec/kernels, else ~/.cache/moec/kernels. $MOEC_KERNEL_CACHE_MB
  /// sets the size limit (default 1024). A directory that cannot be made leaves the cache off.
  static KernelCache open(const std::string &option);
};

/// One compile of staged sources: `compiler args` writes `output` (its log to `log`).
struct KernelCompile {
  llvm::StringRef compiler;
  llvm::ArrayRef<llvm::StringRef> args;
  llvm::StringRef stage; // the directory the sources are staged in (paths under it are not part of the key)
  const std::vector<std::pair<std::string, std::string>> *files; // the staged files: name, bytes
  llvm::StringRef output, log;
  std::string context; // what else the output depends on (-march=native: the host CPU's name and features)
  std::function<void()> starting = nullptr; // called just before the compiler runs (not when reused)
};

struct KernelCompileResult {
  bool reused = false;   // from the cache: nothing ran
  int rc = 0;            // the compiler's exit status (-1: it could not run, or its output was unreadable)
  std::string execError; // why it could not run
};

/// `c`'s output bytes into `code`: from the cache when it holds this compile, else by running the compiler
/// (and storing what it wrote when it succeeded).
KernelCompileResult compileOrReuse(const KernelCache &cache, const KernelCompile &c, std::vector<char> &code);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_KERNELCACHE_H

//===- CpuCodegen.h - fused graph -> CPU artifact ----------------------------===//
//
// Turns a module after moec's fusion pipeline into a .moex artifact for x86-64 CPUs: the graph becomes a
// program of steps (op steps, fused MoE dispatches, linear dispatches). Each `moe.sparse_moe` specialises
// kernels/cpu/sparse_moe.h and each `moe.linear` kernels/cpu/linear.h to its shapes and weight storage (the
// ops' `storage` attributes) in one C++ translation unit, compiled by clang-19 for the chosen CPU into one
// shared object stored in the artifact; weights are packed into the kernels' layouts (codegen/WeightPacking.h)
// in 64-byte-aligned sections.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_CPU_CPUCODEGEN_H
#define MOEC_CODEGEN_CPU_CPUCODEGEN_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringRef.h"
#include "llvm/Support/raw_ostream.h"

#include <string>
#include <vector>

namespace moec::codegen {

struct CpuOptions {
  /// -march for the generated code: native, x86-64, x86-64-v2, x86-64-v3, x86-64-v4, znver4, ...
  std::string cpu = "x86-64-v3";
  /// The C++ compiler; empty: $MOEC_CXX, then clang++-19 on PATH, then /usr/lib/llvm-19/bin/clang++.
  std::string cxx;
  /// When set, the generated C++ (and GPU) sources are also written here.
  std::string dumpKernelsDir;
  /// Where compiled kernel code is kept for reuse (codegen/KernelCache.h: a directory, or "off"); empty: the
  /// default ($MOEC_KERNEL_CACHE, else ~/.cache/moec/kernels).
  std::string kernelCache;
  /// GPU code objects to build besides the CPU code (codegen/hip/GpuCodegen.h): AMD archs (gfx90a, gfx942,
  /// gfx1100) and NVIDIA ones (sm_80, sm_90, as PTX), built by the same clang as the CPU code. Empty: CPU only.
  std::vector<std::string> hipArchs, cudaArchs;
  /// Host-emulated GPU code objects (emu-w32, emu-w64: the same kernels for the host against
  /// kernels/hip/gpu_emulation.h, run by `moert --device=emu`; slow, for testing the GPU path without a GPU).
  std::vector<std::string> emuArchs;
  /// Sanitizers the generated CPU (and emulated GPU) code is built with (address, undefined, thread:
  /// -fsanitize=...), for testing it inside a sanitizer build of libmoert. Empty: none.
  std::vector<std::string> sanitizers;
  /// Expert parallelism (moec compile --expert-parallel=N, docs/scale-out.md): the program runs on N ranks.
  /// Each MoE dispatch also gets its rows entry point (moert_dispatch_<i>_rows) and records the rank holding
  /// each expert: expertMap[e] when given (the same map for every MoE layer; its length must be the layer's
  /// E), else contiguous ranges (rank r: experts E r / N to E (r + 1) / N - 1). 0: one process.
  int expertParallel = 0;
  std::vector<int> expertMap;
  /// How the ranks exchange token rows and results: f32, or bf16 (half the bytes, rounded).
  bool expertWireBf16 = false;
  /// The model's tokenizer.json, embedded as it is (Artifact.tokenizer_json); empty: none.
  std::string tokenizerJson;

  bool gpu() const { return !hipArchs.empty() || !cudaArchs.empty() || !emuArchs.empty(); }
};

/// The CPU names --cpu accepts (besides `native`), for --help and errors.
std::vector<std::string> knownCpus();

/// Compiles `module` (after the fusion pipeline) into an artifact at `outPath`. On failure returns false
/// with one line in `error`; no file is left behind. Progress lines go to `progress` when given.
bool compileCpuArtifact(mlir::ModuleOp module, const CpuOptions &options, llvm::StringRef outPath,
                        llvm::StringRef sourceModel, std::string &error, llvm::raw_ostream *progress);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_CPU_CPUCODEGEN_H

//===- GpuCodegen.h - fused MoE dispatches -> GPU code objects ----------------===//
//
// The GPU half of `moec compile --target=hip|cuda`: the CPU emitter writes, per dispatch, the same config
// struct it gives the CPU kernels plus three `extern "C"` kernels instantiating kernels/hip/sparse_moe_gpu.h;
// this builds that translation unit once per architecture with clang-19 (AMDGPU ELF code objects for gfx*,
// NVPTX assembly for sm_*, and for `--target=emu` a host shared object against kernels/hip/gpu_emulation.h
// with 32- or 64-lane warps) and stores each in a CODE section listed in `Artifact.gpu_code`.
//
//===----------------------------------------------------------------------===//
#ifndef MOEC_CODEGEN_HIP_GPUCODEGEN_H
#define MOEC_CODEGEN_HIP_GPUCODEGEN_H

#include "codegen/Artifact.h"
#include "codegen/KernelCache.h"

#include "llvm/Support/raw_ostream.h"

#include <string>
#include <vector>

namespace moec::codegen {

struct GpuBuild {
  std::vector<std::string> hipArchs, cudaArchs;
  std::vector<std::string> emuArchs; // emu-w32 / emu-w64: host shared objects for moert's emulated device
  std::string clang;      // clang++-19
  std::string dumpDir;    // also write the sources here when set
  std::vector<std::string> sanitizers; // the emulated code's -fsanitize= (CpuOptions::sanitizers)
  KernelCache cache;                   // compiled code kept for reuse (CpuOptions::kernelCache)
};

/// The architectures --hip-arch / --cuda-arch accept.
const std::vector<std::string> &knownHipArchs();
const std::vector<std::string> &knownCudaArchs();
const std::vector<std::string> &knownEmuArchs();

/// Compiles `dispatchSource` (config structs + kernel entry points) for every arch in `build`, adding one
/// CODE section per arch and its `gpu_code` entry to `writer`. False + one line in `error` on failure.
bool compileGpuCode(const GpuBuild &build, const std::string &dispatchSource, ArtifactWriter &writer,
                    std::string &error, llvm::raw_ostream *progress);

} // namespace moec::codegen

#endif // MOEC_CODEGEN_HIP_GPUCODEGEN_H

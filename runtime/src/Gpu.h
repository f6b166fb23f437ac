//===- Gpu.h - libmoert's GPU backends (CUDA driver API, HIP), loaded with dlopen --===//
//
// A model loaded with `device` = GPU / CUDA / HIP runs its fused MoE and linear dispatches on the GPU; every
// other op step stays on libmoert's CPU op kernels. The vendor library (libcuda.so.1 or libamdhip64.so) is
// opened with dlopen at load time, so libmoert builds, links and runs without either; asking for a GPU where
// there is no driver or device is one clear error.
//
// At load: pick the code object for the device (CUDA: the PTX for the device's sm_XY, or the newest one not
// above it, compiled by the driver; HIP: the first AMDGPU code object the runtime accepts), upload every
// weight section a dispatch uses once, allocate each dispatch's zeroed state. Per dispatch call: inputs to
// the device, three or four launches on one stream (kernels/hip/moert_gpu_abi.h), the output back.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_GPU_H
#define MOERT_SRC_GPU_H

#include "moert/moert.h"
#include "runtime/artifact.pb.h"

#include <memory>
#include <string>
#include <vector>

namespace moert::gpu {

class Device;
void destroy(Device *d);
struct DeviceDeleter {
  void operator()(Device *d) const { destroy(d); }
};
using DevicePtr = std::unique_ptr<Device, DeviceDeleter>;

/// Opens the GPU backend `device` (MOERT_DEVICE_GPU: CUDA, else HIP) for artifact `a` (mapped at `map`):
/// loads the code and uploads the dispatches' weights. Returns "" or one error line.
std::string open(int device, const proto::Artifact &a, const std::vector<const proto::Step *> &steps,
                 const unsigned char *map, DevicePtr &out);

/// Runs dispatch `index` on T tokens from host memory (`logits`, `residual` may be null). `gpuMs`, when
/// given, receives the kernels' time measured with device events. Returns "" or one error line.
std::string run(Device &d, int index, int64_t T, const float *input, const float *logits, const float *residual,
                float *output, double *gpuMs);

/// Re-runs dispatch `index`'s kernels `repeats` times back to back on the inputs of its last call (no copies,
/// no host synchronisation between them) and gives the device time per call and the weight bytes one call
/// reads (the chosen experts' fc1/fc2 rows, the shared expert's, the router's). Returns "" or one error line.
std::string timeKernels(Device &d, int index, int repeats, double &usPerCall, double &weightBytes);

/// Whether linear dispatch `index` has GPU kernels (artifacts built before moec had them run it on the CPU).
bool hasLinear(const Device &d, int index);

/// Runs linear dispatch `index` on M rows from host memory (`residual` may be null) into the host buffers
/// `outputs` (one per output, [M][N_j]). Returns "" or one error line.
std::string runLinear(Device &d, int index, int64_t M, const float *input, const float *residual,
                      float *const *outputs, double *gpuMs);

/// As timeKernels, for linear dispatch `index` on the rows of its last call: the device time per call and the
/// bytes of its weights (each read once a call).
std::string timeLinear(Device &d, int index, int repeats, double &usPerCall, double &weightBytes);

/// "CUDA: NVIDIA H100 80GB HBM3 (sm_90)".
std::string describe(const Device &d);

/// For `moert devices`: the device `device` would open, and with `measure` its device-to-device copy
/// bandwidth (GB/s, bytes read + written). Returns "" or one error line.
std::string probe(int device, bool measure, std::string &description);

} // namespace moert::gpu

#endif // MOERT_SRC_GPU_H

//===- Gpu.h - libmoert's GPU backends (CUDA driver API, HIP), loaded with dlopen --===//
//
// A model loaded with `device` = GPU / CUDA / HIP runs its fused MoE, linear and attention dispatches on the
// GPU; every other op step stays on libmoert's CPU op kernels. The vendor library (libcuda.so.1 or
// libamdhip64.so) is opened with dlopen at load time, so libmoert builds, links and runs without either;
// asking for a GPU where there is no driver or device is one clear error.
//
// At load: pick the code object for the device (CUDA: the PTX for the device's sm_XY, or the newest one not
// above it, compiled by the driver; HIP: the first AMDGPU code object the runtime accepts), upload every
// weight section a dispatch uses once, allocate each dispatch's zeroed state. Per dispatch call: launches on
// one stream (kernels/hip/moert_gpu_abi.h) on device copies of its inputs and outputs, which a run's
// Residency keeps: a value a GPU step wrote stays on the device until a host step reads it, so consecutive
// GPU steps (and views such as Reshape between them) pass activations without crossing to the host.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_GPU_H
#define MOERT_SRC_GPU_H

#include "GpuPlan.h"
#include "Ops.h"
#include "kernels/hip/moert_gpu_abi.h"
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

/// One run's device copies of host byte ranges (activations): keyed by the host range a value occupies (its
/// arena slot or heap block, so views share their base's copy), each either current on both sides or newer
/// on the device. The run loop tells it what host steps read (`toHost`) and write (`hostWrote`); GPU steps
/// ask it for device addresses of their inputs (uploaded when no current copy exists) and outputs (the host
/// copy stale until read). A copy of a range in the run's host arena (the memory plan's buffers) sits at the
/// same offset in a device arena of the same size (the device keeps the largest a run gave back for the
/// next, freed when a run needs under half of it); other copies take buffers from the device's pool. Both go
/// back when the run ends.
class Residency;
struct ResidencyDeleter {
  void operator()(Residency *r) const;
};
using ResidencyPtr = std::unique_ptr<Residency, ResidencyDeleter>;
/// A run's residency; `arena` (may be null) the run's host arena of `arenaBytes`.
ResidencyPtr beginRun(Device &d, const void *arena, size_t arenaBytes);
/// Device memory held for activations: arenas (the spare one and those runs hold) and the pool's buffers.
void activationBytes(Device &d, uint64_t &arenas, uint64_t &pool);

/// Before host code reads [p, p + bytes): downloads the parts of it whose device copy is newer than the
/// host's (never bytes outside the range: a dead value's copy may overlap a live value's host bytes there).
/// "" or one error line.
std::string toHost(Residency &r, const void *p, size_t bytes);
/// After host code wrote [p, p + bytes), or before that memory is freed: forgets the device's copies of that
/// range (a copy the write covers in part keeps the rest; buffers no copy uses go back to the pool).
void hostWrote(Residency &r, const void *p, size_t bytes);
/// Whether [p, p + bytes) has a device copy (a GPU step's result not yet read back, or one uploaded).
bool onDevice(Residency &r, const void *p, size_t bytes);
/// Whether some of [p, p + bytes) is newer on the device than on the host (toHost would copy it).
bool deviceNewer(Residency &r, const void *p, size_t bytes);
/// Gathers rows on the device: host range `dst` ([rows.size()][rowBytes]) gets rows `rows[i]` of host range
/// `src` (`srcBytes`), device copy to device copy (src's uploaded first if it has none). "" or one error
/// line.
std::string gatherRows(Device &d, Residency &r, const void *src, size_t srcBytes, void *dst, size_t rowBytes,
                       const std::vector<int64_t> &rows);
/// Bytes moved between host and device so far in this run (uploads of inputs, downloads of outputs).
void traffic(const Residency &r, uint64_t &toDevice, uint64_t &toHostBytes);

/// A session's KV cache kept in device memory between its runs: a device buffer of the host buffer's size and
/// layout ([batch][heads][capacity] rows). Which side holds the newest bytes is tracked here: runs append to
/// the device's and attend over it; the session's own host code (padding moves, growing the buffer) asks for
/// the host's bytes first. Freed before the model (its Device) is.
class CacheCopy;
struct CacheCopyDeleter {
  void operator()(CacheCopy *c) const;
};
using CacheCopyPtr = std::unique_ptr<CacheCopy, CacheCopyDeleter>;
/// Whether the device keeps a session's caches of `dtype` (a proto dtype): f32, bf16 or fp16, in an artifact
/// whose GPU code has the append kernel and attention kernels for every attention dispatch.
bool keepsCaches(const Device &d, int dtype);
/// A device copy for a host cache buffer of `bytes` bytes (its bytes are taken from the host when a run first
/// binds it). "" or one error line (out of device memory).
std::string newCacheCopy(Device &d, size_t bytes, CacheCopyPtr &out);
/// Before the session's host code reads the host buffer `host` (the copy's size): downloads the device's
/// bytes when they are newer. `willWrite`: the host's bytes become the newer ones (uploaded at the next run).
std::string cacheToHost(CacheCopy &c, void *host, bool willWrite);
/// In run `r`: host range [host, host + the copy's bytes) is `c`'s device buffer (the host's bytes uploaded
/// first when they are the newer). When the run ends, `c` learns which side holds the newest bytes (a host
/// step that wrote the range takes the cache back to the host). "" or one error line.
std::string bindCache(Residency &r, CacheCopy &c, const void *host);
/// Appends S new positions to bound cache `c` (host buffer `host`) on the device: `src` (host range of
/// `srcBytes`, f32 [B, heads, S, D], its device copy used) into rows `first[b]` (host values; null: `past`)
/// onwards of each (sequence, head) in `dtype`, zeroing the rows after them up to past + S
/// (moert_gpu_kv_append_args). "" or one error line.
std::string appendCache(Device &d, Residency &r, CacheCopy &c, const void *host, const float *src,
                        size_t srcBytes, const int64_t *first, int64_t B, int64_t heads, int64_t S, int64_t D,
                        int64_t past, int64_t capacity, int dtype);

/// A bound cache `c` (host buffer `host`) as the destination of the op step making its next positions (a
/// rotary embedding of the keys, the values' Transpose): runOp writes the op's [B, heads, S, D] result into
/// rows past .. past + S of each (sequence, head) of the cache's device copy (moert_gpu_cache_dest) instead
/// of the op's output, and the append step that follows launches nothing (`cacheWritten`).
struct CacheWrite {
  CacheCopy *cache = nullptr;
  const void *host = nullptr;
  int64_t heads = 0, capacity = 0, past = 0;
  int dtype = 0; // proto dtype: F32, BF16 or F16
};

/// Runs dispatch `index` on T tokens whose input, logits and residual (null: none) are host ranges the
/// residency maps to device copies; the output's device copy is the new current value of `output`'s range.
/// `gpuMs`, when given, receives the kernels' time measured with device events. Returns "" or one error line.
std::string run(Device &d, Residency &r, int index, int64_t T, const float *input, const float *logits,
                const float *residual, float *output, double *gpuMs);

/// Re-runs dispatch `index`'s kernels `repeats` times back to back on the device buffers of its last call (no
/// copies, no host synchronisation between them; later steps of that run may have reused those buffers, so
/// the routing can differ from the call's) and gives the device time per call and the weight bytes one call
/// reads (the chosen experts' fc1/fc2 rows, the shared expert's, the router's). Returns "" or one error line.
std::string timeKernels(Device &d, int index, int repeats, double &usPerCall, double &weightBytes);

/// Whether linear dispatch `index` has GPU kernels (artifacts built before moec had them run it on the CPU).
bool hasLinear(const Device &d, int index);

/// Runs linear dispatch `index` on M rows (`residual` may be null) into `outputs` (one per output, [M][N_j]),
/// all host ranges the residency maps as `run` does. Returns "" or one error line.
std::string runLinear(Device &d, Residency &r, int index, int64_t M, const float *input,
                      const float *residual, float *const *outputs, double *gpuMs);

/// As timeKernels, for linear dispatch `index` on the rows of its last call: the device time per call and the
/// bytes of its weights (each read once a call).
std::string timeLinear(Device &d, int index, int repeats, double &usPerCall, double &weightBytes);

/// Whether attention dispatch `index` has GPU kernels (artifacts built before moec had them run it on the
/// CPU).
bool hasAttention(const Device &d, int index);

/// Runs attention dispatch `index` on `args` as the CPU kernel takes them (host pointers; exec and scratch
/// unused): query, key, value, mask (may be null) and sinks (may be null) are host ranges of `*Bytes` bytes
/// the residency maps as `run` does, the output's device copy becomes `args.output`'s current bytes
/// (`outBytes`). Keys and values f32, bf16 or fp16. Returns "" or one error line.
std::string runAttention(Device &d, Residency &r, int index, const moert_attention_args &args, size_t qBytes,
                         size_t kBytes, size_t vBytes, size_t maskBytes, size_t sinkBytes, size_t outBytes,
                         double *gpuMs);

/// A MoE, linear or attention dispatch step the device has kernels for (an attention over a session's cache
/// appended in place still runs on the CPU: the run loop decides that one).
bool runsDispatch(const Device &d, const proto::Step &s);
/// The graph-op kernels the device's code has (GpuPlan.h's rules read them).
OpKernels opKernels(const Device &d);
struct OpPlan {
  std::vector<std::vector<int64_t>> outDims; // each output's
  int fused = 0; // 1: moec.Rotary (`rotary`), 2: moec.Norm (`norm`), 3: moec.Embedding (`embedding`),
                 // 4: a reduction or softmax (`reduce`), 5: Conv (`conv`), 6: TopK (`topk`), one launch each;
                 // 0: `launches`
  moert_gpu_rotary_args rotary{};
  moert_gpu_norm_args norm{};
  moert_gpu_reduce_args reduce{};
  moert_gpu_conv_args conv{};
  moert_gpu_topk_args topk{};
  EmbeddingPlan embedding; // its indices checked on the host before the launch
  struct Launch {
    moert_gpu_op_args args{}; // pointers filled at run time
    int a = -1, b = -1;       // the step inputs the launch reads
    int out = 0;              // the output it writes
  };
  std::vector<Launch> launches;
};
/// Plans op step `op` on inputs of dims `in` and dtypes `dtypes` (proto::DType; -1 for an absent input);
/// `host`: each input's host bytes where planOp reads them (its parameters, see opQualifies), else null.
/// False when the device kernel cannot run it (a rank above MOERT_GPU_OP_RANK, shapes that do not broadcast,
/// an axis out of range, an index outside the axis, ...): the host runs it then, and reports what is wrong.
bool planOp(const proto::OpStep &op, const std::vector<std::vector<int64_t>> &in,
            const std::vector<int> &dtypes, const std::vector<const void *> &host, OpPlan &plan);
/// Runs a planned op on host ranges (each input's bytes, null for a parameter; each output's) through the
/// residency. With `dest` (a moec.Rotary writing [B, H, S, D] rows, or a one-launch copy such as a
/// Transpose, whose output has that layout) the result goes into that session cache's device copy, and the
/// output's host range gets no device copy.
/// `with`: another moec.Rotary (plan is one too) in the same launch: the queries' and the keys' rotary
/// embeddings of a layer, one launch (moert_gpu_rotary_launch).
struct OpRun {
  const OpPlan &plan;
  const std::vector<std::pair<const void *, size_t>> &inputs;
  const std::vector<std::pair<void *, size_t>> &outputs;
  const CacheWrite *dest = nullptr;
};
std::string runOp(Device &d, Residency &r, const OpPlan &plan,
                  const std::vector<std::pair<const void *, size_t>> &inputs,
                  const std::vector<std::pair<void *, size_t>> &outputs, const CacheWrite *dest = nullptr,
                  const OpRun *with = nullptr);

/// A run's kernel launches go to the device as CUDA / HIP graphs (Gpu.cpp, Device::flush): how they went.
struct GraphStats {
  uint64_t graphs = 0;  // graphs launched
  uint64_t builds = 0;  // graphs built (none in their place yet, or one launching other kernels)
  uint64_t updates = 0; // nodes updated in place (their arguments or grid changed since the last launch)
  uint64_t staged = 0;  // uploads staged into graphs
};
/// "on (N kernels a graph at most)" or "off (why)"; the counts so far in `stats`.
std::string graphs(Device &d, GraphStats &stats);

/// "CUDA: NVIDIA H100 80GB HBM3 (sm_90)".
std::string describe(const Device &d);

/// For `moert devices`: the device `device` would open, and with `measure` its device-to-device copy
/// bandwidth (GB/s, bytes read + written). Returns "" or one error line.
std::string probe(int device, bool measure, std::string &description);

} // namespace moert::gpu

#endif // MOERT_SRC_GPU_H

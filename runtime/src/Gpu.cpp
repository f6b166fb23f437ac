//===- Gpu.cpp - libmoert's GPU backends over the CUDA driver API and HIP ------===//
#include "Gpu.h"
#include "Model.h"
#include "ops/OpKernel.h"

#include "kernels/hip/moert_gpu_abi.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace moert::gpu {
namespace {

namespace pb = moert::proto;
using Ptr = uint64_t; // a device address (CUdeviceptr; hipDeviceptr_t / void * on x86-64)

// The driver entry points moert uses. The CUDA driver API and HIP's module API have the same shapes; where
// they differ (stream and event creation, error strings) the table holds the form both have.
struct Driver {
  bool hip = false;
  bool emu = false; // the host emulator (namespace emu below): HIP's shapes, host memory, synchronous
  void *lib = nullptr;
  int (*init)(unsigned) = nullptr;
  int (*deviceGet)(int *, int) = nullptr;
  int (*deviceGetName)(char *, int, int) = nullptr;
  int (*deviceGetAttribute)(int *, int, int) = nullptr;
  int (*primaryCtxRetain)(void **, int) = nullptr; // CUDA only
  int (*ctxSetCurrent)(void *) = nullptr;          // CUDA only
  int (*setDevice)(int) = nullptr;                 // HIP only
  int (*moduleLoadData)(void **, const void *) = nullptr;
  int (*moduleGetFunction)(void **, void *, const char *) = nullptr;
  int (*moduleUnload)(void *) = nullptr;
  int (*memAlloc)(Ptr *, size_t) = nullptr;
  int (*memFree)(Ptr) = nullptr;
  int (*htod)(Ptr, const void *, size_t, void *) = nullptr;
  int (*dtoh)(void *, Ptr, size_t, void *) = nullptr;
  int (*dtod)(Ptr, Ptr, size_t, void *) = nullptr;
  int (*memsetD8)(Ptr, unsigned char, size_t, void *) = nullptr;
  int (*launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **,
                void **) = nullptr;
  int (*streamCreate)(void **, unsigned) = nullptr;
  int (*streamSync)(void *) = nullptr;
  int (*streamDestroy)(void *) = nullptr;
  int (*eventCreate)(void **, unsigned) = nullptr;
  int (*eventRecord)(void *, void *) = nullptr;
  int (*eventSync)(void *) = nullptr;
  int (*eventElapsed)(float *, void *, void *) = nullptr;
  int (*eventDestroy)(void *) = nullptr;
  // Optional (graphs: Device::flush; pinned staging memory): null where the driver lacks them.
  int (*graphCreate)(void **, unsigned) = nullptr;
  int (*graphAddKernelNode)(void **, void *, void *const *, size_t, const void *) = nullptr;
  int (*graphInstantiate)(void **, void *, unsigned long long) = nullptr;
  int (*graphExecKernelNodeSetParams)(void *, void *, const void *) = nullptr;
  int (*graphLaunch)(void *, void *) = nullptr;
  int (*graphExecDestroy)(void *) = nullptr;
  int (*graphDestroy)(void *) = nullptr;
  int (*hostAlloc)(void **, size_t, unsigned) = nullptr;
  int (*hostFree)(void *) = nullptr;
  int (*cuErrorString)(int, const char **) = nullptr;
  const char *(*hipErrorString)(int) = nullptr;

  std::string name() const { return emu ? "GPU emulator" : hip ? "HIP" : "CUDA"; }
  std::string errorText(int rc) const {
    const char *s = nullptr;
    if (emu)
      s = rc == 2 ? "out of device memory" : rc == 3 ? "device lost (MOERT_EMU_FAIL_LAUNCH)" : "not found";
    else if (hip && hipErrorString)
      s = hipErrorString(rc);
    else if (!hip && cuErrorString)
      cuErrorString(rc, &s);
    return (s ? std::string(s) : "error") + " (" + std::to_string(rc) + ")";
  }
};

template <class F> bool sym(void *lib, const char *name, F &out) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  return out != nullptr;
}

/// The emulated device's driver: device memory is host memory, copies are memcpy, a launch calls the
/// kernel's moert_gpu_emu_entry (which runs the whole grid before returning), events read the host clock.
/// Error codes: 1 not found, 2 out of device memory, 3 device lost.
///
/// Test knobs, read from the environment when the device opens, for the failures a real GPU can have:
/// MOERT_EMU_MEMORY=BYTES gives the device that much memory (an allocation past it fails as out of memory);
/// MOERT_EMU_FAIL_LAUNCH=N makes the Nth kernel launch fail, and every device call after it, as a device lost
/// mid-run does; MOERT_EMU_REFUSE_GRAPHS=1 refuses to build a graph, as a driver without graphs of module
/// kernels would (libmoert then turns graphs off and launches directly); MOERT_EMU_STALE_GRAPH_UPDATES=1
/// accepts node updates and ignores them, as a faulty driver might (libmoert's self-test at load must
/// notice). And one for measuring libmoert's own cost: MOERT_EMU_SKIP_KERNELS=1 counts launches without
/// running them (results are garbage; the time left is the host's planning, bookkeeping and copies), and at
/// exit prints the launches to stderr.
namespace emu {
using Clock = std::chrono::steady_clock;
int stream = 0; // the one stream's handle: every call is synchronous
struct Faults {
  std::mutex mutex;
  std::map<Ptr, size_t> sizes;
  size_t used = 0, capacity = SIZE_MAX;
  long long launches = 0, failAt = -1;
  bool lost = false, skip = false, refuseGraphs = false, staleUpdates = false;
  bool quiet = false; // libmoert's own check at load (Device::graphSelfTest): run, not counted, not failed
  ~Faults() {
    if (skip)
      std::fprintf(stderr, "moert: MOERT_EMU_SKIP_KERNELS: %lld kernel launches, none run\n", launches);
  }
};
Faults &faults() {
  static Faults f;
  return f;
}
bool lost() {
  std::lock_guard<std::mutex> lock(faults().mutex);
  return faults().lost;
}
bool refusesGraphs() {
  std::lock_guard<std::mutex> lock(faults().mutex);
  return faults().refuseGraphs;
}
bool staleUpdates() {
  std::lock_guard<std::mutex> lock(faults().mutex);
  return faults().staleUpdates;
}
int init(unsigned) { return 0; }
int deviceGet(int *dev, int) { return *dev = 0; }
int deviceGetName(char *name, int length, int) {
  std::snprintf(name, size_t(length), "host emulator of a GPU (kernels/hip/gpu_emulation.h)");
  return 0;
}
int setDevice(int) { return 0; }
int moduleLoadData(void **, const void *) { return 1; } // loadCode loads its shared object
int moduleGetFunction(void **fn, void *module, const char *name) {
  return (*fn = dlsym(module, name)) ? 0 : 1;
}
int moduleUnload(void *module) { return dlclose(module) == 0 ? 0 : 1; }
int memAlloc(Ptr *p, size_t bytes) {
  Faults &f = faults();
  std::lock_guard<std::mutex> lock(f.mutex);
  bytes = (bytes + 255) / 256 * 256;
  if (f.lost)
    return 3;
  void *q = bytes <= f.capacity - f.used ? std::aligned_alloc(256, bytes) : nullptr;
  if (!q)
    return 2;
  *p = reinterpret_cast<Ptr>(q);
  f.sizes[*p] = bytes;
  f.used += bytes;
  return 0;
}
int memFree(Ptr p) {
  Faults &f = faults();
  std::lock_guard<std::mutex> lock(f.mutex);
  if (auto it = f.sizes.find(p); it != f.sizes.end()) {
    f.used -= it->second;
    f.sizes.erase(it);
  }
  std::free(reinterpret_cast<void *>(p));
  return 0;
}
int htod(Ptr to, const void *from, size_t bytes, void *) {
  return lost() ? 3 : (std::memcpy(reinterpret_cast<void *>(to), from, bytes), 0);
}
int dtoh(void *to, Ptr from, size_t bytes, void *) {
  return lost() ? 3 : (std::memcpy(to, reinterpret_cast<void *>(from), bytes), 0);
}
int dtod(Ptr to, Ptr from, size_t bytes, void *) {
  return lost() ? 3 : (std::memmove(reinterpret_cast<void *>(to), reinterpret_cast<void *>(from), bytes), 0);
}
int memsetD8(Ptr to, unsigned char v, size_t bytes, void *) {
  return lost() ? 3 : (std::memset(reinterpret_cast<void *>(to), v, bytes), 0);
}
int launch(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned, unsigned, unsigned, void *,
           void **params, void **) {
  bool run = true;
  {
    Faults &f = faults();
    std::lock_guard<std::mutex> lock(f.mutex);
    if (f.lost || (!f.quiet && ++f.launches == f.failAt))
      return f.lost = true, 3;
    run = f.quiet || !f.skip;
  }
  if (run)
    reinterpret_cast<moert_gpu_emu_entry>(fn)(gx, gy, gz, bx, params);
  return 0;
}
/// While libmoert checks its graphs at load: launches run (even with MOERT_EMU_SKIP_KERNELS) and are not
/// counted (MOERT_EMU_FAIL_LAUNCH counts the model's).
void quiet(bool on) {
  std::lock_guard<std::mutex> lock(faults().mutex);
  faults().quiet = on;
}
int streamCreate(void **s, unsigned) { return *s = &stream, 0; }
int streamSync(void *) { return lost() ? 3 : 0; }
int streamDestroy(void *) { return 0; }
int eventCreate(void **e, unsigned) { return *e = new Clock::time_point(), 0; }
int eventRecord(void *e, void *) { return *static_cast<Clock::time_point *>(e) = Clock::now(), 0; }
int eventSync(void *) { return 0; }
int eventElapsed(float *ms, void *a, void *b) {
  *ms = std::chrono::duration<float, std::milli>(*static_cast<Clock::time_point *>(b) -
                                                 *static_cast<Clock::time_point *>(a))
            .count();
  return 0;
}
int eventDestroy(void *e) { return delete static_cast<Clock::time_point *>(e), 0; }

void open(Driver &d) {
  {
    Faults &f = faults();
    std::lock_guard<std::mutex> lock(f.mutex);
    const char *memory = std::getenv("MOERT_EMU_MEMORY"), *fail = std::getenv("MOERT_EMU_FAIL_LAUNCH");
    f.capacity = memory ? size_t(std::strtoull(memory, nullptr, 10)) : SIZE_MAX;
    f.failAt = fail ? std::strtoll(fail, nullptr, 10) : -1;
    f.launches = 0, f.lost = false;
    auto flag = [](const char *name) {
      const char *v = std::getenv(name);
      return v && *v && std::strcmp(v, "0") != 0;
    };
    f.skip = flag("MOERT_EMU_SKIP_KERNELS");
    f.refuseGraphs = flag("MOERT_EMU_REFUSE_GRAPHS");
    f.staleUpdates = flag("MOERT_EMU_STALE_GRAPH_UPDATES");
  }
  d.emu = true, d.hip = true; // HIP's shapes: no context; setDevice makes the device current
  d.init = init, d.deviceGet = deviceGet, d.deviceGetName = deviceGetName, d.setDevice = setDevice;
  d.moduleLoadData = moduleLoadData, d.moduleGetFunction = moduleGetFunction, d.moduleUnload = moduleUnload;
  d.memAlloc = memAlloc, d.memFree = memFree, d.htod = htod, d.dtoh = dtoh, d.dtod = dtod,
  d.memsetD8 = memsetD8;
  d.launch = launch, d.streamCreate = streamCreate, d.streamSync = streamSync,
  d.streamDestroy = streamDestroy;
  d.eventCreate = eventCreate, d.eventRecord = eventRecord, d.eventSync = eventSync;
  d.eventElapsed = eventElapsed, d.eventDestroy = eventDestroy;
}
} // namespace emu

/// Opens the vendor library; "" or why not.
std::string openDriver(bool hip, Driver &d) {
  d.hip = hip;
  const char *names[] = {hip ? "libamdhip64.so" : "libcuda.so.1", hip ? "libamdhip64.so.6" : "libcuda.so",
                         hip ? "libamdhip64.so.5" : nullptr};
  std::string why;
  for (const char *n : names) {
    if (!n || d.lib)
      continue;
    d.lib = dlopen(n, RTLD_NOW | RTLD_LOCAL);
    if (!d.lib && why.empty())
      why = dlerror();
  }
  if (!d.lib)
    return "no " + d.name() + " driver on this machine (" + why + ")";
  bool ok;
  if (!hip) {
    ok = sym(d.lib, "cuInit", d.init) && sym(d.lib, "cuDeviceGet", d.deviceGet) &&
         sym(d.lib, "cuDeviceGetName", d.deviceGetName) && sym(d.lib, "cuDeviceGetAttribute", d.deviceGetAttribute) &&
         sym(d.lib, "cuDevicePrimaryCtxRetain", d.primaryCtxRetain) && sym(d.lib, "cuCtxSetCurrent", d.ctxSetCurrent) &&
         sym(d.lib, "cuModuleLoadData", d.moduleLoadData) && sym(d.lib, "cuModuleGetFunction", d.moduleGetFunction) &&
         sym(d.lib, "cuModuleUnload", d.moduleUnload) && sym(d.lib, "cuMemAlloc_v2", d.memAlloc) &&
         sym(d.lib, "cuMemFree_v2", d.memFree) && sym(d.lib, "cuMemcpyHtoDAsync_v2", d.htod) &&
         sym(d.lib, "cuMemcpyDtoHAsync_v2", d.dtoh) && sym(d.lib, "cuMemcpyDtoDAsync_v2", d.dtod) &&
         sym(d.lib, "cuMemsetD8Async", d.memsetD8) && sym(d.lib, "cuLaunchKernel", d.launch) &&
         sym(d.lib, "cuStreamCreate", d.streamCreate) && sym(d.lib, "cuStreamSynchronize", d.streamSync) &&
         sym(d.lib, "cuStreamDestroy_v2", d.streamDestroy) && sym(d.lib, "cuEventCreate", d.eventCreate) &&
         sym(d.lib, "cuEventRecord", d.eventRecord) && sym(d.lib, "cuEventSynchronize", d.eventSync) &&
         sym(d.lib, "cuEventElapsedTime", d.eventElapsed) && sym(d.lib, "cuEventDestroy_v2", d.eventDestroy) &&
         sym(d.lib, "cuGetErrorString", d.cuErrorString);
  } else {
    ok = sym(d.lib, "hipInit", d.init) && sym(d.lib, "hipDeviceGet", d.deviceGet) &&
         sym(d.lib, "hipDeviceGetName", d.deviceGetName) && sym(d.lib, "hipSetDevice", d.setDevice) &&
         sym(d.lib, "hipModuleLoadData", d.moduleLoadData) && sym(d.lib, "hipModuleGetFunction", d.moduleGetFunction) &&
         sym(d.lib, "hipModuleUnload", d.moduleUnload) && sym(d.lib, "hipMalloc", d.memAlloc) &&
         sym(d.lib, "hipFree", d.memFree) && sym(d.lib, "hipMemcpyHtoDAsync", d.htod) &&
         sym(d.lib, "hipMemcpyDtoHAsync", d.dtoh) && sym(d.lib, "hipMemcpyDtoDAsync", d.dtod) &&
         sym(d.lib, "hipMemsetD8Async", d.memsetD8) && sym(d.lib, "hipModuleLaunchKernel", d.launch) &&
         sym(d.lib, "hipStreamCreateWithFlags", d.streamCreate) && sym(d.lib, "hipStreamSynchronize", d.streamSync) &&
         sym(d.lib, "hipStreamDestroy", d.streamDestroy) && sym(d.lib, "hipEventCreateWithFlags", d.eventCreate) &&
         sym(d.lib, "hipEventRecord", d.eventRecord) && sym(d.lib, "hipEventSynchronize", d.eventSync) &&
         sym(d.lib, "hipEventElapsedTime", d.eventElapsed) && sym(d.lib, "hipEventDestroy", d.eventDestroy) &&
         sym(d.lib, "hipGetErrorString", d.hipErrorString);
  }
  if (ok) { // graphs and pinned memory: optional (each missing one leaves graphs off or staging pageable)
    const char *v2 = hip ? "" : "_v2";
    const std::string p = hip ? "hip" : "cu";
    auto opt = [&](const std::string &name, const char *suffix, auto &out) {
      if (!sym(d.lib, (name + suffix).c_str(), out))
        sym(d.lib, name.c_str(), out);
    };
    opt(p + "GraphCreate", "", d.graphCreate);
    opt(p + "GraphAddKernelNode", v2, d.graphAddKernelNode); // v2 layout: v1's fields, then two more
    opt(p + "GraphInstantiateWithFlags", "", d.graphInstantiate);
    opt(p + "GraphExecKernelNodeSetParams", v2, d.graphExecKernelNodeSetParams);
    opt(p + "GraphLaunch", "", d.graphLaunch);
    opt(p + "GraphExecDestroy", "", d.graphExecDestroy);
    opt(p + "GraphDestroy", "", d.graphDestroy);
    opt(hip ? "hipHostMalloc" : "cuMemHostAlloc", "", d.hostAlloc);
    opt(hip ? "hipHostFree" : "cuMemFreeHost", "", d.hostFree);
  }
  if (!ok) {
    dlclose(d.lib);
    d.lib = nullptr;
    return "the " + d.name() + " driver library lacks an entry point moert needs";
  }
  return "";
}

struct Kernels {
  void *logits = nullptr, *route = nullptr, *up = nullptr, *down = nullptr; // logits: linear routers only
  void *upMma = nullptr, *downMma = nullptr; // up and down on matrix cores (moert_gpu_moe_launches::mma)
  void *predict = nullptr;                                                  // predicted layers only
  moert_gpu_shape shape{};
  Ptr weights[MOERT_GPU_SLOTS] = {};
  uint64_t weightBytes[MOERT_GPU_SLOTS] = {};
  Ptr state = 0;
  moert_gpu_args last{}; // the last call's arguments (device addresses), for timeKernels
};

struct LinearKernels {
  void *norm = nullptr, *gemv = nullptr, *reduce = nullptr, *gemm = nullptr; // null: no GPU kernels
  int64_t k = 0, n = 0;
  int qbits = 0;
  bool fusedNorm = false;       // the `norm` kernel runs first
  std::vector<int64_t> columns; // N_j per output
  Ptr weights[MOERT_LIN_SLOTS] = {};
  uint64_t weightBytes = 0;     // all its weight sections
  moert_gpu_linear_args last{}; // the last call's arguments (device addresses), for timeLinear
};

struct AttentionKernels {
  void *attend[3] = {}, *merge = nullptr; // per key/value type (f32, bf16, fp16); null: no GPU kernels
  int64_t hkv = 0, g = 0, dv = 0;         // key/value heads, query heads per key/value head, value dim
};

} // namespace

class Device {
public:
  Driver drv;
  int dev = 0;
  void *ctx = nullptr, *stream = nullptr, *module = nullptr, *ev0 = nullptr, *ev1 = nullptr;
  std::string label, arch;
  int warps = MOERT_GPU_BLOCK / 32; // warps per block: wave64 on CDNA (gfx9*) has half as many
  std::vector<Kernels> dispatches;
  std::vector<LinearKernels> linears;
  std::vector<AttentionKernels> attentions;
  void *strided = nullptr; // the graph ops' kernels (null: code from before them; graph ops on the host)
  void *reduce = nullptr;  // reductions and softmax
  void *conv = nullptr;
  void *topk = nullptr;
  void *rotary = nullptr, *norm = nullptr; // moec.Rotary's and moec.Norm's (null: code from before them)
  void *embedding = nullptr;               // moec.Embedding's (null: code from before it)
  void *kvAppend = nullptr; // a session cache's append (null: code from before it; caches stay on the host)
  int codeFd = -1;         // the emulated device's code: its memfd, closed after the module is
  std::vector<Ptr> allocations;
  // Calls are serialised by `mutex`; every device operation goes to the one stream, in order, so a buffer
  // handed back to the pool may be reused by the next operation at once.
  std::mutex mutex;
  Ptr scratch = 0; // grown as needed
  size_t scratchBytes = 0;
  std::multimap<size_t, Ptr> pool; // free activation buffers by capacity (runs' Residency copies)
  size_t poolBytes = 0;            // the capacities of every buffer the pool made (free or in use)
  // The device arena a run's memory-planned values take (a mirror of its host arena, Residency); the largest
  // one a finished run gave back is kept for the next run, as the host keeps its spare arena.
  Ptr spareArena = 0;
  size_t spareArenaBytes = 0, arenaBytes = 0; // arenaBytes: the spare's and those runs hold
  // The artifact's mapping, and the device copies of constants in it a graph op read (each uploaded once,
  // kept for the model's life: the mapping is read-only): host start -> (host end, device address).
  uintptr_t mapLo = 0, mapHi = 0;
  std::map<uintptr_t, std::pair<uintptr_t, Ptr>> constants;

  /// A buffer of at least `bytes` from the pool (one at most twice that), else a new one.
  std::string take(size_t bytes, Ptr &p, size_t &capacity) {
    bytes = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    auto it = pool.lower_bound(bytes);
    if (it != pool.end() && it->first <= 2 * bytes) {
      capacity = it->first, p = it->second;
      pool.erase(it);
      return "";
    }
    capacity = bytes;
    std::string e = alloc(bytes, p);
    if (e.empty())
      poolBytes += bytes;
    return e;
  }
  /// Back to the pool, first in line among those of its capacity (the next run's same value takes the same
  /// buffer: a graph's arguments stay the same).
  void give(Ptr p, size_t capacity) { pool.emplace_hint(pool.lower_bound(capacity), capacity, p); }
  /// Frees `p`, after the recorded kernels (which may use it) unless `unused` says none does.
  void free(Ptr p, bool unused = false) {
    if (!unused)
      flush(); // (a failure here fails the next call too: the device is lost)
    drv.memFree(p);
    allocations.erase(std::find(allocations.begin(), allocations.end(), p));
  }
  /// A device arena of at least `bytes` for a run: the spare one when it is large enough, else a new one
  /// (0 when that cannot be allocated: the run's values then take pooled buffers).
  Ptr takeArena(size_t bytes, size_t &capacity) {
    Ptr p = 0;
    if (spareArena && spareArenaServes(spareArenaBytes, bytes)) {
      std::swap(p, spareArena), capacity = spareArenaBytes, spareArenaBytes = 0;
      return p;
    }
    if (spareArena) // too small for this run's plan, or far too large: freed before a new one is made (no
                    // recorded kernel uses it: the run that gave it back sent its own)
      free(spareArena, true), arenaBytes -= spareArenaBytes, spareArena = 0, spareArenaBytes = 0;
    if (!alloc(bytes, p).empty())
      return 0;
    arenaBytes += capacity = bytes;
    return p;
  }
  /// A run's arena back: kept as the spare when it is the largest, else freed.
  void giveArena(Ptr p, size_t capacity) {
    if (capacity > spareArenaBytes)
      std::swap(p, spareArena), std::swap(capacity, spareArenaBytes);
    if (p)
      free(p), arenaBytes -= capacity;
  }

  std::string check(int rc, const char *what) const {
    return rc == 0 ? "" : drv.name() + " " + what + " failed: " + drv.errorText(rc);
  }
  std::string alloc(size_t bytes, Ptr &p) {
    if (int rc = drv.memAlloc(&p, std::max<size_t>(bytes, 256)))
      return drv.name() + ": cannot allocate " + std::to_string(bytes) + " bytes of device memory: " + drv.errorText(rc);
    allocations.push_back(p);
    return "";
  }
  std::string grow(Ptr &p, size_t &have, size_t want) {
    if (want <= have)
      return "";
    if (p)
      free(p);
    p = 0, have = 0;
    std::string e = alloc(want, p);
    if (e.empty())
      have = want;
    return e;
  }

  /// Driver, device, context, stream for `device` (MOERT_DEVICE_CUDA, _HIP or _EMU).
  std::string start(int device) {
    if (device == MOERT_DEVICE_EMU)
      emu::open(drv);
    else if (std::string e = openDriver(device == MOERT_DEVICE_HIP, drv); !e.empty())
      return e;
    const bool hip = drv.hip;
    if (int rc = drv.init(0))
      return "no usable " + drv.name() + " device (initialisation: " + drv.errorText(rc) + ")";
    if (int rc = drv.deviceGet(&dev, 0))
      return "no " + drv.name() + " device (" + drv.errorText(rc) + ")";
    char name[256] = {};
    drv.deviceGetName(name, sizeof name - 1, dev);
    if (hip) {
      if (std::string e = check(drv.setDevice(dev), "hipSetDevice"); !e.empty())
        return e;
    } else {
      int major = 0, minor = 0;
      drv.deviceGetAttribute(&major, 75, dev); // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
      drv.deviceGetAttribute(&minor, 76, dev); // ..._MINOR
      arch = "sm_" + std::to_string(major) + std::to_string(minor);
      if (std::string e = check(drv.primaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain"); !e.empty())
        return e;
      if (std::string e = check(drv.ctxSetCurrent(ctx), "cuCtxSetCurrent"); !e.empty())
        return e;
    }
    label = drv.name() + ": " + name;
    if (std::string e = check(drv.streamCreate(&stream, 1 /* non-blocking */), "stream creation"); !e.empty())
      return e;
    if (std::string e = check(drv.eventCreate(&ev0, 0), "event creation"); !e.empty())
      return e;
    return check(drv.eventCreate(&ev1, 0), "event creation");
  }

  /// Launches `fn` with argument `args` (every kernel takes one struct by value) on a (x, y, z) grid of
  /// MOERT_GPU_BLOCK-thread blocks on the stream, or records it for the run's next graph; "" or one error
  /// line.
  template <class T>
  std::string launch(void *fn, int64_t x, int64_t y, int64_t z, const T &args, const char *what) {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= alignof(uint64_t), "a kernel argument");
    if (!recording || !graphNodes) {
      void *params[] = {const_cast<T *>(&args)};
      return check(drv.launch(fn, unsigned(x), unsigned(y), unsigned(z), MOERT_GPU_BLOCK, 1, 1, 0, stream,
                              params, nullptr),
                   what);
    }
    Node n{fn,
           {unsigned(x), unsigned(y), unsigned(z)},
           uint32_t(pending.params.size()),
           uint32_t(sizeof(T)),
           what};
    pending.params.resize(pending.params.size() + (sizeof(T) + 7) / 8);
    std::memcpy(pending.params.data() + n.at, &args, sizeof(T));
    pending.nodes.push_back(n);
    return pending.nodes.size() >= graphNodes ? flush() : "";
  }

  // ---- graphs: a run's launches recorded and replayed as CUDA / HIP graphs --------------------------------
  // While a run is open (Residency), kernel launches and small uploads are recorded (`pending`) instead of
  // issued, up to graphNodes of them; then, or before anything that needs the stream's work done or a
  // buffer freed (a copy to the host, a synchronisation, an event, a free, the run's end), they go to the
  // device as one graph. The k-th graph of a run reuses the k-th of the run before when it launches the same
  // kernels in the same order, the nodes whose arguments or grid changed updated in place (a decode step
  // repeats the one before it but for its cache lengths and positions), else is built anew. An upload is
  // copied into a staging slot at record time, to the slot's device mirror by one copy before its graph, and
  // to its place by a moert_gpu_op_copy node among the kernels. MOERT_GPU_GRAPHS=N sets the kernels per graph
  // (0: every launch direct, as with code from before moert_gpu_op_copy).
  struct Node {
    void *fn;
    unsigned grid[3];
    uint32_t at, size; // its argument's bytes: params[at ..] (8-byte words), `size` bytes
    const char *what;
  };
  struct Recording {
    std::vector<Node> nodes;
    std::vector<uint64_t> params;
  };
  /// Whether node `a` of `ra` and node `b` of `rb` launch on the same grid with the same argument bytes.
  static bool same(const Recording &ra, const Node &a, const Recording &rb, const Node &b) {
    return a.size == b.size && std::equal(a.grid, a.grid + 3, b.grid) &&
           std::memcmp(ra.params.data() + a.at, rb.params.data() + b.at, a.size) == 0;
  }
  static constexpr int kSlots = 4; // staging slots, used in turn by the graphs with uploads
  static constexpr size_t kSlotBytes = size_t(1) << 20; // an upload over a quarter of it goes directly
  struct Slot {
    unsigned char *host = nullptr; // pinned where the driver has it (then `done` says when it is free again)
    bool pinned = false, busy = false;
    Ptr dev = 0;
    void *done = nullptr;
  };
  struct Exec {
    void *graph = nullptr, *exec = nullptr; // the driver's (none on the emulated device)
    std::vector<void *> handles;            // its kernel nodes, in order
    Recording nodes;                        // what it launches now
  };
  Recording pending, sending; // (sending: the one flush sends, kept for its buffers)
  size_t stageUsed = 0;       // bytes of slot `slot` the pending uploads took
  int slot = -1;              // the staging slot of the pending uploads (-1: none yet)
  Slot slots[kSlots];
  // Graphs by the kernels they launch (a hash of the sequence), then by their turn among those in a run: a
  // flush out of the usual place (a buffer freed) makes a graph of its own without moving the others.
  std::unordered_map<uint64_t, std::vector<Exec>> execs;
  std::unordered_map<uint64_t, size_t> turns; // this run's graphs so far, by hash
  size_t graphsThisRun = 0, execCount = 0;
  int recording = 0;     // runs open
  size_t graphNodes = 0; // kernels a graph (0: graphs off)
  std::string graphsOff; // why graphs are off (empty while on)
  void *copy = nullptr;  // moert_gpu_op_copy
  GraphStats stats;

  /// Graphs on unless the environment, the code or the driver says no (after the code is loaded).
  void startGraphs() {
    const char *env = std::getenv("MOERT_GPU_GRAPHS");
    const long n = env && *env ? std::strtol(env, nullptr, 10) : 16;
    graphNodes = 0;
    if (n <= 0)
      graphsOff = "off (MOERT_GPU_GRAPHS=" + std::string(env) + ")";
    else if (!copy)
      graphsOff = "off (the GPU code predates moert_gpu_op_copy: compile the model again)";
    else if (!drv.emu && (!drv.graphCreate || !drv.graphAddKernelNode || !drv.graphInstantiate ||
                          !drv.graphExecKernelNodeSetParams || !drv.graphLaunch || !drv.graphExecDestroy ||
                          !drv.graphDestroy))
      graphsOff = "off (the " + drv.name() + " driver has no graph API)";
    else
      graphNodes = size_t(std::min<long>(n, 4096)), graphsOff.clear();
    if (graphNodes)
      graphSelfTest();
  }
  /// Graphs checked before a run uses them: two uploads and a copy between device buffers, as one graph, its
  /// result read back; then the same graph with other bytes and the copy's source changed (its nodes updated
  /// in place), read back again. A driver that gets either wrong (or refuses: graphs go off in replay) leaves
  /// graphs off, every launch direct; a failing device is left for the first run to report.
  void graphSelfTest() {
    constexpr size_t n = 64;
    Ptr buf = 0;
    if (!alloc(3 * 256, buf).empty())
      return;
    if (drv.emu)
      emu::quiet(true);
    std::string why;
    for (int round = 0; round < 2 && why.empty() && graphNodes; ++round) { // each round as a run of its own
      beginRecording();
      unsigned char a[n], b[n], got[n] = {};
      for (size_t i = 0; i < n; ++i)
        a[i] = uint8_t(i * 7 + 1 + round * 13), b[i] = uint8_t(250 - i * 3 - round * 5);
      moert_gpu_copy_args c{reinterpret_cast<const void *>(buf + (round ? 256 : 0)),
                            reinterpret_cast<void *>(buf + 512), int64_t(n)};
      if ((why = upload(buf, a, n, "graph self-test")).empty() &&
          (why = upload(buf + 256, b, n, "graph self-test")).empty() &&
          (why = launch(copy, moert_gpu_copy_blocks(n), 1, 1, c, "graph self-test")).empty() &&
          (why = download(got, buf + 512, n, "graph self-test")).empty() &&
          std::memcmp(got, round ? b : a, n) != 0)
        why = std::string(round ? "an updated" : "a") + " graph's copies gave other bytes";
      endRecording(); // (nothing left to send: the copy back sent it)
    }
    stats = GraphStats{}; // the counts are the model's runs'
    if (drv.emu)
      emu::quiet(false);
    free(buf);
    if (!why.empty() && graphNodes)
      dropGraphs(true, "off (self-test at load: " + why + ")");
    else
      dropGraphs(false, "");
  }
  /// A run opens / ends (its graphs launched).
  void beginRecording() { ++recording; }
  std::string endRecording() {
    std::string e = flush();
    if (--recording == 0) {
      graphsThisRun = 0;
      for (auto &turn : turns)
        turn.second = 0;
    }
    return e;
  }

  /// An upload of host bytes [src, src + bytes) to `dst`: recorded (staged) while graphs are on, else
  /// issued after the recorded work.
  std::string upload(Ptr dst, const void *src, size_t bytes, const char *what) {
    if (!bytes)
      return "";
    if (recording && graphNodes && bytes <= kSlotBytes / 4) {
      if (stageUsed + bytes > kSlotBytes)
        if (std::string e = flush(); !e.empty())
          return e;
      if (stageUsed == 0) { // the graph's turn in the run picks the slot (the same one step after step, so
                            // its copies' sources do not change); its last copy must be done first
        slot = int(graphsThisRun % kSlots);
        if (std::string e = stagingSlot(slots[slot]); !e.empty())
          return e;
      }
      Slot &sl = slots[slot];
      if (sl.host) {
        std::memcpy(sl.host + stageUsed, src, bytes);
        moert_gpu_copy_args a{reinterpret_cast<const void *>(sl.dev + stageUsed),
                              reinterpret_cast<void *>(dst), int64_t(bytes)};
        stageUsed += (bytes + 255) / 256 * 256;
        ++stats.staged;
        return launch(copy, moert_gpu_copy_blocks(int64_t(bytes)), 1, 1, a, what);
      } // (no memory for a staging slot: this upload goes directly, as a large one does)
    }
    if (std::string e = flush(); !e.empty())
      return e;
    return check(drv.htod(dst, src, bytes, stream), what);
  }
  /// A copy of device bytes to the host, waited for (after the recorded work).
  std::string download(void *dst, Ptr src, size_t bytes, const char *what) {
    std::string e = flush();
    if (e.empty())
      e = check(drv.dtoh(dst, src, bytes, stream), what);
    return e.empty() ? sync(what) : e;
  }
  /// Waits for everything issued and recorded.
  std::string sync(const char *what) {
    std::string e = flush();
    return e.empty() ? check(drv.streamSync(stream), what) : e;
  }
  /// Records event `ev` after everything issued and recorded.
  std::string event(void *ev) {
    std::string e = flush();
    return e.empty() ? check(drv.eventRecord(ev, stream), "event") : e;
  }

  /// Slot `sl` ready for new bytes: its buffers made on first use, its last copy to the device waited for.
  std::string stagingSlot(Slot &sl) {
    if (!sl.host) { // (no memory for it: the slot stays unmade, its uploads go directly)
      if (!alloc(kSlotBytes, sl.dev).empty())
        return "";
      void *h = nullptr;
      if (drv.hostAlloc && drv.hostFree && !drv.emu && drv.hostAlloc(&h, kSlotBytes, 0) == 0) {
        if (drv.eventCreate(&sl.done, 0) == 0)
          sl.pinned = true;
        else
          drv.hostFree(h);
      }
      if (!sl.pinned && !(h = std::malloc(kSlotBytes))) {
        free(sl.dev, true), sl.dev = 0;
        return "";
      }
      sl.host = static_cast<unsigned char *>(h);
    }
    if (sl.busy) {
      sl.busy = false;
      return check(drv.eventSync(sl.done), "copy to the device (staging)");
    }
    return "";
  }

  /// Sends the recorded work to the device: the staged uploads, then the kernels as the run's next graph.
  std::string flush() {
    if (pending.nodes.empty())
      return "";
    std::swap(sending, pending);
    std::string e;
    if (stageUsed) {
      Slot &sl = slots[slot];
      e = check(drv.htod(sl.dev, sl.host, stageUsed, stream), "copy to the device (staged uploads)");
      if (e.empty() && sl.pinned)
        e = check(drv.eventRecord(sl.done, stream), "event"), sl.busy = e.empty();
      stageUsed = 0, slot = -1;
    }
    if (e.empty())
      e = replay(sending);
    sending.nodes.clear(), sending.params.clear();
    return e;
  }

  /// Launches `rec` as the run's next graph (reused, updated, or built), or node by node once graphs failed.
  std::string replay(const Recording &rec) {
    ++graphsThisRun;
    uint64_t hash = 1469598103934665603ull; // FNV-1a over the kernels
    for (const Node &n : rec.nodes)
      hash = (hash ^ reinterpret_cast<uintptr_t>(n.fn)) * 1099511628211ull;
    const size_t turn = turns[hash]++;
    std::vector<Exec> *list = &execs[hash];
    if (list->size() <= turn) {
      if (execCount >= 1024) // (shapes that never repeat: start again rather than grow without bound)
        dropGraphs(false, ""), list = &execs[hash];
      execCount += turn + 1 - list->size();
      list->resize(turn + 1);
    }
    Exec &x = (*list)[turn];
    bool reuse = x.nodes.nodes.size() == rec.nodes.size();
    for (size_t i = 0; reuse && i < rec.nodes.size(); ++i)
      reuse = x.nodes.nodes[i].fn == rec.nodes[i].fn;
    std::string why;
    if (reuse) {
      for (size_t i = 0; i < rec.nodes.size() && why.empty(); ++i)
        if (!same(x.nodes, x.nodes.nodes[i], rec, rec.nodes[i]))
          why = setNode(x, i, rec);
    } else {
      why = build(x, rec);
    }
    if (why.empty()) {
      ++stats.graphs;
      return launchGraph(x);
    }
    // The driver refused the graph (not a failed launch): graphs off from now, this one launched directly.
    dropGraphs(true, "off (" + why + ")");
    return launchNodes(rec);
  }
  /// `r`'s kernels launched one by one, each with its recorded argument bytes.
  std::string launchNodes(const Recording &r) {
    for (const Node &n : r.nodes) {
      void *params[] = {const_cast<uint64_t *>(r.params.data() + n.at)};
      if (std::string e = check(drv.launch(n.fn, n.grid[0], n.grid[1], n.grid[2], MOERT_GPU_BLOCK, 1, 1, 0,
                                           stream, params, nullptr),
                                n.what);
          !e.empty())
        return e;
    }
    return "";
  }
  /// The driver's kernel node parameters for node `n` of `r` (CUDA's v2 layout, HIP's own).
  struct CuNode {
    void *func;
    unsigned grid[3], block[3], shared;
    void **params, **extra;
    void *kern, *ctx;
  };
  struct HipNode {
    unsigned block[3];
    void **extra;
    void *func;
    unsigned grid[3];
    void **params;
    unsigned shared;
  };
  template <class F> int withParams(const Recording &r, const Node &n, F f) {
    void *args[] = {const_cast<uint64_t *>(r.params.data() + n.at)};
    if (drv.hip) {
      HipNode p{{MOERT_GPU_BLOCK, 1, 1}, nullptr, n.fn, {n.grid[0], n.grid[1], n.grid[2]}, args, 0};
      return f(static_cast<const void *>(&p));
    }
    CuNode p{n.fn,   {n.grid[0], n.grid[1], n.grid[2]}, {MOERT_GPU_BLOCK, 1, 1}, 0, args, nullptr, nullptr,
             nullptr};
    return f(static_cast<const void *>(&p));
  }
  /// Node i of `x` becomes rec's node i (same kernel; its argument or grid changed).
  std::string setNode(Exec &x, size_t i, const Recording &rec) {
    const Node &n = rec.nodes[i];
    ++stats.updates;
    if (!drv.emu)
      if (int rc = withParams(rec, n, [&](const void *p) {
            return drv.graphExecKernelNodeSetParams(x.exec, x.handles[i], p);
          }))
        return "updating a graph node failed: " + drv.errorText(rc);
    if (drv.emu && emu::staleUpdates())
      return "";
    Node &m = x.nodes.nodes[i]; // the same kernel: the same argument type and size
    std::copy(n.grid, n.grid + 3, m.grid), m.what = n.what;
    std::memcpy(x.nodes.params.data() + m.at, rec.params.data() + n.at, n.size);
    return "";
  }
  /// `x` made anew for `rec`: a chain of kernel nodes, instantiated.
  std::string build(Exec &x, const Recording &rec) {
    destroyExec(x);
    ++stats.builds;
    if (drv.emu && emu::refusesGraphs())
      return "graph creation failed: refused (MOERT_EMU_REFUSE_GRAPHS)";
    if (!drv.emu) {
      if (int rc = drv.graphCreate(&x.graph, 0))
        return "graph creation failed: " + drv.errorText(rc);
      x.handles.assign(rec.nodes.size(), nullptr);
      for (size_t i = 0; i < rec.nodes.size(); ++i)
        if (int rc = withParams(rec, rec.nodes[i], [&](const void *p) {
              return drv.graphAddKernelNode(&x.handles[i], x.graph, i ? &x.handles[i - 1] : nullptr,
                                            i ? 1 : 0, p);
            }))
          return "adding a graph node failed: " + drv.errorText(rc);
      if (int rc = drv.graphInstantiate(&x.exec, x.graph, 0))
        return "graph instantiation failed: " + drv.errorText(rc);
    }
    x.nodes = rec;
    return "";
  }
  std::string launchGraph(const Exec &x) {
    // (the emulator replays the graph's own copy of the arguments)
    return drv.emu ? launchNodes(x.nodes) : check(drv.graphLaunch(x.exec, stream), "graph launch");
  }
  void destroyExec(Exec &x) {
    if (x.exec)
      drv.graphExecDestroy(x.exec);
    if (x.graph)
      drv.graphDestroy(x.graph);
    x = Exec{};
  }
  /// Every graph destroyed; `off`: graphs off from now, for reason `why`.
  void dropGraphs(bool off, const std::string &why) {
    if (off)
      graphNodes = 0, graphsOff = why;
    for (auto &[hash, list] : execs)
      for (Exec &x : list)
        destroyExec(x);
    execs.clear(), execCount = 0;
  }

  void setCurrent() const {
    if (!drv.hip && ctx)
      drv.ctxSetCurrent(ctx);
    else if (drv.hip)
      drv.setDevice(dev);
  }

  ~Device() {
    if (!drv.init) // no driver opened
      return;
    setCurrent();
    flush();
    if (stream)
      drv.streamSync(stream);
    dropGraphs(true, "");
    for (Slot &sl : slots) {
      if (sl.pinned)
        drv.hostFree(sl.host), drv.eventDestroy(sl.done);
      else
        std::free(sl.host);
    }
    for (Ptr p : allocations)
      drv.memFree(p);
    if (ev0)
      drv.eventDestroy(ev0);
    if (ev1)
      drv.eventDestroy(ev1);
    if (module)
      drv.moduleUnload(module);
    if (codeFd >= 0)
      close(codeFd);
    if (stream)
      drv.streamDestroy(stream);
    // The driver library stays loaded: unloading CUDA or HIP at exit is known to misbehave.
  }
};

void destroy(Device *d) { delete d; }

std::string graphs(Device &d, GraphStats &stats) {
  std::lock_guard<std::mutex> lock(d.mutex);
  stats = d.stats;
  return d.graphNodes ? "on (" + std::to_string(d.graphNodes) + " kernels a graph at most)" : d.graphsOff;
}

std::string describe(const Device &d) { return d.label + (d.arch.empty() ? "" : " (" + d.arch + ")"); }

namespace {

/// Opens CUDA, HIP, or (GPU) CUDA then HIP.
std::string startAny(int device, std::unique_ptr<Device> &d) {
  d = std::make_unique<Device>();
  if (device != MOERT_DEVICE_GPU)
    return d->start(device);
  std::string cuda = d->start(MOERT_DEVICE_CUDA);
  if (cuda.empty())
    return "";
  d = std::make_unique<Device>();
  std::string hip = d->start(MOERT_DEVICE_HIP);
  return hip.empty() ? "" : cuda + "; " + hip;
}

/// The emulated device's code: the first host shared object, loaded from memory through a memfd (as the CPU
/// code is); its kernels are moert_gpu_emu_entry functions.
std::string loadEmulatedCode(Device &d, const pb::Artifact &a, const unsigned char *map) {
  for (const auto &g : a.gpu_code()) {
    if (g.kind() != pb::GpuCode::HOST_EMULATION)
      continue;
    const auto &section = a.sections(g.section());
    std::string why;
    void *module =
        moert::loadFromMemory(map + section.offset(), section.size(), "moex-gpu-emu", d.codeFd, why);
    if (!module)
      return "cannot load the emulated GPU code (" + g.arch() + "): " + why;
    d.module = module;
    d.arch = g.arch();
    d.warps = MOERT_GPU_BLOCK / (d.arch == "emu-w64" ? 64 : 32);
    return "";
  }
  return "the artifact has no emulated GPU code (compile it with moec compile --target=cpu,emu)";
}

/// Loads the code object for the device. CUDA: the PTX of the device's arch or the newest below it; HIP: the
/// first code object the runtime accepts.
std::string loadCode(Device &d, const pb::Artifact &a, const unsigned char *map) {
  if (d.drv.emu)
    return loadEmulatedCode(d, a, map);
  std::vector<std::string> have;
  const pb::GpuCode *pick = nullptr;
  int devCc = 0;
  if (!d.drv.hip)
    devCc = std::atoi(d.arch.c_str() + 3);
  for (const auto &g : a.gpu_code()) {
    have.push_back(g.arch());
    if (d.drv.hip && g.kind() == pb::GpuCode::AMDGPU_ELF) {
      void *mod = nullptr;
      if (d.drv.moduleLoadData(&mod, map + a.sections(g.section()).offset()) == 0) {
        d.module = mod;
        d.arch = g.arch();
        if (d.arch.rfind("gfx9", 0) == 0)
          d.warps = MOERT_GPU_BLOCK / 64;
        return "";
      }
    } else if (!d.drv.hip && g.kind() == pb::GpuCode::PTX) {
      int cc = std::atoi(g.arch().c_str() + 3);
      if (cc <= devCc && (!pick || cc > std::atoi(pick->arch().c_str() + 3)))
        pick = &g;
    }
  }
  std::string list;
  for (const auto &h : have)
    list += (list.empty() ? "" : ", ") + h;
  if (list.empty())
    return "the artifact has no GPU code (compile it with moec compile --target=cpu," +
           std::string(d.drv.hip ? "hip" : "cuda") + ")";
  if (!pick)
    return "the artifact has no code for this " + describe(d) + " (it has " + list + ")";
  void *mod = nullptr;
  if (int rc = d.drv.moduleLoadData(&mod, map + a.sections(pick->section()).offset()))
    return "the " + d.drv.name() + " driver rejected the " + pick->arch() + " code: " + d.drv.errorText(rc);
  d.module = mod;
  return "";
}

} // namespace

std::string open(int device, const pb::Artifact &a, const std::vector<const pb::Step *> &steps,
                 const unsigned char *map, DevicePtr &out) {
  std::unique_ptr<Device> d;
  if (std::string e = startAny(device, d); !e.empty())
    return e;
  if (a.gpu_abi() != MOERT_GPU_ABI_VERSION)
    return a.gpu_code_size() == 0
               ? "the artifact has no GPU code (compile it with moec compile --target=cpu,cuda, "
                 "--target=cpu,hip or --target=cpu,emu)"
               : "the artifact's GPU code is of GPU ABI " + std::to_string(a.gpu_abi()) +
                     ", this moert runs " + std::to_string(MOERT_GPU_ABI_VERSION) +
                     " (compile the model again with this moec)";
  if (std::string e = loadCode(*d, a, map); !e.empty())
    return e;
  // The graph ops' kernels: each one missing (code from before it) leaves its ops on the host.
  const std::pair<void **, const char *> graphOps[] = {{&d->strided, "moert_gpu_op_strided"},
                                                       {&d->reduce, "moert_gpu_op_reduce"},
                                                       {&d->conv, "moert_gpu_op_conv"},
                                                       {&d->topk, "moert_gpu_op_topk"},
                                                       {&d->rotary, "moert_gpu_op_rotary"},
                                                       {&d->norm, "moert_gpu_op_norm"},
                                                       {&d->embedding, "moert_gpu_op_embedding"},
                                                       {&d->kvAppend, "moert_gpu_op_kv_append"},
                                                       {&d->copy, "moert_gpu_op_copy"}};
  for (const auto &[fn, name] : graphOps)
    if (d->drv.moduleGetFunction(fn, d->module, name))
      *fn = nullptr;
  d->mapLo = reinterpret_cast<uintptr_t>(map);
  for (const auto &section : a.sections())
    d->mapHi = std::max<uintptr_t>(d->mapHi, d->mapLo + section.offset() + section.size());
  // Weights: each section a dispatch uses, uploaded once.
  std::map<int64_t, Ptr> uploaded;
  auto upload = [&](int64_t sec, Ptr &p) -> std::string {
    auto it = uploaded.find(sec);
    if (it == uploaded.end()) {
      const auto &section = a.sections(sec);
      Ptr q = 0;
      if (std::string e = d->alloc(section.size(), q); !e.empty())
        return e;
      if (std::string e =
              d->check(d->drv.htod(q, map + section.offset(), section.size(), d->stream), "weight upload");
          !e.empty())
        return e;
      it = uploaded.emplace(sec, q).first;
    }
    p = it->second;
    return "";
  };
  for (const pb::Step *sp : steps) { // every step, those in control-flow blocks too
    const pb::Step &s = *sp;
    if (s.has_linear() && s.linear().has_gpu()) {
      const auto &l = s.linear();
      if (d->linears.size() <= l.index())
        d->linears.resize(l.index() + 1);
      LinearKernels &k = d->linears[l.index()];
      k.k = l.k(), k.n = l.n(), k.qbits = l.gpu().qbits(), k.fusedNorm = l.gpu().norm();
      k.columns.assign(l.output_columns().begin(), l.output_columns().end());
      std::string base = "moert_gpu_lin_" + std::to_string(l.index()) + "_";
      if (d->drv.moduleGetFunction(&k.gemv, d->module, (base + "gemv").c_str()) ||
          d->drv.moduleGetFunction(&k.reduce, d->module, (base + "reduce").c_str()) ||
          d->drv.moduleGetFunction(&k.gemm, d->module, (base + "gemm").c_str()) ||
          (k.fusedNorm && d->drv.moduleGetFunction(&k.norm, d->module, (base + "norm").c_str())))
        return "the GPU code lacks the kernels of linear dispatch " + std::to_string(l.index());
      for (int slot = 0; slot < MOERT_LIN_SLOTS && slot < l.weight_sections_size(); ++slot)
        if (int64_t sec = l.weight_sections(slot); sec >= 0) {
          if (std::string e = upload(sec, k.weights[slot]); !e.empty())
            return e;
          k.weightBytes += a.sections(sec).size();
        }
      continue;
    }
    if (s.has_attention() && s.attention().gpu()) {
      const auto &at = s.attention();
      if (d->attentions.size() <= at.index())
        d->attentions.resize(at.index() + 1);
      AttentionKernels &k = d->attentions[at.index()];
      k.hkv = at.kv_heads(), k.g = at.kv_heads() > 0 ? at.q_heads() / at.kv_heads() : 0,
      k.dv = at.value_dim();
      std::string base = "moert_gpu_attn_" + std::to_string(at.index()) + "_";
      if (d->drv.moduleGetFunction(&k.attend[0], d->module, (base + "attend").c_str()) ||
          d->drv.moduleGetFunction(&k.attend[1], d->module, (base + "attend_bf16").c_str()) ||
          d->drv.moduleGetFunction(&k.attend[2], d->module, (base + "attend_f16").c_str()) ||
          d->drv.moduleGetFunction(&k.merge, d->module, (base + "merge").c_str()))
        return "the GPU code lacks the kernels of attention dispatch " + std::to_string(at.index());
      continue;
    }
    if (!s.has_moe())
      continue;
    const auto &m = s.moe();
    if (!m.has_gpu())
      return "dispatch " + std::to_string(m.index()) + " has no GPU kernels in the artifact";
    if (d->dispatches.size() <= m.index())
      d->dispatches.resize(m.index() + 1);
    Kernels &k = d->dispatches[m.index()];
    const auto &g = m.gpu();
    k.shape = moert_gpu_shape{g.h(), g.f(), g.fs(), g.e(), g.n(), g.k(), g.norm() ? 1 : 0, g.pred() ? 1 : 0};
    std::string base = "moert_gpu_" + std::to_string(m.index()) + "_";
    if (d->drv.moduleGetFunction(&k.route, d->module, (base + "route").c_str()) ||
        d->drv.moduleGetFunction(&k.up, d->module, (base + "up").c_str()) ||
        d->drv.moduleGetFunction(&k.down, d->module, (base + "down").c_str()) ||
        d->drv.moduleGetFunction(&k.upMma, d->module, (base + "up_mma").c_str()) ||
        d->drv.moduleGetFunction(&k.downMma, d->module, (base + "down_mma").c_str()))
      return "the GPU code lacks the kernels of dispatch " + std::to_string(m.index());
    if (d->drv.moduleGetFunction(&k.logits, d->module, (base + "logits").c_str()))
      k.logits = nullptr;
    if (k.shape.pred && d->drv.moduleGetFunction(&k.predict, d->module, (base + "predict").c_str()))
      return "the GPU code lacks the predictor kernel of dispatch " + std::to_string(m.index());
    for (int slot = 0; slot < MOERT_GPU_SLOTS && slot < m.weight_sections_size(); ++slot) {
      int64_t sec = m.weight_sections(slot);
      if (sec < 0)
        continue;
      if (std::string e = upload(sec, k.weights[slot]); !e.empty())
        return e;
      k.weightBytes[slot] = a.sections(sec).size();
    }
    size_t stateBytes = moert_gpu_state_bytes(&k.shape);
    if (std::string e = d->alloc(stateBytes, k.state); !e.empty())
      return e;
    if (std::string e = d->check(d->drv.memsetD8(k.state, 0, stateBytes, d->stream), "memset"); !e.empty())
      return e;
  }
  if (std::string e = d->check(d->drv.streamSync(d->stream), "weight upload"); !e.empty())
    return e;
  d->startGraphs();
  out.reset(d.release());
  return "";
}

// ---- a run's device copies of host ranges ----------------------------------------------------------------

class Residency {
public:
  explicit Residency(Device &d) : d(d) {}
  Device &d;
  /// A pooled device buffer, back to the pool when the last copy using it goes (callers hold d.mutex); the
  /// run's arena, back to the device when the run ends; or a session cache's buffer (the CacheCopy owns it).
  struct Buffer {
    Device &d;
    Ptr p;
    size_t capacity;
    enum Kind { Pooled, Arena, Cache } kind = Pooled;
    ~Buffer() {
      if (kind == Pooled)
        d.give(p, capacity);
      else if (kind == Arena)
        d.giveArena(p, capacity);
    }
  };
  struct Copy {
    uintptr_t hi;                   // the host range [key, hi)
    Ptr dev;                        // where its first byte is on the device
    std::shared_ptr<Buffer> buffer; // shared by the pieces of a split copy
    bool hostStale;                 // the device's bytes are newer than the host's
  };
  std::map<uintptr_t, Copy> copies; // by host start; ranges never overlap
  uint64_t uploaded = 0, downloaded = 0;
  struct Bound {
    CacheCopy *cache;
    uintptr_t lo;
    std::shared_ptr<Buffer> buffer;
  };
  std::vector<Bound> bound; // the session caches bound to this run (bindCache)
  // The run's host arena [arenaLo, arenaHi) (the memory plan's buffers) and its device mirror: a copy of a
  // host range in it sits at the same offset in `arena` (the plan keeps live values apart, so live copies
  // are apart too, and a planned value's device address is fixed by the layout).
  uintptr_t arenaLo = 0, arenaHi = 0;
  std::shared_ptr<Buffer> arena; // made when a copy first falls in the host arena
  bool noArena = false;          // it could not be: the arena's copies take pooled buffers

  /// Splits the copy straddling host address `at` (if any) into the pieces before and from it.
  void cut(uintptr_t at) {
    auto it = copies.upper_bound(at);
    if (it == copies.begin())
      return;
    --it;
    if (it->first < at && it->second.hi > at) {
      Copy tail{it->second.hi, it->second.dev + (at - it->first), it->second.buffer, it->second.hostStale};
      it->second.hi = at;
      copies.emplace(at, tail);
    }
  }
  /// After cut(lo), cut(hi): the copies inside [lo, hi).
  std::map<uintptr_t, Copy>::iterator inside(uintptr_t lo) { return copies.lower_bound(lo); }

  /// Makes the host's bytes of [lo, hi) current: downloads the parts only the device has. Never writes host
  /// bytes outside the range (those may belong to another value by now).
  std::string download(uintptr_t lo, uintptr_t hi) {
    if (!newer(lo, hi)) // the common case (a host step reading host values): no splits, no driver call
      return "";
    d.setCurrent();
    if (std::string e = d.flush(); !e.empty()) // the recorded kernels write what is read back
      return e;
    cut(lo), cut(hi);
    bool any = false;
    for (auto it = inside(lo); it != copies.end() && it->first < hi; ++it)
      if (it->second.hostStale) {
        const size_t bytes = it->second.hi - it->first;
        if (std::string e =
                d.check(d.drv.dtoh(reinterpret_cast<void *>(it->first), it->second.dev, bytes, d.stream),
                        "copy to the host");
            !e.empty())
          return e;
        it->second.hostStale = false;
        downloaded += bytes;
        any = true;
      }
    return any ? d.sync("copy to the host") : "";
  }
  /// The first copy that ends after `lo` (it may start before).
  std::map<uintptr_t, Copy>::iterator from(uintptr_t lo) {
    auto it = copies.upper_bound(lo);
    if (it != copies.begin() && std::prev(it)->second.hi > lo)
      --it;
    return it;
  }
  /// Whether some of [lo, hi) is newer on the device.
  bool newer(uintptr_t lo, uintptr_t hi) {
    for (auto it = from(lo); it != copies.end() && it->first < hi; ++it)
      if (it->second.hostStale)
        return true;
    return false;
  }
  /// Forgets the device's copies of [lo, hi).
  void drop(uintptr_t lo, uintptr_t hi) {
    if (auto it = from(lo); it == copies.end() || it->first >= hi) // none there
      return;
    cut(lo), cut(hi);
    for (auto it = inside(lo); it != copies.end() && it->first < hi;)
      it = copies.erase(it);
  }
  /// A new copy of [lo, hi) (after drop); uploads the host's bytes unless `stale` (a GPU step's output).
  std::string add(uintptr_t lo, uintptr_t hi, bool stale, Ptr &dev) {
    Ptr p = 0;
    if (!arena && !noArena && lo >= arenaLo && hi <= arenaHi) {
      size_t capacity = 0;
      if (Ptr a = d.takeArena(arenaHi - arenaLo, capacity))
        arena.reset(new Buffer{d, a, capacity, Buffer::Arena});
      noArena = !arena;
    }
    if (arena && lo >= arenaLo && hi <= arenaHi) {
      p = arena->p + (lo - arenaLo);
      copies.emplace(lo, Copy{hi, p, arena, stale});
    } else {
      size_t capacity = 0;
      if (std::string e = d.take(hi - lo, p, capacity); !e.empty())
        return e;
      copies.emplace(lo, Copy{hi, p, std::shared_ptr<Buffer>(new Buffer{d, p, capacity}), stale});
    }
    dev = p;
    if (stale)
      return "";
    uploaded += hi - lo;
    return d.upload(p, reinterpret_cast<const void *>(lo), hi - lo, "copy to the device");
  }
  /// The device address of the current bytes of host range [p, p + bytes): a copy holding all of them, else
  /// one made now (parts only the device had brought to the host first).
  std::string input(const void *p, size_t bytes, Ptr &dev) {
    const auto lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
    if (lo >= d.mapLo && hi <= d.mapHi) { // a constant in the artifact: one device copy for the model's life
      auto c = d.constants.find(lo);
      if (c == d.constants.end() || c->second.first < hi) {
        Ptr q = 0;
        if (std::string e = d.alloc(hi - lo, q); !e.empty())
          return e;
        if (std::string e = d.upload(q, p, hi - lo, "copy to the device"); !e.empty())
          return e;
        uploaded += hi - lo;
        c = d.constants.insert_or_assign(lo, std::make_pair(hi, q)).first;
      }
      dev = c->second.second;
      return "";
    }
    auto it = copies.upper_bound(lo);
    if (it != copies.begin() && std::prev(it)->first <= lo && std::prev(it)->second.hi >= hi) {
      dev = std::prev(it)->second.dev + (lo - std::prev(it)->first);
      return "";
    }
    if (std::string e = download(lo, hi); !e.empty())
      return e;
    drop(lo, hi);
    return add(lo, hi, false, dev);
  }
  /// A device buffer for a GPU step's output, which becomes host range [p, p + bytes)'s current bytes.
  std::string output(const void *p, size_t bytes, Ptr &dev) {
    const auto lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
    drop(lo, hi);
    return add(lo, hi, true, dev);
  }
  /// Whether [lo, hi) is all copies in `buffer` at their own offsets (a bound cache nothing took back), and
  /// whether any piece of it is newer on the device.
  bool covered(uintptr_t lo, uintptr_t hi, const Buffer *buffer, bool &deviceNewer) {
    deviceNewer = false;
    uintptr_t at = lo;
    for (auto it = copies.lower_bound(lo); it != copies.end() && it->first < hi; ++it) {
      if (it->first != at || it->second.buffer.get() != buffer || it->second.dev != buffer->p + (at - lo))
        return false;
      deviceNewer |= it->second.hostStale;
      at = it->second.hi;
    }
    return at >= hi;
  }
  /// Bound cache `b`'s range as one copy in its own buffer again, the host's bytes made current and uploaded
  /// first when another copy had taken part of it.
  std::string rebind(const Bound &b, size_t bytes) {
    bool newer = false;
    if (covered(b.lo, b.lo + bytes, b.buffer.get(), newer))
      return "";
    if (std::string e = download(b.lo, b.lo + bytes); !e.empty())
      return e;
    drop(b.lo, b.lo + bytes);
    copies.emplace(b.lo, Copy{b.lo + bytes, b.buffer->p, b.buffer, false});
    uploaded += bytes;
    return d.upload(b.buffer->p, reinterpret_cast<const void *>(b.lo), bytes, "copy to the device");
  }
  ~Residency();
};

// ---- a session's KV caches in device memory ------------------------------------------------------------

class CacheCopy {
public:
  CacheCopy(Device &d, Ptr p, size_t bytes) : d(d), p(p), bytes(bytes) {}
  Device &d;
  Ptr p;
  size_t bytes;
  enum State { Stale, Same, DeviceNewer } state = Stale; // Stale: the host's bytes are the newer
  ~CacheCopy() {
    std::lock_guard<std::mutex> lock(d.mutex);
    d.setCurrent();
    d.sync("cache release"); // no kernel reads it any more
    d.free(p, true);
  }
};

void CacheCopyDeleter::operator()(CacheCopy *c) const { delete c; }

Residency::~Residency() {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  d.endRecording();              // a failed launch (device lost) fails the session's next call too
  for (const Bound &b : bound) { // which side holds each bound cache's newest bytes now
    bool newer = false;
    if (covered(b.lo, b.lo + b.cache->bytes, b.buffer.get(), newer)) {
      b.cache->state = newer ? CacheCopy::DeviceNewer : CacheCopy::Same;
    } else { // a host step took part of it back: the host's bytes, made whole, are the newest
      download(b.lo, b.lo + b.cache->bytes); // a failed copy (device lost) fails the session's next call too
      b.cache->state = CacheCopy::Stale;
    }
  }
  copies.clear(); // pooled buffers back to the pool
  if (arena)      // back to the device after every copy in it (freed there when not kept: a driver call)
    d.setCurrent(), arena.reset();
}

bool keepsCaches(const Device &d, int dtype) {
  if (!d.kvAppend || d.attentions.empty() || (dtype != pb::F32 && dtype != pb::BF16 && dtype != pb::F16))
    return false;
  for (const AttentionKernels &a : d.attentions)
    if (!a.attend[0])
      return false;
  return true;
}

std::string newCacheCopy(Device &d, size_t bytes, CacheCopyPtr &out) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  Ptr p = 0;
  if (std::string e = d.alloc(bytes, p); !e.empty())
    return e;
  out.reset(new CacheCopy(d, p, bytes));
  return "";
}

std::string cacheToHost(CacheCopy &c, void *host, bool willWrite) {
  std::lock_guard<std::mutex> lock(c.d.mutex);
  if (c.state == CacheCopy::DeviceNewer) {
    c.d.setCurrent();
    if (std::string e = c.d.download(host, c.p, c.bytes, "copy to the host"); !e.empty())
      return e;
    c.state = CacheCopy::Same;
  }
  if (willWrite)
    c.state = CacheCopy::Stale;
  return "";
}

std::string bindCache(Residency &r, CacheCopy &c, const void *host) {
  Device &d = r.d;
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (c.state == CacheCopy::Stale) {
    if (std::string e = d.upload(c.p, host, c.bytes, "copy to the device"); !e.empty())
      return e;
    r.uploaded += c.bytes;
    c.state = CacheCopy::Same;
  }
  const auto lo = reinterpret_cast<uintptr_t>(host);
  std::shared_ptr<Residency::Buffer> buffer(new Residency::Buffer{d, c.p, c.bytes, Residency::Buffer::Cache});
  r.drop(lo, lo + c.bytes);
  r.copies.emplace(lo, Residency::Copy{lo + c.bytes, c.p, buffer, c.state == CacheCopy::DeviceNewer});
  r.bound.push_back({&c, lo, buffer});
  return "";
}

namespace {
/// Bound cache `c` (host buffer `host`) made the current copy of its host range, about to be written on the
/// device (callers hold d.mutex).
std::string cacheForWrite(Residency &r, CacheCopy &c, const void *host) {
  const auto lo = reinterpret_cast<uintptr_t>(host);
  auto b = std::find_if(r.bound.begin(), r.bound.end(),
                        [&](const Residency::Bound &x) { return x.cache == &c && x.lo == lo; });
  if (b == r.bound.end())
    return "internal: a KV cache appended on the device is not bound to the run";
  return r.rebind(*b, c.bytes);
}
/// After a kernel wrote bound cache `host` on the device: the device's bytes are the newer.
void cacheWritten(Residency &r, const void *host) {
  r.copies.find(reinterpret_cast<uintptr_t>(host))->second.hostStale = true;
}
} // namespace

std::string appendCache(Device &d, Residency &r, CacheCopy &c, const void *host, const float *src,
                        size_t srcBytes, const int64_t *first, int64_t B, int64_t heads, int64_t S, int64_t D,
                        int64_t past, int64_t capacity, int dtype) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (std::string e = cacheForWrite(r, c, host); !e.empty())
    return e;
  moert_gpu_kv_append_args a{};
  a.heads = heads, a.S = S, a.D = D, a.past = past, a.capacity = capacity;
  a.storage = kvStorage(dtype);
  Ptr in = 0;
  if (std::string e = r.input(src, srcBytes, in); !e.empty())
    return e;
  a.src = reinterpret_cast<const float *>(in);
  if (first) { // each sequence's first new row, through the scratch (stream-ordered after earlier kernels)
    if (std::string e = d.grow(d.scratch, d.scratchBytes, sizeof(int64_t) * size_t(B)); !e.empty())
      return e;
    if (std::string e = d.upload(d.scratch, first, sizeof(int64_t) * size_t(B), "copy to the device");
        !e.empty())
      return e;
    r.uploaded += sizeof(int64_t) * size_t(B);
    a.first = reinterpret_cast<const int64_t *>(d.scratch);
  }
  a.cache = reinterpret_cast<void *>(c.p);
  if (B * heads * S > 0)
    if (std::string e = d.launch(d.kvAppend, B * heads * S, 1, 1, a, "launch (KV cache append)"); !e.empty())
      return e;
  cacheWritten(r, host); // one copy after rebind: the device's bytes are the newer
  return "";
}

void ResidencyDeleter::operator()(Residency *r) const { delete r; }

ResidencyPtr beginRun(Device &d, const void *arena, size_t arenaBytes) {
  ResidencyPtr r(new Residency(d));
  {
    std::lock_guard<std::mutex> lock(d.mutex);
    d.beginRecording();
  }
  if (arena)
    r->arenaLo = reinterpret_cast<uintptr_t>(arena), r->arenaHi = r->arenaLo + arenaBytes;
  return r;
}

std::string toHost(Residency &r, const void *p, size_t bytes) {
  if (r.copies.empty() || !bytes)
    return "";
  std::lock_guard<std::mutex> lock(r.d.mutex);
  const auto lo = reinterpret_cast<uintptr_t>(p);
  return r.download(lo, lo + bytes);
}

void hostWrote(Residency &r, const void *p, size_t bytes) {
  if (r.copies.empty() || !bytes)
    return;
  std::lock_guard<std::mutex> lock(r.d.mutex);
  const auto lo = reinterpret_cast<uintptr_t>(p);
  r.drop(lo, lo + bytes);
}

bool onDevice(Residency &r, const void *p, size_t bytes) {
  const auto lo = reinterpret_cast<uintptr_t>(p), hi = lo + bytes;
  auto it = r.copies.upper_bound(lo);
  return it != r.copies.begin() && std::prev(it)->first <= lo && std::prev(it)->second.hi >= hi;
}

std::string gatherRows(Device &d, Residency &r, const void *src, size_t srcBytes, void *dst, size_t rowBytes,
                       const std::vector<int64_t> &rows) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  Ptr from = 0, to = 0;
  if (std::string e = r.input(src, srcBytes, from); !e.empty())
    return e;
  if (std::string e = r.output(dst, rows.size() * rowBytes, to); !e.empty())
    return e;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || size_t(rows[i] + 1) * rowBytes > srcBytes)
      return "internal: row " + std::to_string(rows[i]) + " gathered past " + std::to_string(srcBytes) +
             " bytes";
    if (std::string e = d.flush(); !e.empty()) // (copies between device buffers are not recorded)
      return e;
    if (std::string e =
            d.check(d.drv.dtod(to + i * rowBytes, from + size_t(rows[i]) * rowBytes, rowBytes, d.stream),
                    "copy on the device");
        !e.empty())
      return e;
  }
  return "";
}

bool deviceNewer(Residency &r, const void *p, size_t bytes) {
  const auto lo = reinterpret_cast<uintptr_t>(p);
  return r.newer(lo, lo + bytes);
}

void activationBytes(Device &d, uint64_t &arenas, uint64_t &pool) {
  std::lock_guard<std::mutex> lock(d.mutex);
  arenas = d.arenaBytes, pool = d.poolBytes;
}

void traffic(const Residency &r, uint64_t &toDevice, uint64_t &toHostBytes) {
  toDevice = r.uploaded, toHostBytes = r.downloaded;
}

// ---- MoE dispatches
// ----------------------------------------------------------------------------------------

/// The kernels of dispatch `k` on `args` (device addresses), in the order and on the grids of `plan`
/// (moert_gpu_moe_plan for this call's T).
std::string launchAll(Device &d, const Kernels &k, const moert_gpu_moe_launches &plan,
                      const moert_gpu_args &args) {
  std::string e;
  if (plan.logits_grid[0] &&
      (e = d.launch(k.logits, plan.logits_grid[0], plan.logits_grid[1], 1, args, "launch (logits)")).size())
    return e;
  if ((e = d.launch(k.route, plan.route_blocks, 1, 1, args, "launch (route)")).size() ||
      (plan.predict_grid[0] &&
       (e = d.launch(k.predict, plan.predict_grid[0], plan.predict_grid[1], 1, args, "launch (predict)"))
           .size()) ||
      (e = d.launch(plan.mma ? k.upMma : k.up, plan.up_grid[0], plan.up_grid[1], 1, args,
                    plan.mma ? "launch (up_mma)" : "launch (up)"))
          .size())
    return e;
  return d.launch(plan.mma ? k.downMma : k.down, plan.down_grid[0], plan.down_grid[1], plan.down_grid[2],
                  args, plan.mma ? "launch (down_mma)" : "launch (down)");
}

moert_gpu_moe_launches planOf(const Device &d, const Kernels &k, int64_t T) {
  return moert_gpu_moe_plan(&k.shape, T, k.logits != nullptr, d.warps);
}

namespace {
/// Records the start event when timing (`gpuMs`), runs `launch`, then records the end and waits for it.
template <class Launch> std::string timed(Device &d, double *gpuMs, Launch launch) {
  std::string e;
  if (gpuMs && (e = d.event(d.ev0)).size())
    return e;
  if ((e = launch()).size() || !gpuMs)
    return e;
  if ((e = d.event(d.ev1)).size() || (e = d.sync("kernel run")).size())
    return e;
  float ms = 0;
  d.drv.eventElapsed(&ms, d.ev0, d.ev1);
  *gpuMs = ms;
  return "";
}

/// `launch()` once to warm up, then `repeats` times back to back between two events: device time per call.
template <class Launch> std::string timeRepeats(Device &d, int repeats, double &usPerCall, Launch launch) {
  double ms = 0;
  std::string e = launch();
  if (e.empty())
    e = timed(d, &ms, [&] {
      std::string why;
      for (int r = 0; r < repeats && why.empty(); ++r)
        why = launch();
      return why;
    });
  usPerCall = 1000.0 * ms / std::max(1, repeats);
  return e;
}
} // namespace

std::string timeKernels(Device &d, int index, int repeats, double &usPerCall, double &weightBytes) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (index < 0 || size_t(index) >= d.dispatches.size() || d.dispatches[index].last.tokens <= 0)
    return "dispatch " + std::to_string(index) + " has not run on the GPU yet";
  const Kernels &k = d.dispatches[index];
  const moert_gpu_shape &s = k.shape;
  int64_t T = k.last.tokens;
  const moert_gpu_moe_launches plan = planOf(d, k, T);
  if (std::string e = d.grow(d.scratch, d.scratchBytes, plan.scratch); !e.empty())
    return e;
  moert_gpu_args args = k.last;
  args.scratch = reinterpret_cast<void *>(d.scratch);
  std::string e = timeRepeats(d, repeats, usPerCall, [&] { return launchAll(d, k, plan, args); });
  if (!e.empty())
    return e;
  // Bytes read: the chosen experts' rows (tile table of the last call), the shared expert, router, mask.
  moert_gpu_layout l = moert_gpu_scratch_layout(&s, T);
  int64_t maxTiles = moert_gpu_max_tiles(&s, T);
  std::vector<int32_t> tiles(3 * maxTiles + 1);
  if ((e = d.download(tiles.data(), d.scratch + l.tiles, tiles.size() * 4, "copy")).size())
    return e;
  std::vector<bool> used(s.E + 1, false);
  for (int32_t i = 0; i < tiles[3 * maxTiles] && i < maxTiles; ++i)
    if (tiles[3 * i] >= 0 && tiles[3 * i] <= s.E)
      used[tiles[3 * i]] = true;
  int64_t experts = 0;
  for (int64_t x = 0; x < s.E; ++x)
    experts += used[x];
  // Routed experts' fc1/fc2 (and their int8/int4 scales: slots 15, 16) for the experts used; router; shared
  // expert (12, 13) and its scales (17, 18).
  const uint64_t *b = k.weightBytes;
  weightBytes = double(b[0] + b[1] + b[15] + b[16]) * double(experts) / double(s.E) + double(b[2]) +
                double(b[12] + b[13] + b[17] + b[18]);
  return "";
}

std::string run(Device &d, Residency &r, int index, int64_t T, const float *input, const float *logits,
                const float *residual, float *output, double *gpuMs) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (index < 0 || size_t(index) >= d.dispatches.size())
    return "internal: no GPU kernels for dispatch " + std::to_string(index);
  Kernels &k = d.dispatches[index];
  const moert_gpu_shape &s = k.shape;
  if (T <= 0)
    return "";
  if (T > (int64_t(1) << 31) / std::max<int64_t>(1, s.H + s.N + s.K + 1))
    return "dispatch " + std::to_string(index) + ": " + std::to_string(T) + " tokens are more than the GPU kernels index";
  const size_t rows = sizeof(float) * size_t(T * s.H);
  const moert_gpu_moe_launches plan = planOf(d, k, T);
  Ptr in = 0, lg = 0, res = 0, out = 0;
  std::string e;
  if ((e = d.grow(d.scratch, d.scratchBytes, plan.scratch)).size() || (e = r.input(input, rows, in)).size() ||
      (logits && (e = r.input(logits, sizeof(float) * size_t(T * s.N), lg)).size()) ||
      (residual && (e = r.input(residual, rows, res)).size()) || (e = r.output(output, rows, out)).size())
    return "dispatch " + std::to_string(index) + ": " + e;
  moert_gpu_args args{};
  args.tokens = T;
  args.input = reinterpret_cast<const float *>(in);
  args.logits = reinterpret_cast<const float *>(lg);
  args.residual = reinterpret_cast<const float *>(res);
  args.output = reinterpret_cast<float *>(out);
  for (int i = 0; i < MOERT_GPU_SLOTS; ++i)
    args.weights[i] = reinterpret_cast<const void *>(k.weights[i]);
  args.scratch = reinterpret_cast<void *>(d.scratch);
  args.state = reinterpret_cast<void *>(k.state);
  args.f_splits = plan.f_splits;
  k.last = args;
  if ((e = timed(d, gpuMs, [&] { return launchAll(d, k, plan, args); })).size())
    return "dispatch " + std::to_string(index) + ": " + e;
  return "";
}

bool hasLinear(const Device &d, int index) {
  return index >= 0 && size_t(index) < d.linears.size() && d.linears[index].gemv;
}

// ---- linear dispatches
// -------------------------------------------------------------------------------------

namespace {
/// The kernels of linear dispatch `k` on `args` (device addresses), in the order and on the grids of `plan`
/// (moert_gpu_lin_plan for M rows).
std::string launchLinear(Device &d, const LinearKernels &k, const moert_gpu_linear_launches &plan,
                         moert_gpu_linear_args args) {
  std::string e;
  if (plan.norm_blocks && (e = d.launch(k.norm, plan.norm_blocks, 1, 1, args, "launch (linear norm)")).size())
    return e;
  if (plan.gemm)
    return d.launch(k.gemm, plan.gemm_grid[0], plan.gemm_grid[1], 1, args, "launch (linear gemm)");
  if ((e = d.launch(k.gemv, plan.gemv_grid[0], plan.gemv_grid[1], 1, args, "launch (linear gemv)")).size() ||
      !plan.reduce_blocks)
    return e;
  return d.launch(k.reduce, plan.reduce_blocks, 1, 1, args, "launch (linear reduce)");
}

moert_gpu_linear_launches planOf(const LinearKernels &k, int64_t M) {
  return moert_gpu_lin_plan(k.k, k.n, k.qbits, k.fusedNorm, M);
}
} // namespace

std::string runLinear(Device &d, Residency &r, int index, int64_t M, const float *input,
                      const float *residual, float *const *outputs, double *gpuMs) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (!hasLinear(d, index))
    return "internal: no GPU kernels for linear dispatch " + std::to_string(index);
  LinearKernels &k = d.linears[index];
  if (M <= 0)
    return "";
  const std::string what = "linear dispatch " + std::to_string(index);
  if (M > (int64_t(1) << 31) / std::max<int64_t>(1, std::max(k.k, k.n)))
    return what + ": " + std::to_string(M) + " rows are more than the GPU kernels index";
  const moert_gpu_linear_launches plan = planOf(k, M);
  moert_gpu_linear_args args{};
  args.rows = M;
  Ptr in = 0, res = 0;
  std::string e;
  if ((e = d.grow(d.scratch, d.scratchBytes, plan.scratch)).size() ||
      (e = r.input(input, sizeof(float) * size_t(M * k.k), in)).size() ||
      (residual && (e = r.input(residual, sizeof(float) * size_t(M * k.n), res)).size()))
    return what + ": " + e;
  for (size_t j = 0; j < k.columns.size() && j < MOERT_LIN_MAX_OUTPUTS; ++j) {
    Ptr out = 0;
    if ((e = r.output(outputs[j], sizeof(float) * size_t(M * k.columns[j]), out)).size())
      return what + ": " + e;
    args.outputs[j] = reinterpret_cast<float *>(out);
  }
  args.input = reinterpret_cast<const float *>(in);
  args.residual = reinterpret_cast<const float *>(res);
  for (int i = 0; i < MOERT_LIN_SLOTS; ++i)
    args.weights[i] = reinterpret_cast<const void *>(k.weights[i]);
  args.scratch = reinterpret_cast<void *>(d.scratch);
  args.k_splits = plan.k_splits;
  k.last = args;
  if ((e = timed(d, gpuMs, [&] { return launchLinear(d, k, plan, args); })).size())
    return what + ": " + e;
  return "";
}

std::string timeLinear(Device &d, int index, int repeats, double &usPerCall, double &weightBytes) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (!hasLinear(d, index) || d.linears[index].last.rows <= 0)
    return "linear dispatch " + std::to_string(index) + " has not run on the GPU yet";
  const LinearKernels &k = d.linears[index];
  const moert_gpu_linear_launches plan = planOf(k, k.last.rows);
  if (std::string e = d.grow(d.scratch, d.scratchBytes, plan.scratch); !e.empty())
    return e;
  moert_gpu_linear_args args = k.last;
  args.scratch = reinterpret_cast<void *>(d.scratch);
  std::string e = timeRepeats(d, repeats, usPerCall, [&] { return launchLinear(d, k, plan, args); });
  if (!e.empty())
    return e;
  weightBytes = double(k.weightBytes);
  return "";
}

// ---- attention dispatches ---------------------------------------------------------------------------------

bool hasAttention(const Device &d, int index) {
  return index >= 0 && size_t(index) < d.attentions.size() && d.attentions[index].attend[0];
}

std::string runAttention(Device &d, Residency &r, int index, const moert_attention_args &host, size_t qBytes,
                         size_t kBytes, size_t vBytes, size_t maskBytes, size_t sinkBytes, size_t outBytes,
                         double *gpuMs) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  if (!hasAttention(d, index))
    return "internal: no GPU kernels for attention dispatch " + std::to_string(index);
  const AttentionKernels &k = d.attentions[index];
  const std::string what = "attention dispatch " + std::to_string(index);
  if (host.batch <= 0 || host.q_len <= 0)
    return "";
  void *attend = host.kv_storage == MOERT_STORAGE_F32    ? k.attend[0]
                 : host.kv_storage == MOERT_STORAGE_BF16 ? k.attend[1]
                 : host.kv_storage == MOERT_STORAGE_F16  ? k.attend[2]
                                                         : nullptr;
  if (!attend) // (int8: a session's cache, appended in place: the run loop keeps those on the CPU)
    return "internal: " + what + ": the GPU kernels do not read keys and values of storage " +
           std::to_string(host.kv_storage);
  const moert_gpu_attention_launches plan =
      moert_gpu_attn_plan(host.batch, k.hkv, k.g, k.dv, host.q_len, host.kv_len, d.warps);
  if (plan.attend_grid[1] > 65535 || plan.attend_grid[0] > (int64_t(1) << 31) - 1)
    return what + ": " + std::to_string(host.batch) + " batches of " + std::to_string(host.q_len) +
           " positions are more than the GPU kernels' grid holds";
  moert_gpu_attention_args args{};
  args.a = host;
  args.a.exec = nullptr;
  args.splits = plan.splits;
  Ptr q = 0, kk = 0, v = 0, mask = 0, sinks = 0, out = 0;
  std::string e;
  if ((e = d.grow(d.scratch, d.scratchBytes, plan.scratch)).size() ||
      (e = r.input(host.query, qBytes, q)).size() ||
      (host.kv_len > 0 &&
       ((e = r.input(host.key, kBytes, kk)).size() || (e = r.input(host.value, vBytes, v)).size())) ||
      (host.mask && maskBytes && (e = r.input(host.mask, maskBytes, mask)).size()) ||
      (host.sinks && (e = r.input(host.sinks, sinkBytes, sinks)).size()) ||
      (e = r.output(host.output, outBytes, out)).size())
    return what + ": " + e;
  args.a.query = reinterpret_cast<const float *>(q);
  args.a.key = reinterpret_cast<const void *>(kk);
  args.a.value = reinterpret_cast<const void *>(v);
  args.a.mask = host.mask ? reinterpret_cast<const float *>(mask) : nullptr;
  args.a.sinks = host.sinks ? reinterpret_cast<const float *>(sinks) : nullptr;
  args.a.output = reinterpret_cast<float *>(out);
  args.a.scratch = reinterpret_cast<void *>(d.scratch);
  if ((e = timed(d, gpuMs, [&] {
         std::string le = d.launch(attend, plan.attend_grid[0], plan.attend_grid[1], plan.attend_grid[2],
                                   args, "launch (attention)");
         if (le.empty() && plan.merge_blocks)
           le = d.launch(k.merge, plan.merge_blocks, 1, 1, args, "launch (attention merge)");
         return le;
       })).size())
    return what + ": " + e;
  return "";
}

// ---- graph ops --------------------------------------------------------------------------------------------

OpKernels opKernels(const Device &d) {
  OpKernels k;
  k.strided = d.strided, k.reduce = d.reduce, k.conv = d.conv, k.topk = d.topk, k.rotary = d.rotary;
  k.norm = d.norm;
  k.embedding = d.embedding;
  return k;
}

bool runsDispatch(const Device &d, const pb::Step &s) {
  return s.has_moe() || (s.has_linear() && hasLinear(d, int(s.linear().index()))) ||
         (s.has_attention() && hasAttention(d, int(s.attention().index())));
}

namespace {
using ops::stridesOf;
/// The integers of a parameter input (int64 or int32 host bytes of `dims`); false when it is not one.
bool readInts(const std::vector<int64_t> &dims, int dtype, const void *host, std::vector<int64_t> &v) {
  if (!host || (dtype != pb::I64 && dtype != pb::I32) || dims.size() > 1)
    return false;
  const int64_t n = dims.empty() ? 1 : dims[0];
  v.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i)
    v[i] = dtype == pb::I64 ? static_cast<const int64_t *>(host)[i] : static_cast<const int32_t *>(host)[i];
  return true;
}
} // namespace

bool planOp(const pb::OpStep &op, const std::vector<std::vector<int64_t>> &in, const std::vector<int> &dtypes,
            const std::vector<const void *> &host, OpPlan &plan) {
  plan = OpPlan{};
  const std::string &name = op.op();
  const ops::Attrs attrs{op};
  for (const auto &d : in)
    if (d.size() > MOERT_GPU_OP_RANK)
      return false;
  auto launch = [&](const std::vector<int64_t> &dims, int a, int b) -> OpPlan::Launch & {
    OpPlan::Launch l;
    l.a = a, l.b = b;
    l.args.rank = int32_t(dims.size());
    l.args.n = 1;
    for (size_t k = 0; k < dims.size(); ++k)
      l.args.dims[k] = dims[k], l.args.n *= dims[k];
    plan.launches.push_back(l);
    return plan.launches.back();
  };
  // A launch that reads input `a` at `strides` from `offset` into all of output `out` (of `dims`) at `at`.
  auto copy = [&](const std::vector<int64_t> &dims, int a, const std::vector<int64_t> &strides,
                  int64_t offset, int out, const std::vector<int64_t> &outStrides, int64_t at) {
    OpPlan::Launch &l = launch(dims, a, -1);
    for (size_t k = 0; k < dims.size(); ++k)
      l.args.a_strides[k] = strides[k], l.args.out_strides[k] = outStrides[k];
    l.args.a_offset = offset, l.args.out_offset = at, l.out = out;
  };
  auto ints = [&](size_t k, std::vector<int64_t> &v) {
    return k < in.size() && k < dtypes.size() && k < host.size() && readInts(in[k], dtypes[k], host[k], v);
  };
  auto present = [&](size_t k) { return k < in.size() && k < dtypes.size() && dtypes[k] >= 0; };
  // The row-wise fused ops, planned by the CPU op's own checks (planRotary / planNorm; anything else runs on
  // the host, which reports it); an absent optional input has no dims.
  auto optional = [&](size_t k) { return in.size() > k && !in[k].empty() ? &in[k] : nullptr; };
  if (name == "moec.Rotary") {
    RotaryPlan g;
    if (in.size() != MOERT_ROTARY_INPUTS ||
        !planRotary(op, in[MOERT_ROTARY_INPUT], in[MOERT_ROTARY_COS], in[MOERT_ROTARY_SIN],
                    optional(MOERT_ROTARY_NORM_WEIGHT), g)
             .empty())
      return false;
    moert_gpu_rotary_args &r = plan.rotary;
    r.A1 = g.A1, r.A2 = g.A2, r.D = g.D, r.rows = g.B * g.A1 * g.A2, r.R = g.R, r.W = g.W, r.S = g.S;
    r.seq_axis = g.seqAxis, r.interleaved = g.interleaved, r.deinterleave = g.deinterleave;
    r.transpose = g.transpose, r.cos_batch = g.cosBatch, r.eps = g.eps;
    plan.fused = 1;
    plan.outDims = {g.outDims};
    return true;
  }
  if (name == "moec.Embedding") {
    EmbeddingPlan &g = plan.embedding;
    if (in.size() != MOERT_EMBED_SLOTS + 1 || dtypes.size() != in.size() ||
        !planEmbedding(op, in[MOERT_EMBED_ROWS], dtypes[MOERT_EMBED_ROWS], optional(MOERT_EMBED_SCALES),
                       dtypes[MOERT_EMBED_SCALES], in[MOERT_EMBED_SLOTS], dtypes[MOERT_EMBED_SLOTS], g)
             .empty())
      return false;
    plan.fused = 3;
    plan.outDims = {g.outDims};
    return true;
  }
  if (name == "moec.Norm") {
    NormPlan g;
    if (in.size() != MOERT_NORM_INPUTS ||
        !planNorm(op, in[MOERT_NORM_INPUT], in[MOERT_NORM_WEIGHT], optional(MOERT_NORM_BIAS), g).empty())
      return false;
    moert_gpu_norm_args &n = plan.norm;
    n.d = g.d, n.rows = g.rows, n.kind = int32_t(g.kind), n.eps = g.eps;
    plan.fused = 2;
    plan.outDims = {in[MOERT_NORM_INPUT]};
    return true;
  }
  if (in.empty() || !present(0))
    return false;
  const std::vector<int64_t> &x = in[0];
  if (name == "TopK") { // the CPU op's checks; K read on the host
    std::vector<int64_t> kk;
    int64_t axis = attrs.i("axis", -1);
    axis += axis < 0 ? int64_t(x.size()) : 0;
    if (in.size() != 2 || x.empty() || axis < 0 || axis >= int64_t(x.size()) || !ints(1, kk) ||
        kk.size() != 1 || kk[0] < 0 || kk[0] > x[axis] || x[axis] > (int64_t(1) << 30))
      return false;
    moert_gpu_topk_args &t = plan.topk;
    t.n = x[axis], t.k = kk[0], t.largest = attrs.i("largest", 1) != 0;
    t.inner = 1, t.rows = 1;
    for (size_t d = 0; d < x.size(); ++d)
      if (int64_t(d) != axis)
        (int64_t(d) > axis ? t.inner : t.rows) *= x[d];
    t.rows *= t.inner;
    std::vector<int64_t> out = x;
    out[axis] = t.k;
    plan.fused = 6;
    plan.outDims = {out, out};
    return true;
  }
  if (name == "Conv") { // X on the device, W and B side inputs (constants: uploaded once)
    ConvPlan g;
    if (in.size() < 2 || !present(1) || !planConv(op, x, in[1], g).empty() ||
        g.kern.size() > MOERT_GPU_CONV_DIMS || (present(2) && (in[2].size() != 1 || in[2][0] != g.M)))
      return false;
    moert_gpu_conv_args &c = plan.conv;
    c.N = g.N, c.C = g.C, c.M = g.M, c.group = g.group, c.sp = int64_t(g.kern.size());
    c.n = 1;
    for (int64_t v : g.outDims)
      c.n *= v;
    for (size_t d = 0; d < g.kern.size(); ++d)
      c.in_dims[d] = g.inSp[d], c.out_dims[d] = g.outSp[d], c.kern[d] = g.kern[d],
      c.strides[d] = g.strides[d], c.dil[d] = g.dil[d], c.pads[d] = g.pads[d];
    plan.fused = 5;
    plan.outDims = {g.outDims};
    return true;
  }
  if (const int red = reduceKind(name); red >= 0) {
    // Kept dims (the rows) and reduced dims, each with its element strides in x; the output is the kept
    // dims (keepdims or not: the same bytes), or x's own shape for softmax.
    std::vector<bool> reduced;
    std::vector<int64_t> axes;
    if (red >= MOERT_GPU_RED_SOFTMAX) {
      const int64_t ax = ops::normAxis(attrs.i("axis", -1), int64_t(x.size()));
      if (x.empty() || ax < 0 || ax >= int64_t(x.size()))
        return false;
      reduced.assign(x.size(), false);
      reduced[ax] = true;
    } else if ((present(1) && !ints(1, axes)) ||
               !reducedAxes(x.size(), axes, attrs.i("noop_with_empty_axes", 0) != 0, reduced).empty()) {
      return false;
    }
    moert_gpu_reduce_args &r = plan.reduce;
    r.kind = red;
    r.rows = 1, r.n = 1;
    const std::vector<int64_t> xs = stridesOf(x);
    std::vector<int64_t> out;
    const bool keep = attrs.i("keepdims", 1) != 0;
    for (size_t k = 0; k < x.size(); ++k) {
      if (reduced[k]) {
        r.red_dims[r.red_rank] = x[k], r.red_strides[r.red_rank++] = xs[k], r.n *= x[k];
        if (keep)
          out.push_back(1);
      } else {
        r.dims[r.rank] = x[k], r.strides[r.rank++] = xs[k], r.rows *= x[k];
        out.push_back(x[k]);
      }
    }
    if ((r.n == 0 && red != MOERT_GPU_RED_SUM && red != MOERT_GPU_RED_MEAN) || r.rows == 0)
      return false; // the host's empty-axis rules
    plan.fused = 4;
    plan.outDims = {red >= MOERT_GPU_RED_SOFTMAX ? x : out};
    return true;
  }
  if (const int kind = elementwiseKind(name); kind >= 0) {
    if (kind != MOERT_GPU_OP_COPY && kind < MOERT_GPU_OP_UNARY &&
        !((name == "Max" || name == "Min") && in.size() == 1)) { // binary, broadcasting
      ops::Broadcast b;
      std::string why;
      if (in.size() != 2 || !present(1) || !ops::broadcast({&x, &in[1]}, b, why))
        return false;
      const std::vector<int64_t> &out = b.dims, os = stridesOf(out);
      plan.outDims = {out};
      OpPlan::Launch &l = launch(out, 0, 1);
      l.args.kind = kind;
      for (size_t k = 0; k < out.size(); ++k)
        l.args.a_strides[k] = b.strides[0][k], l.args.b_strides[k] = b.strides[1][k],
        l.args.out_strides[k] = os[k];
      return true;
    }
    // Unary, as one run of numel elements.
    if (in.size() > (name == "Clip" ? 3u : 1u))
      return false;
    int64_t n = 1;
    for (int64_t v : x)
      n *= v;
    plan.outDims = {x};
    OpPlan::Launch &l = launch({n}, 0, -1);
    l.args.kind = name == "Gelu" && attrs.str("approximate", "none") == "tanh" ? MOERT_GPU_OP_GELU_TANH
                  : kind < MOERT_GPU_OP_UNARY ? MOERT_GPU_OP_COPY // Max / Min of one input
                                              : kind;
    l.args.a_strides[0] = l.args.out_strides[0] = 1;
    l.args.alpha = name == "LeakyRelu"     ? float(attrs.f("alpha", 0.01f))
                   : name == "Elu"         ? float(attrs.f("alpha", 1.0f))
                   : name == "HardSigmoid" ? float(attrs.f("alpha", 0.2f))
                                           : 0.0f;
    l.args.beta = name == "HardSigmoid" ? float(attrs.f("beta", 0.5f)) : 0.0f;
    if (name == "Clip") { // bounds from constant f32 scalars (opQualifies), else the f32 range
      l.args.alpha = -std::numeric_limits<float>::max(), l.args.beta = std::numeric_limits<float>::max();
      for (size_t k = 1; k < in.size(); ++k) {
        if (!present(k))
          continue;
        int64_t count = 1;
        for (int64_t v : in[k])
          count *= v;
        if (dtypes[k] != pb::F32 || count > 1 || !host[k])
          return false;
        if (count == 1)
          (k == 1 ? l.args.alpha : l.args.beta) = *static_cast<const float *>(host[k]);
      }
    }
    return true;
  }
  const size_t rank = x.size();
  const std::vector<int64_t> xs = stridesOf(x);
  if (name == "Transpose") {
    if (in.size() != 1)
      return false;
    std::vector<int64_t> perm;
    perm = attrs.ints("perm");
    if (perm.empty())
      for (size_t k = rank; k-- > 0;)
        perm.push_back(int64_t(k));
    if (perm.size() != rank)
      return false;
    std::vector<bool> seen(rank, false);
    std::vector<int64_t> out(rank), st(rank);
    for (size_t k = 0; k < rank; ++k) {
      if (perm[k] < 0 || perm[k] >= int64_t(rank) || seen[perm[k]])
        return false;
      seen[perm[k]] = true;
      out[k] = x[perm[k]], st[k] = xs[perm[k]];
    }
    plan.outDims = {out};
    copy(out, 0, st, 0, 0, stridesOf(out), 0);
    return true;
  }
  if (name == "Concat") {
    int64_t axis = attrs.i("axis", 0);
    if (axis < 0)
      axis += int64_t(rank);
    if (axis < 0 || axis >= int64_t(rank))
      return false;
    std::vector<int64_t> out = x;
    out[axis] = 0;
    for (const auto &d : in) {
      if (d.size() != rank)
        return false;
      for (int64_t k = 0; k < int64_t(rank); ++k)
        if (k != axis && d[k] != out[k])
          return false;
      out[axis] += d[axis];
    }
    plan.outDims = {out};
    const std::vector<int64_t> os = stridesOf(out);
    int64_t at = 0;
    for (size_t j = 0; j < in.size(); ++j) {
      copy(in[j], int(j), stridesOf(in[j]), 0, 0, os, at * os[axis]);
      at += in[j][axis];
    }
    return true;
  }
  if (name == "Slice") { // starts, ends, axes, steps: opset 10's inputs (parameters)
    std::vector<int64_t> starts, ends, axes, steps;
    SlicePlan g;
    if (in.size() < 3 || !ints(1, starts) || !ints(2, ends) || (present(3) && !ints(3, axes)) ||
        (present(4) && !ints(4, steps)) || !planSlice(x, starts, ends, axes, steps, g).empty())
      return false;
    plan.outDims = {g.outDims};
    copy(g.outDims, 0, g.strides, g.start, 0, stridesOf(g.outDims), 0);
    return true;
  }
  if (name == "Split") {
    int64_t axis = attrs.i("axis", 0);
    if (axis < 0)
      axis += int64_t(rank);
    std::vector<int64_t> given, sizes;
    const int64_t n = op.outputs_size();
    if (axis < 0 || axis >= int64_t(rank) || (present(1) && !ints(1, given)) ||
        !splitSizes(x[axis], n, given, sizes).empty())
      return false;
    int64_t at = 0;
    for (int64_t j = 0; j < n; ++j) {
      std::vector<int64_t> out = x;
      out[axis] = sizes[j];
      plan.outDims.push_back(out);
      copy(out, 0, xs, at * xs[axis], int(j), stridesOf(out), 0);
      at += sizes[j];
    }
    return true;
  }
  if (name == "Expand") {
    std::vector<int64_t> shape;
    ops::Broadcast b;
    std::string why;
    if (in.size() != 2 || !ints(1, shape) || !ops::broadcast({&x, &shape}, b, why) ||
        b.dims.size() > MOERT_GPU_OP_RANK)
      return false;
    plan.outDims = {b.dims};
    copy(b.dims, 0, b.strides[0], 0, 0, stridesOf(b.dims), 0);
    return true;
  }
  if (name == "Gather") { // a few indices: one copy of x's slab at each
    std::vector<int64_t> idx;
    int64_t axis = attrs.i("axis", 0);
    if (axis < 0)
      axis += int64_t(rank);
    if (in.size() != 2 || axis < 0 || axis >= int64_t(rank) || in[1].size() > 1 || !ints(1, idx) ||
        idx.size() > 16)
      return false;
    std::vector<int64_t> out(x.begin(), x.begin() + axis);
    out.insert(out.end(), in[1].begin(), in[1].end());
    out.insert(out.end(), x.begin() + axis + 1, x.end());
    if (out.size() > MOERT_GPU_OP_RANK)
      return false;
    plan.outDims = {out};
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < int64_t(rank); ++k)
      (k < axis ? outer : inner) *= k == axis ? 1 : x[k];
    const int64_t len = x[axis], ni = int64_t(idx.size());
    for (int64_t j = 0; j < ni; ++j) {
      int64_t i = idx[j];
      if (i < -len || i >= len)
        return false; // the host reports the index
      i += i < 0 ? len : 0;
      copy({outer, inner}, 0, {len * inner, 1}, i * inner, 0, {ni * inner, 1}, j * inner);
    }
    return true;
  }
  return false;
}

namespace {
/// The destination of an op writing a session cache's new positions (callers hold d.mutex).
std::string cacheDest(Residency &r, const CacheWrite &w, moert_gpu_cache_dest &cd) {
  if (std::string e = cacheForWrite(r, *w.cache, w.host); !e.empty())
    return e;
  cd.heads = w.heads, cd.capacity = w.capacity, cd.past = w.past;
  cd.storage = kvStorage(w.dtype), cd.cache = reinterpret_cast<void *>(w.cache->p);
  return "";
}
/// One rotary embedding's part of a launch: its inputs' device copies, its output's (or its cache's rows).
std::string rotaryPart(Residency &r, const OpRun &op, moert_gpu_rotary_args &a) {
  std::vector<Ptr> in(op.inputs.size(), 0);
  std::string e;
  for (size_t j = 0; j < op.inputs.size(); ++j)
    if (op.inputs[j].first && op.inputs[j].second &&
        (e = r.input(op.inputs[j].first, op.inputs[j].second, in[j])).size())
      return e;
  Ptr out = 0;
  a = op.plan.rotary;
  if (op.dest ? (e = cacheDest(r, *op.dest, a.dest)).size()
              : op.outputs[0].second && (e = r.output(op.outputs[0].first, op.outputs[0].second, out)).size())
    return e;
  auto at = [&](size_t j) {
    return j < in.size() && in[j] ? reinterpret_cast<const float *>(in[j]) : nullptr;
  };
  a.x = at(MOERT_ROTARY_INPUT), a.cos = at(MOERT_ROTARY_COS), a.sin = at(MOERT_ROTARY_SIN);
  a.norm_weight = at(MOERT_ROTARY_NORM_WEIGHT), a.out = reinterpret_cast<float *>(out);
  return "";
}
} // namespace

std::string runOp(Device &d, Residency &r, const OpPlan &plan,
                  const std::vector<std::pair<const void *, size_t>> &inputs,
                  const std::vector<std::pair<void *, size_t>> &outputs, const CacheWrite *dest,
                  const OpRun *with) {
  std::lock_guard<std::mutex> lock(d.mutex);
  d.setCurrent();
  std::string e;
  if (plan.fused == 1) { // moec.Rotary, and another one (`with`) in the same launch
    if (with && with->plan.fused != 1)
      return "internal: a rotary embedding launched with another kind of op";
    moert_gpu_rotary_launch l{};
    if ((e = rotaryPart(r, OpRun{plan, inputs, outputs, dest}, l.part[0])).size() ||
        (with && (e = rotaryPart(r, *with, l.part[1])).size()))
      return e;
    const int64_t blocks = moert_gpu_rotary_blocks(&l, d.warps);
    if (blocks && (e = d.launch(d.rotary, blocks, 1, 1, l, "launch (rotary)")).size())
      return e;
    for (const CacheWrite *w : {dest, with ? with->dest : nullptr})
      if (w)
        cacheWritten(r, w->host);
    return "";
  }
  if (with || (dest && (plan.fused || plan.launches.size() != 1)))
    return "internal: only a rotary embedding or a one-launch copy writes a KV cache";
  moert_gpu_cache_dest cd{}; // the output's host range gets no device copy: the cache's rows are the result
  if (dest && (e = cacheDest(r, *dest, cd)).size())
    return e;
  std::vector<Ptr> in(inputs.size(), 0), out(outputs.size(), 0);
  if (plan.fused) { // every present input (the side ones uploaded when not there), then one launch
    for (size_t j = 0; j < inputs.size(); ++j)
      if (inputs[j].first && inputs[j].second &&
          (e = r.input(inputs[j].first, inputs[j].second, in[j])).size())
        return e;
    if (!dest && outputs[0].second && (e = r.output(outputs[0].first, outputs[0].second, out[0])).size())
      return e;
    auto at = [&](size_t j) {
      return j < in.size() && in[j] ? reinterpret_cast<const float *>(in[j]) : nullptr;
    };
    if (plan.fused == 6) {
      moert_gpu_topk_args a = plan.topk;
      if (outputs.size() != 2 ||
          (outputs[1].second && (e = r.output(outputs[1].first, outputs[1].second, out[1])).size()))
        return e.empty() ? "internal: TopK without its indices" : e;
      a.x = at(0), a.values = reinterpret_cast<float *>(out[0]),
      a.indices = reinterpret_cast<int64_t *>(out[1]);
      const int64_t blocks = (a.rows + d.warps - 1) / d.warps;
      return blocks && a.k ? d.launch(d.topk, blocks, 1, 1, a, "launch (topk)") : "";
    }
    if (plan.fused == 5) {
      moert_gpu_conv_args a = plan.conv;
      a.x = at(0), a.w = at(1), a.b = at(2), a.y = reinterpret_cast<float *>(out[0]);
      return a.n ? d.launch(d.conv, moert_gpu_op_blocks(a.n), 1, 1, a, "launch (conv)") : "";
    }
    if (plan.fused == 4) {
      moert_gpu_reduce_args a = plan.reduce;
      a.x = at(0), a.out = reinterpret_cast<float *>(out[0]);
      const int64_t blocks = (a.rows + d.warps - 1) / d.warps;
      return blocks ? d.launch(d.reduce, blocks, 1, 1, a, "launch (reduction)") : "";
    }
    if (plan.fused == 3) { // the indices are checked where they are (the host) before a block reads a row
      const EmbeddingPlan &g = plan.embedding;
      const void *idx = inputs[MOERT_EMBED_SLOTS].first;
      for (int64_t j = 0, row = 0; j < g.n; ++j)
        if (std::string why = embeddingRow(
                g, g.idx64 ? static_cast<const int64_t *>(idx)[j] : static_cast<const int32_t *>(idx)[j],
                row);
            !why.empty())
          return why;
      moert_gpu_embed_args a{};
      a.n = g.n, a.h = g.h, a.rows = g.rows, a.block = g.block, a.nb = g.nb;
      a.row_bytes = g.rowBytes;
      a.storage = g.storage, a.idx64 = g.idx64;
      a.table = reinterpret_cast<const void *>(in[MOERT_EMBED_ROWS]);
      a.idx = reinterpret_cast<const void *>(in[MOERT_EMBED_SLOTS]);
      a.scales = at(MOERT_EMBED_SCALES), a.out = reinterpret_cast<float *>(out[0]);
      return a.n ? d.launch(d.embedding, a.n, 1, 1, a, "launch (embedding)") : "";
    }
    moert_gpu_norm_args a = plan.norm;
    a.x = at(MOERT_NORM_INPUT), a.w = at(MOERT_NORM_WEIGHT), a.b = at(MOERT_NORM_BIAS);
    a.out = reinterpret_cast<float *>(out[0]);
    return a.rows ? d.launch(d.norm, a.rows, 1, 1, a, "launch (norm)") : "";
  }
  for (const auto &l : plan.launches)
    for (int j : {l.a, l.b})
      if (j >= 0 && !in[j] && inputs[j].second &&
          (e = r.input(inputs[j].first, inputs[j].second, in[j])).size())
        return e;
  for (size_t j = 0; j < outputs.size(); ++j)
    if (!dest && outputs[j].second && (e = r.output(outputs[j].first, outputs[j].second, out[j])).size())
      return e;
  for (const auto &l : plan.launches) {
    if (l.args.n == 0)
      continue;
    moert_gpu_op_args args = l.args;
    args.a = reinterpret_cast<const float *>(in[l.a]);
    args.b = l.b >= 0 ? reinterpret_cast<const float *>(in[l.b]) : nullptr;
    args.out = reinterpret_cast<float *>(out[l.out]);
    if (dest) { // [B, H, S, D] out: row (b, h, s) of the cache
      if (args.rank != 4)
        return "internal: a KV cache written from a rank-" + std::to_string(args.rank) + " result";
      const int64_t D = args.dims[3];
      args.out_strides[3] = 1, args.out_strides[2] = D, args.out_strides[1] = cd.capacity * D;
      args.out_strides[0] = cd.heads * cd.capacity * D, args.out_offset = cd.past * D;
      args.out_storage = cd.storage, args.out = static_cast<float *>(cd.cache);
    }
    if ((e = d.launch(d.strided, moert_gpu_op_blocks(args.n), 1, 1, args, "launch (graph op)")).size())
      return e;
  }
  if (dest)
    cacheWritten(r, dest->host);
  return "";
}

std::string probe(int device, bool measure, std::string &description) {
  std::unique_ptr<Device> dp;
  if (std::string e = startAny(device, dp); !e.empty())
    return e;
  Device &d = *dp;
  description = describe(d);
  if (!measure)
    return "";
  const size_t bytes = size_t(1) << 30;
  Ptr a = 0, b = 0;
  if (std::string e = d.alloc(bytes, a); !e.empty())
    return e;
  if (std::string e = d.alloc(bytes, b); !e.empty())
    return e;
  d.drv.memsetD8(a, 1, bytes, d.stream);
  double best = 1e30;
  for (int i = 0; i < 12; ++i) {
    d.drv.eventRecord(d.ev0, d.stream);
    d.drv.dtod(b, a, bytes, d.stream);
    d.drv.eventRecord(d.ev1, d.stream);
    if (std::string e = d.check(d.drv.streamSync(d.stream), "copy"); !e.empty())
      return e;
    float ms = 0;
    d.drv.eventElapsed(&ms, d.ev0, d.ev1);
    if (i >= 2)
      best = std::min(best, double(ms));
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "; device-to-device copy %.0f GB/s (bytes read + written, best of 10 x 1 GiB)",
                2.0 * bytes / (best * 1e-3) / 1e9);
  description += buf;
  return "";
}

} // namespace moert::gpu

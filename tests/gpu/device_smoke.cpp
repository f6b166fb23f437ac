//===- device_smoke.cpp - can this machine run moec's GPU tests? ---------===//
//
// GPU smoke test (label `gpu`): finds a GPU through the vendor driver loaded at run time (CUDA driver API,
// then HIP), copies a buffer host -> device -> host and checks the bytes. Exits 77 (ctest: skipped) when no
// driver library or no device exists, 1 when a device exists but the round trip fails. Links nothing GPU-
// specific, so it builds everywhere.
//
//===----------------------------------------------------------------------===//
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <vector>

namespace {
constexpr int kSkip = 77;

std::vector<unsigned char> pattern(size_t n) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<unsigned char>((i * 131u + 7u) & 0xffu);
  return v;
}

template <typename F> F sym(void *lib, const char *name) { return reinterpret_cast<F>(dlsym(lib, name)); }

// Returns 0 on success, 1 on failure, kSkip when CUDA is not usable here.
int tryCuda() {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return kSkip;
  using Fn0 = int (*)(unsigned);
  using FnCount = int (*)(int *);
  using FnGet = int (*)(int *, int);
  using FnName = int (*)(char *, int, int);
  using FnRetain = int (*)(void **, int);
  using FnSet = int (*)(void *);
  using FnAlloc = int (*)(unsigned long long *, size_t);
  using FnHtoD = int (*)(unsigned long long, const void *, size_t);
  using FnDtoH = int (*)(void *, unsigned long long, size_t);
  using FnFree = int (*)(unsigned long long);
  auto cuInit = sym<Fn0>(lib, "cuInit");
  auto cuDeviceGetCount = sym<FnCount>(lib, "cuDeviceGetCount");
  auto cuDeviceGet = sym<FnGet>(lib, "cuDeviceGet");
  auto cuDeviceGetName = sym<FnName>(lib, "cuDeviceGetName");
  auto cuDevicePrimaryCtxRetain = sym<FnRetain>(lib, "cuDevicePrimaryCtxRetain");
  auto cuCtxSetCurrent = sym<FnSet>(lib, "cuCtxSetCurrent");
  auto cuMemAlloc = sym<FnAlloc>(lib, "cuMemAlloc_v2");
  auto cuMemcpyHtoD = sym<FnHtoD>(lib, "cuMemcpyHtoD_v2");
  auto cuMemcpyDtoH = sym<FnDtoH>(lib, "cuMemcpyDtoH_v2");
  auto cuMemFree = sym<FnFree>(lib, "cuMemFree_v2");
  if (!cuInit || !cuDeviceGetCount || !cuDeviceGet || !cuDeviceGetName || !cuDevicePrimaryCtxRetain ||
      !cuCtxSetCurrent || !cuMemAlloc || !cuMemcpyHtoD || !cuMemcpyDtoH || !cuMemFree) {
    std::fprintf(stderr, "device_smoke: libcuda.so.1 lacks a driver API entry point\n");
    return 1;
  }
  int count = 0;
  if (cuInit(0) != 0 || cuDeviceGetCount(&count) != 0 || count == 0)
    return kSkip;
  int dev = 0;
  char name[256] = {0};
  void *ctx = nullptr;
  if (cuDeviceGet(&dev, 0) || cuDeviceGetName(name, sizeof(name), dev) ||
      cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx)) {
    std::fprintf(stderr, "device_smoke: CUDA device 0 enumerates but cannot be opened\n");
    return 1;
  }
  const size_t n = 1 << 20;
  auto in = pattern(n);
  std::vector<unsigned char> out(n, 0);
  unsigned long long d = 0;
  if (cuMemAlloc(&d, n) || cuMemcpyHtoD(d, in.data(), n) || cuMemcpyDtoH(out.data(), d, n) || cuMemFree(d)) {
    std::fprintf(stderr, "device_smoke: CUDA copy through device memory failed on %s\n", name);
    return 1;
  }
  if (std::memcmp(in.data(), out.data(), n) != 0) {
    std::fprintf(stderr, "device_smoke: bytes differ after a round trip through %s\n", name);
    return 1;
  }
  std::printf("device_smoke: CUDA device '%s' (%d found): 1 MiB round trip OK\n", name, count);
  return 0;
}

int tryHip() {
  void *lib = dlopen("libamdhip64.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    lib = dlopen("libamdhip64.so.5", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return kSkip;
  using FnCount = int (*)(int *);
  using FnMalloc = int (*)(void **, size_t);
  using FnCopy = int (*)(void *, const void *, size_t, int);
  using FnFree = int (*)(void *);
  auto hipGetDeviceCount = sym<FnCount>(lib, "hipGetDeviceCount");
  auto hipMalloc = sym<FnMalloc>(lib, "hipMalloc");
  auto hipMemcpy = sym<FnCopy>(lib, "hipMemcpy");
  auto hipFree = sym<FnFree>(lib, "hipFree");
  int count = 0;
  if (!hipGetDeviceCount || !hipMalloc || !hipMemcpy || !hipFree || hipGetDeviceCount(&count) != 0 ||
      count == 0)
    return kSkip;
  const size_t n = 1 << 20;
  auto in = pattern(n);
  std::vector<unsigned char> out(n, 0);
  void *d = nullptr;
  constexpr int kHostToDevice = 1, kDeviceToHost = 2;
  if (hipMalloc(&d, n) || hipMemcpy(d, in.data(), n, kHostToDevice) ||
      hipMemcpy(out.data(), d, n, kDeviceToHost) || hipFree(d) ||
      std::memcmp(in.data(), out.data(), n) != 0) {
    std::fprintf(stderr, "device_smoke: HIP round trip through device memory failed\n");
    return 1;
  }
  std::printf("device_smoke: HIP device (%d found): 1 MiB round trip OK\n", count);
  return 0;
}
} // namespace

int main() {
  int cuda = tryCuda();
  if (cuda != kSkip)
    return cuda;
  int hip = tryHip();
  if (hip != kSkip)
    return hip;
  std::printf("device_smoke: no GPU driver or device here; skipped\n");
  return kSkip;
}

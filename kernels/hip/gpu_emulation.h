//===- gpu_emulation.h - the GPU kernels' vendor primitives, emulated on the host ---===//
//
// Compiles the GPU kernel templates (kernels/hip/*_gpu.h) as plain host C++ and runs them where no GPU is,
// to check their indexing, reductions, barriers and epilogues in CI: the kernel tests (gpu-*-emu) include it,
// and so does the code object moec builds for `--target=emu` (libmoert's emulated device, `--device=emu`,
// which runs whole models through the GPU path). Include this header before the kernel headers: it defines
// what kernels/hip/gpu_vendor.h defines (and that header's include guard), for the host.
//
// Each block's MOERT_GPU_BLOCK threads are fibers on the calling thread (stacks of their own, switched by a
// six-register x86-64 context switch: ucontext's swapcontext makes a system call per switch), switched
// round-robin whenever one waits: at a block barrier (`sync`), and at the warp barrier each warp shuffle
// takes (a lane writes its value, waits for its warp, reads its partner's; values double-buffered, so one
// barrier a shuffle). A warp's lanes run one after another between barriers, so a lane reading another
// lane's shared-memory write with no barrier between them reads the stale value, every time: such races
// fail here even where a GPU's lock-step execution hides them. Blocks run one after another, so
// `GPU_SHARED` (function-local statics) is each block's shared memory in turn and block-order tricks (a
// last-block ticket) see every earlier block finished. The warp width is MOERT_GPU_EMU_WARP (32: NVIDIA,
// RDNA3; 64: CDNA's wavefronts). What this does not show: the device's memory model beyond that, timing,
// resource limits (gpu-code-objects checks those). Fibers switch stacks under the compiler's feet: built
// with AddressSanitizer or ThreadSanitizer (make SANITIZE=..., moec --sanitize) each switch tells the
// sanitizer (its fiber interface), so kernels' out-of-bounds accesses and races are reported, not the
// switches.
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_TESTS_GPU_EMULATION_H
#define MOERT_TESTS_GPU_EMULATION_H

#define MOERT_GPU_VENDOR_H 1 // kernels/hip/gpu_vendor.h: this header stands in for it

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOERT_GPU_EMU_ASAN 1
#include <pthread.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if __has_feature(thread_sanitizer)
#define MOERT_GPU_EMU_TSAN 1
#include <sanitizer/tsan_interface.h>
#endif
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#define GPU_GLOBAL
#define GPU_DEVICE
#define GPU_SHARED static
#define GPU_INLINE inline
#define GPU_LAUNCH_BOUNDS(n)

// A generated kernel entry point (gpu_vendor.h's on a device): an exported host function of the
// moert_gpu_emu_entry type (moert_gpu_abi.h) that libmoert's emulated device calls with the launch's grid,
// block size and parameter array (params[0] points at the Args), running the grid on the calling thread.
#define MOERT_GPU_KERNEL(name, Args, body)                                                                   \
  extern "C" __attribute__((visibility("default"))) void name(unsigned gx, unsigned gy, unsigned gz,         \
                                                              unsigned block, void **params) {               \
    moert_gpu::emulate(&body, *static_cast<const Args *>(params[0]), gx, gy, gz, int(block));                \
  }                                                                                                          \
  static_assert(std::is_same<decltype(&name), moert_gpu_emu_entry>::value, "a kernel entry's type");

#ifndef MOERT_GPU_EMU_WARP
#define MOERT_GPU_EMU_WARP 32
#endif

// moert_emu_switch(&save, load): saves the callee-saved registers on the current stack and its pointer in
// `save`, then resumes the stack `load` (one saved the same way, or a new fiber's prepared one).
extern "C" void moert_emu_switch(void **save, void *load);
asm(R"(
  .text
  .weak moert_emu_switch
  .type moert_emu_switch, @function
moert_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size moert_emu_switch, .-moert_emu_switch
)");

namespace moert_gpu {

constexpr int kWarp = MOERT_GPU_EMU_WARP;

/// The fibers of the block running now, and where the launch's grid is.
struct Emulator {
  static constexpr size_t kStack = 256 * 1024;
  int threads = 0, current = 0, blockX = 0, blockY = 0, blockZ = 0, gridX = 1;
  std::vector<void *> fibers; // each fiber's saved stack pointer
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<char> done;
  void *main = nullptr;
  std::function<void()> kernel;
  // Barriers: arrivals and a generation per scope (the block: index 0; warp w: 1 + w).
  std::vector<int> arrived, generation;
  std::vector<float> exchange[2];
  std::vector<int> exchangeInt[2];
  std::vector<int> parity; // per thread: the shuffle buffer its next shuffle writes
  std::vector<uint32_t> mmaIn[2]; // per thread: its mma16 operands (kMmaA + kMmaB registers), double-buffered
  std::vector<int> mmaParity;
  long long stalled = 0;   // switches in a row with every fiber waiting (a deadlock if it grows)
#if MOERT_GPU_EMU_ASAN
  std::vector<void *> fakeStacks; // per fiber, and the launching thread's (mainFake): ASan's saved state
  void *mainFake = nullptr;
  const void *mainBottom = nullptr;
  size_t mainSize = 0;
#endif
#if MOERT_GPU_EMU_TSAN
  std::vector<void *> tsanFibers;
  void *tsanMain = nullptr;
#endif

  static Emulator &get() {
    static Emulator e;
    return e;
  }

  /// Switches from fiber `from` to fiber `to` (-1: the launching thread's own stack); returns when `from` is
  /// switched back to (never when it has finished).
  void jump(int from, int to) {
#if MOERT_GPU_EMU_TSAN
    __tsan_switch_to_fiber(to < 0 ? tsanMain : tsanFibers[to], 0);
#endif
#if MOERT_GPU_EMU_ASAN
    void **fake = from >= 0 && done[from] ? nullptr : from < 0 ? &mainFake : &fakeStacks[from];
    __sanitizer_start_switch_fiber(fake, to < 0 ? mainBottom : stacks[to].get(), to < 0 ? mainSize : kStack);
#endif
    moert_emu_switch(from < 0 ? &main : &fibers[from], to < 0 ? main : fibers[to]);
#if MOERT_GPU_EMU_ASAN
    __sanitizer_finish_switch_fiber(from < 0 ? mainFake : fakeStacks[from], nullptr, nullptr);
#endif
  }

  [[noreturn]] static void entry() {
    Emulator &e = get();
#if MOERT_GPU_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr); // a new fiber: no saved state
#endif
    e.kernel();
    e.done[e.current] = 1;
    e.next(); // never returns to a finished fiber
    std::abort();
  }

  /// A new fiber's stack: six zero registers, then `entry` as the return address (16-byte aligned as a call
  /// leaves it), then a zero return address `entry` never uses.
  void prepare(int t) {
    auto top = reinterpret_cast<uintptr_t>(stacks[t].get() + kStack) & ~uintptr_t(15);
    void **sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void *>(&Emulator::entry);
    for (int i = 0; i < 6; ++i)
      *--sp = nullptr;
    fibers[t] = sp;
  }

  /// Switches to the next unfinished fiber (the main context when none is left).
  void next() {
    int from = current;
    for (int i = 1; i <= threads; ++i) {
      int t = (from + i) % threads;
      if (!done[t]) {
        current = t;
        if (t != from)
          jump(from, t);
        return;
      }
    }
    jump(from, -1);
  }

  /// Waits until every member of `scope` (`members` threads) has arrived.
  void barrier(int scope, int members) {
    int g = generation[scope];
    if (++arrived[scope] == members) {
      arrived[scope] = 0;
      ++generation[scope];
      stalled = 0;
      return;
    }
    while (generation[scope] == g) {
      if (++stalled > 64LL * threads * threads) {
        std::fprintf(stderr, "gpu emulation: deadlock (threads waiting at barriers that cannot complete)\n");
        std::abort();
      }
      next();
    }
  }

  /// Runs `fn` on a grid of (gx, gy, gz) blocks of `block` threads, blocks one after another.
  void launch(int64_t gx, int64_t gy, int64_t gz, int block, std::function<void()> fn) {
    threads = block;
    kernel = std::move(fn);
    fibers.resize(block);
    done.assign(block, 0);
    while (int(stacks.size()) < block)
      stacks.emplace_back(new char[kStack]);
#if MOERT_GPU_EMU_ASAN
    fakeStacks.assign(block, nullptr);
    pthread_attr_t attr;
    void *bottom = nullptr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
      pthread_attr_getstack(&attr, &bottom, &mainSize);
      pthread_attr_destroy(&attr);
    }
    mainBottom = bottom;
#endif
#if MOERT_GPU_EMU_TSAN
    tsanMain = __tsan_get_current_fiber();
    while (int(tsanFibers.size()) < block)
      tsanFibers.push_back(__tsan_create_fiber(0));
#endif
    const int warps = (block + kWarp - 1) / kWarp;
    for (auto &x : exchange)
      x.assign(block, 0.0f);
    for (auto &x : exchangeInt)
      x.assign(block, 0);
    for (auto &x : mmaIn)
      x.assign(size_t(block) * 16, 0);
    gridX = int(gx);
    for (blockZ = 0; blockZ < gz; ++blockZ)
      for (blockY = 0; blockY < gy; ++blockY)
        for (blockX = 0; blockX < gx; ++blockX) {
          arrived.assign(1 + warps, 0);
          generation.assign(1 + warps, 0);
          parity.assign(block, 0);
          mmaParity.assign(block, 0);
          done.assign(block, 0);
          for (int t = 0; t < block; ++t)
            prepare(t);
          current = 0;
          stalled = 0;
          jump(-1, 0); // back here when every fiber has finished
        }
  }

  template <class T> T shuffle(T v, int mask, std::vector<T> (&buf)[2]) {
    const int t = current, lane = t % kWarp, base = t - lane, p = parity[t];
    parity[t] ^= 1;
    buf[p][t] = v;
    const int warp = t / kWarp, members = threads - base < kWarp ? threads - base : kWarp;
    barrier(1 + warp, members);
    return buf[p][base + (lane ^ mask)];
  }
};

inline int threadId() { return Emulator::get().current; }
inline int blockX() { return Emulator::get().blockX; }
inline int blockY() { return Emulator::get().blockY; }
inline int blockZ() { return Emulator::get().blockZ; }
inline int gridX() { return Emulator::get().gridX; }
inline void sync() { Emulator::get().barrier(0, Emulator::get().threads); }
inline void fenceDevice() {}
inline void warpSync() {
  Emulator &e = Emulator::get();
  const int base = e.current - e.current % kWarp;
  e.barrier(1 + e.current / kWarp, e.threads - base < kWarp ? e.threads - base : kWarp);
}
inline float shflXor(float v, int mask) { return Emulator::get().shuffle(v, mask, Emulator::get().exchange); }
inline int shflXor(int v, int mask) { return Emulator::get().shuffle(v, mask, Emulator::get().exchangeInt); }
inline float exp2f(float x) { return std::exp2(x); }
inline float log2f(float x) { return std::log2(x); }
inline void atomicAddF32(float *p, float v) { *p += v; } // fibers on one thread: no two at once
inline int atomicAddI32(int *p, int v) {
  int old = *p;
  *p += v;
  return old;
}
/// gpu_vendor.h's uniform (AMD: the warp's first lane's value in a scalar register): here every lane of the
/// warp must pass the same value, or the kernel was wrong to call it uniform.
inline int uniform(int v) {
  Emulator &e = Emulator::get();
  const int first = e.shuffle(v, e.current % kWarp, e.exchangeInt); // lane ^ lane: lane 0
  if (first != v) {
    std::fprintf(stderr,
                 "gpu emulation: uniform() of a value that differs across the warp (%d, lane 0: %d)\n", v,
                 first);
    std::abort();
  }
  return v;
}

inline int laneId() { return threadId() & (kWarp - 1); }
inline int warpId() { return threadId() / kWarp; }

// Matrix cores (gpu_vendor.h's mma16): the layout of the warp width's vendor unless MOERT_GPU_MMA says
// otherwise (1: NVIDIA mma.sync.m16n8k16, 32 lanes; 2: CDNA v_mfma_f32_16x16x16bf16_1k, 64 lanes; 3: RDNA3
// v_wmma_f32_16x16x16_bf16, 32 lanes).
#ifndef MOERT_GPU_MMA
#define MOERT_GPU_MMA (MOERT_GPU_EMU_WARP == 64 ? 2 : 1)
#endif
#if MOERT_GPU_MMA == 1
static_assert(kWarp == 32, "mma.sync is a 32-lane instruction");
constexpr int kMmaA = 4, kMmaB = 4, kMmaAcc = 8;
#elif MOERT_GPU_MMA == 2
static_assert(kWarp == 64, "v_mfma_f32_16x16x16bf16_1k is a 64-lane instruction");
constexpr int kMmaA = 2, kMmaB = 2, kMmaAcc = 4;
#elif MOERT_GPU_MMA == 3
static_assert(kWarp == 32, "v_wmma_f32_16x16x16_bf16 is a wave32 instruction here");
constexpr int kMmaA = 8, kMmaB = 8, kMmaAcc = 8;
#else
#error "unknown MOERT_GPU_MMA layout"
#endif

/// Where the instruction finds A (m, k), B (k, n) and puts D (m, n): the lane, its register (of the operand's
/// kMmaA / kMmaB / kMmaAcc) and the 16-bit half, as the ISA documents state it (element -> lane), written
/// apart from gpu_mma.h's loads (lane -> elements), which these check.
struct MmaSlot {
  int lane, reg, half;
};
#if MOERT_GPU_MMA == 1
// PTX ISA, mma.m16n8k16 (.bf16): groupID = lane >> 2, threadID_in_group = lane % 4; A a_i: row groupID (+ 8
// for a2, a3, a6, a7), column 2 threadID_in_group + i % 2 (+ 8 for a4 .. a7); B b_i: row 2 threadID_in_group
// + i % 2 (+ 8 for b2, b3), column groupID; C c_i: row groupID (+ 8 for c2, c3), column 2 threadID_in_group +
// i % 2. Two instructions: columns 0-7 (B registers 0, 1; D 0-3) and 8-15 (B 2, 3; D 4-7).
inline MmaSlot mmaSlotA(int m, int k) { return {4 * (m % 8) + (k % 8) / 2, m / 8 + 2 * (k / 8), k % 2}; }
inline MmaSlot mmaSlotB(int k, int n) { return {4 * (n % 8) + (k % 8) / 2, 2 * (n / 8) + k / 8, k % 2}; }
inline MmaSlot mmaSlotD(int m, int n) {
  return {4 * (m % 8) + (n % 8) / 2, 4 * (n / 8) + 2 * (m / 8) + n % 2, 0};
}
#elif MOERT_GPU_MMA == 3
// AMD matrix instruction calculator, v_wmma_f32_16x16x16_bf16 (gfx1100): A[i][k] in lane i and lane i + 16
// (both halves of the wave hold A), item k; B[k][j] in lanes j and j + 16, item k; D[i][j] in lane
// j + 16 (i % 2), register i / 2. mma16 checks that both halves hold the same A and B.
inline MmaSlot mmaSlotA(int m, int k) { return {m, k / 2, k % 2}; }
inline MmaSlot mmaSlotB(int k, int n) { return {n, k / 2, k % 2}; }
inline MmaSlot mmaSlotD(int m, int n) { return {n + 16 * (m % 2), m / 2, 0}; }
#else
// AMD matrix instruction calculator, v_mfma_f32_16x16x16bf16_1k: A[i][k] in lane i + 16 (k / 4), item k % 4;
// B[k][j] in lane j + 16 (k / 4), item k % 4; D[i][j] in lane j + 16 (i / 4), item i % 4 (two bf16 items a
// 32-bit register).
inline MmaSlot mmaSlotA(int m, int k) { return {m + 16 * (k / 4), (k % 4) / 2, k % 2}; }
inline MmaSlot mmaSlotB(int k, int n) { return {n + 16 * (k / 4), (k % 4) / 2, k % 2}; }
inline MmaSlot mmaSlotD(int m, int n) { return {n + 16 * (m / 4), m % 4, 0}; }
#endif

/// One warp's D += A B on the registers its lanes hold (every lane of the warp calls it).
inline void mma16(float (&d)[kMmaAcc], const uint32_t (&a)[kMmaA], const uint32_t (&b)[kMmaB]) {
  Emulator &e = Emulator::get();
  const int t = e.current, lane = t % kWarp, base = t - lane, p = e.mmaParity[t];
  constexpr int R = kMmaA + kMmaB;
  e.mmaParity[t] ^= 1;
  for (int r = 0; r < kMmaA; ++r)
    e.mmaIn[p][t * R + r] = a[r];
  for (int r = 0; r < kMmaB; ++r)
    e.mmaIn[p][t * R + kMmaA + r] = b[r];
  if (e.threads - base < kWarp) {
    std::fprintf(stderr, "gpu emulation: mma16 in a partial warp\n");
    std::abort();
  }
  e.barrier(1 + t / kWarp, kWarp);
#if MOERT_GPU_MMA == 3
  for (int r = 0; r < R; ++r) // the wave's halves hold the same A and B
    if (e.mmaIn[p][(base + lane % 16) * R + r] != e.mmaIn[p][(base + 16 + lane % 16) * R + r]) {
      std::fprintf(stderr, "gpu emulation: mma16 (WMMA) with lanes %d and %d holding different operands\n",
                   lane % 16, 16 + lane % 16);
      std::abort();
    }
#endif
  // The slots as tables, made once: A's and B's by element, and which element each lane's D register holds.
  struct Tables {
    MmaSlot a[16][16], b[16][16];
    int dm[kWarp][kMmaAcc], dn[kWarp][kMmaAcc];
    Tables() {
      int hits[kWarp][kMmaAcc] = {};
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
          a[i][j] = mmaSlotA(i, j), b[i][j] = mmaSlotB(i, j);
          const MmaSlot o = mmaSlotD(i, j);
          dm[o.lane][o.reg] = i, dn[o.lane][o.reg] = j, ++hits[o.lane][o.reg];
        }
      for (int l = 0; l < kWarp; ++l)
        for (int r = 0; r < kMmaAcc; ++r)
          if (hits[l][r] != 1) {
            std::fprintf(stderr, "gpu emulation: mma16's D layout is not one element a register\n");
            std::abort();
          }
    }
  };
  static const Tables tables;
  auto value = [&](MmaSlot s, int offset) {
    const uint32_t reg = e.mmaIn[p][(base + s.lane) * R + offset + s.reg];
    return __builtin_bit_cast(float, (s.half ? reg >> 16 : reg & 0xffffu) << 16);
  };
  for (int r = 0; r < kMmaAcc; ++r) {
    const int m = tables.dm[lane][r], n = tables.dn[lane][r];
    float sum = 0.0f; // bf16 products are exact in f32
    for (int k = 0; k < 16; ++k)
      sum += value(tables.a[m][k], 0) * value(tables.b[k][n], kMmaA);
    d[r] += sum;
  }
}

inline float expf(float x) { return exp2f(x * 1.4426950408889634f); }
inline float logf(float x) { return log2f(x) * 0.6931471805599453f; }
inline float sqrtf(float x) { return std::sqrt(x); }
inline float minf(float a, float b) { return a < b ? a : b; }
inline float maxf(float a, float b) { return a > b ? a : b; }

template <class T> inline T warpSum(T v) {
  for (int m = kWarp / 2; m > 0; m /= 2)
    v += shflXor(v, m);
  return v;
}
template <class T> inline T warpMax(T v) {
  for (int m = kWarp / 2; m > 0; m /= 2) {
    T o = shflXor(v, m);
    v = o > v ? o : v;
  }
  return v;
}

/// Launches `kernel(args)` (a generated kernel's body: LinearKernels<C>::gemv, ...) on a grid of blocks of
/// MOERT_GPU_BLOCK threads.
template <class Args>
void emulate(void (*kernel)(const Args &), const Args &args, int64_t gx, int64_t gy = 1, int64_t gz = 1,
             int block = 256) {
  Emulator::get().launch(gx, gy, gz, block, [&] { kernel(args); });
}

} // namespace moert_gpu

#endif // MOERT_TESTS_GPU_EMULATION_H

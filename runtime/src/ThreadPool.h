//===- ThreadPool.h - moert's worker threads ---------------------------------===//
//
// A fixed set of workers running parallel_for calls: items are claimed from an atomic counter, so the
// split adapts to uneven items. The calling thread works too. One parallel_for at a time per pool; a run
// that finds the pool busy (another thread's run) executes its items on its own thread instead.
//
// A decoded token is some twenty parallel_for calls a few hundred microseconds apart or less, so waking
// workers through the kernel for each would cost tens of microseconds a call. Workers and the caller spin
// (a pause loop) for a while before they sleep: a worker keeps watching for the next job for `spinMicros`
// after its last one, the caller for the end of its job as long. `MOERT_SPIN_US` sets it (0: always sleep).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_SRC_THREADPOOL_H
#define MOERT_SRC_THREADPOOL_H

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace moert {

class ThreadPool {
public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  int threads() const { return static_cast<int>(workers_.size()) + 1; }
  using Fn = void (*)(void *ctx, int64_t i, int thread);
  /// Runs fn(ctx, i, thread) for i in [0, n). Falls back to the caller's thread when the pool is busy.
  void parallelFor(int64_t n, void *ctx, Fn fn);

private:
  void workerLoop(int index);
  void drain(int thread);

  std::vector<std::thread> workers_;
  std::mutex busy_; // held by the run that owns the workers
  std::mutex m_;    // guards the sleeps (the state below is atomic)
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> generation_{0}; // bumped per job
  std::atomic<bool> stop_{false};
  std::atomic<int> active_{0};   // workers not done with the current job
  std::atomic<int> sleepers_{0}; // workers asleep on wake_ (or about to be)
  std::atomic<bool> callerAsleep_{false};
  int64_t spinMicros_ = 0;
  // The current job (written before generation_ is bumped).
  std::atomic<int64_t> next_{0};
  int64_t n_ = 0;
  void *ctx_ = nullptr;
  Fn fn_ = nullptr;
};

} // namespace moert

#endif // MOERT_SRC_THREADPOOL_H

//===- kernel_exec.h - how the kernel-level tests run a kernel's work items ------------===//
//
// The moert_exec a kernel-level test hands a kernel: test mode runs the items in reverse order on one thread
// (reverseFor: an item that depends on another's running first shows), perf mode on a small pool of threads
// (Pool::run, items taken in order by whichever thread is free, as libmoert's pool does).
//
//===----------------------------------------------------------------------===//
#ifndef MOERT_TESTS_KERNELS_KERNEL_EXEC_H
#define MOERT_TESTS_KERNELS_KERNEL_EXEC_H

#include "kernels/cpu/moert_kernel_abi.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace kernel_exec {

inline void reverseFor(void *, int64_t n, void *ctx, moert_task_fn fn) {
  for (int64_t i = n - 1; i >= 0; --i)
    fn(ctx, i, 0);
}

struct Pool {
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv, done;
  int64_t n = 0, generation = 0, finished = 0;
  std::atomic<int64_t> next{0};
  void *ctx = nullptr;
  moert_task_fn fn = nullptr;
  bool stop = false;
  explicit Pool(int threads) {
    for (int t = 1; t < threads; ++t)
      workers.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto &w : workers)
      w.join();
  }
  void drain(int t) {
    for (int64_t i; (i = next.fetch_add(1)) < n;)
      fn(ctx, i, t);
  }
  void loop(int t) {
    int64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return stop || generation != seen; });
        if (stop)
          return;
        seen = generation;
      }
      drain(t);
      std::lock_guard<std::mutex> l(mu);
      if (++finished == int64_t(workers.size()))
        done.notify_one();
    }
  }
  static void run(void *pool, int64_t n, void *ctx, moert_task_fn fn) {
    Pool &p = *static_cast<Pool *>(pool);
    {
      std::lock_guard<std::mutex> l(p.mu);
      p.n = n, p.ctx = ctx, p.fn = fn, p.finished = 0;
      p.next = 0;
      ++p.generation;
    }
    p.cv.notify_all();
    p.drain(0);
    std::unique_lock<std::mutex> l(p.mu);
    p.done.wait(l, [&] { return p.finished == int64_t(p.workers.size()); });
  }
};

} // namespace kernel_exec

#endif // MOERT_TESTS_KERNELS_KERNEL_EXEC_H

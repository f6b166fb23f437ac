//===- ThreadPool.cpp - moert's worker threads -------------------------------===//
#include "ThreadPool.h"

#include <chrono>
#include <cstdlib>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

using namespace moert;

namespace {

constexpr int64_t kDefaultSpinMicros = 500;

inline void pause() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// Spins until done() or `micros` have passed; true when done() held.
template <class Done> bool spinFor(int64_t micros, Done done) {
  if (micros <= 0)
    return done();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 0;; ++i) {
    if (done())
      return true;
    pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until)
      return done();
  }
}

} // namespace

ThreadPool::ThreadPool(int threads) {
  spinMicros_ = kDefaultSpinMicros;
  if (const char *env = std::getenv("MOERT_SPIN_US")) {
    char *end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && v >= 0)
      spinMicros_ = v;
  }
  for (int i = 1; i < threads; ++i)
    workers_.emplace_back([this, i] { workerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> l(m_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto &w : workers_)
    w.join();
}

void ThreadPool::drain(int thread) {
  for (int64_t i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1))
    fn_(ctx_, i, thread);
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  while (true) {
    auto fresh = [&] { return stop_.load() || generation_.load() != seen; };
    if (!spinFor(spinMicros_, fresh)) {
      std::unique_lock<std::mutex> l(m_);
      sleepers_.fetch_add(1); // then generation_ is read again (the predicate): a job posted since is seen
      wake_.wait(l, fresh);
      sleepers_.fetch_sub(1);
    }
    if (stop_)
      return;
    seen = generation_.load();
    drain(index);
    if (active_.fetch_sub(1) == 1 && callerAsleep_.load()) {
      std::lock_guard<std::mutex> l(m_);
      done_.notify_one();
    }
  }
}

void ThreadPool::parallelFor(int64_t n, void *ctx, Fn fn) {
  if (n <= 0)
    return;
  std::unique_lock<std::mutex> owner(busy_, std::try_to_lock);
  if (workers_.empty() || n == 1 || !owner.owns_lock()) {
    for (int64_t i = 0; i < n; ++i)
      fn(ctx, i, 0);
    return;
  }
  n_ = n;
  ctx_ = ctx;
  fn_ = fn;
  next_.store(0);
  active_.store(static_cast<int>(workers_.size()));
  generation_.fetch_add(1); // publishes the job (sequentially consistent, as every atomic here)
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> l(m_);
    wake_.notify_all();
  }
  drain(0);
  auto finished = [&] { return active_.load() == 0; };
  if (!spinFor(spinMicros_, finished)) {
    std::unique_lock<std::mutex> l(m_);
    callerAsleep_.store(true); // then active_ is read again (the predicate): a worker done since is seen
    done_.wait(l, finished);
    callerAsleep_.store(false);
  }
}

//===- ThreadPool.cpp - moert's worker threads -------------------------------===//
#include "ThreadPool.h"

using namespace moert;

ThreadPool::ThreadPool(int threads) {
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
    {
      std::unique_lock<std::mutex> l(m_);
      wake_.wait(l, [&] { return stop_ || generation_ != seen; });
      if (stop_)
        return;
      seen = generation_;
    }
    drain(index);
    {
      std::lock_guard<std::mutex> l(m_);
      if (--active_ == 0)
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
  {
    std::lock_guard<std::mutex> l(m_);
    n_ = n;
    ctx_ = ctx;
    fn_ = fn;
    next_.store(0);
    active_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  drain(0);
  std::unique_lock<std::mutex> l(m_);
  done_.wait(l, [&] { return active_ == 0; });
}

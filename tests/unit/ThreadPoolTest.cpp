//===- ThreadPoolTest.cpp - libmoert's worker pool ----------------------------===//
//
// Every item of every parallel_for runs exactly once, whether the workers spin between jobs, sleep at once
// (MOERT_SPIN_US=0) or fall asleep between jobs posted after their spin ran out; a pool busy with one
// caller's job runs another caller's items on that caller's thread.
//
//===----------------------------------------------------------------------===//
#include "ThreadPool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

struct Count {
  std::vector<std::atomic<int>> hits;
  std::atomic<int> badThread{0};
  int threads = 0;
  explicit Count(int64_t n, int t) : hits(n), threads(t) {}
  static void item(void *p, int64_t i, int thread) {
    auto &c = *static_cast<Count *>(p);
    c.hits[i].fetch_add(1);
    if (thread < 0 || thread >= c.threads)
      c.badThread.fetch_add(1);
  }
};

void expectEachOnce(moert::ThreadPool &pool, int64_t n) {
  Count c(n, pool.threads());
  pool.parallelFor(n, &c, &Count::item);
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(c.hits[i].load(), 1) << "item " << i << " of " << n;
  EXPECT_EQ(c.badThread.load(), 0);
}

void manyJobs(const char *spin) {
  setenv("MOERT_SPIN_US", spin, 1);
  for (int threads : {1, 2, 4}) {
    moert::ThreadPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int job = 0; job < 3000; ++job)
      expectEachOnce(pool, 1 + job % 37);
    // Jobs after the workers' spin ran out: they are asleep and must be woken.
    for (int job = 0; job < 5; ++job) {
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      expectEachOnce(pool, 64);
    }
  }
  unsetenv("MOERT_SPIN_US");
}

TEST(ThreadPoolTest, EveryItemOnceWhenSpinning) { manyJobs("500"); }
TEST(ThreadPoolTest, EveryItemOnceWhenSleeping) { manyJobs("0"); }
TEST(ThreadPoolTest, EveryItemOnceWithShortSpins) { manyJobs("1"); }

TEST(ThreadPoolTest, ABusyPoolRunsASecondCallerOnItsOwnThread) {
  moert::ThreadPool pool(2);
  struct Slow {
    std::atomic<int> done{0};
    static void item(void *p, int64_t, int) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      static_cast<Slow *>(p)->done.fetch_add(1);
    }
  } slow;
  std::thread other([&] { pool.parallelFor(40, &slow, &Slow::item); });
  for (int i = 0; i < 20; ++i)
    expectEachOnce(pool, 16);
  other.join();
  EXPECT_EQ(slow.done.load(), 40);
}

} // namespace

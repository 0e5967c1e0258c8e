// parallel_for for the CPU kernels: a small pool of worker threads that sleep on a
// condition variable between jobs (no spinning, so a kernel waiting for a slow thread
// does not steal the core that thread needs on a busy machine), dynamic chunks (a thread
// that was descheduled holds no one up), and no pool at all for work under the grain
// size: it runs on the calling thread. `threads` comes from torch.get_num_threads().
#pragma once
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

namespace llp::cpu {

// Items (multiply-adds, exponentials, heap tests) below which a job is not shared out:
// waking a sleeping worker costs ~10-30 us, about this much work for one thread.
constexpr int64_t kGrain = 1 << 15;

class Pool {
 public:
  static Pool& get() {
    static Pool* pool = [] {
      auto* p = new Pool();  // never destroyed: workers may still sleep at exit
      // fork() happens between jobs; the child has no workers and starts afresh (its
      // condition variables may still count the parent's sleeping workers: rebuilt).
      pthread_atfork([] { Pool::get().lock_all(); }, [] { Pool::get().unlock_all(); }, [] {
        Pool& self = Pool::get();
        self.workers_.clear();  // detached handles of threads the child does not have
        new (&self.wake_) std::condition_variable();
        new (&self.done_) std::condition_variable();
        self.unlock_all();
      });
      return p;
    }();
    return *pool;
  }

  // Runs body(begin, end) over [0, n) in chunks of at least `grain` items on up to
  // `threads` threads (the caller included); returns when every chunk is done.
  void run(int64_t n, int64_t grain, int threads, const std::function<void(int64_t, int64_t)>& body) {
    std::lock_guard<std::mutex> one_job(job_mutex_);  // callers from several threads take turns
    const int64_t most = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
    const int helpers = static_cast<int>(std::min<int64_t>(threads, most)) - 1;
    ensure_workers(helpers);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      n_ = n;
      chunk_ = std::max<int64_t>(grain, n / (4 * (helpers + 1)));
      next_.store(0);
      wanted_ = helpers;
      busy_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    body_ = nullptr;
  }

 private:
  void work() {
    for (int64_t begin = next_.fetch_add(chunk_); begin < n_; begin = next_.fetch_add(chunk_))
      (*body_)(begin, std::min(n_, begin + chunk_));
  }

  void lock_all() {
    job_mutex_.lock();
    mutex_.lock();
  }
  void unlock_all() {
    mutex_.unlock();
    job_mutex_.unlock();
  }

  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
      workers_.back().detach();
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    while (true) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= wanted_) continue;  // not needed for this job
      lock.unlock();
      work();
      lock.lock();
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;  // detached: they sleep between jobs
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  int wanted_ = 0, busy_ = 0;
  uint64_t generation_ = 0;
};

template <typename F>
void parallel_for(int64_t n, int64_t grain, int threads, F&& body) {
  if (n <= 0) return;
  if (threads <= 1 || n < 2 * grain) {
    body(int64_t{0}, n);
    return;
  }
  const std::function<void(int64_t, int64_t)> fn = std::forward<F>(body);
  Pool::get().run(n, grain, threads, fn);
}

// One call of row(r) per row r in [0, rows), rows of `row_cost` items each; work of
// fewer than kGrain items stays on the calling thread.
template <typename F>
void parallel_rows(int64_t rows, int64_t row_cost, int threads, F&& row) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(row_cost, 1));
  parallel_for(rows, grain, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) row(r);
  });
}

}  // namespace llp::cpu

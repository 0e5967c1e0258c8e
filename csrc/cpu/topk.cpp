// Streaming top-k on CPU: a per-row min-heap of the k best (value, index) pairs,
// fed by a vectorised threshold filter; only columns that beat the current k-th best
// touch the heap (about k*ln(N/k) of N per row), so the filter is the hot loop.
#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/topk_heap.h"

namespace llp::cpu {

namespace {

constexpr int64_t kFilterBlock = 16;

}  // namespace

void topk_tile_update(const float* dots, int64_t Q, int64_t n, int64_t ld, const float* bias,
                      float inv_tau, int64_t offset, int64_t k, float* heap_vals,
                      int64_t* heap_idx, int threads) {
  parallel_rows(Q, n, threads, [&](int64_t q) {
    const float* row = dots + q * ld;
    float* hv = heap_vals + q * k;
    int64_t* hi = heap_idx + q * k;
    int64_t j = 0;
    // Fill phase: the first k columns overall go in unconditionally.
    for (; j < n && offset + j < k; ++j) {
      const int64_t pos = offset + j;
      hv[pos] = row[j] * inv_tau - (bias ? bias[j] : 0.0f);
      hi[pos] = offset + j;
      heap_sift_up(hv, hi, pos);
    }
    // Filter phase, one block of columns at a time: a vectorised max (which skips NaN)
    // decides whether the block can hold anything better than the current k-th best.
    // While that k-th best is a NaN, every number beats it: blocks go element by element.
    float threshold = hv[0];
    for (; j < n; j += kFilterBlock) {
      const int64_t end = std::min(n, j + kFilterBlock);
      float block_max = -__builtin_inff();
      if (bias) {
#pragma omp simd reduction(max : block_max)
        for (int64_t c = j; c < end; ++c) {
          const float v = row[c] * inv_tau - bias[c];
          block_max = v > block_max ? v : block_max;
        }
      } else {
#pragma omp simd reduction(max : block_max)
        for (int64_t c = j; c < end; ++c) {
          const float v = row[c] * inv_tau;
          block_max = v > block_max ? v : block_max;
        }
      }
      const bool nan_kept = threshold != threshold;
      if (!nan_kept && !(block_max > threshold)) continue;
      for (int64_t c = j; c < end; ++c) {
        const float v = row[c] * inv_tau - (bias ? bias[c] : 0.0f);
        if (ranks_below(hv[0], hi[0], v, offset + c)) {
          hv[0] = v;
          hi[0] = offset + c;
          heap_sift_down(hv, hi, k, 0);
          threshold = hv[0];
        }
      }
    }
  });
}

void topk_finalize(float* heap_vals, int64_t* heap_idx, int64_t Q, int64_t k, int threads) {
  const int64_t cost = k * (64 - __builtin_clzll(static_cast<uint64_t>(k) | 1));  // ~k log2 k
  parallel_for(Q, std::max<int64_t>(1, kGrain / cost), threads, [&](int64_t q0, int64_t q1) {
    std::vector<int64_t> order(static_cast<size_t>(k));
    std::vector<float> tmp_v(static_cast<size_t>(k));
    std::vector<int64_t> tmp_i(static_cast<size_t>(k));
    for (int64_t q = q0; q < q1; ++q) {
      float* hv = heap_vals + q * k;
      int64_t* hi = heap_idx + q * k;
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return ranks_below(hv[b], hi[b], hv[a], hi[a]);
      });
      for (int64_t r = 0; r < k; ++r) {
        tmp_v[r] = hv[order[r]];
        tmp_i[r] = hi[order[r]];
      }
      std::copy(tmp_v.begin(), tmp_v.end(), hv);
      std::copy(tmp_i.begin(), tmp_i.end(), hi);
    }
  });
}

}  // namespace llp::cpu

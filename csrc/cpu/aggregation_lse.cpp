// Aggregation loss on CPU: the dual online log-sum-exp over one similarity tile and
// the backward weights that turn a recomputed tile into its share of dq.
#include <cmath>
#include <limits>

#include "cpu/fast_exp.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace llp::cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// exp(-60) ~ 1e-26: same-label terms this far below the overall max are still normal
// floats, and anything they drop is below fp32 resolution of the same-label sum.
constexpr float kSharedShiftRange = 60.0f;

// s * exp(m_old - m_new) without producing NaN when both are -inf (s is then 0, or a
// NaN that marks a non-finite logit seen earlier, and stays so).
inline float rescale(float s, float m_old, float m_new) {
  return m_old == kNegInf ? s * 0.0f : s * std::exp(m_old - m_new);
}
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
}  // namespace

void lse_tile_update(const float* dots, int64_t B, int64_t n, int64_t ld,
                     const int64_t* bank_labels, const int64_t* query_labels, float inv_tau,
                     float* m_all, float* s_all, float* m_same, float* s_same, int threads) {
  parallel_rows(B, n, threads, [&](int64_t b) {
    const float* row = dots + b * ld;
    const int64_t label = query_labels[b];

    // The maxima skip non-finite logits; those are flagged instead and make the sums NaN
    // (a log-sum-exp over a NaN or inf input is NaN).
    float tile_max = kNegInf, tile_max_same = kNegInf, bad_all = 0.0f, bad_same = 0.0f;
#pragma omp simd reduction(max : tile_max, tile_max_same, bad_all, bad_same)
    for (int64_t j = 0; j < n; ++j) {
      const float x = row[j];
      const bool same_j = bank_labels[j] == label;
      const bool finite = x - x == 0.0f;
      tile_max = finite && x > tile_max ? x : tile_max;
      const float same = same_j && finite ? x : kNegInf;
      tile_max_same = same > tile_max_same ? same : tile_max_same;
      const float bad = finite ? 0.0f : 1.0f;
      bad_all = bad > bad_all ? bad : bad_all;
      const float bad_s = same_j ? bad : 0.0f;
      bad_same = bad_s > bad_same ? bad_s : bad_same;
    }
    // inv_tau > 0, so the max of the logits is the max of the dots times inv_tau.
    const float new_m = std::fmax(m_all[b], tile_max * inv_tau);
    const float new_m_same = std::fmax(m_same[b], tile_max_same * inv_tau);

    // One exp per logit, shifted by the overall max; the same-label sum reuses those
    // exponentials unless its own max sits so far below that they could underflow
    // (rows far from unit norm), in which case it gets its own pass.
    float acc = 0.0f, acc_same_shared = 0.0f, acc_same = 0.0f;
    if (new_m != kNegInf) {
#pragma omp simd reduction(+ : acc, acc_same_shared)
      for (int64_t j = 0; j < n; ++j) {
        const float e = fast_expf(row[j] * inv_tau - new_m);
        acc += e;
        acc_same_shared += bank_labels[j] == label ? e : 0.0f;
      }
    }
    if (tile_max_same != kNegInf) {
      if (new_m - tile_max_same * inv_tau <= kSharedShiftRange) {
        acc_same = acc_same_shared * std::exp(new_m - new_m_same);
      } else {
#pragma omp simd reduction(+ : acc_same)
        for (int64_t j = 0; j < n; ++j) {
          const float e = fast_expf(row[j] * inv_tau - new_m_same);
          acc_same += bank_labels[j] == label ? e : 0.0f;
        }
      }
    }
    s_all[b] = bad_all > 0.0f ? kNaN : rescale(s_all[b], m_all[b], new_m) + acc;
    m_all[b] = new_m;
    s_same[b] = bad_same > 0.0f ? kNaN : rescale(s_same[b], m_same[b], new_m_same) + acc_same;
    m_same[b] = new_m_same;
  });
}

void lse_grad_tile(float* dots, int64_t B, int64_t n, int64_t ld,
                   const int64_t* bank_labels, const int64_t* query_labels, float inv_tau,
                   const float* lse_all, const float* lse_same, const float* scale, int threads) {
  parallel_rows(B, n, threads, [&](int64_t b) {
    float* row = dots + b * ld;
    const int64_t label = query_labels[b];
    const float g = scale[b];
    const float la = lse_all[b];
    const float ls = lse_same[b];
    // scale 0 marks rows that get no gradient (llp_kernels.ops.aggregation.backward_inputs): skip
    // them rather than multiply 0 by exponentials of their placeholder LSEs.
    if (g == 0.0f) {
      for (int64_t j = 0; j < n; ++j) row[j] = 0.0f;
      return;
    }
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float x = row[j] * inv_tau;
      const float p_all = fast_expf(x - la);
      const float p_same = bank_labels[j] == label ? fast_expf(x - ls) : 0.0f;
      row[j] = g * (p_all - p_same);
    }
  });
}

}  // namespace llp::cpu

// CPU kernels of llp_kernels._C. All work on one similarity tile at a time: the
// Python side fills a bounded [rows x cols] fp32 buffer with raw dot products
// (BLAS GEMM via torch.mm) and hands it here, so no kernel ever sees a B x N array.
// Every function parallelises over rows on up to `threads` threads (cpu/parallel.h).
#pragma once
#include <cstdint>

namespace llp::cpu {

// Dual online log-sum-exp (aggregation loss forward), one tile of columns [lo, lo+n).
//   dots:        [B, n] raw q.k (row stride ld), logits are dots * inv_tau
//   bank_labels: [n] labels of the tile's bank rows (< 0: no label)
//   query_labels:[B]
//   m_all, s_all, m_same, s_same: [B] running (max, sum of exp(x - max)), updated.
void lse_tile_update(const float* dots, int64_t B, int64_t n, int64_t ld,
                     const int64_t* bank_labels, const int64_t* query_labels, float inv_tau,
                     float* m_all, float* s_all, float* m_same, float* s_same, int threads);

// Aggregation loss backward weights, in place over one tile:
//   w[b,j] = scale[b] * (exp(x - lse_all[b]) - [label_j == ql_b] exp(x - lse_same[b])),
//   x = dots[b,j] * inv_tau. Rows with scale 0 get w = 0 (the caller gives them scale 0
//   and finite placeholder LSEs when their LSEs are not finite).
// The caller then does dq += w @ bank_tile.
void lse_grad_tile(float* dots, int64_t B, int64_t n, int64_t ld,
                   const int64_t* bank_labels, const int64_t* query_labels, float inv_tau,
                   const float* lse_all, const float* lse_same, const float* scale, int threads);

// Streaming top-k, one tile of columns [offset, offset+n): value = dots*inv_tau - bias[j].
// heap_vals/heap_idx: [Q, k] per-row min-heaps (worst on top); the first k columns seen
// fill them, later ones enter only if they rank above the current k-th best (larger,
// or a number where a NaN is kept: NaN ranks below every number; among equal values
// the lower index wins). bias may be null.
void topk_tile_update(const float* dots, int64_t Q, int64_t n, int64_t ld, const float* bias,
                      float inv_tau, int64_t offset, int64_t k, float* heap_vals,
                      int64_t* heap_idx, int threads);

// The same top-k with the dot products computed in registers (cpu/topk_fused.cpp), no
// tile in memory: queries [Q, D] fp32, keys [N, D] of dtype `key_dtype` (common/dtype.h),
// bias [N] or null; heap_vals/heap_idx [Q, k] are filled (k <= N), then sorted by
// topk_finalize. `isa` is one topk_fused_isa() allows.
enum FusedIsa : int { kIsaNone = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
int topk_fused_isa();
void topk_fused(const float* queries, int64_t Q, const void* keys, int key_dtype, int64_t N,
                int64_t D, const float* bias, float inv_tau, int64_t k, float* heap_vals,
                int64_t* heap_idx, int isa, int threads);

// Sort each row's heap: values descending, ties by ascending index, NaN last.
void topk_finalize(float* heap_vals, int64_t* heap_idx, int64_t Q, int64_t k, int threads);

// bank[idx[b]] = normalize(m * bank[idx[b]] + (1 - m) * emb[b]) for b < B; idx unique
// among its non-negative entries, and rows with idx[b] < 0 are skipped. Returns the
// position of the first index >= N (then nothing is written), or -1.
int64_t bank_update(void* bank, int bank_dtype, int64_t N, int64_t D, const int64_t* idx,
                    const void* emb, int emb_dtype, int64_t B, float momentum, int threads);

}  // namespace llp::cpu

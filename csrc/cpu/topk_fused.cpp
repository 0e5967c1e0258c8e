// Streaming top-k with the dot products computed here, in registers: no similarity tile
// ever reaches memory. For each query row q the k best keys j by
//   score[q, j] = (queries[q] . keys[j]) * inv_tau - bias[j]
// are kept in q's min-heap (cpu/topk_heap.h). Register blocking in the manner of a BLAS
// micro-kernel: R query rows x 2 SIMD vectors of keys accumulate over D in 2R vector
// registers; the keys are packed once per block of columns into panels [D][2W] (W lanes
// per vector) that stay in the L2 cache while every row group of the thread passes over
// them; the scores of a finished R x 2W tile are compared against each row's k-th best
// while still in registers, and only lanes that beat it go to the heap (a few per
// thousand once the heaps are full). Keys may be fp32, bf16 or fp16: they are widened
// while packed. Two instruction sets, chosen at run time: AVX-512F (W = 16, R = 14) and
// AVX2 + FMA (W = 8, R = 6); without either the caller uses the BLAS tile path.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common/dtype.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "cpu/topk_heap.h"

namespace llp::cpu {

namespace {

// Bytes of one packed key block: about a quarter of a small L2 cache (Zen 2/3: 512 KiB).
constexpr int64_t kBlockBytes = 128 * 1024;

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float, FreeDeleter>;

AlignedFloats aligned_floats(int64_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, static_cast<size_t>(std::max<int64_t>(n, 16)) * sizeof(float)) != 0)
    throw std::bad_alloc();
  return AlignedFloats(static_cast<float*>(p));
}

float key_value(const void* keys, int key_dtype, int64_t i) {
  switch (key_dtype) {
    case kBFloat16: return bf16_to_f32(static_cast<const uint16_t*>(keys)[i]);
    case kFloat16: return f16_to_f32(static_cast<const uint16_t*>(keys)[i]);
    default: return static_cast<const float*>(keys)[i];
  }
}

// keys[lo:hi] into panels of `width` columns, panel p at packed + p * D * width, laid
// out [D][width]; columns past hi are zero. bias[lo:hi] into a padded row (0 past hi).
void pack_block(const void* keys, int key_dtype, int64_t D, const float* bias, int64_t lo,
                int64_t hi, int64_t width, float* packed, float* packed_bias) {
  const int64_t cols = hi - lo, panels = (cols + width - 1) / width;
  for (int64_t p = 0; p < panels; ++p) {
    float* panel = packed + p * D * width;
    for (int64_t c = 0; c < width; ++c) {
      const int64_t j = p * width + c;
      if (j < cols) {
        const int64_t row = (lo + j) * D;
        for (int64_t d = 0; d < D; ++d) panel[d * width + c] = key_value(keys, key_dtype, row + d);
      } else {
        for (int64_t d = 0; d < D; ++d) panel[d * width + c] = 0.0f;
      }
    }
  }
  for (int64_t j = 0; j < panels * width; ++j)
    packed_bias[j] = (bias != nullptr && j < cols) ? bias[lo + j] : 0.0f;
}

// The lanes of a finished tile row that beat (or may beat) the row's k-th best: offered
// to the heap in ascending key order, so that among equal scores the lower index wins.
inline void offer_lanes(const float* scores, uint64_t lanes, int64_t first_key, float* hv,
                        int64_t* hi, int64_t k) {
  while (lanes) {
    const int lane = __builtin_ctzll(lanes);
    lanes &= lanes - 1;
    heap_offer(hv, hi, k, scores[lane], first_key + lane);
  }
}

struct Job {
  const float* queries;
  int64_t Q, D;
  const void* keys;
  int key_dtype;
  int64_t N;
  const float* bias;
  float inv_tau;
  int64_t k;
  float* heap_vals;
  int64_t* heap_idx;
};

// ---- AVX-512F: 14 rows x 32 keys ---------------------------------------------------

template <int R>
__attribute__((target("avx512f"))) void tile_avx512(const Job& job, int64_t row0, const float* panel,
                                                   const float* panel_bias, int64_t first_key,
                                                   int64_t valid) {
  const int64_t D = job.D;
  const float* a = job.queries + row0 * D;
  __m512 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m512 b0 = _mm512_load_ps(panel + d * 32);
    const __m512 b1 = _mm512_load_ps(panel + d * 32 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * D + d]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  const __m512 inv_tau = _mm512_set1_ps(job.inv_tau);
  const __m512 bias0 = _mm512_load_ps(panel_bias), bias1 = _mm512_load_ps(panel_bias + 16);
  const uint64_t valid_lanes = valid >= 32 ? ~0ull >> 32 : (1ull << valid) - 1;
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const int64_t q = row0 + r;
    float* hv = job.heap_vals + q * job.k;
    int64_t* hi = job.heap_idx + q * job.k;
    const __m512 s0 = _mm512_fmsub_ps(acc[r][0], inv_tau, bias0);
    const __m512 s1 = _mm512_fmsub_ps(acc[r][1], inv_tau, bias1);
    const __m512 kth = _mm512_set1_ps(hv[0]);
    // "not (s <= kth)": true where s is larger, and wherever a NaN is involved.
    const uint64_t lanes = (static_cast<uint64_t>(_mm512_cmp_ps_mask(s0, kth, _CMP_NLE_UQ)) |
                            static_cast<uint64_t>(_mm512_cmp_ps_mask(s1, kth, _CMP_NLE_UQ)) << 16) &
                           valid_lanes;
    if (lanes) {
      alignas(64) float scores[32];
      _mm512_store_ps(scores, s0);
      _mm512_store_ps(scores + 16, s1);
      offer_lanes(scores, lanes, first_key, hv, hi, job.k);
    }
  }
}

// ---- AVX2 + FMA: 6 rows x 16 keys --------------------------------------------------

template <int R>
__attribute__((target("avx2,fma"))) void tile_avx2(const Job& job, int64_t row0, const float* panel,
                                                  const float* panel_bias, int64_t first_key,
                                                  int64_t valid) {
  const int64_t D = job.D;
  const float* a = job.queries + row0 * D;
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m256 b0 = _mm256_load_ps(panel + d * 16);
    const __m256 b1 = _mm256_load_ps(panel + d * 16 + 8);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * D + d);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  const __m256 inv_tau = _mm256_set1_ps(job.inv_tau);
  const __m256 bias0 = _mm256_load_ps(panel_bias), bias1 = _mm256_load_ps(panel_bias + 8);
  const uint64_t valid_lanes = valid >= 16 ? 0xffffull : (1ull << valid) - 1;
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const int64_t q = row0 + r;
    float* hv = job.heap_vals + q * job.k;
    int64_t* hi = job.heap_idx + q * job.k;
    const __m256 s0 = _mm256_fmsub_ps(acc[r][0], inv_tau, bias0);
    const __m256 s1 = _mm256_fmsub_ps(acc[r][1], inv_tau, bias1);
    const __m256 kth = _mm256_set1_ps(hv[0]);
    const uint64_t lanes =
        (static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(s0, kth, _CMP_NLE_UQ))) |
         static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(s1, kth, _CMP_NLE_UQ))) << 8) &
        valid_lanes;
    if (lanes) {
      alignas(32) float scores[16];
      _mm256_store_ps(scores, s0);
      _mm256_store_ps(scores + 8, s1);
      offer_lanes(scores, lanes, first_key, hv, hi, job.k);
    }
  }
}

// A tile of `rows` (< R) rows: the same kernel instantiated for that many.
template <int R, template <int> class Kernel>
struct RowDispatch {
  static void run(int rows, const Job& job, int64_t row0, const float* panel, const float* bias,
                  int64_t first_key, int64_t valid) {
    if (rows == R) {
      Kernel<R>::run(job, row0, panel, bias, first_key, valid);
    } else {
      RowDispatch<R - 1, Kernel>::run(rows, job, row0, panel, bias, first_key, valid);
    }
  }
};
template <template <int> class Kernel>
struct RowDispatch<0, Kernel> {
  static void run(int, const Job&, int64_t, const float*, const float*, int64_t, int64_t) {}
};

template <int R>
struct Avx512Tile {
  static void run(const Job& j, int64_t r0, const float* p, const float* b, int64_t f, int64_t v) {
    tile_avx512<R>(j, r0, p, b, f, v);
  }
};
template <int R>
struct Avx2Tile {
  static void run(const Job& j, int64_t r0, const float* p, const float* b, int64_t f, int64_t v) {
    tile_avx2<R>(j, r0, p, b, f, v);
  }
};

// Rows [begin, end) against every key: block by block of keys, each packed once into
// this thread's buffers, then every R-row group of the range over each panel.
template <int R, int Width, template <int> class Kernel>
void rows_against_keys(const Job& job, int64_t begin, int64_t end) {
  for (int64_t q = begin; q < end; ++q) {
    std::fill(job.heap_vals + q * job.k, job.heap_vals + (q + 1) * job.k, -INFINITY);
    std::fill(job.heap_idx + q * job.k, job.heap_idx + (q + 1) * job.k, int64_t{-1});
  }
  const int64_t block_cols =
      std::max<int64_t>(Width, kBlockBytes / (4 * std::max<int64_t>(job.D, 1)) / Width * Width);
  AlignedFloats packed = aligned_floats(block_cols * job.D);
  AlignedFloats packed_bias = aligned_floats(block_cols);
  for (int64_t lo = 0; lo < job.N; lo += block_cols) {
    const int64_t hi = std::min(job.N, lo + block_cols);
    pack_block(job.keys, job.key_dtype, job.D, job.bias, lo, hi, Width, packed.get(), packed_bias.get());
    for (int64_t row0 = begin; row0 < end; row0 += R) {
      const int rows = static_cast<int>(std::min<int64_t>(R, end - row0));
      for (int64_t c = lo; c < hi; c += Width) {
        const float* panel = packed.get() + (c - lo) * job.D;
        const float* bias = packed_bias.get() + (c - lo);
        if (rows == R) {
          Kernel<R>::run(job, row0, panel, bias, c, hi - c);
        } else {
          RowDispatch<R - 1, Kernel>::run(rows, job, row0, panel, bias, c, hi - c);
        }
      }
    }
  }
}

bool cpu_has(const char* feature) {
  __builtin_cpu_init();
  if (std::strcmp(feature, "avx512f") == 0) return __builtin_cpu_supports("avx512f");
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

}  // namespace

int topk_fused_isa() {
  if (cpu_has("avx512f")) return kIsaAvx512;
  if (cpu_has("avx2")) return kIsaAvx2;
  return kIsaNone;
}

void topk_fused(const float* queries, int64_t Q, const void* keys, int key_dtype, int64_t N,
                int64_t D, const float* bias, float inv_tau, int64_t k, float* heap_vals,
                int64_t* heap_idx, int isa, int threads) {
  const Job job{queries, Q, D, keys, key_dtype, N, bias, inv_tau, k, heap_vals, heap_idx};
  const int rows = isa == kIsaAvx512 ? 14 : 6;
  // Work shared in whole row groups; each share packs every key block once.
  const int64_t groups = (Q + rows - 1) / rows;
  const int64_t group_cost = rows * N * std::max<int64_t>(D, 1);
  const int64_t grain = std::max<int64_t>(1, kGrain * 16 / std::max<int64_t>(group_cost, 1));
  parallel_for(groups, grain, threads, [&](int64_t g0, int64_t g1) {
    const int64_t begin = g0 * rows, end = std::min(Q, g1 * rows);
    if (isa == kIsaAvx512) {
      rows_against_keys<14, 32, Avx512Tile>(job, begin, end);
    } else {
      rows_against_keys<6, 16, Avx2Tile>(job, begin, end);
    }
  });
}

}  // namespace llp::cpu

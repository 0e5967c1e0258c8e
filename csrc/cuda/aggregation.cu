// Aggregation loss on CUDA tensor cores (paper eq. 1-2): the dual log-sum-exp forward
// and the dq backward, without a B x N buffer.
//
// Forward: a block owns BM = 64 queries and one slice of the bank (split-N, so small
// batches still fill the GPU). The queries stay in shared memory; bank tiles of BN rows
// stream through it. Each of the 4 warps computes its 16 x BN similarity strip with
// WMMA (bf16/fp16 natively, fp32 as TF32 or, when torch forbids TF32, as 3xTF32: the
// hi/lo split that recovers fp32 accuracy on tensor cores), writes it to shared memory
// and folds it into running (max, sum) pairs for all rows and for same-label rows, in
// base 2 (exp2f). Per-slice partials go to parts[4][S][B] and the host combines them.
//
// Backward: w_bj = g_b/tau * (exp(s_bj - lse_all_b) - [same] exp(s_bj - lse_same_b)),
// recomputed per tile, then dq += w @ bank_tile, again with WMMA (w rounded to the bank
// dtype for 16-bit banks, as the Triton backend does). BM = 32 rows per block; each warp
// accumulates a 16 x Dp/2 part of dq in registers and stores it to parts[S][Bp][Dp].
//
// Requires compute capability 8.0+ (bf16 and TF32 WMMA). D <= 256.
#include <cuda_runtime.h>
#include <mma.h>

#include <atomic>
#include <cmath>
#include <string>
#include <type_traits>

#include "common/dtype.h"
#include "cuda/device_types.cuh"
#include "cuda/kernels.h"
#include "cuda/launch_check.cuh"
#include "cuda/wmma_tiles.cuh"

namespace llp::cuda {

namespace {

constexpr int kForwardRows = 64;
constexpr int kBackwardRows = 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using namespace tiles;

template <typename T>
__global__ void __launch_bounds__(kThreads)
aggregation_forward_kernel(const T* __restrict__ q, const T* __restrict__ bank,
                           const int64_t* __restrict__ bank_labels,
                           const int64_t* __restrict__ query_labels, float* __restrict__ parts,
                           int64_t B, int64_t N, int D, int Dp, int64_t n_per_split,
                           float scale2, bool split) {
#ifdef LLP_TENSOR_CORES
  constexpr int BM = kForwardRows;
  constexpr int BN = bank_tile_rows<T>();
  constexpr int lds = BN + kPad;
  extern __shared__ __align__(128) unsigned char smem[];
  const int ld = Dp + kPad;
  T* Qs = reinterpret_cast<T*>(smem);
  T* Ks = Qs + BM * ld;
  float* Ss = reinterpret_cast<float*>(Ks + BN * ld);
  int64_t* Ls = reinterpret_cast<int64_t*>(Ss + BM * lds);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * n_per_split;
  const int64_t hi = lo + n_per_split < N ? lo + n_per_split : N;
  load_tile(Qs, ld, q, row0, BM, B, D, Dp);

  // Lane r (< 16) keeps the running state of the warp's row r; others hold copies of nothing.
  const int64_t my_row = row0 + warp * 16 + (lane & 15);
  const int64_t my_label = my_row < B ? query_labels[my_row] : -2;  // -2 matches no bank row
  float m_all = -INFINITY, s_all = 0.0f, m_same = -INFINITY, s_same = 0.0f;

  for (int64_t t0 = lo; t0 < hi; t0 += BN) {
    __syncthreads();  // the previous tile's Ks/Ls are no longer read
    load_tile(Ks, ld, bank, t0, BN, hi, D, Dp);
    for (int i = threadIdx.x; i < BN; i += kThreads) Ls[i] = t0 + i < hi ? bank_labels[t0 + i] : -1;
    __syncthreads();

    float* strip = Ss + warp * 16 * lds;
#pragma unroll
    for (int j = 0; j < BN / 16; ++j) {
      FragC<T> acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_accumulate<T, wmma::col_major>(acc, Qs + warp * 16 * ld, ld, Ks + j * 16 * ld, ld, Dp, split);
      wmma::store_matrix_sync(strip + j * 16, acc, lds, wmma::mem_row_major);
    }
    __syncwarp();

    for (int r = 0; r < 16; ++r) {
      const int64_t label = __shfl_sync(kFull, my_label, r);
      float vals[BN / 32];
      bool same[BN / 32];
      float tile_max = -INFINITY, tile_max_same = -INFINITY;
      bool bad = false, bad_same = false;  // a non-finite logit (NaN or inf input): NaN sums
#pragma unroll
      for (int j = 0; j < BN / 32; ++j) {
        const int c = lane + 32 * j;
        const bool ok = t0 + c < hi;
        const float x = ok ? strip[r * lds + c] * scale2 : -INFINITY;
        const bool finite = isfinite(x);
        same[j] = ok && Ls[c] == label;
        bad |= ok && !finite;
        bad_same |= same[j] && !finite;
        vals[j] = finite ? x : -INFINITY;
        tile_max = fmaxf(tile_max, vals[j]);
        if (same[j]) tile_max_same = fmaxf(tile_max_same, vals[j]);
      }
      tile_max = warp_max(tile_max);
      tile_max_same = warp_max(tile_max_same);
      bad = __any_sync(kFull, bad);
      bad_same = __any_sync(kFull, bad_same);
      const float m_old = __shfl_sync(kFull, m_all, r), s_old = __shfl_sync(kFull, s_all, r);
      const float ms_old = __shfl_sync(kFull, m_same, r), ss_old = __shfl_sync(kFull, s_same, r);

      const float m_new = fmaxf(m_old, tile_max);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < BN / 32; ++j) sum += exp2f(vals[j] - m_new);
      sum = warp_sum(sum);
      const float s_new = bad ? NAN : s_old * exp2f(m_old - m_new) + sum;

      const float ms_new = fmaxf(ms_old, tile_max_same);
      float ss_new = ss_old;
      if (ms_new != -INFINITY) {  // uniform across the warp
        float ssum = 0.0f;
#pragma unroll
        for (int j = 0; j < BN / 32; ++j) ssum += same[j] ? exp2f(vals[j] - ms_new) : 0.0f;
        ss_new = ss_old * exp2f(ms_old - ms_new) + warp_sum(ssum);
      }
      if (bad_same) ss_new = NAN;
      if (lane == r) {
        m_all = m_new;
        s_all = s_new;
        m_same = ms_new;
        s_same = ss_new;
      }
    }
  }
  if (lane < 16 && my_row < B) {
    const int64_t at = static_cast<int64_t>(blockIdx.y) * B + my_row;
    const int64_t plane = static_cast<int64_t>(gridDim.y) * B;
    parts[at] = m_all * kLn2;  // back to natural-log units
    parts[plane + at] = s_all;
    parts[2 * plane + at] = m_same * kLn2;
    parts[3 * plane + at] = s_same;
  }
#endif
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
aggregation_backward_kernel(const T* __restrict__ q, const T* __restrict__ bank,
                            const int64_t* __restrict__ bank_labels,
                            const int64_t* __restrict__ query_labels,
                            const float* __restrict__ lse_all, const float* __restrict__ lse_same,
                            const float* __restrict__ coef, float* __restrict__ parts,
                            int64_t B, int64_t Bp, int64_t N, int D, int Dp, int64_t n_per_split,
                            float scale2, bool split) {
#ifdef LLP_TENSOR_CORES
  constexpr int BM = kBackwardRows;
  constexpr int BN = bank_tile_rows<T>();
  constexpr int lds = BN + kPad;
  constexpr int kMaxColFrags = kMaxDim / 16 / 2;  // per warp: half of Dp in 16-wide fragments
  extern __shared__ __align__(128) unsigned char smem[];
  const int ld = Dp + kPad;
  T* Qs = reinterpret_cast<T*>(smem);
  T* Ks = Qs + BM * ld;
  float* Ss = reinterpret_cast<float*>(Ks + BN * ld);
  T* Ws = reinterpret_cast<T*>(Ss + BM * lds);
  float* row_lse_all = reinterpret_cast<float*>(Ws + BM * lds);
  float* row_lse_same = row_lse_all + BM;
  float* row_coef = row_lse_same + BM;
  int64_t* row_label = reinterpret_cast<int64_t*>(row_coef + BM);
  int64_t* Ls = row_label + BM;

  const int warp = threadIdx.x >> 5;
  const int row_block = warp & 1, col_half = warp >> 1;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * n_per_split;
  const int64_t hi = lo + n_per_split < N ? lo + n_per_split : N;
  load_tile(Qs, ld, q, row0, BM, B, D, Dp);
  for (int i = threadIdx.x; i < BM; i += kThreads) {
    const int64_t g = row0 + i;
    const bool ok = g < B;
    row_lse_all[i] = ok ? lse_all[g] * kLog2e : 0.0f;
    row_lse_same[i] = ok ? lse_same[g] * kLog2e : 0.0f;
    row_coef[i] = ok ? coef[g] : 0.0f;
    row_label[i] = ok ? query_labels[g] : -2;
  }

  FragC<T> dq[kMaxColFrags];
#pragma unroll
  for (int f = 0; f < kMaxColFrags; ++f) wmma::fill_fragment(dq[f], 0.0f);
  const int col_frags = Dp / 16;

  for (int64_t t0 = lo; t0 < hi; t0 += BN) {
    __syncthreads();
    load_tile(Ks, ld, bank, t0, BN, hi, D, Dp);
    for (int i = threadIdx.x; i < BN; i += kThreads) Ls[i] = t0 + i < hi ? bank_labels[t0 + i] : -1;
    __syncthreads();

    for (int j = col_half; j < BN / 16; j += 2) {
      FragC<T> acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_accumulate<T, wmma::col_major>(acc, Qs + row_block * 16 * ld, ld, Ks + j * 16 * ld, ld, Dp, split);
      wmma::store_matrix_sync(Ss + row_block * 16 * lds + j * 16, acc, lds, wmma::mem_row_major);
    }
    __syncthreads();

    for (int i = threadIdx.x; i < BM * BN; i += kThreads) {
      const int r = i / BN, c = i % BN;
      const float s = Ss[r * lds + c] * scale2;
      float w = 0.0f;
      if (t0 + c < hi && row_coef[r] != 0.0f) {
        w = exp2f(s - row_lse_all[r]);
        if (Ls[c] == row_label[r]) w -= exp2f(s - row_lse_same[r]);
        w *= row_coef[r];
      }
      Dev<T>::store(Ws + r * lds + c, w);
    }
    __syncthreads();

#pragma unroll
    for (int f = 0; f < kMaxColFrags; ++f) {
      const int col_frag = col_half + 2 * f;
      if (col_frag < col_frags)
        mma_accumulate<T, wmma::row_major>(dq[f], Ws + row_block * 16 * lds, lds, Ks + col_frag * 16, ld, BN, split);
    }
  }
  float* out = parts + (static_cast<int64_t>(blockIdx.y) * Bp + row0 + row_block * 16) * Dp;
#pragma unroll
  for (int f = 0; f < kMaxColFrags; ++f) {
    const int col_frag = col_half + 2 * f;
    if (col_frag < col_frags) wmma::store_matrix_sync(out + col_frag * 16, dq[f], Dp, wmma::mem_row_major);
  }
#endif
}

template <typename T> size_t forward_smem(int Dp) {
  constexpr int BN = bank_tile_rows<T>();
  return (kForwardRows + BN) * static_cast<size_t>(Dp + kPad) * sizeof(T) +
         kForwardRows * static_cast<size_t>(BN + kPad) * sizeof(float) + BN * sizeof(int64_t);
}

template <typename T> size_t backward_smem(int Dp) {
  constexpr int BN = bank_tile_rows<T>();
  return (kBackwardRows + BN) * static_cast<size_t>(Dp + kPad) * sizeof(T) +
         kBackwardRows * static_cast<size_t>(BN + kPad) * (sizeof(float) + sizeof(T)) +
         kBackwardRows * (3 * sizeof(float) + sizeof(int64_t)) + BN * sizeof(int64_t);
}

// Device checks shared by both launches; empty on success.
std::string prepare(const char* name, int device, int64_t D, size_t smem, const void* kernel) {
  if (const cudaError_t err = cudaSetDevice(device); err != cudaSuccess)
    return std::string(name) + ": cudaSetDevice: " + cudaGetErrorString(err);
  int major = 0, optin = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (major < 8)
    return std::string(name) + ": needs compute capability 8.0+ (bf16/TF32 tensor cores); use backend='triton'";
  if (D > kMaxDim) return std::string(name) + ": supports D <= " + std::to_string(kMaxDim) + ", got " + std::to_string(D);
  if (smem > static_cast<size_t>(optin))
    return std::string(name) + ": needs " + std::to_string(smem) + " bytes of shared memory, the device allows " +
           std::to_string(optin);
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return std::string(name) + ": cudaFuncSetAttribute: " + cudaGetErrorString(err);
  return {};
}

template <typename T>
std::string forward(const void* q, const void* bank, const int64_t* bank_labels, const int64_t* query_labels,
                    float* parts, int64_t B, int64_t N, int64_t D, int64_t splits, int64_t n_per_split,
                    float inv_tau, bool split, int device, cudaStream_t stream) {
  static std::atomic<bool> first{true};
  const int Dp = dim_padded(D);
  const size_t smem = forward_smem<T>(Dp);
  const void* kernel = reinterpret_cast<const void*>(&aggregation_forward_kernel<T>);
  if (std::string err = prepare("aggregation_forward_kernel", device, D, smem, kernel); !err.empty()) return err;
  const dim3 grid(static_cast<unsigned>((B + kForwardRows - 1) / kForwardRows), static_cast<unsigned>(splits));
  aggregation_forward_kernel<T><<<grid, kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(bank), bank_labels, query_labels, parts, B, N,
      static_cast<int>(D), Dp, n_per_split, inv_tau * kLog2e, split);
  return check_launch("aggregation_forward_kernel", stream, first);
}

template <typename T>
std::string backward(const void* q, const void* bank, const int64_t* bank_labels, const int64_t* query_labels,
                     const float* lse_all, const float* lse_same, const float* coef, float* parts,
                     int64_t B, int64_t N, int64_t D, int64_t splits, int64_t n_per_split, float inv_tau,
                     bool split, int device, cudaStream_t stream) {
  static std::atomic<bool> first{true};
  const int Dp = dim_padded(D);
  const size_t smem = backward_smem<T>(Dp);
  const void* kernel = reinterpret_cast<const void*>(&aggregation_backward_kernel<T>);
  if (std::string err = prepare("aggregation_backward_kernel", device, D, smem, kernel); !err.empty()) return err;
  const int64_t Bp = (B + kBackwardRows - 1) / kBackwardRows * kBackwardRows;
  const dim3 grid(static_cast<unsigned>(Bp / kBackwardRows), static_cast<unsigned>(splits));
  aggregation_backward_kernel<T><<<grid, kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(bank), bank_labels, query_labels, lse_all, lse_same,
      coef, parts, B, Bp, N, static_cast<int>(D), Dp, n_per_split, inv_tau * kLog2e, split);
  return check_launch("aggregation_backward_kernel", stream, first);
}

}  // namespace

AggregationPlan aggregation_plan(int64_t B, int64_t N, int64_t D, int bank_dtype, bool backward_pass, int device) {
  AggregationPlan plan;
  const int64_t rows = backward_pass ? kBackwardRows : kForwardRows;
  const int64_t bn = bank_tile_rows(bank_dtype);
  const Slices slices = slice_rows((B + rows - 1) / rows, N, bn, 1, multiprocessor_count(device));
  plan.splits = slices.count;
  plan.n_per_split = slices.rows;
  plan.rows_padded = (B + kBackwardRows - 1) / kBackwardRows * kBackwardRows;
  plan.dim_padded = dim_padded(D);
  return plan;
}

std::string aggregation_forward(const void* q, const void* bank, int bank_dtype, const int64_t* bank_labels,
                                const int64_t* query_labels, float* parts, int64_t B, int64_t N, int64_t D,
                                int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                                int device, void* stream) {
  return with_dtype(bank_dtype, "aggregation_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return forward<T>(q, bank, bank_labels, query_labels, parts, B, N, D, splits, n_per_split, inv_tau,
                      std::is_same_v<T, float> && exact_fp32, device, static_cast<cudaStream_t>(stream));
  });
}

std::string aggregation_backward(const void* q, const void* bank, int bank_dtype, const int64_t* bank_labels,
                                 const int64_t* query_labels, const float* lse_all, const float* lse_same,
                                 const float* coef, float* parts, int64_t B, int64_t N, int64_t D,
                                 int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                                 int device, void* stream) {
  return with_dtype(bank_dtype, "aggregation_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return backward<T>(q, bank, bank_labels, query_labels, lse_all, lse_same, coef, parts, B, N, D, splits,
                       n_per_split, inv_tau, std::is_same_v<T, float> && exact_fp32, device,
                       static_cast<cudaStream_t>(stream));
  });
}

}  // namespace llp::cuda

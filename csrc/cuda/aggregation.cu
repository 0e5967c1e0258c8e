// Aggregation loss on CUDA tensor cores (paper eq. 1-2): the dual log-sum-exp forward
// and the dq backward, without a B x N buffer.
//
// Both kernels: a block owns BM = 64 queries (16 per warp) and one slice of the bank
// (split-N, so small batches still fill the GPU). The queries stay in shared memory;
// bank tiles of BN rows (64 for 16-bit banks, 32 for fp32) stream through a double
// buffer filled by cp.async while the previous tile is used. Each warp computes its
// 16 x BN similarity strip with mma.sync fed by ldmatrix (register-blocked along the
// bank rows: one A fragment serves BN / 8 products), bf16/fp16 natively, fp32 as TF32
// or, when torch forbids TF32, as 3xTF32 (the hi/lo split that recovers fp32 accuracy).
// The strip never leaves registers.
//
// Forward: each thread holds two query rows (g and g + 8 of its warp's 16) and folds its
// columns of the strip into running (max, sum) pairs for all rows and for same-label
// rows, in base 2 (exp2f), with quad shuffles for the row-wise max and sum. Per-slice
// partials go to parts[4][S][B] and the host combines them.
//
// Backward: w_bj = g_b/tau * (exp(s_bj - lse_all_b) - [same] exp(s_bj - lse_same_b)),
// recomputed per tile in the accumulator registers, which then serve directly as the A
// operand of dq += w @ bank_tile (rounded to the bank dtype for 16-bit banks, as the
// Triton backend does; fp32 keeps the k order of the accumulator layout, which a dot
// product does not care about). Each warp accumulates its 16 x Dp part of dq in
// registers and stores it to parts[S][Bp][Dp].
//
// Requires compute capability 8.0+ (bf16/TF32 mma.sync, cp.async). D <= 256.
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <string>
#include <type_traits>

#include "common/dtype.h"
#include "cuda/device_types.cuh"
#include "cuda/kernels.h"
#include "cuda/launch_check.cuh"
#include "cuda/mma_tiles.cuh"

namespace llp::cuda {

namespace {

constexpr int kRows = 64;  // queries per block, forward and backward: 16 per warp
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using namespace tiles;

// Shared memory of both kernels: Qs [kRows][ld], Ks [2][BN][ld], Ls [2][BN] labels.
size_t kernel_smem(int dtype, int Dp) {
  const size_t size = dtype == kFloat32 ? 4 : 2;
  const int BN = bank_tile_rows(dtype);
  return (kRows + 2 * BN) * (Dp + 16 / size) * size + 2 * BN * sizeof(int64_t);
}
template <typename T> size_t kernel_smem(int Dp) { return kernel_smem(std::is_same_v<T, float> ? kFloat32 : kBFloat16, Dp); }

// The bank slice of block (blockIdx.x, blockIdx.y) in shared memory carved as Qs
// [kRows][ld], bank tiles [2][BN][ld], labels [2][BN] (kernel_smem's layout): loads the
// block's queries and starts streaming its bank tiles.
template <typename T>
struct BankSlice {
  static constexpr int BN = bank_tile_rows<T>();
  T* Qs;
  KeyStream<T, int64_t, BN> stream;

  __device__ BankSlice(unsigned char* smem, int ld, const T* q, int64_t B, const T* bank, const int64_t* labels,
                       int64_t N, int D, int Dp, int64_t n_per_split)
      : Qs(reinterpret_cast<T*>(smem)),
        stream(Qs + kRows * ld, reinterpret_cast<int64_t*>(Qs + (kRows + 2 * BN) * ld), ld, bank, labels,
               static_cast<int64_t>(blockIdx.y) * n_per_split,
               (static_cast<int64_t>(blockIdx.y) + 1) * n_per_split < N
                   ? (static_cast<int64_t>(blockIdx.y) + 1) * n_per_split : N,
               D, Dp) {
    load_tile(Qs, ld, q, static_cast<int64_t>(blockIdx.x) * kRows, kRows, B, D, Dp);
  }

  // Waits for bank tile i and computes this warp's 16 x BN strip of q . bank^T into acc.
  template <int NF>
  __device__ void strip(int64_t i, float (&acc)[NF][4], bool split) const {
    stream.wait(i);
    const int warp = threadIdx.x >> 5;
    product_abt<T, NF>(acc, Qs + warp * 16 * stream.ld, stream.ld, stream.tile_keys(i), stream.ld, stream.Dp, split);
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
aggregation_forward_kernel(const T* __restrict__ q, const T* __restrict__ bank,
                           const int64_t* __restrict__ bank_labels,
                           const int64_t* __restrict__ query_labels, float* __restrict__ parts,
                           int64_t B, int64_t N, int D, int Dp, int64_t n_per_split,
                           float scale2, bool split) {
#ifdef LLP_TENSOR_CORES
  constexpr int NF = BankSlice<T>::BN / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  const BankSlice<T> slice(smem, Dp + pad<T>(), q, B, bank, bank_labels, N, D, Dp, n_per_split);
  const auto& stream = slice.stream;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;

  // This thread's rows h = 0, 1: row0 + 16 warp + g + 8 h (g = lane / 4), shared by a quad.
  int64_t my_row[2], my_label[2];
  float m_all[2], s_all[2], m_same[2], s_same[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    my_row[h] = row0 + warp * 16 + (lane >> 2) + 8 * h;
    my_label[h] = my_row[h] < B ? query_labels[my_row[h]] : -2;  // -2 matches no bank row
    m_all[h] = m_same[h] = -INFINITY;
    s_all[h] = s_same[h] = 0.0f;
  }

  for (int64_t i = 0; i < stream.tiles; ++i) {
    float acc[NF][4] = {};
    slice.strip(i, acc, split);
    const int64_t* Lt = stream.tile_values(i);
    const int64_t t0 = stream.first_row(i), hi = stream.hi;

    // bit 2h: a non-finite logit in row h (NaN or inf input: the sums become NaN); bit
    // 2h + 1: one among the row's same-label columns.
    unsigned bad = 0;
    float tile_max[2] = {-INFINITY, -INFINITY}, tile_max_same[2] = {-INFINITY, -INFINITY};
    bool same[2][2 * NF];
#pragma unroll
    for (int j = 0; j < NF; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t + e;
        const bool ok = t0 + c < hi;
        const int64_t label = Lt[c];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float x = ok ? acc[j][2 * h + e] * scale2 : -INFINITY;
          const bool finite = isfinite(x);
          same[h][2 * j + e] = ok && label == my_label[h];
          if (ok && !finite) bad |= 1u << (2 * h);
          if (same[h][2 * j + e] && !finite) bad |= 2u << (2 * h);
          acc[j][2 * h + e] = finite ? x : -INFINITY;
          tile_max[h] = fmaxf(tile_max[h], acc[j][2 * h + e]);
          if (same[h][2 * j + e]) tile_max_same[h] = fmaxf(tile_max_same[h], acc[j][2 * h + e]);
        }
      }
    }
    bad = quad_or(bad);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float m_new = fmaxf(m_all[h], quad_max(tile_max[h]));
      const float ms_new = fmaxf(m_same[h], quad_max(tile_max_same[h]));
      float sum = 0.0f, sum_same = 0.0f;
#pragma unroll
      for (int j = 0; j < NF; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float v = acc[j][2 * h + e];
          sum += exp2f(v - m_new);
          if (same[h][2 * j + e] && ms_new != -INFINITY) sum_same += exp2f(v - ms_new);
        }
      }
      sum = quad_sum(sum);
      sum_same = quad_sum(sum_same);
      s_all[h] = (bad >> (2 * h)) & 1u ? NAN : s_all[h] * exp2f(m_all[h] - m_new) + sum;
      if (ms_new != -INFINITY) s_same[h] = s_same[h] * exp2f(m_same[h] - ms_new) + sum_same;
      if ((bad >> (2 * h + 1)) & 1u) s_same[h] = NAN;
      m_all[h] = m_new;
      m_same[h] = ms_new;
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (t == 0 && my_row[h] < B) {
      const int64_t at = static_cast<int64_t>(blockIdx.y) * B + my_row[h];
      const int64_t plane = static_cast<int64_t>(gridDim.y) * B;
      parts[at] = m_all[h] * kLn2;  // back to natural-log units
      parts[plane + at] = s_all[h];
      parts[2 * plane + at] = m_same[h] * kLn2;
      parts[3 * plane + at] = s_same[h];
    }
  }
#endif
}

#ifdef LLP_TENSOR_CORES
// dq[f] += W K for one bank tile: W (16 x BN, one warp's rows) in accumulator layout
// w[j] (the m16n8 tiles along the bank rows), K the tile [BN][ld] in shared memory,
// dq[f] the m16n8 tiles along the Dp output dimensions (DQ >= Dp / 8 of them).
template <typename T, int NF, int DQ>
__device__ void accumulate_dq(float (&dq)[DQ][4], const float (&w)[NF][4], const T* Kt, int ld, int Dp,
                              bool split) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if constexpr (std::is_same_v<T, float>) {
    // m16n8k8 over bank rows 8j .. 8j + 7, taken in the order (0, 2, 4, 6, 1, 3, 5, 7):
    // A(g, t) = W(g, 8j + 2t) = w[j][0], A(g, t + 4) = W(g, 8j + 2t + 1) = w[j][1], and
    // B(t, n) = K[8j + 2t][n], B(t + 4, n) = K[8j + 2t + 1][n] to match.
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      const uint32_t a[4] = {__float_as_uint(w[j][0]), __float_as_uint(w[j][2]), __float_as_uint(w[j][1]),
                             __float_as_uint(w[j][3])};
      const float* k0 = Kt + (8 * j + 2 * t) * ld + g;
#pragma unroll
      for (int f = 0; f < DQ; ++f) {
        if (8 * f < Dp) {
          const uint32_t b[2] = {__float_as_uint(k0[8 * f]), __float_as_uint(k0[ld + 8 * f])};
          mma_maybe_split<T>(dq[f], a, b, split);
        }
      }
    }
  } else {
    using Pair = std::conditional_t<std::is_same_v<T, __nv_bfloat16>, __nv_bfloat162, __half2>;
    // m16n8k16 over bank rows 16 kk .. 16 kk + 15: the A fragment is the accumulators of
    // tiles 2 kk and 2 kk + 1 packed in pairs; B = K (k = bank row) through ldmatrix.trans:
    // matrices (rows 0-7 | 8-15) x (dims 0-7 | 8-15 of a pair of output tiles).
    const T* b_lane = Kt + ((lane & 7) + 8 * ((lane >> 3) & 1)) * ld + 8 * (lane >> 4);
#pragma unroll
    for (int kk = 0; kk < NF / 2; ++kk) {
      uint32_t a[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float* src = w[2 * kk + (r >> 1)] + 2 * (r & 1);
        Pair pair;
        if constexpr (std::is_same_v<T, __nv_bfloat16>) pair = __floats2bfloat162_rn(src[0], src[1]);
        else pair = __floats2half2_rn(src[0], src[1]);
        a[r] = *reinterpret_cast<uint32_t*>(&pair);
      }
#pragma unroll
      for (int f = 0; f + 1 < DQ; f += 2) {
        if (8 * f < Dp) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, b_lane + 16 * kk * ld + 8 * f);
          const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
          mma<T>(dq[f], a, b0);
          mma<T>(dq[f + 1], a, b1);
        }
      }
    }
  }
}
#endif

// DQ: output m16n8 tiles per warp the registers are sized for (Dp / 8 <= DQ).
template <typename T, int DQ>
__global__ void __launch_bounds__(kThreads)
aggregation_backward_kernel(const T* __restrict__ q, const T* __restrict__ bank,
                            const int64_t* __restrict__ bank_labels,
                            const int64_t* __restrict__ query_labels,
                            const float* __restrict__ lse_all, const float* __restrict__ lse_same,
                            const float* __restrict__ coef, float* __restrict__ parts,
                            int64_t B, int64_t Bp, int64_t N, int D, int Dp, int64_t n_per_split,
                            float scale2, bool split) {
#ifdef LLP_TENSOR_CORES
  constexpr int NF = BankSlice<T>::BN / 8;
  extern __shared__ __align__(128) unsigned char smem[];
  const BankSlice<T> slice(smem, Dp + pad<T>(), q, B, bank, bank_labels, N, D, Dp, n_per_split);
  const auto& stream = slice.stream;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;

  // This thread's rows h = 0, 1 (as in the forward), their LSEs in base 2 and coefficients.
  int64_t my_label[2];
  float my_lse_all[2], my_lse_same[2], my_coef[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = row0 + warp * 16 + (lane >> 2) + 8 * h;
    const bool ok = row < B;
    my_label[h] = ok ? query_labels[row] : -2;
    my_lse_all[h] = ok ? lse_all[row] * kLog2e : 0.0f;
    my_lse_same[h] = ok ? lse_same[row] * kLog2e : 0.0f;
    my_coef[h] = ok ? coef[row] : 0.0f;
  }

  float dq[DQ][4] = {};
  for (int64_t i = 0; i < stream.tiles; ++i) {
    float w[NF][4] = {};
    slice.strip(i, w, split);
    const int64_t* Lt = stream.tile_values(i);
    const int64_t t0 = stream.first_row(i), hi = stream.hi;
#pragma unroll
    for (int j = 0; j < NF; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * t + e;
        const bool ok = t0 + c < hi;
        const int64_t label = Lt[c];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float s = w[j][2 * h + e] * scale2;
          float weight = 0.0f;
          if (ok && my_coef[h] != 0.0f) {
            weight = exp2f(s - my_lse_all[h]);
            if (label == my_label[h]) weight -= exp2f(s - my_lse_same[h]);
            weight *= my_coef[h];
          }
          w[j][2 * h + e] = weight;
        }
      }
    }
    accumulate_dq<T, NF, DQ>(dq, w, stream.tile_keys(i), stream.ld, Dp, split);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  float* out = parts + (static_cast<int64_t>(blockIdx.y) * Bp + row0 + warp * 16 + (lane >> 2)) * Dp + 2 * t;
#pragma unroll
  for (int f = 0; f < DQ; ++f) {
    if (8 * f < Dp) {
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(out + 8 * h * Dp + 8 * f) = make_float2(dq[f][2 * h], dq[f][2 * h + 1]);
    }
  }
#endif
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
  const size_t smem = kernel_smem<T>(Dp);
  const void* kernel = reinterpret_cast<const void*>(&aggregation_forward_kernel<T>);
  if (std::string err = prepare("aggregation_forward_kernel", device, D, smem, kernel); !err.empty()) return err;
  const dim3 grid(static_cast<unsigned>((B + kRows - 1) / kRows), static_cast<unsigned>(splits));
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
  const int Dp = dim_padded(D);
  const size_t smem = kernel_smem<T>(Dp);
  // Registers for the dq tiles are sized at compile time: 16 of them up to D = 128.
  const bool narrow = Dp <= 128;
  const void* kernel = narrow ? reinterpret_cast<const void*>(&aggregation_backward_kernel<T, 16>)
                              : reinterpret_cast<const void*>(&aggregation_backward_kernel<T, kMaxDim / 8>);
  if (std::string err = prepare("aggregation_backward_kernel", device, D, smem, kernel); !err.empty()) return err;
  const int64_t Bp = (B + kRows - 1) / kRows * kRows;
  const dim3 grid(static_cast<unsigned>(Bp / kRows), static_cast<unsigned>(splits));
  static std::atomic<bool> first_narrow{true}, first_wide{true};
  if (narrow) {
    aggregation_backward_kernel<T, 16><<<grid, kThreads, smem, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(bank), bank_labels, query_labels, lse_all, lse_same,
        coef, parts, B, Bp, N, static_cast<int>(D), Dp, n_per_split, inv_tau * kLog2e, split);
    return check_launch("aggregation_backward_kernel", stream, first_narrow);
  }
  aggregation_backward_kernel<T, kMaxDim / 8><<<grid, kThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(bank), bank_labels, query_labels, lse_all, lse_same,
      coef, parts, B, Bp, N, static_cast<int>(D), Dp, n_per_split, inv_tau * kLog2e, split);
  return check_launch("aggregation_backward_kernel", stream, first_wide);
}

}  // namespace

AggregationPlan aggregation_plan(int64_t B, int64_t N, int64_t D, int bank_dtype, bool backward_pass, int device) {
  AggregationPlan plan;
  const int64_t rows = kRows;
  const int64_t bn = bank_tile_rows(bank_dtype);
  const Slices slices = slice_rows((B + rows - 1) / rows, N, bn, 1, multiprocessor_count(device));
  plan.splits = slices.count;
  plan.n_per_split = slices.rows;
  plan.rows_padded = (B + kRows - 1) / kRows * kRows;
  plan.dim_padded = dim_padded(D);
  return plan;
}

int64_t aggregation_shared_bytes(int bank_dtype, int64_t D) {
  return static_cast<int64_t>(kernel_smem(bank_dtype, dim_padded(D)));
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

// Shared pieces of the tensor-core kernels: WMMA fragment types per bank dtype, the
// 16 x 16 tile product (bf16/fp16 native; fp32 as TF32 or 3xTF32), warp reductions and
// the zero-padded global -> shared tile loader (namespace llp::cuda::tiles).
#pragma once
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device_types.cuh"
#include "cuda/kernels.h"
#include "cuda/slices.h"

namespace llp::cuda::tiles {

using namespace nvcuda;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // shared-memory row padding in elements; keeps WMMA's 32-byte alignment
constexpr unsigned kFull = 0xffffffffu;

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define LLP_TENSOR_CORES 1
#endif

// Bank/key rows per shared-memory tile, by storage dtype (fp32 tiles take twice the bytes).
constexpr int bank_tile_rows(int dtype) { return dtype == kFloat32 ? 32 : 64; }
template <typename T> constexpr int bank_tile_rows() {
  return bank_tile_rows(std::is_same_v<T, float> ? kFloat32 : kBFloat16);
}
inline int dim_padded(int64_t D) { return static_cast<int>((D + 15) / 16 * 16); }

// Number of SMs of `device`; 1 when it cannot be read (no driver, say).
inline int multiprocessor_count(int device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms < 1) {
    cudaGetLastError();
    sms = 1;
  }
  return sms;
}

// WMMA shapes and input types per bank dtype.
template <typename T> struct Mma {
  static constexpr int K = 16;
  using In = T;
};
template <> struct Mma<float> {
  static constexpr int K = 8;
  using In = wmma::precision::tf32;
};

template <typename T> using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Mma<T>::K, typename Mma<T>::In, wmma::row_major>;
template <typename T, typename L> using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Mma<T>::K, typename Mma<T>::In, L>;
template <typename T> using FragC = wmma::fragment<wmma::accumulator, 16, 16, Mma<T>::K, float>;

#ifdef LLP_TENSOR_CORES
// acc += A[16 x kdim] (row-major, lda) @ B[kdim x 16]; B is column-major (b(k, n) at
// b[n * ldb + k]) or row-major (b[k * ldb + n]). fp32 inputs become TF32, or with
// `split` the 3xTF32 sum hi*lo + lo*hi + hi*hi.
template <typename T, typename LayoutB>
__device__ void mma_accumulate(FragC<T>& acc, const T* a, int lda, const T* b, int ldb, int kdim, bool split) {
  constexpr int K = Mma<T>::K;
  constexpr bool col_major = std::is_same_v<LayoutB, wmma::col_major>;
  for (int k = 0; k < kdim; k += K) {
    FragA<T> fa;
    FragB<T, LayoutB> fb;
    wmma::load_matrix_sync(fa, a + k, lda);
    wmma::load_matrix_sync(fb, col_major ? b + k : b + static_cast<int64_t>(k) * ldb, ldb);
    if constexpr (std::is_same_v<T, float>) {
      if (split) {
        FragA<T> fa_lo;
        FragB<T, LayoutB> fb_lo;
#pragma unroll
        for (int i = 0; i < fa.num_elements; ++i) {
          const float hi = wmma::__float_to_tf32(fa.x[i]);
          fa_lo.x[i] = wmma::__float_to_tf32(fa.x[i] - hi);
          fa.x[i] = hi;
        }
#pragma unroll
        for (int i = 0; i < fb.num_elements; ++i) {
          const float hi = wmma::__float_to_tf32(fb.x[i]);
          fb_lo.x[i] = wmma::__float_to_tf32(fb.x[i] - hi);
          fb.x[i] = hi;
        }
        wmma::mma_sync(acc, fa_lo, fb, acc);
        wmma::mma_sync(acc, fa, fb_lo, acc);
      } else {
#pragma unroll
        for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = wmma::__float_to_tf32(fa.x[i]);
#pragma unroll
        for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = wmma::__float_to_tf32(fb.x[i]);
      }
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
}
#endif

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

// rows [row0, row0 + rows) of a [n_valid, D] matrix into shared memory [rows][ld],
// zero beyond n_valid and beyond D (up to Dp). 16-byte vector loads when every row
// starts 16-byte aligned (D a multiple of 16 / sizeof(T) and an aligned base pointer;
// shared rows are, since ld is a multiple of 8 elements), element loads otherwise.
template <typename T>
__device__ void load_tile(T* dst, int ld, const T* src, int64_t row0, int rows, int64_t n_valid, int D, int Dp) {
  constexpr int V = 16 / sizeof(T);
  if (D % V == 0 && (reinterpret_cast<uintptr_t>(src) & 15u) == 0) {
    const int chunks = Dp / V;  // Dp is a multiple of 16, hence of V
    for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
      const int r = i / chunks, c = (i - r * chunks) * V;
      const int64_t g = row0 + r;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits: +0.0 in every dtype
      if (g < n_valid && c < D) v = *reinterpret_cast<const uint4*>(src + g * D + c);
      *reinterpret_cast<uint4*>(dst + r * ld + c) = v;
    }
    return;
  }
  for (int i = threadIdx.x; i < rows * Dp; i += blockDim.x) {
    const int r = i / Dp, c = i - r * Dp;
    const int64_t g = row0 + r;
    dst[r * ld + c] = (g < n_valid && c < D) ? src[g * D + c] : Dev<T>::zero();
  }
}

}  // namespace llp::cuda::tiles

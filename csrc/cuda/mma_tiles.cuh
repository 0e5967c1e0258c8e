// Shared pieces of the tensor-core kernels (namespace llp::cuda::tiles): warp-level
// mma.sync products fed by ldmatrix from padded shared-memory tiles, cp.async tile
// loads for double buffering, warp/quad reductions.
//
// Fragment layouts are those of the PTX ISA for mma.m16n8k16 (bf16/fp16) and
// mma.m16n8k8 (tf32). With g = lane / 4 and t = lane % 4, a thread holds of the 16 x 8
// fp32 accumulator C the elements c[0], c[1] = C(g, 2t), C(g, 2t + 1) and c[2], c[3] =
// C(g + 8, 2t), C(g + 8, 2t + 1). Every tile row in shared memory starts 16-byte
// aligned and rows are padded by 16 bytes, so the 8 row addresses of one ldmatrix hit 8
// different 16-byte bank groups (no conflicts).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device_types.cuh"
#include "cuda/kernels.h"
#include "cuda/slices.h"

namespace llp::cuda::tiles {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr unsigned kFull = 0xffffffffu;

#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define LLP_TENSOR_CORES 1
#endif

// Shared-memory row padding in elements: 16 bytes.
template <typename T> constexpr int pad() { return 16 / static_cast<int>(sizeof(T)); }

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

__device__ inline float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, off));
  return v;
}
__device__ inline float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}
// Over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ inline float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(kFull, v, 1));
  return fmaxf(v, __shfl_xor_sync(kFull, v, 2));
}
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(kFull, v, 1);
  return v + __shfl_xor_sync(kFull, v, 2);
}
__device__ inline unsigned quad_or(unsigned v) {
  v |= __shfl_xor_sync(kFull, v, 1);
  return v | __shfl_xor_sync(kFull, v, 2);
}

// rows [row0, row0 + rows) of a [n_valid, D] matrix into shared memory [rows][ld],
// zero beyond n_valid and beyond D (up to Dp). 16-byte vector loads when every row
// starts 16-byte aligned (D a multiple of 16 / sizeof(T) and an aligned base pointer;
// shared rows are, since ld is a multiple of 16 bytes), element loads otherwise.
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

#ifdef LLP_TENSOR_CORES
__device__ inline uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// cp.async of `bytes` (4, 8 or 16) global -> shared; `valid` false writes zeros instead.
template <int bytes>
__device__ inline void copy_async(void* dst, const void* src, bool valid) {
  const int src_bytes = valid ? bytes : 0;
  if constexpr (bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                 "r"(src_bytes)
                 : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(dst)), "l"(src),
                 "n"(bytes), "r"(src_bytes)
                 : "memory");
  }
}
// "memory" clobbers: the compiler must not move shared-memory accesses across these.
__device__ inline void async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int pending> __device__ inline void async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
}

// load_tile through cp.async when rows are 16-byte aligned (the caller commits and
// waits); otherwise the synchronous loader, so the result is the same either way.
template <typename T>
__device__ void load_tile_async(T* dst, int ld, const T* src, int64_t row0, int rows, int64_t n_valid, int D,
                                int Dp) {
  constexpr int V = 16 / sizeof(T);
  if (D % V != 0 || (reinterpret_cast<uintptr_t>(src) & 15u) != 0) {
    load_tile(dst, ld, src, row0, rows, n_valid, D, Dp);
    return;
  }
  const int chunks = Dp / V;
  for (int i = threadIdx.x; i < rows * chunks; i += blockDim.x) {
    const int r = i / chunks, c = (i - r * chunks) * V;
    const int64_t g = row0 + r;
    const bool valid = g < n_valid && c < D;
    copy_async<16>(dst + r * ld + c, valid ? src + g * D + c : src, valid);
  }
}

// Per-column values of a key tile (labels, bias): dst[i] = src[row0 + i] for row0 + i <
// n_valid, else zero bits. `src` may be null (all zero).
template <typename V>
__device__ void load_column_values_async(V* dst, const V* src, int64_t row0, int count, int64_t n_valid) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8, "4- or 8-byte values");
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    if (src == nullptr) {
      dst[i] = V{};  // a plain store: visible after the barrier that follows the wait
      continue;
    }
    const bool valid = row0 + i < n_valid;
    copy_async<sizeof(V)>(dst + i, valid ? src + row0 + i : src, valid);
  }
}

// A slice [lo, hi) of key rows streamed through two shared-memory stages of BN rows each:
// keys [2][BN][ld] and one value per row [2][BN] (labels, bias; `values` may be null,
// giving zeros). cp.async loads tile i + 1 while tile i is in use; the caller puts a
// __syncthreads() after its last read of a tile, before the next wait() refills it.
template <typename T, typename V, int BN>
struct KeyStream {
  T* keys_s;
  V* values_s;
  int ld;
  const T* keys;
  const V* values;
  int64_t lo, hi, tiles;
  int D, Dp;

  // Starts loading tile 0.
  __device__ KeyStream(T* keys_s_, V* values_s_, int ld_, const T* keys_, const V* values_, int64_t lo_,
                       int64_t hi_, int D_, int Dp_)
      : keys_s(keys_s_), values_s(values_s_), ld(ld_), keys(keys_), values(values_), lo(lo_), hi(hi_),
        tiles(hi_ > lo_ ? (hi_ - lo_ + BN - 1) / BN : 0), D(D_), Dp(Dp_) {
    if (tiles > 0) load(0);
  }
  __device__ int64_t first_row(int64_t i) const { return lo + i * BN; }
  __device__ const T* tile_keys(int64_t i) const { return keys_s + (i & 1) * BN * ld; }
  __device__ const V* tile_values(int64_t i) const { return values_s + (i & 1) * BN; }
  // Tile i is in stage i % 2 for every thread once this returns; tile i + 1 is on its way.
  __device__ void wait(int64_t i) const {
    if (i + 1 < tiles) {
      load(i + 1);
      async_wait<1>();
    } else {
      async_wait<0>();
    }
    __syncthreads();
  }

 private:
  __device__ void load(int64_t i) const {
    load_tile_async(keys_s + (i & 1) * BN * ld, ld, keys, first_row(i), BN, hi, D, Dp);
    load_column_values_async(values_s + (i & 1) * BN, values, first_row(i), BN, hi);
    async_commit();
  }
};

// ldmatrix: four (x4) or two (x2) 8 x 8 matrices of 16-bit elements (of fp32 data: 8 x
// 4); lane l supplies the row address of matrix l / 8, row l % 8.
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(row)));
}
__device__ inline void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(shared_address(row)));
}

__device__ inline uint32_t to_tf32(uint32_t bits) {
  uint32_t out;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(out) : "f"(__uint_as_float(bits)));
  return out;
}

// c += a b for one m16n8 tile: a the A fragment (4 registers), b the B fragment (2).
// 16-bit inputs: k = 16; fp32 inputs (already TF32-rounded bits): k = 8.
template <typename T> __device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, float>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// fp32 operands on TF32 tensor cores: c += a b with TF32-rounded inputs, or with
// `split` the 3xTF32 sum a_hi b_lo + a_lo b_hi + a_hi b_hi, which recovers about fp32
// accuracy. Other dtypes: one mma.
template <typename T>
__device__ inline void mma_maybe_split(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool split) {
  if constexpr (std::is_same_v<T, float>) {
    uint32_t a_hi[4], b_hi[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) a_hi[i] = to_tf32(a[i]);
#pragma unroll
    for (int i = 0; i < 2; ++i) b_hi[i] = to_tf32(b[i]);
    if (split) {
      uint32_t a_lo[4], b_lo[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) a_lo[i] = to_tf32(__float_as_uint(__uint_as_float(a[i]) - __uint_as_float(a_hi[i])));
#pragma unroll
      for (int i = 0; i < 2; ++i) b_lo[i] = to_tf32(__float_as_uint(__uint_as_float(b[i]) - __uint_as_float(b_hi[i])));
      mma<T>(c, a_hi, b_lo);
      mma<T>(c, a_lo, b_hi);
    }
    mma<T>(c, a_hi, b_hi);
  } else {
    mma<T>(c, a, b);
  }
}

// acc[j] (+)= A[16 x Dp] B_j^T for the NF m16n8 tiles j of one warp: A row-major at
// `a` (leading dimension lda elements), B as NF * 8 rows of length Dp at `b` (row n of
// the product's B^T, leading dimension ldb), i.e. acc[j](r, n) += sum_k a[r][k] *
// b[8 j + n][k]. One ldmatrix.x4 per k-step for A, one per two B tiles; every A
// fragment is used NF times and every B fragment once per call (register blocking
// along n).
template <typename T, int NF>
__device__ void product_abt(float (&acc)[NF][4], const T* a, int lda, const T* b, int ldb, int Dp, bool split) {
  constexpr int K = std::is_same_v<T, float> ? 8 : 16;  // k per mma
  constexpr int kBytes = 16;                          // of one 8-row ldmatrix column block
  const int lane = threadIdx.x & 31;
  // A: matrices (rows 0-7 | 8-15) x (k block 0 | 1); B: (n 0-7 | 8-15 of a pair) x (k block 0 | 1).
  const T* a_lane = a + ((lane & 7) + 8 * ((lane >> 3) & 1)) * lda + (lane >> 4) * (kBytes / sizeof(T));
  const T* b_lane = b + ((lane & 7) + 8 * (lane >> 4)) * ldb + ((lane >> 3) & 1) * (kBytes / sizeof(T));
  const T* b_lane2 = b + (lane & 7) * ldb + ((lane >> 3) & 1) * (kBytes / sizeof(T));  // x2: lanes 0-15
  for (int k = 0; k < Dp; k += K) {
    uint32_t fa[4];
    ldmatrix_x4(fa, a_lane + k);
#pragma unroll
    for (int j = 0; j + 1 < NF; j += 2) {
      uint32_t fb[4];
      ldmatrix_x4(fb, b_lane + 8 * j * ldb + k);
      const uint32_t b0[2] = {fb[0], fb[1]}, b1[2] = {fb[2], fb[3]};
      mma_maybe_split<T>(acc[j], fa, b0, split);
      mma_maybe_split<T>(acc[j + 1], fa, b1, split);
    }
    if constexpr (NF % 2 == 1) {
      uint32_t fb[2];
      ldmatrix_x2(fb, b_lane2 + 8 * (NF - 1) * ldb + k);
      mma_maybe_split<T>(acc[NF - 1], fa, fb, split);
    }
  }
}
#endif

}  // namespace llp::cuda::tiles

// Streaming top-k with key bias on CUDA: the KP best of q . key_j / tau - bias[j] per
// query, with the similarity GEMM tile fused to the selection.
//
// Scores become int64 keys: order-preserving fp32 bits in the high half, 2^32-1-j in
// the low half, so one integer comparison orders by value and, among equal values,
// puts the lower index first (the layout the Triton backend and the host merge use).
//
// A block owns BM queries (32, or 16 for the largest kept lists) and one slice of the
// keys. Key tiles of BN rows stream through a double buffer in shared memory (cp.async
// fills the next tile while this one is used); the 4 warps compute the BM x BN
// similarity tile with ldmatrix + mma.sync (each warp a 16 x BN*BM/64 strip,
// register-blocked along the keys) and write it to shared memory, then each warp takes
// its rows in turn:
//   filter  every lane tests its columns against the row's threshold (the KP-th best
//           key so far); survivors are appended to the row's candidate buffer with a
//           warp ballot (compaction without atomics);
//   merge   when the buffer could overflow (and at the end), the warp bitonic-sorts the
//           row's KP kept keys together with the KP-slot buffer (2*KP keys) in shared
//           memory, keeps the best KP and raises the threshold.
// Expected insertions per row are about KP * ln(N / KP), so the filter, not the sort,
// is the hot path (FAISS's WarpSelect idea, here with a shared-memory bitonic merge).
// Per-slice best keys go to out[S][Q][KP]; the host merges slices with torch.topk.
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "common/dtype.h"
#include "cuda/kernels.h"
#include "cuda/launch_check.cuh"
#include "cuda/mma_tiles.cuh"

namespace llp::cuda {

namespace {

using namespace tiles;

// Padding: below every real key, NaN scores included (the smallest int64).
constexpr int64_t kSentinel = static_cast<int64_t>(0x8000000000000000ULL);

// Queries per block: fewer for the largest kept lists, whose shared memory grows with KP
// (so that every kept size fits an sm_80 block at D = 256 with the double buffer).
constexpr int topk_rows(int kp, int key_dtype) { return kp >= 256 || (kp >= 128 && key_dtype == kFloat32) ? 16 : 32; }
template <typename T> constexpr int topk_rows(int kp) {
  return topk_rows(kp, std::is_same_v<T, float> ? kFloat32 : kBFloat16);
}

// A NaN score ranks below every number: its high half is INT32_MIN + 1 (above padding).
__device__ inline int64_t pack(float value, int64_t column) {
  const int32_t bits = __float_as_int(value);
  const uint32_t ordered = value != value ? 0x80000001u : static_cast<uint32_t>(bits >= 0 ? bits : bits ^ 0x7FFFFFFF);
  return static_cast<int64_t>((static_cast<uint64_t>(ordered) << 32) |
                              static_cast<uint32_t>(0xFFFFFFFFLL - column));
}

// Sorts keys[0, P) descending with one warp (P a power of two, >= 64).
template <int P>
__device__ void warp_bitonic_sort_desc(int64_t* keys, int lane) {
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = lane; i < P / 2; i += 32) {
        const int lo = (i / stride) * 2 * stride + (i % stride);
        const int hi = lo + stride;
        const int64_t a = keys[lo], b = keys[hi];
        const bool descending = (lo & size) == 0;
        if (descending ? a < b : a > b) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
      __syncwarp();
    }
  }
}

// Row state in shared memory: kept[0, KP) sorted descending, then the candidate buffer
// kept[KP, 2 KP); `count` candidates are in the buffer.
template <int KP>
__device__ void merge_row(int64_t* kept, int* count, int64_t* threshold, int lane) {
  for (int i = KP + *count + lane; i < 2 * KP; i += 32) kept[i] = kSentinel;
  __syncwarp();
  warp_bitonic_sort_desc<2 * KP>(kept, lane);
  if (lane == 0) {
    *count = 0;
    *threshold = kept[KP - 1];
  }
  __syncwarp();
}

template <typename T, int KP>
__global__ void __launch_bounds__(kThreads)
topk_kernel(const T* __restrict__ q, const T* __restrict__ keys, const float* __restrict__ bias,
            int64_t* __restrict__ out, int64_t Q, int64_t N, int D, int Dp, int64_t n_per_split,
            float inv_tau, bool split) {
#ifdef LLP_TENSOR_CORES
  constexpr int BM = topk_rows<T>(KP);
  constexpr int BN = bank_tile_rows<T>();
  constexpr int RB = BM / 16;            // 16-row blocks
  constexpr int WN = BN * RB / kWarps;   // key columns per warp
  constexpr int NF = WN / 8;
  constexpr int lds = BN + 8;
  extern __shared__ __align__(128) unsigned char smem[];
  const int ld = Dp + pad<T>();
  int64_t* kept = reinterpret_cast<int64_t*>(smem);          // [BM][2 KP]
  int64_t* threshold = kept + BM * 2 * KP;                     // [BM]
  T* Qs = reinterpret_cast<T*>(threshold + BM);                // [BM][ld]
  T* Ks = Qs + BM * ld;                                        // [2][BN][ld]
  float* Ss = reinterpret_cast<float*>(Ks + 2 * BN * ld);      // [BM][lds]
  float* bias_s = Ss + BM * lds;                               // [2][BN]
  int* count = reinterpret_cast<int*>(bias_s + 2 * BN);        // [BM]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t = lane & 3;
  const int rb = warp % RB, cb = warp / RB;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t lo = static_cast<int64_t>(blockIdx.y) * n_per_split;
  const int64_t hi = lo + n_per_split < N ? lo + n_per_split : N;
  const KeyStream<T, float, BN> stream(Ks, bias_s, ld, keys, bias, lo, hi, D, Dp);
  load_tile(Qs, ld, q, row0, BM, Q, D, Dp);
  for (int i = threadIdx.x; i < BM * 2 * KP; i += kThreads) kept[i] = kSentinel;
  for (int i = threadIdx.x; i < BM; i += kThreads) {
    threshold[i] = kSentinel;
    count[i] = 0;
  }

  for (int64_t i = 0; i < stream.tiles; ++i) {
    stream.wait(i);
    const int64_t t0 = stream.first_row(i);
    const float* tile_bias = stream.tile_values(i);

    float acc[NF][4] = {};
    product_abt<T, NF>(acc, Qs + rb * 16 * ld, ld, stream.tile_keys(i) + cb * WN * ld, ld, Dp, split);
    float* strip = Ss + (rb * 16 + (lane >> 2)) * lds + cb * WN + 2 * t;
#pragma unroll
    for (int j = 0; j < NF; ++j) {
      *reinterpret_cast<float2*>(strip + 8 * j) = make_float2(acc[j][0], acc[j][1]);
      *reinterpret_cast<float2*>(strip + 8 * lds + 8 * j) = make_float2(acc[j][2], acc[j][3]);
    }
    __syncthreads();

    for (int r = warp; r < BM; r += kWarps) {
      int64_t* row_kept = kept + r * 2 * KP;
      for (int j = 0; j < BN / 32; ++j) {
        // The buffer takes at most 32 more keys per round: merge first if they might not fit.
        if (count[r] > KP - 32) merge_row<KP>(row_kept, &count[r], &threshold[r], lane);
        const int c = lane + 32 * j;
        const int64_t column = t0 + c;
        const int64_t key = column < hi ? pack(Ss[r * lds + c] * inv_tau - tile_bias[c], column) : kSentinel;
        const bool keep = key > threshold[r];
        const unsigned ballot = __ballot_sync(kFull, keep);
        if (keep) row_kept[KP + count[r] + __popc(ballot & ((1u << lane) - 1u))] = key;
        __syncwarp();
        if (lane == 0) count[r] += __popc(ballot);
        __syncwarp();
      }
    }
    __syncthreads();  // Ss and this stage are rewritten by the next iteration
  }

  __syncthreads();  // an empty slice ran no tile: the kept lists' initial values must be visible
  for (int r = warp; r < BM; r += kWarps) {
    if (count[r] > 0) merge_row<KP>(kept + r * 2 * KP, &count[r], &threshold[r], lane);
    const int64_t row = row0 + r;
    if (row < Q) {
      int64_t* dst = out + (static_cast<int64_t>(blockIdx.y) * Q + row) * KP;
      for (int i = lane; i < KP; i += 32) dst[i] = kept[r * 2 * KP + i];
    }
  }
#endif
}

// kept + threshold, Qs, Ks (2 stages), Ss, bias (2 stages), count.
size_t topk_smem(int kp, int dtype, int Dp) {
  const size_t size = dtype == kFloat32 ? 4 : 2;
  const int BM = topk_rows(kp, dtype), BN = bank_tile_rows(dtype);
  return BM * (2 * kp + 1) * sizeof(int64_t) + (BM + 2 * BN) * (Dp + 16 / size) * size +
         BM * static_cast<size_t>(BN + 8) * sizeof(float) + 2 * BN * sizeof(float) + BM * sizeof(int);
}

template <typename T, int KP>
std::string launch(const void* q, const void* keys, const float* bias, int64_t* out, int64_t Q, int64_t N,
                   int64_t D, int64_t splits, int64_t n_per_split, float inv_tau, bool split, int device,
                   cudaStream_t stream) {
  static std::atomic<bool> first{true};
  const int Dp = dim_padded(D);
  const size_t smem = topk_smem(KP, std::is_same_v<T, float> ? kFloat32 : kBFloat16, Dp);
  if (const cudaError_t err = cudaSetDevice(device); err != cudaSuccess)
    return std::string("topk_kernel: cudaSetDevice: ") + cudaGetErrorString(err);
  int major = 0, optin = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (major < 8) return "topk_kernel: needs compute capability 8.0+ (bf16/TF32 tensor cores); use backend='triton'";
  if (smem > static_cast<size_t>(optin))
    return "topk_kernel: needs " + std::to_string(smem) + " bytes of shared memory, the device allows " +
           std::to_string(optin);
  if (const cudaError_t err = cudaFuncSetAttribute(topk_kernel<T, KP>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(smem));
      err != cudaSuccess)
    return std::string("topk_kernel: cudaFuncSetAttribute: ") + cudaGetErrorString(err);
  constexpr int BM = topk_rows<T>(KP);
  const dim3 grid(static_cast<unsigned>((Q + BM - 1) / BM), static_cast<unsigned>(splits));
  topk_kernel<T, KP><<<grid, kThreads, smem, stream>>>(static_cast<const T*>(q), static_cast<const T*>(keys), bias,
                                                       out, Q, N, static_cast<int>(D), Dp, n_per_split, inv_tau, split);
  return check_launch("topk_kernel", stream, first);
}

template <typename T>
std::string by_kp(const void* q, const void* keys, const float* bias, int64_t* out, int64_t Q, int64_t N,
                  int64_t D, int kp, int64_t splits, int64_t n_per_split, float inv_tau, bool split, int device,
                  cudaStream_t s) {
  switch (kp) {
    case 32: return launch<T, 32>(q, keys, bias, out, Q, N, D, splits, n_per_split, inv_tau, split, device, s);
    case 64: return launch<T, 64>(q, keys, bias, out, Q, N, D, splits, n_per_split, inv_tau, split, device, s);
    case 128: return launch<T, 128>(q, keys, bias, out, Q, N, D, splits, n_per_split, inv_tau, split, device, s);
    case 256: return launch<T, 256>(q, keys, bias, out, Q, N, D, splits, n_per_split, inv_tau, split, device, s);
  }
  return "topk: kept-list size must be 32, 64, 128 or 256, got " + std::to_string(kp);
}

}  // namespace

TopkPlan topk_plan(int64_t Q, int64_t N, int kp, int key_dtype, int device) {
  TopkPlan plan;
  const int64_t rows = topk_rows(kp, key_dtype);
  const int64_t bn = bank_tile_rows(key_dtype);
  // Each slice should hold well over KP keys, or its kept list is mostly sentinels.
  const Slices slices = slice_rows((Q + rows - 1) / rows, N, bn, (4 * kp + bn - 1) / bn,
                                    multiprocessor_count(device));
  plan.splits = slices.count;
  plan.n_per_split = slices.rows;
  return plan;
}

int64_t topk_shared_bytes(int kp, int key_dtype, int64_t D) {
  return static_cast<int64_t>(topk_smem(kp, key_dtype, dim_padded(D)));
}

std::string topk(const void* q, const void* keys, int key_dtype, const float* bias, int64_t* out, int64_t Q,
                 int64_t N, int64_t D, int kp, int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                 int device, void* stream) {
  if (D > kMaxDim) return "topk: supports D <= " + std::to_string(kMaxDim) + ", got " + std::to_string(D);
  return with_dtype(key_dtype, "topk", [&](auto tag) {
    using T = typename decltype(tag)::type;
    return by_kp<T>(q, keys, bias, out, Q, N, D, kp, splits, n_per_split, inv_tau,
                    std::is_same_v<T, float> && exact_fp32, device, static_cast<cudaStream_t>(stream));
  });
}

}  // namespace llp::cuda

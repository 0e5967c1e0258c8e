// Memory-bank update on CUDA: one warp per updated row gathers the bank row and the
// new embedding, mixes them in fp32, reduces the squared norm with warp shuffles and
// writes the re-normalised row back in the bank's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "common/dtype.h"
#include "cuda/device_types.cuh"
#include "cuda/kernels.h"
#include "cuda/launch_check.cuh"

namespace llp::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

template <typename BankT, typename EmbT>
__global__ void bank_update_kernel(BankT* __restrict__ bank, int64_t D,
                                   const int64_t* __restrict__ idx,
                                   const EmbT* __restrict__ emb, int64_t B, float momentum) {
  const int lane = threadIdx.x & 31;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (b >= B || idx[b] < 0) return;  // idx < 0: a duplicate that a later row replaces
  BankT* row = bank + idx[b] * D;
  const EmbT* v = emb + b * D;

  // The squared norm accumulates in double (full rate on sm_80/sm_90): the square of every
  // finite fp32 value is a normal double, so every finite mix becomes a unit row, however
  // large or small; an all-zero mix stays zero.
  double sq = 0.0;
  for (int64_t d = lane; d < D; d += 32) {
    const float x = momentum * Dev<BankT>::load(row + d) + (1.0f - momentum) * Dev<EmbT>::load(v + d);
    sq += static_cast<double>(x) * x;
  }
  for (int off = 16; off > 0; off >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, off);
  // A mix that is not finite (a NaN or inf input) makes the whole row NaN.
  const double inv_norm = !isfinite(sq) ? __longlong_as_double(0x7ff8000000000000LL)
                          : sq > 0.0    ? 1.0 / sqrt(sq)
                                        : 1.0;
  // Each lane rewrites only the elements it read, so re-reading them here is safe.
  for (int64_t d = lane; d < D; d += 32) {
    const float x = momentum * Dev<BankT>::load(row + d) + (1.0f - momentum) * Dev<EmbT>::load(v + d);
    Dev<BankT>::store(row + d, static_cast<float>(x * inv_norm));
  }
}

template <typename BankT, typename EmbT>
std::string launch(void* bank, int64_t D, const int64_t* idx, const void* emb, int64_t B,
                   float momentum, cudaStream_t stream) {
  static std::atomic<bool> first{true};
  const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
  bank_update_kernel<BankT, EmbT><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(
      static_cast<BankT*>(bank), D, idx, static_cast<const EmbT*>(emb), B, momentum);
  return check_launch("bank_update_kernel", stream, first);
}

}  // namespace

std::string bank_update(void* bank, int bank_dtype, int64_t N, int64_t D, const int64_t* idx,
                        const void* emb, int emb_dtype, int64_t B, float momentum, int device,
                        void* stream) {
  if (B == 0) return {};
  // This module carries its own (static) CUDA runtime: select the device explicitly
  // rather than relying on state set through torch's runtime.
  if (const cudaError_t err = cudaSetDevice(device); err != cudaSuccess)
    return std::string("bank_update: cudaSetDevice: ") + cudaGetErrorString(err);
  return with_dtype(bank_dtype, "bank_update (bank)", [&](auto bank_tag) {
    return with_dtype(emb_dtype, "bank_update (embeddings)", [&](auto emb_tag) {
      return launch<typename decltype(bank_tag)::type, typename decltype(emb_tag)::type>(
          bank, D, idx, emb, B, momentum, static_cast<cudaStream_t>(stream));
    });
  });
}

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (why) *why = cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return -1;
  }
  return n;
}

}  // namespace llp::cuda

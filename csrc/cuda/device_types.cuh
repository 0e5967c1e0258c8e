// Device-side loads/stores of the bank dtypes as fp32, shared by the CUDA kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace llp::cuda {

template <typename T> struct Dev;
template <> struct Dev<float> {
  __device__ static float load(const float* p) { return *p; }
  __device__ static void store(float* p, float v) { *p = v; }
  __device__ static float zero() { return 0.0f; }
};
template <> struct Dev<__nv_bfloat16> {
  __device__ static float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  __device__ static void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
  __device__ static __nv_bfloat16 zero() { return __float2bfloat16_rn(0.0f); }
};
template <> struct Dev<__half> {
  __device__ static float load(const __half* p) { return __half2float(*p); }
  __device__ static void store(__half* p, float v) { *p = __float2half_rn(v); }
  __device__ static __half zero() { return __float2half_rn(0.0f); }
};

}  // namespace llp::cuda

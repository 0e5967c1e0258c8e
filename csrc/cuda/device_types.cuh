// Device-side loads/stores of the bank dtypes as fp32, shared by the CUDA kernels.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "common/dtype.h"

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

// Calls f(Tag<T>{}) with the storage type T of a dtype code (common/dtype.h); an error
// string naming `what` for an unknown code.
template <typename T> struct Tag {
  using type = T;
};
template <typename F> std::string with_dtype(int code, const char* what, F&& f) {
  switch (code) {
    case kFloat32: return f(Tag<float>{});
    case kBFloat16: return f(Tag<__nv_bfloat16>{});
    case kFloat16: return f(Tag<__half>{});
  }
  return std::string(what) + ": unsupported dtype code " + std::to_string(code);
}

}  // namespace llp::cuda

// Turning CUDA launch and execution errors into error strings that name the kernel.
//
// Launch errors (bad configuration, too much shared memory) are read with
// cudaGetLastError after every launch. Execution errors (an illegal address) surface
// asynchronously, so the first launch of each kernel instantiation is followed by a
// stream synchronisation; LLP_CUDA_SYNC_CHECK=1 does that after every launch (debug).
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace llp::cuda {

inline bool sync_check_always() {
  static const bool always = [] {
    const char* v = std::getenv("LLP_CUDA_SYNC_CHECK");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return always;
}

// `first_launch` is a per-kernel static flag, cleared by its first call here.
inline std::string check_launch(const char* kernel, cudaStream_t stream, std::atomic<bool>& first_launch) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return std::string(kernel) + ": launch failed: " + cudaGetErrorString(err);
  if (first_launch.exchange(false) || sync_check_always()) {
    err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) return std::string(kernel) + ": execution failed: " + cudaGetErrorString(err);
  }
  return {};
}

}  // namespace llp::cuda

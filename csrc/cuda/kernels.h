// Host-side entry points of the CUDA kernels. Plain C++ types only, so the pybind11
// module (compiled by the host compiler) can call them; `stream` is a cudaStream_t.
#pragma once
#include <cstdint>
#include <string>

namespace llp::cuda {

// bank[idx[b]] = normalize(m * bank[idx[b]] + (1 - m) * emb[b]) for b < B (idx unique
// and in range: the Python layer guarantees both) on `device`. Returns an error string,
// empty on success.
std::string bank_update(void* bank, int bank_dtype, int64_t N, int64_t D, const int64_t* idx,
                        const void* emb, int emb_dtype, int64_t B, float momentum, int device,
                        void* stream);

// Number of visible devices, or -1 with the reason in `why` when the runtime/driver
// cannot be used (e.g. no driver on a CPU-only machine).
int device_count(std::string* why);

}  // namespace llp::cuda

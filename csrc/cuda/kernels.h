// Host-side entry points of the CUDA kernels. Plain C++ types only, so the pybind11
// module (compiled by the host compiler) can call them; `stream` is a cudaStream_t.
#pragma once
#include <cstdint>
#include <string>

namespace llp::cuda {

// Limits of these kernels (exposed to Python as _C.cuda_max_dim / _C.cuda_max_kept, which
// the cuda backend's record reads): embedding size, and the kept list per query row of
// the top-k (k, plus re-score candidates for 16-bit keys).
constexpr int kMaxDim = 256;
constexpr int kMaxKept = 256;

// bank[idx[b]] = normalize(m * bank[idx[b]] + (1 - m) * emb[b]) for b < B (idx unique
// and in range: the Python layer guarantees both) on `device`. Returns an error string,
// empty on success.
std::string bank_update(void* bank, int bank_dtype, int64_t N, int64_t D, const int64_t* idx,
                        const void* emb, int emb_dtype, int64_t B, float momentum, int device,
                        void* stream);

// How the aggregation kernels split the bank: `splits` slices of `n_per_split` rows
// (enough blocks for ~4 per SM even at small B); partial buffers are [4][splits][B]
// (forward) and [splits][rows_padded][dim_padded] (backward).
struct AggregationPlan {
  int64_t splits = 1, n_per_split = 0, rows_padded = 0, dim_padded = 0;
};
AggregationPlan aggregation_plan(int64_t B, int64_t N, int64_t D, int bank_dtype, bool backward_pass, int device);

// Forward partials (max, sum) of the all-row and same-label log-sum-exps per slice.
// q is [B, D] in the bank's dtype; labels int64. `exact_fp32`: fp32 products by 3xTF32
// instead of TF32. Returns an error string naming the kernel, empty on success.
std::string aggregation_forward(const void* q, const void* bank, int bank_dtype, const int64_t* bank_labels,
                                const int64_t* query_labels, float* parts, int64_t B, int64_t N, int64_t D,
                                int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                                int device, void* stream);

// Backward partials of dq per slice; coef[b] = grad_output[b] / tau (0 for rows whose
// LSEs are not finite, whose lse values may then be anything finite).
std::string aggregation_backward(const void* q, const void* bank, int bank_dtype, const int64_t* bank_labels,
                                 const int64_t* query_labels, const float* lse_all, const float* lse_same,
                                 const float* coef, float* parts, int64_t B, int64_t N, int64_t D,
                                 int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                                 int device, void* stream);

// How the top-k kernel splits the keys: `splits` slices of `n_per_split` rows; the
// output buffer is [splits][Q][kp] packed int64 keys (see llp_kernels/_packed_topk.py).
struct TopkPlan {
  int64_t splits = 1, n_per_split = 0;
};
TopkPlan topk_plan(int64_t Q, int64_t N, int kp, int key_dtype, int device);

// The kp best packed (score, index) keys of q . keys_j * inv_tau - bias[j] (bias may be
// null) per query and key slice; kp in {32, 64, 128, 256}; q in the keys' dtype.
std::string topk(const void* q, const void* keys, int key_dtype, const float* bias, int64_t* out, int64_t Q,
                 int64_t N, int64_t D, int kp, int64_t splits, int64_t n_per_split, float inv_tau, bool exact_fp32,
                 int device, void* stream);

// Dynamic shared memory of one block (bytes), which each launch checks against the
// device's opt-in limit: the aggregation kernels (forward and backward take the same) and
// the top-k with kept list kp.
int64_t aggregation_shared_bytes(int bank_dtype, int64_t D);
int64_t topk_shared_bytes(int kp, int key_dtype, int64_t D);

// Number of visible devices, or -1 with the reason in `why` when the runtime/driver
// cannot be used (e.g. no driver on a CPU-only machine).
int device_count(std::string* why);

}  // namespace llp::cuda

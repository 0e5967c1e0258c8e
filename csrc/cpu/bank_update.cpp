// Memory-bank update on CPU: gather, mix, re-normalise and scatter each row in one go.
#include <cmath>
#include <limits>
#include <vector>

#include "common/dtype.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"

namespace llp::cpu {

namespace {

template <typename BankT, typename EmbT>
int64_t bank_update_typed(BankT* bank, int64_t N, int64_t D, const int64_t* idx,
                          const EmbT* emb, int64_t B, float momentum, int threads) {
  int64_t first_bad = -1;
  for (int64_t b = 0; b < B; ++b) {
    if (idx[b] >= N) { first_bad = b; break; }
  }
  if (first_bad >= 0) return first_bad;
  parallel_for(B, std::max<int64_t>(1, kGrain / D), threads, [&](int64_t b0, int64_t b1) {
    std::vector<float> mixed(static_cast<size_t>(D));
    for (int64_t b = b0; b < b1; ++b) {
      if (idx[b] < 0) continue;  // a duplicate that a later row of the batch replaces
      BankT* row = bank + idx[b] * D;
      const EmbT* v = emb + b * D;
      // The squared norm accumulates in double: the square of every finite fp32 value
      // (3.4e38 down to 1.4e-45) is a normal double, so every finite mix becomes a unit
      // row, however large or small; an all-zero mix stays zero.
      double sq = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const float x = momentum * Storage<BankT>::load(row, d) +
                        (1.0f - momentum) * Storage<EmbT>::load(v, d);
        mixed[d] = x;
        sq += static_cast<double>(x) * x;
      }
      // A mix that is not finite (a NaN or inf input) makes the whole row NaN.
      const double inv_norm = !std::isfinite(sq) ? std::numeric_limits<double>::quiet_NaN()
                              : sq > 0.0         ? 1.0 / std::sqrt(sq)
                                                 : 1.0;
      for (int64_t d = 0; d < D; ++d)
        Storage<BankT>::store(row, d, static_cast<float>(mixed[d] * inv_norm));
    }
  });
  return -1;
}

template <typename BankT>
int64_t dispatch_emb(BankT* bank, int64_t N, int64_t D, const int64_t* idx, const void* emb,
                     int emb_dtype, int64_t B, float momentum, int threads) {
  switch (emb_dtype) {
    case kFloat32:
      return bank_update_typed(bank, N, D, idx, static_cast<const float*>(emb), B, momentum, threads);
    case kBFloat16:
      return bank_update_typed(bank, N, D, idx, static_cast<const bf16_t*>(emb), B, momentum, threads);
    case kFloat16:
      return bank_update_typed(bank, N, D, idx, static_cast<const f16_t*>(emb), B, momentum, threads);
  }
  return -2;
}

}  // namespace

int64_t bank_update(void* bank, int bank_dtype, int64_t N, int64_t D, const int64_t* idx,
                    const void* emb, int emb_dtype, int64_t B, float momentum, int threads) {
  switch (bank_dtype) {
    case kFloat32:
      return dispatch_emb(static_cast<float*>(bank), N, D, idx, emb, emb_dtype, B, momentum, threads);
    case kBFloat16:
      return dispatch_emb(static_cast<bf16_t*>(bank), N, D, idx, emb, emb_dtype, B, momentum, threads);
    case kFloat16:
      return dispatch_emb(static_cast<f16_t*>(bank), N, D, idx, emb, emb_dtype, B, momentum, threads);
  }
  return -2;
}

}  // namespace llp::cpu

// How the split-N kernels cut N bank/key rows into slices (plain C++: the pybind11
// module includes it too, so tests can check the planner without a GPU).
#pragma once
#include <cstdint>

namespace llp::cuda::tiles {

// Split of N bank/key rows into slices of whole BN-row tiles so that about 4 blocks per
// SM run even when there are few row blocks (flash-decoding style); each slice keeps at
// least `min_tiles` tiles, and no slice is empty. Returns {slices, rows per slice}.
struct Slices {
  int64_t count, rows;
};
inline Slices slice_rows(int64_t row_blocks, int64_t N, int64_t bn, int64_t min_tiles, int sms) {
  const int64_t tiles = (N + bn - 1) / bn;
  const int64_t most = tiles / min_tiles > 1 ? tiles / min_tiles : 1;
  int64_t wanted = (4 * static_cast<int64_t>(sms) + row_blocks - 1) / row_blocks;
  wanted = wanted < 1 ? 1 : (wanted > most ? most : wanted);
  const int64_t rows = (tiles + wanted - 1) / wanted * bn;
  return {(N + rows - 1) / rows, rows};
}

}  // namespace llp::cuda::tiles

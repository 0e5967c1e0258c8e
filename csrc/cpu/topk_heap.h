// A row's k best (value, index) pairs as a min-heap of parallel arrays, worst on top:
// the order every CPU top-k kernel keeps. A NaN value ranks below every number (even
// -inf); among equal values (or two NaNs) the larger index ranks lower; an empty slot
// (index < 0, value -inf) ranks below everything, so a heap can start empty.
#pragma once
#include <cstdint>

namespace llp::cpu {

// The ordering when the values compare equal or a NaN is involved (not on the hot path).
inline bool ranks_below_tied(float va, int64_t ia, float vb, int64_t ib) {
  if ((ia < 0) != (ib < 0)) return ia < 0;
  const bool nan_a = va != va, nan_b = vb != vb;
  if (nan_a != nan_b) return nan_a;
  return ia > ib;
}

// Whether (va, ia) ranks below (vb, ib). An empty slot holds -inf, so two ordered
// values that differ decide it alone.
inline bool ranks_below(float va, int64_t ia, float vb, int64_t ib) {
  if (va < vb) return true;
  if (va > vb) return false;
  return ranks_below_tied(va, ia, vb, ib);
}

inline void heap_sift_down(float* v, int64_t* ix, int64_t k, int64_t pos) {
  const float val = v[pos];
  const int64_t idx = ix[pos];
  while (true) {
    int64_t child = 2 * pos + 1;
    if (child >= k) break;
    if (child + 1 < k && ranks_below(v[child + 1], ix[child + 1], v[child], ix[child])) ++child;
    if (!ranks_below(v[child], ix[child], val, idx)) break;
    v[pos] = v[child];
    ix[pos] = ix[child];
    pos = child;
  }
  v[pos] = val;
  ix[pos] = idx;
}

inline void heap_sift_up(float* v, int64_t* ix, int64_t pos) {
  const float val = v[pos];
  const int64_t idx = ix[pos];
  while (pos > 0) {
    int64_t parent = (pos - 1) / 2;
    if (!ranks_below(val, idx, v[parent], ix[parent])) break;
    v[pos] = v[parent];
    ix[pos] = ix[parent];
    pos = parent;
  }
  v[pos] = val;
  ix[pos] = idx;
}

// Offer (value, index) to the heap: it replaces the worst kept pair if it ranks above it.
inline void heap_offer(float* v, int64_t* ix, int64_t k, float value, int64_t index) {
  if (ranks_below(v[0], ix[0], value, index)) {
    v[0] = value;
    ix[0] = index;
    heap_sift_down(v, ix, k, 0);
  }
}

}  // namespace llp::cpu

// Branch-free expf that GCC vectorises inside `omp simd` loops (glibc's vector expf
// needs -ffast-math, which would also break the -inf handling we rely on).
// Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then a degree-6 polynomial:
// relative error ~2 ulp over the normal range. Inputs below -87.3 (incl. -inf) give 0,
// above 88.7 give +inf, NaN stays NaN.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace llp {

#pragma omp declare simd notinbranch
inline float fast_expf(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  float n = __builtin_floorf(xc * kLog2e + 0.5f);
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, 4);
  float y = p * scale;
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.7f ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}

}  // namespace llp

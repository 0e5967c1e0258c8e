// Storage dtypes the kernels accept, and scalar conversions to/from fp32.
// Codes must match llp_kernels/_extension.py (DTYPE_CODES).
#pragma once
#include <cstdint>
#include <cstring>

namespace llp {

enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// bfloat16 is the top half of an fp32; round to nearest even, NaN kept quiet.
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE half <-> fp32 (exact widening; narrowing rounds to nearest even, handles
// subnormals, overflow to inf and NaN).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1fu) return bits_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    // zero or subnormal: man * 2^-24
    float v = static_cast<float>(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (a < 0x38800000u) {
    // result is subnormal or zero: scale so the integer part is the mantissa
    float v = bits_f32(a) * 16777216.0f;  // * 2^24, exact
    // round half to even via the fp32 adder
    float r = v + 8388608.0f;             // 2^23 forces integer rounding
    uint32_t m = f32_bits(r) - 0x4b000000u;
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  return static_cast<uint16_t>(sign | (a >> 13));
}

template <typename T> struct Storage;
template <> struct Storage<float> {
  static float load(const float* p, int64_t i) { return p[i]; }
  static void store(float* p, int64_t i, float v) { p[i] = v; }
};
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };
template <> struct Storage<bf16_t> {
  static float load(const bf16_t* p, int64_t i) { return bf16_to_f32(p[i].bits); }
  static void store(bf16_t* p, int64_t i, float v) { p[i].bits = f32_to_bf16(v); }
};
template <> struct Storage<f16_t> {
  static float load(const f16_t* p, int64_t i) { return f16_to_f32(p[i].bits); }
  static void store(f16_t* p, int64_t i, float v) { p[i].bits = f32_to_f16(v); }
};

}  // namespace llp

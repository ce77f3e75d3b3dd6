// Lanes: W doubles processed together by the CPU kernels (host only, torch-free).
//
// The math headers are branch-free templates over a value type T; instantiated with
// T = double they are the scalar code (CPU fallback and CUDA), with T = Lanes they are
// SIMD code: GCC/Clang vector extensions, lowered to AVX-512, AVX2 or SSE2 depending on
// the build flags (setup.py). Comparisons give a LaneMask; pr_where selects per lane.
//
// exp, expm1 and log are implemented here branch-free to ~1 ulp (Cody-Waite reduction
// plus Taylor/atanh series), since libm has no vector entry points without fast-math.
// They handle the full double range: overflow to inf, gradual underflow to 0, NaN
// propagation, log(0) = -inf, log(<0) = NaN.
#pragma once

#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define PROBREG_HAVE_LANES 1

#include <cstdint>
#include <cstring>

#define PROBREG_LANES_INLINE inline __attribute__((always_inline))

namespace probreg {

constexpr int kLaneWidth = 8;
typedef double LaneVec __attribute__((vector_size(kLaneWidth * sizeof(double))));
typedef int64_t LaneBits __attribute__((vector_size(kLaneWidth * sizeof(int64_t))));

struct LaneMask {
  LaneBits m;  // all ones (-1) where true, 0 where false
};
PROBREG_LANES_INLINE LaneMask operator&(LaneMask a, LaneMask b) { return {a.m & b.m}; }
PROBREG_LANES_INLINE LaneMask operator|(LaneMask a, LaneMask b) { return {a.m | b.m}; }

struct Lanes {
  LaneVec v;
  Lanes() = default;
  Lanes(double s) : v(LaneVec{} + s) {}  // broadcast (implicit, like a scalar literal)
  explicit Lanes(LaneVec x) : v(x) {}
  Lanes& operator+=(Lanes o) { v += o.v; return *this; }
  Lanes& operator-=(Lanes o) { v -= o.v; return *this; }
  Lanes& operator*=(Lanes o) { v *= o.v; return *this; }
};
PROBREG_LANES_INLINE Lanes operator+(Lanes a, Lanes b) { return Lanes(a.v + b.v); }
PROBREG_LANES_INLINE Lanes operator-(Lanes a, Lanes b) { return Lanes(a.v - b.v); }
PROBREG_LANES_INLINE Lanes operator*(Lanes a, Lanes b) { return Lanes(a.v * b.v); }
PROBREG_LANES_INLINE Lanes operator/(Lanes a, Lanes b) { return Lanes(a.v / b.v); }
PROBREG_LANES_INLINE Lanes operator-(Lanes a) { return Lanes(-a.v); }
PROBREG_LANES_INLINE LaneMask operator<(Lanes a, Lanes b) { return {a.v < b.v}; }
PROBREG_LANES_INLINE LaneMask operator<=(Lanes a, Lanes b) { return {a.v <= b.v}; }
PROBREG_LANES_INLINE LaneMask operator>(Lanes a, Lanes b) { return {a.v > b.v}; }
PROBREG_LANES_INLINE LaneMask operator>=(Lanes a, Lanes b) { return {a.v >= b.v}; }
PROBREG_LANES_INLINE LaneMask operator==(Lanes a, Lanes b) { return {a.v == b.v}; }
PROBREG_LANES_INLINE LaneMask operator!=(Lanes a, Lanes b) { return {a.v != b.v}; }

PROBREG_LANES_INLINE Lanes pr_where(LaneMask c, Lanes a, Lanes b) { return Lanes(c.m ? a.v : b.v); }
PROBREG_LANES_INLINE bool pr_any(LaneMask c) {
  int64_t acc = 0;
  for (int i = 0; i < kLaneWidth; ++i) acc |= c.m[i];
  return acc != 0;
}
PROBREG_LANES_INLINE bool pr_all(LaneMask c) {
  int64_t acc = -1;
  for (int i = 0; i < kLaneWidth; ++i) acc &= c.m[i];
  return acc != 0;
}

PROBREG_LANES_INLINE Lanes pr_sqrt(Lanes x) {
  Lanes r;
  for (int i = 0; i < kLaneWidth; ++i) r.v[i] = __builtin_sqrt(x.v[i]);
  return r;
}
PROBREG_LANES_INLINE Lanes pr_abs(Lanes x) {
  const LaneBits sign_off = LaneBits{} + INT64_MAX;
  return Lanes((LaneVec)((LaneBits)x.v & sign_off));
}
PROBREG_LANES_INLINE Lanes pr_min(Lanes a, Lanes b) { return pr_where(a < b, a, b); }
PROBREG_LANES_INLINE Lanes pr_max(Lanes a, Lanes b) { return pr_where(a > b, a, b); }

template <typename T>
struct Eps;
template <>
struct Eps<Lanes> {
  static constexpr double value = __DBL_EPSILON__;
};

namespace lanes_detail {
PROBREG_LANES_INLINE LaneVec from_bits(LaneBits b) { return (LaneVec)b; }
PROBREG_LANES_INLINE LaneBits to_bits(LaneVec x) { return (LaneBits)x; }
// 2^k for integer lanes k in [-1022, 1023].
PROBREG_LANES_INLINE LaneVec pow2(LaneBits k) { return from_bits((k + 1023) << 52); }
}  // namespace lanes_detail

// exp(x): x = n ln2 + r, |r| <= ln2/2, exp(r) by its Taylor series to r^13 (truncation
// < 1e-17), 2^n applied as two factors so subnormal results and overflow come out right.
PROBREG_LANES_INLINE Lanes pr_exp(Lanes x) {
  using namespace lanes_detail;
  const LaneVec xc = x.v < -746.0 ? LaneVec{} - 746.0 : (x.v > 710.0 ? LaneVec{} + 710.0 : x.v);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const LaneVec t = xc * 1.4426950408889634074 + shifter;
  const LaneVec n = t - shifter;
  const LaneBits k = to_bits(t) - to_bits(LaneVec{} + shifter);  // n as int64
  const LaneVec r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  LaneVec p = LaneVec{} + 1.0 / 6227020800.0;  // 1/13!
  const double inv_fact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0,
                               1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,     1.0 / 120.0,
                               1.0 / 24.0,        1.0 / 6.0,        0.5,             1.0,
                               1.0};
  for (int i = 0; i < 13; ++i) p = p * r + inv_fact[i];
  const LaneBits k1 = k >> 1;
  const LaneBits k2 = k - k1;
  LaneVec out = p * pow2(k1) * pow2(k2);
  out = x.v != x.v ? x.v : out;  // NaN in, NaN out
  return Lanes(out);
}

// expm1(x): Taylor series to x^16 for |x| < 0.5 (truncation < 1e-19 relative), else
// exp(x) - 1 (no harmful cancellation there).
PROBREG_LANES_INLINE Lanes pr_expm1(Lanes x) {
  LaneVec p = LaneVec{} + 1.0 / 20922789888000.0;  // 1/16!
  double fact = 20922789888000.0;
  for (int n = 15; n >= 1; --n) {
    fact /= (n + 1);
    p = p * x.v + 1.0 / fact;  // coefficients 1/15!, ..., 1/1!
  }
  const Lanes series(p * x.v);
  const Lanes big = pr_exp(x) - 1.0;
  return pr_where(pr_abs(x) < 0.5, series, big);
}

// log(x): x = 2^e m, m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1),
// |s| <= 0.1716, series to s^25 (truncation < 1e-20 relative).
PROBREG_LANES_INLINE Lanes pr_log(Lanes x) {
  using namespace lanes_detail;
  const LaneVec tiny = LaneVec{} + 2.2250738585072014e-308;
  const LaneBits is_sub = x.v < tiny;  // subnormal (and <= 0, fixed below)
  const LaneVec xs = is_sub ? x.v * 18014398509481984.0 : x.v;  // * 2^54
  const LaneBits bits = to_bits(xs);
  LaneBits e = ((bits >> 52) & 0x7ff) - 1023;
  e = is_sub ? e - 54 : e;
  LaneVec m = from_bits((bits & 0x000fffffffffffffLL) | 0x3ff0000000000000LL);  // [1, 2)
  const LaneBits big_m = m > 1.4142135623730951;
  m = big_m ? m * 0.5 : m;
  e = big_m ? e + 1 : e;
  const LaneVec s = (m - 1.0) / (m + 1.0);
  const LaneVec s2 = s * s;
  LaneVec p = LaneVec{} + 2.0 / 25.0;
  for (int k = 23; k >= 1; k -= 2) p = p * s2 + 2.0 / k;
  const LaneVec log_m = p * s;
  LaneVec ed;
  for (int i = 0; i < kLaneWidth; ++i) ed[i] = double(e[i]);
  LaneVec out = ed * 6.93147180369123816490e-01 + (log_m + ed * 1.90821492927058770002e-10);
  const LaneVec inf = LaneVec{} + __builtin_inf();
  out = x.v == 0.0 ? -inf : out;
  out = x.v < 0.0 ? LaneVec{} + __builtin_nan("") : out;
  out = x.v == inf ? inf : out;
  out = x.v != x.v ? x.v : out;
  return Lanes(out);
}

}  // namespace probreg

#endif  // !__CUDACC__

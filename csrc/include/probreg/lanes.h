// Lanes: W doubles processed together by the CPU kernels (host only, torch-free).
//
// The math headers are branch-free templates over a value type T; instantiated with
// T = double they are the scalar code (CPU fallback and CUDA), with T = Lanes they are
// SIMD code: GCC/Clang vector extensions, lowered to AVX-512, AVX2 or SSE2 depending on
// the build flags (setup.py). Comparisons give a LaneMask; pr_where selects per lane.
//
// exp and expm1 are implemented here branch-free to ~1 ulp (Cody-Waite reduction plus
// Taylor series), since libm has no vector entry points without fast-math. They handle
// the full double range: overflow to inf, gradual underflow to 0, NaN propagation. (The
// logarithm the NLL needs is generic code in huber.h, log_near_one.)
#pragma once

#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define PROBREG_HAVE_LANES 1

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
#include <immintrin.h>
#endif

#include "macros.h"

#define PROBREG_LANES_INLINE inline __attribute__((always_inline))

namespace probreg {

// Doubles per Lanes vector: one machine register. Wider generic vectors than the ISA
// has (8 doubles on AVX2, measured) are split by GCC, and their comparisons, selects
// and broadcasts partly element by element: the d = 3 closed form ran 3.2x slower at 8
// than at 4 on AVX2, and 1.6x slower at 8 than at 2 on SSE2.
#if defined(__AVX512F__)
#define PROBREG_LANE_WIDTH 8
#elif defined(__AVX__)
#define PROBREG_LANE_WIDTH 4
#else
#define PROBREG_LANE_WIDTH 2
#endif
constexpr int kLaneWidth = PROBREG_LANE_WIDTH;
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
// Bit j set where lane j of c is true: one instruction on x86 (the sign bit of each
// lane, which a mask's all-ones or zero lane sets exactly where it is true).
PROBREG_LANES_INLINE unsigned pr_mask_bits(LaneMask c) {
#if defined(__AVX512DQ__) && PROBREG_LANE_WIDTH == 8
  return unsigned(_mm512_movepi64_mask((__m512i)c.m));
#elif defined(__AVX__) && PROBREG_LANE_WIDTH == 4
  return unsigned(_mm256_movemask_pd((__m256d)c.m));
#elif defined(__SSE2__) && PROBREG_LANE_WIDTH == 2
  return unsigned(_mm_movemask_pd((__m128d)c.m));
#else
  unsigned bits = 0;
  for (int i = 0; i < kLaneWidth; ++i) bits |= unsigned(c.m[i] != 0) << i;
  return bits;
#endif
}
PROBREG_LANES_INLINE bool pr_any(LaneMask c) { return pr_mask_bits(c) != 0; }
PROBREG_LANES_INLINE bool pr_all(LaneMask c) { return pr_mask_bits(c) == (1u << kLaneWidth) - 1; }

PROBREG_LANES_INLINE Lanes pr_sqrt(Lanes x) {
  Lanes r;
  for (int i = 0; i < kLaneWidth; ++i) r.v[i] = __builtin_sqrt(x.v[i]);
  return r;
}
// a * b + c per lane: fused (one rounding) where the build has FMA (setup.py: -mfma with
// AVX2 and AVX-512), a * b + c otherwise, like the scalar pr_fma (macros.h).
PROBREG_LANES_INLINE Lanes pr_fma(Lanes a, Lanes b, Lanes c) {
#if defined(__AVX512F__)
  return Lanes((LaneVec)_mm512_fmadd_pd((__m512d)a.v, (__m512d)b.v, (__m512d)c.v));
#elif defined(__FMA__) && PROBREG_LANE_WIDTH == 4
  return Lanes((LaneVec)_mm256_fmadd_pd((__m256d)a.v, (__m256d)b.v, (__m256d)c.v));
#elif defined(__FMA__) && PROBREG_LANE_WIDTH == 2
  return Lanes((LaneVec)_mm_fmadd_pd((__m128d)a.v, (__m128d)b.v, (__m128d)c.v));
#else
  return a * b + c;
#endif
}
PROBREG_LANES_INLINE Lanes pr_abs(Lanes x) {
  const LaneBits sign_off = LaneBits{} + INT64_MAX;
  return Lanes((LaneVec)((LaneBits)x.v & sign_off));
}
PROBREG_LANES_INLINE Lanes pr_min(Lanes a, Lanes b) { return pr_where(a < b, a, b); }
PROBREG_LANES_INLINE Lanes pr_max(Lanes a, Lanes b) { return pr_where(a > b, a, b); }

// 1/sqrt(x) and 1/x for POSITIVE, NORMAL, FINITE x only (callers guarantee it; the result
// is unspecified elsewhere). With AVX-512: the hardware estimate (relative error
// < 2^-14) refined by two Newton steps, relative error ~2^-52 (a few ulp), in 7 and 5
// cheap instructions instead of vsqrtpd + vdivpd (each ~16 cycles per vector); otherwise
// the correctly rounded 1/sqrt(x) and 1/x. Deterministic per lane.
PROBREG_LANES_INLINE Lanes pr_rsqrt(Lanes x) {
#if defined(__AVX512F__)
  LaneVec y = (LaneVec)_mm512_maskz_rsqrt14_pd(__mmask8(0xff), (__m512d)x.v);
  const LaneVec half_x = 0.5 * x.v;
  for (int step = 0; step < 2; ++step) y = y * (1.5 - half_x * y * y);  // e' = 1.5 e^2
  return Lanes(y);
#else
  return Lanes(1.0 / pr_sqrt(x).v);
#endif
}
PROBREG_LANES_INLINE Lanes pr_recip(Lanes x) {
#if defined(__AVX512F__)
  LaneVec y = (LaneVec)_mm512_maskz_rcp14_pd(__mmask8(0xff), (__m512d)x.v);
  for (int step = 0; step < 2; ++step) y = y + y * (1.0 - x.v * y);  // e' = e^2
  return Lanes(y);
#else
  return Lanes(1.0 / x.v);
#endif
}

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

// down = 2^-floor(e/2) and up = 1/down for positive normal x = f 2^e, f in [1/2, 1)
// (symeig.h, pow2_rsqrt_scale).
PROBREG_LANES_INLINE Lanes pow2_rsqrt_scale(Lanes x, Lanes& up) {
  using namespace lanes_detail;
  const LaneBits half = (((to_bits(x.v) >> 52) & 0x7ff) - 1022) >> 1;  // arithmetic shift: floor
  up = Lanes(pow2(half));
  return Lanes(pow2(-half));
}

namespace lanes_detail {
constexpr double kExpInvFactorials[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                        1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,     1.0 / 720.0,
                                        1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,        0.5,
                                        1.0,                1.0};  // 1/13!, ..., 1/0!

// x = n ln2 + r for |x| <= 746: returns r (|r| <= ln2/2) and writes n as int64 lanes.
PROBREG_LANES_INLINE LaneVec exp_reduce(LaneVec x, LaneBits& n_int) {
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  const LaneVec t = x * 1.4426950408889634074 + shifter;
  const LaneVec n = t - shifter;
  n_int = to_bits(t) - to_bits(LaneVec{} + shifter);
  return (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
}
}  // namespace lanes_detail

// exp(x): exp(r) by its Taylor series to r^13 (truncation < 1e-17), 2^n applied as two
// factors so subnormal results and overflow come out right.
PROBREG_LANES_INLINE Lanes pr_exp(Lanes x) {
  using namespace lanes_detail;
  const LaneVec xc = x.v < -746.0 ? LaneVec{} - 746.0 : (x.v > 710.0 ? LaneVec{} + 710.0 : x.v);
  LaneBits k;
  const LaneVec r = exp_reduce(xc, k);
  const LaneVec p = polynomial(Lanes(r), kExpInvFactorials).v;
  const LaneBits k1 = k >> 1;
  const LaneBits k2 = k - k1;
  LaneVec out = p * pow2(k1) * pow2(k2);
  out = x.v != x.v ? x.v : out;  // NaN in, NaN out
  return Lanes(out);
}

// exp(x) for x <= 0 (or NaN) and a result rounded to float or narrower (macros.h
// series_precision 1; spectral.h exp_factor_of, whose arguments min(l/theta - 1, 0) and
// half of it are never positive): the series to r^9 (truncation < 7e-12 relative, far
// below float's rounding) and 2^n as one factor, x floored at -708. Below e^-708 (3e-308)
// the result is then 3e-308 instead of smaller, which the factors the callers apply round
// to float's 0 all the same (x <= -708 needs |l| >= 707 theta, so theta < 1e36 for
// eigenvalues of float32 or narrower matrices). NaN in, NaN out (the floor passes NaN, the
// series and the product keep it). Against the general form (r^10, two factors, a NaN
// select): spd_from_raw d = 2 forward 10.4 -> 9.6 ms on one AVX2 thread at 2^20 float32.
PROBREG_LANES_INLINE Lanes pr_exp_nonpositive_float_result(Lanes x) {
  using namespace lanes_detail;
  const LaneVec xc = x.v < -708.0 ? LaneVec{} - 708.0 : x.v;
  LaneBits k;
  const LaneVec r = exp_reduce(xc, k);
  return Lanes(polynomial_lowest<10>(Lanes(r), kExpInvFactorials).v * pow2(k));
}

// expm1(x): Taylor series to x^16 for |x| < 0.5 (truncation < 1e-19 relative), else
// exp(x) - 1 (no harmful cancellation there).
PROBREG_LANES_INLINE Lanes pr_expm1(Lanes x) {
  const Lanes series = expm1_taylor(x);
  const Lanes big = pr_exp(x) - 1.0;
  return pr_where(pr_abs(x) < 0.5, series, big);
}

}  // namespace probreg

#endif  // !__CUDACC__

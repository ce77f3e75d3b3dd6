// FloatLanes: the value type of the CPU float32 path under the mixed policy (cpu_loop.h
// MixedLanes): 2 * kLaneWidth floats, one per item of a LanePair (lane j of the pair's
// first block is element j, of its second block element kLaneWidth + j), in one machine
// register (8 floats on AVX2, 16 on AVX-512). The eigenvalues stay in LanePair doubles;
// matrices, vectors and gradients take FloatLanes, so the finish of a pair costs one
// float vector operation where the double policy costs two.
//
// Conversions (explicit, as T(l) and L(t) in the math headers): FloatLanes(LanePair) rounds
// each double to float (one vcvtpd2ps per block and one insert), LanePair(FloatLanes) is
// exact. Masks of LanePair comparisons select FloatLanes through FloatLaneMask(PairMask).
//
// exp is implemented here branch-free to ~1 ulp of float (Cody-Waite reduction plus the
// Taylor series to r^7), with gradual underflow to 0, overflow to inf and NaN propagation.
// sqrt, 1/sqrt and 1/x are the correctly rounded IEEE float operations.
#pragma once

#include "lane_pair.h"

#if defined(PROBREG_HAVE_LANES)
#include <cfloat>
#include <cstdint>
#include <utility>

namespace probreg {

// kLaneWidth floats: one block of float32 storage (cpu_loop.h StorageVec<float>), and a
// half of a FloatLanes.
typedef float LaneVecF __attribute__((vector_size(kLaneWidth * sizeof(float))));
typedef int32_t LaneBitsF __attribute__((vector_size(kLaneWidth * sizeof(int32_t))));
// 2 * kLaneWidth floats (a pair's items) and their bit patterns.
constexpr int kFloatLaneWidth = 2 * kLaneWidth;
typedef float FloatVec __attribute__((vector_size(kFloatLaneWidth * sizeof(float))));
typedef int32_t FloatBits __attribute__((vector_size(kFloatLaneWidth * sizeof(int32_t))));

namespace float_lanes_detail {
template <typename V, typename H, std::size_t... J>
PROBREG_LANES_INLINE V concat(H a, H b, std::index_sequence<J...>) {
  return __builtin_shufflevector(a, b, int(J)...);
}
template <typename H, int Offset, typename V, std::size_t... J>
PROBREG_LANES_INLINE H half(V v, std::index_sequence<J...>) {
  return __builtin_shufflevector(v, v, (Offset + int(J))...);
}
}  // namespace float_lanes_detail

// The 2W-element vector whose first W elements are a and last W are b: one insert on AVX
// and AVX-512 (GCC lowers the generic shuffle as a zero-extension of a, a vmovaps, and the
// insert).
PROBREG_LANES_INLINE FloatVec concat_halves(LaneVecF a, LaneVecF b) {
#if defined(__AVX512F__)
  const __m512d low = _mm512_castpd256_pd512(_mm256_castps_pd((__m256)a));
  return (FloatVec)_mm512_castpd_ps(_mm512_insertf64x4(low, _mm256_castps_pd((__m256)b), 1));
#elif defined(__AVX__)
  return (FloatVec)_mm256_insertf128_ps(_mm256_castps128_ps256((__m128)a), (__m128)b, 1);
#else
  return float_lanes_detail::concat<FloatVec>(a, b, std::make_index_sequence<kFloatLaneWidth>{});
#endif
}
PROBREG_LANES_INLINE FloatBits concat_halves(LaneBitsF a, LaneBitsF b) {
  return (FloatBits)concat_halves((LaneVecF)a, (LaneVecF)b);
}
PROBREG_LANES_INLINE LaneVecF low_half(FloatVec v) {
  return float_lanes_detail::half<LaneVecF, 0>(v, std::make_index_sequence<kLaneWidth>{});
}
PROBREG_LANES_INLINE LaneVecF high_half(FloatVec v) {
  return float_lanes_detail::half<LaneVecF, kLaneWidth>(v, std::make_index_sequence<kLaneWidth>{});
}

// float -> double of a block: one vcvtps2pd on AVX and AVX-512 (GCC 12 lowers
// __builtin_convertvector(float -> double) on the whole vector as two half-width
// conversions joined by a shuffle: five instructions where one does). SSE2 keeps the
// builtin. double -> float is one instruction either way.
PROBREG_LANES_INLINE LaneVec widen_floats(LaneVecF f) {
#if defined(__AVX512F__)
  return (LaneVec)_mm512_cvtps_pd((__m256)f);
#elif defined(__AVX__)
  return (LaneVec)_mm256_cvtps_pd((__m128)f);
#else
  return __builtin_convertvector(f, LaneVec);
#endif
}
PROBREG_LANES_INLINE LaneVecF narrow_doubles(LaneVec v) { return __builtin_convertvector(v, LaneVecF); }

// A LaneMask (64-bit all-ones / zero lanes) as 32-bit lanes. On AVX: one vcvtpd2ps of the
// mask's bits (all ones is a quiet NaN, which converts to the all-ones float; zero to
// zero).
PROBREG_LANES_INLINE LaneBitsF narrow_mask(LaneMask m) {
#if defined(__AVX__) && !defined(__AVX512F__)
  return (LaneBitsF)_mm256_cvtpd_ps((__m256d)m.m);
#else
  return __builtin_convertvector(m.m, LaneBitsF);
#endif
}

struct FloatLaneMask {
  FloatBits m;  // all ones (-1) where true, 0 where false
  FloatLaneMask() = default;
  explicit FloatLaneMask(FloatBits bits) : m(bits) {}
  // The mask of a LanePair comparison, element by element.
  FloatLaneMask(PairMask p) : m(concat_halves(narrow_mask(p.first), narrow_mask(p.second))) {}
};
PROBREG_LANES_INLINE FloatLaneMask operator&(FloatLaneMask a, FloatLaneMask b) { return FloatLaneMask(a.m & b.m); }
PROBREG_LANES_INLINE FloatLaneMask operator|(FloatLaneMask a, FloatLaneMask b) { return FloatLaneMask(a.m | b.m); }

struct FloatLanes {
  FloatVec v;
  FloatLanes() = default;
  FloatLanes(double s) : v(FloatVec{} + float(s)) {}  // broadcast (implicit, like a literal)
  explicit FloatLanes(FloatVec x) : v(x) {}
  // Each double rounded to float.
  explicit FloatLanes(LanePair p) : v(concat_halves(narrow_doubles(p.first.v), narrow_doubles(p.second.v))) {}
  // Exact.
  explicit operator LanePair() const {
    return LanePair(Lanes(widen_floats(low_half(v))), Lanes(widen_floats(high_half(v))));
  }
  FloatLanes& operator+=(FloatLanes o) { v += o.v; return *this; }
  FloatLanes& operator-=(FloatLanes o) { v -= o.v; return *this; }
  FloatLanes& operator*=(FloatLanes o) { v *= o.v; return *this; }
};
PROBREG_LANES_INLINE FloatLanes operator+(FloatLanes a, FloatLanes b) { return FloatLanes(a.v + b.v); }
PROBREG_LANES_INLINE FloatLanes operator-(FloatLanes a, FloatLanes b) { return FloatLanes(a.v - b.v); }
PROBREG_LANES_INLINE FloatLanes operator*(FloatLanes a, FloatLanes b) { return FloatLanes(a.v * b.v); }
PROBREG_LANES_INLINE FloatLanes operator/(FloatLanes a, FloatLanes b) { return FloatLanes(a.v / b.v); }
PROBREG_LANES_INLINE FloatLanes operator-(FloatLanes a) { return FloatLanes(-a.v); }
PROBREG_LANES_INLINE FloatLaneMask operator<(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v < b.v); }
PROBREG_LANES_INLINE FloatLaneMask operator<=(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v <= b.v); }
PROBREG_LANES_INLINE FloatLaneMask operator>(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v > b.v); }
PROBREG_LANES_INLINE FloatLaneMask operator>=(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v >= b.v); }
PROBREG_LANES_INLINE FloatLaneMask operator==(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v == b.v); }
PROBREG_LANES_INLINE FloatLaneMask operator!=(FloatLanes a, FloatLanes b) { return FloatLaneMask(a.v != b.v); }

// Selection by the sign bit of each mask lane (the masks are all ones or zero): one
// vblendvps on AVX (GCC's vector ?: would first test a converted mask against zero).
PROBREG_LANES_INLINE FloatLanes pr_where(FloatLaneMask c, FloatLanes a, FloatLanes b) {
#if defined(__AVX__) && !defined(__AVX512F__)
  return FloatLanes((FloatVec)_mm256_blendv_ps((__m256)b.v, (__m256)a.v, (__m256)c.m));
#else
  return FloatLanes(c.m ? a.v : b.v);
#endif
}
PROBREG_LANES_INLINE FloatLanes pr_where(PairMask c, FloatLanes a, FloatLanes b) {
  return pr_where(FloatLaneMask(c), a, b);
}

PROBREG_LANES_INLINE FloatLanes pr_sqrt(FloatLanes x) {
#if defined(__AVX512F__)
  return FloatLanes((FloatVec)_mm512_sqrt_ps((__m512)x.v));
#elif defined(__AVX__)
  return FloatLanes((FloatVec)_mm256_sqrt_ps((__m256)x.v));
#else
  FloatLanes r;
  for (int i = 0; i < kFloatLaneWidth; ++i) r.v[i] = __builtin_sqrtf(x.v[i]);
  return r;
#endif
}
// a * b + c: fused where the build has FMA, like the scalar and Lanes pr_fma.
PROBREG_LANES_INLINE FloatLanes pr_fma(FloatLanes a, FloatLanes b, FloatLanes c) {
#if defined(__AVX512F__)
  return FloatLanes((FloatVec)_mm512_fmadd_ps((__m512)a.v, (__m512)b.v, (__m512)c.v));
#elif defined(__FMA__) && defined(__AVX__)
  return FloatLanes((FloatVec)_mm256_fmadd_ps((__m256)a.v, (__m256)b.v, (__m256)c.v));
#else
  return a * b + c;
#endif
}
PROBREG_LANES_INLINE FloatLanes pr_abs(FloatLanes x) {
  return FloatLanes((FloatVec)((FloatBits)x.v & (FloatBits{} + INT32_MAX)));
}
PROBREG_LANES_INLINE FloatLanes pr_min(FloatLanes a, FloatLanes b) { return pr_where(a < b, a, b); }
PROBREG_LANES_INLINE FloatLanes pr_max(FloatLanes a, FloatLanes b) { return pr_where(a > b, a, b); }
// 1/sqrt(x) and 1/x for positive normal x (the contract of the scalar pr_rsqrt, pr_recip):
// the correctly rounded float results.
PROBREG_LANES_INLINE FloatLanes pr_rsqrt(FloatLanes x) { return FloatLanes(1.0f / pr_sqrt(x).v); }
PROBREG_LANES_INLINE FloatLanes pr_recip(FloatLanes x) { return FloatLanes(1.0f / x.v); }

template <>
struct Eps<FloatLanes> {
  static constexpr double value = FLT_EPSILON;
};
template <>
struct MinNormal<FloatLanes> {
  static constexpr double value = FLT_MIN;
};

// 2^k for x in [2^k, 2^(k+1)) and inv = 2^-k, positive normal x <= 2^126 (huber.h
// pow2_floor). Bit operations, exact.
PROBREG_LANES_INLINE FloatLanes pow2_floor(FloatLanes x, FloatLanes& inv) {
  const FloatBits bits = (FloatBits)x.v & 0x7f800000;
  inv = FloatLanes((FloatVec)(0x7f000000 - bits));
  return FloatLanes((FloatVec)bits);
}

// exp(x) in float: x = n ln2 + r (Cody-Waite, |r| <= ln2/2), exp(r) by its Taylor series to
// r^7 (truncation < 6e-9 relative, a tenth of float's rounding), 2^n applied as two factors
// so that subnormal results and overflow come out right; NaN in, NaN out.
PROBREG_LANES_INLINE FloatLanes pr_exp(FloatLanes x) {
  const FloatVec xc = x.v < -104.0f ? FloatVec{} - 104.0f : (x.v > 89.0f ? FloatVec{} + 89.0f : x.v);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const FloatVec t = xc * 1.44269504088896341f + shifter;
  const FloatVec n = t - shifter;
  const FloatBits k = (FloatBits)t - (FloatBits)(FloatVec{} + shifter);  // n as int32
  // ln 2 = 0.693145751953125 (9 significant bits: n * it is exact) + 1.42860677e-6.
  const FloatVec r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  constexpr double inv_factorials[] = {1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0,
                                       1.0 / 6.0,    0.5,         1.0,         1.0};  // 1/7!, ..., 1/0!
  const FloatVec p = polynomial(FloatLanes(r), inv_factorials).v;
  const FloatBits k1 = k >> 1;
  const FloatBits k2 = k - k1;
  const FloatVec out = p * (FloatVec)((k1 + 127) << 23) * (FloatVec)((k2 + 127) << 23);
  return FloatLanes(x.v != x.v ? x.v : out);
}

}  // namespace probreg
#endif  // PROBREG_HAVE_LANES

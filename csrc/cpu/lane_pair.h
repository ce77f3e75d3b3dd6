// LanePair: two independent Lanes blocks advanced in lockstep (2 * kLaneWidth items).
//
// The 3x3 Jacobi is one long dependent chain of sqrt and divisions per block (each
// rotation needs the previous one's result), so a single block leaves the FP units
// mostly idle waiting on latency. Running two blocks' rotations interleaved gives the
// core two independent chains: 1.8x the decomposition throughput on AVX-512 (a wider
// vector type instead spills and is 4x slower with GCC's generic vectors).
// Only what symeig_core / jacobi_rotate / sort_eigenpairs use is defined.
#pragma once

#include "probreg/lanes.h"

#if defined(PROBREG_HAVE_LANES)
#include "probreg/symeig.h"

namespace probreg {

struct PairMask {
  LaneMask first, second;
};
PROBREG_LANES_INLINE PairMask operator|(PairMask x, PairMask y) { return {x.first | y.first, x.second | y.second}; }
PROBREG_LANES_INLINE PairMask operator&(PairMask x, PairMask y) { return {x.first & y.first, x.second & y.second}; }

struct LanePair {
  Lanes first, second;
  LanePair() = default;
  LanePair(double s) : first(s), second(s) {}  // broadcast, like Lanes
  LanePair(Lanes a, Lanes b) : first(a), second(b) {}
  LanePair& operator+=(LanePair o) {
    first += o.first;
    second += o.second;
    return *this;
  }
  LanePair& operator-=(LanePair o) {
    first -= o.first;
    second -= o.second;
    return *this;
  }
};

#define PROBREG_PAIR_BINARY(OP)                                                       \
  PROBREG_LANES_INLINE LanePair operator OP(LanePair x, LanePair y) {                 \
    return {x.first OP y.first, x.second OP y.second};                                \
  }
#define PROBREG_PAIR_COMPARE(OP)                                                      \
  PROBREG_LANES_INLINE PairMask operator OP(LanePair x, LanePair y) {                 \
    return {x.first OP y.first, x.second OP y.second};                                \
  }
PROBREG_PAIR_BINARY(+)
PROBREG_PAIR_BINARY(-)
PROBREG_PAIR_BINARY(*)
PROBREG_PAIR_BINARY(/)
PROBREG_PAIR_COMPARE(<)
PROBREG_PAIR_COMPARE(<=)
PROBREG_PAIR_COMPARE(>)
PROBREG_PAIR_COMPARE(>=)
PROBREG_PAIR_COMPARE(!=)
#undef PROBREG_PAIR_BINARY
#undef PROBREG_PAIR_COMPARE

PROBREG_LANES_INLINE LanePair operator-(LanePair x) { return {-x.first, -x.second}; }
PROBREG_LANES_INLINE LanePair pr_where(PairMask m, LanePair x, LanePair y) {
  return {pr_where(m.first, x.first, y.first), pr_where(m.second, x.second, y.second)};
}
PROBREG_LANES_INLINE bool pr_any(PairMask m) { return pr_any(m.first | m.second); }
PROBREG_LANES_INLINE LanePair pr_abs(LanePair x) { return {pr_abs(x.first), pr_abs(x.second)}; }
PROBREG_LANES_INLINE LanePair pr_sqrt(LanePair x) { return {pr_sqrt(x.first), pr_sqrt(x.second)}; }
PROBREG_LANES_INLINE LanePair pr_rsqrt(LanePair x) { return {pr_rsqrt(x.first), pr_rsqrt(x.second)}; }
PROBREG_LANES_INLINE LanePair pr_min(LanePair x, LanePair y) { return {pr_min(x.first, y.first), pr_min(x.second, y.second)}; }
PROBREG_LANES_INLINE LanePair pow2_rsqrt_scale(LanePair x, LanePair& up) {
  return {pow2_rsqrt_scale(x.first, up.first), pow2_rsqrt_scale(x.second, up.second)};
}

template <>
struct Eps<LanePair> {
  static constexpr double value = __DBL_EPSILON__;
};

}  // namespace probreg
#endif  // PROBREG_HAVE_LANES

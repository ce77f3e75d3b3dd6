// LanePair: two independent Lanes blocks advanced in lockstep (2 * kLaneWidth items).
//
// An item body is mostly long dependent chains (the 3x3 closed form, the 2x2 rotation's
// reciprocal square roots, the exponentials' polynomials), so a single block leaves the
// FP units idle waiting on latency. Running two blocks interleaved gives the core two
// independent chains: run_decomposed (cpu_loop.h) runs every op's whole item body on
// pairs, about 1.2-1.5x the throughput of single blocks on AVX-512 and AVX2 (a wider
// vector type than the register instead spills, or is split and partly scalarised, with
// GCC's generic vectors: lanes.h). Every operation is the
// Lanes operation on each half, so an item's result does not depend on whether it ran in
// a pair or alone (the math headers branch on masks only through pr_any in loops whose
// extra iterations are exact no-ops: symeig_core's sweeps).
#pragma once

#include "probreg/lanes.h"

#if defined(PROBREG_HAVE_LANES)
#include "probreg/huber.h"
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
  LanePair& operator*=(LanePair o) {
    first *= o.first;
    second *= o.second;
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
PROBREG_PAIR_COMPARE(==)
#undef PROBREG_PAIR_BINARY
#undef PROBREG_PAIR_COMPARE

PROBREG_LANES_INLINE LanePair operator-(LanePair x) { return {-x.first, -x.second}; }
PROBREG_LANES_INLINE LanePair pr_where(PairMask m, LanePair x, LanePair y) {
  return {pr_where(m.first, x.first, y.first), pr_where(m.second, x.second, y.second)};
}
PROBREG_LANES_INLINE bool pr_any(PairMask m) { return pr_any(m.first | m.second); }

// Every Lanes function of the math headers, applied to both blocks.
#define PROBREG_PAIR_FUNCTION1(F) \
  PROBREG_LANES_INLINE LanePair F(LanePair x) { return {F(x.first), F(x.second)}; }
#define PROBREG_PAIR_FUNCTION2(F) \
  PROBREG_LANES_INLINE LanePair F(LanePair x, LanePair y) { return {F(x.first, y.first), F(x.second, y.second)}; }
PROBREG_PAIR_FUNCTION1(pr_abs)
PROBREG_PAIR_FUNCTION1(pr_sqrt)
PROBREG_PAIR_FUNCTION1(pr_rsqrt)
PROBREG_PAIR_FUNCTION1(pr_recip)
PROBREG_PAIR_FUNCTION1(pr_exp)
PROBREG_PAIR_FUNCTION1(pr_exp_nonpositive_float_result)
PROBREG_PAIR_FUNCTION2(pr_min)
PROBREG_PAIR_FUNCTION2(pr_max)
#undef PROBREG_PAIR_FUNCTION1
#undef PROBREG_PAIR_FUNCTION2
PROBREG_LANES_INLINE LanePair pr_fma(LanePair a, LanePair b, LanePair c) {
  return {pr_fma(a.first, b.first, c.first), pr_fma(a.second, b.second, c.second)};
}
PROBREG_LANES_INLINE LanePair pow2_rsqrt_scale(LanePair x, LanePair& up) {
  return {pow2_rsqrt_scale(x.first, up.first), pow2_rsqrt_scale(x.second, up.second)};
}
PROBREG_LANES_INLINE LanePair pow2_floor(LanePair x, LanePair& inv) {
  return {pow2_floor(x.first, inv.first), pow2_floor(x.second, inv.second)};
}
PROBREG_LANES_INLINE LanePair split_exponent(LanePair x, LanePair& e) {
  return {split_exponent(x.first, e.first), split_exponent(x.second, e.second)};
}

template <>
struct Eps<LanePair> {
  static constexpr double value = __DBL_EPSILON__;
};

}  // namespace probreg
#endif  // PROBREG_HAVE_LANES

// The eigenvalue remap g of the SPD parameterisation (paper eq. 9-10) and the exact
// backward of the spectral function A = V diag(g(l)) V^T (Daleckii-Krein, paper eq.
// 38-39). Branch-free in the value type T (scalars and CPU SIMD lanes).
//
//   g(l) = l                        if l > theta
//        = theta * exp(l/theta - 1)  otherwise       (C1, 0 < g' <= 1)
//
// Backward: with G = sym(dL/dA), dL/dB = V ((V^T G V) o K) V^T where K is the matrix
// of first divided differences of g. K is evaluated per branch pair without a tie
// threshold and without cancellation (DESIGN.md section 1), so it is exact at repeated
// eigenvalues and finite where g underflows.
//
// Two value types: eigenvalues (and theta) are of type L, everything else of type T.
// L = T everywhere except the float32 paths of the CUDA kernels, T = float with
// L = double (symeig_mixed in symeig.h), and of the CPU SIMD lanes, T = FloatLanes with
// L = LanePair (csrc/cpu/lane_floats.h, the same policy): the eigenvalues and their differences are then exact to
// double rounding, and g enters float through a compensated exponential, so the only
// float errors are O(eps_f) relative to the result (no l/theta amplification).
#pragma once

#include <type_traits>

#include "macros.h"
#include "symeig.h"

namespace probreg {

// theta and its reciprocal, formed once per item by the entry points below (pr_recip, a
// few ulp: theta is a positive normal number) and passed to the helpers, so that no
// helper divides by theta. Out: the type the op's results are rounded to, which sets how
// far the helpers' series go (series_precision in macros.h; the entry points' Out,
// default T: float32 inputs on the CPU compute in double for float results).
// The entry points' theta argument: theta alone (converted implicitly: the reciprocal by
// pr_recip), or with the reciprocal the caller formed once (the CUDA kernels take 1/theta
// from the host, correctly rounded, instead of every thread refining an estimate).
template <typename L>
struct ThetaArg {
  L value, inv;
  PROBREG_HOST_DEVICE ThetaArg(L theta) : value(theta), inv(pr_recip(theta)) {}
  PROBREG_HOST_DEVICE ThetaArg(L theta, L inverse) : value(theta), inv(inverse) {}
};
// The parameter type: ThetaArg<L> in a non-deduced context, so that L is deduced from the
// eigenvalues alone and a plain theta converts.
template <typename L>
using ThetaParam = typename std::enable_if<true, ThetaArg<L>>::type;

template <typename L, typename Out = L>
struct Theta {
  L value, inv;
  PROBREG_HOST_DEVICE explicit Theta(L theta) : value(theta), inv(pr_recip(theta)) {}
  PROBREG_HOST_DEVICE explicit Theta(const ThetaArg<L>& theta) : value(theta.value), inv(theta.inv) {}
};

// min(l/theta - 1, 0), the exponent of g's exponential branch, formed as
// (l - theta) * (1/theta): no division per eigenvalue, and a relative rather than
// absolute rounding error where l is near theta. NaN l gives 0 (callers propagate NaN
// separately).
template <typename L, typename Out>
PROBREG_HOST_DEVICE L remap_exponent(L l, const Theta<L, Out>& theta) {
  return pr_where(l < theta.value, (l - theta.value) * theta.inv, L(0));
}

// exp(min(l/theta - 1, 0)): the exponential factor of g on its exponential branch
// (clamped so the unselected branch never overflows). Kernels compute it once per
// eigenvalue and reuse it for g, g' and the divided differences.
// Mixed types: z = l/theta - 1 in L, split z = z_hi + z_lo with z_hi = T(z), and
// exp(z) = exp(z_hi) (1 + z_lo) to a few ulps of T (|z_lo| <= ulp(z_hi)/2, so the
// dropped z_lo^2/2 is far below T's precision). z_hi is floored at -150 in T, where exp
// underflows float, so it is always finite; below that z_lo = z + 150 is floored at -1,
// so exp(z_hi) (1 + z_lo) is 0 (as when z itself was floored in L: the same values,
// without L's min with its NaN rules). A double result rounded to float
// (series_precision 1) takes pr_exp_nonpositive_float_result (on the SIMD lanes a shorter
// series and one 2^n factor: z <= 0 here).
template <typename T, typename Out, typename L>
PROBREG_HOST_DEVICE T exp_factor_of(L z) {
  if constexpr (std::is_same_v<T, L>) {
    if constexpr (series_precision<T, Out>() == 1) {
      return pr_exp_nonpositive_float_result(z);
    } else {
      return pr_exp(z);
    }
  } else if constexpr (std::is_same_v<T, float>) {
    // Scalar float (CUDA): in base 2, exp(z) = 2^t, t = z log2(e) in L (its rounding is
    // L's), 2^t_hi by the ex2 unit (exp2f, <= 2 ulp, four instructions where expf takes
    // nine) and 2^t_lo = 1 + t_lo ln 2. Floors as above: t_hi at -160 (2^-160 is 0 in
    // float, with room for ex2's error), t_lo at -1 (1 - ln 2 > 0: the product stays 0).
    const L t = z * L(1.44269504088896340736);
    const T t_hi = pr_max(T(t), T(-160));
    const T t_lo = pr_max(T(t - L(t_hi)), T(-1));
    return pr_exp2(t_hi) * pr_fma(t_lo, T(0.69314718055994530942), T(1));
  } else {
    const T z_hi = pr_max(T(z), T(-150));
    const T z_lo = pr_max(T(z - L(z_hi)), T(-1));
    return pr_exp(z_hi) * (T(1) + z_lo);
  }
}
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_exp_factor(L l, const Theta<L, Out>& theta) {
  return exp_factor_of<T, Out>(remap_exponent(l, theta));
}

// exp(min(l/theta - 1, 0) / 2), the square root of remap_exp_factor: the backward
// computes it once per eigenvalue, squares it for g and g' (h^2 rounds once more than
// exp(z); its underflow is exp(z)'s) and multiplies two of them for the divided
// differences of a pair on the exponential branch, instead of two square roots per pair.
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_half_exp_factor(L l, const Theta<L, Out>& theta) {
  return exp_factor_of<T, Out>(remap_exponent(l, theta) * L(0.5));
}

// g(l) given e = remap_exp_factor(l, theta).
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_g_from(L l, T e, const Theta<L, Out>& theta) {
  return pr_where(l > theta.value, T(l), T(theta.value) * e);
}

// g(l) in T (= L unless given: remap_g<double, float>(l, theta)).
template <typename L, typename T = L, typename Out>
PROBREG_HOST_DEVICE T remap_g(L l, const Theta<L, Out>& theta) {
  return remap_g_from(l, remap_exp_factor<T>(l, theta), theta);
}

// g'(l) given e = remap_exp_factor(l, theta).
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_g_prime_from(L l, T e, const Theta<L, Out>& theta) {
  return pr_where(l > theta.value, T(1), e);
}

// sinh(x)/x for 0 <= x <= 1: its Taylor series sum x^2k/(2k+1)! to k = 9 in double
// (truncation < 1e-17), to k = 7 for a double result rounded to float (2.8e-15), to k = 5
// in float (1.6e-10, a few thousandths of its rounding). Out: series_precision.
template <typename T, typename Out = T>
PROBREG_HOST_DEVICE T sinhc_unit(T x) {
  constexpr double inv_odd_factorials[] = {1.0 / 121645100408832000.0, 1.0 / 355687428096000.0,
                                           1.0 / 1307674368000.0,      1.0 / 6227020800.0,
                                           1.0 / 39916800.0,           1.0 / 362880.0,
                                           1.0 / 5040.0,               1.0 / 120.0,
                                           1.0 / 6.0,                  1.0};  // 1/19!, ..., 1/1!
  constexpr int terms[] = {6, 8, 10};
  return polynomial_lowest<terms[series_precision<T, Out>()]>(x * x, inv_odd_factorials);
}

// expm1(z) for z <= 0 given e = exp(z): expm1_taylor for |z| < 1/2 (its series as far as
// series_precision<T, Out> asks), e - 1 otherwise (no harmful cancellation there).
template <typename Out, typename T>
PROBREG_HOST_DEVICE T expm1_nonpositive_from(T z, T e) {
  return pr_where(z > T(-0.5), expm1_taylor<T, Out>(z), e - T(1));
}

// Divided difference K(lo, hi) = (g(hi) - g(lo)) / (hi - lo), and g'(lo) at lo == hi,
// given h_lo, h_hi = remap_half_exp_factor(lo / hi), for ORDERED arguments: lo <= hi, or a
// NaN (the callers' eigenvalues are ascending; remap_divided_difference takes any order).
// Every branch is evaluated and one is selected (branch-free); no tie threshold, no
// cancellation. Mixed types: the differences gap, hi - theta and z_lo are formed in L
// (exact where they cancel) before rounding to T.
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_divided_difference_ordered(L lo, L hi, T h_lo, T h_hi, const Theta<L, Out>& theta) {
  const T e_hi = h_hi * h_hi;
  const T e_lo = h_lo * h_lo;
  const T gap = T(hi - lo);
  const T theta_t = T(theta.value);
  const auto both_linear = lo > theta.value;
  const auto mixed = (hi > theta.value) & (lo <= theta.value);
  // hi > theta >= lo: (hi - theta) + theta (1 - exp((lo - theta)/theta)), both terms
  // >= 0, over gap >= hi - theta > 0.
  const T z_lo = T(remap_exponent(lo, theta));
  // The mixed and far branches never apply to the same pair and both need gap > 0 (a
  // normal number wherever they apply: gap >= hi - theta, or > 2 theta): one reciprocal
  // serves both (pr_recip needs a normal gap with a normal reciprocal; beyond that, 1/gap
  // is 0 to T's precision).
  const auto normal = gap > T(MinNormal<T>::value);
  const auto huge = gap > T(1.0 / MinNormal<T>::value);
  const T inv_gap = pr_where(huge, T(0), pr_recip(pr_where(normal, pr_min(gap, T(1.0 / MinNormal<T>::value)), T(1))));
  const T k_mixed = (T(hi - theta.value) - theta_t * expm1_nonpositive_from<Out>(z_lo, e_lo)) * inv_gap;
  // Both on the exponential branch, m the mean and h the half gap:
  // K = exp(m/theta - 1) sinh(h/theta)/(h/theta), exp(m/theta - 1) = h_hi h_lo
  // (a product of half factors, so it cannot underflow early). For h/theta > 1 the plain
  // quotient has no cancellation.
  const T x = gap * T(L(0.5) * theta.inv);
  const auto far = x > T(1);
  const T k_near = h_hi * h_lo * sinhc_unit<T, Out>(pr_min(x, T(1)));
  const T k_far = theta_t * (e_hi - e_lo) * inv_gap;
  const T k_exp = pr_where(far, k_far, k_near);
  return pr_where(both_linear, T(1), pr_where(mixed, k_mixed, k_exp));
}

// remap_divided_difference_ordered for arguments in either order (symmetric in them);
// li >= lj false (NaN included) takes li as the lower one.
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_divided_difference(L li, L lj, T half_i, T half_j, const Theta<L, Out>& theta) {
  const auto i_is_hi = li >= lj;
  return remap_divided_difference_ordered(pr_where(i_is_hi, lj, li), pr_where(i_is_hi, li, lj),
                                          pr_where(i_is_hi, half_j, half_i), pr_where(i_is_hi, half_i, half_j),
                                          theta);
}

template <typename T>
PROBREG_HOST_DEVICE T remap_divided_difference(T li, T lj, T theta_value) {
  const Theta<T> theta(theta_value);
  return remap_divided_difference(li, lj, remap_half_exp_factor<T>(li, theta), remap_half_exp_factor<T>(lj, theta),
                                  theta);
}

// out = V M V^T for a symmetric D x D matrix M given in the eigenbasis (V's columns):
// the last step of every spectral backward. Writes the symmetric result.
template <int D, typename T>
PROBREG_HOST_DEVICE void from_eigenbasis(const T V[D][D], const T M[D][D], T out[D][D]) {
  T MV[D][D];  // M V^T
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += M[i][k] * V[j][k];
      MV[i][j] = acc;
    }
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += V[i][k] * MV[k][j];
      out[i][j] = acc;
      out[j][i] = acc;
    }
}

// A = V diag(f) V^T for a symmetric result.
template <int D, typename T>
PROBREG_HOST_DEVICE void compose_spectral(const T V[D][D], const T f[D], T A[D][D]) {
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += V[i][k] * f[k] * V[j][k];
      A[i][j] = acc;
      A[j][i] = acc;
    }
}

// Forward of the spectral remap from the eigen-decomposition: A = V diag(g(l)) V^T.
// Out (here and below): the type A is rounded to (Theta).
template <int D, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_forward_eig(const L l[D], const T V[D][D], ThetaParam<L> theta_value, T A[D][D]) {
  const Theta<L, Out> theta(theta_value);
  T gl[D];
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) gl[i] = remap_g<L, T>(l[i], theta);
  compose_spectral<D, T>(V, gl, A);
}

// Backward of the spectral remap given the eigen-decomposition of B (l ascending, as
// symeig returns it: the divided differences take ordered pairs) and the upstream
// gradient dL/dA (any square matrix; it is symmetrised). Writes the symmetric dL/dB.
template <int D, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_backward_eig(const L l[D], const T V[D][D], const T gA[D][D],
                                                ThetaParam<L> theta_value, T gB[D][D]) {
  const Theta<L, Out> theta(theta_value);
  T GV[D][D];  // sym(gA) V
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += T(0.5) * (gA[i][k] + gA[k][i]) * V[k][j];
      GV[i][j] = acc;
    }
  T h[D];  // one (half) exponential per eigenvalue, shared by every K entry
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) h[i] = remap_half_exp_factor<T>(l[i], theta);
  T M[D][D];  // (V^T sym(gA) V) o K
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += V[k][i] * GV[k][j];
      // The ordered form (l ascending) saves each pair's compare and selects; with it ptxas
      // gives the float64 d = 3 CUDA kernel 150 registers instead of 128 (one block of
      // kThreads per SM instead of two), so where T = L the symmetric form stays.
      const T kij = (i == j) ? remap_g_prime_from(l[i], h[i] * h[i], theta)
                    : std::is_same_v<T, L> ? remap_divided_difference(l[i], l[j], h[i], h[j], theta)
                                           : remap_divided_difference_ordered(l[i], l[j], h[i], h[j], theta);
      M[i][j] = acc * kij;
      M[j][i] = M[i][j];
    }
  from_eigenbasis<D, T>(V, M, gB);
}

// The d = 2 forward and backward from the reflection frame (l, N) of symeig2_reflection
// instead of eigenvectors. Forward: A = (g_hi + g_lo)/2 I + (g_hi - g_lo)/2 N.
template <typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_forward_reflection(const L l[2], const T N[2][2], ThetaParam<L> theta_value,
                                                      T A[2][2]) {
  const Theta<L, Out> theta(theta_value);
  const T g_lo = remap_g<L, T>(l[0], theta), g_hi = remap_g<L, T>(l[1], theta);
  const T mean = T(0.5) * (g_hi + g_lo), half_diff = T(0.5) * (g_hi - g_lo);
  A[0][0] = mean + half_diff * N[0][0];
  A[1][1] = mean + half_diff * N[1][1];
  A[0][1] = half_diff * N[0][1];
  A[1][0] = A[0][1];
}

// Backward: with P_lo = (I - N)/2, P_hi = (I + N)/2, dL/dB = sum_ij K_ij P_i G P_j
// (G = sym(dL/dA); K_ii = g'(l_i), K_lo,hi the divided difference kappa) expands to
//   [(alpha + beta + 2 kappa) G + (beta - alpha)(N G + G N) + (alpha + beta - 2 kappa) N G N] / 4,
// alpha = g'(l_lo), beta = g'(l_hi). At a tie N = 0 and dL/dB = kappa G = g'(l) G exactly.
// reflection_backward_from takes h = remap_half_exp_factor of (l_lo, l_hi), for callers that
// also need g (remap_g_from(l, h * h)).
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE void reflection_backward_from(const L l[2], T h_lo, T h_hi, const T N[2][2], const T gA[2][2],
                                                  const Theta<L, Out>& theta, T gB[2][2]) {
  const T alpha = remap_g_prime_from(l[0], h_lo * h_lo, theta);
  const T beta = remap_g_prime_from(l[1], h_hi * h_hi, theta);
  const T kappa = remap_divided_difference_ordered(l[0], l[1], h_lo, h_hi, theta);
  const T c_g = T(0.25) * (alpha + beta + T(2) * kappa);
  const T c_ng = T(0.25) * (beta - alpha);
  const T c_ngn = T(0.25) * (alpha + beta - T(2) * kappa);
  const T p = gA[0][0], q = T(0.5) * (gA[0][1] + gA[1][0]), s = gA[1][1];
  const T u = N[0][0], v = N[0][1];  // N = [[u, v], [v, -u]]
  const T ng00 = u * p + v * q, ng01 = u * q + v * s, ng10 = v * p - u * q, ng11 = v * q - u * s;  // N G
  gB[0][0] = c_g * p + c_ng * T(2) * ng00 + c_ngn * (ng00 * u + ng01 * v);
  gB[1][1] = c_g * s + c_ng * T(2) * ng11 + c_ngn * (ng10 * v - ng11 * u);
  gB[0][1] = c_g * q + c_ng * v * (p + s) + c_ngn * (ng00 * v - ng01 * u);
  gB[1][0] = gB[0][1];
}

template <typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_backward_reflection(const L l[2], const T N[2][2], const T gA[2][2],
                                                       ThetaParam<L> theta_value, T gB[2][2]) {
  const Theta<L, Out> theta(theta_value);
  reflection_backward_from<T, L>(l, remap_half_exp_factor<T>(l[0], theta), remap_half_exp_factor<T>(l[1], theta), N,
                                 gA, theta, gB);
}

// Forward / backward from a decomposition (l, F): F the reflection frame N where
// Reflection (d = 2 only), else the eigenvectors V.
template <int D, bool Reflection, typename T, typename L, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_forward_frame(const L l[D], const T F[D][D], ThetaParam<L> theta, T A[D][D]) {
  if constexpr (Reflection) {
    static_assert(D == 2, "the reflection frame is 2x2");
    spd_remap_forward_reflection<T, L, Out>(l, F, theta, A);
  } else {
    spd_remap_forward_eig<D, T, L, Out>(l, F, theta, A);
  }
}

template <int D, bool Reflection, typename T, typename L, typename Out = T>
PROBREG_HOST_DEVICE void spd_remap_backward_frame(const L l[D], const T F[D][D], const T gA[D][D], ThetaParam<L> theta,
                                                  T gB[D][D]) {
  if constexpr (Reflection) {
    static_assert(D == 2, "the reflection frame is 2x2");
    spd_remap_backward_reflection<T, L, Out>(l, F, gA, theta, gB);
  } else {
    spd_remap_backward_eig<D, T, L, Out>(l, F, gA, theta, gB);
  }
}

// Scalar conveniences (the CUDA kernels): decompose (symeig_frame_split: eigenvalues in
// L, the frame in T; the reflection frame at d = 2 under the mixed policy), then forward /
// backward. The forward's A = sum_j g(l_j) v_j v_j^T takes the eigenpairs in any order
// (symeig_mixed's kAscending false); the backward's divided differences need them sorted.
template <int D, typename T, typename L = T>
PROBREG_HOST_DEVICE void spd_remap_forward(const L B[D][D], ThetaParam<L> theta, T A[D][D]) {
  L l[D];
  T F[D][D];
  symeig_frame_split<D, T, L, false>(B, l, F);
  spd_remap_forward_frame<D, kSplitReflection<D, T, L>, T, L>(l, F, theta, A);
}

template <int D, typename T, typename L = T>
PROBREG_HOST_DEVICE void spd_remap_backward(const L B[D][D], const T gA[D][D], ThetaParam<L> theta, T gB[D][D]) {
  L l[D];
  T F[D][D];
  symeig_frame_split<D, T, L>(B, l, F);
  spd_remap_backward_frame<D, kSplitReflection<D, T, L>, T, L>(l, F, gA, theta, gB);
}

// Backward of symeig (real symmetric, B symmetrised in the forward):
// dL/dB = sym(V (diag(gl) + F o (V^T gV)) V^T), F_ij = 1/(l_j - l_i) for l_i != l_j and
// 0 at exact ties (the eigenvectors of a repeated eigenvalue are not unique; at a tie
// only the gauge-invariant part of gV contributes, the pseudo-inverse convention).
template <int D, typename T>
PROBREG_HOST_DEVICE void symeig_backward(const T l[D], const T V[D][D], const T gl[D],
                                         const T gV[D][D], T gB[D][D]) {
  T M[D][D];
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      T acc = T(0);
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += V[k][i] * gV[k][j];
      const T gap = l[j] - l[i];
      const auto tie = gap == T(0);
      M[i][j] = (i == j) ? gl[i] : pr_where(tie, T(0), acc / pr_where(tie, T(1), gap));
    }
  // sym(V M V^T) = V sym(M) V^T
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i + 1; j < D; ++j) {
      const T s = T(0.5) * (M[i][j] + M[j][i]);
      M[i][j] = s;
      M[j][i] = s;
    }
  from_eigenbasis<D, T>(V, M, gB);
}

}  // namespace probreg

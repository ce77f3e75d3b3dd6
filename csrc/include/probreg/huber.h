// Per-target negative log-likelihood of the L2 multivariate Huber distribution and of
// the ablation families (paper eq. 6, 11-13), and its exact gradient. Torch-free,
// branch-free in the value type T (scalars for CUDA / the CPU fallback, Lanes for the
// CPU SIMD path); the family, covariance structure and dimension are compile-time.
//
// One target: location loc (v or mu, d values), covariance parameters, target y (d):
//   full       raw packed B (P values, packed.h) -> B = V diag(l) V^T, A = V diag(g(l)) V^T
//   diagonal   raw diagonal b (d values)         -> A = diag(g(b))
//   identity   nothing                           -> A = I
// Residual r = A y - v ("v" parameterisation) or r = A (y - mu) ("mu"); s = ||r||.
// Loss (without the constant log c_d, added by the caller):
//   L = -log|A| + rho(s),   -log|A| = -sum_i log g(l_i) in the eigenbasis (never the
//   log-determinant of a reconstructed A, which underflows for l << -theta).
// Families: huber  rho = s^2/2 (s <= delta), delta (s - delta/2) (s > delta)
//           gauss  s^2/2;  laplace  s;  charbonnier  sqrt(s^2 + 1) - 1.
//
// Everything is evaluated in the eigenbasis of A: with q = V^T z (z = y or y - mu),
// p = V^T r = g o q - V^T v (v) or g o q (mu), and s = ||p||.
//
// Gradient (upstream gradient go per target, u = p / s, t = go rho'(s) u):
//   dL/dv  = -V t                      (v)      dL/dmu = -V (g o t)          (mu)
//   dL/dy  =  V (g o t)                (both)
//   dL/dB  =  V M V^T, M = sym(t q^T) o K - go diag(g'(l)/g(l)),
// K the divided differences of g (spectral.h). The -log|A| term enters directly in the
// eigenbasis as -go g'(l)/g(l) = -go / max(l, theta), which is finite for every l: the
// route through dL/dA = -A^{-1} would overflow where g underflows. Only the rho term
// goes through the Daleckii-Krein divided differences.
//
// Non-differentiable points: laplace at s = 0 uses the subgradient 0 (rho' = 0). Items
// whose upstream gradient is exactly 0 get exactly 0 gradients, even when their inputs
// are NaN/Inf (masked targets cost nothing).
//
// Overflow: s is computed with scaling (finite for every finite residual), rho and rho'
// are linear or bounded in s for huber / laplace / charbonnier, so the Huber family's
// gradient is bounded as paper appendix C proves (|dL/dpred| <= min(s, delta) *
// sqrt(1 + |y|^2) + sqrt(d) / theta in the v parameterisation).
#pragma once

#include "lanes.h"  // the SIMD overloads below (host only; empty under nvcc)
#include "macros.h"
#include "packed.h"
#include "spectral.h"

namespace probreg {

// Integer codes shared with the Python API (probreg/nll.py) and the op schemas.
enum NllFamily : int { kFamilyHuber = 0, kFamilyGauss = 1, kFamilyLaplace = 2, kFamilyCharbonnier = 3 };
enum NllCovariance : int { kCovarianceIdentity = 0, kCovarianceDiagonal = 1, kCovarianceFull = 2 };

// Number of covariance parameters per target and the pred row width.
template <int D, int Cov>
struct NllLayout {
  static constexpr int cov_params = Cov == kCovarianceFull ? Packed<D>::P : (Cov == kCovarianceDiagonal ? D : 0);
  static constexpr int width = D + cov_params;
};

// 2^k for x in [2^k, 2^(k+1)), and inv = 2^-k: POSITIVE NORMAL x <= 1/MinNormal (2^1022
// in double, 2^126 in float) only, where both are normal. Bit operations, exact.
PROBREG_HOST_DEVICE double pow2_floor(double x, double& inv) {
  const unsigned long long bits = pr_bit_cast<unsigned long long>(x) & 0x7ff0000000000000ULL;
  inv = pr_bit_cast<double>(0x7fe0000000000000ULL - bits);
  return pr_bit_cast<double>(bits);
}
PROBREG_HOST_DEVICE float pow2_floor(float x, float& inv) {
  const unsigned int bits = pr_bit_cast<unsigned int>(x) & 0x7f800000U;
  inv = pr_bit_cast<float>(0x7f000000U - bits);
  return pr_bit_cast<float>(bits);
}
#if defined(PROBREG_HAVE_LANES)
PROBREG_LANES_INLINE Lanes pow2_floor(Lanes x, Lanes& inv) {
  using namespace lanes_detail;
  const LaneBits bits = to_bits(x.v) & 0x7ff0000000000000LL;
  inv = Lanes(from_bits(0x7fe0000000000000LL - bits));
  return Lanes(from_bits(bits));
}
#endif

// s = ||p||_2 with scaling by a power of two near max|p_i| (exact both ways: no overflow or
// underflow of the squares for any finite p; the scale is clamped to [MinNormal,
// 1/MinNormal] so that it and its reciprocal are normal), and the unit direction u = p / s
// computed from the scaled components (never 1/s, which overflows for subnormal s); u = 0
// where p = 0. NaN in, NaN out. No division.
template <int D, typename T>
PROBREG_HOST_DEVICE T norm_and_direction(const T p[D], T u[D]) {
  T m = T(0);
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) m = pr_max(m, pr_abs(p[i]));
  const T clamped = pr_min(pr_max(m, T(MinNormal<T>::value)), T(1.0 / MinNormal<T>::value));
  T inv;
  const T unit = pow2_floor(pr_where(m > T(0), clamped, T(1)), inv);
  T ss = T(0);
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) {
    u[i] = p[i] * inv;
    ss += u[i] * u[i];
  }
  // max|u_i| in [1, 2) (in [1, 4) where max|p_i| > 1/MinNormal), so ss in [1, 16 D) up to
  // rounding; >= 2^-104 for subnormal p (double; 2^-46 in float); 0 only for p = 0: a
  // normal number for the reciprocal square root.
  const T inv_root = pr_rsqrt(pr_where(ss > T(0), ss, T(1)));
  const T root = ss * inv_root;
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) u[i] *= inv_root;
  return unit * root;
}

// s = ||p||_2 alone (the unused direction is optimised away).
template <int D, typename T>
PROBREG_HOST_DEVICE T scaled_norm(const T p[D]) {
  T u[D];
  return norm_and_direction<D, T>(p, u);
}

// Beyond this radius sqrt(s^2 + 1) == s to double precision: the Charbonnier family
// switches to its asymptotic form there (so s^2 never overflows).
template <typename T>
PROBREG_HOST_DEVICE T charbonnier_far() {
  return T(1e8);
}

// rho(s), s >= 0.
template <int F, typename T>
PROBREG_HOST_DEVICE T family_rho(T s, T delta) {
  if constexpr (F == kFamilyHuber) {
    const auto inside = s <= delta;
    const T si = pr_where(inside, s, T(0));  // the unselected square never overflows
    return pr_where(inside, T(0.5) * si * si, delta * (s - T(0.5) * delta));
  } else if constexpr (F == kFamilyGauss) {
    return T(0.5) * s * s;
  } else if constexpr (F == kFamilyLaplace) {
    return s;
  } else {
    static_assert(F == kFamilyCharbonnier, "unknown family");
    // sqrt(s^2 + 1) - 1 = s^2 / (sqrt(s^2 + 1) + 1): no cancellation at small s.
    const auto near = s < charbonnier_far<T>();
    const T sc = pr_min(s, charbonnier_far<T>());
    return pr_where(near, sc * sc / (pr_sqrt(sc * sc + T(1)) + T(1)), s - T(1));
  }
}

// rho'(s), s >= 0 (laplace: the subgradient 0 at s = 0). The gradient w.r.t. the
// residual is rho'(s) u with u = r / s (norm_and_direction).
template <int F, typename T>
PROBREG_HOST_DEVICE T family_rho_prime(T s, T delta) {
  if constexpr (F == kFamilyHuber) {
    return pr_min(s, delta);
  } else if constexpr (F == kFamilyGauss) {
    return s;
  } else if constexpr (F == kFamilyLaplace) {
    return pr_where(s > T(0), T(1), T(0));
  } else {
    static_assert(F == kFamilyCharbonnier, "unknown family");
    const auto near = s < charbonnier_far<T>();
    const T sc = pr_min(s, charbonnier_far<T>());
    return pr_where(near, sc / pr_sqrt(sc * sc + T(1)), T(1));
  }
}

// ---------------------------------------------------------------- log-determinant
// x = m 2^e with m in [1/2, 1), for POSITIVE NORMAL x: returns m and adds e to e_sum.
// Bit operations on the exponent field (no libm, no subnormal case: sum_log_normal's
// inputs are >= theta, which the ops require to be normal). Other x give a finite m and
// a meaningless e (callers propagate NaN separately).
PROBREG_HOST_DEVICE double normal_mantissa(double x, int& e_sum) {
  const unsigned long long bits = pr_bit_cast<unsigned long long>(x);
  e_sum += int(bits >> 52) - 1022;
  return pr_bit_cast<double>((bits & 0x000fffffffffffffULL) | 0x3fe0000000000000ULL);
}
PROBREG_HOST_DEVICE float normal_mantissa(float x, int& e_sum) {
  const unsigned int bits = pr_bit_cast<unsigned int>(x);
  e_sum += int(bits >> 23) - 126;
  return pr_bit_cast<float>((bits & 0x007fffffU) | 0x3f000000U);
}
// The SIMD lanes' form: x = m 2^e (x > 0 finite, subnormal included); returns m, writes
// e as a Lanes value.
#if defined(PROBREG_HAVE_LANES)
PROBREG_LANES_INLINE Lanes split_exponent(Lanes x, Lanes& e) {
  using namespace lanes_detail;
  const LaneBits is_sub = x.v < 2.2250738585072014e-308;
  const LaneVec xs = is_sub ? x.v * 18014398509481984.0 : x.v;  // * 2^54
  const LaneBits bits = to_bits(xs);
  LaneBits k = ((bits >> 52) & 0x7ff) - 1022;
  k = is_sub ? k - 54 : k;
  // double(k) exactly (|k| < 2^51) as whole vectors: 1.5 * 2^52 + k as bits, minus 1.5 * 2^52.
  const LaneVec magic = LaneVec{} + 6755399441055744.0;
  e = Lanes(from_bits(to_bits(magic) + k) - magic);
  return Lanes(from_bits((bits & 0x000fffffffffffffLL) | 0x3fe0000000000000LL));
}
#endif

// 2/k for odd k = 25, 23, ..., 1: log_near_one's coefficients (a table for scalar double:
// macros.h PROBREG_DOUBLE_TABLE).
PROBREG_DOUBLE_TABLE(kTwoOverOdd, {2.0 / 25, 2.0 / 23, 2.0 / 21, 2.0 / 19, 2.0 / 17, 2.0 / 15, 2.0 / 13, 2.0 / 11,
                                   2.0 / 9, 2.0 / 7, 2.0 / 5, 2.0 / 3, 2.0 / 1});

// log(f) for f in [sqrt(1/2), sqrt(2)): 2 atanh(s), s = (f - 1)/(f + 1), |s| <= 0.1716,
// by its odd series: to s^25 in double (truncation < 1e-20 relative), to s^15 for a double
// result rounded to float (< 2e-14: -log|A| of float32 inputs), s^9 in float. Out:
// series_precision (macros.h).
template <typename T, typename Out = T>
PROBREG_HOST_DEVICE T log_near_one(T f) {
  constexpr int tops[] = {9, 15, 25};
  constexpr int top = tops[series_precision<T, Out>()];
  const T s = (f - T(1)) * pr_recip(f + T(1));
  const T s2 = s * s;
  T p;
  if constexpr (std::is_same_v<T, double>) {
    p = polynomial_lowest<(top + 1) / 2>(s2, PROBREG_TABLE(kTwoOverOdd));  // the same Horner steps
  } else {
    p = T(2.0 / top);
    PROBREG_UNROLL_POLYNOMIAL
    for (int k = top - 2; k >= 1; k -= 2) p = pr_fma(p, s2, T(2.0 / k));
  }
  return p * s;
}

// sum_j log x_j for positive normal x_j (the SIMD lanes: positive finite, subnormal
// included) with ONE logarithm: log(prod m_j) + (sum e_j) ln 2, x_j = m_j 2^e_j,
// prod m_j in [2^-D, 1) (no overflow or underflow at any scale), split once more to f in
// [sqrt(1/2), sqrt(2)) for log_near_one (no libm log). Scalars sum the exponents as ints.
template <int D, typename T, typename Out = T>
PROBREG_HOST_DEVICE T sum_log_normal(const T x[D]) {
  T prod = T(1), f, esum;
  if constexpr (std::is_floating_point_v<T>) {
    int e = 0;
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) prod *= normal_mantissa(x[j], e);
    f = normal_mantissa(prod, e);  // [1/2, 1)
    esum = T(e);
  } else {
    esum = T(0);
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      T e;
      prod *= split_exponent(x[j], e);
      esum += e;
    }
    T e;
    f = split_exponent(prod, e);  // [1/2, 1)
    esum += e;
  }
  const auto low = f < T(0.70710678118654752440);
  esum = pr_where(low, esum - T(1), esum);
  // ln 2 split in two (Cody-Waite) so that esum * ln2 is exact to double rounding.
  return (log_near_one<T, Out>(pr_where(low, f * T(2), f)) + esum * T(1.90821492927058770002e-10)) +
         esum * T(6.93147180369123816490e-01);
}

// -log|A| = -sum_j log g(l_j), with log g(l) = log max(l, theta) + min(l/theta - 1, 0)
// (equal to log l above theta and l/theta - 1 + log theta below): one logarithm per
// matrix instead of one per eigenvalue. NaN eigenvalues propagate (the 0 * l term). The
// logarithm's series goes as far as theta's Out needs (log_near_one). theta normal (the
// ops' check_theta), so every max(l, theta) is.
template <int D, typename T, typename Out>
PROBREG_HOST_DEVICE T neg_log_det_remap(const T l[D], const Theta<T, Out>& theta) {
  T x[D];
  T rest = T(0);
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    x[j] = pr_max(l[j], theta.value);
    rest += remap_exponent(l[j], theta) + T(0) * l[j];
  }
  return -(sum_log_normal<D, T, Out>(x) + rest);
}
template <int D, typename T>
PROBREG_HOST_DEVICE T neg_log_det_remap(const T l[D], T theta) {
  return neg_log_det_remap<D>(l, Theta<T>(theta));
}

// d log g(l) / dl = g'(l) / g(l) = 1/l (l > theta), 1/theta otherwise: finite everywhere,
// in T. Mixed types (T = float, L = double): the reciprocal of l rounded to T (within two
// ulps of T; this term enters only the gradient, which is rounded to T), not a double
// reciprocal.
template <typename T, typename L, typename Out>
PROBREG_HOST_DEVICE T remap_log_g_prime(L l, const Theta<L, Out>& theta) {
  const auto linear = l > theta.value;
  return pr_where(linear, pr_recip(pr_where(linear, T(l), T(1))), T(theta.inv));
}

// Exactly 0 where the upstream gradient is 0 (masked items), x elsewhere.
template <typename T>
PROBREG_HOST_DEVICE T masked_grad(T go, T x) {
  return pr_where(go == T(0), T(0), x);
}

// ---------------------------------------------------------------- full covariance
// The eigenbasis residual p = g o (V^T z) - V^T v reads z = y - loc and v = 0 (mu
// parameterisation), or z = y and v = loc (v). Both parameterisations run the same
// arithmetic on selected values (x - 0 is x exactly, and V^T 0 = 0 for finite V), so a
// kernel holds one copy of it: from `mu_param ? g q : g q - V^T loc` the compiler hoisted
// the branch out of the kernels' loops and duplicated everything after it (about 90
// instructions of each d = 3 huber_nll kernel). The d = 2 reflection form keeps its
// conditional expressions, which compile to fewer instructions there.
template <int D, typename T>
PROBREG_HOST_DEVICE void eigenbasis_residual_inputs(const T loc[D], const T y[D], bool mu_param, T z[D], T v[D]) {
  PROBREG_UNROLL
  for (int k = 0; k < D; ++k) {
    z[k] = y[k] - pr_where(mu_param, loc[k], T(0));
    v[k] = pr_where(mu_param, T(0), loc[k]);
  }
}

// Forward from the eigen-decomposition (l, V columns; any order of the pairs) of B. Eigenvalues and
// theta in L, the rest in T (L = T except the float32 paths, spectral.h). Out (here and
// below): the type the results are rounded to (spectral.h Theta).
template <int D, int F, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE T huber_nll_full_eig(const L l[D], const T V[D][D], const T loc[D], const T y[D],
                                         T delta, ThetaParam<L> theta_value, bool mu_param) {
  const Theta<L, Out> theta(theta_value);
  T z[D], v[D];
  eigenbasis_residual_inputs<D>(loc, y, mu_param, z, v);
  T p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    T q = T(0), vj = T(0);
    PROBREG_UNROLL
    for (int k = 0; k < D; ++k) {
      q += V[k][j] * z[k];
      vj += V[k][j] * v[k];
    }
    const T g = remap_g<L, T>(l[j], theta);
    p[j] = g * q - vj;
  }
  return T(neg_log_det_remap<D>(l, theta)) + family_rho<F>(scaled_norm<D>(p), delta);
}

// Backward from the eigen-decomposition of B (l ascending: ordered divided differences):
// gradients w.r.t. loc (D), the symmetric B (D x D) and y (D), scaled by the upstream
// gradient go.
template <int D, int F, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void huber_nll_full_backward_eig(const L l[D], const T V[D][D], const T loc[D],
                                                     const T y[D], T go, T delta, ThetaParam<L> theta_value,
                                                     bool mu_param, T grad_loc[D], T grad_B[D][D], T grad_y[D]) {
  const Theta<L, Out> theta(theta_value);
  T z[D], v[D];
  eigenbasis_residual_inputs<D>(loc, y, mu_param, z, v);
  T h[D], e[D], g[D], q[D], p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    T qj = T(0), vj = T(0);
    PROBREG_UNROLL
    for (int k = 0; k < D; ++k) {
      qj += V[k][j] * z[k];
      vj += V[k][j] * v[k];
    }
    h[j] = remap_half_exp_factor<T>(l[j], theta);
    e[j] = h[j] * h[j];
    g[j] = remap_g_from(l[j], e[j], theta);
    q[j] = qj;
    p[j] = g[j] * qj - vj;
  }
  T u[D];
  const T c = go * family_rho_prime<F>(norm_and_direction<D>(p, u), delta);
  T t[D], gt[D], lt[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    t[j] = c * u[j];
    gt[j] = g[j] * t[j];
    lt[j] = pr_where(mu_param, gt[j], t[j]);  // a select, not a branch (see above)
  }
  // Rotate back: grad_y = V (g o t); grad_loc = -V t (v) or -grad_y (mu).
  PROBREG_UNROLL
  for (int k = 0; k < D; ++k) {
    T a = T(0), b = T(0);
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      a += V[k][j] * gt[j];
      b += V[k][j] * lt[j];
    }
    grad_y[k] = masked_grad(go, a);
    grad_loc[k] = masked_grad(go, -b);
  }
  // M = sym(t q^T) o K - go diag(g'/g), then grad_B = V M V^T.
  T M[D][D];
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i; j < D; ++j) {
      if (i == j) {
        M[i][i] = t[i] * q[i] * remap_g_prime_from(l[i], e[i], theta) - go * remap_log_g_prime<T>(l[i], theta);
      } else {
        const T kij = remap_divided_difference_ordered(l[i], l[j], h[i], h[j], theta);
        M[i][j] = T(0.5) * (t[i] * q[j] + q[i] * t[j]) * kij;
        M[j][i] = M[i][j];
      }
    }
  T back[D][D];
  from_eigenbasis<D, T>(V, M, back);
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) grad_B[i][j] = masked_grad(go, back[i][j]);
}

// Pieces of the d = 2 reflection-frame loss below: out = A x for A = a_mean I + a_half N.
template <typename T>
PROBREG_HOST_DEVICE void reflection_apply(T a_mean, T a_half, const T N[2][2], const T x[2], T out[2]) {
  PROBREG_UNROLL
  for (int k = 0; k < 2; ++k) out[k] = a_mean * x[k] + a_half * (N[k][0] * x[0] + N[k][1] * x[1]);
}

// z = y - loc (mu) or y (v), and the residual r = A z - loc (v) or A z (mu).
template <typename T>
PROBREG_HOST_DEVICE void reflection_residual(T a_mean, T a_half, const T N[2][2], const T loc[2], const T y[2],
                                             bool mu_param, T z[2], T r[2]) {
  PROBREG_UNROLL
  for (int k = 0; k < 2; ++k) z[k] = mu_param ? y[k] - loc[k] : y[k];
  reflection_apply(a_mean, a_half, N, z, r);
  PROBREG_UNROLL
  for (int k = 0; k < 2; ++k) r[k] = mu_param ? r[k] : r[k] - loc[k];
}

// The d = 2 forward and backward from the reflection frame (l, N) of symeig2_reflection
// (symeig.h) instead of eigenvectors: A = a_mean I + a_half N, a_mean = (g_hi + g_lo)/2,
// a_half = (g_hi - g_lo)/2, and the residual is formed in the input frame, r = A z - v (v)
// or A z (mu); s = ||r|| equals ||p|| of the eigenbasis form (p = V^T r). Gradient with
// t = go rho'(s) r/s: dL/dv = -t, dL/dy = A t (dL/dmu = -A t), and dL/dB = the reflection
// backward (spectral.h) of G = sym(t z^T) minus go (c_mean I + c_half N), c = g'/g of
// the two eigenvalues (the -log|A| term, V diag(c) V^T on the frame). Rounding: A's small
// eigenvalue enters as a_mean - a_half, so r carries an absolute error of about
// eps g_hi |z|, the order of the eigenbasis form's (whose rotated q = V^T z carries
// eps |z|, times g_hi).
template <int F, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE T huber_nll_full_reflection(const L l[2], const T N[2][2], const T loc[2], const T y[2],
                                                T delta, ThetaParam<L> theta_value, bool mu_param) {
  const Theta<L, Out> theta(theta_value);
  const T g_lo = remap_g<L, T>(l[0], theta), g_hi = remap_g<L, T>(l[1], theta);
  const T a_mean = T(0.5) * (g_hi + g_lo), a_half = T(0.5) * (g_hi - g_lo);
  T z[2], r[2];
  reflection_residual(a_mean, a_half, N, loc, y, mu_param, z, r);
  return T(neg_log_det_remap<2>(l, theta)) + family_rho<F>(scaled_norm<2>(r), delta);
}

template <int F, typename T, typename L = T, typename Out = T>
PROBREG_HOST_DEVICE void huber_nll_full_backward_reflection(const L l[2], const T N[2][2], const T loc[2],
                                                            const T y[2], T go, T delta, ThetaParam<L> theta_value,
                                                            bool mu_param, T grad_loc[2], T grad_B[2][2],
                                                            T grad_y[2]) {
  const Theta<L, Out> theta(theta_value);
  const T h_lo = remap_half_exp_factor<T>(l[0], theta), h_hi = remap_half_exp_factor<T>(l[1], theta);
  const T g_lo = remap_g_from(l[0], h_lo * h_lo, theta), g_hi = remap_g_from(l[1], h_hi * h_hi, theta);
  const T a_mean = T(0.5) * (g_hi + g_lo), a_half = T(0.5) * (g_hi - g_lo);
  T z[2], r[2];
  reflection_residual(a_mean, a_half, N, loc, y, mu_param, z, r);
  T t[2];
  const T c = go * family_rho_prime<F>(norm_and_direction<2>(r, t), delta);
  PROBREG_UNROLL
  for (int k = 0; k < 2; ++k) t[k] *= c;
  T at[2];
  reflection_apply(a_mean, a_half, N, t, at);
  PROBREG_UNROLL
  for (int k = 0; k < 2; ++k) {
    grad_y[k] = masked_grad(go, at[k]);
    grad_loc[k] = masked_grad(go, -(mu_param ? at[k] : t[k]));
  }
  T G[2][2], back[2][2];
  G[0][0] = t[0] * z[0];
  G[1][1] = t[1] * z[1];
  G[0][1] = T(0.5) * (t[0] * z[1] + t[1] * z[0]);
  G[1][0] = G[0][1];
  reflection_backward_from<T, L>(l, h_lo, h_hi, N, G, theta, back);
  const T c_lo = remap_log_g_prime<T>(l[0], theta), c_hi = remap_log_g_prime<T>(l[1], theta);
  const T c_mean = go * T(0.5) * (c_hi + c_lo), c_half = go * T(0.5) * (c_hi - c_lo);
  PROBREG_UNROLL
  for (int i = 0; i < 2; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 2; ++j)
      grad_B[i][j] = masked_grad(go, back[i][j] - (c_half * N[i][j] + (i == j ? c_mean : T(0))));
}

// Forward / backward from a decomposition (l, F): F the reflection frame N where
// Reflection (d = 2 only), else the eigenvectors V.
template <int D, int F, bool Reflection, typename T, typename L, typename Out = T>
PROBREG_HOST_DEVICE T huber_nll_full_frame(const L l[D], const T frame[D][D], const T loc[D], const T y[D], T delta,
                                           ThetaParam<L> theta, bool mu_param) {
  if constexpr (Reflection) {
    static_assert(D == 2, "the reflection frame is 2x2");
    return huber_nll_full_reflection<F, T, L, Out>(l, frame, loc, y, delta, theta, mu_param);
  } else {
    return huber_nll_full_eig<D, F, T, L, Out>(l, frame, loc, y, delta, theta, mu_param);
  }
}

template <int D, int F, bool Reflection, typename T, typename L, typename Out = T>
PROBREG_HOST_DEVICE void huber_nll_full_backward_frame(const L l[D], const T frame[D][D], const T loc[D],
                                                       const T y[D], T go, T delta, ThetaParam<L> theta, bool mu_param,
                                                       T grad_loc[D], T grad_B[D][D], T grad_y[D]) {
  if constexpr (Reflection) {
    static_assert(D == 2, "the reflection frame is 2x2");
    huber_nll_full_backward_reflection<F, T, L, Out>(l, frame, loc, y, go, delta, theta, mu_param, grad_loc, grad_B,
                                                     grad_y);
  } else {
    huber_nll_full_backward_eig<D, F, T, L, Out>(l, frame, loc, y, go, delta, theta, mu_param, grad_loc, grad_B,
                                                 grad_y);
  }
}

// ---------------------------------------------------------------- diagonal covariance
// b: the D raw diagonal values, A = diag(g(b)).
template <int D, int F, typename T>
PROBREG_HOST_DEVICE T huber_nll_diagonal(const T b[D], const T loc[D], const T y[D], T delta, ThetaParam<T> theta_value,
                                         bool mu_param) {
  const Theta<T> theta(theta_value);
  T p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    const T g = remap_g(b[j], theta);
    p[j] = mu_param ? g * (y[j] - loc[j]) : g * y[j] - loc[j];
  }
  return neg_log_det_remap<D>(b, theta) + family_rho<F>(scaled_norm<D>(p), delta);
}

template <int D, int F, typename T>
PROBREG_HOST_DEVICE void huber_nll_diagonal_backward(const T b[D], const T loc[D], const T y[D], T go,
                                                     T delta, ThetaParam<T> theta_value, bool mu_param, T grad_loc[D],
                                                     T grad_b[D], T grad_y[D]) {
  const Theta<T> theta(theta_value);
  T e[D], g[D], z[D], p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    e[j] = remap_exp_factor<T>(b[j], theta);
    g[j] = remap_g_from(b[j], e[j], theta);
    z[j] = mu_param ? y[j] - loc[j] : y[j];
    p[j] = mu_param ? g[j] * z[j] : g[j] * z[j] - loc[j];
  }
  T u[D];
  const T c = go * family_rho_prime<F>(norm_and_direction<D>(p, u), delta);
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    const T t = c * u[j];
    const T gt = g[j] * t;
    grad_y[j] = masked_grad(go, gt);
    grad_loc[j] = masked_grad(go, -(mu_param ? gt : t));
    grad_b[j] = masked_grad(go, t * z[j] * remap_g_prime_from(b[j], e[j], theta) -
                                    go * remap_log_g_prime<T>(b[j], theta) + T(0) * b[j]);  // NaN b -> NaN
  }
}

// ---------------------------------------------------------------- identity covariance
// A = I: both parameterisations give r = y - loc.
template <int D, int F, typename T>
PROBREG_HOST_DEVICE T huber_nll_identity(const T loc[D], const T y[D], T delta) {
  T p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) p[j] = y[j] - loc[j];
  return family_rho<F>(scaled_norm<D>(p), delta);
}

template <int D, int F, typename T>
PROBREG_HOST_DEVICE void huber_nll_identity_backward(const T loc[D], const T y[D], T go, T delta,
                                                     T grad_loc[D], T grad_y[D]) {
  T p[D];
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) p[j] = y[j] - loc[j];
  T u[D];
  const T c = go * family_rho_prime<F>(norm_and_direction<D>(p, u), delta);
  PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    grad_y[j] = masked_grad(go, c * u[j]);
    grad_loc[j] = masked_grad(go, -c * u[j]);
  }
}

// ---------------------------------------------------------------- scalar conveniences
// Whole-row forward / backward for scalar types (CUDA kernels): pred row of
// NllLayout<D, Cov>::width values (loc then the covariance parameters) and target y (D),
// in the value type T (which holds the storage type exactly: the CUDA kernels' Compute).
// The full covariance decomposes the packed B in L (symeig_frame_split) and computes the
// rest in T (T = float with L = double on the CUDA float32 path): loc, y and the
// gradients never pass through L. The other structures compute in L and round their
// results to T (the storage type's precision, which the kernels store).
// The CPU loop calls the pieces above directly so that its SIMD lanes can fall back to
// the scalar path when the eigen-decomposition needs it (cpu_loop.h decompose).

// The N values x (From) as To.
template <int N, typename From, typename To>
PROBREG_HOST_DEVICE void convert_row(const From x[N], To out[N]) {
  PROBREG_UNROLL
  for (int k = 0; k < N; ++k) out[k] = To(x[k]);
}

// Full-covariance row (loc, packed B) -> eigenvalues l (L) and the frame (V, or N at
// d = 2 under the mixed policy; T). kAscending false: eigenpairs possibly unsorted
// (symeig_mixed), for the forward, whose loss is symmetric in them; the backward's
// divided differences take ordered pairs (sorting V costs fewer instructions than
// ordering each pair by selects, which keeps the pairs from sharing l[0]'s terms).
template <int D, typename T, typename L, bool kAscending = true>
PROBREG_HOST_DEVICE void decompose_full_row(const T pred[D + Packed<D>::P], L l[D], T V[D][D]) {
  L raw[Packed<D>::P], B[D][D];
  convert_row<Packed<D>::P>(pred + D, raw);
  unpack_symmetric<D, L>(raw, B);
  symeig_frame_split<D, T, L, kAscending>(B, l, V);
}

template <int D, int F, int Cov, typename T, typename L = T>
PROBREG_HOST_DEVICE L huber_nll_row(const T pred[NllLayout<D, Cov>::width], const T y[D], L delta, ThetaParam<L> theta,
                                    bool mu_param) {
  if constexpr (Cov == kCovarianceFull) {
    L l[D];
    T V[D][D];
    decompose_full_row<D, T, L, false>(pred, l, V);
    return L(huber_nll_full_frame<D, F, kSplitReflection<D, T, L>, T, L>(l, V, pred, y, T(delta), theta, mu_param));
  } else {
    L row[NllLayout<D, Cov>::width], yl[D];
    convert_row<NllLayout<D, Cov>::width>(pred, row);
    convert_row<D>(y, yl);
    if constexpr (Cov == kCovarianceDiagonal) {
      return huber_nll_diagonal<D, F, L>(row + D, row, yl, delta, theta, mu_param);
    } else {
      return huber_nll_identity<D, F, L>(row, yl, delta);
    }
  }
}

template <int D, int F, int Cov, typename T, typename L = T>
PROBREG_HOST_DEVICE void huber_nll_row_backward(const T pred[NllLayout<D, Cov>::width], const T y[D], L go,
                                                L delta, ThetaParam<L> theta, bool mu_param,
                                                T grad_pred[NllLayout<D, Cov>::width], T grad_y[D]) {
  constexpr int W = NllLayout<D, Cov>::width;
  if constexpr (Cov == kCovarianceFull) {
    L l[D];
    T V[D][D], gB[D][D];
    decompose_full_row<D, T, L>(pred, l, V);
    huber_nll_full_backward_frame<D, F, kSplitReflection<D, T, L>, T, L>(l, V, pred, y, T(go), T(delta), theta,
                                                                         mu_param, grad_pred, gB, grad_y);
    pack_symmetric_grad<D, T>(gB, grad_pred + D);
  } else {
    L row[W], yl[D], grow[W], gy[D];
    convert_row<W>(pred, row);
    convert_row<D>(y, yl);
    if constexpr (Cov == kCovarianceDiagonal) {
      huber_nll_diagonal_backward<D, F, L>(row + D, row, yl, go, delta, theta, mu_param, grow, grow + D, gy);
    } else {
      huber_nll_identity_backward<D, F, L>(row, yl, go, delta, grow, gy);
    }
    convert_row<W>(grow, grad_pred);
    convert_row<D>(gy, grad_y);
  }
}

}  // namespace probreg

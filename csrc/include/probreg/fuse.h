// Fusion of n L2 multivariate Huber estimates of one target (paper app. E), per problem:
//
//   y* = argmin_y E(y),   E(y) = sum_i w_i h_delta(||A_i y - v_i||),
//   h_delta(r) = r^2/2 (r <= delta), delta (r - delta/2) (r > delta),
//
// and its implicit gradient (papers/wibergian-learning.md eq. 9-10). Torch-free: every
// function is a PROBREG_HOST_DEVICE template instantiated by the CPU loop (T = Lanes: 8
// problems in lockstep; scalar T for tails and half types) and by the CUDA kernel (scalar
// T, one thread per problem). d = D in {1, 2, 3} is a template parameter; the number of
// estimates n is a runtime loop bound (any n >= 0, nothing is stored per estimate), so a
// problem needs O(D^2) registers whatever n is.
//
// Estimates are read through a `Terms` object supplied by the caller:
//   terms.load(i, A, v, w)   fills T A[D][D] (row-major, ANY square matrix), T v[D], T w
// for estimate 0 <= i < n in the compute type T. A zero weight removes the estimate: the
// forward zeroes its A and v before use (they may hold anything, even NaN), so ragged
// groups are padded with w = 0.
//
// Notation for one estimate at y: residual e = A y - v, r = ||e||, inside = (r <= delta),
// MM weight psi = 1 inside, delta / r outside; s = psi e (= grad_e h), q = A^T e.
//   grad E  = sum_i w_i psi_i A_i^T e_i
//   H (true Hessian) = sum_i w_i A_i^T J_i A_i,  J = I inside, (delta/r)(I - u u^T) outside
//                       (u = e / r; rank D-1 per outside term: H may be singular)
//   N (MM normal matrix) = sum_i w_i psi_i A_i^T A_i  >=  H   (the majoriser's Hessian)
// E is convex and C1 (not C2: J jumps at r = delta).
#pragma once

#include <cstdint>

#include "lanes.h"
#include "macros.h"
#include "symeig.h"

namespace probreg {

// Relative pivot floor of the d x d solves, in units of n * eps * trace(N): a pivot below
// kFusePivotRel * n * eps * trace(N) counts as zero. trace(N) = sum_i w_i psi_i ||A_i||_F^2
// bounds every eigenvalue of H and N, and n * eps * trace(N) is the size of the rounding
// error of their accumulation; the factor 100 keeps the relative error a rounding
// perturbation can cause in an accepted step below about 1%.
constexpr double kFusePivotRel = 100.0;
// Armijo constant of the energy-decrease test on a Newton/blended step.
constexpr double kFuseArmijo = 1e-4;
// Levenberg-Marquardt-style schedule of the blend parameter mu (see fuse_solve).
constexpr double kFuseMuDown = 0.25;      // after an accepted step
constexpr double kFuseMuUp = 8.0;         // after a rejected step
constexpr double kFuseMuReject = 1.0 / 64.0;  // smallest mu after a rejection
// Below this, try the pure Newton step first. Much smaller than kFuseMuReject: after a
// rejection mu decays geometrically through the blended steps (7 accepted steps) before
// Newton is tried again; snapping back to Newton at once cycles (reject Newton, accept a
// 1/64 blend, reject Newton, ...) where y* lies just inside an estimate's delta.
constexpr double kFuseMuNewton = 1e-6;
constexpr double kFuseMuSingular = 1e-12;     // smallest mu that regularises a singular H
// Machine-precision convergence (fuse_solve, test (b)): the proposed step's predicted
// decrease -grad.p is <= kFuseRoundingDecrease * eps * energy_round (FuseEval), a bound
// on E's own rounding error.
constexpr double kFuseRoundingDecrease = 8.0;

// ---- masks: bool for a scalar T, LaneMask for the CPU SIMD Lanes (lanes.h) ----
// The solver is branch-free in T: per-problem decisions are masks, state updates are
// pr_where selections, and loops run while pr_any(mask). With T = Lanes, 8 problems run in
// lockstep (each lane's results are those of its own problem: a lane whose problem has
// finished is frozen by the masks); with a scalar T it is the plain per-problem solver.
template <typename T>
using FuseMask = decltype(T(0) < T(0));

PROBREG_HOST_DEVICE bool fuse_not(bool c) { return !c; }
#if defined(PROBREG_HAVE_LANES)
inline LaneMask fuse_not(LaneMask c) { return {~c.m}; }
#endif
template <typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_true() {
  return T(0) == T(0);
}
template <typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_false() {
  return T(0) != T(0);
}
// Finite (not NaN, not +-Inf), branch-free.
template <typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_finite(T x) {
  return (x - x) == T(0);
}
template <typename M>
struct FuseSame {
  using type = M;
};
// c ? a : b per lane (a and b converted to c's mask type: bool & bool is an int).
template <typename M>
PROBREG_HOST_DEVICE M fuse_select_mask(M c, typename FuseSame<M>::type a, typename FuseSame<M>::type b) {
  return (c & a) | (fuse_not(c) & b);
}

template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_norm(const T x[D]) {
  T s(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) s += x[k] * x[k];
  return pr_sqrt(s);
}

template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_dot(const T x[D], const T y[D]) {
  T s(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) s += x[k] * y[k];
  return s;
}

// x = A^T e.
template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_at_times(const T A[D][D], const T e[D], T x[D]) {
PROBREG_UNROLL
  for (int b = 0; b < D; ++b) {
    T acc(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) acc += A[a][b] * e[a];
    x[b] = acc;
  }
}

// x = A z.
template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_a_times(const T A[D][D], const T z[D], T x[D]) {
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    T acc(0);
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) acc += A[a][b] * z[b];
    x[a] = acc;
  }
}

// One estimate evaluated at y.
template <int D, typename T>
struct FuseTerm {
  T e[D];             // residual A y - v
  T r;                // ||e||
  FuseMask<T> inside; // r <= delta (the quadratic piece; NaN r counts as outside)
  T psi;              // MM weight: 1 inside, delta / r outside
  T inv_r_outside;    // 1 / r outside, 0 inside
  T h;                // h_delta(r)
};

template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_term(const T A[D][D], const T v[D], const T y[D], T delta, FuseTerm<D, T>& t) {
  fuse_a_times<D>(A, y, t.e);
  T sq(0);
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    t.e[a] -= v[a];
    sq += t.e[a] * t.e[a];
  }
  t.r = pr_sqrt(sq);
  t.inside = t.r <= delta;
  // r = 0 is inside (delta > 0), so the unselected 1/0 never reaches a result; delta = inf
  // likewise only makes the unselected outside branch non-finite.
  const T inv_r = T(1) / t.r;
  t.psi = pr_where(t.inside, T(1), delta * inv_r);
  t.inv_r_outside = pr_where(t.inside, T(0), inv_r);
  t.h = pr_where(t.inside, T(0.5) * sq, delta * (t.r - T(0.5) * delta));
}

// Loads estimate i and zeroes it unless its weight is > 0, so that a removed estimate's
// padding (anything, even NaN) contributes exactly zero. Returns the mask w > 0 and
// accumulates `weights_ok &= (w >= 0)` (false for a negative or NaN weight).
template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE FuseMask<T> fuse_load_active(const Terms& terms, int64_t i, T A[D][D], T v[D], T& w,
                                                 FuseMask<T>& weights_ok) {
  terms.load(i, A, v, w);
  weights_ok = weights_ok & (w >= T(0));
  const FuseMask<T> active = w > T(0);
  w = pr_where(active, w, T(0));
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    v[a] = pr_where(active, v[a], T(0));
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) A[a][b] = pr_where(active, A[a][b], T(0));
  }
  return active;
}

// Everything the solver needs at one point y, accumulated in one pass over the estimates.
template <int D, typename T>
struct FuseEval {
  T energy;                 // E(y)
  T grad[D];                // grad_y E
  T grad_scale;             // sum_i ||w_i psi_i A_i^T e_i||_1: the size of the terms grad sums
  T energy_round;           // sum_i w_i psi_i r_i ||(|A_i| |y| + |v_i|)||_1: E's rounding error is
                            // a few eps times this (e_i's error is eps |A_i| |y| + eps |v_i| per
                            // component, and dh/de = psi e)
  T hess[D][D];             // true Hessian H (symmetric)
  T mm[D][D];               // MM normal matrix N (symmetric, N >= H)
  T active;                 // number of estimates with w_i > 0
  FuseMask<T> weights_ok;   // every weight is >= 0 (false for a negative or NaN weight)
};

template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_evaluate(const Terms& terms, int64_t n, const T y[D], T delta,
                                       FuseEval<D, T>& out) {
  out.energy = T(0);
  out.grad_scale = T(0);
  out.energy_round = T(0);
  out.active = T(0);
  T abs_y[D];
PROBREG_UNROLL
  for (int b = 0; b < D; ++b) abs_y[b] = pr_abs(y[b]);
  out.weights_ok = fuse_true<T>();
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    out.grad[a] = T(0);
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) {
      out.hess[a][b] = T(0);
      out.mm[a][b] = T(0);
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    T A[D][D], v[D], w;
    const FuseMask<T> active = fuse_load_active<D>(terms, i, A, v, w, out.weights_ok);
    out.active += pr_where(active, T(1), T(0));
    FuseTerm<D, T> t;
    fuse_term<D>(A, v, y, delta, t);
    T q[D], qu[D];
    fuse_at_times<D>(A, t.e, q);
    const T wpsi = w * t.psi;
    out.energy += w * t.h;
    T residual_scale(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      T acc = pr_abs(v[a]);
PROBREG_UNROLL
      for (int b = 0; b < D; ++b) acc += pr_abs(A[a][b]) * abs_y[b];
      residual_scale += acc;
    }
    out.energy_round += wpsi * t.r * residual_scale;
    T q_l1(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      out.grad[a] += wpsi * q[a];
      q_l1 += pr_abs(q[a]);
      qu[a] = q[a] * t.inv_r_outside;  // A^T u outside, 0 inside
    }
    out.grad_scale += wpsi * q_l1;
    // Outside: H_i = w psi (A^T A - (A^T u)(A^T u)^T).
PROBREG_UNROLL
    for (int a = 0; a < D; ++a)
PROBREG_UNROLL
      for (int b = a; b < D; ++b) {
        T g(0);
PROBREG_UNROLL
        for (int c = 0; c < D; ++c) g += A[c][a] * A[c][b];
        out.mm[a][b] += wpsi * g;
        out.hess[a][b] += wpsi * (g - qu[a] * qu[b]);
      }
  }
PROBREG_UNROLL
  for (int a = 0; a < D; ++a)
PROBREG_UNROLL
    for (int b = 0; b < a; ++b) {
      out.mm[a][b] = out.mm[b][a];
      out.hess[a][b] = out.hess[b][a];
    }
}

// Weights valid and energy and gradient finite.
template <int D, typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_eval_finite(const FuseEval<D, T>& e) {
  FuseMask<T> ok = e.weights_ok & fuse_finite(e.energy);
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) ok = ok & fuse_finite(e.grad[a]);
  return ok;
}

// Per-lane selection of a whole evaluation: c ? a : b.
template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_select_eval(FuseMask<T> c, const FuseEval<D, T>& a, FuseEval<D, T>& b) {
  b.energy = pr_where(c, a.energy, b.energy);
  b.grad_scale = pr_where(c, a.grad_scale, b.grad_scale);
  b.energy_round = pr_where(c, a.energy_round, b.energy_round);
  b.active = pr_where(c, a.active, b.active);
  b.weights_ok = fuse_select_mask(c, a.weights_ok, b.weights_ok);
PROBREG_UNROLL
  for (int i = 0; i < D; ++i) {
    b.grad[i] = pr_where(c, a.grad[i], b.grad[i]);
PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      b.hess[i][j] = pr_where(c, a.hess[i][j], b.hess[i][j]);
      b.mm[i][j] = pr_where(c, a.mm[i][j], b.mm[i][j]);
    }
  }
}

template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_trace(const T M[D][D]) {
  T s(0);
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) s += M[a][a];
  return s;
}

// Solves M x = b for a symmetric positive semi-definite D x D matrix M by LDL^T without
// pivoting (D <= 3), branch-free. A pivot <= `floor` counts as zero: its component of the
// solution is set to zero and its column of L dropped (for PSD M this is a consistent
// generalised inverse). Returns the mask of "every pivot exceeded floor" (M positive
// definite enough).
template <int D, typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_ldl_solve(const T M[D][D], const T b[D], T x[D], T floor) {
  T L[D][D], piv[D], inv_piv[D];
PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
PROBREG_UNROLL
    for (int j = 0; j < D; ++j) L[i][j] = T(0);
  FuseMask<T> all_ok = fuse_true<T>();
PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    T dj = M[j][j];
PROBREG_UNROLL
    for (int k = 0; k < j; ++k) dj -= L[j][k] * L[j][k] * piv[k];
    const FuseMask<T> ok = dj > floor;  // NaN counts as not ok
    all_ok = all_ok & ok;
    piv[j] = pr_where(ok, dj, T(0));
    inv_piv[j] = pr_where(ok, T(1) / dj, T(0));
PROBREG_UNROLL
    for (int i = j + 1; i < D; ++i) {
      T lij = M[i][j];
PROBREG_UNROLL
      for (int k = 0; k < j; ++k) lij -= L[i][k] * L[j][k] * piv[k];
      L[i][j] = lij * inv_piv[j];
    }
  }
  T z[D];
PROBREG_UNROLL
  for (int i = 0; i < D; ++i) {
    T acc = b[i];
PROBREG_UNROLL
    for (int k = 0; k < i; ++k) acc -= L[i][k] * z[k];
    z[i] = acc;
  }
PROBREG_UNROLL
  for (int i = 0; i < D; ++i) z[i] = z[i] * inv_piv[i];
PROBREG_UNROLL
  for (int i = D - 1; i >= 0; --i) {
    T acc = z[i];
PROBREG_UNROLL
    for (int k = i + 1; k < D; ++k) acc -= L[k][i] * x[k];
    x[i] = acc;
  }
  return all_ok;
}

// Weighted least-squares point (every estimate on its quadratic piece):
// y = (sum w A^T A)^{-1} sum w A^T v, with the guarded solve (zero components along a
// numerically singular direction). Only estimates with w > 0 count.
template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_weighted_least_squares(const Terms& terms, int64_t n, T y[D]) {
  T G[D][D], rhs[D];
  T active(0);
  FuseMask<T> weights_ok = fuse_true<T>();
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    rhs[a] = T(0);
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) G[a][b] = T(0);
  }
  for (int64_t i = 0; i < n; ++i) {
    T A[D][D], v[D], w;
    active += pr_where(fuse_load_active<D>(terms, i, A, v, w, weights_ok), T(1), T(0));
    T atv[D];
    fuse_at_times<D>(A, v, atv);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      rhs[a] += w * atv[a];
PROBREG_UNROLL
      for (int b = a; b < D; ++b) {
        T g(0);
PROBREG_UNROLL
        for (int c = 0; c < D; ++c) g += A[c][a] * A[c][b];
        G[a][b] += w * g;
      }
    }
  }
PROBREG_UNROLL
  for (int a = 0; a < D; ++a)
PROBREG_UNROLL
    for (int b = 0; b < a; ++b) G[a][b] = G[b][a];
  const T floor = T(kFusePivotRel) * active * T(Eps<T>::value) * fuse_trace<D>(G);
  fuse_ldl_solve<D>(G, rhs, y, floor);
}

// Step p solving (H + mu (N - H)) p = -grad. mu = 0: Newton; mu = 1: MM (p = N^{-1}(b) - y,
// the minimiser of the quadratic majoriser, which never increases E). Returns whether the
// blended matrix was positive definite enough (every pivot above the floor).
template <int D, typename T>
PROBREG_HOST_DEVICE FuseMask<T> fuse_blended_step(const FuseEval<D, T>& ev, T mu, T floor, T p[D]) {
  T M[D][D], rhs[D];
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    rhs[a] = -ev.grad[a];
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) M[a][b] = ev.hess[a][b] + mu * (ev.mm[a][b] - ev.hess[a][b]);
  }
  return fuse_ldl_solve<D>(M, rhs, p, floor);
}

// The step the solver proposes at `ev` for the blend parameter `mu`: the pure Newton step
// when mu < kFuseMuNewton and H is positive definite enough; otherwise the blended step,
// with mu raised (x kFuseMuUp, from at least kFuseMuSingular) until the blended matrix is
// positive definite enough or mu = 1 (MM). Returns the mu used; `newton_ok` receives whether
// H itself is positive definite enough.
template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_propose(const FuseEval<D, T>& ev, T mu, T floor, T p[D], FuseMask<T>& newton_ok) {
  newton_ok = fuse_blended_step<D>(ev, T(0), floor, p);
  const FuseMask<T> try_newton = mu < T(kFuseMuNewton);
  const FuseMask<T> use_newton = try_newton & newton_ok;
  T mu_cur = pr_where(use_newton, T(0), pr_where(try_newton, pr_max(mu, T(kFuseMuSingular)), mu));
  FuseMask<T> need = fuse_not(use_newton);
  while (pr_any(need)) {
    T pm[D];
    const FuseMask<T> ok = fuse_blended_step<D>(ev, mu_cur, floor, pm);
    const FuseMask<T> take = need & (ok | (mu_cur >= T(1)));
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) p[a] = pr_where(take, pm[a], p[a]);
    need = need & fuse_not(take);
    mu_cur = pr_where(need, pr_min(T(1), mu_cur * T(kFuseMuUp)), mu_cur);
  }
  return mu_cur;
}

template <int D, typename T>
struct FuseOutput {
  T y[D];
  T hess[D][D];
  T iterations;           // accepted steps (Newton, blended or MM), an integer value
  FuseMask<T> converged;
};

// Minimises E for one problem (T scalar) or for kLaneWidth problems in lockstep (T = Lanes).
//
// Start: `init` when non-null, else the weighted least-squares point.
// Iteration (a Levenberg-Marquardt-style safeguard that blends the Newton matrix H with
// the MM matrix N >= H): the step p solves (H + mu (N - H)) p = -grad E. mu = 0 is Newton
// (quadratic convergence near y*); mu = 1 is the MM step of appendix E, whose majoriser
// guarantees E does not increase. A step with mu < 1 is accepted when
// E(y + p) <= E(y) (1 + 4 eps) + 1e-4 grad.p (Armijo; the 4 eps absorbs the rounding of E);
// after an accepted step mu /= 4, after a rejected one mu = max(8 mu, 1/64) (capped at 1,
// where the step is always accepted), and the pass is spent on the new trial; the pure
// Newton step is tried whenever mu < 1e-6 (and H is positive definite enough). Where H is
// singular (e.g. all residuals outside delta in d = 1) small mu > 0 extrapolates the MM
// step by up to 1/mu, so flat directions are crossed in O(log) steps instead of MM's
// linear crawl.
// Convergence, judged on the step p proposed at y:
//  (a) p is small, ||p|| <= tol (1 + ||y||), or
//  (b) E is optimal to machine precision: p's predicted decrease -grad.p is at most
//      kFuseRoundingDecrease * eps * energy_round, a bound on the rounding error of E
//      itself, and either p is the Newton step (whose predicted decrease is E - E* to
//      second order) or the last accepted step did not lower E (stalled: progress is
//      below what E can resolve). energy_round is a worst-case bound, 10-100x the actual
//      rounding noise where |A||y| cancels in A y (y far out along a near-null direction
//      of A), so a non-Newton step needs the stall as well: an MM-like crawl along a
//      flat valley keeps lowering E by less than the bound yet far more than the noise,
//      and stopping it there would leave E 1e-8 above its minimum. (b) holds where (a)
//      cannot: along a near-null direction of H the Newton step is rounding noise
//      amplified by 1/lambda_min(H) while its effect on E is nil; and it makes tol = 0
//      mean "to machine precision" and terminate.
//  Either way p is applied (when p is not a Newton step and the Newton step passes the
//  same test with 4x the bounds, the Newton step is applied instead, so the returned y
//  is typically accurate to O(tol^2));
//  (c) where H is singular (no Newton step: flat directions, e.g. a non-unique
//      minimiser), the gradient is small relative to its terms,
//      ||grad||_2 <= tol * sum_i ||w_i psi_i A_i^T e_i||_1 (checked before a step,
//      which is then still taken).
// max_iter accepted steps at most. A slowly converging problem (MM-like progress along a
// flat valley) that meets none of the tests within max_iter reports converged = false.
// Output: y, the true Hessian of E at y, the number of accepted steps, converged.
// Invalid problems (a negative or NaN weight, or a non-finite energy/gradient anywhere
// on the way, e.g. NaN/Inf in an active v or A or init): y and hessian NaN,
// converged = false. All weights zero (or n = 0): E is identically zero and y* is
// undefined: y = NaN, hessian = 0, iterations = 0, converged = false.
template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_solve(const Terms& terms, int64_t n, T delta, const T* init, int max_iter,
                                    T tol, FuseOutput<D, T>& out) {
  using M = FuseMask<T>;
  const T nan = T(0) / T(0);  // quiet NaN (no <limits> on every device toolchain)
  const T eps = T(Eps<T>::value);
  T y[D];
  if (init != nullptr) {
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) y[a] = init[a];
  } else {
    fuse_weighted_least_squares<D>(terms, n, y);
  }
  FuseEval<D, T> ev;
  fuse_evaluate<D>(terms, n, y, delta, ev);
  const M all_zero = ev.weights_ok & (ev.active == T(0));
  M valid = fuse_eval_finite<D>(ev) & fuse_not(all_zero);
  M running = valid;
  M converged = fuse_false<T>();
  M stale = fuse_false<T>();  // y moved after ev was evaluated (the final small step)
  M stalled = fuse_false<T>();  // the last accepted step did not lower E
  T iterations(0), mu(0);
  for (;;) {
    running = running & (iterations < T(max_iter));
    if (!pr_any(running)) break;
    const T floor = T(kFusePivotRel) * ev.active * eps * fuse_trace<D>(ev.mm);
    T p[D];
    M newton_ok;
    T mu_used = fuse_propose<D>(ev, mu, floor, p, newton_ok);
    const T step_bound = tol * (T(1) + fuse_norm<D>(y));
    const T decrease_bound = T(kFuseRoundingDecrease) * eps * ev.energy_round;
    const M at_rounding = (-fuse_dot<D>(ev.grad, p) <= decrease_bound) & ((mu_used == T(0)) | stalled);
    const M small = running & ((fuse_norm<D>(p) <= step_bound) | at_rounding);
    if (pr_any(small)) {
      T p_newton[D];
      fuse_blended_step<D>(ev, T(0), floor, p_newton);
      // The Newton step replaces a (shorter, damped) blended step when it is small too
      // (within 4x the bound: it is the longer of the two near y*).
      const M swap = small & (mu_used > T(0)) & newton_ok &
                     ((fuse_norm<D>(p_newton) <= T(4) * step_bound) |
                      (-fuse_dot<D>(ev.grad, p_newton) <= T(4) * decrease_bound));
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) y[a] = pr_where(small, y[a] + pr_where(swap, p_newton[a], p[a]), y[a]);
      iterations += pr_where(small, T(1), T(0));
      converged = converged | small;
      stale = stale | small;
      running = running & fuse_not(small);
    }
    // Only where H is singular (no Newton step): elsewhere the step test is both sharper
    // and reached (a small gradient at an ill-conditioned H can leave a large error).
    const M grad_small = fuse_not(newton_ok) & (fuse_norm<D>(ev.grad) <= tol * ev.grad_scale);
    M pending = running;
    while (pr_any(pending)) {
      T cand[D], slope(0);
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) {
        cand[a] = y[a] + p[a];
        slope += ev.grad[a] * p[a];
      }
      FuseEval<D, T> trial;
      fuse_evaluate<D>(terms, n, cand, delta, trial);
      const M ok = fuse_eval_finite<D>(trial);
      const M bad = pending & fuse_not(ok);
      valid = valid & fuse_not(bad);
      running = running & fuse_not(bad);
      pending = pending & ok;
      const M accept =
          pending & ((mu_used >= T(1)) | (trial.energy <= ev.energy * (T(1) + T(4) * eps) + T(kFuseArmijo) * slope));
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) y[a] = pr_where(accept, cand[a], y[a]);
      stalled = fuse_select_mask(accept, fuse_not(trial.energy < ev.energy), stalled);
      fuse_select_eval<D>(accept, trial, ev);
      mu = pr_where(accept, mu_used * T(kFuseMuDown), mu);
      iterations += pr_where(accept, T(1), T(0));
      const M done = accept & grad_small;
      converged = converged | done;
      running = running & fuse_not(done);
      const M reject = pending & fuse_not(accept);
      pending = reject;
      if (pr_any(reject)) {
        const T mu_reject = pr_min(T(1), pr_max(T(kFuseMuReject), mu_used * T(kFuseMuUp)));
        T p_retry[D];
        M newton_ok_retry;
        const T mu_retry = fuse_propose<D>(ev, mu_reject, floor, p_retry, newton_ok_retry);
PROBREG_UNROLL
        for (int a = 0; a < D; ++a) p[a] = pr_where(reject, p_retry[a], p[a]);
        mu_used = pr_where(reject, mu_retry, mu_used);
      }
    }
  }
  // The Hessian at the returned y (one more pass where the last step was not evaluated).
  stale = stale & valid;
  if (pr_any(stale)) {
    FuseEval<D, T> last;
    fuse_evaluate<D>(terms, n, y, delta, last);
    valid = fuse_select_mask(stale, valid & fuse_eval_finite<D>(last), valid);
    fuse_select_eval<D>(stale, last, ev);
  }
  out.iterations = iterations;
  out.converged = converged & valid;
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    out.y[a] = pr_where(valid, y[a], nan);
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) out.hess[a][b] = pr_where(valid, ev.hess[a][b], pr_where(all_zero, T(0), nan));
  }
}

// Relative eigenvalue cutoff of the backward's pseudo-inverse, in units of n * eps.
constexpr double kFusePinvRel = 16.0;

// z = (H + damping I)^+ g through the eigen-decomposition of H: eigenvalues mu_k = l_k +
// damping <= kFusePinvRel * n * eps * max_k |mu_k| count as zero (torch.linalg.pinv-style
// relative cutoff). damping > 0 makes H + damping I positive definite, so this is the exact
// inverse there unless damping is itself at rounding level.
template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_damped_solve(const T H[D][D], T damping, T active, const T g[D], T z[D]) {
  T l[D], V[D][D];
  symeig<D, T>(H, l, V);
  T scale(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) scale = pr_max_nan(scale, pr_abs(l[k] + damping));
  const T cutoff = T(kFusePinvRel) * pr_max(active, T(1)) * T(Eps<T>::value) * scale;
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) z[a] = T(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) {
    const T mu = l[k] + damping;
    T proj(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) proj += V[a][k] * g[a];
    // NaN mu (non-finite H) propagates through the product; only finite small mu is cut.
    const T coef = (mu > cutoff || !(mu == mu)) ? proj / mu : T(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) z[a] += coef * V[a][k];
  }
}

// Implicit gradient at y (= y*, grad E(y*) = 0) for one problem:
//   z = (H + damping I)^{-1} grad_y   (pseudo-inverse at damping = 0, fuse_damped_solve)
//   dL/dtheta = -z^T d(grad_y E)/dtheta, per estimate i (inactive w_i = 0 included):
//   grad_v_i = w_i J_i A_i z
//   grad_A_i = -w_i (s_i z^T + (J_i A_i z) y^T)       s_i = psi_i e_i = grad_e h
//   grad_w_i = -(A_i z) . s_i                          (0 for a w_i = 0 holding non-finite values)
// with J_i = I inside, (delta/r_i)(I - u_i u_i^T) outside. `sink.store(i, gA, gv, gw)`
// receives every estimate's gradients. All weights zero (y* undefined): every gradient is
// zero. A negative or NaN weight anywhere: every gradient of the problem is NaN.
// Scalar T only (one pass plus a d x d eigen-solve: no lockstep variant needed).
template <int D, typename T, typename Terms, typename Sink>
PROBREG_HOST_DEVICE void fuse_backward(const Terms& terms, int64_t n, const T y[D], T delta, T damping,
                                       const T grad_y[D], Sink& sink) {
  FuseEval<D, T> ev;
  fuse_evaluate<D>(terms, n, y, delta, ev);
  T z[D];
  fuse_damped_solve<D>(ev.hess, damping, ev.active, grad_y, z);
  const bool undefined = ev.weights_ok && ev.active == T(0);
  const T nan = T(0) / T(0);
  for (int64_t i = 0; i < n; ++i) {
    T A[D][D], v[D], w;
    T gA[D][D], gv[D], gw(0);
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      gv[a] = T(0);
PROBREG_UNROLL
      for (int b = 0; b < D; ++b) gA[a][b] = T(0);
    }
    if (!ev.weights_ok) {
      gw = nan;
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) {
        gv[a] = nan;
PROBREG_UNROLL
        for (int b = 0; b < D; ++b) gA[a][b] = nan;
      }
    } else if (!undefined) {
      terms.load(i, A, v, w);
      FuseTerm<D, T> t;
      fuse_term<D>(A, v, y, delta, t);
      T q[D], jq[D], s[D];
      fuse_a_times<D>(A, z, q);
      T uq(0);
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) {
        s[a] = t.psi * t.e[a];
        uq += t.e[a] * q[a];
      }
      // J q = q inside; (delta/r)(q - u (u.q)) = psi (q - e (e.q) / r^2) outside.
      const T proj = uq * t.inv_r_outside * t.inv_r_outside;
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) {
        jq[a] = t.psi * (q[a] - t.e[a] * proj);
        gw -= q[a] * s[a];
      }
      // An inactive estimate (w = 0) only gets dL/dw (how adding it would move y*); 0 where
      // it holds non-finite padding.
      if (w == T(0) && !pr_isfinite(gw)) gw = T(0);
      if (w != T(0)) {
PROBREG_UNROLL
        for (int a = 0; a < D; ++a) {
          gv[a] = w * jq[a];
PROBREG_UNROLL
          for (int b = 0; b < D; ++b) gA[a][b] = -w * (s[a] * z[b] + jq[a] * y[b]);
        }
      }
    }
    sink.store(i, gA, gv, gw);
  }
}

}  // namespace probreg

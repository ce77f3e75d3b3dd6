// Fusion of n L2 multivariate Huber estimates of one target (paper app. E), per problem:
//
//   y* = argmin_y E(y),   E(y) = sum_i w_i h_delta(||A_i y - v_i||),
//   h_delta(r) = r^2/2 (r <= delta), delta (r - delta/2) (r > delta),
//
// and its implicit gradient (papers/wibergian-learning.md eq. 9-10). Torch-free: every
// function is a PROBREG_HOST_DEVICE template instantiated by the CPU loop (scalar T, one
// problem per item) and by the CUDA kernel (one thread per problem). d = D in {1, 2, 3}
// is a template parameter; the number of estimates n is a runtime loop bound (any n >= 0,
// nothing is stored per estimate), so a problem needs O(D^2) registers whatever n is.
//
// Estimates are read through a `Terms` object supplied by the caller:
//   terms.load(i, A, v, w)   fills T A[D][D] (row-major, ANY square matrix), T v[D], T w
// for estimate 0 <= i < n in the compute type T. A zero weight removes the estimate: its
// A and v are never used by the forward (they may hold anything, even NaN), so ragged
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
constexpr double kFuseMuNewton = 1.0 / 64.0;  // below this, try the pure Newton step first
constexpr double kFuseMuSingular = 1e-12;     // smallest mu that regularises a singular H

template <typename T>
PROBREG_HOST_DEVICE T huber_h(T r, T delta) {
  return r <= delta ? T(0.5) * r * r : delta * (r - T(0.5) * delta);
}

template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_norm(const T x[D]) {
  T s(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) s += x[k] * x[k];
  return pr_sqrt(s);
}

// One estimate evaluated at y.
template <int D, typename T>
struct FuseTerm {
  T e[D];   // residual A y - v
  T r;      // ||e||
  bool inside;  // r <= delta (the quadratic piece; NaN r counts as outside)
  T psi;    // MM weight: 1 inside, delta / r outside
};

template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_term(const T A[D][D], const T v[D], const T y[D], T delta,
                                   FuseTerm<D, T>& t) {
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    T acc = -v[a];
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) acc += A[a][b] * y[b];
    t.e[a] = acc;
  }
  t.r = fuse_norm<D>(t.e);
  t.inside = t.r <= delta;
  t.psi = t.inside ? T(1) : delta / t.r;
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

// Everything the solver needs at one point y, accumulated in one pass over the estimates.
template <int D, typename T>
struct FuseEval {
  T energy;         // E(y)
  T grad[D];        // grad_y E
  T grad_scale;     // sum_i ||w_i psi_i A_i^T e_i||: the size of the terms grad sums
  T hess[D][D];     // true Hessian H (symmetric)
  T mm[D][D];       // MM normal matrix N (symmetric, N >= H)
  T weight_sum;     // sum_i w_i
  int64_t active;   // number of estimates with w_i > 0
  bool weights_ok;  // every weight is >= 0 (false for a negative or NaN weight)
};

template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_evaluate(const Terms& terms, int64_t n, const T y[D], T delta,
                                       FuseEval<D, T>& out) {
  out.energy = T(0);
  out.grad_scale = T(0);
  out.weight_sum = T(0);
  out.active = 0;
  out.weights_ok = true;
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
    terms.load(i, A, v, w);
    if (!(w >= T(0))) {
      out.weights_ok = false;
      continue;
    }
    if (w == T(0)) continue;  // removed estimate: A and v are not used
    out.weight_sum += w;
    out.active += 1;
    FuseTerm<D, T> t;
    fuse_term<D>(A, v, y, delta, t);
    T q[D];
    fuse_at_times<D>(A, t.e, q);
    const T wpsi = w * t.psi;
    out.energy += w * huber_h(t.r, delta);
    out.grad_scale += wpsi * fuse_norm<D>(q);
    // Outside: H_i = w psi (A^T A - (A^T u)(A^T u)^T), A^T u = q / r.
    T qu[D];
    const T inv_r = t.inside ? T(0) : T(1) / t.r;
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      out.grad[a] += wpsi * q[a];
      qu[a] = q[a] * inv_r;
    }
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
PROBREG_HOST_DEVICE bool fuse_eval_finite(const FuseEval<D, T>& e) {
  bool ok = e.weights_ok && pr_isfinite(e.energy);
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) ok = ok && pr_isfinite(e.grad[a]);
  return ok;
}

template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_trace(const T M[D][D]) {
  T s(0);
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) s += M[a][a];
  return s;
}

// Solves M x = b for a symmetric positive semi-definite D x D matrix M by LDL^T without
// pivoting (D <= 3). A pivot <= `floor` counts as zero: its component of the solution is
// set to zero and its column of L dropped (for PSD M this is a consistent generalised
// inverse). Returns true when every pivot exceeded `floor` (M positive definite enough).
template <int D, typename T>
PROBREG_HOST_DEVICE bool fuse_ldl_solve(const T M[D][D], const T b[D], T x[D], T floor) {
  T L[D][D], piv[D];
  bool all_ok = true;
PROBREG_UNROLL
  for (int j = 0; j < D; ++j) {
    T dj = M[j][j];
PROBREG_UNROLL
    for (int k = 0; k < j; ++k) dj -= L[j][k] * L[j][k] * piv[k];
    const bool ok = dj > floor;  // NaN counts as not ok
    all_ok = all_ok && ok;
    piv[j] = ok ? dj : T(0);
    L[j][j] = T(1);
PROBREG_UNROLL
    for (int i = j + 1; i < D; ++i) {
      T lij = M[i][j];
PROBREG_UNROLL
      for (int k = 0; k < j; ++k) lij -= L[i][k] * L[j][k] * piv[k];
      L[i][j] = ok ? lij / dj : T(0);
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
  for (int i = 0; i < D; ++i) z[i] = piv[i] > T(0) ? z[i] / piv[i] : T(0);
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
// numerically singular direction). Weights < 0 or NaN are skipped here (fuse_evaluate
// reports them).
template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_weighted_least_squares(const Terms& terms, int64_t n, T y[D]) {
  T G[D][D], rhs[D];
  int64_t active = 0;
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    rhs[a] = T(0);
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) G[a][b] = T(0);
  }
  for (int64_t i = 0; i < n; ++i) {
    T A[D][D], v[D], w;
    terms.load(i, A, v, w);
    if (!(w > T(0))) continue;
    active += 1;
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
  const T floor = T(kFusePivotRel) * T(active) * T(Eps<T>::value) * fuse_trace<D>(G);
  fuse_ldl_solve<D>(G, rhs, y, floor);
}

// Step p solving (H + mu (N - H)) p = -grad. mu = 0: Newton; mu = 1: MM (p = N^{-1}(b) - y,
// the minimiser of the quadratic majoriser, which never increases E). Returns whether the
// blended matrix was positive definite enough (every pivot above the floor).
template <int D, typename T>
PROBREG_HOST_DEVICE bool fuse_blended_step(const FuseEval<D, T>& ev, T mu, T floor, T p[D]) {
  T M[D][D], rhs[D];
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    rhs[a] = -ev.grad[a];
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) M[a][b] = ev.hess[a][b] + mu * (ev.mm[a][b] - ev.hess[a][b]);
  }
  return fuse_ldl_solve<D>(M, rhs, p, floor);
}

// The step the solver proposes at `ev` for the current blend parameter `mu`: the pure
// Newton step when mu < kFuseMuNewton and H is positive definite enough; otherwise the
// blended step, with mu raised (x kFuseMuUp, from at least kFuseMuSingular) until the
// blended matrix is positive definite enough or mu = 1 (MM). Returns the mu used.
template <int D, typename T>
PROBREG_HOST_DEVICE T fuse_propose(const FuseEval<D, T>& ev, T mu, T floor, T p[D]) {
  if (mu < T(kFuseMuNewton)) {
    if (fuse_blended_step<D>(ev, T(0), floor, p)) return T(0);
    mu = pr_max(mu, T(kFuseMuSingular));
  }
  for (;;) {
    const bool ok = fuse_blended_step<D>(ev, mu, floor, p);
    if (ok || mu >= T(1)) return mu;
    mu = pr_min(T(1), mu * T(kFuseMuUp));
  }
}

template <int D, typename T>
struct FuseOutput {
  T y[D];
  T hess[D][D];
  int iterations;  // accepted steps (Newton, blended or MM)
  bool converged;
};

// Minimises E for one problem.
//
// Start: `init` when non-null, else the weighted least-squares point.
// Iteration (a Levenberg-Marquardt-style safeguard that blends the Newton matrix H with
// the MM matrix N >= H): the step p solves (H + mu (N - H)) p = -grad E. mu = 0 is Newton
// (quadratic convergence near y*); mu = 1 is the MM step of appendix E, whose majoriser
// guarantees E does not increase. A step with mu < 1 is accepted when
// E(y + p) <= E(y) (1 + 4 eps) + 1e-4 grad.p (Armijo; the 4 eps absorbs the rounding of E);
// after an accepted step mu /= 4, after a rejected one mu = max(8 mu, 1/64) (capped at 1,
// where the step is always accepted), and the pass is spent on the new trial. Where H is
// singular (e.g. all residuals outside delta in d = 1) small mu > 0 extrapolates the MM
// step by up to 1/mu, so flat directions are crossed in O(log) steps instead of MM's
// linear crawl.
// Convergence: the proposed step is small, ||p|| <= tol (1 + ||y||) (it is applied; when
// it is not a Newton step and the Newton step is also small, the Newton step is applied
// instead, so the returned y is typically accurate to O(tol^2)), or the gradient is
// small relative to its terms, ||grad|| <= tol * sum_i ||w_i psi_i A_i^T e_i|| (checked
// before a step, which is then still taken). max_iter accepted steps at most.
// Output: y, the true Hessian of E at y, the number of accepted steps, converged.
// Invalid problems (a negative or NaN weight, or a non-finite energy/gradient anywhere
// on the way, e.g. NaN/Inf in an active v or A or init): y and hessian NaN,
// converged = false. All weights zero (or n = 0): E is identically zero and y* is
// undefined: y = NaN, hessian = 0, iterations = 0, converged = false.
template <int D, typename T, typename Terms>
PROBREG_HOST_DEVICE void fuse_solve(const Terms& terms, int64_t n, T delta, const T* init,
                                    int max_iter, T tol, FuseOutput<D, T>& out) {
  const T nan = T(0) / T(0);  // quiet NaN (no <limits> on every device toolchain)
  T y[D];
  if (init != nullptr) {
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) y[a] = init[a];
  } else {
    fuse_weighted_least_squares<D>(terms, n, y);
  }
  FuseEval<D, T> ev;
  fuse_evaluate<D>(terms, n, y, delta, ev);
  out.iterations = 0;
  out.converged = false;
  if (ev.weights_ok && ev.active == 0) {  // all weights zero
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      out.y[a] = nan;
PROBREG_UNROLL
      for (int b = 0; b < D; ++b) out.hess[a][b] = T(0);
    }
    return;
  }
  bool valid = fuse_eval_finite<D>(ev);
  bool state_current = true;  // ev was evaluated at y
  T mu(0);
  const T eps = T(Eps<T>::value);
  const T slack = T(4) * eps;
  while (valid && out.iterations < max_iter) {
    const T floor = T(kFusePivotRel) * T(ev.active) * eps * fuse_trace<D>(ev.mm);
    T p[D];
    T mu_used = fuse_propose<D>(ev, mu, floor, p);
    const T step_bound = tol * (T(1) + fuse_norm<D>(y));
    if (fuse_norm<D>(p) <= step_bound) {
      if (mu_used > T(0)) {
        T p_newton[D];
        if (fuse_blended_step<D>(ev, T(0), floor, p_newton) && fuse_norm<D>(p_newton) <= step_bound) {
PROBREG_UNROLL
          for (int a = 0; a < D; ++a) p[a] = p_newton[a];
        }
      }
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) y[a] += p[a];
      out.iterations += 1;
      out.converged = true;
      state_current = false;
      break;
    }
    const bool grad_small = fuse_norm<D>(ev.grad) <= tol * ev.grad_scale;
    FuseEval<D, T> trial;
    T cand[D];
    for (;;) {
      T slope(0);
PROBREG_UNROLL
      for (int a = 0; a < D; ++a) {
        cand[a] = y[a] + p[a];
        slope += ev.grad[a] * p[a];
      }
      fuse_evaluate<D>(terms, n, cand, delta, trial);
      if (!fuse_eval_finite<D>(trial)) {
        valid = false;
        break;
      }
      if (mu_used >= T(1) || trial.energy <= ev.energy * (T(1) + slack) + T(kFuseArmijo) * slope) break;
      mu = pr_min(T(1), pr_max(T(kFuseMuReject), mu_used * T(kFuseMuUp)));
      mu_used = fuse_propose<D>(ev, mu, floor, p);
    }
    if (!valid) break;
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) y[a] = cand[a];
    ev = trial;
    mu = mu_used * T(kFuseMuDown);
    out.iterations += 1;
    if (grad_small) {
      out.converged = true;
      break;
    }
  }
  if (valid && !state_current) {
    fuse_evaluate<D>(terms, n, y, delta, ev);
    valid = fuse_eval_finite<D>(ev);
  }
  if (!valid) {
    out.converged = false;
PROBREG_UNROLL
    for (int a = 0; a < D; ++a) {
      out.y[a] = nan;
PROBREG_UNROLL
      for (int b = 0; b < D; ++b) out.hess[a][b] = nan;
    }
    return;
  }
PROBREG_UNROLL
  for (int a = 0; a < D; ++a) {
    out.y[a] = y[a];
PROBREG_UNROLL
    for (int b = 0; b < D; ++b) out.hess[a][b] = ev.hess[a][b];
  }
}

// Relative eigenvalue cutoff of the backward's pseudo-inverse, in units of n * eps.
constexpr double kFusePinvRel = 16.0;

// z = (H + damping I)^+ g through the eigen-decomposition of H: eigenvalues mu_k = l_k +
// damping <= kFusePinvRel * n * eps * max_k |mu_k| count as zero (torch.linalg.pinv-style
// relative cutoff). damping > 0 makes H + damping I positive definite, so this is the exact
// inverse there unless damping is itself at rounding level.
template <int D, typename T>
PROBREG_HOST_DEVICE void fuse_damped_solve(const T H[D][D], T damping, int64_t active, const T g[D],
                                           T z[D]) {
  T l[D], V[D][D];
  symeig<D, T>(H, l, V);
  T scale(0);
PROBREG_UNROLL
  for (int k = 0; k < D; ++k) scale = pr_max_nan(scale, pr_abs(l[k] + damping));
  const T cutoff = T(kFusePinvRel) * T(active > 0 ? active : 1) * T(Eps<T>::value) * scale;
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
template <int D, typename T, typename Terms, typename Sink>
PROBREG_HOST_DEVICE void fuse_backward(const Terms& terms, int64_t n, const T y[D], T delta, T damping,
                                       const T grad_y[D], Sink& sink) {
  FuseEval<D, T> ev;
  fuse_evaluate<D>(terms, n, y, delta, ev);
  T z[D];
  fuse_damped_solve<D>(ev.hess, damping, ev.active, grad_y, z);
  const bool undefined = ev.weights_ok && ev.active == 0;
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
      const T proj = t.inside ? T(0) : uq / (t.r * t.r);
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

// Eigendecomposition of one small symmetric matrix (d = 1, 2, 3), branch-free in the
// value type T so that it instantiates for scalars (CUDA, CPU fallback) and for the CPU
// SIMD lanes (lanes.h).
//
// Contract (matches torch.linalg.eigh): B = V diag(l) V^T with l ascending and V
// orthonormal, eigenvectors stored as COLUMNS: V[i][j] is component i of eigenvector j.
// Input is a full d x d array that the caller has already symmetrised.
//
// Algorithm: cyclic Jacobi. One rotation is exact for d = 2; d = 3 converges
// quadratically (3-5 sweeps). Jacobi is backward stable with a small constant, keeps V
// orthonormal to a few ulps by construction, and has no special cases at repeated
// eigenvalues (which break the closed-form Cardano/trigonometric solvers in float32).
// Off-diagonal entries below eps/16 * max|B_ij| are treated as zero (relative
// threshold). Ties: B = c*I (including 0) gives V = I, and equal eigenvalues keep their
// input order. A NaN or Inf entry makes every output of that matrix NaN.
#pragma once

#include <type_traits>

#include "macros.h"

namespace probreg {

// Range of max|B_ij| in which no square or product of entries over- or underflows T.
template <typename T>
struct SafeRange;
template <>
struct SafeRange<float> {
  // Off-diagonals above the negligible threshold (eps/16 * max|B_ij|) then square
  // without underflow, and sums of squares of 3x3 entries stay far from overflow.
  static constexpr float lo = 1e-9f, hi = 1e9f;
};
template <>
struct SafeRange<double> {
  static constexpr double lo = 1e-130, hi = 1e130;
};

// Largest |entry| of a symmetric D x D matrix; NaN if any entry is NaN (scalar T).
template <int D, typename T>
PROBREG_HOST_DEVICE T max_abs_entry(const T B[D][D]) {
  T s = T(0);
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = i; j < D; ++j) s = pr_max_nan(s, pr_abs(B[i][j]));
  return s;
}

// One Jacobi rotation in the (p, q) plane that zeroes a[p][q] (p < q), accumulated into
// the columns p, q of V. Classic stable choice |phi| <= pi/4: with x = a_qq - a_pp,
// y = 2 a_pq, h = sqrt(x^2 + y^2), w = |x| + h (no cancellation):
//   t = tan(phi) = sgn(x) y / w,  c = w / sqrt(w^2 + y^2),  s = sgn(x) y / sqrt(w^2 + y^2),
// and the diagonal update a_pp -= t a_pq, a_qq += t a_pq. This is the textbook rotation
// rewritten so the dependent chain is sqrt -> sqrt -> div (t's division runs alongside).
// Squares cannot over/underflow: entries are within SafeRange of max|B_ij| (symeig).
// Where |a_pq| <= negligible the rotation is the identity (t = 0) and a_pq is dropped.
// Returns the mask of lanes that rotated.
template <int D, typename T>
PROBREG_HOST_DEVICE auto jacobi_rotate(T a[D][D], T V[D][D], int p, int q, T negligible) {
  const T apq = a[p][q];
  const auto active = pr_abs(apq) > negligible;
  const T x = a[q][q] - a[p][p];
  const T y = pr_where(x < T(0), T(-2) * apq, T(2) * apq);  // sgn(x) * 2 a_pq, sgn(0) = +1
  const T w = pr_abs(x) + pr_sqrt(x * x + y * y);
  const T inv_norm = T(1) / pr_sqrt(w * w + y * y);
  const T c = pr_where(active, w * inv_norm, T(1));
  const T s = pr_where(active, y * inv_norm, T(0));
  const T t = pr_where(active, y / w, T(0));
  const T shift = t * apq;
  a[p][p] -= shift;
  a[q][q] += shift;
  a[p][q] = T(0);
  a[q][p] = T(0);
  if constexpr (D == 3) {
    const int r = 3 - p - q;
    const T arp = a[r][p];
    const T arq = a[r][q];
    a[r][p] = a[p][r] = c * arp - s * arq;
    a[r][q] = a[q][r] = s * arp + c * arq;
  }
  PROBREG_UNROLL
  for (int r = 0; r < D; ++r) {
    const T vrp = V[r][p];
    const T vrq = V[r][q];
    V[r][p] = c * vrp - s * vrq;
    V[r][q] = s * vrp + c * vrq;
  }
  return active;
}

// Sorts l ascending with branch-free compare-swaps, permuting the columns of V along
// (equal values keep their order). L and T may differ (symeig_mixed).
template <int D, typename L, typename T>
PROBREG_HOST_DEVICE void sort_eigenpairs(L l[D], T V[D][D]) {
  PROBREG_UNROLL
  for (int i = 0; i + 1 < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j + 1 < D - i; ++j) {
      const auto swap = l[j] > l[j + 1];
      const L lo = pr_where(swap, l[j + 1], l[j]);
      const L hi = pr_where(swap, l[j], l[j + 1]);
      l[j] = lo;
      l[j + 1] = hi;
      PROBREG_UNROLL
      for (int r = 0; r < D; ++r) {
        const T x = V[r][j];
        const T y = V[r][j + 1];
        V[r][j] = pr_where(swap, y, x);
        V[r][j + 1] = pr_where(swap, x, y);
      }
    }
}

// Jacobi core on a finite matrix a (overwritten) whose largest |entry| is `unit`
// (within SafeRange, or 1 after rescaling). Writes ascending l and the columns of V.
template <int D, typename T>
PROBREG_HOST_DEVICE void symeig_core(T a[D][D], T unit, T l[D], T V[D][D]) {
  static_assert(D >= 1 && D <= 3, "symeig: d must be 1, 2 or 3");
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) V[i][j] = T(i == j ? 1.0 : 0.0);
  // Rotations preserve the Frobenius norm (<= 3 unit), so dropping entries below this
  // perturbs B by less than eps/16 * ||B||_F.
  const T negligible = T(Eps<T>::value * 0.0625) * unit;
  if constexpr (D == 2) {
    jacobi_rotate<D, T>(a, V, 0, 1, negligible);
  } else if constexpr (D == 3) {
    // Converged when every off-diagonal is negligible at the start of a sweep (such a
    // sweep would rotate nothing), so no sweep is spent only to detect convergence.
    for (int sweep = 0; sweep < 12; ++sweep) {
      const auto rotates = (pr_abs(a[0][1]) > negligible) | (pr_abs(a[0][2]) > negligible) |
                           (pr_abs(a[1][2]) > negligible);
      if (!pr_any(rotates)) break;
      jacobi_rotate<D, T>(a, V, 0, 1, negligible);
      jacobi_rotate<D, T>(a, V, 0, 2, negligible);
      jacobi_rotate<D, T>(a, V, 1, 2, negligible);
    }
  }
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i) l[i] = a[i][i];
  sort_eigenpairs<D, T>(l, V);
}
// Eigen-decomposition of any symmetric B, scalar T (see the file comment): handles
// NaN/Inf, the zero matrix, and rescales by an exact power of two when max|B_ij| is
// outside SafeRange (scales 1e-30..1e30 in float, 1e-300..1e300 in double).
template <int D, typename T>
PROBREG_HOST_DEVICE void symeig(const T B[D][D], T l[D], T V[D][D]) {
  const T scale = max_abs_entry<D, T>(B);
  if (!pr_isfinite(scale) || scale == T(0)) {
    const T fill = scale * T(0);  // NaN for NaN/Inf input, 0 for the zero matrix
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i) {
      l[i] = fill;
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) V[i][j] = (i == j) ? T(1) + fill : fill;
    }
    return;
  }
  int exponent = 0;
  const bool rescale = !(scale > SafeRange<T>::lo && scale < SafeRange<T>::hi);
  if (rescale) pr_frexp(scale, &exponent);  // scale = f * 2^exponent, f in [0.5, 1)
  T a[D][D];
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) a[i][j] = rescale ? pr_ldexp(B[i][j], -exponent) : B[i][j];
  symeig_core<D, T>(a, rescale ? T(1) : scale, l, V);
  if (rescale) {
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i) l[i] = pr_ldexp(l[i], exponent);
  }
}

// out = op(X) Y in double for D x D matrices of any element types, op(X) = X^T when
// Transpose, else X.
template <int D, bool Transpose, typename X, typename Y>
PROBREG_HOST_DEVICE void product_double(const X x[D][D], const Y y[D][D], double out[D][D]) {
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) {
      double acc = 0.0;
      PROBREG_UNROLL
      for (int k = 0; k < D; ++k) acc += double(Transpose ? x[k][i] : x[i][k]) * double(y[k][j]);
      out[i][j] = acc;
    }
}

// Mixed-precision eigen-decomposition (the CUDA kernels' float32 path): B in double
// (the exact float32 inputs), eigenvalues l in double, eigenvectors V in float, at a
// fraction of the double cost for d = 3:
//  1. cyclic Jacobi in float on B scaled by a power of two to max|B_ij| in [1/2, 1)
//     (no float overflow or underflow for any float input);
//  2. its eigenvectors re-orthonormalised in double by one Newton-Schulz step,
//     Q = V (3I - V^T V)/2 (orthonormal to ~eps_f^2 from ~eps_f);
//  3. C = Q^T B Q in double is diagonal up to ~eps_f ||B||; one double Jacobi sweep
//     on C (quadratic convergence; exact rotations inside clusters) leaves ~eps_f^2,
//     accumulated into Q;  4. l = diag(C) sorted ascending, V = float(Q).
// Eigenvalues are then accurate to ~eps_d ||B|| (what g's exponential needs at
// l = -80 theta) and each eigenvector to ~eps_f: rounding V to float perturbs
// A = V g V^T by O(eps_f ||A||), with no 1/gap or l/theta amplification.
// d <= 2 (one rotation) runs symeig<D, double> directly. NaN/Inf or zero B: as symeig.
template <int D>
PROBREG_HOST_DEVICE void symeig_mixed(const double B[D][D], double l[D], float V[D][D]) {
  double Q[D][D];
  const double scale = max_abs_entry<D, double>(B);
  if (D <= 2 || !pr_isfinite(scale) || scale == 0.0) {
    symeig<D, double>(B, l, Q);
  } else {
    int exponent;
    pr_frexp(scale, &exponent);
    const double down = pr_ldexp(1.0, -exponent);
    float a[D][D], lf[D], Vf[D][D];
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i)
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) a[i][j] = float(B[i][j] * down);
    symeig_core<D, float>(a, float(scale * down), lf, Vf);
    double G[D][D], H[D][D], BQ[D][D], C[D][D];
    product_double<D, true>(Vf, Vf, G);  // V^T V
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i)
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) H[i][j] = (i == j ? 1.5 : 0.0) - 0.5 * G[i][j];
    product_double<D, false>(Vf, H, Q);  // Newton-Schulz: Q = V (3I - V^T V) / 2
    product_double<D, false>(B, Q, BQ);
    product_double<D, true>(Q, BQ, C);  // Q^T B Q, made exactly symmetric below
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i)
      PROBREG_UNROLL
      for (int j = i + 1; j < D; ++j) C[j][i] = C[i][j];
    const double negligible = Eps<double>::value * 0.0625 * scale;
    PROBREG_UNROLL
    for (int p = 0; p + 1 < D; ++p)
      PROBREG_UNROLL
      for (int q = p + 1; q < D; ++q) jacobi_rotate<D, double>(C, Q, p, q, negligible);
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i) l[i] = C[i][i];
    sort_eigenpairs<D, double, double>(l, Q);
  }
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) V[i][j] = float(Q[i][j]);
}

// Eigenvalues in L, eigenvectors in T: symeig when T = L, symeig_mixed for (float, double).
template <int D, typename T, typename L>
PROBREG_HOST_DEVICE void symeig_split(const L B[D][D], L l[D], T V[D][D]) {
  if constexpr (std::is_same_v<T, L>) {
    symeig<D, T>(B, l, V);
  } else {
    static_assert(std::is_same_v<T, float> && std::is_same_v<L, double>, "symeig_split: (float, double) only");
    symeig_mixed<D>(B, l, V);
  }
}

}  // namespace probreg

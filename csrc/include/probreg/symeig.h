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

// cos(x) for 0 <= x <= pi/6: its Taylor series to x^10 (truncation < 1e-12).
template <typename T>
PROBREG_HOST_DEVICE T cos_sixth_pi(T x) {
  const T x2 = x * x;
  T c = T(-1.0 / 3628800.0);  // -1/10!
  c = c * x2 + T(1.0 / 40320.0);
  c = c * x2 + T(-1.0 / 720.0);
  c = c * x2 + T(1.0 / 24.0);
  c = c * x2 + T(-0.5);
  return c * x2 + T(1);
}

// Non-iterative float estimate of the eigenvectors of a finite symmetric 3x3 `a` with
// trace zero up to rounding and entries of order 1 (symeig_mixed's first stage passes
// B - tr(B)/3 I, shifted in double, scaled to an eigenvalue spread p in [0.28, 0.58));
// columns of V in any order:
//  1. the isolated extreme eigenvalue lam, from the trigonometric solution for a/p
//     (p^2 = tr(a^2)/6), whose eigenvalues are 2 cos(phi + 2 pi k/3), phi = acos(det/2)/3:
//     the largest (k = 0) when det >= 0, else the smallest; that one is at least sqrt(3) p
//     from both others, so a - lam I has rank 2 with both nonzero singular values
//     >= ~sqrt(3) p (a trace of rounding size moves lam by O(eps_f p), within the
//     residual below);
//  2. its eigenvector v0: the largest cross product of two rows of a - lam I;
//  3. an orthonormal basis U, W of the plane orthogonal to v0, and the 2x2 compression
//     [U W]^T a [U W] diagonalised by one Jacobi rotation (exact for 2x2), which gives the
//     other two columns.
// Float rounding perturbs a by O(eps_f p); lam is then within O(eps_f p) of an
// eigenvalue, and every column has a residual ||a v - (v^T a v) v|| = O(eps_f p): what
// symeig_mixed's double refinement needs, in straight-line code instead of a
// data-dependent loop of about three float Jacobi sweeps. Where p is below 16 eps_f
// (only a = 0 as symeig_mixed calls it) every orthonormal basis has such residuals: V = I.
template <typename T>
PROBREG_HOST_DEVICE void symeig3_estimate(const T a[3][3], T V[3][3]) {
  const T a00 = a[0][0], a11 = a[1][1], a22 = a[2][2];
  const T off2 = a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2];
  const T p = pr_sqrt((a00 * a00 + a11 * a11 + a22 * a22 + T(2) * off2) * T(1.0 / 6.0));
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 3; ++j) V[i][j] = T(i == j ? 1.0 : 0.0);
  if (!(p > T(16) * Eps<T>::value)) return;
  const T det = a00 * (a11 * a22 - a[1][2] * a[1][2]) - a[0][1] * (a[0][1] * a22 - a[1][2] * a[0][2]) +
                a[0][2] * (a[0][1] * a[1][2] - a11 * a[0][2]);
  const T r = pr_min(pr_max(det / (T(2) * p * p * p), T(-1)), T(1));
  // 2 cos(acos(|r|)/3) is the largest eigenvalue of a/p for det >= 0, and minus the
  // smallest otherwise (the eigenvalues of -a/p); acos(|r|)/3 <= pi/6.
  const T lam = (r >= T(0) ? T(2) : T(-2)) * p * cos_sixth_pi(pr_acos(pr_abs(r)) * T(1.0 / 3.0));
  // Rows of a - lam I and their pairwise cross products; the largest spans the null space.
  const T m[3][3] = {{a[0][0] - lam, a[0][1], a[0][2]},
                     {a[0][1], a[1][1] - lam, a[1][2]},
                     {a[0][2], a[1][2], a[2][2] - lam}};
  T v0[3] = {T(0), T(0), T(0)}, best = T(-1);  // the first product always wins (n >= 0)
  PROBREG_UNROLL
  for (int k = 0; k < 3; ++k) {
    const T* x = m[k == 2 ? 1 : 0];
    const T* y = m[k == 0 ? 1 : 2];
    const T c[3] = {x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2], x[0] * y[1] - x[1] * y[0]};
    const T n = c[0] * c[0] + c[1] * c[1] + c[2] * c[2];
    const bool larger = n > best;
    best = larger ? n : best;
    PROBREG_UNROLL
    for (int i = 0; i < 3; ++i) v0[i] = larger ? c[i] : v0[i];
  }
  const T inv_v0 = T(1) / pr_sqrt(best);
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) v0[i] *= inv_v0;
  // U: v0 crossed with the axis of a component of v0 that is no larger than another one
  // (|U|^2 >= 1/2 before normalising); W = v0 x U.
  T U[3];
  if (pr_abs(v0[0]) > pr_abs(v0[1])) {
    const T s = T(1) / pr_sqrt(v0[0] * v0[0] + v0[2] * v0[2]);
    U[0] = -v0[2] * s;
    U[1] = T(0);
    U[2] = v0[0] * s;
  } else {
    const T s = T(1) / pr_sqrt(v0[1] * v0[1] + v0[2] * v0[2]);
    U[0] = T(0);
    U[1] = v0[2] * s;
    U[2] = -v0[1] * s;
  }
  const T W[3] = {v0[1] * U[2] - v0[2] * U[1], v0[2] * U[0] - v0[0] * U[2], v0[0] * U[1] - v0[1] * U[0]};
  T aU[3], aW[3];
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) {
    aU[i] = a[i][0] * U[0] + a[i][1] * U[1] + a[i][2] * U[2];
    aW[i] = a[i][0] * W[0] + a[i][1] * W[1] + a[i][2] * W[2];
  }
  T c2[2][2], l2[2], V2[2][2];
  c2[0][0] = U[0] * aU[0] + U[1] * aU[1] + U[2] * aU[2];
  c2[1][1] = W[0] * aW[0] + W[1] * aW[1] + W[2] * aW[2];
  c2[0][1] = c2[1][0] = U[0] * aW[0] + U[1] * aW[1] + U[2] * aW[2];
  symeig_core<2, T>(c2, T(1), l2, V2);
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) {
    V[i][0] = v0[i];
    V[i][1] = V2[0][0] * U[i] + V2[1][0] * W[i];
    V[i][2] = V2[0][1] * U[i] + V2[1][1] * W[i];
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

// symeig_mixed for d = 2, in closed form: the eigenvalues m -+ r in double (m the mean
// of the diagonal, h half its difference c - a, r = sqrt(h^2 + b^2): errors
// O(eps_d ||B||)), the eigenvectors from the Jacobi rotation that zeroes b, whose tangent
// is sgn(h) b / (|h| + r) (sgn(0) = +1; no cancellation), in double and rounded to
// float. Conventions of symeig<2>: l ascending; b = 0 with
// a <= c gives V = I (B = c I included), and with a > c the swapped identity; the
// rotation is exact however small b is (symeig<2> drops b below eps_d/16 ||B||); NaN or
// Inf anywhere makes every output NaN.
PROBREG_HOST_DEVICE void symeig2_mixed(const double B[2][2], double l[2], float V[2][2]) {
  const double a = B[0][0], b = B[0][1], c = B[1][1];
  if (!(pr_isfinite(a) && pr_isfinite(b) && pr_isfinite(c))) {
    const double nan = (a - a) + (b - b) + (c - c);  // NaN: one of them is NaN or +-Inf
    l[0] = l[1] = nan;
    V[0][0] = V[0][1] = V[1][0] = V[1][1] = float(nan);
    return;
  }
  const double m = 0.5 * (a + c), h = 0.5 * (c - a);
  const double r = pr_sqrt(h * h + b * b);
  // cos = w / n, sin = sgn(h) b / n with w = |h| + r and n^2 = w^2 + b^2 = 2 r w; b != 0
  // implies r >= |b| > 0 and w >= r, so 1/n is finite. Each rounds to float within an
  // ulp.
  const double w = pr_abs(h) + r;
  const double inv_n = b == 0.0 ? 0.0 : 1.0 / pr_sqrt(2.0 * r * w);
  const float cs = b == 0.0 ? 1.0f : float(w * inv_n);
  const float sn = float((h < 0.0 ? -b : b) * inv_n);
  // The rotation's first column (cs, -sn) has eigenvalue m - sgn(h) r, its second (sn, cs)
  // m + sgn(h) r: for h < 0 the columns swap to keep l ascending.
  const bool swap = h < 0.0;
  l[0] = m - r;
  l[1] = m + r;
  V[0][0] = swap ? sn : cs;
  V[1][0] = swap ? cs : -sn;
  V[0][1] = swap ? cs : sn;
  V[1][1] = swap ? -sn : cs;
}

// Mixed-precision eigen-decomposition (the CUDA kernels' float32 path): B in double
// (the exact float32 inputs), eigenvalues l in double, eigenvectors V in float, at a
// fraction of the double cost for d = 3:
//  1. symeig3_estimate in float on (B - tr(B)/3 I) scaled by a power of two to an
//     eigenvalue spread p near 1 (no float overflow or underflow for any float input):
//     eigenvectors with residuals O(eps_f p) <= O(eps_f ||B||), non-iteratively;
//  2. its eigenvectors re-orthonormalised in double by one Newton-Schulz step,
//     Q = V (3I - V^T V)/2 (orthonormal to ~eps_f^2 from ~eps_f);
//  3. C = Q^T B Q in double is diagonal up to ~eps_f ||B||; one double Jacobi sweep
//     on C (quadratic convergence; exact rotations inside clusters) leaves ~eps_f^2,
//     accumulated into Q;  4. l = diag(C) sorted ascending, V = float(Q).
// Eigenvalues are then accurate to ~eps_d ||B|| (what g's exponential needs at
// l = -80 theta) and each eigenvector to ~eps_f: rounding V to float perturbs
// A = V g V^T by O(eps_f ||A||), with no 1/gap or l/theta amplification.
// d = 2: symeig2_mixed (closed form); d = 1: symeig<1, double>. NaN/Inf or zero B: as symeig.
template <int D>
PROBREG_HOST_DEVICE void symeig_mixed(const double B[D][D], double l[D], float V[D][D]) {
  if constexpr (D == 2) {
    symeig2_mixed(B, l, V);
    return;
  }
  double Q[D][D];
  const double scale = max_abs_entry<D, double>(B);
  if (D == 1 || !pr_isfinite(scale) || scale == 0.0) {
    symeig<D, double>(B, l, Q);
  } else if constexpr (D == 3) {
    // The float stage sees B shifted to trace zero and scaled by a power of two near the
    // eigenvalue spread p = sqrt(tr((B - q I)^2) / 6), in double: its rounding is
    // then relative to p, not to ||B||, so clusters that are tight relative to ||B|| keep
    // their internal structure in float. p = 0 only for B = q I (V = I is exact).
    const double q = (B[0][0] + B[1][1] + B[2][2]) * (1.0 / 3.0);  // any shift near the mean
    double shifted[D][D], p2 = 0.0;
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i)
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) {
        shifted[i][j] = i == j ? B[i][j] - q : B[i][j];
        p2 += shifted[i][j] * shifted[i][j];
      }
    int exponent = 0;
    if (p2 > 0.0) pr_frexp(p2, &exponent);  // 6 p^2 = f 2^exponent, f in [1/2, 1)
    const int half = exponent / 2 - (exponent < 0 && exponent % 2 != 0);  // floor(exponent / 2)
    const double down = pr_ldexp(1.0, -half);  // p * down in [0.28, 0.58)
    float a[D][D], Vf[D][D];
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i)
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) a[i][j] = float(shifted[i][j] * down);
    symeig3_estimate<float>(a, Vf);
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

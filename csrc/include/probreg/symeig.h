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
// d = 3 in double: the eigenvalues are then refined to the compensated Rayleigh quotients
// of the eigenvectors (refine_eigenvalues3), accurate relative to themselves rather than
// to ||B|| wherever the eigenvectors are accurate.
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

// Error-free transformations, branch-free in T: two_sum gives s + err == x + y exactly
// (Knuth's TwoSum, no ordering precondition), two_product p + err == x * y exactly
// (by FMA where pr_fma is fused, else by Dekker's split), barring overflow and
// underflow of err.
template <typename T>
PROBREG_HOST_DEVICE T two_sum(T x, T y, T& err) {
  const T s = x + y;
  const T y_part = s - x;
  err = (x - (s - y_part)) + (y - y_part);
  return s;
}
template <typename T>
PROBREG_HOST_DEVICE T two_product(T x, T y, T& err) {
  const T p = x * y;
#if PROBREG_FUSED_FMA
  err = pr_fma(x, y, -p);
#else
  // Veltkamp split into halves whose products are exact (|x|, |y| far below overflow).
  const T splitter = T(Eps<T>::value < 1e-10 ? 134217729.0 : 4097.0);  // 2^27 + 1, 2^12 + 1
  const T xs = splitter * x, ys = splitter * y;
  const T xh = xs - (xs - x), xl = x - xh;
  const T yh = ys - (ys - y), yl = y - yh;
  err = ((xh * yh - p) + xh * yl + xl * yh) + xl * yl;
#endif
  return p;
}

// v^T B v for a symmetric 3x3 B and a vector v, in compensated arithmetic (Ogita, Rump
// and Oishi's Dot2 over the six terms B_ii v_i^2 and 2 B_ij v_i v_j, i < j): as accurate
// as the plain sum evaluated in twice the working precision, i.e. within
// ~eps |v^T B v| + O(eps^2 ||B||) where the plain sum is only within O(eps ||B||).
template <typename T>
PROBREG_HOST_DEVICE T quadratic_form3_compensated(const T B[3][3], const T v[3]) {
  T sum = T(0), err = T(0);
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i)
    PROBREG_UNROLL
    for (int j = i; j < 3; ++j) {
      T vv_err, term_err;
      const T vv = two_product(v[i], v[j], vv_err);
      const T coef = i == j ? B[i][i] : T(2) * B[i][j];
      const T term = two_product(coef, vv, term_err);
      term_err = pr_fma(coef, vv_err, term_err);
      if (i == 0 && j == 0) {
        sum = term;
        err = term_err;
      } else {
        T sum_err;
        sum = two_sum(sum, term, sum_err);
        err += sum_err + term_err;
      }
    }
  return sum + err;
}

// Replaces each eigenvalue of a 3x3 decomposition B = V diag(l) V^T (columns of V; any
// order) by the Rayleigh quotient v_k^T B v_k of its eigenvector, in compensated
// arithmetic. Why: a backward-stable solver (Jacobi, the closed form) gets every
// eigenvalue only to O(eps ||B||) absolute, poor relative accuracy for eigenvalues far
// below ||B||, which g(l) = theta exp(l/theta - 1) amplifies by 1/theta (spd_remap of a
// spread -800 .. 3e-5 with theta = 0.1 was 1.5e-12 off). The quotient of a computed
// eigenvector (residual r = O(eps ||B||), unit norm to O(eps)) is within
// ||r||^2 / gap + O(eps |l_k|) of the eigenvalue, so it is never worse than the solver's
// value and reaches a few ulps of l_k wherever the eigenvector is accurate. B must be the
// matrix V was computed from (within SafeRange<double>: no product over- or underflows
// where it matters). The caller re-sorts.
template <typename T>
PROBREG_HOST_DEVICE void refine_eigenvalues3(const T B[3][3], const T V[3][3], T l[3]) {
  PROBREG_UNROLL
  for (int k = 0; k < 3; ++k) {
    const T v[3] = {V[0][k], V[1][k], V[2][k]};
    l[k] = quadratic_form3_compensated<T>(B, v);
  }
}

// One Jacobi rotation in the (p, q) plane that zeroes a[p][q] (p < q), accumulated into
// the columns p, q of V. Classic stable choice |phi| <= pi/4: with x = a_qq - a_pp,
// y = 2 a_pq, h = sqrt(x^2 + y^2), w = |x| + h (no cancellation):
//   t = tan(phi) = sgn(x) y / w,  c = w / n,  s = sgn(x) y / n,  n^2 = w^2 + y^2 = 2 h w,
// and the diagonal update a_pp -= t a_pq, a_qq += t a_pq. Two reciprocal square roots
// and no division: h = z / sqrt(z) (z = x^2 + y^2), 1/n = 1/sqrt(2 h w), and
// t = y / w = 2 h y / n^2 (the SIMD lanes' pr_rsqrt is a few instructions, lanes.h).
// Squares cannot over/underflow: entries are within SafeRange of max|B_ij| (symeig), so
// z >= (2 negligible)^2 is a normal number where the rotation applies.
// Where |a_pq| <= negligible the rotation is the identity (t = 0) and a_pq is dropped.
// Returns the mask of lanes that rotated.
template <int D, typename T>
PROBREG_HOST_DEVICE auto jacobi_rotate(T a[D][D], T V[D][D], int p, int q, T negligible) {
  const T apq = a[p][q];
  const auto active = pr_abs(apq) > negligible;
  const T x = a[q][q] - a[p][p];
  const T y = pr_where(x < T(0), T(-2) * apq, T(2) * apq);  // sgn(x) * 2 a_pq, sgn(0) = +1
  const T z = pr_where(active, x * x + y * y, T(1));
  const T h = z * pr_rsqrt(z);
  const T w = pr_abs(x) + h;
  const T inv_norm = pr_rsqrt(T(2) * h * w);
  const T c = pr_where(active, w * inv_norm, T(1));
  const T s = pr_where(active, y * inv_norm, T(0));
  const T t = pr_where(active, T(2) * h * y * inv_norm * inv_norm, T(0));
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

// sort_eigenpairs for d = 3 when l[0] is an extreme value (>= both others or <= both;
// symeig3_trace_free's isolated eigenvalue, rounded monotonically): one compare-swap
// orders the pair l[1], l[2] (equal values keep their order), and l[0] goes last if it
// exceeds the pair's smaller value, else first. Ascending output.
template <typename L, typename T>
PROBREG_HOST_DEVICE void sort_eigenpairs_extreme_first(L l[3], T V[3][3]) {
  const auto swap = l[1] > l[2];
  const L lo = pr_where(swap, l[2], l[1]);
  const L hi = pr_where(swap, l[1], l[2]);
  const auto last = l[0] > lo;
  const L l0 = l[0];
  l[0] = pr_where(last, lo, l0);
  l[1] = pr_where(last, hi, lo);
  l[2] = pr_where(last, l0, hi);
  PROBREG_UNROLL
  for (int r = 0; r < 3; ++r) {
    const T x = V[r][0];
    const T v_lo = pr_where(swap, V[r][2], V[r][1]);
    const T v_hi = pr_where(swap, V[r][1], V[r][2]);
    V[r][0] = pr_where(last, v_lo, x);
    V[r][1] = pr_where(last, v_hi, v_lo);
    V[r][2] = pr_where(last, x, v_hi);
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
// The 2x2 spectral frame without eigenvectors: for a symmetric B = [[a, b], [b, c]] the
// eigenvalues l = m -+ r (ascending; m = (a + c)/2, x = (a - c)/2, r = sqrt(x^2 + b^2))
// and the reflection N = (B - m I)/r = P_hi - P_lo (the difference of the two
// eigenprojectors), with which a spectral function is
// f(B) = (f(l_hi) + f(l_lo))/2 I + (f(l_hi) - f(l_lo))/2 N. N's entries x/r, b/r are
// accurate to a few ulps however close the pair (no rotation to mix). A tie (r^2 below
// the smallest normal number) gives l = (m, m) and N = 0. For B with max|B_ij| in
// SafeRange<double> (the SIMD lanes' range): x^2 + b^2 cannot overflow there, and a gap
// whose square underflows is below 1e-24 max|B_ij|. NaN or Inf entries give NaN l.
// Branch-free in T; one reciprocal square root (pr_rsqrt: positive normal argument).
template <typename T>
PROBREG_HOST_DEVICE void symeig2_reflection(const T B[2][2], T l[2], T N[2][2]) {
  const T m = T(0.5) * (B[0][0] + B[1][1]);
  const T x = T(0.5) * (B[0][0] - B[1][1]);
  const T b = B[0][1];
  const T z = x * x + b * b;
  const auto tie = z < T(MinNormal<T>::value);
  const T inv_r = pr_where(tie, T(0), pr_rsqrt(pr_where(tie, T(1), z)));
  const T r = z * inv_r;
  l[0] = m - r;
  l[1] = m + r;
  N[0][0] = x * inv_r;
  N[0][1] = b * inv_r;
  N[1][0] = N[0][1];
  N[1][1] = -N[0][0];
}

// The reflection N = P_hi - P_lo of symeig2_reflection from eigenvectors V (columns,
// l ascending): N_ij = V_i1 V_j1 - V_i0 V_j0.
template <typename T>
PROBREG_HOST_DEVICE void reflection_from_eigenvectors(const T V[2][2], T N[2][2]) {
  PROBREG_UNROLL
  for (int i = 0; i < 2; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 2; ++j) N[i][j] = V[i][1] * V[j][1] - V[i][0] * V[j][0];
}

// Whether symeig<D, T> refines its eigenvalues (refine_eigenvalues3): d = 3 in double,
// the float64 paths (the CUDA float64 kernels, the CPU scalar fallback). The float32 paths
// compute in double (symeig_mixed, the CPU lanes), where O(eps_d ||B||) is far below
// float32's rounding, and are not refined.
template <int D, typename T>
constexpr bool kRefinedEigenvalues = D == 3 && std::is_same_v<T, double>;

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
  T a[D][D], input[D][D];
  PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < D; ++j) a[i][j] = input[i][j] = rescale ? pr_ldexp(B[i][j], -exponent) : B[i][j];
  symeig_core<D, T>(a, rescale ? T(1) : scale, l, V);
  if constexpr (kRefinedEigenvalues<D, T>) {
    refine_eigenvalues3<T>(input, V, l);
    sort_eigenpairs<D, T>(l, V);
  }
  if (rescale) {
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i) l[i] = pr_ldexp(l[i], exponent);
  }
}

// cos(acos(x) / 3) for 0 <= x <= 1, without acos: the largest root of 4c^3 - 3c = x is
// analytic on [0, 1] (its nearest singularity is at x = -1), so its Chebyshev
// interpolant in u = 2x - 1, written as a polynomial, converges fast: degree 18 in
// double (error 1.2e-16), degree 8 in float (1.8e-9). Coarse, in double: degree 10
// (4.0e-11), for callers that need no more (symeig3_trace_free's kFloatFrame).
// Branch-free in T.
PROBREG_DOUBLE_TABLE(kCosThirdAcos18,
                     {-7.735658098734745e-12, 2.520259132434053e-11, -4.576602098929384e-11, 1.519045707836425e-10,
                      -5.812979784190751e-10, 1.9510098713100844e-09, -6.52777227104142e-09, 2.236175871754495e-08,
                      -7.764866727359298e-08, 2.7368261594825763e-07, -9.83537028433641e-07, 3.6232882101634036e-06,
                      -1.3791278346508278e-05, 5.4914418801357915e-05, -0.00023364527941077302,
                      0.0011066549558275303, -0.00643141398766414, 0.06582180727244992, 0.9396926207859084});
PROBREG_DOUBLE_TABLE(kCosThirdAcos10,
                     {-9.877998681240881e-08, 3.4583194781585974e-07, -9.613189169906698e-07, 3.547500581025483e-06,
                      -1.3801225118045625e-05, 5.4948333295476535e-05, -0.00023364348276825488,
                      0.0011066488313105144, -0.006431414077896089, 0.06582180758001321, 0.9396926207859084});
template <typename T, bool Coarse = false>
PROBREG_HOST_DEVICE T cos_third_acos(T x) {
  const T u = T(2) * x - T(1);
  if constexpr (Eps<T>::value > 1e-10) {  // float: immediates
    constexpr double c[] = {
        -1.1830242244174324e-06, 4.323750525886311e-06, -1.363549260432252e-05, 5.4368007097610814e-05,
        -0.00023368930890791412, 0.0011068093153735262, -0.006431410664297061, 0.06582179562331245,
        0.9396926207859084};
    return polynomial(u, c);
  } else if constexpr (Coarse) {
    return polynomial(u, PROBREG_TABLE(kCosThirdAcos10));
  } else {
    return polynomial(u, PROBREG_TABLE(kCosThirdAcos18));
  }
}

// c = x cross y.
template <typename T>
PROBREG_HOST_DEVICE void cross3(const T x[3], const T y[3], T c[3]) {
  c[0] = x[1] * y[2] - x[2] * y[1];
  c[1] = x[2] * y[0] - x[0] * y[2];
  c[2] = x[0] * y[1] - x[1] * y[0];
}

// tr(a^2) = sum_ij a_ij^2 of a symmetric 3x3 a (its squared Frobenius norm), in the one
// order of operations that symeig3_trace_free's callers and symeig3_shift_scale share.
template <typename T>
PROBREG_HOST_DEVICE T frobenius2_symmetric3(const T a[3][3]) {
  return a[0][0] * a[0][0] + a[1][1] * a[1][1] + a[2][2] * a[2][2] +
         T(2) * (a[0][1] * a[0][1] + a[0][2] * a[0][2] + a[1][2] * a[1][2]);
}

// Closed-form eigen-decomposition a = V diag(lam) V^T of a finite symmetric 3x3 `a` with
// trace zero up to rounding and eigenvalue spread p = sqrt(tr(a^2) / 6) in [0.28, 0.58)
// (callers shift and scale by a power of two), given frobenius2 = tr(a^2)
// (frobenius2_symmetric3, or the caller's unscaled one times the power of two squared:
// the same value); where p <= 16 eps or the caller's mask
// `valid` is false, V = I and lam = diag(a). Columns in no particular order (callers sort).
// Straight-line and branch-free in T (float on the CUDA mixed path, the double SIMD
// lanes on the CPU):
//  1. the isolated extreme eigenvalue, from the trigonometric solution for a/p,
//     whose eigenvalues are 2 cos(phi + 2 pi k/3), phi = acos(r)/3, r = det(a) / (2 p^3):
//     the largest (k = 0) when r >= 0, else minus that of -a/p; it is at least sqrt(3) p
//     from both others and its derivative in r is bounded, so it is within O(eps p) of an
//     eigenvalue (a trace of rounding size moves it by O(eps p) too);
//  2. its eigenvector v0: the largest cross product of two rows of a minus it times I (rank 2,
//     both nonzero singular values >= ~sqrt(3) p);
//  3. an orthonormal basis U, W of the plane orthogonal to v0 (U: v0 crossed with an axis
//     on which v0's component is not the largest of the first two, |U|^2 >= 1/2 before
//     normalising; W = v0 x U), and the 2x2 compression [U W]^T a [U W] diagonalised by
//     one Jacobi rotation, which gives the other two columns.
// Backward stable: V is orthonormal to O(eps) and every column has a residual
// ||a v - (v^T a v) v|| = O(eps p), with no iteration and no special case at
// clustered or repeated eigenvalues (the 2x2 rotation is exact inside the plane).
// kFloatFrame (the caller rounds V to float, symeig_mixed): step 1 to cos_third_acos's
// coarse accuracy. The extreme eigenvalue only locates v0 (lam[0] is v0's Rayleigh
// quotient, lam[1], lam[2] come from the 2x2 compression): an error of 4e-11 * 2p tilts
// v0, and with it U and W, by about 5e-11 (gap >= sqrt(3) p), a thousandth of a float
// ulp of V, and moves the eigenvalues by that angle squared times p, far below eps p.
// tools/symeig_mixed_accuracy.cpp measures the rounded V against degree 18.
// Mask std::true_type: the caller guarantees the spread (symeig_mixed's straight path,
// after symeig3_shift_scale), and the selections of the identity fold away.
template <typename T, typename Mask, bool kFloatFrame = false>
PROBREG_HOST_DEVICE void symeig3_trace_free(const T a[3][3], T frobenius2, Mask valid, T lam[3], T V[3][3]) {
  const T a00 = a[0][0], a11 = a[1][1], a22 = a[2][2], a01 = a[0][1], a02 = a[0][2], a12 = a[1][2];
  const T p2 = frobenius2 * T(1.0 / 6.0);
  const T eps = T(Eps<T>::value);
  const auto spread = [&] {
    if constexpr (std::is_same_v<Mask, std::true_type>) {
      return std::true_type{};
    } else {
      return (p2 > T(256) * eps * eps) & valid;
    }
  }();
  // p and r only locate the extreme eigenvalue: kFloatFrame needs them to ~1e-11 only.
  const T inv_p = [&] {
    if constexpr (kFloatFrame && std::is_same_v<T, double>) {
      return pr_rsqrt_coarse(pr_where(spread, p2, T(1)));
    } else {
      return pr_rsqrt(pr_where(spread, p2, T(1)));
    }
  }();
  const T p = p2 * inv_p;
  const T det = a00 * (a11 * a22 - a12 * a12) - a01 * (a01 * a22 - a12 * a02) + a02 * (a01 * a12 - a11 * a02);
  const T r = det * (T(0.5) * inv_p * inv_p * inv_p);
  const T extreme = pr_where(r >= T(0), T(2) * p, T(-2) * p) * cos_third_acos<T, kFloatFrame>(pr_min(pr_abs(r), T(1)));
  const T m0[3] = {a00 - extreme, a01, a02}, m1[3] = {a01, a11 - extreme, a12}, m2[3] = {a02, a12, a22 - extreme};
  T v0[3], c1[3], c2[3];
  cross3(m0, m1, v0);
  cross3(m0, m2, c1);
  cross3(m1, m2, c2);
  T n = v0[0] * v0[0] + v0[1] * v0[1] + v0[2] * v0[2];
  const T n1 = c1[0] * c1[0] + c1[1] * c1[1] + c1[2] * c1[2];
  const T n2 = c2[0] * c2[0] + c2[1] * c2[1] + c2[2] * c2[2];
  const auto take1 = n1 > n;
  n = pr_where(take1, n1, n);
  const auto take2 = n2 > n;
  n = pr_where(take2, n2, n);
  const T inv_n = pr_rsqrt(pr_where(spread, n, T(1)));
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) v0[i] = pr_where(take2, c2[i], pr_where(take1, c1[i], v0[i])) * inv_n;
  const auto first = pr_abs(v0[0]) > pr_abs(v0[1]);
  const T v22 = v0[2] * v0[2];
  const T su = pr_rsqrt(pr_where(first, v0[0] * v0[0], v0[1] * v0[1]) + v22);
  const T U[3] = {pr_where(first, -v0[2] * su, T(0)), pr_where(first, T(0), v0[2] * su),
                  pr_where(first, v0[0], -v0[1]) * su};
  T W[3];
  cross3(v0, U, W);
  T aU[3], aW[3];
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) {
    aU[i] = a[i][0] * U[0] + a[i][1] * U[1] + a[i][2] * U[2];
    aW[i] = a[i][0] * W[0] + a[i][1] * W[1] + a[i][2] * W[2];
  }
  // The 2x2 compression [[al, be], [be, ga]] and its Jacobi rotation (as jacobi_rotate):
  // x = ga - al, y = sgn(x) 2 be, h = sqrt(x^2 + y^2), w = |x| + h, cos = w / n, sin = y / n
  // with n^2 = w^2 + y^2 = 2 h w. Where h <= eps (a multiple of the identity to O(eps p)
  // in the plane) every rotation is exact: the identity.
  const T al = U[0] * aU[0] + U[1] * aU[1] + U[2] * aU[2];
  const T ga = W[0] * aW[0] + W[1] * aW[1] + W[2] * aW[2];
  const T be = U[0] * aW[0] + U[1] * aW[1] + U[2] * aW[2];
  const T x = ga - al;
  const T y = pr_where(x < T(0), T(-2) * be, T(2) * be);
  const T z = x * x + y * y;
  const auto rotates = z > eps * eps;
  const T h = z * pr_rsqrt(pr_where(rotates, z, T(1)));
  const T w = pr_abs(x) + h;
  const T inv_norm = pr_rsqrt(pr_where(rotates, T(2) * h * w, T(1)));
  const T c = pr_where(rotates, w * inv_norm, T(1));
  const T sn = pr_where(rotates, y * inv_norm, T(0));
  // The eigenvalues: the 2x2's diagonal after the rotation, al - t be and ga + t be with
  // t = tan = y / w = 2 h y / n^2, and the rest of the trace, tr(a) - al - ga (the sum of
  // a's eigenvalues is its trace; al + ga is the trace of the compression, so this is v0's
  // Rayleigh quotient, to the rounding of the sums, O(eps p), without forming a v0).
  const T t_be = pr_where(rotates, T(2) * h * y * inv_norm * inv_norm, T(0)) * be;
  T av0[3];
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) av0[i] = a[i][0] * v0[0] + a[i][1] * v0[1] + a[i][2] * v0[2];
  lam[0] = pr_where(spread, v0[0] * av0[0] + v0[1] * av0[1] + v0[2] * av0[2], a00);
  lam[1] = pr_where(spread, al - t_be, a11);
  lam[2] = pr_where(spread, ga + t_be, a22);
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) {
    V[i][0] = pr_where(spread, v0[i], T(i == 0 ? 1.0 : 0.0));
    V[i][1] = pr_where(spread, c * U[i] - sn * W[i], T(i == 1 ? 1.0 : 0.0));
    V[i][2] = pr_where(spread, sn * U[i] + c * W[i], T(i == 2 ? 1.0 : 0.0));
  }
}

template <typename T, typename Mask, bool kFloatFrame = false>
PROBREG_HOST_DEVICE void symeig3_trace_free(const T a[3][3], Mask valid, T lam[3], T V[3][3]) {
  symeig3_trace_free<T, Mask, kFloatFrame>(a, frobenius2_symmetric3(a), valid, lam, V);
}

// down = 2^-floor(e/2) and up = 1/down for positive normal x = f 2^e, f in [1/2, 1): x
// times down^2 is in [1/2, 2), so a matrix scaled by down has its sum of squares there.
// Bit operations (lanes.h has the SIMD form).
PROBREG_HOST_DEVICE double pow2_rsqrt_scale(double x, double& up) {
  const int e = int((pr_bit_cast<unsigned long long>(x) >> 52) & 0x7ff) - 1022;
  const int half = (e + 2048) / 2 - 1024;  // floor(e / 2), no shift of a negative int
  up = pr_bit_cast<double>((unsigned long long)(1023 + half) << 52);
  return pr_bit_cast<double>((unsigned long long)(1023 - half) << 52);
}

// symeig3_closed_form's first step: q = tr(B)/3, the shifted S = B - q I scaled to
// a = S down by a power of two down (up = 1/down) that puts tr(a^2) in [1/2, 2), and
// frobenius2 = tr(a^2) (as tr(S^2) down^2). Returns the spread mask, false where
// B = c I exactly, where tr(S^2) <= 2^-996 (a spread below 1e-150: c I to within eps/16
// max|B_ij|; a power of two, an immediate operand on CUDA) and where tr(S^2) is NaN; then
// down = up = 1. An Inf in B gives tr(S^2) = Inf or NaN (symeig_mixed tests frobenius2).
template <typename T>
PROBREG_HOST_DEVICE auto symeig3_shift_scale(const T B[3][3], T& q, T& up, T& frobenius2, T a[3][3]) {
  q = (B[0][0] + B[1][1] + B[2][2]) * T(1.0 / 3.0);
  T shifted[3][3];
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 3; ++j) shifted[i][j] = i == j ? B[i][j] - q : B[i][j];
  const T f2 = frobenius2_symmetric3(shifted);
  // Spread 0: B = c I exactly (then V = I and l = q + (c - q) = c, whatever q's
  // rounding), or tr(S^2) <= 2^-996 (1.5e-300).
  const auto general = (B[0][1] != T(0)) | (B[0][2] != T(0)) | (B[1][2] != T(0)) | (B[0][0] != B[1][1]) |
                       (B[1][1] != B[2][2]);
  const auto spread = (f2 > T(0x1p-996)) & general;
  const T down = pow2_rsqrt_scale(pr_where(spread, f2, T(1)), up);
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 3; ++j) a[i][j] = shifted[i][j] * down;
  // frobenius2_symmetric3(a): the same operations on values scaled by a power of two
  // (exactly equal unless a square of S underflows, a term negligible there).
  frobenius2 = f2 * down * down;
  return spread;
}

// Eigen-decomposition of a finite symmetric 3x3 B in closed form (the CPU SIMD lanes'
// d = 3 path and the CUDA float32 path): B - q I (q = tr(B)/3) scaled by a power of two
// to an eigenvalue spread in [0.28, 0.58), symeig3_trace_free, and l = q + lam scaled
// back. Backward stable like Jacobi: residual and orthogonality O(eps), eigenvalues
// within O(eps ||B||). Columns UNSORTED: callers sort (sort_eigenpairs), in the type
// they keep V in. Needs max|B_ij| in [SafeRange<double>::lo, hi] (1e-130..1e130;
// every finite float32 matrix qualifies): squares of the shifted entries neither
// overflow nor underflow where they matter (a spread below 1e-150, dropped as zero, is
// < eps/16 max|B_ij| there). B = c I gives V = I and l = c exactly. kFloatFrame: see
// symeig3_trace_free (for callers that round V to float).
template <typename T, bool kFloatFrame = false>
PROBREG_HOST_DEVICE void symeig3_closed_form(const T B[3][3], T l[3], T V[3][3]) {
  T q, up, frobenius2, a[3][3], lam[3];
  const auto spread = symeig3_shift_scale<T>(B, q, up, frobenius2, a);
  symeig3_trace_free<T, std::decay_t<decltype(spread)>, kFloatFrame>(a, frobenius2, spread, lam, V);
  PROBREG_UNROLL
  for (int k = 0; k < 3; ++k) l[k] = q + lam[k] * up;
}

// symeig_mixed for d = 2, in closed form: the eigenvalues m -+ r in double (m the mean
// of the diagonal, h half its difference c - a, r = sqrt(h^2 + b^2): errors
// O(eps_d ||B||)), the eigenvectors from the Jacobi rotation that zeroes b, whose tangent
// is sgn(h) b / (|h| + r) (sgn(0) = +1; no cancellation), in double and rounded to
// float. Conventions of symeig<2>: l ascending; b = 0 with a <= c gives V = I (B = c I
// included), and with a > c the swapped identity; the rotation is exact however small
// b is (symeig<2> drops b below eps_d/16 ||B||); NaN or Inf anywhere makes every output
// NaN. Two reciprocal square roots (pr_rsqrt), no division: for float32 inputs b != 0
// means b^2 >= 1e-90, a normal double.
PROBREG_HOST_DEVICE void symeig2_mixed(const double B[2][2], double l[2], float V[2][2]) {
  const double a = B[0][0], b = B[0][1], c = B[1][1];
  if (!(pr_isfinite(a) && pr_isfinite(b) && pr_isfinite(c))) {
    const double nan = (a - a) + (b - b) + (c - c);  // NaN: one of them is NaN or +-Inf
    l[0] = l[1] = nan;
    V[0][0] = V[0][1] = V[1][0] = V[1][1] = float(nan);
    return;
  }
  const double m = 0.5 * (a + c), h = 0.5 * (c - a);
  const bool rotates = b != 0.0;
  const double z = rotates ? h * h + b * b : 1.0;
  const double r = rotates ? z * pr_rsqrt(z) : pr_abs(h);
  // cos = w / n, sin = sgn(h) b / n with w = |h| + r and n^2 = w^2 + b^2 = 2 r w; b != 0
  // implies r >= |b| > 0 and w >= r, so 1/n is finite. Each rounds to float within an
  // ulp.
  const double w = pr_abs(h) + r;
  const double inv_n = rotates ? pr_rsqrt(2.0 * r * w) : 0.0;
  const float cs = rotates ? float(w * inv_n) : 1.0f;
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

// symeig_mixed's d = 3 matrices off the closed form's straight path, out of line: B = c I
// (V = I and l = c exactly, through symeig3_closed_form's spread mask) and NaN or Inf
// anywhere (every output NaN). It runs only for such items, so the kernels' loop bodies
// hold a call to it rather than its instructions. B's six distinct entries by value: an
// array argument would pass through local memory for every item.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline PROBREG_NOINLINE void symeig3_mixed_special(double b00, double b01, double b02, double b11, double b12,
                                                   double b22, double l[3], float V[3][3]) {
  const double B[3][3] = {{b00, b01, b02}, {b01, b11, b12}, {b02, b12, b22}};
  double total = 0.0;  // NaN or Inf anywhere makes it non-finite
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i)
    PROBREG_UNROLL
    for (int j = i; j < 3; ++j) total += pr_abs(B[i][j]);
  double Q[3][3];
  symeig3_closed_form<double, true>(B, l, Q);  // Q is rounded to float below
  const double poison = 0.0 * total;  // NaN where B has a NaN or Inf, else 0
  PROBREG_UNROLL
  for (int i = 0; i < 3; ++i) {
    l[i] += poison;
    PROBREG_UNROLL
    for (int j = 0; j < 3; ++j) V[i][j] = float(Q[i][j]) + float(poison);
  }
  sort_eigenpairs<3, double, float>(l, V);
}

// Mixed-precision eigen-decomposition (the CUDA kernels' float32 path): B in double (the
// exact float32 inputs), eigenvalues l in double, eigenvectors V in double rounded to
// float. d = 3: the closed form in double (every finite float32 matrix is within its
// range; straight-line code, no iteration), eigenvalues accurate to ~eps_d ||B||, which
// is what g's exponential needs at l = -80 theta, and rounding V to float perturbs
// A = V g V^T by O(eps_f ||A||), with no 1/gap or l/theta amplification. Its straight
// path: symeig3_shift_scale, symeig3_trace_free with the spread known (its masks fold
// away) and kFloatFrame (the extreme eigenvalue locates the first eigenvector only to the
// accuracy a float V needs), sort_eigenpairs_extreme_first; B = c I and non-finite B go
// to symeig3_mixed_special, whose results replace the straight path's (which runs for
// every B: after an early return nvcc would pass the outputs through local memory).
// d = 2: symeig2_mixed (closed form); d = 1: symeig<1, double>. NaN/Inf anywhere: every
// output NaN, as symeig; B = 0: V = I, l = 0. kAscending false (d = 3): the straight
// path's eigenpairs in no particular order, unsorted, for callers whose result is
// symmetric in them (huber_nll's forward); B = c I and non-finite B still come sorted.
template <int D, bool kAscending = true>
PROBREG_HOST_DEVICE void symeig_mixed(const double B[D][D], double l[D], float V[D][D]) {
  if constexpr (D == 2) {
    symeig2_mixed(B, l, V);
  } else if constexpr (D == 1) {
    double Q[1][1];
    symeig<1, double>(B, l, Q);
    V[0][0] = float(Q[0][0]);
  } else {
    double q, up, frobenius2, a[3][3];
    const bool spread = symeig3_shift_scale<double>(B, q, up, frobenius2, a);
    double lam[3], Q[3][3];
    symeig3_trace_free<double, std::true_type, true>(a, frobenius2, std::true_type{}, lam, Q);
    PROBREG_UNROLL
    for (int i = 0; i < D; ++i) {
      l[i] = q + lam[i] * up;
      PROBREG_UNROLL
      for (int j = 0; j < D; ++j) V[i][j] = float(Q[i][j]);
    }
    if constexpr (kAscending) sort_eigenpairs_extreme_first<double, float>(l, V);
    if (!(spread && frobenius2 < INFINITY)) {  // B = c I, NaN or Inf
      double l_special[3];
      float V_special[3][3];
      symeig3_mixed_special(B[0][0], B[0][1], B[0][2], B[1][1], B[1][2], B[2][2], l_special, V_special);
      PROBREG_UNROLL
      for (int i = 0; i < D; ++i) {
        l[i] = l_special[i];
        PROBREG_UNROLL
        for (int j = 0; j < D; ++j) V[i][j] = V_special[i][j];
      }
    }
  }
}

// Whether (T, L) is the CUDA float32 policy (eigenvalues in double, the rest in float;
// symeig_mixed), whose d = 2 paths run on the reflection frame (symeig2_reflection_split).
template <typename T, typename L>
constexpr bool kMixedPolicy = std::is_same_v<T, float> && std::is_same_v<L, double>;

// symeig2_reflection for the mixed policy: l and N in double, N rounded to float. B holds
// float32 data (|B_ij| <= 3.4e38, nonzero differences >= 1e-45), so x^2 + b^2 neither
// overflows nor, short of an exact tie, underflows in double: no range check is needed.
// NaN/Inf entries give NaN l and N.
template <typename T, typename L>
PROBREG_HOST_DEVICE void symeig2_reflection_split(const L B[2][2], L l[2], T N[2][2]) {
  static_assert(kMixedPolicy<T, L>, "symeig2_reflection_split: (float, double) only");
  L frame[2][2];
  symeig2_reflection<L>(B, l, frame);
  // An Inf on B's diagonal makes l NaN (r = Inf * 0) but leaves N's off-diagonal b / r = 0,
  // and g(NaN) is finite (remap_exponent takes NaN to 0), so A = mean I + half N would keep
  // finite zeros: N is poisoned too, and every output of such an item is NaN, as on the
  // CPU paths. l is finite for finite float32 data, so the poison is 0 there.
  const T poison = T(l[0] - l[0]);
  PROBREG_UNROLL
  for (int i = 0; i < 2; ++i)
    PROBREG_UNROLL
    for (int j = 0; j < 2; ++j) N[i][j] = T(frame[i][j]) + poison;
}

// Eigenvalues in L, eigenvectors in T: symeig when T = L, symeig_mixed for (float, double)
// (kAscending: as symeig_mixed's; symeig's are always ascending).
template <int D, typename T, typename L, bool kAscending = true>
PROBREG_HOST_DEVICE void symeig_split(const L B[D][D], L l[D], T V[D][D]) {
  if constexpr (std::is_same_v<T, L>) {
    symeig<D, T>(B, l, V);
  } else {
    static_assert(std::is_same_v<T, float> && std::is_same_v<L, double>, "symeig_split: (float, double) only");
    symeig_mixed<D, kAscending>(B, l, V);
  }
}

// Whether the scalar (T, L) paths of dimension D (the CUDA kernels and their CPU
// emulation) run on the reflection frame: d = 2 under the mixed policy.
template <int D, typename T, typename L>
constexpr bool kSplitReflection = D == 2 && kMixedPolicy<T, L>;

// The decomposition of those paths: (l, N) by symeig2_reflection_split where
// kSplitReflection (F receives N), else (l, V) by symeig_split.
template <int D, typename T, typename L, bool kAscending = true>
PROBREG_HOST_DEVICE void symeig_frame_split(const L B[D][D], L l[D], T F[D][D]) {
  if constexpr (kSplitReflection<D, T, L>) {
    symeig2_reflection_split<T, L>(B, l, F);
  } else {
    symeig_split<D, T, L, kAscending>(B, l, F);
  }
}

}  // namespace probreg

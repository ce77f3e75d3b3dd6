// Unit tests of the torch-free math headers, compiled with g++ alone (ctest).
// Independent references: long double arithmetic and libm.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>

#include "probreg/lanes.h"
#include "../cpu/lane_floats.h"  // FloatLanes (header-only, torch-free)
#include "probreg/packed.h"
#include "probreg/spectral.h"
#include "probreg/symeig.h"
#include "random_symmetric.h"

namespace {

using probreg_test::random_symmetric;

int failures = 0;

void expect(bool ok, const char* what, double value, double bound) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: %.3e (bound %.3e)\n", what, value, bound);
  }
}

template <int D, typename T>
void check_symeig_case(const double Bd[D][D], const char* label) {
  T B[D][D], l[D], V[D][D];
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) B[i][j] = T(Bd[i][j]);
  probreg::symeig<D, T>(B, l, V);
  long double fro = 0, resid = 0, orth = 0;
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) {
      fro += (long double)B[i][j] * B[i][j];
      long double recon = 0, dot = 0;
      for (int k = 0; k < D; ++k) {
        recon += (long double)V[i][k] * l[k] * V[j][k];
        dot += (long double)V[k][i] * V[k][j];
      }
      resid += (recon - B[i][j]) * (recon - B[i][j]);
      orth += (dot - (i == j)) * (dot - (i == j));
    }
  const double eps = probreg::Eps<T>::value;
  const double rel = fro > 0 ? double(std::sqrt(resid / fro)) : double(std::sqrt(resid));
  expect(rel <= 16 * eps, label, rel, 16 * eps);
  expect(std::sqrt(double(orth)) <= 16 * eps, "orthogonality", std::sqrt(double(orth)), 16 * eps);
  for (int i = 0; i + 1 < D; ++i) expect(l[i] <= l[i + 1], "ascending", double(l[i] - l[i + 1]), 0);
}

template <int D>
void test_symeig(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uni(-1, 1);
  const double scales[] = {1e-30, 1e-5, 1.0, 1e5, 1e30};
  const double gaps[] = {0.0, 1e-7, 1e-3, 1.0};
  for (double scale : scales)
    for (double gap : gaps)
      for (int rep = 0; rep < 200; ++rep) {
        long double eig[D];
        eig[0] = uni(rng);
        for (int k = 1; k < D; ++k) eig[k] = (rep % 2) ? eig[0] + gap * k : uni(rng);
        for (int k = 0; k < D; ++k) eig[k] *= scale;
        double B[D][D];
        random_symmetric<D>(rng, eig, B);
        check_symeig_case<D, double>(B, "symeig<double> residual");
        check_symeig_case<D, float>(B, "symeig<float> residual");
      }
  double zero[D][D] = {};
  check_symeig_case<D, double>(zero, "symeig zero matrix");
  double nan_matrix[D][D] = {};
  nan_matrix[0][D - 1] = nan_matrix[D - 1][0] = NAN;
  double l[D], V[D][D];
  probreg::symeig<D, double>(nan_matrix, l, V);
  for (int k = 0; k < D; ++k) expect(std::isnan(l[k]), "NaN input gives NaN eigenvalues", l[k], 0);
}

// symeig3_closed_form (the CPU SIMD lanes' and the CUDA float32 path's d = 3
// decomposition) on scalars and on Lanes, against symeig<3, double> (Jacobi): residual,
// orthogonality and eigenvalues within 16 eps ||B||_F over scales 1e-120..1e120, cluster
// widths 0..1 (two or three close eigenvalues), diagonal and near-scalar matrices; and
// exactly V = I, l = c for B = c I (0 included).
template <typename T>
double lane_value(const T& x, int j) {
  if constexpr (std::is_same_v<T, double>) {
    return x;
  } else {
    return x.v[j];
  }
}

template <typename T>
void test_symeig3_closed_form(std::mt19937_64& rng) {
  constexpr int W = std::is_same_v<T, double> ? 1 : probreg::kLaneWidth;
  std::uniform_real_distribution<double> uni(-1, 1);
  const double scales[] = {1e-120, 1e-30, 1e-5, 1.0, 1e5, 1e30, 1e120};
  const double gaps[] = {0.0, 1e-12, 1e-9, 1e-7, 1e-5, 1e-3, 1.0};
  const double eps = probreg::Eps<double>::value;
  for (double scale : scales)
    for (double gap : gaps)
      for (int rep = 0; rep < 96; rep += W) {
        T B[3][3], l[3], V[3][3];
        double Bd[W][3][3];
        for (int j = 0; j < W; ++j) {
          const int r = rep + j;
          long double eig[3];
          eig[0] = uni(rng);
          for (int k = 1; k < 3; ++k) eig[k] = (r % 2) ? eig[0] * (1 + gap * k) : uni(rng);
          if (r % 4 == 1) eig[2] = uni(rng);  // a cluster of two beside a distant one
          if (r % 8 == 3) eig[0] = 1, eig[1] = 1 + gap, eig[2] = 1 + 2 * gap;  // near c I
          for (int k = 0; k < 3; ++k) eig[k] *= scale;
          random_symmetric<3>(rng, eig, Bd[j]);
          if (r % 16 == 5)
            for (int a = 0; a < 3; ++a)
              for (int b = 0; b < 3; ++b)
                if (a != b) Bd[j][a][b] = 0;  // diagonal
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) {
              if constexpr (W == 1) {
                B[a][b] = Bd[j][a][b];
              } else {
                B[a][b].v[j] = Bd[j][a][b];
              }
            }
        }
        probreg::symeig3_closed_form<T>(B, l, V);
        probreg::sort_eigenpairs<3, T>(l, V);
        for (int j = 0; j < W; ++j) {
          double l_ref[3], V_ref[3][3];
          probreg::symeig<3, double>(Bd[j], l_ref, V_ref);
          long double fro = 0;
          for (int a = 0; a < 3; ++a)
            for (int b = 0; b < 3; ++b) fro += (long double)Bd[j][a][b] * Bd[j][a][b];
          const double norm = double(std::sqrt(fro));
          for (int k = 0; k < 3; ++k) {
            const double lk = lane_value(l[k], j);
            expect(std::fabs(lk - l_ref[k]) <= 16 * eps * norm, "closed form eigenvalue", std::fabs(lk - l_ref[k]) / norm,
                   16 * eps);
            if (k < 2) expect(lk <= lane_value(l[k + 1], j), "closed form ascending", lk, 0);
            long double resid = 0;
            for (int i = 0; i < 3; ++i) {
              long double rr = -(long double)lk * lane_value(V[i][k], j), dot = 0;
              for (int m = 0; m < 3; ++m) {
                rr += (long double)Bd[j][i][m] * lane_value(V[m][k], j);
                dot += (long double)lane_value(V[m][i], j) * lane_value(V[m][k], j);
              }
              resid = std::fmax(resid, std::fabs(rr));
              expect(std::fabs(double(dot) - (i == k)) <= 16 * eps, "closed form orthogonality", double(dot), 16 * eps);
            }
            expect(resid <= 16 * eps * norm, "closed form residual", double(resid) / norm, 16 * eps);
          }
        }
      }
  for (double c : {0.0, 2.5, -1e-100, 7e99}) {  // c I: V = I and l = c exactly
    T B[3][3], l[3], V[3][3];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) B[a][b] = T(a == b ? c : 0.0);
    probreg::symeig3_closed_form<T>(B, l, V);
    for (int a = 0; a < 3; ++a) {
      expect(lane_value(l[a], 0) == c, "closed form c I eigenvalue", lane_value(l[a], 0), c);
      for (int b = 0; b < 3; ++b)
        expect(lane_value(V[a][b], 0) == (a == b ? 1.0 : 0.0), "closed form c I gives V = I", lane_value(V[a][b], 0),
               a == b);
    }
  }
}

// cos_third_acos against long double cos(acos(x) / 3) on 20001 points of [0, 1]: the
// interpolation errors its comment states (double 1.2e-16, coarse double 4.0e-11, float
// 1.8e-9), plus the rounding of the type it runs in.
void test_cos_third_acos() {
  double worst_double = 0, worst_coarse = 0, worst_float = 0;
  for (int i = 0; i <= 20000; ++i) {
    const double x = i / 20000.0;
    const long double ref = std::cos(std::acos((long double)x) / 3);
    worst_double = std::fmax(worst_double, double(std::fabs(probreg::cos_third_acos<double>(x) - ref)));
    worst_coarse = std::fmax(worst_coarse, double(std::fabs(probreg::cos_third_acos<double, true>(x) - ref)));
    worst_float = std::fmax(worst_float, double(std::fabs(probreg::cos_third_acos<float>(float(x)) - ref)));
  }
  expect(worst_double <= 2.5e-16, "cos_third_acos double", worst_double, 2.5e-16);
  expect(worst_coarse <= 4.5e-11, "cos_third_acos coarse", worst_coarse, 4.5e-11);
  expect(worst_float <= 1e-7, "cos_third_acos float", worst_float, 1e-7);
}

// symeig_mixed (the CUDA float32 path) on float inputs: eigenvalues within 4e-12 ||B||
// of symeig<double>'s (clusters included: a float-only solver is off by ~eps_f ||B||
// there), float eigenvectors with residuals and orthogonality within 2 eps_f.
template <int D>
void test_symeig_mixed(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uni(-1, 1);
  const double scales[] = {1e-30, 1e-5, 1.0, 1e5, 1e30};
  const double gaps[] = {0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1.0};
  const double eps_f = probreg::Eps<float>::value;
  for (double scale : scales)
    for (double gap : gaps)
      for (int rep = 0; rep < 200; ++rep) {
        long double eig[D];
        eig[0] = uni(rng);
        for (int k = 1; k < D; ++k) eig[k] = (rep % 2) ? eig[0] * (1 + gap * k) : uni(rng);
        if (D == 3 && rep % 4 == 1) eig[D - 1] = uni(rng);  // a cluster of two beside a distant one
        for (int k = 0; k < D; ++k) eig[k] *= scale;
        double B[D][D];
        random_symmetric<D>(rng, eig, B);
        double norm = 0;
        for (int i = 0; i < D; ++i)
          for (int j = 0; j < D; ++j) {
            B[i][j] = double(float(B[i][j]));  // float32 inputs, as the kernels see them
            norm = std::fmax(norm, std::fabs(B[i][j]));
          }
        double l[D], l_ref[D], V_ref[D][D];
        float V[D][D];
        probreg::symeig_mixed<D>(B, l, V);
        probreg::symeig<D, double>(B, l_ref, V_ref);
        for (int k = 0; k < D; ++k) {
          expect(std::fabs(l[k] - l_ref[k]) <= 4e-12 * norm, "symeig_mixed eigenvalue", std::fabs(l[k] - l_ref[k]) / norm, 4e-12);
          long double resid = 0;
          for (int i = 0; i < D; ++i) {
            long double r = -(long double)l[k] * V[i][k];
            for (int j = 0; j < D; ++j) r += (long double)B[i][j] * V[j][k];
            resid = std::fmax(resid, std::fabs(r));
            long double dot = 0;
            for (int j = 0; j < D; ++j) dot += (long double)V[j][i] * V[j][k];
            expect(std::fabs(double(dot) - (i == k)) <= 2 * eps_f, "symeig_mixed orthogonality", double(dot), 2 * eps_f);
          }
          expect(resid <= 2 * eps_f * norm, "symeig_mixed residual", double(resid) / norm, 2 * eps_f);
        }
        for (int k = 0; k + 1 < D; ++k) expect(l[k] <= l[k + 1], "symeig_mixed ascending", l[k] - l[k + 1], 0);
      }
  // Exact cases: diagonal B gives a signed permutation, c I the identity; NaN poisons all.
  double diag[D][D] = {}, l[D];
  float V[D][D];
  for (int k = 0; k < D; ++k) diag[k][k] = double(D - k);  // descending diagonal
  probreg::symeig_mixed<D>(diag, l, V);
  for (int k = 0; k < D; ++k) {
    expect(l[k] == double(k + 1), "symeig_mixed diagonal eigenvalue", l[k], double(k + 1));
    expect(std::fabs(V[D - 1 - k][k]) == 1.0f, "symeig_mixed diagonal eigenvector", V[D - 1 - k][k], 1.0);
  }
  double scalar[D][D] = {};
  for (int k = 0; k < D; ++k) scalar[k][k] = 2.5;
  probreg::symeig_mixed<D>(scalar, l, V);
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) expect(V[i][j] == (i == j ? 1.0f : 0.0f), "symeig_mixed c I gives V = I", V[i][j], i == j);
  const double tiny_scalar = 1e-45;  // c I at both ends of float's range: l = c exactly
  for (double c : {tiny_scalar, 3.0e38}) {
    double cI[D][D] = {};
    for (int k = 0; k < D; ++k) cI[k][k] = c;
    probreg::symeig_mixed<D>(cI, l, V);
    for (int k = 0; k < D; ++k) expect(l[k] == c && V[k][k] == 1.0f, "symeig_mixed c I at the range's ends", l[k], c);
  }
  scalar[0][D - 1] = scalar[D - 1][0] = NAN;
  probreg::symeig_mixed<D>(scalar, l, V);
  for (int k = 0; k < D; ++k) expect(std::isnan(l[k]) && std::isnan(V[0][k]), "symeig_mixed NaN", l[k], 0);
  // +-Inf on the diagonal or off it (the out-of-line special case at d = 3) poisons all.
  for (int at = 0; at < 2; ++at)
    for (double inf : {INFINITY, -INFINITY}) {
      double B[D][D] = {};
      for (int k = 0; k < D; ++k) B[k][k] = 1.0 + k;
      B[0][at * (D - 1)] = B[at * (D - 1)][0] = inf;
      probreg::symeig_mixed<D>(B, l, V);
      for (int k = 0; k < D; ++k)
        for (int i = 0; i < D; ++i)
          expect(std::isnan(l[k]) && std::isnan(V[i][k]), "symeig_mixed Inf gives NaN", l[k], 0);
    }
}

// sort_eigenpairs_extreme_first against an independent stable sort, on triples whose
// first value is an extreme (the largest or the smallest, ties included): the values come
// out ascending and every column of V travels with its value.
void test_sort_extreme_first(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> small(0, 3);
  for (int rep = 0; rep < 2000; ++rep) {
    double l[3] = {double(small(rng)), double(small(rng)), double(small(rng))};
    const double lo = std::min(l[1], l[2]), hi = std::max(l[1], l[2]);
    l[0] = (rep % 2) ? hi + small(rng) : lo - small(rng);  // an extreme, ties included
    float V[3][3];
    for (int r = 0; r < 3; ++r)
      for (int c = 0; c < 3; ++c) V[r][c] = float(10 * c + r);  // column c is tagged by its tens
    const double in[3] = {l[0], l[1], l[2]};
    int order[3] = {0, 1, 2};
    std::stable_sort(order, order + 3, [&](int a, int b) { return in[a] < in[b]; });
    probreg::sort_eigenpairs_extreme_first<double, float>(l, V);
    for (int k = 0; k < 3; ++k) {
      expect(l[k] == in[order[k]], "sort_eigenpairs_extreme_first values", l[k], in[order[k]]);
      const int tag = int(V[0][k]) / 10;
      expect(in[tag] == l[k], "sort_eigenpairs_extreme_first column follows its value", in[tag], l[k]);
      for (int r = 0; r < 3; ++r) expect(V[r][k] == float(10 * tag + r), "sort_eigenpairs_extreme_first column intact", V[r][k], 0);
    }
  }
}

// Refined d = 3 eigenvalues (refine_eigenvalues3) of symeig<3, double> and of the CPU
// lanes' closed form, on matrices whose eigenvalues are known exactly: B = M diag(s) M^T
// with M/N the rational rotation of an integer quaternion (N its squared norm) and
// s_k = m_k 2^e_k (|m_k| <= 63, e_k in [-24, 4]), so every entry of B is exact in double
// (checked) and l_k = N^2 s_k exactly. Spreads up to 1e10 between the eigenvalues, where
// O(eps ||B||) solvers lose up to ten digits of the small ones. Bound: a few ulps of l_k
// itself plus the Rayleigh quotient's second-order term (eps ||B||_F)^2 / gap_k.
struct ExactSpectrum {
  double B[3][3];
  double l[3];  // ascending
  double gap[3];
  double fro;
};

ExactSpectrum exact_spectrum(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> component(-7, 7), mantissa(1, 63), exponent(-24, 4), sign(0, 1);
  ExactSpectrum x;
  for (;;) {
    const long long a = component(rng), b = component(rng), c = component(rng), d = component(rng);
    const long long n = a * a + b * b + c * c + d * d;
    if (n == 0) continue;
    const long long M[3][3] = {{a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)},
                               {2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)},
                               {2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d}};
    long double s[3];
    for (int k = 0; k < 3; ++k) s[k] = std::ldexp((long double)(sign(rng) ? -mantissa(rng) : mantissa(rng)), exponent(rng));
    if (s[0] == s[1] || s[0] == s[2] || s[1] == s[2]) continue;
    bool exact = true;
    long double fro = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        long double acc = 0;  // <= 52 significant bits: exact in long double
        for (int k = 0; k < 3; ++k) acc += (long double)(M[i][k] * M[j][k]) * s[k];
        x.B[i][j] = double(acc);
        exact = exact && (long double)x.B[i][j] == acc;
        fro += acc * acc;
      }
    if (!exact) continue;
    x.fro = double(std::sqrt(fro));
    for (int k = 0; k < 3; ++k) x.l[k] = double((long double)(n * n) * s[k]);
    std::sort(x.l, x.l + 3);
    for (int k = 0; k < 3; ++k) {
      x.gap[k] = INFINITY;
      for (int j = 0; j < 3; ++j)
        if (j != k) x.gap[k] = std::fmin(x.gap[k], std::fabs(x.l[j] - x.l[k]));
    }
    return x;
  }
}

void expect_refined(const ExactSpectrum& x, const double l[3], const char* what) {
  const double eps = probreg::Eps<double>::value;
  for (int k = 0; k < 3; ++k) {
    const double second_order = eps * x.fro * eps * x.fro / x.gap[k];
    const double bound = 8 * eps * std::fabs(x.l[k]) + 4 * second_order;
    expect(std::fabs(l[k] - x.l[k]) <= bound, what, std::fabs(l[k] - x.l[k]) / std::fabs(x.l[k]),
           bound / std::fabs(x.l[k]));
  }
}

void test_refined_eigenvalues(std::mt19937_64& rng) {
  for (int rep = 0; rep < 4000; ++rep) {
    const ExactSpectrum x = exact_spectrum(rng);
    double l[3], V[3][3];
    probreg::symeig<3, double>(x.B, l, V);
    expect_refined(x, l, "symeig<3, double> refined eigenvalue");
  }
#if defined(PROBREG_HAVE_LANES)
  using probreg::Lanes;
  for (int rep = 0; rep < 4000; rep += probreg::kLaneWidth) {
    ExactSpectrum x[probreg::kLaneWidth];
    Lanes B[3][3], l[3], V[3][3];
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      x[j] = exact_spectrum(rng);
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) B[r][c].v[j] = x[j].B[r][c];
    }
    probreg::symeig3_closed_form<Lanes>(B, l, V);
    probreg::refine_eigenvalues3<Lanes>(B, V, l);
    probreg::sort_eigenpairs<3, Lanes>(l, V);
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      const double lj[3] = {l[0].v[j], l[1].v[j], l[2].v[j]};
      expect_refined(x[j], lj, "closed form (lanes) refined eigenvalue");
    }
  }
#endif
}

// Divided differences against long double (well-separated) and g' (ties).
void test_divided_difference() {
  const double theta = 0.5;
  const double ls[] = {-500.0, -40.0, -3.0, 0.2, 0.49, 0.5, 0.5000001, 0.7, 3.0, 100.0};
  for (double a : ls)
    for (double b : ls) {
      const double k = probreg::remap_divided_difference(a, b, theta);
      long double ref;
      auto g = [&](long double x) {
        return x > theta ? x : (long double)theta * std::exp(x / (long double)theta - 1);
      };
      if (a == b) {
        ref = a > theta ? 1.0L : std::exp(a / (long double)theta - 1);
      } else {
        ref = (g(a) - g(b)) / ((long double)a - b);
      }
      if (ref < 1e-290L) {  // below double's normal range: k must underflow cleanly
        expect(k >= 0 && k < 1e-290, "divided difference underflow", k, 1e-290);
        continue;
      }
      const double err = double(std::fabs((k - ref) / ref));
      // Near-ties in long double lose digits themselves; the bound covers that.
      const double bound = std::fabs(a - b) < 1e-3 && a != b ? 1e-9 : 1e-14;
      expect(err <= bound, "divided difference vs long double", err, bound);
    }
  // Both far below theta: finite and exact 0 or tiny, never NaN.
  const double k = probreg::remap_divided_difference(-1e4, -2e4, 1.0);
  expect(std::isfinite(k) && k >= 0, "divided difference deep underflow finite", k, 0);
}

// The series of the spectral backward, cut for a double result rounded to float
// (series_precision 1) and for float: against long double sums (libm expm1; sinh(x)/x).
void test_float_result_series() {
  double worst_expm1 = 0, worst_sinhc = 0, worst_expm1_f = 0, worst_sinhc_f = 0;
  for (int k = -1000; k <= 1000; ++k) {
    const double x = 0.4999 * k / 1000.0;  // expm1_taylor's |x| < 1/2
    if (x != 0) {
      const long double ref = std::expm1((long double)x);
      worst_expm1 = std::fmax(worst_expm1, double(std::fabs(probreg::expm1_taylor<double, float>(x) - ref) / std::fabs(ref)));
      worst_expm1_f = std::fmax(worst_expm1_f, double(std::fabs(probreg::expm1_taylor<float>(float(x)) - std::expm1((long double)float(x))) /
                                                      std::fabs(std::expm1((long double)float(x)))));
    }
    const double u = std::fabs(k) / 1000.0;  // sinhc_unit's 0 <= x <= 1
    const long double sref = u == 0 ? 1.0L : std::sinh((long double)u) / u;
    worst_sinhc = std::fmax(worst_sinhc, double(std::fabs(probreg::sinhc_unit<double, float>(u) - sref) / sref));
    const long double sref_f = u == 0 ? 1.0L : std::sinh((long double)float(u)) / float(u);
    worst_sinhc_f = std::fmax(worst_sinhc_f, double(std::fabs(probreg::sinhc_unit<float>(float(u)) - sref_f) / sref_f));
  }
  expect(worst_expm1 <= 1e-13, "expm1_taylor<double, float>", worst_expm1, 1e-13);
  expect(worst_sinhc <= 1e-14, "sinhc_unit<double, float>", worst_sinhc, 1e-14);
  expect(worst_expm1_f <= 4e-7, "expm1_taylor<float>", worst_expm1_f, 4e-7);
  expect(worst_sinhc_f <= 4e-7, "sinhc_unit<float>", worst_sinhc_f, 4e-7);
}

#if defined(PROBREG_HAVE_LANES)
void test_lanes_math() {
  using probreg::Lanes;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uni(-745, 709);
  double worst_exp = 0, worst_expm1 = 0, worst_exp_float_result = 0;
  for (int rep = 0; rep < 20000; ++rep) {
    Lanes x, small;
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      x.v[j] = uni(rng);
      small.v[j] = x.v[j] / 700.0;
    }
    const Lanes e = probreg::pr_exp(x), m1 = probreg::pr_expm1(small);
    Lanes nonpositive;  // the float-result exp's domain, x <= 0
    for (int j = 0; j < probreg::kLaneWidth; ++j) nonpositive.v[j] = -std::fabs(x.v[j]);
    const Lanes ef = probreg::pr_exp_nonpositive_float_result(nonpositive);
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      const double re = std::exp(x.v[j]), re_nonpositive = std::exp(nonpositive.v[j]);
      if (re > 1e-300) worst_exp = std::fmax(worst_exp, std::fabs(e.v[j] - re) / re);
      if (re_nonpositive > 1e-300)
        worst_exp_float_result =
            std::fmax(worst_exp_float_result, std::fabs(ef.v[j] - re_nonpositive) / re_nonpositive);
      const double rm = std::expm1(small.v[j]);
      if (rm != 0) worst_expm1 = std::fmax(worst_expm1, std::fabs(m1.v[j] - rm) / std::fabs(rm));
    }
  }
  expect(worst_exp <= 4e-16, "Lanes exp relative error", worst_exp, 4e-16);
  expect(worst_expm1 <= 4e-16, "Lanes expm1 relative error", worst_expm1, 4e-16);
  // For results rounded to float (series_precision 1): ~1e-11, far below float's 6e-8.
  expect(worst_exp_float_result <= 1e-11, "Lanes exp for float results", worst_exp_float_result, 1e-11);
  // Each extreme argument in the last lane, the others 0 (any lane width).
  const int last = probreg::kLaneWidth - 1;
  auto exp_in_last_lane = [&](double x) {
    Lanes in(0.0);
    in.v[last] = x;
    return probreg::pr_exp(in).v[last];
  };
  const double overflow = exp_in_last_lane(800.0), underflow = exp_in_last_lane(-800.0);
  const double subnormal = exp_in_last_lane(-740.0);
  expect(std::isinf(overflow), "exp overflow", overflow, 0);
  expect(underflow == 0.0, "exp underflow", underflow, 0);
  expect(std::fabs(subnormal - std::exp(-740.0)) <= 1e-3 * std::exp(-740.0), "exp subnormal", subnormal, 0);
  // The float-result exp: floored at -708 (a tiny normal number, float's 0 once scaled by
  // any float-range factor), 1 at 0, NaN in NaN out.
  auto float_result_in_last_lane = [&](double x) {
    Lanes in(0.0);
    in.v[last] = x;
    return probreg::pr_exp_nonpositive_float_result(in).v[last];
  };
  const double floored = float_result_in_last_lane(-800.0), at_floor = std::exp(-708.0);
  expect(floored > 0 && std::fabs(floored - at_floor) <= 1e-11 * at_floor && floored * 3.5e38 < 1e-260,
         "float-result exp floor", floored, at_floor);
  expect(float_result_in_last_lane(0.0) == 1.0, "float-result exp(0)", float_result_in_last_lane(0.0), 1.0);
  expect(std::isnan(float_result_in_last_lane(NAN)), "float-result exp NaN", 0, 0);
  expect(std::isnan(float_result_in_last_lane(-INFINITY)) == false && float_result_in_last_lane(-INFINITY) > 0,
         "float-result exp(-inf) floored", float_result_in_last_lane(-INFINITY), at_floor);
}

// FloatLanes (the CPU float32 path's value type): exp against the double libm exp, within
// one float ulp (2^-23 relative; the rounding of the result alone is up to 2^-24), its
// range ends, and the conversions and masks between LanePair and FloatLanes.
void test_float_lanes_math() {
  using probreg::FloatLanes;
  using probreg::LanePair;
  constexpr int W = probreg::kFloatLaneWidth;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> uni(-87.0, 88.0);
  double worst = 0;
  for (int rep = 0; rep < 20000; ++rep) {
    FloatLanes x;
    for (int j = 0; j < W; ++j) x.v[j] = float(uni(rng));
    const FloatLanes e = probreg::pr_exp(x);
    for (int j = 0; j < W; ++j) {
      const double re = std::exp(double(x.v[j]));
      worst = std::fmax(worst, std::fabs(double(e.v[j]) - re) / re);
    }
  }
  expect(worst <= 1.2e-7, "FloatLanes exp relative error", worst, 1.2e-7);
  auto exp_in_last_lane = [&](float x) {
    FloatLanes in(0.0);
    in.v[W - 1] = x;
    return probreg::pr_exp(in).v[W - 1];
  };
  const float overflow = exp_in_last_lane(89.0f), underflow = exp_in_last_lane(-104.0f);
  const float subnormal = exp_in_last_lane(-100.0f), nan = exp_in_last_lane(NAN);
  expect(std::isinf(overflow), "FloatLanes exp overflow", overflow, 0);
  expect(underflow == 0.0f, "FloatLanes exp underflow", underflow, 0);
  // exp(-100) = 3.72e-44 is subnormal in float: within one subnormal step (2^-149).
  expect(std::fabs(subnormal - std::exp(-100.0)) <= std::ldexp(1.0, -149), "FloatLanes exp subnormal", subnormal, 0);
  expect(std::isnan(nan), "FloatLanes exp NaN", nan, 0);
  // LanePair -> FloatLanes rounds each element (element j of the pair's first block is
  // element j, of its second block element kLaneWidth + j); back is exact; a LanePair mask
  // selects the same elements.
  LanePair p;
  for (int j = 0; j < probreg::kLaneWidth; ++j) {
    p.first.v[j] = 1.0 + j / 3.0;
    p.second.v[j] = -2.0 - j / 7.0;
  }
  const FloatLanes f(p);
  const LanePair back(f);
  const FloatLanes picked = probreg::pr_where(p > LanePair(0.0), f, FloatLanes(7.0));
  for (int j = 0; j < probreg::kLaneWidth; ++j) {
    const int k = probreg::kLaneWidth + j;
    expect(f.v[j] == float(p.first.v[j]) && f.v[k] == float(p.second.v[j]), "FloatLanes(LanePair)", f.v[j], 0);
    expect(back.first.v[j] == double(f.v[j]) && back.second.v[j] == double(f.v[k]), "LanePair(FloatLanes)",
           back.first.v[j], 0);
    expect(picked.v[j] == f.v[j] && picked.v[k] == 7.0f, "pr_where(PairMask, FloatLanes)", picked.v[k], 0);
  }
}
#endif

}  // namespace

int main() {
  std::mt19937_64 rng(1234);
  test_symeig<1>(rng);
  test_symeig<2>(rng);
  test_symeig<3>(rng);
  test_symeig3_closed_form<double>(rng);
#if defined(PROBREG_HAVE_LANES)
  test_symeig3_closed_form<probreg::Lanes>(rng);
#endif
  test_refined_eigenvalues(rng);
  test_cos_third_acos();
  test_symeig_mixed<2>(rng);
  test_symeig_mixed<3>(rng);
  test_sort_extreme_first(rng);
  test_divided_difference();
  test_float_result_series();
#if defined(PROBREG_HAVE_LANES)
  test_lanes_math();
  test_float_lanes_math();
#endif
  // Packed layout round trip: ||raw||_2 == ||B||_F.
  const double raw[6] = {1.0, 2.0, 3.0, 4.0, 5.0, 6.0};
  double B[3][3], back[6];
  probreg::unpack_symmetric<3, double>(raw, B);
  double fro = 0, nraw = 0;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) fro += B[i][j] * B[i][j];
  for (double r : raw) nraw += r * r;
  expect(std::fabs(fro - nraw) < 1e-12, "packed isometry", fro - nraw, 1e-12);
  probreg::pack_symmetric_grad<3, double>(B, back);  // d/draw of 0.5||B||^2 = raw
  for (int k = 0; k < 6; ++k) expect(std::fabs(back[k] - raw[k]) < 1e-12, "packed gradient", back[k], raw[k]);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_math: all checks passed\n");
  return 0;
}

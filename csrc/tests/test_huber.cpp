// Unit tests of include/probreg/huber.h (g++ alone, ctest). Independent references:
// long double arithmetic and libm. The loss and its gradient against the float64 eigh
// reference are tested from Python (tests/test_nll.py).
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <random>

#include "probreg/huber.h"
#include "probreg/lanes.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, double value, double bound) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: %.6e (bound %.3e)\n", what, value, bound);
  }
}

double rel(long double a, long double b) {
  const long double den = std::fabs(b) > 0 ? std::fabs(b) : 1.0L;
  return double(std::fabs(a - b) / den);
}

// |a - b| in units of b's magnitude, where results below the normal range (which carry
// fewer digits) count the subnormal spacing 2^-1074 as the unit of error.
double rel_to_double(double a, long double b) {
  const long double unit = std::fmax(std::fabs(b) * 4e-16L, (long double)DBL_TRUE_MIN);
  return double(std::fabs(a - b) / unit) * 4e-16;
}

long double rho_ref(int family, long double s, long double delta) {
  switch (family) {
    case probreg::kFamilyHuber:
      return s <= delta ? s * s / 2 : delta * (s - delta / 2);
    case probreg::kFamilyGauss:
      return s * s / 2;
    case probreg::kFamilyLaplace:
      return s;
    default:
      return s * s / (std::sqrt(s * s + 1) + 1);
  }
}

long double rho_prime_ref(int family, long double s, long double delta) {
  switch (family) {
    case probreg::kFamilyHuber:
      return s <= delta ? s : delta;
    case probreg::kFamilyGauss:
      return s;
    case probreg::kFamilyLaplace:
      return s > 0 ? 1 : 0;
    default:
      return s / std::sqrt(s * s + 1);
  }
}

template <int F>
void check_family(const double* radii, int count, double delta) {
  for (int k = 0; k < count; ++k) {
    const double s = radii[k];
    const double r = probreg::family_rho<F>(s, delta);
    const double rp = probreg::family_rho_prime<F>(s, delta);
    if (F == probreg::kFamilyGauss && s > 1e150) continue;  // s^2/2 overflows double: correct
    const double e = rel_to_double(r, rho_ref(F, s, delta));
    const double ep = rel_to_double(rp, rho_prime_ref(F, s, delta));
    expect(std::isfinite(r) && e <= 4e-16, "family rho vs long double", e, 4e-16);
    expect(std::isfinite(rp) && ep <= 4e-16, "family rho' vs long double", ep, 4e-16);
  }
}

void test_families() {
  const double radii[] = {0.0, 1e-310, 1e-30, 1e-8, 0.3, 0.7999999999999999, 0.8, 0.8000000000000002,
                          1.0, 3.0, 1e7, 1e8, 1.0000001e8, 1e30, 1e300};
  const int count = sizeof(radii) / sizeof(radii[0]);
  for (double delta : {0.0, 0.8, 5.0}) {
    check_family<probreg::kFamilyHuber>(radii, count, delta);
    check_family<probreg::kFamilyGauss>(radii, count, delta);
    check_family<probreg::kFamilyLaplace>(radii, count, delta);
    check_family<probreg::kFamilyCharbonnier>(radii, count, delta);
  }
}

// Norms and directions over the whole double range, subnormals included.
void test_norms() {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> expo(-320, 305), uni(-1, 1);
  for (int rep = 0; rep < 20000; ++rep) {
    double p[3];
    const double scale = std::pow(10.0, expo(rng));
    for (double& x : p) x = uni(rng) * scale;
    if (rep % 7 == 0) p[1] = 0.0;
    long double ss = 0;
    for (double x : p) ss += (long double)x * x;
    const long double ref = std::sqrt(ss);
    if (ref == 0) continue;
    double u[3];
    const double s = probreg::norm_and_direction<3>(p, u);
    const double s2 = probreg::scaled_norm<3>(p);
    expect(rel_to_double(s, ref) <= 4e-16, "norm_and_direction vs long double", rel_to_double(s, ref), 4e-16);
    expect(s == s2, "scaled_norm == norm_and_direction", s - s2, 0);
    long double un = 0;
    for (double x : u) un += (long double)x * x;
    expect(std::fabs(double(un) - 1.0) <= 1e-15, "unit direction", double(un) - 1.0, 1e-15);
  }
  double zero[2] = {0.0, 0.0}, u[2];
  expect(probreg::norm_and_direction<2>(zero, u) == 0.0 && u[0] == 0.0 && u[1] == 0.0, "zero residual", 0, 0);
}

// sum_j log x_j with one logarithm, and the remapped log-determinant.
// Out = float: the shorter series of a result rounded to float (the CUDA mixed policy).
template <typename T, typename Out = T>
void test_log_det_impl(const char* label, double bound) {
  std::mt19937_64 rng(9);
  // Normal x for the scalars (sum_log_normal's contract); the lanes also take subnormals.
  std::uniform_real_distribution<double> expo(std::is_floating_point_v<T> ? -306 : -320, 307), uni(0.1, 1.0);
  double worst = 0;
  for (int rep = 0; rep < 4000; ++rep) {
    double x[3];
    for (double& v : x) v = uni(rng) * std::pow(10.0, expo(rng));
    T xt[3];
    for (int lane = 0; lane < 3; ++lane) xt[lane] = T(x[lane]);
    const T got = probreg::sum_log_normal<3, T, Out>(xt);
    long double ref = 0;
    for (double v : x) ref += std::log((long double)v);
    double g;
    if constexpr (std::is_same_v<T, double>) {
      g = got;
    } else {
      g = got.v[0];
    }
    worst = std::fmax(worst, double(std::fabs(g - ref) / std::fmax(1.0L, std::fabs(ref))));
  }
  expect(worst <= bound, label, worst, bound);
}

void test_log_det() {
  test_log_det_impl<double>("sum_log_normal<double> vs long double", 4e-16);
  test_log_det_impl<double, float>("sum_log_normal<double, float> vs long double", 2e-14);
#if defined(PROBREG_HAVE_LANES)
  test_log_det_impl<probreg::Lanes>("sum_log_normal<Lanes> vs long double", 4e-16);
#endif
  const double theta = 0.5;
  const double ls[] = {-1e4, -500.0, -43.0, -1e-3, 0.0, 0.25, 0.5, 0.5000001, 2.0, 1e5, 1e300};
  for (double a : ls)
    for (double b : ls) {
      const double l[2] = {a, b};
      long double ref = 0;
      for (double v : l) ref -= v > theta ? std::log((long double)v) : v / (long double)theta - 1 + std::log((long double)theta);
      const double got = probreg::neg_log_det_remap<2>(l, theta);
      const double err = double(std::fabs(got - ref) / std::fmax(1.0L, std::fabs(ref)));
      expect(err <= 4e-16, "neg_log_det_remap vs long double", err, 4e-16);
    }
  const double nan_l[2] = {NAN, 1.0};
  expect(std::isnan(probreg::neg_log_det_remap<2>(nan_l, theta)), "NaN eigenvalue propagates", 0, 0);
}

#if defined(PROBREG_HAVE_LANES)
// The SIMD lanes give the scalar result in every lane (forward and backward).
void test_lanes_match_scalar() {
  using probreg::Lanes;
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  double worst = 0;
  for (int rep = 0; rep < 500; ++rep) {
    double raw[3], loc[2], y[2];
    for (double& v : raw) v = 3 * normal(rng);
    for (double& v : loc) v = normal(rng) * (rep % 3 == 0 ? 1e6 : 1.0);
    for (double& v : y) v = normal(rng);
    double B[2][2], l[2], V[2][2];
    probreg::unpack_symmetric<2, double>(raw, B);
    probreg::symeig<2, double>(B, l, V);
    const double go = normal(rng);
    Lanes Ll[2], LV[2][2], Lloc[2], Ly[2];
    for (int i = 0; i < 2; ++i) {
      Ll[i] = Lanes(l[i]);
      Lloc[i] = Lanes(loc[i]);
      Ly[i] = Lanes(y[i]);
      for (int j = 0; j < 2; ++j) LV[i][j] = Lanes(V[i][j]);
    }
    for (bool mu : {false, true}) {
      const double s = probreg::huber_nll_full_eig<2, probreg::kFamilyHuber, double>(l, V, loc, y, 0.8, 0.5, mu);
      const Lanes sl = probreg::huber_nll_full_eig<2, probreg::kFamilyHuber, Lanes>(Ll, LV, Lloc, Ly, Lanes(0.8),
                                                                                    Lanes(0.5), mu);
      worst = std::fmax(worst, rel(sl.v[probreg::kLaneWidth - 1], s));
      double gl[2], gB[2][2], gy[2];
      Lanes Lgl[2], LgB[2][2], Lgy[2];
      probreg::huber_nll_full_backward_eig<2, probreg::kFamilyCharbonnier, double>(l, V, loc, y, go, 0.8, 0.5, mu,
                                                                                  gl, gB, gy);
      probreg::huber_nll_full_backward_eig<2, probreg::kFamilyCharbonnier, Lanes>(
          Ll, LV, Lloc, Ly, Lanes(go), Lanes(0.8), Lanes(0.5), mu, Lgl, LgB, Lgy);
      for (int i = 0; i < 2; ++i) {
        worst = std::fmax(worst, rel(Lgl[i].v[probreg::kLaneWidth - 1], gl[i]) * (std::fabs(gl[i]) > 1e-12));
        worst = std::fmax(worst, rel(Lgy[i].v[probreg::kLaneWidth - 1], gy[i]) * (std::fabs(gy[i]) > 1e-12));
        for (int j = 0; j < 2; ++j) worst = std::fmax(worst, rel(LgB[i][j].v[probreg::kLaneWidth - 1], gB[i][j]) * (std::fabs(gB[i][j]) > 1e-12));
      }
    }
  }
  expect(worst <= 1e-13, "Lanes huber_nll == scalar", worst, 1e-13);
}
#endif

}  // namespace

int main() {
  test_families();
  test_norms();
  test_log_det();
#if defined(PROBREG_HAVE_LANES)
  test_lanes_match_scalar();
#endif
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_huber: all checks passed\n");
  return 0;
}

// Unit tests of csrc/include/probreg/fuse.h, compiled with g++ alone (ctest).
// Independent references: closed forms (n = 1, delta = inf, a 1-D case with a known
// minimiser), long double gradients of the energy, and central finite differences of the
// converged solve for the implicit gradient.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "probreg/fuse.h"
#include "probreg/lanes.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what, double value, double bound) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: %.3e (bound %.3e)\n", what, value, bound);
  }
}

template <int D>
struct Problem {
  std::vector<double> v, A, w;  // (n, D), (n, D, D), (n)
  int64_t n() const { return int64_t(w.size()); }
};

template <int D>
struct VecTerms {
  const Problem<D>* p;
  void load(int64_t i, double A[D][D], double v[D], double& w) const {
    for (int a = 0; a < D; ++a) {
      v[a] = p->v[i * D + a];
      for (int b = 0; b < D; ++b) A[a][b] = p->A[(i * D + a) * D + b];
    }
    w = p->w[i];
  }
};

template <int D>
struct VecSink {
  std::vector<double> gv, gA, gw;
  explicit VecSink(int64_t n) : gv(n * D), gA(n * D * D), gw(n) {}
  void store(int64_t i, const double gAm[D][D], const double gvv[D], double gww) {
    for (int a = 0; a < D; ++a) {
      gv[i * D + a] = gvv[a];
      for (int b = 0; b < D; ++b) gA[(i * D + a) * D + b] = gAm[a][b];
    }
    gw[i] = gww;
  }
};

template <int D>
Problem<D> random_problem(std::mt19937_64& rng, int n, double spread) {
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(0.2, 1.0);
  Problem<D> p;
  for (int i = 0; i < n; ++i) {
    for (int a = 0; a < D; ++a) {
      p.v.push_back(spread * normal(rng));
      for (int b = 0; b < D; ++b) p.A.push_back((a == b ? 1.0 : 0.0) + 0.5 * normal(rng));
    }
    p.w.push_back(uniform(rng));
  }
  return p;
}

template <int D>
probreg::FuseOutput<D, double> solve(const Problem<D>& p, double delta, double tol = 1e-6) {
  probreg::FuseOutput<D, double> out;
  probreg::fuse_solve<D, double>(VecTerms<D>{&p}, p.n(), delta, nullptr, 50, tol, out);
  return out;
}

// Long double gradient of E at y, and the stationarity scale trace(N) (1 + ||y||) with
// trace(N) = sum_i w_i psi_i ||A_i||_F^2: ||grad|| / scale is about the relative error of y
// for a well-conditioned Hessian.
template <int D>
void gradient_ld(const Problem<D>& p, const double y[D], double delta, long double g[D], long double& scale) {
  for (int a = 0; a < D; ++a) g[a] = 0;
  long double trace = 0, ynorm = 0;
  for (int a = 0; a < D; ++a) ynorm += (long double)y[a] * y[a];
  for (int64_t i = 0; i < p.n(); ++i) {
    long double e[D], r2 = 0, fro = 0;
    for (int a = 0; a < D; ++a) {
      e[a] = -(long double)p.v[i * D + a];
      for (int b = 0; b < D; ++b) {
        const long double Aab = p.A[(i * D + a) * D + b];
        e[a] += Aab * y[b];
        fro += Aab * Aab;
      }
      r2 += e[a] * e[a];
    }
    const long double r = std::sqrt(r2);
    const long double psi = r <= delta ? 1.0L : delta / r;
    for (int b = 0; b < D; ++b) {
      long double q = 0;
      for (int a = 0; a < D; ++a) q += (long double)p.A[(i * D + a) * D + b] * e[a];
      g[b] += p.w[i] * psi * q;
    }
    trace += p.w[i] * psi * fro;
  }
  scale = trace * (1 + std::sqrt(ynorm));
}

template <int D>
void test_single_estimate(std::mt19937_64& rng) {
  for (int trial = 0; trial < 50; ++trial) {
    Problem<D> p = random_problem<D>(rng, 1, 3.0);
    const auto out = solve<D>(p, 1.0);
    // residual A y - v must vanish: y = A^{-1} v
    double worst = 0;
    for (int a = 0; a < D; ++a) {
      long double e = -(long double)p.v[a];
      for (int b = 0; b < D; ++b) e += (long double)p.A[a * D + b] * out.y[b];
      worst = std::fmax(worst, double(std::fabs(e)));
    }
    expect(out.converged && worst < 1e-12, "n=1: A y - v", worst, 1e-12);
  }
}

template <int D>
void test_gaussian_limit(std::mt19937_64& rng) {
  // delta = inf: y* is the weighted least-squares point; check the long double gradient.
  for (int trial = 0; trial < 50; ++trial) {
    Problem<D> p = random_problem<D>(rng, 1 + trial % 7, 5.0);
    const auto out = solve<D>(p, INFINITY);
    long double g[D], scale;
    gradient_ld<D>(p, out.y, INFINITY, g, scale);
    long double gn = 0;
    for (int a = 0; a < D; ++a) gn += g[a] * g[a];
    const double rel = double(std::sqrt(gn) / scale);
    expect(out.converged && out.iterations <= 2 && rel < 1e-13, "delta=inf: relative gradient", rel, 1e-13);
  }
}

template <int D>
void test_random_stationarity(std::mt19937_64& rng, double spread) {
  int worst_iterations = 0;
  for (int trial = 0; trial < 200; ++trial) {
    Problem<D> p = random_problem<D>(rng, 1 + trial % 9, spread);
    const auto out = solve<D>(p, 1.0);
    long double g[D], scale;
    gradient_ld<D>(p, out.y, 1.0, g, scale);
    long double gn = 0;
    for (int a = 0; a < D; ++a) gn += g[a] * g[a];
    const double rel = double(std::sqrt(gn) / scale);
    expect(out.converged, "random: converged", 0, 0);
    expect(rel < 1e-11, "random: relative gradient at y*", rel, 1e-11);
    if (int(out.iterations) > worst_iterations) worst_iterations = int(out.iterations);
  }
  expect(worst_iterations <= 30, "random: iterations", worst_iterations, 30);
}

void test_known_1d_minimiser() {
  // v = {0, 10, 20}, A = 1, w = {1, 1, 3}, delta = 0.1: the two left terms pull with
  // constant force delta each, the right one is quadratic: 3 (y - 20) + 2 delta = 0.
  Problem<1> p{{0.0, 10.0, 20.0}, {1.0, 1.0, 1.0}, {1.0, 1.0, 3.0}};
  const auto out = solve<1>(p, 0.1);
  const double expected = 20.0 - 2.0 * 0.1 / 3.0;
  expect(out.converged && std::fabs(out.y[0] - expected) < 1e-12, "1-D known minimiser",
         std::fabs(out.y[0] - expected), 1e-12);
  expect(std::fabs(out.hess[0][0] - 3.0) < 1e-12, "1-D Hessian (outside terms have none)",
         std::fabs(out.hess[0][0] - 3.0), 1e-12);
}

void test_degenerate() {
  Problem<2> zero{{1.0, 2.0, 3.0, 4.0}, {1, 0, 0, 1, 1, 0, 0, 1}, {0.0, 0.0}};
  const auto out = solve<2>(zero, 1.0);
  expect(std::isnan(out.y[0]) && !out.converged && out.hess[0][0] == 0.0 && out.iterations == 0,
         "all-zero weights: NaN y, zero Hessian, not converged", out.y[0], 0);
  Problem<2> bad{{1.0, NAN, 3.0, 4.0}, {1, 0, 0, 1, 1, 0, 0, 1}, {1.0, 1.0}};
  const auto out2 = solve<2>(bad, 1.0);
  expect(std::isnan(out2.y[0]) && std::isnan(out2.hess[0][0]) && !out2.converged, "NaN input: NaN output",
         out2.y[0], 0);
  Problem<2> padded{{1.0, 2.0, NAN, NAN}, {1, 0, 0, 1, NAN, 0, 0, 1}, {1.0, 0.0}};
  const auto out3 = solve<2>(padded, 1.0);
  expect(out3.converged && std::fabs(out3.y[0] - 1.0) < 1e-14 && std::fabs(out3.y[1] - 2.0) < 1e-14,
         "NaN padding with zero weight is ignored", out3.y[0], 0);
  Problem<1> negative{{1.0, 2.0}, {1.0, 1.0}, {1.0, -1.0}};
  const auto out4 = solve<1>(negative, 1.0);
  expect(std::isnan(out4.y[0]) && !out4.converged, "negative weight: NaN", out4.y[0], 0);
}

// Implicit gradient vs central differences of the converged solve (damping = 0).
template <int D>
void test_backward_fd(std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  const double delta = 1.0, h = 1e-6;
  for (int trial = 0; trial < 20; ++trial) {
    Problem<D> p = random_problem<D>(rng, 2 + trial % 5, 2.0);
    const auto out = solve<D>(p, delta, 1e-14);
    double gy[D];
    for (int a = 0; a < D; ++a) gy[a] = normal(rng);
    VecSink<D> sink(p.n());
    probreg::fuse_backward<D, double>(VecTerms<D>{&p}, p.n(), out.y, delta, 0.0, gy, sink);
    auto loss = [&](const Problem<D>& q) {
      const auto o = solve<D>(q, delta, 1e-14);
      double s = 0;
      for (int a = 0; a < D; ++a) s += gy[a] * o.y[a];
      return s;
    };
    double worst = 0, scale = 1e-3;
    auto check = [&](std::vector<double> Problem<D>::*field, const std::vector<double>& analytic) {
      for (size_t k = 0; k < (p.*field).size(); ++k) {
        Problem<D> plus = p, minus = p;
        (plus.*field)[k] += h;
        (minus.*field)[k] -= h;
        const double fd = (loss(plus) - loss(minus)) / (2 * h);
        worst = std::fmax(worst, std::fabs(fd - analytic[k]));
        scale = std::fmax(scale, std::fabs(fd));
      }
    };
    check(&Problem<D>::v, sink.gv);
    check(&Problem<D>::A, sink.gA);
    check(&Problem<D>::w, sink.gw);
    expect(worst / scale < 1e-5, "backward vs finite differences (relative to max |grad|)", worst / scale, 1e-5);
  }
}

void test_ldl_solve(std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 100; ++trial) {
    double B[3][3], M[3][3], b[3], x[3];
    for (int i = 0; i < 3; ++i) {
      b[i] = normal(rng);
      for (int j = 0; j < 3; ++j) B[i][j] = normal(rng);
    }
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        M[i][j] = (i == j) ? 0.1 : 0.0;
        for (int k = 0; k < 3; ++k) M[i][j] += B[k][i] * B[k][j];
      }
    const bool ok = probreg::fuse_ldl_solve<3, double>(M, b, x, 0.0);
    double worst = 0;
    for (int i = 0; i < 3; ++i) {
      long double r = -(long double)b[i];
      for (int j = 0; j < 3; ++j) r += (long double)M[i][j] * x[j];
      worst = std::fmax(worst, double(std::fabs(r)));
    }
    expect(ok && worst < 1e-10, "LDL solve residual", worst, 1e-10);
  }
  // Singular PSD matrix: the dropped pivot gives a consistent solution and ok = false.
  double S[2][2] = {{1.0, 1.0}, {1.0, 1.0}}, b[2] = {2.0, 2.0}, x[2];
  const bool ok = probreg::fuse_ldl_solve<2, double>(S, b, x, 1e-12);
  expect(!ok && std::fabs(x[0] + x[1] - 2.0) < 1e-14, "LDL singular: consistent solution", x[0] + x[1], 2.0);
}

#if defined(PROBREG_HAVE_LANES)
// kLaneWidth problems (different n-independent difficulty, one all-zero, one NaN) solved in
// lockstep on Lanes give each problem's scalar result.
template <int D>
struct LaneTerms {
  const Problem<D>* p;  // kLaneWidth problems with equal n
  void load(int64_t i, probreg::Lanes A[D][D], probreg::Lanes v[D], probreg::Lanes& w) const {
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      for (int a = 0; a < D; ++a) {
        v[a].v[j] = p[j].v[i * D + a];
        for (int b = 0; b < D; ++b) A[a][b].v[j] = p[j].A[(i * D + a) * D + b];
      }
      w.v[j] = p[j].w[i];
    }
  }
};

template <int D>
void test_lanes_match_scalar(std::mt19937_64& rng) {
  using probreg::Lanes;
  for (int trial = 0; trial < 20; ++trial) {
    Problem<D> probs[probreg::kLaneWidth];
    for (int j = 0; j < probreg::kLaneWidth; ++j) probs[j] = random_problem<D>(rng, 5, j % 2 ? 30.0 : 1.5);
    // All-zero weights and a NaN in an active estimate, in lanes 0 and 1 (every lane width
    // has them) on alternate trials.
    for (double& w : probs[trial % 2].w) w = 0.0;
    probs[1 - trial % 2].v[2] = NAN;
    probreg::FuseOutput<D, Lanes> lanes;
    probreg::fuse_solve<D, Lanes>(LaneTerms<D>{probs}, 5, Lanes(1.0), nullptr, 50, Lanes(1e-6), lanes);
    for (int j = 0; j < probreg::kLaneWidth; ++j) {
      const auto one = solve<D>(probs[j], 1.0);
      bool same = (lanes.iterations.v[j] == one.iterations) && ((lanes.converged.m[j] != 0) == one.converged);
      double worst = 0;
      for (int a = 0; a < D; ++a) {
        const double ly = lanes.y[a].v[j], sy = one.y[a];
        same = same && (std::isnan(ly) == std::isnan(sy));
        if (!std::isnan(sy)) worst = std::fmax(worst, std::fabs(ly - sy) / (1 + std::fabs(sy)));
        for (int b = 0; b < D; ++b) {
          const double lh = lanes.hess[a][b].v[j], sh = one.hess[a][b];
          same = same && (std::isnan(lh) == std::isnan(sh));
          if (!std::isnan(sh)) worst = std::fmax(worst, std::fabs(lh - sh) / (1 + std::fabs(sh)));
        }
      }
      expect(same && worst < 1e-13, "lanes vs scalar solve", worst, 1e-13);
    }
  }
}
#endif

}  // namespace

int main() {
  std::mt19937_64 rng(1234);
  test_single_estimate<1>(rng);
  test_single_estimate<2>(rng);
  test_single_estimate<3>(rng);
  test_gaussian_limit<1>(rng);
  test_gaussian_limit<2>(rng);
  test_gaussian_limit<3>(rng);
  for (double spread : {0.3, 2.0, 30.0}) {
    test_random_stationarity<1>(rng, spread);
    test_random_stationarity<2>(rng, spread);
    test_random_stationarity<3>(rng, spread);
  }
  test_known_1d_minimiser();
  test_degenerate();
  test_backward_fd<1>(rng);
  test_backward_fd<2>(rng);
  test_backward_fd<3>(rng);
  test_ldl_solve(rng);
#if defined(PROBREG_HAVE_LANES)
  test_lanes_match_scalar<1>(rng);
  test_lanes_match_scalar<2>(rng);
  test_lanes_match_scalar<3>(rng);
#endif
  if (failures) {
    std::printf("test_fuse: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("test_fuse: all passed\n");
  return 0;
}

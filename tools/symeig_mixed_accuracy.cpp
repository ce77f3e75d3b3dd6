// Accuracy of the d = 3 decompositions a float32 V can come from (the CUDA mixed policy,
// symeig.h symeig_mixed), over float32 matrices with clusters and scales 1e-30..1e30:
// the worst orthogonality |v_i . v_k - delta_ik| and residual ||B v_k - l_k v_k||_inf
// of the float eigenvectors (in eps_f and eps_f max|B_ij|), and the worst eigenvalue
// error against Jacobi in double (in max|B_ij|). The figures of
// benchmarks/results/sass-sm90.md's step 7 and the README's Numerics come from it.
// Not a test (test_math bounds symeig_mixed); built by `make cuda-check` so it keeps
// compiling:
//
//   g++ -std=c++17 -O2 -fno-fast-math -Icsrc/include -o /tmp/symeig_mixed_accuracy
//       tools/symeig_mixed_accuracy.cpp && /tmp/symeig_mixed_accuracy [samples per case]
//
// Variants: the closed form in double with cos_third_acos of degree 18 (kFloatFrame
// false) and degree 10 (symeig_mixed, what the kernels run), each V rounded to float;
// and the closed form in float (symeig3_trace_free<float> on the shifted, scaled matrix
// rounded to float) with float64 Rayleigh quotients as eigenvalues, which would leave
// about a third of the float64 work.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "probreg/symeig.h"
#include "../csrc/tests/random_symmetric.h"

namespace {

constexpr double kEpsF = 5.9604644775390625e-8;  // 2^-24

struct Worst {
  double orthogonality = 0, residual = 0, eigenvalue = 0;
};

void closed_form_degree18(const double B[3][3], double l[3], float V[3][3]) {
  double Q[3][3];
  probreg::symeig3_closed_form<double, false>(B, l, Q);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) V[i][j] = float(Q[i][j]);
}

void mixed_policy(const double B[3][3], double l[3], float V[3][3]) { probreg::symeig_mixed<3>(B, l, V); }

void float_frame(const double B[3][3], double l[3], float V[3][3]) {
  const double q = (B[0][0] + B[1][1] + B[2][2]) / 3;
  double shifted[3][3], p2 = 0;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      shifted[i][j] = i == j ? B[i][j] - q : B[i][j];
      p2 += shifted[i][j] * shifted[i][j];
    }
  const bool spread = p2 > 1e-300;
  double up = 1;
  const double down = spread ? probreg::pow2_rsqrt_scale(p2, up) : 1.0;
  float a[3][3], lam[3];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) a[i][j] = float(shifted[i][j] * down);
  probreg::symeig3_trace_free<float, bool>(a, spread, lam, V);
  for (int k = 0; k < 3; ++k) {
    double quotient = 0;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) quotient += double(V[i][k]) * B[i][j] * double(V[j][k]);
    l[k] = quotient;
  }
}

template <typename Decompose>
Worst measure(Decompose decompose, int samples) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uni(-1, 1);
  const double scales[] = {1e-30, 1e-5, 1.0, 1e5, 1e30};
  const double gaps[] = {0.0, 1e-9, 1e-7, 1e-5, 1e-3, 1.0};
  Worst worst;
  for (double scale : scales)
    for (double gap : gaps)
      for (int rep = 0; rep < samples; ++rep) {
        long double eig[3];
        eig[0] = uni(rng);
        for (int k = 1; k < 3; ++k) eig[k] = (rep % 2) ? eig[0] * (1 + gap * k) : uni(rng);
        if (rep % 4 == 1) eig[2] = uni(rng);  // a cluster of two beside a distant one
        for (long double& e : eig) e *= scale;
        double B[3][3], norm = 0;
        probreg_test::random_symmetric<3>(rng, eig, B);
        for (auto& row : B)
          for (double& x : row) {
            x = double(float(x));  // float32 inputs, as the kernels see them
            norm = std::fmax(norm, std::fabs(x));
          }
        double l[3], l_ref[3], V_ref[3][3];
        float V[3][3];
        decompose(B, l, V);
        probreg::symeig<3, double>(B, l_ref, V_ref);
        double sorted[3] = {l[0], l[1], l[2]};
        std::sort(sorted, sorted + 3);
        for (int k = 0; k < 3; ++k) {
          worst.eigenvalue = std::fmax(worst.eigenvalue, std::fabs(sorted[k] - l_ref[k]) / norm);
          long double residual = 0;
          for (int i = 0; i < 3; ++i) {
            long double r = -(long double)l[k] * V[i][k], dot = 0;
            for (int j = 0; j < 3; ++j) {
              r += (long double)B[i][j] * V[j][k];
              dot += (long double)V[j][i] * V[j][k];
            }
            residual = std::fmax(residual, std::fabs(r));
            worst.orthogonality = std::fmax(worst.orthogonality, std::fabs(double(dot) - (i == k)) / kEpsF);
          }
          worst.residual = std::fmax(worst.residual, double(residual) / norm / kEpsF);
        }
      }
  return worst;
}

void report(const char* name, const Worst& w) {
  std::printf("| %s | %.2f | %.2f | %.2e |\n", name, w.orthogonality, w.residual, w.eigenvalue);
}

}  // namespace

int main(int argc, char** argv) {
  const int samples = argc > 1 ? std::atoi(argv[1]) : 4000;
  std::printf("%d float32 matrices per variant (30 cases of scale and cluster width x %d)\n\n", 30 * samples,
              samples);
  std::printf("| variant | orthogonality (eps_f) | residual (eps_f x max abs entry) | eigenvalue error (x max abs entry) |\n");
  std::printf("|---|---|---|---|\n");
  report("closed form in float64, cos_third_acos degree 18, V rounded", measure(closed_form_degree18, samples));
  report("symeig_mixed: degree 10 (kFloatFrame), V rounded", measure(mixed_policy, samples));
  report("closed form in float32, float64 Rayleigh quotients", measure(float_frame, samples));
  return 0;
}

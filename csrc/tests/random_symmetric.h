// Random symmetric matrices with prescribed eigenvalues, for the C++ math tests
// (test_math.cpp) and the measurement tools (tools/symeig_mixed_accuracy.cpp).
#pragma once

#include <cmath>
#include <random>

namespace probreg_test {

// Random symmetric D x D matrix with prescribed eigenvalues under a random rotation.
template <int D>
void random_symmetric(std::mt19937_64& rng, const long double eig[D], double B[D][D]) {
  std::normal_distribution<double> normal;
  long double Q[D][D];
  for (int j = 0; j < D; ++j) {  // Gram-Schmidt on Gaussian columns
    for (int i = 0; i < D; ++i) Q[i][j] = normal(rng);
    for (int k = 0; k < j; ++k) {
      long double dot = 0;
      for (int i = 0; i < D; ++i) dot += Q[i][j] * Q[i][k];
      for (int i = 0; i < D; ++i) Q[i][j] -= dot * Q[i][k];
    }
    long double norm = 0;
    for (int i = 0; i < D; ++i) norm += Q[i][j] * Q[i][j];
    norm = std::sqrt(norm);
    for (int i = 0; i < D; ++i) Q[i][j] /= norm;
  }
  for (int i = 0; i < D; ++i)
    for (int j = 0; j < D; ++j) {
      long double acc = 0;
      for (int k = 0; k < D; ++k) acc += Q[i][k] * eig[k] * Q[j][k];
      B[i][j] = double(acc);
    }
  for (int i = 0; i < D; ++i)
    for (int j = i + 1; j < D; ++j) B[j][i] = B[i][j];
}

}  // namespace probreg_test

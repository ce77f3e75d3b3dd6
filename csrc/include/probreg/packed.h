// Packed symmetric layout of the raw network output (DESIGN.md section 1).
//
// d in {1, 2, 3}, P = d(d+1)/2 entries, upper triangle row-major:
//   d=1: (00)   d=2: (00, 01, 11)   d=3: (00, 01, 02, 11, 12, 22).
// Off-diagonal entries are stored as sqrt(2) * B_ij so that ||raw||_2 == ||B||_F.
#pragma once

#include "macros.h"

namespace probreg {

template <int D>
struct Packed {
  static constexpr int P = D * (D + 1) / 2;
};

// Index of (i, j), i <= j, in the packed vector.
template <int D>
PROBREG_HOST_DEVICE int packed_index(int i, int j) {
  return i * D - i * (i - 1) / 2 + (j - i);
}

template <typename T>
PROBREG_HOST_DEVICE T inv_sqrt2() {
  return T(0.70710678118654752440084436210484903928);
}
template <typename T>
PROBREG_HOST_DEVICE T sqrt2() {
  return T(1.41421356237309504880168872420969807857);
}

// raw (P) -> symmetric B (D x D).
template <int D, typename T>
PROBREG_HOST_DEVICE void unpack_symmetric(const T raw[Packed<D>::P], T B[D][D]) {
PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
PROBREG_UNROLL
    for (int j = i; j < D; ++j) {
      const T v = raw[packed_index<D>(i, j)];
      B[i][j] = (i == j) ? v : v * inv_sqrt2<T>();
      B[j][i] = B[i][j];
    }
}

// Gradient w.r.t. raw from the gradient gB w.r.t. the symmetric B, itself SYMMETRIC
// (every caller's is; only the upper triangle is read): B_ij = B_ji = raw_k / sqrt(2)
// gives dL/draw_k = (gB_ij + gB_ji) / sqrt(2) = gB_ij sqrt(2), one product (the same
// rounding: fl(1/sqrt(2)) is fl(sqrt(2)) / 2 exactly; and no overflow of the sum).
template <int D, typename T>
PROBREG_HOST_DEVICE void pack_symmetric_grad(const T gB[D][D], T graw[Packed<D>::P]) {
PROBREG_UNROLL
  for (int i = 0; i < D; ++i)
PROBREG_UNROLL
    for (int j = i; j < D; ++j) graw[packed_index<D>(i, j)] = (i == j) ? gB[i][i] : gB[i][j] * sqrt2<T>();
}

}  // namespace probreg

// The batched CPU loop every CPU kernel uses, and the per-item loads/stores between the
// storage dtype S and the compute type.
//
// An op writes ONE generic item body `fn(T zero, int64_t i) -> bool` that computes item
// i (T a scalar compute type) or items i..i+kLaneWidth-1 (T = Lanes, SIMD). run_items
// calls it on full blocks of lanes where the compute type is double, and falls back to
// the scalar body item by item when the lane body returns false (some lane is NaN/Inf,
// zero or outside the safe range: the scalar math handles those exactly) and for tails.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "../checks.h"
#include "lane_transpose.h"
#include "probreg/lanes.h"
#include "probreg/symeig.h"

namespace probreg {

// Tag compute type of the CUDA kernels' float32 path (spectral.h, symeig_mixed): values
// in float, eigenvalues in double. The CPU runs it (scalar) only to test that path's
// accuracy without a GPU: PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 routes float32 inputs of
// spd_remap, spd_from_raw and huber_nll through it (tests/test_cuda_numerics_on_cpu.py).
struct MixedPrecision {};

template <typename Z>
struct Precision {
  using value = Z;  // matrices, vectors, gradients
  using eigen = Z;  // eigenvalues and theta
};
template <>
struct Precision<MixedPrecision> {
  using value = float;
  using eigen = double;
};

inline bool emulate_cuda_float32() {
  const char* flag = std::getenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

// Items per task: each item costs ~10-100 ns, so 2048 items amortise the task overhead.
constexpr int64_t kCpuGrain = 2048;

template <typename C, typename ItemFn>
void run_items(int64_t n, ItemFn&& fn) {
#if defined(PROBREG_HAVE_LANES)
  if constexpr (std::is_same_v<C, double>) {
    at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + kLaneWidth <= end; i += kLaneWidth) {
        if (!fn(Lanes{}, i)) {
          for (int64_t j = i; j < i + kLaneWidth; ++j) fn(double{}, j);
        }
      }
      for (; i < end; ++i) fn(double{}, i);
    });
    return;
  }
#endif
  at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(C{}, i);
  });
}

// run_items with compute type C for storage type S, or MixedPrecision for float32 under
// PROBREG_CPU_EMULATE_CUDA_FLOAT32=1.
template <typename S, typename C = compute_t<S>, typename ItemFn>
void run_items_for(int64_t n, ItemFn&& fn) {
  if constexpr (std::is_same_v<S, float>) {
    if (emulate_cuda_float32()) {
      run_items<MixedPrecision>(n, fn);
      return;
    }
  }
  run_items<C>(n, fn);
}

// ---- loads / stores of N consecutive values per item (row stride N) ----
template <int N, typename S, typename T>
inline void load_item(const S* base, int64_t i, T out[N]) {
  for (int k = 0; k < N; ++k) out[k] = T(base[i * N + k]);
}
template <int N, typename S, typename T>
inline void store_item(const T in[N], S* base, int64_t i) {
  for (int k = 0; k < N; ++k) base[i * N + k] = S(in[k]);
}
#if defined(PROBREG_HAVE_LANES)
// The kLaneWidth items i0.. are kLaneWidth * N contiguous values: converted as N whole
// vectors, then transposed with constant shuffles (lane_transpose.h).
template <int N, typename S>
inline void load_item(const S* base, int64_t i0, Lanes out[N]) {
  const S* block = base + i0 * N;
  LaneVec X[N];
  for (int m = 0; m < N; ++m)
    for (int e = 0; e < kLaneWidth; ++e) X[m][e] = double(block[m * kLaneWidth + e]);
  aos_to_soa<N>(X, out);
}
template <int N, typename S>
inline void store_item(const Lanes in[N], S* base, int64_t i0) {
  S* block = base + i0 * N;
  LaneVec X[N];
  soa_to_aos<N>(in, X);
  for (int m = 0; m < N; ++m)
    for (int e = 0; e < kLaneWidth; ++e) block[m * kLaneWidth + e] = S(X[m][e]);
}
#endif

// D x D matrix item, symmetrised as (B + B^T)/2.
template <int D, typename S, typename T>
inline void load_symmetric_item(const S* base, int64_t i, T B[D][D]) {
  T flat[D * D];
  load_item<D * D>(base, i, flat);
  for (int r = 0; r < D; ++r)
    for (int c = r; c < D; ++c) {
      B[r][c] = r == c ? flat[r * D + r] : T(0.5) * (flat[r * D + c] + flat[c * D + r]);
      B[c][r] = B[r][c];
    }
}
template <int D, typename S, typename T>
inline void load_matrix_item(const S* base, int64_t i, T M[D][D]) {
  load_item<D * D>(base, i, &M[0][0]);
}
template <int D, typename S, typename T>
inline void store_matrix_item(const T M[D][D], S* base, int64_t i) {
  store_item<D * D>(&M[0][0], base, i);
}

// ---- eigen-decomposition for the item bodies ----
// Scalar: always succeeds (symeig handles NaN/Inf, zero and extreme scales).
template <int D, typename T>
inline bool decompose(const T B[D][D], T l[D], T V[D][D]) {
  symeig<D, T>(B, l, V);
  return true;
}
// Mixed precision (MixedPrecision): eigenvalues in double, eigenvectors in float.
template <int D>
inline bool decompose(const double B[D][D], double l[D], float V[D][D]) {
  symeig_mixed<D>(B, l, V);
  return true;
}
#if defined(PROBREG_HAVE_LANES)
// Lanes: only when every lane is finite, nonzero and inside SafeRange; otherwise false
// and the caller recomputes the block item by item with the scalar path.
template <int D>
inline bool decompose(const Lanes B[D][D], Lanes l[D], Lanes V[D][D]) {
  Lanes scale(0.0), total(0.0);
  for (int r = 0; r < D; ++r)
    for (int c = r; c < D; ++c) {
      const Lanes m = pr_abs(B[r][c]);
      scale = pr_max(scale, m);
      total += m;  // NaN/Inf anywhere makes `total` fail the range test below
    }
  if (!pr_all((scale > Lanes(SafeRange<double>::lo)) & (total < Lanes(SafeRange<double>::hi))))
    return false;
  Lanes a[D][D];
  for (int r = 0; r < D; ++r)
    for (int c = 0; c < D; ++c) a[r][c] = B[r][c];
  symeig_core<D, Lanes>(a, scale, l, V);
  return true;
}
#endif

}  // namespace probreg

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
#include "lane_pair.h"
#include "lane_transpose.h"
#include "probreg/lanes.h"
#include "probreg/packed.h"
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

template <typename Z>
using value_t = typename Precision<Z>::value;
template <typename Z>
using eigen_t = typename Precision<Z>::eigen;

inline bool emulate_cuda_float32() {
  const char* flag = std::getenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

// Items per task: each item costs ~10-100 ns, so 2048 items amortise the task overhead.
constexpr int64_t kCpuGrain = 2048;

#if defined(PROBREG_HAVE_LANES)
// Items i..i+kLaneWidth-1: the lane body, or the scalar body item by item where it declines.
template <typename ItemFn>
inline void run_lane_block(ItemFn& fn, int64_t i) {
  if (!fn(Lanes{}, i)) {
    for (int64_t j = i; j < i + kLaneWidth; ++j) fn(double{}, j);
  }
}
#endif

template <typename C, typename ItemFn>
void run_items(int64_t n, ItemFn&& fn) {
#if defined(PROBREG_HAVE_LANES)
  if constexpr (std::is_same_v<C, double>) {
    at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + kLaneWidth <= end; i += kLaneWidth) run_lane_block(fn, i);
      for (; i < end; ++i) fn(double{}, i);
    });
    return;
  }
#endif
  at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(C{}, i);
  });
}

// run(tag) with the compute type tag for storage type S: C, or MixedPrecision for
// float32 under PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 (instantiated for float32 only).
template <typename S, typename C = compute_t<S>, typename Run>
void with_compute_type(Run&& run) {
  if constexpr (std::is_same_v<S, float>) {
    if (emulate_cuda_float32()) {
      run(MixedPrecision{});
      return;
    }
  }
  run(C{});
}

// Where storage type S is float32 and PROBREG_CPU_EMULATE_CUDA_FLOAT32=1: runs
// row(i) (a CUDA kernel's scalar item body) for every item and returns true; otherwise
// runs nothing and returns false (instantiated for float32 only).
template <typename S, typename RowFn>
bool run_cuda_float32_emulation(int64_t n, RowFn&& row) {
  if constexpr (std::is_same_v<S, float>) {
    if (emulate_cuda_float32()) {
      at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) row(i);
      });
      return true;
    }
  }
  return false;
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
// Packed symmetric item (P = D(D+1)/2 values, packed.h) unpacked to B (D x D) in type L.
template <int D, typename L, typename S>
inline void load_packed_item(const S* base, int64_t i, L B[D][D]) {
  L raw[Packed<D>::P];
  load_item<Packed<D>::P>(base, i, raw);
  unpack_symmetric<D, L>(raw, B);
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
// Lanes: only when every lane is finite, nonzero and inside SafeRange (the lanes
// Jacobi's preconditions; `scale` = max|B_ij| per lane); otherwise false and the caller
// recomputes the block item by item with the scalar path.
template <int D>
inline bool lanes_decomposable(const Lanes B[D][D], Lanes& scale) {
  Lanes total(0.0);
  scale = Lanes(0.0);
  for (int r = 0; r < D; ++r)
    for (int c = r; c < D; ++c) {
      const Lanes m = pr_abs(B[r][c]);
      scale = pr_max(scale, m);
      total += m;  // NaN/Inf anywhere makes `total` fail the range test below
    }
  return pr_all((scale > Lanes(SafeRange<double>::lo)) & (total < Lanes(SafeRange<double>::hi)));
}

template <int D>
inline bool decompose(const Lanes B[D][D], Lanes l[D], Lanes V[D][D]) {
  Lanes scale;
  if (!lanes_decomposable<D>(B, scale)) return false;
  Lanes a[D][D];
  for (int r = 0; r < D; ++r)
    for (int c = 0; c < D; ++c) a[r][c] = B[r][c];
  symeig_core<D, Lanes>(a, scale, l, V);
  return true;
}

// Two decomposable blocks at once (lane_pair.h): block k has matrix Bk with scale sk.
template <int D>
inline void decompose_pair(const Lanes B0[D][D], Lanes s0, const Lanes B1[D][D], Lanes s1, Lanes l0[D],
                           Lanes V0[D][D], Lanes l1[D], Lanes V1[D][D]) {
  LanePair a[D][D], l[D], V[D][D];
  for (int r = 0; r < D; ++r)
    for (int c = 0; c < D; ++c) a[r][c] = LanePair(B0[r][c], B1[r][c]);
  symeig_core<D, LanePair>(a, LanePair(s0, s1), l, V);
  for (int r = 0; r < D; ++r) {
    l0[r] = l[r].first;
    l1[r] = l[r].second;
    for (int c = 0; c < D; ++c) {
      V0[r][c] = V[r][c].first;
      V1[r][c] = V[r][c].second;
    }
  }
}
#endif

// Runs an op whose item body is "symmetric matrix -> eigen-decomposition -> the rest":
//   matrix(zero, i, B)     loads item(s) i and writes B (D x D, eigen type of zero)
//   finish(zero, i, l, V)  everything after the decomposition, including the stores
// with the compute types (Precision) and fallbacks of run_items. For D = 3 on the SIMD
// path, two blocks are decomposed together (lane_pair.h: ~1.8x the Jacobi throughput).
template <int D, typename C, typename MatrixFn, typename FinishFn>
void run_decomposed(int64_t n, MatrixFn&& matrix, FinishFn&& finish) {
  auto one = [&](auto zero, int64_t i) {
    using T = typename Precision<decltype(zero)>::value;
    using L = typename Precision<decltype(zero)>::eigen;
    L B[D][D], l[D];
    T V[D][D];
    matrix(zero, i, B);
    if (!decompose<D>(B, l, V)) return false;
    finish(zero, i, l, V);
    return true;
  };
#if defined(PROBREG_HAVE_LANES)
  if constexpr (std::is_same_v<C, double> && D == 3) {
    at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; i + 2 * kLaneWidth <= end; i += 2 * kLaneWidth) {
        Lanes B0[D][D], B1[D][D], s0, s1;
        matrix(Lanes{}, i, B0);
        matrix(Lanes{}, i + kLaneWidth, B1);
        if (lanes_decomposable<D>(B0, s0) && lanes_decomposable<D>(B1, s1)) {
          Lanes l0[D], V0[D][D], l1[D], V1[D][D];
          decompose_pair<D>(B0, s0, B1, s1, l0, V0, l1, V1);
          finish(Lanes{}, i, l0, V0);
          finish(Lanes{}, i + kLaneWidth, l1, V1);
        } else {
          run_lane_block(one, i);
          run_lane_block(one, i + kLaneWidth);
        }
      }
      for (; i + kLaneWidth <= end; i += kLaneWidth) run_lane_block(one, i);
      for (; i < end; ++i) one(double{}, i);
    });
    return;
  }
#endif
  run_items<C>(n, one);
}

template <int D, typename S, typename C = compute_t<S>, typename MatrixFn, typename FinishFn>
void run_decomposed_for(int64_t n, MatrixFn&& matrix, FinishFn&& finish) {
  with_compute_type<S, C>([&](auto tag) { run_decomposed<D, decltype(tag)>(n, matrix, finish); });
}

}  // namespace probreg

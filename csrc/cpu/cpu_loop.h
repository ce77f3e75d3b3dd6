// The batched CPU loop every CPU kernel uses, and the per-item loads/stores between the
// storage dtype S and the compute type.
//
// An op writes ONE generic item body `fn(T zero, I i)` that computes item i (T a scalar
// compute type, I = int64_t) or the items of one lane block (T = Lanes, SIMD; I =
// LaneBlock, up to kLaneWidth consecutive items; run_decomposed also T = LanePair,
// I = LaneBlockPair, two blocks, and for float32 storage on AVX2 / AVX-512 the tag
// MixedLanes: values in FloatLanes, eigenvalues in LanePair, kMixedLanes). Where the
// compute type is double,
// run_items runs EVERY item through the lane body, partial blocks included (their loads
// replicate the last item into the unused lanes and their stores skip them), and
// run_decomposed recomputes with the scalar body exactly the items whose matrix the SIMD
// decomposition does not take (NaN/Inf, zero, or outside its range; the decision is per
// item). The arithmetic applied to an item therefore depends on the item alone, never on
// its batch position, its block neighbours or the thread count: results are bitwise
// reproducible (tests/test_determinism.py).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "../checks.h"
#include "lane_floats.h"
#include "lane_pair.h"
#include "lane_transpose.h"
#include "probreg/lanes.h"
#include "probreg/packed.h"
#include "probreg/symeig.h"

namespace probreg {

// Tag compute type of the CUDA kernels' float32 path (spectral.h, symeig_mixed): values
// in float, eigenvalues in double, scalar. The CPU runs it only to test that path's
// accuracy without a GPU: PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 routes float32 inputs of
// spd_remap, spd_from_raw and huber_nll through it (tests/test_cuda_numerics_on_cpu.py).
// The CPU's own float32 path is the same policy on SIMD lanes (MixedLanes, below).
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

#if defined(PROBREG_HAVE_LANES)
// Tag compute type of the CPU SIMD float32 path (run_decomposed, kMixedLanes): the mixed
// policy of the CUDA kernels on lane pairs, eigenvalues in LanePair doubles, values in
// FloatLanes (lane_floats.h).
struct MixedLanes {};
template <>
struct Precision<MixedLanes> {
  using value = FloatLanes;
  using eigen = LanePair;
};
#endif

template <typename Z>
using value_t = typename Precision<Z>::value;
template <typename Z>
using eigen_t = typename Precision<Z>::eigen;

// The type the results of an item body computing in T are rounded to, for storage type
// S: float for float32 and the half types (their item bodies compute in double, or in
// float under the CUDA emulation), T for float64. It sets how far the math headers'
// series go (macros.h series_precision, spectral.h Theta): a double result that is
// rounded to float needs them to ~1e-13, not to double's last bit.
template <typename S, typename T>
using result_t = std::conditional_t<(sizeof(S) < sizeof(double)), float, T>;

inline bool emulate_cuda_float32() {
  const char* flag = std::getenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32");
  return flag != nullptr && flag[0] == '1';
}

// The finish bodies handed to run_decomposed (`[&](...) PROBREG_ITEM_BODY {...}`): always
// inlined into the lane loop. GCC otherwise outlines the larger ones (the spd backward's,
// huber_nll's with gradients) and passes a pair's l and V through memory (measured on
// AVX2 after the change to macros.h polynomial: the d = 2 spd backward 0.85-0.99x of
// before while outlined, 1.09x inlined). Only in optimised builds (the -O0 sanitizer
// build compiles faster without it).
#if defined(__GNUC__) && defined(__OPTIMIZE__)
#define PROBREG_ITEM_BODY __attribute__((always_inline))
#else
#define PROBREG_ITEM_BODY
#endif

// Items per task: each item costs ~10-100 ns, so 2048 items amortise the task overhead.
constexpr int64_t kCpuGrain = 2048;

#if defined(PROBREG_HAVE_LANES)
// The items first .. first + count - 1 (1 <= count <= kLaneWidth) of a lane body.
struct LaneBlock {
  int64_t first;
  int count;
};

// Calls block(LaneBlock) for consecutive blocks covering [begin, end).
template <typename BlockFn>
inline void for_each_lane_block(int64_t begin, int64_t end, BlockFn&& block) {
  for (int64_t i = begin; i < end; i += kLaneWidth) block(LaneBlock{i, int(std::min<int64_t>(kLaneWidth, end - i))});
}
#endif

template <typename C, typename ItemFn>
void run_items(int64_t n, ItemFn&& fn) {
#if defined(PROBREG_HAVE_LANES)
  if constexpr (std::is_same_v<C, double>) {
    at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
      for_each_lane_block(begin, end, [&](LaneBlock b) { fn(Lanes{}, b); });
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
// The vector a block of storage type S is transposed in (lane_transpose.h): kLaneWidth
// floats for float32, so that the shuffles act on half-width vectors (within 128-bit
// lanes on AVX2) before widening / after narrowing; kLaneWidth doubles for the other
// types (float64 as stored, the half types converted element by element). Measured on
// AVX2 (2^20 items, float32), against whole-vector conversions and double shuffles:
// spd_from_raw d = 2 forward 4.98 -> 4.78 ms, _huber_nll_backward d = 2 13.39 -> 13.14 ms,
// _huber_nll_and_grad d = 3 43.49 -> 42.48 ms, but _huber_nll_and_grad d = 2 19.15 ->
// 19.67 ms (the same loads and stores; that body's register allocation).
template <typename S>
struct StorageVec {
  using type = LaneVec;
  static PROBREG_LANES_INLINE type load(const S* p) {
    LaneVec v;
    if constexpr (std::is_same_v<S, double>) {
      std::memcpy(&v, p, sizeof(v));
    } else {
      double values[kLaneWidth];
      for (int e = 0; e < kLaneWidth; ++e) values[e] = double(p[e]);
      std::memcpy(&v, values, sizeof(v));
    }
    return v;
  }
  static PROBREG_LANES_INLINE void store(type v, S* p) {
    if constexpr (std::is_same_v<S, double>) {
      std::memcpy(p, &v, sizeof(v));
    } else {
      for (int e = 0; e < kLaneWidth; ++e) p[e] = S(v[e]);
    }
  }
  static PROBREG_LANES_INLINE LaneVec widen(type v) { return v; }
  static PROBREG_LANES_INLINE type narrow(LaneVec v) { return v; }
};
template <>
struct StorageVec<float> {
  using type = LaneVecF;
  static PROBREG_LANES_INLINE type load(const float* p) {
    LaneVecF f;
    std::memcpy(&f, p, sizeof(f));
    return f;
  }
  static PROBREG_LANES_INLINE void store(type f, float* p) { std::memcpy(p, &f, sizeof(f)); }
  static PROBREG_LANES_INLINE LaneVec widen(type f) { return widen_floats(f); }
  static PROBREG_LANES_INLINE type narrow(LaneVec v) { return narrow_doubles(v); }
};

// The N values of the items of block b, transposed (out[k] element j = value k of item
// first + j) in the storage vector type. A full block's kLaneWidth * N values are
// contiguous: loaded as N whole vectors and transposed with constant shuffles
// (lane_transpose.h). A partial block is staged through a full-size buffer; its unused
// lanes repeat the block's last item (a valid input, computed and discarded; count 0, the
// empty partner of a pair (run_decomposed), repeats item `first`, which is valid) and are
// never stored.
template <int N, typename S>
PROBREG_LANES_INLINE void load_block(const S* base, LaneBlock b, typename StorageVec<S>::type out[N]) {
  using Vec = StorageVec<S>;
  const S* block = base + b.first * N;
  typename Vec::type X[N];
  if (b.count == kLaneWidth) {
    for (int m = 0; m < N; ++m) X[m] = Vec::load(block + m * kLaneWidth);
  } else {
    S staged[kLaneWidth * N];
    const int last = std::max(b.count - 1, 0);
    for (int e = 0; e < kLaneWidth * N; ++e) staged[e] = block[std::min(e / N, last) * N + e % N];
    for (int m = 0; m < N; ++m) X[m] = Vec::load(staged + m * kLaneWidth);
  }
  aos_to_soa<N>(X, out);
}
// Inverse of load_block for the count valid items of b.
template <int N, typename S>
PROBREG_LANES_INLINE void store_block(const typename StorageVec<S>::type in[N], S* base, LaneBlock b) {
  using Vec = StorageVec<S>;
  typename Vec::type X[N];
  soa_to_aos<N>(in, X);
  S* block = base + b.first * N;
  if (b.count == kLaneWidth) {
    for (int m = 0; m < N; ++m) Vec::store(X[m], block + m * kLaneWidth);
    return;
  }
  for (int v = 0; v < b.count * N; ++v) block[v] = S(X[v / kLaneWidth][v % kLaneWidth]);
}

// Loads are widened to doubles after the transpose, stores narrowed before it.
template <int N, typename S>
PROBREG_LANES_INLINE void load_item(const S* base, LaneBlock b, Lanes out[N]) {
  typename StorageVec<S>::type Y[N];
  load_block<N>(base, b, Y);
  for (int k = 0; k < N; ++k) out[k] = Lanes(StorageVec<S>::widen(Y[k]));
}
template <int N, typename S>
PROBREG_LANES_INLINE void store_item(const Lanes in[N], S* base, LaneBlock b) {
  typename StorageVec<S>::type Y[N];
  for (int k = 0; k < N; ++k) Y[k] = StorageVec<S>::narrow(in[k].v);
  store_block<N>(Y, base, b);
}
#endif

#if defined(PROBREG_HAVE_LANES)
// Two lane blocks computed together as one LanePair body (run_decomposed).
struct LaneBlockPair {
  LaneBlock first, second;
};
template <int N, typename S>
PROBREG_LANES_INLINE void load_item(const S* base, LaneBlockPair b, LanePair out[N]) {
  Lanes x[N], y[N];
  load_item<N>(base, b.first, x);
  load_item<N>(base, b.second, y);
  for (int k = 0; k < N; ++k) out[k] = LanePair(x[k], y[k]);
}
template <int N, typename S>
PROBREG_LANES_INLINE void store_item(const LanePair in[N], S* base, LaneBlockPair b) {
  Lanes x[N], y[N];
  for (int k = 0; k < N; ++k) {
    x[k] = in[k].first;
    y[k] = in[k].second;
  }
  store_item<N>(x, base, b.first);
  store_item<N>(y, base, b.second);
}
// The items of a pair as FloatLanes (float32 storage only: the mixed policy, MixedLanes):
// each block transposed in floats, the two joined (one insert per value).
template <int N, typename S>
PROBREG_LANES_INLINE void load_item(const S* base, LaneBlockPair b, FloatLanes out[N]) {
  static_assert(std::is_same_v<S, float>, "FloatLanes items are float32 storage");
  LaneVecF x[N], y[N];
  load_block<N>(base, b.first, x);
  load_block<N>(base, b.second, y);
  for (int k = 0; k < N; ++k) out[k] = FloatLanes(concat_halves(x[k], y[k]));
}
template <int N, typename S>
PROBREG_LANES_INLINE void store_item(const FloatLanes in[N], S* base, LaneBlockPair b) {
  static_assert(std::is_same_v<S, float>, "FloatLanes items are float32 storage");
  LaneVecF x[N], y[N];
  for (int k = 0; k < N; ++k) {
    x[k] = low_half(in[k].v);
    y[k] = high_half(in[k].v);
  }
  store_block<N>(x, base, b.first);
  store_block<N>(y, base, b.second);
}
#endif

// D x D matrix item, symmetrised as (B + B^T)/2.
// I: int64_t (one item) or LaneBlock (lanes).
template <int D, typename S, typename T, typename I>
inline void load_symmetric_item(const S* base, I i, T B[D][D]) {
  T flat[D * D];
  load_item<D * D>(base, i, flat);
  for (int r = 0; r < D; ++r)
    for (int c = r; c < D; ++c) {
      B[r][c] = r == c ? flat[r * D + r] : T(0.5) * (flat[r * D + c] + flat[c * D + r]);
      B[c][r] = B[r][c];
    }
}
// Packed symmetric item (P = D(D+1)/2 values, packed.h) unpacked to B (D x D) in type L.
template <int D, typename L, typename S, typename I>
inline void load_packed_item(const S* base, I i, L B[D][D]) {
  L raw[Packed<D>::P];
  load_item<Packed<D>::P>(base, i, raw);
  unpack_symmetric<D, L>(raw, B);
}
template <int D, typename S, typename T, typename I>
inline void load_matrix_item(const S* base, I i, T M[D][D]) {
  load_item<D * D>(base, i, &M[0][0]);
}
template <int D, typename S, typename T, typename I>
inline void store_matrix_item(const T M[D][D], S* base, I i) {
  store_item<D * D>(&M[0][0], base, i);
}

// ---- eigen-decomposition for the item bodies ----
// Scalar (symeig handles NaN/Inf, zero and extreme scales).
template <int D, typename T>
inline void decompose(const T B[D][D], T l[D], T V[D][D]) {
  symeig<D, T>(B, l, V);
}
// Mixed precision (MixedPrecision): eigenvalues in double, eigenvectors in float.
template <int D>
inline void decompose(const double B[D][D], double l[D], float V[D][D]) {
  symeig_mixed<D>(B, l, V);
}
#if defined(PROBREG_HAVE_LANES)
// The lanes whose matrix the SIMD decomposition takes: finite, nonzero, max|B_ij| within
// SafeRange<double> (1e-130..1e130: the precondition of symeig3_closed_form and of
// symeig_core without rescaling). `scale` = max|B_ij| per lane.
template <int D>
PROBREG_LANES_INLINE LaneMask lanes_decomposable(const Lanes B[D][D], Lanes& scale) {
  Lanes total(0.0);
  scale = Lanes(0.0);
  for (int r = 0; r < D; ++r)
    for (int c = r; c < D; ++c) {
      const Lanes m = pr_abs(B[r][c]);
      scale = pr_max(scale, m);
      total += m;  // NaN/Inf anywhere makes `total` fail the range test below
    }
  return (scale > Lanes(SafeRange<double>::lo)) & (total < Lanes(SafeRange<double>::hi));
}

// Replaces the matrix of every lane outside `ok` by the identity (so that no lane's
// arithmetic meets NaN, Inf or extreme scales; those lanes are recomputed by the scalar
// body) and returns the bit mask of the valid lanes (j < count) outside `ok`.
template <int D>
PROBREG_LANES_INLINE unsigned sanitize_lanes(Lanes B[D][D], LaneMask ok, int count) {
  const unsigned declined = ~pr_mask_bits(ok) & ((1u << count) - 1);
  if (declined != 0)
    for (int r = 0; r < D; ++r)
      for (int c = 0; c < D; ++c) B[r][c] = pr_where(ok, B[r][c], Lanes(r == c ? 1.0 : 0.0));
  return declined;
}

// Lane decomposition of a sanitized block: d = 3 in closed form (symeig.h), its
// eigenvalues refined where Refine (refine_eigenvalues3, as symeig<3, double>), d = 1, 2 by
// symeig_core (one rotation for d = 2), or, with Reflection at d = 2, the reflection frame
// (symeig2_reflection: V receives N). T = Lanes or LanePair (two blocks, lane_pair.h).
template <int D, typename T, bool Refine, bool Reflection>
PROBREG_LANES_INLINE void decompose_lanes(const T B[D][D], T scale, T l[D], T V[D][D]) {
  if constexpr (D == 2 && Reflection) {
    symeig2_reflection<T>(B, l, V);
  } else if constexpr (D == 3) {
    symeig3_closed_form<T>(B, l, V);
    if constexpr (Refine) refine_eigenvalues3<T>(B, V, l);
    sort_eigenpairs<D, T>(l, V);
  } else {
    T a[D][D];
    for (int r = 0; r < D; ++r)
      for (int c = 0; c < D; ++c) a[r][c] = B[r][c];
    symeig_core<D, T>(a, scale, l, V);
  }
}
#endif

// Whether run_decomposed runs lane blocks in pairs (lane_pair.h): with AVX-512 (8-double
// blocks, 32 registers) and AVX2 (4-double blocks, so a pair holds a value in two of its
// 16 registers); the d = 3 closed form on AVX2 ran 1.4x faster in pairs than alone
// (measured). Not on SSE2-only builds.
#if defined(__AVX512F__) || defined(__AVX__)
constexpr bool kPairLaneBlocks = true;
#else
constexpr bool kPairLaneBlocks = false;
#endif

// Whether float32 storage runs run_decomposed under the mixed policy of the CUDA kernels
// on lane pairs (MixedLanes: eigenvalues in LanePair doubles, everything after the
// decomposition in FloatLanes): where blocks run in pairs. Elsewhere (SSE2-only builds)
// float32 computes in double. PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 still routes float32
// through the scalar emulation (with_compute_type).
#if defined(PROBREG_HAVE_LANES)
template <typename S>
constexpr bool kMixedLanes = std::is_same_v<S, float> && kPairLaneBlocks;
#endif

// Whether the ops whose finish body keeps the most values live (the d = 3 spd backward,
// the d = 2 huber_nll backward without the loss) run it block by block after a paired
// decomposition (run_decomposed's PairedFinish = false): on AVX2, whose 16 registers
// hold 8 pair values, a pair's finish spills; measured on an AMD EPYC at 2^20 float32,
// _spd_from_raw_backward d = 3 36.3 -> 33.5 ms and _huber_nll_backward d = 2
// 17.6 -> 16.0 ms (every other op ran slower split). AVX-512 (32 registers) keeps pairs.
#if defined(PROBREG_HAVE_LANES)
constexpr bool kSplitHeavyFinish = kLaneWidth == 4;
#else
constexpr bool kSplitHeavyFinish = false;
#endif

// Whether run_decomposed<D, C, Reflection> hands finish the 2x2 reflection frame (l, N)
// of symeig2_reflection in place of (l, V): d = 2 ops that ask for it, on the SIMD lanes,
// their scalar fallback (double) and the CUDA float32 emulation (MixedPrecision, with the
// CUDA kernels' symeig_frame_split).
template <int D, bool Reflection>
constexpr bool reflection_frame = Reflection && D == 2;

// Runs an op whose item body is "symmetric matrix -> eigen-decomposition -> the rest":
//   matrix(zero, i, B)     loads item(s) i and writes B (D x D, eigen type of zero)
//   finish(zero, i, l, V)  everything after the decomposition, including the stores
// with the compute types (Precision) of run_items. Storage type S: float64 refines the
// d = 3 eigenvalues on the lanes as its scalar fallback does (kRefinedEigenvalues:
// symeig<3, double>); float32, computed in double, is not refined. On the SIMD path,
// consecutive blocks run in pairs (kPairLaneBlocks), the whole body on LanePair (zero = LanePair,
// i = LaneBlockPair; lane_pair.h), and a task's odd last block alone on Lanes (the same
// per-lane arithmetic); items the lane decomposition does not take (lanes_decomposable) are
// recomputed by the scalar body, item by item. PairedFinish = false runs `finish` on each
// block of a pair alone (the decomposition still in pairs; the same per-lane arithmetic):
// for finish bodies that hold too many values for the registers as pairs
// (kSplitHeavyFinish). float32 storage where kMixedLanes and the op asks for it
// (MixedFloat32): every block in a pair (a task's odd last block with an empty partner),
// the decomposition in LanePair as above, then V rounded to FloatLanes and `finish` called
// with zero = MixedLanes (value FloatLanes, eigen LanePair; PairedFinish does not apply);
// declined items take the scalar double body as everywhere.
template <int D, typename C, typename S, bool Reflection = false, bool PairedFinish = true, bool MixedFloat32 = true,
          typename MatrixFn,
          typename FinishFn>
void run_decomposed(int64_t n, MatrixFn&& matrix, FinishFn&& finish) {
  constexpr bool refine = kRefinedEigenvalues<D, S>;
  auto scalar = [&](auto zero, int64_t i) {
    using T = typename Precision<decltype(zero)>::value;
    using L = typename Precision<decltype(zero)>::eigen;
    L B[D][D], l[D];
    T V[D][D];
    matrix(zero, i, B);
    if constexpr (reflection_frame<D, Reflection> && kMixedPolicy<T, L>) {
      symeig_frame_split<D, T, L>(B, l, V);  // V receives N, as the CUDA kernels compute it
      finish(zero, i, l, V);
    } else if constexpr (reflection_frame<D, Reflection>) {
      decompose<D>(B, l, V);  // symeig: NaN/Inf, zero and extreme scales included
      T N[D][D];
      reflection_from_eigenvectors<T>(V, N);
      finish(zero, i, l, N);
    } else {
      decompose<D>(B, l, V);
      finish(zero, i, l, V);
    }
  };
#if defined(PROBREG_HAVE_LANES)
  if constexpr (std::is_same_v<C, double>) {
    // Loads block b (count 0: an identity placeholder) and sanitizes it.
    auto load = [&](LaneBlock b, Lanes B[D][D], Lanes& scale) -> unsigned {
      if (b.count == 0) {
        for (int r = 0; r < D; ++r)
          for (int c = 0; c < D; ++c) B[r][c] = Lanes(r == c ? 1.0 : 0.0);
        scale = Lanes(1.0);
        return 0;
      }
      matrix(Lanes{}, b, B);
      const LaneMask ok = lanes_decomposable<D>(B, scale);
      scale = pr_where(ok, scale, Lanes(1.0));
      return sanitize_lanes<D>(B, ok, b.count);
    };
    auto redo_declined = [&](LaneBlock b, unsigned declined) {
      for (int j = 0; j < b.count; ++j)
        if (declined & (1u << j)) scalar(double{}, b.first + j);
    };
    // Loads blocks b0 and b1 and decomposes them as one pair; returns their declined lanes.
    // Inlined (GCC outlines it otherwise, as it is called from two loops, and passes l and V
    // through memory: the d = 3 spd_from_raw forward ran ~10% slower).
    auto decompose_pair = [&](LaneBlock b0, LaneBlock b1, LanePair l[D], LanePair V[D][D]) PROBREG_ITEM_BODY {
      Lanes B0[D][D], B1[D][D], s0, s1;
      const unsigned d0 = load(b0, B0, s0), d1 = load(b1, B1, s1);
      LanePair B[D][D];
      for (int r = 0; r < D; ++r)
        for (int c = 0; c < D; ++c) B[r][c] = LanePair(B0[r][c], B1[r][c]);
      decompose_lanes<D, LanePair, refine, Reflection>(B, LanePair(s0, s1), l, V);
      return std::make_pair(d0, d1);
    };
    if constexpr (MixedFloat32 && kMixedLanes<S>) {
      // Every block in a pair: a task's odd last block with an empty partner (count 0 at
      // the same first item: an identity placeholder whose other loads repeat a valid item,
      // computed and discarded).
      at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; i += 2 * kLaneWidth) {
          const LaneBlock b0{i, int(std::min<int64_t>(kLaneWidth, end - i))};
          const int64_t rest = end - i - kLaneWidth;
          const LaneBlock b1 = rest > 0 ? LaneBlock{i + kLaneWidth, int(std::min<int64_t>(kLaneWidth, rest))}
                                        : LaneBlock{i, 0};
          LanePair l[D], V[D][D];
          const auto declined = decompose_pair(b0, b1, l, V);
          FloatLanes F[D][D];
          for (int r = 0; r < D; ++r)
            for (int c = 0; c < D; ++c) F[r][c] = FloatLanes(V[r][c]);
          finish(MixedLanes{}, LaneBlockPair{b0, b1}, l, F);
          redo_declined(b0, declined.first);
          redo_declined(b1, declined.second);
        }
      });
      return;
    }
    at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin;
      for (; kPairLaneBlocks && i + kLaneWidth < end; i += 2 * kLaneWidth) {
        const LaneBlock b0{i, kLaneWidth};
        const LaneBlock b1{i + kLaneWidth, int(std::min<int64_t>(kLaneWidth, end - i - kLaneWidth))};
        LanePair l[D], V[D][D];
        const auto declined = decompose_pair(b0, b1, l, V);
        const unsigned d0 = declined.first, d1 = declined.second;
        if constexpr (PairedFinish) {
          finish(LanePair{}, LaneBlockPair{b0, b1}, l, V);
        } else {
          Lanes l0[D], l1[D], V0[D][D], V1[D][D];
          for (int r = 0; r < D; ++r) {
            l0[r] = l[r].first;
            l1[r] = l[r].second;
            for (int c = 0; c < D; ++c) {
              V0[r][c] = V[r][c].first;
              V1[r][c] = V[r][c].second;
            }
          }
          finish(Lanes{}, b0, l0, V0);
          finish(Lanes{}, b1, l1, V1);
        }
        redo_declined(b0, d0);
        redo_declined(b1, d1);
      }
      for (; i < end; i += kLaneWidth) {
        const LaneBlock b{i, int(std::min<int64_t>(kLaneWidth, end - i))};
        Lanes B[D][D], scale, l[D], V[D][D];
        const unsigned declined = load(b, B, scale);
        decompose_lanes<D, Lanes, refine, Reflection>(B, scale, l, V);
        finish(Lanes{}, b, l, V);
        redo_declined(b, declined);
      }
    });
    return;
  }
#endif
  at::parallel_for(0, n, kCpuGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) scalar(C{}, i);
  });
}

template <int D, typename S, bool Reflection = false, bool PairedFinish = true, bool MixedFloat32 = true,
          typename MatrixFn, typename FinishFn>
void run_decomposed_for(int64_t n, MatrixFn&& matrix, FinishFn&& finish) {
  with_compute_type<S>([&](auto tag) {
    run_decomposed<D, decltype(tag), S, Reflection, PairedFinish, MixedFloat32>(n, matrix, finish);
  });
}

}  // namespace probreg

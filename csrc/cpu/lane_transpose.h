// Transposes between a block of kLaneWidth consecutive items stored with N values each
// (array of structures: kLaneWidth * N contiguous values, the batch layout of every op)
// and N vectors, one per value (structure of arrays: element j = item j). The vectors are
// any GCC vector type of kLaneWidth elements: doubles (LaneVec) or, for float32 storage,
// floats (cpu_loop.h StorageVec), which halves the shuffles' width.
//
// The block is loaded as N contiguous vectors and rearranged with chains of two-source
// constant shuffles (one vpermt2pd each on AVX-512), instead of kLaneWidth * N element
// inserts/extracts. All shuffle indices are compile-time constants.
#pragma once

#include "probreg/lanes.h"

#if defined(PROBREG_HAVE_LANES)
#include <cstdint>
#include <utility>

namespace probreg {
namespace lane_transpose_detail {

constexpr int W = kLaneWidth;

// ---- array of structures -> structure of arrays ----
// Lane j of value K sits at flat index j*N + K: in vector (j*N + K) / W, element
// (j*N + K) % W. The vectors holding value K are first..last; the chain starts with
// shuffle(X[first], X[first+1]) and folds in X[first+1+step] one at a time.
template <int N, int K>
struct Gather {
  static constexpr int first = K / W;
  static constexpr int last = ((W - 1) * N + K) / W;
};

template <int N, int K, int Step>
constexpr int gather_index(int j) {
  const int v = (j * N + K) / W;
  const int o = (j * N + K) % W;
  const int first = Gather<N, K>::first;
  if (Step == 0) return v == first ? o : (v == first + 1 ? W + o : -1);
  return v == first + 1 + Step ? W + o : j;  // keep lane j of the accumulator otherwise
}

template <int N, int K, int Step, typename V, std::size_t... J>
PROBREG_LANES_INLINE V gather_step(V a, V b, std::index_sequence<J...>) {
  return __builtin_shufflevector(a, b, gather_index<N, K, Step>(int(J))...);
}

template <int N, int K, int Step, typename V>
PROBREG_LANES_INLINE V gather_chain(const V X[N], V acc) {
  constexpr int next = Gather<N, K>::first + 1 + Step;
  if constexpr (next > Gather<N, K>::last) {
    return acc;
  } else {
    return gather_chain<N, K, Step + 1>(
        X, gather_step<N, K, Step>(acc, X[next], std::make_index_sequence<W>{}));
  }
}

template <int N, int K, typename V>
PROBREG_LANES_INLINE V gather_value(const V X[N]) {
  constexpr int first = Gather<N, K>::first;
  if constexpr (first == Gather<N, K>::last) {
    return X[first];  // N == 1: the block is already one value per lane
  } else {
    const V acc = gather_step<N, K, 0>(X[first], X[first + 1], std::make_index_sequence<W>{});
    return gather_chain<N, K, 1>(X, acc);
  }
}

template <int N, typename V, std::size_t... K>
PROBREG_LANES_INLINE void aos_to_soa_impl(const V X[N], V out[N], std::index_sequence<K...>) {
  ((out[K] = gather_value<N, int(K)>(X)), ...);
}

// ---- structure of arrays -> array of structures ----
// Element e of output vector M is flat index s = M*W + e: value s % N of lane s / N.
// The values met in vector M are (M*W + t) % N for t < min(N, W), in that order; the
// chain starts with shuffle(in[c0], in[c1]) and folds in in[c_{step+1}].
template <int N, int M>
constexpr int scatter_value_of(int t) {
  return (M * W + t) % N;
}

template <int N, int M, int Step>
constexpr int scatter_index(int e) {
  const int s = M * W + e;
  const int value = s % N;
  const int item = s / N;  // lane of in[value]: the block holds items 0..W-1
  if (Step == 0) {
    if (value == scatter_value_of<N, M>(0)) return item;
    if (value == scatter_value_of<N, M>(1)) return W + item;
    return -1;
  }
  return value == scatter_value_of<N, M>(Step + 1) ? W + item : e;
}

template <int N, int M, int Step, typename V, std::size_t... E>
PROBREG_LANES_INLINE V scatter_step(V a, V b, std::index_sequence<E...>) {
  return __builtin_shufflevector(a, b, scatter_index<N, M, Step>(int(E))...);
}

template <int N, int M, int Step, typename V>
PROBREG_LANES_INLINE V scatter_chain(const V in[N], V acc) {
  constexpr int count = N < W ? N : W;
  if constexpr (Step + 1 >= count) {
    return acc;
  } else {
    return scatter_chain<N, M, Step + 1>(
        in, scatter_step<N, M, Step>(acc, in[scatter_value_of<N, M>(Step + 1)], std::make_index_sequence<W>{}));
  }
}

template <int N, int M, typename V>
PROBREG_LANES_INLINE V scatter_vector(const V in[N]) {
  if constexpr (N == 1) {
    return in[0];
  } else {
    const V acc = scatter_step<N, M, 0>(in[scatter_value_of<N, M>(0)], in[scatter_value_of<N, M>(1)],
                                        std::make_index_sequence<W>{});
    return scatter_chain<N, M, 1>(in, acc);
  }
}

template <int N, typename V, std::size_t... M>
PROBREG_LANES_INLINE void soa_to_aos_impl(const V in[N], V X[N], std::index_sequence<M...>) {
  ((X[M] = scatter_vector<N, int(M)>(in)), ...);
}

}  // namespace lane_transpose_detail

// X: kLaneWidth items x N values, contiguous (N vectors of kLaneWidth elements: doubles,
// LaneVec, or floats, LaneVecF) -> out[k] element j = item j value k.
template <int N, typename V>
PROBREG_LANES_INLINE void aos_to_soa(const V X[N], V out[N]) {
  lane_transpose_detail::aos_to_soa_impl<N>(X, out, std::make_index_sequence<N>{});
}

// Inverse of aos_to_soa.
template <int N, typename V>
PROBREG_LANES_INLINE void soa_to_aos(const V in[N], V X[N]) {
  lane_transpose_detail::soa_to_aos_impl<N>(in, X, std::make_index_sequence<N>{});
}

}  // namespace probreg
#endif  // PROBREG_HAVE_LANES

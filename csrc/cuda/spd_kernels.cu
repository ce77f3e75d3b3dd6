// CUDA kernels of symeig, spd_remap and spd_from_raw: one thread per matrix, calling the
// same header math as the CPU loop (csrc/include/probreg). Torch-free. Compute types CT:
// kernel_common.cuh Compute (float32 spd_remap / spd_from_raw: mixed policy) or AllDouble
// (dispatch_compute); symeig uses only CT::type (double for float32 either way).
#include <type_traits>

#include "kernel_common.cuh"
#include "probreg/packed.h"
#include "probreg/spectral.h"

namespace probreg {
namespace cuda {
namespace {

// B = (M + M^T)/2 from the D*D values of a row-major matrix M.
template <int D, typename C>
__device__ __forceinline__ void symmetrize(const C flat[D * D], C B[D][D]) {
#pragma unroll
  for (int r = 0; r < D; ++r)
#pragma unroll
    for (int c = r; c < D; ++c) {
      B[r][c] = r == c ? flat[r * D + r] : C(0.5) * (flat[r * D + c] + flat[c * D + r]);
      B[c][r] = B[r][c];
    }
}

// Every kernel below is tiled (kernel_common.cuh for_each_tile): coalesced global
// loads and stores through shared memory; the math runs on the thread's item.

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) symeig_forward_kernel(const S* __restrict__ B, S* __restrict__ L, S* __restrict__ V,
                                               TileIndex n) {
  using C = typename CT::type;
  __shared__ SharedRows<S, D * D> tile;
  S* const shared = tile.rows();
  for_each_tile(n, chunk_aligned(B, L, V), [=](TileIndex first, auto part) {
    C flat[D * D], l[D], Vm[D][D];
    load_row_tiled<D * D>(B, first, part, shared, flat);
    if (part.mine()) {
      C Bm[D][D];
      symmetrize<D>(flat, Bm);
      symeig<D, C>(Bm, l, Vm);
    }
    store_row_tiled<D>(L, first, part, shared, l);
    store_row_tiled<D * D>(V, first, part, shared, &Vm[0][0]);
  });
}

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) symeig_backward_kernel(const S* __restrict__ gL, const S* __restrict__ gV,
                                                const S* __restrict__ L, const S* __restrict__ V,
                                                S* __restrict__ gB, TileIndex n) {
  using C = typename CT::type;
  __shared__ SharedRows<S, D * D> tile;
  S* const shared = tile.rows();
  for_each_tile(n, chunk_aligned(gL, gV, L, V, gB), [=](TileIndex first, auto part) {
    C l[D], gl[D], Vm[D][D], gVm[D][D], g[D][D];
    load_row_tiled<D>(L, first, part, shared, l);
    load_row_tiled<D>(gL, first, part, shared, gl);
    load_row_tiled<D * D>(V, first, part, shared, &Vm[0][0]);
    load_row_tiled<D * D>(gV, first, part, shared, &gVm[0][0]);
    if (part.mine()) symeig_backward<D, C>(l, Vm, gl, gVm, g);
    store_row_tiled<D * D>(gB, first, part, shared, &g[0][0]);
  });
}

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) spd_remap_forward_kernel(const S* __restrict__ B, S* __restrict__ A, TileIndex n,
                                                  double theta, double inv_theta) {
  using L = typename CT::type;
  using T = typename CT::value;
  __shared__ SharedRows<S, D * D> tile;
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  for_each_tile(n, chunk_aligned(B, A), [=](TileIndex first, auto part) {
    L flat[D * D];
    T Am[D][D];
    load_row_tiled<D * D>(B, first, part, shared, flat);
    if (part.mine()) {
      L Bm[D][D];
      symmetrize<D>(flat, Bm);
      spd_remap_forward<D, T, L>(Bm, theta_arg, Am);
    }
    store_row_tiled<D * D>(A, first, part, shared, &Am[0][0]);
  });
}

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) spd_remap_backward_kernel(const S* __restrict__ gA, const S* __restrict__ B,
                                                   S* __restrict__ gB, TileIndex n, double theta, double inv_theta) {
  using L = typename CT::type;
  using T = typename CT::value;
  __shared__ SharedRows<S, D * D> tile;
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  for_each_tile(n, chunk_aligned(gA, B, gB), [=](TileIndex first, auto part) {
    L flat[D * D];
    T gAm[D][D], gBm[D][D];
    load_row_tiled<D * D>(B, first, part, shared, flat);
    load_row_tiled<D * D>(gA, first, part, shared, &gAm[0][0]);
    if (part.mine()) {
      L Bm[D][D];
      symmetrize<D>(flat, Bm);
      spd_remap_backward<D, T, L>(Bm, gAm, theta_arg, gBm);
    }
    store_row_tiled<D * D>(gB, first, part, shared, &gBm[0][0]);
  });
}

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) spd_from_raw_forward_kernel(const S* __restrict__ raw, S* __restrict__ A, TileIndex n,
                                                     double theta, double inv_theta) {
  using L = typename CT::type;
  using T = typename CT::value;
  constexpr int P = Packed<D>::P;
  __shared__ SharedRows<S, D * D> tile;  // D * D >= P
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  for_each_tile(n, chunk_aligned(raw, A), [=](TileIndex first, auto part) {
    L r[P];
    T Am[D][D];
    load_row_tiled<P>(raw, first, part, shared, r);
    if (part.mine()) {
      L Bm[D][D];
      unpack_symmetric<D, L>(r, Bm);
      spd_remap_forward<D, T, L>(Bm, theta_arg, Am);
    }
    store_row_tiled<D * D>(A, first, part, shared, &Am[0][0]);
  });
}

template <int D, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) spd_from_raw_backward_kernel(const S* __restrict__ gA, const S* __restrict__ raw,
                                                      S* __restrict__ graw, TileIndex n, double theta,
                                                      double inv_theta) {
  using L = typename CT::type;
  using T = typename CT::value;
  constexpr int P = Packed<D>::P;
  __shared__ SharedRows<S, D * D> tile;
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  for_each_tile(n, chunk_aligned(gA, raw, graw), [=](TileIndex first, auto part) {
    L r[P];
    T gAm[D][D], g[P];
    load_row_tiled<P>(raw, first, part, shared, r);
    load_row_tiled<D * D>(gA, first, part, shared, &gAm[0][0]);
    if (part.mine()) {
      L Bm[D][D];
      T gBm[D][D];
      unpack_symmetric<D, L>(r, Bm);
      spd_remap_backward<D, T, L>(Bm, gAm, theta_arg, gBm);
      pack_symmetric_grad<D, T>(gBm, g);
    }
    store_row_tiled<P>(graw, first, part, shared, g);
  });
}

// Dispatches (dtype, compute types, d) and launches KERNEL<D, S, CT> for each chunk of
// items (launch_in_chunks) with the given arguments; inside them the chunk is
// [start, start + count) and P the packed width.
#define PROBREG_LAUNCH(dtype, d, n, stream, KERNEL, ...)                                    \
  if ((n) == 0) return cudaSuccess;                                                       \
  return dispatch_dtype(dtype, [&](auto storage) {                                        \
    using S = decltype(storage);                                                          \
    return dispatch_compute<S>([&](auto compute) {                                        \
      using CT = decltype(compute);                                                        \
      return dispatch_dim(d, [&](auto dim) {                                              \
        constexpr int D = decltype(dim)::value;                                           \
        [[maybe_unused]] constexpr int P = Packed<D>::P;                                  \
        return launch_in_chunks(n, [&](int64_t start, TileIndex count) {                  \
          return launch_kernel(KERNEL<D, S, CT>, blocks_for(count), kThreads, stream, __VA_ARGS__); \
        });                                                                               \
      });                                                                                 \
    });                                                                                   \
  })

// The chunk's rows of `width` values of an input / output, as the storage type S.
template <typename S>
const S* in(const void* p, int64_t start, int width) {
  return rows_from(static_cast<const S*>(p), start, width);
}
template <typename S>
S* out(void* p, int64_t start, int width) {
  return rows_from(static_cast<S*>(p), start, width);
}

}  // namespace

cudaError_t launch_symeig_forward(Dtype dtype, int d, const void* B, void* L, void* V, int64_t n,
                           cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, symeig_forward_kernel, in<S>(B, start, D * D), out<S>(L, start, D),
                 out<S>(V, start, D * D), count);
}

cudaError_t launch_symeig_backward(Dtype dtype, int d, const void* grad_L, const void* grad_V,
                            const void* L, const void* V, void* grad_B, int64_t n,
                            cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, symeig_backward_kernel, in<S>(grad_L, start, D), in<S>(grad_V, start, D * D),
                 in<S>(L, start, D), in<S>(V, start, D * D), out<S>(grad_B, start, D * D), count);
}

cudaError_t launch_spd_remap_forward(Dtype dtype, int d, const void* B, void* A, int64_t n, double theta,
                              cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, spd_remap_forward_kernel, in<S>(B, start, D * D), out<S>(A, start, D * D),
                 count, theta, 1.0 / theta);
}

cudaError_t launch_spd_remap_backward(Dtype dtype, int d, const void* grad_A, const void* B,
                               void* grad_B, int64_t n, double theta, cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, spd_remap_backward_kernel, in<S>(grad_A, start, D * D), in<S>(B, start, D * D),
                 out<S>(grad_B, start, D * D), count, theta, 1.0 / theta);
}

cudaError_t launch_spd_from_raw_forward(Dtype dtype, int d, const void* raw, void* A, int64_t n,
                                 double theta, cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, spd_from_raw_forward_kernel, in<S>(raw, start, P), out<S>(A, start, D * D),
                 count, theta, 1.0 / theta);
}

cudaError_t launch_spd_from_raw_backward(Dtype dtype, int d, const void* grad_A, const void* raw,
                                  void* grad_raw, int64_t n, double theta, cudaStream_t stream) {
  PROBREG_LAUNCH(dtype, d, n, stream, spd_from_raw_backward_kernel, in<S>(grad_A, start, D * D), in<S>(raw, start, P),
                 out<S>(grad_raw, start, P), count, theta, 1.0 / theta);
}

}  // namespace cuda
}  // namespace probreg

// CUDA kernels of huber_nll and its backward: one thread per target, calling the same
// header math as the CPU loop (csrc/include/probreg/huber.h). Torch-free. Family,
// covariance structure, d and dtype are template parameters, dispatched once per launch.
#include <type_traits>

#include "kernel_common.cuh"
#include "probreg/huber.h"

namespace probreg {
namespace cuda {
namespace {

// Storage type of the per-target loss: float for the half types, else the input type.
template <typename S>
struct LossStorage {
  using type = S;
};
template <>
struct LossStorage<__half> {
  using type = float;
};
template <>
struct LossStorage<__nv_bfloat16> {
  using type = float;
};

// Tiled (kernel_common.cuh for_each_tile): pred and target rows are loaded, and the
// gradient rows stored, coalesced through shared memory; the per-target loss and its
// upstream gradient are one value per item and go straight to global memory.
template <int D, int F, int Cov, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) huber_nll_forward_kernel(const S* __restrict__ pred, const S* __restrict__ target,
                                                  typename LossStorage<S>::type* __restrict__ loss, TileIndex n,
                                                  double delta, double theta, double inv_theta, bool mu_param) {
  using L = typename CT::type;
  using T = typename CT::value;
  constexpr int W = NllLayout<D, Cov>::width;
  __shared__ SharedRows<S, W + D> tile;
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  const bool vectorized = chunk_aligned(pred, target);  // the tiled rows
  for_each_tile(n, vectorized, [=](TileIndex first, auto part) {
    T row[W], y[D];  // T holds S exactly (kernel_common.cuh Compute)
    load_rows_tiled<W, D>(pred, target, first, part, shared, row, y);
    if (part.mine())
      store_as(loss + first + threadIdx.x, huber_nll_row<D, F, Cov, T, L>(row, y, L(delta), theta_arg, mu_param));
  });
}

template <int D, int F, int Cov, typename S, typename CT>
PROBREG_TILED_KERNEL(CT) huber_nll_backward_kernel(const typename LossStorage<S>::type* __restrict__ grad_loss,
                                                   int64_t grad_loss_stride, const S* __restrict__ pred,
                                                   const S* __restrict__ target, S* __restrict__ grad_pred,
                                                   S* __restrict__ grad_target, TileIndex n, double delta, double theta,
                                                   double inv_theta, bool mu_param) {
  using L = typename CT::type;
  using T = typename CT::value;
  constexpr int W = NllLayout<D, Cov>::width;
  __shared__ SharedRows<S, W + D> tile;
  S* const shared = tile.rows();
  const ThetaArg<L> theta_arg{L(theta), L(inv_theta)};  // 1/theta from the host
  const bool vectorized = chunk_aligned(pred, target, grad_pred, grad_target);  // the tiled rows
  for_each_tile(n, vectorized, [=](TileIndex first, auto part) {
    T row[W], y[D], grow[W], gy[D];
    load_rows_tiled<W, D>(pred, target, first, part, shared, row, y);
    if (part.mine()) {
      const L go = load_as<L>(grad_loss + (first + threadIdx.x) * grad_loss_stride);
      huber_nll_row_backward<D, F, Cov, T, L>(row, y, go, L(delta), theta_arg, mu_param, grow, gy);
    }
    store_rows_tiled<W, D>(grad_pred, grad_target, first, part, shared, grow, gy);
  });
}

// Calls f(std::integral_constant<int, F>, std::integral_constant<int, Cov>).
template <typename Fn>
cudaError_t dispatch_family_covariance(int family, int covariance, Fn&& f) {
  auto with_cov = [&](auto fam) -> cudaError_t {
    switch (covariance) {
      case kCovarianceIdentity:
        return f(fam, std::integral_constant<int, kCovarianceIdentity>{});
      case kCovarianceDiagonal:
        return f(fam, std::integral_constant<int, kCovarianceDiagonal>{});
      case kCovarianceFull:
        return f(fam, std::integral_constant<int, kCovarianceFull>{});
    }
    return cudaErrorInvalidValue;
  };
  switch (family) {
    case kFamilyHuber:
      return with_cov(std::integral_constant<int, kFamilyHuber>{});
    case kFamilyGauss:
      return with_cov(std::integral_constant<int, kFamilyGauss>{});
    case kFamilyLaplace:
      return with_cov(std::integral_constant<int, kFamilyLaplace>{});
    case kFamilyCharbonnier:
      return with_cov(std::integral_constant<int, kFamilyCharbonnier>{});
  }
  return cudaErrorInvalidValue;
}

// Dispatches (dtype, compute types CT (kernel_common.cuh dispatch_compute), d, family,
// covariance) and launches KERNEL<D, F, Cov, S, CT> for each chunk of items (launch_in_chunks);
// inside the argument list S is the storage type, L its loss storage type, W the pred
// row's width, and the chunk is [start, start + count).
#define PROBREG_NLL_LAUNCH(dtype, d, family, covariance, n, stream, KERNEL, ...)                  \
  if ((n) == 0) return cudaSuccess;                                                           \
  return dispatch_dtype(dtype, [&](auto storage) {                                            \
    using S = decltype(storage);                                                              \
    using L = typename LossStorage<S>::type;                                                  \
    return dispatch_compute<S>([&](auto compute) {                                            \
      using CT = decltype(compute);                                                            \
      return dispatch_dim(d, [&](auto dim) {                                                  \
        constexpr int D = decltype(dim)::value;                                               \
        return dispatch_family_covariance(family, covariance, [&](auto fam, auto cov) {       \
          constexpr int F = decltype(fam)::value;                                             \
          constexpr int Cov = decltype(cov)::value;                                           \
          constexpr int W = NllLayout<D, Cov>::width;                                         \
          return launch_in_chunks(n, [&](int64_t start, TileIndex count) {                    \
            return launch_kernel(KERNEL<D, F, Cov, S, CT>, blocks_for(count), kThreads, stream, __VA_ARGS__); \
          });                                                                                 \
        });                                                                                   \
      });                                                                                     \
    });                                                                                       \
  })

}  // namespace

cudaError_t launch_huber_nll_forward(Dtype dtype, int d, int family, int covariance, bool mu_parameterization,
                                     const void* pred, const void* target, void* loss, int64_t n, double delta,
                                     double theta, cudaStream_t stream) {
  PROBREG_NLL_LAUNCH(dtype, d, family, covariance, n, stream, huber_nll_forward_kernel,
                     rows_from(static_cast<const S*>(pred), start, W),
                     rows_from(static_cast<const S*>(target), start, D), rows_from(static_cast<L*>(loss), start, 1),
                     count, delta, theta, 1.0 / theta, mu_parameterization);
}

cudaError_t launch_huber_nll_backward(Dtype dtype, int d, int family, int covariance, bool mu_parameterization,
                                      const void* grad_loss, int64_t grad_loss_stride, const void* pred,
                                      const void* target, void* grad_pred, void* grad_target, int64_t n,
                                      double delta, double theta, cudaStream_t stream) {
  PROBREG_NLL_LAUNCH(dtype, d, family, covariance, n, stream, huber_nll_backward_kernel,
                     static_cast<const L*>(grad_loss) + start * grad_loss_stride, grad_loss_stride,
                     rows_from(static_cast<const S*>(pred), start, W),
                     rows_from(static_cast<const S*>(target), start, D),
                     rows_from(static_cast<S*>(grad_pred), start, W),
                     rows_from(static_cast<S*>(grad_target), start, D), count, delta, theta, 1.0 / theta,
                     mu_parameterization);
}

}  // namespace cuda
}  // namespace probreg

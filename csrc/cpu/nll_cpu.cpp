// CPU kernels of huber_nll and its backward (schemas in csrc/probreg.cpp, math in
// include/probreg/huber.h). One generic item body per direction (scalar or SIMD lanes,
// cpu_loop.h); family, covariance structure and d are dispatched once per call. Full
// covariance at d = 2 runs on the reflection frame (l, N) where cpu_loop.h offers it
// (reflection_frame): no eigenvectors, the residual formed in the input frame.
//
// Compute type: double for every storage dtype. On the CPU the double SIMD lanes are the
// fast path, so float16/bfloat16 gain float64 accuracy at no cost (the CUDA kernels
// compute half types in float32, float64 in double, and float32 with the mixed policy of
// spectral.h, which PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 reproduces here: cpu_loop.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../nll_checks.h"
#include "cpu_loop.h"
#include "probreg/huber.h"
#include "probreg/packed.h"

namespace probreg {
namespace {

#define PROBREG_NLL_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// The upstream gradient of item i (scalar) or of a lane block; stride 0 reads the
// one broadcast value (nll_checks.h NllGradLoss).
template <typename S>
inline void load_grad_loss(const S* base, int64_t stride, int64_t i, double out[1]) {
  out[0] = double(base[i * stride]);
}
#if defined(PROBREG_HAVE_LANES)
template <typename S>
inline void load_grad_loss(const S* base, int64_t stride, LaneBlock i, Lanes out[1]) {
  if (stride == 0) {
    out[0] = Lanes(double(base[0]));
  } else {
    load_item<1>(base, i, out);
  }
}
template <typename S>
inline void load_grad_loss(const S* base, int64_t stride, LaneBlockPair i, LanePair out[1]) {
  load_grad_loss(base, stride, i.first, &out[0].first);
  load_grad_loss(base, stride, i.second, &out[0].second);
}
#endif

// Full-covariance pred rows (loc (D), packed B (P)): B for the decomposition (the eigen
// type of the caller), and loc and the target y in the value type T.
template <int D, typename S, typename L, typename I>
inline void load_full_row_matrix(const S* pred, I i, L B[D][D]) {
  L row[D + Packed<D>::P];
  load_item<D + Packed<D>::P>(pred, i, row);
  unpack_symmetric<D, L>(row + D, B);
}
template <int D, typename S, typename T, typename I>
inline void load_full_row_vectors(const S* pred, const S* target, I i, T loc[D], T y[D]) {
  T row[D + Packed<D>::P];
  load_item<D + Packed<D>::P>(pred, i, row);
  for (int k = 0; k < D; ++k) loc[k] = row[k];
  load_item<D>(target, i, y);
}

// Calls f(D, F, Cov) as integral constants.
template <typename Fn>
void dispatch_nll(int64_t d, int64_t family, int64_t covariance, Fn&& f) {
  dispatch_dim(d, [&](auto dim) {
    dispatch_family(family, [&](auto fam) {
      dispatch_covariance(covariance, [&](auto cov) { f(dim, fam, cov); });
    });
  });
}

at::Tensor huber_nll_cpu(const at::Tensor& pred_in, const at::Tensor& target_in, double delta, double theta,
                         int64_t family, int64_t covariance, bool mu_parameterization) {
  const NllArgs a = prepare_huber_nll(pred_in, target_in, delta, theta, family, covariance);
  const int64_t n = a.n;
  const bool mu = mu_parameterization;
  PROBREG_NLL_DISPATCH_FLOATING(a.pred.scalar_type(), "huber_nll_cpu", [&] {
    using loss_t = nll_loss_t<scalar_t>;
    const scalar_t* pp = a.pred.const_data_ptr<scalar_t>();
    const scalar_t* tp = a.target.const_data_ptr<scalar_t>();
    loss_t* lp = a.loss.mutable_data_ptr<loss_t>();
    dispatch_nll(a.d, family, covariance, [&](auto dim, auto fam, auto cov) {
      constexpr int D = decltype(dim)::value;
      constexpr int F = decltype(fam)::value;
      constexpr int Cov = decltype(cov)::value;
      constexpr int W = NllLayout<D, Cov>::width;
      const bool emulated = run_cuda_float32_emulation<scalar_t>(n, [&](int64_t i) {
        double row[W], y[D], out[1];  // the CUDA kernel's row body
        load_item<W>(pp, i, row);
        load_item<D>(tp, i, y);
        out[0] = huber_nll_row<D, F, Cov, float, double>(row, y, delta, theta, mu);
        store_item<1>(out, lp, i);
      });
      if (emulated) return;
      if constexpr (Cov == kCovarianceFull) {
        run_decomposed<D, double, true>(
            n, [&](auto zero, auto i, auto& B) { load_full_row_matrix<D>(pp, i, B); },
            [&](auto zero, auto i, const auto& l, const auto& V) {
              using T = value_t<decltype(zero)>;
              using L = eigen_t<decltype(zero)>;
              T loc[D], y[D];
              load_full_row_vectors<D>(pp, tp, i, loc, y);
              L out[1] = {L(huber_nll_full_frame<D, F, reflection_frame<D, true>, T, L>(l, V, loc, y, T(delta),
                                                                                      L(theta), mu))};
              store_item<1>(out, lp, i);
            });
      } else {
        run_items<double>(n, [&](auto zero, auto i) {
          using T = decltype(zero);
          const T dl(delta), th(theta);
          T row[W], y[D], out[1];
          load_item<W>(pp, i, row);
          load_item<D>(tp, i, y);
          if constexpr (Cov == kCovarianceDiagonal) {
            out[0] = huber_nll_diagonal<D, F, T>(row + D, row, y, dl, th, mu);
          } else {
            out[0] = huber_nll_identity<D, F, T>(row, y, dl);
          }
          store_item<1>(out, lp, i);
        });
      }
    });
  });
  return a.loss;
}

std::tuple<at::Tensor, at::Tensor> huber_nll_backward_cpu(const at::Tensor& grad_loss_in,
                                                          const at::Tensor& pred_in,
                                                          const at::Tensor& target_in, double delta,
                                                          double theta, int64_t family, int64_t covariance,
                                                          bool mu_parameterization, bool need_grad_target) {
  const NllBackwardArgs a = prepare_huber_nll_backward(grad_loss_in, pred_in, target_in, delta, theta, family,
                                                       covariance, need_grad_target);
  const int64_t go_stride = a.grad_loss.stride;
  const int64_t n = a.n;
  const bool mu = mu_parameterization;
  PROBREG_NLL_DISPATCH_FLOATING(a.pred.scalar_type(), "huber_nll_backward_cpu", [&] {
    using loss_t = nll_loss_t<scalar_t>;
    const scalar_t* pp = a.pred.const_data_ptr<scalar_t>();
    const scalar_t* tp = a.target.const_data_ptr<scalar_t>();
    const loss_t* gl = a.grad_loss.values.const_data_ptr<loss_t>();
    scalar_t* gpp = a.grad_pred.mutable_data_ptr<scalar_t>();
    scalar_t* gtp = a.grad_target.mutable_data_ptr<scalar_t>();
    dispatch_nll(a.d, family, covariance, [&](auto dim, auto fam, auto cov) {
      constexpr int D = decltype(dim)::value;
      constexpr int F = decltype(fam)::value;
      constexpr int Cov = decltype(cov)::value;
      constexpr int W = NllLayout<D, Cov>::width;
      const bool emulated = run_cuda_float32_emulation<scalar_t>(n, [&](int64_t i) {
        double row[W], y[D], go[1], grow[W], gy[D];  // the CUDA kernel's row body
        load_item<W>(pp, i, row);
        load_item<D>(tp, i, y);
        load_grad_loss(gl, go_stride, i, go);
        huber_nll_row_backward<D, F, Cov, float, double>(row, y, go[0], delta, theta, mu, grow, gy);
        store_item<W>(grow, gpp, i);
        if (need_grad_target) store_item<D>(gy, gtp, i);
      });
      if (emulated) return;
      if constexpr (Cov == kCovarianceFull) {
        run_decomposed<D, double, true>(
            n, [&](auto zero, auto i, auto& B) { load_full_row_matrix<D>(pp, i, B); },
            [&](auto zero, auto i, const auto& l, const auto& V) {
              using T = value_t<decltype(zero)>;
              using L = eigen_t<decltype(zero)>;
              T loc[D], y[D], g_loc[D], gB[D][D], g_raw[Packed<D>::P], g_y[D];
              load_full_row_vectors<D>(pp, tp, i, loc, y);
              L go[1], grow[W], gy[D];
              load_grad_loss(gl, go_stride, i, go);
              huber_nll_full_backward_frame<D, F, reflection_frame<D, true>, T, L>(
                  l, V, loc, y, T(go[0]), T(delta), L(theta), mu, g_loc, gB, g_y);
              pack_symmetric_grad<D, T>(gB, g_raw);
              for (int k = 0; k < D; ++k) {
                grow[k] = L(g_loc[k]);
                gy[k] = L(g_y[k]);
              }
              for (int k = 0; k < Packed<D>::P; ++k) grow[D + k] = L(g_raw[k]);
              store_item<W>(grow, gpp, i);
              if (need_grad_target) store_item<D>(gy, gtp, i);
            });
      } else {
        run_items<double>(n, [&](auto zero, auto i) {
          using T = decltype(zero);
          const T dl(delta), th(theta);
          T row[W], y[D], go[1], grow[W], gy[D];
          load_item<W>(pp, i, row);
          load_item<D>(tp, i, y);
          load_grad_loss(gl, go_stride, i, go);
          if constexpr (Cov == kCovarianceDiagonal) {
            huber_nll_diagonal_backward<D, F, T>(row + D, row, y, go[0], dl, th, mu, grow, grow + D, gy);
          } else {
            huber_nll_identity_backward<D, F, T>(row, y, go[0], dl, grow, gy);
          }
          store_item<W>(grow, gpp, i);
          if (need_grad_target) store_item<D>(gy, gtp, i);
        });
      }
    });
  });
  return {a.grad_pred, a.grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CPU, m) {
  m.impl("huber_nll", &huber_nll_cpu);
  m.impl("_huber_nll_backward", &huber_nll_backward_cpu);
}

}  // namespace probreg

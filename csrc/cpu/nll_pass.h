// The one generic pass of the huber_nll CPU kernels (nll_pass) and its dispatch, shared
// by the three kernel files (nll_cpu.cpp: huber_nll and the registrations,
// nll_backward_cpu.cpp, nll_and_grad_cpu.cpp: one file each so that they compile in
// parallel). Math in include/probreg/huber.h.
//
// Full covariance at d = 2 runs on the reflection frame (l, N) where cpu_loop.h offers it
// (reflection_frame): no eigenvectors, the residual formed in the input frame.
//
// Compute type: double for every storage dtype, except full covariance in float32 on
// AVX2 / AVX-512 builds, which runs the CUDA kernels' mixed policy (spectral.h) on SIMD
// lanes (run_decomposed's MixedLanes: eigenvalues in double, the rest in float). The double
// SIMD lanes give float16/bfloat16 float64 accuracy at no cost (the CUDA kernels compute
// half types in float32). PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 runs the CUDA kernels'
// scalar float32 row body here instead (cpu_loop.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cmath>
#include <tuple>
#include <type_traits>

#include "../nll_checks.h"
#include "cpu_loop.h"
#include "probreg/huber.h"
#include "probreg/packed.h"

namespace probreg {

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
// type of the caller), and loc and the target y in the value type T. Always inlined into
// the lane loop (GCC outlined the FloatLanes load of d = 3: 3% of _huber_nll_and_grad).
template <int D, typename S, typename L, typename I>
PROBREG_HOST_DEVICE void load_full_row_matrix(const S* pred, I i, L B[D][D]) {
  L row[D + Packed<D>::P];
  load_item<D + Packed<D>::P>(pred, i, row);
  unpack_symmetric<D, L>(row + D, B);
}
template <int D, typename S, typename T, typename I>
PROBREG_HOST_DEVICE void load_full_row_vectors(const S* pred, const S* target, I i, T loc[D], T y[D]) {
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

// One pass over the n items of (pred, target) at compile-time (D, F, Cov): where WithLoss,
// the loss into lp; where WithGrad, the gradients scaled by the upstream gradient that
// load_go(i, go) gives (go[0] in the item's compute type) into gpp and, where
// need_grad_target, gtp. With both, the loss and the gradients equal those of the
// separate passes bit for bit (the same functions of the same decomposition).
template <int D, int F, int Cov, bool WithLoss, bool WithGrad, typename S, typename LossS, typename LoadGo>
void nll_pass(int64_t n, const S* pp, const S* tp, double delta, double theta, bool mu, LossS* lp,
              const LoadGo& load_go, S* gpp, S* gtp, bool need_grad_target) {
  constexpr int W = NllLayout<D, Cov>::width;
  const bool emulated = run_cuda_float32_emulation<S>(n, [&](int64_t i) {
    float row[W], y[D];  // the CUDA kernel's row body
    load_item<W>(pp, i, row);
    load_item<D>(tp, i, y);
    if constexpr (WithLoss) {
      double out[1] = {huber_nll_row<D, F, Cov, float, double>(row, y, delta, theta, mu)};
      store_item<1>(out, lp, i);
    }
    if constexpr (WithGrad) {
      double go[1];
      float grow[W], gy[D];
      load_go(i, go);
      huber_nll_row_backward<D, F, Cov, float, double>(row, y, go[0], delta, theta, mu, grow, gy);
      store_item<W>(grow, gpp, i);
      if (need_grad_target) store_item<D>(gy, gtp, i);
    }
  });
  if (emulated) return;
  if constexpr (Cov == kCovarianceFull) {
    run_decomposed<D, double, S, true, !(D == 2 && WithGrad && !WithLoss && kSplitHeavyFinish)>(
        n, [&](auto zero, auto i, auto& B) { load_full_row_matrix<D>(pp, i, B); },
        [&](auto zero, auto i, const auto& l, const auto& V) PROBREG_ITEM_BODY {
          using T = value_t<decltype(zero)>;
          using L = eigen_t<decltype(zero)>;
          constexpr bool kFrame = reflection_frame<D, true>;
          T loc[D], y[D];
          load_full_row_vectors<D>(pp, tp, i, loc, y);
          if constexpr (WithLoss) {
            L out[1] = {L(huber_nll_full_frame<D, F, kFrame, T, L, result_t<S, T>>(l, V, loc, y, T(delta),
                                                                                    L(theta), mu))};
            store_item<1>(out, lp, i);
          }
          if constexpr (WithGrad) {
            T g_loc[D], gB[D][D], g_raw[Packed<D>::P], g_y[D];
            L go[1], grow[W], gy[D];
            load_go(i, go);
            huber_nll_full_backward_frame<D, F, kFrame, T, L, result_t<S, T>>(l, V, loc, y, T(go[0]), T(delta),
                                                                              L(theta), mu, g_loc, gB, g_y);
            pack_symmetric_grad<D, T>(gB, g_raw);
            for (int k = 0; k < D; ++k) {
              grow[k] = L(g_loc[k]);
              gy[k] = L(g_y[k]);
            }
            for (int k = 0; k < Packed<D>::P; ++k) grow[D + k] = L(g_raw[k]);
            store_item<W>(grow, gpp, i);
            if (need_grad_target) store_item<D>(gy, gtp, i);
          }
        });
  } else {
    run_items<double>(n, [&](auto zero, auto i) {
      using T = decltype(zero);
      const T dl(delta), th(theta);
      T row[W], y[D];
      load_item<W>(pp, i, row);
      load_item<D>(tp, i, y);
      if constexpr (WithLoss) {
        T out[1];
        if constexpr (Cov == kCovarianceDiagonal) {
          out[0] = huber_nll_diagonal<D, F, T>(row + D, row, y, dl, th, mu);
        } else {
          out[0] = huber_nll_identity<D, F, T>(row, y, dl);
        }
        store_item<1>(out, lp, i);
      }
      if constexpr (WithGrad) {
        T go[1], grow[W], gy[D];
        load_go(i, go);
        if constexpr (Cov == kCovarianceDiagonal) {
          huber_nll_diagonal_backward<D, F, T>(row + D, row, y, go[0], dl, th, mu, grow, grow + D, gy);
        } else {
          huber_nll_identity_backward<D, F, T>(row, y, go[0], dl, grow, gy);
        }
        store_item<W>(grow, gpp, i);
        if (need_grad_target) store_item<D>(gy, gtp, i);
      }
    });
  }
}

// Calls pass(D, F, Cov, S*) for the runtime codes, D, F and Cov as integral constants and
// a null pointer of pred's storage type S.
template <typename Pass>
void dispatch_nll_pass(const at::Tensor& pred, int64_t d, int64_t family, int64_t covariance, Pass&& pass) {
  PROBREG_NLL_DISPATCH_FLOATING(pred.scalar_type(), "probreg_nll_cpu", [&] {
    dispatch_nll(d, family, covariance, [&](auto dim, auto fam, auto cov) {
      pass(dim, fam, cov, static_cast<scalar_t*>(nullptr));
    });
  });
}

// The upstream gradient of item i read from grad_loss (stride 0: one broadcast value).
template <typename LossS>
struct GradLossReader {
  const LossS* base;
  int64_t stride;
  template <typename I, typename G>
  void operator()(I i, G go[1]) const {
    load_grad_loss(base, stride, i, go);
  }
};

// One upstream gradient for every item, the value a stride-0 GradLossReader would read
// (_huber_nll_and_grad: grad_loss rounded to the loss storage type first; the forward,
// which reads none, passes 1 as a placeholder).
struct ConstantGradLoss {
  double value;
  template <typename I, typename G>
  void operator()(I, G go[1]) const {
    go[0] = G(value);
  }
};

// The three kernels (schemas in csrc/probreg.cpp), registered by nll_cpu.cpp.
at::Tensor huber_nll_cpu(const at::Tensor& pred, const at::Tensor& target, double delta, double theta,
                         int64_t family, int64_t covariance, bool mu_parameterization);
std::tuple<at::Tensor, at::Tensor> huber_nll_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& pred,
                                                          const at::Tensor& target, double delta, double theta,
                                                          int64_t family, int64_t covariance,
                                                          bool mu_parameterization, bool need_grad_target);
std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_nll_and_grad_cpu(const at::Tensor& pred,
                                                                      const at::Tensor& target, double delta,
                                                                      double theta, int64_t family,
                                                                      int64_t covariance, bool mu_parameterization,
                                                                      bool need_grad_target, double grad_loss);

}  // namespace probreg

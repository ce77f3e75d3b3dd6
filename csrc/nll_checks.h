// Argument checks and dispatch of the huber_nll operators, shared by the CPU and CUDA
// registration files. Host-only, torch-dependent; the math lives in
// include/probreg/huber.h (torch-free).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "checks.h"
#include "output_cache.h"
#include "probreg/huber.h"

namespace probreg {

// Storage dtype of the per-target loss: float32 for float16/bfloat16 inputs (they are
// computed in float32 or better, and a float32 loss is what autocast expects of a loss),
// the input dtype otherwise.
inline at::ScalarType nll_loss_dtype(at::ScalarType input) {
  return (input == at::kHalf || input == at::kBFloat16) ? at::kFloat : input;
}
template <typename scalar_t>
using nll_loss_t = std::conditional_t<std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>,
                                      float, scalar_t>;

inline const char* nll_covariance_name(int64_t covariance) {
  return covariance == kCovarianceFull ? "full" : (covariance == kCovarianceDiagonal ? "diagonal" : "identity");
}

// pred row width for target dimension d.
inline int64_t nll_pred_width(int64_t d, int64_t covariance) {
  return covariance == kCovarianceFull ? d + d * (d + 1) / 2 : (covariance == kCovarianceDiagonal ? 2 * d : d);
}

inline void check_nll_scalars(double delta, double theta, int64_t family, int64_t covariance, const char* op) {
  TORCH_CHECK(std::isfinite(delta) && delta >= 0.0, op, ": delta must be a finite number >= 0, got ", delta);
  check_theta(theta, op);
  TORCH_CHECK(family >= kFamilyHuber && family <= kFamilyCharbonnier, op,
              ": family must be 0 (huber), 1 (gauss), 2 (laplace) or 3 (charbonnier), got ", family);
  TORCH_CHECK(covariance >= kCovarianceIdentity && covariance <= kCovarianceFull, op,
              ": covariance must be 0 (identity), 1 (diagonal) or 2 (full), got ", covariance);
}

// pred (..., W) and target (..., d) with equal batch shapes, d in {1, 2, 3} and W the
// width of the covariance structure (full: d + d(d+1)/2, diagonal: 2d, identity: d).
// Same device and dtype. Returns d.
inline int64_t check_nll_inputs(const at::Tensor& pred, const at::Tensor& target, int64_t covariance,
                                const char* op) {
  check_floating(pred, op, "pred");
  check_floating(target, op, "target");
  check_same_device(pred, target, op, "pred", "target");
  check_same_dtype(pred, target, op, "pred", "target");
  TORCH_CHECK(target.dim() >= 1, op, ": target must have shape (..., d), got a 0-d tensor");
  const int64_t d = target.size(-1);
  TORCH_CHECK(d >= 1 && d <= 3, op, ": target must have shape (..., d) with d in {1, 2, 3} for the fused ",
              "kernel, got ", target.sizes(), " (the Python API serves d > 3 with the pure-PyTorch path)");
  const int64_t width = nll_pred_width(d, covariance);
  TORCH_CHECK(pred.dim() == target.dim() && pred.sizes().slice(0, pred.dim() - 1) ==
                                                target.sizes().slice(0, target.dim() - 1),
              op, ": pred (..., W) and target (..., d) must have the same batch shape, got pred ",
              pred.sizes(), " and target ", target.sizes());
  TORCH_CHECK(pred.size(-1) == width, op, ": pred must have width ", width, " for d = ", d, " (target ",
              target.sizes(), ") and covariance='", nll_covariance_name(covariance), "', got pred ", pred.sizes());
  return d;
}

// grad_loss must have the batch shape of target (..., d).
inline void check_nll_grad_shape(const at::Tensor& grad_loss, const at::Tensor& target, const char* op) {
  const auto batch = target.sizes().slice(0, target.dim() - 1);
  TORCH_CHECK(grad_loss.sizes() == batch, op, ": grad_loss must have the batch shape ", batch, " of target ",
              target.sizes(), ", got ", grad_loss.sizes());
}

// The upstream gradient as the kernels read it: n values (stride 1), or a single value
// (stride 0) when grad_loss is one value broadcast over the batch (every stride 0, as
// autograd produces for sum / mean reductions), which is then never materialised.
struct NllGradLoss {
  at::Tensor values;  // contiguous, dtype nll_loss_dtype(input) (checked by the caller)
  int64_t stride;     // 0 or 1 (in items)
};
inline NllGradLoss nll_grad_loss(const at::Tensor& grad_loss) {
  bool broadcast = grad_loss.numel() > 1;
  for (int64_t k = 0; k < grad_loss.dim(); ++k) broadcast = broadcast && (grad_loss.stride(k) == 0 || grad_loss.size(k) == 1);
  if (broadcast) {
    const at::Tensor one = grad_loss.as_strided({1}, {1}, grad_loss.storage_offset());
    return {one.contiguous(), 0};
  }
  return {grad_loss.contiguous(), 1};
}

// Validated arguments of huber_nll / _huber_nll_backward, shared by the CPU and CUDA
// registrations (CUDA callers set the device guard first): inputs contiguous, outputs
// allocated; n targets of dimension d.
struct NllArgs {
  int64_t d, n;
  at::Tensor pred, target;  // (..., W), (..., d)
  at::Tensor loss;          // output (...), dtype nll_loss_dtype(pred)
};

inline NllArgs prepare_huber_nll(const at::Tensor& pred_in, const at::Tensor& target_in, double delta,
                                 double theta, int64_t family, int64_t covariance,
                                 const char* op = "probreg.huber_nll") {
  check_nll_scalars(delta, theta, family, covariance, op);
  const int64_t d = check_nll_inputs(pred_in, target_in, covariance, op);
  at::Tensor pred = pred_in.contiguous();
  at::Tensor target = target_in.contiguous();
  at::Tensor loss = empty_output(target.sizes().slice(0, target.dim() - 1),
                                 pred.options().dtype(nll_loss_dtype(pred.scalar_type())));
  return {d, target.numel() / d, pred, target, loss};
}

// The grad_target output: like target where requested, else an empty (0,) tensor.
inline at::Tensor nll_grad_target_output(const at::Tensor& target, bool need_grad_target) {
  return need_grad_target ? empty_output_like(target) : empty_output({0}, target.options());
}

struct NllBackwardArgs {
  int64_t d, n;
  NllGradLoss grad_loss;
  at::Tensor pred, target;
  at::Tensor grad_pred, grad_target;  // outputs; grad_target is empty unless requested
};

inline NllBackwardArgs prepare_huber_nll_backward(const at::Tensor& grad_loss_in, const at::Tensor& pred_in,
                                                  const at::Tensor& target_in, double delta, double theta,
                                                  int64_t family, int64_t covariance, bool need_grad_target) {
  const char* op = "probreg._huber_nll_backward";
  check_nll_scalars(delta, theta, family, covariance, op);
  const int64_t d = check_nll_inputs(pred_in, target_in, covariance, op);
  check_floating(grad_loss_in, op, "grad_loss");
  check_same_device(grad_loss_in, pred_in, op, "grad_loss", "pred");
  TORCH_CHECK(grad_loss_in.scalar_type() == nll_loss_dtype(pred_in.scalar_type()), op,
              ": grad_loss must have the loss dtype ", nll_loss_dtype(pred_in.scalar_type()), " (pred has dtype ",
              pred_in.scalar_type(), "), got ", grad_loss_in.scalar_type());
  check_nll_grad_shape(grad_loss_in, target_in, op);
  at::Tensor pred = pred_in.contiguous();
  at::Tensor target = target_in.contiguous();
  return {d,
          target.numel() / d,
          nll_grad_loss(grad_loss_in),
          pred,
          target,
          empty_output_like(pred),
          nll_grad_target_output(target, need_grad_target)};
}

// _huber_nll_and_grad: the forward's arguments and both backward outputs.
struct NllAndGradArgs : NllArgs {
  at::Tensor grad_pred, grad_target;  // outputs; grad_target is empty unless requested
};

inline NllAndGradArgs prepare_huber_nll_and_grad(const at::Tensor& pred_in, const at::Tensor& target_in,
                                                 double delta, double theta, int64_t family, int64_t covariance,
                                                 bool need_grad_target) {
  NllArgs a = prepare_huber_nll(pred_in, target_in, delta, theta, family, covariance, "probreg._huber_nll_and_grad");
  at::Tensor grad_pred = empty_output_like(a.pred);
  at::Tensor grad_target = nll_grad_target_output(a.target, need_grad_target);
  return {std::move(a), std::move(grad_pred), std::move(grad_target)};
}

// Calls f(std::integral_constant<int, F>) for the family code.
template <typename Fn>
void dispatch_family(int64_t family, Fn&& f) {
  switch (family) {
    case kFamilyHuber:
      f(std::integral_constant<int, kFamilyHuber>{});
      break;
    case kFamilyGauss:
      f(std::integral_constant<int, kFamilyGauss>{});
      break;
    case kFamilyLaplace:
      f(std::integral_constant<int, kFamilyLaplace>{});
      break;
    case kFamilyCharbonnier:
      f(std::integral_constant<int, kFamilyCharbonnier>{});
      break;
    default:
      TORCH_CHECK(false, "probreg: unknown family code ", family);
  }
}

// Calls f(std::integral_constant<int, Cov>) for the covariance code.
template <typename Fn>
void dispatch_covariance(int64_t covariance, Fn&& f) {
  switch (covariance) {
    case kCovarianceIdentity:
      f(std::integral_constant<int, kCovarianceIdentity>{});
      break;
    case kCovarianceDiagonal:
      f(std::integral_constant<int, kCovarianceDiagonal>{});
      break;
    case kCovarianceFull:
      f(std::integral_constant<int, kCovarianceFull>{});
      break;
    default:
      TORCH_CHECK(false, "probreg: unknown covariance code ", covariance);
  }
}

}  // namespace probreg

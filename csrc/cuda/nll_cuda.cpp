// CUDA registration of huber_nll and its backward: argument checks (shared with the CPU
// file, csrc/nll_checks.h), device guard, current stream, and a call into the torch-free
// kernels (nll_kernels.cu).
#include <torch/library.h>

#include <tuple>

#include "../nll_checks.h"
#include "cuda_glue.h"

namespace probreg {
namespace {

at::Tensor huber_nll_cuda(const at::Tensor& pred_in, const at::Tensor& target_in, double delta, double theta,
                          int64_t family, int64_t covariance, bool mu_parameterization) {
  const char* op = "probreg.huber_nll";
  check_nll_scalars(delta, theta, family, covariance, op);
  const int64_t d = check_nll_inputs(pred_in, target_in, covariance, op);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  at::Tensor loss = at::empty(target.sizes().slice(0, target.dim() - 1),
                              pred.options().dtype(nll_loss_dtype(pred.scalar_type())));
  check_launch(cuda::launch_huber_nll_forward(kernel_dtype(pred), int(d), int(family), int(covariance),
                                              mu_parameterization, pred.const_data_ptr(), target.const_data_ptr(),
                                              loss.mutable_data_ptr(), target.numel() / d, delta, theta,
                                              current_stream()),
               op);
  return loss;
}

std::tuple<at::Tensor, at::Tensor> huber_nll_backward_cuda(const at::Tensor& grad_loss_in,
                                                           const at::Tensor& pred_in,
                                                           const at::Tensor& target_in, double delta,
                                                           double theta, int64_t family, int64_t covariance,
                                                           bool mu_parameterization, bool need_grad_target) {
  const char* op = "probreg._huber_nll_backward";
  check_nll_scalars(delta, theta, family, covariance, op);
  const int64_t d = check_nll_inputs(pred_in, target_in, covariance, op);
  check_floating(grad_loss_in, op, "grad_loss");
  check_same_device(grad_loss_in, pred_in, op, "grad_loss", "pred");
  check_nll_grad_shape(grad_loss_in, target_in, op);
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const at::Tensor pred = pred_in.contiguous();
  const at::Tensor target = target_in.contiguous();
  const NllGradLoss grad_loss = nll_grad_loss(grad_loss_in, pred.scalar_type());
  at::Tensor grad_pred = at::empty_like(pred);
  at::Tensor grad_target = need_grad_target ? at::empty_like(target) : at::empty({0}, target.options());
  check_launch(cuda::launch_huber_nll_backward(
                   kernel_dtype(pred), int(d), int(family), int(covariance), mu_parameterization,
                   grad_loss.values.const_data_ptr(), grad_loss.stride, pred.const_data_ptr(),
                   target.const_data_ptr(), grad_pred.mutable_data_ptr(),
                   need_grad_target ? grad_target.mutable_data_ptr() : nullptr, target.numel() / d, delta, theta,
                   current_stream()),
               op);
  return {grad_pred, grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CUDA, m) {
  m.impl("huber_nll", &huber_nll_cuda);
  m.impl("_huber_nll_backward", &huber_nll_backward_cuda);
}

}  // namespace probreg

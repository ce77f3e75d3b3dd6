// CUDA registration of huber_nll, its backward and _huber_nll_and_grad: device guard, the arguments prepared
// as for the CPU (csrc/nll_checks.h), current stream, and a call into the torch-free
// kernels (nll_kernels.cu).
#include <torch/library.h>

#include <tuple>

#include "../nll_checks.h"
#include "cuda_glue.h"

namespace probreg {
namespace {

at::Tensor huber_nll_cuda(const at::Tensor& pred_in, const at::Tensor& target_in, double delta, double theta,
                          int64_t family, int64_t covariance, bool mu_parameterization) {
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const NllArgs a = prepare_huber_nll(pred_in, target_in, delta, theta, family, covariance);
  check_launch(cuda::launch_huber_nll_forward(kernel_dtype(a.pred), int(a.d), int(family), int(covariance),
                                              mu_parameterization, a.pred.const_data_ptr(),
                                              a.target.const_data_ptr(), a.loss.mutable_data_ptr(), a.n, delta,
                                              theta, current_stream()),
               "probreg.huber_nll");
  return a.loss;
}

std::tuple<at::Tensor, at::Tensor> huber_nll_backward_cuda(const at::Tensor& grad_loss_in,
                                                           const at::Tensor& pred_in,
                                                           const at::Tensor& target_in, double delta,
                                                           double theta, int64_t family, int64_t covariance,
                                                           bool mu_parameterization, bool need_grad_target) {
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const NllBackwardArgs a = prepare_huber_nll_backward(grad_loss_in, pred_in, target_in, delta, theta, family,
                                                       covariance, need_grad_target);
  check_launch(cuda::launch_huber_nll_backward(
                   kernel_dtype(a.pred), int(a.d), int(family), int(covariance), mu_parameterization,
                   a.grad_loss.values.const_data_ptr(), a.grad_loss.stride, a.pred.const_data_ptr(),
                   a.target.const_data_ptr(), a.grad_pred.mutable_data_ptr(),
                   need_grad_target ? a.grad_target.mutable_data_ptr() : nullptr, a.n, delta, theta,
                   current_stream()),
               "probreg._huber_nll_backward");
  return {a.grad_pred, a.grad_target};
}

// The forward and backward kernels one after the other, the backward with the upstream
// gradient grad_loss read as one broadcast value (in the loss dtype). (huber_nll's
// autograd rule uses this operator on the CPU only, where one decomposition instead of two
// is what makes it pay; it is here so that the operator runs on every device.)
std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_nll_and_grad_cuda(const at::Tensor& pred_in,
                                                                       const at::Tensor& target_in, double delta,
                                                                       double theta, int64_t family,
                                                                       int64_t covariance, bool mu_parameterization,
                                                                       bool need_grad_target, double grad_loss) {
  const c10::cuda::CUDAGuard guard(pred_in.device());
  const NllAndGradArgs a =
      prepare_huber_nll_and_grad(pred_in, target_in, delta, theta, family, covariance, need_grad_target);
  const char* op = "probreg._huber_nll_and_grad";
  check_launch(cuda::launch_huber_nll_forward(kernel_dtype(a.pred), int(a.d), int(family), int(covariance),
                                              mu_parameterization, a.pred.const_data_ptr(),
                                              a.target.const_data_ptr(), a.loss.mutable_data_ptr(), a.n, delta,
                                              theta, current_stream()),
               op);
  const at::Tensor upstream = at::full({1}, grad_loss, a.loss.options());
  check_launch(cuda::launch_huber_nll_backward(
                   kernel_dtype(a.pred), int(a.d), int(family), int(covariance), mu_parameterization,
                   upstream.const_data_ptr(), 0, a.pred.const_data_ptr(), a.target.const_data_ptr(),
                   a.grad_pred.mutable_data_ptr(), need_grad_target ? a.grad_target.mutable_data_ptr() : nullptr,
                   a.n, delta, theta, current_stream()),
               op);
  return {a.loss, a.grad_pred, a.grad_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CUDA, m) {
  m.impl("huber_nll", &huber_nll_cuda);
  m.impl("_huber_nll_backward", &huber_nll_backward_cuda);
  m.impl("_huber_nll_and_grad", &huber_nll_and_grad_cuda);
}

}  // namespace probreg

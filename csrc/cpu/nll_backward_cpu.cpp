// CPU kernel of _huber_nll_backward (registered in nll_cpu.cpp).
#include "nll_pass.h"

namespace probreg {

std::tuple<at::Tensor, at::Tensor> huber_nll_backward_cpu(const at::Tensor& grad_loss_in,
                                                          const at::Tensor& pred_in,
                                                          const at::Tensor& target_in, double delta,
                                                          double theta, int64_t family, int64_t covariance,
                                                          bool mu_parameterization, bool need_grad_target) {
  const NllBackwardArgs a = prepare_huber_nll_backward(grad_loss_in, pred_in, target_in, delta, theta, family,
                                                       covariance, need_grad_target);
  dispatch_nll_pass(a.pred, a.d, family, covariance, [&](auto dim, auto fam, auto cov, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    using LossS = nll_loss_t<S>;
    const GradLossReader<LossS> go{a.grad_loss.values.const_data_ptr<LossS>(), a.grad_loss.stride};
    nll_pass<decltype(dim)::value, decltype(fam)::value, decltype(cov)::value, false, true>(
        a.n, a.pred.const_data_ptr<S>(), a.target.const_data_ptr<S>(), delta, theta, mu_parameterization,
        static_cast<LossS*>(nullptr), go, a.grad_pred.mutable_data_ptr<S>(), a.grad_target.mutable_data_ptr<S>(),
        need_grad_target);
  });
  return {a.grad_pred, a.grad_target};
}

}  // namespace probreg

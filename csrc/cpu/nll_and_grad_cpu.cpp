// CPU kernel of _huber_nll_and_grad, huber_nll and its backward for grad_loss = 1 in one
// pass (registered in nll_cpu.cpp).
#include "nll_pass.h"

namespace probreg {

// The loss and its gradients for the upstream gradient grad_loss in one pass (one
// decomposition).
std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_nll_and_grad_cpu(const at::Tensor& pred_in,
                                                                      const at::Tensor& target_in, double delta,
                                                                      double theta, int64_t family,
                                                                      int64_t covariance, bool mu_parameterization,
                                                                      bool need_grad_target, double grad_loss) {
  const NllAndGradArgs a =
      prepare_huber_nll_and_grad(pred_in, target_in, delta, theta, family, covariance, need_grad_target);
  dispatch_nll_pass(a.pred, a.d, family, covariance, [&](auto dim, auto fam, auto cov, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    const ConstantGradLoss go{double(nll_loss_t<S>(grad_loss))};  // as _huber_nll_backward reads it
    constexpr int D = decltype(dim)::value, F = decltype(fam)::value, Cov = decltype(cov)::value;
    const auto pass = [&](auto with_loss, auto with_grad) {
      nll_pass<D, F, Cov, decltype(with_loss)::value, decltype(with_grad)::value>(
          a.n, a.pred.const_data_ptr<S>(), a.target.const_data_ptr<S>(), delta, theta, mu_parameterization,
          a.loss.mutable_data_ptr<nll_loss_t<S>>(), go, a.grad_pred.mutable_data_ptr<S>(),
          a.grad_target.mutable_data_ptr<S>(), need_grad_target);
    };
    // One decomposition per target where that pays and where huber_nll's autograd route
    // calls this operator: full covariance in float32 / float64. Elsewhere (no
    // decomposition, or half types) the two passes one after the other, which keeps the
    // number of instantiated kernel bodies (and the compile time) down; same values.
    if constexpr (Cov == kCovarianceFull && (std::is_same_v<S, float> || std::is_same_v<S, double>)) {
      pass(std::true_type{}, std::true_type{});
    } else {
      pass(std::true_type{}, std::false_type{});
      pass(std::false_type{}, std::true_type{});
    }
  });
  return {a.loss, a.grad_pred, a.grad_target};
}

}  // namespace probreg

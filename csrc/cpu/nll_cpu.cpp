// CPU kernel of huber_nll and the CPU registrations of the three huber_nll operators
// (the backward and the one-pass kernels are in nll_backward_cpu.cpp and
// nll_and_grad_cpu.cpp; the pass they share in nll_pass.h).
#include "nll_pass.h"

#include <torch/library.h>

namespace probreg {

at::Tensor huber_nll_cpu(const at::Tensor& pred_in, const at::Tensor& target_in, double delta, double theta,
                         int64_t family, int64_t covariance, bool mu_parameterization) {
  const NllArgs a = prepare_huber_nll(pred_in, target_in, delta, theta, family, covariance);
  dispatch_nll_pass(a.pred, a.d, family, covariance, [&](auto dim, auto fam, auto cov, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    nll_pass<decltype(dim)::value, decltype(fam)::value, decltype(cov)::value, true, false>(
        a.n, a.pred.const_data_ptr<S>(), a.target.const_data_ptr<S>(), delta, theta, mu_parameterization,
        a.loss.mutable_data_ptr<nll_loss_t<S>>(), ConstantGradLoss{1.0}, s, s, false);
  });
  return a.loss;
}

TORCH_LIBRARY_IMPL(probreg, CPU, m) {
  m.impl("huber_nll", &huber_nll_cpu);
  m.impl("_huber_nll_backward", &huber_nll_backward_cpu);
  m.impl("_huber_nll_and_grad", &huber_nll_and_grad_cpu);
}

}  // namespace probreg

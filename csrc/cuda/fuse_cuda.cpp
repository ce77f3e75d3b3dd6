// CUDA registration of huber_fuse and _huber_fuse_backward: device guard, the arguments
// prepared as for the CPU (csrc/fuse_checks.h), current stream, and a call into the
// torch-free kernels (fuse_kernels.cu). No host synchronisation: negative weights are not
// checked here (that would need a device-to-host copy); the kernel makes such a problem
// NaN with converged = false.
#include <torch/library.h>

#include "../checks.h"
#include "../fuse_checks.h"
#include "cuda_glue.h"

namespace probreg {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> huber_fuse_cuda(
    const at::Tensor& v_in, const at::Tensor& A_in, const at::Tensor& w_in,
    const c10::optional<at::Tensor>& init_in, double delta, int64_t max_iter, double tol, double damping) {
  const char* op = "probreg.huber_fuse";
  check_cuda(v_in, op, "v");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const FuseArgs a = prepare_huber_fuse(v_in, A_in, w_in, init_in, delta, max_iter, tol, damping);
  const FuseOutputs& out = a.out;
  check_launch(cuda::launch_huber_fuse_forward(
                   kernel_dtype(a.v), int(a.shape.d), a.v.const_data_ptr(), a.A.const_data_ptr(),
                   a.w.const_data_ptr(), a.init.defined() ? a.init.const_data_ptr() : nullptr,
                   out.y.mutable_data_ptr(), out.hessian.mutable_data_ptr(),
                   out.iterations.mutable_data_ptr<int32_t>(), out.converged.mutable_data_ptr<bool>(),
                   a.shape.problems, a.shape.n, delta, int(max_iter), tol, current_stream()),
               op);
  return {out.y, out.hessian, out.iterations, out.converged};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_fuse_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& y_in, const at::Tensor& v_in, const at::Tensor& A_in,
    const at::Tensor& w_in, double delta, double damping) {
  const char* op = "probreg._huber_fuse_backward";
  check_cuda(v_in, op, "v");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const FuseBackwardArgs a = prepare_huber_fuse_backward(grad_y_in, y_in, v_in, A_in, w_in, delta, damping);
  check_launch(cuda::launch_huber_fuse_backward(
                   kernel_dtype(a.v), int(a.shape.d), a.grad_y.const_data_ptr(), a.y.const_data_ptr(),
                   a.v.const_data_ptr(), a.A.const_data_ptr(), a.w.const_data_ptr(), a.grad_v.mutable_data_ptr(),
                   a.grad_A.mutable_data_ptr(), a.grad_w.mutable_data_ptr(), a.shape.problems, a.shape.n, delta,
                   damping, current_stream()),
               op);
  return {a.grad_v, a.grad_A, a.grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CUDA, m) {
  m.impl("huber_fuse", &huber_fuse_cuda);
  m.impl("_huber_fuse_backward", &huber_fuse_backward_cuda);
}

}  // namespace probreg

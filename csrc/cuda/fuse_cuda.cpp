// CUDA registration of huber_fuse and _huber_fuse_backward: argument checks (shared with
// the CPU file, csrc/fuse_checks.h), device guard, current stream, and a call into the
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
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, init_in, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(max_iter, tol, damping, op);
  check_cuda(v_in, op, "v");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor v = v_in.contiguous();
  const at::Tensor A = A_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const bool has_init = init_in.has_value() && init_in->defined();
  const at::Tensor init = has_init ? init_in->contiguous() : at::Tensor();
  FuseOutputs out = allocate_fuse_outputs(s, v);
  check_launch(cuda::launch_huber_fuse_forward(
                   kernel_dtype(v), int(s.d), v.const_data_ptr(), A.const_data_ptr(), w.const_data_ptr(),
                   has_init ? init.const_data_ptr() : nullptr, out.y.mutable_data_ptr(),
                   out.hessian.mutable_data_ptr(), out.iterations.mutable_data_ptr<int32_t>(),
                   out.converged.mutable_data_ptr<bool>(), s.problems, s.n, delta, int(max_iter), tol,
                   current_stream()),
               op);
  return {out.y, out.hessian, out.iterations, out.converged};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_fuse_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& y_in, const at::Tensor& v_in, const at::Tensor& A_in,
    const at::Tensor& w_in, double delta, double damping) {
  const char* op = "probreg._huber_fuse_backward";
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, c10::nullopt, op);
  check_fuse_backward_inputs(grad_y_in, y_in, v_in, s, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(0, 0.0, damping, op);
  check_cuda(v_in, op, "v");
  const c10::cuda::CUDAGuard guard(v_in.device());
  const at::Tensor v = v_in.contiguous();
  const at::Tensor A = A_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor gy = grad_y_in.to(v.scalar_type()).contiguous();
  at::Tensor grad_v = at::empty_like(v);
  at::Tensor grad_A = at::empty_like(A);
  at::Tensor grad_w = at::empty_like(w);
  check_launch(cuda::launch_huber_fuse_backward(
                   kernel_dtype(v), int(s.d), gy.const_data_ptr(), y.const_data_ptr(), v.const_data_ptr(),
                   A.const_data_ptr(), w.const_data_ptr(), grad_v.mutable_data_ptr(), grad_A.mutable_data_ptr(),
                   grad_w.mutable_data_ptr(), s.problems, s.n, delta, damping, current_stream()),
               op);
  return {grad_v, grad_A, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CUDA, m) {
  m.impl("huber_fuse", &huber_fuse_cuda);
  m.impl("_huber_fuse_backward", &huber_fuse_backward_cuda);
}

}  // namespace probreg

// CUDA registration of symeig, spd_remap and spd_from_raw: argument checks (shared with
// the CPU files, csrc/checks.h), device guard, current stream, and a call into the
// torch-free kernels (spd_kernels.cu).
#include <torch/library.h>

#include "../checks.h"
#include "cuda_glue.h"

namespace probreg {
namespace {

std::tuple<at::Tensor, at::Tensor> symeig_cuda(const at::Tensor& B_in) {
  const char* op = "probreg.symeig";
  const int64_t d = check_square_matrices(B_in, op, "B");
  const c10::cuda::CUDAGuard guard(B_in.device());
  const at::Tensor B = B_in.contiguous();
  at::Tensor L = at::empty(B.sizes().slice(0, B.dim() - 1), B.options());
  at::Tensor V = at::empty_like(B);
  check_launch(cuda::launch_symeig_forward(kernel_dtype(B), int(d), B.const_data_ptr(),
                                           L.mutable_data_ptr(), V.mutable_data_ptr(),
                                           B.numel() / (d * d), current_stream()),
               op);
  return {L, V};
}

at::Tensor symeig_backward_cuda(const at::Tensor& gL_in, const at::Tensor& gV_in,
                                const at::Tensor& L_in, const at::Tensor& V_in) {
  const char* op = "probreg._symeig_backward";
  const int64_t d = check_square_matrices(V_in, op, "eigenvectors");
  check_same_shape(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  check_same_shape(gL_in, L_in, op, "grad_eigenvalues", "eigenvalues");
  check_same_device(gL_in, V_in, op, "grad_eigenvalues", "eigenvectors");
  check_same_device(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  check_same_device(L_in, V_in, op, "eigenvalues", "eigenvectors");
  const c10::cuda::CUDAGuard guard(V_in.device());
  const at::Tensor gL = gL_in.to(V_in.scalar_type()).contiguous();
  const at::Tensor gV = gV_in.to(V_in.scalar_type()).contiguous();
  const at::Tensor L = L_in.contiguous();
  const at::Tensor V = V_in.contiguous();
  at::Tensor gB = at::empty_like(V);
  check_launch(cuda::launch_symeig_backward(kernel_dtype(V), int(d), gL.const_data_ptr(),
                                            gV.const_data_ptr(), L.const_data_ptr(),
                                            V.const_data_ptr(), gB.mutable_data_ptr(),
                                            V.numel() / (d * d), current_stream()),
               op);
  return gB;
}

at::Tensor spd_remap_cuda(const at::Tensor& B_in, double theta) {
  const char* op = "probreg.spd_remap";
  const int64_t d = check_square_matrices(B_in, op, "B");
  check_theta(theta, op);
  const c10::cuda::CUDAGuard guard(B_in.device());
  const at::Tensor B = B_in.contiguous();
  at::Tensor A = at::empty_like(B);
  check_launch(cuda::launch_spd_remap_forward(kernel_dtype(B), int(d), B.const_data_ptr(),
                                              A.mutable_data_ptr(), B.numel() / (d * d), theta,
                                              current_stream()),
               op);
  return A;
}

at::Tensor spd_remap_backward_cuda(const at::Tensor& gA_in, const at::Tensor& B_in, double theta) {
  const char* op = "probreg._spd_remap_backward";
  const int64_t d = check_square_matrices(B_in, op, "B");
  check_same_shape(gA_in, B_in, op, "grad_A", "B");
  check_same_device(gA_in, B_in, op, "grad_A", "B");
  check_theta(theta, op);
  const c10::cuda::CUDAGuard guard(B_in.device());
  const at::Tensor B = B_in.contiguous();
  const at::Tensor gA = gA_in.to(B.scalar_type()).contiguous();
  at::Tensor gB = at::empty_like(B);
  check_launch(cuda::launch_spd_remap_backward(kernel_dtype(B), int(d), gA.const_data_ptr(),
                                               B.const_data_ptr(), gB.mutable_data_ptr(),
                                               B.numel() / (d * d), theta, current_stream()),
               op);
  return gB;
}

at::Tensor spd_from_raw_cuda(const at::Tensor& raw_in, double theta) {
  const char* op = "probreg.spd_from_raw";
  const int64_t d = check_packed(raw_in, op, "raw");
  check_theta(theta, op);
  const c10::cuda::CUDAGuard guard(raw_in.device());
  const at::Tensor raw = raw_in.contiguous();
  at::Tensor A = at::empty(packed_matrix_shape(raw, d), raw.options());
  check_launch(cuda::launch_spd_from_raw_forward(kernel_dtype(raw), int(d), raw.const_data_ptr(),
                                                 A.mutable_data_ptr(), raw.numel() / raw.size(-1),
                                                 theta, current_stream()),
               op);
  return A;
}

at::Tensor spd_from_raw_backward_cuda(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                      double theta) {
  const char* op = "probreg._spd_from_raw_backward";
  const int64_t d = check_packed(raw_in, op, "raw");
  check_theta(theta, op);
  check_same_device(gA_in, raw_in, op, "grad_A", "raw");
  check_matrix_grad_shape(gA_in, raw_in, d, op);
  const c10::cuda::CUDAGuard guard(raw_in.device());
  const at::Tensor raw = raw_in.contiguous();
  const at::Tensor gA = gA_in.to(raw.scalar_type()).contiguous();
  at::Tensor graw = at::empty_like(raw);
  check_launch(cuda::launch_spd_from_raw_backward(kernel_dtype(raw), int(d), gA.const_data_ptr(),
                                                  raw.const_data_ptr(), graw.mutable_data_ptr(),
                                                  raw.numel() / raw.size(-1), theta,
                                                  current_stream()),
               op);
  return graw;
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CUDA, m) {
  m.impl("symeig", &symeig_cuda);
  m.impl("_symeig_backward", &symeig_backward_cuda);
  m.impl("spd_remap", &spd_remap_cuda);
  m.impl("_spd_remap_backward", &spd_remap_backward_cuda);
  m.impl("spd_from_raw", &spd_from_raw_cuda);
  m.impl("_spd_from_raw_backward", &spd_from_raw_backward_cuda);
}

}  // namespace probreg

// CUDA registration of symeig, spd_remap and spd_from_raw: device guard, the arguments
// prepared as for the CPU (csrc/spd_args.h), current stream, and a call into the
// torch-free kernels (spd_kernels.cu).
#include <torch/library.h>

#include "../spd_args.h"
#include "cuda_glue.h"

namespace probreg {
namespace {

std::tuple<at::Tensor, at::Tensor> symeig_cuda(const at::Tensor& B_in) {
  const c10::cuda::CUDAGuard guard(B_in.device());
  const SymeigArgs a = prepare_symeig(B_in);
  check_launch(cuda::launch_symeig_forward(kernel_dtype(a.B), int(a.d), a.B.const_data_ptr(),
                                           a.L.mutable_data_ptr(), a.V.mutable_data_ptr(), a.n,
                                           current_stream()),
               "probreg.symeig");
  return {a.L, a.V};
}

at::Tensor symeig_backward_cuda(const at::Tensor& gL_in, const at::Tensor& gV_in,
                                const at::Tensor& L_in, const at::Tensor& V_in) {
  const c10::cuda::CUDAGuard guard(V_in.device());
  const SymeigBackwardArgs a = prepare_symeig_backward(gL_in, gV_in, L_in, V_in);
  check_launch(cuda::launch_symeig_backward(kernel_dtype(a.V), int(a.d), a.gL.const_data_ptr(),
                                            a.gV.const_data_ptr(), a.L.const_data_ptr(),
                                            a.V.const_data_ptr(), a.gB.mutable_data_ptr(), a.n,
                                            current_stream()),
               "probreg._symeig_backward");
  return a.gB;
}

at::Tensor spd_remap_cuda(const at::Tensor& B_in, double theta) {
  const c10::cuda::CUDAGuard guard(B_in.device());
  const SpdRemapArgs a = prepare_spd_remap(B_in, theta);
  check_launch(cuda::launch_spd_remap_forward(kernel_dtype(a.B), int(a.d), a.B.const_data_ptr(),
                                              a.A.mutable_data_ptr(), a.n, theta, current_stream()),
               "probreg.spd_remap");
  return a.A;
}

at::Tensor spd_remap_backward_cuda(const at::Tensor& gA_in, const at::Tensor& B_in, double theta) {
  const c10::cuda::CUDAGuard guard(B_in.device());
  const SpdRemapBackwardArgs a = prepare_spd_remap_backward(gA_in, B_in, theta);
  check_launch(cuda::launch_spd_remap_backward(kernel_dtype(a.B), int(a.d), a.gA.const_data_ptr(),
                                               a.B.const_data_ptr(), a.gB.mutable_data_ptr(), a.n,
                                               theta, current_stream()),
               "probreg._spd_remap_backward");
  return a.gB;
}

at::Tensor spd_from_raw_cuda(const at::Tensor& raw_in, double theta) {
  const c10::cuda::CUDAGuard guard(raw_in.device());
  const SpdFromRawArgs a = prepare_spd_from_raw(raw_in, theta);
  check_launch(cuda::launch_spd_from_raw_forward(kernel_dtype(a.raw), int(a.d), a.raw.const_data_ptr(),
                                                 a.A.mutable_data_ptr(), a.n, theta, current_stream()),
               "probreg.spd_from_raw");
  return a.A;
}

at::Tensor spd_from_raw_backward_cuda(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                      double theta) {
  const c10::cuda::CUDAGuard guard(raw_in.device());
  const SpdFromRawBackwardArgs a = prepare_spd_from_raw_backward(gA_in, raw_in, theta);
  check_launch(cuda::launch_spd_from_raw_backward(kernel_dtype(a.raw), int(a.d), a.gA.const_data_ptr(),
                                                  a.raw.const_data_ptr(), a.graw.mutable_data_ptr(),
                                                  a.n, theta, current_stream()),
               "probreg._spd_from_raw_backward");
  return a.graw;
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

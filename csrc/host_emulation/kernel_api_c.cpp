// C entry points of the host-emulated CUDA kernels, for ctypes
// (tests/test_cuda_kernels_on_host.py). Each forwards to the kernel_api.h function of the
// same name, with the dtype as an int (kernel_api.h Dtype) and no stream; each returns
// the cudaError_t as an int (0: success; probreg_emu_last_error() says why otherwise).
#include "../cuda/kernel_api.h"
#include "host_emulation.h"

namespace pc = probreg::cuda;
namespace he = probreg::cuda::host_emulation;

namespace {
pc::Dtype dtype_of(int dtype) { return static_cast<pc::Dtype>(dtype); }
}  // namespace

extern "C" {

// max_blocks caps the emulated grid (0: no cap); order: host_emulation.h Order.
void probreg_emu_set_schedule(unsigned int max_blocks, int order, unsigned long long seed) {
  he::Schedule s;
  s.max_blocks = max_blocks == 0 ? 0xffffffffu : max_blocks;
  s.order = static_cast<he::Order>(order);
  s.seed = seed;
  he::set_schedule(s);
}

const char* probreg_emu_last_error() { return he::last_error(); }

int probreg_emu_symeig_forward(int dtype, int d, const void* B, void* L, void* V, long long n) {
  return pc::launch_symeig_forward(dtype_of(dtype), d, B, L, V, n, nullptr);
}

int probreg_emu_symeig_backward(int dtype, int d, const void* gL, const void* gV, const void* L, const void* V,
                                void* gB, long long n) {
  return pc::launch_symeig_backward(dtype_of(dtype), d, gL, gV, L, V, gB, n, nullptr);
}

int probreg_emu_spd_remap_forward(int dtype, int d, const void* B, void* A, long long n, double theta) {
  return pc::launch_spd_remap_forward(dtype_of(dtype), d, B, A, n, theta, nullptr);
}

int probreg_emu_spd_remap_backward(int dtype, int d, const void* gA, const void* B, void* gB, long long n,
                                   double theta) {
  return pc::launch_spd_remap_backward(dtype_of(dtype), d, gA, B, gB, n, theta, nullptr);
}

int probreg_emu_spd_from_raw_forward(int dtype, int d, const void* raw, void* A, long long n, double theta) {
  return pc::launch_spd_from_raw_forward(dtype_of(dtype), d, raw, A, n, theta, nullptr);
}

int probreg_emu_spd_from_raw_backward(int dtype, int d, const void* gA, const void* raw, void* graw,
                                      long long n, double theta) {
  return pc::launch_spd_from_raw_backward(dtype_of(dtype), d, gA, raw, graw, n, theta, nullptr);
}

int probreg_emu_huber_nll_forward(int dtype, int d, int family, int covariance, int mu_parameterization,
                                  const void* pred, const void* target, void* loss, long long n, double delta,
                                  double theta) {
  return pc::launch_huber_nll_forward(dtype_of(dtype), d, family, covariance, mu_parameterization != 0, pred,
                                      target, loss, n, delta, theta, nullptr);
}

int probreg_emu_huber_nll_backward(int dtype, int d, int family, int covariance, int mu_parameterization,
                                   const void* grad_loss, long long grad_loss_stride, const void* pred,
                                   const void* target, void* grad_pred, void* grad_target, long long n,
                                   double delta, double theta) {
  return pc::launch_huber_nll_backward(dtype_of(dtype), d, family, covariance, mu_parameterization != 0,
                                       grad_loss, grad_loss_stride, pred, target, grad_pred, grad_target, n,
                                       delta, theta, nullptr);
}

int probreg_emu_huber_fuse_forward(int dtype, int d, const void* v, const void* A, const void* weight,
                                   const void* init, void* y, void* hessian, int* iterations, bool* converged,
                                   long long problems, long long n, double delta, int max_iter, double tol) {
  return pc::launch_huber_fuse_forward(dtype_of(dtype), d, v, A, weight, init, y, hessian, iterations, converged,
                                       problems, n, delta, max_iter, tol, nullptr);
}

int probreg_emu_huber_fuse_backward(int dtype, int d, const void* grad_y, const void* y, const void* v,
                                    const void* A, const void* weight, void* grad_v, void* grad_A,
                                    void* grad_weight, long long problems, long long n, double delta,
                                    double damping) {
  return pc::launch_huber_fuse_backward(dtype_of(dtype), d, grad_y, y, v, A, weight, grad_v, grad_A, grad_weight,
                                        problems, n, delta, damping, nullptr);
}

}  // extern "C"

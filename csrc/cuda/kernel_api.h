// Host-callable entry points of the torch-free CUDA kernels (raw pointers, element
// counts, cudaStream_t). The torch registration glue (*_cuda.cpp) validates arguments,
// makes tensors contiguous and calls these; each returns the launch status
// (cudaGetLastError) and never synchronises. n = 0 launches nothing.
// Float32 spd_remap, spd_from_raw and huber_nll compute with the mixed policy of
// kernel_common.cuh Compute<float>; with the environment variable
// PROBREG_CUDA_FLOAT32_COMPUTE=double (read at each launch) they compute in double
// throughout: a benchmarking switch, equally accurate.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace probreg {
namespace cuda {

enum class Dtype : int { kFloat64, kFloat32, kFloat16, kBFloat16 };

// ---- spectral SPD map (csrc/include/probreg/spectral.h), d in {1, 2, 3} ----
// B, V, A, grads: n row-major d x d matrices; L: n x d; raw: n x d(d+1)/2.
cudaError_t launch_symeig_forward(Dtype dtype, int d, const void* B, void* L, void* V, int64_t n,
                           cudaStream_t stream);
cudaError_t launch_symeig_backward(Dtype dtype, int d, const void* grad_L, const void* grad_V,
                            const void* L, const void* V, void* grad_B, int64_t n,
                            cudaStream_t stream);
cudaError_t launch_spd_remap_forward(Dtype dtype, int d, const void* B, void* A, int64_t n, double theta,
                              cudaStream_t stream);
cudaError_t launch_spd_remap_backward(Dtype dtype, int d, const void* grad_A, const void* B,
                               void* grad_B, int64_t n, double theta, cudaStream_t stream);
cudaError_t launch_spd_from_raw_forward(Dtype dtype, int d, const void* raw, void* A, int64_t n,
                                 double theta, cudaStream_t stream);
cudaError_t launch_spd_from_raw_backward(Dtype dtype, int d, const void* grad_A, const void* raw,
                                  void* grad_raw, int64_t n, double theta, cudaStream_t stream);

// ---- huber_nll (csrc/include/probreg/huber.h), d in {1, 2, 3} ----
// pred: n x W rows (W = d + d(d+1)/2 for covariance 2 (full), 2d for 1 (diagonal), d for
// 0 (identity)); target: n x d; loss: n values, float32 for kFloat16/kBFloat16, else dtype.
// family: 0 huber, 1 gauss, 2 laplace, 3 charbonnier. grad_loss: loss dtype, read at
// i * grad_loss_stride (stride 0: one broadcast value). grad_pred / grad_target: dtype;
// grad_target may be null (not computed).
cudaError_t launch_huber_nll_forward(Dtype dtype, int d, int family, int covariance, bool mu_parameterization,
                                     const void* pred, const void* target, void* loss, int64_t n, double delta,
                                     double theta, cudaStream_t stream);
cudaError_t launch_huber_nll_backward(Dtype dtype, int d, int family, int covariance, bool mu_parameterization,
                                      const void* grad_loss, int64_t grad_loss_stride, const void* pred,
                                      const void* target, void* grad_pred, void* grad_target, int64_t n,
                                      double delta, double theta, cudaStream_t stream);
// ---- fusion of Huber estimates (csrc/include/probreg/fuse.h), d in {1, 2, 3} ----
// `problems` problems of n estimates each, contiguous: v (problems, n, d),
// A (problems, n, d, d), weight (problems, n), init (problems, d) or nullptr, y and
// grad_y (problems, d), hessian (problems, d, d), iterations (problems) int32,
// converged (problems) bool; grads have their input's layout. One thread per problem.
cudaError_t launch_huber_fuse_forward(Dtype dtype, int d, const void* v, const void* A, const void* weight,
                                      const void* init, void* y, void* hessian, int32_t* iterations,
                                      bool* converged, int64_t problems, int64_t n, double delta, int max_iter,
                                      double tol, cudaStream_t stream);
cudaError_t launch_huber_fuse_backward(Dtype dtype, int d, const void* grad_y, const void* y, const void* v,
                                       const void* A, const void* weight, void* grad_v, void* grad_A,
                                       void* grad_weight, int64_t problems, int64_t n, double delta,
                                       double damping, cudaStream_t stream);

}  // namespace cuda
}  // namespace probreg

// CUDA kernels of huber_fuse and _huber_fuse_backward: one thread per problem, looping over
// its n estimates inside (csrc/include/probreg/fuse.h, the same math as the CPU loop).
// Torch-free. No host synchronisation: iterations and converged are written to device
// memory, so a launch can be captured in a CUDA graph.
#include <type_traits>

#include "kernel_common.cuh"
#include "probreg/fuse.h"

namespace probreg {
namespace cuda {
namespace {

// Fusion threads carry two FuseEval states (O(D^2) doubles each): smaller blocks keep
// more of them resident per SM than kThreads.
constexpr int kFuseThreads = 128;

inline unsigned int fuse_blocks_for(int64_t problems) {
  const int64_t blocks = (problems + kFuseThreads - 1) / kFuseThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

// The n estimates of one problem (contiguous), converted to the compute type C.
template <int D, typename S, typename C>
struct DeviceFuseTerms {
  const S* v;
  const S* A;
  const S* w;
  __device__ __forceinline__ void load(int64_t i, C Am[D][D], C vv[D], C& ww) const {
#pragma unroll
    for (int a = 0; a < D; ++a) {
      vv[a] = load_as<C>(v + i * D + a);
#pragma unroll
      for (int b = 0; b < D; ++b) Am[a][b] = load_as<C>(A + (i * D + a) * D + b);
    }
    ww = load_as<C>(w + i);
  }
};

template <int D, typename S, typename C>
struct DeviceFuseGradSink {
  S* grad_v;
  S* grad_A;
  S* grad_w;
  __device__ __forceinline__ void store(int64_t i, const C gA[D][D], const C gv[D], C gw) {
#pragma unroll
    for (int a = 0; a < D; ++a) {
      store_as(grad_v + i * D + a, gv[a]);
#pragma unroll
      for (int b = 0; b < D; ++b) store_as(grad_A + (i * D + a) * D + b, gA[a][b]);
    }
    store_as(grad_w + i, gw);
  }
};

template <int D, typename S>
__global__ void huber_fuse_forward_kernel(const S* __restrict__ v, const S* __restrict__ A,
                                          const S* __restrict__ w, const S* __restrict__ init,
                                          S* __restrict__ y, S* __restrict__ hessian,
                                          int32_t* __restrict__ iterations, bool* __restrict__ converged,
                                          int64_t problems, int64_t n, double delta, int max_iter,
                                          double tol) {
  using C = typename Compute<S>::type;
  PROBREG_GRID_STRIDE_LOOP(p, problems) {
    const DeviceFuseTerms<D, S, C> terms{v + p * n * D, A + p * n * D * D, w + p * n};
    C init_c[D];
    if (init != nullptr) load_row<D>(init, p, init_c);
    FuseOutput<D, C> o;
    fuse_solve<D, C>(terms, n, C(delta), init != nullptr ? init_c : nullptr, max_iter, C(tol), o);
    store_row<D>(y, p, o.y);
    store_row<D * D>(hessian, p, &o.hess[0][0]);
    iterations[p] = int32_t(o.iterations);
    // Converged only where y fits the storage dtype: a float32/half y beyond its range is
    // stored as +-inf (the CPU glue does the same).
    bool fits = true;
#pragma unroll
    for (int a = 0; a < D; ++a) {
      S stored;
      store_as(&stored, o.y[a]);
      fits = fits && pr_isfinite(load_as<C>(&stored));
    }
    converged[p] = o.converged && fits;
  }
}

template <int D, typename S>
__global__ void huber_fuse_backward_kernel(const S* __restrict__ grad_y, const S* __restrict__ y,
                                           const S* __restrict__ v, const S* __restrict__ A,
                                           const S* __restrict__ w, S* __restrict__ grad_v,
                                           S* __restrict__ grad_A, S* __restrict__ grad_w, int64_t problems,
                                           int64_t n, double delta, double damping) {
  using C = typename Compute<S>::type;
  PROBREG_GRID_STRIDE_LOOP(p, problems) {
    const DeviceFuseTerms<D, S, C> terms{v + p * n * D, A + p * n * D * D, w + p * n};
    DeviceFuseGradSink<D, S, C> sink{grad_v + p * n * D, grad_A + p * n * D * D, grad_w + p * n};
    C yc[D], gyc[D];
    load_row<D>(y, p, yc);
    load_row<D>(grad_y, p, gyc);
    fuse_backward<D, C>(terms, n, yc, C(delta), C(damping), gyc, sink);
  }
}

template <typename S>
const S* in(const void* p) {
  return static_cast<const S*>(p);
}
template <typename S>
S* out(void* p) {
  return static_cast<S*>(p);
}

}  // namespace

cudaError_t launch_huber_fuse_forward(Dtype dtype, int d, const void* v, const void* A, const void* weight,
                                      const void* init, void* y, void* hessian, int32_t* iterations,
                                      bool* converged, int64_t problems, int64_t n, double delta, int max_iter,
                                      double tol, cudaStream_t stream) {
  if (problems == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto storage) {
    using S = decltype(storage);
    return dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      return launch_kernel(huber_fuse_forward_kernel<D, S>, fuse_blocks_for(problems), kFuseThreads, stream,
          in<S>(v), in<S>(A), in<S>(weight), in<S>(init), out<S>(y), out<S>(hessian), iterations, converged,
          problems, n, delta, max_iter, tol);
    });
  });
}

cudaError_t launch_huber_fuse_backward(Dtype dtype, int d, const void* grad_y, const void* y, const void* v,
                                       const void* A, const void* weight, void* grad_v, void* grad_A,
                                       void* grad_weight, int64_t problems, int64_t n, double delta,
                                       double damping, cudaStream_t stream) {
  if (problems == 0 || n == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto storage) {
    using S = decltype(storage);
    return dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      return launch_kernel(huber_fuse_backward_kernel<D, S>, fuse_blocks_for(problems), kFuseThreads, stream,
          in<S>(grad_y), in<S>(y), in<S>(v), in<S>(A), in<S>(weight), out<S>(grad_v), out<S>(grad_A),
          out<S>(grad_weight), problems, n, delta, damping);
    });
  });
}

}  // namespace cuda
}  // namespace probreg

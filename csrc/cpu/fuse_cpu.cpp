// CPU kernels of huber_fuse and _huber_fuse_backward (schemas in csrc/probreg.cpp; math in
// csrc/include/probreg/fuse.h). One problem per item, scalar compute type (the solver's
// iteration count varies per problem, so there is no SIMD-lane variant), problems spread
// over threads with at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../fuse_checks.h"
#include "probreg/fuse.h"

namespace probreg {
namespace {

#define PROBREG_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Problems per task: a problem costs roughly n * (number of passes, typically 4-10) * 20 ns.
inline int64_t fuse_grain(int64_t n) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(n, 1)); }

// The n estimates of one problem, contiguous: v (n, D), A (n, D, D), w (n).
template <int D, typename S, typename T>
struct CpuFuseTerms {
  const S* v;
  const S* A;
  const S* w;
  void load(int64_t i, T Am[D][D], T vv[D], T& ww) const {
    for (int a = 0; a < D; ++a) {
      vv[a] = T(v[i * D + a]);
      for (int b = 0; b < D; ++b) Am[a][b] = T(A[(i * D + a) * D + b]);
    }
    ww = T(w[i]);
  }
};

template <int D, typename S, typename T>
struct CpuFuseGradSink {
  S* grad_v;
  S* grad_A;
  S* grad_w;
  void store(int64_t i, const T gA[D][D], const T gv[D], T gw) {
    for (int a = 0; a < D; ++a) {
      grad_v[i * D + a] = S(gv[a]);
      for (int b = 0; b < D; ++b) grad_A[(i * D + a) * D + b] = S(gA[a][b]);
    }
    grad_w[i] = S(gw);
  }
};

void check_nonnegative_weights(const at::Tensor& weight, const char* op) {
  // Host-side check (free on CPU); NaN weights are not caught here: they make only their
  // own problem NaN (fuse.h).
  TORCH_CHECK(weight.numel() == 0 || !(weight < 0).any().item<bool>(), op,
              ": weight must be >= 0 (0 removes an estimate), got a negative weight");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> huber_fuse_cpu(
    const at::Tensor& v_in, const at::Tensor& A_in, const at::Tensor& w_in,
    const c10::optional<at::Tensor>& init_in, double delta, int64_t max_iter, double tol, double damping) {
  const char* op = "probreg.huber_fuse";
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, init_in, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(max_iter, tol, damping, op);
  check_nonnegative_weights(w_in, op);
  const at::Tensor v = v_in.contiguous();
  const at::Tensor A = A_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const bool has_init = init_in.has_value() && init_in->defined();
  const at::Tensor init = has_init ? init_in->contiguous() : at::Tensor();
  FuseOutputs out = allocate_fuse_outputs(s, v);
  const int64_t d = s.d, n = s.n;
  PROBREG_DISPATCH_FLOATING(v.scalar_type(), "huber_fuse_cpu", [&] {
    using T = compute_t<scalar_t>;
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* ap = A.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* ip = has_init ? init.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = out.y.mutable_data_ptr<scalar_t>();
    scalar_t* hp = out.hessian.mutable_data_ptr<scalar_t>();
    int32_t* itp = out.iterations.mutable_data_ptr<int32_t>();
    bool* cp = out.converged.mutable_data_ptr<bool>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      at::parallel_for(0, s.problems, fuse_grain(n), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const CpuFuseTerms<D, scalar_t, T> terms{vp + p * n * D, ap + p * n * D * D, wp + p * n};
          T init_c[D];
          if (ip != nullptr)
            for (int a = 0; a < D; ++a) init_c[a] = T(ip[p * D + a]);
          FuseOutput<D, T> o;
          fuse_solve<D, T>(terms, n, T(delta), ip != nullptr ? init_c : nullptr, int(max_iter), T(tol), o);
          for (int a = 0; a < D; ++a) {
            yp[p * D + a] = scalar_t(o.y[a]);
            for (int b = 0; b < D; ++b) hp[(p * D + a) * D + b] = scalar_t(o.hess[a][b]);
          }
          itp[p] = o.iterations;
          cp[p] = o.converged;
        }
      });
    });
  });
  return {out.y, out.hessian, out.iterations, out.converged};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_fuse_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& y_in, const at::Tensor& v_in, const at::Tensor& A_in,
    const at::Tensor& w_in, double delta, double damping) {
  const char* op = "probreg._huber_fuse_backward";
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, c10::nullopt, op);
  check_fuse_backward_inputs(grad_y_in, y_in, v_in, s, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(0, 0.0, damping, op);
  check_nonnegative_weights(w_in, op);
  const at::Tensor v = v_in.contiguous();
  const at::Tensor A = A_in.contiguous();
  const at::Tensor w = w_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor gy = grad_y_in.to(v.scalar_type()).contiguous();
  at::Tensor grad_v = at::empty_like(v);
  at::Tensor grad_A = at::empty_like(A);
  at::Tensor grad_w = at::empty_like(w);
  const int64_t d = s.d, n = s.n;
  PROBREG_DISPATCH_FLOATING(v.scalar_type(), "huber_fuse_backward_cpu", [&] {
    using T = compute_t<scalar_t>;
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t* ap = A.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    scalar_t* gvp = grad_v.mutable_data_ptr<scalar_t>();
    scalar_t* gap = grad_A.mutable_data_ptr<scalar_t>();
    scalar_t* gwp = grad_w.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      at::parallel_for(0, s.problems, fuse_grain(n), [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          const CpuFuseTerms<D, scalar_t, T> terms{vp + p * n * D, ap + p * n * D * D, wp + p * n};
          CpuFuseGradSink<D, scalar_t, T> sink{gvp + p * n * D, gap + p * n * D * D, gwp + p * n};
          T yc[D], gyc[D];
          for (int a = 0; a < D; ++a) {
            yc[a] = T(yp[p * D + a]);
            gyc[a] = T(gyp[p * D + a]);
          }
          fuse_backward<D, T>(terms, n, yc, T(delta), T(damping), gyc, sink);
        }
      });
    });
  });
  return {grad_v, grad_A, grad_w};
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CPU, m) {
  m.impl("huber_fuse", &huber_fuse_cpu);
  m.impl("_huber_fuse_backward", &huber_fuse_backward_cpu);
}

}  // namespace probreg

// Argument checks and output allocation of huber_fuse / _huber_fuse_backward, shared by
// the CPU and CUDA registration files. Host-only, torch-dependent; no data-dependent
// checks here (those would synchronise a CUDA stream).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <vector>

#include "checks.h"
#include "output_cache.h"

namespace probreg {

// Shapes of one fusion call: `problems` independent problems of n estimates in d dims.
struct FuseShape {
  int64_t d;
  int64_t n;
  int64_t problems;
  std::vector<int64_t> batch;  // the leading (...) dims
};

// v (..., n, d), A (..., n, d, d), weight (..., n), init (..., d) or undefined; same
// dtype and device. d in {1, 2, 3}.
inline FuseShape check_fuse_inputs(const at::Tensor& v, const at::Tensor& A, const at::Tensor& weight,
                                   const c10::optional<at::Tensor>& init, const char* op) {
  check_floating(v, op, "v");
  TORCH_CHECK(v.dim() >= 2, op, ": v must have shape (..., n, d), got ", v.sizes());
  FuseShape s;
  s.d = v.size(-1);
  s.n = v.size(-2);
  TORCH_CHECK(s.d >= 1 && s.d <= 3, op, ": v must have shape (..., n, d) with d in {1, 2, 3} for the fused ",
              "kernel, got ", v.sizes(), " (the Python API serves d > 3 with the pure-PyTorch path)");
  s.batch.assign(v.sizes().begin(), v.sizes().end() - 2);
  std::vector<int64_t> a_shape = s.batch;
  a_shape.push_back(s.n);
  a_shape.push_back(s.d);
  a_shape.push_back(s.d);
  TORCH_CHECK(A.sizes() == at::IntArrayRef(a_shape), op, ": A must have shape (..., n, d, d) = ",
              at::IntArrayRef(a_shape), " to match v ", v.sizes(), ", got ", A.sizes());
  std::vector<int64_t> w_shape = s.batch;
  w_shape.push_back(s.n);
  TORCH_CHECK(weight.sizes() == at::IntArrayRef(w_shape), op, ": weight must have shape (..., n) = ",
              at::IntArrayRef(w_shape), " to match v ", v.sizes(), ", got ", weight.sizes());
  check_companion(A, v, op, "A", "v");
  check_companion(weight, v, op, "weight", "v");
  if (init.has_value() && init->defined()) {
    std::vector<int64_t> y_shape = s.batch;
    y_shape.push_back(s.d);
    TORCH_CHECK(init->sizes() == at::IntArrayRef(y_shape), op, ": init must have shape (..., d) = ",
                at::IntArrayRef(y_shape), " to match v ", v.sizes(), ", got ", init->sizes());
    check_companion(*init, v, op, "init", "v");
  }
  s.problems = 1;
  for (int64_t b : s.batch) s.problems *= b;
  return s;
}

// delta > 0 (+inf allowed: every estimate on its quadratic piece). delta = 0 is rejected:
// h_0 is identically zero, so the energy has no minimiser to speak of.
inline void check_fuse_delta(double delta, const char* op) {
  TORCH_CHECK(delta > 0.0, op, ": delta must be > 0 (h_delta is identically zero at delta = 0), got ",
              delta);
}

inline void check_fuse_solver_args(int64_t max_iter, double tol, double damping, const char* op) {
  TORCH_CHECK(max_iter >= 0 && max_iter <= (int64_t(1) << 30), op,
              ": max_iter must be in [0, 2^30], got ", max_iter);
  TORCH_CHECK(std::isfinite(tol) && tol >= 0.0, op, ": tol must be a finite number >= 0, got ", tol);
  TORCH_CHECK(std::isfinite(damping) && damping >= 0.0, op,
              ": damping must be a finite number >= 0, got ", damping);
}

inline std::vector<int64_t> fuse_shape_with(const FuseShape& s, std::initializer_list<int64_t> tail) {
  std::vector<int64_t> shape = s.batch;
  shape.insert(shape.end(), tail.begin(), tail.end());
  return shape;
}

// y (..., d), hessian (..., d, d) in v's dtype; iterations int32 (...); converged bool (...).
struct FuseOutputs {
  at::Tensor y, hessian, iterations, converged;
};
inline FuseOutputs allocate_fuse_outputs(const FuseShape& s, const at::Tensor& v) {
  FuseOutputs o;
  o.y = empty_output(fuse_shape_with(s, {s.d}), v.options());
  o.hessian = empty_output(fuse_shape_with(s, {s.d, s.d}), v.options());
  o.iterations = empty_output(s.batch, v.options().dtype(at::kInt));
  o.converged = empty_output(s.batch, v.options().dtype(at::kBool));
  return o;
}

// grad_y and y (..., d) matching the inputs.
inline void check_fuse_backward_inputs(const at::Tensor& grad_y, const at::Tensor& y, const at::Tensor& v,
                                       const FuseShape& s, const char* op) {
  const std::vector<int64_t> y_shape = fuse_shape_with(s, {s.d});
  TORCH_CHECK(y.sizes() == at::IntArrayRef(y_shape), op, ": y must have shape (..., d) = ",
              at::IntArrayRef(y_shape), " to match v ", v.sizes(), ", got ", y.sizes());
  TORCH_CHECK(grad_y.sizes() == at::IntArrayRef(y_shape), op, ": grad_y must have shape (..., d) = ",
              at::IntArrayRef(y_shape), " to match v ", v.sizes(), ", got ", grad_y.sizes());
  check_companion(y, v, op, "y", "v");
  check_companion(grad_y, v, op, "grad_y", "v");
}

// Validated arguments of huber_fuse / _huber_fuse_backward shared by the CPU and CUDA
// registrations (CUDA callers set the device guard first; the CPU also checks the
// weights' signs, which on CUDA would need a host synchronisation): inputs contiguous,
// outputs allocated.
struct FuseArgs {
  FuseShape shape;
  at::Tensor v, A, w;
  at::Tensor init;  // undefined when not given
  FuseOutputs out;
};

inline FuseArgs prepare_huber_fuse(const at::Tensor& v_in, const at::Tensor& A_in, const at::Tensor& w_in,
                                   const c10::optional<at::Tensor>& init_in, double delta, int64_t max_iter,
                                   double tol, double damping) {
  const char* op = "probreg.huber_fuse";
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, init_in, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(max_iter, tol, damping, op);
  at::Tensor v = v_in.contiguous();
  const bool has_init = init_in.has_value() && init_in->defined();
  return {s, v, A_in.contiguous(), w_in.contiguous(), has_init ? init_in->contiguous() : at::Tensor(),
          allocate_fuse_outputs(s, v)};
}

struct FuseBackwardArgs {
  FuseShape shape;
  at::Tensor grad_y, y, v, A, w;     // all of v's dtype and device
  at::Tensor grad_v, grad_A, grad_w;  // outputs
};

inline FuseBackwardArgs prepare_huber_fuse_backward(const at::Tensor& grad_y_in, const at::Tensor& y_in,
                                                    const at::Tensor& v_in, const at::Tensor& A_in,
                                                    const at::Tensor& w_in, double delta, double damping) {
  const char* op = "probreg._huber_fuse_backward";
  const FuseShape s = check_fuse_inputs(v_in, A_in, w_in, c10::nullopt, op);
  check_fuse_backward_inputs(grad_y_in, y_in, v_in, s, op);
  check_fuse_delta(delta, op);
  check_fuse_solver_args(0, 0.0, damping, op);
  at::Tensor v = v_in.contiguous();
  at::Tensor A = A_in.contiguous();
  at::Tensor w = w_in.contiguous();
  return {s, grad_y_in.contiguous(), y_in.contiguous(), v, A, w,
          empty_output_like(v), empty_output_like(A), empty_output_like(w)};
}

}  // namespace probreg

// Argument checks and dtype plumbing shared by the CPU and CUDA registration files.
// Host-only, torch-dependent; the math itself lives in include/probreg (torch-free).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

namespace probreg {

// CPU compute type of a storage dtype. float32 inputs are decomposed in double: the
// eigenvalues map through exp(l/theta), so an absolute eigenvalue error of eps*|l|
// becomes a relative error of eps*|l|/theta in A, and float32 Jacobi cannot meet the
// 2e-5 accuracy contract at l = -80*theta. float16/bfloat16 inputs compute in float32
// (the NLL and the SIMD paths use double for every dtype). The CUDA kernels' policy,
// including their mixed float32 path, is in csrc/cuda/kernel_common.cuh (Compute).
template <typename scalar_t>
struct ComputeType {
  using type = double;
};
template <>
struct ComputeType<at::Half> {
  using type = float;
};
template <>
struct ComputeType<at::BFloat16> {
  using type = float;
};
template <typename scalar_t>
using compute_t = typename ComputeType<scalar_t>::type;

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor (float64, float32, float16 or bfloat16), got ",
              t.scalar_type());
  TORCH_CHECK(t.scalar_type() == at::kDouble || t.scalar_type() == at::kFloat ||
                  t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              op, ": ", name, " dtype ", t.scalar_type(), " is not supported");
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", name_a, " is on ", a.device(), " but ",
              name_b, " is on ", b.device(), "; they must be on the same device");
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " has dtype ",
              a.scalar_type(), " but ", name_b, " has dtype ", b.scalar_type());
}

// `t` accompanies `ref` (a gradient of an output, a second input): floating, same dtype and
// same device. Shapes are checked by the caller (they differ per op).
inline void check_companion(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name,
                            const char* ref_name) {
  check_floating(t, op, name);
  check_same_dtype(t, ref, op, name, ref_name);
  check_same_device(t, ref, op, name, ref_name);
}

// theta: finite and positive normal (>= DBL_MIN). The kernels form 1/theta, which
// overflows below about 5.6e-309, and sum_log_normal takes max(l, theta) as normal: a
// subnormal theta gave A = 0 where g(l) is about theta.
inline void check_theta(double theta, const char* op) {
  TORCH_CHECK(std::isfinite(theta) && theta >= DBL_MIN, op,
              ": theta must be a finite positive normal number (>= 2.2250738585072014e-308), got ", theta);
}

// B of shape (..., d, d), d in {1, 2, 3}. Returns d.
inline int64_t check_square_matrices(const at::Tensor& B, const char* op, const char* name) {
  check_floating(B, op, name);
  TORCH_CHECK(B.dim() >= 2 && B.size(-1) == B.size(-2), op, ": ", name,
              " must have shape (..., d, d), got ", B.sizes());
  const int64_t d = B.size(-1);
  TORCH_CHECK(d >= 1 && d <= 3, op, ": ", name, " must have shape (..., d, d) with d in {1, 2, 3} ",
              "for the fused kernel, got ", B.sizes(),
              " (the Python API serves d > 3 with the pure-PyTorch path)");
  return d;
}

// raw of shape (..., P), P in {1, 3, 6}. Returns d.
inline int64_t check_packed(const at::Tensor& raw, const char* op, const char* name) {
  check_floating(raw, op, name);
  TORCH_CHECK(raw.dim() >= 1, op, ": ", name, " must have shape (..., P), got a 0-d tensor");
  const int64_t P = raw.size(-1);
  TORCH_CHECK(P == 1 || P == 3 || P == 6, op, ": ", name,
              " must have shape (..., P) with P = d(d+1)/2 in {1, 3, 6} (d = 1, 2, 3), got ",
              raw.sizes());
  return P == 1 ? 1 : (P == 3 ? 2 : 3);
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", name_a, " has shape ", a.sizes(), " but ",
              name_b, " has shape ", b.sizes(), "; expected equal shapes");
}

// (..., P) packed -> (..., d, d).
inline std::vector<int64_t> packed_matrix_shape(const at::Tensor& raw, int64_t d) {
  std::vector<int64_t> shape(raw.sizes().begin(), raw.sizes().end() - 1);
  shape.push_back(d);
  shape.push_back(d);
  return shape;
}

// grad_A (..., d, d) for raw (..., P).
inline void check_matrix_grad_shape(const at::Tensor& gA, const at::Tensor& raw, int64_t d,
                                    const char* op) {
  const std::vector<int64_t> expected = packed_matrix_shape(raw, d);
  TORCH_CHECK(gA.sizes() == at::IntArrayRef(expected), op, ": grad_A must have shape (..., d, d) = ",
              at::IntArrayRef(expected), " to match raw ", raw.sizes(), ", got ", gA.sizes());
}

// Calls f(std::integral_constant<int, D>) for the runtime dimension d in {1, 2, 3}.
template <typename F>
void dispatch_dim(int64_t d, F&& f) {
  switch (d) {
    case 1:
      f(std::integral_constant<int, 1>{});
      break;
    case 2:
      f(std::integral_constant<int, 2>{});
      break;
    case 3:
      f(std::integral_constant<int, 3>{});
      break;
    default:
      TORCH_CHECK(false, "probreg: unsupported dimension d = ", d);
  }
}

}  // namespace probreg

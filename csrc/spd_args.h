// Validated arguments of symeig, spd_remap and spd_from_raw (and their backwards), shared
// by the CPU and CUDA registrations, which differ only in how they run the kernel: each
// prepare_* checks the inputs (clear errors naming the expected shapes), makes them
// contiguous in the kernel's dtype, and allocates the outputs on the input's device.
// `n` is the number of matrices. CUDA callers set the device guard first.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace probreg {

struct SymeigArgs {
  int64_t d, n;
  at::Tensor B;     // (..., d, d)
  at::Tensor L, V;  // outputs (..., d), (..., d, d)
};

inline SymeigArgs prepare_symeig(const at::Tensor& B_in) {
  const int64_t d = check_square_matrices(B_in, "probreg.symeig", "B");
  at::Tensor B = B_in.contiguous();
  at::Tensor L = at::empty(B.sizes().slice(0, B.dim() - 1), B.options());
  at::Tensor V = at::empty_like(B);
  return {d, B.numel() / (d * d), B, L, V};
}

struct SymeigBackwardArgs {
  int64_t d, n;
  at::Tensor gL, gV, L, V;  // gradients cast to V's dtype
  at::Tensor gB;            // output (..., d, d)
};

inline SymeigBackwardArgs prepare_symeig_backward(const at::Tensor& gL_in, const at::Tensor& gV_in,
                                                  const at::Tensor& L_in, const at::Tensor& V_in) {
  const char* op = "probreg._symeig_backward";
  const int64_t d = check_square_matrices(V_in, op, "eigenvectors");
  check_same_shape(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  check_same_shape(gL_in, L_in, op, "grad_eigenvalues", "eigenvalues");
  check_same_device(gL_in, V_in, op, "grad_eigenvalues", "eigenvectors");
  check_same_device(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  check_same_device(L_in, V_in, op, "eigenvalues", "eigenvectors");
  TORCH_CHECK(L_in.dim() == V_in.dim() - 1 && L_in.size(-1) == d, op,
              ": eigenvalues must have shape (..., d) matching eigenvectors (..., d, d), got ",
              L_in.sizes(), " and ", V_in.sizes());
  at::Tensor V = V_in.contiguous();
  return {d,
          V.numel() / (d * d),
          gL_in.to(V.scalar_type()).contiguous(),
          gV_in.to(V.scalar_type()).contiguous(),
          L_in.to(V.scalar_type()).contiguous(),
          V,
          at::empty_like(V)};
}

struct SpdRemapArgs {
  int64_t d, n;
  at::Tensor B;  // (..., d, d)
  at::Tensor A;  // output (..., d, d)
};

inline SpdRemapArgs prepare_spd_remap(const at::Tensor& B_in, double theta) {
  const int64_t d = check_square_matrices(B_in, "probreg.spd_remap", "B");
  check_theta(theta, "probreg.spd_remap");
  at::Tensor B = B_in.contiguous();
  return {d, B.numel() / (d * d), B, at::empty_like(B)};
}

struct SpdRemapBackwardArgs {
  int64_t d, n;
  at::Tensor gA, B;  // gA cast to B's dtype
  at::Tensor gB;     // output (..., d, d)
};

inline SpdRemapBackwardArgs prepare_spd_remap_backward(const at::Tensor& gA_in, const at::Tensor& B_in,
                                                       double theta) {
  const char* op = "probreg._spd_remap_backward";
  const int64_t d = check_square_matrices(B_in, op, "B");
  check_same_shape(gA_in, B_in, op, "grad_A", "B");
  check_same_device(gA_in, B_in, op, "grad_A", "B");
  check_theta(theta, op);
  at::Tensor B = B_in.contiguous();
  return {d, B.numel() / (d * d), gA_in.to(B.scalar_type()).contiguous(), B, at::empty_like(B)};
}

struct SpdFromRawArgs {
  int64_t d, n;
  at::Tensor raw;  // (..., P)
  at::Tensor A;    // output (..., d, d)
};

inline SpdFromRawArgs prepare_spd_from_raw(const at::Tensor& raw_in, double theta) {
  const int64_t d = check_packed(raw_in, "probreg.spd_from_raw", "raw");
  check_theta(theta, "probreg.spd_from_raw");
  at::Tensor raw = raw_in.contiguous();
  return {d, raw.numel() / raw.size(-1), raw, at::empty(packed_matrix_shape(raw, d), raw.options())};
}

struct SpdFromRawBackwardArgs {
  int64_t d, n;
  at::Tensor gA, raw;  // gA (..., d, d) cast to raw's dtype
  at::Tensor graw;     // output (..., P)
};

inline SpdFromRawBackwardArgs prepare_spd_from_raw_backward(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                                            double theta) {
  const char* op = "probreg._spd_from_raw_backward";
  const int64_t d = check_packed(raw_in, op, "raw");
  check_theta(theta, op);
  check_same_device(gA_in, raw_in, op, "grad_A", "raw");
  check_matrix_grad_shape(gA_in, raw_in, d, op);
  at::Tensor raw = raw_in.contiguous();
  return {d, raw.numel() / raw.size(-1), gA_in.to(raw.scalar_type()).contiguous(), raw, at::empty_like(raw)};
}

}  // namespace probreg

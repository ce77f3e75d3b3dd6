// Validated arguments of symeig, spd_remap and spd_from_raw (and their backwards), shared
// by the CPU and CUDA registrations, which differ only in how they run the kernel: each
// prepare_* checks the inputs (clear errors naming the expected shapes), makes them
// contiguous in the kernel's dtype, and allocates the outputs on the input's device.
// `n` is the number of matrices. CUDA callers set the device guard first.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"
#include "output_cache.h"

namespace probreg {

struct SymeigArgs {
  int64_t d, n;
  at::Tensor B;     // (..., d, d)
  at::Tensor L, V;  // outputs (..., d), (..., d, d)
};

inline SymeigArgs prepare_symeig(const at::Tensor& B_in) {
  const int64_t d = check_square_matrices(B_in, "probreg.symeig", "B");
  at::Tensor B = B_in.contiguous();
  at::Tensor L = empty_output(B.sizes().slice(0, B.dim() - 1), B.options());
  at::Tensor V = empty_output_like(B);
  return {d, B.numel() / (d * d), B, L, V};
}

struct SymeigBackwardArgs {
  int64_t d, n;
  at::Tensor gL, gV, L, V;  // all of V's dtype and device
  at::Tensor gB;            // output (..., d, d)
};

inline SymeigBackwardArgs prepare_symeig_backward(const at::Tensor& gL_in, const at::Tensor& gV_in,
                                                  const at::Tensor& L_in, const at::Tensor& V_in) {
  const char* op = "probreg._symeig_backward";
  const int64_t d = check_square_matrices(V_in, op, "eigenvectors");
  check_companion(L_in, V_in, op, "eigenvalues", "eigenvectors");
  check_companion(gL_in, V_in, op, "grad_eigenvalues", "eigenvectors");
  check_companion(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  const at::IntArrayRef batch_d = V_in.sizes().slice(0, V_in.dim() - 1);  // (..., d)
  TORCH_CHECK(L_in.sizes() == batch_d, op, ": eigenvalues must have shape (..., d) = ", batch_d,
              " to match eigenvectors ", V_in.sizes(), ", got ", L_in.sizes());
  check_same_shape(gL_in, L_in, op, "grad_eigenvalues", "eigenvalues");
  check_same_shape(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  at::Tensor V = V_in.contiguous();
  return {d, V.numel() / (d * d), gL_in.contiguous(), gV_in.contiguous(), L_in.contiguous(), V, empty_output_like(V)};
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
  return {d, B.numel() / (d * d), B, empty_output_like(B)};
}

struct SpdRemapBackwardArgs {
  int64_t d, n;
  at::Tensor gA, B;  // gA of B's dtype and device
  at::Tensor gB;     // output (..., d, d)
};

inline SpdRemapBackwardArgs prepare_spd_remap_backward(const at::Tensor& gA_in, const at::Tensor& B_in,
                                                       double theta) {
  const char* op = "probreg._spd_remap_backward";
  const int64_t d = check_square_matrices(B_in, op, "B");
  check_companion(gA_in, B_in, op, "grad_A", "B");
  check_same_shape(gA_in, B_in, op, "grad_A", "B");
  check_theta(theta, op);
  at::Tensor B = B_in.contiguous();
  return {d, B.numel() / (d * d), gA_in.contiguous(), B, empty_output_like(B)};
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
  return {d, raw.numel() / raw.size(-1), raw, empty_output(packed_matrix_shape(raw, d), raw.options())};
}

struct SpdFromRawBackwardArgs {
  int64_t d, n;
  at::Tensor gA, raw;  // gA (..., d, d) of raw's dtype and device
  at::Tensor graw;     // output (..., P)
};

inline SpdFromRawBackwardArgs prepare_spd_from_raw_backward(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                                            double theta) {
  const char* op = "probreg._spd_from_raw_backward";
  const int64_t d = check_packed(raw_in, op, "raw");
  check_theta(theta, op);
  check_companion(gA_in, raw_in, op, "grad_A", "raw");
  check_matrix_grad_shape(gA_in, raw_in, d, op);
  at::Tensor raw = raw_in.contiguous();
  return {d, raw.numel() / raw.size(-1), gA_in.contiguous(), raw, empty_output_like(raw)};
}

}  // namespace probreg

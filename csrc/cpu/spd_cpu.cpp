// CPU kernels of symeig, spd_remap and spd_from_raw (schemas in csrc/probreg.cpp).
// Each item body is generic in its compute type (scalar or SIMD lanes, cpu_loop.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "cpu_loop.h"
#include "probreg/packed.h"
#include "probreg/spectral.h"

namespace probreg {
namespace {

#define PROBREG_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor> symeig_cpu(const at::Tensor& B_in) {
  const int64_t d = check_square_matrices(B_in, "probreg.symeig", "B");
  const at::Tensor B = B_in.contiguous();
  at::Tensor L = at::empty(B.sizes().slice(0, B.dim() - 1), B.options());
  at::Tensor V = at::empty_like(B);
  const int64_t n = B.numel() / (d * d);
  PROBREG_DISPATCH_FLOATING(B.scalar_type(), "symeig_cpu", [&] {
    const scalar_t* b = B.const_data_ptr<scalar_t>();
    scalar_t* lp = L.mutable_data_ptr<scalar_t>();
    scalar_t* vp = V.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      run_items<compute_t<scalar_t>>(n, [&](auto zero, int64_t i) {
        using T = decltype(zero);
        T Bm[D][D], l[D], Vm[D][D];
        load_symmetric_item<D>(b, i, Bm);
        if (!decompose<D>(Bm, l, Vm)) return false;
        store_item<D>(l, lp, i);
        store_matrix_item<D>(Vm, vp, i);
        return true;
      });
    });
  });
  return {L, V};
}

at::Tensor symeig_backward_cpu(const at::Tensor& gL_in, const at::Tensor& gV_in,
                               const at::Tensor& L_in, const at::Tensor& V_in) {
  const char* op = "probreg._symeig_backward";
  const int64_t d = check_square_matrices(V_in, op, "eigenvectors");
  check_same_shape(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  check_same_shape(gL_in, L_in, op, "grad_eigenvalues", "eigenvalues");
  check_same_device(gL_in, V_in, op, "grad_eigenvalues", "eigenvectors");
  check_same_device(gV_in, V_in, op, "grad_eigenvectors", "eigenvectors");
  TORCH_CHECK(L_in.dim() == V_in.dim() - 1 && L_in.size(-1) == d, op,
              ": eigenvalues must have shape (..., d) matching eigenvectors (..., d, d), got ",
              L_in.sizes(), " and ", V_in.sizes());
  const at::Tensor gL = gL_in.to(V_in.scalar_type()).contiguous();
  const at::Tensor gV = gV_in.to(V_in.scalar_type()).contiguous();
  const at::Tensor L = L_in.contiguous();
  const at::Tensor V = V_in.contiguous();
  at::Tensor gB = at::empty_like(V);
  const int64_t n = V.numel() / (d * d);
  PROBREG_DISPATCH_FLOATING(V.scalar_type(), "symeig_backward_cpu", [&] {
    const scalar_t* glp = gL.const_data_ptr<scalar_t>();
    const scalar_t* gvp = gV.const_data_ptr<scalar_t>();
    const scalar_t* lp = L.const_data_ptr<scalar_t>();
    const scalar_t* vp = V.const_data_ptr<scalar_t>();
    scalar_t* out = gB.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      run_items<compute_t<scalar_t>>(n, [&](auto zero, int64_t i) {
        using T = decltype(zero);
        T l[D], gl[D], Vm[D][D], gVm[D][D], g[D][D];
        load_item<D>(lp, i, l);
        load_item<D>(glp, i, gl);
        load_matrix_item<D>(vp, i, Vm);
        load_matrix_item<D>(gvp, i, gVm);
        symeig_backward<D, T>(l, Vm, gl, gVm, g);
        store_matrix_item<D>(g, out, i);
        return true;
      });
    });
  });
  return gB;
}

at::Tensor spd_remap_cpu(const at::Tensor& B_in, double theta) {
  const int64_t d = check_square_matrices(B_in, "probreg.spd_remap", "B");
  check_theta(theta, "probreg.spd_remap");
  const at::Tensor B = B_in.contiguous();
  at::Tensor A = at::empty_like(B);
  const int64_t n = B.numel() / (d * d);
  PROBREG_DISPATCH_FLOATING(B.scalar_type(), "spd_remap_cpu", [&] {
    const scalar_t* b = B.const_data_ptr<scalar_t>();
    scalar_t* a = A.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      run_items_for<scalar_t>(n, [&](auto zero, int64_t i) {
        using T = typename Precision<decltype(zero)>::value;
        using L = typename Precision<decltype(zero)>::eigen;
        L Bm[D][D], l[D];
        T Vm[D][D], Am[D][D];
        load_symmetric_item<D>(b, i, Bm);
        if (!decompose<D>(Bm, l, Vm)) return false;
        spd_remap_forward_eig<D, T, L>(l, Vm, L(theta), Am);
        store_matrix_item<D>(Am, a, i);
        return true;
      });
    });
  });
  return A;
}

at::Tensor spd_remap_backward_cpu(const at::Tensor& gA_in, const at::Tensor& B_in, double theta) {
  const char* op = "probreg._spd_remap_backward";
  const int64_t d = check_square_matrices(B_in, op, "B");
  check_same_shape(gA_in, B_in, op, "grad_A", "B");
  check_same_device(gA_in, B_in, op, "grad_A", "B");
  check_theta(theta, op);
  const at::Tensor B = B_in.contiguous();
  const at::Tensor gA = gA_in.to(B.scalar_type()).contiguous();
  at::Tensor gB = at::empty_like(B);
  const int64_t n = B.numel() / (d * d);
  PROBREG_DISPATCH_FLOATING(B.scalar_type(), "spd_remap_backward_cpu", [&] {
    const scalar_t* b = B.const_data_ptr<scalar_t>();
    const scalar_t* ga = gA.const_data_ptr<scalar_t>();
    scalar_t* gb = gB.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      run_items_for<scalar_t>(n, [&](auto zero, int64_t i) {
        using T = typename Precision<decltype(zero)>::value;
        using L = typename Precision<decltype(zero)>::eigen;
        L Bm[D][D], l[D];
        T Vm[D][D], gAm[D][D], gBm[D][D];
        load_symmetric_item<D>(b, i, Bm);
        if (!decompose<D>(Bm, l, Vm)) return false;
        load_matrix_item<D>(ga, i, gAm);
        spd_remap_backward_eig<D, T, L>(l, Vm, gAm, L(theta), gBm);
        store_matrix_item<D>(gBm, gb, i);
        return true;
      });
    });
  });
  return gB;
}

at::Tensor spd_from_raw_cpu(const at::Tensor& raw_in, double theta) {
  const int64_t d = check_packed(raw_in, "probreg.spd_from_raw", "raw");
  check_theta(theta, "probreg.spd_from_raw");
  const at::Tensor raw = raw_in.contiguous();
  at::Tensor A = at::empty(packed_matrix_shape(raw, d), raw.options());
  const int64_t n = raw.numel() / raw.size(-1);
  PROBREG_DISPATCH_FLOATING(raw.scalar_type(), "spd_from_raw_cpu", [&] {
    const scalar_t* r = raw.const_data_ptr<scalar_t>();
    scalar_t* a = A.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      constexpr int P = Packed<D>::P;
      run_items_for<scalar_t>(n, [&](auto zero, int64_t i) {
        using T = typename Precision<decltype(zero)>::value;
        using L = typename Precision<decltype(zero)>::eigen;
        L rawv[P], Bm[D][D], l[D];
        T Vm[D][D], Am[D][D];
        load_item<P>(r, i, rawv);
        unpack_symmetric<D, L>(rawv, Bm);
        if (!decompose<D>(Bm, l, Vm)) return false;
        spd_remap_forward_eig<D, T, L>(l, Vm, L(theta), Am);
        store_matrix_item<D>(Am, a, i);
        return true;
      });
    });
  });
  return A;
}

at::Tensor spd_from_raw_backward_cpu(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                     double theta) {
  const char* op = "probreg._spd_from_raw_backward";
  const int64_t d = check_packed(raw_in, op, "raw");
  check_theta(theta, op);
  check_same_device(gA_in, raw_in, op, "grad_A", "raw");
  const at::Tensor raw = raw_in.contiguous();
  check_matrix_grad_shape(gA_in, raw, d, op);
  const at::Tensor gA = gA_in.to(raw.scalar_type()).contiguous();
  at::Tensor graw = at::empty_like(raw);
  const int64_t n = raw.numel() / raw.size(-1);
  PROBREG_DISPATCH_FLOATING(raw.scalar_type(), "spd_from_raw_backward_cpu", [&] {
    const scalar_t* r = raw.const_data_ptr<scalar_t>();
    const scalar_t* ga = gA.const_data_ptr<scalar_t>();
    scalar_t* gr = graw.mutable_data_ptr<scalar_t>();
    dispatch_dim(d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      constexpr int P = Packed<D>::P;
      run_items_for<scalar_t>(n, [&](auto zero, int64_t i) {
        using T = typename Precision<decltype(zero)>::value;
        using L = typename Precision<decltype(zero)>::eigen;
        L rawv[P], Bm[D][D], l[D];
        T Vm[D][D], gAm[D][D], gBm[D][D], g[P];
        load_item<P>(r, i, rawv);
        unpack_symmetric<D, L>(rawv, Bm);
        if (!decompose<D>(Bm, l, Vm)) return false;
        load_matrix_item<D>(ga, i, gAm);
        spd_remap_backward_eig<D, T, L>(l, Vm, gAm, L(theta), gBm);
        pack_symmetric_grad<D, T>(gBm, g);
        store_item<P>(g, gr, i);
        return true;
      });
    });
  });
  return graw;
}

}  // namespace

TORCH_LIBRARY_IMPL(probreg, CPU, m) {
  m.impl("symeig", &symeig_cpu);
  m.impl("_symeig_backward", &symeig_backward_cpu);
  m.impl("spd_remap", &spd_remap_cpu);
  m.impl("_spd_remap_backward", &spd_remap_backward_cpu);
  m.impl("spd_from_raw", &spd_from_raw_cpu);
  m.impl("_spd_from_raw_backward", &spd_from_raw_backward_cpu);
}

}  // namespace probreg

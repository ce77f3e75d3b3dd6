// CPU kernels of symeig, spd_remap and spd_from_raw (schemas in csrc/probreg.cpp).
// Each item body is generic in its compute type (scalar or SIMD lanes, cpu_loop.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../spd_args.h"
#include "cpu_loop.h"
#include "probreg/packed.h"
#include "probreg/spectral.h"

namespace probreg {
namespace {

#define PROBREG_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// spd_remap and spd_from_raw differ only in how an item's matrix is loaded (and, in the
// backward, how its gradient is stored): matrix(zero, i, B) as in run_decomposed.
// d = 2 runs on the reflection frame (l, N) of symeig2_reflection where cpu_loop.h offers
// it (reflection_frame): no rotation, and a few arithmetic operations in place of the
// eigenvector products. float32: the backward runs the mixed policy on the lanes
// (run_decomposed's MixedFloat32), the forward computes in double: its finish is two or
// three exponentials and a few products, which the conversions between the double
// eigenvalues and the float values cost more than float lanes save (measured on AVX2,
// 2^20 items, one thread: spd_from_raw d = 2 forward 9.8 ms in double, 10.2 ms mixed;
// d = 3 39 ms both; the backwards 14.4 -> 12.5 ms and 58 -> 50 ms mixed).
template <int D, typename S, typename MatrixFn>
void spd_forward_items(int64_t n, MatrixFn&& matrix, S* A, double theta) {
  run_decomposed_for<D, S, true, true, false>(n, matrix, [&](auto zero, auto i, const auto& l, const auto& V) PROBREG_ITEM_BODY {
    using T = value_t<decltype(zero)>;
    using L = eigen_t<decltype(zero)>;
    T Am[D][D];
    spd_remap_forward_frame<D, reflection_frame<D, true>, T, L, result_t<S, T>>(l, V, L(theta), Am);
    store_matrix_item<D>(Am, A, i);
  });
}

// store_grad(i, gB): gB the symmetric dL/dB (D x D) of item(s) i (cpu_loop.h index).
template <int D, typename S, typename MatrixFn, typename StoreFn>
void spd_backward_items(int64_t n, MatrixFn&& matrix, const S* grad_A, double theta, StoreFn&& store_grad) {
  run_decomposed_for<D, S, true, !(D == 3 && kSplitHeavyFinish)>(n, matrix, [&](auto zero, auto i, const auto& l, const auto& V) PROBREG_ITEM_BODY {
    using T = value_t<decltype(zero)>;
    using L = eigen_t<decltype(zero)>;
    T gAm[D][D], gBm[D][D];
    load_matrix_item<D>(grad_A, i, gAm);
    spd_remap_backward_frame<D, reflection_frame<D, true>, T, L, result_t<S, T>>(l, V, gAm, L(theta), gBm);
    store_grad(i, gBm);
  });
}

std::tuple<at::Tensor, at::Tensor> symeig_cpu(const at::Tensor& B_in) {
  const SymeigArgs a = prepare_symeig(B_in);
  const int64_t n = a.n;
  PROBREG_DISPATCH_FLOATING(a.B.scalar_type(), "symeig_cpu", [&] {
    const scalar_t* b = a.B.const_data_ptr<scalar_t>();
    scalar_t* lp = a.L.mutable_data_ptr<scalar_t>();
    scalar_t* vp = a.V.mutable_data_ptr<scalar_t>();
    dispatch_dim(a.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      // float32: the eigenvectors rounded from double (no mixed finish to run).
      run_decomposed<D, compute_t<scalar_t>, scalar_t, false, true, false>(
          n, [&](auto, auto i, auto& Bm) { load_symmetric_item<D>(b, i, Bm); },
          [&](auto, auto i, const auto& l, const auto& Vm) {
            store_item<D>(l, lp, i);
            store_matrix_item<D>(Vm, vp, i);
          });
    });
  });
  return {a.L, a.V};
}

at::Tensor symeig_backward_cpu(const at::Tensor& gL_in, const at::Tensor& gV_in,
                               const at::Tensor& L_in, const at::Tensor& V_in) {
  const SymeigBackwardArgs a = prepare_symeig_backward(gL_in, gV_in, L_in, V_in);
  const int64_t n = a.n;
  PROBREG_DISPATCH_FLOATING(a.V.scalar_type(), "symeig_backward_cpu", [&] {
    const scalar_t* glp = a.gL.const_data_ptr<scalar_t>();
    const scalar_t* gvp = a.gV.const_data_ptr<scalar_t>();
    const scalar_t* lp = a.L.const_data_ptr<scalar_t>();
    const scalar_t* vp = a.V.const_data_ptr<scalar_t>();
    scalar_t* out = a.gB.mutable_data_ptr<scalar_t>();
    dispatch_dim(a.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      run_items<compute_t<scalar_t>>(n, [&](auto zero, auto i) {
        using T = decltype(zero);
        T l[D], gl[D], Vm[D][D], gVm[D][D], g[D][D];
        load_item<D>(lp, i, l);
        load_item<D>(glp, i, gl);
        load_matrix_item<D>(vp, i, Vm);
        load_matrix_item<D>(gvp, i, gVm);
        symeig_backward<D, T>(l, Vm, gl, gVm, g);
        store_matrix_item<D>(g, out, i);
      });
    });
  });
  return a.gB;
}

at::Tensor spd_remap_cpu(const at::Tensor& B_in, double theta) {
  const SpdRemapArgs args = prepare_spd_remap(B_in, theta);
  const int64_t n = args.n;
  PROBREG_DISPATCH_FLOATING(args.B.scalar_type(), "spd_remap_cpu", [&] {
    const scalar_t* b = args.B.const_data_ptr<scalar_t>();
    scalar_t* a = args.A.mutable_data_ptr<scalar_t>();
    dispatch_dim(args.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      spd_forward_items<D, scalar_t>(
          n, [&](auto, auto i, auto& Bm) { load_symmetric_item<D>(b, i, Bm); }, a, theta);
    });
  });
  return args.A;
}

at::Tensor spd_remap_backward_cpu(const at::Tensor& gA_in, const at::Tensor& B_in, double theta) {
  const SpdRemapBackwardArgs a = prepare_spd_remap_backward(gA_in, B_in, theta);
  const int64_t n = a.n;
  PROBREG_DISPATCH_FLOATING(a.B.scalar_type(), "spd_remap_backward_cpu", [&] {
    const scalar_t* b = a.B.const_data_ptr<scalar_t>();
    const scalar_t* ga = a.gA.const_data_ptr<scalar_t>();
    scalar_t* gb = a.gB.mutable_data_ptr<scalar_t>();
    dispatch_dim(a.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      spd_backward_items<D, scalar_t>(
          n, [&](auto, auto i, auto& Bm) { load_symmetric_item<D>(b, i, Bm); }, ga, theta,
          [&](auto i, const auto& gBm) { store_matrix_item<D>(gBm, gb, i); });
    });
  });
  return a.gB;
}

at::Tensor spd_from_raw_cpu(const at::Tensor& raw_in, double theta) {
  const SpdFromRawArgs args = prepare_spd_from_raw(raw_in, theta);
  const int64_t n = args.n;
  PROBREG_DISPATCH_FLOATING(args.raw.scalar_type(), "spd_from_raw_cpu", [&] {
    const scalar_t* r = args.raw.const_data_ptr<scalar_t>();
    scalar_t* a = args.A.mutable_data_ptr<scalar_t>();
    dispatch_dim(args.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      spd_forward_items<D, scalar_t>(
          n, [&](auto zero, auto i, auto& Bm) { load_packed_item<D, eigen_t<decltype(zero)>>(r, i, Bm); }, a,
          theta);
    });
  });
  return args.A;
}

at::Tensor spd_from_raw_backward_cpu(const at::Tensor& gA_in, const at::Tensor& raw_in,
                                     double theta) {
  const SpdFromRawBackwardArgs a = prepare_spd_from_raw_backward(gA_in, raw_in, theta);
  const int64_t n = a.n;
  PROBREG_DISPATCH_FLOATING(a.raw.scalar_type(), "spd_from_raw_backward_cpu", [&] {
    const scalar_t* r = a.raw.const_data_ptr<scalar_t>();
    const scalar_t* ga = a.gA.const_data_ptr<scalar_t>();
    scalar_t* gr = a.graw.mutable_data_ptr<scalar_t>();
    dispatch_dim(a.d, [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      constexpr int P = Packed<D>::P;
      spd_backward_items<D, scalar_t>(
          n, [&](auto zero, auto i, auto& Bm) { load_packed_item<D, eigen_t<decltype(zero)>>(r, i, Bm); }, ga,
          theta, [&](auto i, const auto& gBm) {
            using T = std::remove_cv_t<std::remove_reference_t<decltype(gBm[0][0])>>;
            T g[P];
            pack_symmetric_grad<D, T>(gBm, g);
            store_item<P>(g, gr, i);
          });
    });
  });
  return a.graw;
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

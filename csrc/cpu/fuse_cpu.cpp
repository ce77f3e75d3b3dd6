// CPU kernels of huber_fuse and _huber_fuse_backward (schemas in csrc/probreg.cpp; math in
// csrc/include/probreg/fuse.h), problems spread over threads with at::parallel_for.
// Forward, double compute type (float64 and float32 inputs): blocks of kLaneWidth problems
// run the branch-free solver in lockstep on SIMD Lanes (each lane's result is its own
// problem's; a block runs until its slowest problem stops). A partial last block repeats
// its last problem in the unused lanes (solved and discarded), so every problem runs the
// same lane arithmetic whatever its batch position or the thread count (bitwise
// reproducible). Half types (float compute) and the backward (one pass per problem) are
// scalar. A problem counts as converged only where its y fits the storage dtype (a
// float32/half y beyond its range is stored as +-inf with converged = false).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../fuse_checks.h"
#include "probreg/fuse.h"
#include "probreg/lanes.h"

namespace probreg {
namespace {

#define PROBREG_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// Problems per task (a multiple of 8, so of every kLaneWidth): a problem costs roughly
// n * (passes, typically 5-10) * 5-20 ns.
inline int64_t fuse_grain(int64_t n) { return std::max<int64_t>(8, (4096 / std::max<int64_t>(n, 1)) & ~int64_t(7)); }

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

#if defined(PROBREG_HAVE_LANES)
// kLaneWidth consecutive problems transposed once into lane-major form (estimate i of
// problem first + j in lane j), so that every solver pass reads whole Lanes values; lanes
// j >= count repeat problem first + count - 1. Layout per estimate: A row-major (D*D),
// then v (D), then w.
template <int D>
struct CpuFuseLaneTerms {
  static constexpr int kStride = D * D + D + 1;
  const Lanes* buf;
  template <typename S>
  static void transpose(const S* v, const S* A, const S* w, int64_t n, int64_t first, int count, Lanes* out) {
    for (int64_t i = 0; i < n; ++i) {
      Lanes* row = out + i * kStride;
      for (int k = 0; k < kStride; ++k) row[k] = Lanes(0.0);
      for (int j = 0; j < kLaneWidth; ++j) {
        // estimate index in the flat (problems * n) layout
        const int64_t e = (first + std::min(j, count - 1)) * n + i;
        for (int k = 0; k < D * D; ++k) row[k].v[j] = double(A[e * D * D + k]);
        for (int a = 0; a < D; ++a) row[D * D + a].v[j] = double(v[e * D + a]);
        row[D * D + D].v[j] = double(w[e]);
      }
    }
  }
  void load(int64_t i, Lanes Am[D][D], Lanes vv[D], Lanes& ww) const {
    const Lanes* row = buf + i * kStride;
    for (int a = 0; a < D; ++a) {
      for (int b = 0; b < D; ++b) Am[a][b] = row[a * D + b];
      vv[a] = row[D * D + a];
    }
    ww = row[D * D + D];
  }
};
#endif

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
  TORCH_CHECK_VALUE(weight.numel() == 0 || !(weight < 0).any().item<bool>(), op,
              ": weight must be >= 0 (0 removes an estimate), got a negative weight");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> huber_fuse_cpu(
    const at::Tensor& v_in, const at::Tensor& A_in, const at::Tensor& w_in,
    const c10::optional<at::Tensor>& init_in, double delta, int64_t max_iter, double tol, double damping) {
  const FuseArgs args = prepare_huber_fuse(v_in, A_in, w_in, init_in, delta, max_iter, tol, damping);
  check_nonnegative_weights(args.w, "probreg.huber_fuse");
  const FuseShape& s = args.shape;
  const at::Tensor &v = args.v, &A = args.A, &w = args.w, &init = args.init;
  const bool has_init = init.defined();
  const FuseOutputs& out = args.out;
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
      auto solve_one = [&](int64_t p) {
        const CpuFuseTerms<D, scalar_t, T> terms{vp + p * n * D, ap + p * n * D * D, wp + p * n};
        T init_c[D];
        if (ip != nullptr)
          for (int a = 0; a < D; ++a) init_c[a] = T(ip[p * D + a]);
        FuseOutput<D, T> o;
        fuse_solve<D, T>(terms, n, T(delta), ip != nullptr ? init_c : nullptr, int(max_iter), T(tol), o);
        bool fits = true;
        for (int a = 0; a < D; ++a) {
          yp[p * D + a] = scalar_t(o.y[a]);
          fits = fits && std::isfinite(double(yp[p * D + a]));
          for (int b = 0; b < D; ++b) hp[(p * D + a) * D + b] = scalar_t(o.hess[a][b]);
        }
        itp[p] = int32_t(o.iterations);
        cp[p] = o.converged && fits;
      };
      at::parallel_for(0, s.problems, fuse_grain(n), [&](int64_t begin, int64_t end) {
        int64_t p = begin;
#if defined(PROBREG_HAVE_LANES)
        if constexpr (std::is_same_v<T, double>) {
          std::vector<Lanes> block(size_t(n) * CpuFuseLaneTerms<D>::kStride);
          for (; p < end; p += kLaneWidth) {
            const int count = int(std::min<int64_t>(kLaneWidth, end - p));
            CpuFuseLaneTerms<D>::transpose(vp, ap, wp, n, p, count, block.data());
            const CpuFuseLaneTerms<D> terms{block.data()};
            Lanes init_c[D];
            if (ip != nullptr)
              for (int j = 0; j < kLaneWidth; ++j)
                for (int a = 0; a < D; ++a) init_c[a].v[j] = double(ip[(p + std::min(j, count - 1)) * D + a]);
            FuseOutput<D, Lanes> o;
            fuse_solve<D, Lanes>(terms, n, Lanes(delta), ip != nullptr ? init_c : nullptr, int(max_iter),
                                 Lanes(tol), o);
            for (int j = 0; j < count; ++j) {
              bool fits = true;
              for (int a = 0; a < D; ++a) {
                yp[(p + j) * D + a] = scalar_t(o.y[a].v[j]);
                fits = fits && std::isfinite(double(yp[(p + j) * D + a]));
                for (int b = 0; b < D; ++b) hp[((p + j) * D + a) * D + b] = scalar_t(o.hess[a][b].v[j]);
              }
              itp[p + j] = int32_t(o.iterations.v[j]);
              cp[p + j] = o.converged.m[j] != 0 && fits;
            }
          }
        }
#endif
        for (; p < end; ++p) solve_one(p);
      });
    });
  });
  return {out.y, out.hessian, out.iterations, out.converged};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> huber_fuse_backward_cpu(
    const at::Tensor& grad_y_in, const at::Tensor& y_in, const at::Tensor& v_in, const at::Tensor& A_in,
    const at::Tensor& w_in, double delta, double damping) {
  const FuseBackwardArgs args = prepare_huber_fuse_backward(grad_y_in, y_in, v_in, A_in, w_in, delta, damping);
  check_nonnegative_weights(args.w, "probreg._huber_fuse_backward");
  const FuseShape& s = args.shape;
  const at::Tensor &v = args.v, &A = args.A, &w = args.w, &y = args.y, &gy = args.grad_y;
  const at::Tensor &grad_v = args.grad_v, &grad_A = args.grad_A, &grad_w = args.grad_w;
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

// Portable building blocks for the torch-free math headers.
//
// Every function in csrc/include/probreg is a PROBREG_HOST_DEVICE inline template that
// compiles with g++ alone (CPU loops, ctest unit tests) and with nvcc alone (CUDA
// kernels). Nothing here includes torch. Never compile these with fast-math: the
// eigen-solvers and the divided differences rely on IEEE rounding and on NaN/Inf
// propagating.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PROBREG_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define PROBREG_HOST_DEVICE inline __attribute__((always_inline))
#else
#define PROBREG_HOST_DEVICE inline
#endif

// A function kept out of line (a call), for code that runs rarely inside a kernel's loop
// (the last, partial tile; special matrices), so that the loop body every item runs
// leaves it out: instruction cache, and tools/sass_counts.py's counts, which leave
// out-of-line code out.
#if defined(__CUDACC__)
#define PROBREG_NOINLINE __noinline__
#elif defined(__GNUC__)
#define PROBREG_NOINLINE __attribute__((noinline))
#else
#define PROBREG_NOINLINE
#endif

// Full unrolling of the fixed-size (d <= 3) loops.
#if defined(__CUDACC__)
#define PROBREG_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define PROBREG_UNROLL _Pragma("GCC unroll 9")
#else
#define PROBREG_UNROLL
#endif
// Full unrolling of the polynomial loops (polynomial: up to 19 coefficients), so that every
// coefficient is an immediate constant.
#if defined(__CUDACC__)
#define PROBREG_UNROLL_POLYNOMIAL _Pragma("unroll")
#elif defined(__GNUC__) && !defined(__clang__)
#define PROBREG_UNROLL_POLYNOMIAL _Pragma("GCC unroll 32")
#else
#define PROBREG_UNROLL_POLYNOMIAL
#endif

namespace probreg {

// Tables of double constants (polynomial coefficients), defined at namespace scope by
// PROBREG_DOUBLE_TABLE(name, {values}) and read by PROBREG_TABLE(name). On a CUDA device
// nvcc materialises every double immediate with two uniform moves at each use, inside
// the kernels' loops; an entry of a table in constant memory takes one uniform load
// (tools/sass_counts.py). The device copy is not const: nvcc folds a const one back into
// immediates. Host code (g++, and nvcc's host pass) reads a constexpr copy of the same
// list.
#if defined(__CUDACC__)
#define PROBREG_DOUBLE_TABLE(name, ...)         \
  constexpr double name##_host[] = __VA_ARGS__; \
  static __constant__ double name##_device[] = __VA_ARGS__
#else
#define PROBREG_DOUBLE_TABLE(name, ...) constexpr double name##_host[] = __VA_ARGS__
#endif
#if defined(__CUDA_ARCH__)
#define PROBREG_TABLE(name) name##_device
#else
#define PROBREG_TABLE(name) name##_host
#endif

// Overloads that resolve to the single- or double-precision libm/CUDA function, so that
// a template instantiated for float never silently computes in double (or vice versa).
PROBREG_HOST_DEVICE float pr_sqrt(float x) { return sqrtf(x); }
// a * b + c, fused (one rounding) wherever the target has FMA: CUDA, and the host when
// built with FMA (setup.py's -mfma); a * b + c otherwise, rather than libm's slow
// software fma. Explicit, so -ffp-contract=off (setup.py) does not affect it.
#if defined(__CUDA_ARCH__) || defined(__FMA__)
#define PROBREG_FUSED_FMA 1  // pr_fma rounds once (two_product relies on it; lanes.h too)
PROBREG_HOST_DEVICE float pr_fma(float a, float b, float c) { return fmaf(a, b, c); }
PROBREG_HOST_DEVICE double pr_fma(double a, double b, double c) { return fma(a, b, c); }
#else
#define PROBREG_FUSED_FMA 0
PROBREG_HOST_DEVICE float pr_fma(float a, float b, float c) { return a * b + c; }
PROBREG_HOST_DEVICE double pr_fma(double a, double b, double c) { return a * b + c; }
#endif
PROBREG_HOST_DEVICE double pr_sqrt(double x) { return sqrt(x); }
PROBREG_HOST_DEVICE float pr_exp(float x) { return expf(x); }
PROBREG_HOST_DEVICE float pr_exp2(float x) { return exp2f(x); }  // CUDA: the ex2 unit, <= 2 ulp
PROBREG_HOST_DEVICE double pr_exp(double x) { return exp(x); }
// exp(x) for x <= 0 and a result rounded to float (series_precision 1): libm's exp for
// scalars (as fast as any shorter form); lanes.h cuts its series and its range (Lanes
// overload).
PROBREG_HOST_DEVICE double pr_exp_nonpositive_float_result(double x) { return exp(x); }
PROBREG_HOST_DEVICE float pr_expm1(float x) { return expm1f(x); }
PROBREG_HOST_DEVICE double pr_expm1(double x) { return expm1(x); }
PROBREG_HOST_DEVICE float pr_log(float x) { return logf(x); }
PROBREG_HOST_DEVICE double pr_log(double x) { return log(x); }
PROBREG_HOST_DEVICE float pr_log1p(float x) { return log1pf(x); }
PROBREG_HOST_DEVICE double pr_log1p(double x) { return log1p(x); }
PROBREG_HOST_DEVICE float pr_sinh(float x) { return sinhf(x); }
PROBREG_HOST_DEVICE double pr_sinh(double x) { return sinh(x); }
PROBREG_HOST_DEVICE float pr_abs(float x) { return fabsf(x); }
PROBREG_HOST_DEVICE double pr_abs(double x) { return fabs(x); }
PROBREG_HOST_DEVICE float pr_hypot(float x, float y) { return hypotf(x, y); }
PROBREG_HOST_DEVICE double pr_hypot(double x, double y) { return hypot(x, y); }
PROBREG_HOST_DEVICE float pr_frexp(float x, int* e) { return frexpf(x, e); }
PROBREG_HOST_DEVICE double pr_frexp(double x, int* e) { return frexp(x, e); }
PROBREG_HOST_DEVICE float pr_ldexp(float x, int e) { return ldexpf(x, e); }
PROBREG_HOST_DEVICE double pr_ldexp(double x, int e) { return ldexp(x, e); }
// 1/sqrt(x) and 1/x for POSITIVE NORMAL x with a normal result (callers guarantee it):
// where they are fast approximations (the CPU SIMD lanes, lanes.h; CUDA below) other
// inputs give unspecified results. CUDA: the special-function unit's estimate refined
// by Newton steps to a few ulp (double: two steps from the ~2^-22 MUFU.RSQ64H / RCP64H
// estimate; float: rsqrtf, <= 2 ulp, and rcp.approx, <= 1 ulp, as they are), a few
// instructions instead of the IEEE sequences with their special-case branches. Host:
// the correctly rounded 1/sqrt(x) and 1/x.
#if defined(__CUDA_ARCH__)
PROBREG_HOST_DEVICE float pr_rsqrt(float x) { return rsqrtf(x); }
PROBREG_HOST_DEVICE double pr_rsqrt(double x) {
  double y;
  asm("rsqrt.approx.ftz.f64 %0, %1;" : "=d"(y) : "d"(x));
  const double half_x = 0.5 * x;
  y = y * (1.5 - half_x * y * y);  // relative error e -> 1.5 e^2
  return y * (1.5 - half_x * y * y);
}
// One Newton step: relative error ~1e-13 (callers that need no more: symeig3_trace_free's
// kFloatFrame).
PROBREG_HOST_DEVICE double pr_rsqrt_coarse(double x) {
  double y;
  asm("rsqrt.approx.ftz.f64 %0, %1;" : "=d"(y) : "d"(x));
  return y * (1.5 - (0.5 * x) * y * y);
}
PROBREG_HOST_DEVICE float pr_recip(float x) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
PROBREG_HOST_DEVICE double pr_recip(double x) {
  double y;
  asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(y) : "d"(x));
  y = y + y * (1.0 - x * y);  // relative error e -> e^2
  return y + y * (1.0 - x * y);
}
#else
PROBREG_HOST_DEVICE float pr_rsqrt(float x) { return 1.0f / sqrtf(x); }
PROBREG_HOST_DEVICE double pr_rsqrt(double x) { return 1.0 / sqrt(x); }
PROBREG_HOST_DEVICE double pr_rsqrt_coarse(double x) { return 1.0 / sqrt(x); }
PROBREG_HOST_DEVICE float pr_recip(float x) { return 1.0f / x; }
PROBREG_HOST_DEVICE double pr_recip(double x) { return 1.0 / x; }
#endif
#if defined(__CUDA_ARCH__)
PROBREG_HOST_DEVICE bool pr_isfinite(float x) { return isfinite(x); }
PROBREG_HOST_DEVICE bool pr_isfinite(double x) { return isfinite(x); }
#else
PROBREG_HOST_DEVICE bool pr_isfinite(float x) { return std::isfinite(x); }
PROBREG_HOST_DEVICE bool pr_isfinite(double x) { return std::isfinite(x); }
#endif

// Branch-free selection and reductions over conditions. For scalars a condition is a
// bool; the CPU SIMD type (lanes.h) overloads these for its per-lane masks. Math written
// with them (instead of if/else on values) instantiates for both.
template <typename T>
PROBREG_HOST_DEVICE T pr_where(bool c, T a, T b) {
  return c ? a : b;
}
PROBREG_HOST_DEVICE bool pr_any(bool c) { return c; }
PROBREG_HOST_DEVICE bool pr_all(bool c) { return c; }
template <typename T>
PROBREG_HOST_DEVICE T pr_min(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
PROBREG_HOST_DEVICE T pr_max(T a, T b) {
  return a > b ? a : b;
}

// max that propagates NaN from either argument (fmax would drop it).
template <typename T>
PROBREG_HOST_DEVICE T pr_max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename T>
struct Eps;
template <>
struct Eps<float> {
  static constexpr float value = FLT_EPSILON;
};
template <>
struct Eps<double> {
  static constexpr double value = DBL_EPSILON;
};

// Smallest normal number of the compute type (the SIMD lanes hold doubles).
template <typename T>
struct MinNormal {
  static constexpr double value = DBL_MIN;
};
template <>
struct MinNormal<float> {
  static constexpr float value = FLT_MIN;
};

// The polynomial c[0] x^(N-1) + c[1] x^(N-2) + ... + c[N-1] (coefficients rounded to T).
// Scalar T (CUDA, the CPU's scalar fallback): Horner's rule, N - 1 pr_fma, the fewest
// instructions. SIMD T (the CPU lanes: Lanes, LanePair), N >= 5: the high-order terms by
// second-order Horner (even and odd terms as two independent Horner chains in x^2, joined
// by one FMA: one multiply more, about half the dependency chain), the last two by
// Horner: the item bodies are long dependent chains the core cannot overlap
// (lane_pair.h). Measured on AVX2 at 2^20 float32 with the inlined finish bodies
// (cpu_loop.h PROBREG_ITEM_BODY), against Horner with outlined ones: every CPU kernel
// 1.04-1.15x. Estrin's scheme (chains of log2 N) was slower on the d = 2 spd backward
// (more live values than the 16 AVX2 registers hold). Rounding: the two largest terms
// of these series (small |x|, decreasing terms) are added last as in Horner's rule; the
// Lanes exp and expm1 stay within the 4e-16 of csrc/tests/test_math.cpp, which
// second-order Horner to the end misses for expm1 (5.1e-16).
template <typename T, int N>
PROBREG_HOST_DEVICE T polynomial(T x, const double (&c)[N]) {
#if !defined(__CUDACC__)
  if constexpr (!std::is_arithmetic_v<T> && N >= 5) {
    // c[0 .. M-1] (M = N - 2) by second-order Horner, E(x^2) + x O(x^2) (c[k] multiplies
    // x^(M-1-k): E takes the k of M - 1's parity, O the others), then Horner's last two
    // steps, which add the two largest terms of the series last and keep Horner's
    // rounding (the Lanes expm1 test's 4e-16 bound fails without them).
    constexpr int M = N - 2;
    const T x2 = x * x;
    T e = T(c[M % 2 == 0 ? 1 : 0]);
    T o = T(c[M % 2 == 0 ? 0 : 1]);
    PROBREG_UNROLL_POLYNOMIAL
    for (int k = (M % 2 == 0 ? 3 : 2); k < M; k += 2) e = pr_fma(e, x2, T(c[k]));
    PROBREG_UNROLL_POLYNOMIAL
    for (int k = (M % 2 == 0 ? 2 : 3); k < M; k += 2) o = pr_fma(o, x2, T(c[k]));
    const T high = pr_fma(o, x, e);
    return pr_fma(pr_fma(high, x, T(c[M])), x, T(c[M + 1]));
  }
#endif
  T p = T(c[0]);
  PROBREG_UNROLL_POLYNOMIAL
  for (int k = 1; k < N; ++k) p = pr_fma(p, x, T(c[k]));
  return p;
}

// The polynomial of the K last coefficients c[N - K], ..., c[N - 1] only: a series whose
// coefficients are listed highest order first, truncated to its K lowest-order terms,
// for results that need less precision than the full series carries (series_precision).
// Evaluated as polynomial would (Horner for scalars; the lanes' scheme for SIMD types).
template <int K, typename T, int N>
PROBREG_HOST_DEVICE T polynomial_lowest(T x, const double (&c)[N]) {
  static_assert(K >= 1 && K <= N, "keeps 1..N coefficients");
  if constexpr (K == N) {
    return polynomial(x, c);
  } else if constexpr (!std::is_arithmetic_v<T>) {
    double tail[K];  // constants after inlining
    PROBREG_UNROLL_POLYNOMIAL
    for (int k = 0; k < K; ++k) tail[k] = c[N - K + k];
    return polynomial(x, tail);
  } else {
    T p = T(c[N - K]);
    PROBREG_UNROLL_POLYNOMIAL
    for (int k = N - K + 1; k < N; ++k) p = pr_fma(p, x, T(c[k]));
    return p;
  }
}

// How precise the series of a value computed in T and rounded to Out must be: 0 where T
// is float (scalar float: the CUDA kernels and their CPU emulation), 1 where T is double
// (or double lanes) but the result is rounded to float (float32 and half inputs on the
// CPU, whose item bodies compute in double: truncation ~1e-13 relative, far below float's
// rounding), 2 otherwise (full double precision).
template <typename T, typename Out>
constexpr int series_precision() {
  return Eps<T>::value > 1e-10 ? 0 : (Eps<Out>::value > 1e-10 ? 1 : 2);
}

// expm1(x) by its Taylor series for |x| < 1/2: to x^16 in double (truncation < 1e-19
// relative), to x^12 for a double result rounded to float (3.9e-14), to x^9 in float
// (5.4e-10, a hundredth of float's rounding). Out: series_precision.
template <typename T, typename Out = T>
PROBREG_HOST_DEVICE T expm1_taylor(T x) {
  constexpr double inv_factorials[] = {
      1.0 / 20922789888000.0, 1.0 / 1307674368000.0, 1.0 / 87178291200.0, 1.0 / 6227020800.0,
      1.0 / 479001600.0,      1.0 / 39916800.0,      1.0 / 3628800.0,     1.0 / 362880.0,
      1.0 / 40320.0,          1.0 / 5040.0,          1.0 / 720.0,         1.0 / 120.0,
      1.0 / 24.0,             1.0 / 6.0,             0.5,                 1.0};  // 1/16!, ..., 1/1!
  constexpr int terms[] = {9, 12, 16};
  return polynomial_lowest<terms[series_precision<T, Out>()]>(x, inv_factorials) * x;
}

// The bits of x as To (same size), like C++20 std::bit_cast (memcpy: no aliasing UB; on
// CUDA and in optimised host code a register move).
template <typename To, typename From>
PROBREG_HOST_DEVICE To pr_bit_cast(From x) {
  static_assert(sizeof(To) == sizeof(From), "pr_bit_cast: sizes differ");
  To out;
  memcpy(&out, &x, sizeof(out));
  return out;
}

template <typename T>
PROBREG_HOST_DEVICE void pr_swap(T& a, T& b) {
  T t = a;
  a = b;
  b = t;
}

}  // namespace probreg

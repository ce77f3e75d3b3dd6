// Shared device-side plumbing of the torch-free CUDA kernels: storage <-> compute type
// conversion, the grid-stride item loop, and launch configuration. No torch includes:
// every .cu file compiles with nvcc alone (make cuda-check).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernel_api.h"
#include "probreg/macros.h"  // PROBREG_NOINLINE

#if defined(PROBREG_CUDA_HOST_EMULATION)
// Test-only host build of the kernels (tests/test_cuda_kernels_on_host.py); must come
// after every CUDA header: it redefines __shared__, threadIdx, ... and __syncthreads.
#include "../host_emulation/host_emulation.h"
#endif

namespace probreg {
namespace cuda {

// Compute types of a storage type S.
//  type:  the accurate type: double for float64 and float32, float for the half types.
//         symeig and huber_fuse compute in it; it is also the eigenvalue type below.
//  value: the type of matrices, vectors and gradients in spd_remap, spd_from_raw and
//         huber_nll: float for float32 (the mixed policy of spectral.h: the
//         decomposition in double (symeig.h symeig_mixed: closed forms) with the
//         eigenvectors rounded to float, eigenvalues and their differences in double,
//         compensated exponentials; float-rate arithmetic for most of the work without
//         the l/theta error amplification of a float-only path), else `type`.
// The CPU reproduces the float32 policy under PROBREG_CPU_EMULATE_CUDA_FLOAT32=1, which
// tests/test_cuda_numerics_on_cpu.py uses to test its accuracy without a GPU.
template <typename S>
struct Compute {
  using type = double;
  using value = double;
};
template <>
struct Compute<float> {
  using type = double;
  using value = float;
};
template <>
struct Compute<__half> {
  using type = float;
  using value = float;
};
template <>
struct Compute<__nv_bfloat16> {
  using type = float;
  using value = float;
};

// Compute types of float32 under PROBREG_CUDA_FLOAT32_COMPUTE=double: everything in
// double. An A/B switch for benchmarking (kernel_api.h): both policies are accurate, and
// which is faster depends on the GPU's FP64:FP32 throughput ratio. Any other value, or
// none, selects Compute<float> (mixed). Read at every launch.
struct AllDouble {
  using type = double;
  using value = double;
};

inline bool float32_compute_all_double() {
  const char* v = std::getenv("PROBREG_CUDA_FLOAT32_COMPUTE");
  return v != nullptr && std::strcmp(v, "double") == 0;
}

// Calls f(CT{}) with the compute types CT of storage S: Compute<S>, or AllDouble for
// float32 under the switch above.
template <typename S, typename F>
cudaError_t dispatch_compute(F&& f) {
  if constexpr (std::is_same<S, float>::value) {
    if (float32_compute_all_double()) return f(AllDouble{});
  }
  return f(Compute<S>{});
}

template <typename C, typename S>
__device__ __forceinline__ C load_as(const S* p) {
  return C(*p);
}
template <>
__device__ __forceinline__ float load_as<float, __half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float load_as<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename S, typename C>
__device__ __forceinline__ void store_as(S* p, C v) {
  *p = S(v);
}
template <>
__device__ __forceinline__ void store_as<__half, float>(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_as<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

template <int N, typename C, typename S>
__device__ __forceinline__ void load_row(const S* base, int64_t i, C out[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = load_as<C>(base + i * N + k);
}
template <int N, typename S, typename C>
__device__ __forceinline__ void store_row(S* base, int64_t i, const C in[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) store_as(base + i * N + k, in[k]);
}

constexpr int kThreads = 256;

// Item indices of the tiled kernels: 32-bit unsigned, so that a row's address is one
// 32 x 32 -> 64-bit multiply-add (uint64_t(first) * N) and the tile loop's compares and
// increments are single instructions. A launch covers at most kMaxLaunchItems items (the
// launchers split larger batches, launch_in_chunks), so first + kThreads and
// first + the grid stride (<= 2^28) stay below 2^32.
using TileIndex = unsigned int;
#ifndef PROBREG_CUDA_MAX_LAUNCH_ITEMS
#define PROBREG_CUDA_MAX_LAUNCH_ITEMS (int64_t(1) << 31)
#endif
constexpr int64_t kMaxLaunchItems = PROBREG_CUDA_MAX_LAUNCH_ITEMS;
static_assert(kMaxLaunchItems > 0 && kMaxLaunchItems <= (int64_t(1) << 31), "32-bit tile indices");

// Calls launch(start, count) for consecutive chunks [start, start + count) of [0, n), each
// of at most kMaxLaunchItems items (one chunk unless n exceeds it); stops at the first
// failure and returns its status.
template <typename Launch>
cudaError_t launch_in_chunks(int64_t n, Launch&& launch) {
  for (int64_t start = 0; start < n; start += kMaxLaunchItems) {
    const cudaError_t status = launch(start, TileIndex(n - start < kMaxLaunchItems ? n - start : kMaxLaunchItems));
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

// p advanced by `start` rows of `width` values (null stays null: optional outputs).
template <typename S>
S* rows_from(S* p, int64_t start, int width) {
  return p == nullptr ? nullptr : p + start * width;
}

// ---- coalesced rows through shared memory ----
// The batch layouts are rows of N contiguous values per item (N = 1..12). A thread that
// reads its own row makes each warp access span N times the cache lines of a coalesced
// one, and strided stores write partial sectors. The tiled kernels instead take
// kThreads consecutive items per block iteration (for_each_tile): the block copies the
// tile's rows between global and shared memory with consecutive threads on consecutive
// addresses, and each thread reads or writes its own row in shared memory. Every thread
// of the block must call these (they synchronise); in the grid's last, partial tile the
// threads without an item (!tile.mine()) only help with the copies.

// Static shared storage for a tile of rows of up to N values of S (raw bytes: the half
// types have constructors, which __shared__ variables may not).
template <typename S, int N>
struct SharedRows {
  alignas(16) unsigned char bytes[kThreads * N * sizeof(S)];
  __device__ __forceinline__ S* rows() { return reinterpret_cast<S*>(bytes); }
};

// The tile a block works on: a full one (kThreads items: every tile but the grid's last)
// or the grid's last, partial one (count() < kThreads items). The tiled helpers below
// take either; on a FullTile their bounds checks fold away (for_each_tile).
struct FullTile {
  static constexpr bool kFull = true;
  __device__ __forceinline__ int count() const { return kThreads; }
  __device__ __forceinline__ bool mine() const { return true; }  // this thread has an item
};
struct PartialTile {
  static constexpr bool kFull = false;
  int size;
  __device__ __forceinline__ int count() const { return size; }
  __device__ __forceinline__ bool mine() const { return int(threadIdx.x) < size; }
};

// 8-byte chunks of a full tile's copy (copy_tile): global rows are read and written as
// uint2 where every tiled global pointer of the kernel is 8-byte aligned (for_each_tile's
// `vectorized`; a full tile starts at a multiple of kThreads * N values, 512 bytes or more,
// and the shared tile is 16-byte aligned). 16-byte chunks (uint4) issue the same number
// of instructions in the d = 3 kernels (tools/sass_counts.py) and held more registers
// (huber_nll's backward 94 instead of 80: two blocks per SM instead of three).
using TileChunk = uint2;

__device__ __forceinline__ void move_chunk(const TileChunk* from, TileChunk* to) {
#if defined(PROBREG_CUDA_HOST_EMULATION)
  // No type punning in the host build; a misaligned chunk fails the launch, as it faults on a GPU.
  host_emulation::check_aligned(from, sizeof(TileChunk), __FILE__, __LINE__);
  host_emulation::check_aligned(to, sizeof(TileChunk), __FILE__, __LINE__);
  std::memcpy(to, from, sizeof(TileChunk));
#else
  *to = *from;
#endif
}

// Copies the tile's count() * N values of S at src to dst, one of them global and the
// other the shared tile (same layout), consecutive threads on consecutive addresses (each
// warp access is one contiguous span); launch with kThreads threads. A full tile moves
// 8-byte chunks (kThreads * N * sizeof(S) / 8 of them, a multiple of 64), unrolled: each
// thread issues its loads before its first store, so the block has the whole tile in
// flight at once; the last round is partial where kThreads does not divide the chunk
// count. A partial tile (the generic path) copies value by value.
template <int N, typename S, typename Tile>
__device__ __forceinline__ void copy_tile(const S* __restrict__ src, S* __restrict__ dst, Tile tile) {
  if constexpr (Tile::kFull) {
    constexpr int kChunks = kThreads * N * int(sizeof(S)) / int(sizeof(TileChunk));
    static_assert(kChunks * int(sizeof(TileChunk)) == kThreads * N * int(sizeof(S)), "whole chunks");
    constexpr int kRounds = (kChunks + kThreads - 1) / kThreads;
    const TileChunk* from = reinterpret_cast<const TileChunk*>(src);
    TileChunk* to = reinterpret_cast<TileChunk*>(dst);
    const int k = int(threadIdx.x);
    TileChunk values[kRounds];
#pragma unroll
    for (int j = 0; j < kRounds; ++j)
      if (j * kThreads + kThreads <= kChunks || k < kChunks - j * kThreads)
        move_chunk(from + k + j * kThreads, &values[j]);
#pragma unroll
    for (int j = 0; j < kRounds; ++j)
      if (j * kThreads + kThreads <= kChunks || k < kChunks - j * kThreads)
        move_chunk(&values[j], to + k + j * kThreads);
  } else {
    const int size = tile.count() * N;
#pragma unroll 1
    for (int k = int(threadIdx.x); k < size; k += kThreads) dst[k] = src[k];
  }
}

// Whether every pointer is chunk-aligned (8 bytes; null pointers are): the vectorized copies'
// condition (for_each_tile).
template <typename... P>
__device__ __forceinline__ bool chunk_aligned(const P*... pointers) {
  return ((reinterpret_cast<std::uintptr_t>(pointers) | ... | std::uintptr_t(0)) % sizeof(TileChunk)) == 0;
}

// out = the N values of item first + threadIdx.x (left untouched where !tile.mine()).
template <int N, typename C, typename S, typename Tile>
__device__ __forceinline__ void load_row_tiled(const S* __restrict__ base, TileIndex first, Tile tile, S* shared,
                                               C out[N]) {
  copy_tile<N>(base + uint64_t(first) * N, shared, tile);
  __syncthreads();
  if (tile.mine()) load_row<N>(shared, threadIdx.x, out);
  __syncthreads();
}

// Writes the N values `in` of item first + threadIdx.x (ignored where !tile.mine()).
template <int N, typename S, typename C, typename Tile>
__device__ __forceinline__ void store_row_tiled(S* __restrict__ base, TileIndex first, Tile tile, S* shared,
                                                const C in[N]) {
  if (tile.mine()) store_row<N>(shared, threadIdx.x, in);
  __syncthreads();
  copy_tile<N>(shared, base + uint64_t(first) * N, tile);
  __syncthreads();
}

// load_row_tiled of two rows per item, N1 values from base1 and N2 from base2, staged
// through one shared tile of (N1 + N2) values per item (the second block after the
// first's kThreads * N1, chunk-aligned): one pair of barriers for both.
template <int N1, int N2, typename C, typename S, typename Tile>
__device__ __forceinline__ void load_rows_tiled(const S* __restrict__ base1, const S* __restrict__ base2,
                                                TileIndex first, Tile tile, S* shared, C out1[N1], C out2[N2]) {
  copy_tile<N1>(base1 + uint64_t(first) * N1, shared, tile);
  copy_tile<N2>(base2 + uint64_t(first) * N2, shared + kThreads * N1, tile);
  __syncthreads();
  if (tile.mine()) {
    load_row<N1>(shared, threadIdx.x, out1);
    load_row<N2>(shared + kThreads * N1, threadIdx.x, out2);
  }
  __syncthreads();
}

// store_row_tiled of two rows per item (as load_rows_tiled); base2 may be null (uniform
// over the grid): then only the first row is stored.
template <int N1, int N2, typename S, typename C, typename Tile>
__device__ __forceinline__ void store_rows_tiled(S* __restrict__ base1, S* __restrict__ base2, TileIndex first,
                                                 Tile tile, S* shared, const C in1[N1], const C in2[N2]) {
  if (tile.mine()) {
    store_row<N1>(shared, threadIdx.x, in1);
    store_row<N2>(shared + kThreads * N1, threadIdx.x, in2);
  }
  __syncthreads();
  copy_tile<N1>(shared, base1 + uint64_t(first) * N1, tile);
  if (base2 != nullptr) copy_tile<N2>(shared + kThreads * N1, base2 + uint64_t(first) * N2, tile);
  __syncthreads();
}

// The generic path, out of line (a call): the tiles from `first` on (block-stride) as
// PartialTile, copied value by value. It runs the grid's last, partial tile, and every
// tile where the pointers are not chunk-aligned, so the loop body that every full tile
// runs holds no bounds checks and no copy loops (instruction cache; and
// tools/sass_counts.py's count of the main body, which leaves out-of-line code out, is
// then the full tile's path).
template <typename Body>
__device__ PROBREG_NOINLINE void run_tiles_generic(Body body, TileIndex first, TileIndex n) {
  const TileIndex stride = kThreads * gridDim.x;
#pragma unroll 1
  for (; first < n; first += stride) body(first, PartialTile{int(n - first < kThreads ? n - first : kThreads)});
}

// Block-stride loop over the tiles of kThreads consecutive items of [0, n) (launch with
// kThreads threads): body(first, tile) with `first` the tile's first item and `tile` a
// FullTile (chunk copies: needs `vectorized`, chunk_aligned of the kernel's tiled global
// pointers), or a PartialTile for the grid's last tile when kThreads does not divide n and
// for every tile without `vectorized`. Both are uniform over the block, so the body may
// synchronise (the tiled helpers above). The body must capture by value: it is passed to
// run_tiles_generic.
template <typename Body>
__device__ __forceinline__ void for_each_tile(TileIndex n, bool vectorized, Body body) {
  const TileIndex stride = kThreads * gridDim.x;
  TileIndex first = blockIdx.x * kThreads;
  if (vectorized)
    for (; first + kThreads <= n; first += stride) body(first, FullTile{});
  if (first < n) run_tiles_generic(body, first, n);
}

// Launch bounds of the tiled kernels (launched with kThreads threads) of compute types
// CT: the fewest blocks per SM that ptxas must fit, which caps the registers per thread.
//  - matrices in double (float64 storage; float32 under the AllDouble switch): 2, i.e. at
//    most 128 registers. Unconstrained, ptxas gave the d = 3 backwards up to 156 (one
//    block per SM); within 128 their main bodies do not spill (tools/sass_counts.py with
//    -Xptxas -warn-spills).
//  - the rest (the mixed float32 policy, the half types): none. The mixed d = 3 kernels
//    take about 80 registers unconstrained (three blocks per SM); a two-block target
//    made ptxas take ~100, and a three-block one spilled.
// PROBREG_CUDA_MIN_BLOCKS_PER_SM = N > 0 at build time (e.g.
// PROBREG_NVCC_FLAGS=-DPROBREG_CUDA_MIN_BLOCKS_PER_SM=3) sets N for every tiled kernel
// instead, spilling if it must; tools/gpu_session.sh occupancy measures the variants.
#ifndef PROBREG_CUDA_MIN_BLOCKS_PER_SM
#define PROBREG_CUDA_MIN_BLOCKS_PER_SM 0
#endif
template <typename CT>
constexpr int tile_min_blocks() {
  if constexpr (PROBREG_CUDA_MIN_BLOCKS_PER_SM > 0) {
    return PROBREG_CUDA_MIN_BLOCKS_PER_SM;
  } else {
    return std::is_same<typename CT::value, double>::value ? 2 : 0;  // 0: unconstrained, as without it
  }
}
#define PROBREG_TILED_KERNEL(CT) __global__ void __launch_bounds__(kThreads, tile_min_blocks<CT>())

// Blocks for n items with a grid-stride loop (int64 indices; the grid is capped and the
// loop covers the rest).
inline unsigned int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20));
}

// Grid-stride loop over items i < n, one per thread (any block size).
#define PROBREG_GRID_STRIDE_LOOP(i, n)                                                   \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n);              \
       i += int64_t(blockDim.x) * gridDim.x)

// Launches `kernel` on `stream` with `blocks` x `threads` threads (no dynamic shared
// memory) and returns the launch status (cudaGetLastError; never synchronises). The one
// place that launches: in the host emulation build it runs the grid on the host instead.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), unsigned int blocks, unsigned int threads,
                          cudaStream_t stream, Args... args) {
#if defined(PROBREG_CUDA_HOST_EMULATION)
  (void)stream;
  return host_emulation::launch(blocks, threads, [&] { kernel(args...); });
#else
  kernel<<<blocks, threads, 0, stream>>>(args...);
  return cudaGetLastError();
#endif
}

// Calls f(S{}) with the storage type of `dtype`.
template <typename F>
cudaError_t dispatch_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat64:
      return f(double{});
    case Dtype::kFloat32:
      return f(float{});
    case Dtype::kFloat16:
      return f(__half{});
    case Dtype::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Calls f(std::integral_constant<int, D>) for d in {1, 2, 3}.
template <typename F>
cudaError_t dispatch_dim(int d, F&& f) {
  switch (d) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace probreg

// Host emulation of the CUDA execution model, for testing the torch-free kernels on a
// machine without a GPU (tests/test_cuda_kernels_on_host.py). Test-only: never part of
// the extension. Active when the .cu files are compiled as C++ by the host compiler with
// -DPROBREG_CUDA_HOST_EMULATION (kernel_common.cuh includes this header last, after the
// CUDA headers, whose host-compiler branch already turns __global__/__device__ into
// plain functions).
//
// Model: a launch runs its blocks one after another on the calling host thread; the
// threads of a block are fibers (ucontext) scheduled round by round, each running until
// it reaches __syncthreads() or returns. Hence
//  - __shared__ variables are function-local statics: one copy, shared by the block's
//    threads (the one block that runs at a time);
//  - __syncthreads() is a real barrier; the launch fails (cudaErrorLaunchFailure, with
//    last_error() saying where) if threads of a block wait at different __syncthreads
//    sites or some exit while others wait (undefined behaviour on a GPU);
//  - the order in which fibers run between two barriers is configurable (ascending,
//    descending, shuffled, or a rotation of the three), so a read of another thread's
//    shared-memory write without a barrier between them gives results that depend on the
//    order: tests run the same launch under several orders and require identical output;
//  - the grid can be capped (max_blocks): gridDim.x = min(requested, cap), which makes
//    the grid-stride and tile loops take several iterations at small sizes.
// What it does not model: warps, memory-access coalescing or timing, device memory
// (pointers are host pointers), and the device math library (host libm is used).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>

namespace probreg {
namespace cuda {
namespace host_emulation {

enum class Order : int { kAscending = 0, kDescending = 1, kShuffled = 2, kRotating = 3 };

struct Schedule {
  unsigned int max_blocks = 0xffffffffu;  // cap on the emulated gridDim.x
  Order order = Order::kRotating;         // fiber order within each round
  std::uint64_t seed = 0;                 // for kShuffled / kRotating
};

void set_schedule(const Schedule& schedule);
// Why the last failed launch failed ("" if the last launch succeeded).
const char* last_error();

// Runs body() once per emulated thread of a grid of `blocks` x `threads` (1-D).
cudaError_t launch(unsigned int blocks, unsigned int threads, const std::function<void()>& body);

// The built-in variables and the barrier of the running fiber.
uint3 thread_index();
uint3 block_index();
dim3 block_dimension();
dim3 grid_dimension();
void sync_threads(const char* file, int line);
// Records a misaligned access (p not a multiple of `alignment`), which fails the launch
// (cudaErrorMisalignedAddress) as a vector access at such an address faults on a GPU.
void check_aligned(const void* p, std::size_t alignment, const char* file, int line);

}  // namespace host_emulation
}  // namespace cuda
}  // namespace probreg

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#define threadIdx (::probreg::cuda::host_emulation::thread_index())
#define blockIdx (::probreg::cuda::host_emulation::block_index())
#define blockDim (::probreg::cuda::host_emulation::block_dimension())
#define gridDim (::probreg::cuda::host_emulation::grid_dimension())
#define __syncthreads() (::probreg::cuda::host_emulation::sync_threads(__FILE__, __LINE__))

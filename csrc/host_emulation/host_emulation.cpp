// Fiber scheduler of the host emulation of CUDA launches (see host_emulation.h).
#include "host_emulation.h"

#include <ucontext.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace probreg {
namespace cuda {
namespace host_emulation {
namespace {

// Per-fiber stack: the kernels keep a few hundred doubles of locals; generous for -O0.
constexpr std::size_t kStackBytes = 256 * 1024;

enum class FiberState { kRunnable, kAtBarrier, kExited };

struct Fiber {
  ucontext_t context;
  FiberState state = FiberState::kRunnable;
  const char* barrier_file = nullptr;
  int barrier_line = 0;
};

struct Grid {
  dim3 grid_dim;
  dim3 block_dim;
  uint3 block_idx;
  unsigned int current = 0;  // index of the running fiber
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  std::string fault;  // the first misaligned vector access (check_aligned), if any
};

std::mutex g_launch_mutex;  // one launch at a time (the running grid is global)
Grid* g_grid = nullptr;
Schedule g_schedule;
std::string g_last_error;

void fiber_main() {
  (*g_grid->body)();
  g_grid->fibers[g_grid->current].state = FiberState::kExited;
  // Returning resumes uc_link: the scheduler.
}

// The order in which the fibers of a block run in round `round` of block `block`.
void round_order(Order order, std::uint64_t seed, unsigned int block, unsigned int round,
                 std::vector<unsigned int>& out) {
  std::iota(out.begin(), out.end(), 0u);
  if (order == Order::kRotating) order = static_cast<Order>((block + round) % 3);
  if (order == Order::kDescending) std::reverse(out.begin(), out.end());
  if (order == Order::kShuffled) {
    std::mt19937_64 rng(seed * 1000003u + block * 7919u + round);
    std::shuffle(out.begin(), out.end(), rng);
  }
}

std::string where(const Fiber& f) { return std::string(f.barrier_file) + ":" + std::to_string(f.barrier_line); }

// Runs one block to completion; "" or the reason it cannot complete.
std::string run_block(Grid& grid, std::vector<char>& stacks, std::vector<unsigned int>& order) {
  const unsigned int threads = grid.block_dim.x;
  for (unsigned int t = 0; t < threads; ++t) {
    Fiber& f = grid.fibers[t];
    f = Fiber{};
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks.data() + std::size_t(t) * kStackBytes;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &grid.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  for (unsigned int round = 0;; ++round) {
    round_order(g_schedule.order, g_schedule.seed, grid.block_idx.x, round, order);
    for (unsigned int t : order) {
      if (grid.fibers[t].state != FiberState::kRunnable) continue;
      grid.current = t;
      swapcontext(&grid.scheduler, &grid.fibers[t].context);
    }
    const Fiber* waiting = nullptr;
    const Fiber* exited = nullptr;
    for (const Fiber& f : grid.fibers) {
      if (f.state == FiberState::kAtBarrier) {
        if (waiting != nullptr && (std::strcmp(f.barrier_file, waiting->barrier_file) != 0 ||
                                   f.barrier_line != waiting->barrier_line))
          return "threads of block " + std::to_string(grid.block_idx.x) + " wait at different __syncthreads (" +
                 where(*waiting) + " and " + where(f) + ")";
        waiting = &f;
      } else {
        exited = &f;
      }
    }
    if (waiting == nullptr) return "";
    if (exited != nullptr)
      return "in block " + std::to_string(grid.block_idx.x) + " some threads exited while others wait at " +
             where(*waiting);
    for (Fiber& f : grid.fibers) f.state = FiberState::kRunnable;
  }
}

}  // namespace

void set_schedule(const Schedule& schedule) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_schedule = schedule;
}

const char* last_error() { return g_last_error.c_str(); }

cudaError_t launch(unsigned int blocks, unsigned int threads, const std::function<void()>& body) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  g_last_error.clear();
  if (blocks == 0 || threads == 0 || threads > 1024) {
    g_last_error = "invalid launch configuration: " + std::to_string(blocks) + " blocks of " +
                   std::to_string(threads) + " threads";
    return cudaErrorInvalidConfiguration;
  }
  Grid grid;
  grid.grid_dim = dim3(std::min(blocks, std::max(1u, g_schedule.max_blocks)));
  grid.block_dim = dim3(threads);
  grid.fibers.resize(threads);
  grid.body = &body;
  std::vector<char> stacks(std::size_t(threads) * kStackBytes);
  std::vector<unsigned int> order(threads);
  g_grid = &grid;
  std::string error;
  for (unsigned int b = 0; b < grid.grid_dim.x && error.empty(); ++b) {
    grid.block_idx = make_uint3(b, 0, 0);
    error = run_block(grid, stacks, order);
  }
  g_grid = nullptr;
  if (!error.empty()) {
    g_last_error = error;
    return cudaErrorLaunchFailure;
  }
  if (!grid.fault.empty()) {
    g_last_error = grid.fault;
    return cudaErrorMisalignedAddress;
  }
  return cudaSuccess;
}

uint3 thread_index() { return make_uint3(g_grid->current, 0, 0); }
uint3 block_index() { return g_grid->block_idx; }
dim3 block_dimension() { return g_grid->block_dim; }
dim3 grid_dimension() { return g_grid->grid_dim; }

void check_aligned(const void* p, std::size_t alignment, const char* file, int line) {
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0 && g_grid->fault.empty())
    g_grid->fault = "misaligned " + std::to_string(alignment) + "-byte access at " + std::string(file) + ":" +
                    std::to_string(line);
}

void sync_threads(const char* file, int line) {
  Fiber& f = g_grid->fibers[g_grid->current];
  f.state = FiberState::kAtBarrier;
  f.barrier_file = file;
  f.barrier_line = line;
  swapcontext(&f.context, &g_grid->scheduler);
}

}  // namespace host_emulation
}  // namespace cuda
}  // namespace probreg

// Output allocation of the ops (spd_args.h, nll_checks.h): empty_output(sizes, options) is
// at::empty, except that CPU outputs of at least kOutputCacheMinBytes come from a small
// cache of probreg's own freed output blocks. Why: the CPU allocator takes every block
// above glibc's mmap threshold (at most 32 MiB) from the kernel afresh, and the kernel
// maps it one zeroed 4 KiB page per first-touch fault; an op called in a loop at a fixed
// batch (a training step) pays that on every call, about 7 ms per 36 MiB output on the
// 2-core reference machine, a quarter of a d = 3 forward+backward at 2^20 items.
//
// Contract:
//   - the returned tensor is uninitialised (as at::empty), contiguous, resizable; the op
//     writes every element. With torch.use_deterministic_algorithms(True) and
//     torch.utils.deterministic.fill_uninitialized_memory, outputs come from at::empty
//     (which fills them).
//   - a freed block is kept only while the cache holds at most the capacity,
//     PROBREG_CPU_OUTPUT_CACHE_MB (default 64, the most freed memory glibc's own heap
//     keeps once its thresholds have adapted; 0: no cache, every output from at::empty).
//     Past it the least recently freed blocks go back to the system. A request takes the
//     smallest cached block that fits with at most 1/8 of it unused (the most recently
//     freed of equal ones), else a new block.
//   - thread-safe; blocks may be freed on any thread (autograd's), and after the cache's
//     owner would have been destroyed at exit (the cache is never destroyed).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace probreg {

constexpr size_t kOutputCacheMinBytes = size_t(1) << 20;

// PROBREG_CPU_OUTPUT_CACHE_MB as bytes; an invalid value is an error naming the variable.
inline size_t output_cache_capacity_from_env() {
  const char* text = std::getenv("PROBREG_CPU_OUTPUT_CACHE_MB");
  if (text == nullptr || *text == '\0') return size_t(64) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && mb >= 0 && mb <= (1LL << 30),
              "PROBREG_CPU_OUTPUT_CACHE_MB must be a whole number of MiB >= 0, got '", text, "'");
  return size_t(mb) << 20;
}

class OutputBlockCache final : public c10::Allocator {
 public:
  explicit OutputBlockCache(size_t capacity) : capacity_(capacity) {}

  // The process-wide cache (never destroyed: blocks may be freed during exit).
  static OutputBlockCache& instance() {
    static OutputBlockCache* cache = new OutputBlockCache(output_cache_capacity_from_env());
    return *cache;
  }
  size_t capacity() const { return capacity_; }

  c10::DataPtr allocate(size_t n) override {
    void* data = take(n);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  // Layout of a block: kHeader bytes holding its usable size, then the data (64-byte
  // aligned, as c10's CPU allocator).
  static constexpr size_t kHeader = 64;
  struct Block {
    char* base;
    size_t size;
  };

  void* take(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      size_t best = free_.size();
      for (size_t k = free_.size(); k-- > 0;) {  // among equal sizes, the most recently freed
        const size_t s = free_[k].size;
        if (s >= n && s - n <= s / 8 && (best == free_.size() || s < free_[best].size)) best = k;
      }
      if (best != free_.size()) {
        const Block b = free_[best];
        free_.erase(free_.begin() + best);
        cached_ -= b.size;
        return b.base + kHeader;
      }
    }
    const size_t size = (n + 4095) / 4096 * 4096;
    char* base = static_cast<char*>(std::aligned_alloc(64, kHeader + size));
    TORCH_CHECK(base != nullptr, "probreg: out of memory allocating ", size, " bytes for an output");
    std::memcpy(base, &size, sizeof(size));
    return base + kHeader;
  }

  static void release(void* data) {
    if (data == nullptr) return;
    char* base = static_cast<char*>(data) - kHeader;
    size_t size;
    std::memcpy(&size, base, sizeof(size));
    instance().give_back({base, size});
  }

  void give_back(Block b) {
    std::vector<char*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (b.size < kOutputCacheMinBytes || b.size > capacity_) {
        evicted.push_back(b.base);
      } else {
        while (cached_ + b.size > capacity_) {  // least recently freed first
          evicted.push_back(free_.front().base);
          cached_ -= free_.front().size;
          free_.erase(free_.begin());
        }
        free_.push_back(b);
        cached_ += b.size;
      }
    }
    for (char* base : evicted) std::free(base);
  }

  const size_t capacity_;
  std::mutex mutex_;
  std::vector<Block> free_;  // most recently freed last
  size_t cached_ = 0;
};

// An uninitialised contiguous output (see the contract above).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(sizes, options);
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory()) return at::empty(sizes, options);
  OutputBlockCache& cache = OutputBlockCache::instance();
  const size_t nbytes = size_t(c10::multiply_integers(sizes)) * c10::elementSize(options.dtype().toScalarType());
  if (cache.capacity() == 0 || nbytes < kOutputCacheMinBytes) return at::empty(sizes, options);
  return at::detail::empty_generic(sizes, &cache, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   options.dtype().toScalarType(), std::nullopt);
}

// empty_output of a contiguous tensor's shape and options.
inline at::Tensor empty_output_like(const at::Tensor& contiguous) {
  return empty_output(contiguous.sizes(), contiguous.options());
}

}  // namespace probreg

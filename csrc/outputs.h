// Allocation of the operators' output tensors (prepare_* in spd_args.h, nll_checks.h,
// fuse_checks.h), on the device of the inputs.
//
// Large CPU outputs: glibc serves allocations above its mmap threshold (which adapts up
// to 32 MiB on 64-bit) with fresh mappings, so a kernel's first write to each 4 KiB page
// of such an output takes a page fault; for a 36 MiB output (2^20 3x3 float32 matrices)
// these faults cost about 11 ms on a 2-core Xeon, more than the kernel itself. Outputs of
// at least 32 MiB are therefore advised to use transparent huge pages (madvise
// MADV_HUGEPAGE on the 2 MiB-aligned interior, Linux only; the same 36 MiB output then
// takes about 2 ms). Advice only: where THP is disabled, or the call fails, nothing
// changes. torch's own opt-in for every allocation is THP_MEM_ALLOC_ENABLE=1.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace probreg {

constexpr int64_t kHugePageOutputBytes = int64_t(32) << 20;

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = t.numel() * int64_t(t.element_size());
  if (!t.device().is_cpu() || bytes < kHugePageOutputBytes) return;
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (first + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (first + uintptr_t(bytes)) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty(sizes, options) / at::empty_like(like), advised as above.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  advise_huge_pages(out);
  return out;
}
inline at::Tensor empty_output_like(const at::Tensor& like) {
  at::Tensor out = at::empty_like(like);
  advise_huge_pages(out);
  return out;
}

}  // namespace probreg

"""The CPU output cache (csrc/output_cache.h): outputs of >= 1 MiB come from probreg's own
freed blocks. Reuse must never hand out memory that a live tensor still owns, results must
stay exact, the storage must behave like at::empty's (resizable), and the
PROBREG_CPU_OUTPUT_CACHE_MB setting must be honoured or rejected by name."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import probreg
from probreg import reference

# 2^15 matrices of 3x3 float32: 1.125 MiB outputs, above the cache's 1 MiB floor.
N = 1 << 15


def _raw(seed: int) -> torch.Tensor:
    return torch.randn(N, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def _expected(raw: torch.Tensor) -> torch.Tensor:
    return reference.spd_from_raw(raw.double())


def test_live_outputs_never_share_memory_and_stay_exact():
    raws = [_raw(seed) for seed in range(4)]
    first = probreg.spd_from_raw(raws[0])
    second = probreg.spd_from_raw(raws[1])
    first_ptr = first.data_ptr()
    del first  # its block goes back to the cache
    third = probreg.spd_from_raw(raws[2])
    fourth = probreg.spd_from_raw(raws[3])
    ptrs = {second.data_ptr(), third.data_ptr(), fourth.data_ptr()}
    assert len(ptrs) == 3
    assert first_ptr in ptrs  # the freed block was taken again
    for raw, out in zip(raws[1:], (second, third, fourth)):
        torch.testing.assert_close(out.double(), _expected(raw), rtol=2e-5, atol=1e-6)


def test_freed_block_is_reused_by_the_next_op_not_by_torch():
    # While the cache holds a freed block, torch's allocator cannot hand it out; the next
    # probreg output of that size gets it back.
    raw = _raw(7)
    pred = torch.randn(N, 9)
    target = torch.randn(N, 3)
    out = probreg.spd_from_raw(raw)
    ptr = out.data_ptr()
    nbytes = out.numel() * out.element_size()
    del out
    held_by_torch = torch.empty(nbytes, dtype=torch.uint8)
    assert held_by_torch.data_ptr() != ptr
    again = probreg.spd_from_raw(raw)
    assert again.data_ptr() == ptr
    # The same for a backward output: grad_pred (N, 9) float32 of huber_nll.
    grad_loss = torch.ones(N)
    grad_pred, _ = torch.ops.probreg._huber_nll_backward(grad_loss, pred, target, 1.0, 1.0, 0, 2, False, False)
    gp_ptr = grad_pred.data_ptr()
    del grad_pred
    grad_pred, _ = torch.ops.probreg._huber_nll_backward(grad_loss, pred, target, 1.0, 1.0, 0, 2, False, False)
    assert grad_pred.data_ptr() == gp_ptr
    p = pred.double().requires_grad_(True)
    reference.huber_nll_reference(p, target.double(), reduction="sum").backward()
    torch.testing.assert_close(grad_pred.double(), p.grad, rtol=2e-5, atol=2e-5)


def test_cached_storage_is_resizable_like_at_empty():
    raw = _raw(3)
    out = probreg.spd_from_raw(raw)
    expected = out.clone()
    out.resize_(2 * N, 3, 3)
    torch.testing.assert_close(out[:N], expected, rtol=0, atol=0)
    out.resize_(N // 2, 3, 3)
    torch.testing.assert_close(out, expected[: N // 2], rtol=0, atol=0)


def _run(code: str, cache_mb: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PROBREG_CPU_OUTPUT_CACHE_MB=cache_mb)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=120)


_REUSE = """
    import torch, probreg
    raw = torch.randn(1 << 15, 6)
    out = probreg.spd_from_raw(raw)
    ptr = out.data_ptr()
    del out
    held = torch.empty(((1 << 15) * 9,), dtype=torch.float32)
    again = probreg.spd_from_raw(raw)
    print("reused" if again.data_ptr() == ptr else "fresh")
"""


@pytest.mark.parametrize("cache_mb, expected", [("0", "fresh"), ("1", "fresh"), ("2", "reused"), ("64", "reused")])
def test_capacity_setting(cache_mb, expected):
    # "1": the 1.125 MiB block does not fit a 1 MiB cache; "0": no cache at all.
    proc = _run(_REUSE, cache_mb)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


@pytest.mark.parametrize("cache_mb", ["abc", "-1", "1.5"])
def test_invalid_capacity_setting_is_an_error_naming_it(cache_mb):
    proc = _run(_REUSE, cache_mb)
    assert proc.returncode != 0
    assert "PROBREG_CPU_OUTPUT_CACHE_MB" in proc.stderr


def test_deterministic_fill_mode_bypasses_the_cache():
    # torch.use_deterministic_algorithms(True) with fill_uninitialized_memory: outputs come
    # from torch's allocator (which fills them), never from a cached block.
    raw = _raw(11)
    out = probreg.spd_from_raw(raw)
    ptr = out.data_ptr()
    del out  # cached now
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.utils.deterministic.fill_uninitialized_memory
        bypassed = probreg.spd_from_raw(raw)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert bypassed.data_ptr() != ptr
    torch.testing.assert_close(bypassed.double(), _expected(raw), rtol=2e-5, atol=1e-6)
    again = probreg.spd_from_raw(raw)
    assert again.data_ptr() == ptr


def test_blocks_freed_on_other_threads():
    # Outputs freed concurrently on worker threads (as autograd's engine does) while the
    # main thread allocates: every result stays exact and no two live outputs share memory.
    import threading

    raws = [_raw(100 + k) for k in range(8)]
    expected = [_expected(raw) for raw in raws]
    for _ in range(3):
        outs = [probreg.spd_from_raw(raw) for raw in raws]
        for out, exp in zip(outs, expected):
            torch.testing.assert_close(out.double(), exp, rtol=2e-5, atol=1e-6)
        holders = [[out] for out in outs]
        del outs
        threads = [threading.Thread(target=holder.clear) for holder in holders]
        for t in threads:
            t.start()
        fresh = [probreg.spd_from_raw(raw) for raw in raws]
        for t in threads:
            t.join()
        assert len({out.data_ptr() for out in fresh}) == len(fresh)
        for out, exp in zip(fresh, expected):
            torch.testing.assert_close(out.double(), exp, rtol=2e-5, atol=1e-6)

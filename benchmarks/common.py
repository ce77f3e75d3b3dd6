"""Timing, environment and reporting helpers shared by every benchmark suite.

Method (DESIGN.md section 4): warm-up runs, then the median of many timed runs; the
peers of one table row are timed in alternation (time_interleaved_ms). CPU:
time.perf_counter around a synchronous call. CUDA: CUDA events on the current stream,
synchronised once per run. Bandwidth ceilings are measured in the same run (a
device-to-device copy) so that "fraction of peak" compares like with like.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

import torch

# Overrides of every suite's sizes and of the per-measurement time budget, set by
# `python -m benchmarks --batches 20,22,24 --dims 2 --covariances full --budget-s 5`
# (tools/gpu_session.sh quick runs only the acceptance cases this way). None keeps each
# suite's default.
OVERRIDES: Dict[str, object] = {"batches": None, "dims": None, "budget_s": None, "covariances": None}


def suite_sizes(default_batches: List[int], default_dims=(2, 3)):
    """(batches, dims) of a suite: the command-line overrides, else the suite's defaults."""
    return OVERRIDES["batches"] or default_batches, OVERRIDES["dims"] or default_dims


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, *, warmup: int = 3, reps: int = 20,
            budget_s: float = 20.0) -> float:
    """Median wall time of fn() in milliseconds.

    reps is reduced (never below 3) so one measurement stays within about budget_s, and
    warm-up stops after the first call once warming up has taken a quarter of it.
    OVERRIDES["budget_s"], when set, caps budget_s.
    """
    if OVERRIDES["budget_s"] is not None:
        budget_s = min(budget_s, float(OVERRIDES["budget_s"]))
    started = time.perf_counter()
    for _ in range(warmup):
        fn()
        synchronize(device)
        if time.perf_counter() - started > budget_s / 4:
            break
    times: List[float] = []
    started = time.perf_counter()
    for i in range(reps):
        times.append(_timed_call_ms(fn, device))
        if i >= 2 and time.perf_counter() - started > budget_s:
            break
    return statistics.median(times)


def time_interleaved_ms(fns: Dict[str, Callable[[], object]], device: str, *, warmup: int = 3,
                        reps: int = 20, budget_s: float = 20.0, quantum_s: float = 0.05) -> Dict[str, float]:
    """Median wall time of every fn() in milliseconds, the peers timed in alternation.

    The peers of one table row share the same minutes: round after round, each fn runs in
    turn (the order rotates by one every round), so a slow spell of the machine (other
    tenants, frequency changes) lands on all of them instead of on whichever was being
    timed then, and the ratios between them stay meaningful on a noisy machine. Within a
    round a fn runs back to back for about quantum_s (at least once), each call timed on
    its own, so a 5 ms kernel collects many samples spread over every round while a 1 s
    eager peer runs once per round.
    Stops once every fn has `reps` samples, or once the timed rounds have taken
    budget_s per fn (each fn then has at least 3 samples). Warm-up: up to `warmup` calls
    per fn, fewer once a fn's warm-up has taken a quarter of budget_s; the last warm-up
    call sets its calls per round. OVERRIDES["budget_s"], when set, caps budget_s.
    """
    if OVERRIDES["budget_s"] is not None:
        budget_s = min(budget_s, float(OVERRIDES["budget_s"]))
    names = list(fns)
    calls_per_round: Dict[str, int] = {}
    for name in names:
        started = time.perf_counter()
        last = 0.0
        for _ in range(max(warmup, 1)):
            last = _timed_call_ms(fns[name], device)
            if time.perf_counter() - started > budget_s / 4:
                break
        calls_per_round[name] = max(1, int(quantum_s * 1e3 / max(last, 1e-3)))
    samples: Dict[str, List[float]] = {name: [] for name in names}
    started = time.perf_counter()
    rounds = 0
    while True:
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            for _ in range(calls_per_round[name]):
                samples[name].append(_timed_call_ms(fns[name], device))
        rounds += 1
        if all(len(s) >= reps for s in samples.values()):
            break
        if rounds >= 3 and time.perf_counter() - started > budget_s * len(names):
            break
    return {name: statistics.median(samples[name]) for name in names}


def _timed_call_ms(fn: Callable[[], object], device: str) -> float:
    """Wall time of one fn() in milliseconds: CUDA events on the current stream, else
    time.perf_counter around the (synchronous) CPU call."""
    if device.startswith("cuda"):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved_forward_and_backward_rows(rows: Dict[str, dict], forwards: Dict[str, Callable[[], object]],
                                          forward_backwards: Dict[str, Callable[[], object]], device: str,
                                          bytes_moved: Callable[[str], int]) -> List[dict]:
    """Times every impl's forward() and, separately, every forward_backward()
    (time_interleaved_ms: the impls of one mode in alternation) and returns, per impl in
    the order of `rows`, two copies of rows[impl], one per mode ("forward",
    "forward+backward"), with ms and GB/s (bytes_moved(mode) / time) filled in."""
    ms = {"forward": time_interleaved_ms(forwards, device),
          "forward+backward": time_interleaved_ms(forward_backwards, device)}
    out = []
    for impl, row in rows.items():
        for mode in ("forward", "forward+backward"):
            t = ms[mode][impl]
            out.append({**row, "mode": mode, "ms": t, "GB/s": bytes_moved(mode) / (t * 1e-3) / 1e9})
    return out


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy bandwidth (read + write bytes / time), GB/s."""
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, reps=30)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def environment(device: str) -> Dict[str, object]:
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        # The SIMD ISA torch detects, which probreg's CPU kernels target unless the build
        # set PROBREG_CPU_ISA (setup.py): "AMD EPYC" names several generations.
        "cpu_capability": _cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def device_label(device: str) -> str:
    """File-name friendly name of the device (results/<label>.md)."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu-" + _cpu_name()
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower().replace("--", "-")


def _cpu_capability() -> str:
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        return "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| over the whole tensor, in float64 (NaN if out is non-finite)."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if not torch.isfinite(out).all():
        return float("nan")
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def markdown_table(rows: List[dict], columns: List[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "nan"
            if v == 0 or 1e-3 <= abs(v) < 1e5:
                return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
            return f"{v:.2e}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def add_speedups(rows: List[dict], group_keys: List[str], baseline_impl: str, column: str) -> None:
    """rows[column] = baseline ms / ms within each group (same op/d/batch/mode/...)."""
    groups: Dict[tuple, float] = {}
    for r in rows:
        if r["impl"] == baseline_impl:
            groups[tuple(r.get(k) for k in group_keys)] = r["ms"]
    for r in rows:
        base = groups.get(tuple(r.get(k) for k in group_keys))
        r[column] = (base / r["ms"]) if base else float("nan")


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=str)

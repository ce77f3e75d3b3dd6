"""The benchmark suite's interleaved timer (benchmarks/common.py time_interleaved_ms): its
schedule and its medians, with the clock replaced by values each fake fn reports, so
nothing here depends on how fast this machine is."""
import statistics

import pytest

from benchmarks import common


@pytest.fixture
def fake_clock(monkeypatch):
    """_timed_call_ms returns what fn() returns (its 'duration' in ms) and logs the call."""
    log = []

    def timed(fn, device):
        name, ms = fn()
        log.append(name)
        return ms

    monkeypatch.setattr(common, "_timed_call_ms", timed)
    monkeypatch.setitem(common.OVERRIDES, "budget_s", None)
    return log


def _fn(name, durations):
    """A fake fn reporting the given durations in turn (the last one repeatedly)."""
    it = iter(durations)
    last = [durations[-1]]

    def fn():
        last[0] = next(it, last[0])
        return name, last[0]
    return fn


def test_peers_alternate_and_rotate(fake_clock):
    # Both take 25 ms per call, so each runs twice per 50 ms round after 3 warm-up calls.
    fns = {"a": _fn("a", [25.0]), "b": _fn("b", [25.0])}
    common.time_interleaved_ms(fns, "cpu", warmup=3, reps=6)
    timed = fake_clock[6:]
    assert fake_clock[:6] == ["a"] * 3 + ["b"] * 3
    # Rounds: a a b b | b b a a | a a b b  (the order rotates by one peer every round).
    assert timed == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "a", "b", "b"]


def test_fast_peer_runs_several_calls_per_round(fake_clock):
    fns = {"slow": _fn("slow", [1000.0]), "fast": _fn("fast", [5.0])}
    common.time_interleaved_ms(fns, "cpu", warmup=1, reps=20, budget_s=1e9)
    timed = fake_clock[2:]
    assert timed.count("slow") == 20
    assert timed.count("fast") == 200  # 10 per round: quantum 50 ms / 5 ms
    assert timed[:11] == ["slow"] + ["fast"] * 10


def test_returns_each_peers_median(fake_clock):
    a = [9.0, 1.0, 3.0, 2.0, 7.0, 5.0, 4.0]  # first call is the warm-up
    b = [100.0, 80.0, 60.0, 90.0, 70.0, 75.0, 85.0]
    ms = common.time_interleaved_ms({"a": _fn("a", a), "b": _fn("b", b)}, "cpu", warmup=1, reps=6,
                                    quantum_s=1e-6)
    assert ms == {"a": statistics.median(a[1:]), "b": statistics.median(b[1:])}


def test_budget_ends_after_three_rounds(fake_clock, monkeypatch):
    """With the budget spent, a peer that has not reached reps stops at 3 rounds."""
    clock = iter(range(0, 10**6, 100))
    monkeypatch.setattr(common.time, "perf_counter", lambda: float(next(clock)))
    common.time_interleaved_ms({"a": _fn("a", [1.0])}, "cpu", warmup=1, reps=1000, budget_s=1.0,
                               quantum_s=1e-6)
    assert fake_clock.count("a") == 1 + 3

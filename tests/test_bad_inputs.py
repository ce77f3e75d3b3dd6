"""Regression tests of issue 15: every bad input a clear error naming the argument, nothing
silently wrong, nothing out of bounds.

- every operator (backward operators included) checks every tensor's shape, dtype and
  device against the others, in the real kernel and in the fake kernel alike;
- huber_fuse terminates at tol = 0, judges convergence by a test that holds along flat
  directions, and never reports converged = True with y = +-inf;
- the normalisers are exact over the whole delta range (against mpmath quadrature);
- the public functions' cases of the issue, one by one (scalar and tensor arguments,
  the negative-weight rule, the empty-batch mean), probreg.nn and the region radius
  included.
The property-based sweep over every public function is tests/test_hostile_sweep.py.
"""
from __future__ import annotations

import math
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import probreg
from probreg import ebm, gum, normalizer, reference, wiberg

import fuse_cases as fc

ops = torch.ops.probreg
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- operator argument matrix
def _op_cases():
    """op name -> (op, valid args, names of the tensor args (None for non-tensors))."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    B = r(5, 2, 2)
    L, V = ops.symeig(B)
    raw = r(5, 3)
    pred, target = r(5, 5), r(5, 2)
    v, A, w = r(4, 3, 2), r(4, 3, 2, 2) + 2 * torch.eye(2, dtype=F64), torch.rand(4, 3, generator=g, dtype=F64) + 0.1
    y = ops.huber_fuse(v, A, w, None, 1.0, 50, 1e-10, 0.0)[0]
    # d = 4 for the d > 3 fallback operators
    B4 = r(5, 4, 4)
    L4, V4 = ops._symeig_fallback(B4)
    pred4, target4 = r(5, 14), r(5, 4)
    v4, A4 = r(4, 3, 4), r(4, 3, 4, 4) + 3 * torch.eye(4, dtype=F64)
    y4 = ops._huber_fuse_fallback(v4, A4, w, None, 1.0, 50, 1e-10, 0.0)[0]
    nll_tail = (1.0, 0.5, 0, 2, False)
    return {
        "symeig": (ops.symeig, (B,), ("B",)),
        "_symeig_backward": (ops._symeig_backward, (r(5, 2), r(5, 2, 2), L, V),
                             ("grad_eigenvalues", "grad_eigenvectors", "eigenvalues", "eigenvectors")),
        "spd_remap": (ops.spd_remap, (B, 0.5), ("B", None)),
        "_spd_remap_backward": (ops._spd_remap_backward, (r(5, 2, 2), B, 0.5), ("grad_A", "B", None)),
        "spd_from_raw": (ops.spd_from_raw, (raw, 0.5), ("raw", None)),
        "_spd_from_raw_backward": (ops._spd_from_raw_backward, (r(5, 2, 2), raw, 0.5), ("grad_A", "raw", None)),
        "huber_nll": (ops.huber_nll, (pred, target, 1.0, 0.5, 0, 2, False),
                      ("pred", "target", None, None, None, None, None)),
        "_huber_nll_backward": (ops._huber_nll_backward, (r(5), pred, target, 1.0, 0.5, 0, 2, False, True),
                                ("grad_loss", "pred", "target", None, None, None, None, None, None)),
        "_huber_nll_and_grad": (ops._huber_nll_and_grad, (pred, target, 1.0, 0.5, 0, 2, False, True),
                                ("pred", "target", None, None, None, None, None, None)),
        "huber_fuse": (ops.huber_fuse, (v, A, w, r(4, 2), 1.0, 50, 1e-6, 0.0),
                       ("v", "A", "weight", "init", None, None, None, None)),
        "_huber_fuse_backward": (ops._huber_fuse_backward, (r(4, 2), y, v, A, w, 1.0, 0.1),
                                 ("grad_y", "y", "v", "A", "weight", None, None)),
        "_symeig_fallback": (ops._symeig_fallback, (B4,), ("B",)),
        "_symeig_fallback_backward": (ops._symeig_fallback_backward, (r(5, 4), r(5, 4, 4), L4, V4),
                                      ("grad_eigenvalues", "grad_eigenvectors", "eigenvalues", "eigenvectors")),
        "_spd_remap_fallback": (ops._spd_remap_fallback, (B4, 0.5), ("B", None)),
        "_spd_remap_fallback_backward": (ops._spd_remap_fallback_backward, (r(5, 4, 4), B4, 0.5), ("grad_A", "B", None)),
        "_huber_nll_fallback": (ops._huber_nll_fallback, (pred4, target4, *nll_tail),
                                ("pred", "target", None, None, None, None, None)),
        "_huber_nll_fallback_backward": (ops._huber_nll_fallback_backward, (r(5), pred4, target4, *nll_tail, True),
                                         ("grad_loss", "pred", "target", None, None, None, None, None, None)),
        "_huber_fuse_fallback": (ops._huber_fuse_fallback, (v4, A4, w, r(4, 4), 1.0, 50, 1e-6, 0.0),
                                 ("v", "A", "weight", "init", None, None, None, None)),
        "_huber_fuse_fallback_backward": (ops._huber_fuse_fallback_backward, (r(4, 4), y4, v4, A4, w, 1.0, 0.1),
                                          ("grad_y", "y", "v", "A", "weight", None, None)),
        "_spd_remap_second": (ops._spd_remap_second, (B, r(5, 2, 2), r(5, 2, 2), 0.5), ("B", "G", "E", None)),
        "_huber_nll_hvp": (ops._huber_nll_hvp, (r(5), pred, target, r(5, 5), r(5, 2), *nll_tail, True),
                           ("grad_loss", "pred", "target", "dpred", "dtarget", None, None, None, None, None, None)),
    }


OP_NAMES = list(_op_cases())


def _corruptions(t: torch.Tensor):
    """(label, bad tensor) variants of a valid tensor argument: another batch size (the
    issue's case: a batch of 1 against a batch of 3,000,000, as a stride-0 expand), another
    last dimension, an integer and a complex dtype, another floating dtype."""
    bigger = t[:1].expand(3_000_000, *t.shape[1:])
    yield "batch 3e6", bigger
    yield "batch 1", t[:1]
    yield "last dim", torch.cat([t, t[..., :1]], dim=-1)
    yield "int64", t.to(torch.int64)
    yield "complex", t.to(torch.complex128)
    yield "float32", t.to(torch.float32)


def _run(op, args, fake: bool):
    if not fake:
        return op(*args)
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        return op(*fake_args)


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "fake"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_accepts_its_valid_arguments(name, fake):
    op, args, _ = _op_cases()[name]
    _run(op, args, fake)


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "fake"])
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_rejects_every_mismatched_tensor(name, fake):
    """Each tensor argument replaced by a mismatched one: an error naming that argument
    (or, for the first tensor, the one it is checked against), never a result."""
    op, args, names = _op_cases()[name]
    tensor_names = [n for n in names if n is not None]
    for index, arg_name in enumerate(names):
        if arg_name is None:
            continue
        for label, bad in _corruptions(args[index]):
            if len(tensor_names) == 1 and label in ("batch 3e6", "batch 1"):
                continue  # a lone tensor argument has no batch to mismatch
            if label == "float32" and len(tensor_names) == 1:
                continue  # float32 is a valid dtype for an op with one tensor
            bad_args = list(args)
            bad_args[index] = bad
            with pytest.raises(RuntimeError) as info:
                _run(op, bad_args, fake)
            message = str(info.value)
            assert f"probreg.{name}" in message, message
            assert arg_name in message, f"{name} with {arg_name} {label}: {message}"


def test_symeig_backward_batch_mismatch_is_an_error_not_a_read_out_of_bounds():
    """The issue's case: eigenvalues of batch 1, eigenvectors of batch 3,000,000 (ASan
    reported a heap-buffer-overflow read in load_item)."""
    V = torch.eye(3, dtype=F64).expand(3_000_000, 3, 3)
    L = torch.zeros(1, 3, dtype=F64)
    for fake in (False, True):
        with pytest.raises(RuntimeError, match=r"eigenvalues must have shape \(\.\.\., d\)"):
            _run(ops._symeig_backward, (L, V, L, V), fake)


SCALAR_CASES = [
    # (op name, argument index, bad value, argument name in the message)
    ("spd_remap", 1, 0.0, "theta"),
    ("spd_remap", 1, math.nan, "theta"),
    ("spd_remap", 1, math.inf, "theta"),
    ("spd_remap", 1, 1e-310, "theta"),  # subnormal: 1/theta overflows (A was 0)
    ("spd_from_raw", 1, 5e-324, "theta"),
    ("huber_nll", 3, 2.2e-308, "theta"),
    ("_spd_remap_backward", 2, -1.0, "theta"),
    ("spd_from_raw", 1, math.nan, "theta"),
    ("_spd_from_raw_backward", 2, 0.0, "theta"),
    ("huber_nll", 2, -1.0, "delta"),
    ("huber_nll", 2, math.inf, "delta"),
    ("huber_nll", 3, 0.0, "theta"),
    ("huber_nll", 4, 7, "family"),
    ("huber_nll", 5, -1, "covariance"),
    ("_huber_nll_backward", 4, math.nan, "theta"),
    ("_huber_nll_and_grad", 4, 5, "family"),
    ("huber_fuse", 4, 0.0, "delta"),
    ("huber_fuse", 4, math.nan, "delta"),
    ("huber_fuse", 5, -1, "max_iter"),
    ("huber_fuse", 5, 2**31, "max_iter"),
    ("huber_fuse", 6, math.nan, "tol"),
    ("huber_fuse", 7, -0.5, "damping"),
    ("_huber_fuse_backward", 5, -1.0, "delta"),
    ("_huber_fuse_backward", 6, math.inf, "damping"),
    ("_spd_remap_fallback", 1, 0.0, "theta"),
    ("_spd_remap_fallback", 1, 1e-310, "theta"),
    ("_spd_remap_fallback_backward", 2, math.nan, "theta"),
    ("_huber_nll_fallback", 2, -1.0, "delta"),
    ("_huber_nll_fallback_backward", 6, 3, "covariance"),
    ("_huber_fuse_fallback", 4, 0.0, "delta"),
    ("_huber_fuse_fallback", 5, 2**31, "max_iter"),
    ("_huber_fuse_fallback", 6, math.nan, "tol"),
    ("_huber_fuse_fallback_backward", 6, -1.0, "damping"),
    ("_spd_remap_second", 3, math.inf, "theta"),
    ("_huber_nll_hvp", 7, 9, "family"),
]


@pytest.mark.parametrize("fake", [False, True], ids=["kernel", "fake"])
@pytest.mark.parametrize("name, index, value, arg_name", SCALAR_CASES)
def test_op_rejects_bad_scalars(name, index, value, arg_name, fake):
    op, args, _ = _op_cases()[name]
    bad_args = list(args)
    bad_args[index] = value
    with pytest.raises(RuntimeError, match=arg_name):
        _run(op, bad_args, fake)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("name", OP_NAMES)
def test_op_rejects_tensors_on_two_devices(name):
    op, args, names = _op_cases()[name]
    cuda_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    for index, arg_name in enumerate(names):
        if arg_name is None or sum(n is not None for n in names) == 1:
            continue
        bad_args = list(cuda_args)
        bad_args[index] = args[index]  # this one stays on the CPU
        with pytest.raises(RuntimeError, match="device"):
            op(*bad_args)


# ---------------------------------------------------------------- huber_fuse: termination and flags
@contextmanager
def time_limit(seconds: int):
    """Fails (instead of hanging the suite) when the body runs longer than `seconds`."""

    def handler(signum, frame):
        raise TimeoutError(f"did not return within {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_fuse_tol_zero_terminates_at_machine_precision(d, dtype):
    """The issue's call huber_fuse(..., tol=0, max_iter=2**30) used to oscillate at ulp
    level forever; tol = 0 now means "to machine precision" and every problem converges."""
    problems = [fc.random_problems(16, 3, d, seed=40 + d), fc.far_apart_problems(16, d, seed=41 + d)]
    if dtype != torch.float16:  # singular values of 1e-6: y* ~ 1e6 is beyond float16
        problems.append(fc.nearly_singular_problems(16, 3, d, seed=42 + d))
    if d >= 2:
        problems.append(fc.shared_null_direction_problems(16, 4, d, seed=43 + d, noise=2.0))
    for p in problems:
        v, A, w = (p[k].to(dtype) for k in ("v", "A", "weight"))
        with time_limit(120):
            out = probreg.huber_fuse(v, A, w, p["delta"], tol=0, max_iter=2**30)
        assert out.converged.all(), out.iterations
        assert int(out.iterations.max()) < 100_000


@pytest.mark.parametrize("n, d, noise", [(4, 2, 2.0), (4, 3, 2.0), (4, 3, 0.5)])
@pytest.mark.parametrize("tol", [1e-12, 0.0])
def test_fuse_converges_along_a_shared_near_null_direction(n, d, noise, tol):
    """Estimates sharing a near-null direction (singular value 1e-6): H's smallest
    eigenvalue is ~1e-12, the Newton step there is rounding noise times 1e12, so a step
    test alone cannot pass, although E is optimal. Before: 6-15 of 200 such problems
    stopped at max_iter unconverged. Now every one converges, and its energy is within
    E's rounding bound (eps * energy_round, fuse.h) of an independent minimiser's."""
    p = fc.shared_null_direction_problems(100, n, d, seed=3, noise=noise)
    v, A, w = p["v"], p["A"], p["weight"]
    out = probreg.huber_fuse(v, A, w, p["delta"], tol=tol, max_iter=200)
    assert out.converged.all()
    energy = reference.huber_energy(out.y, v, A, w, p["delta"])
    best = reference.huber_energy(fc.independent_minimiser(p), v, A, w, p["delta"])
    # E's rounding bound: sum_i w_i psi_i r_i (|A_i| |y| + |v_i|) (psi_i r_i = min(r_i, delta)).
    r = torch.linalg.vector_norm((A @ out.y.unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - v, dim=-1)
    scale = (A.abs() @ out.y.abs().unsqueeze(-2).unsqueeze(-1)).squeeze(-1).sum(-1) + v.abs().sum(-1)
    energy_round = (w * torch.clamp(r, max=p["delta"]) * scale).sum(-1)
    excess = energy - best
    assert (excess <= torch.finfo(F64).eps * energy_round).all(), excess.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch", [1, 9])  # 9: the CPU SIMD block of 8 and a scalar tail
@pytest.mark.parametrize("d", [2, 4])  # 4: the d > 3 fallback operator
def test_fuse_y_beyond_the_dtype_range_is_not_converged(dtype, batch, d):
    """y* = 1e40 (float32) / ~1e7 (float16) lies beyond the output dtype: stored as +inf
    with converged = False (it used to report converged = True)."""
    big = 1e30 if dtype == torch.float32 else 1e4
    scale = 1e-10 if dtype == torch.float32 else 1e-3
    v = torch.zeros(batch, 2, d, dtype=F64)
    v[:, :, 0] = big
    v[:, 1, 1] = 1.0
    A = scale * torch.eye(d, dtype=F64).expand(batch, 2, d, d)
    exact = probreg.huber_fuse(v, A, delta=math.inf)
    assert exact.converged.all() and (exact.y[:, 0] > torch.finfo(dtype).max).all()
    out = probreg.huber_fuse(v.to(dtype), A.to(dtype), delta=math.inf)
    assert torch.isinf(out.y[:, 0]).all()
    assert not out.converged.any()


def test_fuse_d_above_3_has_the_same_rules():
    p = fc.random_problems(4, 3, 4, seed=60)
    v, A, w = p["v"], p["A"], p["weight"]
    with time_limit(120):
        assert probreg.huber_fuse(v, A, w, tol=0, max_iter=2**30).converged.all()
    negative = w.clone()
    negative[0, 0] = -1.0
    with pytest.raises(ValueError, match="weight must be >= 0"):
        probreg.huber_fuse(v, A, negative)


# ---------------------------------------------------------------- normalisers over the whole delta range
def _mp_log_moment(n: int, delta: float):
    """log int_0^inf r^n exp(-h_delta(r)) dr by mpmath quadrature (50 digits), each piece
    substituted to unit scale: inside r = delta s, outside r = delta + t / delta."""
    import mpmath

    with mpmath.workdps(50):
        dl = mpmath.mpf(delta)
        if delta > 50:  # the inside piece is the whole Gaussian moment (the rest is < e^-1250)
            inside = mpmath.quad(lambda r: r**n * mpmath.exp(-r * r / 2), [0, 1, 10, mpmath.inf])
        else:
            inside = dl ** (n + 1) * mpmath.quad(lambda s: s**n * mpmath.exp(-dl * dl * s * s / 2), [0, 1])
        outside = mpmath.exp(-dl * dl / 2) / dl * mpmath.quad(lambda t: (dl + t / dl) ** n * mpmath.exp(-t),
                                                              [0, 1, 10, mpmath.inf])
        return mpmath.log(inside + outside)


DELTAS = [1e-300, 1e-200, 1e-155, 1e-154, 1e-153, 1e-20, 1e-3, 0.3, 1.0, 3.0, 10.0, 40.0, 1e3, 1e20, 1e154,
          1.4e154, 1e155, 1e200, 1e300]


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_normalisers_match_quadrature_for_every_delta(d):
    """huber_log_normalizer was NaN for 1e155 <= delta < inf and huber_variance_factor
    raised OverflowError for delta <= 1e-154; both are now exact (kappa is +inf exactly
    where it exceeds the float range)."""
    import mpmath

    log_sphere = math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)
    for delta in DELTAS:
        log_c = probreg.huber_log_normalizer(d, delta)
        expected = log_sphere + float(_mp_log_moment(d - 1, delta))
        assert log_c == pytest.approx(expected, rel=1e-13, abs=1e-13), delta
        kappa = probreg.huber_variance_factor(d, delta)
        log_kappa = _mp_log_moment(d + 1, delta) - _mp_log_moment(d - 1, delta) - mpmath.log(d)
        if log_kappa > math.log(torch.finfo(F64).max):
            assert kappa == math.inf, delta
        else:
            assert kappa == pytest.approx(float(mpmath.exp(log_kappa)), rel=1e-12), delta
    gaussian = 0.5 * d * math.log(2 * math.pi)
    assert probreg.huber_log_normalizer(d, math.inf) == pytest.approx(gaussian, rel=1e-15)


def test_distribution_and_normalised_losses_finite_for_huge_delta():
    loc = torch.zeros(2, dtype=F64)
    gaussian_entropy = 0.5 * 2 * (1 + math.log(2 * math.pi))  # A = I
    for delta in (1e155, 1e200, 1e300):
        entropy = probreg.HuberL2(loc, raw=torch.zeros(3, dtype=F64), delta=delta, theta=1.0).entropy()
        # raw = 0 gives A = g(0) I = exp(-1) I (theta = 1): entropy = Gaussian + 2
        assert float(entropy) == pytest.approx(gaussian_entropy + 2.0, rel=1e-12)
        pred, target = torch.randn(4, 5, dtype=F64), torch.randn(4, 2, dtype=F64)
        loss = probreg.huber_nll(pred, target, delta=1e150)
        assert torch.isfinite(loss)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.ones(2, 2), torch.tensor(1.0 + 1j), "1", None, True])
def test_normalisers_name_delta(bad):
    for fn in (probreg.huber_log_normalizer, probreg.huber_variance_factor):
        with pytest.raises(ValueError, match="delta"):
            fn(2, bad)


# ---------------------------------------------------------------- the public functions, case by case
def _pred_target(n=4, d=2):
    return torch.randn(n, d + d * (d + 1) // 2, dtype=F64), torch.randn(n, d, dtype=F64)


def _fuse_inputs():
    p = fc.random_problems(3, 4, 2, seed=70)
    return p["v"], p["A"], p["weight"]


# (callable, exception type, regex that names the offending argument)
ISSUE_CASES = {
    "pack_sym int": (lambda: probreg.pack_sym(torch.ones(3, 2, 2, dtype=torch.int64)), TypeError, "B must be a floating"),
    "pack_sym bool": (lambda: probreg.pack_sym(torch.ones(2, 2, dtype=torch.bool)), TypeError, "B must be a floating"),
    "unpack_sym int": (lambda: probreg.unpack_sym(torch.tensor([2, 3, 4])), TypeError, "raw must be a floating"),
    "unpack_sym bool": (lambda: probreg.unpack_sym(torch.ones(3, dtype=torch.bool)), TypeError, "raw must be"),
    "pack_sym list": (lambda: probreg.pack_sym([[1.0, 2.0], [3.0, 4.0]]), TypeError, "B must be a torch.Tensor"),
    "unpack_sym list": (lambda: probreg.unpack_sym([1.0, 2.0, 3.0]), TypeError, "raw must be a torch.Tensor"),
    "RBFFusion boxes (B, T, 3)": (
        lambda: wiberg.RBFFusion(2)(torch.rand(1, 2, 3, dtype=F64), torch.rand(1, 2, 3, dtype=F64), torch.rand(1, dtype=F64)),
        ValueError, r"boxes must have shape \(B, num_trackers, 4\)"),
    "RBFFusion(0)": (lambda: wiberg.RBFFusion(0), ValueError, "num_trackers must be an int >= 1"),
    "RBFFusion(-1)": (lambda: wiberg.RBFFusion(-1), ValueError, "num_trackers must be an int >= 1"),
    "spd_remap theta=True": (lambda: probreg.spd_remap(torch.randn(2, 2, 2), True), ValueError, "theta"),
    "spd_from_raw theta=True": (lambda: probreg.spd_from_raw(torch.randn(2, 3), True), ValueError, "theta"),
    "huber_nll theta=True": (lambda: probreg.huber_nll(*_pred_target(), theta=True), ValueError, "theta"),
    "huber_fuse max_iter=True": (lambda: probreg.huber_fuse(*_fuse_inputs(), max_iter=True), ValueError, "max_iter"),
    "fuse_predictions max_iter=True": (
        lambda: probreg.fuse_predictions(torch.randn(2, 3, 5, dtype=F64), max_iter=True), ValueError, "max_iter"),
    "huber_nll complex weight": (
        lambda: probreg.huber_nll(*_pred_target(), weight=torch.ones(4, dtype=torch.complex64)), TypeError, "weight"),
    "huber_fuse complex weight": (
        lambda: probreg.huber_fuse(_fuse_inputs()[0], _fuse_inputs()[1], torch.ones(3, 4, dtype=torch.complex128)),
        TypeError, "weight"),
    "argmin max_iter=-1": (
        lambda: wiberg.argmin(lambda y: (y**2).sum(-1), torch.ones(2, 2, dtype=F64), max_iter=-1), ValueError, "max_iter"),
    "argmin tol=-1": (
        lambda: wiberg.argmin(lambda y: (y**2).sum(-1), torch.ones(2, 2, dtype=F64), tol=-1.0), ValueError, "tol"),
    "argmin tol=nan": (
        lambda: wiberg.argmin(lambda y: (y**2).sum(-1), torch.ones(2, 2, dtype=F64), tol=math.nan), ValueError, "tol"),
    "trust_region_newton max_iter=-5": (
        lambda: wiberg.trust_region_newton(lambda y: (y**2).sum(-1), torch.ones(2, 2, dtype=F64), max_iter=-5),
        ValueError, "max_iter"),
    "lstsq rcond=-1": (lambda: wiberg.lstsq(torch.randn(4, 2, dtype=F64), torch.randn(4, dtype=F64), rcond=-1.0),
                       ValueError, "rcond"),
    "lstsq rcond=nan": (lambda: wiberg.lstsq(torch.randn(4, 2, dtype=F64), torch.randn(4, dtype=F64), rcond=math.nan),
                        ValueError, "rcond"),
    "lstsq A (6, 0)": (lambda: wiberg.lstsq(torch.randn(6, 0, dtype=F64), torch.randn(6, dtype=F64)), ValueError,
                       r"A must have shape \(\.\.\., m, n\) with m, n >= 1"),
    "lstsq A (0, 0)": (lambda: wiberg.lstsq(torch.randn(0, 0, dtype=F64), torch.randn(0, dtype=F64)), ValueError,
                       r"A must have shape"),
    "lstsq b list": (lambda: wiberg.lstsq(torch.randn(4, 2, dtype=F64), [1.0, 2.0, 3.0, 4.0]), TypeError,
                     "b must be a torch.Tensor"),
    "huber_fusion_energy delta<0": (
        lambda: wiberg.huber_fusion_energy(torch.randn(2, 2, dtype=F64), torch.randn(2, 3, 2, dtype=F64),
                                           torch.eye(2, dtype=F64).expand(2, 3, 2, 2), torch.ones(2, 3, dtype=F64), -1.0),
        ValueError, "delta"),
    "huber_fusion_energy A (B, n-1, d, d)": (
        lambda: wiberg.huber_fusion_energy(torch.randn(2, 2, dtype=F64), torch.randn(2, 3, 2, dtype=F64),
                                           torch.eye(2, dtype=F64).expand(2, 2, 2, 2), torch.ones(2, 3, dtype=F64), 1.0),
        ValueError, r"A must have shape \(B, 3, 2, 2\)"),
    "huber_fusion_energy w (B, n+1)": (
        lambda: wiberg.huber_fusion_energy(torch.randn(2, 2, dtype=F64), torch.randn(2, 3, 2, dtype=F64),
                                           torch.eye(2, dtype=F64).expand(2, 3, 2, 2), torch.ones(2, 4, dtype=F64), 1.0),
        ValueError, r"w must have shape \(B, 3\)"),
    "huber_nll weight (N, 1)": (lambda: probreg.huber_nll(*_pred_target(), weight=torch.ones(4, 1)), ValueError,
                                r"weight must be broadcastable to the batch shape"),
    "huber_nll weight (N + 1,)": (lambda: probreg.huber_nll(*_pred_target(), weight=torch.ones(5)), ValueError,
                                  r"weight must be broadcastable to the batch shape"),
    "huber_nll family=['huber']": (lambda: probreg.huber_nll(*_pred_target(), family=["huber"]), ValueError, "family"),
    "HuberNLLLoss family=['huber']": (lambda: probreg.HuberNLLLoss(family=["huber"]), ValueError, "family"),
    "fuse_predictions M list": (
        lambda: probreg.fuse_predictions(torch.randn(2, 3, 5, dtype=F64), transforms=([[1.0, 0.0], [0.0, 1.0]], None)),
        TypeError, "M must be a torch.Tensor"),
    "fuse_predictions t list": (
        lambda: probreg.fuse_predictions(torch.randn(2, 3, 5, dtype=F64), transforms=(torch.eye(2, dtype=F64), [1.0, 2.0])),
        TypeError, "t must be a torch.Tensor"),
    "sample_proposal sigmas=None": (lambda: ebm.sample_proposal(torch.randn(3, 2), None, 4), ValueError, "sigmas"),
    "sample_proposal complex sigmas": (
        lambda: ebm.sample_proposal(torch.randn(3, 2), torch.ones(2, dtype=torch.complex64), 4), ValueError, "sigmas"),
    "gum.em iters=True": (lambda: gum.em(torch.randn(8, 2), iters=True), ValueError, "iters"),
    "huber_fuse delta=True": (lambda: probreg.huber_fuse(*_fuse_inputs(), delta=True), ValueError, "delta"),
    "huber_nll normalized='no'": (lambda: probreg.huber_nll(*_pred_target(), normalized="no"), ValueError, "normalized"),
}


# probreg.nn and the region-radius functions: the same table (callable, exception type, regex)
def _head(**kwargs):
    return probreg.PredictionHead(4, 2, 2, **kwargs)


def _mixture_inputs(n=3):
    pred, target = _pred_target(n)
    return probreg.nn.OutlierMixtureNLLLoss(0.1, -1.4), pred, target


NN_CASES = {
    # raw_for_precision validated nothing: True and "1" gave 1.0, 0 a bare "math domain error", NaN a NaN
    "raw_for_precision precision=True": (lambda: probreg.nn.raw_for_precision(True, 0.5), ValueError, "precision"),
    "raw_for_precision precision='1'": (lambda: probreg.nn.raw_for_precision("1", 0.5), ValueError, "precision"),
    "raw_for_precision precision=0": (lambda: probreg.nn.raw_for_precision(0, 0.5), ValueError, "precision"),
    "raw_for_precision precision=nan": (lambda: probreg.nn.raw_for_precision(math.nan, 0.5), ValueError, "precision"),
    "raw_for_precision theta=0": (lambda: probreg.nn.raw_for_precision(1.0, 0), ValueError, "theta"),
    "raw_for_precision theta=nan": (lambda: probreg.nn.raw_for_precision(1.0, math.nan), ValueError, "theta"),
    # OutlierMixtureNLLLoss passed weight on unchecked: negative and complex weights were used
    # (complex with a warning), a list was accepted, wrong shapes gave raw expand errors
    "OutlierMixtureNLLLoss negative weight": (
        lambda: (lambda L, p, t: L(p, t, -torch.ones(3, dtype=F64)))(*_mixture_inputs()), ValueError, "weight must be >= 0"),
    "OutlierMixtureNLLLoss complex weight": (
        lambda: (lambda L, p, t: L(p, t, torch.ones(3, dtype=torch.complex64)))(*_mixture_inputs()), TypeError, "weight"),
    "OutlierMixtureNLLLoss weight (N, 1)": (
        lambda: (lambda L, p, t: L(p, t, torch.ones(3, 1)))(*_mixture_inputs()), ValueError, "weight must be broadcastable"),
    "OutlierMixtureNLLLoss weight (N + 1,)": (
        lambda: (lambda L, p, t: L(p, t, torch.ones(4)))(*_mixture_inputs()), ValueError, "weight must be broadcastable"),
    "OutlierMixtureNLLLoss weight list": (
        lambda: (lambda L, p, t: L(p, t, [1.0, 1.0, 1.0]))(*_mixture_inputs()), ValueError, "weight"),
    "OutlierMixtureNLLLoss reduction=['mean']": (
        lambda: probreg.nn.OutlierMixtureNLLLoss(0.1, 0.0, reduction=["mean"]), ValueError, "reduction"),
    # PredictionHead: unclear errors or bad values accepted
    "PredictionHead covariance=['full']": (lambda: _head(covariance=["full"]), ValueError, "covariance"),  # was unhashable
    "PredictionHead init_location=True": (lambda: _head(init_location=True), TypeError, "init_location"),  # was accepted
    "PredictionHead init_location int tensor": (
        lambda: _head(init_location=torch.ones(2, 2, dtype=torch.int64)), TypeError, "init_location"),
    "PredictionHead init_precision=1e-320": (lambda: _head(init_precision=1e-320), ValueError, "init_precision"),  # 1/p = inf
    "PredictionHead init_precision=1e300": (lambda: _head(init_precision=1e300), ValueError, "init_precision"),
    "PredictionHead dtype=int64": (lambda: _head(dtype=torch.int64), TypeError, "dtype"),  # a torch autograd error
    "PredictionHead features int": (lambda: _head()(torch.ones(3, 4, dtype=torch.int64)), TypeError, "features"),
    "PredictionHead features float64 on a float32 head": (
        lambda: _head()(torch.ones(3, 4, dtype=F64)), TypeError, "features"),  # was a bare mat1/mat2 error
    "PredictionHead features list": (lambda: _head()([[1.0, 2.0, 3.0, 4.0]]), TypeError, "features"),
    "PredictionHead features on meta": (lambda: _head()(torch.ones(3, 4, device="meta")), ValueError, "features"),
    "PredictionHead location int": (
        lambda: _head()(torch.ones(3, 4), torch.ones(3, 2, 2, dtype=torch.int64)), TypeError, "location"),
    "PredictionHead location batch mismatch": (
        lambda: _head()(torch.ones(3, 4), torch.ones(4, 2, 2)), ValueError, "location"),  # was a bare broadcast error
    "PredictionHead location on meta": (
        lambda: _head()(torch.ones(3, 4), torch.ones(3, 2, 2, device="meta")), ValueError, "location"),
    "huber_region_radius d=True": (lambda: probreg.huber_region_radius(True, 1.0, 0.5), ValueError, "d must"),
    "huber_region_radius p=nan": (lambda: probreg.huber_region_radius(2, 1.0, math.nan), ValueError, "p must"),
    "huber_region_radius delta=nan": (lambda: probreg.huber_region_radius(2, math.nan, 0.5), ValueError, "delta must"),
    "huber_radius_cdf s=True": (lambda: probreg.huber_radius_cdf(2, 1.0, True), ValueError, "s must"),
}

ISSUE_CASES.update(NN_CASES)

@pytest.mark.parametrize("case", list(ISSUE_CASES))
def test_issue_case_raises_a_clear_error(case):
    fn, exc, pattern = ISSUE_CASES[case]
    with pytest.raises(exc, match=pattern):
        fn()


def test_numpy_scalars_are_accepted_everywhere():
    """np.float32 theta (spd ops) and np.int64 max_iter (huber_fuse) were rejected."""
    B = torch.randn(4, 2, 2, dtype=F64)
    raw = probreg.pack_sym(B)
    for theta in (np.float32(0.5), np.float64(0.5), np.int64(1)):
        torch.testing.assert_close(probreg.spd_remap(B, theta), probreg.spd_remap(B, float(theta)), rtol=0, atol=0)
        torch.testing.assert_close(probreg.spd_from_raw(raw, theta), probreg.spd_from_raw(raw, float(theta)), rtol=0, atol=0)
    v, A, w = _fuse_inputs()
    for max_iter in (np.int64(5), np.int32(5)):
        out = probreg.huber_fuse(v, A, w, np.float32(1.0), max_iter=max_iter, tol=np.float64(1e-6))
        torch.testing.assert_close(out.y, probreg.huber_fuse(v, A, w, 1.0, max_iter=5).y, rtol=0, atol=0)
    pred, target = _pred_target()
    torch.testing.assert_close(probreg.huber_nll(pred, target, np.float32(0.5), np.float64(0.3)),
                               probreg.huber_nll(pred, target, float(np.float32(0.5)), 0.3), rtol=0, atol=0)


# ---------------------------------------------------------------- one rule for negative weights
def test_negative_weights_one_rule():
    """Weights are >= 0 everywhere. A negative weight is a ValueError where checking costs
    nothing (CPU tensors, eager); where the values are not available to check (inside
    torch.compile or torch.func transforms, CUDA without a host sync) the affected result
    is NaN. (huber_nll used to accept them while fusion rejected them.)"""
    pred, target = _pred_target()
    weight = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        probreg.huber_nll(pred, target, weight=weight)
    v, A, w = _fuse_inputs()
    w = w.clone()
    w[1, 2] = -0.5
    with pytest.raises(ValueError, match="weight must be >= 0"):
        probreg.huber_fuse(v, A, w)
    with pytest.raises(ValueError, match="w must be >= 0"):
        wiberg.huber_fusion_energy(torch.zeros(3, 2, dtype=F64), v, A, w, 1.0)
    # Under torch.func the weight values are not inspected: NaN instead of an error.
    per_target = torch.func.vmap(lambda p, t, w_: probreg.huber_nll(p, t, weight=w_, reduction="sum"))(
        pred.unsqueeze(1), target.unsqueeze(1), weight.unsqueeze(1))
    assert torch.isnan(per_target[1]) and torch.isfinite(per_target[[0, 2, 3]]).all()


def test_negative_weight_gives_nan_under_torch_compile():
    pred, target = _pred_target()
    weight = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=F64)
    compiled = torch.compile(lambda p, t, w: probreg.huber_nll(p, t, weight=w, reduction="none"), fullgraph=True,
                             backend="aot_eager")
    loss = compiled(pred, target, weight)
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2, 3]]).all() and loss[3] == 0


# ---------------------------------------------------------------- the empty-batch mean
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_mean_over_an_empty_batch_is_zero(weighted, normalized):
    """A zero total weight gives a mean of 0 (README "Errors and guarantees"): an empty
    batch with or without weights (it was NaN without and 0 with), and all weights 0."""
    pred, target = _pred_target(0)
    pred.requires_grad_(True)
    weight = torch.ones(0, dtype=F64) if weighted else None
    loss = probreg.huber_nll(pred, target, weight=weight, normalized=normalized)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert pred.grad.shape == pred.shape
    pred, target = _pred_target(3)
    assert float(probreg.huber_nll(pred, target, weight=torch.zeros(3, dtype=F64), normalized=normalized)) == 0.0


def test_nn_and_region_numbers_accept_numpy_scalars():
    assert probreg.huber_region_radius(np.int64(2), np.float32(1.0), np.float64(0.5)) == probreg.huber_region_radius(
        2, float(np.float32(1.0)), 0.5)
    assert probreg.huber_radius_cdf(np.int32(3), np.float64(0.7), np.float32(1.5)) == probreg.huber_radius_cdf(
        3, 0.7, float(np.float32(1.5)))
    assert probreg.nn.raw_for_precision(np.float32(0.25), np.float64(0.5)) == probreg.nn.raw_for_precision(0.25, 0.5)
    head = probreg.PredictionHead(np.int64(4), np.int32(2), np.int64(2), init_precision=np.float32(2.0),
                                  theta=np.float64(0.3), delta=np.float32(1.5), init_location=np.float64(0.5))
    assert (head.in_features, head.num_targets, head.dim, head.init_precision) == (4, 2, 2, 2.0)
    loss = probreg.nn.OutlierMixtureNLLLoss(np.float32(0.25), np.float64(-1.0))
    assert loss.outlier_fraction == 0.25


def test_huber_l2_region_radius_of_a_number():
    """HuberL2.region_radius(0.9) raised NameError (numbers no longer imported after a merge)."""
    dist = probreg.HuberL2(torch.zeros(2, dtype=F64), raw=torch.tensor([1.0, 0.0, 1.0], dtype=F64), delta=0.7, theta=0.1)
    assert dist.region_radius(0.9).item() == probreg.huber_region_radius(2, 0.7, 0.9)
    assert dist.region_radius(np.float32(0.5)).item() == probreg.huber_region_radius(2, 0.7, float(np.float32(0.5)))


def test_prediction_head_location_dtypes_promote_alike():
    """A float64 location on a float32 head: the 'mu' layout promoted to float64 while 'v'
    raised a bare matmul dtype error; both now compute in the wider dtype (as huber_nll)."""
    features, location = torch.randn(3, 4), torch.randn(3, 2, 2, dtype=F64)
    for parameterization in ("v", "mu"):
        head = probreg.PredictionHead(4, 2, 2, parameterization=parameterization)
        with torch.no_grad():
            head.linear.weight.normal_()
        out = head(features, location)
        assert out.dtype == F64
        head64 = probreg.PredictionHead(4, 2, 2, parameterization=parameterization, dtype=F64)
        with torch.no_grad():
            head64.linear.weight.copy_(head.linear.weight)
            head64.linear.bias.copy_(head.linear.bias)
        torch.testing.assert_close(out, head64(features.double(), location), rtol=1e-6, atol=1e-6)


def test_outlier_mixture_huge_outlier_log_density_in_float32():
    """log(eps) + log u beyond float32's range: the per-target loss is -inf there (the
    constant rounded to the loss dtype), not an overflow RuntimeError."""
    loss = probreg.nn.OutlierMixtureNLLLoss(0.1, 1e300, reduction="none")
    pred, target = _pred_target()
    out = loss(pred.float(), target.float())
    assert out.dtype == torch.float32 and bool((out == -math.inf).all())

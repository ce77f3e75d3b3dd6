"""The CUDA kernels themselves, run on the host (tests/host_emulated_kernels.py).

What this checks that test_cuda_numerics_on_cpu.py (the float32 policy's header math)
cannot: the kernels' own code, i.e. the shared-memory tiling and its barriers, the tile
and grid-stride loops (the emulated grid is capped so they iterate), partial last tiles,
the (dtype, d, family, covariance) dispatch, storage conversions of float16/bfloat16,
the float32 loss storage of the half types, a broadcast (stride 0) upstream gradient, an
absent grad_target, and that no kernel reads or writes outside its buffers or leaves an
output element unwritten. Expected values: the CPU ops in float64 on the same (rounded)
inputs, which test_spd, test_nll and test_fuse check against probreg.reference; the
float64 forward results are also checked against probreg.reference directly.

Skipped where no C++ compiler or CUDA toolkit headers exist; no GPU is needed.
"""
import shutil

import pytest
import torch

from helpers import random_rotation, with_eigenvalues
from host_emulated_kernels import HostEmulatedKernels, build, cuda_include_dir
from probreg import reference

pytestmark = pytest.mark.skipif(
    cuda_include_dir() is None or shutil.which("g++") is None,
    reason="needs g++ and the CUDA toolkit headers")

ops = torch.ops.probreg
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# Max error relative to each item's largest expected magnitude: output rounding plus the
# compute type's error (float32: mixed policy; half types: float).
TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 8e-3, torch.bfloat16: 5e-2}
FAMILIES = {"huber": 0, "gauss": 1, "laplace": 2, "charbonnier": 3}
COVARIANCES = {"identity": 0, "diagonal": 1, "full": 2}
# 1 item; a full tile plus a partial one; many tiles through a grid of 3 blocks.
SIZES = [1, 300, 1000]
MAX_BLOCKS = 3
THETA = 1.0
DELTA = 1.0


@pytest.fixture(scope="module")
def emu():
    kernels = HostEmulatedKernels(build())
    kernels.set_schedule(max_blocks=MAX_BLOCKS, order="rotating")
    return kernels


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_close(actual, expected, dtype, what="", floor=1e-6):
    """Per item (first dim): max |actual - expected| <= TOL * max(max |expected|, floor)."""
    a = actual.double().reshape(actual.shape[0], -1)
    e = expected.double().reshape(expected.shape[0], -1)
    assert torch.isfinite(a).all(), f"{what}: non-finite output"
    scale = e.abs().amax(-1).clamp_min(floor)
    err = ((a - e).abs().amax(-1) / scale).max().item()
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:.1g}"


def rounded(t, dtype):
    """t in `dtype`, and the same values in float64 (what the expected values are of)."""
    r = t.to(dtype)
    return r, r.double()


def symmetric_inputs(n, d, seed, ties=True):
    """Symmetric matrices with eigenvalues in [-4, 3], gaps >= 0.1 (symeig's gradient
    scales with 1/gap); with `ties`, the first few are multiples of I (exactly repeated
    eigenvalues: the tie branches of spd_remap)."""
    g = gen(seed)
    base = torch.linspace(-4.0, 3.0, d, dtype=torch.float64) if d > 1 else torch.tensor([0.5], dtype=torch.float64)
    l = base + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64) * (7.0 / max(d, 2))
    B = with_eigenvalues(l, g)
    ties = min(n, 4) if ties else 0
    B[:ties] = torch.eye(d, dtype=torch.float64) * torch.linspace(-2.0, 1.0, ties, dtype=torch.float64).view(-1, 1, 1)
    return B


# ---- symeig, spd_remap, spd_from_raw ----

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_spd_remap_forward_and_backward(emu, dtype, d, n):
    B, B64 = rounded(symmetric_inputs(n, d, seed=n + d), dtype)
    gA, gA64 = rounded(torch.randn(n, d, d, generator=gen(1), dtype=torch.float64), dtype)
    assert_close(emu.spd_remap(B, THETA), ops.spd_remap(B64, THETA), dtype, "spd_remap")
    assert_close(emu.spd_remap_backward(gA, B, THETA), ops._spd_remap_backward(gA64, B64, THETA), dtype,
                 "spd_remap backward")
    if dtype == torch.float64:
        assert_close(emu.spd_remap(B, THETA), reference.spd_remap(B64, THETA), dtype, "spd_remap vs reference")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_spd_from_raw_forward_and_backward(emu, dtype, d, n):
    P = d * (d + 1) // 2
    raw, raw64 = rounded(torch.randn(n, P, generator=gen(n * 7 + d), dtype=torch.float64), dtype)
    gA, gA64 = rounded(torch.randn(n, d, d, generator=gen(2), dtype=torch.float64), dtype)
    assert_close(emu.spd_from_raw(raw, d, THETA), ops.spd_from_raw(raw64, THETA), dtype, "spd_from_raw")
    assert_close(emu.spd_from_raw_backward(gA, raw, THETA), ops._spd_from_raw_backward(gA64, raw64, THETA), dtype,
                 "spd_from_raw backward")
    if dtype == torch.float64:
        assert_close(emu.spd_from_raw(raw, d, THETA), reference.spd_from_raw(raw64, THETA), dtype,
                     "spd_from_raw vs reference")


@pytest.mark.parametrize("n", [1, 300])
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_symeig_forward_and_backward(emu, dtype, d, n):
    B, B64 = rounded(symmetric_inputs(n, d, seed=3 * n + d, ties=False), dtype)
    L, V = emu.symeig(B)
    L64, V64 = torch.linalg.eigh(B64)
    assert_close(L, L64, dtype, "eigenvalues")
    # Eigenvectors up to sign: V diag(L) V^T reproduces B, and V is orthonormal.
    assert_close((V.double() * L.double().unsqueeze(-2)) @ V.double().mT, B64, dtype, "V diag(L) V^T")
    assert_close(V.double().mT @ V.double(), torch.eye(d, dtype=torch.float64).expand_as(B64), dtype, "V^T V")
    # Backward at the kernel's own (L, V), against the CPU op at the same values.
    gL, gL64 = rounded(torch.randn(L.shape, generator=gen(4), dtype=torch.float64), dtype)
    gV, gV64 = rounded(torch.randn(V.shape, generator=gen(5), dtype=torch.float64), dtype)
    expected = ops._symeig_backward(gL64, gV64, L.double(), V.double())
    assert_close(emu.symeig_backward(gL, gV, L, V), expected, dtype, "symeig backward")


# ---- huber_nll ----

def nll_inputs(n, d, covariance, dtype, seed):
    W = d + {"identity": 0, "diagonal": d, "full": d * (d + 1) // 2}[covariance]
    g = gen(seed)
    pred = torch.randn(n, W, generator=g, dtype=torch.float64)
    target = pred[:, :d] + 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return rounded(pred, dtype) + rounded(target, dtype)


@pytest.mark.parametrize("mu", [False, True])
@pytest.mark.parametrize("covariance", list(COVARIANCES))
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_huber_nll_every_family_and_structure(emu, dtype, d, family, covariance, mu):
    n = 300
    pred, pred64, target, target64 = nll_inputs(n, d, covariance, dtype, seed=d + 10 * len(family))
    args = (DELTA, THETA, FAMILIES[family], COVARIANCES[covariance], mu)
    loss = emu.huber_nll(pred, target, *args)
    assert loss.dtype == dtype
    # The loss is a sum of O(1) terms (-log|A| + rho) that may cancel: error floor 1.
    assert_close(loss.unsqueeze(-1), ops.huber_nll(pred64, target64, *args).unsqueeze(-1), dtype, "loss", floor=1.0)
    if dtype == torch.float64:
        # The op's loss omits the normalising constant log c_d(delta); reference includes it.
        ref = reference.huber_nll_reference(pred64, target64, DELTA, THETA, parameterization="mu" if mu else "v",
                                            family=family, covariance=covariance, reduction="none")
        const = ops._log_normalizer(d, family, DELTA).item()
        assert_close((loss + const).unsqueeze(-1), ref.unsqueeze(-1), dtype, "loss vs reference", floor=1.0)
    grad_loss, grad_loss64 = rounded(torch.rand(n, generator=gen(6), dtype=torch.float64) + 0.5, dtype)
    gp, gt = emu.huber_nll_backward(grad_loss, pred, target, *args, need_grad_target=True)
    egp, egt = ops._huber_nll_backward(grad_loss64, pred64, target64, *args, True)
    assert_close(gp, egp, dtype, "grad_pred")
    assert_close(gt, egt, dtype, "grad_target")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_nll_sizes_dtypes_broadcast_gradient(emu, dtype, d, n):
    """Full covariance (the heaviest kernel) over sizes and storage types; the half
    types' loss and upstream gradient are float32; grad_loss broadcast with stride 0;
    grad_target not requested."""
    pred, pred64, target, target64 = nll_inputs(n, d, "full", dtype, seed=n + d)
    args = (DELTA, THETA, FAMILIES["huber"], COVARIANCES["full"], False)
    loss = emu.huber_nll(pred, target, *args)
    assert loss.dtype == emu.loss_dtype(dtype)
    # The loss is a sum of O(1) terms (-log|A| + rho) that may cancel: error floor 1.
    assert_close(loss.unsqueeze(-1), ops.huber_nll(pred64, target64, *args).unsqueeze(-1), dtype, "loss", floor=1.0)
    grad_loss = torch.tensor([0.75], dtype=emu.loss_dtype(dtype))
    gp, gt = emu.huber_nll_backward(grad_loss, pred, target, *args, need_grad_target=False)
    assert gt is None
    egp, _ = ops._huber_nll_backward(torch.full((n,), 0.75, dtype=torch.float64), pred64, target64, *args, False)
    assert_close(gp, egp, dtype, "grad_pred")


# ---- special matrices in one batch ----

def with_special_rows(raw, d):
    """raw (n, P) packed B rows (probreg's layout: the diagonal first) with rows 3..7 made
    special: B = 2.5 I, B = 0, a NaN off the diagonal, +Inf on it, -Inf off it. At d = 3
    the float32 kernels send those to symeig3_mixed_special, out of line; at d = 2 the
    Inf on the diagonal once left finite zeros in A."""
    raw = raw.clone()
    raw[3:5] = 0.0
    raw[3, :d] = 2.5
    raw[5, d] = float("nan")
    raw[6, 0] = float("inf")
    raw[7, -1] = -float("inf")
    return raw


def assert_rows_match(actual, expected, dtype, what, floor=1e-6):
    """The non-finite rows of `expected` are NaN in every entry of `actual` (items with a
    NaN or Inf input), the others agree within TOL."""
    bad = ~torch.isfinite(expected.reshape(expected.shape[0], -1)).all(-1)
    assert bad[5:8].all() and not bad[:5].any(), f"{what}: the CPU op's non-finite rows"
    assert torch.isnan(actual[bad]).all(), f"{what}: a NaN or Inf input must give NaN outputs"
    assert_close(actual[~bad], expected[~bad], dtype, what, floor=floor)


@pytest.mark.parametrize("d", [2, 3])
def test_special_matrices_float32(emu, d):
    n, P, dtype = 300, d * (d + 1) // 2, torch.float32
    raw64 = with_special_rows(torch.randn(n, P, generator=gen(40 + d), dtype=torch.float64), d)
    raw = raw64.to(dtype)
    gA, gA64 = rounded(torch.randn(n, d, d, generator=gen(41), dtype=torch.float64), dtype)
    assert_rows_match(emu.spd_from_raw(raw, d, THETA), ops.spd_from_raw(raw64, THETA), dtype, "spd_from_raw")
    assert_rows_match(emu.spd_from_raw_backward(gA, raw, THETA), ops._spd_from_raw_backward(gA64, raw64, THETA),
                      dtype, "spd_from_raw backward")
    B64 = symmetric_inputs(n, d, seed=44 + d, ties=False)
    B64[3], B64[4] = 2.5 * torch.eye(d, dtype=torch.float64), 0.0
    B64[5, 0, 1] = B64[5, 1, 0] = float("nan")
    B64[6, 0, 0] = float("inf")
    B64[7, 0, d - 1] = B64[7, d - 1, 0] = -float("inf")
    B = B64.to(dtype)
    assert_rows_match(emu.spd_remap(B, THETA), ops.spd_remap(B64, THETA), dtype, "spd_remap")
    assert_rows_match(emu.spd_remap_backward(gA, B, THETA), ops._spd_remap_backward(gA64, B64, THETA), dtype,
                      "spd_remap backward")
    pred, pred64, target, target64 = nll_inputs(n, d, "full", dtype, seed=42 + d)
    pred64[:, d:] = raw64
    pred = pred64.to(dtype)
    args = (DELTA, THETA, FAMILIES["huber"], COVARIANCES["full"], True)
    assert_rows_match(emu.huber_nll(pred, target, *args).unsqueeze(-1),
                      ops.huber_nll(pred64, target64, *args).unsqueeze(-1), dtype, "loss", floor=1.0)
    grad_loss, grad_loss64 = rounded(torch.rand(n, generator=gen(43), dtype=torch.float64) + 0.5, dtype)
    gp, gt = emu.huber_nll_backward(grad_loss, pred, target, *args, need_grad_target=True)
    egp, egt = ops._huber_nll_backward(grad_loss64, pred64, target64, *args, True)
    assert_rows_match(gp, egp, dtype, "grad_pred")
    assert_rows_match(gt, egt, dtype, "grad_target")


# ---- huber_fuse ----

def fuse_inputs(problems, n, d, dtype, seed):
    """A_i = U diag(s) V^T with s ~ U(0.5, 2) (well conditioned: the half types solve in
    float, with a float rank floor), v_i ~ N(0, spread^2), w_i ~ U(0.2, 1), one weight 0.
    The half types get a spread small against delta: their y is rounded to 8-11 bits, and
    the implicit gradient there is only comparable away from the kinks of the Huber loss
    (in d = 1 two estimates both past delta leave a zero Hessian)."""
    g = gen(seed)
    spread = 2.0 if dtype in (torch.float64, torch.float32) else 0.3
    s = 0.5 + 1.5 * torch.rand(problems * n, d, generator=g, dtype=torch.float64)
    U, V = random_rotation(problems * n, d, g), random_rotation(problems * n, d, g)
    A = ((U * s.unsqueeze(-2)) @ V.mT).reshape(problems, n, d, d)
    v = spread * torch.randn(problems, n, d, generator=g, dtype=torch.float64)
    w = 0.2 + 0.8 * torch.rand(problems, n, generator=g, dtype=torch.float64)
    w[0, 0] = 0.0  # an inactive estimate
    return [rounded(t, dtype) for t in (v, A, w)]


@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("n", [1, 2, 8])
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_huber_fuse_forward_and_backward(emu, dtype, d, n, with_init):
    problems = 300  # > 2 blocks of 128 threads, through a grid of MAX_BLOCKS
    (v, v64), (A, A64), (w, w64) = fuse_inputs(problems, n, d, dtype, seed=d * 10 + n)
    init, init64 = rounded(torch.randn(problems, d, generator=gen(7), dtype=torch.float64), dtype) if with_init \
        else (None, None)
    # The half types compute in float: a tolerance float can reach.
    double_compute = dtype in (torch.float64, torch.float32)
    max_iter, tol = 200, 1e-9 if double_compute else 1e-5
    y, hess, iterations, converged = emu.huber_fuse(v, A, w, init, DELTA, max_iter, tol)
    ey, ehess, eiter, econv = ops.huber_fuse(v64, A64, w64, init64, DELTA, max_iter, tol, 0.0)
    # Problem 0 has no active estimate when n = 1: y = 0, not converged.
    active = (w64 > 0).any(-1)
    assert torch.equal(converged, active) and torch.equal(econv, active)
    assert torch.isnan(y[~active]).all() and torch.isnan(ey[~active]).all()
    assert_close(y[active], ey[active], dtype, "y", floor=1.0)
    assert_close(hess, ehess, dtype, "hessian")
    if double_compute:  # the CPU op's compute type: the same iterations
        assert torch.equal(iterations, eiter)
    gy, gy64 = rounded(torch.randn(problems, d, generator=gen(8), dtype=torch.float64), dtype)
    gv, gA, gw = emu.huber_fuse_backward(gy, y, v, A, w, DELTA, 0.0)
    egv, egA, egw = ops._huber_fuse_backward(gy64, y.double(), v64, A64, w64, DELTA, 0.0)
    assert_close(gv, egv, dtype, "grad_v", floor=1.0)
    assert_close(gA, egA, dtype, "grad_A", floor=1.0)
    assert_close(gw, egw, dtype, "grad_weight", floor=1.0)


@pytest.mark.parametrize("d", [2, 3])
def test_float32_all_double_switch(emu, monkeypatch, d):
    """PROBREG_CUDA_FLOAT32_COMPUTE=double (kernel_api.h) is live at each launch and as
    accurate as the default mixed policy."""
    n = 300
    pred, pred64, target, target64 = nll_inputs(n, d, "full", torch.float32, seed=d)
    raw, raw64 = pred[:, d:].contiguous(), pred64[:, d:].contiguous()
    gA, gA64 = rounded(torch.randn(n, d, d, generator=gen(3), dtype=torch.float64), torch.float32)
    grad_loss, grad_loss64 = rounded(torch.rand(n, generator=gen(4), dtype=torch.float64), torch.float32)
    args = (DELTA, THETA, FAMILIES["huber"], COVARIANCES["full"], False)

    def run():
        return [emu.spd_from_raw(raw, d, THETA), emu.spd_from_raw_backward(gA, raw, THETA),
                emu.huber_nll(pred, target, *args).unsqueeze(-1),
                emu.huber_nll_backward(grad_loss, pred, target, *args, need_grad_target=False)[0]]

    mixed = run()
    monkeypatch.setenv("PROBREG_CUDA_FLOAT32_COMPUTE", "double")
    all_double = run()
    monkeypatch.delenv("PROBREG_CUDA_FLOAT32_COMPUTE")
    assert all(torch.equal(a, b) for a, b in zip(mixed, run()))
    assert any(not torch.equal(a, b) for a, b in zip(mixed, all_double))
    expected = [ops.spd_from_raw(raw64, THETA), ops._spd_from_raw_backward(gA64, raw64, THETA),
                ops.huber_nll(pred64, target64, *args).unsqueeze(-1),
                ops._huber_nll_backward(grad_loss64, pred64, target64, *args, False)[0]]
    floors = [1e-6, 1e-6, 1.0, 1e-6]
    for name, got, want, floor in zip(["A", "grad_raw", "loss", "grad_pred"], all_double, expected, floors):
        assert_close(got, want, torch.float32, name, floor=floor)


# ---- launch-level properties ----

SCHEDULES = [(0, "ascending"), (1, "descending"), (MAX_BLOCKS, "shuffled"), (2, "rotating")]


def launch_level_case(emu, dtype, seed):
    """700 items, d = 3, full covariance: the inputs, and a function that runs
    spd_from_raw, its backward, huber_nll and its backward on them."""
    n, d = 700, 3
    pred, pred64, target, target64 = nll_inputs(n, d, "full", dtype, seed=seed)
    raw = pred[:, d:].contiguous()
    gA = torch.randn(n, d, d, generator=gen(seed + 1)).to(dtype)
    grad_loss = torch.rand(n, generator=gen(seed + 2)).to(emu.loss_dtype(dtype))
    args = (DELTA, THETA, FAMILIES["huber"], COVARIANCES["full"], False)

    def run():
        return [emu.spd_from_raw(raw, d, THETA), emu.spd_from_raw_backward(gA, raw, THETA),
                emu.huber_nll(pred, target, *args),
                *emu.huber_nll_backward(grad_loss, pred, target, *args, need_grad_target=True)]

    inputs = dict(raw=raw, pred64=pred64, target64=target64, grad_loss=grad_loss, args=args)
    return inputs, run


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_results_independent_of_thread_order_and_grid(emu, dtype):
    """Bitwise-identical outputs under every fiber order and grid size: no thread reads
    another's shared-memory writes without a barrier between them, and the tile and
    grid-stride loops cover every item exactly once."""
    _, run = launch_level_case(emu, dtype, seed=11)
    runs = []
    try:
        for max_blocks, order in SCHEDULES:
            emu.set_schedule(max_blocks=max_blocks, order=order, seed=max_blocks)
            runs.append(run())
    finally:
        emu.set_schedule(max_blocks=MAX_BLOCKS, order="rotating")
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unaligned_buffers_take_the_generic_tile_path(emu, dtype):
    """Buffers off the 8-byte chunk alignment (one element in) take the value-by-value tile
    copies (kernel_common.cuh for_each_tile) for every tile: the results are the CPU ops'
    and bitwise those of aligned buffers (the same values reach the same arithmetic).
    (Were the chunk copies taken there, the host emulation would fail the launch.)"""
    x, run = launch_level_case(emu, dtype, seed=21)
    runs = []
    try:
        for shift in (0, 1):
            emu.shift = shift
            runs.append(run())
    finally:
        emu.shift = 0
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    A, _, loss, gp, gt = runs[1]
    assert_close(A, ops.spd_from_raw(x["raw"].double(), THETA), dtype, "spd_from_raw")
    expected_loss = ops.huber_nll(x["pred64"], x["target64"], *x["args"])
    assert_close(loss.unsqueeze(-1), expected_loss.unsqueeze(-1), dtype, "loss", floor=1.0)
    egp, egt = ops._huber_nll_backward(x["grad_loss"].double(), x["pred64"], x["target64"], *x["args"], True)
    assert_close(gp, egp, dtype, "grad_pred")
    assert_close(gt, egt, dtype, "grad_target")


def test_empty_batch_launches_nothing(emu):
    """n = 0 returns success without launching (an empty grid is a launch error)."""
    empty = torch.empty(0, 3, dtype=torch.float32)
    assert emu.spd_from_raw(torch.empty(0, 6), 3, THETA).shape == (0, 3, 3)
    assert emu.huber_nll(torch.empty(0, 9), empty, DELTA, THETA, 0, 2, False).shape == (0,)

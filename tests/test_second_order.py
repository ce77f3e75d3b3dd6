"""Exact second derivatives (issue 16, point 1): double backward (reverse-over-reverse) and
forward-over-reverse of every operator, checked by torch.autograd.gradgradcheck in float64
(central finite differences of the first-order kernels: an independent computation) at
random inputs and at the degenerate points B = c I (0 included), repeated eigenvalues, an
eigenvalue exactly at theta and a Huber residual exactly at delta; the stable divided
differences against mpmath; the Hessian of huber_nll against an eigh-based reference.

Degenerate points are built so that they are exact in floating point (diagonal matrices,
c I, A = I with a residual of exactly delta): a rotated matrix's computed eigenvalue is
theta only up to rounding, and a second derivative with a jump is one-sided there.
"""
import itertools
import math

import mpmath
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import probreg
from probreg import _spectral as spectral
from probreg import reference
from probreg._ops import ops

from helpers import random_rotation

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
THETA = 0.5
DELTA = 0.5
FAMILIES = {"huber": 0, "gauss": 1, "laplace": 2, "charbonnier": 3}
COVARIANCES = {"identity": 0, "diagonal": 1, "full": 2}


def _second_order_checks(fn, inputs, fwd_over_rev=True, device="cpu"):
    inputs = tuple(x.detach().to(device).requires_grad_(True) for x in inputs)
    assert gradcheck(fn, inputs, check_forward_ad=True)
    assert gradgradcheck(fn, inputs)
    if fwd_over_rev:
        assert gradgradcheck(fn, inputs, check_fwd_over_rev=True, check_rev_over_rev=False,
                             check_undefined_grad=False)


# ------------------------------------------------------------------ divided differences
def _mp_G(u):
    return 1 + u if u > 0 else mpmath.e ** u


def _mp_G1(u):
    return mpmath.mpf(1) if u > 0 else mpmath.e ** u


def _mp_G2(u):
    """G'' with the documented convention at the kink: the mean 1/2 at u = 0."""
    if u == 0:
        return mpmath.mpf(1) / 2
    return mpmath.mpf(0) if u > 0 else mpmath.e ** u


def _mp_dd1(a, b):
    return _mp_G1(a) if a == b else (_mp_G(a) - _mp_G(b)) / (a - b)


def _mp_dd2(a, b, c):
    x, y, z = sorted([a, b, c])
    if x == z:
        return _mp_G2(x) / 2
    if x == y:
        return (_mp_dd1(y, z) - _mp_G1(x)) / (z - x)
    if y == z:
        return (_mp_G1(z) - _mp_dd1(x, y)) / (z - x)
    return (_mp_dd1(y, z) - _mp_dd1(x, y)) / (z - x)


def _triples(n, seed):
    """Triples of eigenvalues (theta = 1: u = l - 1), clustered (gaps 0, 1e-12..10) and
    spread, on both sides of and exactly at the kink, far into the exponential branch."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.tensor([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 1.0, 10.0], dtype=F64)
    bases = torch.tensor([0.0, -1e-14, 1e-14, 0.3, -0.3, -40.0, 3.0], dtype=F64)
    base = bases[torch.randint(len(bases), (n,), generator=g)] + torch.where(
        torch.rand(n, generator=g) < 0.3, 10 * torch.rand(n, generator=g, dtype=F64) - 5, torch.zeros(n, dtype=F64))
    steps = gaps[torch.randint(len(gaps), (n, 2), generator=g)] * torch.where(
        torch.rand(n, 2, generator=g) < 0.5, -1.0, 1.0).to(F64)
    u = torch.stack([base, base + steps[:, 0], base + steps[:, 0] + steps[:, 1]], -1)
    fixed = torch.tensor([[0.0, 0.0, 0.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0],
                          [-800.0, -799.0, 0.5], [-800.0, 0.0, 0.0], [-1e3, 0.3, 0.4]], dtype=F64)
    return torch.cat([u, fixed]) + 1.0


def test_remap_divided_differences_against_mpmath():
    """g[l_i, l_j] and g[l_i, l_k, l_j] at theta = 1 for every index triple of 200 triples:
    within 1e-14 relative of 120-digit divided differences (mean of the one-sided g'' at a
    triple tie exactly at theta)."""
    l = _triples(200, seed=0)
    K, K3 = spectral.remap_first_dd(l, 1.0), spectral.remap_second_dd(l, 1.0)
    worst1 = worst2 = 0.0
    with mpmath.workdps(120):
        for n in range(l.shape[0]):
            u = [mpmath.mpf(float(x)) - 1 for x in l[n]]
            for i, j in itertools.product(range(3), repeat=2):
                ref = _mp_dd1(u[i], u[j])  # below 1e-300 (e^-800) float64 underflows: absolute error
                worst1 = max(worst1, float(abs(K[n, i, j].item() - ref) / max(abs(ref), 1e-300)))
            for i, k, j in itertools.product(range(3), repeat=3):
                ref = _mp_dd2(u[i], u[k], u[j])
                worst2 = max(worst2, float(abs(K3[n, i, k, j].item() - ref) / max(abs(ref), 1e-300)))
    assert worst1 <= 1e-14 and worst2 <= 1e-14, (worst1, worst2)


def test_log_g_prime_divided_differences_against_mpmath():
    """h[a, b] for h = 1 / max(l, theta), both sides of theta, ties, and both at theta
    (mean of the one-sided h'(theta) = 0 and -1/theta^2)."""
    theta = 0.7
    pts = torch.tensor([[0.2, 0.3], [1.1, 2.5], [0.2, 1.5], [1.5, 1.5], [0.3, 0.3], [theta, theta], [theta, 1.0],
                        [0.1, theta], [theta + 1e-12, theta]], dtype=F64)
    K = spectral.log_g_prime_first_dd(pts, theta)
    with mpmath.workdps(60):
        th = mpmath.mpf(theta)

        def h(x):
            return 1 / max(x, th)

        for n, (a, b) in enumerate(pts.tolist()):
            a, b = mpmath.mpf(a), mpmath.mpf(b)
            if a != b:
                ref = (h(a) - h(b)) / (a - b)
            elif a == th:
                ref = -1 / (2 * th * th)
            else:
                ref = mpmath.mpf(0) if a < th else -1 / (a * a)
            assert abs(float(K[n, 0, 1]) - float(ref)) <= 1e-15 * max(1.0, abs(float(ref))), (n, float(K[n, 0, 1]), ref)


# ------------------------------------------------------------------ spd_remap, spd_from_raw
def _degenerate_matrices(d):
    """c I (0 and theta included), an eigenvalue exactly at theta, an exactly repeated pair
    (diagonal: exact in floating point), plus a rotated repeated pair."""
    eye = torch.eye(d, dtype=F64)
    mats = [torch.zeros(d, d, dtype=F64), 0.7 * eye, THETA * eye]
    if d >= 2:
        mats.append(torch.diag(torch.tensor([THETA, 1.3, -0.2, 2.0, 0.1][:d], dtype=F64)))
        mats.append(torch.diag(torch.tensor([0.9, 0.9, -0.4, 1.7, 0.2][:d], dtype=F64)))
        Q = random_rotation(1, d, torch.Generator().manual_seed(d))[0]
        l = torch.tensor([-0.3, -0.3, 1.1, 2.0, 0.4][:d], dtype=F64)
        mats.append((Q * l) @ Q.T)
    return torch.stack(mats)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_spd_remap_double_backward_exact(device, d):
    """Reverse-over-reverse and forward-over-reverse at random and degenerate B; d = 4 is
    the fallback operator."""
    op = ops.spd_remap if d <= 3 else ops._spd_remap_fallback
    B = torch.randn(3, d, d, dtype=F64)
    for batch in (B + B.mT, _degenerate_matrices(d)):
        _second_order_checks(lambda X: op(X, THETA), (batch,), device=device)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spd_from_raw_double_backward_exact(d):
    raw = torch.cat([torch.randn(3, d * (d + 1) // 2, dtype=F64), probreg.pack_sym(_degenerate_matrices(d))])
    _second_order_checks(lambda r: ops.spd_from_raw(r, THETA), (raw,))


def test_public_spd_from_raw_above_three_double_backward_exact():
    raw = torch.cat([torch.randn(2, 10, dtype=F64), probreg.pack_sym(_degenerate_matrices(4))])
    _second_order_checks(lambda r: probreg.spd_from_raw(r, THETA), (raw,))


def test_spd_hessian_torch_func_matches_double_backward():
    """torch.func.hessian (forward-over-reverse) equals autograd's reverse-over-reverse
    Hessian, at a repeated eigenvalue too."""
    for B in (torch.randn(2, 2, dtype=F64), torch.diag(torch.tensor([0.9, 0.9], dtype=F64))):
        B = B + B.T

        def f(X):
            return (probreg.spd_remap(X, THETA) ** 3).sum()

        H = torch.func.hessian(f)(B)
        H_ref = torch.autograd.functional.hessian(f, B)
        assert (H - H_ref).abs().max() <= 1e-12 * H_ref.abs().max()


# ------------------------------------------------------------------ huber_nll
def _nll_rows(d, covariance, seed=0):
    """Random rows, degenerate covariance parameters (full: 0, c I, theta I, an eigenvalue
    at theta; diagonal: a value at theta and at 0) and a last row whose residual is exactly
    delta (A = I exactly, r = (delta, 0, ...))."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, dtype=F64)
    width = {"full": d * (d + 1) // 2, "diagonal": d, "identity": 0}[covariance]
    rows = [torch.randn(3, d + width, generator=g, dtype=F64)]
    if covariance == "full":
        covs = probreg.pack_sym(_degenerate_matrices(d)[:4])
        identity = probreg.pack_sym(eye)
    elif covariance == "diagonal":
        covs = torch.tensor([[THETA, 0.0, 1.3, -0.4][:d]], dtype=F64)
        identity = torch.ones(d, dtype=F64)
    else:
        covs = torch.zeros(0, 0, dtype=F64)
        identity = torch.zeros(0, dtype=F64)
    if covs.shape[0]:
        rows.append(torch.cat([torch.randn(covs.shape[0], d, generator=g, dtype=F64), covs], -1))
    y = torch.full((d,), 0.5, dtype=F64)
    loc = y.clone()
    loc[0] -= DELTA
    rows.append(torch.cat([loc, identity]).unsqueeze(0))
    pred = torch.cat(rows)
    target = torch.randn(pred.shape[0], d, generator=g, dtype=F64)
    target[-1] = y
    return pred, target


def _nll_op(d):
    return ops.huber_nll if d <= 3 else ops._huber_nll_fallback


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("covariance", list(COVARIANCES))
@pytest.mark.parametrize("mu", [False, True])
def test_huber_nll_double_backward_exact_d2(family, covariance, mu):
    """Every family x covariance x parameterisation, w.r.t. pred and target."""
    pred, target = _nll_rows(2, covariance)
    options = (DELTA, THETA, FAMILIES[family], COVARIANCES[covariance], mu)
    _second_order_checks(lambda p, t: ops.huber_nll(p, t, *options), (pred, target))


@pytest.mark.parametrize("d", [1, 3, 4])
@pytest.mark.parametrize("family,covariance,mu", [("huber", "full", False), ("charbonnier", "full", True),
                                                  ("gauss", "diagonal", True), ("laplace", "identity", False)])
def test_huber_nll_double_backward_exact_other_dims(device, d, family, covariance, mu):
    """d = 1, 3 (fused) and d = 4 (fallback operator)."""
    pred, target = _nll_rows(d, covariance, seed=d)
    options = (DELTA, THETA, FAMILIES[family], COVARIANCES[covariance], mu)
    _second_order_checks(lambda p, t: _nll_op(d)(p, t, *options), (pred, target), fwd_over_rev=(d != 3), device=device)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("parameterization", ["v", "mu"])
def test_huber_nll_hessian_wrt_pred_matches_reference(d, parameterization):
    """Point 3: torch.func.hessian of huber_nll w.r.t. pred equals, to 1e-10 relative, the
    Hessian autograd takes of the eigh-based pure-PyTorch NLL (reference.huber_nll_naive,
    torch.linalg.eigh twice differentiated, exact away from ties: random inputs)."""
    g = torch.Generator().manual_seed(10 + d)
    pred = torch.randn(4, d + d * (d + 1) // 2, generator=g, dtype=F64)
    target = torch.randn(4, d, generator=g, dtype=F64)
    for delta in (0.3, 5.0):  # residuals outside and inside delta
        kwargs = dict(parameterization=parameterization, reduction="sum")

        H = torch.func.hessian(lambda p: probreg.huber_nll(p, target, delta, THETA, **kwargs))(pred)
        H_ref = torch.autograd.functional.hessian(
            lambda p: reference.huber_nll_naive(p, target, delta, THETA, **kwargs), pred)
        assert (H - H_ref).abs().max() <= 1e-10 * H_ref.abs().max(), (H - H_ref).abs().max()


def test_huber_nll_kink_conventions():
    """At a residual exactly at delta the Hessian of rho(||r||) along r is 1/2 (the mean of
    the inside value 1 and the outside value 0), across it 1 (continuous); at an eigenvalue
    exactly at theta g'' = 1/(2 theta)."""
    pred = torch.tensor([[0.5 - DELTA, 0.5, 1.0, 1.0]], dtype=F64)  # diagonal b = 1: A = I exactly
    target = torch.tensor([[0.5, 0.5]], dtype=F64)  # r = A y - v = (delta, 0)
    one = torch.ones(1, dtype=F64)
    options = (DELTA, THETA, FAMILIES["huber"], COVARIANCES["diagonal"], False)
    radial = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=F64)
    h_pred, h_target = ops._huber_nll_hvp(one, pred, target, radial, torch.tensor([[1.0, 0.0]], dtype=F64), *options, True)
    assert torch.allclose(h_target, torch.tensor([[0.5, 0.0]], dtype=F64), atol=1e-15)
    h_pred, h_target = ops._huber_nll_hvp(one, pred, target, radial, torch.tensor([[0.0, 1.0]], dtype=F64), *options, True)
    assert torch.allclose(h_target, torch.tensor([[0.0, 1.0]], dtype=F64), atol=1e-15)
    l = torch.tensor([THETA, 2.0], dtype=F64)
    assert spectral.remap_g_second(l, THETA)[0] == 0.5 / THETA
    assert spectral.remap_second_dd(l, THETA)[0, 0, 0] == 0.25 / THETA


# ------------------------------------------------------------------ symeig
@pytest.mark.parametrize("d", [2, 3, 4])
def test_symeig_double_backward_exact_away_from_ties(d):
    """symeig's eigenvectors are not differentiable at a tie (its backward takes F_ij = 0
    there): second derivatives are exact for distinct eigenvalues; spd_remap, spd_from_raw
    and huber_nll are the exact path at ties."""
    op = ops.symeig if d <= 3 else ops._symeig_fallback
    B = torch.randn(3, d, d, dtype=F64)
    _second_order_checks(op, (B + B.mT,))


# ------------------------------------------------------------------ huber_fuse
def _fuse_problems(d, seed, problems=2, n=3):
    g = torch.Generator().manual_seed(seed)
    v = 2.0 * torch.randn(problems, n, d, generator=g, dtype=F64)
    A = torch.randn(problems, n, d, d, generator=g, dtype=F64) + 2.0 * torch.eye(d, dtype=F64)
    w = 0.5 + torch.rand(problems, n, generator=g, dtype=F64)
    return v, A, w


@pytest.mark.parametrize("d", [2, 4])
def test_huber_fuse_double_backward_exact(device, d):
    """y*(v, A, w) with the exact implicit gradient (damping 0): first and second
    derivatives against finite differences of the converged solver (tol 1e-14). Most
    estimates of these problems lie outside delta, the others inside."""
    v, A, w = _fuse_problems(d, seed=d, problems=2 if d <= 3 else 1, n=3 if d <= 3 else 2)
    if d <= 3:
        _second_order_checks(lambda *t: ops.huber_fuse(*t, None, 1.0, 200, 1e-14, 0.0)[0], (v, A, w), device=device)
    else:  # the fallback solver is slow under finite differences: (v, weight) only
        A = A.to(device)
        _second_order_checks(lambda v_, w_: ops._huber_fuse_fallback(v_, A, w_, None, 1.0, 200, 1e-14, 0.0)[0], (v, w),
                             device=device)


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_huber_fuse_backward_operator_derivatives(damping):
    """The backward operator itself (any damping: for damping > 0 the damped gradient is not
    the derivative of y*, so only the operator's own derivatives are checked)."""
    v, A, w = _fuse_problems(2, seed=7)
    y = ops.huber_fuse(v, A, w, None, 1.0, 200, 1e-14, damping)[0]
    grad_y = torch.randn_like(y)
    inputs = tuple(x.clone().requires_grad_(True) for x in (grad_y, y, v, A, w))
    assert gradcheck(lambda *t: ops._huber_fuse_backward(*t, 1.0, damping), inputs, check_forward_ad=True)


def test_huber_fuse_hessian_torch_func():
    v, A, w = _fuse_problems(2, seed=3)

    def f(v_):
        return (probreg.huber_fuse(v_, A, w, tol=1e-14, max_iter=200).y ** 2).sum()

    H = torch.func.hessian(f)(v)
    H_ref = torch.autograd.functional.hessian(f, v)
    assert (H - H_ref).abs().max() <= 1e-10 * H_ref.abs().max()


# ------------------------------------------------------------------ third order
@pytest.mark.parametrize("case", ["spd_remap", "huber_nll"])
def test_third_order_raises_naming_the_operator(case):
    """The second-order rules of the spectral operators are not differentiable again:
    autograd and torch.func raise (never a silent zero), naming the second-order operator."""
    if case == "spd_remap":
        x = torch.randn(2, 2, dtype=F64)
        x = x + x.T

        def f(t):
            return (probreg.spd_remap(t, THETA) ** 3).sum()
    else:
        x = torch.randn(3, 5, dtype=F64)
        target = torch.randn(3, 2, dtype=F64)

        def f(t):
            return probreg.huber_nll(t, target, DELTA, THETA)

    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg), xg, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), xg, create_graph=True)
    with pytest.raises(RuntimeError, match="third-order derivatives are not supported"):
        torch.autograd.grad(h.sum(), xg)
    with pytest.raises(RuntimeError, match="third-order derivatives are not supported"):
        torch.func.jacrev(torch.func.hessian(f))(x)
    with pytest.raises(RuntimeError, match="third-order derivatives are not supported"):
        torch.func.jacfwd(torch.func.hessian(f))(x)


def test_huber_fuse_third_order_through_the_composite():
    """huber_fuse's second order is torch code (the implicit-gradient formula), so a third
    derivative is autograd's, and matches finite differences of the second."""
    v, A, w = _fuse_problems(2, seed=1, problems=1, n=3)

    def f(t):
        return (probreg.huber_fuse(t, A, w, tol=1e-14, max_iter=200).y ** 3).sum()

    u = torch.randn_like(v)

    def hvp(t):
        return torch.func.jvp(torch.func.grad(f), (t,), (u,))[1]

    third = torch.func.jvp(hvp, (v,), (u,))[1]
    eps = 1e-5
    fd = (hvp(v + eps * u) - hvp(v - eps * u)) / (2 * eps)
    assert (third - fd).abs().max() <= 1e-6 * (1 + fd.abs().max())

"""Tests of probreg.wiberg: damped implicit gradients through an argmin, least squares
with the pseudo-inverse / Cholesky derivatives, and the fusion energies.

Every gradient is checked against an independent reference: finite differences of the
converged minimiser (torch.autograd.gradcheck), or a closed form written out here.
"""

import math

import numpy as np
import pytest
import torch

from probreg import wiberg

DT = torch.float64


# Small tensors: one intra-op thread (conftest.py one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# a smooth, strictly convex test energy with batched and shared parameters
#   E_b(y) = sum_i w_i^2 log cosh(x_bi . y - t_bi) + 0.5 * reg * ||y||^2
# ---------------------------------------------------------------------------


def logcosh_energy(y, X, t, w, reg):
    r = (X @ y.unsqueeze(-1)).squeeze(-1) - t
    return (w**2 * torch.log(torch.cosh(r))).sum(-1) + 0.5 * reg * (y**2).sum(-1)


def logcosh_problem(B=4, n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, d, generator=g, dtype=DT)
    t = torch.randn(B, n, generator=g, dtype=DT)  # batched
    w = 0.5 + torch.rand(n, generator=g, dtype=DT)  # shared
    reg = torch.tensor(0.3, dtype=DT)  # shared scalar
    return X, t, w, reg


def logcosh_closed_form(y, X, t, w, reg):
    """Hessian (B, d, d) and d(grad_y E)/dt (B, d, n), d(grad_y E)/dw (B, d, n),
    d(grad_y E)/dreg (B, d), written out by hand."""
    r = (X @ y.unsqueeze(-1)).squeeze(-1) - t  # (B, n)
    sech2 = 1.0 / torch.cosh(r) ** 2
    d = y.shape[1]
    H = torch.einsum("bn,bni,bnj->bij", w**2 * sech2, X, X) + reg * torch.eye(d, dtype=DT)
    dg_dt = -(w**2 * sech2).unsqueeze(1) * X.transpose(1, 2)  # (B, d, n)
    dg_dw = (2 * w * torch.tanh(r)).unsqueeze(1) * X.transpose(1, 2)  # (B, d, n)
    dg_dreg = y
    return H, dg_dt, dg_dw, dg_dreg


def test_energy_derivatives_match_closed_form():
    X, t, w, reg = logcosh_problem()
    y = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(5))
    E, g, H = wiberg.energy_derivatives(logcosh_energy, y, X, t, w, reg)
    r = (X @ y.unsqueeze(-1)).squeeze(-1) - t
    g_ref = torch.einsum("bn,bni->bi", w**2 * torch.tanh(r), X) + reg * y
    H_ref = logcosh_closed_form(y, X, t, w, reg)[0]
    assert E.shape == (4,) and g.shape == (4, 3) and H.shape == (4, 3, 3)
    torch.testing.assert_close(E, logcosh_energy(y, X, t, w, reg))
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H, H_ref, rtol=1e-12, atol=1e-12)


def test_newton_solver_converges_to_stationary_point():
    X, t, w, reg = logcosh_problem(B=8)
    y0 = 3.0 * torch.ones(8, 3, dtype=DT)
    y, converged = wiberg.trust_region_newton(logcosh_energy, y0, X, t, w, reg, return_converged=True)
    assert bool(converged.all())
    _, g, _ = wiberg.energy_derivatives(logcosh_energy, y, X, t, w, reg)
    assert float(g.abs().max()) < 1e-12


def test_argmin_gradcheck_undamped_batched_and_shared_params():
    """damping=0: the analytic gradient equals finite differences of the converged
    minimiser, for batched (t) and shared (w, reg) parameters."""
    X, t, w, reg = logcosh_problem()
    y0 = torch.zeros(4, 3, dtype=DT)

    def minimiser(t_, w_, reg_):
        return wiberg.argmin(logcosh_energy, y0, X, t_, w_, reg_, damping=0.0)

    inputs = (t.clone().requires_grad_(), w.clone().requires_grad_(), reg.clone().requires_grad_())
    assert torch.autograd.gradcheck(minimiser, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("damping", [0.1, 0.7, "per-problem"])
def test_argmin_damped_gradient_equals_independent_formula(damping):
    """dL/dp = -(d grad E/dp)^T (H + lambda I)^{-1} dL/dy*, per problem, shared params summed."""
    B = 4
    X, t, w, reg = logcosh_problem(B=B)
    lam = torch.tensor([0.0, 0.05, 0.3, 2.0], dtype=DT) if damping == "per-problem" else damping
    t, w, reg = (p.clone().requires_grad_() for p in (t, w, reg))
    y0 = torch.zeros(B, 3, dtype=DT)
    y = wiberg.argmin(logcosh_energy, y0, X, t, w, reg, damping=lam)
    cot = torch.randn(B, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    gt, gw, greg = torch.autograd.grad((y * cot).sum(), (t, w, reg))

    with torch.no_grad():
        H, dg_dt, dg_dw, dg_dreg = logcosh_closed_form(y, X, t, w, reg)
        lam_b = lam.view(B, 1, 1) if isinstance(lam, torch.Tensor) else lam
        z = torch.linalg.solve(H + lam_b * torch.eye(3, dtype=DT), cot)  # (B, d)
        ref_t = -torch.einsum("bdn,bd->bn", dg_dt, z)
        ref_w = -torch.einsum("bdn,bd->n", dg_dw, z)
        ref_reg = -(dg_dreg * z).sum()
    torch.testing.assert_close(gt, ref_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, ref_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(greg, ref_reg, rtol=1e-10, atol=1e-12)


def test_shared_param_gradient_is_sum_of_batched_gradients():
    X, t, w, reg = logcosh_problem()
    y0 = torch.zeros(4, 3, dtype=DT)
    w_shared = w.clone().requires_grad_()
    w_batched = w.expand(4, -1).clone().requires_grad_()
    cot = torch.randn(4, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    y_s = wiberg.argmin(logcosh_energy, y0, X, t, w_shared, reg)
    y_b = wiberg.argmin(logcosh_energy, y0, X, t, w_batched, reg)
    torch.testing.assert_close(y_s, y_b)
    (g_s,) = torch.autograd.grad((y_s * cot).sum(), w_shared)
    (g_b,) = torch.autograd.grad((y_b * cot).sum(), w_batched)
    torch.testing.assert_close(g_s, g_b.sum(0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# flat minima: E_b(y) = sum_k y_k^4 / 4 - w_b . y   (minimum y_k = cbrt(w_bk))
# H = diag(3 y^2) -> 0 as w -> 0, d(grad E)/dw = -I, so ||d grad E/dw|| = 1 and the
# damped Jacobian -(H + lambda I)^{-1} d(grad E)/dw = diag(1 / (3 y^2 + lambda)) <= 1/lambda.
# ---------------------------------------------------------------------------


def quartic_energy(y, w):
    return (y**4).sum(-1) / 4 - (w * y).sum(-1)


def test_flat_minimum_damped_gradient_attains_bound_undamped_is_not_finite():
    B, d, lam = 3, 2, 0.1
    w = torch.zeros(B, d, dtype=DT, requires_grad=True)
    y0 = torch.zeros(B, d, dtype=DT)  # the (completely flat) minimum y* = 0
    cot = torch.randn(B, d, dtype=DT, generator=torch.Generator().manual_seed(3))
    y = wiberg.argmin(quartic_energy, y0, w, damping=lam)
    (gw,) = torch.autograd.grad((y * cot).sum(), w)
    # bound ||dL/dw|| <= ||d grad E/dw|| ||dL/dy|| / lambda, attained here
    torch.testing.assert_close(gw, cot / lam, rtol=1e-13, atol=0)
    assert float(gw.norm(dim=-1).max()) <= float(cot.norm(dim=-1).max()) / lam * (1 + 1e-12)
    y = wiberg.argmin(quartic_energy, y0, w, damping=0.0)
    (gw0,) = torch.autograd.grad((y * cot).sum(), w)
    assert not bool(torch.isfinite(gw0).all())


def test_nearly_flat_minimum_damped_bounded_undamped_exact_and_large():
    B, d, lam = 4, 2, 0.1
    w_values = torch.tensor([[1e-6, -1e-6], [1e-9, 2e-6], [-3e-7, 1e-5], [0.5, -0.2]], dtype=DT)
    y0 = 0.7 * torch.ones(B, d, dtype=DT)
    y_exact = torch.sign(w_values) * w_values.abs() ** (1 / 3)
    curvature = 3 * y_exact**2
    for damping, expected in ((lam, 1 / (curvature + lam)), (0.0, 1 / curvature)):
        w = w_values.clone().requires_grad_()
        y = wiberg.argmin(quartic_energy, y0, w, damping=damping)
        torch.testing.assert_close(y, y_exact, rtol=1e-10, atol=1e-15)
        (jac_diag,) = torch.autograd.grad(y.sum(), w)  # the Jacobian is diagonal
        torch.testing.assert_close(jac_diag, expected, rtol=1e-8, atol=0)
        if damping > 0:
            assert float(jac_diag.abs().max()) <= 1 / lam  # ||d grad E/dw|| = 1
    assert float((1 / curvature).max()) > 1e5  # the undamped one explodes


# ---------------------------------------------------------------------------
# solvers, polishing, validation, torch.compile
# ---------------------------------------------------------------------------


def test_callable_solver_and_newton_polish():
    X, t, w, reg = logcosh_problem()
    y0 = torch.zeros(4, 3, dtype=DT)

    def few_gradient_steps(energy, y_start, *params):
        y = y_start.clone()
        for _ in range(30):
            _, g, _ = wiberg.energy_derivatives(energy, y, *params)
            y = y - 0.05 * g
        return y

    y_newton = wiberg.argmin(logcosh_energy, y0, X, t, w, reg)
    y_rough = wiberg.argmin(logcosh_energy, y0, X, t, w, reg, solver=few_gradient_steps, newton_polish=False)
    assert float((y_rough - y_newton).abs().max()) > 1e-3
    t_req = t.clone().requires_grad_()
    y_polished = wiberg.argmin(logcosh_energy, y0, X, t_req, w, reg, solver=few_gradient_steps)
    torch.testing.assert_close(y_polished, y_newton, rtol=0, atol=1e-12)
    t_req2 = t.clone().requires_grad_()
    y_ref = wiberg.argmin(logcosh_energy, y0, X, t_req2, w, reg)
    g1 = torch.autograd.grad(y_polished.sum(), t_req)[0]
    g2 = torch.autograd.grad(y_ref.sum(), t_req2)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-12)


def test_argmin_float32():
    X, t, w, reg = (p.float() for p in logcosh_problem())
    t = t.requires_grad_()
    y = wiberg.argmin(logcosh_energy, torch.zeros(4, 3), X, t, w, reg)
    assert y.dtype == torch.float32
    y64 = wiberg.argmin(logcosh_energy, torch.zeros(4, 3, dtype=DT), *(p.double() for p in (X, t.detach(), w, reg)))
    torch.testing.assert_close(y.double(), y64, rtol=0, atol=1e-5)
    (g,) = torch.autograd.grad(y.sum(), t)
    assert bool(torch.isfinite(g).all())


def test_argmin_errors():
    X, t, w, reg = logcosh_problem()
    y0 = torch.zeros(4, 3, dtype=DT)
    with pytest.raises(ValueError, match="2-D"):
        wiberg.argmin(logcosh_energy, y0[0], X, t, w, reg)
    with pytest.raises(ValueError, match="2-D"):
        wiberg.argmin(logcosh_energy, y0.unsqueeze(0), X, t, w, reg)
    with pytest.raises(ValueError, match="floating"):
        wiberg.argmin(logcosh_energy, y0.long(), X, t, w, reg)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        wiberg.argmin(lambda y, *p: logcosh_energy(y, *p).unsqueeze(-1), y0, X, t, w, reg)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        wiberg.argmin(lambda y, *p: logcosh_energy(y, *p).sum(), y0, X, t, w, reg)
    with pytest.raises(ValueError, match="damping"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, damping=-0.1)
    with pytest.raises(ValueError, match="damping"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, damping=float("nan"))
    with pytest.raises(ValueError, match="damping"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, damping=torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="unknown solver"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, solver="lbfgs")
    with pytest.raises(ValueError, match="solver"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, solver=3)
    with pytest.raises(ValueError, match="solver must return"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, reg, solver=lambda e, y, *p: y[:, :2])
    with pytest.raises(TypeError, match="params"):
        wiberg.argmin(logcosh_energy, y0, X, t, w, 0.3)


def test_argmin_under_torch_compile():
    X, t, w, reg = logcosh_problem()
    y0 = torch.zeros(4, 3, dtype=DT)

    def loss(t_, w_):
        y = wiberg.argmin(logcosh_energy, y0, X, t_, w_, reg, damping=0.1)
        return torch.sin(y).pow(2).sum()

    t1, w1 = t.clone().requires_grad_(), w.clone().requires_grad_()
    t2, w2 = t.clone().requires_grad_(), w.clone().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager")
    out = compiled(t1, w1)
    ref = loss(t2, w2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(out, (t1, w1))
    g_ref = torch.autograd.grad(ref, (t2, w2))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_quadratic_energy_argmin_matches_lstsq():
    """E = ||A y - b||^2 with damping=0: argmin and its gradients equal lstsq's."""
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(5, 7, 3, generator=gen, dtype=DT)
    b = torch.randn(5, 7, generator=gen, dtype=DT)
    cot = torch.randn(5, 3, generator=gen, dtype=DT)

    def quadratic(y, A_, b_):
        return (((A_ @ y.unsqueeze(-1)).squeeze(-1) - b_) ** 2).sum(-1)

    A1, b1 = A.clone().requires_grad_(), b.clone().requires_grad_()
    A2, b2 = A.clone().requires_grad_(), b.clone().requires_grad_()
    y1 = wiberg.argmin(quadratic, torch.zeros(5, 3, dtype=DT), A1, b1, damping=0.0)
    y2 = wiberg.lstsq(A2, b2, method="cholesky")
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad((y1 * cot).sum(), (A1, b1))
    g2 = torch.autograd.grad((y2 * cot).sum(), (A2, b2))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# lstsq (supplement eq. 6-13)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cholesky", "pinv", "auto"])
@pytest.mark.parametrize("matrix_rhs", [False, True])
def test_lstsq_full_rank_gradcheck(method, matrix_rhs):
    gen = torch.Generator().manual_seed(6)
    A = torch.randn(3, 6, 4, generator=gen, dtype=DT, requires_grad=True)
    b = torch.randn(3, 6, *((2,) if matrix_rhs else ()), generator=gen, dtype=DT, requires_grad=True)
    x = wiberg.lstsq(A, b, method=method)
    ref = torch.linalg.lstsq(A.detach(), b.detach().unsqueeze(-1) if not matrix_rhs else b.detach()).solution
    torch.testing.assert_close(x.detach(), ref if matrix_rhs else ref.squeeze(-1), rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda A_, b_: wiberg.lstsq(A_, b_, method=method), (A, b))


def rank_deficient_factors(m=6, n=5, r=2, batch=2, seed=7):
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(batch, m, r, generator=gen, dtype=DT)
    R = torch.randn(batch, r, n, generator=gen, dtype=DT)
    b = torch.randn(batch, m, generator=gen, dtype=DT)
    return L, R, b


@pytest.mark.parametrize("shape", [(6, 5, 2), (4, 6, 3)])  # over- and under-determined
@pytest.mark.parametrize("method", ["pinv", "auto"])
def test_lstsq_rank_deficient_gradcheck_along_rank_preserving_perturbations(shape, method):
    """A = L R has rank r < min(m, n); finite differences in L, R move A along the manifold
    of rank-r matrices, where the Golub-Pereyra derivative is the true derivative."""
    m, n, r = shape
    L, R, b = (p.requires_grad_() for p in rank_deficient_factors(m, n, r))

    def solve(L_, R_, b_):
        return wiberg.lstsq(L_ @ R_, b_, rcond=1e-9, method=method)

    x = solve(L, R, b).detach()
    A = (L @ R).detach().numpy()
    x_ref = np.stack([np.linalg.pinv(A[i], rcond=1e-9) @ b.detach().numpy()[i] for i in range(2)])
    np.testing.assert_allclose(x.numpy(), x_ref, rtol=1e-9, atol=1e-11)
    assert torch.autograd.gradcheck(solve, (L, R, b), eps=1e-6, atol=1e-6, rtol=1e-4)


def golub_pereyra_directional_derivative(A, b, dA, db, rcond):
    """d(A^+ b) along (dA, db) from supplement eq. 10 (Golub & Pereyra 1973), numpy."""
    P = np.linalg.pinv(A, rcond=rcond)
    m, n = A.shape
    dP = -P @ dA @ P + P @ P.T @ dA.T @ (np.eye(m) - A @ P) + (np.eye(n) - P @ A) @ dA.T @ P.T @ P
    return dP @ b + P @ db


def test_lstsq_rank_deficient_matches_golub_pereyra_formula():
    m, n, r = 7, 5, 3
    L, R, b = rank_deficient_factors(m, n, r, batch=3, seed=8)
    gen = torch.Generator().manual_seed(9)
    A = (L @ R).requires_grad_()
    b = b.requires_grad_()
    cot = torch.randn(3, n, generator=gen, dtype=DT)
    x = wiberg.lstsq(A, b, rcond=1e-9)
    gA, gb = torch.autograd.grad((x * cot).sum(), (A, b))
    for i in range(3):
        dL = torch.randn(m, r, generator=gen, dtype=DT)
        dR = torch.randn(r, n, generator=gen, dtype=DT)
        dA = (dL @ R[i] + L[i] @ dR).numpy()  # tangent to the rank-r manifold
        db = torch.randn(m, generator=gen, dtype=DT).numpy()
        dx = golub_pereyra_directional_derivative(A[i].detach().numpy(), b[i].detach().numpy(), dA, db, 1e-9)
        expected = float(cot[i].numpy() @ dx)
        got = float((gA[i].numpy() * dA).sum() + gb[i].numpy() @ db)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_lstsq_cholesky_rejects_rank_deficient_and_broadcasts():
    L, R, b = rank_deficient_factors()
    with pytest.raises(ValueError, match="rank"):
        wiberg.lstsq(L @ R, b, method="cholesky")
    with pytest.raises(ValueError, match="method"):
        wiberg.lstsq(L @ R, b, method="qr")
    gen = torch.Generator().manual_seed(10)
    A = torch.randn(4, 6, 3, generator=gen, dtype=DT, requires_grad=True)
    b_shared = torch.randn(6, generator=gen, dtype=DT, requires_grad=True)
    x = wiberg.lstsq(A, b_shared)
    assert x.shape == (4, 3)
    gA, gb = torch.autograd.grad(x.sum(), (A, b_shared))
    assert gA.shape == A.shape and gb.shape == b_shared.shape
    gb_ref = sum(torch.autograd.grad(wiberg.lstsq(A[i], b_shared).sum(), b_shared)[0] for i in range(4))
    torch.testing.assert_close(gb, gb_ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Huber fusion energy: argmin gradient vs an independent closed form
# ---------------------------------------------------------------------------


def huber_problem(B=3, n=5, d=2, seed=11):
    gen = torch.Generator().manual_seed(seed)
    v = 2.0 * torch.randn(B, n, d, generator=gen, dtype=DT)
    A = torch.eye(d, dtype=DT) + 0.3 * torch.randn(B, n, d, d, generator=gen, dtype=DT)  # non-symmetric
    w = 0.5 + torch.rand(B, n, generator=gen, dtype=DT)
    return v, A, w, 1.0


def test_huber_fusion_energy_value():
    v, A, w, delta = huber_problem()
    y = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(12))
    E = wiberg.huber_fusion_energy(y, v, A, w, delta)
    ref = torch.zeros(3, dtype=DT)
    for b in range(3):
        for i in range(5):
            r = float(torch.linalg.norm(A[b, i] @ y[b] - v[b, i]))
            ref[b] += float(w[b, i]) * (0.5 * r * r if r <= delta else delta * (r - 0.5 * delta))
    torch.testing.assert_close(E, ref, rtol=1e-13, atol=1e-13)


def test_huber_fusion_argmin_gradient_matches_closed_form():
    """dL/dv_i = w_i J_i A_i H^{-1} dL/dy*, H = sum_i w_i A_i^T J_i A_i, with J_i = I inside
    delta and (delta/r_i)(I - u_i u_i^T) outside (u_i the unit residual)."""
    v, A, w, delta = huber_problem()
    v = v.requires_grad_()
    y0 = v.detach().mean(1)
    y = wiberg.argmin(wiberg.huber_fusion_energy, y0, v, A, w, torch.tensor(delta, dtype=DT), damping=0.0)
    cot = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(13))
    (gv,) = torch.autograd.grad((y * cot).sum(), v)

    y = y.detach()
    residual = (A @ y[:, None, :, None]).squeeze(-1) - v.detach()  # (B, n, d)
    r = residual.norm(dim=-1)
    assert bool((r < delta).any()) and bool((r > delta).any())  # both branches are used
    eye = torch.eye(2, dtype=DT)
    u = residual / r.unsqueeze(-1)
    J = torch.where((r > delta)[..., None, None], (delta / r)[..., None, None] * (eye - u[..., :, None] * u[..., None, :]), eye)
    H = torch.einsum("bn,bnki,bnkl,bnlj->bij", w, A, J, A)
    z = torch.linalg.solve(H, cot)  # (B, d)
    expected = w[..., None] * torch.einsum("bnij,bnjk,bk->bni", J, A, z)
    torch.testing.assert_close(gv, expected, rtol=1e-9, atol=1e-12)
    # stationarity: sum_i w_i A_i^T psi(r_i) = 0
    psi = torch.where((r > delta)[..., None], delta * u, residual)
    assert float(torch.einsum("bn,bnji,bnj->bi", w, A, psi).abs().max()) < 1e-12


def test_huber_fusion_argmin_gradcheck():
    v, A, w, delta = huber_problem(B=2, n=4)
    y0 = v.mean(1)

    def fused(v_, A_, w_):
        return wiberg.argmin(wiberg.huber_fusion_energy, y0, v_, A_, w_, torch.tensor(delta, dtype=DT), damping=0.0)

    inputs = tuple(p.clone().requires_grad_() for p in (v, A, w))
    assert torch.autograd.gradcheck(fused, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# RBF tracker-fusion energy (supplement eq. 14-16)
# ---------------------------------------------------------------------------


def rbf_problem(B=3, T=4, seed=14):
    gen = torch.Generator().manual_seed(seed)
    centers = 5.0 * torch.rand(B, 1, 2, generator=gen, dtype=DT) + torch.randn(B, T, 2, generator=gen, dtype=DT)
    sizes = 20 + 5 * torch.rand(B, T, 2, generator=gen, dtype=DT)
    ref_sizes = 20 + 5 * torch.rand(B, T, 2, generator=gen, dtype=DT)
    time = torch.rand(B, generator=gen, dtype=DT)
    sigma_pos = 2.0 + torch.rand(T, 2, generator=gen, dtype=DT)
    sigma_size = 8.0 + torch.rand(T, 2, generator=gen, dtype=DT)
    weight_scale = 0.5 + torch.rand(T, generator=gen, dtype=DT)
    temporal_a = torch.rand(T, generator=gen, dtype=DT)
    temporal_b = torch.rand(T, generator=gen, dtype=DT)
    return centers, sizes, ref_sizes, time, sigma_pos, sigma_size, weight_scale, temporal_a, temporal_b


def test_rbf_fusion_energy_value_matches_formula():
    params = rbf_problem()
    c, s, s0, f, sp, ss, st, ta, tb = (p.numpy() for p in params)
    y = np.random.default_rng(0).normal(size=(3, 2)) + 2.0
    E = wiberg.rbf_fusion_energy(torch.from_numpy(y), *params).numpy()
    for b in range(3):
        total = 0.0
        for t in range(4):
            theta = 1.0 / (1.0 + ta[t] ** 2 * f[b] + tb[t] ** 2 * f[b] ** 2)
            m = st[t] * math.exp(-((s[b, t, 0] - s0[b, t, 0]) ** 2) / ss[t, 0] ** 2 - (s[b, t, 1] - s0[b, t, 1]) ** 2 / ss[t, 1] ** 2) * theta
            total -= m * math.exp(-((y[b, 0] - c[b, t, 0]) ** 2) / sp[t, 0] ** 2 - (y[b, 1] - c[b, t, 1]) ** 2 / sp[t, 1] ** 2)
        assert E[b] == pytest.approx(total, rel=1e-13)


def test_rbf_fusion_argmin_gradcheck():
    params = rbf_problem()
    y0 = params[0].mean(1)
    const = params[1:4]

    def fused(centers, sigma_pos, sigma_size, weight_scale, temporal_a, temporal_b):
        return wiberg.argmin(wiberg.rbf_fusion_energy, y0, centers, *const, sigma_pos, sigma_size, weight_scale, temporal_a, temporal_b, damping=0.0)

    inputs = tuple(p.clone().requires_grad_() for p in (params[0],) + params[4:])
    assert torch.autograd.gradcheck(fused, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_rbf_fusion_module_shapes_and_gradients():
    gen = torch.Generator().manual_seed(15)
    B, T = 5, 4
    truth = torch.tensor([10.0, 20.0, 50.0, 60.0], dtype=DT)
    boxes = truth + 2.0 * torch.randn(B, T, 4, generator=gen, dtype=DT)
    model = wiberg.RBFFusion(T, sigma_pos=5.0)
    fused = model(boxes, boxes[:1].expand(B, T, 4), torch.linspace(0, 1, B, dtype=DT))
    assert fused.shape == (B, 4) and fused.dtype == DT
    lo, hi = boxes.min(1).values, boxes.max(1).values  # a consensus lies within the trackers' hull
    assert bool(((fused >= lo - 1e-9) & (fused <= hi + 1e-9)).all())
    (fused - truth).abs().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().max()) > 0, name


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_huber_fusion_argmin_matches_huber_fuse_gradients(damping):
    """wiberg.argmin over the Huber fusion energy and the fused probreg.huber_fuse op give
    the same minimiser and the same implicit gradients w.r.t. v, A and the weights (both
    regimes: some residuals inside delta, some outside; away from the kink)."""
    import probreg

    g = torch.Generator().manual_seed(11)
    B, n, d, delta = 16, 4, 2, 1.0
    v = torch.randn(B, n, d, generator=g, dtype=torch.float64) * 2
    A = torch.eye(d, dtype=torch.float64) * 1.5 + 0.3 * torch.randn(B, n, d, d, generator=g, dtype=torch.float64)
    w = 0.5 + torch.rand(B, n, generator=g, dtype=torch.float64)
    upstream = torch.randn(B, d, generator=g, dtype=torch.float64)

    def grads(solve):
        vv, AA, ww = (t.clone().requires_grad_(True) for t in (v, A, w))
        y = solve(vv, AA, ww)
        (y * upstream).sum().backward()
        return y.detach(), vv.grad, AA.grad, ww.grad

    fused = grads(lambda vv, AA, ww: probreg.huber_fuse(vv, AA, ww, delta, damping=damping, tol=1e-12).y)
    y0 = fused[0].clone()  # start the generic solver at the answer: compares gradients, not solvers
    generic = grads(
        lambda vv, AA, ww: wiberg.argmin(
            lambda y, vv_, AA_, ww_: wiberg.huber_fusion_energy(y, vv_, AA_, ww_, delta), y0, vv, AA, ww, damping=damping
        )
    )
    residuals = (A @ fused[0].unsqueeze(-2).unsqueeze(-1)).squeeze(-1) - v
    r = residuals.norm(dim=-1)
    assert ((r - delta).abs() > 1e-3).all(), "test problem sits on the Huber kink"
    assert (r < delta).any() and (r > delta).any()
    for a, b in zip(fused, generic):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)

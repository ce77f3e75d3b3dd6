"""The d > 3 operators (`probreg::_<op>_fallback`, probreg/_fallback.py) against
independent computations (issue 16, point 6): 40-digit mpmath spectral functions, a
float64 torch.linalg.eigh formula written here, scipy's minimiser for fusion, finite
differences for the gradients, and the fused C++ kernels where both run (d <= 3). Their
second derivatives are in tests/test_second_order.py, the rest of the autograd / compile
matrix in tests/test_autograd_matrix.py."""
import ast
import itertools
import math
import os

import mpmath
import pytest
import torch
from torch.autograd import gradcheck

import probreg
from probreg._ops import ops

from fuse_cases import hessian_np, independent_minimiser, random_problems, scaled_error
from helpers import ROOT, adversarial_symmetric, spd_remap_high_precision

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
FAMILIES = {"huber": 0, "gauss": 1, "laplace": 2, "charbonnier": 3}
COVARIANCES = {"identity": 0, "diagonal": 1, "full": 2}


# ------------------------------------------------------------------ spd
@pytest.mark.parametrize("d", [4, 5])
@pytest.mark.parametrize("theta", [1.0, 0.1])
def test_spd_remap_fallback_against_mpmath(d, theta):
    """float64 within 1e-10 of 40-digit mpmath on every adversarial family (LAPACK's eigh is
    the limit: ~1e-12 on wide spreads), float32 (computed in float64) within 2e-5."""
    cases = adversarial_symmetric(d, theta, seed=d, per_case=6)
    B = torch.cat(list(cases.values()))
    ref = spd_remap_high_precision(B, theta)
    rel = lambda a: (torch.linalg.matrix_norm(a.double() - ref) / torch.linalg.matrix_norm(ref)).max().item()
    assert rel(ops._spd_remap_fallback(B, theta)) <= 1e-10
    assert rel(ops._spd_remap_fallback(B.float(), theta)) <= 2e-5


@pytest.mark.parametrize("d", [4, 6])
def test_symeig_fallback_against_mpmath(d):
    g = torch.Generator().manual_seed(d)
    B = torch.randn(5, d, d, generator=g, dtype=F64)
    B = B + B.mT
    B[0] = 0.7 * torch.eye(d, dtype=F64)
    l, V = ops._symeig_fallback(B)
    assert V.is_contiguous()
    with mpmath.workdps(40):
        for k in range(B.shape[0]):
            E, _ = mpmath.eigsy(mpmath.matrix(B[k].tolist()))
            ref = sorted(float(e) for e in E)
            assert max(abs(a - b) for a, b in zip(l[k].tolist(), ref)) <= 1e-13 * max(1.0, max(map(abs, ref)))
    eye = torch.eye(d, dtype=F64)
    assert (V.mT @ V - eye).abs().max() <= 1e-14
    assert ((V * l.unsqueeze(-2)) @ V.mT - B).abs().max() <= 1e-13 * B.abs().max()


@pytest.mark.parametrize("d", [2, 3])
def test_spectral_fallbacks_match_fused_kernels(device, d):
    """Two independent implementations (torch eigh + probreg/_spectral.py divided
    differences, C++ Jacobi + csrc/include/probreg/spectral.h) of the same ops and backwards."""
    g = torch.Generator().manual_seed(20 + d)
    B = torch.randn(50, d, d, generator=g, dtype=F64)
    B = torch.cat([B + B.mT, 0.5 * torch.eye(d, dtype=F64).expand(2, d, d)]).to(device)
    G = torch.randn_like(B)
    for theta in (0.5, 2.0):
        assert (ops._spd_remap_fallback(B, theta) - ops.spd_remap(B, theta)).abs().max() <= 1e-12
        assert (ops._spd_remap_fallback_backward(G, B, theta) - ops._spd_remap_backward(G, B, theta)).abs().max() <= 1e-12
    distinct = B[:50]
    l, V = ops._symeig_fallback(distinct)
    l_ref, V_ref = ops.symeig(distinct)
    assert (l - l_ref).abs().max() <= 1e-12
    gl, gV = torch.randn_like(l), torch.randn_like(V)
    # the gauge-invariant gradient (eigenvector signs differ between the two solvers)
    sign = torch.sign((V * V_ref).sum(-2, keepdim=True))
    assert (ops._symeig_fallback_backward(gl, gV * sign, l, V) - ops._symeig_backward(gl, gV, l_ref, V_ref)).abs().max() <= 1e-10


# ------------------------------------------------------------------ huber_nll
def _nll_independent(pred, target, delta, theta, family, covariance, mu):
    """Per-target loss (no constant) from float64 torch.linalg.eigh, written independently of
    probreg: A = V diag(g(l)) V^T, log|A| = sum log g(l_i)."""
    d = target.shape[-1]
    loc, cov = pred[..., :d], pred[..., d:]
    if covariance == "full":
        idx = [(i, j) for i in range(d) for j in range(i, d)]
        B = torch.zeros(*cov.shape[:-1], d, d, dtype=F64)
        for k, (i, j) in enumerate(idx):
            value = cov[..., k] if i == j else cov[..., k] / math.sqrt(2.0)
            B[..., i, j] = value
            B[..., j, i] = value
        l, V = torch.linalg.eigh(B)
    elif covariance == "diagonal":
        l, V = cov, torch.eye(d, dtype=F64).expand(*cov.shape[:-1], d, d)
    else:
        l, V = torch.full_like(target, 2.0 * theta), torch.eye(d, dtype=F64).expand(*target.shape, d)
    g = torch.where(l > theta, l, theta * torch.exp(torch.clamp(l / theta - 1, max=0)))
    log_g = torch.where(l > theta, torch.log(torch.clamp(l, min=theta)), l / theta - 1 + math.log(theta))
    if covariance == "identity":
        g, log_g = torch.ones_like(g), torch.zeros_like(log_g)
    A = (V * g.unsqueeze(-2)) @ V.mT
    z = target - loc if mu else target
    r = (A @ z.unsqueeze(-1)).squeeze(-1) - (0 if mu else loc)
    s = torch.linalg.vector_norm(r, dim=-1)
    rho = {"huber": torch.where(s <= delta, 0.5 * s * s, delta * (s - 0.5 * delta)), "gauss": 0.5 * s * s,
           "laplace": s, "charbonnier": torch.sqrt(s * s + 1) - 1}[family]
    return -log_g.sum(-1) + rho


@pytest.mark.parametrize("covariance", list(COVARIANCES))
@pytest.mark.parametrize("mu", [False, True])
def test_huber_nll_fallback_against_eigh_formula_and_finite_differences(covariance, mu):
    d = 4
    g = torch.Generator().manual_seed(3)
    width = {"full": 10, "diagonal": 4, "identity": 0}[covariance]
    pred = torch.randn(6, d + width, generator=g, dtype=F64)
    target = torch.randn(6, d, generator=g, dtype=F64)
    for family in FAMILIES:
        options = (0.7, 0.5, FAMILIES[family], COVARIANCES[covariance], mu)
        loss = ops._huber_nll_fallback(pred, target, *options)
        ref = _nll_independent(pred, target, 0.7, 0.5, family, covariance, mu)
        assert (loss - ref).abs().max() <= 1e-12 * (1 + ref.abs().max()), family
        inputs = (pred.clone().requires_grad_(True), target.clone().requires_grad_(True))
        assert gradcheck(lambda p, t: ops._huber_nll_fallback(p, t, *options), inputs, check_forward_ad=True), family


@pytest.mark.parametrize("d", [2, 3])
def test_huber_nll_fallback_matches_fused_kernel(device, d):
    g = torch.Generator().manual_seed(30 + d)
    for family, covariance, mu in itertools.product(FAMILIES, COVARIANCES, (False, True)):
        width = {"full": d * (d + 1) // 2, "diagonal": d, "identity": 0}[covariance]
        pred = torch.randn(20, d + width, generator=g, dtype=F64).to(device)
        target = torch.randn(20, d, generator=g, dtype=F64).to(device)
        options = (0.7, 0.5, FAMILIES[family], COVARIANCES[covariance], mu)
        assert (ops._huber_nll_fallback(pred, target, *options) - ops.huber_nll(pred, target, *options)).abs().max() <= 1e-12
        go = torch.rand(20, generator=g, dtype=F64).to(device)
        go[0] = 0.0
        for a, b in zip(ops._huber_nll_fallback_backward(go, pred, target, *options, True),
                        ops._huber_nll_backward(go, pred, target, *options, True)):
            assert (a - b).abs().max() <= 1e-11, (family, covariance, mu)


# ------------------------------------------------------------------ huber_fuse
def test_huber_fuse_fallback_against_scipy_minimiser():
    """y* of the d = 4 solver against an independent scipy minimiser (BFGS + hybr on the
    gradient), the returned Hessian against a numpy closed form, the implicit gradient
    against finite differences of the converged solver."""
    problems = random_problems(6, 3, 4, seed=5)
    v, A, w = problems["v"], problems["A"], problems["weight"]
    y, H, iterations, converged = ops._huber_fuse_fallback(v, A, w, None, 1.0, 100, 1e-12, 0.0)
    assert bool(converged.all())
    assert scaled_error(y, independent_minimiser(problems)).max() <= 1e-10
    for p in range(6):
        H_ref = hessian_np(y[p].numpy(), v[p].numpy(), A[p].numpy(), w[p].numpy(), 1.0)
        assert (H[p] - torch.from_numpy(H_ref)).abs().max() <= 1e-12 * (1 + abs(H_ref).max())
    inputs = (v[:2].clone().requires_grad_(True), w[:2].clone().requires_grad_(True))
    assert gradcheck(lambda v_, w_: ops._huber_fuse_fallback(v_, A[:2], w_, None, 1.0, 100, 1e-14, 0.0)[0], inputs,
                     check_forward_ad=True)


def test_huber_fuse_fallback_matches_fused_kernel(device):
    problems = random_problems(20, 3, 2, seed=6)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    y, H, _, _ = ops._huber_fuse_fallback(v, A, w, None, 1.0, 100, 1e-12, 0.0)
    y_ref, H_ref, _, _ = ops.huber_fuse(v, A, w, None, 1.0, 100, 1e-12, 0.0)
    assert scaled_error(y, y_ref).max() <= 1e-10
    assert (H - H_ref).abs().max() <= 1e-9
    gy = torch.randn_like(y)
    for damping in (0.0, 0.3):
        for a, b in zip(ops._huber_fuse_fallback_backward(gy, y_ref, v, A, w, 1.0, damping),
                        ops._huber_fuse_backward(gy, y_ref, v, A, w, 1.0, damping)):
            assert (a - b).abs().max() <= 1e-9 * (1 + b.abs().max()), damping


# ------------------------------------------------------------------ routing
def test_public_functions_above_three_run_the_fallback_operators():
    """d > 3 through the public API: results are the fallback operators' and the autograd
    node is theirs (the operator's own rules, not probreg.reference)."""
    B = torch.randn(3, 5, 5, dtype=F64, requires_grad=True)
    A = probreg.spd_remap(B, 0.5)
    assert torch.equal(A, ops._spd_remap_fallback(B.detach(), 0.5))
    assert "_spd_remap_fallback" in type(A.grad_fn).__name__
    raw = torch.randn(3, 15, dtype=F64, requires_grad=True)
    assert "_spd_remap_fallback" in type(probreg.spd_from_raw(raw, 0.5).grad_fn).__name__
    assert "_symeig_fallback" in type(probreg.symeig(B)[0].grad_fn).__name__
    pred = torch.randn(3, 20, dtype=F64, requires_grad=True)
    loss = probreg.huber_nll(pred, torch.randn(3, 5, dtype=F64), reduction="none", normalized=False)
    assert "_huber_nll_fallback" in type(loss.grad_fn).__name__
    v = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    y = probreg.huber_fuse(v, torch.eye(5, dtype=F64).expand(2, 3, 5, 5)).y
    assert "_huber_fuse_fallback" in type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fallback_dtypes(dtype):
    """Half types compute in float32, float32 in float64; results in the input dtype (the
    NLL loss in float32 for half inputs), as the fused kernels."""
    B = torch.randn(4, 4, 4, dtype=F64)
    B = B + B.mT
    A = ops._spd_remap_fallback(B.to(dtype), 0.5)
    assert A.dtype == dtype
    tol = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    ref = ops._spd_remap_fallback(B.to(dtype).double(), 0.5)
    assert ((A.double() - ref).abs().max() / ref.abs().max()) <= tol
    loss = ops._huber_nll_fallback(torch.randn(3, 14).to(dtype), torch.randn(3, 4).to(dtype), 1.0, 0.5, 0, 2, False)
    assert loss.dtype == torch.float32


def test_no_production_module_uses_the_reference():
    """probreg.reference is an oracle for tests and benchmarks: no other module of the
    package imports it (probreg/__init__.py only exposes it)."""
    package = os.path.join(ROOT, "probreg")
    offenders = []
    for name in sorted(os.listdir(package)):
        if not name.endswith(".py") or name in ("reference.py", "closed_form_3x3.py", "__init__.py"):
            continue
        tree = ast.parse(open(os.path.join(package, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module == "reference" or any(a.name == "reference" for a in node.names)):
                offenders.append(name)
    assert not offenders, offenders

"""probreg.huber_fuse / fuse_predictions: accuracy against an independent minimiser (scipy,
tests/fuse_cases.py) on random and hard problems, iteration statistics, implicit
gradients (gradcheck, the damped formula against torch.func, bounds at singular H),
opcheck, torch.compile, bad input, NaN isolation, all-zero weights, CUDA graphs."""
from __future__ import annotations

import pytest
import torch

import probreg
from probreg import reference
from fuse_cases import (
    concat,
    far_apart_problems,
    independent_minimiser,
    nearly_singular_problems,
    random_problems,
    residual_norms,
    round_to,
    scaled_error,
    spread_out_problems,
    with_zero_weights,
)
from helpers import layouts

ops = torch.ops.probreg

# Accuracy contract vs the independent minimiser of the problem actually solved (inputs
# rounded to the dtype), error scaled by 1 + |y*|: float64 1e-9; float32 1e-4 (observed
# ~5e-8, the float32 rounding of y); half types compute in float32 and round the output.
ACCURACY = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _hard_cases() -> dict:
    cases = {}
    for d in (1, 2, 3):
        cases[f"random_d{d}"] = random_problems(24, 5, d, seed=d)
        cases[f"far_apart_d{d}"] = far_apart_problems(24, d, seed=10 + d)
        cases[f"nearly_singular_d{d}"] = nearly_singular_problems(24, 3, d, seed=20 + d)
        cases[f"n1_d{d}"] = random_problems(8, 1, d, seed=40 + d)
        cases[f"zero_weights_d{d}"] = with_zero_weights(random_problems(16, 4, d, seed=50 + d))[0]
    for d in (2, 3):  # in d = 1 a minimiser always sits on an estimate's quadratic piece
        spread = spread_out_problems(48, 6, d, seed=30 + d)
        ref = independent_minimiser(spread)
        outside = (residual_norms(spread, ref) > spread["delta"]).all(-1)
        cases[f"all_outside_d{d}"] = {k: (t[outside] if isinstance(t, torch.Tensor) else t) for k, t in spread.items()}
    cases["n128_d2"] = random_problems(4, 128, 2, seed=60)
    return cases


@pytest.fixture(scope="module")
def hard_cases():
    """name -> (problems, independent minimiser of the float64 and float32-rounded inputs)."""
    out = {}
    for name, problems in _hard_cases().items():
        out[name] = (problems, {
            torch.float64: independent_minimiser(problems),
            torch.float32: independent_minimiser(round_to(problems, torch.float32)),
        })
    return out


def _fuse(problems, dtype, device, **kw):
    return probreg.huber_fuse(
        problems["v"].to(device, dtype), problems["A"].to(device, dtype), problems["weight"].to(device, dtype),
        problems["delta"], **kw)


# ---------------------------------------------------------------- accuracy and iterations
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_accuracy_vs_independent_minimiser(hard_cases, device, dtype):
    for name, (problems, refs) in hard_cases.items():
        res = _fuse(problems, dtype, device)
        assert res.y.dtype == dtype and res.hessian.dtype == dtype
        assert bool(res.converged.all()), name
        err = scaled_error(res.y.cpu(), refs[dtype]).max().item()
        assert err <= ACCURACY[dtype], f"{name} {dtype}: scaled error {err:.2e}"


def test_all_outside_cases_are_present(hard_cases):
    for d in (2, 3):
        problems, refs = hard_cases[f"all_outside_d{d}"]
        assert problems["v"].shape[0] >= 20
        assert bool((residual_norms(problems, refs[torch.float64]) > problems["delta"]).all())


def test_iteration_statistics(hard_cases, device):
    """Median far below the authors' 20 fixed MM iterations, every problem converged."""
    iterations = []
    for name, (problems, _) in hard_cases.items():
        res = _fuse(problems, torch.float64, device)
        assert bool(res.converged.all()), name
        iterations.append(res.iterations.cpu())
    its = torch.cat(iterations).double()
    assert its.median().item() <= 5
    assert torch.quantile(its, 0.9).item() <= 9
    assert its.max().item() <= 20
    big = random_problems(2000, 8, 2, seed=7)
    res = _fuse(big, torch.float32, device)
    assert bool(res.converged.all())
    assert res.iterations.double().median().item() <= 5


def test_far_apart_authors_procedure_is_inaccurate(hard_cases):
    """The authors' 20 MM steps from the first estimate leave errors of order 1 on two
    far-apart estimates; probreg reaches the minimiser."""
    problems, refs = hard_cases["far_apart_d2"]
    authors = reference.huber_fuse_authors(problems["v"], problems["A"], problems["delta"])
    # the authors' procedure is unweighted: compare with the unweighted minimiser
    unweighted = dict(problems, weight=torch.ones_like(problems["weight"]))
    ref = independent_minimiser(unweighted)
    assert (authors - ref).abs().max().item() > 0.5
    ours = probreg.huber_fuse(unweighted["v"], unweighted["A"], unweighted["weight"], problems["delta"]).y
    assert (ours - ref).abs().max().item() < 1e-9


def test_hessian_is_true_hessian(hard_cases, device):
    """hessian == torch.func.hessian of the energy at y (random, far-apart, all-outside,
    zero weights; autograd needs finite padding)."""
    finite_padding = with_zero_weights(random_problems(8, 4, 2, seed=51), pad_value=3.0)[0]
    for name in ("random_d2", "far_apart_d3", "all_outside_d2", "finite_padding"):
        problems = finite_padding if name == "finite_padding" else hard_cases[name][0]
        res = _fuse(problems, torch.float64, device)
        for p in range(4):
            args = [problems[k][p] for k in ("v", "A", "weight")]
            H = torch.func.hessian(lambda y: reference.huber_energy(y, *args, problems["delta"]))(res.y[p].cpu())
            torch.testing.assert_close(res.hessian[p].cpu(), H, rtol=1e-10, atol=1e-10)


def test_half_types(device):
    problems = random_problems(64, 4, 2, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        ref = independent_minimiser(round_to(problems, dtype))
        res = _fuse(problems, dtype, device)
        assert res.y.dtype == dtype
        assert bool(res.converged.all())
        assert scaled_error(res.y.cpu(), ref).max().item() <= ACCURACY[dtype]


def test_layouts_and_broadcasting(device):
    problems = random_problems(6, 3, 2, seed=8)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    base = probreg.huber_fuse(v, A, w)
    for name, vv in layouts(v).items():
        AT = A.transpose(-1, -2).contiguous().transpose(-1, -2)  # non-contiguous, same values
        res = probreg.huber_fuse(vv, AT, layouts(w)[name])
        assert torch.equal(res.y, base.y), name
    # weight (n,) shared across the batch; a single problem without batch dims
    shared = probreg.huber_fuse(v, A, w[0])
    single = probreg.huber_fuse(v[1], A[1], w[0])
    torch.testing.assert_close(single.y, shared.y[1], rtol=0, atol=0)
    assert single.iterations.shape == () and single.hessian.shape == (2, 2)
    # batch (2, 3)
    res = probreg.huber_fuse(v.reshape(2, 3, 3, 2), A.reshape(2, 3, 3, 2, 2), w.reshape(2, 3, 3))
    torch.testing.assert_close(res.y.reshape(6, 2), base.y, rtol=0, atol=0)


def test_init_and_limits(device):
    problems = random_problems(32, 5, 2, seed=9)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    base = probreg.huber_fuse(v, A, w)
    # starting at the solution: converged at once, same point
    again = probreg.huber_fuse(v, A, w, init=base.y)
    assert int(again.iterations.max()) <= 1 and bool(again.converged.all())
    torch.testing.assert_close(again.y, base.y, rtol=0, atol=1e-12)
    # far-away init still converges to the same minimiser
    far = probreg.huber_fuse(v, A, w, init=base.y + 100.0)
    assert bool(far.converged.all())
    torch.testing.assert_close(far.y, base.y, rtol=0, atol=1e-9)
    # max_iter = 0: the start point, not converged
    none = probreg.huber_fuse(v, A, w, max_iter=0)
    assert not bool(none.converged.any()) and int(none.iterations.max()) == 0
    wls = reference.huber_fuse_weighted_least_squares(v, A, w)
    torch.testing.assert_close(none.y, wls, rtol=1e-10, atol=1e-10)
    # delta = inf: Gaussian fusion, the weighted least-squares point
    gauss = probreg.huber_fuse(v, A, w, float("inf"))
    torch.testing.assert_close(gauss.y, wls, rtol=1e-10, atol=1e-10)


def test_pure_pytorch_path_matches_kernel_and_serves_d4():
    problems = concat(random_problems(16, 4, 2, seed=11), far_apart_problems(16, 2, seed=12))
    args = [problems[k] for k in ("v", "A", "weight")]
    kernel = probreg.huber_fuse(*args)
    torch_path = reference.huber_fuse(*args)
    torch.testing.assert_close(torch_path[0], kernel.y, rtol=0, atol=1e-12)
    assert torch.equal(torch_path[2], kernel.iterations)
    d4 = random_problems(12, 5, 4, seed=13)
    res = probreg.huber_fuse(d4["v"], d4["A"], d4["weight"])
    assert bool(res.converged.all()) and res.y.shape == (12, 4)
    assert scaled_error(res.y, independent_minimiser(d4)).max().item() <= 1e-9


# ---------------------------------------------------------------- gradients
def _grad_problem(d, seed, P=3, n=3):
    problems = random_problems(P, n, d, seed=seed)
    return [problems[k].clone().requires_grad_(True) for k in ("v", "A", "weight")]


@pytest.mark.parametrize("d", [1, 2, 3])
def test_gradcheck_exact_implicit_gradient(device, d):
    """damping = 0: the implicit gradient equals finite differences of the converged solve."""
    v, A, w = (t.detach().to(device).requires_grad_(True) for t in _grad_problem(d, seed=100 + d))
    torch.autograd.gradcheck(lambda v, A, w: probreg.huber_fuse(v, A, w, tol=1e-13).y, (v, A, w), eps=1e-6,
                             atol=1e-6, rtol=1e-4)


def test_gradcheck_pure_pytorch_path_d4():
    v, A, w = _grad_problem(4, seed=104, P=2, n=4)
    torch.autograd.gradcheck(lambda v, A, w: probreg.huber_fuse(v, A, w, tol=1e-13).y, (v, A, w), eps=1e-6,
                             atol=1e-6, rtol=1e-4)


def _independent_damped_gradient(y, v, A, w, delta, damping, grad_y):
    """-(H + damping I)^{-1} d(grad_y E)/dtheta contracted with grad_y, per problem, from
    torch.func (hessian and jacrev of the energy), no probreg kernel involved."""
    out = [torch.zeros_like(t) for t in (v, A, w)]
    for p in range(y.shape[0]):
        def grad_E(yy, vv, AA, ww):
            return torch.func.grad(reference.huber_energy, argnums=0)(yy, vv, AA, ww, delta)

        H = torch.func.hessian(reference.huber_energy, argnums=0)(y[p], v[p], A[p], w[p], delta)
        mixed = torch.func.jacrev(grad_E, argnums=(1, 2, 3))(y[p], v[p], A[p], w[p])  # d(grad)/dtheta
        z = torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=H.dtype), grad_y[p])
        for k, J in enumerate(mixed):
            out[k][p] = -torch.tensordot(z, J, dims=1)
    return out


@pytest.mark.parametrize("d", [1, 2, 3])
def test_damped_gradient_formula(device, d):
    problems = concat(random_problems(3, 4, d, seed=200 + d), far_apart_problems(2, d, seed=210 + d))
    v, A, w = (problems[k].to(device).requires_grad_(True) for k in ("v", "A", "weight"))
    grad_y = torch.randn(v.shape[0], d, dtype=torch.float64, device=device)
    for damping in (0.3, 2.0):
        res = probreg.huber_fuse(v, A, w, tol=1e-13, damping=damping)
        got = torch.autograd.grad(res.y, (v, A, w), grad_y)
        want = _independent_damped_gradient(res.y.detach().cpu(), *(t.detach().cpu() for t in (v, A, w)),
                                             problems["delta"], damping, grad_y.cpu())
        for g, r in zip(got, want):
            torch.testing.assert_close(g.cpu(), r, rtol=1e-9, atol=1e-11)


def _flat_bottom_problem(d):
    """Two equal-weight estimates with A = I, 20 apart: E is flat on the segment between
    them, y* is not unique and H = sum (delta/r)(I - u u^T) is singular along the segment."""
    v = torch.zeros(1, 2, d, dtype=torch.float64)
    v[0, 1, 0] = 20.0
    A = torch.eye(d, dtype=torch.float64).expand(1, 2, d, d).clone()
    w = torch.ones(1, 2, dtype=torch.float64)
    return v, A, w


@pytest.mark.parametrize("d", [1, 2])
def test_bounded_gradients_where_hessian_is_singular(device, d):
    v, A, w = (t.to(device).requires_grad_(True) for t in _flat_bottom_problem(d))
    res = probreg.huber_fuse(v, A, w)
    assert bool(res.converged.all())
    eigenvalues = torch.linalg.eigvalsh(res.hessian.detach().cpu())
    assert eigenvalues.min().item() < 1e-12  # singular
    grad_y = torch.ones(1, d, dtype=torch.float64, device=device)
    for damping in (0.1, 1.0):
        out = probreg.huber_fuse(v, A, w, damping=damping)
        got = torch.autograd.grad(out.y, (v, A, w), grad_y)
        want = _independent_damped_gradient(out.y.detach().cpu(), *(t.detach().cpu() for t in (v, A, w)),
                                            1.0, damping, grad_y.cpu())
        y = out.y.detach().cpu()[0]
        for g, r, argnum in zip(got, want, (1, 2, 3)):
            assert bool(torch.isfinite(g).all())
            torch.testing.assert_close(g.cpu(), r, rtol=1e-9, atol=1e-12)
            # ||dy/dtheta^T grad_y|| <= ||grad_y|| ||d(grad E)/dtheta|| / damping
            J = torch.func.jacrev(lambda *a: torch.func.grad(reference.huber_energy)(*a, 1.0), argnums=argnum)(
                y, v.detach().cpu()[0], A.detach().cpu()[0], w.detach().cpu()[0])
            bound = torch.linalg.matrix_norm(J.reshape(d, -1), ord=2) * torch.linalg.vector_norm(grad_y) / damping
            assert torch.linalg.vector_norm(g).item() <= bound.item() * (1 + 1e-12)
    # damping = 0 at singular H: the pseudo-inverse gives finite gradients
    undamped = torch.autograd.grad(res.y, (v, A, w), grad_y)
    assert all(bool(torch.isfinite(g).all()) for g in undamped)


def test_zero_weight_gradients(device):
    padded, zero = with_zero_weights(random_problems(8, 4, 2, seed=300), pad_value=None)
    v, A, w = (padded[k].to(device).requires_grad_(True) for k in ("v", "A", "weight"))
    res = probreg.huber_fuse(v, A, w, tol=1e-13)
    gv, gA, gw = torch.autograd.grad(res.y.sum(), (v, A, w))
    zero = zero.to(device)
    assert bool((gv[zero] == 0).all()) and bool((gA[zero] == 0).all())
    # the weight of a removed estimate still gets dy*/dw (adding it would move y*): compare
    # with a one-sided difference (weights cannot go negative)
    h = 1e-7
    for p, i in zero.nonzero().tolist():
        w_plus = w.detach().clone()
        w_plus[p, i] = h
        y_plus = probreg.huber_fuse(v.detach(), A.detach(), w_plus, tol=1e-14).y
        one_sided = (y_plus[p].sum() - res.y[p].detach().sum()) / h
        assert abs(one_sided.item() - gw[p, i].item()) <= 1e-5 * (1 + abs(gw[p, i].item()))
        assert gw[p, i].item() != 0.0


# ---------------------------------------------------------------- operator registration
def test_opcheck(device):
    problems = random_problems(4, 3, 2, seed=400)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    for requires_grad in (False, True):
        args = (v.clone().requires_grad_(requires_grad), A.clone().requires_grad_(requires_grad),
                w.clone().requires_grad_(requires_grad), None, 1.0, 50, 1e-10, 0.1)
        torch.library.opcheck(ops.huber_fuse.default, args)
    args = (v.clone(), A.clone(), w.clone(), v[:, 0].clone(), 1.0, 50, 1e-10, 0.0)
    torch.library.opcheck(ops.huber_fuse.default, args)
    y = ops.huber_fuse(v, A, w, None, 1.0, 50, 1e-10, 0.0)[0]
    torch.library.opcheck(ops._huber_fuse_backward.default, (torch.randn_like(y), y, v, A, w, 1.0, 0.1))


def test_torch_compile_fullgraph(device):
    problems = random_problems(8, 3, 2, seed=401)
    v, A, w = (problems[k].to(device).requires_grad_(True) for k in ("v", "A", "weight"))

    def loss(v, A, w):
        res = probreg.huber_fuse(v, A, w, damping=0.1)
        return (res.y ** 2).sum() + res.hessian.sum().detach()

    compiled = torch.compile(loss, fullgraph=True)
    eager_value = loss(v, A, w)
    eager_grads = torch.autograd.grad(eager_value, (v, A, w))
    value = compiled(v, A, w)
    grads = torch.autograd.grad(value, (v, A, w))
    torch.testing.assert_close(value, eager_value)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


# ---------------------------------------------------------------- bad input and special problems
def test_bad_input_errors():
    problems = random_problems(2, 3, 2, seed=500)
    v, A, w = problems["v"], problems["A"], problems["weight"]
    with pytest.raises(ValueError, match="A has n = 4"):
        probreg.huber_fuse(v, torch.cat([A, A[:, :1]], dim=1), w)
    with pytest.raises(ValueError, match="weight has n = 2"):
        probreg.huber_fuse(v, A, w[:, :2])
    with pytest.raises(ValueError, match=r"A must have shape \(..., n, d, d\) with d = 2"):
        probreg.huber_fuse(v, torch.eye(3, dtype=torch.float64).expand(2, 3, 3, 3), w)
    with pytest.raises(ValueError, match="init must have shape"):
        probreg.huber_fuse(v, A, w, init=torch.zeros(2, 3, dtype=torch.float64))
    for delta in (-1.0, 0.0, float("nan")):
        with pytest.raises(ValueError, match="delta must be > 0"):
            probreg.huber_fuse(v, A, w, delta)
    with pytest.raises(ValueError, match="damping"):
        probreg.huber_fuse(v, A, w, damping=-0.1)
    with pytest.raises(ValueError, match="tol"):
        probreg.huber_fuse(v, A, w, tol=float("nan"))
    with pytest.raises(TypeError, match="floating-point"):
        probreg.huber_fuse(v, A, w.long())
    negative = w.clone()
    negative[1, 2] = -0.5
    with pytest.raises(ValueError, match="weight must be >= 0"):
        probreg.huber_fuse(v, A, negative)
    # the operator checks too (for direct torch.ops calls)
    with pytest.raises(RuntimeError, match="delta must be > 0"):
        ops.huber_fuse(v, A, w, None, -1.0, 50, 1e-6, 0.0)
    with pytest.raises(RuntimeError, match="weight must have shape"):
        ops.huber_fuse(v, A, w[:, :2], None, 1.0, 50, 1e-6, 0.0)
    with pytest.raises(RuntimeError, match="A must have shape"):
        ops.huber_fuse(v, A[..., :1], w, None, 1.0, 50, 1e-6, 0.0)


def test_nan_isolation_and_all_zero_weights(device):
    problems = random_problems(10, 4, 3, seed=501)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    clean = probreg.huber_fuse(v, A, w)
    v_bad, A_bad, w_bad = v.clone(), A.clone(), w.clone()
    v_bad[2, 1, 0] = float("nan")
    A_bad[5, 0, 1, 1] = float("inf")
    w_bad[7] = 0.0  # all weights zero
    w_bad[8, 3] = float("nan")
    res = probreg.huber_fuse(v_bad, A_bad, w_bad)
    others = [0, 1, 3, 4, 6, 9]
    assert torch.equal(res.y[others], clean.y[others])
    assert torch.equal(res.hessian[others], clean.hessian[others])
    assert torch.equal(res.iterations[others], clean.iterations[others])
    for p in (2, 5, 8):
        assert bool(torch.isnan(res.y[p]).all()) and not bool(res.converged[p])
    # all-zero weights: y NaN, Hessian of the zero energy = 0, no steps, not converged
    assert bool(torch.isnan(res.y[7]).all()) and not bool(res.converged[7])
    assert bool((res.hessian[7] == 0).all()) and int(res.iterations[7]) == 0
    # gradients: zero for the all-zero-weight problem, untouched elsewhere
    vg = v_bad.clone().requires_grad_(True)
    wg = w_bad.clone().requires_grad_(True)
    out = probreg.huber_fuse(vg, A_bad, wg, damping=0.1)
    grad_y = torch.where(torch.isnan(out.y), torch.zeros_like(out.y), torch.ones_like(out.y))
    gv, gw = torch.autograd.grad(out.y, (vg, wg), grad_y)
    assert bool((gv[7] == 0).all()) and bool((gw[7] == 0).all())
    vc = v.clone().requires_grad_(True)
    wc = w.clone().requires_grad_(True)
    clean_out = probreg.huber_fuse(vc, A, wc, damping=0.1)
    gv_clean, gw_clean = torch.autograd.grad(clean_out.y, (vc, wc), torch.ones_like(clean_out.y))
    assert torch.equal(gv[others], gv_clean[others]) and torch.equal(gw[others], gw_clean[others])


def test_zero_weight_padding_equals_ragged_problem(device):
    problems = random_problems(6, 3, 2, seed=502)
    v, A, w = (problems[k].to(device) for k in ("v", "A", "weight"))
    pad = lambda t, value: torch.cat([t, torch.full_like(t[:, :2], value)], dim=1)  # noqa: E731
    padded = probreg.huber_fuse(pad(v, float("nan")), pad(A, float("nan")), pad(w, 0.0))
    plain = probreg.huber_fuse(v, A, w)
    torch.testing.assert_close(padded.y, plain.y, rtol=0, atol=0)
    assert torch.equal(padded.converged, plain.converged)


def test_empty_batch_and_no_estimates(device):
    v = torch.zeros(0, 3, 2, dtype=torch.float64, device=device)
    res = probreg.huber_fuse(v, torch.zeros(0, 3, 2, 2, dtype=torch.float64, device=device))
    assert res.y.shape == (0, 2) and res.hessian.shape == (0, 2, 2) and res.converged.shape == (0,)
    # n = 0 behaves like all-zero weights (for 9 problems: one SIMD block of 8 and a tail)
    res = probreg.huber_fuse(torch.zeros(9, 0, 2, dtype=torch.float64, device=device),
                             torch.zeros(9, 0, 2, 2, dtype=torch.float64, device=device))
    assert bool(torch.isnan(res.y).all()) and not bool(res.converged.any()) and bool((res.hessian == 0).all())


# ---------------------------------------------------------------- fuse_predictions
def _predictions(P, n, d, seed):
    g = torch.Generator().manual_seed(seed)
    P_raw = d * (d + 1) // 2
    return torch.cat([2 * torch.randn(P, n, d, generator=g, dtype=torch.float64),
                      0.5 * torch.randn(P, n, P_raw, generator=g, dtype=torch.float64)], dim=-1)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_fuse_predictions_parameterizations(device, d):
    pred = _predictions(8, 3, d, seed=600 + d).to(device)
    A = probreg.spd_from_raw(pred[..., d:], 0.5)
    by_v = probreg.fuse_predictions(pred, theta=0.5)
    torch.testing.assert_close(by_v.y, probreg.huber_fuse(pred[..., :d], A).y, rtol=0, atol=0)
    by_mu = probreg.fuse_predictions(pred, theta=0.5, parameterization="mu")
    v_mu = (A @ pred[..., :d].unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(by_mu.y, probreg.huber_fuse(v_mu, A).y, rtol=0, atol=0)
    # a single "mu" prediction is its own maximum-likelihood point
    single = probreg.fuse_predictions(pred[:, :1], parameterization="mu")
    torch.testing.assert_close(single.y, pred[:, 0, :d], rtol=1e-12, atol=1e-12)


def test_fuse_predictions_common_transform_is_equivariant(device):
    """Every estimate in the same frame (M, t): the fused point maps by z = M x + t."""
    d = 2
    pred = _predictions(6, 3, d, seed=610).to(device)
    g = torch.Generator().manual_seed(611)
    M = (torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(6, 1, d, d, generator=g, dtype=torch.float64)).to(device)
    t = (5 * torch.randn(6, 1, d, generator=g, dtype=torch.float64)).to(device)
    own = probreg.fuse_predictions(pred, tol=1e-12)
    common = probreg.fuse_predictions(pred, transforms=(M.expand(6, 3, d, d), t.expand(6, 3, d)), tol=1e-12)
    expected = (M[:, 0] @ own.y.unsqueeze(-1)).squeeze(-1) + t[:, 0]
    torch.testing.assert_close(common.y, expected, rtol=1e-10, atol=1e-10)


def test_fuse_predictions_mirrored_tta(device):
    """The mirrored test-time augmentation: estimate 1 lives in the mirrored image frame
    x = (W - z_0, z_1). The fused point minimises the energy written in each estimate's
    own frame (independent minimiser on the explicitly transformed problem)."""
    d, W = 2, 64.0
    pred = _predictions(5, 2, d, seed=620)
    pred[..., :d] += 30.0
    M = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).expand(5, 2, 2, 2).clone()
    M[:, 0] = torch.eye(2, dtype=torch.float64)
    t = torch.zeros(5, 2, 2, dtype=torch.float64)
    t[:, 1, 0] = W
    for param in ("v", "mu"):
        res = probreg.fuse_predictions(pred.to(device), parameterization=param,
                                       transforms=(M.to(device), t.to(device)), tol=1e-12)
        A_own = probreg.spd_from_raw(pred[..., d:], 1.0)
        v_own = pred[..., :d] if param == "v" else (A_own @ pred[..., :d].unsqueeze(-1)).squeeze(-1)
        Minv = torch.linalg.inv(M)
        # residual in own frame: A_own x - v_own with x = M^{-1}(z - t) = Minv z - Minv t
        A_common = A_own @ Minv
        v_common = v_own + (A_common @ t.unsqueeze(-1)).squeeze(-1)
        ref = independent_minimiser({"v": v_common, "A": A_common, "weight": torch.ones(5, 2, dtype=torch.float64),
                                     "delta": 1.0})
        torch.testing.assert_close(res.y.cpu(), ref, rtol=1e-9, atol=1e-9)
        assert not torch.allclose(A_common, A_common.transpose(-1, -2))  # mirrored: non-symmetric A


def test_fuse_predictions_gradients():
    pred = _predictions(2, 3, 2, seed=630).requires_grad_(True)
    weight = torch.tensor([[1.0, 0.5, 0.8], [0.3, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda p, w: probreg.fuse_predictions(p, w, tol=1e-13, parameterization="mu").y,
                             (pred, weight), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_fuse_predictions_bad_size():
    with pytest.raises(ValueError, match="d \\+ d\\(d\\+1\\)/2"):
        probreg.fuse_predictions(torch.zeros(2, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="parameterization"):
        probreg.fuse_predictions(torch.zeros(2, 3, 5, dtype=torch.float64), parameterization="x")


# ---------------------------------------------------------------- CUDA graph capture
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_graph_capture():
    """No host synchronisation: the forward and the backward capture in a CUDA graph."""
    problems = random_problems(256, 4, 2, seed=700)
    v, A, w = (problems[k].cuda().float() for k in ("v", "A", "weight"))
    grad_y = torch.randn(256, 2, device="cuda")
    eager = ops.huber_fuse(v, A, w, None, 1.0, 50, 1e-6, 0.0)
    eager_grads = ops._huber_fuse_backward(grad_y, eager[0], v, A, w, 1.0, 0.1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        ops.huber_fuse(v, A, w, None, 1.0, 50, 1e-6, 0.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.huber_fuse(v, A, w, None, 1.0, 50, 1e-6, 0.0)
        grads = ops._huber_fuse_backward(grad_y, out[0], v, A, w, 1.0, 0.1)
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(out, eager):
        assert torch.equal(a, b)
    for a, b in zip(grads, eager_grads):
        assert torch.equal(a, b)
    # the CPU kernel agrees with the CUDA kernel
    cpu = ops.huber_fuse(v.cpu(), A.cpu(), w.cpu(), None, 1.0, 50, 1e-6, 0.0)
    torch.testing.assert_close(out[0].cpu(), cpu[0], rtol=1e-6, atol=1e-6)

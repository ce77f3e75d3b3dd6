"""probreg.huber_nll / HuberNLLLoss against the float64 eigh reference
(probreg.reference.huber_nll_reference), gradients, gradcheck, opcheck, torch.compile,
AMP dtypes, non-finite robustness, the appendix-C gradient bound and argument errors."""
import math

import pytest
import torch
from helpers import adversarial_symmetric, layouts, underflow_symmetric

import probreg
from probreg import reference
from probreg.nll import pred_width

FAMILIES = ["huber", "gauss", "laplace", "charbonnier"]
COVARIANCES = ["full", "diagonal", "identity"]
PARAMS = ["v", "mu"]
DELTA = 0.8
THETA = 0.5
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_inputs(d: int, covariance: str, n_random: int = 40, seed: int = 0, adversarial: bool = True):
    """float64 (pred, target): random rows, plus (full / diagonal) the DESIGN.md section 3
    adversarial matrices and eigenvalues far below -86 theta; residuals from tiny to ~10."""
    g = torch.Generator().manual_seed(seed)
    P = d * (d + 1) // 2
    if covariance == "full":
        mats = [torch.randn(n_random, d, d, generator=g, dtype=torch.float64)]
        if adversarial:
            mats += list(adversarial_symmetric(d, THETA, seed=seed, per_case=8).values())
            mats.append(underflow_symmetric(d, THETA, n=8))
        cov = probreg.pack_sym(torch.cat(mats))
    elif covariance == "diagonal":
        cov = torch.randn(n_random, d, generator=g, dtype=torch.float64) * 2
        if adversarial:
            extreme = torch.tensor([0.0, THETA, -80 * THETA, -1e3 * THETA, 1e3], dtype=torch.float64)
            cov = torch.cat([cov, extreme[torch.randint(0, 5, (20, d), generator=g)]])
    else:
        cov = torch.empty(n_random, 0, dtype=torch.float64)
    n = cov.shape[0]
    scale = 10 ** (torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 3)  # 1e-3 .. 10
    loc = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    target = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.cat([loc, cov], dim=-1), target


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max(|ref|, 1) per item (rows for vectors), in float64."""
    out, ref = out.double(), ref.double()
    if out.dim() > 1:
        scale = ref.abs().amax(-1, keepdim=True).clamp_min(1.0)
    else:
        scale = ref.abs().clamp_min(1.0)
    return float(((out - ref).abs() / scale).max()) if out.numel() else 0.0


def _loss_and_grads(fn, pred, target, grad_out, **kw):
    p = pred.detach().requires_grad_(True)
    t = target.detach().requires_grad_(True)
    loss = fn(p, t, DELTA, THETA, **kw)
    gp, gt = torch.autograd.grad(loss, (p, t), grad_out)
    return loss.detach(), gp, gt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_matches_float64_reference(device, dtype, covariance, d):
    """Loss and gradients (pred and target) of every family x parameterisation x
    reduction, on contiguous and non-contiguous inputs, against the float64 reference
    evaluated on the same (rounded) inputs."""
    pred64, target64 = make_inputs(d, covariance)
    pred_r, target_r = pred64.to(dtype), target64.to(dtype)  # the values the op sees
    n = pred64.shape[0]
    for family in FAMILIES:
        for param in PARAMS:
            for reduction in ("none", "sum", "mean"):
                kw = dict(parameterization=param, family=family, covariance=covariance, reduction=reduction)
                grad_out = torch.randn(n, dtype=torch.float64) if reduction == "none" else None
                ref = _loss_and_grads(reference.huber_nll_reference, pred_r.double(), target_r.double(), grad_out, **kw)
                for layout in ("contiguous", "non_contiguous") if reduction == "none" else ("contiguous",):
                    pred = layouts(pred_r.to(device))[layout]
                    target = layouts(target_r.to(device))[layout]
                    go = None if grad_out is None else grad_out.to(device, dtype)
                    out = _loss_and_grads(probreg.huber_nll, pred, target, go, **kw)
                    assert out[0].dtype == dtype and out[1].dtype == dtype and out[2].dtype == dtype
                    for name, o, r in zip(("loss", "grad_pred", "grad_target"), out, ref):
                        assert torch.isfinite(o).all(), (family, param, reduction, layout, name)
                        err = rel_err(o.cpu(), r)
                        assert err <= TOL[dtype], (family, param, reduction, layout, name, err)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reductions_and_weights(device, reduction):
    pred, target = make_inputs(2, "full", adversarial=False)
    weight = torch.rand(pred.shape[0], dtype=torch.float64)
    for w in (None, weight, weight[:1]):  # per-target and broadcast weights
        for normalized in (True, False):
            kw = dict(reduction=reduction, normalized=normalized)
            grad_out = torch.randn(pred.shape[0], dtype=torch.float64) if reduction == "none" else None
            ref = _loss_and_grads(reference.huber_nll_reference, pred, target, grad_out, weight=w, **kw)
            out = _loss_and_grads(
                probreg.huber_nll, pred.to(device), target.to(device),
                None if grad_out is None else grad_out.to(device),
                weight=None if w is None else w.to(device), **kw,
            )
            for o, r in zip(out, ref):
                assert rel_err(o.cpu(), r) <= 1e-10
    pred, target = pred.to(device), target.to(device)
    # Explicit values: mean = weighted mean; all-zero weights give 0 (not NaN).
    per = probreg.huber_nll(pred, target, DELTA, THETA, reduction="none")
    w = weight.to(device)
    mean = probreg.huber_nll(pred, target, DELTA, THETA, reduction="mean", weight=w)
    torch.testing.assert_close(mean, (w * per).sum() / w.sum())
    zero = probreg.huber_nll(pred, target, DELTA, THETA, reduction="mean", weight=torch.zeros_like(w))
    assert float(zero) == 0.0


def test_masked_targets_cost_nothing(device):
    """Zero-weight targets (e.g. invisible keypoints holding NaN) give exactly 0 loss and
    0 gradient, and leave the other targets' loss and gradients unchanged."""
    pred, target = make_inputs(2, "full", adversarial=False)
    pred, target = pred.float().to(device), target.float().to(device)
    visible = torch.rand(pred.shape[0], device=device) < 0.6
    target_nan = torch.where(visible.unsqueeze(-1), target, torch.full_like(target, float("nan")))
    p = pred.clone().requires_grad_(True)
    loss = probreg.huber_nll(p, target_nan, weight=visible.float(), reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    assert (p.grad[~visible] == 0).all()
    p2 = pred[visible].clone().requires_grad_(True)
    loss2 = probreg.huber_nll(p2, target[visible], reduction="sum")
    loss2.backward()
    torch.testing.assert_close(loss, loss2)
    torch.testing.assert_close(p.grad[visible], p2.grad)


def test_module_matches_function(device):
    pred, target = make_inputs(3, "diagonal", adversarial=False)
    pred, target = pred.to(device), target.to(device)
    module = probreg.HuberNLLLoss(0.5, 2.0, parameterization="mu", family="charbonnier", covariance="diagonal")
    expected = probreg.huber_nll(pred, target, 0.5, 2.0, parameterization="mu", family="charbonnier", covariance="diagonal")
    torch.testing.assert_close(module(pred, target), expected)
    assert "charbonnier" in repr(module)


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_large_d_pure_pytorch_path(covariance):
    """d > 3 is served by the eigh reference (same value and gradient contract)."""
    pred, target = make_inputs(4, covariance, n_random=16, adversarial=False)
    out = _loss_and_grads(probreg.huber_nll, pred, target, None, covariance=covariance, parameterization="mu")
    ref = _loss_and_grads(reference.huber_nll_reference, pred, target, None, covariance=covariance, parameterization="mu")
    for o, r in zip(out, ref):
        assert rel_err(o.reshape(-1), r.reshape(-1)) <= 1e-12


# ------------------------------------------------------------------ gradcheck / opcheck / compile
def _gradcheck_inputs(d: int, covariance: str, param: str):
    """Random rows plus (full) exactly degenerate B (0, c*I, theta*I), and a last target
    placed exactly on the Huber boundary ||r|| = delta."""
    pred, target = make_inputs(d, covariance, n_random=3, seed=3, adversarial=False)
    if covariance == "full":
        B = torch.stack([torch.zeros(d, d), 0.7 * torch.eye(d), THETA * torch.eye(d)]).double()
        pred = torch.cat([pred, torch.cat([torch.randn(3, d).double(), probreg.pack_sym(B)], -1)])
        target = torch.cat([target, torch.randn(3, d).double()])
        A = reference.spd_remap(reference.unpack_sym(pred[-1, d:]), THETA)
    elif covariance == "diagonal":
        A = torch.diag(reference.remap_g(pred[-1, d:], THETA))
    else:
        A = torch.eye(d, dtype=torch.float64)
    u = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float64), dim=0)
    y = target[-1]
    if param == "v":  # A y - v = delta u
        pred[-1, :d] = A @ y - DELTA * u
    else:  # A (y - mu) = delta u
        pred[-1, :d] = y - torch.linalg.solve(A, DELTA * u)
    return pred, target


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_gradcheck(device, covariance, d):
    for family in FAMILIES:
        for param in PARAMS:
            pred, target = _gradcheck_inputs(d, covariance, param)
            pred = pred.to(device).requires_grad_(True)
            target = target.to(device).requires_grad_(True)

            def fn(p, t):
                return probreg.huber_nll(p, t, DELTA, THETA, parameterization=param, family=family,
                                         covariance=covariance, reduction="none")

            assert torch.autograd.gradcheck(fn, (pred, target), eps=1e-6, atol=1e-6, rtol=1e-5), (family, param)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    for d, covariance in ((2, 2), (3, 1), (1, 0)):
        W = pred_width(d, {2: "full", 1: "diagonal", 0: "identity"}[covariance])
        pred = torch.randn(5, 3, W, dtype=torch.float64, device=device, requires_grad=requires_grad)
        target = torch.randn(5, 3, d, dtype=torch.float64, device=device, requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.probreg.huber_nll.default, (pred, target, DELTA, THETA, 0, covariance, False))
        grad = torch.randn(5, 3, dtype=torch.float64, device=device)
        torch.library.opcheck(
            torch.ops.probreg._huber_nll_backward.default,
            (grad, pred.detach(), target.detach(), DELTA, THETA, 3, covariance, True, True),
        )
        torch.library.opcheck(
            torch.ops.probreg._huber_nll_backward.default,
            (grad, pred.detach(), target.detach(), DELTA, THETA, 1, covariance, False, False),
        )


def test_torch_compile_fullgraph(device):
    pred, target = make_inputs(2, "full", adversarial=False)
    pred, target = pred.float().to(device), target.float().to(device)
    weight = (torch.rand(pred.shape[0], device=device) > 0.3).float()
    module = probreg.HuberNLLLoss(0.7, THETA, covariance="diagonal", reduction="sum")

    def loss_fn(p, t, w, delta):
        return (
            probreg.huber_nll(p, t, delta, THETA, family="huber", weight=w)
            + 0.1 * probreg.huber_nll(p, t, family="laplace", parameterization="mu", reduction="sum")
            + 0.01 * module(p[..., :4], t)
        )

    compiled = torch.compile(loss_fn, fullgraph=True)
    compiled_dynamic = torch.compile(loss_fn, fullgraph=True, dynamic=True)
    # A changing delta (a schedule) and batch size make dynamo treat both as symbolic
    # after the first recompilation; the normaliser follows (probreg::_log_normalizer).
    for delta, n in ((1.0, 64), (0.6, 64), (0.8, 50)):
        results = []
        for fn in (loss_fn, compiled, compiled_dynamic):
            p = pred[:n].clone().requires_grad_(True)
            t = target[:n].clone().requires_grad_(True)
            loss = fn(p, t, weight[:n], delta)
            loss.backward()
            results.append((loss.detach(), p.grad, t.grad))
        for compiled_result in results[1:]:
            for e, c in zip(results[0], compiled_result):
                assert c.dtype == e.dtype
                torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)


def test_log_normalizer_op():
    for d, family, delta in ((2, "huber", 0.3), (3, "charbonnier", 1.0), (1, "gauss", 2.0)):
        value = torch.ops.probreg._log_normalizer(d, family, delta)
        assert value.dtype == torch.float64 and value.shape == ()
        assert float(value) == probreg.normalizer.log_normalizer(d, family, delta)


# ------------------------------------------------------------------ dtypes (AMP)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_accurate_loss(device, dtype):
    pred64, target64 = make_inputs(2, "full", adversarial=False)
    pred, target = pred64.to(device, dtype), target64.to(device, dtype)
    p = pred.clone().requires_grad_(True)
    loss = probreg.huber_nll(p, target, DELTA, THETA, reduction="none")
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert p.grad.dtype == dtype
    ref = reference.huber_nll_reference(pred.double().cpu(), target.double().cpu(), DELTA, THETA, reduction="none")
    assert rel_err(loss.detach().cpu(), ref) <= 1e-5
    # Mixed dtypes (half prediction, float32 target) promote to float32.
    mixed = probreg.huber_nll(pred, target64.float().to(device), DELTA, THETA, reduction="none")
    ref_mixed = reference.huber_nll_reference(pred.double().cpu(), target64.float().double(), DELTA, THETA, reduction="none")
    assert mixed.dtype == torch.float32 and rel_err(mixed.cpu(), ref_mixed) <= 1e-5


def test_autocast_cpu_bfloat16():
    layer = torch.nn.Linear(8, pred_width(2))
    x = torch.randn(32, 8)
    target = torch.randn(32, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = layer(x)
        assert pred.dtype == torch.bfloat16
        loss = probreg.huber_nll(pred, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


# ------------------------------------------------------------------ robustness
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_non_finite_for_finite_inputs(device, dtype):
    """Eigenvalues far below -86 theta, exactly degenerate B, residuals of 1e30: finite
    loss and gradients for every family (gauss: residuals up to 1e15, since its loss
    s^2/2 at s = 1e30 exceeds the float32 range)."""
    d = 2
    B = torch.cat([
        underflow_symmetric(d, THETA, n=16),
        torch.zeros(4, d, d, dtype=torch.float64),
        3.0 * torch.eye(d, dtype=torch.float64).expand(4, d, d),
        -200 * THETA * torch.eye(d, dtype=torch.float64).expand(4, d, d),
    ])
    n = B.shape[0]
    for family in FAMILIES:
        big = 1e15 if family == "gauss" else 1e30
        for param in PARAMS:
            for loc_scale in (1.0, big):
                loc = torch.randn(n, d, dtype=torch.float64) * loc_scale
                pred = torch.cat([loc, probreg.pack_sym(B)], -1).to(device, dtype).requires_grad_(True)
                target = (torch.randn(n, d, dtype=torch.float64)).to(device, dtype).requires_grad_(True)
                loss = probreg.huber_nll(pred, target, DELTA, THETA, family=family, parameterization=param,
                                         reduction="none")
                loss.sum().backward()
                assert torch.isfinite(loss).all(), (family, param, loc_scale)
                assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all(), (family, param, loc_scale)


def test_naive_reference_is_not_finite_where_probreg_is():
    """The motivation (DESIGN.md sec. 1): float32 logdet of a reconstructed A fails for
    l << -theta, the eigenvalue route does not."""
    B = underflow_symmetric(2, THETA, n=16)
    pred = torch.cat([torch.randn(16, 2, dtype=torch.float64), probreg.pack_sym(B)], -1).float()
    target = torch.randn(16, 2)
    naive = reference.huber_nll_naive(pred, target, DELTA, THETA, reduction="none")
    assert not torch.isfinite(naive).all()
    assert torch.isfinite(probreg.huber_nll(pred, target, DELTA, THETA, reduction="none")).all()


@pytest.mark.parametrize("d", [1, 2, 3])
def test_huber_gradient_bound_appendix_c(device, d):
    """v parameterisation, Huber family: ||dL/dpred|| <= min(s, delta) sqrt(1 + ||y||^2)
    + sqrt(d) / theta for every input (paper app. C), checked on residuals 1e2..1e30 and
    attained up to the log-det term."""
    n = 256
    g = torch.Generator().manual_seed(d)
    B = probreg.pack_sym(torch.randn(n, d, d, generator=g, dtype=torch.float64) * 3)
    loc = torch.randn(n, d, generator=g, dtype=torch.float64) * 10 ** (torch.rand(n, 1, generator=g, dtype=torch.float64) * 28 + 2)
    target = torch.randn(n, d, generator=g, dtype=torch.float64) * 5
    pred = torch.cat([loc, B], -1).to(device).requires_grad_(True)
    loss = probreg.huber_nll(pred, target.to(device), DELTA, THETA, reduction="sum")
    loss.backward()
    grad_norm = pred.grad.cpu().norm(dim=-1)
    bound = DELTA * torch.sqrt(1 + (target * target).sum(-1)) + math.sqrt(d) / THETA
    assert (grad_norm <= bound * (1 + 1e-9)).all()
    assert torch.isfinite(grad_norm).all() and (grad_norm >= DELTA - math.sqrt(d) / THETA).all()


# ------------------------------------------------------------------ argument errors
def test_bad_input_errors():
    pred = torch.randn(4, 5)
    target = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same batch shape"):
        probreg.huber_nll(pred, torch.randn(3, 2))
    with pytest.raises(ValueError, match="width 5"):
        probreg.huber_nll(torch.randn(4, 4), target)
    with pytest.raises(ValueError, match="width 4"):
        probreg.huber_nll(pred, target, covariance="diagonal")
    with pytest.raises(ValueError, match="delta"):
        probreg.huber_nll(pred, target, delta=-0.1)
    with pytest.raises(ValueError, match="theta"):
        probreg.huber_nll(pred, target, theta=0.0)
    with pytest.raises(ValueError, match="theta"):
        probreg.huber_nll(pred, target, theta=-1.0)
    with pytest.raises(ValueError, match="family"):
        probreg.huber_nll(pred, target, family="cauchy")
    with pytest.raises(ValueError, match="reduction"):
        probreg.huber_nll(pred, target, reduction="max")
    with pytest.raises(ValueError, match="parameterization"):
        probreg.huber_nll(pred, target, parameterization="w")
    with pytest.raises(ValueError, match="covariance"):
        probreg.huber_nll(pred, target, covariance="spherical")
    with pytest.raises(ValueError, match="not normalisable"):
        probreg.huber_nll(pred, target, delta=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        probreg.huber_nll(pred, target.long())
    with pytest.raises(ValueError, match="family"):
        probreg.HuberNLLLoss(family="l1")
    assert torch.isfinite(probreg.huber_nll(pred, target, delta=0.0, normalized=False))
    # The raw op checks its own arguments too.
    ops = torch.ops.probreg
    with pytest.raises(RuntimeError, match="width 5"):
        ops.huber_nll(torch.randn(4, 6), target, 1.0, 1.0, 0, 2, False)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.huber_nll(pred.double(), target, 1.0, 1.0, 0, 2, False)
    with pytest.raises(RuntimeError, match="delta"):
        ops.huber_nll(pred, target, -1.0, 1.0, 0, 2, False)
    with pytest.raises(RuntimeError, match="family"):
        ops.huber_nll(pred, target, 1.0, 1.0, 7, 2, False)
    with pytest.raises(RuntimeError, match="batch shape"):
        ops._huber_nll_backward(torch.randn(3), pred, target, 1.0, 1.0, 0, 2, False, True)


def test_empty_batch(device):
    pred = torch.randn(0, 5, device=device, requires_grad=True)
    loss = probreg.huber_nll(pred, torch.randn(0, 2, device=device), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and pred.grad.shape == (0, 5)

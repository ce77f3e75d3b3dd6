"""huber_nll's one-pass route (probreg/_autograd.py _HuberNllOnePass): on the CPU, where only
a first-order backward is recorded, the forward computes the loss and its gradients in one
pass (probreg::_huber_nll_and_grad) and the backward scales them by grad_loss.

Checked here: _huber_nll_and_grad against the float64 reference (loss and autograd of the
reference) and bit for bit against the two separate operators it replaces (its contract);
the gradients autograd returns through the route against the reference for every upstream
gradient shape (one broadcast value: sum / mean; per target; zeros with non-finite masked
inputs); create_graph, retain_graph and accumulation; where the route is taken and where not.
The derivative matrix and the bad-input tables cover the operator with the others
(test_autograd_matrix.py, test_bad_inputs.py, test_hostile_sweep.py)."""
from __future__ import annotations

import pytest
import torch

import probreg
from probreg import reference
from probreg._ops import ops

from helpers import layouts

F64 = torch.float64
FAMILIES = ("huber", "gauss", "laplace", "charbonnier")
COVARIANCES = ("identity", "diagonal", "full")  # codes 0, 1, 2
DELTA, THETA = 0.7, 0.4


def _problem(d, covariance, n=37, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed + 10 * d + covariance)
    width = probreg.nll.pred_width(d, COVARIANCES[covariance])
    pred = torch.randn(n, width, generator=g, dtype=F64)
    target = torch.randn(n, d, generator=g, dtype=F64)
    return pred.to(dtype), target.to(dtype)


def _reference(pred, target, family, covariance, mu):
    """(loss, grad_pred, grad_target) of the float64 reference for grad_loss = 1."""
    p, t = (x.detach().double().requires_grad_(True) for x in (pred, target))
    loss = reference.huber_nll_reference(p, t, DELTA, THETA, parameterization="mu" if mu else "v",
                                         family=FAMILIES[family], covariance=COVARIANCES[covariance],
                                         reduction="none", normalized=False)
    return (loss.detach(), *torch.autograd.grad(loss.sum(), (p, t)))


def _options(family, covariance, mu):
    return (DELTA, THETA, family, covariance, mu)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", range(4))
@pytest.mark.parametrize("covariance", range(3))
@pytest.mark.parametrize("d", [1, 2, 3])
def test_and_grad_matches_reference_and_the_separate_operators(d, covariance, family, dtype):
    pred, target = _problem(d, covariance, dtype=dtype)
    mu = family % 2 == 1
    options = _options(family, covariance, mu)
    loss, grad_pred, grad_target = ops._huber_nll_and_grad(pred, target, *options, True)
    ref = _reference(pred, target, family, covariance, mu)
    tol = {F64: 1e-10, torch.float32: 2e-5}.get(dtype, 2e-2)
    for got, want in zip((loss, grad_pred, grad_target), ref):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    # the contract: the two operators' values bit for bit
    ones = torch.ones(target.shape[:-1], dtype=loss.dtype)
    separate = (ops.huber_nll(pred, target, *options), *ops._huber_nll_backward(ones, pred, target, *options, True))
    for got, want in zip((loss, grad_pred, grad_target), separate):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert ops._huber_nll_and_grad(pred, target, *options, False)[2].shape == (0,)
    # any upstream value: _huber_nll_backward's with that value broadcast, bit for bit (the
    # value rounded to the loss dtype first, as a grad_loss tensor holds it)
    scaled = ops._huber_nll_and_grad(pred, target, *options, True, 1.0 / 37)
    upstream = torch.full(target.shape[:-1], 1.0 / 37, dtype=loss.dtype)
    separate = (loss, *ops._huber_nll_backward(upstream, pred, target, *options, True))
    for got, want in zip(scaled, separate):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    tol_scaled = tol / 37
    for got, want in zip(scaled[1:], ref[1:]):
        torch.testing.assert_close(got.double(), want / 37, rtol=tol, atol=tol_scaled)


@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_and_grad_any_layout(layout):
    pred, target = _problem(3, 2, n=24, dtype=torch.float32, seed=5)
    pred_l, target_l = layouts(pred)[layout], layouts(target)[layout]
    got = ops._huber_nll_and_grad(pred_l, target_l, *_options(0, 2, False), True)
    want = ops._huber_nll_and_grad(pred, target, *_options(0, 2, False), True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_and_grad_matches_the_cuda_float32_emulation(monkeypatch):
    """Under PROBREG_CPU_EMULATE_CUDA_FLOAT32=1 the one pass runs the CUDA row bodies too."""
    pred, target = _problem(3, 2, dtype=torch.float32, seed=7)
    options = _options(0, 2, False)
    monkeypatch.setenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32", "1")
    loss, grad_pred, grad_target = ops._huber_nll_and_grad(pred, target, *options, True)
    ones = torch.ones(target.shape[:-1])
    separate = (ops.huber_nll(pred, target, *options), *ops._huber_nll_backward(ones, pred, target, *options, True))
    for got, want in zip((loss, grad_pred, grad_target), separate):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    ref = _reference(pred, target, 0, 2, False)
    for got, want in zip((loss, grad_pred, grad_target), ref):
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------ the autograd route
def _leaves(pred, target, target_grad=True):
    return pred.detach().clone().requires_grad_(True), target.detach().clone().requires_grad_(target_grad)


def _upstreams(n, dtype):
    g = torch.Generator().manual_seed(3)
    per_target = torch.rand(n, generator=g, dtype=F64).to(dtype) + 0.5
    return {
        "sum": lambda loss: loss.sum(),
        "mean": lambda loss: loss.mean(),
        "scaled sum": lambda loss: 2.5 * loss.sum(),
        "per target": lambda loss: (per_target * loss).sum(),
    }, {"sum": torch.ones(n, dtype=F64), "mean": torch.full((n,), 1.0 / n, dtype=F64),
        "scaled sum": torch.full((n,), 2.5, dtype=F64), "per target": per_target.double()}


@pytest.mark.parametrize("upstream", ["sum", "mean", "scaled sum", "per target"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("d", [2, 3])
def test_route_gradients_match_reference(d, dtype, upstream):
    pred, target = _problem(d, 2, dtype=dtype, seed=11)
    reduce, go = _upstreams(pred.shape[0], dtype)
    p, t = _leaves(pred, target)
    loss = ops.huber_nll(p, t, *_options(0, 2, False))
    assert loss.grad_fn.name() == "_HuberNllOnePassBackward"
    reduce[upstream](loss).backward()
    _, ref_pred, ref_target = _reference(pred, target, 0, 2, False)
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(p.grad.double(), ref_pred * go[upstream].unsqueeze(-1), rtol=tol, atol=tol)
    torch.testing.assert_close(t.grad.double(), ref_target * go[upstream].unsqueeze(-1), rtol=tol, atol=tol)
    if upstream == "sum":  # grad_loss 1: the backward operator's values bit for bit
        ones = torch.ones(pred.shape[0], dtype=dtype)
        want = ops._huber_nll_backward(ones, pred, target, *_options(0, 2, False), True)
        torch.testing.assert_close((p.grad, t.grad), want, rtol=0, atol=0)


def test_route_masked_targets_get_exact_zeros():
    """grad_loss 0 on targets whose inputs are NaN / Inf: exactly 0 there, as the backward
    operator gives (weight 0 masks a target)."""
    pred, target = _problem(3, 2, n=8, dtype=torch.float32, seed=13)
    pred[2, 4], target[5, 0], pred[6, 0] = float("nan"), float("inf"), float("-inf")
    weight = torch.ones(8)
    weight[[2, 5, 6]] = 0
    p, t = _leaves(pred, target)
    loss = probreg.huber_nll(p, t, delta=DELTA, theta=THETA, weight=weight, reduction="sum")
    assert torch.isfinite(loss)
    loss.backward()
    for grad in (p.grad, t.grad):
        assert torch.isfinite(grad).all()
        assert (grad[[2, 5, 6]] == 0).all()
    keep = weight.bool()
    _, ref_pred, ref_target = _reference(pred[keep], target[keep], 0, 2, False)
    torch.testing.assert_close(p.grad[keep].double(), ref_pred, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(t.grad[keep].double(), ref_target, rtol=2e-5, atol=2e-5)
    # one broadcast 0: every gradient exactly 0
    p, t = _leaves(pred, target)
    (0.0 * ops.huber_nll(p, t, *_options(0, 2, False)).sum()).backward()
    assert (p.grad == 0).all() and (t.grad == 0).all()


def test_route_create_graph_and_retain_graph():
    pred, target = _problem(3, 2, dtype=F64, seed=17)
    options = _options(0, 2, False)
    ones = torch.ones(pred.shape[0], dtype=F64)
    once = ops._huber_nll_backward(ones, pred, target, *options, False)[0]
    # retain_graph: the second backward does not see the first one's in-place scaling
    p, t = _leaves(pred, target, target_grad=False)
    loss = ops.huber_nll(p, t, *options)
    (g2,) = torch.autograd.grad(2.0 * loss.sum(), p, retain_graph=True)
    (g3,) = torch.autograd.grad(3.0 * loss.sum(), p)
    torch.testing.assert_close(g2, 2.0 * once, rtol=0, atol=0)
    torch.testing.assert_close(g3, 3.0 * once, rtol=0, atol=0)  # recomputed: the same values
    # create_graph: the same first-order values, and a differentiable backward
    p, t = _leaves(pred, target, target_grad=False)
    (g_recorded,) = torch.autograd.grad(3.0 * ops.huber_nll(p, t, *options).sum(), p, create_graph=True)
    assert g_recorded.requires_grad
    torch.testing.assert_close(g_recorded, 3.0 * once, rtol=0, atol=0)
    # (gradcheck / gradgradcheck: finite differences; the float64 reference's own double
    # backward is not exact, eigh)
    small = tuple(x[:6].clone().requires_grad_(True) for x in (pred, target))
    assert ops.huber_nll(*small, *options).grad_fn.name() == "_HuberNllOnePassBackward"
    assert torch.autograd.gradcheck(lambda p, t: ops.huber_nll(p, t, *options), small)
    assert torch.autograd.gradgradcheck(lambda p, t: ops.huber_nll(p, t, *options), small)
    # gradients accumulate over two forward/backward passes
    p, t = _leaves(pred, target, target_grad=False)
    for _ in range(2):
        ops.huber_nll(p, t, *options).sum().backward()
    torch.testing.assert_close(p.grad, 2.0 * once, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("d", [2, 3])
def test_mean_route_folds_the_mean_into_the_pass(d, dtype):
    """probreg.huber_nll's default mean reduction (no weights): the route returns the mean
    itself, with the gradients for grad_loss = 1/n from the one pass (_huber_nll_and_grad's
    grad_loss), and scales them by the mean's upstream gradient."""
    pred, target = _problem(d, 2, n=41, dtype=dtype, seed=37)
    n = pred.shape[0]
    options = _options(0, 2, False)
    kwargs = dict(delta=DELTA, theta=THETA, normalized=False)
    p, t = _leaves(pred, target)
    mean = probreg.huber_nll(p, t, **kwargs)
    assert mean.grad_fn.name() == "_HuberNllOnePassBackward" and mean.shape == ()
    ref_loss, ref_pred, ref_target = _reference(pred, target, 0, 2, False)
    tol = 1e-12 if dtype == F64 else 2e-5
    torch.testing.assert_close(mean.double(), ref_loss.mean(), rtol=tol, atol=tol)
    assert torch.equal(mean.detach(), ops.huber_nll(pred, target, *options).sum() * (1.0 / n))  # _weighted_reduce's
    mean.backward()
    torch.testing.assert_close(p.grad.double(), ref_pred / n, rtol=tol, atol=tol / n)
    torch.testing.assert_close(t.grad.double(), ref_target / n, rtol=tol, atol=tol / n)
    per_target = torch.full((n,), 1.0 / n, dtype=dtype)
    want = ops._huber_nll_backward(per_target, pred, target, *options, True)
    torch.testing.assert_close((p.grad, t.grad), want, rtol=0, atol=0)
    # an upstream gradient on the mean scales them (as the per-target route scales its
    # unit gradients); the normaliser constant does not change them
    p, t = _leaves(pred, target)
    (2.5 * probreg.huber_nll(p, t, delta=DELTA, theta=THETA)).backward()
    torch.testing.assert_close((p.grad, t.grad), tuple(g * 2.5 for g in want), rtol=0, atol=0)
    torch.testing.assert_close(p.grad.double(), ref_pred * (2.5 / n), rtol=tol, atol=tol / n)
    # retain_graph and create_graph: the same values as the first backward
    p, t = _leaves(pred, target, target_grad=False)
    mean = probreg.huber_nll(p, t, **kwargs)
    (g1,) = torch.autograd.grad(mean, p, retain_graph=True)
    (g2,) = torch.autograd.grad(3.0 * mean, p, retain_graph=True)
    (g3,) = torch.autograd.grad(3.0 * mean, p, create_graph=True)
    torch.testing.assert_close(g1, want[0], rtol=0, atol=0)
    torch.testing.assert_close(g2, want[0] * 3.0, rtol=0, atol=0)
    torch.testing.assert_close(g3, want[0] * 3.0, rtol=0, atol=0)
    assert g3.requires_grad


def test_mean_route_second_order_and_where_it_applies():
    pred, target = _problem(3, 2, n=6, dtype=F64, seed=41)
    small = tuple(x.clone().requires_grad_(True) for x in (pred, target))
    mean = lambda p, t: probreg.huber_nll(p, t, delta=DELTA, theta=THETA, normalized=False)
    assert mean(*small).grad_fn.name() == "_HuberNllOnePassBackward"
    assert torch.autograd.gradcheck(mean, small)
    assert torch.autograd.gradgradcheck(mean, small)
    p, t = _leaves(pred, target)
    # weights, sums and empty batches reduce huber_nll's per-target loss as before
    weighted = probreg.huber_nll(p, t, weight=torch.ones(6))
    assert weighted.grad_fn.name() != "_HuberNllOnePassBackward"
    assert probreg.huber_nll(p, t, reduction="sum").grad_fn.name() != "_HuberNllOnePassBackward"
    empty = probreg.huber_nll(p[:0], t[:0])
    assert empty.item() == 0 and empty.grad_fn.name() != "_HuberNllOnePassBackward"
    # nothing to record: the plain operator and _weighted_reduce, the same value
    assert mean(pred, target).grad_fn is None
    assert torch.equal(mean(*small).detach(), mean(pred, target))


def _route(pred, target, **kwargs):
    return ops.huber_nll(pred, target, *_options(0, 2, False)).grad_fn.name()


def test_route_taken_only_where_it_applies():
    pred, target = _problem(3, 2, dtype=torch.float32, seed=19)
    p, t = _leaves(pred, target, target_grad=False)
    assert _route(p, t) == "_HuberNllOnePassBackward"
    p2, t2 = _leaves(*_problem(2, 2, dtype=torch.float32, seed=19))  # d = 2 takes it too
    assert _route(p2, t2) == "_HuberNllOnePassBackward"
    p1, t1 = _leaves(*_problem(1, 2, dtype=torch.float32, seed=19))  # d = 1: the two-pass rule
    assert _route(p1, t1) == "huber_nll_functionBackward"
    assert _route(torch.nn.Parameter(pred.clone()), target) == "_HuberNllOnePassBackward"
    assert _route(p.half(), t.half()) == "huber_nll_functionBackward"  # half types: the two-pass rule
    with torch.autograd.forward_ad.dual_level():  # a forward-AD level may need the jvp rule
        assert _route(p, t) == "huber_nll_functionBackward"
    # torch.jit.trace records huber_nll itself (the tracer sits above autograd), never the
    # route's _huber_nll_and_grad: the traced function differentiates as the eager one
    traced = torch.jit.trace(lambda a, b: ops.huber_nll(a, b, *_options(0, 2, False)), (p, t))
    grad_traced = torch.autograd.grad(traced(p, t).sum(), p)[0]
    grad_eager = torch.autograd.grad(ops.huber_nll(p, t, *_options(0, 2, False)).sum(), p)[0]
    torch.testing.assert_close(grad_traced, grad_eager, rtol=0, atol=0)
    # d > 3 runs the pure-PyTorch fallback operators, never this route
    p4, t4 = _leaves(*_problem(4, 2, dtype=torch.float32, seed=23))
    assert probreg.huber_nll(p4, t4).grad_fn.name() != "_HuberNllOnePassBackward"


def test_route_errors_name_huber_nll():
    """Invalid arguments that require grad: huber_nll's own error, not the internal operator's."""
    pred, target = _problem(3, 2, dtype=torch.float32, seed=29)
    p = pred[:, :8].clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"probreg\.huber_nll: pred must have width 9") as info:
        ops.huber_nll(p, target, *_options(0, 2, False))
    assert "_huber_nll_and_grad" not in str(info.value)


def test_and_grad_is_not_differentiable():
    pred, target = _leaves(*_problem(2, 2, dtype=F64, seed=31))
    loss, _, _ = ops._huber_nll_and_grad(pred, target, *_options(0, 2, False), True)
    with pytest.raises(RuntimeError, match=r"_huber_nll_and_grad is not differentiable.*huber_nll"):
        loss.sum().backward()

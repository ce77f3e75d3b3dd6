"""Tests for probreg.ebm against closed-form Gaussian references (scipy for densities)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from probreg import ebm


# Small tensors: one intra-op thread (conftest.py one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _gaussian_problem(batch, d, seed):
    """Per-element Gaussians N(mu_b, cov_b) in float64 and one draw y_b from each."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, d, generator=g, dtype=torch.float64)
    a = 0.4 * torch.randn(batch, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(-1, -2) + 0.2 * torch.eye(d, dtype=torch.float64)
    y = mu + torch.einsum("bij,bj->bi", torch.linalg.cholesky(cov), torch.randn(batch, d, generator=g, dtype=torch.float64))
    return mu, cov, y


def _gaussian_score(mu, cov, offset):
    """f(y) = log N(y; mu_b, cov_b) + offset for y of shape (B, d) or (B, M, d).

    The offset makes exp(f) unnormalised (Z = exp(offset)), which the NLL must remove.
    """
    precision = torch.linalg.inv(cov)
    logdet = torch.logdet(cov)
    d = mu.shape[-1]

    def score(y):
        extra = y.ndim - 2
        view = (mu.shape[0],) + (1,) * extra
        diff = y - mu.view(*view, d)
        maha = torch.einsum("...i,...ij,...j->...", diff, precision.view(*view, d, d), diff)
        return -0.5 * maha - 0.5 * logdet.view(view) - 0.5 * d * math.log(2 * math.pi) + offset

    return score


def _scipy_nll(mu, cov, y):
    return np.array([-stats.multivariate_normal(mean=m, cov=c).logpdf(t) for m, c, t in zip(mu.numpy(), cov.numpy(), y.numpy())])


# --------------------------------------------------------------------------- proposal


@pytest.mark.parametrize("sigmas", [[0.1, 0.5, 2.0], [[0.1, 1.0, 0.3], [2.0, 0.5, 4.0]]], ids=["isotropic", "diagonal"])
def test_proposal_log_density_matches_scipy_mixture(sigmas):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)  # two batch axes, d = 3
    samples, log_q = ebm.sample_proposal(y, sigmas, 7, generator=g)
    assert samples.shape == (4, 5, 7, 3) and log_q.shape == (4, 5, 7)
    assert samples.dtype == log_q.dtype == torch.float64
    sig = np.broadcast_to(np.asarray(sigmas, dtype=float).reshape(len(sigmas), -1), (len(sigmas), 3))
    s, c = samples.numpy(), y.numpy()[..., None, :]
    comps = [stats.norm.logpdf(s, loc=c, scale=sl).sum(-1) for sl in sig]  # (4, 5, 7) each
    expected = np.logaddexp.reduce(np.stack(comps), axis=0) - math.log(len(sig))
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_proposal_moments_match_mixture():
    # Mixture of zero-mean components: mean y, per-coordinate variance mean_l sigma_l^2,
    # and a fraction 1/L of samples from each component.
    y = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    sigmas = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    samples, _ = ebm.sample_proposal(y, sigmas, 200_000, generator=torch.Generator().manual_seed(2))
    diff = samples[0] - y
    expected_var = float(sigmas.square().mean())
    assert torch.allclose(diff.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.03)
    assert torch.allclose(diff.var(0), torch.full((2,), expected_var, dtype=torch.float64), rtol=0.02)
    # P(|diff| < 0.3) in one coordinate: the sigma=0.1 component contributes ~1, others less.
    inside = (diff[:, 0].abs() < 0.3).double().mean().item()
    expected_inside = float(np.mean([2 * stats.norm.cdf(0.3 / s) - 1 for s in sigmas.numpy()]))
    assert abs(inside - expected_inside) < 0.005


def test_proposal_is_deterministic_with_generator_and_float32():
    y = torch.zeros(3, 1)
    a = ebm.sample_proposal(y, [0.5], 4, generator=torch.Generator().manual_seed(3))
    b = ebm.sample_proposal(y, [0.5], 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].dtype == torch.float32 and a[0].shape == (3, 4, 1)
    expected = torch.from_numpy(stats.norm.logpdf(a[0].double().numpy(), scale=0.5).sum(-1))
    assert torch.allclose(a[1].double(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "y, sigmas, num_samples, match",
    [
        (torch.zeros(0, 2), [1.0], 4, r"\(\*B, d\) with a non-empty batch"),
        (torch.zeros(3, 0), [1.0], 4, r"\(\*B, d\) with d >= 1"),
        (torch.tensor(1.0), [1.0], 4, r"\(\*B, d\)"),
        (torch.zeros(3, 2), [1.0, 0.0], 4, r"> 0"),
        (torch.zeros(3, 2), [1.0, -1.0], 4, r"> 0"),
        (torch.zeros(3, 2), [float("nan")], 4, r"> 0"),
        (torch.zeros(3, 2), [], 4, r"L >= 1"),
        (torch.zeros(3, 2), [[1.0, 1.0, 1.0]], 4, r"\(L, d\) = \(L, 2\)"),
        (torch.zeros(3, 2), [1.0], 0, r"num_samples must be an int >= 1"),
        (torch.zeros(3, 2, dtype=torch.int64), [1.0], 4, r"floating-point"),
    ],
)
def test_sample_proposal_rejects_bad_input(y, sigmas, num_samples, match):
    with pytest.raises(ValueError, match=match):
        ebm.sample_proposal(y, sigmas, num_samples)


# --------------------------------------------------------------------------- nll


def test_mc_nll_converges_to_exact_gaussian_nll():
    mu, cov, y = _gaussian_problem(batch=64, d=2, seed=0)
    score = _gaussian_score(mu, cov, offset=3.0)  # unnormalised: log Z = 3
    exact = torch.from_numpy(_scipy_nll(mu, cov, y))
    g = torch.Generator().manual_seed(10)
    rms = {}
    for m in (16, 256, 8192):
        samples, log_q = ebm.sample_proposal(y, [0.25, 1.0, 3.0], m, generator=g)
        per_target = ebm.nll(score(y), score(samples), log_q, reduction="none")
        assert per_target.shape == (64,)
        rms[m] = (per_target - exact).square().mean().sqrt().item()
        mean = ebm.nll(score(y), score(samples), log_q)
        assert torch.allclose(mean, per_target.mean())
    assert rms[16] > rms[256] > rms[8192]
    assert rms[8192] < 0.03, rms
    assert rms[16] > 0.3, rms  # the small-M estimate really is off: the test has resolution


def test_mc_nll_scalar_targets_and_sum_reduction():
    # d = 1, one batch axis of 32, closed form -log N(y; mu, s^2).
    g = torch.Generator().manual_seed(4)
    mu = torch.randn(32, 1, generator=g, dtype=torch.float64)
    s = 0.5 + torch.rand(32, 1, generator=g, dtype=torch.float64)
    y = mu + s * torch.randn(32, 1, generator=g, dtype=torch.float64)

    def score(t):
        view = (32,) + (1,) * (t.ndim - 2) + (1,)
        return (-0.5 * ((t - mu.view(view)) / s.view(view)).square() - torch.log(s.view(view))).squeeze(-1)

    exact = -stats.norm.logpdf(y.numpy(), loc=mu.numpy(), scale=s.numpy()).sum()
    samples, log_q = ebm.sample_proposal(y, [0.3, 1.0, 3.0], 8192, generator=g)
    total = ebm.nll(score(y), score(samples), log_q, reduction="sum").item()
    # score omits -0.5 log(2 pi): the partition function absorbs it, so the NLL is exact.
    assert abs(total - exact) / 32 < 0.02


def test_nll_is_stable_for_huge_scores_and_shift_invariant():
    g = torch.Generator().manual_seed(5)
    target = torch.randn(8, generator=g)
    samples = torch.randn(8, 64, generator=g)
    log_q = torch.randn(8, 64, generator=g)
    base = ebm.nll(target, samples, log_q, reduction="none")
    shifted = ebm.nll(target + 1e4, samples + 1e4, log_q, reduction="none")
    assert torch.isfinite(shifted).all()
    assert torch.allclose(base, shifted, atol=5e-3)  # float32 at |x| = 1e4 has ulp 1e-3
    # -inf sample scores carry zero weight.
    masked = samples.clone()
    masked[:, 32:] = -float("inf")
    expected = torch.logsumexp(samples[:, :32] - log_q[:, :32], -1) - math.log(64) - target
    assert torch.allclose(ebm.nll(target, masked, log_q, reduction="none"), expected, atol=1e-6)


def test_nll_gradient_is_softmax_of_importance_weights():
    g = torch.Generator().manual_seed(6)
    target = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    samples = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    log_q = torch.randn(5, 9, generator=g, dtype=torch.float64)
    ebm.nll(target, samples, log_q).backward()
    weights = torch.softmax((samples - log_q).detach(), -1)
    assert torch.allclose(samples.grad, weights / 5)
    assert torch.allclose(target.grad, torch.full((5,), -1 / 5, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda a, b: ebm.nll(a, b, log_q, reduction="none"), (target, samples))


@pytest.mark.parametrize(
    "shapes, reduction, match",
    [
        (((4,), (5, 8), (5, 8)), "mean", r"\(\*B, M\) = \(4, 'M'\)"),
        (((4,), (4, 8), (4, 7)), "mean", r"log_q must have the shape of score_samples \(\*B, M\) = \(4, 8\)"),
        (((4,), (4, 0), (4, 0)), "mean", r"M >= 1"),
        (((0,), (0, 8), (0, 8)), "mean", r"non-empty batch"),
        (((4,), (4, 8), (4, 8)), "max", r"reduction must be one of"),
    ],
)
def test_nll_rejects_bad_input(shapes, reduction, match):
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match=match):
        ebm.nll(*tensors, reduction=reduction)


# --------------------------------------------------------------------------- refine


def test_refine_finds_mode_of_gaussian_score_from_many_candidates():
    mu, cov, _ = _gaussian_problem(batch=16, d=2, seed=7)
    score = _gaussian_score(mu, cov, offset=0.0)
    g = torch.Generator().manual_seed(8)
    y0 = mu[:, None, :] + 3.0 * torch.randn(16, 10, 2, generator=g, dtype=torch.float64)  # (N, K, d)
    start = score(y0)
    out = ebm.refine(score, y0, steps=200, step_size=2.0, decay=0.3)
    assert out.y.shape == y0.shape and out.score.shape == (16, 10) and out.step_size.shape == (16, 10, 1)
    assert torch.allclose(out.y, mu[:, None, :].expand_as(y0), atol=1e-6)
    assert torch.allclose(out.score, score(out.y))
    assert (out.score >= start).all()
    # lambda = 2 exceeds 2 / lambda_max(precision) for every element: every candidate decayed.
    assert (out.step_size < 2.0).all()


def _reference_refine_one(score_one, y, steps, lam, eta):
    """Algorithm 1 verbatim, for one candidate (two forwards and a backward per step)."""
    y = y.clone()
    for _ in range(steps):
        yg = y.clone().requires_grad_(True)
        prev = score_one(yg)
        (grad,) = torch.autograd.grad(prev, yg)
        y_tilde = y + lam * grad
        new = score_one(y_tilde)
        if new > prev:
            y = y_tilde
        else:
            lam = lam * eta
    return y, lam


def test_refine_matches_per_candidate_algorithm_1():
    # A multimodal, anisotropic score: candidates accept and reject at different steps.
    weights = torch.tensor([1.0, 4.0], dtype=torch.float64)

    def score(y):
        return -(weights * y.square()).sum(-1) + 0.8 * torch.cos(3.0 * y).sum(-1)

    g = torch.Generator().manual_seed(9)
    y0 = 2.0 * torch.randn(40, 2, generator=g, dtype=torch.float64)
    lam = torch.tensor([0.3, 1.5], dtype=torch.float64)  # per-coordinate step lengths, as in the paper
    out = ebm.refine(score, y0, steps=25, step_size=lam, decay=0.5)
    assert out.step_size.shape == (40, 2)
    decayed_counts = set()
    for b in range(40):
        y_ref, lam_ref = _reference_refine_one(score, y0[b], 25, lam.clone(), 0.5)
        assert torch.allclose(out.y[b], y_ref, rtol=0, atol=1e-12), b
        assert torch.allclose(out.step_size[b], lam_ref, rtol=1e-12), b
        decayed_counts.add(round(math.log(float(lam_ref[0] / lam[0])) / math.log(0.5)))
    assert len(decayed_counts) >= 2  # the per-candidate rule really produced different histories


def test_refine_with_network_scores_leaves_parameters_untouched():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    y0 = torch.randn(6, 3)
    with torch.no_grad():  # works under no_grad, which inference code usually runs in
        out = ebm.refine(lambda y: net(y).squeeze(-1), y0, steps=10, step_size=0.1, decay=0.5)
    assert all(p.grad is None for p in net.parameters())
    assert not out.y.requires_grad and (out.score >= net(y0).squeeze(-1).detach()).all()
    unchanged = ebm.refine(lambda y: net(y).squeeze(-1), y0, steps=0, step_size=0.1, decay=0.5)
    assert torch.equal(unchanged.y, y0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        ebm.refine(lambda y: net(y).squeeze(-1), y0, steps=3, step_size=0.1, decay=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y0=torch.zeros(0, 2)), r"\(\*B, d\) with a non-empty batch"),
        (dict(steps=-1), r"steps must be an int >= 0"),
        (dict(step_size=0.0), r"step_size \(lambda\) must be finite and > 0"),
        (dict(step_size=torch.tensor([0.1, -0.1])), r"> 0"),
        (dict(step_size=torch.ones(3)), r"broadcastable to y0's shape \(\*B, d\) = \(4, 2\)"),
        (dict(decay=0.0), r"decay \(eta\) must be a number in \(0, 1\]"),
        (dict(decay=1.5), r"\(0, 1\]"),
        (dict(score_fn=lambda y: y.sum()), r"scores of shape \(\*B,\) = \(4,\)"),
        (dict(score_fn=lambda y: y), r"scores of shape \(\*B,\) = \(4,\); got \(4, 2\)"),
    ],
)
def test_refine_rejects_bad_input(kwargs, match):
    args = dict(score_fn=lambda y: -y.square().sum(-1), y0=torch.zeros(4, 2), steps=3, step_size=0.1, decay=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ebm.refine(**args)

"""The closed-form pure-PyTorch benchmark peers (reference.*_closed_form_*) against the
eigh-based references: the speed comparisons are only fair if the peers compute the
same thing."""
import pytest
import torch

import probreg
from helpers import with_eigenvalues
from probreg import reference

SPD = {2: reference.spd_from_raw_closed_form_2x2, 3: reference.spd_from_raw_closed_form_3x3}
NLL = {2: reference.huber_nll_closed_form_2x2, 3: reference.huber_nll_closed_form_3x3}


def _rel(a, b):
    return ((a - b).flatten(-2).norm(dim=-1) / b.flatten(-2).norm(dim=-1).clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("d", [2, 3])
def test_spd_closed_form_matches_reference(d):
    g = torch.Generator().manual_seed(d)
    P = d * (d + 1) // 2
    raw = torch.randn(2000, P, generator=g, dtype=torch.float64) * 3
    assert _rel(SPD[d](raw), reference.spd_from_raw(raw)) <= 1e-11
    # float32: as accurate as float32 arithmetic on well-conditioned inputs
    assert _rel(SPD[d](raw.float()).double(), reference.spd_from_raw(raw.float().double())) <= 1e-5


@pytest.mark.parametrize("d", [2, 3])
def test_spd_closed_form_at_ties(d):
    """c*I (including 0) and repeated pairs: the tie branches (g', g''/2) keep it exact
    to the cubic's conditioning (the acos argument is clamped 1e-7 inside [-1, 1])."""
    g = torch.Generator().manual_seed(10 + d)
    l = torch.randn(64, d, generator=g, dtype=torch.float64)
    l[:, 1] = l[:, 0]
    B = torch.cat([with_eigenvalues(l, g), 2.5 * torch.eye(d, dtype=torch.float64).expand(3, d, d),
                   torch.zeros(1, d, d, dtype=torch.float64)])
    raw = probreg.pack_sym(B)
    assert _rel(SPD[d](raw), reference.spd_from_raw(raw)) <= 1e-6


@pytest.mark.parametrize("d", [2, 3])
def test_spd_closed_form_gradients_match_reference(d):
    g = torch.Generator().manual_seed(20 + d)
    P = d * (d + 1) // 2
    raw = torch.randn(256, P, generator=g, dtype=torch.float64)
    gA = torch.randn(256, d, d, generator=g, dtype=torch.float64)
    grads = []
    for fn in (SPD[d], reference.spd_from_raw):
        r = raw.clone().requires_grad_(True)
        fn(r).backward(gA)
        grads.append(r.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("family", ["huber", "gauss", "laplace", "charbonnier"])
@pytest.mark.parametrize("parameterization", ["v", "mu"])
def test_nll_closed_form_matches_reference(d, family, parameterization):
    g = torch.Generator().manual_seed(d)
    P = d * (d + 1) // 2
    pred = torch.randn(500, d + P, generator=g, dtype=torch.float64)
    target = torch.randn(500, d, generator=g, dtype=torch.float64)
    kw = dict(family=family, parameterization=parameterization, reduction="none")
    out = NLL[d](pred, target, 1.0, 1.0, **kw)
    ref = reference.huber_nll_reference(pred, target, 1.0, 1.0, **kw)
    assert (out - ref).abs().max().item() <= 1e-11 * (1 + ref.abs().max().item())

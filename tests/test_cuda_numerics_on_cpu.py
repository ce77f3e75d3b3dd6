"""The CUDA kernels' float32 numerics, tested on the CPU.

On CUDA, float32 inputs of spd_remap, spd_from_raw and huber_nll (full covariance) are
computed with a mixed policy (csrc/include/probreg/spectral.h, symeig.h): d = 3 by the
float64 closed form with eigenvectors rounded to float (symeig_mixed), d = 2 on the
reflection frame (symeig2_reflection_split), double eigenvalues, float for the rest. The CPU kernels run that very header code, scalar, under PROBREG_CPU_EMULATE_CUDA_FLOAT32=1,
so this module re-runs the float32 accuracy, gradient and robustness tests of test_spd
and test_nll with it: the GPU path's accuracy is checked on every CI run, GPU or not.
"""
import pytest
import torch

import probreg
from helpers import adversarial_symmetric, rel_fro
from probreg import reference

# Re-collected here (pytest collects imported test functions) with the emulation on.
from test_nll import test_matches_float64_reference as test_nll_matches_float64_reference  # noqa: F401
from test_nll import test_no_non_finite_for_finite_inputs as test_nll_no_non_finite  # noqa: F401
from test_spd import test_float32_gradients_match_float64_reference as test_spd_float32_gradients  # noqa: F401
from test_spd import test_nonfinite_entries_poison_only_their_item as test_spd_nonfinite  # noqa: F401
from test_spd import test_spd_from_raw_adversarial_accuracy as test_spd_from_raw_accuracy  # noqa: F401
from test_spd import test_spd_remap_adversarial_accuracy as test_spd_remap_accuracy  # noqa: F401
from test_spd import test_underflow_output_psd_and_gradients_finite as test_spd_underflow  # noqa: F401


@pytest.fixture(autouse=True)
def _emulate_cuda_float32(monkeypatch):
    monkeypatch.setenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32", "1")


@pytest.fixture(params=["cpu"])
def device(request):
    """The emulation is a CPU feature; the CUDA runs of these tests are in test_spd/test_nll."""
    return request.param


@pytest.mark.parametrize("d", [2, 3])
def test_emulation_takes_the_mixed_path(monkeypatch, d):
    """The switch is live: float32 results differ from the default (double) CPU path in
    the last bits, stay within float32 accuracy of it, and float64 is unaffected."""
    B = torch.cat(list(adversarial_symmetric(d).values()))
    mixed = probreg.spd_remap(B.float())
    mixed64 = probreg.spd_remap(B)
    monkeypatch.delenv("PROBREG_CPU_EMULATE_CUDA_FLOAT32")
    plain = probreg.spd_remap(B.float())
    assert not torch.equal(mixed, plain)
    assert torch.equal(mixed64, probreg.spd_remap(B))
    ref = reference.spd_remap(B.float().double())
    representable = ref.flatten(-2).abs().amax(-1) > 1e-30
    assert rel_fro(mixed.double()[representable], ref[representable]).max().item() <= 2e-5


def test_clusters_under_a_distant_eigenvalue():
    """The case a float-only Jacobi gets wrong: a close pair near 0 beside an eigenvalue
    of -1e3, where float rotation errors of eps_f * 1e3 mix the pair's eigenvectors
    (error K * eps_f * ||B|| ~ 1e-4 of ||A||). The double refinement sweep removes it."""
    g = torch.Generator().manual_seed(5)
    n = 256
    l = torch.stack([torch.full((n,), -1e3, dtype=torch.float64),
                     torch.full((n,), -0.3, dtype=torch.float64),
                     -0.3 + 1e-3 * torch.rand(n, generator=g, dtype=torch.float64)], -1)
    Q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=torch.float64))
    B = (Q * l.unsqueeze(-2)) @ Q.transpose(-1, -2)
    B32 = B.float()
    ref = reference.spd_remap(B32.double())
    err = rel_fro(probreg.spd_remap(B32).double(), ref).max().item()
    assert err <= 2e-6, err

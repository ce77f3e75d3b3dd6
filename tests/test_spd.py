"""symeig, spd_remap, spd_from_raw: accuracy on the adversarial inputs of DESIGN.md
section 3, gradients (comparison, gradcheck incl. degenerate inputs), opcheck,
torch.compile, dtypes/layouts/shapes, bad input and NaN isolation."""
import pytest
import torch

import probreg
from probreg import reference
from helpers import adversarial_high_precision_reference, adversarial_symmetric, layouts, rel_fro, underflow_symmetric

THETAS = [1.0, 0.1]
DIMS = [1, 2, 3]


def _round(B64, dtype, device):
    """The input as the kernel sees it, and its exact float64 value for the reference."""
    B = B64.to(dtype).to(device)
    return B, B.double().cpu()


def _accurate_reference(d, theta, name, B_exact, dtype):
    """float64 input: 40-digit oracle (LAPACK float64 is itself ~1e-12 off on wide
    spreads). float32 input: the float64 reference of the float32-rounded input."""
    if dtype == torch.float64:
        ref = adversarial_high_precision_reference(d, theta)[name]
        # pack_sym/unpack_sym round trips change B by at most an ulp: recompute if so
        if not torch.equal(B_exact, adversarial_symmetric(d, theta)[name]):
            from helpers import spd_remap_high_precision

            ref = spd_remap_high_precision(B_exact, theta)
        return ref
    return reference.spd_remap(B_exact, theta)


def _check_accuracy(A, A_ref, dtype, tol, name):
    """Relative Frobenius error <= tol where A_ref is representable in dtype; where g
    underflows the dtype (||A_ref|| below 1e3 * its smallest normal) the contract is a
    finite, positive semi-definite output instead."""
    A = A.cpu()
    representable = torch.linalg.matrix_norm(A_ref) > 1e3 * torch.finfo(dtype).tiny
    err = rel_fro(A[representable], A_ref[representable])
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= tol, f"{name}: rel err {worst:.2e} > {tol:.0e}"
    tiny = A[~representable].double()
    assert torch.isfinite(tiny).all()
    if tiny.numel():
        assert (torch.linalg.eigvalsh(tiny) >= -1e3 * torch.finfo(dtype).tiny).all()


# ------------------------------------------------------------------ forward accuracy
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_spd_remap_adversarial_accuracy(device, d, theta, dtype, tol, layout):
    for name, B64 in adversarial_symmetric(d, theta).items():
        B, B_exact = _round(B64, dtype, device)
        B = layouts(B.flatten(-2))[layout].unflatten(-1, (d, d))
        A = probreg.spd_remap(B, theta)
        assert A.dtype == dtype and A.shape == B.shape
        A_ref = _accurate_reference(d, theta, name, B_exact, dtype)
        _check_accuracy(A, A_ref, dtype, tol, name)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("theta", THETAS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
def test_spd_from_raw_adversarial_accuracy(device, d, theta, dtype, tol, layout):
    for name, B64 in adversarial_symmetric(d, theta).items():
        raw = probreg.pack_sym(B64).to(dtype)
        raw_exact = raw.double()
        raw = layouts(raw.to(device))[layout]
        A = probreg.spd_from_raw(raw, theta)
        assert A.dtype == dtype and A.shape == (*raw.shape[:-1], d, d)
        A_ref = _accurate_reference(d, theta, name, probreg.unpack_sym(raw_exact), dtype)
        _check_accuracy(A, A_ref, dtype, tol, name)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_types_compute_in_float32(device, d, dtype, tol):
    B64 = adversarial_symmetric(d, 1.0)["straddle_theta"]
    B, B_exact = _round(B64, dtype, device)
    A = probreg.spd_remap(B, 1.0)
    assert A.dtype == dtype
    A_ref = reference.spd_remap(B_exact, 1.0)
    assert rel_fro(A.cpu(), A_ref).max().item() <= tol
    raw = probreg.pack_sym(B64).to(dtype).to(device).requires_grad_(True)
    probreg.spd_from_raw(raw, 1.0).sum().backward()
    assert raw.grad.dtype == dtype and torch.isfinite(raw.grad).all()


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_underflow_output_psd_and_gradients_finite(device, d, dtype):
    theta = 1.0
    B = underflow_symmetric(d, theta).to(dtype).to(device).requires_grad_(True)
    A = probreg.spd_remap(B, theta)
    assert torch.isfinite(A).all()
    eig = torch.linalg.eigvalsh(A.detach().double().cpu())
    assert (eig >= -1e-30).all()
    A.backward(torch.randn_like(A))
    assert torch.isfinite(B.grad).all()


# ------------------------------------------------------------------ symeig
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_symeig_eigenvalues_float32(device, d, scale):
    for name, B64 in adversarial_symmetric(d, 1.0).items():
        B, B_exact = _round(B64 * scale, torch.float32, device)
        L, V = probreg.symeig(B)
        L_ref = torch.linalg.eigvalsh(B_exact)
        fro = torch.linalg.matrix_norm(B_exact).unsqueeze(-1)
        err = ((L.double().cpu() - L_ref).abs() / fro.clamp_min(1e-300)).max().item()
        assert err <= 1e-6, f"{name} at scale {scale:g}: {err:.2e}"
        # eigenvectors: orthonormal and reconstruct B
        Vd = V.double().cpu()
        eye = torch.eye(d, dtype=torch.float64)
        assert (Vd.transpose(-1, -2) @ Vd - eye).abs().max() < 1e-6
        recon = (Vd * L.double().cpu().unsqueeze(-2)) @ Vd.transpose(-1, -2)
        assert (rel_fro(recon, B_exact).nan_to_num(0.0)).max() < 1e-6


@pytest.mark.parametrize("d", DIMS)
def test_symeig_float64_matches_eigh(device, d):
    B = torch.randn(257, d, d, dtype=torch.float64)
    L, V = probreg.symeig(B.to(device))
    L_ref = torch.linalg.eigvalsh(0.5 * (B + B.mT))
    assert (L.cpu() - L_ref).abs().max() < 1e-13
    assert (L[..., 1:] >= L[..., :-1]).all()


def test_symeig_ties_give_identity_vectors(device):
    B = (2.5 * torch.eye(3, dtype=torch.float64)).expand(4, 3, 3).to(device)
    L, V = probreg.symeig(B)
    assert torch.equal(L.cpu(), torch.full((4, 3), 2.5, dtype=torch.float64))
    assert torch.equal(V.cpu(), torch.eye(3, dtype=torch.float64).expand(4, 3, 3))


@pytest.mark.parametrize("d", [2, 3])
def test_symeig_gradcheck(device, d):
    B = torch.randn(6, d, d, dtype=torch.float64, device=device)
    B = (B + B.mT).requires_grad_(True)

    def gauge_invariant(X):
        L, V = probreg.symeig(X)
        # squared components are invariant to each eigenvector's sign
        return L, V * V

    assert torch.autograd.gradcheck(gauge_invariant, (B,))


def test_symeig_gradient_matches_reference(device):
    B = torch.randn(64, 3, 3, dtype=torch.float64)
    B = B + B.mT
    gL = torch.randn(64, 3, dtype=torch.float64)
    M = torch.randn(64, 3, 3, dtype=torch.float64)

    def loss(fn, X):
        L, V = fn(X)
        return (L * gL).sum() + (V * V * M).sum()

    X1 = B.clone().to(device).requires_grad_(True)
    X2 = B.clone().requires_grad_(True)
    loss(probreg.symeig, X1).backward()
    loss(reference.symeig, X2).backward()
    assert (X1.grad.cpu() - X2.grad).abs().max() < 1e-9


# ------------------------------------------------------------------ gradients
def _degenerate_inputs(d, theta, device):
    eye = torch.eye(d, dtype=torch.float64)
    cases = [0.3 * eye, torch.zeros(d, d, dtype=torch.float64), theta * eye, -2.0 * eye]
    if d >= 2:
        from helpers import with_eigenvalues

        l = torch.tensor([[0.7] * 2 + [1.9] * (d - 2)], dtype=torch.float64)
        cases.append(with_eigenvalues(l)[0])  # exactly repeated pair (up to rounding)
        l = torch.tensor([[theta] * d], dtype=torch.float64)
        cases.append(theta * eye)
        diag = torch.diag(torch.tensor([theta, theta] + [3.0] * (d - 2), dtype=torch.float64))
        cases.append(diag)  # eigenvalues exactly at theta
    return torch.stack(cases).to(device)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("theta", [1.0, 0.25])
def test_spd_remap_gradcheck_random_and_degenerate(device, d, theta):
    B = torch.randn(5, d, d, dtype=torch.float64, device=device)
    B = torch.cat([B + B.mT, _degenerate_inputs(d, theta, device)]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda X: probreg.spd_remap(X, theta), (B,))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_spd_from_raw_gradcheck_random_and_degenerate(device, d):
    theta = 0.5
    raw = torch.randn(5, d * (d + 1) // 2, dtype=torch.float64, device=device)
    raw = torch.cat([raw, probreg.pack_sym(_degenerate_inputs(d, theta, device))]).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda r: probreg.spd_from_raw(r, theta), (raw,))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("theta", THETAS)
def test_float32_gradients_match_float64_reference(device, d, theta):
    for name, B64 in adversarial_symmetric(d, theta).items():
        raw32 = probreg.pack_sym(B64).float()
        grad_A = torch.randn(B64.shape, dtype=torch.float64)
        r = raw32.clone().to(device).requires_grad_(True)
        probreg.spd_from_raw(r, theta).backward(grad_A.float().to(device))
        r64 = raw32.clone().double().requires_grad_(True)
        reference.spd_from_raw(r64, theta).backward(grad_A.float().double())
        num = (r.grad.double().cpu() - r64.grad).norm(dim=-1)
        den = r64.grad.norm(dim=-1)
        # relative per item; items whose exact gradient underflows float32 compare absolutely
        err = torch.where(den > 1e-30, num / den.clamp_min(1e-300), num).max().item()
        assert err <= 1e-4, f"{name}: {err:.2e}"


@pytest.mark.parametrize("d", [2, 3])
def test_gradients_match_reference_float64(device, d):
    raw = torch.randn(512, d * (d + 1) // 2, dtype=torch.float64) * 3
    grad_A = torch.randn(512, d, d, dtype=torch.float64)
    r1 = raw.clone().to(device).requires_grad_(True)
    r2 = raw.clone().requires_grad_(True)
    probreg.spd_from_raw(r1, 0.5).backward(grad_A.to(device))
    reference.spd_from_raw(r2, 0.5).backward(grad_A)
    assert (r1.grad.cpu() - r2.grad).abs().max() / r2.grad.abs().max() < 1e-12


@pytest.mark.parametrize("d", [2, 3])
def test_no_nonfinite_gradients_on_a_million_inputs(device, d):
    n = 10**6
    P = d * (d + 1) // 2
    for scale in (1e-3, 1.0, 1e3):
        raw = (torch.randn(n, P) * scale).to(device).requires_grad_(True)
        A = probreg.spd_from_raw(raw, 1.0)
        A.backward(torch.randn_like(A))
        assert torch.isfinite(A).all()
        assert int((~torch.isfinite(raw.grad)).sum()) == 0, f"scale {scale}"


# ------------------------------------------------------------------ d > 3 path
def test_dimension_above_three_uses_reference_path(device):
    B = torch.randn(7, 4, 4, dtype=torch.float64, device=device)
    B = (B + B.mT).requires_grad_(True)
    A = probreg.spd_remap(B, 0.5)
    assert (A - reference.spd_remap(B, 0.5)).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda X: probreg.spd_remap(X, 0.5), (B,))
    raw = torch.randn(3, 10, dtype=torch.float64, device=device)
    assert probreg.spd_from_raw(raw).shape == (3, 4, 4)
    L, V = probreg.symeig(B.detach())
    assert (L - torch.linalg.eigvalsh(B.detach())).abs().max() < 1e-12


# ------------------------------------------------------------------ shapes, layouts
@pytest.mark.parametrize("shape", [(0,), (5,), (2, 3, 4)])
def test_batch_shapes_including_empty(device, shape):
    raw = torch.randn(*shape, 3, device=device, requires_grad=True)
    A = probreg.spd_from_raw(raw)
    assert A.shape == (*shape, 2, 2)
    A.sum().backward()
    assert raw.grad.shape == raw.shape
    B = torch.randn(*shape, 3, 3, device=device)
    assert probreg.spd_remap(B).shape == B.shape
    L, V = probreg.symeig(B)
    assert L.shape == (*shape, 3) and V.shape == B.shape


def test_non_contiguous_matrix_input(device):
    B = torch.randn(10, 3, 3, dtype=torch.float64, device=device)
    Bt = B.transpose(-1, -2)  # non-contiguous; same symmetric part
    assert not Bt.is_contiguous()
    assert torch.allclose(probreg.spd_remap(Bt), probreg.spd_remap(B.contiguous()), atol=1e-14)


def test_pack_unpack_round_trip_and_isometry():
    for d in (1, 2, 3, 4):
        raw = torch.randn(20, d * (d + 1) // 2, dtype=torch.float64)
        B = probreg.unpack_sym(raw)
        assert torch.allclose(B, B.mT)
        assert torch.allclose(torch.linalg.matrix_norm(B), raw.norm(dim=-1))
        assert torch.allclose(probreg.pack_sym(B), raw)
    raw = torch.tensor([1.0, 2.0**0.5 * 5.0, 3.0])
    assert torch.allclose(probreg.unpack_sym(raw), torch.tensor([[1.0, 5.0], [5.0, 3.0]]))



@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unpack_sym_is_the_matrix_the_kernels_decompose(device, dtype):
    """unpack_sym scales by the correctly rounded 1/sqrt(2), as the kernels do (packed.h):
    the off-diagonals are raw * 0x1.6a09e667f3bcdp-1 (1 / math.sqrt(2) is an ulp below it)
    and, in float64, spd_from_raw(raw) is bitwise spd_remap(unpack_sym(raw)). (float32 raw
    is unpacked in float64 inside the kernel, more accurately than unpack_sym's float32.)"""
    inv_sqrt2 = float.fromhex("0x1.6a09e667f3bcdp-1")  # 1/sqrt(2) to 17 digits: 0.70710678118654752
    assert abs(inv_sqrt2 - 0.70710678118654752440) < 2**-54
    for d in (2, 3):
        raw = torch.randn(64, d * (d + 1) // 2, dtype=dtype).to(device)
        B = probreg.unpack_sym(raw)
        expected = raw[:, 1] * torch.tensor(inv_sqrt2, dtype=dtype)
        assert torch.equal(B[:, 0, 1], expected) and torch.equal(B[:, 1, 0], expected)
        if dtype == torch.float64:
            assert torch.equal(probreg.spd_from_raw(raw, 0.3), probreg.spd_remap(B, 0.3))

# ------------------------------------------------------------------ NaN isolation
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_entries_poison_only_their_item(device, bad):
    raw = torch.randn(40, 6, dtype=torch.float64, device=device)
    clean = probreg.spd_from_raw(raw)
    raw_bad = raw.clone()
    raw_bad[17, 2] = bad
    A = probreg.spd_from_raw(raw_bad)
    assert torch.isnan(A[17]).all()
    keep = torch.arange(40, device=device) != 17
    # neighbours are unaffected (up to the last bit: the CPU recomputes the NaN item's
    # SIMD block on its scalar path)
    assert torch.allclose(A[keep], clean[keep], rtol=1e-13, atol=1e-15)
    r = raw_bad.clone().requires_grad_(True)
    probreg.spd_from_raw(r).sum().backward()
    assert torch.isfinite(r.grad[keep]).all()


# ------------------------------------------------------------------ bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises((ValueError, RuntimeError), match=r"\(\.\.\., d, d\)"):
        probreg.spd_remap(torch.randn(4, 2, 3))
    with pytest.raises((ValueError, RuntimeError), match="d\\(d\\+1\\)/2"):
        probreg.spd_from_raw(torch.randn(4, 4))
    with pytest.raises((TypeError, RuntimeError), match="floating"):
        probreg.spd_remap(torch.ones(4, 2, 2, dtype=torch.int64))
    with pytest.raises((TypeError, RuntimeError), match="floating"):
        probreg.spd_from_raw(torch.ones(4, 3, dtype=torch.int32))
    for theta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises((ValueError, RuntimeError), match="theta"):
            probreg.spd_from_raw(torch.randn(4, 3), theta)
        with pytest.raises((ValueError, RuntimeError), match="theta"):
            probreg.spd_remap(torch.randn(4, 2, 2), theta)
    # the raw operators check too (no Python wrapper in front)
    with pytest.raises(RuntimeError, match=r"\(\.\.\., P\)"):
        torch.ops.probreg.spd_from_raw(torch.randn(4, 5), 1.0)
    with pytest.raises(RuntimeError, match="theta"):
        torch.ops.probreg.spd_remap(torch.randn(4, 2, 2), 0.0)
    with pytest.raises(RuntimeError, match="grad_A"):
        torch.ops.probreg._spd_from_raw_backward(torch.randn(4, 3, 3), torch.randn(4, 3), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_mismatched_devices_raise():
    with pytest.raises(RuntimeError, match="same device|device"):
        torch.ops.probreg._spd_remap_backward(torch.randn(4, 2, 2, device="cuda"), torch.randn(4, 2, 2), 1.0)


# ------------------------------------------------------------------ opcheck / compile
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    ops = torch.ops.probreg
    raw = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=requires_grad)
    B = torch.randn(7, 3, 3, dtype=torch.float64, device=device)
    B = (B + B.mT).detach().requires_grad_(requires_grad)
    torch.library.opcheck(ops.spd_from_raw, (raw, 0.5))
    torch.library.opcheck(ops.spd_remap, (B, 0.5))
    torch.library.opcheck(ops.symeig, (B,))
    gA = torch.randn(7, 2, 2, dtype=torch.float64, device=device)
    torch.library.opcheck(ops._spd_from_raw_backward, (gA, raw.detach(), 0.5))
    torch.library.opcheck(ops._spd_remap_backward, (torch.randn_like(B), B.detach(), 0.5))
    L, V = ops.symeig(B.detach())
    torch.library.opcheck(ops._symeig_backward, (torch.randn_like(L), torch.randn_like(V), L, V))


def test_torch_compile_fullgraph_matches_eager(device):
    def fn(raw, B):
        A = probreg.spd_from_raw(raw, 0.5)
        L, V = probreg.symeig(probreg.spd_remap(B, 0.5))
        return (A * A).sum() + L.sum() + (V * V).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if device == "cpu" else "inductor")
    raw = torch.randn(33, 6, dtype=torch.float64, device=device, requires_grad=True)
    B = torch.randn(33, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    out_eager = fn(raw, B)
    g_eager = torch.autograd.grad(out_eager, (raw, B))
    out_comp = compiled(raw, B)
    g_comp = torch.autograd.grad(out_comp, (raw, B))
    assert torch.allclose(out_eager, out_comp, atol=1e-12)
    for a, b in zip(g_eager, g_comp):
        assert torch.allclose(a, b, atol=1e-12)

"""Test helpers shared by every op test: the adversarial inputs of DESIGN.md section 3,
layout variants and error metrics. Import as `from helpers import ...` (conftest.py puts
tests/ on sys.path)."""
from __future__ import annotations

import importlib.util
import math
import os
from functools import lru_cache

import torch

FLOAT_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def random_rotation(n: int, d: int, generator=None, dtype=torch.float64) -> torch.Tensor:
    """n random orthogonal d x d matrices (QR of Gaussians, sign-fixed)."""
    G = torch.randn(n, d, d, generator=generator, dtype=dtype)
    Q, R = torch.linalg.qr(G)
    return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)


def with_eigenvalues(eigenvalues: torch.Tensor, generator=None) -> torch.Tensor:
    """Symmetric matrices Q diag(l) Q^T (float64) for l (n, d) under random rotations."""
    n, d = eigenvalues.shape
    Q = random_rotation(n, d, generator)
    return (Q * eigenvalues.unsqueeze(-2)) @ Q.transpose(-1, -2)


def adversarial_symmetric(d: int, theta: float = 1.0, seed: int = 0, per_case: int = 64) -> dict:
    """DESIGN.md section 3 adversarial symmetric matrices, float64, keyed by case name.

    c*I (including 0), exactly repeated pairs, gaps 1e-2..1e-7 under random rotations,
    diagonal and near-diagonal, eigenvalue spreads 1e-5..1e3, eigenvalues straddling
    theta, eigenvalues down to -80*theta, and l << -86*theta (g underflows float32).
    """
    g = torch.Generator().manual_seed(seed)
    n = per_case
    cases = {}
    c = torch.randn(n, generator=g, dtype=torch.float64) * 3
    c[0] = 0.0
    c[1] = theta
    eye = torch.eye(d, dtype=torch.float64)
    cases["scaled_identity"] = c.view(n, 1, 1) * eye
    if d >= 2:
        l = torch.randn(n, d, generator=g, dtype=torch.float64)
        l[:, 1] = l[:, 0]
        cases["repeated_pair"] = with_eigenvalues(l, g)
        for gap in (1e-2, 1e-4, 1e-7):
            l = torch.randn(n, 1, generator=g, dtype=torch.float64) + gap * torch.arange(d, dtype=torch.float64)
            cases[f"gap_{gap:g}"] = with_eigenvalues(l, g)
        near = torch.diag_embed(torch.randn(n, d, generator=g, dtype=torch.float64))
        off = 1e-9 * torch.randn(n, d, d, generator=g, dtype=torch.float64)
        cases["near_diagonal"] = near + 0.5 * (off + off.transpose(-1, -2))
    cases["diagonal"] = torch.diag_embed(torch.randn(n, d, generator=g, dtype=torch.float64) * 2)
    mags = 10 ** (torch.rand(n, d, generator=g, dtype=torch.float64) * 8 - 5)  # 1e-5 .. 1e3
    signs = torch.where(torch.rand(n, d, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    cases["spread_1e-5_1e3"] = with_eigenvalues(mags * signs, g)
    cases["straddle_theta"] = with_eigenvalues(theta + 0.1 * theta * torch.randn(n, d, generator=g, dtype=torch.float64), g)
    l = -80 * theta * torch.rand(n, d, generator=g, dtype=torch.float64)
    l[:, 0] = -80 * theta
    cases["down_to_-80theta"] = with_eigenvalues(l, g)
    return cases


def underflow_symmetric(d: int, theta: float = 1.0, seed: int = 1, n: int = 64) -> torch.Tensor:
    """Eigenvalues far below -86*theta (g underflows float32; -1e4*theta underflows float64)."""
    g = torch.Generator().manual_seed(seed)
    l = -theta * (100 + 1e4 * torch.rand(n, d, generator=g, dtype=torch.float64))
    return with_eigenvalues(l, g)


def spd_remap_high_precision(B: torch.Tensor, theta: float, digits: int = 40) -> torch.Tensor:
    """A = V diag(g(l)) V^T of symmetric B (n, d, d) in 40-digit arithmetic (mpmath),
    rounded to float64: the independent oracle for float64 accuracy checks. LAPACK's
    float64 eigh is itself off by ~1e-12 relative on wide eigenvalue spreads with small
    theta, too coarse for a 1e-12 tolerance."""
    import mpmath

    with mpmath.workdps(digits):
        th = mpmath.mpf(theta)
        out = torch.empty_like(B, dtype=torch.float64)
        d = B.shape[-1]
        for k in range(B.shape[0]):
            E, Q = mpmath.eigsy(mpmath.matrix(B[k].double().tolist()))
            g = [e if e > th else th * mpmath.exp(e / th - 1) for e in E]
            for i in range(d):
                for j in range(d):
                    out[k, i, j] = float(mpmath.fsum(Q[i, m] * g[m] * Q[j, m] for m in range(d)))
    return out


@lru_cache(maxsize=None)
def adversarial_high_precision_reference(d: int, theta: float) -> dict:
    """spd_remap_high_precision of every adversarial_symmetric(d, theta) case (cached)."""
    return {name: spd_remap_high_precision(B, theta) for name, B in adversarial_symmetric(d, theta).items()}


def layouts(x: torch.Tensor) -> dict:
    """The same values as a contiguous and as a non-contiguous tensor."""
    wide = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    non_contiguous = wide[..., ::2]
    assert not non_contiguous.is_contiguous() or x.numel() <= 1
    return {"contiguous": x.contiguous(), "non_contiguous": non_contiguous}


def rel_fro(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-item ||a - ref||_F / ||ref||_F over the last two dims (float64)."""
    a = a.double()
    ref = ref.double()
    num = torch.linalg.matrix_norm(a - ref)
    den = torch.linalg.matrix_norm(ref)
    return num / den.clamp_min(torch.finfo(torch.float64).tiny)


def dtype_tol(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_module(path: str, name: str):
    """Imports the Python file at `path` as a fresh module called `name` (scripts under
    examples/ and tools/, which are not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_example(name: str):
    """examples/<name>.py as a module."""
    return load_module(os.path.join(EXAMPLES, f"{name}.py"), f"probreg_example_{name}")


__all__ = [
    "EXAMPLES",
    "PNG_SIGNATURE",
    "load_module",
    "load_example",
    "FLOAT_DTYPES",
    "random_rotation",
    "with_eigenvalues",
    "adversarial_symmetric",
    "underflow_symmetric",
    "layouts",
    "spd_remap_high_precision",
    "adversarial_high_precision_reference",
    "rel_fro",
    "dtype_tol",
    "math",
]

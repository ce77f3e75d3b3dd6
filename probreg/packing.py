"""Packed symmetric layout <-> full matrices (pure PyTorch, differentiable, any d).

Layout (DESIGN.md section 1): P = d(d+1)/2 entries, upper triangle row-major,
d=2 -> (00, 01, 11), d=3 -> (00, 01, 02, 11, 12, 22); off-diagonal entries are stored
as sqrt(2) * B_ij so that ||raw||_2 == ||B||_F.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import _validation as check

__all__ = ["pack_sym", "unpack_sym", "packed_size", "dim_from_packed_size"]


def packed_size(d: int) -> int:
    """P = d(d+1)/2, the number of packed entries of a d x d symmetric matrix."""
    return d * (d + 1) // 2


def dim_from_packed_size(P: int, what: str = "packed size") -> int:
    """d such that d(d+1)/2 == P; ValueError (starting with `what`) if P is not triangular."""
    d = int(round((math.sqrt(8 * P + 1) - 1) / 2)) if P >= 0 else 0
    if d < 1 or packed_size(d) != P:
        raise ValueError(
            f"{what}: the last dimension P={P} is not d(d+1)/2 for an integer d >= 1 (expected 1, 3, 6, 10, ...)"
        )
    return d


def _layout(d: int):
    """(rows, cols, flat_index, unpack_scale, pack_scale) of the packed layout; cached in
    eager mode, traced directly under torch.compile (dynamo warns about lru_cache)."""
    return _layout_tables(d) if torch.compiler.is_compiling() else _cached_layout_tables(d)


# 1/sqrt(2) correctly rounded (sqrt rounds correctly; 1.0 / math.sqrt(2.0) is an ulp
# below): the constant of the kernels' unpacking (csrc/include/probreg/packed.h), so that
# unpack_sym(raw) is bitwise the matrix spd_from_raw and huber_nll decompose.
INV_SQRT2 = math.sqrt(0.5)


def _layout_tables(d: int):
    # Plain Python index tables (constants under torch.compile; a tensor's .tolist() would
    # break the graph).
    rows = [i for i in range(d) for _ in range(i, d)]
    cols = [j for i in range(d) for j in range(i, d)]
    # Packed position of (i, j), i <= j: the rows above i hold d + (d-1) + ... + (d-i+1)
    # entries. Written without list mutation (torch < 2.10's dynamo cannot trace it).
    def packed(i: int, j: int) -> int:
        return i * d - i * (i - 1) // 2 + (j - i)

    flat_index = [packed(min(i, j), max(i, j)) for i in range(d) for j in range(d)]
    unpack_scale = [1.0 if i == j else INV_SQRT2 for i in range(d) for j in range(d)]
    pack_scale = [1.0 if i == j else math.sqrt(2.0) for i, j in zip(rows, cols)]
    return rows, cols, flat_index, unpack_scale, pack_scale


_cached_layout_tables = lru_cache(maxsize=None)(_layout_tables)


def unpack_sym(raw: torch.Tensor) -> torch.Tensor:
    """raw (..., P) -> symmetric B (..., d, d) with B_ij = B_ji = raw_k / sqrt(2) off the diagonal.
    raw must be floating point (the 1/sqrt(2) of the layout has no integer value)."""
    check.tensor(raw, "raw", "probreg.unpack_sym", min_dim=1, shape_text="(..., P)")
    d = dim_from_packed_size(raw.shape[-1], "probreg.unpack_sym: raw")
    _, _, flat_index, unpack_scale, _ = _layout(d)
    index = torch.tensor(flat_index, device=raw.device)
    scale = torch.tensor(unpack_scale, dtype=raw.dtype, device=raw.device)
    return (raw[..., index] * scale).unflatten(-1, (d, d))


def pack_sym(B: torch.Tensor) -> torch.Tensor:
    """B (..., d, d) -> raw (..., P) of the symmetric part (B + B^T)/2; inverse of unpack_sym.
    B must be floating point (the sqrt(2) of the layout has no integer value)."""
    check.tensor(B, "B", "probreg.pack_sym", min_dim=2, shape_text="(..., d, d)")
    if B.shape[-1] != B.shape[-2] or B.shape[-1] < 1:
        raise ValueError(f"probreg.pack_sym: B must have shape (..., d, d) with d >= 1, got {tuple(B.shape)}")
    d = int(B.shape[-1])  # a constant under torch.compile(dynamic=True) (guarded)
    rows, cols, _, _, pack_scale = _layout(d)
    sym = 0.5 * (B + B.transpose(-1, -2))
    scale = torch.tensor(pack_scale, dtype=B.dtype, device=B.device)
    return sym[..., rows, cols] * scale

"""Packed symmetric layout <-> full matrices (pure PyTorch, differentiable, any d).

Layout (DESIGN.md section 1): P = d(d+1)/2 entries, upper triangle row-major,
d=2 -> (00, 01, 11), d=3 -> (00, 01, 02, 11, 12, 22); off-diagonal entries are stored
as sqrt(2) * B_ij so that ||raw||_2 == ||B||_F.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["pack_sym", "unpack_sym", "packed_size", "dim_from_packed_size"]


def packed_size(d: int) -> int:
    """P = d(d+1)/2, the number of packed entries of a d x d symmetric matrix."""
    return d * (d + 1) // 2


def dim_from_packed_size(P: int) -> int:
    """d such that d(d+1)/2 == P; ValueError if P is not triangular."""
    d = int(round((math.sqrt(8 * P + 1) - 1) / 2))
    if d < 1 or packed_size(d) != P:
        raise ValueError(
            f"packed size P={P} is not d(d+1)/2 for an integer d >= 1 (expected 1, 3, 6, 10, ...)"
        )
    return d


def _layout(d: int):
    """(rows, cols, flat_index, unpack_scale, pack_scale) of the packed layout; cached in
    eager mode, traced directly under torch.compile (dynamo warns about lru_cache)."""
    return _layout_tables(d) if torch.compiler.is_compiling() else _cached_layout_tables(d)


def _layout_tables(d: int):
    # Plain Python index tables (constants under torch.compile; a tensor's .tolist() would
    # break the graph).
    rows = [i for i in range(d) for _ in range(i, d)]
    cols = [j for i in range(d) for j in range(i, d)]
    index = [[0] * d for _ in range(d)]
    for k, (i, j) in enumerate(zip(rows, cols)):
        index[i][j] = index[j][i] = k
    flat_index = [index[i][j] for i in range(d) for j in range(d)]
    unpack_scale = [1.0 if i == j else 1.0 / math.sqrt(2.0) for i in range(d) for j in range(d)]
    pack_scale = [1.0 if i == j else math.sqrt(2.0) for i, j in zip(rows, cols)]
    return rows, cols, flat_index, unpack_scale, pack_scale


_cached_layout_tables = lru_cache(maxsize=None)(_layout_tables)


def unpack_sym(raw: torch.Tensor) -> torch.Tensor:
    """raw (..., P) -> symmetric B (..., d, d) with B_ij = B_ji = raw_k / sqrt(2) off the diagonal."""
    if raw.dim() < 1:
        raise ValueError(f"unpack_sym: raw must have shape (..., P), got {tuple(raw.shape)}")
    d = dim_from_packed_size(raw.shape[-1])
    _, _, flat_index, unpack_scale, _ = _layout(d)
    index = torch.tensor(flat_index, device=raw.device)
    scale = torch.tensor(unpack_scale, dtype=raw.dtype, device=raw.device)
    return (raw[..., index] * scale).unflatten(-1, (d, d))


def pack_sym(B: torch.Tensor) -> torch.Tensor:
    """B (..., d, d) -> raw (..., P) of the symmetric part (B + B^T)/2; inverse of unpack_sym."""
    if B.dim() < 2 or B.shape[-1] != B.shape[-2]:
        raise ValueError(f"pack_sym: B must have shape (..., d, d), got {tuple(B.shape)}")
    d = int(B.shape[-1])  # a constant under torch.compile(dynamic=True) (guarded)
    rows, cols, _, _, pack_scale = _layout(d)
    sym = 0.5 * (B + B.transpose(-1, -2))
    scale = torch.tensor(pack_scale, dtype=B.dtype, device=B.device)
    return sym[..., rows, cols] * scale

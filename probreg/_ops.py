"""Loads probreg._C (which registers the operators' schemas and CPU/CUDA kernels), then
the fake kernels (probreg/_fake.py) and the autograd formulas (probreg/_autograd.py).
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)

ops = torch.ops.probreg

from . import _fake  # noqa: E402,F401  (fake kernels)
from . import _autograd  # noqa: E402,F401  (autograd formulas)

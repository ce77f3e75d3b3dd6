"""Loads probreg._C (which registers the operators' schemas and CPU/CUDA kernels), then
the d > 3 kernels (probreg/_fallback.py), the fake kernels (probreg/_fake.py) and the
autograd and vmap rules (probreg/_autograd.py).
"""
from __future__ import annotations

import torch

from . import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)

ops = torch.ops.probreg

from . import _fallback  # noqa: E402,F401  (the d > 3 kernels)
from . import _fake  # noqa: E402,F401  (fake kernels)
from . import _autograd  # noqa: E402,F401  (autograd formulas)

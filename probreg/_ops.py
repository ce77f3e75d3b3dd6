"""Loads probreg._C (which registers the operators' schemas and CPU/CUDA kernels), then
the d > 3 kernels (probreg/_fallback.py), the fake kernels (probreg/_fake.py) and the
autograd and vmap rules (probreg/_autograd.py).
"""
from __future__ import annotations

import importlib.util

import torch

from ._version import MIN_TORCH_VERSION

if torch.__version__ < MIN_TORCH_VERSION:  # torch.__version__ is a TorchVersion: compares as a version
    raise ImportError(f"probreg needs torch >= {MIN_TORCH_VERSION}; this is torch {torch.__version__}")

try:
    from . import _C  # noqa: F401  (loading the library runs the TORCH_LIBRARY registrations)
except ImportError as exc:
    _spec = importlib.util.find_spec(__package__ + "._C")
    if _spec is None:
        raise ImportError(
            "probreg's C++ extension probreg._C is not built. Build it against the installed "
            "torch in one of two ways, from the source checkout:\n"
            "  pip install --no-build-isolation .    (or -e . for an editable install)\n"
            "  make build                            (in place; then run Python from the checkout root)"
        ) from None  # the cause would read "cannot import name '_C' ... circular import"
    raise ImportError(
        f"probreg's C++ extension {_spec.origin} is built but does not load ({exc}). It was "
        f"probably built against another torch than this one ({torch.__version__}): rebuild it "
        "with `pip install --no-build-isolation .` or `make build`."
    ) from exc

ops = torch.ops.probreg

from . import _fallback  # noqa: E402,F401  (the d > 3 kernels)
from . import _fake  # noqa: E402,F401  (fake kernels)
from . import _autograd  # noqa: E402,F401  (autograd formulas)

"""probreg: probabilistic regression with L2 multivariate Huber distributions.

Fused C++/CUDA operators (registered as torch.ops.probreg.*) under a Python API:
    symeig, spd_remap, spd_from_raw   the SPD parameterisation (paper sec. 3.3, app. B)
    pack_sym, unpack_sym              the packed symmetric layout of network outputs
    huber_fuse, fuse_predictions      ML fusion of several Huber estimates (paper app. E)
    probreg.wiberg                    damped implicit gradients through an argmin
    probreg.ebm, probreg.gum          energy-based densities, DeepGUM (Gaussian-uniform mixture)
Pure-PyTorch references of every operator live in probreg.reference.
"""
from . import _ops  # noqa: F401  (registers operators, fake kernels and autograd)
from . import ebm, gum, reference, wiberg
from .packing import pack_sym, unpack_sym
from .spd import spd_from_raw, spd_remap, symeig
from .fusion import FuseResult, fuse_predictions, huber_fuse

__version__ = "0.1.0"

__all__ = [
    "symeig",
    "spd_remap",
    "spd_from_raw",
    "pack_sym",
    "unpack_sym",
    "reference",
    "huber_fuse",
    "fuse_predictions",
    "FuseResult",
    "wiberg",
    "ebm",
    "gum",
]

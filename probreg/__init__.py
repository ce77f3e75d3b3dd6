"""probreg: probabilistic regression with L2 multivariate Huber distributions.

Fused C++/CUDA operators (registered as torch.ops.probreg.*) under a Python API:
    symeig, spd_remap, spd_from_raw   the SPD parameterisation (paper sec. 3.3, app. B)
    pack_sym, unpack_sym              the packed symmetric layout of network outputs
    huber_nll, HuberNLLLoss           the NLL losses (paper eq. 6, 11-13), fused fwd/bwd
    huber_log_normalizer,             log c_d(delta) and kappa_d(delta) (paper app. A)
    huber_variance_factor
    HuberL2                           the distribution (torch.distributions API)
    probreg.wiberg                    damped implicit gradients through an argmin
    probreg.ebm, probreg.gum          energy-based densities, DeepGUM (Gaussian-uniform mixture)
    huber_fuse, fuse_predictions      ML fusion of several Huber estimates (paper app. E)
Pure-PyTorch references of every operator live in probreg.reference.
"""
from . import _ops  # noqa: F401  (registers operators, fake kernels and autograd)
from . import ebm, gum, reference, wiberg
from .packing import pack_sym, unpack_sym
from .spd import spd_from_raw, spd_remap, symeig
from .nll import HuberNLLLoss, huber_nll
from .normalizer import huber_log_normalizer, huber_variance_factor
from .distributions import HuberL2
from .fusion import FuseResult, fuse_predictions, huber_fuse
from ._version import __version__

__all__ = [
    "symeig",
    "spd_remap",
    "spd_from_raw",
    "pack_sym",
    "unpack_sym",
    "reference",
    "huber_nll",
    "HuberNLLLoss",
    "huber_log_normalizer",
    "huber_variance_factor",
    "HuberL2",
    "wiberg",
    "ebm",
    "gum",
    "huber_fuse",
    "fuse_predictions",
    "FuseResult",
]

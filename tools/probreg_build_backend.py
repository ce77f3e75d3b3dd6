"""PEP 517 build backend of probreg (pyproject.toml: backend-path = ["tools"]).

probreg._C compiles against the torch that is already installed, so probreg is built
without build isolation (`pip install --no-build-isolation .`). pip's isolated build
environment hides the installed torch, and building there would take a second torch
download. This backend therefore declares no build requirements (an isolated build
installs nothing), and when torch cannot be imported it stops at once with the command to
run. With torch importable, every hook is setuptools.build_meta's (setuptools >= 77, for
the SPDX licence metadata in pyproject.toml).
"""
from __future__ import annotations

import re

MIN_SETUPTOOLS = (77, 0)

NO_TORCH = """\
probreg compiles its C++ extension against the torch that is already installed, and
torch cannot be imported in this build environment: build isolation hides it (or torch
is not installed). Build without isolation, in the environment that has torch:

    pip install --no-build-isolation .        (editable: pip install --no-build-isolation -e .)

that is, add --no-build-isolation to the pip command you ran (pip wheel, an sdist too;
python -m build takes --no-isolation). First install torch if it is missing
(pip install torch), and setuptools >= 77 (pip install -U "setuptools>=77").
"""

OLD_SETUPTOOLS = """\
probreg builds with setuptools >= 77 (SPDX licence metadata); this environment has {found}.
Run: pip install -U "setuptools>=77", then the same pip command again.
"""


def _version_tuple(text: str) -> tuple:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _setuptools_backend():
    """setuptools.build_meta, once torch and a recent enough setuptools are importable;
    otherwise SystemExit with the message (pip prints it as the hook's output)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit(NO_TORCH) from None
    try:
        import setuptools
        from setuptools import build_meta
    except ImportError:
        raise SystemExit(OLD_SETUPTOOLS.format(found="no setuptools")) from None
    if _version_tuple(setuptools.__version__) < MIN_SETUPTOOLS:
        raise SystemExit(OLD_SETUPTOOLS.format(found=f"setuptools {setuptools.__version__}"))
    return build_meta


def _hook(name):
    def hook(*args, **kwargs):
        return getattr(_setuptools_backend(), name)(*args, **kwargs)

    hook.__name__ = hook.__qualname__ = name
    return hook


# The PEP 517 / PEP 660 hooks, each handed to setuptools.build_meta's.
HOOKS = (
    "get_requires_for_build_wheel", "prepare_metadata_for_build_wheel", "build_wheel",
    "get_requires_for_build_sdist", "build_sdist",
    "get_requires_for_build_editable", "prepare_metadata_for_build_editable", "build_editable",
)
globals().update({name: _hook(name) for name in HOOKS})

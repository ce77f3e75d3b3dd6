"""How probreg behaves when it is installed the wrong way, or not built.

The routes that succeed (pip install / -e / sdist / wheel, each with --no-build-isolation,
in a fresh venv) are exercised by `make install-check` and, for the wheel, by CI's
`make wheel-check` (tools/install_check.sh): they compile and take minutes. Here: the two
failures a user meets first, each of which must say what to run.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

from helpers import ROOT

# The checkout's build artefacts, caches and local environments, never copied.
IGNORED = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.so",
                                 "output", ".venv", ".whl", ".gl")


def _offline_pip_env():
    """pip that can reach no package at all: no index, no find-links, no configuration
    file (this machine's configuration points at a local torch wheel)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", PIP_NO_CACHE_DIR="1")
    return env


@pytest.mark.parametrize("command", [
    ["install", "."],
    ["install", "-e", "."],
    ["wheel", "--no-deps", "-w", "wheels", "."],
], ids=["install", "editable", "wheel"])
def test_isolated_build_fails_at_once_and_says_what_to_run(tmp_path, command):
    """Plain pip (build isolation) against a copy of the tree: fails within seconds with the
    --no-build-isolation command, and asks for nothing to download (the in-tree backend
    declares no build requirements; a requirement would fail here as 'Could not find')."""
    tree = tmp_path / "probreg-src"
    shutil.copytree(ROOT, tree, ignore=IGNORED)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pip", *command], cwd=tree, env=_offline_pip_env(),
                            capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "pip install --no-build-isolation ." in output, output
    assert "build isolation hides it" in output, output
    assert "Could not find a version" not in output, output  # nothing was requested
    assert elapsed < 30, f"pip took {elapsed:.1f} s to fail\n{output}"
    assert not (tree / "build").exists() and not list(tree.glob("*.egg-info")), "the failed build wrote into the tree"


def _import_probreg(package_dir):
    """`import probreg` in a fresh interpreter that sees only package_dir/probreg."""
    return subprocess.run([sys.executable, "-c", "import probreg"], cwd=package_dir, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=300)


def test_import_without_extension_says_it_is_not_built_and_how_to_build(tmp_path):
    shutil.copytree(os.path.join(ROOT, "probreg"), tmp_path / "probreg", ignore=IGNORED)
    result = _import_probreg(tmp_path)
    assert result.returncode != 0
    message = result.stderr[result.stderr.index("ImportError: "):]
    assert message.startswith("ImportError: probreg's C++ extension probreg._C is not built."), result.stderr
    assert "pip install --no-build-isolation ." in message and "make build" in message, message
    assert "circular import" not in result.stderr, result.stderr


def test_import_with_a_broken_extension_says_so(tmp_path):
    """An extension file that does not load (e.g. built against another torch) is not
    reported as 'not built': the message names the file and the loader's error."""
    shutil.copytree(os.path.join(ROOT, "probreg"), tmp_path / "probreg", ignore=IGNORED)
    import importlib.machinery

    broken = tmp_path / "probreg" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])
    broken.write_bytes(b"not an ELF file")
    result = _import_probreg(tmp_path)
    assert result.returncode != 0
    assert f"ImportError: probreg's C++ extension {broken} is built but does not load" in result.stderr, result.stderr
    assert "rebuild it" in result.stderr


def test_build_backend_asks_for_setuptools_77(monkeypatch):
    """With torch importable but an older setuptools (Python 3.11's venvs ship 65), the
    in-tree backend stops before building, saying which setuptools to install."""
    import setuptools
    from setuptools import build_meta

    monkeypatch.syspath_prepend(os.path.join(ROOT, "tools"))
    import probreg_build_backend as backend

    monkeypatch.setattr(setuptools, "__version__", "65.5.0")
    with pytest.raises(SystemExit, match=r"setuptools >= 77 .* has setuptools 65\.5\.0"):
        backend.build_wheel("unused")
    monkeypatch.setattr(setuptools, "__version__", "77.0.3")
    assert backend._setuptools_backend() is build_meta

"""The source distribution holds everything needed to build probreg._C and to run
`make test` / `make bench` / `make cuda-check` from the unpacked tarball (MANIFEST.in),
and no build artefacts; the package metadata (version, licence) is declared once and in
its current form; py.typed is installed with the package."""
import ast
import os
import subprocess
import sys
import tarfile

import pytest
from helpers import ROOT

# What the sdist must carry: every file under these directories plus these top-level files.
DIRS = ("csrc", "probreg", "tests", "benchmarks", "examples", "tools")
TOP_FILES = ("Makefile", "CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "LICENSE",
             "CHANGELOG.md")
# Never in the sdist (build outputs, caches: MANIFEST.in prunes them); also skipped when
# walking the file system.
SKIP_DIRS = {"__pycache__", "build", ".pytest_cache"}
SKIP_SUFFIXES = (".so", ".pyd", ".dylib", ".o", ".pyc", ".pyo")
SKIP_PREFIXES = ("examples/output/",)  # written by the examples


def _is_artefact(rel):
    parts = rel.split("/")
    return (
        any(p in SKIP_DIRS for p in parts[:-1])
        or rel.endswith(SKIP_SUFFIXES)
        or rel.startswith(SKIP_PREFIXES)
    )


def _git_files():
    """Tracked files under DIRS + TOP_FILES, or None when ROOT is not a git checkout
    (e.g. the tests run from an unpacked sdist) or git is missing."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        if os.path.realpath(top) != os.path.realpath(ROOT):
            return None  # e.g. an unpacked sdist inside some other repository
        out = subprocess.run(
            ["git", "ls-files", "-z", "--", *DIRS, *TOP_FILES], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f))}


def _walked_files():
    files = {f for f in TOP_FILES if os.path.isfile(os.path.join(ROOT, f))}
    for d in DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, d)):
            dirnames[:] = [n for n in dirnames if n not in SKIP_DIRS]
            for name in filenames:
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/")
                if not _is_artefact(rel):
                    files.add(rel)
    return files


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(file names relative to the sdist's top directory, PKG-INFO text, setuptools' stderr)."""
    tmp_path = tmp_path_factory.mktemp("sdist")
    # egg_info into tmp_path so that nothing (probreg.egg-info) is left in the repository.
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    (tarball,) = tmp_path.glob("probreg-*.tar.gz")
    prefix = tarball.name[: -len(".tar.gz")] + "/"
    with tarfile.open(tarball) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        pkg_info = tar.extractfile(prefix + "PKG-INFO").read().decode()
    assert all(n.startswith(prefix) for n in names), names
    return {n[len(prefix):] for n in names}, pkg_info, build.stderr


def test_sdist_contains_sources_and_no_artefacts(sdist):
    expected = _git_files()
    if expected is None:
        expected = _walked_files()
    for must in ("csrc/probreg.cpp", "tests/helpers.py", "Makefile", "CMakeLists.txt", "setup.py", "LICENSE",
                 "tools/probreg_build_backend.py"):
        assert must in expected, must  # the expected list itself is sane
    in_sdist = sdist[0]

    missing = sorted(expected - in_sdist)
    assert not missing, f"{len(missing)} files missing from the sdist (MANIFEST.in): {missing}"
    artefacts = sorted(n for n in in_sdist if _is_artefact(n))
    assert not artefacts, f"build artefacts in the sdist: {artefacts}"


def _declared(name="__version__"):
    """A string constant of probreg/_version.py, read as source (not through setuptools)."""
    with open(os.path.join(ROOT, "probreg", "_version.py")) as f:
        tree = ast.parse(f.read())
    (value,) = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and [t.id for t in node.targets] == [name]]
    return value


def test_metadata_version_defined_once_and_mit_licence_in_spdx_form(sdist):
    _, pkg_info, stderr = sdist
    fields = [line.split(": ", 1) for line in pkg_info.split("\n\n")[0].splitlines() if ": " in line]
    assert ["Version", _declared()] in fields, pkg_info
    assert ["License-Expression", "MIT"] in fields and ["License-File", "LICENSE"] in fields, pkg_info
    assert not any(key == "License" or value.startswith("License ::") for key, value in fields), pkg_info
    assert "Deprecat" not in stderr, stderr  # e.g. the licence as a TOML table
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"
    # No second literal version anywhere in the package.
    for name in os.listdir(os.path.join(ROOT, "probreg")):
        if name.endswith(".py") and name != "_version.py":
            with open(os.path.join(ROOT, "probreg", name)) as f:
                assert "__version__ =" not in f.read(), name


def test_lowest_torch_declared_once_and_stated_in_the_metadata_and_readme(sdist):
    """probreg/_version.py's MIN_TORCH_VERSION (the lowest torch tools/check_torch_version.sh
    has passed) is the Requires-Dist bound, and the README's Install section states it."""
    _, pkg_info, _ = sdist
    lowest = _declared("MIN_TORCH_VERSION")
    assert f"Requires-Dist: torch>={lowest}" in pkg_info, pkg_info
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert f"It needs torch >= {lowest}," in readme


def test_py_typed_is_installed_with_the_package(tmp_path):
    """build_py (the step that lays out the wheel's pure-Python part) copies py.typed."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / "probreg" / "py.typed").is_file()
    assert (tmp_path / "probreg" / "_version.py").is_file()

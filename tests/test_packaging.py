"""The source distribution holds everything needed to build probreg._C and to run
`make test` / `make bench` / `make cuda-check` from the unpacked tarball (MANIFEST.in),
and no build artefacts."""
import os
import subprocess
import sys
import tarfile

from helpers import ROOT

# What the sdist must carry: every file under these directories plus these top-level files.
DIRS = ("csrc", "probreg", "tests", "benchmarks", "examples", "tools")
TOP_FILES = ("Makefile", "CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "MANIFEST.in")
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


def _build_sdist(tmp_path):
    # egg_info into tmp_path so that nothing (probreg.egg-info) is left in the repository.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT, check=True, capture_output=True,
    )
    (tarball,) = tmp_path.glob("probreg-*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    prefix = tarball.name[: -len(".tar.gz")] + "/"
    assert all(n.startswith(prefix) for n in names), names
    return {n[len(prefix):] for n in names}


def test_sdist_contains_sources_and_no_artefacts(tmp_path):
    expected = _git_files()
    if expected is None:
        expected = _walked_files()
    for must in ("csrc/probreg.cpp", "tests/helpers.py", "Makefile", "CMakeLists.txt", "setup.py"):
        assert must in expected, must  # the expected list itself is sane
    in_sdist = _build_sdist(tmp_path)

    missing = sorted(expected - in_sdist)
    assert not missing, f"{len(missing)} files missing from the sdist (MANIFEST.in): {missing}"
    artefacts = sorted(n for n in in_sdist if _is_artefact(n))
    assert not artefacts, f"build artefacts in the sdist: {artefacts}"

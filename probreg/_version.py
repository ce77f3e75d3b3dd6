"""The package version: the one place it is defined (pyproject.toml reads it through
setuptools' dynamic metadata; probreg.__version__ re-exports it)."""
__version__ = "0.1.0"

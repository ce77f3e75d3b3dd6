"""The package version: the one place it is defined (pyproject.toml reads it through
setuptools' dynamic metadata; probreg.__version__ re-exports it)."""
__version__ = "0.1.0"

# The lowest torch release probreg is tested with (tools/check_torch_version.sh: the suite
# without the slow tests, in-place build and pip install). Older releases lack what the
# autograd and vmap rules use (torch.library.register_vmap before 2.5; functorch and dynamo
# behaviour the autograd matrix relies on before 2.9). setup.py and probreg._ops refuse them.
MIN_TORCH_VERSION = "2.9.1"

"""What every example shares: the command line (--fast, --out DIR, --threads,
--no-progress), a progress bar for long loops, and saving figures whose axes are all
labelled."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch

# Examples import this module first (from their own directory). The installed probreg is
# used when there is one; otherwise the checkout this file lives in (built in place).
try:
    import probreg  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_OUT = os.path.join("examples", "output")


def parser(doc: str, fast_help: str = "short run (seconds; what the tests run)") -> argparse.ArgumentParser:
    """An ArgumentParser with the options every example takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help=fast_help)
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="directory for the files the example writes (default %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the models are small; one thread behaves best on a shared machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with n torch threads, restoring the previous setting afterwards."""
    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def progress(iterable, desc: str, enabled: bool = True, total=None):
    """tqdm progress bar on stderr (or the bare iterable when disabled)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=0.5, file=sys.stderr)


@contextlib.contextmanager
def optimizer_progress(optimizer, desc: str, enabled: bool = True):
    """A progress bar counting optimizer steps, for training loops that are not ours (a
    step post-hook; removed on exit)."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=" steps", leave=False, mininterval=0.5, file=sys.stderr)
    handle = optimizer.register_step_post_hook(lambda *args: bar.update(1))
    try:
        yield
    finally:
        handle.remove()
        bar.close()


def out_path(out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    return os.path.join(out_dir, name)


def save_figure(fig, out_dir: str, name: str, dpi: int = 110) -> str:
    """Save fig as out_dir/name after checking that every visible axes has both axis labels."""
    for ax in fig.axes:
        if ax.axison and (not ax.get_xlabel() or not ax.get_ylabel()):
            raise AssertionError(f"{name}: axes {ax.get_title()!r} lacks an axis label")
    path = out_path(out_dir, name)
    fig.savefig(path, dpi=dpi)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def save_json(payload, out_dir: str, name: str) -> str:
    path = out_path(out_dir, name)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

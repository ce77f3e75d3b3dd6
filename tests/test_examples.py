"""Fast-mode runs of the examples: each runs from its main(argv) with --fast --out DIR (the
tests of ransac_toy and tracker_fusion are in test_wiberg_examples.py, of robust_training in
test_robust_training_example.py); the test checks the numbers and the files it produces.
Every figure goes through example_utils.save_figure, which refuses an axes without axis
labels."""
import json
import math
import os

import pytest
import torch

from helpers import EXAMPLES, PNG_SIGNATURE, load_example

ALL_EXAMPLES = ["keypoints", "density_plots", "tta_fusion", "ddp", "robust_training", "ransac_toy", "tracker_fusion"]


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def assert_png(path, min_side=100):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side
    assert image.std() > 0.01  # not a blank canvas


def test_readme_lists_exactly_the_tested_examples():
    """Every example the README lists has a --fast run in the tests (ALL_EXAMPLES), and
    every example script is listed."""
    import re

    from helpers import ROOT

    readme = open(os.path.join(ROOT, "README.md")).read()
    listed = set(re.findall(r"^python examples/(\w+)\.py", readme, re.M))
    scripts = {f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py")} - {"example_utils", "synthetic_keypoints"}
    assert listed == set(ALL_EXAMPLES) == scripts, (listed, scripts)


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_every_example_takes_the_common_options(name, capsys):
    """--fast, --out DIR, --threads and --no-progress, with one meaning everywhere."""
    module = load_example(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--fast", "--out", "--threads", "--no-progress"):
        assert option in text, (name, option)
    assert "--png" not in text and "--calibration-png" not in text


def test_save_figure_refuses_unlabelled_axes(tmp_path):
    utils = load_example("example_utils")
    plt = utils.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x")
    with pytest.raises(AssertionError, match="axis label"):
        utils.save_figure(fig, str(tmp_path), "unlabelled.png")
    ax.set_ylabel("y")
    assert_png(utils.save_figure(fig, str(tmp_path), "labelled.png"), min_side=50)


def test_keypoints_fast(tmp_path, capsys):
    keypoints = load_example("keypoints")
    out = keypoints.main(["--fast", "--no-progress", "--out", str(tmp_path)])
    assert set(out["results"]) == {(f, c) for f in keypoints.FAMILIES for c in keypoints.COVARIANCES}
    for runs in out["results"].values():
        error, nll = runs[0]
        assert math.isfinite(error) and 0 < error < 1.0
        assert math.isfinite(nll)
    printed = capsys.readouterr().out
    for family in keypoints.FAMILIES:
        assert f"| {family} |" in printed
    assert_png(out["png"])
    assert os.path.dirname(out["png"]) == str(tmp_path)
    with open(out["json"]) as f:
        assert set(json.load(f)) >= {"results", "robust", "calibration"}
    plain, robust = out["calibration"].values()
    levels = keypoints.COVERAGE_LEVELS
    for curve in (plain, robust):
        assert len(curve["expected_rms"]) == 20 and len(curve["coverage"]) == len(levels)
        assert curve["coverage"] == sorted(curve["coverage"])  # nested regions
    # 20% wrong labels inflate the plain Huber NLL's scale: its regions over-cover the inlier
    # labels, and the outlier component removes much of that
    p50 = levels.index(0.5)
    assert plain["coverage"][p50] > 0.6
    assert robust["coverage"][p50] < plain["coverage"][p50] - 0.1


def test_density_plots(tmp_path):
    import probreg

    density = load_example("density_plots")
    out = density.main(["--fast", "--out", str(tmp_path)])
    assert out["path"] == os.path.join(str(tmp_path), "huber_density.png")
    assert_png(out["path"], min_side=300)
    for delta, kappa in out["kappa"].items():
        assert kappa == pytest.approx(probreg.huber_variance_factor(2, delta))
    # the contour radii: Gaussian radii are the chi(2) quantiles sqrt(-2 log(1 - m))
    radii = density.mass_radii(math.inf)
    chi2 = [math.sqrt(-2 * math.log(1 - m)) for m in density.MASSES]
    assert max(abs(a - b) for a, b in zip(radii, chi2)) < 1e-12


def test_tta_fusion_fast(tmp_path, capsys):
    tta = load_example("tta_fusion")
    out = tta.main(["--fast", "--no-progress", "--out", str(tmp_path)])
    assert len(out["errors"]) == 4 and all(math.isfinite(v) and v > 0 for v in out["errors"].values())
    assert out["converged_fraction"] == 1.0
    assert "| ML fusion (probreg.fuse_predictions) |" in capsys.readouterr().out
    assert_png(out["png"])
    assert os.path.exists(out["json"])


def test_mirrored_rendering_maps_back_exactly():
    """The same seed rendered mirrored and mapped back with M = diag(-1, 1) gives the
    plain labels, clean keypoints and noise covariances (what TTA relies on)."""
    synthetic = load_example("synthetic_keypoints")
    plain = synthetic.make_keypoint_data(50, seed=5)
    mirrored = synthetic.make_keypoint_data(50, seed=5, mirror=True)
    M = torch.diag(torch.tensor([-1.0, 1.0]))
    assert torch.equal(mirrored.labels @ M, plain.labels)
    assert torch.equal(mirrored.clean @ M, plain.clean)
    assert torch.allclose(M @ mirrored.noise_cov @ M, plain.noise_cov)
    assert not torch.allclose(mirrored.inputs, plain.inputs)


def test_keypoint_images():
    """make_keypoint_images: deterministic; the blob of keypoint k peaks at its position in
    its colour channel; labels are true + noise except the outliers; the noise has the
    stated covariance."""
    synthetic = load_example("synthetic_keypoints")
    n = 1000
    a = synthetic.make_keypoint_images(n, outlier_fraction=0.1, seed=3)
    b = synthetic.make_keypoint_images(n, outlier_fraction=0.1, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (n, 3, 32, 32) and a.labels.shape == (n, 5, 2)
    assert a.true.abs().max() < 1.0
    inlier = ~a.is_outlier
    assert torch.equal(a.labels[inlier], a.clean_labels[inlier])
    assert 0.05 < a.is_outlier.double().mean() < 0.15
    # keypoint 0 is pure red: the red channel at its pixel averages the blob's value there
    size = 32
    pixel = ((a.true[:, 0] + 1) * size / 2).floor().long().clamp(0, size - 1)
    at_blob = a.images[torch.arange(n), 0, pixel[:, 1], pixel[:, 0]].mean()
    assert at_blob > 0.4  # contrast 1 - 0.6 u (mean 0.7) times the blob's value near its centre
    noise = (a.clean_labels - a.true).double()
    whitened = torch.linalg.solve(torch.linalg.cholesky(a.noise_cov.double()), noise.unsqueeze(-1)).squeeze(-1)
    assert whitened.var().item() == pytest.approx(1.0, abs=0.06)  # 10^4 draws of N(0, 1): 4 standard errors


def test_ddp_fast(tmp_path):
    ddp = _import_ddp()
    out = ddp.main(["--fast", "--no-progress", "--out", str(tmp_path)])
    assert math.isfinite(out["test_nll"]) and out["steps"] == 30
    with open(os.path.join(str(tmp_path), "ddp.json")) as f:
        assert json.load(f)["test_nll"] == pytest.approx(out["test_nll"])


def test_ddp_step_matches_single_process():
    ddp = _import_ddp()
    data = load_example("synthetic_keypoints").make_keypoint_data(64, seed=3)
    inputs, labels = data.inputs.double(), data.labels.double()
    g_rank0, g_rank1 = ddp.ddp_step_gradients(inputs, labels)
    g_single = ddp.single_process_gradients(inputs, labels)
    for a, b, c in zip(g_rank0, g_rank1, g_single):
        assert torch.equal(a, b)
        assert (a - c).abs().max() <= 1e-12 * c.abs().max().clamp_min(1.0)


def _import_ddp():
    # spawned workers unpickle ddp._worker by module name: import it as "ddp"
    import importlib
    import sys

    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return importlib.import_module("ddp")

"""Fast-mode runs of the examples (issue 6): each runs from its main(argv) and the test
checks the numbers and the files it produces."""
import math
import os

import pytest
import torch

from helpers import EXAMPLES, PNG_SIGNATURE, load_example


def assert_png(path, min_side=100):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side
    assert image.std() > 0.01  # not a blank canvas


def test_keypoints_fast(tmp_path, capsys):
    keypoints = load_example("keypoints")
    png = tmp_path / "calibration.png"
    out = keypoints.main(["--fast", "--no-progress", "--calibration-png", str(png)])
    assert set(out["results"]) == {(f, c) for f in keypoints.FAMILIES for c in keypoints.COVARIANCES}
    for runs in out["results"].values():
        error, nll = runs[0]
        assert math.isfinite(error) and 0 < error < 1.0
        assert math.isfinite(nll)
    printed = capsys.readouterr().out
    for family in keypoints.FAMILIES:
        assert f"| {family} |" in printed
    assert_png(png)
    assert out["calibration"]["bins"] == 20
    assert 0.1 < out["calibration"]["median_empirical_over_expected"] < 10


def test_density_plots(tmp_path):
    import probreg

    density = load_example("density_plots")
    png = tmp_path / "density.png"
    out = density.main(["--out", str(png)])
    assert_png(png, min_side=300)
    for delta, kappa in out["kappa"].items():
        assert kappa == pytest.approx(probreg.huber_variance_factor(2, delta))
    # the radial CDF behind the contours: Gaussian radii are the chi(2) quantiles
    radii = density.mass_radii(math.inf)
    chi2 = [math.sqrt(-2 * math.log(1 - m)) for m in density.MASSES]
    assert max(abs(a - b) for a, b in zip(radii, chi2)) < 1e-4


def test_tta_fusion_fast(tmp_path, capsys):
    tta = load_example("tta_fusion")
    png = tmp_path / "tta.png"
    out = tta.main(["--fast", "--png", str(png)])
    assert len(out["errors"]) == 4 and all(math.isfinite(v) and v > 0 for v in out["errors"].values())
    assert out["converged_fraction"] == 1.0
    assert "| ML fusion (probreg.fuse_predictions) |" in capsys.readouterr().out
    assert_png(png)


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


def test_ddp_step_matches_single_process():
    # spawned workers unpickle ddp._worker by module name: import it as "ddp"
    import importlib
    import sys

    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    ddp = importlib.import_module("ddp")
    data = load_example("synthetic_keypoints").make_keypoint_data(64, seed=3)
    inputs, labels = data.inputs.double(), data.labels.double()
    g_rank0, g_rank1 = ddp.ddp_step_gradients(inputs, labels)
    g_single = ddp.single_process_gradients(inputs, labels)
    for a, b, c in zip(g_rank0, g_rank1, g_single):
        assert torch.equal(a, b)
        assert (a - c).abs().max() <= 1e-12 * c.abs().max().clamp_min(1.0)

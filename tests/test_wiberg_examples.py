"""Fast-mode runs of examples/ransac_toy.py and examples/tracker_fusion.py, checking the
numbers and files they produce."""

import json
import os

import pytest
import torch

from helpers import PNG_SIGNATURE, load_example


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_ransac_toy_fast(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    result = load_example("ransac_toy").main(["--fast", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for row in ("damped (lambda=0.1)", "undamped (lambda=0)", "initial", "learned, damped", "learned, undamped"):
        assert row in out

    with open(result["png"], "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.dirname(result["png"]) == str(tmp_path)

    damped, undamped = result["stats"]["damped"], result["stats"]["undamped"]
    # every damped step obeys the trust-region bound |dL/dsigma| <= G_k ...
    assert damped["diverged_at"] == -1
    assert damped["max_grad_over_bound"] <= 1.0 + 1e-9
    assert damped["exploding_steps"] == 0
    # ... hence every damped SGD update obeys |dsigma_k| <= lr sum_j momentum^(k-j) G_j
    rec = result["records"]["damped"]
    velocity_bound = torch.zeros(())
    sigma_prev = torch.tensor(5.0, dtype=torch.float64)
    for k in range(len(rec["grad"])):
        velocity_bound = result["momentum"] * velocity_bound + rec["bound"][k]
        assert abs(float(rec["sigma"][k] - sigma_prev)) <= result["lr"] * float(velocity_bound) * (1 + 1e-9)
        sigma_prev = rec["sigma"][k]
    # the undamped run has at least one step 10x beyond any damped step at that point
    assert undamped["exploding_steps"] >= 1
    assert undamped["max_grad_over_bound"] > 10.0
    assert undamped["min_curvature"] < 0.01  # = lambda / 10
    # learning sigma moves the minimum towards the inlier mean (the trained loss)
    evaluation = result["evaluation"]
    assert evaluation["damped"]["mse"] < 0.85 * evaluation["initial"]["mse"]
    assert evaluation["damped"]["median_abs_error"] < evaluation["initial"]["median_abs_error"]


def test_tracker_fusion_fast(tmp_path, capsys):
    result = load_example("tracker_fusion").main(["--fast", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [
        "best single tracker (on train)",
        "mean fusion",
        "median fusion",
        "RBF fusion, initial parameters",
        "RBF fusion, undamped (Samuel & Tappen)",
        "RBF fusion, damped (Wibergian)",
    ]
    for row in rows:
        assert row in out
    with open(result["json"]) as f:
        saved = json.load(f)
    assert list(saved["results"]) == rows
    res = saved["results"]
    learned = res["RBF fusion, damped (Wibergian)"]
    for baseline in ("mean fusion", "median fusion", "RBF fusion, initial parameters"):
        assert learned["iou"] > res[baseline]["iou"]
        assert learned["l1"] < res[baseline]["l1"]
    assert learned["nonfinite_steps"] == 0
    first, last = learned["train_l1_first_last"]
    assert last < first
    # the box-scale correction of the trackers that shrink their box by 0.7-0.8 grows
    assert saved["learned_by_kind"]["scaled"]["box_scale"] > 1.05
    for entry in res.values():
        assert 0.0 <= entry["iou"] <= 1.0

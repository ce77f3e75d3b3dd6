"""Test-time augmentation with maximum-likelihood fusion (paper sec. 4.1, app. E, tables 6/8).

Trains the keypoint model (Huber NLL, full covariance, v-parameterisation) with mirror
augmentation, then predicts on each test input and on its mirrored rendering, maps the
mirrored prediction back with its affine transform (x -> M x, M = diag(-1, 1)), and
compares: no TTA, mean fusion of the two locations, and ML fusion with
probreg.fuse_predictions (the argmin of the summed Huber energies). The fused Hessian is
the Laplace precision of the fused estimate; the PNG shows it as 1-sigma ellipses.

    python examples/tta_fusion.py --png examples/output/tta_fusion.png
    python examples/tta_fusion.py --fast
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import probreg  # noqa: E402
from keypoints import DELTA, THETA, KeypointNet, location  # noqa: E402
from synthetic_keypoints import make_keypoint_data  # noqa: E402

MIRROR = torch.diag(torch.tensor([-1.0, 1.0]))


def train_with_mirror_augmentation(steps, n_train, outliers, seed=0, batch_size=256):
    torch.manual_seed(seed)
    plain = make_keypoint_data(n_train, outlier_fraction=outliers, seed=100 + seed)
    mirrored = make_keypoint_data(n_train, outlier_fraction=outliers, seed=200 + seed, mirror=True)
    inputs = torch.cat([plain.inputs, mirrored.inputs])
    labels = torch.cat([plain.labels, mirrored.labels])
    net = KeypointNet(labels.shape[1], "full")
    loss_fn = probreg.HuberNLLLoss(delta=DELTA, theta=THETA, family="huber", covariance="full")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, inputs.shape[0], (batch_size,))
        loss = loss_fn(net(inputs[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net


def fuse_tta(net, plain_inputs, mirrored_inputs):
    """Predictions on both renderings -> (mu_plain, mu_mirror_mapped, mean fusion, ML fusion, Hessian)."""
    with torch.no_grad():
        pred_plain = net(plain_inputs)  # (N, K, 5)
        pred_mirror = net(mirrored_inputs)  # in the mirrored frame
        mu_plain = location(pred_plain, "full")
        mu_mirror = location(pred_mirror, "full") @ MIRROR.T  # mapped back: x -> M x
        preds = torch.stack([pred_plain, pred_mirror], dim=-2)  # (N, K, 2, 5)
        M = torch.stack([torch.eye(2), MIRROR]).expand(*preds.shape[:-1], 2, 2)
        t = torch.zeros(*preds.shape[:-1], 2)
        fused = probreg.fuse_predictions(preds, theta=THETA, delta=DELTA, parameterization="v", transforms=(M, t))
    return mu_plain, mu_mirror, 0.5 * (mu_plain + mu_mirror), fused


def ellipse_png(path, sample, clean, mu_plain, mu_mirror, fused_y, fused_H):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    angle = torch.linspace(0, 2 * torch.pi, 100)
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    for k in range(clean.shape[0]):
        cov = torch.linalg.inv(fused_H[k])
        w, Q = torch.linalg.eigh(cov)
        ring = fused_y[k] + (circle * w.clamp_min(0).sqrt()) @ Q.T
        ax.plot(ring[:, 0], ring[:, 1], color="tab:green", lw=1, label="fused 1-sigma (Hessian^-1)" if k == 0 else None)
    ax.plot(clean[:, 0], clean[:, 1], "k+", ms=9, label="ground truth")
    ax.plot(mu_plain[:, 0], mu_plain[:, 1], "o", color="tab:blue", ms=4, label="prediction")
    ax.plot(mu_mirror[:, 0], mu_mirror[:, 1], "s", color="tab:orange", ms=4, label="mirrored prediction, mapped back")
    ax.plot(fused_y[:, 0], fused_y[:, 1], "x", color="tab:red", ms=7, label="ML fusion")
    ax.set_aspect("equal")
    ax.set_title(f"Test-time augmentation fusion, test sample {sample}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--outliers", type=float, default=0.2)
    parser.add_argument("--png", default=None, help="write the fused-uncertainty plot here")
    args = parser.parse_args(argv)
    steps, n_train, n_test = (80, 2000, 500) if args.fast else (2500, 20000, 4000)
    started = time.perf_counter()
    net = train_with_mirror_augmentation(steps, n_train, args.outliers)
    plain = make_keypoint_data(n_test, outlier_fraction=args.outliers, seed=999)
    mirrored = make_keypoint_data(n_test, outlier_fraction=args.outliers, seed=999, mirror=True)
    mu_plain, mu_mirror, mean_fused, fused = fuse_tta(net, plain.inputs, mirrored.inputs)
    clean = plain.clean

    def err(mu):
        return (mu - clean).norm(dim=-1).mean().item()

    rows = {
        "no TTA (plain input)": err(mu_plain),
        "no TTA (mirrored input, mapped back)": err(mu_mirror),
        "mean fusion": err(mean_fused),
        "ML fusion (probreg.fuse_predictions)": err(fused.y),
    }
    converged = fused.converged.float().mean().item()
    print(f"\nTest-time augmentation on {n_test} test samples x {clean.shape[1]} keypoints "
          f"({args.outliers:.0%} outlier labels in training); mean location error vs clean keypoints")
    print("| method | mean error |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.4f} |")
    print(f"ML fusion: converged {converged:.1%}, median iterations {fused.iterations.float().median().item():.0f}")
    if args.png:
        ellipse_png(args.png, 0, clean[0], mu_plain[0], mu_mirror[0], fused.y[0], fused.hessian[0])
        print(f"wrote {args.png}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return {"errors": rows, "converged_fraction": converged}


if __name__ == "__main__":
    main()

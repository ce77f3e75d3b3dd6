"""Iso-probability contours of the L2 multivariate Huber distribution (paper app. G).

Row 1 (figure 4): a Gaussian with covariance Sigma, then Huber distributions with
delta in {0.5, 1, 2} and the SAME second moment: Cov = kappa_d(delta) Lambda^{-1} = Sigma,
i.e. Lambda = kappa Sigma^{-1}. Row 2 (figure 5): the same Lambda = Sigma^{-1} and
different delta. Contours enclose the probability masses .005, .05, .2, .35, .5, .65, .8,
.95, .99 (the p-regions {y : ||A y|| <= s_p}, s_p = probreg.huber_region_radius); shading is
the log density.

    python examples/density_plots.py [--fast] [--out DIR]     # DIR/huber_density.png
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import example_utils  # noqa: E402
import probreg  # noqa: E402

MASSES = [0.005, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.99]
SIGMA = np.array([[9.0, 3.0], [3.0, 4.0]])


def radial_profile(delta):
    """h(r) for the Huber (finite delta) or Gaussian (delta = inf) radial energy."""
    if math.isinf(delta):
        return lambda r: 0.5 * r * r
    return lambda r: np.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


def mass_radii(delta, d=2):
    """Radii rho_m with P(||A (y - mu)|| <= rho_m) = m for each mass m (exact; delta = inf is
    the Gaussian)."""
    return np.array([probreg.huber_region_radius(d, delta, m) for m in MASSES])


def log_density(points, A, delta):
    """log p(x) = log|A| - h(||A x||) - log c_d(delta), x (..., 2); Gaussian for delta = inf."""
    rho = np.linalg.norm(points @ A.T, axis=-1)
    if math.isinf(delta):
        log_c = math.log(2 * math.pi)
    else:
        log_c = probreg.huber_log_normalizer(2, delta)
    return math.log(abs(np.linalg.det(A))) - radial_profile(delta)(rho) - log_c


def sqrtm_inv(S):
    w, Q = np.linalg.eigh(S)
    return (Q / np.sqrt(w)) @ Q.T


def panel(ax, A, delta, title, extent, resolution=301):
    xs = np.linspace(-extent, extent, resolution)
    X, Y = np.meshgrid(xs, xs)
    pts = np.stack([X, Y], -1)
    logp = log_density(pts, A, delta)
    radii = mass_radii(delta)
    levels = sorted(log_density(np.array([[rho, 0.0]]) @ np.linalg.inv(A).T, A, delta)[0] for rho in radii)
    # shade below the outermost contour and above the innermost one too (levels must increase)
    fill = [min(float(logp.min()), levels[0]) - 1.0] + levels + [max(float(logp.max()), levels[-1]) + 1.0]
    # one colour scale for every panel (the paper keeps the shading comparable)
    import matplotlib.colors

    norm = matplotlib.colors.Normalize(vmin=-16.0, vmax=-3.0)
    ax.contourf(X, Y, logp, levels=fill, cmap="Blues", norm=norm)
    ax.contour(X, Y, logp, levels=levels, colors="k", linewidths=0.6, linestyles="solid")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlabel("y1", fontsize=8)
    ax.set_ylabel("y2", fontsize=8)
    ax.tick_params(labelsize=7)


def main(argv=None):
    parser = example_utils.parser(__doc__, fast_help="coarser grid (what the tests run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    plt = example_utils.pyplot()
    resolution = 151 if args.fast else 301
    deltas = [0.5, 1.0, 2.0]
    fig, axes = plt.subplots(2, 4, figsize=(12, 7.2))
    extent = 16.0
    gauss_A = sqrtm_inv(SIGMA)
    for row in range(2):
        panel(axes[row, 0], gauss_A, math.inf, "Gaussian\ncovariance Sigma", extent, resolution)
        for col, delta in enumerate(deltas, start=1):
            kappa = probreg.huber_variance_factor(2, delta)
            if row == 0:  # same second moment: Lambda = kappa Sigma^{-1}, A = sqrt(kappa) Sigma^{-1/2}
                A = math.sqrt(kappa) * gauss_A
                title = f"Huber delta={delta:g}\nsame 2nd moment (kappa={kappa:.2f})"
            else:  # same Lambda = Sigma^{-1}
                A = gauss_A
                title = f"Huber delta={delta:g}\nsame Lambda"
            panel(axes[row, col], A, delta, title, extent, resolution)
    fig.suptitle("L2 multivariate Huber iso-probability contours (masses .005 ... .99)", fontsize=10)
    fig.tight_layout()
    path = example_utils.save_figure(fig, args.out, "huber_density.png", dpi=100)
    kappas = {d: probreg.huber_variance_factor(2, d) for d in deltas}
    print(f"wrote {path} ({time.perf_counter() - started:.0f} s); kappa_2(delta): "
          + ", ".join(f"{d:g}: {k:.4f}" for d, k in kappas.items()))
    return {"path": path, "kappa": kappas}


if __name__ == "__main__":
    main()

"""Robust regression under label outliers: L2 vs Huber NLL vs DeepGUM vs an EBM head.

Synthetic task: scalar input x ~ U[-3, 3]; clean target f(x) in R^1 or R^2,
    1-D: f(x) = sin(1.5 x) + 0.3 x
    2-D: f(x) = (sin(1.5 x) + 0.3 x, 0.8 cos(x) - 0.2 x)
observed with N(0, 0.1^2 I) noise, and a fraction of the training/validation labels
(default 30%) replaced by outliers drawn uniformly from the box [-2, 6]^d (asymmetric,
so they bias a least-squares fit). Every method trains the same small MLP trunk on the
contaminated data and is scored against the clean f on a clean test set:

- ``l2``:      plain mean squared error.
- ``huber``:   probreg.huber_nll (L2 multivariate Huber NLL, v-parameterisation, full
               covariance, delta = theta = 1); predicted location A^{-1} v. Needs the
               compiled probreg core; without it, leave this arm out via --methods.
- ``deepgum``: probreg.gum.GUMTrainer (EM + responsibility-weighted L2, DeepGUM Alg. 1).
- ``ebm``:     score network f(x, y) trained with probreg.ebm.nll on proposals from
               probreg.ebm.sample_proposal; prediction = best of the top grid candidates
               after probreg.ebm.refine (gradient ascent, Alg. 1 of the DCTD paper).

Run:  python examples/robust_training.py            (full, a few minutes on 2 CPU cores)
      python examples/robust_training.py --fast     (seconds; used by the tests)
Options: --methods l2,huber,deepgum,ebm  --dims 1,2  --outlier-fraction 0.3  --seed 0
         --threads 1 (torch threads while running; restored afterwards)

``main(argv)`` prints the table and returns its rows as a list of dicts with keys
``dim, method, rmse, median, outlier_precision, outlier_recall, seconds``
(rmse / median of the Euclidean error to f(x) on the test set; outlier precision/recall
of the training-set outlier flags, DeepGUM only, else None).
"""

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

try:
    import probreg
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import probreg
from probreg import ebm, gum

METHODS = ("l2", "huber", "deepgum", "ebm")
OUTLIER_BOX = (-2.0, 6.0)
NOISE_STD = 0.1


@dataclass
class Config:
    n_train: int
    n_val: int
    n_test: int
    epochs: int  # epoch budget of the l2 / huber / ebm arms and cap per DeepGUM SGD phase
    deepgum_rounds: int
    deepgum_patience: int
    ebm_samples: int  # proposal samples M per target
    ebm_sigmas: tuple  # proposal standard deviations (eq. 5)
    grid_per_dim: int  # EBM prediction: candidate grid points per target dimension
    refine_top: int  # EBM prediction: candidates refined per test input
    refine_steps: int
    hidden: int = 64
    batch_size: int = 64
    lr: float = 3e-3


FULL = Config(n_train=2000, n_val=500, n_test=1000, epochs=150, deepgum_rounds=4, deepgum_patience=15,
              ebm_samples=64, ebm_sigmas=(0.05, 0.3, 1.5), grid_per_dim=24, refine_top=8, refine_steps=40)
FAST = Config(n_train=400, n_val=100, n_test=200, epochs=30, deepgum_rounds=1, deepgum_patience=3,
              ebm_samples=32, ebm_sigmas=(0.05, 0.3, 1.5), grid_per_dim=16, refine_top=4, refine_steps=10)


# --------------------------------------------------------------------------- data


def true_function(x: Tensor, dim: int) -> Tensor:
    """Clean targets f(x): x (N, 1) -> (N, dim)."""
    first = torch.sin(1.5 * x) + 0.3 * x
    if dim == 1:
        return first
    return torch.cat([first, 0.8 * torch.cos(x) - 0.2 * x], dim=-1)


def make_split(n: int, dim: int, outlier_fraction: float, g: torch.Generator):
    """Returns x (n, 1), noisy contaminated y (n, dim), clean f(x) (n, dim), outlier labels (n,)."""
    x = 6 * torch.rand(n, 1, generator=g) - 3
    clean = true_function(x, dim)
    y = clean + NOISE_STD * torch.randn(n, dim, generator=g)
    labels = torch.rand(n, generator=g) < outlier_fraction
    low, high = OUTLIER_BOX
    outliers = low + (high - low) * torch.rand(n, dim, generator=g)
    return x, torch.where(labels[:, None], outliers, y), clean, labels


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, n_out))


def minibatches(n: int, batch_size: int, g: torch.Generator):
    order = torch.randperm(n, generator=g)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


# --------------------------------------------------------------------------- arms


def fit_minibatches(model: nn.Module, data, cfg: Config, seed: int, batch_loss) -> None:
    """Adam on batch_loss(x_batch, y_batch, generator) over cfg.epochs of shuffled
    minibatches of the training set (the generator, seeded with `seed`, draws both)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    x, y = data["x_train"], data["y_train"]
    for _ in range(cfg.epochs):
        for idx in minibatches(len(x), cfg.batch_size, g):
            opt.zero_grad(set_to_none=True)
            batch_loss(x[idx], y[idx], g).backward()
            opt.step()


def train_l2(data, dim, cfg: Config, seed: int):
    torch.manual_seed(seed)
    model = mlp(1, dim, cfg.hidden)
    fit_minibatches(model, data, cfg, seed, lambda xb, yb, g: nn.functional.mse_loss(model(xb), yb))
    with torch.no_grad():
        return model(data["x_test"]), None


def unpack_symmetric(raw: Tensor, dim: int) -> Tensor:
    """Packed (..., d(d+1)/2) upper triangle, row-major, off-diagonals stored as sqrt2*B_ij
    (probreg's layout) -> symmetric (..., d, d)."""
    rows = []
    index = {}
    k = 0
    for i in range(dim):
        for j in range(i, dim):
            index[(i, j)] = index[(j, i)] = k
            k += 1
    for i in range(dim):
        rows.append(torch.stack([raw[..., index[(i, j)]] / (1.0 if i == j else math.sqrt(2.0)) for j in range(dim)], -1))
    return torch.stack(rows, -2)


def huber_location(pred: Tensor, dim: int, theta: float) -> Tensor:
    """Predicted location A^{-1} v of a v-parameterised Huber head (pred (..., d + d(d+1)/2))."""
    v, raw = pred[..., :dim], pred[..., dim:]
    eigenvalues, vectors = torch.linalg.eigh(unpack_symmetric(raw, dim))
    g = torch.where(eigenvalues > theta, eigenvalues, theta * torch.exp(eigenvalues.clamp_max(theta) / theta - 1))
    # A^{-1} v = V diag(1/g) V^T v
    return (vectors @ ((vectors.transpose(-1, -2) @ v.unsqueeze(-1)) / g.unsqueeze(-1))).squeeze(-1)


def train_huber(data, dim, cfg: Config, seed: int, delta: float = 1.0, theta: float = 1.0):
    if not hasattr(probreg, "huber_nll"):
        raise RuntimeError("the 'huber' arm needs probreg.huber_nll (the compiled probreg core); "
                           "run with --methods l2,deepgum,ebm without it")
    torch.manual_seed(seed)
    model = mlp(1, dim + dim * (dim + 1) // 2, cfg.hidden)
    fit_minibatches(model, data, cfg, seed, lambda xb, yb, g: probreg.huber_nll(
        model(xb), yb, delta=delta, theta=theta, parameterization="v", family="huber", covariance="full",
        reduction="mean"))
    with torch.no_grad():
        return huber_location(model(data["x_test"]), dim, theta), None


def train_deepgum(data, dim, cfg: Config, seed: int):
    torch.manual_seed(seed)
    model = mlp(1, dim, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = gum.GUMTrainer(model, opt, granularity="sample", batch_size=cfg.batch_size, max_epochs=cfg.epochs,
                             patience=cfg.deepgum_patience, max_rounds=cfg.deepgum_rounds, seed=seed)
    trainer.fit(data["x_train"], data["y_train"], data["x_val"], data["y_val"])
    flagged = trainer.fit_result.responsibilities < 0.5
    truth = data["labels_train"]
    tp = (flagged & truth).sum().item()
    pr = (tp / max(flagged.sum().item(), 1), tp / max(truth.sum().item(), 1))
    with torch.no_grad():
        return model(data["x_test"]), pr


class ScoreNet(nn.Module):
    """f(x, y): input features and target features, concatenated, then an MLP to a scalar.

    ``forward(features, y)`` takes precomputed input features (N, h) and targets
    (N, ..., d) with any number of candidate axes, so the x branch runs once per input.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.x_branch = mlp(1, hidden, hidden)
        self.y_branch = nn.Sequential(nn.Linear(dim, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, hidden // 2))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(hidden + hidden // 2, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def features(self, x: Tensor) -> Tensor:
        return self.x_branch(x)

    def forward(self, features: Tensor, y: Tensor) -> Tensor:
        extra = y.ndim - 2
        feats = features.view(features.shape[0], *([1] * extra), features.shape[-1]).expand(*y.shape[:-1], -1)
        return self.head(torch.cat([feats, self.y_branch(y)], dim=-1)).squeeze(-1)


def train_ebm(data, dim, cfg: Config, seed: int):
    torch.manual_seed(seed)
    net = ScoreNet(dim, cfg.hidden)

    def batch_loss(xb, yb, g):
        samples, log_q = ebm.sample_proposal(yb, cfg.ebm_sigmas, cfg.ebm_samples, generator=g)
        feats = net.features(xb)
        return ebm.nll(net(feats, yb), net(feats, samples), log_q)

    fit_minibatches(net, data, cfg, seed, batch_loss)
    # Prediction: score a grid over the target box, refine the best candidates, keep the best.
    with torch.no_grad():
        feats = net.features(data["x_test"])
        axis = torch.linspace(OUTLIER_BOX[0], OUTLIER_BOX[1], cfg.grid_per_dim)
        grid = torch.stack(torch.meshgrid(*([axis] * dim), indexing="ij"), -1).reshape(-1, dim)  # (G, d)
        grid = grid.expand(len(feats), -1, -1)  # (N, G, d)
        top = net(feats, grid).topk(cfg.refine_top, dim=-1).indices  # (N, k)
        candidates = torch.gather(grid, 1, top.unsqueeze(-1).expand(-1, -1, dim))  # (N, k, d)
    step = (OUTLIER_BOX[1] - OUTLIER_BOX[0]) / cfg.grid_per_dim
    out = ebm.refine(lambda cand: net(feats, cand), candidates, steps=cfg.refine_steps, step_size=step * 0.1,
                     decay=0.5)
    best = out.score.argmax(-1)
    return out.y[torch.arange(len(best)), best], None


ARMS = {"l2": train_l2, "huber": train_huber, "deepgum": train_deepgum, "ebm": train_ebm}


# --------------------------------------------------------------------------- driver


def _warm_up() -> None:
    """One Adam step on a dummy parameter, so one-time lazy initialisation inside torch is
    not charged to the first timed arm."""
    weight = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([weight])
    weight.sum().backward()
    opt.step()


def run(dims: Sequence[int], methods: Sequence[str], cfg: Config, outlier_fraction: float, seed: int) -> list[dict]:
    _warm_up()
    rows = []
    for dim in dims:
        g = torch.Generator().manual_seed(seed + 1000 * dim)
        x_tr, y_tr, _, lab_tr = make_split(cfg.n_train, dim, outlier_fraction, g)
        x_va, y_va, _, _ = make_split(cfg.n_val, dim, outlier_fraction, g)
        x_te, _, clean_te, _ = make_split(cfg.n_test, dim, 0.0, g)
        data = dict(x_train=x_tr, y_train=y_tr, labels_train=lab_tr, x_val=x_va, y_val=y_va, x_test=x_te)
        for method in methods:
            start = time.perf_counter()
            pred, pr = ARMS[method](data, dim, cfg, seed)
            seconds = time.perf_counter() - start
            err = torch.linalg.vector_norm(pred - clean_te, dim=-1)
            rows.append(dict(dim=dim, method=method, rmse=err.square().mean().sqrt().item(),
                             median=err.median().item(), outlier_precision=pr[0] if pr else None,
                             outlier_recall=pr[1] if pr else None, seconds=seconds))
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'dim':>3}  {'method':<8} {'RMSE':>7} {'median':>7} {'outl.P':>7} {'outl.R':>7} {'time s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        p = "-" if r["outlier_precision"] is None else f"{r['outlier_precision']:.3f}"
        rc = "-" if r["outlier_recall"] is None else f"{r['outlier_recall']:.3f}"
        lines.append(f"{r['dim']:>3}  {r['method']:<8} {r['rmse']:>7.4f} {r['median']:>7.4f} {p:>7} {rc:>7} "
                     f"{r['seconds']:>7.1f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny data and epoch budget (seconds)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--dims", default="1,2", help="comma-separated target dimensions (1 and/or 2)")
    parser.add_argument("--outlier-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads while running (default 1: these MLPs are too small to gain "
                             "from more, and one thread behaves best on a shared machine)")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods must be a non-empty subset of {METHODS}; unknown: {unknown}")
    try:
        args.dims = [int(d) for d in args.dims.split(",")]
    except ValueError:
        parser.error("--dims must be comma-separated integers in {1, 2}")
    if not args.dims or any(d not in (1, 2) for d in args.dims):
        parser.error("--dims must be comma-separated integers in {1, 2}")
    if "huber" in args.methods and not hasattr(probreg, "huber_nll"):
        parser.error("the 'huber' arm needs probreg.huber_nll (the compiled probreg core); "
                     "build it or pass --methods l2,deepgum,ebm")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if not 0.0 <= args.outlier_fraction < 1.0:
        parser.error("--outlier-fraction must be in [0, 1)")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args(argv)
    cfg = FAST if args.fast else FULL
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        rows = run(args.dims, args.methods, cfg, args.outlier_fraction, args.seed)
    finally:
        torch.set_num_threads(previous_threads)
    print(f"robust regression, {args.outlier_fraction:.0%} outliers in U{list(OUTLIER_BOX)}^d, "
          f"inlier noise {NOISE_STD}, {'fast' if args.fast else 'full'} mode; error = ||pred - f(x)|| on clean test x")
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()

"""Robust regression under label outliers: L2 vs Huber NLL vs DeepGUM vs an EBM head.

Synthetic task: scalar input x ~ U[-3, 3]; clean target f(x) in R^1 or R^2,
    1-D: f(x) = sin(1.5 x) + 0.3 x
    2-D: f(x) = (sin(1.5 x) + 0.3 x, 0.8 cos(x) - 0.2 x)
observed with N(0, 0.1^2 I) noise, and a fraction of the training/validation labels
(default 30%) replaced by outliers drawn uniformly from the box [-2, 6]^d (asymmetric,
so they bias a least-squares fit). Every method trains the same small MLP trunk on the
contaminated data and is scored against the clean f on a clean test set:

- ``l2``:      plain mean squared error.
- ``huber``:   the L2 multivariate Huber NLL (paper eq. 6; v-parameterisation, full
               covariance, delta = --delta, default 1) on a probreg.nn.PredictionHead
               initialised from the training labels; predicted location A^{-1} v.
- ``huber+outliers``: the same head and Huber density mixed with a uniform outlier density
               over the outlier box (probreg.nn.OutlierMixtureNLLLoss, outlier fraction
               = --outlier-fraction): the Huber counterpart of DeepGUM's Gaussian-uniform
               mixture.
- ``deepgum``: probreg.gum.GUMTrainer (EM + responsibility-weighted L2, DeepGUM Alg. 1).
- ``ebm``:     score network f(x, y) trained with probreg.ebm.nll on proposals from
               probreg.ebm.sample_proposal; prediction = best of the top grid candidates
               after probreg.ebm.refine (gradient ascent, Alg. 1 of the DCTD paper).

Run:  python examples/robust_training.py            (full, a few minutes on 2 CPU cores)
      python examples/robust_training.py --fast     (seconds; used by the tests)
Options: --methods l2,huber,huber+outliers,deepgum,ebm  --dims 1,2  --outlier-fraction 0.3
         --delta 1  --lr-schedule cosine|constant  --seed 0  --out DIR (robust_training.json,
         and robust_training.png with the 1-D fits)  --threads 1 (torch threads while
         running; restored afterwards)

``main(argv)`` prints the table and returns its rows as a list of dicts with keys
``dim, method, rmse, median, outlier_precision, outlier_recall, seconds``
(rmse / median of the Euclidean error to f(x) on the test set; outlier precision/recall
of the training-set outlier flags, DeepGUM and huber+outliers (inlier probability < 1/2),
else None).
"""

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import example_utils  # noqa: E402  (first: it locates probreg)
import probreg  # noqa: E402
from probreg import ebm, gum  # noqa: E402
from probreg.nn import PredictionHead  # noqa: E402

METHODS = ("l2", "huber", "huber+outliers", "deepgum", "ebm")
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


def fit_minibatches(model: nn.Module, data, cfg: Config, seed: int, batch_loss, desc: str = "") -> None:
    """Adam on batch_loss(x_batch, y_batch, generator) over cfg.epochs of shuffled minibatches
    of the training set (the generator, seeded with `seed`, draws both), the learning rate
    decaying to 0 on a cosine (data["lr_schedule"] == "cosine", the default) or constant.
    The decay matters for the NLL arms (README, Examples)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x, y = data["x_train"], data["y_train"]
    steps = cfg.epochs * -(-len(x) // cfg.batch_size)
    if data.get("lr_schedule", "cosine") == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    g = torch.Generator().manual_seed(seed)
    for _ in example_utils.progress(range(cfg.epochs), f"{desc} epochs", data.get("progress", False)):
        for idx in minibatches(len(x), cfg.batch_size, g):
            opt.zero_grad(set_to_none=True)
            batch_loss(x[idx], y[idx], g).backward()
            opt.step()
            sched.step()


def train_l2(data, dim, cfg: Config, seed: int):
    torch.manual_seed(seed)
    model = mlp(1, dim, cfg.hidden)
    fit_minibatches(model, data, cfg, seed, lambda xb, yb, g: nn.functional.mse_loss(model(xb), yb), "l2")
    with torch.no_grad():
        return model(data["x_test"]), None


def outlier_log_density(dim: int) -> float:
    """log of the uniform density of an outlier label over the box [-2, 6]^d."""
    return -dim * math.log(OUTLIER_BOX[1] - OUTLIER_BOX[0])


def train_huber(data, dim, cfg: Config, seed: int, outlier_fraction: float = 0.0):
    """Huber NLL on an MLP trunk + probreg.nn.PredictionHead (v, full covariance), the head
    initialised from the training labels (PredictionHead.from_targets). outlier_fraction >
    0 trains the Huber + uniform outlier mixture (OutlierMixtureNLLLoss) instead."""
    torch.manual_seed(seed)
    trunk = mlp(1, cfg.hidden, cfg.hidden)
    head = PredictionHead.from_targets(cfg.hidden, data["y_train"].unsqueeze(1), delta=data["delta"])
    model = nn.Sequential(trunk, nn.SiLU(), head)  # (N, 1) -> (N, 1, d + d(d+1)/2)
    if outlier_fraction:
        loss_fn = head.loss(outlier_fraction=outlier_fraction, outlier_log_density=outlier_log_density(dim))
    else:
        loss_fn = head.loss()
    fit_minibatches(model, data, cfg, seed, lambda xb, yb, g: loss_fn(model(xb), yb.unsqueeze(1)),
                    "huber+outliers" if outlier_fraction else "huber")
    flags = None
    with torch.no_grad():
        if outlier_fraction:
            inlier = loss_fn.inlier_probability(model(data["x_train"]), data["y_train"].unsqueeze(1))[:, 0]
            flags = _precision_recall(inlier < 0.5, data["labels_train"])
        return head.location(model(data["x_test"]))[:, 0], flags


def train_huber_outliers(data, dim, cfg: Config, seed: int):
    return train_huber(data, dim, cfg, seed, outlier_fraction=data["outlier_fraction"])


def _precision_recall(flagged: Tensor, truth: Tensor):
    tp = (flagged & truth).sum().item()
    return tp / max(flagged.sum().item(), 1), tp / max(truth.sum().item(), 1)


def train_deepgum(data, dim, cfg: Config, seed: int):
    torch.manual_seed(seed)
    model = mlp(1, dim, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = gum.GUMTrainer(model, opt, granularity="sample", batch_size=cfg.batch_size, max_epochs=cfg.epochs,
                             patience=cfg.deepgum_patience, max_rounds=cfg.deepgum_rounds, seed=seed)
    with example_utils.optimizer_progress(opt, "deepgum (EM rounds + SGD)", data.get("progress", False)):
        trainer.fit(data["x_train"], data["y_train"], data["x_val"], data["y_val"])
    pr = _precision_recall(trainer.fit_result.responsibilities < 0.5, data["labels_train"])
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

    fit_minibatches(net, data, cfg, seed, batch_loss, "ebm")
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


ARMS = {"l2": train_l2, "huber": train_huber, "huber+outliers": train_huber_outliers, "deepgum": train_deepgum,
        "ebm": train_ebm}


# --------------------------------------------------------------------------- driver


def _warm_up() -> None:
    """One Adam step on a dummy parameter, so one-time lazy initialisation inside torch is
    not charged to the first timed arm."""
    weight = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([weight])
    weight.sum().backward()
    opt.step()


def run(dims: Sequence[int], methods: Sequence[str], cfg: Config, outlier_fraction: float, seed: int,
        delta: float = 1.0, show_progress: bool = False, lr_schedule: str = "cosine") -> tuple[list[dict], dict]:
    """Trains every method on every dim; returns the table rows and, for the 1-D case, the
    data and each method's predictions on a grid of x (for the figure)."""
    _warm_up()
    rows, curves = [], {}
    for dim in dims:
        g = torch.Generator().manual_seed(seed + 1000 * dim)
        x_tr, y_tr, _, lab_tr = make_split(cfg.n_train, dim, outlier_fraction, g)
        x_va, y_va, _, _ = make_split(cfg.n_val, dim, outlier_fraction, g)
        x_te, _, clean_te, _ = make_split(cfg.n_test, dim, 0.0, g)
        if dim == 1:  # predictions on a sorted grid for the figure, evaluated with the test set
            grid = torch.linspace(-3, 3, 200).unsqueeze(-1)
            x_te = torch.cat([x_te, grid])
            clean_te = torch.cat([clean_te, true_function(grid, 1)])
            curves = {"x_train": x_tr[:, 0].tolist(), "y_train": y_tr[:, 0].tolist(),
                      "outlier_train": lab_tr.tolist(), "grid": grid[:, 0].tolist()}
        n_test = cfg.n_test
        data = dict(x_train=x_tr, y_train=y_tr, labels_train=lab_tr, x_val=x_va, y_val=y_va, x_test=x_te,
                    delta=delta, outlier_fraction=outlier_fraction, progress=show_progress, lr_schedule=lr_schedule)
        for method in methods:
            start = time.perf_counter()
            pred, pr = ARMS[method](data, dim, cfg, seed)
            seconds = time.perf_counter() - start
            err = torch.linalg.vector_norm(pred[:n_test] - clean_te[:n_test], dim=-1)
            rows.append(dict(dim=dim, method=method, rmse=err.square().mean().sqrt().item(),
                             median=err.median().item(), outlier_precision=pr[0] if pr else None,
                             outlier_recall=pr[1] if pr else None, seconds=seconds))
            if dim == 1:
                curves[method] = pred[n_test:, 0].tolist()
    return rows, curves


def plot_fits(curves: dict, out_dir: str, outlier_fraction: float) -> str:
    """The 1-D data (inliers, outliers), f(x) and every method's fit."""
    plt = example_utils.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    x, y = torch.tensor(curves["x_train"]), torch.tensor(curves["y_train"])
    outlier = torch.tensor(curves["outlier_train"])
    ax.scatter(x[~outlier], y[~outlier], s=3, color="0.6", label="training labels (inliers)")
    ax.scatter(x[outlier], y[outlier], s=3, color="tab:red", alpha=0.4, label="training labels (outliers)")
    grid = torch.tensor(curves["grid"])
    ax.plot(grid, true_function(grid.unsqueeze(-1), 1)[:, 0], "k--", lw=1.5, label="f(x)")
    for method in METHODS:
        if method in curves:
            ax.plot(grid, curves[method], lw=1.2, label=method)
    ax.set_ylim(-2.5, 6.5)
    ax.set_xlabel("input x")
    ax.set_ylabel("target y")
    ax.set_title(f"1-D fits under {outlier_fraction:.0%} outlier labels", fontsize=10)
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    return example_utils.save_figure(fig, out_dir, "robust_training.png")


def format_table(rows: list[dict]) -> str:
    header = f"{'dim':>3}  {'method':<14} {'RMSE':>7} {'median':>7} {'outl.P':>7} {'outl.R':>7} {'time s':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        p = "-" if r["outlier_precision"] is None else f"{r['outlier_precision']:.3f}"
        rc = "-" if r["outlier_recall"] is None else f"{r['outlier_recall']:.3f}"
        lines.append(f"{r['dim']:>3}  {r['method']:<14} {r['rmse']:>7.4f} {r['median']:>7.4f} {p:>7} {rc:>7} "
                     f"{r['seconds']:>7.1f}")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]]):
    parser = example_utils.parser(__doc__.split("\n")[0], fast_help="tiny data and epoch budget (seconds)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--dims", default="1,2", help="comma-separated target dimensions (1 and/or 2)")
    parser.add_argument("--outlier-fraction", type=float, default=0.3)
    parser.add_argument("--delta", type=float, default=1.0, help="Huber threshold of the huber arms")
    parser.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                        help="learning rate of the l2, huber and ebm arms: cosine decay to 0, or constant")
    parser.add_argument("--seed", type=int, default=0)
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
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if not 0.0 <= args.outlier_fraction < 1.0:
        parser.error("--outlier-fraction must be in [0, 1)")
    if "huber+outliers" in args.methods and args.outlier_fraction == 0.0:
        parser.error("the huber+outliers arm needs --outlier-fraction > 0")
    if not args.delta > 0:
        parser.error("--delta must be > 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args(argv)
    cfg = FAST if args.fast else FULL
    with example_utils.torch_threads(args.threads):
        rows, curves = run(args.dims, args.methods, cfg, args.outlier_fraction, args.seed, args.delta,
                           show_progress=not args.no_progress, lr_schedule=args.lr_schedule)
    print(f"robust regression, {args.outlier_fraction:.0%} outliers in U{list(OUTLIER_BOX)}^d, "
          f"inlier noise {NOISE_STD}, {'fast' if args.fast else 'full'} mode, delta {args.delta:g}, "
          f"{args.lr_schedule} learning rate; "
          "error = ||pred - f(x)|| on clean test x")
    print(format_table(rows))
    files = [example_utils.save_json({"rows": rows, "delta": args.delta, "outlier_fraction": args.outlier_fraction,
                                      "lr_schedule": args.lr_schedule,
                                      "seed": args.seed, "mode": "fast" if args.fast else "full"},
                                     args.out, "robust_training.json")]
    if 1 in args.dims:
        files.append(plot_fits(curves, args.out, args.outlier_fraction))
    print("wrote " + " and ".join(files))
    return rows


if __name__ == "__main__":
    main()

"""Throughput plot: GB/s (minimum bytes an op must move / time) against batch size, one
line per implementation, one panel per (op, d, mode), with the measured copy bandwidth
drawn as the ceiling."""
from __future__ import annotations

from collections import defaultdict
from typing import List, Optional


def plot_throughput(rows: List[dict], ceiling_gbps: Optional[float], path: str, title: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("benchmarks: matplotlib not installed; no plot written")
        return None
    panels = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if "GB/s" not in r:
            continue
        key = (r["op"], r.get("d"), r.get("n"), r["mode"])
        panels[key][r["impl"]].append((r["batch"], r["GB/s"]))
    if not panels:
        return None
    keys = sorted(panels, key=str)
    impls = sorted({impl for panel in panels.values() for impl in panel})
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {impl: palette[i % len(palette)] for i, impl in enumerate(impls)}
    cols = min(4, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for impl, pts in sorted(panels[key].items()):
            pts.sort()
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=impl, color=color[impl])
        if ceiling_gbps:
            ax.axhline(ceiling_gbps, color="k", ls="--", lw=1, label="copy bandwidth")
        op, d, n, mode = key
        ax.set_title(f"{op} d={d}" + (f" n={n}" if n else "") + f" {mode}", fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("GB/s")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=color[i], marker="o", ms=3, label=i) for i in impls]
    if ceiling_gbps:
        handles.append(plt.Line2D([], [], color="k", ls="--", label="copy bandwidth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7)
    fig.subplots_adjust(bottom=0.2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

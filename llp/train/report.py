"""``python -m llp.report RUN_DIR [RUN_DIR ...]``: PNG plots of the per-epoch metrics.

One figure per group of metrics (losses, test accuracy, pseudo-labels, the paper's
aggregation metric and density/pseudo-label-count correlation, learning rate); several
run directories are drawn on the same axes, one line each. Figures go to
``--out`` (default: ``RUN_DIR/plots`` of the first run).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List

FIGURES = {
    "loss": ("training loss", ["train_loss", "train_ce", "train_agg"]),
    "test_accuracy": ("test accuracy", ["test_top1", "test_top5", "test_balanced_acc"]),
    "pseudo_labels": ("unlabeled examples' labels", ["pseudo_acc", "pseudo_conf", "pseudo_acc_conf90",
                                                     "pseudo_frac_conf90"]),
    "aggregation": ("aggregation metric (paper fig. 2b)", ["aggregation"]),
    "density_count": ("Pearson r: class density vs pseudo-label count (paper fig. 3)", ["density_count_r"]),
    "lr": ("learning rate", ["lr"]),
}


STYLES = ["-", "--", ":", "-."]


def read_metrics(run_dir: Path) -> List[Dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {run_dir}: no metrics.jsonl (is it a run directory of llp.train?)")
    from .checkpoint import read_metrics as read_lines
    records = read_lines(path)
    if not records and path.read_text().strip():
        raise SystemExit(f"error: {path}: not JSON lines of llp.train")
    return records


def plot_runs(runs: Dict[str, List[Dict]], out: Path) -> List[Path]:
    """Draws every figure that has data; returns the PNG paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, keys) in FIGURES.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        drawn = 0
        for run, records in runs.items():
            for j, key in enumerate(keys):
                points = [(r["epoch"], r[key]) for r in records
                          if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
                if points:
                    label = key if len(runs) == 1 else f"{run}: {key}"
                    # lines that coincide (top-1 and balanced accuracy, say) stay visible:
                    # each key has its own dash pattern and width, the first drawn widest
                    ax.plot(*zip(*points), linestyle=STYLES[j % len(STYLES)], linewidth=2.4 - 0.5 * j,
                            marker="." if len(points) < 30 else None, label=label)
                    drawn += 1
        if drawn:
            ax.set_title(title)
            ax.set_xlabel("epoch")
            if name == "lr":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = out / f"{name}.png"
            fig.savefig(path, dpi=110)
            written.append(path)
        plt.close(fig)
    return written


def main(argv=None) -> List[Path]:
    parser = argparse.ArgumentParser(prog="python -m llp.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of llp.train")
    parser.add_argument("--out", default=None, help="where to write the PNGs (default RUN_DIR/plots)")
    args = parser.parse_args(argv)
    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            parser.error(f"{d} is not a directory")
    runs = {d.name if d.name else str(d): read_metrics(d) for d in dirs}
    written = plot_runs(runs, Path(args.out) if args.out else dirs[0] / "plots")
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()

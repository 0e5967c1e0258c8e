"""``python -m llp.compare``: the README's comparison table on the built-in digits.

For each labeled fraction and seed (every method sees the same stratified split) it runs
``llp.train`` for every method of ``--methods`` and fits scikit-learn's ``LabelSpreading``
(knn and rbf kernels) on the raw pixels; it prints mean ± std of test top-1 over the
seeds as a Markdown table, writes every number to ``OUT/results.json`` and draws the
per-epoch pseudo-label accuracy of LLP, one run per fraction, to ``OUT/pseudo_acc.png``.
Runs go ``--jobs`` at a time, each in its own process with its share of the CPU threads.
Extra flags after ``--`` go to every ``llp.train`` run.

Seeds 0-2 chose the defaults; the README reports seeds 3-7 (held out), the default here.

LabelSpreading settings (its defaults where they apply, nothing tuned on test data):
knn with 7 neighbours; rbf with gamma = 20 / median squared pixel distance between
training rows, i.e. its default gamma=20 after rescaling the pixels so that the median
squared distance is 1 (the raw default underflows every affinity here); alpha = 0.2.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np

from .data import load_digits_split

METHODS = {
    "supervised (labeled only)": ["--method", "supervised"],
    "supervised, 120 epochs (LLP's warm-up + LLP)": ["--method", "supervised", "--epochs", "120"],
    "LLP": [],
    "LLP, no density weighting (NoDW)": ["--no-density-weighting"],
    "LLP, no confidence weighting (NoC)": ["--no-confidence"],
    "LLP, no warm start": ["--warmup-epochs", "0"],
    "LLP, no ramp-up": ["--ramp-up-epochs", "0"],
    "LLP, 10 epochs of instance-recognition warm start instead": ["--warmup-objective", "instance",
                                                                  "--warmup-epochs", "10"],
}
DEFAULT_METHODS = list(METHODS)


def label_spreading_top1(fraction: float, seed: int, kernel: str) -> float:
    from sklearn.semi_supervised import LabelSpreading

    split = load_digits_split(fraction, seed)
    x = split.train_x.flatten(1).numpy().astype(np.float64)
    y = np.where(split.labeled.numpy(), split.train_y.numpy(), -1)
    if kernel == "rbf":
        sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        model = LabelSpreading(kernel="rbf", gamma=20.0 / float(np.median(sq[sq > 0])), alpha=0.2,
                               max_iter=100)
    else:
        model = LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.2, max_iter=100)
    model.fit(x, y)
    pred = model.predict(split.test_x.flatten(1).numpy().astype(np.float64))
    return float((pred == split.test_y.numpy()).mean())


def run_training(flags: List[str], run_dir: Path, threads: int) -> Dict:
    """One ``llp.train`` run in its own process; returns its last metrics record."""
    records = run_dir / "metrics.jsonl"
    done = run_dir / "done"
    if not done.exists():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        code = f"import torch; torch.set_num_threads({threads}); from llp.train import main; main()"
        result = subprocess.run([sys.executable, "-c", code, "--quiet", "--run-dir", str(run_dir), *flags],
                                env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: llp.train {' '.join(flags)} failed:\n{result.stderr[-2000:]}")
        done.write_text("")
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    return {"test_top1": lines[-1]["test_top1"], "pseudo_acc": [l.get("pseudo_acc") for l in lines]}


def main(argv=None) -> Dict[str, Dict[float, List[float]]]:
    parser = argparse.ArgumentParser(prog="python -m llp.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.05, 0.02, 0.01])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5, 6, 7])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        metavar="METHOD", help=f"from: {'; '.join(METHODS)}")
    parser.add_argument("--no-label-spreading", action="store_true", help="skip the LabelSpreading rows")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (CPU threads are shared out)")
    parser.add_argument("--out", default="runs/compare", help="run directories and results.json go here")
    parser.add_argument("train_flags", nargs="*", help="after --: flags for every llp.train run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.time()
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = [(name, f, s) for f in args.fractions for s in args.seeds for name in args.methods]

    def one(job):
        name, fraction, seed = job
        flags = ["--labeled-fraction", str(fraction), "--seed", str(seed), *METHODS[name], *args.train_flags]
        tag = "-".join(METHODS[name]).strip("-").replace("--", "") or "llp"
        record = run_training(flags, out / f"p{fraction}-seed{seed}-{tag}", threads)
        print(f"p={fraction} seed={seed} {name}: {record['test_top1']:.4f}", flush=True)
        return record

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        records = list(pool.map(one, jobs))
    results: Dict[str, Dict[float, List[float]]] = {}
    curves: Dict[float, List] = {}
    for (name, fraction, seed), record in zip(jobs, records):
        results.setdefault(name, {}).setdefault(fraction, []).append(record["test_top1"])
        if name == "LLP" and fraction not in curves:
            curves[fraction] = record["pseudo_acc"]
    if not args.no_label_spreading:
        for kernel in ("knn", "rbf"):
            name = f"scikit-learn LabelSpreading, {kernel} kernel, raw pixels"
            for fraction in args.fractions:
                results.setdefault(name, {})[fraction] = [label_spreading_top1(fraction, s, kernel)
                                                          for s in args.seeds]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"seeds": args.seeds, "seconds": time.time() - started,
         "top1": {name: {str(f): v for f, v in per.items()} for name, per in results.items()},
         "pseudo_acc_per_epoch": {str(f): c for f, c in curves.items()}}, indent=2) + "\n")
    if curves:
        plot_curves(curves, out / "pseudo_acc.png", args.seeds[0])
    print(table(results, args.fractions, len(args.seeds)))
    print(f"({len(args.seeds)} seeds: {args.seeds}; {time.time() - started:.0f} s)")
    return results


def plot_curves(curves: Dict[float, List], path: Path, seed: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for fraction, values in sorted(curves.items()):
        points = [(i + 1, v) for i, v in enumerate(values) if v is not None and v == v]
        ax.plot(*zip(*points), label=f"p = {fraction:g}")
    ax.set_xlabel("epoch (warm-up first)")
    ax.set_ylabel("pseudo-label accuracy on unlabeled rows")
    ax.set_title(f"LLP on digits, seed {seed}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results, fractions, seeds: int) -> str:
    head = "| method | " + " | ".join(f"p = {100 * f:g}%" for f in fractions) + " |"
    lines = [head, "|---|" + "---|" * len(fractions)]
    for name, per in results.items():
        cells = []
        for f in fractions:
            v = per.get(f, [])
            if not v:
                cells.append("—")
                continue
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(v):.1f} ± {100 * std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

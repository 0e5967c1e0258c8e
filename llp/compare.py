"""``python -m llp.compare``: the README's comparison table on the built-in digits.

For each labeled fraction and seed (the same stratified split for every method) it
trains ``--method supervised``, LLP, LLP ``--no-density-weighting`` (NoDW) and LLP
``--no-confidence`` (NoC) and LLP after 30 epochs of instance-recognition warm-up
through ``llp.train``, and fits scikit-learn's
``LabelSpreading`` (knn and rbf kernels) on the raw pixels, then prints mean ± std of
test top-1 over seeds as a Markdown table. Extra flags after ``--`` go to every
``llp.train`` run.

LabelSpreading settings (its defaults where they apply, nothing tuned on test data):
knn with 7 neighbours; rbf with gamma = 20 / median squared pixel distance between
training rows, i.e. its default gamma=20 after rescaling the pixels so that the median
squared distance is 1 (the raw default underflows every affinity here); alpha = 0.2.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List

import numpy as np

from . import train
from .data import load_digits_split

METHODS = {
    "supervised (labeled only)": ["--method", "supervised"],
    "LLP": [],
    "LLP NoDW": ["--no-density-weighting"],
    "LLP NoC": ["--no-confidence"],
    "LLP + 30 warm-up epochs": ["--warmup-epochs", "30"],
}


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


def main(argv=None) -> Dict[str, Dict[float, List[float]]]:
    parser = argparse.ArgumentParser(prog="python -m llp.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.02])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/compare", help="run directories and results.json go here")
    parser.add_argument("train_flags", nargs="*", help="after --: flags for every llp.train run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results: Dict[str, Dict[float, List[float]]] = {}
    for fraction in args.fractions:
        for seed in args.seeds:
            common = ["--quiet", "--labeled-fraction", str(fraction), "--seed", str(seed), *args.train_flags]
            for name, flags in METHODS.items():
                run_dir = out / f"p{fraction}-seed{seed}-{'-'.join(flags).strip('-') or 'llp'}"
                record = train.main([*common, *flags, "--run-dir", str(run_dir)])
                results.setdefault(name, {}).setdefault(fraction, []).append(record["test_top1"])
                print(f"p={fraction} seed={seed} {name}: {record['test_top1']:.4f}", flush=True)
            for kernel in ("knn", "rbf"):
                name = f"LabelSpreading {kernel} (raw pixels)"
                top1 = label_spreading_top1(fraction, seed, kernel)
                results.setdefault(name, {}).setdefault(fraction, []).append(top1)
                print(f"p={fraction} seed={seed} {name}: {top1:.4f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {name: {str(f): v for f, v in per.items()} for name, per in results.items()}, indent=2) + "\n")
    print(table(results, args.fractions, len(args.seeds)))
    return results


def table(results, fractions, seeds: int) -> str:
    head = "| method | " + " | ".join(f"p = {f:g} ({seeds} seeds)" for f in fractions) + " |"
    lines = [head, "|---|" + "---|" * len(fractions)]
    for name, per in results.items():
        cells = []
        for f in fractions:
            v = per[f]
            std = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(v):.1f} ± {100 * std:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""``python -m llp.suite``: the development suite.

For every data set, labeled fraction and seed it trains LLP and the supervised baseline
(the same network, augmentation and total epochs, on the labeled rows only) through
``python -m llp.train``, once per seed a supervised run with every label (the ceiling),
and scores the propagation tool's methods and scikit-learn's ``LabelSpreading(kernel="knn")``
on the unlabeled training rows, both on the raw inputs and on the embedding the LLP run
exported. It writes ``OUT/results.json`` (every number), ``OUT/table.md`` and two plots.

Defaults are chosen on seeds 0-2 only; the README reports seeds 3-7 (``--seeds 3 4 5 6 7``).
``--quick`` runs every data set at 2% and 10% labels with one seed (under 30 minutes on 2
cores). ``--variant NAME="FLAGS"`` adds an LLP run with extra ``llp.train`` flags (an
ablation), e.g. ``--variant 'no self-check=--self-check-replicas 0'``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

from . import runs, tables
from .datasets import SUITE

QUICK = {"fractions": [0.02, 0.1], "seeds": [0]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llp.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(SUITE), choices=list(SUITE), metavar="NAME",
                   help=f"from: {', '.join(SUITE)} (default: all)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="2%% and 10%% labels, seed 0: the whole suite in minutes")
    p.add_argument("--methods", nargs="+", default=list(runs.TRAIN_METHODS), choices=list(runs.TRAIN_METHODS))
    p.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                   help="an extra LLP run with these llp.train flags (repeatable)")
    p.add_argument("--train-flags", default="", metavar='"FLAGS"',
                   help="flags added to every llp.train run (e.g. fewer epochs for a smoke test; the numbers "
                        "are then not the suite's)")
    p.add_argument("--no-all-labels", action="store_true", help="skip the supervised runs with every label")
    p.add_argument("--no-propagation", action="store_true", help="skip the propagation methods")
    p.add_argument("--jobs", type=int, default=2, help="training runs at a time (CPU threads are shared out)")
    p.add_argument("--data", default="data/suite", help="where the data sets are written (once)")
    p.add_argument("--out", default="runs/suite", help="run folders, results.json, table.md and plots")
    return p


def parse_variants(texts: List[str]) -> Dict[str, List[str]]:
    variants = {}
    for text in texts:
        name, sep, flags = text.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"error: --variant {text!r}: expected NAME=\"FLAGS\"")
        variants[name.strip()] = flags.split()
    return variants


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.fractions, args.seeds = QUICK["fractions"], QUICK["seeds"]
    data, out = Path(args.data), Path(args.out)
    started = time.time()
    for name in args.datasets:
        SUITE[name].prepare(data / name)
    methods = {m: runs.TRAIN_METHODS[m] for m in args.methods}
    methods.update(parse_variants(args.variant))
    extra = tuple(args.train_flags.split())
    jobs = [runs.TrainRun(SUITE[d], f, s, m, tuple(flags) + extra)
            for d in args.datasets for f in args.fractions for s in args.seeds for m, flags in methods.items()]
    if not args.no_all_labels:
        jobs += [runs.TrainRun(SUITE[d], 1.0, s, "all-labels", tuple(runs.ALL_LABELS) + extra)
                 for d in args.datasets for s in args.seeds]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    export = not args.no_propagation

    def one(job: runs.TrainRun) -> dict:
        record = runs.train(job, data / job.dataset.name, out, threads, export and job.method == "llp")
        print(f"{job.dataset.name} p={job.fraction:g} seed={job.seed} {job.method}: "
              f"top-1 {record['test_top1']:.4f}", flush=True)
        return record

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        records = list(pool.map(one, jobs))
    results = {"fractions": [str(f) for f in args.fractions], "seeds": args.seeds,
               "datasets": {d: SUITE[d].character for d in args.datasets}, "train": {}, "all_labels": {}}
    for job, record in zip(jobs, records):
        if job.method == "all-labels":
            results["all_labels"].setdefault(job.dataset.name, {})[str(job.seed)] = record["test_top1"]
        else:
            (results["train"].setdefault(job.dataset.name, {}).setdefault(job.method, {})
             .setdefault(str(job.fraction), {})[str(job.seed)]) = record
    if export:
        results["propagation"] = propagation_results(args, data, out)
    results["seconds"] = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render(results)
    (out / "table.md").write_text(report + "\n")
    tables.plot(results, out / "accuracy.png")
    tables.plot_selfcheck(results, out / "selfcheck.png", "0.02" if "0.02" in results["fractions"]
                          else results["fractions"][0])
    print(report)
    print(f"({time.time() - started:.0f} s; {out / 'results.json'})")
    return results


def propagation_results(args, data: Path, out: Path) -> dict:
    """Every propagation method on the raw inputs and on each LLP run's exported
    embedding (the same labeled rows), cached per run in ``propagation.json``."""
    import numpy as np

    block: dict = {"raw": {}, "embedding": {}}
    for d in args.datasets:
        for f in args.fractions:
            for s in args.seeds:
                job = runs.TrainRun(SUITE[d], f, s, "llp", ())
                cache = job.folder(out) / "propagation.json"
                if cache.exists():
                    found = json.loads(cache.read_text())
                else:
                    x, y, labeled = runs.raw_features(SUITE[d], data / d, f, s)
                    export = job.folder(out) / "export"
                    emb = np.load(export / "embeddings.npy")
                    found = {space: {m: runs.propagate(xs, y, labeled, m) for m in runs.PROPAGATION_METHODS}
                             for space, xs in (("raw", x), ("embedding", emb))}
                    cache.write_text(json.dumps(found))
                for space, per_method in found.items():
                    for m, r in per_method.items():
                        block[space].setdefault(d, {}).setdefault(m, {}).setdefault(str(f), {})[str(s)] = r
                print(f"{d} p={f:g} seed={s}: propagation " + ", ".join(
                    f"{m} {found['raw'][m]['accuracy']:.3f}/{found['embedding'][m]['accuracy']:.3f}"
                    for m in runs.PROPAGATION_METHODS), flush=True)
    return block


def render(results: dict) -> str:
    parts = [f"Seeds {results['seeds']}; test top-1 %, mean ± std over seeds.", "",
             "LLP against supervised training on the labeled rows alone (Δ: mean ± std of the per-seed "
             "differences):", "", tables.summary_table(results), "",
             tables.accuracy_table(results), "",
             "Pseudo-labels of the LLP runs (%, means over seeds):", "", tables.selfcheck_table(results)]
    if "propagation" in results:
        for space, title in (("raw", "raw inputs"), ("embedding", "the LLP run's exported embedding")):
            parts += ["", f"Propagation on {title}: accuracy on the unlabeled training rows (%):", "",
                      tables.propagation_table(results, space)]
        parts += ["", "The propagation tool's default minus LabelSpreading(kernel=\"knn\") (points):", "",
                  tables.propagation_gap_table(results)]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)

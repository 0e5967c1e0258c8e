"""``python -m llp.propagate_table``: propagation methods compared on fixed features, in
the style of the paper's table 5 (label spreading, label propagation, DLP, LLP on the
embeddings of a trained network).

Protocol: scikit-learn's digits (1,797 8x8 images, 10 classes). Each of ``--subsets``
draws (from ``--seed``) ``--classes`` of the 10 classes and ``--labels-per-class``
labeled rows of each; every other row of those classes is unlabeled. Every method
propagates from the same labeled rows; the score is the accuracy of the unlabeled rows'
pseudo-labels, reported as mean ± std over the subsets, in percent.

Features (``--features``, comma-separated):
- ``pixels``: the 64 raw pixel values (L2-normalised, as every method here uses cosine
  similarity; scikit-learn's label spreading gets the same normalised rows);
- ``embedding``: the 128-D embedding of a network trained by ``python -m llp.train`` on
  digits' training split (its rows only: 1,438), read from ``--embedding-dir`` (what
  ``--export-embeddings`` wrote), or trained here first (about a minute on 2 CPU cores)
  when that is not given. That network saw 10% of its rows' labels while training.

Methods: ``LocalLabelPropagation`` with ``auto`` (the tool's default: the method and its
settings chosen by cross-validation over the labeled rows), ``llp``, ``knn`` (NoDW), ``ratio`` and
``diffusion`` at their defaults, and ``sklearn.semi_supervised.LabelSpreading`` with
the knn kernel and 7 neighbours.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from ..method.cli import Parser

METHODS = ("auto", "llp", "knn", "ratio", "diffusion", "label spreading")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m llp.propagate_table",
               description="Propagation methods on fixed digits features (the paper's table-5 protocol).")
    a = p.add_argument
    a("--features", default="pixels", help="comma-separated: pixels, embedding")
    a("--embedding-dir", metavar="DIR", help="output of python -m llp.train --export-embeddings DIR "
      "(default for --features embedding: train one here)")
    a("--subsets", type=int, default=10, help="random class subsets")
    a("--classes", type=int, default=5, help="classes per subset")
    a("--labels-per-class", type=int, default=5, help="labeled rows per class")
    a("--seed", type=int, default=0, help="seed of the subsets and of the labeled rows")
    a("--out", metavar="FILE.json", help="also write every accuracy here")
    return p


def pixels() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.data.astype(np.float32), digits.target.astype(np.int64)


def embedding(directory: str = None) -> Tuple[np.ndarray, np.ndarray]:
    if directory is None:
        from ..train import command as train
        directory = tempfile.mkdtemp(prefix="llp-table-")
        print(f"training a network for the embedding (python -m llp.train --quiet --export-embeddings {directory})",
              file=sys.stderr)
        train.main(["--quiet", "--run-dir", str(Path(directory) / "run"), "--export-embeddings", directory])
    d = Path(directory)
    return np.load(d / "embeddings.npy").astype(np.float32), np.load(d / "true_labels.npy").astype(np.int64)


def subsets(y: np.ndarray, count: int, classes: int, per_class: int, seed: int):
    """``count`` (rows, labels with -1 for unlabeled) pairs: rows of ``classes`` random
    classes, ``per_class`` random rows of each labeled."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        chosen = rng.choice(np.unique(y), size=classes, replace=False)
        rows = np.flatnonzero(np.isin(y, chosen))
        given = np.full(len(rows), -1, dtype=np.int64)
        for c in chosen:
            members = np.flatnonzero(y[rows] == c)
            pick = rng.choice(members, size=per_class, replace=False)
            given[pick] = c
        yield rows, given


def accuracy(method: str, x: np.ndarray, given: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.semi_supervised import LabelSpreading

    from ..method.estimator import LocalLabelPropagation

    if method == "label spreading":
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predicted = LabelSpreading(kernel="knn", n_neighbors=7).fit(xn, given).transduction_
    else:
        predicted = LocalLabelPropagation(method=method).fit(x, given).transduction_
    unlabeled = given < 0
    return float((predicted[unlabeled] == truth[unlabeled]).mean())


def table(results: Dict[str, Dict[str, List[float]]]) -> str:
    names = list(results)
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for method in METHODS:
        cells = [f"{100 * np.mean(results[f][method]):.1f} ± {100 * np.std(results[f][method]):.1f}"
                 for f in names]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> Dict[str, Dict[str, List[float]]]:
    parser = build_parser()
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.features.split(",") if k.strip()]
    if not kinds or any(k not in ("pixels", "embedding") for k in kinds):
        parser.error(f"--features must list pixels and/or embedding, got {args.features!r}")
    if min(args.subsets, args.classes, args.labels_per_class) < 1 or args.classes > 10:
        parser.error("--subsets and --labels-per-class must be >= 1 and --classes in [1, 10]")
    results: Dict[str, Dict[str, List[float]]] = {}
    for kind in kinds:
        x, y = pixels() if kind == "pixels" else embedding(args.embedding_dir)
        name = f"{kind} ({x.shape[0]} rows, {x.shape[1]}-D)"
        results[name] = {m: [] for m in METHODS}
        started = time.perf_counter()
        for rows, given in subsets(y, args.subsets, args.classes, args.labels_per_class, args.seed):
            for method in METHODS:
                results[name][method].append(accuracy(method, x[rows], given, y[rows]))
        print(f"{name}: {args.subsets} subsets in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    print(f"accuracy (%) of the unlabeled rows' pseudo-labels, mean ± std over {args.subsets} subsets of "
          f"{args.classes} digit classes with {args.labels_per_class} labels each (seed {args.seed})\n")
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "accuracy": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

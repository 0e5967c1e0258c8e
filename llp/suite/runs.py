"""One run of the development suite: a ``python -m llp.train`` process on a data set's
files, or a propagation over fixed features (raw inputs, or the embedding an LLP run
exported) scored on the unlabeled training rows.

Every run is cached in its own folder (a ``done`` marker), so an interrupted suite
resumes where it stopped and a table can be redrawn without training again.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..train.config import DEFAULTS
from .datasets import DataSet

# Total epochs of an LLP run (warm-up + LLP); the supervised baseline trains as long.
TOTAL_EPOCHS = DEFAULTS.warmup_epochs + DEFAULTS.epochs

TRAIN_METHODS: Dict[str, List[str]] = {
    "llp": [],
    "supervised": ["--method", "supervised", "--epochs", str(TOTAL_EPOCHS)],
}
ALL_LABELS = ["--method", "supervised", "--epochs", str(TOTAL_EPOCHS), "--labeled-fraction", "1.0"]


@dataclass(frozen=True)
class TrainRun:
    dataset: DataSet
    fraction: float     # labeled fraction; 1.0 with ``ALL_LABELS``
    seed: int
    method: str         # a key of TRAIN_METHODS, "all-labels", or a variant's name
    flags: tuple        # the method's own llp.train flags

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.dataset.name / f"p{self.fraction:g}-seed{self.seed}-{self.method}"


def train(run: TrainRun, data_folder: Path, out: Path, threads: int, export: bool) -> Dict:
    """Runs (or reads the cached result of) one ``python -m llp.train``; returns the
    last epoch's test accuracy and, for LLP, the per-epoch pseudo-label accuracy, the
    self-check's estimate of it and the pseudo-labeled loss weight."""
    folder = run.folder(out)
    flags = [*run.dataset.train_flags(data_folder), "--labeled-fraction", str(run.fraction),
             "--seed", str(run.seed), *run.flags, "--quiet", "--run-dir", str(folder / "run")]
    if (folder / "done").exists():
        made_with = (folder / "flags.txt").read_text().split("\n") if (folder / "flags.txt").exists() else []
        if made_with != flags:
            raise SystemExit(f"error: {folder} holds a run made with other flags ({' '.join(made_with)}); "
                             f"give another --out or remove it")
        if export and not (folder / "export" / "embeddings.npy").exists():
            raise SystemExit(f"error: {folder} was trained without exporting its embedding; remove it")
    else:
        if export:
            flags += ["--export-embeddings", str(folder / "export")]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        code = f"import torch; torch.set_num_threads({threads}); from llp.train import main; main()"
        result = subprocess.run([sys.executable, "-c", code, *flags], env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"error: python -m llp.train {' '.join(flags)} failed:\n{result.stderr[-3000:]}")
        (folder / "flags.txt").write_text("\n".join(flags[:-2] if export else flags))
        (folder / "done").write_text("")
    records = [json.loads(line) for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]
    llp_records = [r for r in records if "pseudo_acc" in r]
    out_record = {"test_top1": records[-1]["test_top1"], "seconds": records[-1]["seconds"]}
    if llp_records:
        out_record.update({name: [r.get(name) for r in llp_records]
                           for name in ("pseudo_acc", "selfcheck_acc", "selfcheck_classifier_acc",
                                        "selfcheck_reference_acc", "gate")})
        out_record["test_top1_per_epoch"] = [r["test_top1"] for r in llp_records]
    return out_record


def raw_features(dataset: DataSet, data_folder: Path, fraction: float, seed: int):
    """The trainer's own split of a data set: training inputs flattened to [N, F] fp32,
    true classes [N] and the labeled mask [N] (the rows a run with this fraction and seed
    sees labeled)."""
    import torch

    from ..train.build import load_split
    from ..train.config import TrainConfig

    flags = dataset.train_flags(data_folder)
    settings = dict(zip((f.lstrip("-").replace("-", "_") for f in flags[::2]), flags[1::2]))
    for name in ("image_size", "workers"):
        if name in settings:
            settings[name] = int(settings[name])
    split = load_split(TrainConfig(labeled_fraction=fraction, seed=seed, **settings))
    rows = torch.arange(len(split.train))
    x = torch.cat([split.train.batch(rows[i:i + 512]).flatten(1) for i in range(0, len(rows), 512)])
    return x.numpy().astype(np.float32), split.train_y.numpy(), split.labeled.numpy()


PROPAGATION_METHODS = ("tool default", "llp", "knn", "diffusion", "LabelSpreading knn")


def propagate(x: np.ndarray, y: np.ndarray, labeled: np.ndarray, method: str) -> Dict:
    """Accuracy of one propagation method on the unlabeled rows of (x, y) given the
    ``labeled`` rows' classes; with the tool's default, also what it chose."""
    from sklearn.semi_supervised import LabelSpreading

    from ..method.estimator import LocalLabelPropagation

    given = np.where(labeled, y, -1)
    if method == "LabelSpreading knn":
        model = LabelSpreading(kernel="knn").fit(x.astype(np.float64), given)
    elif method == "tool default":
        model = LocalLabelPropagation(k=min(LocalLabelPropagation().k, int(labeled.sum()))).fit(x, given)
    else:
        model = LocalLabelPropagation(method=method, k=min(10, int(labeled.sum()))).fit(x, given)
    unlabeled = ~labeled
    result = {"accuracy": float((model.transduction_[unlabeled] == y[unlabeled]).mean())}
    chosen: Optional[dict] = getattr(model, "chosen_", None)
    if chosen:
        result["chosen"] = chosen
    return result

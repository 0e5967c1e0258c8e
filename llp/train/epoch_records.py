"""What an epoch records: loss parts, test accuracy, and for LLP the pseudo-labels'
quality, the paper's aggregation metric and the density/pseudo-label-count correlation.
A metric a run does not compute is absent from its record (a supervised run has no
pseudo-labels; a warm-up has none until LLP starts)."""
from __future__ import annotations

import sys
from typing import Dict

import torch

from .build import Run
from .metrics import (accuracy_metrics, aggregation_metric, density_count_correlation,
                      labeled_only_knn_top1, pseudo_label_metrics, run_model)


def epoch_record(run: Run, epoch: int, phase: str, lr: float, sums: Dict[str, float], rows: int,
                 bank: torch.Tensor, seconds: float) -> Dict:
    """``bank``: the whole bank [N, D] (gathered once per epoch by the caller)."""
    c = run.config
    record = {"epoch": epoch + 1, "phase": phase, "lr": lr,
              **{f"train_{k}": v / rows for k, v in sums.items()},
              **accuracy_metrics(run_model(run.net, run.split.test, run.device), run.test_y, run.split.num_classes)}
    if c.method == "llp" and epoch + 1 >= c.warmup:
        record.update(pseudo_label_metrics(run.state, run.train_y))
        record["aggregation"] = aggregation_metric(bank, run.train_y, run.split.num_classes)
        record["density_count_r"] = density_count_correlation(run.state)
    record["seconds"] = seconds
    return record


def print_epoch(record: Dict) -> None:
    line = (f"epoch {record['epoch']:3d}  {record['phase']:10s} lr {record['lr']:.2g}  "
            f"loss {record['train_loss']:.3f}  test top-1 {record['test_top1']:.4f}")
    if "pseudo_acc" in record:
        line += f"  pseudo-label acc {record['pseudo_acc']:.4f}"
    print(line, file=sys.stderr, flush=True)


def print_summary(run: Run, record: Dict) -> None:
    c = run.config
    name = "LLP" if c.method == "llp" else "supervised (labeled only)"
    state = run.state
    print(f"\n| result ({name}, {int(state.labeled.sum())} labeled of {len(state.labels)}) | value |")
    print("|---|---|")
    print(f"| test top-1 | {record['test_top1']:.4f} |")
    print(f"| test top-5 | {record['test_top5']:.4f} |")
    if "pseudo_acc" in record:
        print(f"| pseudo-label accuracy on unlabeled | {record['pseudo_acc']:.4f} |")
    knn = labeled_only_knn_top1(run.split)
    if knn == knn:
        print(f"| for comparison: 1-NN on raw inputs, labeled rows only | {knn:.4f} |")
    print(f"| metrics (plots: python -m llp.report {c.out_dir}) | {c.out_dir / 'metrics.jsonl'} |")
    print(f"| checkpoint | {c.out_dir / 'checkpoint.pt'} |")

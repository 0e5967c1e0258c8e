"""Evaluation metrics of one epoch (paper section 5 and the users' usual reads)."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor


@torch.no_grad()
def run_model(model, source, device, batch: int = 256, output: int = 1, rows=None) -> Tensor:
    """Model outputs (0: embeddings, 1: logits) in fp32 for the rows ``rows`` (default:
    all) of a data source, without augmentation, in eval mode."""
    model.eval()
    rows = torch.arange(len(source)) if rows is None else torch.as_tensor(rows)
    outs = [model(source.batch(rows[i:i + batch]).to(device))[output].float()
            for i in range(0, len(rows), batch)]
    return torch.cat(outs)


def accuracy_metrics(logits: Tensor, y: Tensor, num_classes: int) -> Dict[str, float]:
    pred = logits.argmax(dim=1)
    top5 = logits.topk(min(5, num_classes), dim=1).indices
    per_class = [(pred[y == c] == c).float().mean().item() for c in range(num_classes) if (y == c).any()]
    return {"test_top1": (pred == y).float().mean().item(),
            "test_top5": (top5 == y[:, None]).any(dim=1).float().mean().item(),
            "test_balanced_acc": sum(per_class) / len(per_class)}


def pseudo_label_metrics(state, true_labels: Tensor) -> Dict[str, float]:
    """The unlabeled examples' current labels against the hidden ground truth: accuracy,
    mean confidence, and the accuracy and share of those with confidence above 0.9
    (NaN when there are none)."""
    u = state.unlabeled_idx
    if u.numel() == 0:
        return {"pseudo_acc": float("nan"), "pseudo_conf": float("nan"),
                "pseudo_acc_conf90": float("nan"), "pseudo_frac_conf90": float("nan")}
    right = state.labels[u] == true_labels[u]
    sure = state.confidence[u] > 0.9
    return {"pseudo_acc": right.float().mean().item(),
            "pseudo_conf": state.confidence[u].mean().item(),
            "pseudo_acc_conf90": right[sure].float().mean().item() if bool(sure.any()) else float("nan"),
            "pseudo_frac_conf90": sure.float().mean().item()}


def aggregation_metric(bank: Tensor, true_labels: Tensor, num_classes: int) -> float:
    """Mean L2 norm of the class-mean embeddings (paper fig. 2b): 1 when every class
    collapses to a point, near 0 when embeddings are spread over the sphere."""
    norms = [bank[true_labels == c].float().mean(dim=0).norm().item()
             for c in range(num_classes) if (true_labels == c).any()]
    return sum(norms) / len(norms)


def density_count_correlation(state) -> float:
    """Pearson r between a class's mean labeled log-density and how many unlabeled
    examples carry it as pseudo-label (paper fig. 3); NaN without density."""
    if state.log_density is None or state.unlabeled_idx.numel() == 0:
        return float("nan")
    lab_y = state.labels[state.labeled_idx]
    dens, counts = [], []
    for c in range(state.num_classes):
        members = lab_y == c
        if members.any():
            dens.append(state.log_density[members].mean().item())
            counts.append((state.labels[state.unlabeled_idx] == c).sum().item())
    d, n = torch.tensor(dens, dtype=torch.float64), torch.tensor(counts, dtype=torch.float64)
    if d.numel() < 2 or d.std() == 0 or n.std() == 0:
        return float("nan")
    r = ((d - d.mean()) * (n - n.mean())).mean() / (d.std(unbiased=False) * n.std(unbiased=False))
    return r.item() if math.isfinite(r.item()) else float("nan")


@torch.no_grad()
def labeled_only_knn_top1(split) -> float:
    """Test top-1 of a 1-nearest-neighbour classifier on the raw inputs of the labeled
    training rows only: the floor any semi-supervised method should clear. NaN for data
    not held in memory (image folders)."""
    if not hasattr(split.train, "x"):
        return float("nan")
    train = split.train.x[split.labeled].flatten(1).float()
    test = split.test.x.flatten(1).float()
    nearest = torch.cdist(test, train).argmin(dim=1)
    return (split.train_y[split.labeled][nearest] == split.test_y).float().mean().item()

"""What ``python -m llp.propagate`` reports about its pseudo-labels: the paper's
density/count correlation and, given the true classes, the accuracy of the unlabeled
rows' pseudo-labels overall, balanced over classes, and by confidence decile.

Memory: the evaluation keeps a confidence (4 bytes) and a hit flag (1 byte) per
evaluated row, plus an 8-byte sort index, so it holds about 13 bytes per unlabeled row.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np


def pearson(a, b) -> Optional[float]:
    """Pearson r of two equal-length sequences; None when undefined (fewer than two
    points, or a constant sequence)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return None
    r = float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std()))
    return r if math.isfinite(r) else None


def density_count_r(log_density: np.ndarray, labeled_classes: np.ndarray,
                    pseudo_counts: np.ndarray) -> Optional[float]:
    """Pearson r, over the classes that have labeled rows, between a class's mean
    labeled log-density [M] and its number of pseudo-labeled rows [C] (paper fig. 3)."""
    present = np.unique(labeled_classes)
    means = [log_density[labeled_classes == c].mean() for c in present]
    return pearson(means, pseudo_counts[present])


def deciles(confidence: np.ndarray, correct: np.ndarray) -> List[Dict]:
    """The evaluated rows ranked by confidence (ties in row order) and cut into ten
    groups of (nearly) equal size, lowest first: rows, confidence range and mean,
    accuracy. Fewer than ten rows give fewer groups."""
    order = np.argsort(confidence, kind="stable")
    out = []
    for i, part in enumerate(np.array_split(order, 10)):
        if len(part) == 0:
            continue
        c = confidence[part]
        out.append({"decile": i + 1, "rows": int(len(part)), "min_confidence": float(c.min()),
                    "max_confidence": float(c.max()), "mean_confidence": float(c.mean()),
                    "accuracy": float(correct[part].mean())})
    return out


def evaluate(pseudo, confidence, given, truth, chunk_rows: int) -> Dict:
    """Accuracy of ``pseudo`` [N] on the rows unlabeled in ``given`` [N] whose ``truth``
    [N] is known (>= 0): top-1, balanced (mean recall over the true classes present)
    and by confidence decile. Arrays are read in chunks (memmaps welcome)."""
    hits, conf_parts, truth_parts = [], [], []
    for lo in range(0, len(given), chunk_rows):
        hi = min(len(given), lo + chunk_rows)
        rows = (np.asarray(given[lo:hi]) < 0) & (np.asarray(truth[lo:hi]) >= 0)
        t = np.asarray(truth[lo:hi])[rows]
        hits.append(np.asarray(pseudo[lo:hi])[rows] == t)
        conf_parts.append(np.asarray(confidence[lo:hi], dtype=np.float32)[rows])
        truth_parts.append(t)
    correct = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    if correct.size == 0:
        return {"rows": 0, "top1": None, "balanced_accuracy": None, "deciles": []}
    t = np.concatenate(truth_parts)
    recall = [correct[t == c].mean() for c in np.unique(t)]
    return {"rows": int(correct.size), "top1": float(correct.mean()),
            "balanced_accuracy": float(np.mean(recall)),
            "deciles": deciles(np.concatenate(conf_parts), correct)}


def decile_table(rows: List[Dict]) -> str:
    lines = ["| decile | rows | confidence (min-max) | mean confidence | accuracy |", "|---|---|---|---|---|"]
    for d in rows:
        lines.append(f"| {d['decile']} | {d['rows']} | {d['min_confidence']:.3f}-{d['max_confidence']:.3f} | "
                     f"{d['mean_confidence']:.3f} | {d['accuracy']:.4f} |")
    return "\n".join(lines)


def plot_png(rows: List[Dict], title: str) -> bytes:
    """Accuracy and mean confidence per confidence decile, as PNG bytes (matplotlib Agg)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [d["decile"] for d in rows]
    ax.bar(x, [d["accuracy"] for d in rows], color="tab:blue", alpha=0.7, label="accuracy")
    ax.plot(x, [d["mean_confidence"] for d in rows], "o-", color="tab:orange", label="mean confidence")
    ax.set_xlabel("confidence decile (1 = least confident)")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(x)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()

"""The suite's outputs: mean ± std tables in Markdown and the plots, from the results
dictionary that ``python -m llp.suite`` writes to ``results.json``.

Layout of the results (fractions and seeds are strings, as JSON keys are):
``train[dataset][method][fraction][seed]`` = one training run's record
(``test_top1``; for LLP the per-epoch ``pseudo_acc``, ``selfcheck_acc``, the
replicas' classifier and reference accuracy and the ``gate``), ``all_labels[dataset][seed]`` = test
top-1 with every training label, ``propagation[space][dataset][method][fraction][seed]``
= accuracy on the unlabeled training rows (space: ``raw`` or ``embedding``).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Dict, Iterable, List, Optional


def mean_std(values: Iterable[Optional[float]]) -> Optional[tuple]:
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return None
    return statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def cell(values: Iterable[Optional[float]], scale: float = 100.0) -> str:
    ms = mean_std(values)
    return "—" if ms is None else f"{scale * ms[0]:.1f} ± {scale * ms[1]:.1f}"


def _top1(per_seed: Dict[str, dict]) -> List[float]:
    return [r["test_top1"] for r in per_seed.values()]


def _at(per_seed: Dict[str, dict], key: str, index: int) -> List[Optional[float]]:
    return [r[key][index] if r.get(key) else None for r in per_seed.values()]


def accuracy_table(results: dict) -> str:
    """Test top-1 (%) of every training method, per data set and labeled fraction, and
    LLP - supervised (mean of the per-seed differences)."""
    fractions = results["fractions"]
    head = "| data set | method | " + " | ".join(f"{100 * float(f):g}%" for f in fractions) + " |"
    lines = [head, "|---|---|" + "---|" * len(fractions)]
    for dataset, methods in results["train"].items():
        full = list(results.get("all_labels", {}).get(dataset, {}).values())
        for method, per_fraction in methods.items():
            cells = [cell(_top1(per_fraction.get(f, {}))) for f in fractions]
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
        if "llp" in methods and "supervised" in methods:
            diffs = []
            for f in fractions:
                llp, sup = methods["llp"].get(f, {}), methods["supervised"].get(f, {})
                diffs.append(cell([llp[s]["test_top1"] - sup[s]["test_top1"] for s in llp if s in sup]))
            lines.append(f"| {dataset} | **LLP − supervised** | " + " | ".join(f"**{d}**" for d in diffs) + " |")
        if full:
            lines.append(f"| {dataset} | supervised, all labels | " + " | ".join([cell(full)] * len(fractions)) + " |")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """One row per data set: per labeled fraction, LLP's and supervised's mean test top-1 (%)
    and LLP - supervised as mean ± std of the per-seed differences; and the all-labels level."""
    fractions = results["fractions"]
    lines = ["| data set | " + " | ".join(f"{100 * float(f):g}%: LLP / supervised (Δ)" for f in fractions)
             + " | all labels |", "|---|" + "---|" * (len(fractions) + 1)]
    for dataset, methods in results["train"].items():
        if "llp" not in methods or "supervised" not in methods:
            continue
        cells = []
        for f in fractions:
            llp, sup = methods["llp"].get(f, {}), methods["supervised"].get(f, {})
            both = [s for s in llp if s in sup]
            diff = mean_std(llp[s]["test_top1"] - sup[s]["test_top1"] for s in both)
            if diff is None:
                cells.append("—")
                continue
            means = [mean_std(_top1({s: r[s] for s in both}))[0] for r in (llp, sup)]
            cells.append(f"{100 * means[0]:.1f} / {100 * means[1]:.1f} ({100 * diff[0]:+.1f} ± {100 * diff[1]:.1f})")
        full = cell(results.get("all_labels", {}).get(dataset, {}).values())
        lines.append(f"| {dataset} | " + " | ".join(cells) + f" | {full} |")
    return "\n".join(lines)


def selfcheck_table(results: dict, method: str = "llp") -> str:
    """Per data set and fraction: the true pseudo-label accuracy at LLP's first and last
    epoch, the self-check's estimate at both, and the pseudo-labeled loss weight at the
    end (means over seeds, %)."""
    fractions = results["fractions"]
    lines = ["| data set | labeled | pseudo-label acc. first → last | self-check estimate first → last "
             "| mean abs. error of the estimate | gate at the end |", "|---|---|---|---|---|---|"]
    for dataset, methods in results["train"].items():
        for f in fractions:
            runs = methods.get(method, {}).get(f, {})
            if not runs:
                continue
            errors = []
            for r in runs.values():
                pairs = [(a, e) for a, e in zip(r.get("pseudo_acc") or [], r.get("selfcheck_acc") or [])
                         if a is not None and e is not None]
                if pairs:
                    errors.append(statistics.mean(abs(a - e) for a, e in pairs))
            first, last = cell(_at(runs, "pseudo_acc", 0)), cell(_at(runs, "pseudo_acc", -1))
            est_first, est_last = cell(_at(runs, "selfcheck_acc", 0)), cell(_at(runs, "selfcheck_acc", -1))
            lines.append(f"| {dataset} | {100 * float(f):g}% | {first} → {last} | {est_first} → {est_last} "
                         f"| {cell(errors)} | {cell(_at(runs, 'gate', -1), 1.0)} |")
    return "\n".join(lines)


def propagation_table(results: dict, space: str) -> str:
    """Accuracy (%) on the unlabeled training rows of every propagation method."""
    fractions = results["fractions"]
    block = results.get("propagation", {}).get(space, {})
    head = "| data set | method | " + " | ".join(f"{100 * float(f):g}%" for f in fractions) + " |"
    lines = [head, "|---|---|" + "---|" * len(fractions)]
    for dataset, methods in block.items():
        for method, per_fraction in methods.items():
            cells = [cell(r["accuracy"] for r in per_fraction.get(f, {}).values()) for f in fractions]
            lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def propagation_gap_table(results: dict, method: str = "tool default",
                          baseline: str = "LabelSpreading knn") -> str:
    """Per data set and fraction: ``method`` - ``baseline`` accuracy on the unlabeled
    training rows (points, mean ± std of the per-seed differences), on the raw inputs and
    on the LLP run's exported embedding."""
    fractions = results["fractions"]
    spaces = [sp for sp in ("raw", "embedding") if sp in results.get("propagation", {})]
    lines = ["| data set | " + " | ".join(f"{100 * float(f):g}% {sp}" for f in fractions for sp in spaces) + " |",
             "|---|" + "---|" * (len(fractions) * len(spaces))]
    datasets = list(results.get("propagation", {}).get("raw", {}))
    for dataset in datasets:
        cells = []
        for f in fractions:
            for sp in spaces:
                per_method = results["propagation"][sp].get(dataset, {})
                ours, theirs = per_method.get(method, {}).get(f, {}), per_method.get(baseline, {}).get(f, {})
                diff = mean_std(ours[s]["accuracy"] - theirs[s]["accuracy"] for s in ours if s in theirs)
                cells.append("—" if diff is None else f"{100 * diff[0]:+.1f} ± {100 * diff[1]:.1f}")
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _grid(datasets: List[str], draw, path: Path, xlabel: str, ylabel: str) -> None:
    """One panel per data set, ``draw(ax, dataset)`` filling each, saved as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(datasets)) or 1
    rows = -(-len(datasets) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, dataset in zip(axes.flat, datasets):
        draw(ax, dataset)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    axes.flat[0].set_xlabel(xlabel)
    axes.flat[0].set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot(results: dict, path: Path) -> None:
    """One panel per data set: test top-1 against the labeled fraction for every
    training method (mean over seeds, bars: std), and the all-labels level."""
    fractions = results["fractions"]
    xs = [100 * float(f) for f in fractions]

    def draw(ax, dataset):
        for method, per_fraction in results["train"][dataset].items():
            stats = [mean_std(_top1(per_fraction.get(f, {}))) for f in fractions]
            pts = [(x, s[0] * 100, s[1] * 100) for x, s in zip(xs, stats) if s]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                            label=method, marker="o", ms=3, capsize=2)
        full = mean_std(results.get("all_labels", {}).get(dataset, {}).values())
        if full:
            ax.axhline(100 * full[0], color="grey", ls="--", lw=1, label="all labels")
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}%" for x in xs])
        ax.set_title(dataset, fontsize=9)

    _grid(list(results["train"]), draw, path, "labeled", "test top-1 %")


def plot_selfcheck(results: dict, path: Path, fraction: str, method: str = "llp") -> None:
    """One panel per data set at one labeled fraction: the true pseudo-label accuracy
    per LLP epoch beside the self-check's estimate, and the gate (first seed)."""
    datasets = [d for d, m in results["train"].items() if m.get(method, {}).get(fraction)]
    if not datasets:
        return

    def draw(ax, dataset):
        seed, run = next(iter(results["train"][dataset][method][fraction].items()))
        for key, label, style in (("pseudo_acc", "pseudo-label acc. (truth)", "-"),
                                  ("selfcheck_acc", "self-check estimate", "--"),
                                  ("gate", "gate", ":")):
            values = run.get(key) or []
            pts = [(i + 1, v) for i, v in enumerate(values) if v is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{dataset}, seed {seed}", fontsize=9)

    _grid(datasets, draw, path, "LLP epoch", "accuracy / gate")

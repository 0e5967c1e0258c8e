"""``--method auto`` (the propagation tool's default): the method and its settings chosen
from the labeled rows by cross-validation.

Which propagation works depends on the data: density weighting helps where classes
differ in density and hurts where they do not, a graph diffusion beats a vote where
labels follow a manifold, and the vote needs more neighbours on noisy data. The labeled
rows can tell, because nothing was fitted to them: the tool only reads fixed features.

The labeled rows of every class with at least two are dealt into ``FOLDS`` stratified
folds (seeded; a class with one labeled row keeps it labeled throughout). Each candidate
predicts every fold from the other folds' labels, exactly as it would predict an
unlabeled row, and scores the share it gets right; the best share wins, ties going to
the earlier candidate (the candidates are listed by their mean accuracy over the
development suite). With no class of two labeled rows there is nothing to score and the
first candidate is used.

- vote candidates (``llp``, ``knn``): one density pass gives every labeled row its T best
  cosine similarities to unlabeled rows; the density at any tau follows from them
  (``llp.method.density.log_density``), and a fold's rows vote among the other folds'
  labeled rows: M x M similarities, no further pass over the unlabeled rows;
- diffusion candidates, only when every row fits in memory (N <= ``DIFFUSION_ROWS``): the
  kNN graph of each metric is built once (for the largest ``graph_k``, narrower graphs are
  its first columns) and each fold costs one solve per class. Under ``torchrun`` every
  process scores them on every row alike, and rank 0's choice is the one all make.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

import llp_kernels as lk
from llp_kernels.defaults import K, TAU

from . import diffusion
from .density import log_density
from .propagation import Comm, Problem, Settings, labeled_rows_and_density_pass, no_progress

FOLDS = 5
DIFFUSION_ROWS = 50_000
FOLD_SEED = 20200101

# In the order ties (and a problem with nothing to cross-validate) are settled in: by the
# mean accuracy over the development suite's raw-feature data sets at 2%, 5% and 10% labels,
# seeds 0-2 (python -m llp.suite), relative to scikit-learn's LabelSpreading(kernel="knn"):
# euclidean diffusion alpha 0.9 +5.6 points, alpha 0.5 +3.8, cosine diffusion graph_k=10
# +3.4, graph_k=50 alpha 0.5 +3.2; votes: llp k=20 tau=0.2 +2.9, knn k=20 +2.5, llp k=10
# +1.1, knn k=10 +1.1 (these two at the method's defaults, ``llp_kernels.defaults``, then
# k=10 tau=0.07). (DLP's own setting, graph_k=50 alpha=0.99, -3.8, is not a candidate.)
DIFFUSION_CANDIDATES: Tuple[Tuple[str, dict], ...] = (
    ("diffusion euclidean graph_k=10 alpha=0.9", dict(method="diffusion", metric="euclidean", graph_k=10,
                                                      alpha=0.9)),
    ("diffusion euclidean graph_k=10 alpha=0.5", dict(method="diffusion", metric="euclidean", graph_k=10,
                                                      alpha=0.5)),
    ("diffusion cosine graph_k=10 alpha=0.9", dict(method="diffusion", metric="cosine", graph_k=10, alpha=0.9)),
    ("diffusion cosine graph_k=50 alpha=0.5", dict(method="diffusion", metric="cosine", graph_k=50, alpha=0.5)),
)
VOTE_CANDIDATES: Tuple[Tuple[str, dict], ...] = (
    ("llp k=20 tau=0.2", dict(method="llp", k=20, tau=0.2)),
    ("knn k=20 tau=0.2", dict(method="knn", k=20, tau=0.2)),
    (f"llp k={K} tau={TAU}", dict(method="llp", k=K, tau=TAU)),
    (f"knn k={K} tau={TAU}", dict(method="knn", k=K, tau=TAU)),
)


def folds(classes: np.ndarray, seed: int = FOLD_SEED) -> np.ndarray:
    """Fold of each labeled row [M] (-1: never held out, its class has one labeled row)."""
    rng = np.random.default_rng(seed)
    fold = np.full(len(classes), -1, dtype=np.int64)
    for c in np.unique(classes):
        members = rng.permutation(np.flatnonzero(classes == c))
        if len(members) >= 2:
            fold[members] = np.arange(len(members)) % FOLDS
    return fold


@dataclasses.dataclass
class Choice:
    settings: Settings
    name: str
    scores: Dict[str, float]          # candidate -> cross-validated accuracy
    rows: int                         # labeled rows held out once each
    top_similarities: Optional[torch.Tensor] = None   # the density pass, reused by a vote
    keys: Optional[torch.Tensor] = None               # every row, kept when a diffusion won

    def summary(self) -> dict:
        s = self.settings
        chosen = {"method": s.method}
        chosen.update({"k": s.k, "tau": s.tau} if s.method != "diffusion" else
                      {"metric": s.metric, "graph_k": s.graph_k, "alpha": s.alpha})
        return {"chosen": self.name, "settings": chosen, "cross_validated_rows": self.rows,
                "cross_validation_accuracy": self.scores}


def candidates(problem: Problem, base: Settings, comm: Comm) -> List[Tuple[str, Settings]]:
    """The candidates this problem admits (k clamped to the labeled rows)."""
    m = len(problem.labeled_ids)
    found = []
    if problem.rows.n <= DIFFUSION_ROWS:
        found += [(name, dataclasses.replace(base, **o)) for name, o in DIFFUSION_CANDIDATES]
    found += [(name, dataclasses.replace(base, **{**o, "k": min(o["k"], m)})) for name, o in VOTE_CANDIDATES]
    return found


def choose(problem: Problem, base: Settings, comm: Comm, progress=no_progress,
           timings: Optional[dict] = None) -> Choice:
    """The cross-validated choice among ``candidates``; runs the density pass (which
    checks every row) and, where diffusion is a candidate, builds its graphs."""
    found = candidates(problem, base, comm)
    labeled, classes, top = labeled_rows_and_density_pass(problem, base, comm, progress, timings)
    fold = folds(classes.cpu().numpy())
    held = int((fold >= 0).sum())
    scores: Dict[str, float] = {}
    keys = None
    if held:
        classes_np = classes.cpu().numpy()
        graphs: dict = {}
        for name, s in found:
            if s.method == "diffusion":
                if keys is None:
                    keys = diffusion.read_all(problem, dataclasses.replace(s, metric="cosine"), check=False)
                    raw = diffusion.read_all(problem, dataclasses.replace(s, metric="euclidean"), check=False)
                scores[name] = _diffusion_score(problem, s, keys if s.metric == "cosine" else raw, graphs,
                                                classes_np, fold)
            else:
                scores[name] = _vote_score(labeled, classes, top, s, fold)
    best = max(range(len(found)), key=lambda i: (scores.get(found[i][0], -1.0), -i))
    name, settings = found[comm.broadcast_int(best)]
    return Choice(settings, name, scores, held, top_similarities=top)


def _vote_score(labeled: torch.Tensor, classes: torch.Tensor, top: torch.Tensor, s: Settings,
                fold: np.ndarray) -> float:
    """Share of the held-out labeled rows the vote gets right, each fold voted by the
    labeled rows outside it (the density of each labeled row is its own, as in a run)."""
    bias = log_density(top / s.tau) if s.method == "llp" else None
    fold_t = torch.from_numpy(fold).to(labeled.device)
    right = 0
    for f in range(FOLDS):
        out, keep = fold_t == f, fold_t != f
        if not bool(out.any()):
            continue
        k = min(s.k, int(keep.sum()))
        scores, idx = lk.topk_similarity(labeled[out], labeled[keep], k, s.tau,
                                         key_bias=None if bias is None else bias[keep], backend=s.backend)
        votes, _ = lk.class_vote(scores, classes[keep][idx])
        right += int((votes == classes[out]).sum())
    return right / int((fold_t >= 0).sum())


def _diffusion_score(problem: Problem, s: Settings, keys: torch.Tensor, graphs: dict,
                     classes: np.ndarray, fold: np.ndarray) -> float:
    """Share of the held-out labeled rows the diffusion gets right, each fold solved
    without its labels."""
    widest = max(o["graph_k"] for _, o in DIFFUSION_CANDIDATES if o["metric"] == s.metric)
    if s.metric not in graphs:
        wide = dataclasses.replace(s, graph_k=widest)
        ids, weights = diffusion.knn_graph(keys, range(keys.shape[0]), wide)
        graphs[s.metric] = (ids.cpu().numpy(), weights.cpu().numpy())
    ids, weights = graphs[s.metric]
    k = min(s.graph_k, ids.shape[1])
    w_n = diffusion.normalised_graph(ids[:, :k], weights[:, :k], keys.shape[0])
    labeled_ids = problem.labeled_ids
    right = 0
    for f in range(FOLDS):
        out = fold == f
        if not out.any():
            continue
        f_all = diffusion.solve(w_n, labeled_ids[~out], classes[~out], range(problem.num_classes), s)
        _, label, _, _ = diffusion.shares(np.maximum(f_all[labeled_ids[out]], 0.0))
        right += int((label == classes[out]).sum())
    return right / int((fold >= 0).sum())

"""``propagate_labels``: density-weighted label propagation (paper eq. 5), per query q:

    score_i = s(q, l_i) - log_density[i]          over the M labeled rows
    w_c     = sum_{i in N_K(q), y_i = c} exp(score_i - max score)
    label   = argmax_c w_c,   confidence = max_c w_c / sum_c w_c

with ``s(a, b) = a . b / tau`` and ``N_K(q)`` the K best labeled rows by score. The
per-query normaliser of P(v_i | v) cancels. ``log_density=None`` is plain weighted kNN
(the NoDW ablation).

No launchers of its own: the backend's top-k launcher (``TOPK`` through
``llp_kernels.ops.topk.run_topk``; that module names them) finds N_K(q) with
``key_bias = log_density``; the vote is ``llp_kernels.ops.class_vote.vote``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as check
from ..defaults import K, TAU
from ..registry import Call, resolve
from .class_vote import vote
from .topk import TOPK, reference_topk_similarity, run_topk

__all__ = ["propagate_labels", "reference_propagate_labels"]


def reference_propagate_labels(queries: Tensor, labeled: Tensor, labeled_labels: Tensor,
                               log_density: Optional[Tensor], k: int = K, tau: float = TAU,
                               num_classes: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Eq. 5 from the full score matrix: queries [Q, D], labeled [M, D], labeled_labels [M]
    int, log_density [M] or None -> (``argmax_c p_c`` int64 [Q], lowest class on a tie;
    ``max_c p_c`` [Q])."""
    if num_classes is None:
        num_classes = int(labeled_labels.max()) + 1
    scores, neighbours = reference_topk_similarity(queries, labeled, k, tau, key_bias=log_density)
    return vote(scores, labeled_labels.long()[neighbours], num_classes)


@torch.library.custom_op("llp::propagate_labels", mutates_args=())
def _propagate_op(queries: Tensor, labeled: Tensor, labeled_labels: Tensor,
                  log_density: Optional[Tensor], k: int, tau: float, num_classes: int,
                  backend: str) -> Tuple[Tensor, Tensor]:
    check.labels_in_range("labeled_labels", labeled_labels, 0, num_classes if num_classes > 0 else None)
    scores, neighbours = run_topk(backend, queries, labeled, k, tau, log_density)
    labels, confidence = vote(scores.float(), labeled_labels[neighbours])
    return labels, confidence.float()


@_propagate_op.register_fake
def _(queries, labeled, labeled_labels, log_density, k, tau, num_classes, backend):
    Q = queries.shape[0]
    return (queries.new_empty(Q, dtype=torch.int64), queries.new_empty(Q, dtype=torch.float32))


def propagate_labels(queries: Tensor, labeled: Tensor, labeled_labels: Tensor,
                     log_density: Optional[Tensor], k: int = K, tau: float = TAU,
                     num_classes: Optional[int] = None, *,
                     backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Density-weighted label propagation (paper eq. 5): pseudo-labels and confidences.

    ``score_i = queries[q] . labeled[i] / tau - log_density[i]``; over the k best labeled
    rows ``w_c = sum_{y_i = c} exp(score_i - max score)``, ``p_c = w_c / sum w``. Returns
    ``argmax_c p_c`` int64 [Q] and ``max_c p_c`` fp32 [Q]. ``log_density=None`` is plain
    weighted kNN (NoDW). labeled_labels [M] int in [0, num_classes) (num_classes None:
    max + 1).
    """
    check.embeddings("queries", queries)
    check.embeddings("labeled", labeled, queries.shape[1], "queries")
    check.labels("labeled_labels", labeled_labels, labeled.shape[0], "labeled")
    if log_density is not None:
        check.bias("log_density", log_density, labeled.shape[0], "labeled")
        log_density = log_density.detach().float().contiguous()
    k = check.count("k", k, labeled.shape[0], "labeled")
    num_classes = check.optional_num_classes("num_classes", num_classes)
    device = check.same_device(queries=queries, labeled=labeled, labeled_labels=labeled_labels,
                               log_density=log_density)
    tau = check.temperature("tau", tau)
    name = resolve((TOPK,), backend, Call(device, dim=queries.shape[1], k=k, dtype=labeled.dtype))
    return torch.ops.llp.propagate_labels(
        queries.detach().contiguous(), labeled.detach().contiguous(),
        labeled_labels.long().contiguous(), log_density, k, tau,
        -1 if num_classes is None else num_classes, name)

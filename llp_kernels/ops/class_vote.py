"""``class_vote``: the vote of label propagation (paper eq. 5) over neighbours chosen
elsewhere (the merged top-k of a sharded bank, say).

Over the voting neighbours of a row, ``w_c = sum_{k: label_k = c} exp(score_k - max score)``;
the row's label is ``argmax_c w_c`` and its confidence ``max_c w_c / sum_c w_c``.

The vote is O(Q K) PyTorch, so it has no kernels and no ``torch.library`` op: ``vote``
below is at once the oracle, what every backend runs, and the last step of
``propagate_labels``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as check
from ..registry import resolve_device

__all__ = ["class_vote", "vote"]


def vote(scores: Tensor, neighbour_labels: Tensor,
         num_classes: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """The vote of ``propagate_labels`` (paper eq. 5) over already chosen neighbours.

    scores [Q, K] (any order), neighbour_labels [Q, K] int: each neighbour's class, or -1
    for a neighbour without a label, which casts no vote (it is left out of every w_c and
    of their sum). Over the voting neighbours, ``w_c = sum_{k: label = c} exp(score_k -
    max score)``; returns ``argmax_c w_c`` (lowest class on a tie) int64 [Q] and
    ``max_c w_c / sum_c w_c`` [Q], in fp32 (fp64 for fp64 scores). A row with no voting
    neighbour gets label -1 and confidence 0 (no label reaches it); a row whose voting
    weights are not finite (a NaN or infinite score) gets label -1 and confidence NaN.
    ``num_classes`` is not needed (the public ``class_vote`` checks labels against it).
    Memory O(Q K), whatever the number of classes.
    """
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    scores, labels = scores.to(dtype), neighbour_labels.long()
    voting = labels >= 0
    top = torch.where(voting, scores, float("-inf")).amax(dim=1, keepdim=True)
    weights = torch.where(voting, torch.exp(scores - top), 0.0)
    labels, order = torch.sort(labels, dim=1, stable=True)
    weights = torch.gather(weights, 1, order)
    # Runs of equal labels in each sorted row: sum the weights of each run. The -1 run
    # sums to 0, below the best voter's own weight of 1.
    starts = torch.ones_like(labels, dtype=torch.bool)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    run = torch.cumsum(starts.long(), dim=1) - 1
    votes = torch.zeros_like(weights).scatter_add_(1, run, weights)
    best, best_run = votes.max(dim=1)
    first_of_run = torch.where(starts, run, labels.shape[1])
    position = (first_of_run == best_run[:, None]).long().argmax(dim=1)
    label = torch.gather(labels, 1, position[:, None]).squeeze(1)
    confidence = best / weights.sum(dim=1)
    usable = torch.isfinite(confidence)
    label = torch.where(usable, label, -1)
    confidence = torch.where(usable, confidence, float("nan"))
    reached = voting.any(dim=1)
    return torch.where(reached, label, -1), torch.where(reached, confidence, 0.0)


def _check_inputs(scores, neighbour_labels) -> None:
    """``scores`` a 2-D float tensor [Q, K] with K >= 1, ``neighbour_labels`` an integer
    tensor of the same shape."""
    check.tensor("scores", scores)
    check.tensor("neighbour_labels", neighbour_labels)
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a float tensor, got {scores.dtype}")
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be 2-D [queries, K] with K >= 1, got shape {tuple(scores.shape)}")
    if neighbour_labels.dtype not in check.INDEX_DTYPES:
        raise TypeError(f"neighbour_labels must be an integer tensor (int64 or int32), got "
                        f"{neighbour_labels.dtype}")
    if neighbour_labels.shape != scores.shape:
        raise ValueError(f"neighbour_labels must have the shape of scores {tuple(scores.shape)} (one "
                         f"label per score), got {tuple(neighbour_labels.shape)}")


def class_vote(scores: Tensor, neighbour_labels: Tensor, num_classes: Optional[int] = None, *,
               backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The vote of ``propagate_labels`` (paper eq. 5) over neighbours chosen elsewhere (the
    merged top-k of a sharded bank, say).

    scores [Q, K] float (K >= 1, any order), neighbour_labels [Q, K] int: each
    neighbour's class in [0, num_classes) (num_classes None: any class >= 0), or -1 for a
    neighbour without a label, which casts no vote. Over the voting neighbours
    ``w_c = sum_{k: label = c} exp(score_k - max score)``; returns ``argmax_c w_c``
    (lowest class on a tie) int64 [Q] and the confidence ``max_c w_c / sum_c w_c`` fp32
    [Q] (fp64 for fp64 scores). A row with no voting neighbour gets label -1 and
    confidence 0; a row whose voting scores are not all finite gets label -1 and
    confidence NaN. The same PyTorch code runs on every backend; ``backend`` is checked as
    everywhere (a named backend that cannot run on the tensors' device is refused).
    """
    _check_inputs(scores, neighbour_labels)
    num_classes = check.optional_num_classes("num_classes", num_classes)
    device = check.same_device(scores=scores, neighbour_labels=neighbour_labels)
    resolve_device(backend, device)
    check.labels_in_range("neighbour_labels", neighbour_labels, -1, num_classes)
    return vote(scores.detach(), neighbour_labels)

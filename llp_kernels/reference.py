"""Plain, materialising PyTorch versions of every op: the oracle the kernels are tested
against, and the ``reference`` backend's kernels.

Readable above all. Each function builds the full ``[rows x N]`` logits, so memory is
O(rows * N). Computation runs in fp32, or fp64 when given fp64 inputs (the tests use
that as the high-precision oracle); outputs are in that compute dtype.

Notation: ``tau`` temperature, every row L2-normalised,
``s(q, k) = q . k / tau``.

Non-finite inputs (the rule every backend follows): a NaN or inf in queries, keys, the
bank, a bias or an embedding is never checked for; it makes NaN exactly the outputs it
touches. A log-sum-exp over a non-finite logit is NaN; a top-k ranks a NaN score below
every number (so it never displaces a finite neighbour); a vote over a NaN score gives
confidence NaN and label -1; a bank row mixed with a non-finite value becomes all NaN.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._aggregation_rules import backward_inputs
from .defaults import TAU
from .ops.bank_update import last_occurrence_mask, reference_update_memory_bank_ as update_memory_bank_
from .ops.class_vote import vote as class_vote
from .ops.density import reference_local_density as local_density
from .ops.propagate import reference_propagate_labels as propagate_labels
from .ops.topk import rank_descending, reference_topk_similarity as topk_similarity
from .ops._similarity import compute_dtype as _compute_dtype, logits as _logits


def _same_label_mask(bank_labels: Tensor, query_labels: Tensor) -> Tensor:
    """``mask[b, j] = bank_labels[j] == query_labels[b]``; a bank label < 0 never matches."""
    return (bank_labels[None, :] == query_labels[:, None]) & (bank_labels[None, :] >= 0)


def aggregation_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                    tau: float = TAU) -> Tuple[Tensor, Tensor]:
    """The two log-sum-exps of the aggregation loss (paper eq. 1-2).

    ``lse_all[b]  = logsumexp_j s(q_b, bank_j)`` over all N rows,
    ``lse_same[b] = logsumexp_{j: bank_labels[j] == query_labels[b]} s(q_b, bank_j)``
    (``-inf`` when no row carries the label). Shapes: queries [B, D], bank [N, D],
    labels [N] and [B]; returns two [B] tensors.
    """
    logits = _logits(queries, bank, tau)
    mask = _same_label_mask(bank_labels, query_labels)
    bad = ~torch.isfinite(logits)
    lse_all = torch.logsumexp(logits, dim=1)
    lse_same = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), dim=1)
    return (torch.where(bad.any(dim=1), float("nan"), lse_all),
            torch.where((bad & mask).any(dim=1), float("nan"), lse_same))


def aggregation_loss(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     tau: float = TAU) -> Tensor:
    """Aggregation loss ``L_A(v) = -log P(A | v)`` (paper eq. 1-2), per query [B].

    ``loss[b] = lse_all[b] - lse_same[b] >= 0``; ``+inf`` when no bank row carries
    ``query_labels[b]``. Differentiable in ``queries`` only: the bank is a buffer and is
    detached. The gradient of a ``+inf`` entry is defined as zero (the loss is constant
    there), matching every backend.
    """
    bank = bank.detach()
    logits = _logits(queries, bank, tau)
    mask = _same_label_mask(bank_labels, query_labels)
    has_positive = mask.any(dim=1)
    lse_all = torch.logsumexp(logits, dim=1)
    # Rows without positives get a dummy finite value so autograd sees no NaN; torch.where
    # then replaces their loss by +inf and sends them zero gradient.
    safe = torch.where(mask | ~has_positive[:, None], logits, torch.full_like(logits, float("-inf")))
    lse_same = torch.logsumexp(safe, dim=1)
    loss = lse_all - lse_same
    loss = torch.where(has_positive, loss, torch.full_like(loss, float("inf")))
    return torch.where(torch.isfinite(logits).all(dim=1), loss, float("nan"))


def aggregation_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     lse_all: Tensor, lse_same: Tensor, tau: float = TAU,
                     grad_output: Optional[Tensor] = None) -> Tensor:
    """``d(sum_b g_b loss[b]) / dq`` for this bank (or shard), given the global LSEs.

    ``dq_b = g_b / tau * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)`` with
    ``p_bj = exp(s_bj - lse_all[b])`` and ``p'_bj = exp(s_bj - lse_same[b])``. Rows whose
    LSEs are not finite (no positive anywhere) get zero. Returns [B, D].
    """
    g = torch.ones_like(lse_all) if grad_output is None else grad_output
    scale, lse_all, lse_same = backward_inputs(lse_all, lse_same, g, tau)
    return scaled_grad(queries, bank, bank_labels, query_labels, lse_all, lse_same, scale, tau)


def scaled_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                lse_all: Tensor, lse_same: Tensor, scale: Tensor, tau: float) -> Tensor:
    """``dq_b = scale_b * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)`` [B, D], the
    backend form of ``aggregation_grad`` (``scale`` and LSEs from
    ``llp_kernels._aggregation_rules.backward_inputs``); rows with ``scale = 0`` get exactly zero."""
    dtype = _compute_dtype(queries, bank, lse_all)
    logits = _logits(queries, bank, tau)
    mask = _same_label_mask(bank_labels, query_labels)
    scale = scale.to(dtype)[:, None]
    p_all = torch.exp(logits - lse_all.to(dtype)[:, None])
    p_same = torch.where(mask, torch.exp(logits - lse_same.to(dtype)[:, None]), 0.0)
    weights = torch.where(scale != 0, scale * (p_all - p_same), 0.0)
    return weights @ bank.to(dtype)

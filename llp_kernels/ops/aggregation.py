"""The aggregation loss (paper eq. 1-2): ``L_A(v) = -log P(A | v)`` per query, with

    loss[b]     = lse_all[b] - lse_same[b]
    lse_all[b]  = logsumexp_j s(q_b, bank_j)                                 over all N rows
    lse_same[b] = logsumexp_{j: bank_labels[j] == query_labels[b]} s(q_b, bank_j)
    dq_b        = g_b / tau * (sum_j p_bj bank_j - sum_{j same} p'_bj bank_j),
                  p_bj = exp(s_bj - lse_all[b]),  p'_bj = exp(s_bj - lse_same[b])

and ``s(q, k) = q . k / tau``. Three public functions: ``aggregation_loss`` (autograd),
and its two halves for a bank split across processes, ``aggregation_lse`` (the LSEs of
one shard; shards combine with ``torch.logaddexp``) and ``aggregation_grad`` (one
shard's part of dq; shards' parts sum).

Two launchers per backend, each registered to ``LSE`` or ``GRAD`` in its own file:

    reference  reference_aggregation_lse, reference_scaled_grad (below)
    cpu        llp_kernels.backends.cpu.launch_lse, launch_grad        -> csrc/cpu/aggregation_lse.cpp
    cuda       llp_kernels.backends.cuda.launch_lse, launch_grad       -> csrc/cuda/aggregation.cu
    triton     llp_kernels.backends.triton.aggregation.launch_lse, launch_grad

``LSE`` launchers take ``(queries [B, D], bank [N, D], bank_labels [N] int64,
query_labels [B] int64, tau)`` and return ``(lse_all, lse_same)`` [B], or (the GPU
kernels, which split the bank into S slices) ``parts`` [4, S, B]: each slice's running
maximum and sum of exponentials over all rows and over same-label rows, which the op
merges with ``combine_partials``; ``GRAD`` launchers
take those and ``(lse_all, lse_same, scale)`` [B] from ``backward_inputs`` and return
``dq_b = scale_b * (sum_j p_bj bank_j - sum_{j same} p'_bj bank_j)`` [B, D]. A backend
declares ``Limits`` (the largest D) for each.

Host rules, shared by the backends:

``backward_inputs`` is the one place that decides which rows get a gradient: a row whose
query label no bank row carries (``lse_same = -inf``; its loss is the constant ``+inf``)
gets ``scale = 0`` and finite placeholder LSEs, so the backward kernels need no special
case; a row with any other non-finite LSE (a NaN or inf upstream) gets a NaN gradient.
``combine_partials`` merges the per-slice forward partials of the GPU kernels in a fixed
order (deterministic).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as check
from ..defaults import TAU
from ..registry import Call, Op, resolve
from ._similarity import compute_dtype, logits as _logits

__all__ = ["GRAD", "LSE", "aggregation_grad", "aggregation_loss", "aggregation_lse", "backward_inputs",
           "combine_partials", "reference_aggregation_grad", "reference_aggregation_loss",
           "reference_aggregation_lse", "reference_scaled_grad"]

LSE = Op("aggregation_lse")
GRAD = Op("aggregation_grad")


# ---- the reference: the equations in plain PyTorch ----------------------------------------

def _same_label_mask(bank_labels: Tensor, query_labels: Tensor) -> Tensor:
    """``mask[b, j] = bank_labels[j] == query_labels[b]``; a bank label < 0 never matches."""
    return (bank_labels[None, :] == query_labels[:, None]) & (bank_labels[None, :] >= 0)


def reference_aggregation_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
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


def reference_aggregation_loss(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
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


def reference_aggregation_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     lse_all: Tensor, lse_same: Tensor, tau: float = TAU,
                     grad_output: Optional[Tensor] = None) -> Tensor:
    """``d(sum_b g_b loss[b]) / dq`` for this bank (or shard), given the global LSEs.

    ``dq_b = g_b / tau * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)`` with
    ``p_bj = exp(s_bj - lse_all[b])`` and ``p'_bj = exp(s_bj - lse_same[b])``. Rows whose
    LSEs are not finite (no positive anywhere) get zero. Returns [B, D].
    """
    g = torch.ones_like(lse_all) if grad_output is None else grad_output
    scale, lse_all, lse_same = backward_inputs(lse_all, lse_same, g, tau)
    return reference_scaled_grad(queries, bank, bank_labels, query_labels, lse_all, lse_same, scale, tau)


def reference_scaled_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                lse_all: Tensor, lse_same: Tensor, scale: Tensor, tau: float) -> Tensor:
    """``dq_b = scale_b * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)`` [B, D], the
    backend form of ``aggregation_grad`` (``scale`` and LSEs from
    ``backward_inputs``); rows with ``scale = 0`` get exactly zero."""
    dtype = compute_dtype(queries, bank, lse_all)
    logits = _logits(queries, bank, tau)
    mask = _same_label_mask(bank_labels, query_labels)
    scale = scale.to(dtype)[:, None]
    p_all = torch.exp(logits - lse_all.to(dtype)[:, None])
    p_same = torch.where(mask, torch.exp(logits - lse_same.to(dtype)[:, None]), 0.0)
    weights = torch.where(scale != 0, scale * (p_all - p_same), 0.0)
    return weights @ bank.to(dtype)


# ---- host rules -------------------------------------------------------------------------

def combine_partials(parts: Tensor) -> Tuple[Tensor, Tensor]:
    """parts [4, S, B] = per-slice (max, sum) of all rows and of same-label rows ->
    (lse_all, lse_same) [B], combined in a fixed order (deterministic)."""
    m_all, s_all, m_same, s_same = parts
    return (torch.logsumexp(m_all + torch.log(s_all), dim=0),
            torch.logsumexp(m_same + torch.log(s_same), dim=0))


def backward_inputs(lse_all: Tensor, lse_same: Tensor, grad_output: Tensor,
                    tau: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(scale = g/tau, lse_all, lse_same) as contiguous [B] in the LSEs' float dtype; rows
    without a positive get scale 0, rows with another non-finite LSE scale NaN, and both
    placeholder LSEs 0."""
    dtype = torch.promote_types(lse_all.dtype, torch.float32)
    no_positive = (lse_same == float("-inf")) & ~torch.isnan(lse_all)
    usable = torch.isfinite(lse_same) & torch.isfinite(lse_all)
    scale = torch.where(usable, grad_output.to(dtype) / tau, torch.where(no_positive, 0.0, float("nan")))
    return (scale.contiguous(), torch.where(usable, lse_all.to(dtype), 0.0).contiguous(),
            torch.where(usable, lse_same.to(dtype), 0.0).contiguous())


# ---- the custom ops, the autograd and the public functions ------------------------------

@torch.library.custom_op("llp::aggregation_lse", mutates_args=())
def _aggregation_lse_op(queries: Tensor, bank: Tensor, bank_labels: Tensor,
                        query_labels: Tensor, tau: float, backend: str) -> Tuple[Tensor, Tensor]:
    check.labels_in_range("query_labels", query_labels, 0, None)
    check.labels_in_range("bank_labels", bank_labels, -1, None)
    out = LSE.kernels[backend](queries, bank, bank_labels, query_labels, tau)
    lse_all, lse_same = combine_partials(out) if isinstance(out, Tensor) else out
    return lse_all.float(), lse_same.float()


@_aggregation_lse_op.register_fake
def _(queries, bank, bank_labels, query_labels, tau, backend):
    B = queries.shape[0]
    return queries.new_empty(B, dtype=torch.float32), queries.new_empty(B, dtype=torch.float32)


@torch.library.custom_op("llp::aggregation_grad", mutates_args=())
def _aggregation_grad_op(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                         lse_all: Tensor, lse_same: Tensor, grad_output: Tensor, tau: float,
                         backend: str) -> Tensor:
    check.labels_in_range("query_labels", query_labels, 0, None)
    check.labels_in_range("bank_labels", bank_labels, -1, None)
    scale, lse_all, lse_same = backward_inputs(lse_all, lse_same, grad_output, tau)
    dq = GRAD.kernels[backend](queries, bank, bank_labels, query_labels,
                                              lse_all, lse_same, scale, tau)
    return dq.to(queries.dtype)


@_aggregation_grad_op.register_fake
def _(queries, bank, bank_labels, query_labels, lse_all, lse_same, grad_output, tau, backend):
    return torch.empty_like(queries)


@torch.library.custom_op("llp::aggregation_loss", mutates_args=())
def _aggregation_loss_op(queries: Tensor, bank: Tensor, bank_labels: Tensor,
                         query_labels: Tensor, tau: float,
                         backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    lse_all, lse_same = _aggregation_lse_op(queries, bank, bank_labels, query_labels, tau, backend)
    return lse_all - lse_same, lse_all, lse_same


@_aggregation_loss_op.register_fake
def _(queries, bank, bank_labels, query_labels, tau, backend):
    B = queries.shape[0]
    return tuple(queries.new_empty(B, dtype=torch.float32) for _ in range(3))


def _loss_setup_context(ctx, inputs, output):
    queries, bank, bank_labels, query_labels, tau, backend = inputs
    _, lse_all, lse_same = output
    ctx.save_for_backward(queries, bank, bank_labels, query_labels, lse_all, lse_same)
    ctx.tau, ctx.backend = tau, backend


def _loss_backward(ctx, grad_loss, grad_lse_all, grad_lse_same):
    queries, bank, bank_labels, query_labels, lse_all, lse_same = ctx.saved_tensors
    dq = None
    if ctx.needs_input_grad[0]:
        dq = _aggregation_grad_op(queries, bank, bank_labels, query_labels, lse_all, lse_same,
                                  grad_loss.contiguous(), ctx.tau, ctx.backend)
    # The bank is a buffer: it never receives a gradient.
    return dq, None, None, None, None, None


torch.library.register_autograd("llp::aggregation_loss", _loss_backward,
                                setup_context=_loss_setup_context)


def _check_inputs(queries, bank, bank_labels, query_labels, tau):
    check.embeddings("queries", queries)
    check.embeddings("bank", bank, queries.shape[1], "queries")
    check.labels("bank_labels", bank_labels, bank.shape[0], "bank")
    check.labels("query_labels", query_labels, queries.shape[0], "queries")
    device = check.same_device(queries=queries, bank=bank, bank_labels=bank_labels,
                               query_labels=query_labels)
    tau = check.temperature("tau", tau)
    return (queries.contiguous(), bank.contiguous(), bank_labels.long().contiguous(),
            query_labels.long().contiguous(), tau, device)


def aggregation_loss(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     tau: float = TAU, *, backend: str = "auto") -> Tensor:
    """Aggregation loss ``L_A = -log P(A|v)`` per query (paper eq. 1-2), differentiable.

    ``loss[b] = logsumexp_j s_bj - logsumexp_{j: bank_labels[j] == query_labels[b]} s_bj``
    with ``s_bj = queries[b] . bank[j] / tau``, computed in one streaming pass (no
    ``B x N`` logits). Args: queries [B, D] (float32/bf16/fp16), bank [N, D]
    (float32/bf16/fp16, a buffer: it gets no gradient), bank_labels [N] int (>= 0, or -1
    for no label yet), query_labels [B] int (>= 0). Returns fp32 [B]. A query whose label no bank
    row carries gets ``+inf`` and zero gradient. The gradient w.r.t. queries has their dtype.
    """
    queries, bank, bank_labels, query_labels, tau, device = _check_inputs(
        queries, bank, bank_labels, query_labels, tau)
    name = resolve((LSE, GRAD), backend, Call(device, dim=queries.shape[1], dtype=bank.dtype))
    loss, _, _ = torch.ops.llp.aggregation_loss(queries, bank.detach(), bank_labels,
                                                query_labels, tau, name)
    return loss


def aggregation_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                    tau: float = TAU, *, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """``(lse_all, lse_same)`` [B] fp32 for this bank or bank shard.

    Shards combine with ``torch.logaddexp`` across ranks; the loss is
    ``lse_all - lse_same`` of the combined values. No autograd (see ``aggregation_grad``).
    """
    queries, bank, bank_labels, query_labels, tau, device = _check_inputs(
        queries, bank, bank_labels, query_labels, tau)
    name = resolve((LSE,), backend, Call(device, dim=queries.shape[1], dtype=bank.dtype))
    return torch.ops.llp.aggregation_lse(queries.detach(), bank.detach(), bank_labels,
                                         query_labels, tau, name)


def aggregation_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     lse_all: Tensor, lse_same: Tensor, tau: float = TAU,
                     grad_output: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """This bank (shard)'s part of ``d(sum_b g_b loss[b]) / d queries`` [B, D], given the
    global ``lse_all``/``lse_same`` [B]; ``grad_output`` g [B] defaults to ones. Shards'
    results sum. ``dq_b = g_b/tau * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)``.
    """
    queries, bank, bank_labels, query_labels, tau, device = _check_inputs(
        queries, bank, bank_labels, query_labels, tau)
    B = queries.shape[0]
    for arg, t in (("lse_all", lse_all), ("lse_same", lse_same)):
        check.bias(arg, t, B, "queries")
    if grad_output is None:
        grad_output = torch.ones(B, dtype=torch.float32, device=device)
    check.bias("grad_output", grad_output, B, "queries")
    check.same_device(queries=queries, lse_all=lse_all, lse_same=lse_same, grad_output=grad_output)
    name = resolve((GRAD,), backend, Call(device, dim=queries.shape[1], dtype=bank.dtype))
    return torch.ops.llp.aggregation_grad(
        queries.detach(), bank.detach(), bank_labels, query_labels, lse_all.float().contiguous(),
        lse_same.float().contiguous(), grad_output.float().contiguous(), tau, name)

"""The ops not yet moved into their own modules under ``ops/``: their handles
(``registry.Op``), validation, ``torch.library`` custom ops and autograd.

Each public function checks its arguments' metadata (free, and traceable by
``torch.compile``), resolves ``backend`` to a concrete name (``registry.resolve``), and
calls a custom op ``torch.ops.llp.*``. The op's real implementation checks label/index
values (a pass over small integer vectors, never over the bank) and calls the launcher
that backend registered, ``OP.kernels[backend]``. Its fake implementation gives shapes
to ``torch.compile``.

The backend travels as a string argument of each op: several backends serve one device
type, and the caller may name one, so torch's per-device kernel registration cannot make
the choice; resolved before the op, it is a constant that ``torch.compile`` traces.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _validate as check
from .registry import Call, Op, resolve
from ._aggregation_rules import backward_inputs
from .defaults import TAU

__all__ = ["aggregation_grad", "aggregation_loss", "aggregation_lse"]


AGGREGATION_LSE = Op("aggregation_lse")
AGGREGATION_GRAD = Op("aggregation_grad")


# ---- custom ops ------------------------------------------------------------------------

@torch.library.custom_op("llp::aggregation_lse", mutates_args=())
def _aggregation_lse_op(queries: Tensor, bank: Tensor, bank_labels: Tensor,
                        query_labels: Tensor, tau: float, backend: str) -> Tuple[Tensor, Tensor]:
    check.labels_in_range("query_labels", query_labels, 0, None)
    check.labels_in_range("bank_labels", bank_labels, -1, None)
    lse_all, lse_same = AGGREGATION_LSE.kernels[backend](queries, bank, bank_labels,
                                                            query_labels, tau)
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
    dq = AGGREGATION_GRAD.kernels[backend](queries, bank, bank_labels, query_labels,
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


# ---- public API --------------------------------------------------------------------------

def _call(device: torch.device, queries: Tensor, keys: Tensor, k: Optional[int] = None) -> Call:
    return Call(device, dim=queries.shape[1], k=k, dtype=keys.dtype)


def _check_aggregation_inputs(queries, bank, bank_labels, query_labels, tau):
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
    queries, bank, bank_labels, query_labels, tau, device = _check_aggregation_inputs(
        queries, bank, bank_labels, query_labels, tau)
    name = resolve((AGGREGATION_LSE, AGGREGATION_GRAD), backend, _call(device, queries, bank))
    loss, _, _ = torch.ops.llp.aggregation_loss(queries, bank.detach(), bank_labels,
                                                query_labels, tau, name)
    return loss


def aggregation_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                    tau: float = TAU, *, backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """``(lse_all, lse_same)`` [B] fp32 for this bank or bank shard.

    Shards combine with ``torch.logaddexp`` across ranks; the loss is
    ``lse_all - lse_same`` of the combined values. No autograd (see ``aggregation_grad``).
    """
    queries, bank, bank_labels, query_labels, tau, device = _check_aggregation_inputs(
        queries, bank, bank_labels, query_labels, tau)
    name = resolve((AGGREGATION_LSE,), backend, _call(device, queries, bank))
    return torch.ops.llp.aggregation_lse(queries.detach(), bank.detach(), bank_labels,
                                         query_labels, tau, name)


def aggregation_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     lse_all: Tensor, lse_same: Tensor, tau: float = TAU,
                     grad_output: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """This bank (shard)'s part of ``d(sum_b g_b loss[b]) / d queries`` [B, D], given the
    global ``lse_all``/``lse_same`` [B]; ``grad_output`` g [B] defaults to ones. Shards'
    results sum. ``dq_b = g_b/tau * (sum_j p_bj bank_j - sum_{j in A_b} p'_bj bank_j)``.
    """
    queries, bank, bank_labels, query_labels, tau, device = _check_aggregation_inputs(
        queries, bank, bank_labels, query_labels, tau)
    B = queries.shape[0]
    for arg, t in (("lse_all", lse_all), ("lse_same", lse_same)):
        check.bias(arg, t, B, "queries")
    if grad_output is None:
        grad_output = torch.ones(B, dtype=torch.float32, device=device)
    check.bias("grad_output", grad_output, B, "queries")
    check.same_device(queries=queries, lse_all=lse_all, lse_same=lse_same, grad_output=grad_output)
    name = resolve((AGGREGATION_GRAD,), backend, _call(device, queries, bank))
    return torch.ops.llp.aggregation_grad(
        queries.detach(), bank.detach(), bank_labels, query_labels, lse_all.float().contiguous(),
        lse_same.float().contiguous(), grad_output.float().contiguous(), tau, name)

"""``update_memory_bank_``: the memory bank's running average (Wu et al. 2018), in place,

    bank[i] = normalize(m * bank[i] + (1 - m) * v)      for each (i, v) of (indices, embeddings)

mixed in fp32 and stored in the bank's dtype, with ``normalize`` = ``normalize_rows``.

Launchers, one per backend, each registered to ``BANK_UPDATE`` in its own file:

    reference  reference_update_memory_bank_ (below)
    cpu        llp_kernels.backends.cpu.launch_bank_update    -> csrc/cpu/bank_update.cpp
    cuda       llp_kernels.backends.cuda.launch_bank_update   -> csrc/cuda/bank_update.cu
    triton     llp_kernels.backends.triton.bank_update.launch_bank_update

A launcher takes ``(bank [N, D], rows [B] int64, embeddings [B, D], momentum)`` and
returns nothing. The duplicate rule is the host's (``last_occurrence_mask``): of the
rows that name one bank row, the last wins and the others arrive as -1, which launchers
skip, so no two programs write one row and no shape depends on the data. A backend
declares ``Limits`` (the largest D).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as check
from ..defaults import BANK_MOMENTUM
from ..registry import Call, Op, resolve
from ._similarity import compute_dtype
from .normalize import normalize_rows

__all__ = ["BANK_UPDATE", "last_occurrence_mask", "reference_update_memory_bank_", "update_memory_bank_"]

BANK_UPDATE = Op("update_memory_bank_")


def last_occurrence_mask(indices: Tensor) -> Tensor:
    """bool [B]: whether ``indices[b]`` is the last occurrence of its value. This is the
    duplicate rule of the bank update: the last one wins."""
    sorted_idx, order = torch.sort(indices, stable=True)
    is_last = torch.ones_like(sorted_idx, dtype=torch.bool)
    is_last[:-1] = sorted_idx[1:] != sorted_idx[:-1]
    return torch.zeros_like(is_last).scatter_(0, order, is_last)


def reference_update_memory_bank_(bank: Tensor, indices: Tensor, embeddings: Tensor,
                                  momentum: float = BANK_MOMENTUM) -> Tensor:
    """Memory-bank update (Wu et al. 2018), in place, returns ``bank``.

    ``bank[i] = normalize(m * bank[i] + (1 - m) * v)`` for each ``(i, v)`` of
    ``(indices, embeddings)``, mixing in fp32 and storing in the bank's dtype.
    ``normalize`` is ``normalize_rows``: every finite mix becomes a unit row, however large
    or small, an all-zero mix stays zero, and a row whose mix is not finite becomes all
    NaN. When an index repeats within the call, the last occurrence wins: the row is
    mixed once, from its old value. Indices of -1 are skipped (as by every launcher).
    """
    keep = last_occurrence_mask(indices) & (indices >= 0)
    rows = indices[keep].long()
    dtype = compute_dtype(bank, embeddings)
    mixed = momentum * bank[rows].to(dtype) + (1.0 - momentum) * embeddings[keep].to(dtype)
    bank[rows] = normalize_rows(mixed).to(bank.dtype)
    return bank


@torch.library.custom_op("llp::update_memory_bank_", mutates_args=("bank",))
def _update_bank_op(bank: Tensor, indices: Tensor, embeddings: Tensor, momentum: float,
                    backend: str) -> None:
    check.labels_in_range("indices", indices, 0, bank.shape[0])
    rows = torch.where(last_occurrence_mask(indices), indices, -1).contiguous()
    BANK_UPDATE.kernels[backend](bank, rows, embeddings, momentum)


@_update_bank_op.register_fake
def _(bank, indices, embeddings, momentum, backend):
    return None


def _overlaps(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` and ``b`` share any bytes of memory (a view of the other, say)."""
    if a.device != b.device or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    def span(t):
        start = t.data_ptr()
        extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
        return start, start + (extent + 1) * t.element_size()
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def update_memory_bank_(bank: Tensor, indices: Tensor, embeddings: Tensor,
                        momentum: float = BANK_MOMENTUM, *, backend: str = "auto") -> Tensor:
    """In place: ``bank[i] = normalize(m * bank[i] + (1 - m) * v)`` (Wu et al. 2018).

    bank [N, D] contiguous float32/bf16/fp16, indices [B] int in [0, N), embeddings [B, D]
    float32/bf16/fp16, momentum m in [0, 1]. Mixes in fp32, stores in the bank's dtype.
    Duplicate indices: the last occurrence wins (the row is mixed once, from its old
    value). Returns ``bank``.
    """
    check.embeddings("bank", bank)
    if bank.requires_grad:
        raise ValueError("bank must not require grad: it is updated in place, which autograd cannot "
                         "follow (keep the bank a buffer, or pass bank.detach(), which shares its memory)")
    if not bank.is_contiguous():
        raise ValueError("bank must be contiguous: it is updated in place, so it cannot be "
                         "copied (call .contiguous() once when creating it)")
    check.labels("indices", indices, None, "embeddings")
    check.embeddings("embeddings", embeddings, bank.shape[1], "bank")
    if embeddings.shape[0] != indices.shape[0]:
        raise ValueError(f"indices must have one entry per row of embeddings "
                         f"({embeddings.shape[0]}), got {indices.shape[0]}")
    if _overlaps(embeddings, bank):
        embeddings = embeddings.clone()  # every row must mix with the bank's old values
    device = check.same_device(bank=bank, indices=indices, embeddings=embeddings)
    momentum = check.unit_interval("momentum", momentum)
    name = resolve((BANK_UPDATE,), backend, Call(device, dim=embeddings.shape[1], dtype=bank.dtype))
    with torch.no_grad():
        torch.ops.llp.update_memory_bank_(bank, indices.long().contiguous(),
                                          embeddings.detach().contiguous(), momentum, name)
    return bank

"""The aggregation loss's host-side rules, shared by its backends: how the forward's
per-slice partial log-sum-exps merge, and which rows the backward gives a gradient.

``backward_inputs`` is the one place that decides which rows get a gradient: a row whose
query label no bank row carries (``lse_same = -inf``; its loss is the constant ``+inf``)
gets ``scale = 0`` and finite placeholder LSEs, so the backward kernels need no special
case; a row with any other non-finite LSE (a NaN or inf upstream) gets a NaN gradient.
``combine_partials`` merges per-slice forward partials of the GPU kernels that split the
bank into S slices.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


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

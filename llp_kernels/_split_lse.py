"""Host side shared by the GPU aggregation kernels (Triton and CUDA) that split the bank
into S slices: combining per-slice forward partials, and preparing the backward inputs.
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
    """(scale = g/tau, lse_all, lse_same) as contiguous fp32 [B]; rows whose LSEs are not
    finite (a label no bank row carries) get scale 0 and finite placeholder LSEs, so the
    kernels give them zero gradient without special cases."""
    usable = torch.isfinite(lse_same) & torch.isfinite(lse_all)
    scale = torch.where(usable, grad_output.float() / tau, 0.0).contiguous()
    return (scale, torch.where(usable, lse_all.float(), 0.0).contiguous(),
            torch.where(usable, lse_same.float(), 0.0).contiguous())

"""The similarity every equation of the method starts from, materialised for the
reference implementations: ``s(q, k) = q . k / tau`` between rows (unit rows, in the
method). Computation runs in fp32, or fp64 when an input is fp64 (the tests' high
precision oracle)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    """fp64 when any of ``tensors`` is fp64, else fp32."""
    dtype = torch.float32
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            dtype = torch.float64
    return dtype


def logits(queries: Tensor, keys: Tensor, tau: float) -> Tensor:
    """``s[b, j] = q_b . key_j / tau``, shape [B, N], in the compute dtype."""
    dtype = compute_dtype(queries, keys)
    return queries.to(dtype) @ keys.to(dtype).T / tau

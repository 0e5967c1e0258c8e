"""The ``reference`` backend: each op's plain PyTorch oracle run as its kernel.

It materialises every ``[rows x N]`` similarity matrix, so it is the slowest backend and
``auto``'s last resort, and the one that runs wherever PyTorch does.
"""
from __future__ import annotations

from ..ops.aggregation import GRAD, LSE, reference_aggregation_lse, reference_scaled_grad
from ..ops.bank_update import BANK_UPDATE, reference_update_memory_bank_
from ..ops.topk import TOPK, reference_topk_similarity
from ..registry import Backend, register_backend, register_kernel

register_backend(Backend(
    name="reference",
    summary="plain PyTorch, materialising (the oracle)",
    devices=("cpu", "cuda"),
    auto_devices=("cpu", "cuda"),
    auto_priority=100,  # the fallback: every other backend is tried first
))

register_kernel(LSE, "reference")(reference_aggregation_lse)
register_kernel(GRAD, "reference")(reference_scaled_grad)
register_kernel(TOPK, "reference")(reference_topk_similarity)
register_kernel(BANK_UPDATE, "reference")(reference_update_memory_bank_)

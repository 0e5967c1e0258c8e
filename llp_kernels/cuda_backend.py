"""The ``cuda`` backend: hand-written CUDA kernels from ``csrc/cuda`` via ``llp_kernels._C``.

So far it holds the memory-bank update; the aggregation loss and the streaming top-k
are their own work item. ``IMPLEMENTED`` lists what exists, and the dispatcher never
routes an op here that is not in it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._extension import dtype_code, extension, ptr

IMPLEMENTED = frozenset({"update_memory_bank_"})


def update_memory_bank_(bank: Tensor, indices: Tensor, embeddings: Tensor,
                        momentum: float) -> None:
    """``indices`` unique and in range (the ops layer deduplicates and checks)."""
    stream = torch.cuda.current_stream(bank.device).cuda_stream
    extension().cuda_bank_update(ptr(bank), dtype_code(bank, "bank"), bank.shape[0],
                                 bank.shape[1], ptr(indices), ptr(embeddings),
                                 dtype_code(embeddings, "embeddings"), indices.shape[0],
                                 momentum, bank.device.index, stream)

"""The ``cuda`` backend: hand-written CUDA kernels from ``csrc/cuda`` via ``llp_kernels._C``.

It holds the memory-bank update, the aggregation loss (tensor-core WMMA similarity
tiles; forward partials per bank slice combined here in a fixed order, so results are
deterministic) and the streaming top-k behind ``local_density`` and ``propagate_labels``.
Limits: D <= 256, k <= 256, compute capability 8.0+ (each a clear error). ``backend="auto"``
keeps preferring Triton on CUDA until a table measured on a GPU says otherwise.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._extension import dtype_code, extension, ptr
from ._packed_topk import finish, kept_size
from ._split_lse import backward_inputs, combine_partials

IMPLEMENTED = frozenset({"update_memory_bank_", "aggregation_lse", "aggregation_grad",
                         "topk_similarity"})
MAX_DIM = 256
MAX_K = 256


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _exact_fp32(bank: Tensor) -> bool:
    """fp32 products on tensor cores as TF32 only when torch allows TF32 matmuls;
    otherwise as 3xTF32 (hi/lo split), which keeps fp32 accuracy."""
    return bank.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


def _check_dim(D: int) -> None:
    if D > MAX_DIM:
        raise ValueError(f"backend='cuda' computes the aggregation loss for D <= {MAX_DIM}, got D={D}; "
                         f"use backend='triton'")


def aggregation_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                    tau: float) -> Tuple[Tensor, Tensor]:
    B, D = queries.shape
    N = bank.shape[0]
    _check_dim(D)
    C = extension()
    device = bank.device.index
    splits, n_per_split, _, _ = C.cuda_aggregation_plan(B, N, D, dtype_code(bank, "bank"), False, device)
    q = queries.to(bank.dtype).contiguous()
    parts = torch.empty(4, splits, B, dtype=torch.float32, device=bank.device)
    C.cuda_aggregation_forward(ptr(q), ptr(bank), dtype_code(bank, "bank"), ptr(bank_labels),
                               ptr(query_labels), ptr(parts), B, N, D, splits, n_per_split,
                               1.0 / tau, _exact_fp32(bank), device, _stream(bank))
    return combine_partials(parts)


def aggregation_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                     lse_all: Tensor, lse_same: Tensor, grad_output: Tensor, tau: float) -> Tensor:
    B, D = queries.shape
    N = bank.shape[0]
    _check_dim(D)
    C = extension()
    device = bank.device.index
    splits, n_per_split, rows_padded, dim_padded = C.cuda_aggregation_plan(
        B, N, D, dtype_code(bank, "bank"), True, device)
    q = queries.to(bank.dtype).contiguous()
    coef, lse_all, lse_same = backward_inputs(lse_all, lse_same, grad_output, tau)
    parts = torch.empty(splits, rows_padded, dim_padded, dtype=torch.float32, device=bank.device)
    C.cuda_aggregation_backward(ptr(q), ptr(bank), dtype_code(bank, "bank"), ptr(bank_labels),
                                ptr(query_labels), ptr(lse_all), ptr(lse_same), ptr(coef), ptr(parts),
                                B, N, D, splits, n_per_split, 1.0 / tau, _exact_fp32(bank), device,
                                _stream(bank))
    return parts.sum(dim=0)[:B, :D]


def update_memory_bank_(bank: Tensor, indices: Tensor, embeddings: Tensor,
                        momentum: float) -> None:
    """``indices`` unique and in range (the ops layer deduplicates and checks)."""
    extension().cuda_bank_update(ptr(bank), dtype_code(bank, "bank"), bank.shape[0],
                                 bank.shape[1], ptr(indices), ptr(embeddings),
                                 dtype_code(embeddings, "embeddings"), indices.shape[0],
                                 momentum, bank.device.index, _stream(bank))


def topk_similarity(queries: Tensor, keys: Tensor, k: int, tau: float,
                    key_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Fused WMMA similarity tiles + threshold filter + warp bitonic merges (csrc/cuda/topk.cu).
    k <= MAX_K; 16-bit keys keep up to RESCORE_MARGIN extra candidates (fewer when
    k + margin would pass MAX_K) that are re-scored in fp32 on the host."""
    Q, D = queries.shape
    N = keys.shape[0]
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the cuda backend's limit of {MAX_K}; use backend='triton' "
                         f"(k <= 1024) or 'cpu'/'reference'")
    if D > MAX_DIM:
        raise ValueError(f"backend='cuda' computes top-k for D <= {MAX_DIM}, got D={D}; use backend='triton'")
    rescore = keys.dtype != torch.float32
    kp = min(kept_size(k, N, keys.dtype, smallest=32), MAX_K)
    C = extension()
    device = keys.device.index
    code = dtype_code(keys, "keys")
    splits, n_per_split = C.cuda_topk_plan(Q, N, kp, code, device)
    q = queries.to(keys.dtype).contiguous()
    candidates = torch.empty(splits, Q, kp, dtype=torch.int64, device=keys.device)
    C.cuda_topk(ptr(q), ptr(keys), code, 0 if key_bias is None else ptr(key_bias), ptr(candidates),
                Q, N, D, kp, splits, n_per_split, 1.0 / tau, _exact_fp32(keys), device, _stream(keys))
    return finish(candidates, queries, keys, k, tau, key_bias, rescore)

"""The ``cuda`` backend: hand-written CUDA kernels from ``csrc/cuda`` via ``llp_kernels._C``.

It holds the memory-bank update, the aggregation loss (tensor-core mma.sync similarity
tiles; forward partials per bank slice combined here in a fixed order, so results are
deterministic) and the streaming top-k behind ``local_density`` and ``propagate_labels``.
Limits (read from the compiled module): D <= ``_C.cuda_max_dim``, a kept list of at most
``_C.cuda_max_kept`` keys per query, compute capability 8.0+. The kernels have not yet
run on a GPU, so ``backend="auto"`` never picks them: ask for ``backend="cuda"``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._extension import cuda_compiled, cuda_device_status, dtype_code, extension, extension_error, ptr
from ..ops.aggregation import GRAD, LSE
from ..ops.bank_update import BANK_UPDATE
from ..ops.topk import TOPK, TopkLimits, kept_size
from ..registry import Backend, Call, Limits, register_backend, register_kernel
from . import fp32_as_tf32

MIN_CAPABILITY = (8, 0)


def _environment() -> str:
    if extension_error() is not None:
        return f"the compiled extension is unavailable ({extension_error()})"
    if not cuda_compiled():
        return "the CUDA kernels were not compiled (no nvcc at build time)"
    count, why = cuda_device_status()
    if count < 1:
        return f"compiled for sm_{extension().cuda_archs} but no CUDA device is usable ({why or 'none found'})"
    return ""


def _device_check(device: torch.device) -> str:
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"it needs compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}+, "
                f"{device} has {capability[0]}.{capability[1]}")
    return ""


def _limit(name: str) -> Optional[int]:
    return getattr(extension(), name, None) if cuda_compiled() else None


def _max_k(call: Call) -> Optional[int]:
    return _limit("cuda_max_kept")


register_backend(Backend(
    name="cuda",
    summary="hand-written CUDA kernels (ldmatrix + mma.sync tensor-core tiles, cp.async double buffering, warp-level top-k)",
    devices=("cuda",),
    environment=_environment,
    device_check=_device_check,
    auto_devices=(),  # opt-in until the GPU check has passed on a GPU
    rounds_queries_to_bank_dtype=True,
    details=lambda: f"compiled for sm_{extension().cuda_archs}, {cuda_device_status()[0]} device(s)",
))
LIMITS = Limits(max_dim=_limit("cuda_max_dim"))
TOPK_LIMITS = TopkLimits(max_dim=_limit("cuda_max_dim"), max_k=_max_k)


def _stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _exact_fp32(bank: Tensor) -> bool:
    """fp32 products on tensor cores as TF32 when torch's float32 matmul precision allows
    it; at 'highest' as 3xTF32 (hi/lo split), which keeps fp32 accuracy."""
    return bank.dtype == torch.float32 and not fp32_as_tf32()


@register_kernel(LSE, "cuda", limits=LIMITS)
def launch_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
               tau: float) -> Tensor:
    """parts [4, S, B]: per slice of the bank, the running (max, sum) of all rows and of
    same-label rows (``ops.aggregation.combine_partials`` merges them)."""
    B, D = queries.shape
    N = bank.shape[0]
    C = extension()
    device = bank.device.index
    splits, n_per_split, _, _ = C.cuda_aggregation_plan(B, N, D, dtype_code(bank, "bank"), False, device)
    q = queries.to(bank.dtype).contiguous()
    parts = torch.empty(4, splits, B, dtype=torch.float32, device=bank.device)
    C.cuda_aggregation_forward(ptr(q), ptr(bank), dtype_code(bank, "bank"), ptr(bank_labels),
                               ptr(query_labels), ptr(parts), B, N, D, splits, n_per_split,
                               1.0 / tau, _exact_fp32(bank), device, _stream(bank))
    return parts


@register_kernel(GRAD, "cuda", limits=LIMITS)
def launch_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                lse_all: Tensor, lse_same: Tensor, scale: Tensor, tau: float) -> Tensor:
    B, D = queries.shape
    N = bank.shape[0]
    C = extension()
    device = bank.device.index
    splits, n_per_split, rows_padded, dim_padded = C.cuda_aggregation_plan(
        B, N, D, dtype_code(bank, "bank"), True, device)
    q = queries.to(bank.dtype).contiguous()
    parts = torch.empty(splits, rows_padded, dim_padded, dtype=torch.float32, device=bank.device)
    C.cuda_aggregation_backward(ptr(q), ptr(bank), dtype_code(bank, "bank"), ptr(bank_labels),
                                ptr(query_labels), ptr(lse_all), ptr(lse_same), ptr(scale), ptr(parts),
                                B, N, D, splits, n_per_split, 1.0 / tau, _exact_fp32(bank), device,
                                _stream(bank))
    return parts.sum(dim=0)[:B, :D]


@register_kernel(BANK_UPDATE, "cuda", limits=LIMITS)
def launch_bank_update(bank: Tensor, indices: Tensor, embeddings: Tensor,
                       momentum: float) -> None:
    extension().cuda_bank_update(ptr(bank), dtype_code(bank, "bank"), bank.shape[0],
                                 bank.shape[1], ptr(indices), ptr(embeddings),
                                 dtype_code(embeddings, "embeddings"), indices.shape[0],
                                 momentum, bank.device.index, _stream(bank))


@register_kernel(TOPK, "cuda", limits=TOPK_LIMITS)
def launch_topk(queries: Tensor, keys: Tensor, k: int, tau: float,
                key_bias: Optional[Tensor]) -> Tensor:
    """Fused mma.sync similarity tiles + threshold filter + warp bitonic merges (csrc/cuda/topk.cu)
    -> packed candidates [S, Q, KP] (``ops.topk.run_topk`` merges them). 16-bit keys keep
    up to RESCORE_MARGIN extra candidates (fewer when k + margin would pass the kept-list
    limit), which the merge re-scores in fp32."""
    Q, D = queries.shape
    N = keys.shape[0]
    C = extension()
    kp = min(kept_size(k, N, keys.dtype, smallest=32), _limit("cuda_max_kept"))
    device = keys.device.index
    code = dtype_code(keys, "keys")
    splits, n_per_split = C.cuda_topk_plan(Q, N, kp, code, device)
    q = queries.to(keys.dtype).contiguous()
    candidates = torch.empty(splits, Q, kp, dtype=torch.int64, device=keys.device)
    C.cuda_topk(ptr(q), ptr(keys), code, 0 if key_bias is None else ptr(key_bias), ptr(candidates),
                Q, N, D, kp, splits, n_per_split, 1.0 / tau, _exact_fp32(keys), device, _stream(keys))
    return candidates

"""The ``cpu`` backend: C++ kernels (``csrc/cpu``) on a thread pool.

Top-k (so local density and propagation too), where the CPU has AVX-512 or AVX2 + FMA:
one fused kernel computes the dot products in registers over packed key panels and
filters each finished tile against the rows' k-th best (``csrc/cpu/topk_fused.cpp``;
``topk_kernel`` says which runs). Everything else, and top-k without those instructions
or for a few query rows: each op walks the keys (bank rows) in column tiles;
``torch.mm`` writes one tile of raw dot products ``[rows, cols]`` into a single reused
fp32 buffer (bounded to ``TILE_ELEMENTS`` floats, ~4 MiB), and a kernel of
``llp_kernels._C`` folds it into per-row state: the dual online log-sum-exp, the backward
weights, or a top-k heap. Nothing ``B x N`` is ever allocated; bf16/fp16 banks are
widened one tile (or one packed key block) at a time.

Each launcher is registered to its op (``register_kernel``) and receives its inputs
validated and contiguous, labels as int64.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._extension import dtype_code, extension, extension_error, ptr
from ..ops.aggregation import GRAD, LSE
from ..ops.bank_update import BANK_UPDATE
from ..ops.topk import TOPK
from ..registry import Backend, register_backend, register_kernel


def _environment() -> str:
    error = extension_error()
    return "" if error is None else f"the compiled extension is unavailable ({error})"


register_backend(Backend(
    name="cpu",
    summary="compiled C++ kernels: register-blocked top-k, BLAS similarity tiles for the rest",
    devices=("cpu",),
    environment=_environment,
    auto_devices=("cpu",),
    auto_priority=0,
    details=lambda: _details(),
))


def _details() -> str:
    try:
        kernel = topk_kernel()
    except (ValueError, RuntimeError) as exc:
        kernel = f"unusable ({exc})"
    return f"{torch.get_num_threads()} threads, top-k kernel {kernel}"

TILE_ELEMENTS = 1 << 20
MIN_TILE_COLS = 256
TOPK_ROW_BLOCK = 1024


def _threads() -> int:
    return torch.get_num_threads()


def _tile_cols(rows: int, n: int) -> int:
    cols = max(MIN_TILE_COLS, TILE_ELEMENTS // max(rows, 1))
    return min(n, cols)


def _fp32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def _tiles(keys: Tensor, cols: int):
    """Yields (lo, hi, keys[lo:hi] as fp32)."""
    n = keys.shape[0]
    for lo in range(0, n, cols):
        hi = min(n, lo + cols)
        yield lo, hi, _fp32(keys[lo:hi])


def _dots(queries32: Tensor, key_tile32: Tensor, buffer: Tensor) -> Tensor:
    """Raw dot products of a tile into the front of ``buffer``, as a [rows, cols] view."""
    rows, cols = queries32.shape[0], key_tile32.shape[0]
    out = buffer[: rows * cols].view(rows, cols)
    torch.mm(queries32, key_tile32.T, out=out)
    return out


@register_kernel(LSE, "cpu")
def launch_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
               tau: float) -> Tuple[Tensor, Tensor]:
    C = extension()
    q = _fp32(queries)
    B, N = q.shape[0], bank.shape[0]
    cols = _tile_cols(B, N)
    buffer = torch.empty(B * cols, dtype=torch.float32)
    m_all = torch.full((B,), float("-inf"))
    s_all = torch.zeros(B)
    m_same = torch.full((B,), float("-inf"))
    s_same = torch.zeros(B)
    for lo, hi, tile in _tiles(bank, cols):
        dots = _dots(q, tile, buffer)
        C.cpu_lse_tile_update(ptr(dots), B, hi - lo, hi - lo, ptr(bank_labels) + 8 * lo,
                              ptr(query_labels), 1.0 / tau, ptr(m_all), ptr(s_all),
                              ptr(m_same), ptr(s_same), _threads())
    return m_all + torch.log(s_all), m_same + torch.log(s_same)


@register_kernel(GRAD, "cpu")
def launch_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                lse_all: Tensor, lse_same: Tensor, scale: Tensor, tau: float) -> Tensor:
    C = extension()
    q = _fp32(queries)
    B, N = q.shape[0], bank.shape[0]
    cols = _tile_cols(B, N)
    buffer = torch.empty(B * cols, dtype=torch.float32)
    dq = torch.zeros_like(q)
    for lo, hi, tile in _tiles(bank, cols):
        weights = _dots(q, tile, buffer)
        C.cpu_lse_grad_tile(ptr(weights), B, hi - lo, hi - lo, ptr(bank_labels) + 8 * lo,
                            ptr(query_labels), 1.0 / tau, ptr(lse_all), ptr(lse_same),
                            ptr(scale), _threads())
        dq.addmm_(weights, tile)
    return dq


TOPK_KERNELS = {"avx512": 2, "avx2": 1, "tiles": 0}
FUSED_ROWS = {"avx512": 14, "avx2": 6}


def topk_kernel(rows: Optional[int] = None) -> str:
    """The top-k kernel of this CPU: ``avx512`` or ``avx2`` (dot products in registers,
    ``csrc/cpu/topk_fused.cpp``) where the CPU has the instructions, else ``tiles``
    (BLAS tiles then a heap filter). ``LLP_CPU_TOPK`` = one of those names picks another
    that this CPU can run, for every call (to compare them, or to test each).

    With ``rows``: the kernel a call of that many query rows runs. Unless one is named, a
    call of fewer than ``FUSED_ROWS[kernel] x threads`` rows goes to ``tiles``: the fused
    kernel shares its work out in groups of query rows, BLAS splits the keys too."""
    available = extension().cpu_topk_fused_isa()
    best = next(name for name, code in TOPK_KERNELS.items() if code == available)
    wanted = os.environ.get("LLP_CPU_TOPK", "auto").strip() or "auto"
    if wanted == "auto":
        few_rows = rows is not None and best != "tiles" and rows < FUSED_ROWS[best] * _threads()
        return "tiles" if few_rows else best
    if wanted not in TOPK_KERNELS:
        raise ValueError(f"LLP_CPU_TOPK must be auto or one of {', '.join(TOPK_KERNELS)}, got {wanted!r}")
    if TOPK_KERNELS[wanted] > available:
        raise ValueError(f"LLP_CPU_TOPK={wanted}: this CPU lacks those instructions (it runs {best})")
    return wanted


@register_kernel(TOPK, "cpu")
def launch_topk(queries: Tensor, keys: Tensor, k: int, tau: float,
                key_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    C = extension()
    q = _fp32(queries)
    Q, N = q.shape[0], keys.shape[0]
    bias = None if key_bias is None else _fp32(key_bias).contiguous()
    values = torch.empty(Q, k, dtype=torch.float32)
    indices = torch.empty(Q, k, dtype=torch.int64)
    kernel = topk_kernel(Q)
    if kernel == "tiles":
        _topk_tiles(q, keys, k, tau, bias, values, indices)
    else:
        C.cpu_topk_fused(ptr(q), Q, ptr(keys), dtype_code(keys, "keys"), N, q.shape[1],
                         0 if bias is None else ptr(bias), 1.0 / tau, k, ptr(values), ptr(indices),
                         TOPK_KERNELS[kernel], _threads())
    C.cpu_topk_finalize(ptr(values), ptr(indices), Q, k, _threads())
    return values, indices


def _topk_tiles(q: Tensor, keys: Tensor, k: int, tau: float, bias: Optional[Tensor],
                values: Tensor, indices: Tensor) -> None:
    """The heaps of ``launch_topk`` from BLAS tiles of raw dot products."""
    C = extension()
    Q, N = q.shape[0], keys.shape[0]
    # Row blocks keep the tile buffer bounded when Q is large.
    row_block = min(Q, TOPK_ROW_BLOCK)
    cols = _tile_cols(row_block, N)
    buffer = torch.empty(row_block * cols, dtype=torch.float32)
    # Key tiles outer: each (possibly 16-bit) key tile is widened once and then met by
    # every query block; the per-row heaps carry the state between tiles.
    for lo, hi, tile in _tiles(keys, cols):
        for r0 in range(0, Q, row_block):
            r1 = min(Q, r0 + row_block)
            vb, ib = values[r0:r1], indices[r0:r1]
            dots = _dots(q[r0:r1], tile, buffer)
            C.cpu_topk_tile_update(ptr(dots), r1 - r0, hi - lo, hi - lo,
                                   0 if bias is None else ptr(bias) + 4 * lo, 1.0 / tau, lo, k,
                                   ptr(vb), ptr(ib), _threads())


@register_kernel(BANK_UPDATE, "cpu")
def launch_bank_update(bank: Tensor, indices: Tensor, embeddings: Tensor,
                       momentum: float) -> None:
    """``indices`` < N, -1 for rows to skip (``ops.bank_update`` marks duplicates and checks)."""
    extension().cpu_bank_update(ptr(bank), dtype_code(bank, "bank"), bank.shape[0], bank.shape[1],
                                ptr(indices), ptr(embeddings), dtype_code(embeddings, "embeddings"),
                                indices.shape[0], momentum, _threads())

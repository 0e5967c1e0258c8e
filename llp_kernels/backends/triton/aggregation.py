"""Aggregation loss in Triton: the dual online log-sum-exp (forward) and dq from
recomputed similarity tiles (backward). Nothing B x N is ever written.

Forward, per program (a block of queries x one slice of N): for each bank tile,
``s = q . bank^T / tau`` with ``tl.dot``; running (max, sum) for all rows and for rows
whose label equals the query's. The same-label sum reuses the all-row exponentials
(one exp per logit) unless its maximum sits more than 60 nats below the overall one
(rows far from unit norm), when it takes its own exponentials. Partials per slice go to
[S, B] buffers, which the op merges (``ops.aggregation.combine_partials``).

Backward: ``w = g/tau * (exp(s - lse_all) - [same] exp(s - lse_same))`` per tile and
``dq += w @ bank_tile``; per-slice partials [S, B, D] are summed on the host.
Queries are cast to the bank's dtype (on the host, round-to-nearest-even) and the
backward weights ``w`` to it in-kernel, so bf16/fp16 banks use native tensor-core
products with fp32 accumulation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.aggregation import GRAD, LSE
from ...registry import register_kernel
from . import LIMITS
from ._launch import (Launch, blocks, fma_block_n, input_precision, program_rows, same_label,
                      similarity_tile, split_n, widen_16bit)

SHARED_SHIFT_RANGE = 60.0


@triton.jit
def _bank_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr, PARTIAL: tl.constexpr):
    """One bank tile: (column validity, bank rows, logits, same-label mask). ``PARTIAL``:
    the tile may reach past ``hi``; whole tiles need no row masks."""
    rn, n_ok, k, s = similarity_tile(q, bank_ptr, start, hi, D, inv_tau, BLOCK_N, BLOCK_D, PRECISION, WIDEN,
                                     PARTIAL)
    if PARTIAL:
        same = same_label(bank_labels_ptr, rn, n_ok, q_label)
    else:
        same = tl.load(bank_labels_ptr + rn)[None, :] == q_label[:, None]  # labels < 0 never match
    return n_ok, k, s, same


@triton.jit
def _forward_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau, m_all, s_all, m_same, s_same,
                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                  SHARED_RANGE: tl.constexpr, WIDEN: tl.constexpr, PARTIAL: tl.constexpr):
    """Folds one bank tile into the running (max, sum) pairs of all and same-label rows."""
    n_ok, _, s, same = _bank_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau,
                                  BLOCK_N, BLOCK_D, PRECISION, WIDEN, PARTIAL)
    # Non-finite logits (from a NaN or inf input) are left out of the maxima and sums
    # and flagged instead: they make the row's sums NaN, for good.
    bad = s - s != 0.0
    if PARTIAL:
        bad = bad & n_ok[None, :]
        s = tl.where(n_ok[None, :] & ~bad, s, float("-inf"))
    else:
        s = tl.where(bad, float("-inf"), s)

    new_m = tl.maximum(m_all, tl.max(s, 1))
    p = tl.exp(s - new_m[:, None])
    s_all = s_all * tl.exp(m_all - new_m) + tl.sum(p, 1)
    s_all = tl.where(tl.max(bad.to(tl.int32), 1) > 0, float("nan"), s_all)
    m_all = new_m

    tile_max_same = tl.max(tl.where(same, s, float("-inf")), 1)
    new_m_same = tl.maximum(m_same, tile_max_same)
    has_same = tile_max_same > float("-inf")
    gap = tl.where(has_same, new_m - tile_max_same, 0.0)
    if tl.max(gap, 0) > SHARED_RANGE:
        contrib = tl.sum(tl.where(same, tl.exp(s - new_m_same[:, None]), 0.0), 1)
    else:
        contrib = tl.sum(tl.where(same, p, 0.0), 1) * tl.exp(new_m - new_m_same)
    contrib = tl.where(has_same, contrib, 0.0)
    # s_same * 0 keeps an earlier NaN flag while no same-label logit has been seen.
    s_same = tl.where(new_m_same > float("-inf"), s_same * tl.exp(m_same - new_m_same), s_same * 0.0) + contrib
    s_same = tl.where(tl.max((bad & same).to(tl.int32), 1) > 0, float("nan"), s_same)
    return m_all, s_all, new_m_same, s_same


@triton.jit
def _lse_forward_kernel(q_ptr, bank_ptr, bank_labels_ptr, query_labels_ptr,
                        m_all_ptr, s_all_ptr, m_same_ptr, s_same_ptr,
                        B, N, D, n_per_split, inv_tau,
                        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        PRECISION: tl.constexpr, SHARED_RANGE: tl.constexpr,
                        WIDEN: tl.constexpr):
    rb, b_ok, q, lo, hi = program_rows(q_ptr, B, N, D, n_per_split, BLOCK_B, BLOCK_D, WIDEN)
    q_label = tl.load(query_labels_ptr + rb, mask=b_ok, other=0)
    m_all = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s_all = tl.zeros([BLOCK_B], tl.float32)
    m_same = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s_same = tl.zeros([BLOCK_B], tl.float32)
    # Whole tiles without row masks, then the slice's partial tile (if any).
    whole_end = lo + (hi - lo) // BLOCK_N * BLOCK_N
    for start in range(lo, whole_end, BLOCK_N):
        m_all, s_all, m_same, s_same = _forward_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau,
                                                     m_all, s_all, m_same, s_same, BLOCK_N, BLOCK_D, PRECISION,
                                                     SHARED_RANGE, WIDEN, False)
    for start in range(whole_end, hi, BLOCK_N):
        m_all, s_all, m_same, s_same = _forward_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau,
                                                     m_all, s_all, m_same, s_same, BLOCK_N, BLOCK_D, PRECISION,
                                                     SHARED_RANGE, WIDEN, True)

    out = tl.program_id(1) * B + rb
    tl.store(m_all_ptr + out, m_all, mask=b_ok)
    tl.store(s_all_ptr + out, s_all, mask=b_ok)
    tl.store(m_same_ptr + out, m_same, mask=b_ok)
    tl.store(s_same_ptr + out, s_same, mask=b_ok)


@triton.jit
def _backward_tile(q, bank_ptr, bank_labels_ptr, q_label, lse_all, lse_same, scale, acc, start, hi, D, inv_tau,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                   PARTIAL: tl.constexpr):
    """acc += w @ bank_tile for one bank tile."""
    n_ok, k, s, same = _bank_tile(q, bank_ptr, bank_labels_ptr, q_label, start, hi, D, inv_tau,
                                  BLOCK_N, BLOCK_D, PRECISION, WIDEN, PARTIAL)
    p_all = tl.exp(s - lse_all[:, None])
    p_same = tl.where(same, tl.exp(s - lse_same[:, None]), 0.0)
    # scale 0: no gradient, exactly (not 0 times an overflowed exponential)
    keep = scale[:, None] != 0.0
    if PARTIAL:
        keep = keep & n_ok[None, :]
    w = tl.where(keep, scale[:, None] * (p_all - p_same), 0.0)
    return acc + tl.dot(w.to(bank_ptr.dtype.element_ty).to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _lse_backward_kernel(q_ptr, bank_ptr, bank_labels_ptr, query_labels_ptr,
                         lse_all_ptr, lse_same_ptr, scale_ptr, dq_ptr,
                         B, N, D, n_per_split, inv_tau,
                         BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                         PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    rb, b_ok, q, lo, hi = program_rows(q_ptr, B, N, D, n_per_split, BLOCK_B, BLOCK_D, WIDEN)
    q_label = tl.load(query_labels_ptr + rb, mask=b_ok, other=0)
    lse_all = tl.load(lse_all_ptr + rb, mask=b_ok, other=0.0)
    lse_same = tl.load(lse_same_ptr + rb, mask=b_ok, other=0.0)
    scale = tl.load(scale_ptr + rb, mask=b_ok, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], tl.float32)
    # One masked loop: a second, mask-free copy for whole tiles (as the forward has) keeps
    # two accumulating loops' buffers live and spills on sm_80/sm_90.
    for start in range(lo, hi, BLOCK_N):
        acc = _backward_tile(q, bank_ptr, bank_labels_ptr, q_label, lse_all, lse_same, scale, acc, start, hi, D,
                             inv_tau, BLOCK_N, BLOCK_D, PRECISION, WIDEN, True)

    rd = tl.arange(0, BLOCK_D)
    out = dq_ptr + (tl.program_id(1) * B + rb)[:, None].to(tl.int64) * D + rd[None, :]
    tl.store(out, acc, mask=b_ok[:, None] & (rd < D)[None, :])


def plan(rows: int, dim: int, bank_dtype: torch.dtype, precision: str, on_gpu: bool,
         backward: bool) -> Launch:
    """The forward (or backward) kernel's configuration for ``rows`` queries of ``dim``."""
    blk = blocks(rows, dim, bank_dtype, on_gpu)
    block_b, stages = blk.rows, blk.stages
    if backward and on_gpu and bank_dtype == torch.float32 and blk.d >= 128:
        # The backward keeps the queries and the gradient accumulator, both [BLOCK_B, D]
        # fp32, in registers: 64 rows spill at D >= 128, and 3 stages at D = 256.
        block_b = min(block_b, 32)
        stages = 2 if blk.d >= 256 else stages
    block_n = fma_block_n(blk.n, blk.d, precision, on_gpu)
    constants = dict(BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=blk.d, PRECISION=precision,
                     WIDEN=widen_16bit(bank_dtype, on_gpu))
    if not backward:
        constants["SHARED_RANGE"] = SHARED_SHIFT_RANGE
    return Launch(constants, blk.warps, stages)


def _launch(queries: Tensor, bank: Tensor, backward: bool):
    """(queries in the bank's dtype, the kernel's configuration, its grid, bank rows per
    slice) for one call."""
    B, D = queries.shape
    on_gpu = bank.device.type == "cuda"
    launch = plan(B, D, bank.dtype, input_precision(bank.dtype), on_gpu, backward)
    c = launch.constants
    row_blocks = triton.cdiv(B, c["BLOCK_B"])
    splits, n_per_split = split_n(row_blocks, bank.shape[0], c["BLOCK_N"], bank.device)
    return queries.to(bank.dtype), launch, (row_blocks, splits), n_per_split


@register_kernel(LSE, "triton", limits=LIMITS)
def launch_lse(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
               tau: float) -> Tensor:
    """parts [4, S, B]: per slice of the bank, the running (max, sum) of all rows and of
    same-label rows."""
    B, D = queries.shape
    q, launch, grid, n_per_split = _launch(queries, bank, backward=False)
    parts = torch.empty(4, grid[1], B, dtype=torch.float32, device=bank.device)
    _lse_forward_kernel[grid](
        q, bank, bank_labels, query_labels, parts[0], parts[1], parts[2], parts[3],
        B, bank.shape[0], D, n_per_split, 1.0 / tau, **launch.constants,
        **launch.options(bank.device.type == "cuda"))
    return parts


@register_kernel(GRAD, "triton", limits=LIMITS)
def launch_grad(queries: Tensor, bank: Tensor, bank_labels: Tensor, query_labels: Tensor,
                lse_all: Tensor, lse_same: Tensor, scale: Tensor, tau: float) -> Tensor:
    B, D = queries.shape
    q, launch, grid, n_per_split = _launch(queries, bank, backward=True)
    parts = torch.empty(grid[1], B, D, dtype=torch.float32, device=bank.device)
    _lse_backward_kernel[grid](
        q, bank, bank_labels, query_labels, lse_all, lse_same, scale, parts,
        B, bank.shape[0], D, n_per_split, 1.0 / tau, **launch.constants,
        **launch.options(bank.device.type == "cuda"))
    return parts.sum(dim=0)

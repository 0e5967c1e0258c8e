"""Streaming top-k with key bias in Triton: the k largest ``q . key_j / tau - bias[j]``.

Each score becomes one int64 key: the fp32 bits made order-preserving in the high 32
bits, ``2^32 - 1 - j`` in the low 32 (so among equal values the lower index wins). A
program owns a block of queries and a slice of N and keeps its best ``KP`` keys per row
(``KP`` = next power of two >= k, as ``tl.topk`` requires) in that row's slice of the
output, which only merges read and write; the loop itself carries ``floor``, each row's
KP-th best so far. Each similarity tile (tensor cores) goes through a per-row threshold
filter — first on the fp32 scores against the floor's value, so a tile where no row has
a candidate costs one comparison per score and one reduction; then on the packed keys:
a key above its row's floor is a candidate, appended to that row's queue (a
[CAP] slice of global scratch, at the position a running count and a prefix sum over
the row give it, so rows without candidates write nothing). Only when some row's queue
could overflow is there a merge: each queue is sorted into its row's kept list with one
``tl.topk`` and the floors rise (FAISS's WarpSelect idea: expected candidates per row
are about ``KP ln(N / KP)``, so merges are rare once the floors have risen). The key
tile does not grow with k: CAP = max(KP, BLOCK_N).
The launcher returns the per-slice candidates [S, Q, KP], which the op merges on the host
(``llp_kernels.ops.topk.run_topk``).

16-bit keys: queries are rounded to the keys' dtype for the tensor-core product, so
near-ties could swap; the kernel keeps extra candidates, which the merge re-scores in fp32
before the final k. Supported k: ``TOPK_LIMITS`` of the triton backend.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops.topk import TOPK, kept_size
from ...registry import register_kernel
from . import TOPK_LIMITS
from ._launch import (Launch, blocks, fma_block_n, input_precision, program_rows, similarity_tile, split_n,
                      widen_16bit)

# The padding key: (SENTINEL_ORDERED << 32) with the worst index, i.e. the smallest int64.
SENTINEL = tl.constexpr(-2**63)


@triton.jit
def _pack(values, columns):
    """(fp32 value, int column) -> int64 key, increasing with value, then with -column;
    NaN values get NAN_ORDERED (below every number)."""
    bits = values.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    ordered = tl.where(values != values, -2147483647, ordered)
    return (ordered.to(tl.int64) << 32) + (4294967295 - columns.to(tl.int64))


@triton.jit
def _floor_value(floor, q_ok):
    """The fp32 test value of each row's floor: a key above the floor has a score s with
    ``not (s < value)``. The floor's value (the inverse of ``_pack``'s high half); -inf
    when the floor is padding or NaN (then every key is a candidate, NaN scores too);
    +inf for rows past the end of the queries, which take no candidates."""
    ordered = (floor >> 32).to(tl.int32)
    bits = tl.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    value = tl.where(ordered <= -2147483647, float("-inf"), bits.to(tl.float32, bitcast=True))
    return tl.where(q_ok, value, float("inf"))


@triton.jit
def _sync_threads(count, ON_GPU: tl.constexpr):
    """A barrier of the program's threads that returns ``count`` unchanged. On a GPU it is
    ``bar.sync`` in inline PTX, so Triton's software pipeliner still pipelines the key
    loads of the loop around it (it leaves loops that contain ``tl.debug_barrier``
    alone); the result feeds the loads that must come after it. Every thread holds the
    same number of ``count`` elements, so each executes the barrier as often."""
    if ON_GPU:
        return tl.inline_asm_elementwise("bar.sync 0;\n\tmov.b32 $0, $1;", "=r,r", [count],
                                         dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.debug_barrier()
        return count


@triton.jit
def _topk_kernel(q_ptr, keys_ptr, bias_ptr, out_ptr, queue_ptr, Q, N, D, n_per_split, inv_tau,
                 HAS_BIAS: tl.constexpr, KP: tl.constexpr, CAP: tl.constexpr, BLOCK_Q: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                 WIDEN: tl.constexpr, ON_GPU: tl.constexpr):
    rq, q_ok, q, lo, hi = program_rows(q_ptr, Q, N, D, n_per_split, BLOCK_Q, BLOCK_D, WIDEN)
    queues = queue_ptr + (tl.program_id(1) * Q + rq)[:, None].to(tl.int64) * CAP  # [BQ, 1] row starts
    slots = tl.arange(0, CAP)

    # Each row's KP best keys so far live in its slice of the output, sorted descending,
    # read and written only by merges (rare), so the filter loop holds just the floor: the
    # KP-th best key, and floor_v its value. Padding (SENTINEL) ranks below every real
    # key, NaN included; masked columns may be real indices of a neighbouring slice, so
    # they become padding too.
    kept = out_ptr + (tl.program_id(1) * Q + rq)[:, None].to(tl.int64) * KP + slots[None, :]  # [BQ, CAP]
    kept_ok = q_ok[:, None] & (slots < KP)[None, :]
    tl.store(kept, tl.full([BLOCK_Q, CAP], SENTINEL, tl.int64), mask=kept_ok)  # the first merge reads them
    floor = tl.full([BLOCK_Q], SENTINEL, tl.int64)
    floor_v = _floor_value(floor, q_ok)
    count = tl.zeros([BLOCK_Q], tl.int32)  # per row: candidates queued since the last merge
    # Whole tiles first, with no row masks; then the slice's partial tile, if any, and one
    # pass more (all padding) that merges what is queued, so the merge code exists once
    # per loop.
    whole_end = lo + (hi - lo) // BLOCK_N * BLOCK_N
    for start in range(lo, whole_end, BLOCK_N):
        floor, floor_v, count = _tile(q, keys_ptr, bias_ptr, kept, kept_ok, queues, slots, q_ok, floor, floor_v,
                                      count, start, hi, D, inv_tau, HAS_BIAS, KP, CAP, BLOCK_Q, BLOCK_N, BLOCK_D,
                                      PRECISION, WIDEN, ON_GPU, False)
    for start in range(whole_end, hi + BLOCK_N, BLOCK_N):
        floor, floor_v, count = _tile(q, keys_ptr, bias_ptr, kept, kept_ok, queues, slots, q_ok, floor, floor_v,
                                      count, start, hi, D, inv_tau, HAS_BIAS, KP, CAP, BLOCK_Q, BLOCK_N, BLOCK_D,
                                      PRECISION, WIDEN, ON_GPU, True)


@triton.jit
def _tile(q, keys_ptr, bias_ptr, kept, kept_ok, queues, slots, q_ok, floor, floor_v, count, start, hi, D, inv_tau,
          HAS_BIAS: tl.constexpr, KP: tl.constexpr, CAP: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
          BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr, ON_GPU: tl.constexpr,
          PARTIAL: tl.constexpr):
    """One key tile through the filter (and, when a queue could overflow or at ``start >=
    hi``, a merge); returns the rows' (floor, floor_v, count). ``PARTIAL``: the tile may
    reach past ``hi`` (the slice's last tile and the final all-padding pass)."""
    rn, n_ok, _, s = similarity_tile(q, keys_ptr, start, hi, D, inv_tau, BLOCK_N, BLOCK_D, PRECISION, WIDEN,
                                     PARTIAL)
    if HAS_BIAS:
        if PARTIAL:
            s = s - tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
        else:
            s = s - tl.load(bias_ptr + rn)[None, :]
    # A cheap fp32 test first: every key above its row's floor has a score that is not
    # below floor_v (one unordered comparison per score). Tiles where no row has one
    # (most of them, once the floors have risen) skip packing, counting and queueing.
    maybe = ~(s < floor_v[:, None])
    if PARTIAL:
        maybe = maybe & n_ok[None, :]
    if (start >= hi) | (tl.max(maybe.to(tl.int32)) > 0):
        columns = rn[None, :].to(tl.int64) + tl.zeros([BLOCK_Q, BLOCK_N], tl.int64)
        packed = tl.where(n_ok[None, :], _pack(s, columns), SENTINEL)
        keep = (packed > floor[:, None]) & q_ok[:, None]
        n_keep = tl.sum(keep.to(tl.int32), 1)
        if (start >= hi) | (tl.max(count + n_keep, 0) > CAP):
            # Merge every row's queue into its kept list; the floors rise. A tile never
            # holds more than CAP keys, so afterwards it fits an empty queue.
            queued_count = _sync_threads(count, ON_GPU)  # every thread's queue and kept stores are visible
            queued = tl.load(queues + slots[None, :], mask=slots[None, :] < queued_count[:, None],
                             other=SENTINEL)
            best = tl.load(kept, mask=kept_ok, other=SENTINEL)
            # Every output of a row's top-k depends on all of the row's loads, so the
            # stores below cannot overtake another thread's load of the same list.
            best = tl.topk(tl.reshape(tl.join(best, queued), (BLOCK_Q, 2 * CAP)), CAP)
            tl.store(kept, best, mask=kept_ok)
            floor = tl.max(tl.where(slots[None, :] == KP - 1, best, SENTINEL), 1)
            floor_v = _floor_value(floor, q_ok)
            count = tl.zeros([BLOCK_Q], tl.int32)
            keep = (packed > floor[:, None]) & q_ok[:, None]
            n_keep = tl.sum(keep.to(tl.int32), 1)
        slot = count[:, None] + tl.cumsum(keep.to(tl.int32), 1) - 1
        tl.store(queues + slot, packed, mask=keep)
        count += n_keep
    return floor, floor_v, count


def plan(rows: int, dim: int, kp: int, key_dtype: torch.dtype, precision: str, on_gpu: bool,
         has_bias: bool) -> Launch:
    """The kernel's configuration for ``rows`` queries of ``dim`` keeping ``kp`` keys."""
    blk = blocks(rows, dim, key_dtype, on_gpu)
    # A tile adds at most BLOCK_N candidates to a row's queue, so CAP = max(KP, BLOCK_N);
    # a merge holds the kept lists and queues [BQ, 2 CAP] in registers next to the
    # query block: fewer query rows per program as they grow, BQ x CAP <= 2048 int64 keys
    # (1024 at D = 256), and tiles at most 64 keys wide. Larger spill on sm_80 / sm_90.
    block_n = fma_block_n(min(blk.n, 64), blk.d, precision, on_gpu)
    cap = max(kp, block_n)
    budget = 2048 if blk.d <= 128 else 1024
    block_q = max(16, min(blk.rows, budget // cap)) if on_gpu else blk.rows
    return Launch(dict(HAS_BIAS=has_bias, KP=kp, CAP=cap, BLOCK_Q=block_q, BLOCK_N=block_n,
                       BLOCK_D=blk.d, PRECISION=precision, WIDEN=widen_16bit(key_dtype, on_gpu),
                       ON_GPU=on_gpu),
                  blk.warps, blk.stages)


@register_kernel(TOPK, "triton", limits=TOPK_LIMITS)
def launch_topk(queries: Tensor, keys: Tensor, k: int, tau: float,
                key_bias: Optional[Tensor]) -> Tensor:
    Q, D = queries.shape
    N = keys.shape[0]
    on_gpu = keys.device.type == "cuda"
    kp = kept_size(k, N, keys.dtype)
    launch = plan(Q, D, kp, keys.dtype, input_precision(keys.dtype), on_gpu, key_bias is not None)
    c = launch.constants
    row_blocks = triton.cdiv(Q, c["BLOCK_Q"])
    splits, n_per_split = split_n(row_blocks, N, c["BLOCK_N"], keys.device)
    candidates = torch.empty(splits, Q, kp, dtype=torch.int64, device=queries.device)
    queues = torch.empty(splits, Q, c["CAP"], dtype=torch.int64, device=queries.device)  # scratch
    _topk_kernel[(row_blocks, splits)](
        queries.to(keys.dtype), keys, key_bias if key_bias is not None else keys, candidates, queues,
        Q, N, D, n_per_split, 1.0 / tau, **c, **launch.options(on_gpu))
    return candidates

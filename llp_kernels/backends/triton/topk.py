"""Streaming top-k with key bias in Triton: the k largest ``q . key_j / tau - bias[j]``.

Each score becomes one int64 key: the fp32 bits made order-preserving in the high 32
bits, ``2^32 - 1 - j`` in the low 32 (so among equal values the lower index wins). A
program owns a block of queries and a slice of N and keeps its best ``KP`` keys per row
(``KP`` = next power of two >= k, as ``tl.topk`` requires). For each similarity tile a
per-row threshold filter (the current KP-th best) decides whether the tile can
contribute at all; only then are the tile's best KP keys merged in with ``tl.topk``.
Per-slice candidates [S, Q, KP] are merged on the host with ``torch.topk``.

16-bit keys: queries are rounded to the keys' dtype for the tensor-core product, so
near-ties could swap; the kernel keeps extra candidates and the host re-scores them in
fp32 before the final k. Supported k: the triton record's max_k.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._packed_topk import finish, kept_size
from ._launch import (blocks, input_precision, launch_options, load_rows, similarity_tile,
                      split_n, widen_16bit)

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
def _topk_kernel(q_ptr, keys_ptr, bias_ptr, out_ptr, Q, N, D, n_per_split, inv_tau,
                 HAS_BIAS: tl.constexpr, KP: tl.constexpr, BLOCK_Q: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                 WIDEN: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    rq = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = rq < Q
    q = load_rows(q_ptr, rq, Q, D, BLOCK_D, WIDEN)

    # Padding keys (SENTINEL_ORDERED, worst index) rank below every real key, NaN included;
    # masked columns may be real indices of a neighbouring slice, so they become padding.
    best = tl.full([BLOCK_Q, KP], SENTINEL, tl.int64)
    floor = tl.full([BLOCK_Q], SENTINEL, tl.int64)  # per row: the KP-th best key so far
    lo = pid_s * n_per_split
    hi = tl.minimum(lo + n_per_split, N)
    for start in range(lo, hi, BLOCK_N):
        rn, n_ok, _, s = similarity_tile(q, keys_ptr, start, hi, D, inv_tau,
                                         BLOCK_N, BLOCK_D, PRECISION, WIDEN)
        if HAS_BIAS:
            s = s - tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
        columns = rn[None, :].to(tl.int64) + tl.zeros([BLOCK_Q, BLOCK_N], tl.int64)
        packed = tl.where(n_ok[None, :], _pack(s, columns), SENTINEL)
        # Threshold filter on the packed keys (exact, NaN-safe): merge only when some row
        # has a key above its KP-th best.
        hits = tl.sum((tl.max(packed, 1) > floor).to(tl.int32), 0)
        if hits > 0:
            tile_best = tl.topk(packed, KP)
            best = tl.topk(tl.reshape(tl.join(best, tile_best), (BLOCK_Q, 2 * KP)), KP)
            floor = tl.min(best, 1)

    out = out_ptr + (pid_s * Q + rq)[:, None].to(tl.int64) * KP + tl.arange(0, KP)[None, :]
    tl.store(out, best, mask=q_ok[:, None])


def topk_similarity(queries: Tensor, keys: Tensor, k: int, tau: float,
                    key_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    Q, D = queries.shape
    N = keys.shape[0]
    rescore = keys.dtype != torch.float32
    kp = kept_size(k, N, keys.dtype)
    blk = blocks(Q, D, keys.dtype, keys.device)
    block_q = min(blk.rows, 16) if kp >= 256 else blk.rows
    block_n = max(blk.n, kp)
    row_blocks = triton.cdiv(Q, block_q)
    splits, n_per_split = split_n(row_blocks, N, block_n, keys.device)
    candidates = torch.empty(splits, Q, kp, dtype=torch.int64, device=queries.device)
    _topk_kernel[(row_blocks, splits)](
        queries.to(keys.dtype), keys, key_bias if key_bias is not None else keys, candidates,
        Q, N, D, n_per_split, 1.0 / tau, HAS_BIAS=key_bias is not None, KP=kp,
        BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_D=blk.d, PRECISION=input_precision(keys.dtype),
        WIDEN=widen_16bit(keys), **launch_options(blk, keys.device))
    return finish(candidates, queries, keys, k, tau, key_bias, rescore)

"""Host side of the streaming top-k kernels (Triton and CUDA): packed keys and the
final merge.

A kernel reports each kept score as one int64 key: the fp32 bits made order-preserving
in the high 32 bits and ``2^32 - 1 - j`` in the low 32, so a larger key is a larger
score and, among equal scores, a lower index j (keys therefore need N < 2^32). A NaN
score gets the high half ``NAN_ORDERED``, below every number; padding (``SENTINEL_ORDERED``)
sits below that. Kernels that split the keys into S slices write candidates [S, Q, KP];
``finish`` merges them, re-scores 16-bit candidates in fp32 and returns the final k.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..reference import rank_descending

RESCORE_MARGIN = 8  # extra candidates kept for 16-bit keys, re-scored in fp32
SENTINEL_ORDERED = -2**31      # padding: below everything
NAN_ORDERED = -2**31 + 1       # a NaN score: below every number, above padding


def unpack(keys: Tensor) -> Tuple[Tensor, Tensor]:
    """int64 keys -> (fp32 values, int64 indices)."""
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    values = torch.where(ordered <= NAN_ORDERED, float("nan"), bits.view(torch.float32))
    return values, 4294967295 - (keys & 0xFFFFFFFF)


def finish(candidates: Tensor, queries: Tensor, keys: Tensor, k: int, tau: float,
           key_bias: Optional[Tensor], rescore: bool) -> Tuple[Tensor, Tensor]:
    """candidates [S, Q, KP] -> values fp32 [Q, k] sorted descending, indices int64 [Q, k].

    With ``rescore`` (16-bit keys, queries rounded to them for the tensor-core product)
    the best KP candidates get their exact fp32 scores with the original queries and are
    re-sorted (stable, so ties keep the lower index) before the final k.
    """
    S, Q, kp = candidates.shape
    N = keys.shape[0]
    merged = torch.topk(candidates.permute(1, 0, 2).reshape(Q, S * kp), min(kp, N), dim=1).values
    values, indices = unpack(merged)
    if rescore:
        exact = torch.einsum("qd,qcd->qc", queries.float(), keys[indices].float()) / tau
        if key_bias is not None:
            exact = exact - key_bias[indices]
        order = rank_descending(exact)
        values, indices = torch.gather(exact, 1, order), torch.gather(indices, 1, order)
    return values[:, :k].contiguous(), indices[:, :k].contiguous()


def kept_size(k: int, n: int, key_dtype: torch.dtype, smallest: int = 1) -> int:
    """KP, the number of keys a kernel keeps per row: the power of two >= k, or >= k plus
    the re-score margin for 16-bit keys; at least ``smallest``."""
    want = k if key_dtype == torch.float32 else min(n, k + RESCORE_MARGIN)
    return max(smallest, 1 << max(0, (want - 1).bit_length()))

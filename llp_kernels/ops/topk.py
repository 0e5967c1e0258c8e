"""``topk_similarity``: the k largest ``s(q, key_j) - key_bias[j]`` per query, with
``s(q, key) = q . key / tau``; the neighbour search behind ``local_density`` (eq. 4) and
``propagate_labels`` (eq. 5).

Launchers, one per backend, each registered to ``TOPK`` in its own file:

    reference  reference_topk_similarity (below)
    cpu        llp_kernels.backends.cpu.launch_topk     -> csrc/cpu/topk_fused.cpp, topk.cpp
    cuda       llp_kernels.backends.cuda.launch_topk    -> csrc/cuda/topk.cu
    triton     llp_kernels.backends.triton.topk.launch_topk

A launcher takes ``(queries [Q, D], keys [N, D], k, tau, key_bias [N] fp32 or None)``,
validated and contiguous, and returns ``(values fp32 [Q, k] sorted descending, indices
int64 [Q, k])``, or (the GPU kernels, which split the keys into S slices) the kept
candidates ``[S, Q, KP]``, each score packed with its index into one int64 (``unpack``),
which ``run_topk`` merges with ``merge_candidates`` (re-scoring 16-bit candidates in
fp32). A backend declares ``TopkLimits``: the largest D and, per call, the largest k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .. import _validate as check
from ..defaults import TAU
from ..registry import Call, Limits, Op, resolve
from ._similarity import logits

__all__ = ["TOPK", "TopkLimits", "kept_size", "merge_candidates", "rank_descending", "reference_topk_similarity",
           "run_topk", "topk_similarity", "unpack"]


@dataclass(frozen=True)
class TopkLimits(Limits):
    """A top-k backend's limits: ``max_dim``, and ``max_k(call)``, the largest k it takes
    for that call (None: any)."""
    max_k: Callable[[Call], Optional[int]] = lambda call: None

    def why_beyond(self, call: Call) -> str:
        why = super().why_beyond(call)
        if why or call.k is None:
            return why
        limit = self.max_k(call)
        if limit is not None and call.k > limit:
            dtype = "" if call.dtype is None else f" for {str(call.dtype).replace('torch.', '')} keys"
            return f"it supports k <= {limit}{dtype} at D={call.dim}, got k={call.k}"
        return ""


TOPK = Op("topk_similarity", TopkLimits)


# ---- the reference: the definition in plain PyTorch ---------------------------------------

def rank_descending(scores: Tensor) -> Tensor:
    """Positions [Q, N] that sort each row of ``scores`` descending: among equal values the
    lower position first, and NaN after every number (even -inf). The top-k order."""
    order = torch.sort(torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"),
                                        neginf=float("-inf")), dim=1, descending=True, stable=True).indices
    nan_last = torch.sort(torch.isnan(torch.gather(scores, 1, order)).to(torch.int8), dim=1, stable=True).indices
    return torch.gather(order, 1, nan_last)


def reference_topk_similarity(queries: Tensor, keys: Tensor, k: int, tau: float = TAU,
                              key_bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The k largest ``s(q, key_j) - key_bias[j]`` per query, from the full score matrix.

    queries [Q, D], keys [N, D], key_bias [N] or None. Returns values [Q, k] sorted
    descending and their int64 key indices [Q, k] (``rank_descending``'s order: among
    equal values the lower index first, NaN scores last).
    """
    scores = logits(queries, keys, tau)
    if key_bias is not None:
        scores = scores - key_bias.to(scores.dtype)[None, :]
    order = rank_descending(scores)[:, :k].contiguous()
    return torch.gather(scores, 1, order), order


# ---- host side of the GPU kernels: packed keys and the merge of slices ---------------------
# A kernel reports each kept score as one int64 key: the fp32 bits made order-preserving
# in the high 32 bits and ``2^32 - 1 - j`` in the low 32, so a larger key is a larger
# score and, among equal scores, a lower index j (keys therefore need N < 2^32). A NaN
# score gets the high half NAN_ORDERED, below every number; padding (SENTINEL_ORDERED)
# sits below that.

RESCORE_MARGIN = 8  # extra candidates kept for 16-bit keys, re-scored in fp32
SENTINEL_ORDERED = -2**31      # padding: below everything
NAN_ORDERED = -2**31 + 1       # a NaN score: below every number, above padding


def kept_size(k: int, n: int, key_dtype: torch.dtype, smallest: int = 1) -> int:
    """KP, the number of keys a kernel keeps per row: the power of two >= k, or >= k plus
    the re-score margin for 16-bit keys; at least ``smallest``."""
    want = k if key_dtype == torch.float32 else min(n, k + RESCORE_MARGIN)
    return max(smallest, 1 << max(0, (want - 1).bit_length()))


def unpack(keys: Tensor) -> Tuple[Tensor, Tensor]:
    """int64 keys -> (fp32 values, int64 indices)."""
    ordered = (keys >> 32).to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    values = torch.where(ordered <= NAN_ORDERED, float("nan"), bits.view(torch.float32))
    return values, 4294967295 - (keys & 0xFFFFFFFF)


def merge_candidates(candidates: Tensor, queries: Tensor, keys: Tensor, k: int, tau: float,
                     key_bias: Optional[Tensor], rescore: bool) -> Tuple[Tensor, Tensor]:
    """candidates [S, Q, KP] packed keys -> values fp32 [Q, k] sorted descending, indices
    int64 [Q, k].

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


# ---- the custom op and the public function -----------------------------------------------

def run_topk(backend: str, queries: Tensor, keys: Tensor, k: int, tau: float,
             key_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``TOPK``'s launcher of ``backend`` -> (values [Q, k], indices [Q, k]). A launcher
    that returns packed candidates [S, Q, KP] int64 (the GPU kernels: KP per row from each
    of S slices of the keys) has them merged here, re-scored for 16-bit keys."""
    out = TOPK.kernels[backend](queries, keys, k, tau, key_bias)
    if isinstance(out, Tensor):
        return merge_candidates(out, queries, keys, k, tau, key_bias, keys.dtype != torch.float32)
    return out


@torch.library.custom_op("llp::topk_similarity", mutates_args=())
def _topk_op(queries: Tensor, keys: Tensor, k: int, tau: float, key_bias: Optional[Tensor],
             backend: str) -> Tuple[Tensor, Tensor]:
    values, indices = run_topk(backend, queries, keys, k, tau, key_bias)
    return values.float(), indices.long()


@_topk_op.register_fake
def _(queries, keys, k, tau, key_bias, backend):
    Q = queries.shape[0]
    return (queries.new_empty(Q, k, dtype=torch.float32),
            queries.new_empty(Q, k, dtype=torch.int64))


def topk_similarity(queries: Tensor, keys: Tensor, k: int, tau: float = TAU,
                    key_bias: Optional[Tensor] = None, *,
                    backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """The k largest ``queries[q] . keys[j] / tau - key_bias[j]`` per query, streamed.

    queries [Q, D], keys [N, D] (float32/bf16/fp16), key_bias [N] float or None,
    1 <= k <= N. Returns values fp32 [Q, k] sorted descending and int64 indices [Q, k];
    among equal values the lower index comes first (cpu backend). Not differentiable.
    """
    check.embeddings("queries", queries)
    check.embeddings("keys", keys, queries.shape[1], "queries")
    k = check.count("k", k, keys.shape[0], "keys")
    if key_bias is not None:
        check.bias("key_bias", key_bias, keys.shape[0], "keys")
        key_bias = key_bias.detach().float().contiguous()
    device = check.same_device(queries=queries, keys=keys, key_bias=key_bias)
    tau = check.temperature("tau", tau)
    name = resolve((TOPK,), backend, Call(device, dim=queries.shape[1], k=k, dtype=keys.dtype))
    return torch.ops.llp.topk_similarity(queries.detach().contiguous(), keys.detach().contiguous(),
                                         k, tau, key_bias, name)

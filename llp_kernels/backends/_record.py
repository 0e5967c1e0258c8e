"""What a backend is: one ``Backend`` record per backend, kept in that backend's own file.

A record says where the backend runs, which ops it implements (and the functions that
launch them) and its limits. Dispatch, ``available_backends()``,
``usable_backends()``, the ``auto`` choice and the tests' backend matrix are all read
off the records (``llp_kernels.backends``); nothing else knows what a backend can do.

Every backend implements the same kernel signatures (inputs already validated, contiguous,
labels int64, on one device):

    aggregation_lse(queries, bank, bank_labels, query_labels, tau) -> (lse_all, lse_same)  fp32 [B]
    aggregation_grad(queries, bank, bank_labels, query_labels, lse_all, lse_same, scale, tau)
        -> dq [B, D];  dq_b = scale_b * (sum_j p_bj bank_j - sum_{j same} p'_bj bank_j)
    topk_similarity(queries, keys, k, tau, key_bias) -> (values fp32 [Q, k], indices int64 [Q, k])
    update_memory_bank_(bank, indices, embeddings, momentum) -> None  (indices < N; rows whose
        index is -1 are skipped: the ops layer so marks every duplicate but the last)

``scale`` and the LSEs of ``aggregation_grad`` come from ``llp_kernels._aggregation_rules.backward_inputs``,
which holds the rule for rows whose log-sum-exps are not finite, so kernels need no special case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Tuple

import torch

OPS = ("aggregation_lse", "aggregation_grad", "topk_similarity", "update_memory_bank_")


@dataclass(frozen=True)
class Call:
    """What a dispatch decision may look at: metadata only, never tensor values."""
    device: torch.device
    dim: Optional[int] = None
    k: Optional[int] = None
    dtype: Optional[torch.dtype] = None  # of the bank / keys


def fp32_as_tf32() -> bool:
    """Whether fp32 products may run as TF32 on tensor cores: they follow
    ``torch.get_float32_matmul_precision()`` ('highest': no), as torch's own matmul does."""
    return torch.get_float32_matmul_precision() != "highest"


def _no_reason(*_args) -> str:
    return ""


@dataclass(frozen=True)
class Backend:
    name: str
    summary: str                              # what it is, one line
    devices: Tuple[str, ...]                  # device types whose tensors its kernels take
    kernels: Mapping[str, Callable]           # op -> launch function (signatures above)
    environment: Callable[[], str] = _no_reason            # why it cannot run here at all ('' if it can)
    device_check: Callable[[torch.device], str] = _no_reason  # why not on this device ('' if fine)
    max_dim: Optional[int] = None             # largest D (None: any)
    max_k: Callable[[Call], Optional[int]] = lambda call: None   # largest k for this call (None: any)
    auto_devices: Tuple[str, ...] = ()        # device types where backend="auto" may choose it
    auto_priority: int = 0                    # lower is tried first by "auto"
    rounds_queries_to_bank_dtype: bool = False  # 16-bit banks: queries (and backward weights) rounded to it
    details: Callable[[], str] = field(default=_no_reason)  # extra words for available_backends()

    def why_unusable_on(self, device: torch.device) -> str:
        """Why this backend cannot run here on ``device`` at all ('' when it can)."""
        why = self.environment()
        if why:
            return why
        if device.type not in self.devices:
            return f"it runs on {' or '.join(self.devices)} tensors, got {device}"
        return self.device_check(device)

    def why_unusable(self, op: str, call: Call) -> str:
        """Why this backend cannot run ``op`` for ``call`` ('' when it can)."""
        if op not in self.kernels:
            return f"it does not implement {op}"
        why = self.why_unusable_on(call.device)
        if why:
            return why
        if self.max_dim is not None and call.dim is not None and call.dim > self.max_dim:
            return f"it supports D <= {self.max_dim}, got D={call.dim}"
        if call.k is not None and op == "topk_similarity":
            limit = self.max_k(call)
            if limit is not None and call.k > limit:
                dtype = "" if call.dtype is None else f" for {str(call.dtype).replace('torch.', '')} keys"
                return f"it supports k <= {limit}{dtype} at D={call.dim}, got k={call.k}"
        return ""

    def status(self) -> str:
        """One line for ``available_backends()``: 'ready: ...' or 'unavailable: why'."""
        why = self.environment()
        if why:
            return f"unavailable: {why}"
        extra = self.details()
        return f"ready: {self.summary}" + (f"; {extra}" if extra else "")

"""The ``triton`` backend: fused Triton kernels, one file per primitive.

Triton is imported only when this backend is first used. On CPU tensors the kernels
run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first
import of triton), which is how CI checks them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Tuple


IMPLEMENTED = frozenset({"aggregation_lse", "aggregation_grad", "topk_similarity",
                         "update_memory_bank_"})


def installed() -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    return True, ""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# The backend interface; each loads its kernel module (and triton) on first use.
def aggregation_lse(queries, bank, bank_labels, query_labels, tau):
    from .aggregation import aggregation_lse as impl
    return impl(queries, bank, bank_labels, query_labels, tau)


def aggregation_grad(queries, bank, bank_labels, query_labels, lse_all, lse_same, grad_output, tau):
    from .aggregation import aggregation_grad as impl
    return impl(queries, bank, bank_labels, query_labels, lse_all, lse_same, grad_output, tau)


def topk_similarity(queries, keys, k, tau, key_bias):
    from .topk import topk_similarity as impl
    return impl(queries, keys, k, tau, key_bias)


def update_memory_bank_(bank, indices, embeddings, momentum):
    from .bank_update import update_memory_bank_ as impl
    return impl(bank, indices, embeddings, momentum)

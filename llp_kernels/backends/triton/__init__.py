"""The ``triton`` backend: fused Triton kernels, one file per op (``aggregation.py``,
``topk.py``, ``bank_update.py``; shared tiles in ``_launch.py``).

This file registers the backend and, to each op, a launcher that imports its kernel
file on the first launch: Triton is imported only then. On CPU tensors the kernels run
only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first import of
triton), which is how CI checks them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from ...ops.aggregation import GRAD, LSE
from ...ops.bank_update import BANK_UPDATE
from ...ops.topk import RESCORE_MARGIN, TOPK, TopkLimits
from ...registry import Backend, Call, Limits, register_backend, register_kernel

MAX_DIM = 256

# The largest kept list KP (a power of two) the top-k kernel takes, for every key dtype
# and D. A merge holds the kept lists and the queued candidates [BLOCK_Q, 2 KP] in
# registers next to the similarity tile, so the ceiling is where the largest configuration
# still compiles for sm_80 and sm_90 without spills and within the block's shared memory
# (checked ahead of time by ``python -m bench.gpu_compile``); 256 spills on both targets
# at D = 128 with fp32 keys.
MAX_KEPT = 128


def installed() -> str:
    return "" if importlib.util.find_spec("triton") is not None else "triton is not installed (pip install triton)"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _device_check(device: torch.device) -> str:
    if device.type == "cpu" and not interpreting():
        return "on CPU tensors it needs TRITON_INTERPRET=1 (set before triton is imported)"
    return ""


def _max_k(call: Call) -> Optional[int]:
    """k such that its kept list (k, plus the re-score margin for 16-bit keys) fits."""
    dtype = call.dtype or torch.float32
    return MAX_KEPT - (0 if dtype == torch.float32 else RESCORE_MARGIN)


def _details() -> str:
    from importlib.metadata import version
    mode = ("interpreter on (CPU tensors run)" if interpreting()
            else "CUDA tensors; CPU tensors need TRITON_INTERPRET=1")
    return f"triton {version('triton')}, {mode}"


register_backend(Backend(
    name="triton",
    summary="fused Triton kernels",
    devices=("cuda", "cpu"),
    environment=installed,
    device_check=_device_check,
    auto_devices=("cuda",),
    auto_priority=0,
    rounds_queries_to_bank_dtype=True,
    details=_details,
))
LIMITS = Limits(max_dim=MAX_DIM)


@register_kernel(LSE, "triton", limits=LIMITS)
def launch_lse(*args):
    from .aggregation import launch_lse
    return launch_lse(*args)


@register_kernel(GRAD, "triton", limits=LIMITS)
def launch_grad(*args):
    from .aggregation import launch_grad
    return launch_grad(*args)


@register_kernel(TOPK, "triton", limits=TopkLimits(max_dim=MAX_DIM, max_k=_max_k))
def launch_topk(*args):
    from .topk import launch_topk
    return launch_topk(*args)


@register_kernel(BANK_UPDATE, "triton", limits=LIMITS)
def launch_bank_update(*args):
    from .bank_update import launch_bank_update
    return launch_bank_update(*args)

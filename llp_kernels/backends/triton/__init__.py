"""The ``triton`` backend: fused Triton kernels, one file per op, each registering its
launchers to its op: ``aggregation.py`` (``LSE``, ``GRAD``), ``topk.py`` (``TOPK``),
``bank_update.py`` (``BANK_UPDATE``); shared tiles and block sizes in ``_launch.py``.

This file declares the backend and the limits its launchers register with, then imports
the kernel files if Triton imports; without Triton, ``import llp_kernels`` still works
and the backend says why it cannot run. Triton fixes when a kernel is defined (at that
import) whether it is compiled or interpreted: on CPU tensors the kernels run only under
its interpreter, ``TRITON_INTERPRET=1`` set before ``llp_kernels`` is imported, which is
how CI checks them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from ...ops.topk import RESCORE_MARGIN, TopkLimits
from ...registry import Backend, Call, Limits, register_backend

MAX_DIM = 256

# The largest kept list KP (a power of two) the top-k kernel takes, for every key dtype
# and D. A merge holds the kept lists and the queued candidates [BLOCK_Q, 2 KP] in
# registers next to the similarity tile, so the ceiling is where the largest configuration
# still compiles for sm_80 and sm_90 without spills and within the block's shared memory
# (checked ahead of time by ``python -m bench.gpu_compile``); 256 spills on both targets
# at D = 128 with fp32 keys.
MAX_KEPT = 128


def _max_k(call: Call) -> Optional[int]:
    """k such that its kept list (k, plus the re-score margin for 16-bit keys) fits."""
    dtype = call.dtype or torch.float32
    return MAX_KEPT - (0 if dtype == torch.float32 else RESCORE_MARGIN)


LIMITS = Limits(max_dim=MAX_DIM)
TOPK_LIMITS = TopkLimits(max_dim=MAX_DIM, max_k=_max_k)

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # when the kernels are defined


def _environment() -> str:
    return _why_not_here


def _device_check(device: torch.device) -> str:
    if device.type == "cpu" and not INTERPRETED:
        return "on CPU tensors it needs TRITON_INTERPRET=1 (set before llp_kernels is imported)"
    return ""


def _details() -> str:
    from importlib.metadata import version
    mode = ("interpreter on (CPU tensors run)" if INTERPRETED
            else "CUDA tensors; CPU tensors need TRITON_INTERPRET=1")
    return f"triton {version('triton')}, {mode}"


register_backend(Backend(
    name="triton",
    summary="fused Triton kernels",
    devices=("cuda", "cpu"),
    environment=_environment,
    device_check=_device_check,
    auto_devices=("cuda",),
    auto_priority=0,
    rounds_queries_to_bank_dtype=True,
    details=_details,
))


def _import_kernels() -> str:
    """Imports the kernel files (each registers its launchers); why not, if they cannot."""
    try:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        from . import aggregation, bank_update, topk  # noqa: F401
    except Exception as error:  # a broken install must not break the other backends
        return f"triton could not be imported ({type(error).__name__}: {error})"
    return ""


_why_not_here = _import_kernels()

"""The ``triton`` backend: fused Triton kernels, one file per primitive
(``aggregation.py``, ``topk.py``, ``bank_update.py``; shared tiles in ``_launch.py``).

Triton is imported only when a kernel is first launched. On CPU tensors the kernels run
only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first import of
triton), which is how CI checks them.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Optional

import torch

from .._record import Backend, Call

MAX_K = 1024


def installed() -> str:
    return "" if importlib.util.find_spec("triton") is not None else "triton is not installed (pip install triton)"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernel(module: str, name: str):
    """The launch function ``name`` of ``module`` (imported, with triton, on first call)."""
    def launch(*args):
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args)
    launch.__name__ = launch.__qualname__ = name
    return launch


def _device_check(device: torch.device) -> str:
    if device.type == "cpu" and not interpreting():
        return "on CPU tensors it needs TRITON_INTERPRET=1 (set before triton is imported)"
    return ""


def _max_k(call: Call) -> Optional[int]:
    return MAX_K


def _details() -> str:
    from importlib.metadata import version
    mode = ("interpreter on (CPU tensors run)" if interpreting()
            else "CUDA tensors; CPU tensors need TRITON_INTERPRET=1")
    return f"triton {version('triton')}, {mode}"


BACKEND = Backend(
    name="triton",
    summary="fused Triton kernels",
    devices=("cuda", "cpu"),
    kernels={"aggregation_lse": _kernel("aggregation", "aggregation_lse"),
             "aggregation_grad": _kernel("aggregation", "aggregation_grad"),
             "topk_similarity": _kernel("topk", "topk_similarity"),
             "update_memory_bank_": _kernel("bank_update", "update_memory_bank_")},
    precision={"float32": "TF32 tensor cores when torch allows TF32 matmuls, else fp32 (ieee) "
                          "products; fp32 accumulation",
               "bfloat16": "queries rounded to bf16, bf16 tensor cores, fp32 accumulation",
               "float16": "queries rounded to fp16, fp16 tensor cores, fp32 accumulation"},
    environment=installed,
    device_check=_device_check,
    max_k=_max_k,
    auto_devices=("cuda",),
    auto_priority=0,
    rounds_queries_to_bank_dtype=True,
    details=_details,
)

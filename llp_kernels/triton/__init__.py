"""The ``triton`` backend: fused Triton kernels, one file per primitive.

Triton is imported only when this backend is first used. On CPU tensors the kernels
run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first
import of triton), which is how CI checks them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Tuple

import torch

NAME = "triton"
IMPLEMENTED: frozenset = frozenset()


def installed() -> Tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    return True, ""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(device: torch.device) -> bool:
    if not installed()[0]:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())

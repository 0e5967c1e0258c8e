"""Choosing a backend for one call, read off the backends' records.

``backend="auto"`` (the default of every public function) becomes the value of the
environment variable ``LLP_BACKEND`` when that is set; else, on a GPU model listed in the
measured table (``_auto_table``), the backend measured fastest for the op there; else the
usable backend of lowest ``auto_priority`` among those whose record lists the device
type in ``auto_devices`` (``reference`` last). An explicitly named backend is used as
named, or refused with the reason. A call that needs several ops (the aggregation
loss: forward and backward) is checked for all of them before anything launches.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import torch

from . import reference
from ._auto_table import gpu_name, measured_choice
from .backends import cpu, cuda, triton
from .backends._record import OPS, Backend, Call

RECORDS: Dict[str, Backend] = {b.name: b for b in (reference.BACKEND, cpu.BACKEND, triton.BACKEND,
                                                   cuda.BACKEND)}
BACKENDS = tuple(RECORDS)

__all__ = ["BACKENDS", "OPS", "RECORDS", "Call", "available_backends", "record", "resolve", "resolve_device",
           "unusable_reason", "usable_backends"]


def record(name: str) -> Backend:
    return RECORDS[name]


def _why(name: str, ops: Sequence[str], call: Call) -> str:
    for op in ops:
        why = RECORDS[name].why_unusable(op, call)
        if why:
            return why
    return ""


def _auto(ops: Sequence[str], call: Call) -> str:
    if call.device.type == "cuda":
        measured = {measured_choice(op, gpu_name(call.device.index or 0)) for op in ops}
        if len(measured) == 1:
            name = measured.pop()
            if name in RECORDS and not _why(name, ops, call):
                return name
    candidates = sorted((b for b in RECORDS.values() if call.device.type in b.auto_devices),
                        key=lambda b: b.auto_priority)
    for b in candidates:
        if not _why(b.name, ops, call):
            return b.name
    return "reference"


def _requested(backend: str) -> Tuple[str, str]:
    """(the backend asked for, where the name came from: 'backend' or 'LLP_BACKEND')."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    requested, source = backend, "backend"
    if requested == "auto" and os.environ.get("LLP_BACKEND"):
        requested, source = os.environ["LLP_BACKEND"].strip(), "LLP_BACKEND"
    if requested != "auto" and requested not in RECORDS:
        raise ValueError(f"{source} must be one of {('auto',) + BACKENDS}, got {requested!r}")
    return requested, source


def resolve_device(backend: str, device: torch.device) -> str:
    """For a function that runs the same PyTorch code on every backend (``class_vote``):
    ``backend`` checked as ``resolve`` checks it, against the device alone (a named
    backend that cannot run on ``device`` here is refused with the reason)."""
    requested, source = _requested(backend)
    if requested == "auto":
        return _auto((), Call(device))
    why = RECORDS[requested].why_unusable_on(device)
    if why:
        raise ValueError(f"{source}={requested!r} cannot run on {device}: {why}")
    return requested


def resolve(ops: Sequence[str], backend: str, call: Call) -> str:
    """The backend name that will run every op of ``ops`` for ``call``."""
    requested, source = _requested(backend)
    if requested == "auto":
        return _auto(ops, call)
    for op in ops:
        why = RECORDS[requested].why_unusable(op, call)
        if why:
            raise ValueError(f"{source}={requested!r} cannot run {op}: {why}")
    return requested


def unusable_reason(backend: str, op: str, device: "torch.device | str") -> str:
    """Why ``backend`` cannot run ``op`` (one of ``OPS``) on ``device``; '' when it can."""
    if backend not in RECORDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return RECORDS[backend].why_unusable(op, Call(torch.device(device)))


def available_backends() -> Dict[str, str]:
    """Every backend with one line on its state here: 'ready: ...', or why it cannot run."""
    return {name: b.status() for name, b in RECORDS.items()}


def usable_backends(device: "torch.device | str | None" = None) -> List[str]:
    """Backends that can run at least one op on ``device`` (default: any device here)."""
    devices = [torch.device(device)] if device is not None else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    return [name for name, b in RECORDS.items()
            if any(not b.why_unusable(op, Call(d)) for op in OPS for d in devices)]

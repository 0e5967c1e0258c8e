"""Choosing a backend for one call.

``backend="auto"`` (the default of every public function) becomes the value of the
environment variable ``LLP_BACKEND`` when that is set; else, on a GPU model listed in the
measured table (``_auto_table``), the backend measured fastest for the op there; else
the first backend in ``AUTO_ORDER[device type]`` that implements the op and can run on
the tensors' device.
An explicitly named backend is used as named, or refused with the reason.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Dict, List

import torch

from . import cpu_backend, cuda_backend, reference
from ._auto_table import gpu_name, measured_choice
from . import triton as triton_backend
from ._extension import cuda_compiled, cuda_device_status, extension_error

BACKENDS = ("reference", "cpu", "triton", "cuda")
OPS = ("aggregation_lse", "aggregation_grad", "topk_similarity", "update_memory_bank_")

# Fastest first, per device type, for devices without a measured entry. On CUDA Triton
# leads: the CUDA kernels have not yet been timed on a GPU.
AUTO_ORDER = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}

_MODULES: Dict[str, ModuleType] = {
    "reference": reference,
    "cpu": cpu_backend,
    "triton": triton_backend,
    "cuda": cuda_backend,
}


def _implements(name: str, op: str) -> bool:
    module = _MODULES[name]
    implemented = getattr(module, "IMPLEMENTED", None)
    return op in implemented if implemented is not None else hasattr(module, op)


def _unusable_reason(name: str, op: str, device: torch.device) -> str:
    """Why backend ``name`` cannot run ``op`` on ``device`` ('' when it can)."""
    if name == "reference":
        return ""
    if name == "cpu":
        if extension_error() is not None:
            return f"the compiled extension is unavailable ({extension_error()})"
        if device.type != "cpu":
            return f"it runs on CPU tensors only, got {device}"
    elif name == "cuda":
        if not cuda_compiled():
            return ("the CUDA kernels were not compiled (no nvcc at build time)"
                    if extension_error() is None else
                    f"the compiled extension is unavailable ({extension_error()})")
        if device.type != "cuda":
            return f"it runs on CUDA tensors only, got {device}"
        count, why = cuda_device_status()
        if count < 1:
            return f"no CUDA device is usable ({why or 'none found'})"
    elif name == "triton":
        ok, why = triton_backend.installed()
        if not ok:
            return why
        if device.type == "cpu" and not triton_backend.interpreting():
            return "on CPU tensors it needs TRITON_INTERPRET=1 (set before triton is imported)"
        if device.type not in ("cpu", "cuda"):
            return f"it runs on CUDA tensors, got {device}"
    if not _implements(name, op):
        return f"it does not implement {op} yet"
    return ""


def unusable_reason(backend: str, op: str, device: "torch.device | str") -> str:
    """Why ``backend`` cannot run ``op`` (one of ``OPS``) on ``device``; '' when it can."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return _unusable_reason(backend, op, torch.device(device))


def resolve(op: str, backend: str, device: torch.device) -> str:
    """The concrete backend name that will run ``op`` on ``device``."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    requested, source = backend, "backend"
    if requested == "auto" and os.environ.get("LLP_BACKEND"):
        requested, source = os.environ["LLP_BACKEND"].strip(), "LLP_BACKEND"
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"{source} must be one of {('auto',) + BACKENDS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            measured = measured_choice(op, gpu_name(device.index or 0))
            if measured in BACKENDS and not _unusable_reason(measured, op, device):
                return measured
        for name in AUTO_ORDER.get(device.type, ("reference",)):
            if not _unusable_reason(name, op, device):
                return name
        return "reference"
    why = _unusable_reason(requested, op, device)
    if why:
        raise ValueError(f"{source}={requested!r} cannot run {op}: {why}")
    return requested


def module(name: str) -> ModuleType:
    return _MODULES[name]


def available_backends() -> Dict[str, str]:
    """Every backend with one line on its state here: 'ready: ...', or why it cannot run."""
    status: Dict[str, str] = {"reference": "ready: plain PyTorch (materialising oracle)"}
    if extension_error() is None:
        status["cpu"] = f"ready: compiled C++/OpenMP kernels ({torch.get_num_threads()} threads)"
    else:
        status["cpu"] = f"unavailable: {extension_error()}"
    ok, why = triton_backend.installed()
    if not ok:
        status["triton"] = f"unavailable: {why}"
    else:
        from importlib.metadata import version
        ops = ", ".join(sorted(triton_backend.IMPLEMENTED)) or "no ops yet"
        mode = ("interpreter on (CPU tensors run)" if triton_backend.interpreting()
                else "CUDA tensors; CPU tensors need TRITON_INTERPRET=1")
        status["triton"] = f"ready: triton {version('triton')}, {mode}; ops: {ops}"
    if not cuda_compiled():
        status["cuda"] = ("unavailable: compiled without CUDA" if extension_error() is None
                          else f"unavailable: {extension_error()}")
    else:
        from ._extension import extension
        archs = extension().cuda_archs
        count, why = cuda_device_status()
        ops = ", ".join(sorted(cuda_backend.IMPLEMENTED))
        if count > 0:
            status["cuda"] = f"ready: compiled for sm_{archs}, {count} device(s); ops: {ops}"
        else:
            status["cuda"] = f"compiled for sm_{archs} but no device ({why or 'none found'})"
    return status


def usable_backends(device: "torch.device | str | None" = None) -> List[str]:
    """Backends that can run at least one op on ``device`` (default: any device here)."""
    devices = [torch.device(device)] if device is not None else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    return [name for name in BACKENDS
            if any(not _unusable_reason(name, op, d) for op in OPS for d in devices)]

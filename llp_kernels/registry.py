"""Which backend runs an op: the backends, each op's launchers, and the choice for a call.

An op module makes its handle, ``TOPK = Op("topk_similarity", TopkLimits)``. A backend file
declares itself once, ``register_backend(Backend(name="cpu", ...))``, and registers each
launcher to its op with one call that names both::

    @register_kernel(TOPK, "cpu")
    def launch_topk(queries, keys, k, tau, key_bias): ...

with the ``limits`` it declares for that op (an instance of the op's limits type; none:
it takes every call). The op's custom op runs ``TOPK.kernels[backend]``.

``backend="auto"`` (the default of every public function) becomes the value of the
environment variable ``LLP_BACKEND`` when that is set; else, on a GPU model listed in the
measured table (``_auto_table``), the backend measured fastest for the op there; else the
usable backend of lowest ``auto_priority`` among those that list the device type in
``auto_devices`` (``reference`` last). An explicitly named backend is used as named, or
refused with the reason. A call that needs several ops (the aggregation loss: forward
and backward) is checked for all of them before anything launches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

from ._auto_table import gpu_name, measured_choice

__all__ = ["BACKENDS", "OPS", "Backend", "Call", "Limits", "Op", "available_backends", "register_backend",
           "register_kernel", "resolve", "resolve_device", "unusable_reason", "usable_backends"]

Launcher = TypeVar("Launcher", bound=Callable)


@dataclass(frozen=True)
class Call:
    """What a dispatch decision may look at: metadata only, never tensor values."""
    device: torch.device
    dim: Optional[int] = None
    k: Optional[int] = None
    dtype: Optional[torch.dtype] = None  # of the bank / keys


@dataclass(frozen=True)
class Limits:
    """What a backend declares it takes for one op: rows of at most ``max_dim`` columns
    (None: any). An op whose calls have more to bound subclasses it."""
    max_dim: Optional[int] = None

    def why_beyond(self, call: Call) -> str:
        """Why ``call`` lies beyond these limits ('' when it does not)."""
        if self.max_dim is not None and call.dim is not None and call.dim > self.max_dim:
            return f"it supports D <= {self.max_dim}, got D={call.dim}"
        return ""


def _no_reason(*_args) -> str:
    return ""


@dataclass(frozen=True)
class Backend:
    """Where a backend runs, and how ``auto`` and ``available_backends()`` see it."""
    name: str
    summary: str                              # what it is, one line
    devices: Tuple[str, ...]                  # device types whose tensors its kernels take
    environment: Callable[[], str] = _no_reason            # why it cannot run here at all ('' if it can)
    device_check: Callable[[torch.device], str] = _no_reason  # why not on this device ('' if fine)
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

    def status(self) -> str:
        """One line for ``available_backends()``: 'ready: ...' or 'unavailable: why'."""
        why = self.environment()
        if why:
            return f"unavailable: {why}"
        extra = self.details()
        return f"ready: {self.summary}" + (f"; {extra}" if extra else "")


BACKENDS: Dict[str, Backend] = {}   # in the order they registered
OPS: Dict[str, "Op"] = {}


class Op:
    """One op's launchers: backend name -> launcher, and the limits each declared."""

    def __init__(self, name: str, limits_type: type = Limits):
        self.name, self.limits_type = name, limits_type
        self.kernels: Dict[str, Callable] = {}
        self.limits: Dict[str, Limits] = {}
        OPS[name] = self

    def why_unusable(self, backend: str, call: Call) -> str:
        """Why ``backend`` cannot run this op for ``call`` ('' when it can)."""
        why = BACKENDS[backend].why_unusable_on(call.device)
        if why:
            return why
        if backend not in self.kernels:
            return f"it does not implement {self.name}"
        return self.limits[backend].why_beyond(call)

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={tuple(self.kernels)})"


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def register_kernel(op: Op, backend: str, limits: Optional[Limits] = None) -> Callable[[Launcher], Launcher]:
    """A decorator: registers the launcher it decorates as ``backend``'s kernel for ``op``,
    with the ``limits`` the backend declares (of the op's limits type; None: no limit)."""
    if backend not in BACKENDS:
        raise ValueError(f"register the backend {backend!r} before its kernels")
    limits = op.limits_type() if limits is None else limits
    if not isinstance(limits, op.limits_type):
        raise TypeError(f"{op.name} takes limits of type {op.limits_type.__name__}, got {type(limits).__name__}")

    def register(launcher: Launcher) -> Launcher:
        op.kernels[backend], op.limits[backend] = launcher, limits
        return launcher
    return register


# ---- the choice for one call ------------------------------------------------------------

def _why(name: str, ops: Sequence[Op], call: Call) -> str:
    for op in ops:
        why = op.why_unusable(name, call)
        if why:
            return why
    return ""


def _auto(ops: Sequence[Op], call: Call) -> str:
    if call.device.type == "cuda":
        measured = {measured_choice(op.name, gpu_name(call.device.index or 0)) for op in ops}
        if len(measured) == 1:
            name = measured.pop()
            if name in BACKENDS and not _why(name, ops, call):
                return name
    candidates = sorted((b for b in BACKENDS.values() if call.device.type in b.auto_devices),
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
    if requested != "auto" and requested not in BACKENDS:
        raise ValueError(f"{source} must be one of {('auto',) + tuple(BACKENDS)}, got {requested!r}")
    return requested, source


def resolve_device(backend: str, device: torch.device) -> str:
    """For a function that runs the same PyTorch code on every backend (``class_vote``):
    ``backend`` checked as ``resolve`` checks it, against the device alone (a named
    backend that cannot run on ``device`` here is refused with the reason)."""
    requested, source = _requested(backend)
    if requested == "auto":
        return _auto((), Call(device))
    why = BACKENDS[requested].why_unusable_on(device)
    if why:
        raise ValueError(f"{source}={requested!r} cannot run on {device}: {why}")
    return requested


def resolve(ops: Sequence[Op], backend: str, call: Call) -> str:
    """The backend name that will run every op of ``ops`` for ``call``."""
    requested, source = _requested(backend)
    if requested == "auto":
        return _auto(ops, call)
    for op in ops:
        why = op.why_unusable(requested, call)
        if why:
            raise ValueError(f"{source}={requested!r} cannot run {op.name}: {why}")
    return requested


# ---- what runs here ---------------------------------------------------------------------

def unusable_reason(backend: str, op: str, device: "torch.device | str") -> str:
    """Why ``backend`` cannot run ``op`` (one of ``OPS``) on ``device``; '' when it can."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {tuple(OPS)}, got {op!r}")
    return OPS[op].why_unusable(backend, Call(torch.device(device)))


def available_backends() -> Dict[str, str]:
    """Every backend with one line on its state here: 'ready: ...', or why it cannot run."""
    return {name: b.status() for name, b in BACKENDS.items()}


def usable_backends(device: "torch.device | str | None" = None) -> List[str]:
    """Backends that can run at least one op on ``device`` (default: any device here)."""
    devices = [torch.device(device)] if device is not None else (
        [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else []))
    return [name for name in BACKENDS
            if any(not op.why_unusable(name, Call(d)) for op in OPS.values() for d in devices)]

"""Loading the compiled module ``llp_kernels._C`` and talking to it.

The module links no libtorch: tensors cross as raw pointers, sizes and dtype codes
(``DTYPE_CODES``, matching ``csrc/common/dtype.h``). A missing or broken build never
breaks ``import llp_kernels``; it is reported once, with the reason, as a warning.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

_C = None
_LOAD_ERROR: Optional[str] = None
try:  # pragma: no branch
    from . import _C  # type: ignore[attr-defined]  # noqa: F811
except Exception as exc:  # ImportError, or an OSError from a broken shared object
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    warnings.warn(
        "llp_kernels: the compiled extension llp_kernels._C is unavailable "
        f"({_LOAD_ERROR}); the 'cpu' and 'cuda' backends are disabled, 'reference' "
        "and 'triton' still work. Rebuild with `pip install -e .` to enable them.",
        RuntimeWarning,
        stacklevel=2,
    )


def extension():
    """The loaded ``_C`` module, or a RuntimeError saying why it is unavailable."""
    if _C is None:
        raise RuntimeError(f"llp_kernels._C is not available: {_LOAD_ERROR}")
    return _C


def extension_error() -> Optional[str]:
    return _LOAD_ERROR


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.cuda_compiled)


def cuda_device_status() -> tuple[int, str]:
    """(device count, reason when < 1) as the extension's own CUDA runtime sees it."""
    if not cuda_compiled():
        return 0, "CUDA kernels were not compiled"
    count, why = _C.cuda_device_count()
    return count, why


def ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def dtype_code(t: torch.Tensor, name: str) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}") from None

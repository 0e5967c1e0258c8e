"""Argument checks shared by every public function.

Two kinds, kept apart on purpose:
* metadata checks (types, shapes, dtypes, devices, scalar ranges) cost nothing and run
  in the public functions, where ``torch.compile`` can trace them;
* value checks on small integer vectors (labels, indices) cost one pass over O(B) or
  O(M) integers and run inside the custom ops, on real tensors. No check ever reads
  the bank's embeddings.
Every failure is a ``TypeError``/``ValueError`` naming the argument and what was expected.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# Below ~1e-9, fp32 logits of magnitude 1/tau carry rounding errors of e^88 and more in
# their exponentials, and the log-sum-exps stop being finite on some backends; 1e-6 keeps
# a margin. (Useful temperatures are 0.01-1.)
TAU_MIN = 1e-6


def tensor(name: str, t) -> torch.Tensor:
    """``t`` itself, when it is a tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def embeddings(name: str, t, dim: Optional[int] = None, dim_from: str = "") -> torch.Tensor:
    """A non-empty 2-D float32/bfloat16/float16 tensor [rows, D] (D == dim if given)."""
    tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(
            f"{name} must have D={dim} columns like {dim_from}, got shape {tuple(t.shape)}")
    return t


def _one_per_row(name: str, t: torch.Tensor, length: Optional[int], length_from: str) -> torch.Tensor:
    if length is None:
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        return t
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name} must be 1-D with {length} entries (one per row of {length_from}), "
            f"got shape {tuple(t.shape)}")
    return t


def labels(name: str, t, length: Optional[int], length_from: str) -> torch.Tensor:
    """A 1-D integer tensor with ``length`` entries (any length when None)."""
    tensor(name, t)
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int64 or int32), got {t.dtype}")
    return _one_per_row(name, t, length, length_from)


def bias(name: str, t, length: int, length_from: str) -> torch.Tensor:
    """A 1-D float tensor with ``length`` entries."""
    tensor(name, t)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor, got {t.dtype}")
    return _one_per_row(name, t, length, length_from)


def same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    present = {n: t for n, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{n} on {t.device}" for n, t in present.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return next(iter(devices))


def positive_float(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {x}")
    return float(x)


def temperature(name: str, x) -> float:
    """A finite float >= TAU_MIN."""
    x = positive_float(name, x)
    if x < TAU_MIN:
        raise ValueError(f"{name} must be >= {TAU_MIN:g} (smaller temperatures overflow fp32 "
                         f"exponentials), got {x:g}")
    return x


def unit_interval(name: str, x) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {x}")
    return float(x)


def count(name: str, k, n_keys: int, keys_name: str) -> int:
    """An int k with 1 <= k <= n_keys."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > n_keys:
        raise ValueError(
            f"{name}={k} is larger than the number of rows of {keys_name} ({n_keys})")
    return int(k)


def optional_num_classes(name: str, c) -> Optional[int]:
    if c is None:
        return None
    if isinstance(c, bool) or not isinstance(c, numbers.Integral):
        raise TypeError(f"{name} must be an int or None, got {type(c).__name__}")
    if c < 1:
        raise ValueError(f"{name} must be >= 1, got {c}")
    return int(c)


# ---- value checks: run inside the ops, on small integer vectors --------------------------

def labels_in_range(name: str, t: torch.Tensor, low: int, high: Optional[int]) -> None:
    """Every entry in [low, high) (high None: no upper bound). One pass over t, and no
    wait for the device: the condition goes to ``torch._assert_async``, which raises at
    once on CPU tensors (a ValueError here) and on a GPU fails the stream with a
    device-side assertion, as torch's own losses do for class indices out of range."""
    if t.numel() == 0:
        return
    ok = t.min() >= low
    if high is not None:
        ok = ok & (t.max() < high)
    rule = f"[{low}, {high})" if high is not None else f">= {low}"
    try:
        torch._assert_async(ok, f"{name} must lie in {rule}")
    except RuntimeError:
        lo, hi = int(t.min()), int(t.max())  # only to name the offending value
        bad = lo if lo < low else hi
        raise ValueError(f"{name} must be {'>= ' + str(low) if lo < low else '< ' + str(high)}, "
                         f"found {bad}") from None

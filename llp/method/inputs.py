"""Input rules shared by ``python -m llp.train`` and ``python -m llp.propagate``: files that
must exist, output folders, lists of row positions, class ids and the ``--backend`` flag.

Each check raises ``InputError`` (a ``ValueError``) with one line that names the flag and
what was expected; both commands print it as ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from llp_kernels.registry import OPS, Call, resolve

# Class ids index per-class arrays (vote counts, one-hot shares, the classifier's output
# layer), so they are bounded before anything is allocated: ids 0 .. 2**20 - 1, i.e. at
# most 1,048,576 classes (a classifier head of that width on 512 features is 2 GiB).
MAX_CLASSES = 1 << 20


class InputError(ValueError):
    """Input that cannot be used; the message is one line."""


def existing_file(path: str, flag: str) -> Path:
    """``path`` as a Path, when it names a file (a link to one counts)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {path} is a directory, not a file")
    if not p.is_file():
        raise InputError(f"{flag} {path} does not exist")
    return p


def output_dir(path: str, flag: str) -> Path:
    """``path`` as a Path, when it can be (or already is) a directory to write into."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise InputError(f"{flag} {path} is a symbolic link to {p.readlink()}, which does not exist")
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path} exists and is not a directory")
    return p


def read_positions(path: str, flag: str, n: int) -> np.ndarray:
    """The row positions listed in the text file ``path`` (whitespace-separated integers),
    sorted and without repeats; each must lie in [0, n), and there must be at least one."""
    p = existing_file(path, flag)
    try:
        words = p.read_text().split()
    except UnicodeDecodeError:
        raise InputError(f"{flag} {path} is not a text file of row positions") from None
    except OSError as exc:
        raise InputError(f"{flag} {path} cannot be read ({exc.strerror or exc})") from None
    if not words:
        raise InputError(f"{flag} {path} lists no row: there is no labeled row")
    try:
        positions = np.array([int(w) for w in words], dtype=object)
    except ValueError:
        bad = next(w for w in words if not _is_int(w))
        raise InputError(f"{flag} {path} must list row positions (integers), found {bad[:40]!r}") from None
    low, high = min(positions), max(positions)
    if low < 0 or high >= n:
        raise InputError(f"{flag} {path}: positions must lie in [0, {n}), found {low if low < 0 else high}")
    return np.unique(positions.astype(np.int64))


def _is_int(word: str) -> bool:
    try:
        int(word)
    except ValueError:
        return False
    return True


def class_ids_below_bound(largest: int, flag: str, where: str = "") -> None:
    """Class ids are < ``MAX_CLASSES``; ``largest`` is the largest id found (at ``where``)."""
    if largest >= MAX_CLASSES:
        at = f" at {where}" if where else ""
        raise InputError(f"{flag} holds class id {largest}{at}: class ids must lie in [0, {MAX_CLASSES}) "
                         f"(2**20 classes at most; they index per-class arrays)")


def usable_backend(backend: str, device: torch.device, ops: Sequence[str], dim: int, k: int,
                   dtype: torch.dtype = torch.float32, flag: str = "--backend") -> None:
    """The backend (or ``LLP_BACKEND`` for auto) can run ``ops`` on ``device`` for rows of
    ``dim`` and top-k lists of ``k``: the kernels' own dispatch rule, checked up front."""
    try:
        resolve(tuple(OPS[op] for op in ops), backend, Call(device, dim=dim, k=k, dtype=dtype))
    except ValueError as exc:
        raise InputError(f"{flag} {backend}: {exc}") from None


__all__ = ["InputError", "MAX_CLASSES", "class_ids_below_bound", "existing_file", "output_dir",
           "read_positions", "usable_backend"]

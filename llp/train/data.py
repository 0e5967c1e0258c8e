"""Data for the trainer: a training set whose labels are partly hidden, and a test set.

Three kinds share one shape (``Split``):
- ``digits`` (the default): scikit-learn's bundled 1,797 real 8x8 digit images;
- ``features``: precomputed feature vectors from ``--features X.npy --labels y.npy``;
- ``images``: a class-per-subfolder image folder (``llp.train.image_folder``).

A source hands out batches by dataset index: ``source.batch(idx, generator)`` returns the
inputs of rows ``idx``, augmented with ``generator``'s randomness when one is given and
plain (for the memory bank's first fill and for evaluation) when it is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ..method.inputs import class_ids_below_bound, existing_file, read_positions

TEST_SPLIT_SEED = 12345  # the held-out test set never moves with --seed


class DataError(ValueError):
    """Input data that cannot be used (a file that does not decode, say): one line."""


class TensorSource:
    """Inputs held in memory as one tensor [N, ...], with an optional batch augmentation."""

    def __init__(self, x: Tensor, augment: Optional[Callable[[Tensor, torch.Generator], Tensor]] = None):
        self.x, self.augment = x, augment

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, idx: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        x = self.x[idx.cpu()]
        return self.augment(x, generator) if generator is not None and self.augment else x


@dataclass
class Split:
    """``train_y`` is the ground truth of every training row; the trainer shows the labels
    of ``labeled`` rows only and uses the rest for metrics (pseudo-label accuracy)."""
    kind: str
    train: "TensorSource"
    train_y: Tensor   # int64 [N]
    labeled: Tensor   # bool [N]
    test: "TensorSource"
    test_y: Tensor    # int64 [N_test]
    num_classes: int
    input_shape: tuple  # of one example, for building the network

    @property
    def train_x(self) -> Tensor:  # in-memory kinds only
        return self.train.x

    @property
    def test_x(self) -> Tensor:
        return self.test.x


def stratified_pick(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask choosing ``fraction`` of each class (at least one per class)."""
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = max(1, int(round(fraction * len(members))))
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def choose_labeled(train_y: np.ndarray, fraction: float, seed: int,
                   labeled_list: Optional[str] = None) -> np.ndarray:
    """The labeled training rows: from ``labeled_list`` (a text file of row positions)
    when given, else a stratified ``fraction`` drawn with ``seed``."""
    if not labeled_list:
        return stratified_pick(train_y, fraction, np.random.default_rng(seed))
    positions = read_positions(labeled_list, "--labeled-list", len(train_y))
    labeled = np.zeros(len(train_y), dtype=bool)
    labeled[positions] = True
    return labeled


def load_digits_split(labeled_fraction: float, seed: int, test_fraction: float = 0.2,
                      labeled_list: Optional[str] = None) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    test = stratified_pick(y, test_fraction, np.random.default_rng(TEST_SPLIT_SEED))
    labeled = choose_labeled(y[~test], labeled_fraction, seed, labeled_list)
    return Split("digits", TensorSource(torch.from_numpy(x[~test]), augment_digits),
                 torch.from_numpy(y[~test]), torch.from_numpy(labeled),
                 TensorSource(torch.from_numpy(x[test])), torch.from_numpy(y[test]),
                 int(y.max()) + 1, tuple(x.shape[1:]))


def load_feature_split(features: str, labels: str, labeled_fraction: float, seed: int,
                       test_fraction: float = 0.2, labeled_list: Optional[str] = None,
                       noise: float = 0.0) -> Split:
    """Precomputed features X [N, F] (any real dtype) and integer labels y [N] in [0, C),
    C <= ``inputs.MAX_CLASSES``. A stratified ``test_fraction`` is held out; features are
    standardised with the training rows' mean and standard deviation (after
    ``_unit_columns``, so at any magnitude). Training batches get Gaussian noise of
    standard deviation ``noise`` (in standardised units; 0: no augmentation)."""
    arrays = []
    for flag, path in (("--features", features), ("--labels", labels)):
        existing_file(path, flag)
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{flag} {path} cannot be read as a .npy array without objects "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    x, y = arrays
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"--features must be a real (integer or float) [N, F] array, got shape {x.shape} "
                         f"of {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"--features must have at least one row and one column, got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"--labels must be an integer [N] array with N={x.shape[0]}, "
                         f"got shape {y.shape} of {y.dtype}")
    if y.min() < 0:
        raise ValueError("--labels must be class ids >= 0 (every row needs its true class; "
                         "which rows the trainer sees labeled comes from --labeled-fraction/--labeled-list)")
    class_ids_below_bound(int(y.max()), "--labels", f"row {int(np.argmax(y))}")
    if not np.isfinite(x).all():
        raise ValueError("--features contains NaN or infinite values")
    x, y = _unit_columns(x), y.astype(np.int64)
    test = stratified_pick(y, test_fraction, np.random.default_rng(TEST_SPLIT_SEED))
    if test.all():
        raise ValueError(f"--features has {len(y)} rows, and the test split (at least one row of each "
                         f"class, --test-fraction {test_fraction}) takes them all: no training row is left")
    mean, std = x[~test].mean(axis=0), x[~test].std(axis=0) + 1e-6
    x = (x - mean) / std
    labeled = choose_labeled(y[~test], labeled_fraction, seed, labeled_list)
    augment = None if noise <= 0 else (lambda batch, g: batch + noise * torch.randn(batch.shape, generator=g))
    return Split("features", TensorSource(torch.from_numpy(x[~test]), augment), torch.from_numpy(y[~test]),
                 torch.from_numpy(labeled), TensorSource(torch.from_numpy(x[test])),
                 torch.from_numpy(y[test]), int(y.max()) + 1, (x.shape[1],))


def _unit_columns(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` with each column divided by its largest magnitude (a zero column
    kept). Standardising does not depend on a column's scale, but in float32 it squares
    the values, which overflows above about 1.8e19; float64 values beyond float32's
    range fit after this too."""
    x = x.astype(np.float64) if np.issubdtype(x.dtype, np.integer) else x
    largest = np.abs(x).max(axis=0)
    return (x / np.where(largest > 0, largest, 1)).astype(np.float32)


def augment_digits(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random shifts of up to one pixel and a little pixel noise: enough for 8x8 digits."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, c, h, w + 2)
    shifted = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, c, h, w)
    shifted = torch.gather(shifted, 3, cols)
    noise = 0.05 * torch.randn(shifted.shape, generator=generator)
    return (shifted + noise).clamp(0.0, 1.0)

"""Data for the trainer: a training set whose labels are partly hidden, and a test set.

Three kinds share one shape (``Split``):
- ``digits`` (the default): scikit-learn's bundled 1,797 real 8x8 digit images;
- ``features``: precomputed feature vectors from ``--features X.npy --labels y.npy``;
- ``images``: a class-per-subfolder image folder (``llp.image_folder``).

A source hands out batches by dataset index: ``source.batch(idx, generator)`` returns the
inputs of rows ``idx``, augmented with ``generator``'s randomness when one is given and
plain (for the memory bank's first fill and for evaluation) when it is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

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
    positions = np.loadtxt(labeled_list, dtype=np.int64, ndmin=1)
    if positions.size == 0 or positions.min() < 0 or positions.max() >= len(train_y):
        raise ValueError(f"--labeled-list {labeled_list}: positions must lie in [0, {len(train_y)})")
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
    """Precomputed features X [N, F] (any float dtype) and integer labels y [N] in [0, C).
    A stratified ``test_fraction`` is held out; features are standardised with the
    training rows' mean and standard deviation. Training batches get Gaussian noise of
    standard deviation ``noise`` (in standardised units; 0: no augmentation)."""
    for flag, path in (("--features", features), ("--labels", labels)):
        if not Path(path).is_file():
            raise ValueError(f"{flag} {path} does not exist")
    try:
        x, y = np.load(features, allow_pickle=False), np.load(labels, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"--features/--labels must be .npy arrays without objects ({exc})") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"--features must be a numeric [N, F] array, got shape {x.shape} of {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"--labels must be an integer [N] array with N={x.shape[0]}, "
                         f"got shape {y.shape} of {y.dtype}")
    if y.min() < 0:
        raise ValueError("--labels must be class ids >= 0 (every row needs its true class; "
                         "which rows the trainer sees labeled comes from --labeled-fraction/--labeled-list)")
    if not np.isfinite(x).all():
        raise ValueError("--features contains NaN or infinite values")
    x, y = x.astype(np.float32), y.astype(np.int64)
    test = stratified_pick(y, test_fraction, np.random.default_rng(TEST_SPLIT_SEED))
    mean, std = x[~test].mean(axis=0), x[~test].std(axis=0) + 1e-6
    x = (x - mean) / std
    labeled = choose_labeled(y[~test], labeled_fraction, seed, labeled_list)
    augment = None if noise <= 0 else (lambda batch, g: batch + noise * torch.randn(batch.shape, generator=g))
    return Split("features", TensorSource(torch.from_numpy(x[~test]), augment), torch.from_numpy(y[~test]),
                 torch.from_numpy(labeled), TensorSource(torch.from_numpy(x[test])),
                 torch.from_numpy(y[test]), int(y.max()) + 1, (x.shape[1],))


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

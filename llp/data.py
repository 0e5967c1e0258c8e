"""Data for the trainer: scikit-learn's bundled digits (the default), with a stratified
test split, a stratified labeled subset and light augmentation for 8x8 images."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Split:
    """Training images [N, 1, H, W] with ground truth [N] (used only for metrics on the
    unlabeled part), which of them are labeled, and a held-out test set."""
    train_x: Tensor
    train_y: Tensor
    labeled: Tensor  # bool [N]
    test_x: Tensor
    test_y: Tensor
    num_classes: int


def _stratified_pick(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask choosing ``fraction`` of each class (at least one per class)."""
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = max(1, int(round(fraction * len(members))))
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def load_digits_split(labeled_fraction: float, seed: int, test_fraction: float = 0.2,
                      labeled_list: "str | None" = None) -> Split:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # [1797, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = _stratified_pick(y, test_fraction, np.random.default_rng(12345))  # fixed test set
    train_x, train_y = x[~test], y[~test]
    if labeled_list:
        positions = np.loadtxt(labeled_list, dtype=np.int64, ndmin=1)
        if positions.size == 0 or positions.min() < 0 or positions.max() >= len(train_y):
            raise ValueError(f"--labeled-list {labeled_list}: positions must lie in "
                             f"[0, {len(train_y)})")
        labeled = np.zeros(len(train_y), dtype=bool)
        labeled[positions] = True
    else:
        labeled = _stratified_pick(train_y, labeled_fraction, rng)
    return Split(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(labeled),
                 torch.from_numpy(x[test]), torch.from_numpy(y[test]), int(y.max()) + 1)


def augment(images: Tensor, generator: torch.Generator) -> Tensor:
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

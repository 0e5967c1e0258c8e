"""``--data DIR``: an image folder with one subfolder per class.

Layouts: ``DIR/train/<class>/*`` with ``DIR/val/<class>/*`` (or ``test``) as the test
set, or ``DIR/<class>/*`` alone, from which a fixed stratified test split is held out.
Classes are the subfolders holding images, in sorted order (torchvision's ImageFolder
order). Images are resized so the short side is ``8/7 * image_size`` and centre-cropped
to a square; training batches then take a random ``image_size`` crop and a random
horizontal flip drawn from the trainer's generator (so a resumed run sees the same
crops), evaluation the centre crop; pixels are normalised with the ImageNet mean and
standard deviation. Decoding runs in a thread pool. torchvision does the listing,
loading and resizing when it imports (``llp.train.torchvision_fallback``).

The scan's rules: a file or folder reached through a symbolic link that points outside
``DIR`` is not followed (``follow_symlinks`` follows it); a file that does not decode as
an image (corrupt, empty, truncated, not an image) is skipped, with one warning line
that counts them and names the first few (``strict`` makes it an error).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from . import torchvision_fallback
from .data import TEST_SPLIT_SEED, DataError, Split, choose_labeled, stratified_pick

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
NAMED = 3  # problem files named in a warning


class ScanPolicy:
    """Where a scan may go and what it keeps; collects what it left out."""

    def __init__(self, root: Path, follow_symlinks: bool, workers: int):
        self.root = os.path.realpath(root)
        self.follow, self.workers = follow_symlinks, max(1, workers)
        self.outside: List[str] = []      # links leading out of root, not followed
        self.unreadable: List[Tuple[str, str]] = []

    def allowed(self, path: str) -> bool:
        if self.follow or not os.path.islink(path):
            return True
        target = os.path.realpath(path)
        if target == self.root or target.startswith(self.root + os.sep):
            return True
        self.outside.append(path)
        return False

    def readable(self, paths: List[str]) -> List[bool]:
        with ThreadPoolExecutor(self.workers) as pool:
            errors = list(pool.map(_decode_error, paths))
        self.unreadable += [(p, e) for p, e in zip(paths, errors) if e]
        return [not e for e in errors]


def _decode_error(path: str) -> str:
    """'' when ``path`` decodes as an image, else why not (reduced-size decode: cheap)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
        return ""
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'cannot decode'}"


def _files_under(folder: str, policy: ScanPolicy) -> List[str]:
    """Image files below ``folder``, sorted, without leaving the root through links."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if policy.allowed(os.path.join(dirpath, d)))
        found += [os.path.join(dirpath, f) for f in filenames
                  if Path(f).suffix.lower() in EXTENSIONS and policy.allowed(os.path.join(dirpath, f))
                  and os.path.isfile(os.path.join(dirpath, f))]
    return sorted(found)


def scan(root: Path, policy: ScanPolicy, classes: Optional[List[str]] = None
         ) -> Tuple[List[str], List[str], np.ndarray]:
    """(classes, image paths, class ids): sorted class subfolders holding readable images."""
    if classes is None:
        names = sorted(d.name for d in root.iterdir() if d.is_dir() and policy.allowed(str(d)))
    else:
        names = [c for c in classes if (root / c).is_dir() and policy.allowed(str(root / c))]
    listed = {c: _files_under(str(root / c), policy) for c in names}
    flat = [p for c in names for p in listed[c]]
    ok = dict(zip(flat, policy.readable(flat)))
    kept = {c: [p for p in listed[c] if ok[p]] for c in names}
    if classes is None:
        classes = [c for c in names if kept[c]]
        if not classes:
            raise ValueError(f"--data {root}: no class subfolders with readable images "
                             f"({', '.join(sorted(EXTENSIONS))}) found")
    paths, labels = [], []
    for i, c in enumerate(classes):
        paths += kept.get(c, [])
        labels += [i] * len(kept.get(c, []))
    return classes, paths, np.asarray(labels, dtype=np.int64)


def report(policy: ScanPolicy, root: str, strict: bool) -> None:
    """One warning line per kind of file left out (an error with ``strict``)."""
    if policy.unreadable:
        named = "; ".join(f"{os.path.relpath(p, root)} ({e})" for p, e in policy.unreadable[:NAMED])
        more = f" and {len(policy.unreadable) - NAMED} more" if len(policy.unreadable) > NAMED else ""
        line = f"--data {root}: {len(policy.unreadable)} unreadable or non-image files: {named}{more}"
        if strict:
            raise ValueError(line)
        print(f"warning: {line}; skipped (--strict-images makes this an error)", file=sys.stderr)
    if policy.outside:
        named = ", ".join(f"{os.path.relpath(p, root)} -> {os.path.realpath(p)}" for p in policy.outside[:NAMED])
        print(f"warning: --data {root}: {len(policy.outside)} links point outside it and were not followed "
              f"({named}); --follow-symlinks follows them", file=sys.stderr)


class FolderSource:
    def __init__(self, root: Path, classes: List[str], paths: List[str], labels: np.ndarray,
                 image_size: int, workers: int):
        self.paths, self.size, self.workers = paths, image_size, max(1, workers)
        self.stored = max(image_size, round(image_size * 8 / 7))
        self.dataset = (torchvision_fallback.image_folder(root, classes, list(zip(paths, labels.tolist())))
                        if torchvision_fallback.torchvision() is not None else None)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Tensor:
        path = self.paths[i]
        try:
            img = self.dataset.loader(path) if self.dataset is not None else torchvision_fallback.open_rgb(path)
            return torchvision_fallback.square(img, self.stored)
        except Exception as exc:
            raise DataError(f"cannot decode {path}: {type(exc).__name__}: {exc}") from None

    def batch(self, idx: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        rows = idx.cpu().tolist()
        with ThreadPoolExecutor(self.workers) as pool:
            images = torch.stack(list(pool.map(self._load, rows)))
        n, s, margin = len(rows), self.size, self.stored - self.size
        if generator is None:
            top = left = torch.full((n,), margin // 2)
            flip = torch.zeros(n, dtype=torch.bool)
        else:
            top = torch.randint(0, margin + 1, (n,), generator=generator)
            left = torch.randint(0, margin + 1, (n,), generator=generator)
            flip = torch.rand(n, generator=generator) < 0.5
        crops = torch.stack([images[i, :, top[i]:top[i] + s, left[i]:left[i] + s] for i in range(n)])
        crops = torch.where(flip.view(n, 1, 1, 1), crops.flip(3), crops)
        return (crops.float() / 255.0 - MEAN) / STD


def load_image_folder_split(root: str, labeled_fraction: float, seed: int, image_size: int,
                            workers: int, test_fraction: float = 0.2, labeled_list: Optional[str] = None,
                            follow_symlinks: bool = False, strict: bool = False) -> Split:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("--data needs Pillow to decode images: pip install pillow") from None
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"--data {root} is not a directory")
    policy = ScanPolicy(base, follow_symlinks, workers)
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if (base / "train").is_dir() and test_dir is not None:
        classes, train_paths, train_y = scan(base / "train", policy)
        _, test_paths, test_y = scan(test_dir, policy, classes)
        if len(test_paths) == 0:
            raise ValueError(f"--data {root}: {test_dir.name}/ has no images of the training classes")
        train_root, test_root = base / "train", test_dir
    else:
        classes, paths, y = scan(base, policy)
        test = stratified_pick(y, test_fraction, np.random.default_rng(TEST_SPLIT_SEED))
        train_paths = [p for p, t in zip(paths, test) if not t]
        test_paths = [p for p, t in zip(paths, test) if t]
        train_y, test_y = y[~test], y[test]
        train_root = test_root = base
    report(policy, root, strict)
    if len(train_paths) == 0:
        raise ValueError(f"--data {root}: no training images left after the test split")
    labeled = choose_labeled(train_y, labeled_fraction, seed, labeled_list)
    return Split("images", FolderSource(train_root, classes, train_paths, train_y, image_size, workers),
                 torch.from_numpy(train_y), torch.from_numpy(labeled),
                 FolderSource(test_root, classes, test_paths, test_y, image_size, workers),
                 torch.from_numpy(test_y), len(classes), (3, image_size, image_size))

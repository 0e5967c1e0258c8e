"""``--data DIR``: an image folder with one subfolder per class.

Layouts: ``DIR/train/<class>/*`` with ``DIR/val/<class>/*`` (or ``test``) as the test
set, or ``DIR/<class>/*`` alone, from which a fixed stratified test split is held out.
Images are decoded with Pillow in a thread pool (decoding releases the GIL), resized
so the short side is ``8/7 * image_size`` and centre-cropped to a square; training
batches then take a random ``image_size`` crop and a random horizontal flip drawn from
the trainer's generator (so a resumed run sees the same crops), evaluation the centre
crop. Pixels are normalised with the ImageNet mean and standard deviation.

This reads the folder itself rather than through torchvision's ImageFolder (same
layout, same sorted class order): a torchvision wheel whose compiled ops do not match
the installed torch fails at import, and the image path should not depend on that.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .data import TEST_SPLIT_SEED, Split, choose_labeled, stratified_pick

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def scan(root: Path, classes: Optional[List[str]] = None) -> Tuple[List[str], List[Path], np.ndarray]:
    """Sorted class subfolders holding at least one image, and (path, class id) per image."""
    if classes is None:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and _images_in(d))
        if not classes:
            raise ValueError(f"--data {root}: no class subfolders with images "
                             f"({', '.join(sorted(EXTENSIONS))}) found")
    paths, labels = [], []
    for c, name in enumerate(classes):
        found = _images_in(root / name) if (root / name).is_dir() else []
        paths += found
        labels += [c] * len(found)
    return classes, paths, np.asarray(labels, dtype=np.int64)


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())


class FolderSource:
    def __init__(self, paths: List[Path], image_size: int, workers: int):
        self.paths, self.size, self.workers = paths, image_size, max(1, workers)
        self.stored = max(image_size, round(image_size * 8 / 7))

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> Tensor:
        from PIL import Image
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            scale = self.stored / min(w, h)
            img = img.resize((max(self.stored, round(w * scale)), max(self.stored, round(h * scale))),
                             Image.BILINEAR)
            w, h = img.size
            left, top = (w - self.stored) // 2, (h - self.stored) // 2
            img = img.crop((left, top, left + self.stored, top + self.stored))
            return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def batch(self, idx: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        rows = idx.cpu().tolist()
        with ThreadPoolExecutor(self.workers) as pool:
            images = torch.stack(list(pool.map(self._load, (self.paths[i] for i in rows))))
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
                            workers: int, test_fraction: float = 0.2,
                            labeled_list: Optional[str] = None) -> Split:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise ValueError("--data needs Pillow to decode images: pip install pillow") from None
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"--data {root} is not a directory")
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    if (base / "train").is_dir() and test_dir is not None:
        classes, train_paths, train_y = scan(base / "train")
        _, test_paths, test_y = scan(test_dir, classes)
        if len(test_paths) == 0:
            raise ValueError(f"--data {root}: {test_dir.name}/ has no images of the training classes")
    else:
        classes, paths, y = scan(base)
        test = stratified_pick(y, test_fraction, np.random.default_rng(TEST_SPLIT_SEED))
        train_paths = [p for p, t in zip(paths, test) if not t]
        test_paths = [p for p, t in zip(paths, test) if t]
        train_y, test_y = y[~test], y[test]
    if len(train_paths) == 0:
        raise ValueError(f"--data {root}: no training images left after the test split")
    labeled = choose_labeled(train_y, labeled_fraction, seed, labeled_list)
    return Split("images", FolderSource(train_paths, image_size, workers), torch.from_numpy(train_y),
                 torch.from_numpy(labeled), FolderSource(test_paths, image_size, workers),
                 torch.from_numpy(test_y), len(classes), (3, image_size, image_size))

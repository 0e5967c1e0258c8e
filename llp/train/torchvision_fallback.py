"""torchvision where it imports, hand-written equivalents where it does not.

The image path (``--data DIR``) lists a folder with torchvision's ``ImageFolder``, decodes
and crops with ``torchvision.transforms.functional`` and trains torchvision's
``resnet18`` when ``import torchvision`` works. A torchvision wheel built for another
torch fails at import (its compiled operators do not register), so the same steps are
also written with Pillow and plain torch: here the image reading (same layout and class
order, same crops), in ``llp.train.model`` the network (``ResNet18Trunk``, with torchvision's
parameter names, ``trunk.layer4.1.conv2.weight``), so checkpoints and torchvision
weights load either way. ``LLP_NO_TORCHVISION=1`` forces the hand-written path.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch


@lru_cache(maxsize=None)
def torchvision():
    """The torchvision module, or None when it is absent or does not import here."""
    if os.environ.get("LLP_NO_TORCHVISION", "0") not in ("", "0"):
        return None
    try:
        import torchvision
        import torchvision.datasets  # noqa: F401
        import torchvision.models  # noqa: F401
        import torchvision.transforms.functional  # noqa: F401
    except Exception:  # ImportError, or a RuntimeError from mismatched compiled operators
        return None
    return torchvision


def image_folder(root: Path, classes: List[str], samples: List[Tuple[str, int]]):
    """``samples`` (path, class) as a torchvision ``ImageFolder`` (its class mapping and
    loader), listed by our scan, which holds the symlink and readability rules."""
    tv = torchvision()

    class Listed(tv.datasets.ImageFolder):
        def find_classes(self, directory):
            return list(classes), {c: i for i, c in enumerate(classes)}

        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return list(samples)

    return Listed(str(root))


def open_rgb(path: str):
    """A PIL RGB image (torchvision's ImageFolder loader when it imports)."""
    tv = torchvision()
    if tv is not None:
        return tv.datasets.folder.default_loader(path)
    from PIL import Image
    with Image.open(path) as img:
        return img.convert("RGB")


def square(img, stored: int) -> torch.Tensor:
    """A PIL image as uint8 [3, stored, stored]: short side resized to ``stored``
    (bilinear), centre crop."""
    tv = torchvision()
    if tv is not None:
        F = tv.transforms.functional
        return F.pil_to_tensor(F.center_crop(F.resize(img, stored, antialias=True), stored))
    from PIL import Image
    w, h = img.size
    scale = stored / min(w, h)
    img = img.resize((max(stored, round(w * scale)), max(stored, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - stored) // 2, (h - stored) // 2
    img = img.crop((left, top, left + stored, top + stored))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

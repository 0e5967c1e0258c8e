"""The development suite's data sets: every one installs with the project (scikit-learn's
bundled sets and its seeded generators), needs no network, and is written to disk once,
so that each reaches the trainer through its public command line.

Each ``DataSet`` says what character it has (why it is in the suite), how it is written
into a folder, and which ``python -m llp.train`` flags read it back: the built-in digits
(no flags), ``--features X.npy --labels y.npy`` (an MLP) or ``--data DIR`` (an image
folder; ResNet-18). Generators are seeded with fixed seeds of their own, so a data set is
the same on every machine and for every run seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

DATA_SEED = 2024  # every generated data set's own seed (never a run seed)


@dataclass(frozen=True)
class DataSet:
    name: str
    character: str                       # one line: what this data set tests
    kind: str                            # "digits", "features" or "images"
    write: Callable[[Path], None]        # writes the files into a folder (not for digits)
    extra_flags: tuple = ()              # further llp.train flags this data set needs

    def train_flags(self, folder: Path) -> List[str]:
        """The ``python -m llp.train`` flags that read this data set from ``folder``."""
        if self.kind == "features":
            base = ["--features", str(folder / "X.npy"), "--labels", str(folder / "y.npy")]
        elif self.kind == "images":
            base = ["--data", str(folder / "images")]
        else:
            base = []
        return base + list(self.extra_flags)

    def ready(self, folder: Path) -> bool:
        return (folder / "done").exists() or self.kind == "digits"

    def prepare(self, folder: Path) -> None:
        """Writes the data set into ``folder`` unless it is there already."""
        if self.ready(folder):
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.write(folder)
        (folder / "done").write_text("")


def _save_features(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    np.save(folder / "X.npy", np.ascontiguousarray(x, dtype=np.float32))
    np.save(folder / "y.npy", np.asarray(y, dtype=np.int64))


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def write_digits_flat(folder: Path) -> None:
    images, y = _digits()
    _save_features(folder, images.reshape(len(y), -1), y)


def write_overlap(folder: Path) -> None:
    """10 classes of two Gaussian clusters each in 30-D (10 informative, 5 redundant
    directions), class separation 1.0: the clusters overlap, a small network trained on
    every label reaches about 55% and on a few labels little more than chance."""
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=3000, n_features=30, n_informative=10, n_redundant=5,
                               n_classes=10, n_clusters_per_class=2, class_sep=1.0,
                               random_state=DATA_SEED)
    _save_features(folder, x, y)


def write_sparse_signal(folder: Path) -> None:
    """6 classes whose signal lives in 6 of 100 dimensions (the other 94 are noise):
    raw-feature neighbours are mostly noise, a network can learn which directions count."""
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=2400, n_features=100, n_informative=6, n_redundant=0,
                               n_repeated=0, n_classes=6, n_clusters_per_class=1, class_sep=1.5,
                               random_state=DATA_SEED + 1)
    _save_features(folder, x, y)


def write_moons_circles(folder: Path) -> None:
    """Four classes on 1-D manifolds: two interleaved moons and two concentric circles
    (in two planes a little apart), rotated at random into 50-D, plus Gaussian noise in
    every dimension. Labels spread along a manifold; a straight cut separates nothing."""
    from sklearn.datasets import make_circles, make_moons
    rng = np.random.default_rng(DATA_SEED + 2)
    n = 2400
    moons, moon_y = make_moons(n_samples=n // 2, noise=0.08, random_state=DATA_SEED + 2)
    circles, circle_y = make_circles(n_samples=n // 2, noise=0.05, factor=0.5, random_state=DATA_SEED + 3)
    plane = np.zeros((n, 50))
    plane[:n // 2, :2] = moons - moons.mean(axis=0)
    plane[n // 2:, :2] = circles * 1.2
    plane[n // 2:, 2] = 1.5                                      # the circles' plane, offset
    rotation, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    x = plane @ rotation + 0.08 * rng.standard_normal((n, 50))
    y = np.concatenate([moon_y, circle_y + 2])
    _save_features(folder, x, y)


def write_noisy_labels(folder: Path) -> None:
    """10 well-separated Gaussian clusters in 20-D, but 20% of all labels (the few
    labeled rows and the test rows alike) replaced by a random class."""
    from sklearn.datasets import make_classification
    x, y = make_classification(n_samples=2400, n_features=20, n_informative=12, n_redundant=2,
                               n_classes=10, n_clusters_per_class=1, class_sep=2.5, flip_y=0.2,
                               random_state=DATA_SEED + 4)
    _save_features(folder, x, y)


def write_breast_cancer(folder: Path) -> None:
    """scikit-learn's bundled Wisconsin breast-cancer table: 569 rows, 30 measurements, 2 classes."""
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    _save_features(folder, d.data, d.target)


def write_wine(folder: Path) -> None:
    """scikit-learn's bundled wine table: 178 rows, 13 measurements, 3 classes."""
    from sklearn.datasets import load_wine
    d = load_wine()
    _save_features(folder, d.data, d.target)


def distort_digits(images: np.ndarray, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """Each 8x8 digit upscaled to ``size`` px, rotated by up to 30 degrees, shifted by up
    to 2 px, with Gaussian pixel noise (std 0.15): [N, size, size] uint8."""
    from PIL import Image
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray((img * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        pil = pil.rotate(float(rng.uniform(-30, 30)), resample=Image.BILINEAR,
                         translate=tuple(int(v) for v in rng.integers(-2, 3, size=2)))
        noisy = np.asarray(pil, dtype=np.float32) / 255.0 + 0.15 * rng.standard_normal((size, size))
        out[i] = (np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)
    return out


def write_digits_distorted(folder: Path) -> None:
    """The 1,797 digits as a class-per-subfolder image folder of 16x16 PNGs, each rotated,
    shifted and noisy (``distort_digits``)."""
    from PIL import Image
    images, y = _digits()
    distorted = distort_digits(images, np.random.default_rng(DATA_SEED + 5))
    for c in range(10):
        (folder / "images" / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(distorted, y)):
        Image.fromarray(img).save(folder / "images" / str(label) / f"{i:04d}.png")


def write_digits_embedding(folder: Path) -> None:
    """The 128-D embedding of the digits' training rows that ``python -m llp.train
    --export-embeddings`` writes after an LLP run at 5% labels (run seed 1000, outside
    every seed the suite reports), as features with their true classes."""
    import subprocess
    import sys
    export = folder / "export"
    subprocess.run([sys.executable, "-m", "llp.train", "--labeled-fraction", "0.05", "--seed", "1000",
                    "--quiet", "--run-dir", str(folder / "run"), "--export-embeddings", str(export)],
                   check=True, capture_output=True)
    _save_features(folder, np.load(export / "embeddings.npy"), np.load(export / "true_labels.npy"))


SUITE: Dict[str, DataSet] = {d.name: d for d in [
    DataSet("digits", "the default: 8x8 digit images, a small conv net learns them well", "digits", None),
    DataSet("digits-flat", "the same digits as 64 flat features: an MLP, no augmentation", "features",
            write_digits_flat),
    DataSet("digits-distorted", "rotated, shifted, noisy digits written as an image folder of PNGs (--data; "
            "the small conv net at 12 px)", "images", write_digits_distorted,
            ("--image-size", "12", "--workers", "1", "--arch", "convnet")),
    DataSet("overlap", "10 classes of overlapping clusters: a small network learns poorly", "features",
            write_overlap),
    DataSet("sparse-signal", "6 classes whose signal is in 6 of 100 dimensions: raw neighbours are noise",
            "features", write_sparse_signal),
    DataSet("moons-circles", "moons and circles lifted into 50-D with noise: labels follow manifolds",
            "features", write_moons_circles),
    DataSet("noisy-labels", "well-separated clusters, 20% of labels wrong", "features", write_noisy_labels),
    DataSet("breast-cancer", "scikit-learn's bundled tabular set: 569 rows, 2 classes", "features",
            write_breast_cancer),
    DataSet("wine", "scikit-learn's bundled tabular set: 178 rows, 3 classes", "features", write_wine),
    DataSet("digits-embedding", "an embedding exported by the trainer (128-D, digits)", "features",
            write_digits_embedding),
]}

"""``--data DIR``: the image-folder path, with torchvision (here a stand-in package that
implements the API ``llp.train.torchvision_fallback`` and ``llp.train.model`` use, since
torchvision's wheel does not import beside this machine's torch) and without it; files
that do not decode; links out of DIR."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llp import train
from llp.train import torchvision_fallback
from llp.train.image_folder import load_image_folder_split

REPO = Path(__file__).resolve().parents[1]
STUB = Path(__file__).with_name("stub_torchvision")


def make_image_folder(root: Path, classes=3, per_class=8, size=20):
    """Coloured squares at random places, one colour per class."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size + 3 * i % 7, 3), dtype=np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            img[y:y + size // 2, x:x + size // 2, c] = 255
            Image.fromarray(img).save(root / f"class_{c}" / f"{i}.png")


def cli(*args, cwd, with_stub=False):
    path = [str(REPO)] + ([str(STUB)] if with_stub else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    return subprocess.run([sys.executable, "-m", "llp.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


TRAIN_FLAGS = ["--image-size", "16", "--labeled-fraction", "0.5", "--epochs", "2", "--warmup-epochs", "1",
               "--batch-size", "8", "--k", "3", "--t", "3", "--workers", "2", "--quiet"]


@pytest.fixture
def without_torchvision(monkeypatch):
    monkeypatch.setenv("LLP_NO_TORCHVISION", "1")
    torchvision_fallback.torchvision.cache_clear()
    yield
    torchvision_fallback.torchvision.cache_clear()


def _forget_torchvision():
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    torchvision_fallback.torchvision.cache_clear()


@pytest.fixture
def stub_torchvision(monkeypatch):
    monkeypatch.syspath_prepend(str(STUB))
    monkeypatch.delenv("LLP_NO_TORCHVISION", raising=False)
    _forget_torchvision()
    yield
    _forget_torchvision()


@pytest.mark.parametrize("path", ["hand-written", "torchvision"])
def test_image_folder_trains_a_resnet18(tmp_path, request, path):
    request.getfixturevalue("without_torchvision" if path == "hand-written" else "stub_torchvision")
    make_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    run_dir = tmp_path / "run"
    train.main(["--data", str(tmp_path / "imgs"), *TRAIN_FLAGS, "--run-dir", str(run_dir)])
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == ["warmup", "llp", "llp"]
    assert all(np.isfinite(l["train_loss"]) for l in lines)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["llp"]["bank"].shape == (18, 128)  # 24 images, 2 per class held out
    assert "trunk.layer4.1.conv2.weight" in ckpt["model"]  # torchvision's resnet18 names
    if path == "torchvision":
        import torchvision
        assert {"ImageFolder", "default_loader", "resize", "resnet18"} <= set(torchvision.CALLS)
    else:
        assert torchvision_fallback.torchvision() is None


def test_both_paths_give_the_same_pixels(tmp_path, monkeypatch, stub_torchvision):
    make_image_folder(tmp_path / "imgs", per_class=2)
    tv = load_image_folder_split(str(tmp_path / "imgs"), 0.5, 0, 16, 1).train.batch(torch.arange(3))
    monkeypatch.setenv("LLP_NO_TORCHVISION", "1")
    torchvision_fallback.torchvision.cache_clear()
    own = load_image_folder_split(str(tmp_path / "imgs"), 0.5, 0, 16, 1).train.batch(torch.arange(3))
    assert torch.equal(own, tv)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    result = cli("--data", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 2 and "no class subfolders with readable images" in result.stderr
    assert "Traceback" not in result.stderr


def test_image_folder_with_train_and_val(tmp_path, without_torchvision):
    make_image_folder(tmp_path / "d" / "train", per_class=4)
    make_image_folder(tmp_path / "d" / "val", per_class=2)
    split = load_image_folder_split(str(tmp_path / "d"), 0.5, 0, 16, 1)
    assert (len(split.train), len(split.test), split.num_classes) == (12, 6, 3)
    a = split.train.batch(torch.tensor([0, 5]), torch.Generator().manual_seed(1))
    b = split.train.batch(torch.tensor([0, 5]), torch.Generator().manual_seed(1))
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)  # crops come from the generator
    assert torch.equal(split.test.batch(torch.tensor([1])), split.test.batch(torch.tensor([1])))


def bad_files(folder: Path):
    """A truncated JPEG, an empty PNG and a text file named like an image."""
    from PIL import Image
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8) + 90).save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")


@pytest.mark.parametrize("with_stub", [False, True])
def test_unreadable_files_are_skipped_with_one_warning(tmp_path, with_stub):
    make_image_folder(tmp_path / "imgs")
    bad_files(tmp_path / "imgs" / "class_1")
    result = cli("--data", str(tmp_path / "imgs"), *TRAIN_FLAGS, "--run-dir", str(tmp_path / "r"),
                 cwd=tmp_path, with_stub=with_stub)
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "3 unreadable or non-image files" in warnings[0]
    assert "cut.jpg" in warnings[0] and "empty.png" in warnings[0]
    strict = cli("--data", str(tmp_path / "imgs"), *TRAIN_FLAGS, "--strict-images", cwd=tmp_path)
    assert strict.returncode == 2 and "3 unreadable or non-image files" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_links_out_of_the_folder_are_not_followed(tmp_path, without_torchvision):
    make_image_folder(tmp_path / "imgs")
    make_image_folder(tmp_path / "elsewhere", classes=1, per_class=3)
    os.symlink("/etc/passwd", tmp_path / "imgs" / "class_0" / "x.png")
    os.symlink(tmp_path / "elsewhere" / "class_0", tmp_path / "imgs" / "linked_class")
    os.symlink(tmp_path / "imgs" / "class_2", tmp_path / "imgs" / "class_1" / "loop")  # inside: followed
    split = load_image_folder_split(str(tmp_path / "imgs"), 0.5, 0, 16, 1, test_fraction=0.2)
    paths = split.train.paths + split.test.paths
    assert split.num_classes == 3 and not any("passwd" in p or "x.png" in p for p in paths)
    assert len(paths) == 8 + 16 + 8  # class_1 also holds class_2's images through the inner link
    followed = load_image_folder_split(str(tmp_path / "imgs"), 0.5, 0, 16, 1, follow_symlinks=True,
                                       strict=False)
    assert followed.num_classes == 4  # linked_class is a class when links are followed

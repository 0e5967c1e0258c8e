"""The run directory on disk: checkpoints, the metrics file and the config.

A checkpoint is a dict: ``format``, ``config`` (the resolved settings), ``epoch`` (0-based
index of the last finished epoch), ``model``, ``optimizer``, ``schedule``, ``llp`` (bank,
labels, confidences, log densities) and ``rng`` (torch, numpy, python and the batch
generator's states), made of tensors and plain Python values only, so that it loads with
``torch.load(weights_only=True)``: a checkpoint can never run code.

Every write goes to a temporary name and is renamed into place, so a kill or a full disk
leaves the last good file; a failure is one line naming the file and the cause
(``RunDirError``) and removes the temporary file.

A checkpoint is verified before it is used: ``torch.save`` writes a zip archive with a
CRC-32 of every record, and every record must match its CRC (a flipped byte, a cut-off
file); then the fields the trainer reads must have their types. Each failure is one line.
"""
from __future__ import annotations

import json
import numbers
import os
import random
import zipfile
from pathlib import Path
from typing import Dict

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FORMAT = 2


class RunDirError(SystemExit):
    """A read or write in the run directory failed, or a checkpoint cannot be used; the
    message is one line (the trainer prints it and exits with status 2)."""


def _cause(exc: BaseException, path: Path) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    try:
        import shutil
        if shutil.disk_usage(path.parent).free < 1 << 20:
            text = "no space left on device"
    except OSError:
        pass
    return text


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"error: cannot write {path}: {_cause(exc, path)}") from None


def save_checkpoint(obj: dict, path: Path) -> None:
    _write_atomically(path, lambda f: torch.save(obj, f))


def write_text(path: Path, text: str) -> None:
    _write_atomically(path, lambda f: f.write(text.encode()))


def write_bytes(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda f: f.write(data))


def damage(path: Path) -> str:
    """Why the archive at ``path`` is damaged ('' when every record matches its CRC-32)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return "it is not a zip archive (a damaged checkpoint, or another file)"
    except Exception as exc:  # a damaged header can raise almost anything
        return f"its archive is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return f"it is damaged: record {bad} does not match its CRC-32" if bad else ""


# The fields the trainer reads, and what each must be.
FIELDS = {"config": dict, "model": dict, "optimizer": dict, "schedule": dict, "llp": dict, "rng": dict}


def malformed(ckpt: dict) -> str:
    """What is wrong with the fields of a loaded checkpoint ('' when nothing)."""
    for name, kind in FIELDS.items():
        if name not in ckpt:
            return f"it has no {name!r}"
        if not isinstance(ckpt[name], kind):
            return f"its {name!r} is of type {type(ckpt[name]).__name__} ({kind.__name__} expected)"
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
        return f"its 'epoch' is {epoch!r}, not a whole number >= 0"
    return ""


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint in ``run_dir``; one line and exit when absent, damaged or unusable.
    Every record's CRC-32 is checked first; then it loads with ``weights_only=True``:
    anything but tensors and plain values is refused."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"error: --resume {run_dir}: no {CHECKPOINT} there")
    why = damage(path)
    if why:
        raise RunDirError(f"error: --resume {run_dir}: {CHECKPOINT} is unreadable: {why}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure, including a refused global
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            first = "it holds objects other than tensors and plain values, and was not loaded"
        raise RunDirError(f"error: --resume {run_dir}: {CHECKPOINT} is unreadable ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise RunDirError(f"error: --resume {run_dir}: {CHECKPOINT} is not an llp checkpoint of format {FORMAT}")
    why = malformed(ckpt)
    if why:
        raise RunDirError(f"error: --resume {run_dir}: {CHECKPOINT} is malformed: {why}")
    return ckpt


def append_metrics(path: Path, record: Dict) -> None:
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise RunDirError(f"error: cannot write {path}: {_cause(exc, path)}") from None


def read_metrics(path: Path) -> list:
    """The complete JSON lines of ``path``; a line cut off by a kill is dropped."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise RunDirError(f"error: cannot read {path}: {_cause(exc, path)}") from None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def trim_metrics(path: Path, keep_epochs: int) -> None:
    """A fresh run starts an empty metrics file; a resumed one keeps the lines of the
    epochs its checkpoint holds (and drops a cut-off last line)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r["epoch"] <= keep_epochs]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def rng_state(generator: torch.Generator) -> dict:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "batches": generator.get_state(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": random.getstate()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["batches"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

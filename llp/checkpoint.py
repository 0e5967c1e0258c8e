"""Run checkpoints: written atomically (temp file + rename), read back with clear errors.

A checkpoint is a dict: ``format``, ``config`` (the resolved flags), ``epoch`` (0-based
index of the last finished epoch), ``model``, ``optimizer``, ``schedule``, ``llp`` (bank,
labels, confidences, log densities) and ``rng`` (torch, numpy, python and the batch
generator's states).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> dict:
    """The checkpoint in ``run_dir``; SystemExit with one line when absent or unusable."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"error: --resume {run_dir}: no {CHECKPOINT} there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SystemExit(f"error: --resume {run_dir}: {CHECKPOINT} is unreadable ({type(exc).__name__}: {exc})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "config" not in ckpt:
        raise SystemExit(f"error: --resume {run_dir}: {CHECKPOINT} is not an llp checkpoint of format {FORMAT}")
    return ckpt


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(), "batches": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["batches"])

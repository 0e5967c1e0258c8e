"""What lets a killed ``python -m llp.propagate`` continue where it stopped.

While a run works (one process, or rank 0 of ``torchrun``), ``OUT/.partial-run/`` holds:

    job.json           what the run computes: its flags, the identity (path, size,
                       modification time, inode) of each input file it reads, and the
                       number of processes
    fitted.pt          the fitted propagation, once the density pass (or ``--method
                       auto``'s choice) is done: labeled rows [M, D], classes [M], bias
                       and log-density [M], settings; the choice's summary; the seconds
    progress.json      how many vote rounds are finished, with the summary's running counts
    pseudo_labels.npy, confidence.npy   the outputs, filled round by round

``fitted.pt`` and ``progress.json`` are written under a temporary name and renamed, and
``progress.json`` only after its rounds' rows are flushed to the two arrays: whenever
the process dies (``kill -9`` included), the folder describes finished work only. The
same command finds the folder, compares ``job.json`` and continues from the first
unfinished round; a different job (other flags, a changed input file, another number
of processes) discards it. Under ``torchrun`` rank 0 keeps the folder and sends the
fitted propagation and the first unfinished round to the other processes. At the end
the outputs are renamed into ``OUT`` and the folder is removed. ``--method diffusion``
has no rounds: a killed diffusion run starts again.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..method.propagation import Fitted, Settings

FOLDER = ".partial-run"
JOB, FITTED, PROGRESS = "job.json", "fitted.pt", "progress.json"
ARRAYS = {"pseudo_labels.npy": np.int64, "confidence.npy": np.float32}
# Flags that change nothing the vote pass computes: a resume may differ in them.
FREE_FLAGS = ("out", "quiet", "plot", "eval_labels")
FILE_FLAGS = ("embeddings", "labels", "labeled_list")


def _identity(path: Optional[str]) -> Optional[list]:
    if path is None:
        return None
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino]


def job_of(args, processes: int = 1) -> dict:
    """The flags that decide the outputs, the identity of each input file, and the
    number of processes (it decides which rows each vote round holds)."""
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in FREE_FLAGS}
    return {"flags": flags, "files": {name: _identity(getattr(args, name)) for name in FILE_FLAGS},
            "processes": processes}


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclasses.dataclass
class Progress:
    """Vote rounds finished, and the running counts of the summary over their rows."""
    rounds_done: int
    pseudo: list
    unassigned: int
    confidence_sum: float
    zero_rows: int


class SavedChoice:
    """``--method auto``'s choice as a resumed run knows it: its summary."""

    def __init__(self, summary: dict):
        self._summary = summary

    def summary(self) -> dict:
        return self._summary


class PartialRun:
    """``OUT/.partial-run/`` for one job. ``resumed`` says whether a matching folder was
    found (its arrays are then opened as they are, otherwise created)."""

    def __init__(self, out: Path, job: dict, rows: int):
        self.folder = out / FOLDER
        self.job = json.loads(json.dumps(job))  # as it reads back from job.json
        self.resumed = self._matches(rows)
        if not self.resumed:
            self.discard()
            self.folder.mkdir()
            _write_atomically(self.folder / JOB, json.dumps(self.job, indent=1).encode())
        mode = "r+" if self.resumed else "w+"
        self.arrays = {name: np.lib.format.open_memmap(self.folder / name, mode=mode, dtype=dtype, shape=(rows,))
                       for name, dtype in ARRAYS.items()}

    def _matches(self, rows: int) -> bool:
        try:
            found = json.loads((self.folder / JOB).read_text())
            shapes = [np.load(self.folder / name, mmap_mode="r").shape for name in ARRAYS]
        except (OSError, ValueError):
            return False
        return found == self.job and all(shape == (rows,) for shape in shapes)

    # ---- the fitted propagation -------------------------------------------------------

    def save_fitted(self, fitted: Fitted, choice_summary: Optional[dict], zero_rows: int, timings: dict) -> None:
        state = {"labeled": fitted.labeled.cpu(), "classes": fitted.classes.cpu(),
                 "bias": None if fitted.bias is None else fitted.bias.cpu(),
                 "log_density": None if fitted.log_density is None else fitted.log_density.cpu(),
                 "num_classes": fitted.num_classes, "settings": dataclasses.asdict(fitted.settings),
                 "choice": json.dumps(choice_summary), "zero_rows": zero_rows, "timings": dict(timings)}
        tmp = self.folder / (FITTED + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / FITTED)

    def load_fitted(self, device: torch.device):
        """(Fitted, choice summary or None, zero rows, timings), or None when the run
        died before its fit was saved."""
        try:
            state = torch.load(self.folder / FITTED, map_location=device, weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError):
            return None
        fitted = Fitted(state["labeled"], state["classes"], state["bias"], state["log_density"],
                        state["num_classes"], Settings(**state["settings"]))
        return fitted, json.loads(state["choice"]), state["zero_rows"], state["timings"]

    # ---- the vote rounds -------------------------------------------------------------

    def progress(self) -> Optional[Progress]:
        try:
            return Progress(**json.loads((self.folder / PROGRESS).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def round_done(self, progress: Progress) -> None:
        """Flush the arrays, then record ``progress`` (in that order: see the module docstring)."""
        for array in self.arrays.values():
            array.flush()
        _write_atomically(self.folder / PROGRESS, json.dumps(dataclasses.asdict(progress)).encode())

    # ---- the end ---------------------------------------------------------------------

    def close(self) -> None:
        for array in self.arrays.values():
            array.flush()
        self.arrays = {}

    def array_path(self, name: str) -> Path:
        return self.folder / name

    def discard(self) -> None:
        """Remove the folder: only the files this module writes, then the folder itself."""
        self.arrays = {}
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        for name in (JOB, FITTED, PROGRESS, *ARRAYS):
            for path in (self.folder / name, self.folder / (name + ".tmp")):
                path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:  # something else is in it: leave it
            pass

"""``python -m llp.train``: Local Label Propagation end to end (paper section 3, app. A).

Default: scikit-learn's bundled digits (1,797 real 8x8 images), 10% labels, a small
conv net, in about a minute on 2 CPU cores (``python -m bench.default_run``). ``--data
DIR`` trains a ResNet-18 on an image folder, ``--features X.npy --labels y.npy`` an MLP
on precomputed features. Every epoch
appends a line to RUN_DIR/metrics.jsonl and writes an atomic checkpoint; ``--resume
RUN_DIR`` continues exactly; ``python -m llp.report RUN_DIR`` plots the metrics.

The parts: ``config`` (settings), ``build`` (data, model, bank, state), ``loop`` (epochs),
``epoch_records`` (each epoch's record), ``checkpoint`` (the run directory).
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

# torch's OpenMP worker threads spin about 300,000 times waiting for work before they sleep
# (GNU libgomp's default). On a machine whose cores are busy that spinning takes them from
# whoever else needs them: the default run took 4.1x its idle time beside a 2-thread matmul
# process, 2.2x with 10,000 (python -m bench.default_run --busy). libgomp reads it when torch
# loads it, so it is set before the import; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import torch  # noqa: E402

from ..method import distributed
from .build import Run, build_run, restore
from .checkpoint import CHECKPOINT, FORMAT, METRICS, RunDirError, append_metrics, read_metrics, rng_state, \
    save_checkpoint, trim_metrics, write_bytes, write_text
from .config import TrainConfig, build_parser, parse
from .data import DataError
from .epoch_records import epoch_record, print_epoch, print_summary
from ..method.inputs import usable_backend
from .loop import run_epochs
from .metrics import run_model
from .selfcheck import build_self_check


def _fail(message: str) -> None:
    """A bad setting or input: one line, exit status 2 (as for a bad flag)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def choose_device(c: TrainConfig) -> torch.device:
    if c.device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is available")
    use_cuda = c.device == "cuda" or (c.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def main(argv=None) -> dict:
    """Trains and returns the last epoch's record; bad input, a damaged checkpoint or a
    run directory that cannot be written is one line and exit status 2."""
    try:
        return _main(argv)
    except RunDirError as exc:
        print(exc.code, file=sys.stderr)
        raise SystemExit(2) from None


def _main(argv=None) -> dict:
    config, ckpt = parse(argv)
    device = choose_device(config)
    group = distributed.from_environment()  # torchrun: one process per GPU, bank sharded
    if group is not None:
        if device.type == "cuda":
            device = torch.device("cuda", group.local_rank)
            torch.cuda.set_device(device)
        distributed.setup(group, device.type)
    record = train(config, ckpt, device, group)
    if group is not None:
        # Every DDP wrapper and autograd graph holding the group died with train()'s frame,
        # so the group (and its worker threads) is really released here.
        distributed.teardown()
    return record


def train(config: TrainConfig, ckpt: Optional[dict], device: torch.device, group) -> dict:
    """The whole run in this process (one rank of it under torchrun); returns the last
    epoch's metrics record."""
    try:
        run = build_run(config, device, group)
        state = run.state
        others = state.bank.rows if config.density_over == "all" else state.unlabeled_idx.numel()
        longest = max(min(config.k, state.labeled_idx.numel()), min(config.t, others))
        usable_backend(config.backend, device, ("aggregation_lse", "aggregation_grad", "topk_similarity",
                                                "update_memory_bank_"), state.bank.dim, longest,
                       state.bank.data.dtype)
    except ValueError as exc:
        _fail(str(exc))
    check = build_self_check(run, build_run)
    start = restore(run, ckpt, check) if ckpt is not None else 0
    out = config.out_dir
    if start >= config.warmup + config.epochs:
        return finished(run, start)
    if run.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"error: cannot write {out}: {exc.strerror or exc}") from None
        write_text(out / "config.json", _json(config.to_dict()))
        trim_metrics(out / METRICS, start)
    started = time.time()

    def after_epoch(epoch: int, phase: str, lr: float, sums: dict, rows: int, self_check: dict) -> dict:
        if not math.isfinite(sums["loss"]):  # the same sums on every rank
            _fail(f"training diverged in epoch {epoch + 1}: its loss is {sums['loss']} (lower --lr); "
                  f"{out} keeps the checkpoint of the epoch before")
        bank = run.state.bank.gather()  # a collective when sharded: every rank calls it
        record = {**epoch_record(run, epoch, phase, lr, sums, rows, bank, time.time() - started), **self_check}
        record["seconds"] = time.time() - started
        if run.is_main:
            append_metrics(out / METRICS, record)
            save_checkpoint(_checkpoint(run, epoch, bank, check), out / CHECKPOINT)
            if not config.quiet:
                print_epoch(record)
        return record

    try:
        record = run_epochs(run, start, after_epoch, check)
    except DataError as exc:
        _fail(str(exc))
    if run.is_main:
        print_summary(run, record)
    if config.export_embeddings:
        export_embeddings(run, Path(config.export_embeddings))
    return record


def export_embeddings(run: Run, out: Path) -> None:
    """The trained network's embeddings of the training rows [N, D] fp32, their labels
    (true class for labeled rows, -1 for unlabeled) and true classes, as .npy files."""
    import numpy as np
    embeddings = run_model(run.net, run.split.train, run.device, output=0)
    labels = torch.where(run.state.labeled, run.train_y, -1)
    if not run.is_main:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"error: cannot write {out}: {exc.strerror or exc}") from None
    for name, array in (("embeddings", embeddings.cpu().numpy().astype(np.float32)),
                        ("labels", labels.cpu().numpy().astype(np.int64)),
                        ("true_labels", run.train_y.cpu().numpy().astype(np.int64))):
        write_bytes(out / f"{name}.npy", _npy(array))
    print(f"embeddings of {len(labels)} training rows written to {out}", file=sys.stderr)


def _npy(array) -> bytes:
    import io
    import numpy as np
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def finished(run: Run, start: int) -> dict:
    """--resume of a run that has trained all its epochs: its final table and how to go on."""
    records = read_metrics(run.config.out_dir / METRICS)
    record = records[-1] if records else {}
    if run.is_main:
        if record:
            print_summary(run, record)
        print(f"\n{run.config.out_dir} has finished all {start} epochs "
              f"({run.config.warmup} warm-up + {run.config.epochs}); to train on: "
              f"python -m llp.train --resume {run.config.out_dir} --epochs N (N > {run.config.epochs})",
              file=sys.stderr)
    return record


def _checkpoint(run: Run, epoch: int, bank: torch.Tensor, check) -> dict:
    cpu = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in run.state.state_dict().items()}
    ckpt = {"format": FORMAT, "config": run.config.to_dict(), "epoch": epoch,
            "model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
            "schedule": run.schedule.state_dict(), "llp": {**cpu, "bank": bank.cpu()},
            "rng": rng_state(run.batches)}
    if check is not None:
        ckpt["self_check"] = check.state_dict()
    return ckpt


def _json(obj) -> str:
    import json
    return json.dumps(obj, indent=2) + "\n"


__all__ = ["build_parser", "main", "train"]

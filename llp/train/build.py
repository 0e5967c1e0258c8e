"""Building a run from its config: the data split, the network and optimiser, the memory
bank (one process or sharded) and the LLP state, and restoring them from a checkpoint."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .algorithm import LLPConfig, LLPState
from .bank import bank_of
from .checkpoint import CHECKPOINT, RunDirError, set_rng_state
from .config import TrainConfig
from .data import Split, load_digits_split, load_feature_split
from ..method.distributed import Group
from .metrics import run_model
from .model import build_model, parameter_groups
from .schedule import LRSchedule, parse_boundaries


@dataclass
class Run:
    """Everything one process of a training run works with."""
    config: TrainConfig
    device: torch.device
    group: Optional[Group]
    split: Split
    net: torch.nn.Module        # the two-head network
    model: torch.nn.Module      # ``net``, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    state: LLPState
    batches: torch.Generator    # batch order (and augmentation in one process)
    train_y: torch.Tensor       # ground truth of every training row, for metrics only
    test_y: torch.Tensor
    gate: float = 1.0           # the self-check's weight on the pseudo-labeled loss (llp.train.selfcheck)
    checked: bool = False       # a self-check chooses this run's pseudo-label source

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.rank == 0


def load_split(c: TrainConfig) -> Split:
    if c.data:
        from .image_folder import load_image_folder_split
        return load_image_folder_split(c.data, c.labeled_fraction, c.seed, c.image_size, c.workers,
                                       c.test_fraction, c.labeled_list, c.follow_symlinks, c.strict_images)
    if c.features:
        return load_feature_split(c.features, c.labels, c.labeled_fraction, c.seed, c.test_fraction,
                                  c.labeled_list, c.feature_noise)
    return load_digits_split(c.labeled_fraction, c.seed, c.test_fraction, c.labeled_list)


def initial_bank_rows(c: TrainConfig, net, split: Split, device: torch.device, rows: range) -> torch.Tensor:
    """This process's first bank rows: the initial network's embeddings, or random unit
    rows (Wu et al. 2018) drawn for all N rows from the run's seed, so every process
    count gets the same bank."""
    if c.bank_init == "random":
        g = torch.Generator().manual_seed(c.seed + 1)
        full = torch.randn(len(split.train), net.embedding.out_features, generator=g)
        data = torch.nn.functional.normalize(full[rows.start:rows.stop], dim=1).to(device)
    else:
        data = run_model(net, split.train, device, output=0, rows=torch.arange(rows.start, rows.stop))
    return data.to(getattr(torch, c.bank_dtype_on(device))).contiguous()


def build_bank(c: TrainConfig, net, split: Split, device: torch.device, group: Optional[Group]):
    n = len(split.train)
    rows = range(n) if group is None else group.shard(n)
    return bank_of(c, initial_bank_rows(c, net, split, device, rows), n, group)


def build_run(c: TrainConfig, device: torch.device, group: Optional[Group],
              split: Optional[Split] = None) -> Run:
    """A run of ``c`` on its data (or on ``split``, a part of it: a self-check replica)."""
    if c.matmul_precision_on(device):
        torch.set_float32_matmul_precision(c.matmul_precision_on(device))
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)
    random.seed(c.seed)
    split = load_split(c) if split is None else split
    net = build_model(split.kind, split.input_shape, split.num_classes, c.arch).to(device)
    model = net if group is None else torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        # a warm-up leaves one head unused, and supervised training the embedding head
        find_unused_parameters=c.warmup > 0 or c.method == "supervised")
    optimizer = torch.optim.SGD(parameter_groups(net, c.weight_decay), lr=c.lr, momentum=c.momentum)
    schedule = LRSchedule(c.lr, parse_boundaries(c.lr_drops, "--lr-drops", 3),
                          parse_boundaries(c.rate_jump, "--rate-jump", 3), c.rate_jump_lr, c.plateau_patience)
    llp = LLPConfig(k=c.k, t=c.t, density_weighting=not c.no_density_weighting,
                    use_confidence=not c.no_confidence, density_over=c.density_over)
    train_y = split.train_y.to(device)
    state = LLPState(build_bank(c, net, split, device, group), train_y, split.labeled.to(device),
                     split.num_classes, llp)
    return Run(c, device, group, split, net, model, optimizer, schedule, state,
               torch.Generator().manual_seed(c.seed), train_y, split.test_y.to(device))


def restore(run: Run, ckpt: dict, check=None) -> int:
    """Load a checkpoint into ``run`` (and its self-check ``check``); returns the first
    epoch still to train. One line and exit when it does not fit this run."""
    try:
        run.net.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.schedule.load_state_dict(ckpt["schedule"])
        llp = {k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in ckpt["llp"].items()}
        bank = llp.pop("bank")
        if bank.shape != (run.state.bank.rows, run.state.bank.dim):
            raise ValueError(f"bank of shape {tuple(bank.shape)}, this run's is "
                             f"{(run.state.bank.rows, run.state.bank.dim)}")
        run.state.load_state_dict(llp)
        run.state.bank.load(bank.to(run.state.bank.data.dtype))
        if check is not None:
            check.load_state_dict(ckpt["self_check"])
        set_rng_state(ckpt["rng"], run.batches)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise RunDirError(f"error: --resume {run.config.resume}: {CHECKPOINT} does not fit this run "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return ckpt["epoch"] + 1

"""The training loop: epochs of steps, and the LLP work between them (paper section 3,
appendix A).

Phases: ``warmup`` (the first ``--warmup-epochs`` epochs of an LLP run: supervised on the
labeled rows, or instance recognition over every row), then ``llp``; or ``supervised``
throughout (the baseline). In an LLP epoch every step takes the confidence-weighted loss,
updates the batch's bank rows and re-propagates their pseudo-labels; at the end of each
epoch the labeled rows' local densities are recomputed. When LLP starts (after the warm-up,
or at epoch 0 without one) the bank is refreshed if the config asks for it and every
unlabeled example gets its first pseudo-label.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..method import distributed
from .build import Run
from .metrics import pseudo_label_metrics, run_model
from .selfcheck import SelfCheck

PROGRESS_EVERY = 20  # steps between progress-bar updates (each one waits for the device)


def phase_of(run: Run, epoch: int) -> str:
    return "warmup" if epoch < run.config.warmup else run.config.method


def _supervised_steps(run: Run, phase: str) -> bool:
    """Steps that train on the labeled rows' cross-entropy alone."""
    return phase == "supervised" or (phase == "warmup" and run.config.warmup_objective == "supervised")


def training_pool(run: Run, phase: str) -> Tensor:
    """Rows an epoch of ``phase`` goes over: the labeled rows for supervised steps."""
    if _supervised_steps(run, phase):
        return run.state.labeled_idx
    return torch.arange(run.state.bank.rows, device=run.device)


def ramp_weight(progress: float, ramp_epochs: float) -> float:
    """exp(-5 (1 - progress/ramp)^2) until ``ramp_epochs`` (Laine & Aila 2017), then 1."""
    if ramp_epochs <= 0 or progress >= ramp_epochs:
        return 1.0
    return math.exp(-5.0 * (1.0 - progress / ramp_epochs) ** 2)


def refresh_bank(run: Run) -> None:
    """Rewrite this process's bank rows with the current network's embeddings."""
    rows = run.state.bank.own_rows()
    fresh = run_model(run.net, run.split.train, run.device, output=0, rows=torch.arange(rows.start, rows.stop))
    run.state.bank.write_own(fresh.to(run.state.bank.data.dtype))


# Inputs up to this many values per example can be propagated over (vectors, small images).
INPUT_VALUES = 4096


def start_llp(run: Run) -> None:
    """LLP begins: optionally a fresh bank, then densities and every first pseudo-label.
    With ``--pseudo-labels input`` or ``auto`` the inputs' own propagation is computed
    too. ``input`` starts from it; ``auto`` from the bank when a self-check will choose
    (it may switch), else from the inputs where they can be propagated over: chosen by
    cross-validation and fixed, they cannot drift with the network, as an unchecked
    bank's labels can."""
    c, state = run.config, run.state
    if c.bank_refresh != "never" or (c.warmup > 0 and c.warmup_objective == "supervised"):
        refresh_bank(run)
    state.update_density()
    if c.pseudo_labels in ("input", "auto") and input_values(run) <= INPUT_VALUES:
        state.input_labels, state.input_conf = input_propagation(run)
    unchecked_auto = c.pseudo_labels == "auto" and not run.checked and state.input_labels is not None
    state.use_source("input" if c.pseudo_labels == "input" or unchecked_auto else "propagation")


def input_values(run: Run) -> int:
    return math.prod(run.split.input_shape)


def input_propagation(run: Run) -> Tuple[Tensor, Tensor]:
    """Pseudo-labels [N] and confidences [N] of every training row from the propagation
    tool's default (``LocalLabelPropagation``, method auto) over the flattened inputs."""
    from ..method.estimator import LocalLabelPropagation
    import numpy as np

    if input_values(run) > INPUT_VALUES:
        raise ValueError(f"--pseudo-labels input: inputs of {input_values(run)} values are too many to "
                         f"propagate over (at most {INPUT_VALUES})")
    rows = torch.arange(len(run.split.train))
    x = torch.cat([run.split.train.batch(rows[i:i + 512]).flatten(1) for i in range(0, len(rows), 512)])
    given = torch.where(run.state.labeled.cpu(), run.train_y.cpu(), -1).numpy()
    model = LocalLabelPropagation(backend=run.config.backend).fit(x.float().numpy(), given)
    shares = torch.from_numpy(np.ascontiguousarray(model.label_distributions_))
    conf, pick = shares.max(dim=1)
    labels = torch.from_numpy(model.classes_)[pick]
    return labels.to(run.device), conf.to(run.device)


def end_epoch(run: Run, epoch: int, phase: str) -> None:
    """After epoch ``epoch`` (0-based): LLP's per-epoch density (and, with
    ``--bank-refresh epoch``, a fresh bank and full propagation)."""
    c = run.config
    if c.method != "llp":
        return
    if epoch + 1 == c.warmup:
        start_llp(run)
    elif phase == "llp":
        if c.bank_refresh == "epoch":
            refresh_bank(run)
        run.state.update_density()
        if c.bank_refresh == "epoch" and run.state.source == "propagation":
            run.state.propagate()


def augment_generator(run: Run, epoch: int) -> torch.Generator:
    """Where augmentation randomness comes from. One process: the batch generator itself.
    Several: a per-rank, per-epoch generator, so that the shared batch generator (which
    draws the epoch's order) stays identical on every rank and a resumed run is exact."""
    if run.group is None:
        return run.batches
    return torch.Generator().manual_seed(run.config.seed * 1_000_003 + epoch * 7919 + run.group.rank)


def step(run: Run, phase: str, idx: Tensor, x: Tensor, progress: float) -> Tensor:
    """One SGD step on rows ``idx`` (inputs ``x``); returns (loss, ce, agg) [3]."""
    c, state = run.config, run.state
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=c.amp):
        embedding, logits = run.model(x)
    embedding = embedding.float()
    if _supervised_steps(run, phase):
        loss = torch.nn.functional.cross_entropy(logits.float(), state.labels[idx])
        parts = (loss, loss, torch.zeros_like(loss))
    elif phase == "warmup":
        loss = state.instance_loss(idx, embedding)
        parts = (loss, torch.zeros_like(loss), loss)
    else:
        loss, ce, agg = state.loss(idx, embedding, logits, ramp_weight(progress, c.ramp_up_epochs) * run.gate)
        parts = (loss, ce, agg)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if not _supervised_steps(run, phase):
        state.update_bank(idx, embedding)
    if phase == "llp":
        if c.pseudo_labels == "classifier":
            state.set_labels_from_classifier(idx, logits)
        elif state.source == "propagation":
            state.propagate(idx, embedding if c.propagate_from == "batch" else None)
    return torch.stack([p.detach() for p in parts]).double()


def train_epoch(run: Run, epoch: int, phase: str, pool: Tensor) -> Dict[str, float]:
    """One pass over ``pool`` in a random order; returns the summed loss parts. The sums
    stay on the device, so a step never waits for it (but for a progress bar's update)."""
    c = run.config
    run.model.train()
    # The order lives on the CPU, where the data sources index: no step waits for the device.
    order = pool.cpu()[torch.randperm(len(pool), generator=run.batches)]
    world, rank = (1, 0) if run.group is None else (run.group.world, run.group.rank)
    # Each step takes world * batch_size rows of the shared order; rank r trains on its part.
    # A final step with fewer than two rows per process is dropped (on every rank alike):
    # batch norm cannot train on a single row.
    starts = [s for s in range(0, len(order), world * c.batch_size) if len(order) - s >= 2 * world]
    bar = _progress_bar(run, epoch, phase, len(starts))
    augment = augment_generator(run, epoch)
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)
    for i, start in enumerate(starts):
        rows = order[start:start + world * c.batch_size].tensor_split(world)[rank]
        x = run.split.train.batch(rows, augment).to(run.device, non_blocking=True)
        idx = rows.to(run.device, non_blocking=True)
        parts = step(run, phase, idx, x, epoch - c.warmup + i / len(starts))
        sums += parts * len(idx)
        if bar is not None:
            bar.update(1)
            if i % PROGRESS_EVERY == 0 or i == len(starts) - 1:
                _show(bar, run, phase, parts)
    if bar is not None:
        bar.close()
    if run.group is not None:
        sums = distributed.all_sum(sums)
    return dict(zip(("loss", "ce", "agg"), sums.tolist()))


def _progress_bar(run: Run, epoch: int, phase: str, steps: int):
    """A tqdm bar on a terminal (rank 0, not --quiet); None elsewhere."""
    if run.config.quiet or not run.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    total = run.config.warmup + run.config.epochs
    desc = f"epoch {epoch + 1}/{total}" + (" (warm-up)" if phase == "warmup" else "")
    return tqdm(total=steps, desc=desc, leave=False, file=sys.stderr)


def _show(bar, run: Run, phase: str, parts: Tensor) -> None:
    postfix = {"loss": f"{float(parts[0]):.3f}"}
    if phase == "llp":
        postfix["pseudo_acc"] = f"{pseudo_label_metrics(run.state, run.train_y)['pseudo_acc']:.3f}"
    bar.set_postfix(postfix)


def begin(run: Run, start_epoch: int) -> None:
    """LLP without a warm-up starts before its first epoch."""
    c = run.config
    if start_epoch == 0 and c.method == "llp" and c.warmup == 0:
        start_llp(run)


def one_epoch(run: Run, epoch: int) -> Tuple[str, float, Dict[str, float], int]:
    """Epoch ``epoch`` of ``run``: the lr, the steps, LLP's end-of-epoch work and the
    schedule; returns (phase, lr, summed loss parts, rows trained on)."""
    c = run.config
    phase = phase_of(run, epoch)
    lr = c.lr if phase == "warmup" else run.schedule.lr
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    pool = training_pool(run, phase)
    sums = train_epoch(run, epoch, phase, pool)
    end_epoch(run, epoch, phase)
    if phase != "warmup":
        run.schedule.end_epoch(epoch + 1 - c.warmup, sums["loss"] / len(pool))
    return phase, lr, sums, len(pool)


def run_epochs(run: Run, start_epoch: int, after_epoch: Callable[..., Dict],
               check: Optional[SelfCheck] = None) -> Dict:
    """Epochs ``start_epoch`` .. warm-up + ``--epochs`` of the run and of its self-check
    replicas in lock-step; ``after_epoch(epoch, phase, lr, sums, rows, self_check)``
    records each one (``self_check``: the self-check's statistics, or {}). Returns the
    last record."""
    c = run.config
    begin(run, start_epoch)
    if check is not None and start_epoch == 0 and c.warmup == 0:
        for replica in check.replicas:
            begin(replica.run, 0)
        check.start()
    record: Dict = {}
    for epoch in range(start_epoch, c.warmup + c.epochs):
        phase, lr, sums, rows = one_epoch(run, epoch)
        found: Dict[str, float] = {}
        if check is not None:
            check.train_epoch(epoch, one_epoch)
            found = check.after_epoch(phase)
        record = after_epoch(epoch, phase, lr, sums, rows, found)
    return record

"""The self-check: while LLP trains, it measures on labeled rows it has never trained on
whether training on its pseudo-labels makes the classifier better or worse than training
on the labeled rows alone, and turns the pseudo-labeled loss down when it does not help.

Why replicas. The labeled rows are the only ground truth, but the network is fitted to
them: a leave-one-out vote among the labeled rows of the memory bank is right for nearly
every one of them even when the pseudo-labels are mostly wrong (on a data set where 24%
of the pseudo-labels were right, 77% of the labeled rows' leave-one-out votes were). An
honest check needs labeled rows the network never saw, and holding some out of the run
itself would cost labels exactly where they are few.

So the check is cross-fitted. The labeled rows of every class with at least two are split
in two halves (stratified, seeded); a class with one labeled row keeps it on both sides.
Replica ``r`` is a half-size copy of the run: its labeled rows are the other half's, its
*probe* rows (half ``r``) are unlabeled to it, and it trains on them together with half of
the unlabeled rows, so its labeled fraction is the run's. It trains with the paper's full
LLP (the pseudo-labeled weight is the ramp-up alone, never gated), from its own seed.
After every epoch, over the probe rows of all replicas:

- ``selfcheck_acc``: the replicas' pseudo-label accuracy (of the labels they train on), an
  honest estimate of how accurate LLP's pseudo-labels are on this data;
- ``selfcheck_classifier_acc`` and ``selfcheck_reference_acc``: the replicas' classifiers
  now, and at the end of their supervised warm-up (the reference: what training on the
  labeled rows alone gives);
- ``selfcheck_wins`` / ``selfcheck_losses``: probe rows the classifier gets right and the
  reference got wrong, and the reverse (means over the last ``WINDOW`` epochs);
- ``gate``: the posterior probability that LLP's classifier is right more often than the
  reference where the two differ, ``P(theta > 1/2)`` for ``theta ~ Beta(1 + wins,
  1 + losses)`` (normal approximation), mapped to a weight ``max(0, (P - FLOOR) / (1 - FLOOR))``.
  FLOOR is 0.75, not 1/2: a replica holds half the run's labels, and pseudo-labels help more
  at half the labels than at the run's count (sparse-signal at 10% labels, seeds 0-2: the
  replicas' classifiers beat their references while the run lost to supervised training;
  with 1/2 the run ended 3.0 points below it, with 0.75 0.8), so the gate asks for clear
  evidence.

The main run's pseudo-labeled examples are weighted ``gate x ramp-up x confidence``: with
no evidence either way the gate is ``(1/2 - FLOOR) / (1 - FLOOR)``, it rises towards 1 where
LLP beats supervised training on the replicas and falls to 0 where it loses, which leaves
the main run training on its labeled rows alone (supervised training, falling back).

The source (``--pseudo-labels auto``). Where the inputs are small enough to propagate over
(feature vectors, small images), two pseudo-labelings compete: the paper's propagation in
the memory bank, re-propagated every step, and the inputs' own propagation by the
propagation tool's default, computed once when LLP starts. When LLP starts and after every
epoch the replicas score both on their probe rows (``selfcheck_bank_acc``,
``selfcheck_input_acc``); the run and its replicas take their labels from the one with the
higher mean over the last ``WINDOW`` scores (a tie keeps the current one).

Cost: two replicas of half the rows each train as much as the run itself (one replica:
half as much; ``--self-check-replicas``). Replicas run on every process of a
``torchrun`` job alike (each keeps its whole bank) and rank 0's gate is used by all.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

WINDOW = 3       # epochs whose win/loss counts the gate averages
FLOOR = 0.75     # posterior probability of a gain below which the gate is 0


class SubsetSource:
    """Rows ``rows`` of another data source, re-indexed from 0."""

    def __init__(self, source, rows: Tensor):
        self.source, self.rows = source, rows

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        return self.source.batch(self.rows[idx.cpu()], generator)


def probe_folds(labeled: Tensor, y: Tensor, folds: int, seed: int) -> List[Tensor]:
    """``folds`` disjoint sets of labeled row ids (sorted): the labeled rows of each class
    with n >= 2 of them, shuffled, are dealt one by one into the folds from a random first
    one, so a replica holding one fold out keeps n - ceil(n / folds) >= 1 of them labeled;
    a class with one labeled row is in no fold."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.nonzero(labeled.cpu()).flatten()
    parts: List[List[Tensor]] = [[] for _ in range(folds)]
    for c in torch.unique(y.cpu()[ids]).tolist():
        members = ids[y.cpu()[ids] == c]
        if len(members) < 2:
            continue
        members = members[torch.randperm(len(members), generator=g)]
        first = int(torch.randint(folds, (1,), generator=g))
        for i, row in enumerate(members):
            parts[(first + i) % folds].append(row.view(1))
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.int64) for p in parts]


def posterior_gain(wins: float, losses: float) -> float:
    """P(theta > 1/2) for theta ~ Beta(1 + wins, 1 + losses), by the normal approximation."""
    a, b = 1.0 + wins, 1.0 + losses
    mean = a / (a + b)
    sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))
    return 0.5 * (1.0 + math.erf((mean - 0.5) / (sd * math.sqrt(2.0))))


def gate_of(wins: float, losses: float, floor: float = FLOOR) -> float:
    """The pseudo-labeled loss weight the evidence allows, in [0, 1]."""
    return max(0.0, (posterior_gain(wins, losses) - floor) / (1.0 - floor))


@dataclass
class Replica:
    run: "object"               # llp.train.build.Run of the half-size copy
    probe: Tensor               # [P] the probe rows' ids in the replica
    probe_y: Tensor             # [P] their true classes
    reference: Optional[Tensor] = None  # bool [P]: the warm-up classifier right on each


class SelfCheck:
    """The replicas of one run and the gate they set (``main.gate``)."""

    def __init__(self, main, replicas: List[Replica]):
        self.main, self.replicas = main, replicas
        main.checked = True
        self.counts: List[List[float]] = []  # [wins, losses] of each LLP epoch so far
        self.sources: List[List[float]] = []  # [bank, input] probe accuracy of each LLP epoch
        self.main.gate = gate_of(0.0, 0.0)

    @property
    def chooses_source(self) -> bool:
        return self.main.config.pseudo_labels == "auto" and self.main.state.input_labels is not None

    # -- training ----------------------------------------------------------------------
    def train_epoch(self, epoch: int, train_one_epoch) -> None:
        """Each replica trains epoch ``epoch`` (``train_one_epoch(run, epoch)``); after
        the warm-up's last epoch each records its reference."""
        for replica in self.replicas:
            train_one_epoch(replica.run, epoch)
        if epoch + 1 == self.main.config.warmup:
            self.start()

    def start(self) -> None:
        """LLP starts: each replica's reference is its classifier now (after the warm-up;
        the untrained one without), and with ``--pseudo-labels auto`` the source whose
        probe accuracy is higher gives the first pseudo-labels."""
        for replica in self.replicas:
            replica.reference = self._right(replica)
        if self.chooses_source:
            self.sources.append(self._source_accuracy())
            self._use(self._better_source())

    def _source_accuracy(self) -> List[float]:
        """[bank propagation, input propagation] accuracy on every replica's probe rows."""
        right, probes = [0.0, 0.0], 0
        for replica in self.replicas:
            state, probe = replica.run.state, replica.probe.to(replica.run.device)
            right[0] += float((state.vote(probe).cpu() == replica.probe_y).sum())
            right[1] += float((state.input_labels[probe].cpu() == replica.probe_y).sum())
            probes += len(probe)
        return [r / max(probes, 1) for r in right]

    def _better_source(self) -> str:
        """The source with the higher mean probe accuracy over the last ``WINDOW`` epochs;
        a tie keeps the current one."""
        recent = self.sources[-WINDOW:]
        bank, inputs = (sum(a[i] for a in recent) / len(recent) for i in (0, 1))
        if bank == inputs:
            return self.main.state.source
        return "input" if inputs > bank else "propagation"

    def _use(self, source: str) -> None:
        """The main run and every replica take their labels from ``source`` from now on."""
        source = ("propagation", "input")[self._agreed_index(("propagation", "input").index(source))]
        for run in [self.main] + [r.run for r in self.replicas]:
            if run.state.source != source:
                run.state.use_source(source)

    def _right(self, replica: Replica) -> Tensor:
        from .metrics import run_model
        run = replica.run
        logits = run_model(run.net, run.split.train, run.device, rows=replica.probe)
        return (logits.argmax(dim=1).cpu() == replica.probe_y)

    # -- the estimate and the gate ---------------------------------------------------------
    def after_epoch(self, phase: str) -> Dict[str, float]:
        """After an LLP epoch: the replicas' probe statistics, and the gate for the next
        epoch. Nothing during the warm-up (no pseudo-labels yet)."""
        if phase != "llp" or not self.replicas:
            return {}
        pseudo_right = right = reference = wins = losses = 0.0
        probes = 0
        for replica in self.replicas:
            now = self._right(replica)
            ref = replica.reference if replica.reference is not None else now
            labels = replica.run.state.labels[replica.probe.to(replica.run.device)].cpu()
            pseudo_right += float((labels == replica.probe_y).sum())
            right += float(now.sum())
            reference += float(ref.sum())
            wins += float((now & ~ref).sum())
            losses += float((~now & ref).sum())
            probes += len(replica.probe)
        self.counts.append([wins, losses])
        recent = self.counts[-WINDOW:]
        mean_wins = sum(c[0] for c in recent) / len(recent)
        mean_losses = sum(c[1] for c in recent) / len(recent)
        gate = self._agreed(gate_of(mean_wins, mean_losses))
        self.main.gate = gate
        n = max(probes, 1)
        record = {"selfcheck_acc": pseudo_right / n, "selfcheck_classifier_acc": right / n,
                  "selfcheck_reference_acc": reference / n, "selfcheck_probes": probes,
                  "selfcheck_wins": mean_wins, "selfcheck_losses": mean_losses, "gate": gate,
                  "source": self.main.state.source}
        if self.chooses_source:
            self.sources.append(self._source_accuracy())
            record["selfcheck_bank_acc"], record["selfcheck_input_acc"] = self.sources[-1]
            self._use(self._better_source())
        return record

    def _agreed(self, gate: float) -> float:
        """Rank 0's gate on every process of a torchrun job."""
        group = self.main.group
        if group is None:
            return gate
        import torch.distributed as dist
        value = torch.tensor([gate], dtype=torch.float64, device=self.main.device)
        dist.broadcast(value, src=0)
        return float(value[0])

    def _agreed_index(self, index: int) -> int:
        return int(round(self._agreed(float(index))))

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"gate": self.main.gate, "counts": [list(c) for c in self.counts],
                "sources": [list(a) for a in self.sources],
                "replicas": [{"model": r.run.net.state_dict(), "optimizer": r.run.optimizer.state_dict(),
                              "schedule": r.run.schedule.state_dict(),
                              "llp": {**{k: (v.cpu() if torch.is_tensor(v) else v)
                                         for k, v in r.run.state.state_dict().items()},
                                      "bank": r.run.state.bank.gather().cpu()},
                              "batches": r.run.batches.get_state(),
                              "reference": r.reference} for r in self.replicas]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["replicas"]) != len(self.replicas):
            raise ValueError(f"checkpoint has {len(state['replicas'])} self-check replicas, "
                             f"this run {len(self.replicas)}")
        self.main.gate = float(state["gate"])
        self.counts = [[float(w), float(l)] for w, l in state["counts"]]
        self.sources = [[float(b), float(i)] for b, i in state.get("sources", [])]
        for replica, saved in zip(self.replicas, state["replicas"]):
            run = replica.run
            run.net.load_state_dict(saved["model"])
            run.optimizer.load_state_dict(saved["optimizer"])
            run.schedule.load_state_dict(saved["schedule"])
            llp = {k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in saved["llp"].items()}
            run.state.bank.load(llp.pop("bank").to(run.state.bank.data.dtype))
            run.state.load_state_dict(llp)
            run.batches.set_state(saved["batches"])
            replica.reference = saved["reference"]


def replica_seed(seed: int, r: int) -> int:
    return seed * 1_000_003 + 7_919 * (r + 1)


def build_self_check(main, build_run) -> Optional[SelfCheck]:
    """The replicas of run ``main`` (``build_run(config, device, group, split)`` builds
    each), or None when the config has no self-check or no class has two labeled rows.
    Replica r holds fold r of the labeled rows out (``probe_folds``) and keeps a share
    (folds - 1) / folds of the unlabeled rows (all but part r of them), so that its
    labeled fraction is the run's."""
    c = main.config
    if c.method != "llp" or c.self_check_replicas == 0:
        return None
    labeled = main.state.labeled.cpu()
    y = main.train_y.cpu()
    folds = probe_folds(labeled, y, c.self_check_folds, replica_seed(c.seed, -1))
    if any(len(folds[r]) == 0 for r in range(c.self_check_replicas)):
        return None
    unlabeled = torch.nonzero(~labeled).flatten()
    g = torch.Generator().manual_seed(replica_seed(c.seed, -2))
    parts = unlabeled[torch.randperm(len(unlabeled), generator=g)].tensor_split(c.self_check_folds)
    replicas = []
    for r in range(c.self_check_replicas):
        probe_rows = folds[r]
        kept = torch.cat([p for i, p in enumerate(parts) if i != r])
        rows = torch.sort(torch.cat([torch.nonzero(labeled).flatten(), kept])).values
        local_labeled = labeled[rows].clone()
        position = torch.full((len(labeled),), -1, dtype=torch.int64)
        position[rows] = torch.arange(len(rows))
        probe = position[probe_rows]
        local_labeled[probe] = False
        split = dataclasses.replace(main.split, train=SubsetSource(main.split.train, rows),
                                    train_y=main.split.train_y[rows], labeled=local_labeled)
        replica_config = dataclasses.replace(c, seed=replica_seed(c.seed, r), self_check_replicas=0)
        run = build_run(replica_config, main.device, None, split)
        replicas.append(Replica(run, probe, y[probe_rows]))
    return SelfCheck(main, replicas)

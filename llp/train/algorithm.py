"""The LLP algorithm's state and its two alternating steps (paper section 3), written
against a memory bank (``llp.train.bank``: one process or sharded, the same interface) whose
similarity work goes through the public ``llp_kernels`` API.

State over the N training examples: the bank [N, D] (running average of embeddings),
the current label of every example (true for labeled, propagated for unlabeled), its
confidence (1 for labeled), and the log local density of the labeled rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from llp_kernels.defaults import K, T


@dataclass(frozen=True)
class LLPConfig:
    """How LLP propagates; the temperature is the bank's (``bank.tau``), which every
    similarity of the algorithm goes through."""
    k: int = K
    t: int = T
    density_weighting: bool = True   # False: NoDW ablation (plain weighted kNN)
    use_confidence: bool = True      # False: NoC ablation (every weight 1)
    density_over: str = "unlabeled"  # or "all" (the authors' release)


class LLPState:
    def __init__(self, bank, true_labels: Tensor, labeled: Tensor, num_classes: int, config: LLPConfig):
        """``true_labels`` [N] int64 (only the ``labeled`` rows' are read), ``labeled`` bool [N]."""
        self.bank, self.config, self.num_classes = bank, config, num_classes
        self.labeled = labeled
        self.labeled_idx = torch.nonzero(labeled).flatten()
        self.unlabeled_idx = torch.nonzero(~labeled).flatten()
        if self.labeled_idx.numel() == 0:
            raise ValueError("no labeled examples: at least one per class is needed")
        known = true_labels[self.labeled_idx]
        if int(known.min()) < 0 or int(known.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes})")
        self.labels = torch.where(labeled, true_labels, torch.zeros_like(true_labels))
        self.confidence = labeled.float()
        self.log_density: Optional[Tensor] = None
        self.instance_labels = torch.arange(bank.rows, device=labeled.device)
        # Where the unlabeled rows' labels come from: "propagation" in the bank (eq. 5, every
        # step), or "input": fixed labels propagated over the inputs (``input_labels``).
        self.source = "propagation"
        self.input_labels: Optional[Tensor] = None
        self.input_conf: Optional[Tensor] = None

    def state_dict(self) -> dict:
        """Everything but the bank, whose rows may be spread over processes: the caller
        gathers it (``bank.gather()``) when it needs it whole."""
        return {"labels": self.labels, "confidence": self.confidence,
                "log_density": self.log_density, "labeled": self.labeled, "source": self.source,
                "input_labels": self.input_labels, "input_conf": self.input_conf}

    def load_state_dict(self, state: dict) -> None:
        if state["labels"].shape != self.labels.shape or not torch.equal(state["labeled"], self.labeled):
            raise ValueError("checkpoint state does not match this data split")
        labels = state["labels"]
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"checkpoint labels must lie in [0, {self.num_classes})")
        self.labels.copy_(labels)
        self.confidence.copy_(state["confidence"])
        self.log_density = state["log_density"]
        self.source = state.get("source", "propagation")
        self.input_labels, self.input_conf = state.get("input_labels"), state.get("input_conf")

    # -- label propagation -------------------------------------------------------------
    def update_density(self) -> None:
        """log rho(v_i) for every labeled row over its T nearest unlabeled rows (eq. 4)."""
        cfg = self.config
        others = None if cfg.density_over == "all" else self.unlabeled_idx
        count = self.bank.rows if others is None else others.numel()
        if not cfg.density_weighting or count == 0:
            self.log_density = None
            return
        self.log_density = self.bank.log_density(self.labeled_idx, others, min(cfg.t, count))

    def propagate(self, idx: Optional[Tensor] = None, queries: Optional[Tensor] = None) -> None:
        """Pseudo-labels and confidences (eq. 5) for the unlabeled examples among ``idx``
        (this process's batch; all examples when None), from ``queries`` (the batch's
        embeddings) or else their bank rows; labeled examples keep theirs."""
        if idx is None:
            targets = self.unlabeled_idx
            if targets.numel() == 0:
                return
            queries = self.bank.fetch(targets)
        elif queries is None:
            (targets,) = self.bank.whole_step(idx)
            queries = self.bank.fetch(targets)
        else:
            targets, queries = self.bank.whole_step(idx, queries.detach().float())
        labels, conf = self.bank.propagate(queries, self.labeled_idx, self.labels[self.labeled_idx],
                                           self.log_density, min(self.config.k, self.labeled_idx.numel()),
                                           self.num_classes)
        self._assign(targets, labels, conf)

    def use_source(self, source: str) -> None:
        """From now on the unlabeled rows' labels come from ``source``: "input" assigns
        the fixed input labels to every row, "propagation" propagates every row now (and
        the steps re-propagate their batches)."""
        self.source = source
        if source == "input":
            self._assign(torch.arange(len(self.labels), device=self.labels.device), self.input_labels,
                         self.input_conf)
        else:
            self.propagate()

    def vote(self, ids: Tensor) -> Tensor:
        """The bank's propagated labels (eq. 5) of rows ``ids``, whatever the source."""
        labels, _ = self.bank.propagate(self.bank.fetch(ids), self.labeled_idx, self.labels[self.labeled_idx],
                                        self.log_density, min(self.config.k, self.labeled_idx.numel()),
                                        self.num_classes)
        return labels

    def set_labels_from_classifier(self, idx: Tensor, logits: Tensor) -> None:
        """The authors' release: pseudo-labels from the classifier head (an ablation)."""
        conf, label = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
        self._assign(*self.bank.whole_step(idx, label, conf))

    def _assign(self, targets: Tensor, labels: Tensor, conf: Tensor) -> None:
        """New labels for ``targets`` (no boolean indexing: no shape that depends on the
        data). Labeled examples keep their true label and confidence 1. An example whose
        vote gave no label (-1, from a NaN score) keeps its label but takes the NaN
        confidence: the loss turns NaN and the trainer stops at the epoch's end, where a
        class of -1 would have been an index error in the next step."""
        keep = self.labeled[targets]
        self.labels[targets] = torch.where(keep | (labels < 0), self.labels[targets], labels)
        self.confidence[targets] = torch.where(keep, self.confidence[targets], conf)

    # -- representation learning -------------------------------------------------------
    def loss(self, idx: Tensor, embedding: Tensor, logits: Tensor,
             unlabeled_weight: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
        """mean_b w_b * (CE(logits_b, y_b) + L_A(v_b)) with w_b = c_b (1 for labeled rows,
        ``unlabeled_weight`` = u times c_b for pseudo-labeled ones); returns (loss, ce, agg)
        means. The pseudo-labels also enter a labeled row's aggregation loss, as members
        of its class: there u mixes ``(1 - u) L_A(v | labeled rows of its class) + u L_A(v |
        every row labeled or pseudo-labeled so)``, so that at u = 0 nothing of the
        pseudo-labels is left (supervised training) and at u = 1 it is the paper's loss."""
        u = unlabeled_weight
        labeled = self.labeled[idx]
        y = self.labels[idx]
        weight = self.confidence[idx] if self.config.use_confidence else torch.ones_like(self.confidence[idx])
        if u != 1.0:
            weight = torch.where(labeled, weight, weight * u)
        ce = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
        agg = self.bank.aggregation_loss(embedding, y, self.labels) if u > 0 else None
        if u < 1:
            among_labeled = self.bank.aggregation_loss(embedding, y, torch.where(self.labeled, self.labels, -1))
            agg = among_labeled if agg is None else torch.where(labeled, (1 - u) * among_labeled + u * agg, agg)
        total = (weight * (ce + agg)).mean()
        return total, ce.mean().detach(), agg.mean().detach()

    def instance_loss(self, idx: Tensor, embedding: Tensor) -> Tensor:
        """Instance-recognition warm-up (Wu et al. 2018): the aggregation loss with every
        example its own class, i.e. -log P(bank row idx_b | v_b); returns the batch mean."""
        return self.bank.aggregation_loss(embedding, idx, self.instance_labels).mean()

    def update_bank(self, idx: Tensor, embedding: Tensor) -> None:
        self.bank.update(idx, embedding)

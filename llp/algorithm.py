"""The LLP algorithm's state and its two alternating steps (paper section 3), written
against the public ``llp_kernels`` API only.

State over the N training examples: the memory bank [N, D] (running average of
embeddings), the current label of every example (true for labeled, propagated for
unlabeled), its confidence (1 for labeled), and the log local density of the labeled
rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import llp_kernels as lk


@dataclass
class LLPConfig:
    tau: float = 0.07
    k: int = 10
    t: int = 25
    momentum: float = 0.5
    density_weighting: bool = True   # False: NoDW ablation (plain weighted kNN)
    use_confidence: bool = True      # False: NoC ablation (every weight 1)
    density_over: str = "unlabeled"  # or "all" (the authors' release)
    backend: str = "auto"


class LLPState:
    def __init__(self, bank: Tensor, true_labels: Tensor, labeled: Tensor, num_classes: int,
                 config: LLPConfig):
        self.config = config
        self.num_classes = num_classes
        self.bank = bank                                   # [N, D], unit rows
        self.labeled = labeled                             # bool [N]
        self.labeled_idx = torch.nonzero(labeled).flatten()
        self.unlabeled_idx = torch.nonzero(~labeled).flatten()
        self.labels = torch.where(labeled, true_labels, torch.zeros_like(true_labels))
        self.confidence = labeled.float()
        self.log_density: Optional[Tensor] = None
        self._instance_labels: Optional[Tensor] = None
        # Ground-truth labels of labeled rows, validated once here.
        lk_labels = self.labels[self.labeled_idx]
        if lk_labels.numel() == 0:
            raise ValueError("no labeled examples: at least one per class is needed")
        if int(lk_labels.min()) < 0 or int(lk_labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes})")

    def state_dict(self) -> dict:
        return {"bank": self.bank, "labels": self.labels, "confidence": self.confidence,
                "log_density": self.log_density, "labeled": self.labeled}

    def load_state_dict(self, state: dict) -> None:
        if state["bank"].shape != self.bank.shape or not torch.equal(state["labeled"], self.labeled):
            raise ValueError("checkpoint state does not match this data split")
        self.bank.copy_(state["bank"])
        self.labels.copy_(state["labels"])
        self.confidence.copy_(state["confidence"])
        self.log_density = state["log_density"]

    # -- label propagation -------------------------------------------------------------
    def update_density(self) -> None:
        """log rho(v_i) for every labeled row over its T nearest unlabeled rows (eq. 4)."""
        cfg = self.config
        if not cfg.density_weighting:
            self.log_density = None
            return
        labeled = self.bank[self.labeled_idx]
        others = self.bank if cfg.density_over == "all" else self.bank[self.unlabeled_idx]
        if others.shape[0] == 0:
            self.log_density = None
            return
        t = min(cfg.t, others.shape[0])
        self.log_density = lk.local_density(labeled, others, t=t, tau=cfg.tau,
                                            backend=cfg.backend)

    def propagate(self, idx: Optional[Tensor] = None) -> None:
        """Pseudo-labels and confidences for the unlabeled examples among ``idx``
        (all of them when None) from their bank rows (eq. 5); labeled ones keep theirs."""
        cfg = self.config
        targets = self.unlabeled_idx if idx is None else idx[~self.labeled[idx]]
        if targets.numel() == 0:
            return
        k = min(cfg.k, self.labeled_idx.numel())
        labels, conf = lk.propagate_labels(
            self.bank[targets], self.bank[self.labeled_idx], self.labels[self.labeled_idx],
            self.log_density, k=k, tau=cfg.tau, num_classes=self.num_classes,
            backend=cfg.backend)
        self.labels[targets] = labels
        self.confidence[targets] = conf

    def set_labels_from_classifier(self, idx: Tensor, logits: Tensor) -> None:
        """The authors' release: pseudo-labels from the classifier head (an ablation)."""
        conf, label = torch.softmax(logits.detach().float(), dim=1).max(dim=1)
        idx, label, conf = self._whole_batch(idx, label, conf)
        unlabeled = ~self.labeled[idx]
        self.labels[idx[unlabeled]] = label[unlabeled]
        self.confidence[idx[unlabeled]] = conf[unlabeled]

    def _whole_batch(self, *per_example: Tensor):
        """Per-example tensors of the whole step's batch (one process: this batch)."""
        return per_example

    # -- representation learning -------------------------------------------------------
    def loss(self, idx: Tensor, embedding: Tensor, logits: Tensor):
        """mean_b c_b * (CE(logits_b, y_b) + L_A(v_b)); returns (loss, ce, agg) means."""
        cfg = self.config
        y = self.labels[idx]
        weight = self.confidence[idx] if cfg.use_confidence else torch.ones_like(self.confidence[idx])
        ce = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
        agg = self._aggregation(embedding, y)
        total = (weight * (ce + agg)).mean()
        return total, ce.mean().detach(), agg.mean().detach()

    def instance_loss(self, idx: Tensor, embedding: Tensor) -> Tensor:
        """Instance-recognition warm-up (Wu et al. 2018): the aggregation loss with every
        example its own class, i.e. -log P(bank row idx_b | v_b); returns the batch mean."""
        return self._aggregation(embedding, idx, instance=True).mean()

    def _aggregation(self, embedding: Tensor, query_labels: Tensor, instance: bool = False) -> Tensor:
        """Per-query L_A [B] against the whole bank; ``instance``: bank row j has label j."""
        if instance and self._instance_labels is None:
            self._instance_labels = torch.arange(self.bank.shape[0], device=self.bank.device)
        bank_labels = self._instance_labels if instance else self.labels
        return lk.aggregation_loss(embedding, self.bank, bank_labels, query_labels,
                                   tau=self.config.tau, backend=self.config.backend)

    def update_bank(self, idx: Tensor, embedding: Tensor) -> None:
        lk.update_memory_bank_(self.bank, idx, embedding.detach(), momentum=self.config.momentum,
                               backend=self.config.backend)

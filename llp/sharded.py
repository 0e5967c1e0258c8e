"""LLP state with the memory bank sharded across processes (``torchrun``): rank r holds
the contiguous rows ``Group.shard(N)`` of the bank; labels, confidences and log
densities (O(N) integers and floats) are replicated and kept identical on every rank.

Every step goes through the public ``llp_kernels`` API on the local shard, then combines
across ranks (DESIGN 1.1):
- aggregation loss: all queries of the global batch against each shard
  (``aggregation_lse``), log-sum-exps combined over ranks; the backward is each shard's
  ``aggregation_grad`` with the global log-sum-exps, summed over ranks;
- density and propagation: each shard's own top-k (``topk_similarity``), merged over
  ranks, then ``class_vote``;
- bank update: every rank applies the global batch's rows that fall in its shard.
Same interface as ``llp.algorithm.LLPState``; every method is a collective (all ranks
call it, in the same order).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

import llp_kernels as lk

from .algorithm import LLPConfig, LLPState
from .distributed import Group, all_sum, gather_rows, row_counts


def _gather_same(t: Tensor) -> list:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


class _ShardedAggregation(torch.autograd.Function):
    """Per-query aggregation loss of this rank's queries against the whole sharded bank."""

    @staticmethod
    def forward(ctx, queries, query_labels, bank_shard, shard_labels, tau, backend):
        counts = row_counts(queries.shape[0], queries.device)
        q_all = gather_rows(queries.detach(), counts)
        y_all = gather_rows(query_labels, counts)
        lse = torch.stack(lk.aggregation_lse(q_all, bank_shard, shard_labels, y_all, tau, backend=backend))
        lse_all, lse_same = torch.logsumexp(torch.stack(_gather_same(lse)), dim=0)
        start = sum(counts[:dist.get_rank()])
        ctx.save_for_backward(q_all, y_all, lse_all, lse_same, bank_shard, shard_labels)
        ctx.rows, ctx.counts = (start, queries.shape[0]), counts
        ctx.tau, ctx.backend, ctx.dtype = tau, backend, queries.dtype
        return (lse_all - lse_same)[start:start + queries.shape[0]]

    @staticmethod
    def backward(ctx, grad):
        q_all, y_all, lse_all, lse_same, bank_shard, shard_labels = ctx.saved_tensors
        g_all = gather_rows(grad.contiguous().float(), ctx.counts)
        dq = lk.aggregation_grad(q_all, bank_shard, shard_labels, y_all, lse_all, lse_same, ctx.tau,
                                 g_all, backend=ctx.backend)
        start, n = ctx.rows
        return all_sum(dq.float())[start:start + n].to(ctx.dtype), None, None, None, None, None


class ShardedLLPState(LLPState):
    """``LLPState`` over a bank shard; it shares the loss and classifier-label steps and
    replaces everything that touches the bank."""

    def __init__(self, bank_shard: Tensor, true_labels: Tensor, labeled: Tensor, num_classes: int,
                 config: LLPConfig, group: Group):
        n = labeled.shape[0]
        if n < group.world:
            raise ValueError(f"{n} training rows cannot be sharded over {group.world} processes")
        self.group, self.config, self.num_classes = group, config, num_classes
        shard = group.shard(n)
        self.lo, self.hi = shard.start, shard.stop
        if bank_shard.shape[0] != len(shard):
            raise ValueError(f"rank {group.rank} needs bank rows [{self.lo}, {self.hi}), got {bank_shard.shape[0]}")
        self.bank_shard = bank_shard
        self.labeled = labeled
        self.labeled_idx = torch.nonzero(labeled).flatten()
        self.unlabeled_idx = torch.nonzero(~labeled).flatten()
        self.labels = torch.where(labeled, true_labels, torch.zeros_like(true_labels))
        self.confidence = labeled.float()
        self.log_density: Optional[Tensor] = None
        in_shard = (self.labeled_idx >= self.lo) & (self.labeled_idx < self.hi)
        self.my_labeled = self.labeled_idx[in_shard]                 # global row ids
        self.my_labeled_pos = torch.nonzero(in_shard).flatten()      # their positions in labeled_idx
        self.my_unlabeled = self.unlabeled_idx[(self.unlabeled_idx >= self.lo) & (self.unlabeled_idx < self.hi)]
        if self.labeled_idx.numel() == 0:
            raise ValueError("no labeled examples: at least one per class is needed")

    # -- the whole bank, for metrics and checkpoints (a collective) ---------------------
    @property
    def bank(self) -> Tensor:
        return gather_rows(self.bank_shard)

    def state_dict(self) -> dict:
        return {"bank": self.bank, "labels": self.labels, "confidence": self.confidence,
                "log_density": self.log_density, "labeled": self.labeled}

    def load_state_dict(self, state: dict) -> None:
        if state["bank"].shape[0] != self.labeled.shape[0] or not torch.equal(state["labeled"], self.labeled):
            raise ValueError("checkpoint state does not match this data split")
        self.bank_shard.copy_(state["bank"][self.lo:self.hi])
        self.labels.copy_(state["labels"])
        self.confidence.copy_(state["confidence"])
        self.log_density = state["log_density"]

    def _rows(self, ids: Tensor) -> Tensor:
        """Bank rows ``ids`` (global, same on every rank) as fp32 [len(ids), D] on every rank."""
        out = torch.zeros(ids.shape[0], self.bank_shard.shape[1], device=self.bank_shard.device)
        mine = (ids >= self.lo) & (ids < self.hi)
        out[mine] = self.bank_shard[ids[mine] - self.lo].float()
        return all_sum(out)

    def _merged_topk(self, queries: Tensor, keys: Tensor, key_ids: Tensor, k: int,
                     key_bias: Optional[Tensor] = None):
        """The k best (score, key id) over every rank's keys; -inf pads short shards."""
        values = torch.full((queries.shape[0], k), float("-inf"), device=queries.device)
        ids = torch.zeros(queries.shape[0], k, dtype=torch.int64, device=queries.device)
        k_local = min(k, keys.shape[0])
        if k_local > 0:
            v, i = lk.topk_similarity(queries, keys, k_local, self.config.tau, key_bias=key_bias,
                                      backend=self.config.backend)
            values[:, :k_local], ids[:, :k_local] = v, key_ids[i]
        best, pick = torch.topk(torch.cat(_gather_same(values), dim=1), k, dim=1)
        return best, torch.gather(torch.cat(_gather_same(ids), dim=1), 1, pick)

    # -- label propagation -------------------------------------------------------------
    def update_density(self) -> None:
        cfg = self.config
        if not cfg.density_weighting:
            self.log_density = None
            return
        labeled_rows = gather_rows(self.bank_shard[self.my_labeled - self.lo])  # labeled_idx order
        local_ids = (torch.arange(self.lo, self.hi, device=self.bank_shard.device)
                     if cfg.density_over == "all" else self.my_unlabeled)
        total = sum(row_counts(local_ids.shape[0], local_ids.device))
        if total == 0:
            self.log_density = None
            return
        values, _ = self._merged_topk(labeled_rows, self.bank_shard[local_ids - self.lo], local_ids,
                                      min(cfg.t, total))
        self.log_density = torch.logsumexp(values, dim=1)

    def propagate(self, idx: Optional[Tensor] = None) -> None:
        cfg = self.config
        if idx is None:
            targets = self.unlabeled_idx
            queries = gather_rows(self.bank_shard[self.my_unlabeled - self.lo].float())
        else:
            all_idx = gather_rows(idx)
            targets = all_idx[~self.labeled[all_idx]]
            queries = self._rows(targets)
        if targets.numel() == 0:
            return
        bias = None if self.log_density is None else self.log_density[self.my_labeled_pos]
        scores, positions = self._merged_topk(queries, self.bank_shard[self.my_labeled - self.lo],
                                              self.my_labeled_pos, min(cfg.k, self.labeled_idx.numel()),
                                              key_bias=bias)
        neighbour_labels = self.labels[self.labeled_idx][positions]
        labels, conf = lk.class_vote(scores, neighbour_labels, self.num_classes)
        self.labels[targets] = labels
        self.confidence[targets] = conf

    def _whole_batch(self, *per_example: Tensor):
        counts = row_counts(per_example[0].shape[0], per_example[0].device)
        return tuple(gather_rows(t, counts) for t in per_example)

    def _aggregation(self, embedding: Tensor, query_labels: Tensor, instance: bool = False) -> Tensor:
        shard_labels = (torch.arange(self.lo, self.hi, device=self.bank_shard.device) if instance
                        else self.labels[self.lo:self.hi])
        return _ShardedAggregation.apply(embedding, query_labels, self.bank_shard, shard_labels,
                                         self.config.tau, self.config.backend)

    def update_bank(self, idx: Tensor, embedding: Tensor) -> None:
        all_idx, all_emb = self._whole_batch(idx, embedding.detach().float())
        mine = (all_idx >= self.lo) & (all_idx < self.hi)
        if bool(mine.any()):
            lk.update_memory_bank_(self.bank_shard, all_idx[mine] - self.lo, all_emb[mine],
                                   momentum=self.config.momentum, backend=self.config.backend)

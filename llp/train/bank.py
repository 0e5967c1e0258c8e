"""The memory bank (Wu et al. 2018) and the similarity work over it, in one process
(``LocalBank``) or sharded over processes (``ShardedBank``), behind one interface so that
``LLPState`` and the offline tools never know which they hold.

Rows are addressed by global id in [0, N). ``ShardedBank`` keeps rows ``group.shard(N)``
on each rank; all of its methods are collectives (every rank calls them in the same
order, with the same replicated arguments), and only ``gather()`` moves the whole bank.

    own_rows()                         global ids stored here (a range)
    whole_step(*per_example)           this process's batch tensors -> the whole step's
    fetch(ids)                         fp32 rows [len(ids), D], on every rank
    aggregation_loss(q, q_labels, bank_labels)   [B], autograd to q (paper eq. 1-2)
    log_density(labeled_ids, other_ids, t)       [M] (eq. 4; other_ids None: every row)
    propagate(queries, labeled_ids, labeled_labels, log_density, k, num_classes)
                                       pseudo-labels, confidences (eq. 5)
    update(idx, embeddings)            momentum update of this process's batch rows
    write_own(embeddings)              replace the rows stored here (a refresh)
    gather() / load(full)              the whole bank [N, D] (checkpoints, metrics)
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

import llp_kernels as lk

from ..method import density
from ..method.distributed import Group, all_sum, gather_rows, row_counts


class LocalBank:
    """The whole bank [N, D] in this process."""

    def __init__(self, data: Tensor, tau: float, momentum: float, backend: str = "auto"):
        self.data, self.tau, self.momentum, self.backend = data, tau, momentum, backend
        self.rows, self.dim = data.shape

    def own_rows(self) -> range:
        return range(self.rows)

    def whole_step(self, *per_example: Tensor):
        return per_example

    def fetch(self, ids: Tensor) -> Tensor:
        return self.data[ids].float()

    def aggregation_loss(self, queries: Tensor, query_labels: Tensor, bank_labels: Tensor) -> Tensor:
        return lk.aggregation_loss(queries, self.data, bank_labels, query_labels, tau=self.tau,
                                   backend=self.backend)

    def log_density(self, labeled_ids: Tensor, other_ids: Optional[Tensor], t: int) -> Tensor:
        others = self.data if other_ids is None else self.data[other_ids]
        return lk.local_density(self.data[labeled_ids], others, t=t, tau=self.tau, backend=self.backend)

    def propagate(self, queries: Tensor, labeled_ids: Tensor, labeled_labels: Tensor,
                  log_density: Optional[Tensor], k: int, num_classes: int) -> Tuple[Tensor, Tensor]:
        return lk.propagate_labels(queries, self.data[labeled_ids], labeled_labels, log_density, k=k,
                                   tau=self.tau, num_classes=num_classes, backend=self.backend)

    def update(self, idx: Tensor, embeddings: Tensor) -> None:
        lk.update_memory_bank_(self.data, idx, embeddings.detach(), momentum=self.momentum,
                               backend=self.backend)

    def write_own(self, embeddings: Tensor) -> None:
        self.data.copy_(embeddings)

    def gather(self) -> Tensor:
        return self.data

    def load(self, full: Tensor) -> None:
        self.data.copy_(full)


def _gather_same(t: Tensor) -> List[Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


class _ShardedAggregation(torch.autograd.Function):
    """This rank's queries against every shard: each shard's ``aggregation_lse`` for the
    whole step's queries, combined by logsumexp over ranks; the backward is each shard's
    ``aggregation_grad`` with the global log-sum-exps, summed over ranks."""

    @staticmethod
    def forward(ctx, queries, query_labels, shard, shard_labels, tau, backend):
        counts = row_counts(queries.shape[0], queries.device)
        q_all = gather_rows(queries.detach(), counts)
        y_all = gather_rows(query_labels, counts)
        lse = torch.stack(lk.aggregation_lse(q_all, shard, shard_labels, y_all, tau, backend=backend))
        lse_all, lse_same = torch.logsumexp(torch.stack(_gather_same(lse)), dim=0)
        start = sum(counts[:dist.get_rank()])
        ctx.save_for_backward(q_all, y_all, lse_all, lse_same, shard, shard_labels)
        ctx.rows, ctx.counts = (start, queries.shape[0]), counts
        ctx.tau, ctx.backend, ctx.dtype = tau, backend, queries.dtype
        return (lse_all - lse_same)[start:start + queries.shape[0]]

    @staticmethod
    def backward(ctx, grad):
        q_all, y_all, lse_all, lse_same, shard, shard_labels = ctx.saved_tensors
        g_all = gather_rows(grad.contiguous().float(), ctx.counts)
        dq = lk.aggregation_grad(q_all, shard, shard_labels, y_all, lse_all, lse_same, ctx.tau,
                                 g_all, backend=ctx.backend)
        start, n = ctx.rows
        return all_sum(dq.float())[start:start + n].to(ctx.dtype), None, None, None, None, None


class ShardedBank:
    """Rank r of G stores rows ``group.shard(N)`` (``shard`` [len, D]); labels and other
    O(N) vectors stay replicated with the caller."""

    def __init__(self, shard: Tensor, rows: int, group: Group, tau: float, momentum: float,
                 backend: str = "auto"):
        if rows < group.world:
            raise ValueError(f"{rows} training rows cannot be sharded over {group.world} processes")
        mine = group.shard(rows)
        if shard.shape[0] != len(mine):
            raise ValueError(f"rank {group.rank} needs bank rows [{mine.start}, {mine.stop}), "
                             f"got {shard.shape[0]}")
        self.data, self.group, self.rows, self.dim = shard, group, rows, shard.shape[1]
        self.lo, self.hi = mine.start, mine.stop
        self.tau, self.momentum, self.backend = tau, momentum, backend

    def own_rows(self) -> range:
        return range(self.lo, self.hi)

    def _mine(self, ids: Tensor) -> Tensor:
        return (ids >= self.lo) & (ids < self.hi)

    def whole_step(self, *per_example: Tensor):
        counts = row_counts(per_example[0].shape[0], per_example[0].device)
        return tuple(gather_rows(t, counts) for t in per_example)

    def fetch(self, ids: Tensor) -> Tensor:
        out = torch.zeros(ids.shape[0], self.dim, device=self.data.device)
        mine = self._mine(ids)
        out[mine] = self.data[ids[mine] - self.lo].float()
        return all_sum(out)

    def aggregation_loss(self, queries: Tensor, query_labels: Tensor, bank_labels: Tensor) -> Tensor:
        return _ShardedAggregation.apply(queries, query_labels, self.data, bank_labels[self.lo:self.hi],
                                         self.tau, self.backend)

    def _merged_topk(self, queries: Tensor, key_ids: Tensor, k: int,
                     key_bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """The k best (score, position in ``key_ids``) over every rank's keys among
        ``key_ids``; -inf pads shards with fewer than k of them."""
        positions = torch.nonzero(self._mine(key_ids)).flatten()
        values = torch.full((queries.shape[0], k), float("-inf"), device=queries.device)
        found = torch.zeros(queries.shape[0], k, dtype=torch.int64, device=queries.device)
        k_local = min(k, positions.shape[0])
        if k_local > 0:
            bias = None if key_bias is None else key_bias[positions]
            v, i = lk.topk_similarity(queries, self.data[key_ids[positions] - self.lo], k_local, self.tau,
                                      key_bias=bias, backend=self.backend)
            values[:, :k_local], found[:, :k_local] = v, positions[i]
        best, pick = torch.topk(torch.cat(_gather_same(values), dim=1), k, dim=1)
        return best, torch.gather(torch.cat(_gather_same(found), dim=1), 1, pick)

    def _count(self, ids: Optional[Tensor]) -> int:
        return self.rows if ids is None else ids.shape[0]

    def log_density(self, labeled_ids: Tensor, other_ids: Optional[Tensor], t: int) -> Tensor:
        others = torch.arange(self.rows, device=self.data.device) if other_ids is None else other_ids
        values, _ = self._merged_topk(self.fetch(labeled_ids), others, min(t, self._count(other_ids)))
        return density.log_density(values)

    def propagate(self, queries: Tensor, labeled_ids: Tensor, labeled_labels: Tensor,
                  log_density: Optional[Tensor], k: int, num_classes: int) -> Tuple[Tensor, Tensor]:
        scores, positions = self._merged_topk(queries, labeled_ids, k, key_bias=log_density)
        return lk.class_vote(scores, labeled_labels[positions], num_classes, backend=self.backend)

    def update(self, idx: Tensor, embeddings: Tensor) -> None:
        all_idx, all_emb = self.whole_step(idx, embeddings.detach().float())
        mine = self._mine(all_idx)
        if bool(mine.any()):
            lk.update_memory_bank_(self.data, all_idx[mine] - self.lo, all_emb[mine],
                                   momentum=self.momentum, backend=self.backend)

    def write_own(self, embeddings: Tensor) -> None:
        self.data.copy_(embeddings)

    def gather(self) -> Tensor:
        return gather_rows(self.data)

    def load(self, full: Tensor) -> None:
        self.data.copy_(full[self.lo:self.hi])


def bank_of(c, data: Tensor, rows: int, group: Optional[Group]):
    """A run's bank over ``data``, this process's rows of ``rows``: one process
    (``group`` None) or sharded, with the temperature, momentum and backend of ``c``
    (a ``TrainConfig``: ``tau``, ``bank_momentum``, ``backend``)."""
    if group is None:
        return LocalBank(data, c.tau, c.bank_momentum, c.backend)
    return ShardedBank(data, rows, group, c.tau, c.bank_momentum, c.backend)

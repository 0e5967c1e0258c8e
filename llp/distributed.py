"""Process-group helpers for ``torchrun --nproc_per_node=G -m llp.train ...``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``setup`` then joins the group (NCCL for
CUDA, gloo for CPU). Collectives here accept a different number of rows per rank
(batches split unevenly, bank shards of N // G or N // G + 1 rows).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Group:
    rank: int
    world: int
    local_rank: int

    def shard(self, n: int) -> range:
        """This rank's contiguous rows of an n-row bank (ranks in order cover 0..n)."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)


def from_environment() -> "Group | None":
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(group: Group, device_type: str) -> None:
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def gather_rows(t: Tensor, counts: "List[int] | None" = None) -> Tensor:
    """Concatenate every rank's ``t`` [n_r, ...] in rank order; n_r may differ (pass
    ``counts`` from ``row_counts`` when they are known, to skip gathering them again)."""
    world = dist.get_world_size()
    if counts is None:
        counts = row_counts(t.shape[0], t.device)
    most = max(counts)
    padded = t.new_zeros((most, *t.shape[1:]))
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


def row_counts(n_local: int, device) -> List[int]:
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n_local], dtype=torch.int64, device=device))
    return [int(s.item()) for s in sizes]


def all_sum(t: Tensor) -> Tensor:
    t = t.contiguous()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t

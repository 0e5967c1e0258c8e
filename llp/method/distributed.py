"""Process-group helpers for ``torchrun --nproc_per_node=G -m llp.train ...``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``setup`` then joins the group (NCCL for
CUDA, gloo for CPU). Collectives here accept a different number of rows per rank
(batches split unevenly, bank shards of N // G or N // G + 1 rows).
"""
from __future__ import annotations

import gc
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


def setup(group: Group, device_type: str, init_method: "str | None" = None) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU); ``init_method`` defaults to
    torchrun's environment variables."""
    # The first call of an llp_kernels op imports torch._dynamo, and with it
    # torch.distributed._shard. Imported while a default group exists, that keeps a
    # reference to the group past destroy_process_group (seen with torch 2.13): its gloo
    # worker threads then outlive teardown, and one still releasing a finished
    # collective's tensors while the interpreter shuts down aborts the process
    # ("terminate called without an active exception"). Importing it first avoids that.
    import torch._dynamo  # noqa: F401
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=init_method,
                                rank=group.rank, world_size=group.world)


def teardown() -> None:
    """Leave the group together: nobody tears down while rank 0 may still be writing.
    Call it once every object holding the group (a DDP wrapper, say) is gone, so that
    the group's threads are stopped here rather than at interpreter exit."""
    gc.collect()  # a DDP wrapper in a reference cycle still holds the group until collected
    dist.barrier()
    dist.destroy_process_group()


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


def all_min(t: Tensor) -> Tensor:
    """Element-wise minimum of ``t`` over ranks (every rank gets it)."""
    t = t.contiguous()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def merged_topk_values(values: Tensor, k: int) -> Tensor:
    """The k largest values per row over every rank's ``values`` [Q, <= k] (the same Q
    rows on every rank, each rank having scored its own part of the keys), sorted
    descending: each rank pads to k columns with -inf, then one all_gather and a top-k
    (as ``ShardedBank`` merges its shards' top-k)."""
    padded = torch.full((values.shape[0], k), float("-inf"), dtype=values.dtype, device=values.device)
    padded[:, :min(k, values.shape[1])] = values[:, :k]
    parts = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, padded)
    return torch.topk(torch.cat(parts, dim=1), k, dim=1).values

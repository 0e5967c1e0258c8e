"""The bank sharded over processes (``torchrun``) computes what one process computes:
two gloo processes on CPU, each holding half the bank, against ``LLPState`` with the
whole bank; then ``torchrun -m llp.train`` end to end, and its checkpoint resumed by a
single process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llp.algorithm import LLPConfig, LLPState
from llp.distributed import Group
from llp.sharded import ShardedLLPState

REPO = Path(__file__).resolve().parents[1]
N, D, C, BATCH = 203, 32, 5, 41


def close(a, b, atol=1e-5):
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=0), (a - b).abs().max()


def _worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)  # the same data on every rank
        bank = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
        true = torch.randint(0, C, (N,), generator=g)
        labeled = torch.rand(N, generator=g) < 0.3
        labeled[:C] = True
        true[:C] = torch.arange(C)
        cfg = LLPConfig(k=4, t=6, backend="cpu")
        group = Group(rank, world, 0)
        rows = group.shard(N)
        full = LLPState(bank.clone(), true, labeled, C, cfg)
        sharded = ShardedLLPState(bank[rows.start:rows.stop].clone(), true, labeled, C, cfg, group)

        full.update_density(), sharded.update_density()
        close(sharded.log_density, full.log_density)
        full.propagate(), sharded.propagate()
        assert torch.equal(sharded.labels, full.labels)
        close(sharded.confidence, full.confidence)

        idx = torch.randperm(N, generator=g)[:BATCH]
        emb = torch.nn.functional.normalize(torch.randn(BATCH, D, generator=g), dim=1)
        logits = torch.randn(BATCH, C, generator=g)
        mine = torch.arange(BATCH).tensor_split(world)[rank]
        for loss_of in ("loss", "instance_loss"):
            e_full = emb.clone().requires_grad_()
            e_mine = emb[mine].clone().requires_grad_()
            if loss_of == "loss":
                want = full.loss(idx, e_full, logits)[0]
                got = sharded.loss(idx[mine], e_mine, logits[mine])[0]
            else:
                want = full.instance_loss(idx, e_full)
                got = sharded.instance_loss(idx[mine], e_mine)
            want.backward()
            (got * len(mine) / BATCH).backward()  # local means, weighted into the global mean
            total = got.detach() * len(mine) / BATCH
            dist.all_reduce(total)
            close(total, want.detach())
            close(e_mine.grad, e_full.grad[mine])

        full.update_bank(idx, emb), sharded.update_bank(idx[mine], emb[mine])
        close(sharded.bank, full.bank)
        full.propagate(idx), sharded.propagate(idx[mine])
        assert torch.equal(sharded.labels, full.labels)
        full.set_labels_from_classifier(idx, logits), sharded.set_labels_from_classifier(idx[mine], logits[mine])
        assert torch.equal(sharded.labels, full.labels)

        state = sharded.state_dict()
        again = ShardedLLPState(torch.zeros(len(rows), D), true, labeled, C, cfg, group)
        again.load_state_dict(state)
        assert torch.equal(again.bank_shard, sharded.bank_shard)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_sharded_state_matches_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


def test_torchrun_trains_and_a_single_process_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "llp.train", "--quiet", "--epochs", "2", "--lr-drops", "", "--run-dir",
                             str(run_dir)], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2]  # written once, by rank 0
    assert lines[-1]["pseudo_acc"] > 0.3
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert ckpt["llp"]["bank"].shape == (1438, 128)  # the whole bank, gathered
    resumed = subprocess.run([sys.executable, "-m", "llp.train", "--quiet", "--resume", str(run_dir), "--epochs", "3"],
                             env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3

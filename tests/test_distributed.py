"""The bank sharded over processes (``torchrun``) computes what one process computes:
two gloo processes on CPU, each holding half the bank (``ShardedBank``), against
``LLPState`` over a ``LocalBank`` with the whole bank; then ``torchrun -m llp.train`` end to
end, and its checkpoint resumed by a single process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llp.train.algorithm import LLPConfig, LLPState
from llp.train.bank import LocalBank, ShardedBank
from llp.method.distributed import Group, setup, teardown
from process_groups import gloo_threads

REPO = Path(__file__).resolve().parents[1]
N, D, C, BATCH = 203, 32, 5, 41


def close(a, b, atol=1e-5):
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=0), (a - b).abs().max()


def _in_group(rank, world, init_file, body, *args):
    """Run ``body(rank, world, group, *args)`` in a 2-process gloo group, leave it with
    ``teardown`` and check that the group's threads are gone: a group still referenced
    after teardown keeps worker threads that can abort the process at interpreter exit."""
    torch.set_num_threads(1)
    group = Group(rank, world, 0)
    setup(group, "cpu", init_method=f"file://{init_file}")
    try:
        body(rank, world, group, *args)
    except BaseException:
        dist.destroy_process_group()
        raise
    teardown()
    assert not gloo_threads(), f"rank {rank}: the process group outlived teardown: {gloo_threads()}"


def _sharded_state_matches(rank, world, group):
    g = torch.Generator().manual_seed(0)  # the same data on every rank
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    true = torch.randint(0, C, (N,), generator=g)
    labeled = torch.rand(N, generator=g) < 0.3
    labeled[:C] = True
    true[:C] = torch.arange(C)
    cfg = LLPConfig(k=4, t=6)
    rows = group.shard(N)
    full = LLPState(LocalBank(bank.clone(), 0.07, 0.5, "cpu"), true, labeled, C, cfg)
    sharded = LLPState(ShardedBank(bank[rows.start:rows.stop].clone(), N, group, 0.07, 0.5, "cpu"),
                       true, labeled, C, cfg)

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
    close(sharded.bank.gather(), full.bank.gather())
    full.propagate(idx), sharded.propagate(idx[mine])
    assert torch.equal(sharded.labels, full.labels)
    fresh = torch.nn.functional.normalize(torch.randn(BATCH, D, generator=g), dim=1)
    full.propagate(idx, fresh), sharded.propagate(idx[mine], fresh[mine])  # from the step's embeddings
    assert torch.equal(sharded.labels, full.labels)
    close(sharded.confidence, full.confidence)
    full.set_labels_from_classifier(idx, logits), sharded.set_labels_from_classifier(idx[mine], logits[mine])
    assert torch.equal(sharded.labels, full.labels)

    again = LLPState(ShardedBank(torch.zeros(len(rows), D), N, group, 0.07, 0.5, "cpu"), true, labeled, C, cfg)
    again.load_state_dict(sharded.state_dict())
    again.bank.load(sharded.bank.gather())
    assert torch.equal(again.bank.data, sharded.bank.data) and torch.equal(again.labels, sharded.labels)


def _train_one_epoch(rank, world, port, run_dir):
    """One rank of ``torchrun --nproc_per_node 2 -m llp.train``: main() joins and leaves
    the group itself."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from llp.train import main
    record = main(["--quiet", "--epochs", "1", "--warmup-epochs", "0", "--lr-drops", "", "--run-dir", run_dir])
    assert record["epoch"] == 1
    assert not dist.is_initialized()
    assert not gloo_threads(), f"rank {rank}: the process group outlived the trainer: {gloo_threads()}"


def test_sharded_state_matches_one_process(tmp_path):
    mp.spawn(_in_group, args=(2, str(tmp_path / "init"), _sharded_state_matches), nprocs=2, join=True)


def test_trainer_releases_the_process_group(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_train_one_epoch, args=(2, port, str(tmp_path / "run")), nprocs=2, join=True)


def test_torchrun_trains_and_a_single_process_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run_dir = tmp_path / "ddp"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "llp.train", "--quiet", "--epochs", "2", "--warmup-epochs", "1", "--lr-drops", "",
                             "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]  # written once, by rank 0 (a warm-up epoch first)
    assert lines[-1]["pseudo_acc"] > 0.3
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["llp"]["bank"].shape == (1438, 128)  # the whole bank, gathered
    resumed = subprocess.run([sys.executable, "-m", "llp.train", "--quiet", "--resume", str(run_dir), "--epochs", "3"],
                             env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4

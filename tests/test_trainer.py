"""The trainer end to end on the built-in digits: it learns, resumes exactly, and turns
bad flags or a broken checkpoint into one clear error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llp import train
from llp.train.data import load_digits_split


def run(tmp_path, name, *flags):
    run_dir = tmp_path / name
    record = train.main(["--quiet", "--run-dir", str(run_dir), *flags])
    return record, run_dir


def knn_baseline(seed, fraction):
    """Labeled-only 1-NN on raw pixels: what propagation must beat."""
    split = load_digits_split(fraction, seed)
    x = split.train_x.flatten(1)
    lab = split.labeled
    d = torch.cdist(x[~lab], x[lab])
    pred = split.train_y[lab][d.argmin(dim=1)]
    return (pred == split.train_y[~lab]).float().mean().item()


def test_llp_learns_and_beats_labeled_only_knn(tmp_path):
    record, run_dir = run(tmp_path, "llp", "--epochs", "12", "--lr-drops", "9", "--warmup-epochs", "20")
    assert record["test_top1"] > 0.8, record  # chance is 0.1
    assert record["pseudo_acc"] > knn_baseline(0, 0.1), record
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, 33))
    assert [l["phase"] for l in lines] == ["warmup"] * 20 + ["llp"] * 12
    assert "pseudo_acc" not in lines[0] and "pseudo_acc" in lines[19]  # labels exist once LLP starts
    for key in ("train_ce", "train_agg", "test_top5", "test_balanced_acc", "pseudo_conf",
                "pseudo_acc_conf90", "pseudo_frac_conf90", "aggregation", "density_count_r"):
        assert key in lines[-1]
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 12


def test_supervised_runs_log_no_llp_metrics(tmp_path):
    _, run_dir = run(tmp_path, "sup", "--method", "supervised", "--epochs", "2")
    line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("pseudo_acc", "pseudo_conf", "aggregation", "density_count_r"):
        assert key not in line


def test_resume_continues_exactly(tmp_path):
    flags = ["--epochs", "4", "--lr-drops", "plateau", "--plateau-patience", "1", "--seed", "3",
             "--warmup-epochs", "2"]
    full, full_dir = run(tmp_path, "full", *flags)
    run(tmp_path, "part", *flags[:1], "2", *flags[2:])
    resumed = train.main(["--quiet", "--resume", str(tmp_path / "part"), "--epochs", "4"])
    assert resumed == {**full, "seconds": resumed["seconds"]}
    a = torch.load(full_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert torch.equal(a["llp"]["bank"], b["llp"]["bank"])
    assert torch.equal(a["llp"]["labels"], b["llp"]["labels"])
    epochs = [json.loads(l)["epoch"] for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]  # 2 warm-up epochs, then 4


REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "llp.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_corrupt_checkpoint_is_a_clear_error_and_touches_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (bad / "metrics.jsonl").write_text('{"epoch": 1}\n')
    result = cli("--resume", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert "checkpoint.pt is unreadable" in result.stderr
    assert "Traceback" not in result.stderr
    assert (bad / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert (bad / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    torch.save({"something": "else"}, bad / "checkpoint.pt")
    assert "not an llp checkpoint" in cli("--resume", str(bad), cwd=tmp_path).stderr


@pytest.mark.parametrize("flags,message", [
    (["--labeled-fraction", "0"], "--labeled-fraction must lie in (0, 1]"),
    (["--labeled-fraction", "1.2"], "--labeled-fraction must lie in (0, 1]"),
    (["--k", "0"], "--k must be >= 1"),
    (["--t", "-3"], "--t must be >= 1"),
    (["--backend", "tpu"], "--backend: invalid choice: 'tpu'"),
    (["--labeled-list", "missing.txt"], "does not exist"),
    (["--lr-drops", "ten"], "--lr-drops must be"),
    (["--lr-drops", "9,5"], "positive and increasing"),
    (["--rate-jump", "60,70"], "needs 3 boundaries"),
    (["--data", "no/such/dir"], "--data no/such/dir is not a directory"),
    (["--features", "x.npy"], "--features and --labels go together"),
    (["--data", ".", "--features", "x.npy", "--labels", "y.npy"], "alternatives"),
    (["--bank-dtype", "int8"], "--bank-dtype: invalid choice"),
    (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
])
def test_bad_flags_are_one_line_errors(tmp_path, flags, message):
    result = cli(*flags, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_labeled_list_fixes_the_split(tmp_path):
    positions = np.array([0, 5, 17, 40, 100, 200, 300, 400, 500, 600, 700, 800])
    path = tmp_path / "labeled.txt"
    np.savetxt(path, positions, fmt="%d")
    split = load_digits_split(0.5, 0, labeled_list=str(path))
    assert torch.equal(torch.nonzero(split.labeled).flatten(), torch.from_numpy(positions))


def test_help_lists_every_flag_with_a_default():
    text = train.build_parser().format_help()
    for flag in ("--method", "--no-density-weighting", "--no-confidence", "--k", "--t",
                 "--pseudo-labels", "--labeled-fraction", "--resume", "--backend"):
        assert flag in text


def test_instance_recognition_warmup_then_llp(tmp_path):
    record, run_dir = run(tmp_path, "warm", "--warmup-objective", "instance", "--warmup-epochs", "2",
                          "--epochs", "3", "--lr-drops", "")
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == ["warmup", "warmup", "llp", "llp", "llp"]
    assert "pseudo_acc" not in lines[0] and lines[1]["pseudo_acc"] > 0.3
    assert lines[0]["train_ce"] == 0.0 and lines[0]["train_agg"] > 0  # instance loss only
    assert record["epoch"] == 5 and record["test_top1"] > 0.3


def test_bf16_bank_and_autocast_train(tmp_path):
    record, run_dir = run(tmp_path, "bf16", "--epochs", "3", "--lr-drops", "", "--bank-dtype",
                          "bfloat16", "--amp")
    bank = torch.load(run_dir / "checkpoint.pt", weights_only=True)["llp"]["bank"]
    assert bank.dtype == torch.bfloat16
    assert record["pseudo_acc"] > 0.5


def test_features_path_trains_an_mlp(tmp_path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    np.save(tmp_path / "x.npy", digits.data.astype(np.float64))
    np.save(tmp_path / "y.npy", digits.target.astype(np.int32))
    record, run_dir = run(tmp_path, "feat", "--features", str(tmp_path / "x.npy"), "--labels",
                          str(tmp_path / "y.npy"), "--epochs", "6", "--lr-drops", "")
    assert record["test_top1"] > 0.7 and record["pseudo_acc"] > 0.7
    np.save(tmp_path / "bad.npy", digits.target[:10])
    result = cli("--features", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "bad.npy"), cwd=tmp_path)
    assert result.returncode == 2 and "--labels must be an integer [N] array with N=1797" in result.stderr


def test_report_draws_pngs(tmp_path):
    _, run_dir = run(tmp_path, "r", "--epochs", "2", "--lr-drops", "1")
    from llp.train import report
    written = report.main([str(run_dir), str(run_dir)])
    assert {p.name for p in written} >= {"loss.png", "test_accuracy.png", "pseudo_labels.png", "lr.png"}
    assert all(p.stat().st_size > 1000 for p in written)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    bad = subprocess.run([sys.executable, "-m", "llp.report", str(tmp_path)], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "no metrics.jsonl" in bad.stderr and "Traceback" not in bad.stderr


def test_labeled_only_knn_comparator():
    from llp.train.metrics import labeled_only_knn_top1
    assert 0.9 < labeled_only_knn_top1(load_digits_split(0.1, 0)) <= 1.0
    assert labeled_only_knn_top1(load_digits_split(0.02, 0)) < labeled_only_knn_top1(load_digits_split(0.5, 0))


def test_incompatible_checkpoint_is_a_clear_error_and_touches_nothing(tmp_path):
    _, run_dir = run(tmp_path, "r", "--epochs", "1")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["config"]["labeled_fraction"] = 0.3  # a different labeled split than the saved state
    torch.save(ckpt, run_dir / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    result = cli("--resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint.pt does not fit this run" in result.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


def test_a_training_step_never_waits_for_the_device(monkeypatch):
    """Every tensor -> Python conversion (what makes the host wait for a GPU) raises during
    a step: the warm-up step and the LLP step (loss, backward, SGD, bank update,
    propagation) must not convert anything. On a GPU, bench/gpu_check.sh also runs a step
    under torch.cuda.set_sync_debug_mode("error")."""
    from llp.train import loop
    from llp.train.build import build_run
    from llp.train.config import TrainConfig

    run = build_run(TrainConfig(warmup_epochs=1, epochs=1), torch.device("cpu"), None)
    loop.start_llp(run)
    rows = torch.arange(64)
    x = run.split.train.batch(rows, run.batches)

    def refuse(name):
        def conversion(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called inside a training step")
        return conversion

    for phase in ("warmup", "llp"):
        with monkeypatch.context() as m:
            for name in CONVERSIONS:
                m.setattr(torch.Tensor, name, refuse(name))
            parts = loop.step(run, phase, rows, x, progress=0.5)
        assert torch.isfinite(parts).all()

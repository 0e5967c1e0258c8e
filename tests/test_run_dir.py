"""The run directory is safe to resume from: a checkpoint cannot run code, a changed flag
on resume is an error naming it, a metrics line cut off by a kill is dropped, a failed
write is one line that leaves the last good files, and a finished run prints its table."""
import errno
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from llp import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--warmup-epochs", "1", "--labeled-fraction", "0.2"]


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "llp.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny run; tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("runs") / "done"
    train.main(["--quiet", "--run-dir", str(run_dir), *TINY])
    return run_dir


def copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious checkpoint would do."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_carrying_code_is_refused_and_runs_nothing(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "evil")
    marker = tmp_path / "payload-ran"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    result = cli("--resume", str(run_dir), "--epochs", "2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "checkpoint.pt is unreadable" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("flags,name", [(["--batch-size", "64"], "--batch-size"),
                                        (["--k", "3"], "--k"),
                                        (["--bank-dtype", "bfloat16"], "--bank-dtype")])
def test_resume_with_a_changed_flag_names_it(finished, tmp_path, flags, name):
    run_dir = copy_run(finished, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    result = cli("--resume", str(run_dir), *flags, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert name in result.stderr
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_a_metrics_line_cut_off_by_a_kill_is_dropped_on_resume(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "cut")
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test_to')
    record = train.main(["--quiet", "--resume", str(run_dir), "--epochs", "2"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines]  # every line parses
    assert epochs == [1, 2, 3] and record["epoch"] == 3


def test_a_failed_write_is_one_line_and_keeps_the_last_good_files(finished, tmp_path, monkeypatch, capsys):
    run_dir = copy_run(finished, tmp_path / "full")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if str(path).endswith(".tmp") and "w" in mode:
            f = real_open(path, mode, *args, **kwargs)
            f.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(SystemExit) as info:
        train.main(["--quiet", "--resume", str(run_dir), "--epochs", "2"])
    monkeypatch.undo()
    assert info.value.code == 2
    message = capsys.readouterr().err.split("(saved run: 1)\n")[-1]  # after the --epochs notice
    assert message.startswith("error: cannot write") and message.count("\n") == 1
    assert "No space left on device" in message
    assert not list(run_dir.glob("*.tmp"))
    after = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert after["checkpoint.pt"] == before["checkpoint.pt"]
    assert after["metrics.jsonl"].startswith(before["metrics.jsonl"])


def test_resuming_a_finished_run_prints_its_table_and_how_to_continue(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path / "again")
    result = cli("--resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0
    assert "test top-1" in result.stdout.lower() or "top1" in result.stdout.lower()
    assert "--epochs" in result.stdout + result.stderr


# ---- a checkpoint is verified before it is used -------------------------------------------

def resume_error(run_dir, capsys, *flags):
    """The one stderr line and exit status of a resume that must fail, and proof that it
    changed nothing in the run directory."""
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(SystemExit) as info:
        train.main(["--quiet", "--resume", str(run_dir), "--epochs", "4", *flags])
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("--resume: using")]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert len(lines) == 1, lines
    return info.value.code, lines[0]


def test_a_flipped_byte_in_a_checkpoint_is_found_by_its_crc(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "flip")
    path = run_dir / "checkpoint.pt"
    with zipfile.ZipFile(path) as archive:  # a byte inside the largest record's data
        info = max(archive.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length  # after the record's local header
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    code, line = resume_error(run_dir, capsys)
    assert code == 2
    assert line == (f"error: --resume {run_dir}: checkpoint.pt is unreadable: it is damaged: record "
                    f"{info.filename} does not match its CRC-32")


def test_random_bytes_are_not_a_checkpoint(finished, tmp_path, capsys):
    run_dir = copy_run(finished, tmp_path / "noise")
    (run_dir / "checkpoint.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    code, line = resume_error(run_dir, capsys)
    assert code == 2
    assert line == (f"error: --resume {run_dir}: checkpoint.pt is unreadable: it is not a zip archive "
                    f"(a damaged checkpoint, or another file)")


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(epoch="x"), "is malformed: its 'epoch' is 'x', not a whole number >= 0"),
    (lambda c: c.update(epoch=True), "is malformed: its 'epoch' is True, not a whole number >= 0"),
    (lambda c: c.update(config={"k": "zzz"}), "is malformed: its config's k is 'zzz', of type str (int expected)"),
    (lambda c: c["config"].update(tau="0.07"), "its config's tau is '0.07', of type str (float expected)"),
    (lambda c: c.update(config="abc"), "is malformed: its 'config' is of type str (dict expected)"),
    (lambda c: c.pop("model"), "is malformed: it has no 'model'"),
    (lambda c: c["config"].update(tau=float("nan")), "--tau must be a finite number > 0, got nan"),
    (lambda c: c["rng"]["numpy"].update(keys=3), "checkpoint.pt does not fit this run (AttributeError"),
])
def test_malformed_fields_of_a_valid_checkpoint_are_one_line(finished, tmp_path, capsys, change, message):
    run_dir = copy_run(finished, tmp_path / "odd")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    code, line = resume_error(run_dir, capsys)
    assert code == 2 and line.startswith(f"error: --resume {run_dir}: ") and message in line, line

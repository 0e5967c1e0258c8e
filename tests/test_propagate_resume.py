"""A killed ``python -m llp.propagate`` continues from its last finished chunk when the
same command runs again, and ends with the outputs of an uninterrupted run; a partial
run of another job is discarded, never mixed in; a failed run leaves nothing behind."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from llp.propagate import command as propagate
from llp.propagate import resume

from test_propagate_tool import clustered

REPO = Path(__file__).resolve().parents[1]
ARRAYS = ("pseudo_labels.npy", "confidence.npy")


def data(tmp_path, n=3000, zero_rows=4):
    x, labels, truth = clustered(n=n, d=24, classes=6, labeled=90, seed=3)
    x[np.flatnonzero(labels < 0)[:zero_rows]] = 0  # counted in summary.json across a resume too
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", labels)
    np.save(folder / "t.npy", truth)
    return folder


def argv(folder, out, *flags):
    return ["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
            "--eval-labels", str(folder / "t.npy"), "--out", str(out), "--quiet", *flags]


def results(out):
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("timings_s")
    summary["flags"].pop("out")
    return [np.load(out / name) for name in ARRAYS], summary


def assert_same_run(got, want):
    (got_arrays, got_summary), (want_arrays, want_summary) = results(got), results(want)
    for g, w in zip(got_arrays, want_arrays):
        assert g.dtype == w.dtype and np.array_equal(g, w)
    assert got_summary == want_summary


class Interrupt:
    """``PartialRun.round_done`` that raises KeyboardInterrupt once ``after`` rounds are recorded."""

    def __init__(self, monkeypatch, after):
        self.after, self.original = after, resume.PartialRun.round_done
        monkeypatch.setattr(resume.PartialRun, "round_done", self)

    def __get__(self, obj, kind=None):
        return lambda progress: self(obj, progress)

    def __call__(self, partial, progress):
        self.original(partial, progress)
        if progress.rounds_done == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method,rows,chunk", [
    ("auto", 50_500, 4096),  # above auto's 50,000 rows for diffusion: a vote is chosen
    ("llp", 3000, 256), ("knn", 3000, 256)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_outputs(tmp_path, monkeypatch, method, rows, chunk):
    folder = data(tmp_path, n=rows)
    flags = ["--method", method, "--chunk-rows", str(chunk)]
    propagate.main(argv(folder, tmp_path / "whole", *flags))
    with monkeypatch.context() as m:
        Interrupt(m, after=5)
        with pytest.raises(SystemExit) as stopped:
            propagate.main(argv(folder, tmp_path / "out", *flags))
    assert stopped.value.code == 130
    partial = tmp_path / "out" / resume.FOLDER
    assert json.loads((partial / resume.PROGRESS).read_text())["rounds_done"] == 5
    assert (partial / resume.FITTED).is_file()
    assert not any((tmp_path / "out" / name).exists() for name in ARRAYS)  # nothing half-written in OUT
    summary = propagate.main(argv(folder, tmp_path / "out", *flags))
    assert summary["timings_s"]["resumed_at_round"] == 5
    assert not partial.exists()
    assert_same_run(tmp_path / "out", tmp_path / "whole")
    assert summary["zero_norm_rows"] == 4
    if method == "auto":
        assert summary["auto"]["settings"]["method"] in ("llp", "knn")


def test_an_interruption_before_the_fit_was_saved_starts_again(tmp_path, monkeypatch):
    folder = data(tmp_path)
    propagate.main(argv(folder, tmp_path / "whole", "--method", "llp"))
    with monkeypatch.context() as m:
        m.setattr(resume.PartialRun, "save_fitted", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(SystemExit):
            propagate.main(argv(folder, tmp_path / "out", "--method", "llp"))
    assert (tmp_path / "out" / resume.FOLDER / resume.JOB).is_file()
    summary = propagate.main(argv(folder, tmp_path / "out", "--method", "llp"))
    assert "resumed_at_round" not in summary["timings_s"]
    assert_same_run(tmp_path / "out", tmp_path / "whole")


@pytest.mark.parametrize("change", ["flag", "file"])
def test_a_partial_run_of_another_job_is_discarded(tmp_path, monkeypatch, change):
    folder = data(tmp_path)
    flags = ["--method", "llp", "--chunk-rows", "256"]
    with monkeypatch.context() as m:
        Interrupt(m, after=3)
        with pytest.raises(SystemExit):
            propagate.main(argv(folder, tmp_path / "out", *flags))
    if change == "flag":
        flags[-1] = "300"
    else:  # the same bytes, written again: a new modification time
        x = np.load(folder / "x.npy")
        time.sleep(0.01)
        np.save(folder / "x.npy", x)
    summary = propagate.main(argv(folder, tmp_path / "out", *flags))
    assert "resumed_at_round" not in summary["timings_s"]
    propagate.main(argv(folder, tmp_path / "whole", *flags))
    assert_same_run(tmp_path / "out", tmp_path / "whole")


def test_flags_that_change_no_output_may_differ_on_resume(tmp_path, monkeypatch):
    folder = data(tmp_path)
    flags = ["--method", "llp", "--chunk-rows", "256"]
    with monkeypatch.context() as m:
        Interrupt(m, after=2)
        with pytest.raises(SystemExit):
            propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                            "--out", str(tmp_path / "out"), *flags])  # no --eval-labels, no --quiet
    summary = propagate.main(argv(folder, tmp_path / "out", *flags, "--plot"))
    assert summary["timings_s"]["resumed_at_round"] == 2
    assert (tmp_path / "out" / "confidence_accuracy.png").is_file()


def test_a_failed_run_removes_its_partial_run(tmp_path):
    folder = data(tmp_path)
    x = np.load(folder / "x.npy")
    x[2500, 3] = np.nan  # found by the density pass
    np.save(folder / "x.npy", x)
    with pytest.raises(SystemExit) as failed:
        propagate.main(argv(folder, tmp_path / "out", "--method", "llp"))
    assert failed.value.code == 2
    assert not (tmp_path / "out").exists()


def _rounds_done_when(child, out, target: int) -> int:
    """Watch ``out``'s progress record until ``target`` rounds are done (or the child ends,
    or 240 s pass); the rounds done then."""
    progress = out / resume.FOLDER / resume.PROGRESS
    done, deadline = 0, time.monotonic() + 240
    while child.poll() is None and time.monotonic() < deadline:
        try:
            done = json.loads(progress.read_text())["rounds_done"]
        except (OSError, ValueError):
            done = 0
        if done >= target:
            break
        time.sleep(0.002)
    assert child.poll() is None, "the run ended before it could be killed: give it more rounds"
    return done


def test_kill_9_at_a_random_round_then_the_same_command(tmp_path):
    """A real SIGKILL in the middle of the vote pass of a child process."""
    folder = data(tmp_path, n=60000)
    flags = ["--method", "llp", "--chunk-rows", "64"]  # 938 rounds, each recorded
    propagate.main(argv(folder, tmp_path / "whole", *flags))
    command = [sys.executable, "-m", "llp.propagate", *argv(folder, tmp_path / "out", *flags)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(command, env=env, cwd=tmp_path)
    done = _rounds_done_when(child, tmp_path / "out", np.random.default_rng().integers(20, 200))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert 0 < done < 938
    assert not any((tmp_path / "out" / name).exists() for name in ARRAYS)
    resumed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["timings_s"]["resumed_at_round"] >= done
    assert_same_run(tmp_path / "out", tmp_path / "whole")


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (Linux /proc): torchrun starts its workers in their
    own sessions, so killing its process group alone would leave them running."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _torchrun(folder, out, flags):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "llp.propagate", *argv(folder, out, *flags)]


def test_torchrun_killed_then_the_same_command(tmp_path):
    """Two processes under torchrun, torchrun and its workers killed with SIGKILL in the
    middle of the vote pass; the same torchrun command continues from rank 0's record
    and ends with the outputs of an uninterrupted torchrun run. A one-process run of the
    same job does not take the two-process partial run over (another number of processes)."""
    folder = data(tmp_path, n=30000)
    flags = ["--method", "knn", "--chunk-rows", "64"]  # 235 rounds of two chunks; the vote pass checks rows
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    whole = subprocess.run(_torchrun(folder, tmp_path / "whole", flags), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    child = subprocess.Popen(_torchrun(folder, tmp_path / "out", flags), env=env, cwd=tmp_path,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = _rounds_done_when(child, tmp_path / "out", 20)
    for pid in [child.pid, *_descendants(child.pid)]:  # the agent and its workers, at once
        os.kill(pid, signal.SIGKILL)
    child.wait()
    assert 0 < done < 235
    assert not any((tmp_path / "out" / name).exists() for name in ARRAYS)
    job = json.loads((tmp_path / "out" / resume.FOLDER / resume.JOB).read_text())
    assert job["processes"] == 2
    resumed = subprocess.run(_torchrun(folder, tmp_path / "out", flags), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["timings_s"]["resumed_at_round"] >= done and summary["processes"] == 2
    assert summary["zero_norm_rows"] == 4
    assert_same_run(tmp_path / "out", tmp_path / "whole")


def test_the_number_of_processes_is_part_of_the_job(tmp_path, monkeypatch):
    folder = data(tmp_path)
    args = propagate.parse(argv(folder, tmp_path / "out"))
    assert resume.job_of(args, 2) != resume.job_of(args, 1)
    (tmp_path / "out").mkdir()
    resume.PartialRun(tmp_path / "out", resume.job_of(args, 2), 3000)
    assert not resume.PartialRun(tmp_path / "out", resume.job_of(args, 1), 3000).resumed
    assert resume.PartialRun(tmp_path / "out", resume.job_of(args, 1), 3000).resumed

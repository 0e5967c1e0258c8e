"""The propagation tool at scale, end to end as a user runs it: one uninterrupted run,
then the same command killed with SIGKILL part way and started again; the time and
peak memory of each, and whether the resumed outputs equal the uninterrupted ones.

    python -m bench.propagate_resume --embeddings X.npy --labels Y.npy --work DIR \
        [--kill-after SECONDS] [--json OUT.json] [-- TOOL FLAGS...]

Each run is ``python -m llp.propagate --embeddings X --labels Y --out DIR/<run> --quiet``
plus the tool flags. Peak memory is sampled from ``/proc/PID/status`` every 0.1 s:
``RssAnon`` (the process's own memory: tensors, arrays, the interpreter) and ``VmHWM``
(the high-water mark of everything resident, which also counts the pages of the
memory-mapped input file: page cache, shared and reclaimable). Linux only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PARTIAL_PROGRESS = Path(".partial-run") / "progress.json"


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run(command, kill_after=None, progress_file=None) -> dict:
    """Run ``command``; with ``kill_after``, SIGKILL it after that many seconds."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    peak_anon = peak_hwm = 0
    killed = False
    while child.poll() is None:
        peak_anon = max(peak_anon, status_kib(child.pid, "RssAnon"))
        peak_hwm = max(peak_hwm, status_kib(child.pid, "VmHWM"))
        if kill_after is not None and time.perf_counter() - start >= kill_after:
            child.send_signal(signal.SIGKILL)
            killed = True
            child.wait()
            break
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    result = {"seconds": round(seconds, 2), "returncode": child.returncode,
              "peak_rss_anon_MiB": round(peak_anon / 1024, 1), "peak_vm_hwm_MiB": round(peak_hwm / 1024, 1)}
    if killed and progress_file is not None:
        try:
            result["rounds_done_at_kill"] = json.loads(progress_file.read_text())["rounds_done"]
        except (OSError, ValueError, KeyError):
            result["rounds_done_at_kill"] = 0
    return result


def same_outputs(a: Path, b: Path) -> dict:
    equal = {name: bool(np.array_equal(np.load(a / name), np.load(b / name)))
             for name in ("pseudo_labels.npy", "confidence.npy")}
    summaries = []
    for folder in (a, b):
        s = json.loads((folder / "summary.json").read_text())
        s.pop("timings_s", None)
        s["flags"].pop("out", None)
        summaries.append(s)
    equal["summary.json (but timings and --out)"] = summaries[0] == summaries[1]
    return equal


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.propagate_resume", description=__doc__.split("\n\n")[0])
    p.add_argument("--embeddings", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--work", required=True, help="folder for the runs' outputs")
    p.add_argument("--kill-after", type=float, help="seconds (default: 60%% of the uninterrupted run)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("tool_flags", nargs=argparse.REMAINDER, help="after --: more flags for the tool")
    args = p.parse_args(argv)
    extra = [f for f in args.tool_flags if f != "--"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def command(name):
        return [sys.executable, "-m", "llp.propagate", "--embeddings", args.embeddings, "--labels", args.labels,
                "--out", str(work / name), "--quiet", *extra]

    whole = run(command("whole"))
    summary = json.loads((work / "whole" / "summary.json").read_text())
    kill_after = args.kill_after if args.kill_after is not None else 0.6 * whole["seconds"]
    killed = run(command("resumed"), kill_after=kill_after, progress_file=work / "resumed" / PARTIAL_PROGRESS)
    half_written = [n for n in ("pseudo_labels.npy", "confidence.npy", "summary.json")
                    if (work / "resumed" / n).exists()]
    resumed = run(command("resumed"))
    resumed_summary = json.loads((work / "resumed" / "summary.json").read_text())
    result = {
        "command": " ".join(command("<run>")),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "cpu_model": _cpu_model()},
        "rows": summary.get("rows"), "method": summary.get("method"),
        "chosen": (summary.get("auto") or {}).get("settings", {}).get("method"),
        "uninterrupted": whole, "uninterrupted_phases_s": summary.get("timings_s"),
        "killed": {**killed, "kill_after_s": round(kill_after, 1), "outputs_in_out_after_kill": half_written},
        "resumed": {**resumed, "resumed_at_round": resumed_summary["timings_s"].get("resumed_at_round"),
                    "phases_s": resumed_summary.get("timings_s")},
        "outputs_equal": same_outputs(work / "whole", work / "resumed"),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

"""``python -m bench.default_run [--repeats 3] [--busy] [--json OUT]``: the wall time of
the default run (``python -m llp.train`` with no flags, in a fresh process, to a
temporary run directory), idle and, with ``--busy``, beside a competing 2-thread torch
matmul process; prints the machine it ran on. README's and ``--help``'s times come from here."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .competitor import Competitor


def machine() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available()}


def one_run() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "llp.train", "--run-dir", tmp, "--quiet"],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"error: the default run failed:\n{result.stderr[-2000:]}")
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.default_run", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="also beside a competing 2-thread matmul process")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)
    result = {"machine": machine(), "idle_seconds": [one_run() for _ in range(args.repeats)]}
    if args.busy:
        with Competitor():
            result["busy_seconds"] = [one_run() for _ in range(args.repeats)]
    for key in ("idle_seconds", "busy_seconds"):
        if key in result:
            print(f"{key.split('_')[0]}: median {statistics.median(result[key]):.1f} s of {result[key]}")
    if "busy_seconds" in result:
        ratio = statistics.median(result["busy_seconds"]) / statistics.median(result["idle_seconds"])
        print(f"busy / idle: {ratio:.2f}x")
    print(f"machine: {result['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()

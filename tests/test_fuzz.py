"""Every public op driven with random valid inputs (checked against the reference) and
random malformed ones (each must be a TypeError/ValueError naming the argument), on every
backend that runs here; and the commands and the estimator driven the same way (exit 0
with the right output, or exit 2 with one line). The fuzzers run in a subprocess, so a
crash or a hang fails the test instead of taking pytest down."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import backend_cases

FUZZER = Path(__file__).with_name("fuzz_ops.py")
RUNNABLE = [p.values[0] for p in backend_cases("topk_similarity") if not p.marks]


@pytest.mark.parametrize("backends,cases,seconds", [
    (["reference", "cpu"], 1000, 300),
    (["triton"], 16, 600),  # the interpreter is slow: a few small cases
])
def test_fuzz_public_ops(backends, cases, seconds):
    backends = [b for b in backends if b == "reference" or b in RUNNABLE]
    if not backends:
        pytest.skip("no backend of this group runs here")
    root = str(FUZZER.parent.parent)  # importable without an installed package, as in pytest
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1"), "PYTHONPATH": path}
    result = subprocess.run([sys.executable, str(FUZZER), "0", str(cases), *backends], env=env,
                            capture_output=True, text=True, timeout=seconds)
    assert result.returncode == 0, f"fuzzer failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    print(result.stdout.strip())


COMMANDS_FUZZER = Path(__file__).with_name("fuzz_cli.py")


def test_fuzz_commands_and_estimator():
    """1,720 seeded cases of python -m llp.propagate, LocalLabelPropagation and python -m
    llp.train (--resume included), about 45 s on 2 CPU cores; see tests/fuzz_cli.py."""
    root = str(FUZZER.parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = path
    result = subprocess.run([sys.executable, str(COMMANDS_FUZZER), "0", "1200", "400", "120"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"fuzzer failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
    print(result.stdout.strip())

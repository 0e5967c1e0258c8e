"""A competing load for measuring on a busy machine: another process multiplying
1024x1024 fp32 matrices with 2 torch threads, without pause, until stopped.

    with Competitor():   # in a test session: pytest bench/ --benchmark-only --llp-busy
        ...              # everything here shares the cores with that process
"""
from __future__ import annotations

import subprocess
import sys
import time

LOOP = ("import torch; torch.set_num_threads(2); a = torch.randn(1024, 1024)\n"
        "while True: a = torch.tanh(a @ a)")


class Competitor:
    def __init__(self, threads: int = 2):
        self.code = LOOP.replace("set_num_threads(2)", f"set_num_threads({threads})")
        self.process = None

    def __enter__(self) -> "Competitor":
        self.process = subprocess.Popen([sys.executable, "-c", self.code], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        time.sleep(2.0)  # let it start multiplying
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

"""How ``python -m llp.propagate`` shows its progress: a bar with rows/s and the time
left on a terminal (tqdm, on stderr), one plain line per chunk otherwise (on stdout,
beside the report, so that a log file gets them and stderr keeps only errors)."""
from __future__ import annotations

import sys
import time

from ..method.propagation import no_progress


def meters(quiet: bool, terminal: bool):
    """A ``progress(desc, total, unit)`` factory (see ``llp.method.propagation.no_progress``)."""
    if quiet:
        return no_progress
    if terminal:
        from tqdm import tqdm
        return lambda desc, total, unit="row", done=0: tqdm(total=total, initial=done, desc=desc, unit=unit,
                                                            unit_scale=True, leave=False, file=sys.stderr)
    return LogLines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LogLines:
    """``desc: done/total rows (pct%), rate rows/s, elapsed m:ss, left m:ss``, one line per update."""

    def __init__(self, desc: str, total: int, unit: str = "row", done: int = 0):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = self.before = done  # rows done before this run started are not timed
        self.start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        elapsed = time.perf_counter() - self.start
        timed = self.done - self.before
        rate = timed / elapsed if elapsed > 0 and timed else 0.0
        left = (self.total - self.done) / rate if rate else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s ({pct:.1f}%), {rate:,.0f} {self.unit}s/s, "
              f"elapsed {_duration(elapsed)}, left {_duration(left) if left == left else '?'}", flush=True)

    def close(self) -> None:
        pass

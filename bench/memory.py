"""Peak memory of a block of code: CUDA's allocator counter on GPU, and on CPU the peak
resident set size above the level at entry, sampled from /proc by a background thread
(every 0.5 ms; torch's large CPU buffers are mmap-backed, so they show up and go away in
RSS as they are allocated and freed)."""
from __future__ import annotations

import threading
import time

import torch


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak_bytes`` (extra over entry)."""

    def __init__(self, device="cpu", interval_s: float = 5e-4):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.peak_bytes = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = current_rss_bytes()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, current_rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._peak = max(self._peak, current_rss_bytes())
            self._stop.set()
            self._thread.join()
            self.peak_bytes = self._peak - self._base
        return False

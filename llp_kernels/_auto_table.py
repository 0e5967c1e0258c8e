"""The measured table behind ``backend="auto"`` on GPUs.

``auto_table.json`` (next to this file) lists, per GPU model, which backend was fastest
for each op when benchmarked there, with the date and the results file it came from:

    {"entries": [{"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-..", "source": "bench/results/..json",
                  "fastest": {"aggregation_lse": "cuda", "topk_similarity": "triton", ...}}]}

``python -m bench.auto_table RESULTS.json`` writes an entry from a benchmark run. A GPU
with no entry (or an op without one) falls back to the backends' ``auto_priority`` order (``registry``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional

TABLE_PATH = Path(__file__).with_name("auto_table.json")


@lru_cache(maxsize=None)
def _entries() -> tuple:
    try:
        data = json.loads(TABLE_PATH.read_text())
    except (OSError, ValueError):
        return ()
    return tuple(e for e in data.get("entries", []) if isinstance(e, dict) and "gpu" in e)


def measured_choice(op: str, gpu_name: str) -> Optional[str]:
    """The backend measured fastest for ``op`` on a GPU called ``gpu_name``, if any."""
    for entry in _entries():
        if entry["gpu"] == gpu_name:
            return entry.get("fastest", {}).get(op)
    return None


@lru_cache(maxsize=None)
def gpu_name(index: int) -> str:
    import torch
    return torch.cuda.get_device_name(index)


"""``python -m bench.auto_table RESULTS.json [--table PATH]``: record, for the GPU a
benchmark run was made on, which of ``triton`` and ``cuda`` was faster per op, into the
table ``backend="auto"`` reads (``llp_kernels/auto_table.json``).

Per op the two backends are compared on the sizes both ran: the one with the smaller
geometric-mean time ratio wins (ties keep triton). Ops: aggregation_lse (forward
benchmarks), aggregation_grad (backward), topk_similarity (top-k, density and
propagation benchmarks), update_memory_bank_.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from llp_kernels._auto_table import TABLE_PATH

BENCH_TO_OP = {"aggregation forward": "aggregation_lse", "aggregation backward": "aggregation_grad",
               "topk_similarity": "topk_similarity", "local_density": "topk_similarity",
               "propagate_labels": "topk_similarity", "update_memory_bank_": "update_memory_bank_"}
CONTENDERS = ("triton", "cuda")


def fastest(benchmarks) -> dict:
    times = defaultdict(dict)  # (op, bench op, size, dtype) -> impl -> median
    for b in benchmarks:
        e = b["extra_info"]
        op = BENCH_TO_OP.get(e.get("op"))
        if op and e.get("impl") in CONTENDERS:
            times[(op, e["op"], e["size"], e["dtype"])][e["impl"]] = b["stats"]["median"]
    log_ratio = defaultdict(list)
    for (op, *_), by_impl in times.items():
        if len(by_impl) == 2:
            log_ratio[op].append(math.log(by_impl["cuda"] / by_impl["triton"]))
    return {op: ("cuda" if sum(r) / len(r) < 0 else "triton") for op, r in sorted(log_ratio.items())}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.auto_table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="pytest-benchmark JSON from a GPU run")
    parser.add_argument("--table", default=str(TABLE_PATH), help="the table to update")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.results).read_text())
    peaks = next((b["extra_info"].get("device_peaks") for b in data.get("benchmarks", [])
                  if b["extra_info"].get("device_peaks")), None) or {}
    gpu = peaks.get("name", "")
    if not gpu or gpu.startswith("CPU"):
        parser.error(f"{args.results} was not measured on a GPU (device: {gpu or 'unknown'})")
    choice = fastest(data["benchmarks"])
    if not choice:
        parser.error(f"{args.results} has no op timed on both triton and cuda")
    table_path = Path(args.table)
    table = json.loads(table_path.read_text()) if table_path.is_file() else {"entries": []}
    entry = {"gpu": gpu, "date": data.get("datetime", "")[:10], "source": str(args.results), "fastest": choice}
    table["entries"] = [e for e in table.get("entries", []) if e.get("gpu") != gpu] + [entry]
    table_path.write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps(entry, indent=2))
    return entry


if __name__ == "__main__":
    main()

"""``python -m bench.report RESULTS.json [--out REPORT.md]``: pytest-benchmark JSON ->
one Markdown table per op.

Columns: implementation (a backend, or a peer library), size, bank dtype, median time,
speed-up over ``reference`` on the same size and dtype, peak extra memory, achieved
GFLOP/s and GB/s, and the fraction of the device's roofline: ``max(flops / peak
flops for the dtype, bytes / peak bandwidth) / time`` with the peaks each benchmark
recorded (a GPU table, or measured on a CPU). The training-step table gives LLP's
extra cost over the supervised step.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _mib(nbytes) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def roofline_text(frac) -> str:
    """A fraction of the roofline as text; above 1 the peak was under-measured (a CPU's
    clock boosting past the measured matmul, say), which is said rather than printed as
    more than 100%."""
    if frac is None:
        return "—"
    return f"{100 * frac:.1f}%" if frac <= 1.0 else "at peak (peak under-measured)"


def roofline_fraction(extra: Dict, seconds: float):
    """``compute_dtype`` (when a benchmark gives it) is the precision of the products,
    which decides the peak: a 16-bit file whose rows are widened to fp32 is fp32 work."""
    peaks = extra.get("device_peaks") or {}
    flops_peak = peaks.get(f"flops_{extra.get('compute_dtype', extra.get('dtype', 'float32'))}")
    bandwidth = peaks.get("bytes_per_s")
    if not flops_peak or not bandwidth or not extra.get("flops"):
        return None
    return max(extra["flops"] / flops_peak, extra["bytes"] / bandwidth) / seconds


def op_tables(benchmarks: List[Dict]) -> str:
    by_op = defaultdict(list)
    for b in benchmarks:
        if b["extra_info"].get("op") and b["extra_info"]["op"] != "train step":
            by_op[b["extra_info"]["op"]].append(b)
    out = []
    for op in sorted(by_op):
        rows = by_op[op]
        ref = {(b["extra_info"]["size"], b["extra_info"]["dtype"]): b["stats"]["median"]
               for b in rows if b["extra_info"]["impl"] == "reference"}
        out += [f"### {op}", "",
                "| impl | size | dtype | median | vs reference | peak extra memory | GFLOP/s | GB/s | roofline | max abs err |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        rows.sort(key=lambda b: (b["extra_info"]["size"], b["extra_info"]["dtype"], b["stats"]["median"]))
        for b in rows:
            e, t = b["extra_info"], b["stats"]["median"]
            base = ref.get((e["size"], e["dtype"]))
            speedup = f"{base / t:.2f}x" if base else "—"
            frac = roofline_fraction(e, t)
            impl = e["impl"].replace("peer:", "") + (" (peer)" if e.get("peer") else "")
            out.append(f"| {impl} | {e['size']} | {e['dtype']} | {_time(t)} | {speedup} | "
                       f"{_mib(e.get('peak_memory_bytes'))} | {e['flops'] / t / 1e9:.1f} | "
                       f"{e['bytes'] / t / 1e9:.1f} | {roofline_text(frac)} | "
                       f"{e.get('max_abs_err', float('nan')):.2g} |")
        out.append("")
    return "\n".join(out)


def train_step_table(benchmarks: List[Dict]) -> str:
    steps = {b["extra_info"]["impl"]: b for b in benchmarks if b["extra_info"].get("op") == "train step"}
    if not steps:
        return ""
    sup = steps.get("supervised")
    out = ["### one training step: LLP vs supervised", "",
           "| method | setting | median | extra cost over supervised | peak extra memory |",
           "|---|---|---|---|---|"]
    for method in ("supervised", "llp"):
        if method in steps:
            e, t = steps[method]["extra_info"], steps[method]["stats"]["median"]
            extra = f"{100 * (t / sup['stats']['median'] - 1):+.1f}%" if sup and method != "supervised" else "—"
            out.append(f"| {method} | {e['size']} | {_time(t)} | {extra} | {_mib(e.get('peak_memory_bytes'))} |")
    return "\n".join(out) + "\n"


def render(data: Dict) -> str:
    benchmarks = data.get("benchmarks", [])
    if not benchmarks:
        raise SystemExit("error: no benchmarks in this file (was it written by --benchmark-json?)")
    peaks = next((b["extra_info"].get("device_peaks") for b in benchmarks
                  if b["extra_info"].get("device_peaks")), {}) or {}
    machine = data.get("machine_info", {})
    head = [f"# llp_kernels benchmarks: {peaks.get('name', 'unknown device')}", "",
            f"- date: {data.get('datetime', '?')}",
            f"- CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, python {machine.get('python_version', '?')}",
            "- roofline peaks ({}): {:.3g} GB/s, fp32 {:.3g} GFLOP/s, bf16 {:.3g} GFLOP/s".format(
                peaks.get("source", "?"), (peaks.get("bytes_per_s") or 0) / 1e9,
                (peaks.get("flops_float32") or 0) / 1e9, (peaks.get("flops_bfloat16") or 0) / 1e9),
            "- times are medians of the timed rounds after warm-up; every result was first "
            "checked against `llp_kernels.reference` (max abs err column)",
            "- peak extra memory: CUDA's allocator peak on GPU; on CPU the peak resident set "
            "above entry, sampled every 0.5 ms, so memory the process reuses from its own free "
            "lists shows as 0"]
    if any(b["extra_info"].get("busy") for b in benchmarks):
        head.append("- **busy machine**: every case ran beside a competing process (a 2-thread torch "
                    "matmul loop, `--llp-busy`); the peaks were measured beside it too")
    head.append("")
    return "\n".join(head) + op_tables(benchmarks) + "\n" + train_step_table(benchmarks)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="JSON written by pytest --benchmark-json")
    parser.add_argument("--out", default=None, help="write the Markdown here too")
    args = parser.parse_args(argv)
    path = Path(args.results)
    if not path.is_file():
        parser.error(f"{path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        parser.error(f"{path} is not JSON ({exc})")
    text = render(data)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()

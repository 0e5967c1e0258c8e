"""``python -m bench.compare_runs --before A1.json A2.json --after B1.json B2.json [--out F.md]``:
two versions of the code compared over pytest-benchmark JSON files, several runs each.

On a shared or throttling machine the speed drifts between runs by as much as a small
change would move it, so the runs should alternate (before, after, after, before, ...).
Per case the table gives the mean over runs of each run's median time, the ratio
after / before, and each side's spread (slowest / fastest run median: the noise of
unchanged code). Cases whose implementation did not change between the versions (the
plain-PyTorch ``reference``, the peers) show how far the machine alone moved. Last, each
``cpu`` case's time relative to the ``reference`` case of the same shape in the same run,
after / before: the machine's drift cancels in that ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

Runs = Dict[str, Dict[Tuple[str, int], float]]  # case -> {(side, run): median seconds}


def load(before: Sequence[str], after: Sequence[str]) -> Runs:
    runs: Runs = defaultdict(dict)
    for side, files in (("before", before), ("after", after)):
        for i, path in enumerate(files):
            for bench in json.loads(Path(path).read_text())["benchmarks"]:
                runs[bench["fullname"].split("::")[-1]][(side, i)] = bench["stats"]["median"]
    return runs


def _side(times: Dict[Tuple[str, int], float], side: str) -> List[float]:
    return [t for (s, _), t in sorted(times.items()) if s == side]


def _implementation(case: str) -> str:
    """``test_forward[B256-N16k-float32-cpu]`` -> ``cpu``; a case without one in its
    parameters (``test_propagate_tool_llp[N20000]``) -> its test's name."""
    name, _, params = case.partition("[")
    params = params.rstrip("]")
    return params.rsplit("-", 1)[-1] if "-" in params else name.removeprefix("test_")


def table(runs: Runs) -> str:
    lines = ["| case | before | after | after / before | spread before | spread after |",
             "|---|---|---|---|---|---|"]
    ratios: Dict[str, List[float]] = defaultdict(list)
    spreads: List[float] = []
    for case, times in sorted(runs.items()):
        b, a = _side(times, "before"), _side(times, "after")
        if not b or not a:
            continue
        ratio = statistics.mean(a) / statistics.mean(b)
        ratios[_implementation(case)].append(ratio)
        spreads += [max(b) / min(b), max(a) / min(a)]
        lines.append(f"| {case} | {statistics.mean(b) * 1e3:.2f} ms | {statistics.mean(a) * 1e3:.2f} ms | "
                     f"{ratio:.3f} | {max(b) / min(b):.3f} | {max(a) / min(a):.3f} |")
    every = [r for group in ratios.values() for r in group]
    if not every:
        return "no case ran on both sides\n"
    lines += ["", f"{len(every)} cases: after / before median {statistics.median(every):.3f} "
              f"({min(every):.3f} - {max(every):.3f}); spread of one version's runs: median "
              f"{statistics.median(spreads):.3f}, largest {max(spreads):.3f}", ""]
    for name, group in sorted(ratios.items()):
        lines.append(f"- {name}: {len(group)} cases, median {statistics.median(group):.3f} "
                     f"({min(group):.3f} - {max(group):.3f})")
    lines += ["", "`cpu` relative to `reference` of the same shape in the same run (drift cancels):", "",
              "| case | before | after | after / before |", "|---|---|---|---|"]
    relative = []
    for case, times in sorted(runs.items()):
        reference = runs.get(case[:-len("-cpu]")] + "-reference]") if case.endswith("-cpu]") else None
        if not reference:
            continue
        side = {s: [t / reference[key] for key, t in times.items() if key[0] == s and key in reference]
                for s in ("before", "after")}
        if not side["before"] or not side["after"]:
            continue
        b, a = statistics.mean(side["before"]), statistics.mean(side["after"])
        relative.append(a / b)
        lines.append(f"| {case} | {b:.3f} | {a:.3f} | {a / b:.3f} |")
    if relative:
        lines += ["", f"{len(relative)} cases: median {statistics.median(relative):.3f} "
                  f"({min(relative):.3f} - {max(relative):.3f})"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.compare_runs", description=__doc__.split("\n\n")[1])
    p.add_argument("--before", nargs="+", required=True, metavar="JSON", help="pytest-benchmark files of the old code")
    p.add_argument("--after", nargs="+", required=True, metavar="JSON", help="pytest-benchmark files of the new code")
    p.add_argument("--out", metavar="F.md", help="write the table here too")
    args = p.parse_args(argv)
    text = table(load(args.before, args.after))
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

"""Time and peak extra memory of aggregation_loss forward + backward on CPU, the `cpu`
backend against `reference`, each in a fresh process (so neither sees the other's
freed memory), after one unmeasured warm-up call.

    python -m bench.aggregation_cpu_memory [--B 256] [--N 1000000] [--D 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one_case(backend: str, B: int, N: int, D: int, repeats: int) -> dict:
    import torch

    import llp_kernels as lk
    from bench.memory import PeakMemory

    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=1)
    bank_labels = torch.randint(-1, 1000, (N,), generator=g)
    queries = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=1)
    query_labels = torch.randint(0, 1000, (B,), generator=g)
    grad = torch.rand(B, generator=g)
    # One unmeasured call first: it maps library code pages and BLAS/OpenMP scratch,
    # which RSS would otherwise charge to the op.
    warm = queries.clone().requires_grad_()
    lk.aggregation_loss(warm, bank, bank_labels, query_labels, backend=backend).backward(grad)
    del warm
    times, peak = [], 0
    for _ in range(repeats):
        leaf = queries.clone().requires_grad_()
        with PeakMemory("cpu") as mem:
            start = time.perf_counter()
            loss = lk.aggregation_loss(leaf, bank, bank_labels, query_labels, backend=backend)
            loss.backward(grad)
            times.append(time.perf_counter() - start)
        peak = max(peak, mem.peak_bytes)
        result = (loss.detach().clone(), leaf.grad.clone())
        del loss, leaf
    torch.save(result, f"/tmp/llp-agg-{backend}.pt")
    return {"backend": backend, "B": B, "N": N, "D": D, "threads": torch.get_num_threads(),
            "median_s": sorted(times)[len(times) // 2], "times_s": times,
            "peak_extra_MiB": peak / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=256)
    p.add_argument("--N", type=int, default=1_000_000)
    p.add_argument("--D", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.B, args.N, args.D, args.repeats)))
        return
    rows = []
    for backend in ("reference", "cpu"):
        out = subprocess.run([sys.executable, "-m", "bench.aggregation_cpu_memory", "--case", backend,
                              "--B", str(args.B), "--N", str(args.N), "--D", str(args.D),
                              "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch
    (l_ref, g_ref), (l_cpu, g_cpu) = (torch.load(f"/tmp/llp-agg-{b}.pt") for b in ("reference", "cpu"))
    print(f"aggregation_loss fwd+bwd, B={args.B} N={args.N} D={args.D}, fp32 bank, "
          f"{rows[0]['threads']} threads, median of {args.repeats}")
    print("| backend | median time (s) | peak extra memory (MiB) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['median_s']:.2f} | {r['peak_extra_MiB']:.1f} |")
    speedup = rows[0]["median_s"] / rows[1]["median_s"]
    ratio = rows[0]["peak_extra_MiB"] / max(rows[1]["peak_extra_MiB"], 1e-9)
    print(f"cpu vs reference: {speedup:.2f}x faster, {ratio:.0f}x less extra memory; "
          f"max |loss diff| {(l_ref - l_cpu).abs().max():.2e}, max |grad diff| {(g_ref - g_cpu).abs().max():.2e}")


if __name__ == "__main__":
    main()

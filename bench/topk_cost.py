"""``python -m bench.topk_cost``: a static cost estimate of the Triton top-k kernel on a
GPU that is not here, from its compiled code.

The kernel is compiled ahead of time (sm_90 by default) with the configuration its own
``plan`` picks for the case. From the basic blocks of the cubin's SASS (``nvdisasm
-c``) the main loop is the first natural loop that holds tensor-core instructions (the
kernel streams whole tiles there; a second loop takes the slice's partial tile and the
final merge pass, at most twice per program); the cheapest path once around it
(instructions summed over basic blocks) is a tile that only filters, and the whole loop
body bounds a tile that also merges. The estimate is the
instruction-issue time of the filter path for every (query block, key tile) pair:

    time = ceil(M / BLOCK_Q) * ceil(N / BLOCK_N) * warps * instructions_per_tile
           / (SMs * 4 schedulers * clock)

which assumes perfect latency hiding (so it is a lower bound on the kernel's time when
issue-bound) and ignores the merges (rare once the floors have risen: about
``KP ln(N / KP)`` candidates per row in all). It is compared with the time of the dense
product alone, ``2 M N D / peak``. Occupancy comes from the registers (``ptxas -v``), the
block's shared memory and its warps. Device numbers are parameters (defaults: H200 SXM,
132 SMs, 1.98 GHz, 790 TFLOP/s bf16 dense as a reachable GEMM rate).

    python -m bench.topk_cost --m 131072 --n 1150000 --d 128 --k 25 --dtype bf16 [--arch 90] [--json OUT]
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Set, Tuple

from bench.gpu_compile import DTYPES, Config, _tool, kernel_and_signature, launch_attrs, read_compiled

REGISTERS_PER_SM = 65536
SHARED_PER_SM = {90: 233472, 80: 167936}
MAX_WARPS_PER_SM = {90: 64, 80: 64}


def parse_sass(sass: str) -> Tuple[Dict[str, List[str]], Dict[str, List[str]], str]:
    """Basic blocks of ``nvdisasm -c`` output: (instructions of each block, successors of
    each block, the entry block). A block ends at a label or after a branch or exit; a
    predicated branch or exit also falls through."""
    blocks: Dict[str, List[str]] = {}
    edges: Dict[str, List[str]] = {}
    order: List[str] = []
    current, ended = None, False

    def open_block(name: str) -> None:
        nonlocal current, ended
        if current is not None and not ended:
            edges[current].append(name)
        current, ended = name, False
        blocks[name], edges[name] = [], []
        order.append(name)

    for line in sass.splitlines():
        label = re.match(r"^(\.L_x_\d+):", line)
        if label:
            open_block(label.group(1))
            continue
        m = re.match(r"^\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if not m:
            continue
        if current is None or ended:
            open_block(f"after_{len(order)}")
        text = m.group(1).strip()
        blocks[current].append(text)
        predicated = text.startswith("@")
        opcode = text.split()[1 if predicated else 0]
        if opcode.startswith("BRA"):
            target = re.search(r"`\((\.L_x_\d+)\)", text)
            if target:
                edges[current].append(target.group(1))
            ended = True
            if predicated:
                open_block(f"after_{len(order)}")
                edges[order[-2]].append(current)
        elif opcode.startswith("EXIT"):
            ended = True
            if predicated:
                open_block(f"after_{len(order)}")
                edges[order[-2]].append(current)
    return blocks, edges, order[0]


def natural_loops(entry: str, edges: Dict[str, List[str]]) -> List[Tuple[str, Set[str]]]:
    """(header, body) of every back edge found by a depth-first walk from ``entry``."""
    order, on_stack, back = {}, set(), []
    stack = [(entry, iter(edges.get(entry, [])))]
    order[entry] = 0
    on_stack.add(entry)
    while stack:
        node, succ = stack[-1]
        nxt = next(succ, None)
        if nxt is None:
            on_stack.discard(node)
            stack.pop()
        elif nxt in on_stack:
            back.append((node, nxt))
        elif nxt not in order:
            order[nxt] = len(order)
            on_stack.add(nxt)
            stack.append((nxt, iter(edges.get(nxt, []))))
    preds: Dict[str, List[str]] = {}
    for src, dsts in edges.items():
        for dst in dsts:
            preds.setdefault(dst, []).append(src)
    loops = []
    for tail, header in back:
        body, work = {header, tail}, [tail]
        while work:
            for p in preds.get(work.pop(), []):
                if p not in body:
                    body.add(p)
                    work.append(p)
        loops.append((header, body))
    return loops


def cheapest_cycle(header: str, body: Set[str], blocks, edges) -> int:
    """Fewest instructions on a path header -> ... -> header inside the loop body."""
    cost = {header: len(blocks[header])}
    heap = [(cost[header], header)]
    best = math.inf
    while heap:
        c, node = heapq.heappop(heap)
        if c > cost.get(node, math.inf):
            continue
        for nxt in edges.get(node, []):
            if nxt not in body:
                continue
            if nxt == header:
                best = min(best, c)
                continue
            nc = c + len(blocks[nxt])
            if nc < cost.get(nxt, math.inf):
                cost[nxt] = nc
                heapq.heappush(heap, (nc, nxt))
    return int(best)


def tensor_ops(lines: List[str]) -> int:
    return sum(1 for l in lines if re.search(r"\b(HMMA|HGMMA)\b", l))


def estimate(args) -> Dict:
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from llp_kernels.ops.topk import kept_size

    torch_dtype = getattr(torch, DTYPES[args.dtype][0])
    kp = kept_size(args.k, args.n, torch_dtype)
    config = Config("topk", args.arch, args.dtype, args.d, 64, kp)
    fn, sig, launch = kernel_and_signature(config)
    constants, warps, stages = launch.constants, launch.warps, launch.stages
    kernel = triton.compile(ASTSource(fn, sig, constants, launch_attrs(fn, sig, config)),
                            target=GPUTarget("cuda", args.arch, 32), options=launch.options(on_gpu=True))
    usage = read_compiled(kernel.asm["ptx"], kernel.asm["cubin"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True).stdout
    blocks, edges, entry = parse_sass(sass)
    loops = natural_loops(entry, edges)
    # The key loops are the natural loops with tensor-core instructions, in program order:
    # the kernel streams whole tiles in the first and the slice's partial tile (plus the
    # final merge pass, at most two iterations per program) in the second.
    position = {name: i for i, name in enumerate(blocks)}
    key_loops = sorted((hb for hb in loops if any(tensor_ops(blocks[b]) for b in hb[1])),
                       key=lambda hb: position[hb[0]])
    header, body = key_loops[0]
    filter_path = cheapest_cycle(header, body, blocks, edges)
    tail_path = cheapest_cycle(key_loops[-1][0], key_loops[-1][1], blocks, edges)
    whole_body = sum(len(blocks[b]) for b in body)
    mma_per_tile = sum(tensor_ops(blocks[b]) for b in body)

    threads = warps * 32
    shared = int(kernel.metadata.shared)
    regs = max(usage["registers"], 1)
    per_sm = min(REGISTERS_PER_SM // (regs * threads), SHARED_PER_SM[args.arch] // max(shared + 1024, 1),
                 MAX_WARPS_PER_SM[args.arch] // warps)
    tiles = math.ceil(args.m / constants["BLOCK_Q"]) * math.ceil(args.n / constants["BLOCK_N"])
    issue_rate = args.sms * 4 * args.clock_ghz * 1e9
    filter_s = tiles * warps * filter_path / issue_rate
    gemm_s = 2.0 * args.m * args.n * args.d / (args.tflops * 1e12)
    return {"case": vars(args), "constants": constants, "warps": warps, "stages": stages,
            "registers": usage["registers"], "spill_bytes": usage["spill_bytes"], "shared": shared,
            "blocks_per_sm": per_sm, "warps_per_sm": per_sm * warps,
            "loop_blocks": len(body), "instructions_filter_tile": filter_path,
            "instructions_filter_partial_tile": tail_path,
            "instructions_loop_body": whole_body, "tensor_instructions_per_tile": mma_per_tile,
            "tiles": tiles, "estimate_ms": round(filter_s * 1e3, 1), "gemm_ms": round(gemm_s * 1e3, 1),
            "ratio_to_gemm": round(filter_s / gemm_s, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.topk_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, default=131072, help="queries")
    parser.add_argument("--n", type=int, default=1150000, help="keys")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=25)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--arch", type=int, choices=(80, 90), default=90)
    parser.add_argument("--sms", type=int, default=132)
    parser.add_argument("--clock-ghz", type=float, default=1.98)
    parser.add_argument("--tflops", type=float, default=790.0, help="reachable dense GEMM rate")
    parser.add_argument("--json", help="write the estimate here")
    args = parser.parse_args(argv)
    out = estimate(args)
    c = out["constants"]
    print(f"top-k {args.dtype} sm_{args.arch}: M={args.m} N={args.n} D={args.d} k={args.k} -> KP={c['KP']} "
          f"BLOCK_Q={c['BLOCK_Q']} BLOCK_N={c['BLOCK_N']} CAP={c['CAP']}, {out['warps']} warps, {out['stages']} stages")
    print(f"  registers {out['registers']}, spills {out['spill_bytes']} B, shared {out['shared']} B, "
          f"{out['blocks_per_sm']} blocks ({out['warps_per_sm']} warps) per SM")
    print(f"  main loop: {out['loop_blocks']} basic blocks, {out['instructions_loop_body']} instructions in all, "
          f"{out['instructions_filter_tile']} on a filter-only tile, {out['tensor_instructions_per_tile']} tensor-core "
          f"(the partial-tile loop: {out['instructions_filter_partial_tile']})")
    print(f"  {out['tiles']:,} tiles x {out['warps']} warps x {out['instructions_filter_tile']} instructions at "
          f"{args.sms} SMs x 4 x {args.clock_ghz} GHz: {out['estimate_ms']} ms issue time; "
          f"the product alone at {args.tflops:g} TFLOP/s: {out['gemm_ms']} ms ({out['ratio_to_gemm']}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

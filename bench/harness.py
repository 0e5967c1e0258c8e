"""What every benchmark does: build inputs, check the result, measure peak memory, time.

``measure(benchmark, fn, ...)`` runs ``fn`` once more than pytest-benchmark's warm-up
to record peak memory (``bench.memory.PeakMemory``: CUDA's allocator peak, or the
peak RSS above entry on CPU), then times it with ``benchmark.pedantic``: warm-up
rounds first (JIT compilation, autotuning and library page faults happen there and
are excluded from the statistics) and, on CUDA, ``torch.cuda.synchronize()`` before
and after each timed call so a round measures the work, not the launch.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict

import torch

from .memory import PeakMemory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unit_rows(n: int, d: int, dtype: str, device, seed: int) -> torch.Tensor:
    """``n`` random unit-norm rows [n, d], generated in chunks so huge banks fit."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.empty(n, d, dtype=DTYPES[dtype], device=device)
    for start in range(0, n, 1 << 20):
        rows = torch.randn(min(1 << 20, n - start), d, generator=g)
        out[start:start + rows.shape[0]] = torch.nn.functional.normalize(rows, dim=1).to(out)
    return out


def clustered_rows(n: int, d: int, dtype: str, device, seed: int, centers: torch.Tensor) -> torch.Tensor:
    """Unit rows near random ``centers`` (so neighbours are meaningful, as in a trained bank)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = torch.empty(n, d, dtype=DTYPES[dtype], device=device)
    for start in range(0, n, 1 << 20):
        m = min(1 << 20, n - start)
        pick = torch.randint(0, centers.shape[0], (m,), generator=g)
        rows = centers.cpu().float()[pick] + 0.5 * torch.randn(m, d, generator=g) / d ** 0.5
        out[start:start + m] = torch.nn.functional.normalize(rows, dim=1).to(out)
    return out


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure(benchmark, fn: Callable[[], object], device, extra: Dict, rounds: int = 3,
            warmup_rounds: int = 1) -> None:
    """Peak memory of one call into ``extra``, then ``rounds`` timed calls (at least 5
    when a call takes under 0.5 s, 20 under 50 ms) after ``warmup_rounds`` untimed ones."""
    device = torch.device(device)
    fn()  # first call: compile / fault in, outside the memory measurement
    synchronize(device)
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        fn()
    once = time.perf_counter() - start
    extra["peak_memory_bytes"] = mem.peak_bytes
    if once < 0.05:  # cheap calls: more rounds for a stable median at no real cost
        rounds = max(rounds, 20)
    elif once < 0.5:
        rounds = max(rounds, 5)

    def timed():
        synchronize(device)
        fn()
        synchronize(device)

    benchmark.extra_info.update(extra)
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)


def gemm_cost(rows: int, cols: int, d: int) -> int:
    return 2 * rows * cols * d


BUSY = {"on": False}  # set by the busy_machine fixture (--llp-busy)


def info(op: str, size, impl: str, peaks: Dict, flops: float, bytes_moved: float, **more) -> Dict:
    """The ``extra_info`` every benchmark carries (the report reads these keys)."""
    return {"op": op, "size": size.name, "dtype": size.dtype, **size.dims, "impl": impl,
            "peer": impl.startswith("peer:"), "flops": flops, "bytes": bytes_moved,
            "device_peaks": peaks, "busy": BUSY["on"], **more}


_PEAKS: Dict[str, Dict] = {}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def device_peaks(device) -> Dict:
    """Roofline peaks: a table keyed by GPU name (dense tensor-core numbers: HBM
    bandwidth, TF32 and bf16 peaks), or on a CPU measured once per session: the best of 5
    of a 2048^3 fp32 ``torch.mm`` and of a 256 MiB copy (2 bytes moved per byte). A CPU
    without native bf16 instructions gets the fp32 peak for 16-bit work too: the cpu
    backend widens 16-bit tiles to fp32 and multiplies in fp32 there, and torch's
    emulated bf16 matmul would understate the peak a hundredfold."""
    device = torch.device(device)
    key = str(device)
    if key in _PEAKS:
        return _PEAKS[key]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = {"H100": (3.0e12, 400e12, 790e12), "H200": (4.8e12, 400e12, 790e12),
                 "A100": (1.6e12, 156e12, 312e12)}
        bw, tf32, bf16 = next((v for k, v in table.items() if k in name), (None, None, None))
        peaks = {"name": name, "bytes_per_s": bw, "flops_float32": tf32,
                 "flops_bfloat16": bf16, "flops_float16": bf16,
                 "source": "stated by the vendor (TF32 for fp32 products)" if bw else "unknown GPU"}
    else:
        def best(f, rounds=5):
            f()
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                f()
                times.append(time.perf_counter() - t)
            return min(times)
        a32 = torch.randn(2048, 2048)
        big = torch.empty(64 << 20)
        dst = torch.empty_like(big)
        flops = 2 * 2048 ** 3
        fp32 = flops / best(lambda: a32 @ a32)
        native = cpu_has_native_bf16()
        if native:
            a16 = a32.bfloat16()
            bf16 = flops / best(lambda: a16 @ a16)
        peaks = {"name": f"CPU ({torch.get_num_threads()} threads)",
                 "flops_float32": fp32, "flops_bfloat16": bf16 if native else fp32,
                 "bytes_per_s": 2 * big.numel() * 4 / best(lambda: dst.copy_(big)),
                 "source": "measured: torch.mm 2048^3 (fp32" + (", bf16" if native else
                           "; no native bf16 here, so fp32 for 16-bit work") + ") and a 256 MiB copy"}
        peaks["flops_float16"] = peaks["flops_bfloat16"]
    _PEAKS[key] = peaks
    return peaks

"""Launch parameters shared by the Triton kernels: block sizes from a small heuristic
table (documented here rather than autotuned, so no timed call ever includes tuning),
the split of N across programs, and the matmul precision.

| case                         | BLOCK rows | BLOCK_N | warps | stages |
|------------------------------|------------|---------|-------|--------|
| CUDA, 16-bit bank            | 64 (16 if rows <= 16) | 128 | 8 | 3 |
| CUDA, fp32 bank              | 64 (16 if rows <= 16) | 64  | 8 | 3 |
| interpreter (CPU tensors)    | 16         | 32      | -     | -      |

D = 256 halves BLOCK_N. The kernels' own ``plan`` functions narrow this where the
ahead-of-time compile found spills: top-k tiles at most 64 keys wide and fewer query
rows as its kept lists grow; exact fp32 (FMA) tiles 32 keys wide (16 at D = 256); the fp32
aggregation backward 32 rows at D >= 128 (2 stages at D = 256).

N is split across programs so that about ``4 x SMs`` programs run even for small
batches (flash-decoding style); partial results are combined on the host in a fixed
order, so results are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
import triton
import triton.language as tl

from .. import fp32_as_tf32


@dataclass(frozen=True)
class Blocks:
    rows: int
    n: int
    d: int
    warps: int
    stages: int


@dataclass(frozen=True)
class Launch:
    """One kernel configuration: its compile-time constants and launch options. The
    kernels' ``plan`` functions build them; the launchers and the ahead-of-time compile
    check (``python -m bench.gpu_compile``) both use them."""
    constants: Dict[str, Any]
    warps: int
    stages: int

    def options(self, on_gpu: bool) -> dict:
        # maxnreg: without it ptxas may cap a kernel at 128 registers and spill to fit two
        # blocks per SM; these kernels hide latency by pipelining their loads instead.
        return {"num_warps": self.warps, "num_stages": self.stages, "maxnreg": 255} if on_gpu else {}


def blocks(rows: int, dim: int, key_dtype: torch.dtype, on_gpu: bool) -> Blocks:
    block_d = max(16, triton.next_power_of_2(dim))
    if not on_gpu:
        return Blocks(16, 32, block_d, 4, 1)
    block_rows = 16 if rows <= 16 else 64
    block_n = 128 if key_dtype in (torch.bfloat16, torch.float16) else 64
    if block_d >= 256:
        block_n //= 2
    return Blocks(block_rows, block_n, block_d, 8, 3)


def fma_block_n(block_n: int, block_d: int, precision: str, on_gpu: bool) -> int:
    """Exact fp32 products (precision "ieee") run on FMA units with both operands' slices
    in registers: tiles at most 32 keys wide (16 at D = 256), or they spill."""
    if on_gpu and precision == "ieee":
        return min(block_n, 32 if block_d <= 128 else 16)
    return block_n


def split_n(row_blocks: int, n: int, block_n: int, device: torch.device):
    """(number of slices S, columns per slice): slices are whole multiples of block_n."""
    tiles = triton.cdiv(n, block_n)
    if device.type != "cuda":
        wanted = min(2, tiles)  # exercise the combine path in interpreter tests
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        wanted = max(1, min(tiles, triton.cdiv(4 * sms, row_blocks)))
    n_per_split = triton.cdiv(tiles, wanted) * block_n
    return triton.cdiv(n, n_per_split), n_per_split


def input_precision(dtype: torch.dtype) -> str:
    """fp32 products use TF32 unless ``torch.get_float32_matmul_precision()`` is 'highest'
    (torch's default; 'high' and 'medium' allow TF32); 16-bit products are native."""
    if dtype == torch.float32 and not fp32_as_tf32():
        return "ieee"
    return "tf32"


def widen_16bit(key_dtype: torch.dtype, on_gpu: bool) -> bool:
    """Under the interpreter (CPU tensors) tl.dot mishandles bfloat16, so 16-bit operands
    are widened to fp32 first: exact, since a product of two 16-bit floats is exact in
    fp32 and the tensor-core path accumulates in fp32 too."""
    return not on_gpu and key_dtype != torch.float32


@triton.jit
def load_block(ptr, start, n_valid, D, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, WIDEN: tl.constexpr,
               ROW_MASK: tl.constexpr = True):
    """Rows ``start + arange(BLOCK)`` (< n_valid) of a contiguous [*, D] matrix as a
    [BLOCK, BLOCK_D] tile, zero-padded, widened to fp32 when WIDEN (interpreter, 16-bit
    inputs). The 64-bit part of the address is one scalar per block and
    the per-element offsets are 32-bit and the same for every block (hoisted out of the
    loops that stream keys). ``ROW_MASK=False``: the caller knows every row is valid, so
    only the columns are masked (a mask that does not change from tile to tile)."""
    rows = tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    if ROW_MASK:
        mask = ((start + rows)[:, None] < n_valid) & (cols[None, :] < D)
    else:
        mask = (rows[:, None] < BLOCK) & (cols[None, :] < D)
    tile = tl.load(ptr + tl.cast(start, tl.int64) * D + (rows[:, None] * D + cols[None, :]), mask=mask, other=0.0)
    if WIDEN:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def program_rows(q_ptr, n_rows, n_keys, D, n_per_split, BLOCK_ROWS: tl.constexpr,
                 BLOCK_D: tl.constexpr, WIDEN: tl.constexpr):
    """This program's query rows (axis 0 of the grid: indices, validity, the
    [BLOCK_ROWS, BLOCK_D] tile) and its slice ``[lo, hi)`` of the keys (axis 1)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    q = load_block(q_ptr, tl.program_id(0) * BLOCK_ROWS, n_rows, D, BLOCK_ROWS, BLOCK_D, WIDEN)
    lo = tl.program_id(1) * n_per_split
    return rows, rows < n_rows, q, lo, tl.minimum(lo + n_per_split, n_keys)


@triton.jit
def similarity_tile(q, keys_ptr, start, hi, D, inv_tau, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr,
                    ROW_MASK: tl.constexpr = True):
    """Columns ``start + arange(BLOCK_N)`` of one slice ending at ``hi``: their indices,
    validity, key tile and raw logits ``q . key / tau`` (invalid columns unmasked).
    ``ROW_MASK=False`` when the whole tile lies before ``hi``."""
    columns = start + tl.arange(0, BLOCK_N)
    valid = columns < hi
    keys = load_block(keys_ptr, start, hi, D, BLOCK_N, BLOCK_D, WIDEN, ROW_MASK)
    logits = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * inv_tau
    return columns, valid, keys, logits


@triton.jit
def same_label(bank_labels_ptr, columns, valid, query_labels):
    """[rows, cols] mask: bank row label equals the query's (labels < 0 never match,
    since query labels are >= 0)."""
    labels = tl.load(bank_labels_ptr + columns, mask=valid, other=-1)
    return (labels[None, :] == query_labels[:, None]) & valid[None, :]

"""Memory-bank update in Triton: one program per updated row gathers the bank row and
the new embedding, mixes them in fp32, re-normalises and scatters the row back in the
bank's dtype: ``bank[i] = normalize(m * bank[i] + (1 - m) * v)``, with ``normalize`` as
``llp_kernels.normalize_rows`` (scaled first, so right for every finite mix).
Non-negative indices arrive unique (``ops.bank_update`` marks every earlier duplicate -1,
which is skipped), so programs never race on a row.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ...ops.bank_update import BANK_UPDATE
from ...registry import register_kernel
from . import LIMITS
from ._launch import Launch


@triton.jit
def _bank_update_kernel(bank_ptr, indices_ptr, emb_ptr, D, momentum, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    row = tl.load(indices_ptr + b)
    rd = tl.arange(0, BLOCK_D)
    d_ok = (rd < D) & (rd * 0 + row >= 0)  # row < 0: a duplicate that a later row replaces
    target = bank_ptr + row.to(tl.int64) * D + rd
    old = tl.load(target, mask=d_ok, other=0.0).to(tl.float32)
    new = tl.load(emb_ptr + b.to(tl.int64) * D + rd, mask=d_ok, other=0.0).to(tl.float32)
    mixed = momentum * old + (1.0 - momentum) * new
    # Divided by its largest magnitude first, the row's squared norm can neither overflow
    # nor underflow: every finite mix becomes a unit row; an all-zero mix stays zero.
    largest = tl.max(tl.abs(mixed), 0)
    scaled = mixed / tl.where(largest > 0.0, largest, 1.0)
    sq = tl.sum(scaled * scaled, 0)
    # a nonzero row's largest entry is now +-1, so its norm is >= 1; a zero row's is 0
    norm = tl.maximum(tl.sqrt(sq), 1.0)
    # a mix that is not finite (a NaN or inf input) makes the whole row NaN
    out = tl.where(sq - sq == 0.0, scaled / norm, float("nan"))
    tl.store(target, out.to(bank_ptr.dtype.element_ty), mask=d_ok)


def plan(dim: int) -> Launch:
    block_d = max(16, triton.next_power_of_2(dim))
    return Launch(dict(BLOCK_D=block_d), 4 if block_d >= 512 else 1, 1)


@register_kernel(BANK_UPDATE, "triton", limits=LIMITS)
def launch_bank_update(bank: Tensor, indices: Tensor, embeddings: Tensor,
                       momentum: float) -> None:
    B, D = embeddings.shape
    launch = plan(D)
    _bank_update_kernel[(B,)](bank, indices, embeddings, D, momentum, **launch.constants,
                              **launch.options(bank.device.type == "cuda"))

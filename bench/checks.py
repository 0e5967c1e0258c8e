"""Agreement with ``llp_kernels.reference`` before anything is timed.

The reference materialises ``Q x N`` logits; ``chunked_*`` run the same reference on
query chunks so that a chunk's logits stay under ``CHUNK_BYTES`` and the check works at
sizes where the plain reference would not fit. The tolerances are per bank dtype: with a
16-bit bank every backend rounds the queries to it, so only fp32
accumulation order separates them.
"""
from __future__ import annotations

import torch

from llp_kernels import reference as ref

CHUNK_BYTES = 1 << 30
TOL = {"float32": 1e-4, "tf32": 2e-3, "bfloat16": 2e-3, "float16": 2e-3}  # relative to max |value|


def _chunks(rows: int, cols: int):
    step = max(1, min(rows, CHUNK_BYTES // max(1, 4 * cols)))
    return [(s, min(s + step, rows)) for s in range(0, rows, step)]


def reference_fits(rows: int, cols: int, device) -> bool:
    """Whether the plain reference's [rows, cols] fp32 logits (and a same-size temporary)
    fit comfortably: half of the free GPU memory, or 8 GiB on a CPU."""
    need = 3 * 4 * rows * cols
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need < free // 2
    return need < 8 << 30


def chunked_aggregation_lse(q, bank, bank_labels, query_labels, tau):
    parts = [ref.aggregation_lse(q[a:b], bank, bank_labels, query_labels[a:b], tau)
             for a, b in _chunks(q.shape[0], bank.shape[0])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def chunked_aggregation_grad(q, bank, bank_labels, query_labels, lse_all, lse_same, tau, grad):
    return torch.cat([ref.aggregation_grad(q[a:b], bank, bank_labels, query_labels[a:b],
                                           lse_all[a:b], lse_same[a:b], tau, grad[a:b])
                      for a, b in _chunks(q.shape[0], bank.shape[0])])


def chunked_topk(q, keys, k, tau, key_bias=None):
    parts = [ref.topk_similarity(q[a:b], keys, k, tau, key_bias) for a, b in _chunks(q.shape[0], keys.shape[0])]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: str, scale: float = 1.0) -> float:
    """Max absolute difference, asserted below the dtype's tolerance times ``scale``."""
    if dtype == "float32" and got.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"  # fp32 products on tensor cores: 10-bit mantissa inputs
    got, want = got.double(), want.double()
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got)), f"{name}: infinities differ from reference"
    err = (got[finite] - want[finite]).abs().max().item() if finite.any() else 0.0
    limit = TOL[dtype] * scale * max(1.0, want[finite].abs().max().item() if finite.any() else 1.0)
    assert err <= limit, f"{name}: max |diff| {err:.3g} from reference exceeds {limit:.3g}"
    return err


def assert_topk_consistent(values, indices, q, keys, tau, key_bias, want_values, dtype) -> float:
    """Values agree with the reference's k best, and each returned index really scores
    its returned value (ties may pick different indices, so indices are not compared)."""
    err = assert_close("topk values", values, want_values, dtype)
    rescored = torch.bmm(keys[indices].float(), q.float()[:, :, None]).squeeze(2) / tau
    if key_bias is not None:
        rescored = rescored - key_bias[indices]
    assert_close("topk index scores", rescored, values, dtype, scale=2.0)
    assert bool((indices[:, 1:] != indices[:, :-1]).all()), "topk: repeated index in a row"
    return err

"""Streaming top-k similarity (``topk_similarity``: the k best keys per query), per
backend and size. Peers: faiss ``IndexFlatIP`` and pykeops ``Kmin_argKmin``. D = 128,
tau = 0.07; rows cluster around 1,000 centres so that the neighbours mean something,
as in a trained memory bank. ``local_density`` and ``propagate_labels`` (built on the
same kernel) are in their own modules."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from . import checks, peers
from .harness import ELEMENT_BYTES, clustered_rows, gemm_cost, info, measure, unit_rows

OP = "topk"
KERNEL_OP = "topk_similarity"
PEERS = ("faiss", "keops")
D, TAU = 128, 0.07


def rows_pair(q_rows, k_rows, dtype, device):
    centers = unit_rows(1000, D, "float32", "cpu", seed=4)
    return (clustered_rows(q_rows, D, dtype, device, 5, centers),
            clustered_rows(k_rows, D, dtype, device, 6, centers))


def skip_if_reference_too_big(impl, rows, cols, device):
    if impl == "reference" and not checks.reference_fits(rows, cols, device):
        pytest.skip("reference: its full score matrix would not fit in memory here")


def peer_topk(impl, q, keys, k):
    if impl == "peer:faiss":
        return peers.faiss_topk(q, keys, k, TAU)
    return lambda: peers.keops_topk(q, keys, k, TAU)


def selection_cost(size, rows, cols, k):
    return gemm_cost(rows, cols, D), (rows + cols) * D * ELEMENT_BYTES[size.dtype] + rows * k * 12


def test_topk_similarity(benchmark, size, impl, runnable, device, peaks):
    Q, N, k = size.dims["Q"], size.dims["N"], size.dims["k"]
    skip_if_reference_too_big(impl, Q, N, device)
    q, keys = rows_pair(Q, N, size.dtype, device)
    want, _ = checks.chunked_topk(q, keys, k, TAU)
    fn = peer_topk(impl, q, keys, k) if impl.startswith("peer:") else (
        lambda: lk.topk_similarity(q, keys, k, TAU, backend=impl))
    values, indices = fn()
    err = checks.assert_topk_consistent(values, indices, q, keys, TAU, None, want, size.dtype)
    flops, nbytes = selection_cost(size, Q, N, k)
    measure(benchmark, fn, device, info("topk_similarity", size, impl, peaks, flops, nbytes, max_abs_err=err))


"""Other libraries doing the same work, on the same inputs, where they are installed.

- faiss ``IndexFlatIP``: exact inner-product k-NN (top-k and, with a log-sum-exp of the
  t best, the local density). The index is built outside the timed call.
- pykeops: symbolic ``LazyTensor`` reductions that, like llp_kernels, never store the
  ``Q x N`` matrix: ``logsumexp`` for the aggregation loss (forward and, through its
  autograd, backward) and ``Kmin_argKmin`` for the top-k.

Each ``*_unavailable()`` returns the reason a peer cannot run here, or None.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def faiss_unavailable(device) -> Optional[str]:
    try:
        import faiss
    except ImportError:
        return "faiss is not installed (pip install faiss-cpu)"
    if torch.device(device).type == "cuda" and not hasattr(faiss, "StandardGpuResources"):
        return "this faiss build has no GPU support"
    return None


def keops_unavailable(device) -> Optional[str]:
    try:
        import pykeops  # noqa: F401
    except ImportError:
        return "pykeops is not installed (pip install pykeops)"
    return None


def faiss_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, tau: float) -> Callable[[], Tuple]:
    """A callable returning (values / tau [Q, k], int64 indices [Q, k]) from faiss."""
    import faiss
    import numpy as np

    device = queries.device
    d = keys.shape[1]
    index = faiss.IndexFlatIP(d)
    if device.type == "cuda":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    index.add(np.ascontiguousarray(keys.float().cpu().numpy()))
    q = np.ascontiguousarray(queries.float().cpu().numpy())

    def run():
        values, indices = index.search(q, k)
        return (torch.from_numpy(values).to(device) / tau, torch.from_numpy(indices).to(device))
    return run


def _lazy(queries, keys, tau):
    from pykeops.torch import LazyTensor
    q = LazyTensor(queries.float()[:, None, :])
    b = LazyTensor(keys.float()[None, :, :])
    return (q * b).sum(-1) / tau


def keops_aggregation(queries, bank, bank_labels, query_labels, tau):
    """loss [B] = LSE_j s_bj - LSE_{j: same label} s_bj; other labels get a -1e9 shift."""
    from pykeops.torch import LazyTensor
    scores = _lazy(queries, bank, tau)
    lq = LazyTensor(query_labels.float()[:, None, None])
    lb = LazyTensor(bank_labels.float()[None, :, None])
    other = (lq - lb).abs().sign()  # 0 on the same label, 1 elsewhere (-1 never matches)
    lse_all = scores.logsumexp(dim=1).squeeze(1)
    lse_same = (scores - 1e9 * other).logsumexp(dim=1).squeeze(1)
    return lse_all - lse_same


def keops_topk(queries, keys, k, tau):
    values, indices = (-_lazy(queries, keys, tau)).Kmin_argKmin(k, dim=1)
    return -values, indices.long()

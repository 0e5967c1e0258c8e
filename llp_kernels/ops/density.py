"""``local_density``: the log local density of each labeled row (paper eq. 4),

    log_density[i] = logsumexp_{u in N_T(l_i)} s(l_i, u),   s(a, b) = a . b / tau,

over ``N_T(l_i)``, the T unlabeled rows most similar to ``l_i``. The paper's P(v_i, v_k)
also divides by a global normaliser Z; it is the same for every labeled row and cancels
in the normalised votes of ``propagate_labels``, so it is dropped.

No launchers of its own: it runs the backend's top-k launcher (``TOPK`` through
``llp_kernels.ops.topk.run_topk``; that module names them) and sums the T scores on the
host, so it takes what that backend declares for top-k with k = T.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate as check
from ..defaults import T, TAU
from ..registry import Call, resolve
from .topk import TOPK, reference_topk_similarity, run_topk

__all__ = ["local_density", "reference_local_density"]


def reference_local_density(labeled: Tensor, unlabeled: Tensor, t: int = T, tau: float = TAU) -> Tensor:
    """Eq. 4 from the full score matrix: labeled [M, D], unlabeled [U, D] -> [M]."""
    values, _ = reference_topk_similarity(labeled, unlabeled, t, tau)
    return torch.logsumexp(values, dim=1)


@torch.library.custom_op("llp::local_density", mutates_args=())
def _local_density_op(labeled: Tensor, unlabeled: Tensor, t: int, tau: float,
                      backend: str) -> Tensor:
    values, _ = run_topk(backend, labeled, unlabeled, t, tau, None)
    return torch.logsumexp(values.float(), dim=1)


@_local_density_op.register_fake
def _(labeled, unlabeled, t, tau, backend):
    return labeled.new_empty(labeled.shape[0], dtype=torch.float32)


def local_density(labeled: Tensor, unlabeled: Tensor, t: int = T, tau: float = TAU, *,
                  backend: str = "auto") -> Tensor:
    """Log local density of each labeled row (paper eq. 4), fp32 [M].

    ``log_density[i] = logsumexp over the t most similar unlabeled rows u of l_i . u / tau``.
    The paper's global normaliser Z is dropped: it is the same for every labeled point and
    cancels in ``propagate_labels``. labeled [M, D], unlabeled [U, D], 1 <= t <= U.
    """
    check.embeddings("labeled", labeled)
    check.embeddings("unlabeled", unlabeled, labeled.shape[1], "labeled")
    t = check.count("t", t, unlabeled.shape[0], "unlabeled")
    device = check.same_device(labeled=labeled, unlabeled=unlabeled)
    tau = check.temperature("tau", tau)
    name = resolve((TOPK,), backend, Call(device, dim=labeled.shape[1], k=t, dtype=unlabeled.dtype))
    return torch.ops.llp.local_density(labeled.detach().contiguous(),
                                       unlabeled.detach().contiguous(), t, tau, name)

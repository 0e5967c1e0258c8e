"""The local density of a labeled row (paper eq. 4), from its T best similarities.

    log rho_i = logsumexp_{u in the T nearest unlabeled rows of i} s(v_i, u) / tau

The paper's global normaliser Z is dropped: it is the same for every labeled row and
cancels in the normalised vote of eq. 5. For one bank in one process the public op
``llp_kernels.local_density`` computes this whole; where the T best rows are found in
parts (a sharded bank, the propagation tool's row chunks), the parts' merged top-T
scores come here.
"""
from __future__ import annotations

import torch
from torch import Tensor


def log_density(top_scores: Tensor) -> Tensor:
    """``log rho_i = logsumexp_u top_scores[i, u]`` [M] from each labeled row's T best
    scores ``s(v_i, u) / tau`` [M, T] (any order); 0 for every row when T = 0 (there is
    no unlabeled row: the vote is then plain kNN)."""
    if top_scores.shape[1] == 0:
        return torch.zeros(top_scores.shape[0], device=top_scores.device)
    return torch.logsumexp(top_scores, dim=1)

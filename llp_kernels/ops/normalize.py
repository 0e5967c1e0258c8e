"""The one L2 normalisation of rows that every op, the propagation tool, its estimator and
the trainer's embedding head use (the compiled bank-update kernels follow the same rule):

    scale_i = max_j |x_ij|,   u_i = x_i / scale_i,   y_i = u_i / max(||u_i||_2, 1)

(a zero row, scale 0, is divided by 1 and stays zero). ``normalize_rows`` is the
differentiable form; ``normalize_rows_`` computes the same values in place, for a caller
that streams rows through one buffer (the propagation tool) and also wants ``scale``,
from which it tells non-finite rows (scale NaN or inf) and zero rows (scale 0) apart.
"""
from __future__ import annotations

import torch
from torch import Tensor


def normalize_rows(x: Tensor) -> Tensor:
    """``x[i] / ||x[i]||_2`` for each row of ``x`` [..., D] (float), in ``x``'s dtype.

    Right for every finite row, whatever its magnitude: each row is first divided by its
    largest ``|x_ij|``, so the squared norm neither overflows (in fp32 it would above a
    norm of about 1.8e19) nor underflows, and no ``eps`` stops small rows short of unit
    length (``torch.nn.functional.normalize`` returns a zero row for ``[1e20, 1e20]`` and
    ``[1e-14, 0]`` unchanged). An all-zero row stays zero; a row holding NaN or inf
    becomes all NaN. Differentiable: the scale is held constant, which gives the exact
    gradient because the result does not depend on it.
    """
    scale = x.detach().abs().amax(dim=-1, keepdim=True)
    scaled = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(scaled, dim=-1, keepdim=True)
    # A nonzero row's largest entry is now +-1, so its norm is >= 1: the clamp only keeps a
    # zero row (norm 0) at zero. NaN passes through the clamp.
    return scaled / norm.clamp_min(1.0)


def normalize_rows_(x: Tensor) -> Tensor:
    """``normalize_rows(x)`` written into ``x`` [n, D] (float, no autograd), bit for bit;
    returns each row's ``scale_i = max_j |x_ij|`` [n] (NaN for a row holding NaN, inf for
    one holding inf but no NaN, 0 for a zero row). Allocates only [n]-sized tensors."""
    if x.requires_grad:
        raise ValueError("normalize_rows_: x requires grad; use normalize_rows")
    low, high = torch.aminmax(x, dim=-1, keepdim=True)
    scale = torch.maximum(low.neg_(), high)
    x.div_(torch.where(scale > 0, scale, torch.ones_like(scale)))
    x.div_(torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1.0))
    return scale.squeeze(-1)

"""The method's default settings, written once. The public functions of ``llp_kernels``,
the trainer (``python -m llp.train``), the propagation tool (``python -m llp.propagate``)
and its estimator (``LocalLabelPropagation``) all take their defaults from here.

``TAU = 0.07``
    Temperature of every similarity between unit rows, ``s(a, b) = a . b / tau``: in the
    non-parametric softmax of the aggregation loss (paper eq. 1-2), in the local density
    (eq. 4) and in the vote (eq. 5).
``K = 10``
    Labeled neighbours that vote for an unlabeled row: the K best labeled rows by
    ``s(v, v_i) - log rho_i`` (eq. 5).
``T = 25``
    Nearest unlabeled rows of a labeled row in its local density,
    ``log rho_i = logsumexp_{u in T nearest unlabeled rows of i} s(v_i, u)`` (eq. 4).
``BANK_MOMENTUM = 0.5``
    Weight of a memory-bank row's old value in its running average,
    ``bank_i = normalize(m * bank_i + (1 - m) * v_i)`` (Wu et al. 2018).
"""

TAU = 0.07
K = 10
T = 25
BANK_MOMENTUM = 0.5

__all__ = ["BANK_MOMENTUM", "K", "T", "TAU"]

"""llp_kernels: fused memory-bank kernels for Local Label Propagation.

    loss = aggregation_loss(queries, bank, bank_labels, query_labels, tau)   # [B], autograd
    vals, idx = topk_similarity(queries, keys, k, tau, key_bias=None)         # [Q,k], [Q,k]
    log_density = local_density(labeled, unlabeled, t, tau)                  # [M]
    labels, conf = propagate_labels(queries, labeled, labeled_labels, log_density, k, tau)
    update_memory_bank_(bank, indices, embeddings, momentum)                  # in place
    unit = normalize_rows(x)        # x / ||x|| per row, right for every finite row

``tau``, ``k``, ``t`` and ``momentum`` default to the method's settings, ``TAU``, ``K``,
``T`` and ``BANK_MOMENTUM`` of ``llp_kernels.defaults``.

Every function takes ``backend="auto"|"reference"|"cpu"|"triton"|"cuda"``; the environment
variable ``LLP_BACKEND`` overrides ``auto``. ``available_backends()`` says what runs here.
"""
from .ops.aggregation import aggregation_grad, aggregation_loss, aggregation_lse
from .ops.topk import topk_similarity
from .ops.bank_update import update_memory_bank_
from .ops.class_vote import class_vote
from .ops.density import local_density
from .ops.normalize import normalize_rows, normalize_rows_
from .ops.propagate import propagate_labels
from . import defaults, reference, registry
from .registry import available_backends, unusable_reason, usable_backends
# Importing an op module makes its handle, a backend registers itself and its launchers;
# OPS and BACKENDS keep the order of these imports.
from .backends import reference as _reference, cpu as _cpu, triton as _triton, cuda as _cuda  # isort: skip

BACKENDS = tuple(registry.BACKENDS)
OPS = tuple(registry.OPS)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "OPS",
    "aggregation_grad",
    "aggregation_loss",
    "aggregation_lse",
    "available_backends",
    "class_vote",
    "defaults",
    "local_density",
    "normalize_rows",
    "normalize_rows_",
    "propagate_labels",
    "reference",
    "registry",
    "topk_similarity",
    "unusable_reason",
    "update_memory_bank_",
    "usable_backends",
]

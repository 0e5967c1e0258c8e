"""Plain, materialising PyTorch versions of every op: the oracle the kernels are tested
against. Each is written in its op's module (``llp_kernels/ops/``), next to the op it
defines, as ``reference_<op>``; this module gathers them under the ops' own names.
The ``reference`` backend runs them as its kernels.

Readable above all. Each function builds the full ``[rows x N]`` logits, so memory is
O(rows * N). Computation runs in fp32, or fp64 when given fp64 inputs (the tests use
that as the high-precision oracle); outputs are in that compute dtype.

Notation: ``tau`` temperature, every row L2-normalised,
``s(q, k) = q . k / tau``.

Non-finite inputs (the rule every backend follows): a NaN or inf in queries, keys, the
bank, a bias or an embedding is never checked for; it makes NaN exactly the outputs it
touches. A log-sum-exp over a non-finite logit is NaN; a top-k ranks a NaN score below
every number (so it never displaces a finite neighbour); a vote over a NaN score gives
confidence NaN and label -1; a bank row mixed with a non-finite value becomes all NaN.
"""
from .ops.aggregation import reference_aggregation_grad as aggregation_grad
from .ops.aggregation import reference_aggregation_loss as aggregation_loss
from .ops.aggregation import reference_aggregation_lse as aggregation_lse
from .ops.aggregation import reference_scaled_grad as scaled_grad
from .ops.bank_update import last_occurrence_mask
from .ops.bank_update import reference_update_memory_bank_ as update_memory_bank_
from .ops.class_vote import vote as class_vote
from .ops.density import reference_local_density as local_density
from .ops.normalize import normalize_rows
from .ops.propagate import reference_propagate_labels as propagate_labels
from .ops.topk import rank_descending
from .ops.topk import reference_topk_similarity as topk_similarity

__all__ = ["aggregation_grad", "aggregation_loss", "aggregation_lse", "class_vote", "last_occurrence_mask",
           "local_density", "normalize_rows", "propagate_labels", "rank_descending", "scaled_grad",
           "topk_similarity", "update_memory_bank_"]

"""``propagate_labels`` (paper eq. 5): density-biased k best labeled rows per query and
their class vote, per backend and size. The check: the same pseudo-label as the
reference for every query whose top two class probabilities are not a near-tie, and
confidences within tolerance."""
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from . import checks
from .harness import info, measure
from .test_topk import TAU, rows_pair, selection_cost, skip_if_reference_too_big

OP = "propagate"
KERNEL_OP = "topk_similarity"


def chunked_reference(q, labeled, labels, log_density, k, classes):
    step = max(1, checks.CHUNK_BYTES // (4 * labeled.shape[0]))
    parts = [ref.propagate_labels(q[a:a + step], labeled, labels, log_density, k, TAU, classes)
             for a in range(0, q.shape[0], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def test_propagate_labels(benchmark, size, impl, runnable, device, peaks):
    Q, M, k, C = size.dims["Q"], size.dims["M"], size.dims["k"], size.dims["C"]
    skip_if_reference_too_big(impl, Q, M, device)
    q, labeled = rows_pair(Q, M, size.dtype, device)
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, C, (M,), generator=g).to(device)
    log_density = (1.0 / TAU + torch.rand(M, generator=g)).to(device)
    want_labels, want_conf = chunked_reference(q, labeled, labels, log_density, k, C)
    fn = lambda: lk.propagate_labels(q, labeled, labels, log_density, k, TAU, C, backend=impl)
    got_labels, got_conf = fn()
    err = checks.assert_close("confidence", got_conf, want_conf, size.dtype)
    disagree = (got_labels != want_labels).float().mean().item()
    assert disagree <= 1e-3, f"pseudo-labels differ from reference on {disagree:.2%} of queries"
    flops, nbytes = selection_cost(size, Q, M, k)
    measure(benchmark, fn, device, info("propagate_labels", size, impl, peaks, flops, nbytes,
                                        max_abs_err=err, label_disagreement=disagree))

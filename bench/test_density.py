"""``local_density`` (paper eq. 4): for each labeled row, the log-sum-exp of its t best
unlabeled similarities, per backend and size; faiss ``IndexFlatIP`` and pykeops
``Kmin_argKmin`` (plus the same log-sum-exp) as peers."""
import torch

import llp_kernels as lk

from . import checks
from .harness import info, measure
from .test_topk import TAU, peer_topk, rows_pair, selection_cost, skip_if_reference_too_big

OP = "density"
KERNEL_OP = "topk_similarity"
PEERS = ("faiss", "keops")


def test_local_density(benchmark, size, impl, runnable, device, peaks):
    M, U, t = size.dims["M"], size.dims["U"], size.dims["t"]
    skip_if_reference_too_big(impl, M, U, device)
    labeled, unlabeled = rows_pair(M, U, size.dtype, device)
    want = torch.logsumexp(checks.chunked_topk(labeled, unlabeled, t, TAU)[0], dim=1)
    if impl.startswith("peer:"):
        search = peer_topk(impl, labeled, unlabeled, t)
        fn = lambda: torch.logsumexp(search()[0], dim=1)
    else:
        fn = lambda: lk.local_density(labeled, unlabeled, t, TAU, backend=impl)
    err = checks.assert_close("log density", fn(), want, size.dtype)
    flops, nbytes = selection_cost(size, M, U, t)
    measure(benchmark, fn, device, info("local_density", size, impl, peaks, flops, nbytes, max_abs_err=err))

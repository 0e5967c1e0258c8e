"""``--method diffusion``: the global baseline, label diffusion on a kNN graph of every
row in the style of DLP (Iscen et al. 2019).

1. Graph: each row i's ``graph_k`` most similar other rows j (``lk.topk_similarity``
   with tau = 1, so the values are cosine similarities s_ij; row i itself is dropped),
   weighted ``a_ij = max(s_ij, 0) ** gamma`` (DLP: gamma = 3); ``W = A + A^T``. With
   ``metric="euclidean"`` the rows are not normalised, the neighbours are the nearest in
   Euclidean distance (``topk_similarity`` of ``2 x_i.x_j - |x_j|^2``, i.e. of
   ``|x_i|^2 - |x_i - x_j|^2``) and every edge weighs 1, as in scikit-learn's
   ``LabelSpreading(kernel="knn")``: raw features whose length carries information
   (concentric circles, say) keep it.
2. Symmetric normalisation ``W_n = D^-1/2 W D^-1/2``, ``D = diag(W 1)``.
3. For each class c, ``(I - alpha W_n) f_c = y_c`` by conjugate gradients
   (``scipy.sparse.linalg.cg``, at most ``cg_iters`` iterations, relative tolerance
   ``cg_tol``; DLP: alpha = 0.99, 20 iterations), with ``y_c[i] = 1 / |L_c|`` for the
   labeled rows of class c (DLP's class-size normalisation) and 0 elsewhere.
   The defaults are graph_k = 10 and alpha = 0.9, not DLP's 50 and 0.99: on the
   development suite's small data sets (150-2,400 rows) those over-smooth, and the class
   whose labeled rows sit in the best-connected part of the graph spreads over the
   others (overlapping clusters at 5% labels: one class took 34% of the rows, true share
   10%; wine: 53% against 40%); more CG iterations change nothing (500 give the same
   labels as 20). Over the suite's raw features at 2-10% labels the defaults are 3.4
   points above LabelSpreading on average, DLP's 3.8 below.
4. ``F = max(F, 0)`` (CG may leave tiny negatives); a row's class shares are
   ``F_i / sum_c F_ic``, its pseudo-label their argmax and its confidence their max.
   A row that no label reaches (``F_i = 0``) has no pseudo-label: label -1, confidence 0
   (the estimator gives it uniform shares).

Memory: every row [N, D] fp32, the graph (N x graph_k ids and weights, twice over in
W) and F [N, C]; the graph costs N^2 D multiply-adds. So unlike the other methods this
one is for N that fits in memory. Several processes each build the graph rows of their
own span of rows, gather the graph, solve a contiguous share of the classes and
gather F.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import llp_kernels as lk

from .propagation import Comm, Problem, Settings, chunks, no_progress


def read_all(problem: Problem, s: Settings, check: bool = True) -> Tensor:
    """Every row [N, D] fp32, read (and checked) in chunks: unit rows, or for the
    euclidean metric the rows as stored times ``euclidean_scale`` of them (one factor for
    all rows: the same neighbours, and no square overflows whatever their magnitude)."""
    rows = problem.rows
    if s.metric != "euclidean":
        keys = torch.empty(rows.n, rows.dim, device=rows.device)
        for lo, hi in chunks(range(rows.n), s.chunk_rows):
            keys[lo:hi] = rows.read(lo, hi, check=check)
        return keys
    raw = torch.cat([rows.read(lo, hi, check=check, raw=True) for lo, hi in chunks(range(rows.n), s.chunk_rows)])
    rows.scale = euclidean_scale(raw)
    return (raw * rows.scale).float()


def euclidean_scale(raw: Tensor) -> float:
    """1 / the largest magnitude among the rows (1 when every row is zero)."""
    largest = float(raw.abs().max()) if raw.numel() else 0.0
    return 1.0 / largest if largest > 0 else 1.0


def nearest(queries: Tensor, keys: Tensor, k: int, s: Settings) -> Tuple[Tensor, Tensor]:
    """Each query's k most similar keys (ids [Q, k]) and their edge weights [Q, k]:
    ``max(cos, 0) ** gamma``, or 1 for the Euclidean nearest keys."""
    if s.metric == "euclidean":
        _, found = lk.topk_similarity(queries, keys, k, tau=0.5, key_bias=(keys * keys).sum(dim=1),
                                      backend=s.backend)
        return found, torch.ones(found.shape, device=keys.device)
    sims, found = lk.topk_similarity(queries, keys, k, tau=1.0, backend=s.backend)
    return found, sims.clamp(min=0) ** s.gamma


def knn_graph(keys: Tensor, span: range, s: Settings, progress=no_progress) -> Tuple[Tensor, Tensor]:
    """For rows ``span``: the ids [n, k'] of their k' = min(graph_k, N - 1) most similar
    other rows and the edge weights ``max(s, 0) ** gamma`` [n, k']."""
    n_all = keys.shape[0]
    k = min(s.graph_k, n_all - 1)
    ids = torch.empty(len(span), k, dtype=torch.int64, device=keys.device)
    weights = torch.empty(len(span), k, device=keys.device)
    if k == 0:
        return ids, weights
    bar = progress("graph", len(span))
    for lo, hi in chunks(span, s.chunk_rows):
        found, w = nearest(keys[lo:hi], keys, k + 1, s)
        me = torch.arange(lo, hi, device=keys.device)[:, None]
        drop = found == me
        drop[~drop.any(dim=1), -1] = True  # a row that ties with copies of itself: drop the last
        keep = ~drop
        ids[lo - span.start:hi - span.start] = found[keep].view(hi - lo, k)
        weights[lo - span.start:hi - span.start] = w[keep].view(hi - lo, k)
        bar.update(hi - lo)
    bar.close()
    return ids, weights


def normalised_graph(ids: np.ndarray, weights: np.ndarray, n: int):
    """``D^-1/2 (A + A^T) D^-1/2`` as a scipy CSR matrix (float64)."""
    import scipy.sparse as sp

    rows = np.repeat(np.arange(n), ids.shape[1])
    a = sp.csr_matrix((weights.astype(np.float64).ravel(), (rows, ids.ravel())), shape=(n, n))
    w = (a + a.T).tocsr()
    degree = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    d = sp.diags(inv_sqrt)
    return (d @ w @ d).tocsr()


def solve(w_n, labeled_ids: np.ndarray, labeled_classes: np.ndarray, classes: range, s: Settings,
          progress=no_progress) -> np.ndarray:
    """``F[:, c]`` for each class c in ``classes``: [N, len(classes)] float64."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import cg

    n = w_n.shape[0]
    system = (sp.identity(n, format="csr") - s.alpha * w_n).tocsr()
    out = np.zeros((n, len(classes)))
    bar = progress("diffusion", len(classes), unit="class")
    for j, c in enumerate(classes):
        members = labeled_ids[labeled_classes == c]
        if len(members):
            y = np.zeros(n)
            y[members] = 1.0 / len(members)
            out[:, j], _ = cg(system, y, rtol=s.cg_tol, atol=0.0, maxiter=s.cg_iters)
        bar.update(1)
    bar.close()
    return out


def fit(problem: Problem, s: Settings, comm: Comm, progress=no_progress,
        timings: Optional[dict] = None, check: bool = True) -> Tuple[Tensor, np.ndarray]:
    """The rows [N, D] (kept for ``extend``) and ``F`` [N, C] float32 (>= 0), on every
    process; ``timings`` gets the seconds of ``rows``, ``graph`` and ``diffusion``.
    ``check``: this read checks the rows (no earlier pass did)."""
    timings = {} if timings is None else timings
    start = time.perf_counter()
    keys = read_all(problem, s, check)
    timings["rows"] = time.perf_counter() - start
    n, C = problem.rows.n, problem.num_classes
    start = time.perf_counter()
    ids, weights = knn_graph(keys, comm.span(n), s, progress)
    ids, weights = comm.gather_rows(ids).cpu().numpy(), comm.gather_rows(weights).cpu().numpy()
    timings["graph"] = time.perf_counter() - start
    start = time.perf_counter()
    labeled_classes = np.asarray(problem.labels[problem.labeled_ids], dtype=np.int64)
    part = solve(normalised_graph(ids, weights, n), problem.labeled_ids, labeled_classes, comm.span(C), s,
                 progress)
    f_t = torch.from_numpy(np.ascontiguousarray(part.T, dtype=np.float32)).to(keys.device)
    f = comm.gather_rows(f_t).T.cpu().numpy()
    timings["diffusion"] = time.perf_counter() - start
    return keys, np.maximum(f, 0.0)


def shares(f: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From F [N, C]: class shares [N, C] (uniform where no label reached), pseudo-labels
    [N] (-1 there), confidences [N] (0 there) and the reached mask [N]."""
    total = f.sum(axis=1, keepdims=True)
    reached = total[:, 0] > 0
    p = np.full_like(f, 1.0 / max(f.shape[1], 1))
    np.divide(f, total, out=p, where=reached[:, None])
    label = np.where(reached, p.argmax(axis=1), -1)
    conf = np.where(reached, p.max(axis=1), 0.0).astype(np.float32)
    return p.astype(np.float32), label.astype(np.int64), conf, reached


def extend(queries: Tensor, keys: Tensor, fitted_shares: Tensor, s: Settings) -> Tensor:
    """Class shares [Q, C] of new rows (unit rows, or raw ones for the euclidean metric):
    one diffusion step from the fitted rows, i.e. the weighted mean of the shares of each
    query's ``graph_k`` most similar fitted rows with the graph's weights; uniform when
    every weight is 0."""
    k = min(s.graph_k, keys.shape[0])
    found, w = nearest(queries, keys, k, s)
    mix = torch.einsum("qk,qkc->qc", w, fitted_shares[found])
    total = w.sum(dim=1, keepdim=True)
    uniform = torch.full_like(mix, 1.0 / fitted_shares.shape[1])
    return torch.where(total > 0, mix / total.clamp(min=torch.finfo(torch.float32).tiny), uniform)

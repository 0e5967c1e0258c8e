"""Label propagation over fixed embeddings (paper section 3, eq. 4-5), streamed in row
chunks so that only the labeled rows are held in memory; the engine of
``python -m llp.propagate`` and of ``LocalLabelPropagation``.

Shapes: N rows of D dims, of which M are labeled and U = N - M are not; C classes;
Q query rows. ``s`` is cosine similarity (rows are L2-normalised as they are read),
``tau`` the temperature. Every similarity goes through the public ``llp_kernels`` API
(``topk_similarity``, ``class_vote``): nothing N x M or N x N is ever formed.

Methods (``diffusion``, the global baseline, is in ``llp.method.diffusion``):

- ``llp``: ``log_density_i = logsumexp_{u in T nearest unlabeled rows of i} s_iu / tau``
  (eq. 4; the paper's global normaliser cancels in the vote), and each query q scores
  the labeled rows ``score_i = s_qi / tau - log_density_i``; its K best labeled rows vote
  with weights ``exp(score_i - max score)``: ``p_c = sum_{y_i = c} w_i / sum_i w_i``,
  pseudo-label ``argmax_c p_c``, confidence ``max_c p_c`` (eq. 5).
- ``knn``: the same vote with ``score_i = s_qi / tau`` (the paper's NoDW ablation).
- ``ratio``: the paper's "ratio-based" alternative (section 5): eq. 4's density-weighted
  ``P_L(v_i|v)`` replaced by ``P_R(v_i|v) = P(v_i|v) * M / (N - M)``, the labeled:unlabeled
  ratio of the data set, i.e. ``score_i = s_qi / tau + log(M / (N - M))``. The factor is
  the same for every labeled row, so it cancels in the normalised vote: ``ratio`` gives
  exactly ``knn``'s pseudo-labels and confidences (the paper's 59.4% for it sits next to
  its 58.4% for NoDW). It is kept so that the paper's three weightings can be run side
  by side; only the stored scores differ.

Counts that fall short are clamped, as ``ShardedBank`` does: T to U (a labeled row's
density uses every unlabeled row when there are fewer than T). With no unlabeled row at all every density is 0 and the vote is plain kNN. K
larger than M is the caller's error to report (the CLI and the estimator refuse it).

Several processes (``torchrun``): process r reads rows ``Group.shard(N)`` only. The
density pass merges every process's top-T per labeled row (``merged_topk_values``);
the vote pass runs in lock-step rounds, one chunk per process per round, whose
results are gathered to rank 0. Each process holds the M labeled rows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import llp_kernels as lk
from llp_kernels import _validate as check
from llp_kernels.defaults import K, T, TAU

from .density import log_density
from .distributed import Group, all_min, all_sum, gather_rows, merged_topk_values, row_counts

METHODS = ("auto", "llp", "knn", "ratio", "diffusion")
METRICS = ("cosine", "euclidean")


@dataclass(frozen=True)
class Settings:
    """What a propagation run computes; the CLI flags and the estimator's parameters.
    A saved run stores it as a dict (``dataclasses.asdict``) and resumes from it."""
    method: str = "auto"
    """One of ``METHODS``; ``auto`` lets ``llp.method.choice`` pick by cross-validation."""
    k: int = K
    """K: the labeled rows that vote for each query (eq. 5)."""
    t: int = T
    """T: the unlabeled neighbours in each labeled row's local density (eq. 4)."""
    tau: float = TAU
    """The temperature that divides every similarity."""
    backend: str = "auto"
    """The ``llp_kernels`` backend of every top-k and vote."""
    chunk_rows: int = 65536
    """Rows read, normalised and scored at a time: what bounds the memory."""
    graph_k: int = 10
    """diffusion: each row's neighbours in the kNN graph."""
    gamma: float = 3.0
    """diffusion: an edge weighs ``max(s, 0) ** gamma``."""
    alpha: float = 0.9
    """diffusion: the system solved is ``(I - alpha W) F = Y``, 0 < alpha < 1."""
    cg_iters: int = 20
    """diffusion: conjugate-gradient iterations per class at most."""
    cg_tol: float = 1e-6
    """diffusion: the conjugate gradients' relative tolerance."""
    metric: str = "cosine"
    """diffusion: the graph's neighbours by ``cosine`` or ``euclidean`` distance."""

    def longest_top_k(self, n: int, labeled: int) -> int:
        """The longest list this method asks ``lk.topk_similarity`` for over ``n`` rows,
        ``labeled`` of them labeled (what a backend's limits are checked against)."""
        if self.method == "diffusion":
            return min(self.graph_k, n - 1) + 1
        return max(self.k, min(self.t, n - labeled)) if self.method == "llp" else self.k


def check_settings(s: Settings, flag: Callable[[str], str] = lambda name: name) -> None:
    """One ValueError (a TypeError for a value that is not a number) naming the setting
    (as ``flag(name)`` spells it) for a bad value; ``tau`` by the kernels' own rule."""
    if s.method not in METHODS:
        raise ValueError(f"{flag('method')} must be one of {', '.join(METHODS)}, got {s.method!r}")
    if s.metric not in METRICS:
        raise ValueError(f"{flag('metric')} must be one of {', '.join(METRICS)}, got {s.metric!r}")
    if s.metric == "euclidean" and s.method not in ("diffusion", "auto"):
        raise ValueError(f"{flag('metric')} euclidean is for the diffusion graph only (the votes are cosine)")
    if s.backend != "auto" and s.backend not in lk.BACKENDS:
        raise ValueError(f"{flag('backend')} must be auto or one of {', '.join(lk.BACKENDS)}, got {s.backend!r}")
    for name in ("k", "t", "chunk_rows", "graph_k", "cg_iters"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{flag(name)} must be an integer >= 1, got {value!r}")
    check.temperature(flag("tau"), s.tau)
    for name in ("gamma", "cg_tol"):
        check.positive_float(flag(name), getattr(s, name))
    if not isinstance(s.alpha, (int, float, np.number)) or not 0.0 < s.alpha < 1.0:
        raise ValueError(f"{flag('alpha')} must lie in (0, 1), got {s.alpha!r}")


class NonFiniteRow(ValueError):
    """An embedding row holding NaN or inf (``row``: its position in the file)."""

    def __init__(self, row: int):
        super().__init__(f"row {row} is not finite (it holds NaN or inf)")
        self.row = row


class Rows:
    """An [N, D] array (``np.ndarray`` or ``np.memmap``; float16/32/64, or bfloat16 bit
    patterns stored as uint16/int16 when ``bfloat16``) read in row ranges; each read
    returns fp32 rows L2-normalised on ``device`` by ``lk.normalize_rows_`` (in place, the
    values of ``lk.normalize_rows``) in the file's precision (fp32 for 16-bit files), so every finite row is unit length whatever its
    magnitude (a float64 row of 1e300 too); an all-zero row stays zero.

    ``read(lo, hi, check=True)`` raises ``NonFiniteRow`` for the first row holding NaN
    or inf and counts the rows whose every value is exactly 0 in ``zero_rows``; only one
    pass should check."""

    def __init__(self, array, device="cpu", bfloat16: bool = False):
        self.array, self.device, self.bfloat16 = array, torch.device(device), bfloat16
        self.n, self.dim = (int(v) for v in array.shape)
        self.zero_rows = 0
        self._held: Optional[Tensor] = None  # the buffer of ``read(..., reuse=True)``
        self.scale = 1.0  # the euclidean diffusion's factor on raw rows (llp.method.diffusion.read_all)

    def __len__(self) -> int:
        return self.n

    def read(self, lo: int, hi: int, check: bool = False, raw: bool = False, reuse: bool = False) -> Tensor:
        """Rows [lo, hi) fp32, L2-normalised (``raw``: as stored, in fp32 or float64, for
        Euclidean distances). ``reuse``: into this object's one buffer, which the next
        ``reuse`` read overwrites: for a caller done with a chunk before it reads the next
        (no fresh chunk-sized memory per read, whose page faults cost more than the work)."""
        return self._normalised(np.array(self.array[lo:hi], copy=True), lo if check else None, raw, reuse)

    def take(self, ids: np.ndarray) -> Tensor:
        """Rows ``ids`` (ascending), unchecked: a later full pass checks every row."""
        return self._normalised(np.asarray(self.array[ids]), None)

    def _normalised(self, block: np.ndarray, first: Optional[int], raw: bool = False, reuse: bool = False) -> Tensor:
        x = torch.from_numpy(np.ascontiguousarray(block))
        if self.bfloat16:
            x = x.view(torch.bfloat16)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if raw:
            out = x.to(self.device, dtype)
            if first is not None:
                self._check(first, out.abs().amax(dim=1))
            return out
        if reuse:
            out = self._buffer(x.shape, dtype)
            out.copy_(x)
        else:
            out = x.to(self.device, dtype, copy=True)
        scale = lk.normalize_rows_(out)
        if first is not None:
            self._check(first, scale)
        return out.float()

    def _check(self, first: int, scale: Tensor) -> None:
        """From each row's largest ``|x_ij|`` [n]: NaN or inf for a non-finite row, 0 for a zero row."""
        finite = torch.isfinite(scale)
        if not bool(finite.all()):
            raise NonFiniteRow(first + int(torch.nonzero(~finite)[0, 0]))
        self.zero_rows += int((scale == 0).sum())

    def _buffer(self, shape, dtype) -> Tensor:
        n = shape[0] * shape[1]
        held = self._held
        if held is None or held.dtype != dtype or held.numel() < n:
            held = self._held = torch.empty(n, dtype=dtype, device=self.device)
        return held[:n].view(shape)


@dataclass
class Problem:
    """The data: ``labels`` [N] int64 class indices in [0, C) with -1 for unlabeled rows
    (any array that slices to numpy: an ndarray or a memmap), the labeled positions
    ``labeled_ids`` [M] ascending, and C."""
    rows: Rows
    labels: object
    labeled_ids: np.ndarray
    num_classes: int

    @property
    def unlabeled_count(self) -> int:
        return self.rows.n - len(self.labeled_ids)

    def labels_of(self, lo: int, hi: int) -> np.ndarray:
        """A writable copy of ``labels[lo:hi]``."""
        return np.array(self.labels[lo:hi], dtype=np.int64, copy=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(desc: str, total: int, unit: str = "row", done: int = 0) -> _NoBar:
    """A progress meter that shows nothing. A meter is ``progress(desc, total, unit, done)``
    (``done``: already done before it started, as in a resumed run), advanced by
    ``update(n)`` (rows, unless ``unit`` says otherwise) and ended by ``close()``."""
    return _NoBar()


class Comm:
    """The processes sharing the rows: this one alone (``group`` None) or a
    torch.distributed group; collectives use tensors on ``device``."""

    def __init__(self, group: Optional[Group] = None, device="cpu"):
        self.group, self.device = group, torch.device(device)
        self.world = 1 if group is None else group.world
        self.rank = 0 if group is None else group.rank
        self.is_main = self.rank == 0

    def span(self, n: int, rank: Optional[int] = None) -> range:
        """The rows [lo, hi) of an n-row array that process ``rank`` (default: this one) handles."""
        if self.group is None:
            return range(n)
        return Group(self.rank if rank is None else rank, self.world, 0).shard(n)

    def rounds(self, n: int, chunk: int) -> int:
        """Chunks of the largest process's span: the number of lock-step rounds."""
        return max(-(-len(self.span(n, r)) // chunk) for r in range(self.world))

    def raise_first_bad(self, row: Optional[int]) -> None:
        """Raise ``NonFiniteRow`` on every process for the smallest bad row any found."""
        if self.world > 1:
            found = torch.tensor([np.iinfo(np.int64).max if row is None else row], device=self.device)
            smallest = int(all_min(found)[0])
            row = None if smallest == np.iinfo(np.int64).max else smallest
        if row is not None:
            raise NonFiniteRow(row)

    def broadcast_object(self, value):
        """Rank 0's ``value`` (any picklable object; tensors on the CPU) on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return int(t[0])

    def sum_int(self, value: int) -> int:
        if self.world == 1:
            return value
        return int(all_sum(torch.tensor([value], dtype=torch.int64, device=self.device))[0])

    def merged_topk_values(self, values: Tensor, k: int) -> Tensor:
        if self.world == 1:
            return torch.sort(values, dim=1, descending=True).values
        return merged_topk_values(values, k)

    def gather_rows(self, t: Tensor) -> Tensor:
        return t if self.world == 1 else gather_rows(t)

    def gather_parts(self, *tensors: Tensor):
        """[(this process's tensors) for each process], in rank order."""
        if self.world == 1:
            return [tensors]
        counts = row_counts(tensors[0].shape[0], self.device)
        gathered = [gather_rows(t, counts) for t in tensors]
        return list(zip(*(g.split(counts) for g in gathered)))


def chunks(span: range, size: int) -> Iterator[Tuple[int, int]]:
    for lo in range(span.start, span.stop, size):
        yield lo, min(span.stop, lo + size)


def class_shares(scores: Tensor, neighbour_classes: Tensor, num_classes: int) -> Tensor:
    """The vote of ``lk.class_vote`` as a distribution: ``p_c = sum_{k: class c}
    exp(score_k - score_0) / sum_k exp(score_k - score_0)``; scores [Q, K] sorted
    descending, neighbour_classes [Q, K]; returns [Q, C] fp32 whose argmax (first on a
    tie) is ``class_vote``'s label (each class sums its neighbours in the same order)."""
    weights = torch.exp(scores - scores[:, :1])
    votes = torch.zeros(scores.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    votes.scatter_add_(1, neighbour_classes, weights)
    return votes / weights.sum(dim=1, keepdim=True)


@dataclass
class Fitted:
    """A fitted propagation: the labeled rows ``labeled`` [M, D] (fp32, unit), their
    classes [M], the ``bias`` [M] subtracted from ``s / tau`` before the vote (None:
    plain kNN), and the LLP log-density [M] when it was computed (llp)."""
    labeled: Tensor
    classes: Tensor
    bias: Optional[Tensor]
    log_density: Optional[Tensor]
    num_classes: int
    settings: Settings

    def to(self, device) -> "Fitted":
        """The same propagation with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Fitted(move(self.labeled), move(self.classes), move(self.bias), move(self.log_density),
                      self.num_classes, self.settings)

    def neighbours(self, queries: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores [Q, K] (sorted descending) of each query's K best labeled rows, and their classes."""
        s = self.settings
        scores, idx = lk.topk_similarity(queries, self.labeled, s.k, s.tau, key_bias=self.bias,
                                         backend=s.backend)
        return scores, self.classes[idx]

    def vote(self, queries: Tensor) -> Tuple[Tensor, Tensor]:
        """Pseudo-labels int64 [Q] and confidences fp32 [Q] (eq. 5, ``lk.class_vote``)."""
        return lk.class_vote(*self.neighbours(queries), self.num_classes, backend=self.settings.backend)

    def proba(self, queries: Tensor) -> Tensor:
        """Class shares [Q, C] of the same vote."""
        return class_shares(*self.neighbours(queries), self.num_classes)


def fit(problem: Problem, s: Settings, comm: Comm, progress=no_progress,
        timings: Optional[dict] = None, top_similarities: Optional[Tensor] = None) -> Fitted:
    """Loads the labeled rows and, for ``llp``, runs the density pass over
    this process's rows (which also checks every row: ``NonFiniteRow``), unless
    ``top_similarities`` (``labeled_rows_and_density_pass``'s) are given. ``timings``
    gets the seconds of each phase (``labeled_rows``, ``density``)."""
    timings = {} if timings is None else timings
    density = bias = None
    if s.method == "llp":
        if top_similarities is None:
            labeled, classes, top_similarities = labeled_rows_and_density_pass(problem, s, comm, progress, timings)
        else:
            labeled, classes = labeled_rows(problem)
        density = bias = log_density(top_similarities / s.tau)
    else:
        start = time.perf_counter()
        labeled, classes = labeled_rows(problem)
        timings["labeled_rows"] = time.perf_counter() - start
        if s.method == "ratio":
            bias = torch.full((labeled.shape[0],), -_log_ratio(problem), device=labeled.device)
    return Fitted(labeled, classes, bias, density, problem.num_classes, s)


def labeled_rows(problem: Problem) -> Tuple[Tensor, Tensor]:
    """The labeled rows [M, D] (fp32, unit) and their classes [M]."""
    rows = problem.rows
    labeled = rows.take(problem.labeled_ids)
    classes = torch.from_numpy(np.asarray(problem.labels[problem.labeled_ids], dtype=np.int64)).to(rows.device)
    return labeled, classes


def labeled_rows_and_density_pass(problem: Problem, s: Settings, comm: Comm, progress=no_progress,
                                  timings: Optional[dict] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The labeled rows, their classes and each one's ``min(t, U)`` largest cosine
    similarities to unlabeled rows [M, t] (descending): eq. 4's density at any tau is
    ``llp.method.density.log_density`` of them over tau. One pass over every row, which checks it."""
    timings = {} if timings is None else timings
    start = time.perf_counter()
    labeled, classes = labeled_rows(problem)
    timings["labeled_rows"] = time.perf_counter() - start
    start = time.perf_counter()
    top = _top_similarities(problem, labeled, s, comm, progress)
    timings["density"] = time.perf_counter() - start
    return labeled, classes, top


def _top_similarities(problem: Problem, labeled: Tensor, s: Settings, comm: Comm, progress) -> Tensor:
    """Each labeled row's T best cosine similarities to unlabeled rows [M, T]: each
    process keeps them over its own chunks, then the processes merge."""
    rows, M = problem.rows, labeled.shape[0]
    t = min(s.t, problem.unlabeled_count)
    best = torch.empty(M, 0, device=rows.device)
    bad = None
    span = comm.span(rows.n)
    bar = progress("density", len(span))
    for lo, hi in chunks(span, s.chunk_rows):
        try:
            x = rows.read(lo, hi, check=True, reuse=True)
        except NonFiniteRow as exc:
            bad = exc.row
            break
        unlabeled = torch.from_numpy(problem.labels_of(lo, hi) < 0).to(rows.device)
        if t and bool(unlabeled.any()):
            keys = x[unlabeled]
            values, _ = lk.topk_similarity(labeled, keys, min(t, keys.shape[0]), 1.0, backend=s.backend)
            best = torch.cat([best, values], dim=1)
            if best.shape[1] > t:
                best = torch.topk(best, t, dim=1).values
        bar.update(hi - lo)
    bar.close()
    comm.raise_first_bad(bad)
    rows.zero_rows = comm.sum_int(rows.zero_rows)
    if t == 0:
        return torch.empty(M, 0, device=rows.device)
    return comm.merged_topk_values(best, t)


def _log_ratio(problem: Problem) -> float:
    """``log(M / (N - M))`` (0 when every row is labeled)."""
    M, U = len(problem.labeled_ids), problem.unlabeled_count
    return math.log(M / U) if U else 0.0


Sink = Callable[[int, np.ndarray, np.ndarray, Optional[np.ndarray]], None]


def stream_votes(problem: Problem, fitted: Fitted, comm: Comm, sink: Sink, check: bool,
                 proba: bool = False, progress=no_progress, first_round: int = 0,
                 round_done: Optional[Callable[[int], None]] = None) -> None:
    """The vote pass: every unlabeled row's pseudo-label and confidence (and with
    ``proba`` its class shares [n, C]); labeled rows keep their class with confidence 1
    (one-hot shares). Processes run in lock-step rounds of one chunk each; rank 0 gets
    ``sink(first_row, labels [n], confidences [n], shares [n, C] or None)`` for every
    process's chunk, then ``round_done(j)`` once round j's chunks are all sunk. Rounds
    before ``first_round`` are skipped (a resumed run: they were sunk before). ``check``:
    this pass checks the rows (no density pass did)."""
    rows, s = problem.rows, fitted.settings
    span = comm.span(rows.n)
    rounds = comm.rounds(rows.n, s.chunk_rows)
    bar = progress("propagation", rows.n,
                   done=sum(len(r) for r in _round_spans(comm, rows.n, s.chunk_rows, range(first_round))))
    for j in range(first_round, rounds):
        lo = span.start + j * s.chunk_rows
        hi = min(span.stop, lo + s.chunk_rows)
        zero_before = rows.zero_rows
        out = _vote_chunk(problem, fitted, lo, hi, check, proba)
        if check:
            comm.raise_first_bad(out[0])
            # Every round's count summed over the processes at once, so that the count
            # a resumed run restores on rank 0 covers every process's rows.
            rows.zero_rows = zero_before + comm.sum_int(rows.zero_rows - zero_before)
        parts = comm.gather_parts(*(out[1:] if proba else out[1:3]))
        if comm.is_main:
            for rank, part in enumerate(parts):
                first = comm.span(rows.n, rank).start + j * s.chunk_rows
                part = [p.cpu().numpy() for p in part]
                sink(first, part[0], part[1], part[2] if proba else None)
            if round_done is not None:
                round_done(j)
        bar.update(sum(len(r) for r in _round_spans(comm, rows.n, s.chunk_rows, [j])))
    bar.close()


def _round_spans(comm: Comm, n: int, chunk: int, rounds) -> Iterator[range]:
    """The rows every process votes on in each of ``rounds``."""
    for j in rounds:
        for rank in range(comm.world):
            span = comm.span(n, rank)
            lo = span.start + j * chunk
            yield range(min(lo, span.stop), min(span.stop, lo + chunk))


def _vote_chunk(problem: Problem, fitted: Fitted, lo: int, hi: int, check: bool, proba: bool):
    """(first bad row or None, labels [n], confidences [n], shares [n, C]) for rows [lo, hi)."""
    device, C = problem.rows.device, problem.num_classes
    n = max(0, hi - lo)
    labels = torch.from_numpy(problem.labels_of(lo, hi)).to(device)
    conf = torch.ones(n, device=device)
    shares = torch.zeros(n, C if proba else 0, device=device)
    if proba and n:
        known = labels >= 0
        shares[known] = torch.nn.functional.one_hot(labels[known], C).float()
    if n == 0:
        return None, labels, conf, shares
    try:
        x = problem.rows.read(lo, hi, check=check, reuse=True)
    except NonFiniteRow as exc:
        return exc.row, labels, conf, shares
    unlabeled = labels < 0
    if bool(unlabeled.any()):
        queries = x[unlabeled]
        if proba:
            p = fitted.proba(queries)
            shares[unlabeled] = p
            best, label = p.max(dim=1)
            labels[unlabeled], conf[unlabeled] = label, best
        else:
            labels[unlabeled], conf[unlabeled] = fitted.vote(queries)
    return None, labels, conf, shares

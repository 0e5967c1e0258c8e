"""``python -m llp.propagate`` end to end: a memory-mapped fp16 embedding file in, the
pseudo-label and confidence files out, the density pass and the propagation pass
together; against scikit-learn's ``LabelSpreading(kernel="knn")`` and a faiss
``IndexFlatIP`` kNN vote doing the same work. Select with ``-k propagate_tool``.

Data: N rows x D = 128 around 100 Gaussian cluster centres on the sphere (a row's
class is its cluster), fp16 on disk, 1% of the rows labeled at random. Sizes
(``--llp-size``): ``small`` (the CPU default, so CI stays fast) N = 50,000; ``large``
(and ``gpu``) N = 1,000,000, the tool's target case (10,000 labels); ``huge`` N =
10,000,000 with 10,000 labels (2.56 GB of fp16), written once into ``LLP_BENCH_CACHE``
(default ``~/.cache/llp-bench``) and reused by later sessions. faiss runs twice where it
fits in memory: on the whole file at once, and with the tool's own protocol, chunk by
chunk (``faiss_vote_chunked``; at ``huge`` only that one). Label spreading
builds an N x 7 kNN graph by brute force, so it runs at its own N,
``LLP_BENCH_SPREADING_N`` (default 20,000 small, 50,000 large): raise it to the largest N
it finishes in 10 minutes; the tool and faiss also run at that N for a direct
comparison. N is in each result's ``extra_info``, as is the accuracy of the
pseudo-labels against the clusters.

Each implementation is first checked on a small case (N = 5,000, 2% labeled) against
``llp_kernels.reference`` (label spreading, a different algorithm, against a floor on
accuracy); then timed with ``bench.harness.measure``, which records the peak resident
memory above entry (``bench.memory``). On CPU that includes the pages of the input
file the tool has mapped (at most N x D x 2 bytes, reclaimable page cache).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

import llp_kernels as lk
from llp.propagate import command as propagate
from llp_kernels import reference as ref

from . import checks
from .conftest import size_class
from .harness import gemm_cost, info, measure
from .peers import faiss_unavailable
from .sizes import Size

D, CLUSTERS, K, T, TAU = 128, 100, 10, 25, 0.07
TOOL_N = {"small": 50_000, "large": 1_000_000, "gpu": 1_000_000, "huge": 10_000_000}
SPREADING_N = {"small": 20_000, "large": 50_000, "gpu": 50_000, "huge": 50_000}
CHECK_N, CHECK_FRACTION, FRACTION = 5_000, 0.02, 0.01
HUGE_LABELS = 10_000           # at every N of --llp-size huge (a fraction of 0.1% at 10M)
WHOLE_FILE_FAISS_ROWS = 2_000_000   # above this the whole-file faiss peer would hold N x D fp32 (5 GB at 10M)
FAISS_CHUNK = 1 << 18


def spreading_n(config) -> int:
    return int(os.environ.get("LLP_BENCH_SPREADING_N", SPREADING_N[size_class(config)]))


def tool_n(config) -> int:
    """The tool's N; ``LLP_BENCH_HUGE_N`` overrides it at ``huge`` (a smaller smoke run)."""
    chosen = size_class(config)
    if chosen == "huge":
        return int(os.environ.get("LLP_BENCH_HUGE_N", TOOL_N["huge"]))
    return TOOL_N[chosen]


def pytest_generate_tests(metafunc):
    if "rows" not in metafunc.fixturenames:
        return
    tool, spread = tool_n(metafunc.config), spreading_n(metafunc.config)
    name = metafunc.function.__name__
    if name.endswith("label_spreading"):
        sizes = [spread]
    elif name.endswith("faiss"):  # the whole-file peer: where N x D fp32 fits
        sizes = sorted(n for n in {tool, spread} if n <= WHOLE_FILE_FAISS_ROWS)
    else:
        sizes = sorted({tool, spread})
    metafunc.parametrize("rows", sizes, ids=[f"N{n}" for n in sizes])


def write_clusters(path, n: int, fraction: float, seed: int):
    """Unit rows near 100 random centres, stored fp16 at ``path``; returns (labels with
    -1 for the unlabeled rows, true clusters)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLUSTERS, D, generator=g), dim=1)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, D))
    truth = torch.randint(0, CLUSTERS, (n,), generator=g)
    for lo in range(0, n, 1 << 18):
        hi = min(n, lo + (1 << 18))
        x = centres[truth[lo:hi]] + 0.5 * torch.randn(hi - lo, D, generator=g) / D ** 0.5
        out[lo:hi] = torch.nn.functional.normalize(x, dim=1).half().numpy()
    out.flush()
    del out
    labels = torch.full((n,), -1, dtype=torch.int64)
    pick = torch.randperm(n, generator=g)[:max(K, int(fraction * n))]
    labels[pick] = truth[pick]
    return labels.numpy(), truth.numpy()


def cache_root() -> Path:
    return Path(os.environ.get("LLP_BENCH_CACHE", Path.home() / ".cache" / "llp-bench"))


def cached_clusters(root: Path, n: int, fraction: float, seed: int):
    """``write_clusters`` into ``root/clusters-...``, once: a later call (another session
    too) finds the finished folder and reuses it. The folder is written under a
    temporary name and renamed when complete, so a killed run leaves no half file."""
    folder = root / f"clusters-v1-n{n}-d{D}-f{fraction:.6g}-s{seed}"
    if not (folder / "truth.npy").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{folder.name}.{os.getpid()}.tmp"
        tmp.mkdir()
        labels, truth = write_clusters(tmp / "x.npy", n, fraction, seed)
        np.save(tmp / "y.npy", labels)
        np.save(tmp / "truth.npy", truth)
        os.replace(tmp, folder)
    return folder, np.load(folder / "y.npy"), np.load(folder / "truth.npy")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, request):
    """``dataset(n)`` -> (folder with x.npy and y.npy, labels, truth), made once per n:
    in a temporary folder, or at ``--llp-size huge`` for the tool's N in
    ``cache_root()`` (kept between sessions)."""
    root = tmp_path_factory.mktemp("propagate_tool")
    made = {}

    def make(n: int, fraction: Optional[float] = None):
        huge = fraction is None and size_class(request.config) == "huge" and n == tool_n(request.config)
        fraction = (HUGE_LABELS / n if huge else FRACTION) if fraction is None else fraction
        if (n, fraction) not in made:
            if huge:
                made[n, fraction] = cached_clusters(cache_root(), n, fraction, seed=n)
            else:
                folder = root / f"n{n}-{fraction}"
                folder.mkdir()
                labels, truth = write_clusters(folder / "x.npy", n, fraction, seed=n)
                np.save(folder / "y.npy", labels)
                made[n, fraction] = folder, labels, truth
        return made[n, fraction]
    return make


def unit_rows_of(folder) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(np.load(folder / "x.npy").astype(np.float32)), dim=1)


def reference_vote(folder, labels):
    """Labels and confidences of every row from the plain reference (fp32 rows of the fp16 file)."""
    x = unit_rows_of(folder)
    y = torch.from_numpy(labels)
    known = y >= 0
    density = torch.logsumexp(checks.chunked_topk(x[known], x[~known], T, TAU)[0], dim=1)
    got, conf = ref.propagate_labels(x[~known], x[known], y[known], density, K, TAU, CLUSTERS)
    out, out_conf = y.clone(), torch.ones(len(y))
    out[~known], out_conf[~known] = got, conf
    return out.numpy(), out_conf.numpy()


def assert_agrees_with_reference(labels, conf, folder, given):
    want, want_conf = reference_vote(folder, given)
    err = checks.assert_close("confidence", torch.from_numpy(conf), torch.from_numpy(want_conf), "float32")
    disagree = float((labels != want).mean())
    assert disagree <= 1e-3, f"pseudo-labels differ from reference on {disagree:.2%} of rows"
    return err, disagree


def accuracy(labels, given, truth) -> float:
    unlabeled = given < 0
    return float((labels[unlabeled] == truth[unlabeled]).mean())


def size_of(n: int, labeled: int) -> Size:
    return Size(f"N{n}-M{labeled}-D{D}", {"N": n, "M": labeled, "D": D, "C": CLUSTERS, "k": K, "t": T}, "float16")


def work(n: int, labeled: int):
    """flops and bytes of density + propagation: two labeled x unlabeled similarity passes,
    the fp16 file read twice, the outputs written once."""
    return 2 * gemm_cost(labeled, n - labeled, D), 2 * n * D * 2 + n * 12


def tool_run(folder, out, device):
    return lambda: propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                                   "--out", str(out), "--device", device.type, "--quiet", "--method", "llp"])


def test_propagate_tool_llp(benchmark, rows, dataset, device, peaks, tmp_path):
    folder, given, _ = dataset(CHECK_N, CHECK_FRACTION)
    tool_run(folder, tmp_path / "check", device)()
    err, disagree = assert_agrees_with_reference(np.load(tmp_path / "check" / "pseudo_labels.npy"),
                                                 np.load(tmp_path / "check" / "confidence.npy"), folder, given)
    folder, given, truth = dataset(rows)
    fn = tool_run(folder, tmp_path / "out", device)
    summary = fn()
    labeled = int((given >= 0).sum())
    flops, nbytes = work(rows, labeled)
    extra = info("propagate tool", size_of(rows, labeled), "llp.propagate", peaks, flops, nbytes,
                 compute_dtype="float32", max_abs_err=err, label_disagreement=disagree, N=rows,
                 accuracy=accuracy(np.load(tmp_path / "out" / "pseudo_labels.npy"), given, truth),
                 phase_seconds=summary["timings_s"])
    measure(benchmark, fn, device, extra, rounds=1, warmup_rounds=0)


def faiss_vote(folder, given, device):
    """faiss does the searches, ``lk.class_vote`` the vote: the density of each labeled
    row from an ``IndexFlatIP`` over the unlabeled rows; the density-weighted top-k from
    an ``IndexFlatIP`` over the labeled rows with one more coordinate, ``-log_density``,
    met by a 1 in the queries (``s / tau - log_density`` as one inner product). Reading
    and normalising the file is part of the call, as in the tool."""
    import faiss

    known = np.flatnonzero(given >= 0)
    classes = torch.from_numpy(given[known])

    def run():
        x = np.load(folder / "x.npy", mmap_mode="r").astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        unlabeled = np.flatnonzero(given < 0)
        index = faiss.IndexFlatIP(D)
        index.add(np.ascontiguousarray(x[unlabeled]))
        values, _ = index.search(np.ascontiguousarray(x[known]), T)
        log_density = torch.logsumexp(torch.from_numpy(values) / TAU, dim=1).numpy()
        keys = np.hstack([x[known], -log_density[:, None]]).astype(np.float32)
        biased = faiss.IndexFlatIP(D + 1)
        biased.add(keys)
        queries = np.hstack([x[unlabeled] / TAU, np.ones((len(unlabeled), 1), np.float32)])
        scores, found = biased.search(np.ascontiguousarray(queries), K)
        label, conf = lk.class_vote(torch.from_numpy(scores), classes[torch.from_numpy(found)], CLUSTERS)
        labels, confidence = given.copy(), np.ones(len(given), dtype=np.float32)
        labels[unlabeled], confidence[unlabeled] = label.numpy(), conf.numpy()
        return labels, confidence
    return run


def faiss_vote_chunked(folder, given, chunk: int = FAISS_CHUNK):
    """``faiss_vote`` with the tool's protocol: the file read and normalised a chunk at
    a time, so memory holds the labeled rows, one chunk and the outputs, never N x D.
    Density pass: per chunk, an ``IndexFlatIP`` over its unlabeled rows searched by the
    labeled rows for their T best, merged into the running T best. Vote pass: one
    ``IndexFlatIP`` over the labeled rows with the ``-log_density`` coordinate, searched
    by each chunk's unlabeled rows; ``lk.class_vote`` votes."""
    import faiss

    known = np.flatnonzero(given >= 0)
    classes = torch.from_numpy(given[known])

    def rows(x, lo, hi):
        block = np.asarray(x[lo:hi], dtype=np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    def run():
        x = np.load(folder / "x.npy", mmap_mode="r")
        n = x.shape[0]
        labeled = np.asarray(x[known], dtype=np.float32)
        labeled /= np.linalg.norm(labeled, axis=1, keepdims=True)
        best = np.full((len(known), T), -np.inf, dtype=np.float32)
        for lo in range(0, n, chunk):
            block = rows(x, lo, min(n, lo + chunk))
            keys = np.ascontiguousarray(block[given[lo:lo + chunk] < 0])
            if len(keys):
                index = faiss.IndexFlatIP(D)
                index.add(keys)
                values, _ = index.search(labeled, min(T, len(keys)))
                both = np.concatenate([best, values], axis=1)
                best = -np.sort(-both, axis=1)[:, :T]
        log_density = torch.logsumexp(torch.from_numpy(best) / TAU, dim=1).numpy()
        biased = faiss.IndexFlatIP(D + 1)
        biased.add(np.hstack([labeled, -log_density[:, None]]).astype(np.float32))
        labels, confidence = given.copy(), np.ones(n, dtype=np.float32)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            unlabeled = np.flatnonzero(given[lo:hi] < 0)
            if len(unlabeled) == 0:
                continue
            block = rows(x, lo, hi)[unlabeled]
            queries = np.hstack([block / TAU, np.ones((len(block), 1), np.float32)])
            scores, found = biased.search(np.ascontiguousarray(queries), K)
            label, conf = lk.class_vote(torch.from_numpy(scores), classes[torch.from_numpy(found)], CLUSTERS)
            labels[lo + unlabeled], confidence[lo + unlabeled] = label.numpy(), conf.numpy()
        return labels, confidence
    return run


def test_propagate_tool_faiss_chunked(benchmark, rows, dataset, device, peaks):
    why = faiss_unavailable(device)
    if why:
        pytest.skip(f"faiss: {why}")
    folder, given, _ = dataset(CHECK_N, CHECK_FRACTION)
    err, disagree = assert_agrees_with_reference(*faiss_vote_chunked(folder, given, chunk=777)(), folder, given)
    folder, given, truth = dataset(rows)
    fn = faiss_vote_chunked(folder, given)
    labeled = int((given >= 0).sum())
    flops, nbytes = work(rows, labeled)
    extra = info("propagate tool", size_of(rows, labeled), "peer:faiss chunked", peaks, flops, nbytes,
                 compute_dtype="float32", max_abs_err=err, label_disagreement=disagree, N=rows,
                 accuracy=accuracy(fn()[0], given, truth))
    measure(benchmark, fn, device, extra, rounds=1, warmup_rounds=0)


def test_propagate_tool_faiss(benchmark, rows, dataset, device, peaks):
    why = faiss_unavailable(device)
    if why:
        pytest.skip(f"faiss: {why}")
    folder, given, _ = dataset(CHECK_N, CHECK_FRACTION)
    err, disagree = assert_agrees_with_reference(*faiss_vote(folder, given, device)(), folder, given)
    folder, given, truth = dataset(rows)
    fn = faiss_vote(folder, given, device)
    labeled = int((given >= 0).sum())
    flops, nbytes = work(rows, labeled)
    extra = info("propagate tool", size_of(rows, labeled), "peer:faiss", peaks, flops, nbytes,
                 compute_dtype="float32", max_abs_err=err, label_disagreement=disagree, N=rows,
                 accuracy=accuracy(fn()[0], given, truth))
    measure(benchmark, fn, device, extra, rounds=1, warmup_rounds=0)


def label_spreading(folder, given):
    from sklearn.semi_supervised import LabelSpreading

    x = unit_rows_of(folder).numpy()
    return lambda: LabelSpreading(kernel="knn").fit(x, given).transduction_


def test_propagate_tool_label_spreading(benchmark, rows, dataset, device, peaks):
    folder, given, truth = dataset(CHECK_N, CHECK_FRACTION)
    check = accuracy(label_spreading(folder, given)(), given, truth)
    assert check > 0.5, f"label spreading labels {check:.1%} of the check case right"
    folder, given, truth = dataset(rows)
    fn = label_spreading(folder, given)
    labeled = int((given >= 0).sum())
    flops = gemm_cost(rows, rows, D)  # its brute-force kNN graph
    extra = info("propagate tool", size_of(rows, labeled), "peer:sklearn LabelSpreading(knn)", peaks, flops,
                 rows * D * 4, compute_dtype="float32", N=rows, check_accuracy=check,
                 accuracy=accuracy(fn(), given, truth))
    measure(benchmark, fn, torch.device("cpu"), extra, rounds=1, warmup_rounds=0)

"""``python -m llp.propagate`` end to end: a memory-mapped fp16 embedding file in, the
pseudo-label and confidence files out, the density pass and the propagation pass
together; against scikit-learn's ``LabelSpreading(kernel="knn")`` and a faiss
``IndexFlatIP`` kNN vote doing the same work. Select with ``-k propagate_tool``.

Data: N rows x D = 128 around 100 Gaussian cluster centres on the sphere (a row's
class is its cluster), fp16 on disk, 1% of the rows labeled at random. Sizes
(``--llp-size``): ``small`` (the CPU default, so CI stays fast) N = 50,000; ``large``
(and ``gpu``) N = 1,000,000, the tool's target case (10,000 labels). Label spreading
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
TOOL_N = {"small": 50_000, "large": 1_000_000, "gpu": 1_000_000}
SPREADING_N = {"small": 20_000, "large": 50_000, "gpu": 50_000}
CHECK_N, CHECK_FRACTION, FRACTION = 5_000, 0.02, 0.01


def spreading_n(config) -> int:
    return int(os.environ.get("LLP_BENCH_SPREADING_N", SPREADING_N[size_class(config)]))


def pytest_generate_tests(metafunc):
    if "rows" not in metafunc.fixturenames:
        return
    tool, spread = TOOL_N[size_class(metafunc.config)], spreading_n(metafunc.config)
    sizes = [spread] if metafunc.function.__name__.endswith("label_spreading") else sorted({tool, spread})
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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """``dataset(n, fraction)`` -> (folder with x.npy and y.npy, labels, truth), made once per n."""
    root = tmp_path_factory.mktemp("propagate_tool")
    made = {}

    def make(n: int, fraction: float = FRACTION):
        if (n, fraction) not in made:
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
                 max_abs_err=err, label_disagreement=disagree, N=rows,
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
                 max_abs_err=err, label_disagreement=disagree, N=rows, accuracy=accuracy(fn()[0], given, truth))
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
                 rows * D * 4, N=rows, check_accuracy=check, accuracy=accuracy(fn(), given, truth))
    measure(benchmark, fn, torch.device("cpu"), extra, rounds=1, warmup_rounds=0)

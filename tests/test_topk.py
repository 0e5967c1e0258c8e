"""Streaming top-k, local density and label propagation against the oracle."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from conftest import backend_cases, interpreted, unit_rows

SHAPES = [  # (Q, N, D, k)
    (1, 1, 64, 1),
    (3, 7, 64, 7),       # k == number of keys
    (5, 7, 64, 1),
    (20, 1000, 128, 25),
    (9, 4099, 256, 256),
    (7, 4099, 128, 4098),  # k just below N
    (1100, 300, 64, 10),   # more queries than one row block
]
SMALL_SHAPES = [(1, 1, 64, 1), (3, 7, 64, 7), (4, 150, 64, 9), (2, 70, 128, 64), (2, 300, 64, 256)]
KEY_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def k_limit(backend, device="cpu", D=128, dtype=torch.float32):
    """The largest k a backend declares for top-k (larger k is its clear error, tested below)."""
    from llp_kernels.registry import OPS, Call
    return OPS["topk_similarity"].limits[backend].max_k(Call(torch.device(device), dim=D, dtype=dtype))


def shapes_for(backend, device, key_dtype=torch.float32):
    """The shapes a backend admits for these keys (each shape's own D)."""
    shapes = SMALL_SHAPES if interpreted(backend, device) else SHAPES
    return [s for s in shapes if (k_limit(backend, device, s[2], key_dtype) or s[3]) >= s[3]]


def oracle_scores(q, keys, bias, tau=0.07):
    s = q.cpu().double() @ keys.cpu().double().T / tau
    return s if bias is None else s - bias.cpu().double()[None, :]


def check_topk(values, indices, scores64, k, atol):
    """Values sorted and close to the oracle's; each returned index really has its value;
    indices distinct; and where the k-th and (k+1)-th scores are well apart, the index
    set is exactly the oracle's."""
    values, indices = values.cpu(), indices.cpu()
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    assert values.shape == indices.shape == (scores64.shape[0], k)
    assert (values[:, 1:] <= values[:, :-1]).all(), "values not sorted descending"
    expected, _ = torch.topk(scores64, k, dim=1)
    torch.testing.assert_close(values.double(), expected, rtol=0, atol=atol)
    torch.testing.assert_close(torch.gather(scores64, 1, indices), values.double(),
                               rtol=0, atol=atol)
    assert all(len(set(row.tolist())) == k for row in indices), "repeated index in a row"
    if k < scores64.shape[1]:
        top = torch.topk(scores64, k + 1, dim=1)
        clear = (top.values[:, k - 1] - top.values[:, k]) > 10 * atol
        for row in torch.nonzero(clear).flatten().tolist():
            assert set(indices[row].tolist()) == set(top.indices[row, :k].tolist())


@pytest.mark.parametrize("key_dtype", KEY_DTYPES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_topk_matches_reference(backend, device, with_bias, key_dtype):
    g = torch.Generator().manual_seed(0)
    for Q, N, D, k in shapes_for(backend, device, key_dtype):
        q = unit_rows(Q, D, generator=g)
        keys = unit_rows(N, D, generator=g).to(key_dtype)
        bias = torch.randn(N, generator=g) if with_bias else None
        values, indices = lk.topk_similarity(q.to(device), keys.to(device), k,
                                             key_bias=None if bias is None else bias.to(device),
                                             backend=backend)
        check_topk(values, indices, oracle_scores(q, keys, bias), k, atol=2e-4)


@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_topk_key_counts_at_tile_boundaries(backend, device):
    """Key counts that are whole multiples of the common tile widths (16, 32, 64), one
    below and one above: kernels that stream whole tiles without row masks and finish the
    slice separately must agree with the reference on each."""
    g = torch.Generator().manual_seed(5)
    q = unit_rows(5, 64, generator=g)
    for N in (31, 32, 33, 64, 128, 129):
        keys = unit_rows(N, 64, generator=g)
        bias = torch.randn(N, generator=g)
        k = min(9, N)
        values, indices = lk.topk_similarity(q.to(device), keys.to(device), k, key_bias=bias.to(device),
                                             backend=backend)
        check_topk(values, indices, oracle_scores(q, keys, bias), k, atol=2e-4)


@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_topk_ties(backend, device):
    """Duplicate keys give equal scores: values still exact, indices among the tied ones,
    and on the cpu backend the lower index first."""
    g = torch.Generator().manual_seed(1)
    base = unit_rows(5, 64, generator=g)
    keys = base.repeat(8, 1)  # 40 keys, each score appears 8 times
    q = unit_rows(3, 64, generator=g)
    values, indices = lk.topk_similarity(q.to(device), keys.to(device), 12, backend=backend)
    scores = oracle_scores(q, keys, None)
    check_topk(values, indices, scores, 12, atol=2e-4)
    if backend == "cpu":
        for row in range(3):
            for a in range(11):
                if values[row, a] == values[row, a + 1]:
                    assert indices[row, a] < indices[row, a + 1]


@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_topk_with_infinite_bias_excludes_rows(backend, device):
    g = torch.Generator().manual_seed(2)
    q, keys = unit_rows(4, 64, generator=g), unit_rows(50, 64, generator=g)
    bias = torch.zeros(50)
    bias[::2] = float("inf")  # even rows excluded
    values, indices = lk.topk_similarity(q.to(device), keys.to(device), 10,
                                         key_bias=bias.to(device), backend=backend)
    assert (indices.cpu() % 2 == 1).all() and torch.isfinite(values).all()


@pytest.mark.parametrize("key_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_local_density_matches_reference(backend, device, key_dtype):
    g = torch.Generator().manual_seed(3)
    for M, U, D, t in ([(6, 30, 64, 25), (3, 25, 64, 25)] if interpreted(backend, device)
                       else [(50, 2000, 128, 25), (7, 25, 64, 25), (4, 1001, 256, 1)]):
        labeled = unit_rows(M, D, generator=g).to(key_dtype)
        unlabeled = unit_rows(U, D, generator=g).to(key_dtype)
        got = lk.local_density(labeled.to(device), unlabeled.to(device), t=t, backend=backend)
        expected = ref.local_density(labeled.double(), unlabeled.double(), t=t)
        assert got.dtype == torch.float32 and got.shape == (M,)
        torch.testing.assert_close(got.cpu().double(), expected, rtol=0, atol=2e-5 * 15)


@pytest.mark.parametrize("use_density", [True, False], ids=["density", "nodw"])
@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_propagate_labels_matches_reference(backend, device, use_density):
    g = torch.Generator().manual_seed(4)
    for Q, M, D, k, C in ([(8, 40, 64, 10, 4)] if interpreted(backend, device)
                          else [(200, 500, 128, 10, 10), (9, 10, 64, 10, 3), (5, 33, 64, 1, 5)]):
        q, labeled = unit_rows(Q, D, generator=g), unit_rows(M, D, generator=g)
        labels = torch.randint(0, C, (M,), generator=g)
        density = torch.randn(M, generator=g) if use_density else None
        got_label, got_conf = lk.propagate_labels(
            q.to(device), labeled.to(device), labels.to(device),
            None if density is None else density.to(device), k=k, num_classes=C, backend=backend)
        exp_label, exp_conf = ref.propagate_labels(q.double(), labeled.double(), labels,
                                                   None if density is None else density.double(),
                                                   k=k, num_classes=C)
        assert got_label.dtype == torch.int64 and got_conf.dtype == torch.float32
        torch.testing.assert_close(got_conf.cpu().double(), exp_conf, rtol=0, atol=1e-4)
        # Labels must agree wherever the winning class is not a near-tie.
        probs_sorted = _sorted_class_probs(q, labeled, labels, density, k, C)
        clear = (probs_sorted[:, 0] - probs_sorted[:, 1]) > 1e-4
        assert torch.equal(got_label.cpu()[clear], exp_label[clear])
        assert ((got_conf > 0) & (got_conf <= 1 + 1e-6)).all()


def _sorted_class_probs(q, labeled, labels, density, k, C):
    scores = q.double() @ labeled.double().T / 0.07
    if density is not None:
        scores = scores - density.double()[None, :]
    top, idx = torch.topk(scores, k, dim=1)
    votes = torch.zeros(q.shape[0], C, dtype=torch.float64)
    votes.scatter_add_(1, labels[idx], torch.exp(top - top[:, :1]))
    return torch.sort(votes / votes.sum(1, keepdim=True), dim=1, descending=True).values \
        if C > 1 else torch.cat([torch.ones(q.shape[0], 1), torch.zeros(q.shape[0], 1)], 1)


def test_density_weighting_penalises_dense_labeled_points():
    """Paper section 3: dividing by the local density shifts votes away from labeled
    points in dense regions. A labeled point sitting in a tight cluster of unlabeled rows
    wins a far query under plain kNN but loses it once weighted by density."""
    d = 64
    e = torch.eye(d)
    dense_label = e[0]
    sparse_label = torch.nn.functional.normalize(e[0] * 0.2 + e[1], dim=0)
    unlabeled = torch.nn.functional.normalize(
        torch.cat([e[0] + 0.01 * torch.randn(40, d), e[2] + 0.01 * torch.randn(40, d)]), dim=1)
    labeled = torch.stack([dense_label, sparse_label])
    labels = torch.tensor([0, 1])
    query = torch.nn.functional.normalize(e[0] * 0.55 + e[1] * 0.45, dim=0)[None]
    log_density = lk.local_density(labeled, unlabeled, t=25)
    assert log_density[0] > log_density[1]
    plain, _ = lk.propagate_labels(query, labeled, labels, None, k=2)
    weighted, _ = lk.propagate_labels(query, labeled, labels, log_density, k=2)
    assert plain.item() == 0 and weighted.item() == 1


@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_k_limit_is_a_clear_error(backend, device):
    limit = k_limit(backend, device, D=64)
    if limit is None:
        pytest.skip(f"{backend} takes any k <= N")
    q, keys = unit_rows(1, 64).to(device), unit_rows(limit + 1, 64).to(device)
    with pytest.raises(ValueError, match=f"backend='{backend}' cannot run topk_similarity: "
                                         f"it supports k <= {limit} .*got k={limit + 1}"):
        lk.topk_similarity(q, keys, limit + 1, backend=backend)
    if not interpreted(backend, device):  # the limit itself works (too slow to interpret)
        values, _ = lk.topk_similarity(q, keys, limit, backend=backend)
        assert values.shape == (1, limit)

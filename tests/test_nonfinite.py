"""The one rule for non-finite values, on every backend: a NaN (or inf) in queries, keys,
the bank, a bias or an embedding is never checked for and makes NaN exactly the outputs
it touches; a top-k ranks NaN scores below every number, so the finite neighbours it
returns never change. Each case puts a NaN in one position and compares with the oracle
and with the answer on the same inputs without the poisoned entry."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref
from llp_kernels.ops._similarity import logits

from conftest import backend_cases, unit_rows

NAN = float("nan")
Q, N, D, K = 4, 70, 32, 5


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return unit_rows(Q, D, generator=g), unit_rows(N, D, generator=g), torch.randn(N, generator=g)


def same(a, b):
    """Equal, NaN where the other is NaN."""
    a, b = a.double().cpu(), b.double().cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), (a, b)
    torch.testing.assert_close(torch.nan_to_num(a), torch.nan_to_num(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("where", ["first key", "key beyond k", "bias", "query"])
@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_topk_ranks_nan_last_and_keeps_the_finite_neighbours(backend, device, where):
    q, keys, bias = inputs()
    clean_v, clean_i = ref.topk_similarity(q, keys, K, key_bias=bias)
    if where == "first key":
        keys[clean_i[0, 0], 0] = NAN
    elif where == "key beyond k":
        keys[clean_i[0, -1] + 1 if clean_i[0, -1] + 1 < N else 0, 3] = NAN
    elif where == "bias":
        bias[clean_i[1, 0]] = NAN
    else:
        q[2, 0] = NAN
    v, i = lk.topk_similarity(q.to(device), keys.to(device), K, key_bias=bias.to(device), backend=backend)
    want_v, want_i = ref.topk_similarity(q, keys, K, key_bias=bias)
    same(v, want_v)
    assert torch.equal(i.cpu(), want_i)
    for row in range(Q):
        if where == "query" and row == 2:
            assert torch.isnan(v[row]).all() and i[row].tolist() == list(range(K))
            continue
        poisoned = set(torch.nonzero(~torch.isfinite(keys).all(1) | torch.isnan(bias)).flatten().tolist())
        finite = [j for j in ref.rank_descending(logits(q[row:row + 1], keys, 0.07) - bias)[0].tolist()
                  if j not in poisoned][:K]
        assert i[row].tolist() == finite, f"row {row}: finite neighbours changed"


@pytest.mark.parametrize("where", ["query", "bank row, other label", "bank row, same label"])
@pytest.mark.parametrize("backend,device", backend_cases("aggregation_lse"))
def test_aggregation_nan_reaches_exactly_the_rows_it_touches(backend, device, where):
    q, bank, _ = inputs(1)
    bank_labels = torch.arange(N) % 3
    query_labels = torch.tensor([0, 1, 2, 0])
    if where == "query":
        q[1, 5] = NAN
    elif where == "bank row, other label":
        bank[1, 0] = NAN  # label 1
    else:
        bank[0, 0] = NAN  # label 0
    lse_all, lse_same = lk.aggregation_lse(q.to(device), bank.to(device), bank_labels.to(device),
                                           query_labels.to(device), backend=backend)
    want_all, want_same = ref.aggregation_lse(q, bank, bank_labels, query_labels)
    same(lse_all, want_all)
    same(lse_same, want_same)
    nan_rows = {"query": [1], "bank row, other label": [1], "bank row, same label": [0, 3]}[where]
    assert torch.isnan(lse_same.cpu()).nonzero().flatten().tolist() == nan_rows
    assert torch.isnan(lse_all.cpu()).all() if where != "query" else torch.isnan(lse_all.cpu()).tolist() == [False, True, False, False]


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_aggregation_grad_zero_without_positives_nan_for_other_non_finite(backend, device):
    q, bank, _ = inputs(2)
    bank_labels = torch.arange(N) % 3
    query_labels = torch.tensor([0, 1, 2, 0])
    lse_all = torch.tensor([20.0, NAN, 21.0, float("inf")])
    lse_same = torch.tensor([19.0, 19.0, float("-inf"), 19.0])
    g = lk.aggregation_grad(q.to(device), bank.to(device), bank_labels.to(device), query_labels.to(device),
                            lse_all.to(device), lse_same.to(device), backend=backend).cpu()
    want = ref.aggregation_grad(q, bank, bank_labels, query_labels, lse_all, lse_same)
    same(g, want)
    assert torch.isfinite(g[0]).all() and torch.isnan(g[1]).all() and (g[2] == 0).all() and torch.isnan(g[3]).all()


@pytest.mark.parametrize("backend,device", backend_cases("topk_similarity"))
def test_propagation_of_a_nan_query_is_label_minus_one(backend, device):
    q, labeled, _ = inputs(3)
    q[0, 0] = NAN
    labels = torch.arange(N) % 4
    got_l, got_c = lk.propagate_labels(q.to(device), labeled.to(device), labels.to(device), None, k=K,
                                       backend=backend)
    want_l, want_c = ref.propagate_labels(q, labeled, labels, None, k=K)
    assert torch.equal(got_l.cpu(), want_l) and got_l[0] == -1
    same(got_c, want_c)
    assert torch.isnan(got_c[0]) and torch.isfinite(got_c[1:].cpu()).all()


@pytest.mark.parametrize("value", [NAN, float("inf")])
@pytest.mark.parametrize("backend,device", backend_cases("update_memory_bank_"))
def test_bank_update_with_a_non_finite_embedding_writes_a_nan_row(backend, device, value):
    bank = unit_rows(10, D).to(device)
    emb = unit_rows(3, D, generator=torch.Generator().manual_seed(4)).to(device)
    emb[1, 2] = value
    want = ref.update_memory_bank_(bank.clone().cpu(), torch.tensor([4, 7, 1]), emb.cpu(), 0.5)
    lk.update_memory_bank_(bank, torch.tensor([4, 7, 1], device=device), emb, 0.5, backend=backend)
    same(bank, want)
    assert torch.isnan(bank[7]).all() and torch.isfinite(bank[[0, 1, 4]]).all()


@pytest.mark.parametrize("backend,device", backend_cases("update_memory_bank_"))
def test_bank_update_from_a_view_of_the_bank(backend, device):
    """Embeddings that alias the bank: every row mixes with the bank's old values."""
    bank = unit_rows(6, D).to(device)
    want = ref.update_memory_bank_(bank.clone(), torch.tensor([1, 0]).to(device), bank[:2].clone(), 0.5)
    lk.update_memory_bank_(bank, torch.tensor([1, 0], device=device), bank[:2], 0.5, backend=backend)
    torch.testing.assert_close(bank, want)

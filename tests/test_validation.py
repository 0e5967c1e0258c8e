"""Bad input: a TypeError/ValueError naming the argument, never a crash or a wrong answer."""
import pytest
import torch

import llp_kernels as lk

from conftest import unit_rows

BACKENDS = ["reference", "cpu"]


def agg_args(B=4, N=20, D=64):
    return dict(queries=unit_rows(B, D), bank=unit_rows(N, D),
                bank_labels=torch.randint(-1, 3, (N,)), query_labels=torch.randint(0, 3, (B,)))


AGG_CASES = [  # (override, exception, words the message must contain)
    (dict(bank=unit_rows(20, 32)), ValueError, ["bank", "D=64"]),
    (dict(queries=torch.randint(0, 3, (4, 64))), TypeError, ["queries", "float32"]),
    (dict(queries=unit_rows(4, 64).double()), TypeError, ["queries", "float64"]),
    (dict(queries=unit_rows(64, 1).flatten()), ValueError, ["queries", "2-D"]),
    (dict(queries=torch.empty(0, 64)), ValueError, ["queries", "non-empty"]),
    (dict(bank=torch.empty(0, 64), bank_labels=torch.empty(0, dtype=torch.int64)), ValueError,
     ["bank", "non-empty"]),
    (dict(query_labels=torch.tensor([0, 1, -1, 2])), ValueError, ["query_labels", ">= 0"]),
    (dict(bank_labels=torch.tensor([0, 1, -2, 2] * 5)), ValueError, ["bank_labels", ">= -1", "-2"]),
    (dict(query_labels=torch.tensor([0.0, 1.0, 1.0, 2.0])), TypeError, ["query_labels", "integer"]),
    (dict(query_labels=torch.tensor([0, 1, 2])), ValueError, ["query_labels", "4 entries"]),
    (dict(bank_labels=torch.zeros(19, dtype=torch.int64)), ValueError, ["bank_labels", "20"]),
    (dict(queries=[[0.0] * 64] * 4), TypeError, ["queries", "torch.Tensor"]),
    (dict(tau=0.0), ValueError, ["tau", "> 0"]),
    (dict(tau=float("nan")), ValueError, ["tau"]),
    (dict(tau="0.07"), TypeError, ["tau"]),
    (dict(backend="gpu"), ValueError, ["backend", "'gpu'"]),
    (dict(backend="cuda"), ValueError, ["cuda"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override,exc,words", AGG_CASES)
def test_aggregation_loss_rejects(backend, override, exc, words):
    kwargs = {**agg_args(), "backend": backend, **override}
    with pytest.raises(exc) as info:
        lk.aggregation_loss(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_mixed_devices_named():
    meta = agg_args()
    meta["bank"] = meta["bank"].to("meta")
    with pytest.raises(ValueError, match="one device.*bank on meta"):
        lk.aggregation_loss(**meta)


def test_non_contiguous_inputs_are_accepted_and_correct():
    a = agg_args(B=4, N=30)
    q_nc = torch.cat([a["queries"], a["queries"]], dim=1)[:, ::2]  # stride 2
    bank_nc = a["bank"].T.contiguous().T  # column-major
    assert not q_nc.is_contiguous() and not bank_nc.is_contiguous()
    got = lk.aggregation_loss(q_nc, bank_nc, a["bank_labels"], a["query_labels"], backend="cpu")
    expected = lk.reference.aggregation_loss(q_nc, bank_nc, a["bank_labels"], a["query_labels"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


TOPK_CASES = [
    (dict(k=21), ValueError, ["k=21", "keys", "20"]),
    (dict(k=0), ValueError, ["k", ">= 1"]),
    (dict(k=2.0), TypeError, ["k", "int"]),
    (dict(k=True), TypeError, ["k", "int"]),
    (dict(keys=unit_rows(20, 16)), ValueError, ["keys", "D=64"]),
    (dict(key_bias=torch.zeros(19)), ValueError, ["key_bias", "20"]),
    (dict(key_bias=torch.zeros(20, dtype=torch.int64)), TypeError, ["key_bias", "float"]),
    (dict(queries=torch.empty(0, 64)), ValueError, ["queries", "non-empty"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override,exc,words", TOPK_CASES)
def test_topk_rejects(backend, override, exc, words):
    kwargs = {"queries": unit_rows(3, 64), "keys": unit_rows(20, 64), "k": 5,
              "backend": backend, **override}
    with pytest.raises(exc) as info:
        lk.topk_similarity(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_density_rejects_t_above_unlabeled(backend):
    with pytest.raises(ValueError, match="t=26 .*unlabeled"):
        lk.local_density(unit_rows(3, 64), unit_rows(25, 64), t=26, backend=backend)


PROP_CASES = [
    (dict(labeled_labels=torch.tensor([0, 1, 5, 2] * 5)), ValueError, ["labeled_labels", "< 3"]),
    (dict(labeled_labels=torch.tensor([0, 1, -1, 2] * 5)), ValueError, ["labeled_labels", ">= 0"]),
    (dict(num_classes=0), ValueError, ["num_classes"]),
    (dict(log_density=torch.zeros(7)), ValueError, ["log_density", "20"]),
    (dict(k=21), ValueError, ["k=21", "labeled"]),
    (dict(labeled=unit_rows(20, 32)), ValueError, ["labeled", "D=64"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override,exc,words", PROP_CASES)
def test_propagate_labels_rejects(backend, override, exc, words):
    kwargs = {"queries": unit_rows(3, 64), "labeled": unit_rows(20, 64),
              "labeled_labels": torch.tensor([0, 1, 2, 2] * 5), "log_density": torch.zeros(20),
              "k": 5, "num_classes": 3, "backend": backend, **override}
    with pytest.raises(exc) as info:
        lk.propagate_labels(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


BANK_CASES = [
    (dict(indices=torch.tensor([0, 10])), ValueError, ["indices", "< 10"]),
    (dict(indices=torch.tensor([-1, 2])), ValueError, ["indices", ">= 0"]),
    (dict(indices=torch.tensor([0, 1, 2])), ValueError, ["indices", "2"]),
    (dict(embeddings=unit_rows(2, 32)), ValueError, ["embeddings", "D=64"]),
    (dict(momentum=1.5), ValueError, ["momentum", "[0, 1]"]),
    (dict(bank=unit_rows(64, 10).T), ValueError, ["bank", "contiguous"]),
    (dict(bank=unit_rows(10, 64).double()), TypeError, ["bank", "float64"]),
    (dict(bank=torch.nn.Parameter(unit_rows(10, 64))), ValueError, ["bank", "require grad"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override,exc,words", BANK_CASES)
def test_update_memory_bank_rejects_and_leaves_bank_alone(backend, override, exc, words):
    kwargs = {"bank": unit_rows(10, 64), "indices": torch.tensor([0, 3]),
              "embeddings": unit_rows(2, 64), "backend": backend, **override}
    before = kwargs["bank"].clone()
    with pytest.raises(exc) as info:
        lk.update_memory_bank_(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"
    assert torch.equal(kwargs["bank"], before)


VOTE_CASES = [
    (dict(scores=torch.tensor([[5.0, 4, 3, 2, 1]])), ValueError, ["neighbour_labels", "shape", "(1, 5)"]),
    (dict(scores=torch.tensor([[5.0, 4], [3, 2]])), ValueError, ["neighbour_labels", "shape", "(2, 2)"]),
    (dict(neighbour_labels=torch.tensor([[5, 0]])), ValueError, ["neighbour_labels", "< 3", "5"]),
    (dict(neighbour_labels=torch.tensor([[-2, 0]])), ValueError, ["neighbour_labels", ">= -1", "-2"]),
    (dict(neighbour_labels=torch.tensor([[1.0, 0.0]])), TypeError, ["neighbour_labels", "integer"]),
    (dict(scores=torch.zeros(1, 0), neighbour_labels=torch.zeros(1, 0, dtype=torch.int64)), ValueError,
     ["scores", "K >= 1"]),
    (dict(scores=torch.tensor([5.0, 4.0]), neighbour_labels=torch.tensor([1, 0])), ValueError,
     ["scores", "2-D"]),
    (dict(scores=torch.tensor([[5, 4]])), TypeError, ["scores", "float"]),
    (dict(scores=[[5.0, 4.0]]), TypeError, ["scores", "torch.Tensor"]),
    (dict(num_classes=0), ValueError, ["num_classes", ">= 1"]),
    (dict(backend="gpu"), ValueError, ["backend", "'gpu'"]),
    (dict(backend="cuda"), ValueError, ["backend='cuda'", "cannot run on cpu"]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("override,exc,words", VOTE_CASES)
def test_class_vote_rejects(backend, override, exc, words):
    kwargs = {"scores": torch.tensor([[5.0, 4.0]]), "neighbour_labels": torch.tensor([[1, 0]]),
              "num_classes": 3, "backend": backend, **override}
    with pytest.raises(exc) as info:
        lk.class_vote(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


def test_a_backend_limit_is_refused_before_any_launch():
    """A backend's declared D and k limits: a call beyond them is refused before any launch
    with a ValueError naming the limit, and auto moves on to a backend that takes it."""
    from llp_kernels.registry import OPS, Call, resolve
    aggregation, topk = OPS["aggregation_lse"], OPS["topk_similarity"]
    triton = aggregation.limits["triton"]
    call = Call(torch.device("cpu"), dim=triton.max_dim + 16, dtype=torch.float32)
    assert f"D <= {triton.max_dim}" in aggregation.why_unusable("triton", call)
    limit = topk.limits["triton"].max_k(Call(torch.device("cpu"), dim=128, dtype=torch.bfloat16))
    call = Call(torch.device("cpu"), dim=128, k=limit + 1, dtype=torch.bfloat16)
    assert f"k <= {limit} for bfloat16 keys at D=128" in topk.why_unusable("triton", call)
    with pytest.raises(ValueError, match=f"supports D <= {triton.max_dim}"):
        lk.aggregation_lse(unit_rows(2, triton.max_dim + 16), unit_rows(5, triton.max_dim + 16),
                           torch.zeros(5, dtype=torch.int64), torch.zeros(2, dtype=torch.int64), backend="triton")
    assert resolve((topk,), "auto", Call(torch.device("cpu"), dim=64, k=5000)) == "cpu"

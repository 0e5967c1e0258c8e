"""``class_vote``: the vote of eq. 5 against a plain float64 count, the rule for
neighbours without a label (-1) and for non-finite scores, and the positional signature."""
import numpy as np
import pytest
import torch

import llp_kernels as lk

NAN = float("nan")


def numpy_vote(scores, labels):
    """float64, one row at a time: the weights of the neighbours with a label, by class."""
    out_label, out_conf = [], []
    for s, y in zip(np.asarray(scores, dtype=np.float64), np.asarray(labels)):
        voting = y >= 0
        if not voting.any():
            out_label.append(-1)
            out_conf.append(0.0)
            continue
        w = np.exp(s[voting] - s[voting].max())
        totals = {c: w[y[voting] == c].sum() for c in sorted(set(y[voting].tolist()))}
        best = max(totals, key=lambda c: (totals[c], -c))
        out_label.append(best)
        out_conf.append(totals[best] / w.sum())
    return np.array(out_label), np.array(out_conf)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_vote_matches_a_float64_count_in_any_order_with_unlabeled_neighbours(backend):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 12, generator=g, dtype=torch.float64).float() * 5
    labels = torch.randint(-1, 4, (300, 12), generator=g)
    labels[:5] = -1  # rows no label reaches
    got_label, got_conf = lk.class_vote(scores, labels, 4, backend=backend)
    want_label, want_conf = numpy_vote(scores.numpy(), labels.numpy())
    assert got_label.dtype == torch.int64 and got_conf.dtype == torch.float32
    assert np.array_equal(got_label.numpy(), want_label)
    np.testing.assert_allclose(got_conf.numpy(), want_conf, rtol=1e-6, atol=1e-7)


def test_minus_one_casts_no_vote():
    scores = torch.tensor([[9.0, 2.0, 1.0], [9.0, 8.0, 1.0], [3.0, 2.0, 1.0]])
    labels = torch.tensor([[-1, 1, 1], [-1, -1, 2], [-1, -1, -1]])
    label, conf = lk.class_vote(scores, labels)
    assert label.tolist() == [1, 2, -1]
    assert conf.tolist() == [1.0, 1.0, 0.0]  # no label reaches the last row: label -1, confidence 0


def test_a_non_finite_voting_score_gives_minus_one_and_nan():
    scores = torch.tensor([[NAN, 2.0], [NAN, 2.0], [float("inf"), 2.0]])
    labels = torch.tensor([[0, 1], [-1, 1], [0, 1]])
    label, conf = lk.class_vote(scores, labels)
    assert label.tolist() == [-1, 1, -1]
    assert torch.isnan(conf[0]) and conf[1] == 1.0 and torch.isnan(conf[2])


def test_positional_signature_and_narrow_dtypes():
    scores = torch.tensor([[2.0, 1.0, 0.5]])
    labels = torch.tensor([[1, 0, 1]], dtype=torch.int32)
    label, conf = lk.class_vote(scores.to(torch.bfloat16), labels, 2)
    want = (1.0 + np.exp(-1.5)) / (1.0 + np.exp(-1.0) + np.exp(-1.5))
    assert label.tolist() == [1] and abs(conf.item() - want) < 1e-6

"""``--method auto`` (llp.method.choice): the folds, the choice, and the Euclidean graph
that lets a diffusion see what cosine similarity cannot."""
import json

import numpy as np
import pytest
import torch

from llp.method import choice as method_choice, diffusion
from llp.propagate import command as propagate
from llp.method.estimator import LocalLabelPropagation
from llp.method.propagation import Settings


def test_folds_are_stratified_and_keep_lone_rows_labeled():
    classes = np.array([0] * 7 + [1] * 2 + [2] * 1 + [3] * 12)
    fold = method_choice.folds(classes)
    assert fold[9] == -1                                   # the only row of class 2
    for c, n in ((0, 7), (1, 2), (3, 12)):
        counts = np.bincount(fold[classes == c], minlength=method_choice.FOLDS)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.array_equal(fold, method_choice.folds(classes))


def test_euclidean_neighbours_are_the_nearest_rows():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(300, 8, generator=g) * torch.rand(300, 1, generator=g) * 5
    queries = keys[:40]
    ids, weights = diffusion.nearest(queries, keys, 6, Settings(method="diffusion", metric="euclidean",
                                                                 backend="reference"))
    want = torch.cdist(queries, keys).topk(6, largest=False).indices
    assert torch.equal(torch.sort(ids, dim=1).values, torch.sort(want, dim=1).values)
    assert torch.all(weights == 1)


def rings(n=600, seed=0, labeled_per_class=12):
    """Two concentric rings in 2-D plus noise dimensions: same directions, other radii."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, n)
    y = np.arange(n) % 2
    radius = np.where(y == 0, 1.0, 2.5) + 0.05 * rng.standard_normal(n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x = np.concatenate([x, 0.05 * rng.standard_normal((n, 4))], axis=1).astype(np.float32)
    given = np.full(n, -1)
    for c in (0, 1):
        given[rng.choice(np.flatnonzero(y == c), labeled_per_class, replace=False)] = c
    return x, given, y


def test_auto_finds_what_cosine_cannot_see():
    x, given, y = rings()
    model = LocalLabelPropagation(backend="cpu").fit(x, given)
    unlabeled = given < 0
    auto = (model.transduction_[unlabeled] == y[unlabeled]).mean()
    cosine = LocalLabelPropagation(method="llp", backend="cpu").fit(x, given)
    assert (cosine.transduction_[unlabeled] == y[unlabeled]).mean() < 0.7      # rings share directions
    assert model.chosen_["settings"]["metric"] == "euclidean" and auto > 0.95
    scores = model.chosen_["cross_validation_accuracy"]
    assert scores[model.chosen_["chosen"]] == max(scores.values())
    assert model.chosen_["cross_validated_rows"] == 24


def test_nothing_to_cross_validate_takes_the_first_candidate():
    x, given, y = rings(labeled_per_class=1)
    model = LocalLabelPropagation(backend="cpu").fit(x, given)
    assert model.chosen_["cross_validated_rows"] == 0 and model.chosen_["cross_validation_accuracy"] == {}
    assert model.chosen_["chosen"] == method_choice.DIFFUSION_CANDIDATES[0][0]


def test_large_inputs_choose_among_votes_only(monkeypatch):
    monkeypatch.setattr(method_choice, "DIFFUSION_ROWS", 100)
    x, given, y = rings()
    model = LocalLabelPropagation(backend="cpu").fit(x, given)
    assert set(model.chosen_["cross_validation_accuracy"]) == {n for n, _ in method_choice.VOTE_CANDIDATES}


def test_the_tool_reports_its_choice(tmp_path):
    x, given, y = rings()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", given)
    summary = propagate.main(["--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                              "--out", str(tmp_path / "out"), "--quiet"])
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["auto"]["chosen"] == summary["auto"]["chosen"]
    assert saved["auto"]["settings"]["method"] == "diffusion"
    labels = np.load(tmp_path / "out" / "pseudo_labels.npy")
    assert (labels[given < 0] == y[given < 0]).mean() > 0.95


def test_metric_is_for_the_diffusion_graph(tmp_path, capsys):
    x, given, _ = rings(n=100)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", given)
    with pytest.raises(SystemExit) as exc:
        propagate.main(["--embeddings", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                        "--out", str(tmp_path / "out"), "--method", "llp", "--metric", "euclidean"])
    assert exc.value.code == 2
    assert "--metric euclidean is for the diffusion graph only" in capsys.readouterr().err

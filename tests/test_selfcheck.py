"""The self-check (llp.train.selfcheck): the probe halves, the gate's arithmetic, the replicas a
run builds, and what a run records."""
import json

import pytest
import torch

from llp import train
from llp.train.build import build_run
from llp.train.config import TrainConfig
from llp.train.selfcheck import FLOOR, build_self_check, gate_of, posterior_gain, probe_folds


@pytest.mark.parametrize("folds", [2, 4])
def test_probe_folds_are_disjoint_stratified_and_leave_every_class_labeled(folds):
    y = torch.tensor([0] * 5 + [1] * 2 + [2] * 1 + [3] * 9)
    labeled = torch.ones(len(y), dtype=torch.bool)
    labeled[0] = False                      # class 0 has 4 labeled rows
    parts = [set(p.tolist()) for p in probe_folds(labeled, y, folds, seed=3)]
    assert sum(len(p) for p in parts) == len(set().union(*parts))          # disjoint
    assert 7 not in set().union(*parts)     # the single labeled row of class 2 is never a probe
    assert 0 not in set().union(*parts)     # unlabeled rows are never probes
    for c, n in ((0, 4), (1, 2), (3, 9)):
        rows = set(torch.nonzero((y == c) & labeled).flatten().tolist())
        sizes = sorted(len(rows & p) for p in parts)
        assert sum(sizes) == n and sizes[-1] - sizes[0] <= 1                # dealt evenly
        for part in parts:                  # the replica holding this fold out keeps the rest labeled
            assert rows - part
    again = probe_folds(labeled, y, folds, seed=3)
    assert [sorted(p) for p in parts] == [sorted(p.tolist()) for p in again]


def test_gate_is_zero_without_evidence_and_follows_wins_and_losses():
    assert posterior_gain(0, 0) == pytest.approx(0.5)
    assert posterior_gain(7, 3) == pytest.approx(1 - posterior_gain(3, 7))
    assert gate_of(0, 0) == pytest.approx(max(0.0, (0.5 - FLOOR) / (1 - FLOOR)))
    gains = [gate_of(w, 10) for w in range(0, 40, 5)]
    assert gains == sorted(gains) and gains[0] == 0.0 and gains[-1] > 0.99
    assert gate_of(2, 1) < gate_of(20, 10)  # the same ratio with more evidence moves further
    assert all(0.0 <= gate_of(w, l) <= 1.0 for w in range(0, 60, 7) for l in range(0, 60, 11))


def _run(fraction=0.05, replicas=2, method="llp", folds=2):
    c = TrainConfig(labeled_fraction=fraction, self_check_replicas=replicas, method=method, quiet=True,
                    self_check_folds=folds)
    return build_run(c, torch.device("cpu"), None)


@pytest.mark.parametrize("folds", [2, 4])
def test_replicas_keep_the_runs_labeled_fraction_and_hold_one_fold_out(folds):
    main = _run(folds=folds)
    check = build_self_check(main, build_run)
    assert len(check.replicas) == 2
    labeled = main.state.labeled
    n_main, m_main = len(labeled), int(labeled.sum())
    probes = []
    for replica in check.replicas:
        state = replica.run.state
        n = len(state.labeled)
        assert abs(n - (m_main + (n_main - m_main) * (folds - 1) / folds)) <= 1
        assert not state.labeled[replica.probe].any()          # probes are unlabeled to the replica
        assert torch.equal(replica.run.train_y[replica.probe], replica.probe_y)
        assert set(replica.run.train_y[state.labeled].tolist()) == set(range(main.split.num_classes))
        probes.append(len(replica.probe))
    singletons = sum(1 for c in range(10) if int((main.train_y[labeled] == c).sum()) == 1)
    if folds == 2:                                             # every other labeled row is a probe once
        assert sum(probes) == m_main - singletons
    assert main.gate == pytest.approx(gate_of(0, 0))


def test_no_replicas_for_supervised_runs_or_when_switched_off():
    assert build_self_check(_run(replicas=0), build_run) is None
    assert build_self_check(_run(method="supervised"), build_run) is None
    assert len(build_self_check(_run(replicas=1), build_run).replicas) == 1
    assert len(build_self_check(_run(replicas=3, folds=4), build_run).replicas) == 3


def test_the_weight_scales_the_pseudo_labels_wherever_they_enter_the_loss():
    main = _run()
    state = main.state
    state.propagate()
    idx = torch.arange(64)
    emb = torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
    logits = torch.randn(64, 10)
    y, lab, conf = state.labels[idx], state.labeled[idx], state.confidence[idx]
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    everyone = main.state.bank.aggregation_loss(emb, y, state.labels)
    labeled_only = main.state.bank.aggregation_loss(emb, y, torch.where(state.labeled, state.labels, -1))
    assert lab.any() and (~lab).any()
    for u in (0.0, 0.25, 1.0):
        total, _, _ = state.loss(idx, emb, logits, unlabeled_weight=u)
        agg = torch.where(lab, (1 - u) * labeled_only + u * everyone, everyone)
        w = torch.where(lab, conf, u * conf)
        assert total.item() == pytest.approx((w * (ce + agg)).mean().item(), rel=1e-5)


def test_a_run_records_the_self_check_every_llp_epoch(tmp_path):
    train.main(["--quiet", "--run-dir", str(tmp_path / "r"), "--warmup-epochs", "3", "--epochs", "3",
                "--labeled-fraction", "0.05"])
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all("gate" not in l for l in lines[:3])
    for line in lines[3:]:
        assert 0.0 <= line["gate"] <= 1.0
        assert line["selfcheck_probes"] > 0
        for key in ("selfcheck_acc", "selfcheck_classifier_acc", "selfcheck_reference_acc"):
            assert 0.0 <= line[key] <= 1.0


def test_input_pseudo_labels_are_the_tools_propagation_and_stay_fixed(tmp_path):
    import numpy as np
    from llp.method.estimator import LocalLabelPropagation
    from llp.train.loop import start_llp, one_epoch

    c = TrainConfig(labeled_fraction=0.05, pseudo_labels="input", self_check_replicas=0, warmup_epochs=1,
                    epochs=2, quiet=True)
    run = build_run(c, torch.device("cpu"), None)
    start_llp(run)
    x = run.split.train_x.flatten(1).numpy()
    given = torch.where(run.state.labeled, run.train_y, -1).numpy()
    want = LocalLabelPropagation().fit(x, given).transduction_
    assert run.state.source == "input"
    assert np.array_equal(run.state.labels.numpy(), want)
    before = run.state.labels.clone()
    one_epoch(run, 1)                                   # an LLP epoch: no step re-propagates
    assert torch.equal(run.state.labels, before)


def test_auto_takes_the_source_more_accurate_on_the_probes(tmp_path):
    train.main(["--quiet", "--run-dir", str(tmp_path / "r"), "--warmup-epochs", "3", "--epochs", "6",
                "--labeled-fraction", "0.05", "--pseudo-labels", "auto"])
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][3:]
    for line in lines:
        assert line["source"] in ("propagation", "input")
        assert 0 <= line["selfcheck_bank_acc"] <= 1 and 0 <= line["selfcheck_input_acc"] <= 1
    # LLP epoch i trains on the source the three epochs before it found more accurate (a tie keeps it)
    for i in range(3, len(lines)):
        window = lines[i - 3:i]
        bank = sum(l["selfcheck_bank_acc"] for l in window) / 3
        inputs = sum(l["selfcheck_input_acc"] for l in window) / 3
        if bank != inputs:
            assert lines[i]["source"] == ("input" if inputs > bank else "propagation")


def test_inputs_too_large_to_propagate_over_are_refused():
    from llp.train.loop import INPUT_VALUES, input_propagation

    run = _run()
    run.split.input_shape = (INPUT_VALUES + 1,)
    with pytest.raises(ValueError, match="too many to propagate over"):
        input_propagation(run)


def test_auto_without_a_self_check_takes_the_inputs_labels():
    from llp.train.loop import start_llp

    run = build_run(TrainConfig(labeled_fraction=0.05, self_check_replicas=0, quiet=True), torch.device("cpu"), None)
    start_llp(run)
    assert run.config.pseudo_labels == "auto" and run.state.source == "input"

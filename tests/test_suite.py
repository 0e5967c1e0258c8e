"""The development suite (python -m llp.suite): its data sets are written the same way
every time, its tables say what they should, and a tiny suite runs end to end."""
import json

import numpy as np
import pytest

from llp.suite import __main__ as suite
from llp.suite import tables
from llp.suite.datasets import SUITE


@pytest.mark.parametrize("name", [n for n, d in SUITE.items() if d.kind == "features" and n != "digits-embedding"])
def test_feature_sets_are_written_identically_every_time(tmp_path, name):
    for folder in ("a", "b"):
        SUITE[name].prepare(tmp_path / folder)
    x, y = np.load(tmp_path / "a" / "X.npy"), np.load(tmp_path / "a" / "y.npy")
    assert x.dtype == np.float32 and x.ndim == 2 and y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert np.isfinite(x).all() and y.min() == 0
    assert np.array_equal(x, np.load(tmp_path / "b" / "X.npy")) and np.array_equal(y, np.load(tmp_path / "b" / "y.npy"))
    assert SUITE[name].train_flags(tmp_path / "a")[:2] == ["--features", str(tmp_path / "a" / "X.npy")]


def test_the_image_folder_has_every_digit():
    from pathlib import Path
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        SUITE["digits-distorted"].prepare(Path(d))
        counts = [len(list((Path(d) / "images" / str(c)).glob("*.png"))) for c in range(10)]
        assert sum(counts) == 1797 and min(counts) > 170


def _results():
    run = lambda top1, **kw: {"test_top1": top1, **kw}
    return {"fractions": ["0.02"], "seeds": [3, 4],
            "train": {"d": {"llp": {"0.02": {"3": run(0.8, pseudo_acc=[0.6, 0.7], selfcheck_acc=[0.5, 0.8],
                                                         gate=[0.0, 1.0]),
                                             "4": run(0.9, pseudo_acc=[0.7, 0.9], selfcheck_acc=[0.7, 0.9],
                                                  gate=[0.5, 1.0])}},
                            "supervised": {"0.02": {"3": run(0.7), "4": run(0.7)}}}},
            "all_labels": {"d": {"3": 0.99, "4": 0.97}}}


def test_tables_give_means_differences_and_the_estimates_error():
    table = tables.accuracy_table(_results())
    assert "| d | llp | 85.0 ± 7.1 |" in table
    assert "| d | **LLP − supervised** | **15.0 ± 7.1** |" in table
    assert "| d | supervised, all labels | 98.0 ± 1.4 |" in table
    check = tables.selfcheck_table(_results())
    # first epoch 65 -> last 80; estimate 60 -> 85; |error| (0.1, 0.1) and (0, 0) -> 5.0 ± 7.1; gate 1.0 at the end
    assert "| d | 2% | 65.0 ± 7.1 → 80.0 ± 14.1 | 60.0 ± 14.1 → 85.0 ± 7.1 | 5.0 ± 7.1 | 1.0 ± 0.0 |" in check


def test_summary_and_propagation_gap_tables():
    summary = tables.summary_table(_results())
    # means 85 / 70, per-seed differences 10 and 20 -> +15.0 ± 7.1
    assert "| d | 85.0 / 70.0 (+15.0 ± 7.1) | 98.0 ± 1.4 |" in summary
    results = _results()
    acc = lambda a: {"accuracy": a}
    results["propagation"] = {sp: {"d": {"tool default": {"0.02": {"3": acc(0.9), "4": acc(0.8)}},
                                         "LabelSpreading knn": {"0.02": {"3": acc(0.85), "4": acc(0.85)}}}}
                              for sp in ("raw", "embedding")}
    gap = tables.propagation_gap_table(results)
    assert gap.splitlines()[0] == "| data set | 2% raw | 2% embedding |"
    assert "| d | +0.0 ± 7.1 | +0.0 ± 7.1 |" in gap


def test_a_tiny_suite_runs_end_to_end(tmp_path):
    results = suite.main(["--datasets", "wine", "--fractions", "0.1", "--seeds", "0", "--data", str(tmp_path / "data"),
                          "--out", str(tmp_path / "out"), "--jobs", "1",
                          "--train-flags", "--warmup-epochs 2 --epochs 2 --lr-drops 1"])
    assert set(results["train"]["wine"]) == {"llp", "supervised"}
    assert set(results["propagation"]) == {"raw", "embedding"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["train"]["wine"]["llp"]["0.1"]["0"]["test_top1"] == results["train"]["wine"]["llp"]["0.1"]["0"]["test_top1"]
    for name in ("table.md", "accuracy.png", "selfcheck.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    again = suite.main(["--datasets", "wine", "--fractions", "0.1", "--seeds", "0", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "out"), "--jobs", "1", "--no-propagation",
                        "--train-flags", "--warmup-epochs 2 --epochs 2 --lr-drops 1"])
    assert again["train"] == results["train"]                  # cached: nothing trained again
    with pytest.raises(SystemExit, match="made with other flags"):
        suite.main(["--datasets", "wine", "--fractions", "0.1", "--seeds", "0", "--data", str(tmp_path / "data"),
                    "--out", str(tmp_path / "out"), "--jobs", "1", "--no-propagation",
                    "--train-flags", "--warmup-epochs 3 --epochs 2 --lr-drops 1"])

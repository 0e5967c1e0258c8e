"""Every bad input the trainer can be given is one line, ``error: ...``, and exit status
2, before the run directory is touched; features of any magnitude train as they would at
a normal one."""
import numpy as np
import pytest
import torch

from llp import train
from llp.train.data import load_feature_split

N, F, C = 120, 6, 3


def features(folder):
    g = np.random.default_rng(0)
    y = np.arange(N) % C
    x = (g.normal(size=(N, F)) + 3 * np.eye(C, F)[y]).astype(np.float32)
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    return x, y


def bad_inputs(folder):
    x, y = features(folder)
    big = y.copy()
    big[7] = 10 ** 9
    np.save(folder / "billion.npy", big)
    np.save(folder / "none.npy", np.zeros((0, F), np.float32))
    np.save(folder / "no_labels.npy", np.zeros(0, np.int64))
    np.save(folder / "complex.npy", x.astype(np.complex64) + 1j)
    np.save(folder / "two.npy", x[:2])
    np.save(folder / "two_labels.npy", np.array([0, 1]))
    np.save(folder / "huge.npy", x.astype(np.float64) * 1e300)
    (folder / "words.txt").write_text("1 2 abc\n")
    (folder / "a_dir").mkdir()
    (folder / "a_file").write_text("")
    (folder / "gone").symlink_to(folder / "nowhere")


CASES = [
    (["--labels", "billion.npy"], "--labels holds class id 1000000000 at row 7: class ids must lie in [0, 1048576)"),
    (["--tau", "nan"], "--tau must be a finite number > 0, got nan"),
    (["--tau", "1e-9"], "--tau must be >= 1e-06 (smaller temperatures overflow fp32 exponentials), got 1e-09"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--rate-jump-lr", "inf"], "--rate-jump-lr must be a finite number > 0, got inf"),
    (["--momentum", "nan"], "--momentum must be a finite number >= 0, got nan"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
    (["--ramp-up-epochs", "nan"], "--ramp-up-epochs must be a finite number >= 0, got nan"),
    (["--bank-momentum", "nan"], "--bank-momentum must lie in [0, 1], got nan"),
    (["--feature-noise", "nan"], "--feature-noise must be a finite number >= 0, got nan"),
    (["--self-check-folds", "1"], "--self-check-folds must be >= 2, got 1"),
    (["--self-check-replicas", "3"], "--self-check-replicas must lie in [0, --self-check-folds = 2], got 3"),
    (["--pseudo-labels", "magic"], "--pseudo-labels: invalid choice"),
    (["--arch", "vgg"], "--arch: invalid choice"),
    (["--seed", "-1"], "--seed must lie in [0, 2**32), got -1"),
    (["--batch-size", "1"], "--batch-size must be >= 2 (batch norm cannot train on one row), got 1"),
    (["--features", "none.npy", "--labels", "no_labels.npy"], "--features must have at least one row and one column"),
    (["--features", "a_dir"], "--features {}/a_dir is a directory, not a file"),
    (["--labeled-list", "a_dir"], "--labeled-list {}/a_dir is a directory, not a file"),
    (["--labeled-list", "words.txt"], "--labeled-list {}/words.txt must list row positions (integers), found 'abc'"),
    (["--features", "complex.npy"], "--features must be a real (integer or float) [N, F] array, got shape (120, 6) of complex64"),
    (["--features", "two.npy", "--labels", "two_labels.npy"], "no training row is left"),
    (["--run-dir", "a_file/run"], "cannot write {}/a_file/run: Not a directory"),
    (["--run-dir", "a_file"], "--run-dir {}/a_file exists and is not a directory"),
    (["--run-dir", "gone"], "--run-dir {}/gone is a symbolic link to {}/nowhere, which does not exist"),
    (["--export-embeddings", "a_file"], "--export-embeddings {}/a_file exists and is not a directory"),
    (["--backend", "cuda"], "--backend cuda: backend='cuda' cannot run aggregation_lse: "),
    (["--lr", "1e30"], "training diverged in epoch 2: its loss is nan (lower --lr); {}/run keeps the checkpoint"),
]


@pytest.mark.parametrize("flags,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, flags, message):
    if flags == ["--backend", "cuda"] and torch.cuda.is_available():
        pytest.skip("the cuda backend runs here")
    bad_inputs(tmp_path)
    args = {"--features": "x.npy", "--labels": "y.npy", "--run-dir": "run"}
    rest = []
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[flag] = value
        else:
            rest += [flag, str(tmp_path / value) if flag.endswith(("list", "embeddings")) else value]
    argv = [a for flag, value in args.items() for a in (flag, str(tmp_path / value))]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as info:
        train.main(["--quiet", "--epochs", "1", "--warmup-epochs", "1", "--batch-size", "32", *argv, *rest])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(tmp_path, tmp_path) in err, err
    if "diverged" in message:  # the last good epoch's checkpoint stays
        assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_features_at_any_magnitude_standardise_alike(tmp_path):
    x, y = features(tmp_path)
    want = load_feature_split(str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), 0.5, 0)
    for scaled in (x * np.float32(1e30), x * np.float32(1e-30), x.astype(np.float64) * 1e300):
        np.save(tmp_path / "s.npy", scaled)
        got = load_feature_split(str(tmp_path / "s.npy"), str(tmp_path / "y.npy"), 0.5, 0)
        torch.testing.assert_close(got.train_x, want.train_x, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.test_x, want.test_x, rtol=1e-4, atol=1e-4)


def test_a_last_step_of_one_row_is_dropped(tmp_path):
    """The MLP's batch norm cannot train on one row: 97 training rows in steps of 32 leave
    one row over, and the epoch trains on the other 96."""
    x, y = features(tmp_path)
    np.save(tmp_path / "x.npy", np.concatenate([x, x[:1]]))  # 121 rows: 24 test, 97 training
    np.save(tmp_path / "y.npy", np.concatenate([y, y[:1]]))
    record = train.main(["--quiet", "--features", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                         "--run-dir", str(tmp_path / "run"), "--method", "supervised", "--labeled-fraction", "1",
                         "--test-fraction", "0.2", "--batch-size", "32", "--epochs", "1"])
    assert record["epoch"] == 1

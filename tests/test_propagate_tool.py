"""``python -m llp.propagate`` and ``LocalLabelPropagation``: the streamed propagation
agrees with ``llp_kernels.reference`` (llp, knn, ratio) and with a dense solve
(diffusion); 16-bit files; the scikit-learn estimator checks; bad input is one line and
leaves the output directory as it was; two gloo processes give what one gives; and the
trainer's exported embeddings feed the tool."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import llp_kernels as lk
from llp_kernels import reference as ref

from conftest import unit_rows
from process_groups import gloo_threads
from llp.propagate import command as propagate
from llp.method.distributed import Group, setup, teardown
from llp.method.estimator import LocalLabelPropagation
from llp.method.propagation import Comm

REPO = Path(__file__).resolve().parents[1]
N, D, C, LABELED, TAU = 500, 16, 5, 40, 0.07
OUTPUTS = {"pseudo_labels.npy", "confidence.npy", "summary.json"}


def clustered(n=N, d=D, classes=C, labeled=LABELED, seed=0, noise=1.2):
    """Rows [n, d] around ``classes`` unit centres, their true classes, and labels with
    -1 everywhere but ``labeled`` random rows (every class labeled at least once)."""
    g = torch.Generator().manual_seed(seed)
    centres = unit_rows(classes, d, generator=g)
    truth = torch.randint(0, classes, (n,), generator=g)
    truth[:classes] = torch.arange(classes)
    x = centres[truth] + noise * torch.randn(n, d, generator=g, dtype=torch.float64).float() / d ** 0.5
    labels = torch.full((n,), -1)
    pick = torch.cat([torch.arange(classes), classes + torch.randperm(n - classes, generator=g)[:labeled - classes]])
    labels[pick] = truth[pick]
    return x.numpy().astype(np.float32), labels.numpy(), truth.numpy()


def write(tmp_path, name="data", **kw):
    x, labels, truth = clustered(**kw)
    folder = tmp_path / name
    folder.mkdir()
    for stem, array in (("x", x), ("y", labels), ("t", truth)):
        np.save(folder / f"{stem}.npy", array)
    return folder


def cli(folder, out, *flags):
    return propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                           "--out", str(out), "--quiet", *flags])


def outputs(out):
    return np.load(out / "pseudo_labels.npy"), np.load(out / "confidence.npy")


def reference_vote(x, labels, method, k=10, t=25):
    """What the tool must write, from the plain materialising reference on every row at once."""
    xn = torch.nn.functional.normalize(torch.from_numpy(x).float(), dim=1)
    lab = torch.from_numpy(labels)
    known = lab >= 0
    labeled, unlabeled = xn[known], xn[~known]
    bias = None
    if method == "llp":
        bias = ref.local_density(labeled, unlabeled, t, TAU)
    if method == "ratio":  # P_R = P * M / (N - M): a constant factor on every labeled row
        bias = torch.full((int(known.sum()),), -math.log(known.sum().item() / (~known).sum().item()))
    got_labels, got_conf = ref.propagate_labels(unlabeled, labeled, lab[known], bias, k, TAU, int(lab.max()) + 1)
    want_labels, want_conf = lab.clone(), torch.ones(len(lab))
    want_labels[~known], want_conf[~known] = got_labels, got_conf
    return want_labels.numpy(), want_conf.numpy()


@pytest.mark.parametrize("method", ["llp", "knn", "ratio"])
def test_streamed_vote_matches_the_reference(tmp_path, method):
    folder = write(tmp_path)
    summary = cli(folder, tmp_path / "out", "--method", method, "--chunk-rows", "64", "--backend", "cpu")
    labels, conf = outputs(tmp_path / "out")
    x, y, truth = clustered()
    want_labels, want_conf = reference_vote(x, y, method)
    assert np.array_equal(labels, want_labels)
    np.testing.assert_allclose(conf, want_conf, atol=1e-5, rtol=0)
    assert labels.dtype == np.int64 and conf.dtype == np.float32
    assert {p.name for p in (tmp_path / "out").iterdir()} == OUTPUTS
    assert summary["labeled"] == LABELED and summary["unlabeled"] == N - LABELED
    assert sum(summary["pseudo_labeled_per_class"]) == N - LABELED
    assert (summary["density_count_r"] is None) == (method != "llp")
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["flags"]["method"] == method and on_disk["timings_s"]["propagation"] >= 0


def dense_diffusion(x, labels, graph_k=10, gamma=3.0, alpha=0.9, metric="cosine"):
    """Diffusion on the dense similarity matrix, solved exactly: labels [N], confidences [N]."""
    if metric == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = (xn @ xn.T).astype(np.float64)
    else:
        x64 = x.astype(np.float64)
        s = -((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(s, -np.inf)
    a = np.zeros_like(s)
    for i, row in enumerate(s):
        nearest = np.argsort(-row)[:graph_k]
        a[i, nearest] = np.maximum(row[nearest], 0) ** gamma if metric == "cosine" else 1.0
    w = a + a.T
    d = 1 / np.sqrt(w.sum(axis=1))
    w_n = d[:, None] * w * d[None, :]
    y = np.zeros((len(x), labels.max() + 1))
    for c in range(y.shape[1]):
        y[labels == c, c] = 1 / (labels == c).sum()
    f = np.maximum(np.linalg.solve(np.eye(len(x)) - alpha * w_n, y), 0)
    p = f / f.sum(axis=1, keepdims=True)
    known = labels >= 0
    return np.where(known, labels, p.argmax(axis=1)), np.where(known, 1.0, p.max(axis=1))


@pytest.mark.parametrize("flags,kwargs", [([], {}), (["--graph-k", "50", "--alpha", "0.99"], dict(graph_k=50, alpha=0.99)),
                                          (["--metric", "euclidean"], dict(metric="euclidean"))])
def test_diffusion_matches_a_dense_solve(tmp_path, flags, kwargs):
    folder = write(tmp_path, n=300)
    cli(folder, tmp_path / "out", "--method", "diffusion", "--chunk-rows", "50", "--cg-iters", "2000",
        "--cg-tol", "1e-12", *flags)
    labels, conf = outputs(tmp_path / "out")
    x, y, _ = clustered(n=300)
    want_labels, want_conf = dense_diffusion(x, y, **kwargs)
    assert np.array_equal(labels, want_labels)
    np.testing.assert_allclose(conf, want_conf, atol=1e-4)


def test_half_precision_files(tmp_path):
    folder = write(tmp_path)
    x = np.load(folder / "x.npy")
    np.save(folder / "x16.npy", x.astype(np.float16))
    bf16 = torch.from_numpy(x).bfloat16()
    np.save(folder / "xbf16.npy", bf16.view(torch.int16).numpy().view(np.uint16))
    for name, flags, rounded in (("x16.npy", [], x.astype(np.float16).astype(np.float32)),
                                 ("xbf16.npy", ["--dtype", "bfloat16"], bf16.float().numpy())):
        out = tmp_path / name
        summary = propagate.main(["--embeddings", str(folder / name), "--labels", str(folder / "y.npy"),
                                  "--out", str(out), "--quiet", "--chunk-rows", "128", "--method", "llp", *flags])
        labels, conf = outputs(out)
        want_labels, want_conf = reference_vote(rounded, np.load(folder / "y.npy"), "llp")
        assert np.array_equal(labels, want_labels), name
        np.testing.assert_allclose(conf, want_conf, atol=1e-5)
        assert summary["dtype"] == ("bfloat16" if flags else "float16")


def test_evaluation_plot_and_labeled_list(tmp_path):
    folder = write(tmp_path)
    summary = cli(folder, tmp_path / "out", "--eval-labels", str(folder / "t.npy"), "--plot")
    _, y, truth = clustered()
    labels, conf = outputs(tmp_path / "out")
    unlabeled = y < 0
    ev = summary["eval"]
    assert ev["rows"] == unlabeled.sum()
    assert ev["top1"] == pytest.approx((labels[unlabeled] == truth[unlabeled]).mean())
    assert 0.5 < ev["balanced_accuracy"] <= 1
    assert [d["decile"] for d in ev["deciles"]] == list(range(1, 11))
    assert sum(d["rows"] for d in ev["deciles"]) == ev["rows"]
    assert all(a["max_confidence"] <= b["min_confidence"] for a, b in zip(ev["deciles"], ev["deciles"][1:]))
    assert summary["mean_confidence"] == pytest.approx(conf[unlabeled].mean(), rel=1e-5)
    assert (tmp_path / "out" / "confidence_accuracy.png").stat().st_size > 1000
    # --labeled-list: positions of the labeled rows, their classes from --labels (here the truth)
    np.savetxt(tmp_path / "list.txt", np.flatnonzero(y >= 0), fmt="%d")
    propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "t.npy"), "--labeled-list",
                    str(tmp_path / "list.txt"), "--out", str(tmp_path / "listed"), "--quiet"])
    assert np.array_equal(outputs(tmp_path / "listed")[0], labels)


def test_without_a_terminal_a_line_per_chunk_on_stdout_and_nothing_on_stderr(tmp_path, capsys):
    folder = write(tmp_path)
    propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                    "--out", str(tmp_path / "out"), "--method", "llp", "--chunk-rows", "128"])
    captured = capsys.readouterr()
    assert captured.err == "" and "pseudo-labeled" in captured.out
    lines = [line for line in captured.out.splitlines() if line.startswith(("density:", "propagation:"))]
    chunks = -(-N // 128)
    assert len(lines) == 2 * chunks
    assert lines[chunks - 1].startswith(f"density: {N - LABELED:,}/{N - LABELED:,} rows (100.0%)") or \
        lines[chunks - 1].startswith(f"density: {N:,}/{N:,} rows (100.0%)")
    assert lines[-1].startswith(f"propagation: {N:,}/{N:,} rows (100.0%), ") and "rows/s" in lines[-1]
    assert "left 0:00" in lines[-1]
    propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                    "--out", str(tmp_path / "out"), "--quiet"])
    assert capsys.readouterr() == ("", "")


def test_progress_bar_on_a_terminal(tmp_path, capsys, monkeypatch):
    folder = write(tmp_path)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    propagate.main(["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"),
                    "--out", str(tmp_path / "out"), "--chunk-rows", "100", "--method", "llp"])
    err = capsys.readouterr().err
    assert "density" in err and "propagation" in err and "row/s" in err


def float64_vote(x, labels, k=10, t=25):
    """The llp vote in float64 from rows normalised in float64 (scaled first: no overflow)."""
    x = torch.from_numpy(np.asarray(x, dtype=np.float64))
    scale = x.abs().amax(dim=1, keepdim=True)
    x = x / torch.where(scale > 0, scale, 1.0)
    norm = x.norm(dim=1, keepdim=True)
    xn = x / torch.where(norm > 0, norm, 1.0)
    lab = torch.from_numpy(labels)
    known = lab >= 0
    density = ref.local_density(xn[known], xn[~known], t, TAU)
    got_labels, got_conf = ref.propagate_labels(xn[~known], xn[known], lab[known], density, k, TAU)
    want_labels, want_conf = lab.clone(), torch.ones(len(lab), dtype=torch.float64)
    want_labels[~known], want_conf[~known] = got_labels, got_conf
    return want_labels.numpy(), want_conf.numpy()


def test_rows_of_any_magnitude_match_float64(tmp_path):
    """Rows at 1e-30 ... 1e30 (fp32's squared norm over- or underflows beyond about 1e19 and
    1e-19), and exactly zero rows, which alone are counted as zero."""
    x, labels, truth = clustered()
    scales = np.float32(10.0) ** np.tile(np.array([-30, -14, 0, 19, 30], dtype=np.float32), N // 5)
    x = x * scales[:, None]
    zero = np.flatnonzero(labels < 0)[:3]
    x[zero] = 0
    folder = tmp_path / "scaled"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", labels)
    summary = cli(folder, tmp_path / "out", "--method", "llp")
    want_labels, want_conf = float64_vote(x, labels)
    got_labels, got_conf = outputs(tmp_path / "out")
    assert np.array_equal(got_labels, want_labels)
    np.testing.assert_allclose(got_conf, want_conf, atol=1e-5)
    assert summary["zero_norm_rows"] == 3
    model = LocalLabelPropagation(method="llp").fit(x, labels)
    assert np.array_equal(model.transduction_, want_labels)
    np.testing.assert_allclose(model.label_distributions_.max(axis=1), want_conf, atol=1e-5)
    np.save(folder / "x.npy", x.astype(np.float64) * 1e250)  # beyond fp32's range, still finite
    cli(folder, tmp_path / "out64", "--method", "llp")
    assert np.array_equal(outputs(tmp_path / "out64")[0], want_labels)
    auto = cli(folder, tmp_path / "auto64")                 # every candidate at this magnitude too
    assert (outputs(tmp_path / "auto64")[0][labels < 0] == truth[labels < 0]).mean() > 0.9, auto["auto"]


def _bad_inputs(folder):
    x, y, truth = (np.load(folder / f) for f in ("x.npy", "y.npy", "t.npy"))
    nan = x.copy()
    nan[123, 2], nan[321] = np.nan, np.inf
    np.save(folder / "nan.npy", nan)
    np.save(folder / "flat.npy", x[:, 0])
    np.save(folder / "short.npy", y[:-1])
    np.save(folder / "none.npy", np.full_like(y, -1))
    np.save(folder / "two_d.npy", y[:, None])
    open(folder / "empty.npy", "wb").close()
    extra = truth.copy()
    extra[7] = C + 2
    np.save(folder / "extra.npy", extra)
    for name, value in (("billion.npy", 10 ** 9), ("huge.npy", 2 ** 62)):
        big = y.copy()
        big[np.flatnonzero(y >= 0)[3]] = value
        np.save(folder / name, big)
    (folder / "a_dir").mkdir()
    (folder / "words.txt").write_text("3\n17\nabc\n")
    (folder / "binary.txt").write_bytes(bytes(range(256)))


@pytest.mark.parametrize("flags,message", [
    (["--embeddings", "nan.npy"], "--embeddings {}/nan.npy: row 123 is not finite"),
    (["--embeddings", "nan.npy", "--method", "knn"], "row 123 is not finite"),
    (["--embeddings", "nan.npy", "--method", "diffusion"], "row 123 is not finite"),
    (["--embeddings", "flat.npy"], "--embeddings must be a 2-D [N, D] array, got shape (500,)"),
    (["--embeddings", "empty.npy"], "is empty"),
    (["--embeddings", "missing.npy"], "does not exist"),
    (["--labels", "short.npy"], "--labels has 499 entries but --embeddings has 500 rows"),
    (["--labels", "two_d.npy"], "--labels must be an integer [N] array"),
    (["--labels", "none.npy"], "no labeled row"),
    (["--k", "41", "--method", "llp"], "--k 41 is more than the 40 labeled rows"),
    (["--k", "5"], "--k: --method auto chooses --k, --tau, --graph-k, --alpha, --metric itself"),
    (["--eval-labels", "extra.npy"], f"class {C + 2} occurs in --eval-labels but no labeled row has it"),
    (["--k", "0"], "--k must be an integer >= 1"),
    (["--method", "spectral"], "--method: invalid choice"),
    (["--plot"], "--plot needs --eval-labels"),
    (["--labels", "billion.npy"], "--labels holds class id 1000000000 at row "),
    (["--labels", "huge.npy"], ": class ids must lie in [0, 1048576) (2**20 classes at most"),
    (["--eval-labels", "billion.npy"], "--eval-labels holds class id 1000000000"),
    (["--tau", "1e-9"], "--tau must be >= 1e-06 (smaller temperatures overflow fp32 exponentials), got 1e-09"),
    (["--tau", "nan"], "--tau must be a finite number > 0, got nan"),
    (["--gamma", "inf", "--method", "diffusion"], "--gamma must be a finite number > 0, got inf"),
    (["--embeddings", "a_dir"], "--embeddings {}/a_dir is a directory, not a file"),
    (["--labeled-list", "a_dir"], "--labeled-list {}/a_dir is a directory, not a file"),
    (["--labeled-list", "words.txt"], "--labeled-list {}/words.txt must list row positions (integers), found 'abc'"),
    (["--labeled-list", "binary.txt"], "--labeled-list {}/binary.txt is not a text file of row positions"),
])
def test_bad_input_is_one_line_and_leaves_out_as_it_was(tmp_path, capsys, flags, message):
    folder = write(tmp_path)
    _bad_inputs(folder)
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    args = {"--embeddings": "x.npy", "--labels": "y.npy"}
    rest = []
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[flag] = value
        else:
            rest += [flag, value]
    if flags == ["--plot"]:
        rest = ["--plot"]
    argv = [a for flag, value in args.items() for a in (flag, str(folder / value))]
    argv += [str(folder / f) if (folder / f).exists() else f for f in rest]
    with pytest.raises(SystemExit) as exit_info:
        propagate.main([*argv, "--out", str(out), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(folder) in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == "old"


def test_out_as_a_dangling_link_is_one_line(tmp_path, capsys):
    folder = write(tmp_path)
    (tmp_path / "out").symlink_to(tmp_path / "gone")
    with pytest.raises(SystemExit) as exit_info:
        cli(folder, tmp_path / "out")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {tmp_path / 'out'} is a symbolic link to {tmp_path / 'gone'}, which does not exist\n"


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_a_backend_that_cannot_run_here_is_one_line(tmp_path, backend):
    if torch.cuda.is_available():
        pytest.skip("both backends run on this machine's GPU")
    folder = write(tmp_path)
    env = {k: v for k, v in _env().items() if k != "TRITON_INTERPRET"}  # triton needs it on CPU
    result = subprocess.run([sys.executable, "-m", "llp.propagate", "--embeddings", str(folder / "x.npy"),
                             "--labels", str(folder / "y.npy"), "--out", str(tmp_path / "out"), "--backend", backend],
                            env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --backend {backend}: backend='{backend}' cannot run "
                                                   f"topk_similarity: "), result.stderr
    assert not (tmp_path / "out").exists()


def test_a_killed_runs_temporaries_are_removed_by_the_next_run(tmp_path):
    folder = write(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a process id that no longer runs
    stale = [f".pseudo_labels.npy.{dead}.tmp", f".confidence.npy.{dead}.tmp", f".summary.json.{dead}.tmp"]
    kept = [f".summary.json.{os.getppid()}.tmp",  # a running process's
            f".notes.txt.{dead}.tmp", f"pseudo_labels.npy.{dead}.tmp", "mine.tmp"]  # not the tool's pattern
    for name in stale + kept:
        (out / name).write_bytes(b"x")
    cli(folder, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(kept + list(OUTPUTS))


def test_failed_run_removes_the_directory_it_created(tmp_path):
    folder = write(tmp_path)
    _bad_inputs(folder)
    with pytest.raises(SystemExit):
        propagate.main(["--embeddings", str(folder / "nan.npy"), "--labels", str(folder / "y.npy"),
                        "--out", str(tmp_path / "new" / "out"), "--quiet"])
    assert not (tmp_path / "new").exists()


# ---- the estimator ------------------------------------------------------------------------

from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

NOT_APPLICABLE = {
    "check_classifiers_classes": "y = -1 marks an unlabeled sample in semi-supervised learning, so labels "
                                 "[-1, 1] are one class (the check special-cases LabelSpreading by name for this)",
}


@parametrize_with_checks([LocalLabelPropagation(method=m, backend="cpu")
                          for m in ("auto", "llp", "knn", "ratio", "diffusion")],
                         expected_failed_checks=lambda estimator: NOT_APPLICABLE)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("method", ["auto", "llp", "knn", "ratio", "diffusion"])
def test_estimator_is_the_cli(tmp_path, method):
    folder = write(tmp_path)
    cli(folder, tmp_path / "out", "--method", method)
    labels, conf = outputs(tmp_path / "out")
    x, y, _ = clustered()
    model = LocalLabelPropagation(method=method).fit(x, y)
    assert np.array_equal(model.transduction_, labels)
    shares = model.label_distributions_
    np.testing.assert_allclose(shares.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(shares.max(axis=1), conf, atol=1e-5)
    assert np.array_equal(model.classes_, np.arange(C)) and model.n_features_in_ == D
    assert np.array_equal(model.labeled_indices_, np.flatnonzero(y >= 0))


def test_estimator_predicts_new_rows_with_the_fitted_densities():
    x, y, _ = clustered()
    new, _, _ = clustered(n=60, seed=1)
    model = LocalLabelPropagation(method="llp").fit(x, y)
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    known = y >= 0
    density = lk.local_density(xn[known], xn[~known], 25, TAU)
    np.testing.assert_allclose(model.log_density_, density.numpy(), atol=1e-5)
    want, want_conf = lk.propagate_labels(torch.nn.functional.normalize(torch.from_numpy(new), dim=1), xn[known],
                                          torch.from_numpy(y[known]), density, 10, TAU)
    assert np.array_equal(model.predict(new), want.numpy())
    np.testing.assert_allclose(model.predict_proba(new).max(axis=1), want_conf.numpy(), atol=1e-5)


def test_estimator_errors():
    x, y, _ = clustered()
    with pytest.raises(ValueError, match="no labeled sample"):
        LocalLabelPropagation().fit(x, np.full_like(y, -1))
    with pytest.raises(ValueError, match="k=50 neighbours cannot vote"):
        LocalLabelPropagation(method="llp", k=50).fit(x, y)
    with pytest.raises(ValueError, match="method must be one of"):
        LocalLabelPropagation(method="magic").fit(x, y)
    diffusion = LocalLabelPropagation(method="diffusion", graph_k=5).fit(x, y)
    proba = diffusion.predict_proba(x[:30])
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)


# ---- several processes --------------------------------------------------------------------

METHODS_2P = ("llp", "knn", "ratio", "diffusion", "auto")


def _two_ranks(rank, world, init_file, folder, out_root):
    torch.set_num_threads(1)
    group = Group(rank, world, 0)
    setup(group, "cpu", init_method=f"file://{init_file}")
    try:
        for method in METHODS_2P:
            args = propagate.parse(["--embeddings", f"{folder}/x.npy", "--labels", f"{folder}/y.npy",
                                    "--eval-labels", f"{folder}/t.npy", "--out", f"{out_root}/{method}",
                                    "--method", method, "--chunk-rows", "37", "--quiet"])
            summary = propagate.run(args, propagate.load_inputs(args), Comm(group), torch.device("cpu"))
            assert bool(summary) == (rank == 0)
    except BaseException:
        dist.destroy_process_group()
        raise
    teardown()
    assert not gloo_threads(), f"rank {rank}: the process group outlived teardown: {gloo_threads()}"


def test_two_processes_give_what_one_gives(tmp_path):
    folder = write(tmp_path, n=301)
    mp.spawn(_two_ranks, args=(2, str(tmp_path / "init"), str(folder), str(tmp_path / "two")), nprocs=2, join=True)
    for method in METHODS_2P:
        one = cli(folder, tmp_path / "one" / method, "--method", method, "--eval-labels", str(folder / "t.npy"))
        two = json.loads((tmp_path / "two" / method / "summary.json").read_text())
        labels, conf = outputs(tmp_path / "one" / method)
        labels2, conf2 = outputs(tmp_path / "two" / method)
        assert np.array_equal(labels, labels2), method
        np.testing.assert_allclose(conf, conf2, atol=1e-5, rtol=0)
        assert two["processes"] == 2 and two["eval"]["top1"] == one["eval"]["top1"]
        assert {p.name for p in (tmp_path / "two" / method).iterdir()} == OUTPUTS


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_torchrun(tmp_path):
    folder = write(tmp_path)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "llp.propagate", "--embeddings", str(folder / "x.npy"), "--labels",
                             str(folder / "y.npy"), "--out", str(tmp_path / "two"), "--chunk-rows", "100"],
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("pseudo-labeled") == 1  # rank 0 reports
    cli(folder, tmp_path / "one")
    labels, conf = outputs(tmp_path / "one")
    labels2, conf2 = outputs(tmp_path / "two")
    assert np.array_equal(labels, labels2)
    np.testing.assert_allclose(conf, conf2, atol=1e-5, rtol=0)


def test_command_line_error_has_no_traceback(tmp_path):
    folder = write(tmp_path)
    _bad_inputs(folder)
    result = subprocess.run([sys.executable, "-m", "llp.propagate", "--embeddings", str(folder / "nan.npy"),
                             "--labels", str(folder / "y.npy"), "--out", str(tmp_path / "out")],
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: --embeddings {folder / 'nan.npy'}: row 123 is not "
                                                  f"finite (it holds NaN or inf)"]


def test_trainer_export_feeds_the_tool(tmp_path):
    def command(module, *flags):
        result = subprocess.run([sys.executable, "-m", module, *flags], env=_env(), capture_output=True, text=True,
                                timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    command("llp.train", "--epochs", "1", "--warmup-epochs", "1", "--quiet", "--run-dir", "R",
            "--export-embeddings", "E")
    command("llp.propagate", "--embeddings", "E/embeddings.npy", "--labels", "E/labels.npy",
            "--eval-labels", "E/true_labels.npy", "--out", "O")
    summary = json.loads((tmp_path / "O" / "summary.json").read_text())
    assert summary["rows"] == 1438 and summary["labeled"] == 143
    assert summary["eval"]["top1"] > 0.3  # 10 classes: chance is 0.1

"""A seeded fuzzer of what a user can reach: ``python -m llp.propagate``,
``LocalLabelPropagation`` and ``python -m llp.train`` (with ``--resume``), given random
valid input (rows of any magnitude and dtype, zero rows, every method, odd sizes) and
random bad input (one mutation each: a bad file, flag, label, class id or checkpoint).

The rule it checks: a command exits 0 with the right output (the vote against a float64
computation, the evaluation and zero-row counts, a complete run directory), or exits 2
with exactly one line on stderr, ``error: ...``, and never raises anything else; the
estimator returns the right output or raises a ValueError/TypeError. Valid input must
succeed and every mutation must be refused.

``python tests/fuzz_cli.py SEED PROPAGATE ESTIMATOR TRAIN`` runs that many cases of each
and prints one summary line; it exits 1 at the first broken rule (``tests/test_fuzz.py``
runs it in a subprocess, which also catches crashes and hangs).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # so that --backend triton is refused on a CPU

import numpy as np
import torch

from llp import train
from llp.propagate import command as propagate
from llp.method.estimator import LocalLabelPropagation
from llp_kernels import reference as ref

SHARE_TOLERANCE = 1e-3  # fp32 against float64, after the scores' exp
TIE = 1e-4               # K-th and (K+1)-th scores this close: either may be chosen


class Broken(AssertionError):
    """A broken rule; the message says which case and what happened."""


# ---- running a command in this process ------------------------------------------------------

def command(main, argv, what):
    """(exit status, stderr) of ``main(argv)``; anything raised but SystemExit is a
    traceback, i.e. a broken rule."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        raise Broken(f"{what}: traceback:\n{traceback.format_exc()}") from None
    return code, err.getvalue()


def expect_refusal(code, err, what):
    lines = err.splitlines()
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        raise Broken(f"{what}: wanted exit 2 and one line 'error: ...', got exit {code} and:\n{err}")


def expect_success(code, err, what):
    if code != 0:
        raise Broken(f"{what}: valid input failed with exit {code}:\n{err}")


# ---- data -----------------------------------------------------------------------------------

def rows(rng: random.Random, n: int, d: int, classes: int, dtype: str):
    """Rows around ``classes`` centres, each scaled by a random magnitude in the dtype's
    range (some exactly zero), and their true classes."""
    g = np.random.default_rng(rng.randrange(1 << 30))
    truth = g.integers(0, classes, n)
    centres = g.normal(size=(classes, d))
    x = centres[truth] + 0.8 * g.normal(size=(n, d)) / math.sqrt(d)
    span = {"float16": 3, "bfloat16": 30, "float32": 30, "float64": 280}[dtype]
    x *= 10.0 ** g.uniform(-span, span, (n, 1))
    x[g.random(n) < 0.05] = 0.0
    if dtype == "float64":
        return x, truth
    if dtype == "bfloat16":
        bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        return bits, truth
    return x.astype(dtype), truth


def labels_of(rng: random.Random, truth: np.ndarray, classes: int):
    """-1 but for a few rows of each class (every class labeled at least once when it occurs)."""
    y = np.full(len(truth), -1, dtype=rng.choice([np.int64, np.int32, np.int16]))
    for c in range(classes):
        members = np.flatnonzero(truth == c)
        if len(members):
            take = rng.sample(list(members), max(1, min(len(members), rng.choice([1, 2, 5]))))
            y[take] = c
    return y


def as_float(x, bfloat16: bool) -> np.ndarray:
    if bfloat16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).double().numpy()
    return np.asarray(x, dtype=np.float64)


def unit64(x: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(x)
    scale = x.abs().amax(dim=1, keepdim=True)
    x = x / torch.where(scale > 0, scale, 1.0)
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, 1.0)


def oracle_shares(x: np.ndarray, labels: np.ndarray, method: str, k: int, t: int, tau: float):
    """float64: per unlabeled row, its K best labeled rows' scores [U, K+1 or K] and the
    class shares [U, C] of the vote over the best K."""
    xn = unit64(x)
    known = torch.from_numpy(labels >= 0)
    lab = torch.from_numpy(labels.astype(np.int64))[known]
    labeled, unlabeled = xn[known], xn[~known]
    bias = None
    if method == "llp" and len(unlabeled):
        bias = ref.local_density(labeled, unlabeled, min(t, len(unlabeled)), tau)
    scores = unlabeled @ labeled.T / tau
    if bias is not None:
        scores = scores - bias[None, :]
    order = ref.rank_descending(scores)
    ranked = torch.gather(scores, 1, order)
    best = ranked[:, :k]
    w = torch.exp(best - best[:, :1])
    shares = torch.zeros(len(unlabeled), int(labels.max()) + 1, dtype=torch.float64)
    shares.scatter_add_(1, lab[order[:, :k]], w)
    shares = shares / w.sum(dim=1, keepdim=True)
    boundary = ranked[:, k - 1] - ranked[:, k] if ranked.shape[1] > k else torch.full((len(unlabeled),), math.inf)
    return shares.numpy(), boundary.numpy()


def check_vote(what, x, labels, got_labels, got_conf, method, k, t, tau):
    """The tool's (or estimator's) labels and confidences against the float64 vote."""
    known = labels >= 0
    if not (np.array_equal(got_labels[known], labels[known]) and np.all(got_conf[known] == 1)):
        raise Broken(f"{what}: a labeled row lost its label or confidence 1")
    if known.all():
        return
    shares, boundary = oracle_shares(x, labels, method, k, t, tau)
    mine, conf = got_labels[~known], got_conf[~known]
    best = shares.max(axis=1)
    of_mine = shares[np.arange(len(mine)), np.clip(mine, 0, shares.shape[1] - 1)]
    wrong = (mine < 0) | (of_mine < best - SHARE_TOLERANCE) | (np.abs(conf - best) > SHARE_TOLERANCE)
    wrong &= boundary > TIE
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise Broken(f"{what}: unlabeled row {i}: label {mine[i]} confidence {conf[i]:.6f}, float64 "
                     f"shares {np.round(shares[i], 6).tolist()}")


# ---- python -m llp.propagate ---------------------------------------------------------------

PROPAGATE_MUTATIONS = (
    "nan_row", "inf_row", "class_billion", "class_2_62", "class_2_20", "label_minus_2", "float_labels",
    "labels_2d", "labels_short", "all_unlabeled", "empty_file", "garbage_file", "directory", "missing",
    "embeddings_1d", "embeddings_int", "embeddings_uint16", "bfloat16_of_float", "k_zero", "k_above",
    "t_zero", "tau_zero", "tau_tiny", "tau_nan", "tau_inf", "chunk_zero", "graph_k_zero", "alpha_one",
    "gamma_nan", "cg_tol_zero", "method_bogus", "backend_bogus", "backend_gpu", "device_cuda",
    "list_words", "list_range", "list_empty", "list_directory", "list_minus_one_row", "eval_extra_class",
    "plot_alone", "out_file", "out_dangling", "unknown_flag", "no_labels_flag", "object_labels", "truncated",
)


def propagate_case(rng: random.Random, folder: Path, mutation: str):
    """(argv, check) for one run; ``check(out)`` verifies a successful run's outputs."""
    dtype = rng.choice(["float32", "float32", "float16", "float64", "bfloat16"])
    n, d, classes = rng.choice([1, 2, 5, 40, 150, 301]), rng.choice([1, 2, 3, 8, 33]), rng.choice([1, 2, 3, 5])
    x, truth = rows(rng, n, d, classes, dtype)
    labels = labels_of(rng, truth, classes)
    labeled = int((labels >= 0).sum())
    method = rng.choice(["llp", "llp", "knn", "ratio", "diffusion", "auto"])
    k, t, tau = rng.randint(1, min(labeled, 12)), rng.choice([1, 3, 25]), rng.choice([0.05, 0.07, 0.1, 0.5, 1.0])
    flags = ["--method", method, "--t", str(t),
             "--chunk-rows", str(rng.choice([1, 7, 64, 65536])), "--backend", rng.choice(["auto", "cpu", "reference"])]
    if method != "auto":  # auto chooses k, tau and the graph itself
        flags += ["--k", str(k), "--tau", str(tau), "--graph-k", str(rng.choice([1, 5, 50]))]
    if method == "diffusion":
        flags += ["--metric", rng.choice(["cosine", "euclidean"])]
    if dtype == "bfloat16":
        flags += ["--dtype", "bfloat16"]
    files = {"x.npy": x, "y.npy": labels}
    truth_file = truth.copy()
    truth_file[np.array([rng.random() < 0.2 for _ in range(n)])] = -1
    present = np.unique(labels[labels >= 0])
    truth_file[~np.isin(truth_file, present)] = -1
    if rng.random() < 0.5:
        files["t.npy"] = truth_file
        flags += ["--eval-labels", str(folder / "t.npy")] + (["--plot"] if rng.random() < 0.2 else [])
    if rng.random() < 0.25:
        (folder / "list.txt").write_text(" ".join(map(str, np.flatnonzero(labels >= 0))) + "\n")
        files["y.npy"] = np.where(labels >= 0, labels, truth).astype(labels.dtype)
        flags += ["--labeled-list", str(folder / "list.txt")]
    out = folder / "out"
    mutate_propagate(mutation, rng, folder, files, flags, labels, n, labeled)
    for name, array in files.items():
        if isinstance(array, np.ndarray):
            np.save(folder / name, array, allow_pickle=array.dtype == object)
    argv = ["--embeddings", str(folder / "x.npy"), "--labels", str(folder / "y.npy"), "--out", str(out),
            "--quiet", *flags]
    if mutation == "no_labels_flag":
        argv = argv[:2] + argv[4:]

    def check(what):
        got_labels, got_conf = np.load(out / "pseudo_labels.npy"), np.load(out / "confidence.npy")
        summary = json.loads((out / "summary.json").read_text())
        xf = as_float(x, dtype == "bfloat16")
        if summary["zero_norm_rows"] != int((xf == 0).all(axis=1).sum()):
            raise Broken(f"{what}: zero_norm_rows {summary['zero_norm_rows']} is not the number of zero rows")
        if method in ("diffusion", "auto"):
            if method == "auto" and summary["auto"]["settings"]["method"] not in ("diffusion", "llp", "knn"):
                raise Broken(f"{what}: auto chose {summary['auto']}")
            known = labels >= 0
            ok = (np.array_equal(got_labels[known], labels[known]) and (got_labels >= -1).all()
                  and (got_labels < classes).all() and ((got_conf >= 0) & (got_conf <= 1 + 1e-6)).all())
            if not ok:
                raise Broken(f"{what}: {method} output out of range")
        else:
            check_vote(what, xf, labels, got_labels, got_conf, method, k, t, tau)
        if "eval" in summary:
            rows_ = (labels < 0) & (truth_file >= 0)
            top1 = float((got_labels[rows_] == truth_file[rows_]).mean()) if rows_.any() else None
            if summary["eval"]["top1"] != top1:
                raise Broken(f"{what}: eval top1 {summary['eval']['top1']} is not {top1}")

    return argv, check


def mutate_propagate(m, rng, folder, files, flags, labels, n, labeled):
    """Apply mutation ``m`` (in place); every one of them is bad input."""
    def flag(name, value):
        flags.extend([name, value])
    y = files["y.npy"]
    first = int(np.flatnonzero(labels >= 0)[0])
    if m in ("nan_row", "inf_row"):
        x = files["x.npy"].copy()
        x[rng.randrange(n), rng.randrange(x.shape[1])] = (np.nan if m == "nan_row" else np.inf) if x.dtype != np.uint16 \
            else 0x7FC0
        files["x.npy"] = x
    elif m.startswith("class_") or m == "label_minus_2":
        value = {"class_billion": 10 ** 9, "class_2_62": 2 ** 62, "class_2_20": 2 ** 20, "label_minus_2": -2}[m]
        y = y.astype(np.int64)
        y[first] = value
        files["y.npy"] = y
    elif m == "float_labels":
        files["y.npy"] = y.astype(np.float32)
    elif m == "labels_2d":
        files["y.npy"] = y[:, None]
    elif m == "labels_short":
        files["y.npy"] = y[:-1]
    elif m == "all_unlabeled":
        files["y.npy"] = np.full_like(y, -1)
        if "--labeled-list" in flags:
            (folder / "list.txt").write_text("\n")
    elif m in ("empty_file", "garbage_file", "directory", "missing"):
        target = rng.choice(["x.npy", "y.npy"])
        files.pop(target)
        if m == "empty_file":
            (folder / target).write_bytes(b"")
        elif m == "garbage_file":
            (folder / target).write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([5, 200]))))
        elif m == "directory":
            (folder / target).mkdir()
    elif m == "embeddings_1d":
        files["x.npy"] = files["x.npy"][:, 0]
    elif m == "embeddings_int":
        files["x.npy"] = np.ones(files["x.npy"].shape, dtype=np.int32)
    elif m == "embeddings_uint16":
        if "--dtype" in flags:
            files["x.npy"] = files["x.npy"].astype(np.float32)  # bfloat16 asked, float32 given
        else:
            files["x.npy"] = np.ones(files["x.npy"].shape, dtype=np.uint16)
    elif m == "bfloat16_of_float":
        files["x.npy"] = np.ones(files["x.npy"].shape, dtype=np.float32)
        flag("--dtype", "bfloat16")
    elif m == "k_zero":
        flag("--k", "0")
    elif m == "k_above":
        flag("--k", str(labeled + 1))
        flag("--method", rng.choice(["llp", "knn", "ratio"]))
    elif m == "t_zero":
        flag("--t", "0")
    elif m.startswith("tau_"):
        flag("--tau", {"tau_zero": "0", "tau_tiny": "1e-9", "tau_nan": "nan", "tau_inf": "inf"}[m])
    elif m == "chunk_zero":
        flag("--chunk-rows", "0")
    elif m == "graph_k_zero":
        flag("--graph-k", "0")
    elif m == "alpha_one":
        flag("--alpha", rng.choice(["1", "0", "nan"]))
    elif m == "gamma_nan":
        flag("--gamma", rng.choice(["nan", "-1", "0"]))
    elif m == "cg_tol_zero":
        flag("--cg-tol", rng.choice(["0", "inf"]))
    elif m == "method_bogus":
        flag("--method", "spectral")
    elif m == "backend_bogus":
        flag("--backend", "tpu")
    elif m == "backend_gpu":
        flag("--backend", rng.choice(["cuda", "triton"]))  # no GPU, no TRITON_INTERPRET: refused
    elif m == "device_cuda":
        flag("--device", "cuda")
    elif m.startswith("list_"):
        files["y.npy"] = np.where(labels >= 0, labels, 0).astype(np.int64)
        if m == "list_minus_one_row":
            files["y.npy"][first] = -1
            text = f"{first}\n"
        else:
            text = {"list_words": "1 2 three\n", "list_range": f"0 {n}\n", "list_empty": "\n"}.get(m, "")
        path = folder / "l2.txt"
        path.mkdir() if m == "list_directory" else path.write_text(text)
        flag("--labeled-list", str(path))
    elif m == "eval_extra_class":
        extra = np.where(labels >= 0, labels, 0).astype(np.int64)
        extra[-1] = int(labels.max()) + 1
        files["t2.npy"] = extra
        flag("--eval-labels", str(folder / "t2.npy"))
    elif m == "plot_alone":
        if "--eval-labels" in flags:
            i = flags.index("--eval-labels")
            del flags[i:i + 2]
        flags.append("--plot")
    elif m == "out_file":
        (folder / "out").write_text("not a folder")
    elif m == "out_dangling":
        (folder / "out").symlink_to(folder / "gone")
    elif m == "unknown_flag":
        flags.append("--colour")
    elif m == "object_labels":
        files["y.npy"] = np.array([None] * n, dtype=object)
    elif m == "truncated":
        target = rng.choice(["x.npy", "y.npy"])
        buffer = io.BytesIO()
        np.save(buffer, files.pop(target))
        data = buffer.getvalue()
        (folder / target).write_bytes(data[:rng.randrange(10, len(data) - 1)])


# ---- LocalLabelPropagation ------------------------------------------------------------------

ESTIMATOR_MUTATIONS = ("nan", "inf", "all_unlabeled", "k_above", "method", "tau", "x_1d", "y_short",
                       "chunk", "device", "backend")


def estimator_case(rng: random.Random, mutation: str):
    dtype = rng.choice(["float32", "float64"])
    n, d, classes = rng.choice([2, 5, 40, 150]), rng.choice([1, 3, 8]), rng.choice([1, 2, 3, 4])
    x, truth = rows(rng, n, d, classes, dtype)
    y = labels_of(rng, truth, classes).astype(np.int64)
    labeled = int((y >= 0).sum())
    params = dict(method=rng.choice(["llp", "knn", "ratio"]), k=rng.randint(1, min(labeled, 10)),
                  t=rng.choice([1, 5, 25]), tau=rng.choice([0.05, 0.1, 1.0]), backend=rng.choice(["cpu", "reference"]),
                  chunk_rows=rng.choice([3, 1000]))
    if mutation in ("nan", "inf"):
        x = x.copy()
        x[rng.randrange(n), 0] = np.nan if mutation == "nan" else np.inf
    elif mutation == "all_unlabeled":
        y[:] = -1
    elif mutation == "k_above":
        params["k"] = labeled + 1
    elif mutation == "method":
        params["method"] = "magic"
    elif mutation == "tau":
        params["tau"] = rng.choice([0.0, -1.0, float("nan"), 1e-9, "0.07"])
    elif mutation == "x_1d":
        x = x[:, 0]
    elif mutation == "y_short":
        y = y[:-1]
    elif mutation == "chunk":
        params["chunk_rows"] = rng.choice([0, -5, 2.5])
    elif mutation == "device":
        params["device"] = "tpu"
    elif mutation == "backend":
        params["backend"] = "gpu"
    return x, y, params


def run_estimator(x, y, params, mutation, what):
    try:
        model = LocalLabelPropagation(**params).fit(x, y)
    except (ValueError, TypeError) as exc:
        if not mutation:
            raise Broken(f"{what}: valid input refused: {exc}") from None
        if not str(exc).strip():
            raise Broken(f"{what}: {type(exc).__name__} without a message") from None
        return
    except BaseException:
        raise Broken(f"{what}: raised\n{traceback.format_exc()}") from None
    if mutation:
        raise Broken(f"{what}: bad input ({mutation}) was accepted")
    p = model.label_distributions_
    got = model.classes_[p.argmax(axis=1)]
    classes = np.searchsorted(model.classes_, np.where(y >= 0, y, model.classes_[0]))
    dense = np.where(y >= 0, classes, -1)
    check_vote(what, np.asarray(x, dtype=np.float64), dense, np.searchsorted(model.classes_, got), p.max(axis=1),
               params["method"], params["k"], params["t"], params["tau"])


# ---- python -m llp.train --------------------------------------------------------------------

TRAIN_MUTATIONS = ("class_billion", "tau_nan", "tau_tiny", "lr_nan", "lr_zero", "momentum_nan", "seed",
                   "bank_momentum", "complex", "no_rows", "features_dir", "list_words", "list_range",
                   "run_dir_file", "labels_negative", "labels_float", "batch_size_1", "resume_flip", "resume_noise",
                   "resume_epoch", "resume_config", "resume_missing", "resume_changed_flag")


def train_case(rng: random.Random, folder: Path, mutation: str):
    n, f, classes = rng.choice([30, 60, 90]), rng.choice([1, 4, 9]), rng.choice([2, 3])
    x, truth = rows(rng, n, f, classes, rng.choice(["float32", "float64"]))
    files = {"x.npy": x, "y.npy": truth.astype(np.int64)}
    run_dir = folder / "run"
    flags = ["--epochs", "1", "--warmup-epochs", str(rng.choice([0, 1])), "--batch-size", str(rng.choice([2, 3, 8, 32])),
             "--method", rng.choice(["llp", "llp", "supervised"]), "--k", str(rng.choice([1, 3, 10])),
             "--t", str(rng.choice([1, 25])), "--labeled-fraction", str(rng.choice([0.2, 0.5])),
             "--lr", str(rng.choice([0.01, 0.05])), "--quiet"]
    resume = mutation.startswith("resume")
    if mutation == "class_billion":
        files["y.npy"][0] = 10 ** 9
    elif mutation in ("tau_nan", "tau_tiny", "lr_nan", "lr_zero", "momentum_nan", "seed", "bank_momentum",
                      "batch_size_1"):
        name, value = {"tau_nan": ("--tau", "nan"), "tau_tiny": ("--tau", "1e-9"), "lr_nan": ("--lr", "nan"),
                       "lr_zero": ("--lr", "0"), "momentum_nan": ("--momentum", "nan"), "seed": ("--seed", "-3"),
                       "bank_momentum": ("--bank-momentum", "2"), "batch_size_1": ("--batch-size", "1")}[mutation]
        flags += [name, value]
    elif mutation == "complex":
        files["x.npy"] = x.astype(np.complex128)
    elif mutation == "no_rows":
        files["x.npy"], files["y.npy"] = x[:0], files["y.npy"][:0]
    elif mutation == "features_dir":
        files.pop("x.npy")
        (folder / "x.npy").mkdir()
    elif mutation in ("list_words", "list_range"):
        (folder / "l.txt").write_text("0 1 x\n" if mutation == "list_words" else f"0 {10 * n}\n")
        flags += ["--labeled-list", str(folder / "l.txt")]
    elif mutation == "run_dir_file":
        (folder / "file").write_text("")
        run_dir = folder / "file" / rng.choice(["", "sub"])
    elif mutation == "labels_negative":
        files["y.npy"][0] = -1
    elif mutation == "labels_float":
        files["y.npy"] = files["y.npy"].astype(np.float64)
    for name, array in files.items():
        np.save(folder / name, array)
    argv = ["--features", str(folder / "x.npy"), "--labels", str(folder / "y.npy"), "--run-dir", str(run_dir), *flags]
    return argv, run_dir, resume


def damage_checkpoint(mutation: str, rng: random.Random, run_dir: Path):
    path = run_dir / "checkpoint.pt"
    if mutation == "resume_flip":
        with zipfile.ZipFile(path) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
            + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
        data[start + rng.randrange(info.file_size)] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif mutation == "resume_noise":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.choice([0, 10, 3000]))))
    elif mutation in ("resume_epoch", "resume_config", "resume_missing"):
        ckpt = torch.load(path, weights_only=True)
        if mutation == "resume_epoch":
            ckpt["epoch"] = rng.choice(["x", -1, 1.5, None])
        elif mutation == "resume_config":
            ckpt["config"][rng.choice(["k", "tau", "lr", "method", "epochs"])] = rng.choice(["zzz", [1], None, float("nan")])
            if ckpt["config"].get("method") is None:
                ckpt["config"]["method"] = 7
        else:
            del ckpt[rng.choice(["model", "optimizer", "llp", "rng", "schedule"])]
        torch.save(ckpt, path)


def run_train(rng: random.Random, folder: Path, mutation: str, what: str):
    argv, run_dir, resume = train_case(rng, folder, mutation)
    code, err = command(train.main, argv, what)
    if mutation and not resume:
        expect_refusal(code, err, what)
        return
    expect_success(code, err, what)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    method = argv[argv.index("--method") + 1]
    epochs = int(argv[argv.index("--epochs") + 1]) + (int(argv[argv.index("--warmup-epochs") + 1])
                                                      if method == "llp" else 0)
    if [r["epoch"] for r in records] != list(range(1, epochs + 1)) or not (run_dir / "checkpoint.pt").is_file():
        raise Broken(f"{what}: the run directory is incomplete")
    if not resume:
        return
    damage_checkpoint(mutation, rng, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    extra = ["--batch-size", "5"] if mutation == "resume_changed_flag" else []  # never a saved size
    code, err = command(train.main, ["--resume", str(run_dir), "--epochs", "2", "--quiet", *extra], what)
    err = "\n".join(line for line in err.splitlines() if not line.startswith("--resume: using"))
    expect_refusal(code, err + "\n" if err else err, what)
    if {p.name: p.read_bytes() for p in run_dir.iterdir()} != before:
        raise Broken(f"{what}: a refused resume changed the run directory")


# ---- the loop -------------------------------------------------------------------------------

def run(seed: int, propagate_cases: int, estimator_cases: int, train_cases: int) -> dict:
    rng = random.Random(seed)
    counts = {"propagate": [0, 0], "estimator": [0, 0], "train": [0, 0]}
    refused_here = PROPAGATE_MUTATIONS if not torch.cuda.is_available() else tuple(
        m for m in PROPAGATE_MUTATIONS if m not in ("backend_gpu", "device_cuda"))
    plan = ["propagate"] * propagate_cases + ["estimator"] * estimator_cases + ["train"] * train_cases
    for case, kind in enumerate(plan):
        valid = rng.random() < 0.4
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if kind == "propagate":
                mutation = "" if valid else rng.choice(refused_here)
                what = f"case {case} (seed {seed}): llp.propagate {mutation or 'valid'}"
                argv, check = propagate_case(rng, folder, mutation)
                code, err = command(propagate.main, argv, f"{what} {argv}")
                if mutation:
                    expect_refusal(code, err, f"{what} {argv}")
                else:
                    expect_success(code, err, f"{what} {argv}")
                    check(f"{what} {argv}")
            elif kind == "estimator":
                mutation = "" if valid else rng.choice(ESTIMATOR_MUTATIONS)
                x, y, params = estimator_case(rng, mutation)
                run_estimator(x, y, params, mutation, f"case {case} (seed {seed}): estimator {mutation or 'valid'} "
                                                      f"{params}")
            else:
                mutation = "" if valid else rng.choice(TRAIN_MUTATIONS)
                run_train(rng, folder, mutation, f"case {case} (seed {seed}): llp.train {mutation or 'valid'}")
        counts[kind][0 if valid else 1] += 1
    return counts


if __name__ == "__main__":
    torch.set_num_threads(1)
    seed, counts_asked = int(sys.argv[1]), [int(v) for v in sys.argv[2:5]]
    start = time.time()
    try:
        counts = run(seed, *counts_asked)
    except Broken as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1)
    total = sum(sum(v) for v in counts.values())
    print(f"fuzz_cli: {total} cases in {time.time() - start:.1f} s: " + ", ".join(
        f"{kind} {v[0]} valid + {v[1]} bad" for kind, v in counts.items()))

"""``python -m llp.propagate``: pseudo-labels and confidences for every unlabeled row of
an embedding file, from a few labeled rows (paper section 3, eq. 4-5).

    python -m llp.propagate --embeddings X.npy --labels y.npy --out DIR [--eval-labels TRUE.npy]

Writes DIR/pseudo_labels.npy (int64 [N]; labeled rows keep their label),
DIR/confidence.npy (float32 [N]; 1 for labeled rows) and DIR/summary.json, each first
under a temporary name and renamed into place at the end (a failure leaves DIR as it
was). The embeddings are read memory-mapped in chunks and L2-normalised chunk by chunk:
only the labeled rows are held in memory. A run that is killed continues from its last
finished chunk when the same command is run again (``llp.propagate.resume``), under
``torchrun`` too.
``torchrun --nproc_per_node=G -m llp.propagate ...`` splits the rows over G processes;
rank 0 writes.

The work is in ``llp.method.propagation`` (llp, knn, ratio) and ``llp.method.diffusion``;
the same code behind a scikit-learn interface is ``LocalLabelPropagation``
(``llp.method.estimator``, importable from ``llp.propagate``).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from ..method import diffusion, distributed
from ..method.choice import choose
from ..method.cli import Parser, add_backend, add_device, add_k, add_t, add_tau, flag_of
from ..method.inputs import InputError, class_ids_below_bound, existing_file, output_dir, read_positions, usable_backend
from ..method.propagation import (METHODS, METRICS, Comm, NonFiniteRow, Problem, Rows, Settings, check_settings, fit,
                          stream_votes)
from .evaluation import decile_table, density_count_r, evaluate, plot_png
from .progress import meters
from .resume import PartialRun, Progress, SavedChoice, job_of

PROG = "python -m llp.propagate"
SCAN_ROWS = 1 << 20


def build_parser() -> Parser:
    d = Settings()
    p = Parser(prog=PROG, description=(
        "Pseudo-labels and confidences for the unlabeled rows of an embedding file (Local Label "
        "Propagation, paper eq. 4-5). Rows are read memory-mapped, --chunk-rows at a time, and "
        "L2-normalised on the fly per chunk (similarity = cosine); only the labeled rows are held in "
        "memory, so N is bounded by disk, not RAM (except --method diffusion, which holds every row "
        "and its kNN graph). torchrun --nproc_per_node=G -m llp.propagate ... splits the rows over G "
        "processes (rank 0 writes)."))
    g = p.add_argument_group("input and output").add_argument
    g("--embeddings", metavar="X.npy", required=True,
      help="[N, D] float32 or float16 .npy (bfloat16: raw bits as uint16, with --dtype bfloat16)")
    g("--labels", metavar="Y.npy", required=True,
      help="int [N]: each row's class id (>= 0), -1 for unlabeled rows; with --labeled-list: the classes of all rows")
    g("--labeled-list", metavar="FILE", help="text file of the row positions that are labeled (their classes "
      "come from --labels; every other row is unlabeled)")
    g("--out", metavar="DIR", required=True, help="output directory (created if missing)")
    g("--dtype", choices=["auto", "bfloat16"], default="auto",
      help="auto: the file's float dtype; bfloat16: the file holds bfloat16 bit patterns as uint16/int16")
    g("--eval-labels", metavar="TRUE.npy", help="int [N] true classes (-1: unknown): accuracy of the pseudo-labels "
      "on the unlabeled rows, overall, balanced and by confidence decile (printed and in summary.json)")
    g("--plot", action="store_true", help="with --eval-labels: DIR/confidence_accuracy.png, accuracy by confidence decile")
    g = p.add_argument_group("propagation").add_argument
    g("--method", choices=METHODS, default=d.method,
      help="auto: the method and its k/tau/graph settings with the best cross-validated accuracy on the "
           "labeled rows (diffusion only up to 50,000 rows; summary.json says what it chose); llp: "
           "density-weighted vote of the K nearest labeled rows (eq. 5); knn: the same without density "
           "(NoDW); ratio: the paper's ratio-based weighting P_R = P M/(N-M), whose constant factor gives knn's "
           "votes; diffusion: DLP-style diffusion on a kNN graph of all rows")
    add_k(g, note=" (at most the number of labeled rows)")
    add_t(g, note=" (clamped to their number)")
    add_tau(g, of="similarities")
    g("--graph-k", type=int, default=d.graph_k, help="diffusion: neighbours of each row in the graph (DLP: 50; see README)")
    g("--gamma", type=float, default=d.gamma, help="diffusion: edge weight max(s, 0)^gamma (default 3, as DLP)")
    g("--alpha", type=float, default=d.alpha, help="diffusion: solve (I - alpha W) F = Y (DLP: 0.99, which over-smooths on small data sets; see README)")
    g("--cg-iters", type=int, default=d.cg_iters, help="diffusion: conjugate-gradient iterations per class (default 20, as DLP)")
    g("--cg-tol", type=float, default=d.cg_tol, help="diffusion: conjugate-gradient relative tolerance")
    g("--metric", choices=METRICS, default=d.metric, help="diffusion: the graph's neighbours by cosine similarity "
      "of the normalised rows, or by Euclidean distance of the rows as stored (edges of weight 1)")
    g = p.add_argument_group("run").add_argument
    g("--chunk-rows", type=int, default=d.chunk_rows, help="rows read and scored at a time (bounds the memory)")
    add_backend(g)
    add_device(g, to="compute")
    g("--quiet", action="store_true", help="no progress bar and no printed report")
    return p


def settings_of(args) -> Settings:
    return Settings(**{name: getattr(args, name) for name in Settings.__dataclass_fields__})


AUTO_CHOOSES = ("--k", "--tau", "--graph-k", "--alpha", "--metric")


def parse(argv: Optional[List[str]] = None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        check_settings(settings_of(args), flag=flag_of)
        given = [f for f in AUTO_CHOOSES if any(a == f or a.startswith(f + "=") for a in argv)]
        if args.method == "auto" and given:
            raise ValueError(f"{given[0]}: --method auto chooses {', '.join(AUTO_CHOOSES)} itself; give "
                             f"--method llp, knn or diffusion to set them")
        if args.plot and not args.eval_labels:
            raise ValueError("--plot needs --eval-labels")
    except ValueError as exc:
        parser.error(str(exc))
    return args


# ---- inputs -------------------------------------------------------------------------------

@dataclass
class Inputs:
    embeddings: np.ndarray  # [N, D] memmap
    bfloat16: bool
    labels: np.ndarray  # [N] int, -1 unlabeled (memmap, or in memory with --labeled-list)
    labeled_ids: np.ndarray  # [M]
    num_classes: int
    truth: Optional[np.ndarray]  # [N] or None

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bfloat16 else str(self.embeddings.dtype)


def load_npy(path: str, flag: str) -> np.ndarray:
    p = existing_file(path, flag)
    if p.stat().st_size == 0:
        raise InputError(f"{flag} {path} is empty")
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputError(f"{flag} {path} is not a .npy file")
    try:
        array = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{flag} {path} cannot be read as an array ({str(exc).splitlines()[0]})") from None
    if array.size == 0:
        raise InputError(f"{flag} {path} is empty (shape {tuple(array.shape)})")
    return array


def _embeddings(args) -> np.ndarray:
    x = load_npy(args.embeddings, "--embeddings")
    if x.ndim != 2:
        raise InputError(f"--embeddings must be a 2-D [N, D] array, got shape {tuple(x.shape)}")
    if args.dtype == "bfloat16":
        if x.dtype not in (np.uint16, np.int16):
            raise InputError(f"--dtype bfloat16 needs bfloat16 bit patterns stored as uint16, got {x.dtype}")
    elif x.dtype in (np.uint16, np.int16):
        raise InputError(f"--embeddings holds {x.dtype}: if these are bfloat16 bit patterns, add --dtype bfloat16")
    elif x.dtype not in (np.float16, np.float32, np.float64):
        raise InputError(f"--embeddings must hold float32 or float16 (or bfloat16 bits), got {x.dtype}")
    return x


def _int_vector(path: str, flag: str, n: int) -> np.ndarray:
    y = load_npy(path, flag)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise InputError(f"{flag} must be an integer [N] array, got {y.dtype} of shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise InputError(f"{flag} has {y.shape[0]} entries but --embeddings has {n} rows")
    for lo in range(0, n, SCAN_ROWS):
        part = np.asarray(y[lo:lo + SCAN_ROWS])
        if part.min() < -1:
            row = lo + int(np.argmax(part < -1))
            raise InputError(f"{flag} holds {int(part[row - lo])} at row {row}: classes are ids >= 0, "
                             f"or -1 for no label")
        row = lo + int(np.argmax(part))
        class_ids_below_bound(int(part[row - lo]), flag, f"row {row}")
    return y


def _labeled_list(path: str, labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    positions = read_positions(path, "--labeled-list", n)
    given = np.asarray(labels[positions], dtype=np.int64)
    if (given < 0).any():
        row = int(positions[np.argmax(given < 0)])
        raise InputError(f"--labeled-list lists row {row}, whose class in --labels is -1")
    out = np.full(n, -1, dtype=np.int64)
    out[positions] = given
    return out


def _present_classes(y: np.ndarray) -> np.ndarray:
    found = [np.unique(np.asarray(y[lo:lo + SCAN_ROWS])) for lo in range(0, len(y), SCAN_ROWS)]
    values = np.unique(np.concatenate(found))
    return values[values >= 0]


def load_inputs(args) -> Inputs:
    """Every check that needs no computation: one ``InputError`` for the first problem."""
    x = _embeddings(args)
    n = x.shape[0]
    labels = _int_vector(args.labels, "--labels", n)
    if args.labeled_list:
        labels = _labeled_list(args.labeled_list, labels)
    parts = [lo + np.flatnonzero(np.asarray(labels[lo:lo + SCAN_ROWS]) >= 0) for lo in range(0, n, SCAN_ROWS)]
    labeled_ids = np.concatenate(parts).astype(np.int64)
    if labeled_ids.size == 0:
        raise InputError("no labeled row: every entry of --labels is -1")
    classes = np.unique(np.asarray(labels[labeled_ids]))
    if args.method not in ("diffusion", "auto") and args.k > labeled_ids.size:
        raise InputError(f"--k {args.k} is more than the {labeled_ids.size} labeled rows: lower --k or label more rows")
    truth = None
    if args.eval_labels:
        truth = _int_vector(args.eval_labels, "--eval-labels", n)
        missing = np.setdiff1d(_present_classes(truth), classes)
        if missing.size:
            raise InputError(f"class {int(missing[0])} occurs in --eval-labels but no labeled row has it, so no row "
                             f"can be pseudo-labeled {int(missing[0])} ({missing.size} such classes): label at least "
                             f"one row of each class")
    output_dir(args.out, "--out")
    return Inputs(x, args.dtype == "bfloat16", labels, labeled_ids, int(classes.max()) + 1, truth)


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


# ---- outputs ------------------------------------------------------------------------------

OUTPUT_FILES = ("pseudo_labels.npy", "confidence.npy", "summary.json", "confidence_accuracy.png")
TEMPORARY = re.compile(r"\.(" + "|".join(map(re.escape, OUTPUT_FILES)) + r")\.([0-9]+)\.tmp")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(out: Path) -> List[Path]:
    """Remove what a killed run of this tool left in ``out``: files named like its own
    temporaries, ``.<output file>.<pid>.tmp``, whose process no longer runs (a running
    process's files, and every other file, are left alone). Returns the removed paths."""
    removed = []
    for path in out.iterdir():
        match = TEMPORARY.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink() and not _running(int(match.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class Outputs:
    """The output files, written under temporary names in DIR and renamed into place by
    ``commit``; ``abort`` removes them (and DIR, if this run created it and it is empty).
    Temporaries that a killed run left in DIR are removed first. With ``job`` (the
    command line's run) the two arrays live in ``DIR/.partial-run/`` (``partial``),
    which a killed run leaves for the same command to continue from."""

    def __init__(self, out: Path, n: int, job: Optional[dict] = None):
        self.out = out
        self.created = [d for d in (out, *out.parents) if not d.exists()]
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        self.temporary = {}
        self.labels = self.confidence = self.partial = None
        try:
            if job is not None:
                self.partial = PartialRun(out, job, n)
                self.labels, self.confidence = self.partial.arrays.values()
            else:
                self.labels = np.lib.format.open_memmap(self._path("pseudo_labels.npy"), mode="w+",
                                                        dtype=np.int64, shape=(n,))
                self.confidence = np.lib.format.open_memmap(self._path("confidence.npy"), mode="w+",
                                                            dtype=np.float32, shape=(n,))
        except BaseException:
            self.abort()
            raise

    def _path(self, name: str) -> Path:
        path = self.out / f".{name}.{os.getpid()}.tmp"  # the names TEMPORARY matches
        self.temporary[name] = path
        return path

    def write(self, lo: int, labels: np.ndarray, confidence: np.ndarray) -> None:
        self.labels[lo:lo + len(labels)] = labels
        self.confidence[lo:lo + len(labels)] = confidence

    def add_file(self, name: str, data: bytes) -> None:
        with open(self._path(name), "wb") as f:
            f.write(data)

    def _close(self) -> None:
        for array in (self.labels, self.confidence):
            if array is not None:
                array.flush()
        self.labels = self.confidence = None

    def commit(self) -> List[Path]:
        self._close()
        done = []
        if self.partial is not None:
            self.partial.close()
            for name in ("pseudo_labels.npy", "confidence.npy"):
                os.replace(self.partial.array_path(name), self.out / name)
                done.append(self.out / name)
        for name, path in self.temporary.items():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.replace(path, self.out / name)
            done.append(self.out / name)
        self.temporary = {}
        if self.partial is not None:
            self.partial.discard()
        return done

    def abort(self, keep_partial: bool = False) -> None:
        """Remove what this run wrote; ``keep_partial``: keep ``DIR/.partial-run/`` for a resume."""
        self.labels = self.confidence = None
        if self.partial is not None and not keep_partial:
            self.partial.discard()
        for path in self.temporary.values():
            path.unlink(missing_ok=True)
        self.temporary = {}
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:
                break


# ---- the run ------------------------------------------------------------------------------

class _Tally:
    """Rank 0's running counts over the written rows."""

    def __init__(self, inputs: Inputs, outputs: Outputs):
        self.inputs, self.outputs = inputs, outputs
        self.pseudo = np.zeros(inputs.num_classes, dtype=np.int64)
        self.unassigned, self.confidence_sum = 0, 0.0

    def __call__(self, lo: int, labels: np.ndarray, confidence: np.ndarray, _shares=None) -> None:
        self.outputs.write(lo, labels, confidence)
        unlabeled = np.asarray(self.inputs.labels[lo:lo + len(labels)]) < 0
        mine = labels[unlabeled]
        self.pseudo += np.bincount(mine[mine >= 0], minlength=self.inputs.num_classes)
        self.unassigned += int((mine < 0).sum())
        self.confidence_sum += float(confidence[unlabeled].sum(dtype=np.float64))

    def progress(self, rounds_done: int, zero_rows: int) -> Progress:
        return Progress(rounds_done, self.pseudo.tolist(), self.unassigned, self.confidence_sum, zero_rows)

    def restore(self, progress: Progress) -> None:
        self.pseudo = np.asarray(progress.pseudo, dtype=np.int64)
        self.unassigned, self.confidence_sum = progress.unassigned, progress.confidence_sum


def run(args, inputs: Inputs, comm: Comm, device: torch.device, outputs: Optional[Outputs] = None) -> dict:
    """The propagation, on every process of ``comm``; rank 0 writes the outputs (into
    ``outputs``, or new ones in ``--out``) and returns the summary (other ranks return
    an empty dict). Raises ``NonFiniteRow``; on any failure the outputs are removed."""
    started = time.perf_counter()
    s = settings_of(args)
    rows = Rows(inputs.embeddings, device, inputs.bfloat16)
    problem = Problem(rows, inputs.labels, inputs.labeled_ids, inputs.num_classes)
    progress = meters(args.quiet or not comm.is_main, sys.stderr.isatty())
    if comm.is_main and outputs is None:
        outputs = Outputs(Path(args.out), rows.n)
    timings: dict = {}
    partial = outputs.partial if comm.is_main else None
    try:
        tally = _Tally(inputs, outputs) if comm.is_main else None
        log_density, choice, top = None, None, None
        saved = _saved_fit(partial, comm, device)
        if saved is not None:
            fitted, choice_summary, rows.zero_rows, previous = saved
            choice = None if choice_summary is None else SavedChoice(choice_summary)
            s = fitted.settings
            timings.update(previous)
        else:
            if s.method == "auto":
                choice = choose(problem, s, comm, progress, timings)
                s, top = choice.settings, choice.top_similarities
            if s.method == "diffusion":
                _, f = diffusion.fit(problem, s, comm, progress, timings, check=choice is None)
                if comm.is_main:
                    _write_diffusion(f, inputs, s.chunk_rows, tally)
            else:
                fitted = fit(problem, s, comm, progress, timings,
                             top_similarities=top if s.method == "llp" else None)
                if partial is not None:
                    partial.save_fitted(fitted, None if choice is None else choice.summary(), rows.zero_rows,
                                        timings)
        if s.method != "diffusion":
            _vote_pass(problem, fitted, comm, tally, partial, saved is not None, choice is not None,
                       progress, timings, args.quiet)
            if fitted.log_density is not None:
                log_density = fitted.log_density.cpu().numpy()
        if not comm.is_main:
            return {}
        summary = _finish(args, s, choice, inputs, comm, device, rows, outputs, tally, log_density, timings,
                          started)
    except BaseException as exc:
        if outputs is not None:
            outputs.abort(keep_partial=isinstance(exc, KeyboardInterrupt))
        raise
    return summary


def _saved_fit(partial: Optional[PartialRun], comm: Comm, device: torch.device):
    """A resumed run's saved fit (``PartialRun.load_fitted``) on every process, or None."""
    saved = partial.load_fitted(torch.device("cpu")) if partial is not None and partial.resumed else None
    if comm.world > 1:
        saved = comm.broadcast_object(saved)
    if saved is None:
        return None
    fitted, *rest = saved
    return (fitted.to(device), *rest)


def _vote_pass(problem: Problem, fitted, comm: Comm, tally: Optional[_Tally], partial: Optional[PartialRun],
               resumed: bool, chose: bool, progress, timings: dict, quiet: bool) -> None:
    """``stream_votes`` into the tally; with ``partial``, each finished round is recorded
    there, and a resumed run starts after the last one recorded."""
    first, round_done = 0, None
    if partial is not None:
        found = partial.progress() if resumed else None
        if found is not None:
            first = found.rounds_done
            tally.restore(found)
            problem.rows.zero_rows = found.zero_rows
            timings["resumed_at_round"] = first
            if not quiet:
                total = comm.rounds(problem.rows.n, fitted.settings.chunk_rows)
                print(f"resuming {partial.folder}: {first} of {total} chunks were done", file=sys.stderr)

        def round_done(j: int) -> None:
            partial.round_done(tally.progress(j + 1, problem.rows.zero_rows))
    first = comm.broadcast_int(first)
    start = time.perf_counter()
    checked = chose or fitted.log_density is not None
    stream_votes(problem, fitted, comm, tally, check=not checked, progress=progress, first_round=first,
                 round_done=round_done)
    timings["propagation"] = time.perf_counter() - start


def _write_diffusion(f: np.ndarray, inputs: Inputs, chunk: int, tally: _Tally) -> None:
    _, label, conf, _ = diffusion.shares(f)
    for lo in range(0, len(label), chunk):
        given = np.asarray(inputs.labels[lo:lo + chunk], dtype=np.int64)
        known = given >= 0
        tally(lo, np.where(known, given, label[lo:lo + chunk]),
              np.where(known, np.float32(1), conf[lo:lo + chunk]).astype(np.float32))


def _finish(args, s: Settings, choice, inputs: Inputs, comm: Comm, device, rows: Rows, outputs: Outputs,
            tally: _Tally, log_density, timings: dict, started: float) -> dict:
    n, m = rows.n, len(inputs.labeled_ids)
    labeled_classes = np.asarray(inputs.labels[inputs.labeled_ids], dtype=np.int64)
    summary = {
        "rows": n, "dim": rows.dim, "dtype": inputs.dtype, "labeled": m, "unlabeled": n - m,
        "classes": inputs.num_classes, "method": args.method, "processes": comm.world, "device": str(device),
        "t_used": min(args.t, n - m) if s.method == "llp" else None,
        "labeled_per_class": np.bincount(labeled_classes, minlength=inputs.num_classes).tolist(),
        "pseudo_labeled_per_class": tally.pseudo.tolist(),
        "unassigned": tally.unassigned,
        "mean_confidence": tally.confidence_sum / (n - m) if n > m else None,
        "density_count_r": (density_count_r(log_density, labeled_classes, tally.pseudo)
                            if log_density is not None else None),
        "zero_norm_rows": rows.zero_rows,
    }
    if choice is not None:
        summary["auto"] = choice.summary()
    if inputs.truth is not None:
        start = time.perf_counter()
        summary["eval"] = evaluate(outputs.labels, outputs.confidence, inputs.labels, inputs.truth, SCAN_ROWS)
        timings["evaluation"] = time.perf_counter() - start
        if args.plot and summary["eval"]["deciles"]:
            outputs.add_file("confidence_accuracy.png",
                             plot_png(summary["eval"]["deciles"], f"{s.method}: accuracy by confidence"))
    summary["flags"] = vars(args)
    timings["total"] = time.perf_counter() - started
    summary["timings_s"] = timings
    outputs.add_file("summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    summary["outputs"] = [str(p) for p in outputs.commit()]
    if not args.quiet:
        _report(summary)
    return summary


def _report(summary: dict) -> None:
    lines = [f"{summary['rows']} rows ({summary['labeled']} labeled, {summary['unlabeled']} pseudo-labeled), "
             f"{summary['classes']} classes, method {summary['method']}, {summary['processes']} process(es)"]
    if "auto" in summary:
        auto = summary["auto"]
        score = auto["cross_validation_accuracy"].get(auto["chosen"])
        lines.append(f"auto chose {auto['chosen']}" + (f" (cross-validated accuracy {score:.4f} over "
                     f"{auto['cross_validated_rows']} labeled rows)" if score is not None else
                     " (no class has two labeled rows to cross-validate: the paper's method)"))
    if summary["mean_confidence"] is not None:
        lines.append(f"mean confidence of the pseudo-labels: {summary['mean_confidence']:.4f}")
    if summary["density_count_r"] is not None:
        lines.append(f"density/count correlation (Pearson r over classes): {summary['density_count_r']:.3f}")
    if summary["unassigned"]:
        lines.append(f"rows no label reached (pseudo-label -1): {summary['unassigned']}")
    if summary["zero_norm_rows"]:
        lines.append(f"warning: {summary['zero_norm_rows']} all-zero rows (cosine similarity 0 to every row)")
    ev = summary.get("eval")
    if ev and ev["rows"]:
        lines.append(f"accuracy on the {ev['rows']} unlabeled rows: top-1 {ev['top1']:.4f}, "
                     f"balanced {ev['balanced_accuracy']:.4f}")
        lines.append(decile_table(ev["deciles"]))
    t = summary["timings_s"]
    lines.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
    lines.append("written: " + ", ".join(summary["outputs"]))
    print("\n".join(lines))


# ---- entry point --------------------------------------------------------------------------

def _fail(message: str, rank: int) -> None:
    if rank == 0:
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Optional[List[str]] = None) -> dict:
    """Rank 0 returns the summary (every other rank an empty dict); bad input exits 2
    with one line."""
    args = parse(argv)
    group = distributed.from_environment()
    rank = 0 if group is None else group.rank
    outputs = None
    try:
        device = choose_device(args.device)
        inputs = load_inputs(args)
        n, dim = inputs.embeddings.shape
        usable_backend(args.backend, device, ("topk_similarity",), dim,
                       settings_of(args).longest_top_k(n, len(inputs.labeled_ids)))
        if rank == 0:
            outputs = Outputs(Path(args.out), inputs.embeddings.shape[0],
                              job=job_of(args, 1 if group is None else group.world))
    except InputError as exc:
        _fail(str(exc), rank)
    except OSError as exc:
        _fail(f"cannot write {args.out}: {exc.strerror or exc}", rank)
    try:
        if group is not None:
            if device.type == "cuda":
                device = torch.device("cuda", group.local_rank)
                torch.cuda.set_device(device)
            distributed.setup(group, device.type)
    except BaseException:
        if outputs is not None:
            outputs.abort()
        raise
    try:
        summary = run(args, inputs, Comm(group, device), device, outputs)
    except KeyboardInterrupt:
        if rank == 0 and outputs is not None and outputs.partial is not None:
            print(f"interrupted: the same command continues from the last finished chunk "
                  f"({outputs.partial.folder})", file=sys.stderr)
        raise SystemExit(130)
    except (NonFiniteRow, OSError) as exc:
        if group is not None:
            torch.distributed.destroy_process_group()
        if isinstance(exc, NonFiniteRow):
            _fail(f"--embeddings {args.embeddings}: {exc}", rank)
        _fail(f"cannot write {args.out}: {exc.strerror or exc}", rank)
    if group is not None:
        distributed.teardown()
    return summary


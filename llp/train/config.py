"""The trainer's settings: one typed ``TrainConfig``, the command line that fills it, and
the checks that turn a bad value into one line naming the flag.

``parse(argv)`` returns the config and, with ``--resume``, the checkpoint it resumes: the
saved run's settings win; a flag given again with another value is an error naming it,
except ``RESUMABLE`` flags, which may change on resume (and say so).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from llp_kernels import _validate as rules
from llp_kernels.defaults import BANK_MOMENTUM, K, T, TAU

from ..method.cli import Parser, add_backend, add_device, add_k, add_t, add_tau, flag_of
from ..method.inputs import existing_file, output_dir
from .schedule import LRSchedule, parse_boundaries

BANK_DTYPES = ("auto", "float32", "bfloat16", "float16")
MATMUL_PRECISIONS = ("auto", "highest", "high", "medium")
# Flags that may change when a run resumes: how long, how verbose, where, with which
# kernels, and what to export at the end.
# A field a run saved before it existed had this value (the behaviour of the code then).
LEGACY = {"self_check_replicas": 0, "self_check_folds": 2, "feature_noise": 0.0, "arch": "auto"}
RESUMABLE = ("epochs", "quiet", "device", "backend", "workers", "amp", "matmul_precision", "export_embeddings")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "llp"
    data: Optional[str] = None
    features: Optional[str] = None
    labels: Optional[str] = None
    labeled_fraction: float = 0.1
    labeled_list: Optional[str] = None
    test_fraction: float = 0.2
    image_size: int = 224
    arch: str = "auto"
    feature_noise: float = 0.5
    workers: int = 4
    follow_symlinks: bool = False
    strict_images: bool = False
    seed: int = 0
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_drops: str = "40,52"
    plateau_patience: int = 5
    rate_jump: str = ""
    rate_jump_lr: float = 0.003
    warmup_epochs: int = 60
    warmup_objective: str = "supervised"
    tau: float = TAU
    k: int = K
    t: int = T
    bank_momentum: float = BANK_MOMENTUM
    bank_dtype: str = "auto"
    bank_init: str = "forward"
    bank_refresh: str = "never"
    propagate_from: str = "bank"
    ramp_up_epochs: float = 20.0
    no_density_weighting: bool = False
    no_confidence: bool = False
    pseudo_labels: str = "auto"
    density_over: str = "unlabeled"
    self_check_replicas: int = 2
    self_check_folds: int = 2
    backend: str = "auto"
    device: str = "auto"
    amp: bool = False
    matmul_precision: str = "auto"
    run_dir: Optional[str] = None
    resume: Optional[str] = None
    export_embeddings: Optional[str] = None
    quiet: bool = False

    @property
    def warmup(self) -> int:
        """Warm-up epochs this run really has (supervised runs have none)."""
        return self.warmup_epochs if self.method == "llp" else 0

    def bank_dtype_on(self, device) -> str:
        if self.bank_dtype != "auto":
            return self.bank_dtype
        return "bfloat16" if device.type == "cuda" else "float32"

    def matmul_precision_on(self, device) -> str:
        if self.matmul_precision != "auto":
            return self.matmul_precision
        return "high" if device.type == "cuda" else ""

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.method}-seed{self.seed}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


DEFAULTS = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m llp.train", description=(
        "Local Label Propagation end to end (paper section 3, appendix A). Default: "
        "scikit-learn's bundled digits (1,797 8x8 images), 10% labels, a small conv net."))
    p.add_argument("--method", choices=["llp", "supervised"], default=DEFAULTS.method,
                   help="llp, or supervised: labeled examples only, same network and schedule")
    for flags in (_data_flags, _optimisation_flags, _warm_start_flags, _llp_flags, _run_flags):
        flags(p, DEFAULTS)
    return p


def _data_flags(p, d: TrainConfig) -> None:
    g = p.add_argument_group("data (default: scikit-learn's digits)").add_argument
    g("--data", metavar="DIR", help="image folder, one subfolder per class (or train/ and val/ of them); ResNet-18")
    g("--features", metavar="X.npy", help="precomputed features [N, F]; an MLP")
    g("--labels", metavar="Y.npy", help="true classes [N] of --features")
    g("--labeled-fraction", type=float, default=d.labeled_fraction, help="fraction of training examples labeled, in (0, 1]")
    g("--labeled-list", metavar="FILE", help="text file of training positions that are labeled (overrides --labeled-fraction)")
    g("--test-fraction", type=float, default=d.test_fraction,
      help="held-out stratified test fraction (a fixed split; not for image folders with val/)")
    g("--image-size", type=int, default=d.image_size, help="--data: training crop size in pixels")
    g("--arch", choices=["auto", "resnet18", "convnet"], default=d.arch,
      help="images: ResNet-18 (auto for --data), or the small conv net of the built-in digits (auto for "
           "them; for images of a few dozen pixels); --features always trains an MLP")
    g("--feature-noise", type=float, default=d.feature_noise,
      help="--features: augmentation, Gaussian noise of this standard deviation added to the standardised "
           "features of every training batch (0: none)")
    g("--workers", type=int, default=d.workers, help="--data: image-decoding threads")
    g("--follow-symlinks", action="store_true", help="--data: follow links that point outside DIR")
    g("--strict-images", action="store_true",
      help="--data: a file that does not decode as an image is an error (default: skipped with a warning)")


def _optimisation_flags(p, d: TrainConfig) -> None:
    g = p.add_argument_group("optimisation (paper appendix A)").add_argument
    g("--seed", type=int, default=d.seed, help="seed of the labeled split, initialisation and batches")
    g("--epochs", type=int, default=d.epochs, help="training epochs after the warm-up")
    g("--batch-size", type=int, default=d.batch_size, help="examples per step")
    g("--lr", type=float, default=d.lr, help="initial SGD learning rate")
    g("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g("--weight-decay", type=float, default=d.weight_decay, help="weight decay (not on biases or norm layers)")
    g("--lr-drops", default=d.lr_drops, help="epochs at which the lr drops x0.1, or 'plateau': three drops, "
      "each when the training loss has not improved for --plateau-patience epochs")
    g("--plateau-patience", type=int, default=d.plateau_patience, help="epochs without improvement before a plateau drop")
    g("--rate-jump", default=d.rate_jump, help="rate-jump phase after the drops: 'E,E1,E2' (lr to --rate-jump-lr at "
      "epoch E, x0.1 at E1 and E2) or 'plateau' (default: none)")
    g("--rate-jump-lr", type=float, default=d.rate_jump_lr, help="lr at the start of the rate-jump phase")


def _warm_start_flags(p, d: TrainConfig) -> None:
    g = p.add_argument_group("warm start (llp only)").add_argument
    g("--warmup-epochs", type=int, default=d.warmup_epochs, help="warm-up epochs before LLP; 0: none")
    g("--warmup-objective", choices=["supervised", "instance"], default=d.warmup_objective,
      help="supervised: cross-entropy on the labeled rows (epochs over them, as --method supervised); "
           "instance: instance recognition over every row (Wu et al. 2018)")
    g("--ramp-up-epochs", type=float, default=d.ramp_up_epochs,
      help="sigmoid ramp-up of the pseudo-labeled examples' loss weight over this many LLP epochs; 0: none")


def _llp_flags(p, d: TrainConfig) -> None:
    g = p.add_argument_group("LLP").add_argument
    add_tau(g, of="non-parametric softmax")
    add_k(g, note=" in propagation")
    add_t(g)
    g("--bank-momentum", type=float, default=d.bank_momentum, help="memory-bank running-average momentum")
    g("--bank-dtype", choices=BANK_DTYPES, default=d.bank_dtype,
      help="storage dtype of the memory bank; auto: bfloat16 on CUDA (half the bytes the aggregation "
           "loss reads), float32 on CPU")
    g("--bank-init", choices=["forward", "random"], default=d.bank_init,
      help="first bank: the initial network's embeddings, or random unit rows (Wu et al.)")
    g("--bank-refresh", choices=["never", "start", "epoch"], default=d.bank_refresh,
      help="rewrite the bank from a forward pass over the training rows when LLP starts (start), or also "
           "at every epoch end followed by a full propagation (epoch); a supervised warm-up always refreshes at the start")
    g("--propagate-from", choices=["bank", "batch"], default=d.propagate_from,
      help="per-step propagation from the updated bank rows or from the step's own embeddings")
    g("--no-density-weighting", action="store_true", help="NoDW ablation: plain weighted kNN")
    g("--no-confidence", action="store_true", help="NoC ablation: every loss weight is 1")
    g("--pseudo-labels", choices=["auto", "propagation", "input", "classifier"], default=d.pseudo_labels,
      help="where pseudo-labels come from: propagation: in the memory bank, every step (the paper); input: "
           "once, when LLP starts, the propagation tool's default over the inputs themselves (features, or "
           f"images of at most {4096} values), then fixed; auto: whichever of the two the self-check finds "
           "more accurate on its held-out labeled rows, every epoch (propagation without a self-check); "
           "classifier: the classifier head (what the authors' release did)")
    g("--density-over", choices=["unlabeled", "all"], default=d.density_over,
      help="density over the T nearest unlabeled rows (paper) or over all rows (release)")
    g("--self-check-replicas", type=int, default=d.self_check_replicas,
      help="replicas of the run, each holding one fold of the labeled rows out, whose held-out accuracy "
           "gates the pseudo-labeled loss every epoch (llp.train.selfcheck); 0: no self-check, the paper's LLP. "
           "Each replica adds (folds - 1) / folds of the run's training time")
    g("--self-check-folds", type=int, default=d.self_check_folds,
      help="folds of the labeled rows; a replica keeps all but one of them labeled (and that share of the "
           "unlabeled rows)")


def _run_flags(p, d: TrainConfig) -> None:
    g = p.add_argument_group("run").add_argument
    add_backend(g)
    add_device(g, to="train")
    g("--amp", action="store_true", help="bf16 autocast for the network (CUDA; also allowed on CPU)")
    g("--matmul-precision", choices=MATMUL_PRECISIONS, default=d.matmul_precision,
      help="torch.set_float32_matmul_precision for the network and the fp32 kernels; auto: high (TF32) "
           "on CUDA, torch's setting on CPU; highest: exact fp32 products")
    g("--run-dir", metavar="DIR", help="output directory (default: runs/<method>-seed<seed>)")
    g("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    g("--export-embeddings", metavar="DIR", help="after training, write the training rows' embeddings "
      "(DIR/embeddings.npy), their labels with -1 for unlabeled (DIR/labels.npy) and their true classes "
      "(DIR/true_labels.npy): the input of python -m llp.propagate")
    g("--quiet", action="store_true", help="no progress bars or per-epoch lines (the final table still prints)")


def check(c: TrainConfig) -> None:
    """One ValueError naming the flag for the first bad value."""
    if not 0.0 < c.labeled_fraction <= 1.0:
        raise ValueError(f"--labeled-fraction must lie in (0, 1], got {c.labeled_fraction}")
    if not 0.0 < c.test_fraction < 1.0:
        raise ValueError(f"--test-fraction must lie in (0, 1), got {c.test_fraction}")
    if c.self_check_folds < 2:
        raise ValueError(f"--self-check-folds must be >= 2, got {c.self_check_folds}")
    if not 0 <= c.self_check_replicas <= c.self_check_folds:
        raise ValueError(f"--self-check-replicas must lie in [0, --self-check-folds = {c.self_check_folds}], "
                         f"got {c.self_check_replicas}")
    for name in ("k", "t", "epochs", "image_size", "workers", "plateau_patience"):
        if getattr(c, name) < 1:
            raise ValueError(f"{flag_of(name)} must be >= 1, got {getattr(c, name)}")
    if c.batch_size < 2:
        raise ValueError(f"--batch-size must be >= 2 (batch norm cannot train on one row), got {c.batch_size}")
    if c.warmup_epochs < 0:
        raise ValueError(f"--warmup-epochs must be >= 0, got {c.warmup_epochs}")
    for name in ("ramp_up_epochs", "momentum", "weight_decay", "feature_noise"):
        if not (math.isfinite(getattr(c, name)) and getattr(c, name) >= 0):
            raise ValueError(f"{flag_of(name)} must be a finite number >= 0, got {getattr(c, name)}")
    if not 0 <= c.seed < 2 ** 32:
        raise ValueError(f"--seed must lie in [0, 2**32), got {c.seed}")
    rules.temperature("--tau", c.tau)
    for name in ("lr", "rate_jump_lr"):
        rules.positive_float(flag_of(name), getattr(c, name))
    rules.unit_interval("--bank-momentum", c.bank_momentum)
    LRSchedule(c.lr, parse_boundaries(c.lr_drops, "--lr-drops", 3), parse_boundaries(c.rate_jump, "--rate-jump", 3))
    _check_paths(c)


def _check_paths(c: TrainConfig) -> None:
    if c.data and c.features:
        raise ValueError("--data and --features are alternatives: give one")
    if bool(c.features) != bool(c.labels):
        raise ValueError("--features and --labels go together")
    if c.data and not Path(c.data).is_dir():
        raise ValueError(f"--data {c.data} is not a directory")
    for flag, path in (("--labeled-list", c.labeled_list), ("--features", c.features), ("--labels", c.labels)):
        if path:
            existing_file(path, flag)
    for flag, path in (("--run-dir", c.run_dir), ("--export-embeddings", c.export_embeddings)):
        if path:
            output_dir(path, flag)


def _given(parser: argparse.ArgumentParser, argv: List[str]) -> dict:
    """The flags written on the command line, with their parsed values."""
    quiet = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if isinstance(action, argparse._StoreTrueAction):
                kwargs["action"] = "store_true"
            else:
                kwargs["type"] = action.type
            quiet.add_argument(*action.option_strings, **kwargs)
    return vars(quiet.parse_known_args(argv)[0])


def parse(argv: Optional[List[str]] = None) -> Tuple[TrainConfig, Optional[dict]]:
    """(config, checkpoint to resume or None); exits with one line on a bad flag."""
    from .checkpoint import load_checkpoint

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    config, ckpt = TrainConfig(**vars(args)), None
    if args.resume:
        ckpt = load_checkpoint(Path(args.resume))
        config = resumed_config(ckpt["config"], _given(parser, argv), args.resume)
        _check_choices(parser, config)
    try:
        check(config)
    except ValueError as exc:
        parser.error(f"--resume {args.resume}: {exc}" if args.resume else str(exc))
    return config, ckpt


def _check_choices(parser: argparse.ArgumentParser, config: TrainConfig) -> None:
    """A resumed run's settings of flags with choices must be among them."""
    from .checkpoint import CHECKPOINT, RunDirError

    for action in parser._actions:
        if action.choices is not None and getattr(config, action.dest) not in action.choices:
            raise RunDirError(f"error: --resume {config.resume}: {CHECKPOINT} is malformed: its config's "
                              f"{action.dest} is {getattr(config, action.dest)!r}, not one of "
                              f"{', '.join(map(str, action.choices))}")


def _kind(value) -> str:
    """What a saved setting must be, read off the default of its field."""
    if value is None or isinstance(value, str):
        return "str"
    return type(value).__name__


def _fits(value, kind: str) -> bool:
    if kind == "str":
        return value is None or isinstance(value, str)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, bool)


def resumed_config(saved: dict, given: dict, resume: str) -> TrainConfig:
    """The saved settings (fields added since take today's defaults), with the
    ``RESUMABLE`` flags given now; any other flag given with a new value is an error."""
    from .checkpoint import CHECKPOINT, RunDirError

    defaults = DEFAULTS.to_dict()
    saved = {k: v for k, v in saved.items() if k in defaults}
    for name, value in saved.items():
        if not _fits(value, _kind(defaults[name])):
            raise RunDirError(f"error: --resume {resume}: {CHECKPOINT} is malformed: its config's {name} is "
                              f"{value!r}, of type {type(value).__name__} ({_kind(defaults[name])} expected)")
    merged = {**defaults, **LEGACY, **saved}
    for name, value in given.items():
        if name in ("resume", "run_dir") or value == merged.get(name):
            continue
        if name not in RESUMABLE:
            allowed = ", ".join(flag_of(r) for r in RESUMABLE)
            print(f"error: --resume {resume}: {flag_of(name)} {value} differs from the saved run's "
                  f"{merged.get(name)!r}; only {allowed} may change on resume", file=sys.stderr)
            raise SystemExit(2)
        print(f"--resume: using {flag_of(name)} {value} (saved run: {merged.get(name)!r})",
              file=sys.stderr)
        merged[name] = value
    merged.update(run_dir=resume, resume=resume)
    return TrainConfig(**merged)

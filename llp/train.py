"""``python -m llp.train``: Local Label Propagation end to end (paper section 3, app. A).

Default: scikit-learn's bundled digits (1,797 real 8x8 images), 10% labels, a small
conv net, under a minute on a CPU. ``--data DIR`` trains a ResNet-18 on an image folder,
``--features X.npy --labels y.npy`` an MLP on precomputed features. Every epoch writes
a metrics line to RUN_DIR/metrics.jsonl and an atomic checkpoint; ``--resume RUN_DIR``
continues exactly; ``python -m llp.report RUN_DIR`` plots the metrics.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .algorithm import LLPConfig, LLPState
from .checkpoint import CHECKPOINT, FORMAT, load_checkpoint, rng_state, save_atomically, set_rng_state
from .data import load_digits_split, load_feature_split
from .metrics import (accuracy_metrics, aggregation_metric, density_count_correlation,
                      labeled_only_knn_top1, pseudo_label_metrics, run_model)
from .model import build_model, parameter_groups
from . import distributed
from .schedule import LRSchedule, parse_boundaries
from .sharded import ShardedLLPState

BANK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llp.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--method", choices=["llp", "supervised"], default="llp",
      help="llp, or supervised: labeled examples only, same network and schedule")
    data = p.add_argument_group("data (default: scikit-learn's digits)")
    data.add_argument("--data", default=None, metavar="DIR",
                      help="image folder, one subfolder per class (or train/ and val/ of them); ResNet-18")
    data.add_argument("--features", default=None, metavar="X.npy", help="precomputed features [N, F]; an MLP")
    data.add_argument("--labels", default=None, metavar="Y.npy", help="true classes [N] of --features")
    data.add_argument("--labeled-fraction", type=float, default=0.1,
                      help="fraction of training examples labeled, in (0, 1]")
    data.add_argument("--labeled-list", default=None,
                      help="text file of training positions that are labeled (overrides --labeled-fraction)")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="held-out stratified test fraction (fixed split; not for image folders with val/)")
    data.add_argument("--image-size", type=int, default=224, help="--data: training crop size in pixels")
    data.add_argument("--workers", type=int, default=4, help="--data: image-decoding threads")
    a("--seed", type=int, default=0, help="seed of the labeled split, initialisation and batches")
    a("--epochs", type=int, default=60, help="training epochs after the warm-up")
    a("--batch-size", type=int, default=128, help="examples per step")
    a("--lr", type=float, default=0.03, help="initial SGD learning rate")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--weight-decay", type=float, default=1e-4, help="weight decay (not on biases or norm layers)")
    a("--lr-drops", default="40,52",
      help="epochs at which the lr drops x0.1, or 'plateau': three drops, each when the training "
           "loss has not improved for --plateau-patience epochs")
    a("--plateau-patience", type=int, default=5, help="epochs without improvement before a plateau drop")
    a("--rate-jump", default="",
      help="rate-jump phase after the drops: 'E,E1,E2' (lr to --rate-jump-lr at epoch E, x0.1 at E1 "
           "and E2) or 'plateau'; empty: none")
    a("--rate-jump-lr", type=float, default=0.003, help="lr at the start of the rate-jump phase")
    a("--warmup-epochs", type=int, default=None,
      help="instance-recognition warm-up epochs before LLP (llp only); default 10 for --data, else 0")
    llp = p.add_argument_group("LLP")
    llp.add_argument("--tau", type=float, default=0.07, help="temperature of the non-parametric softmax")
    llp.add_argument("--k", type=int, default=10, help="K labeled neighbours that vote in propagation")
    llp.add_argument("--t", type=int, default=25, help="T nearest unlabeled rows in the local density")
    llp.add_argument("--bank-momentum", type=float, default=0.5, help="memory-bank running-average momentum")
    llp.add_argument("--bank-dtype", choices=list(BANK_DTYPES), default="float32",
                     help="storage dtype of the memory bank")
    llp.add_argument("--no-density-weighting", action="store_true", help="NoDW ablation: plain weighted kNN")
    llp.add_argument("--no-confidence", action="store_true", help="NoC ablation: every loss weight is 1")
    llp.add_argument("--pseudo-labels", choices=["propagation", "classifier"], default="propagation",
                     help="where pseudo-labels come from (classifier: what the authors' release did)")
    llp.add_argument("--density-over", choices=["unlabeled", "all"], default="unlabeled",
                     help="density over the T nearest unlabeled rows (paper) or over all rows (release)")
    a("--backend", default="auto", help="llp_kernels backend: auto, reference, cpu, triton, cuda")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    a("--amp", action="store_true", help="bf16 autocast for the network (CUDA; also allowed on CPU)")
    a("--run-dir", default=None, help="output directory (default runs/<method>-seed<seed>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    a("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def check_config(args, parser) -> None:
    """One clear line per bad value (argparse's error: usage + message, exit 2)."""
    if not 0.0 < args.labeled_fraction <= 1.0:
        parser.error(f"--labeled-fraction must lie in (0, 1], got {args.labeled_fraction}")
    if not 0.0 < args.test_fraction < 1.0:
        parser.error(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    for name in ("k", "t", "epochs", "batch_size", "image_size", "workers", "plateau_patience"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_epochs is not None and args.warmup_epochs < 0:
        parser.error(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    for name in ("tau", "lr", "rate_jump_lr"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if not 0.0 <= args.bank_momentum <= 1.0:
        parser.error(f"--bank-momentum must lie in [0, 1], got {args.bank_momentum}")
    import llp_kernels as lk
    if args.backend != "auto" and args.backend not in lk.BACKENDS:
        parser.error(f"--backend must be auto or one of {', '.join(lk.BACKENDS)}, got {args.backend!r}")
    try:
        drops = parse_boundaries(args.lr_drops, "--lr-drops", 3)
        jump = parse_boundaries(args.rate_jump, "--rate-jump", 3)
        LRSchedule(args.lr, drops, jump)
    except ValueError as exc:
        parser.error(str(exc))
    if args.data and args.features:
        parser.error("--data and --features are alternatives: give one")
    if bool(args.features) != bool(args.labels):
        parser.error("--features and --labels go together")
    if args.data and not Path(args.data).is_dir():
        parser.error(f"--data {args.data} is not a directory")
    for flag, path in (("--labeled-list", args.labeled_list), ("--features", args.features),
                       ("--labels", args.labels)):
        if path and not Path(path).is_file():
            parser.error(f"{flag} {path} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


def resolve_args(parser, argv):
    """Parsed flags; with --resume, the saved config (over today's defaults) wins except
    for --epochs (to extend a run) and --quiet."""
    args = parser.parse_args(argv)
    if not args.resume:
        return args, None
    ckpt = load_checkpoint(Path(args.resume))
    saved = {**vars(parser.parse_args([])), **ckpt["config"]}
    given = argv if argv is not None else sys.argv[1:]
    epochs_given = any(a == "--epochs" or a.startswith("--epochs=") for a in given)
    saved.update(run_dir=args.resume, resume=args.resume, quiet=args.quiet,
                 epochs=args.epochs if epochs_given else saved["epochs"])
    return argparse.Namespace(**saved), ckpt


def load_split(args):
    if args.data:
        from .image_folder import load_image_folder_split
        return load_image_folder_split(args.data, args.labeled_fraction, args.seed, args.image_size,
                                       args.workers, args.test_fraction, args.labeled_list)
    if args.features:
        return load_feature_split(args.features, args.labels, args.labeled_fraction, args.seed,
                                  args.test_fraction, args.labeled_list)
    return load_digits_split(args.labeled_fraction, args.seed, args.test_fraction, args.labeled_list)


def main(argv=None) -> dict:
    parser = build_parser()
    args, resume_ckpt = resolve_args(parser, argv)
    check_config(args, parser)
    if args.warmup_epochs is None:
        args.warmup_epochs = 10 if args.data else 0
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    group = distributed.from_environment()  # torchrun: one process per GPU, bank sharded
    if group is not None:
        if device.type == "cuda":
            device = torch.device("cuda", group.local_rank)
            torch.cuda.set_device(device)
        distributed.setup(group, device.type)
    record = train(args, resume_ckpt, parser, device, group)
    if group is not None:
        # Every DDP wrapper and autograd graph holding the group died with train()'s frame,
        # so the group (and its worker threads) is really released here.
        distributed.teardown()
    return record


def train(args, resume_ckpt, parser, device: torch.device, group) -> dict:
    """The whole run in this process (one rank of it under torchrun): returns the last
    epoch's metrics record."""
    is_main = group is None or group.rank == 0
    warmup = args.warmup_epochs if args.method == "llp" else 0
    run_dir = Path(args.run_dir or f"runs/{args.method}-seed{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(vars(args))

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    batches = torch.Generator().manual_seed(args.seed)
    try:
        split = load_split(args)
    except ValueError as exc:
        parser.error(str(exc))
    net = build_model(split.kind, split.input_shape, split.num_classes).to(device)
    model = net if group is None else torch.nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None,
        # the warm-up leaves the classifier unused, supervised training the embedding head
        find_unused_parameters=warmup > 0 or args.method == "supervised")
    optimizer = torch.optim.SGD(parameter_groups(net, args.weight_decay), lr=args.lr,
                                momentum=args.momentum)
    schedule = LRSchedule(args.lr, parse_boundaries(args.lr_drops, "--lr-drops", 3),
                          parse_boundaries(args.rate_jump, "--rate-jump", 3), args.rate_jump_lr,
                          args.plateau_patience)
    train_y, test_y = split.train_y.to(device), split.test_y.to(device)
    llp_cfg = LLPConfig(tau=args.tau, k=args.k, t=args.t, momentum=args.bank_momentum,
                        density_weighting=not args.no_density_weighting,
                        use_confidence=not args.no_confidence, density_over=args.density_over,
                        backend=args.backend)
    # The bank starts from the initial network's embeddings (each rank: its own shard).
    rows = None if group is None else group.shard(len(train_y))
    bank = run_model(net, split.train, device, output=0, rows=rows).to(BANK_DTYPES[args.bank_dtype]).contiguous()
    if group is None:
        state = LLPState(bank, train_y, split.labeled.to(device), split.num_classes, llp_cfg)
    else:
        state = ShardedLLPState(bank, train_y, split.labeled.to(device), split.num_classes, llp_cfg, group)
    start_epoch = 0
    if resume_ckpt is not None:
        try:
            net.load_state_dict(resume_ckpt["model"])
            optimizer.load_state_dict(resume_ckpt["optimizer"])
            schedule.load_state_dict(resume_ckpt["schedule"])
            state.load_state_dict({k: (v.to(device) if torch.is_tensor(v) else v)
                                   for k, v in resume_ckpt["llp"].items()})
            set_rng_state(resume_ckpt["rng"], batches)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise SystemExit(f"error: --resume {args.resume}: {CHECKPOINT} does not fit this run "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0]})")
        start_epoch = resume_ckpt["epoch"] + 1
    elif args.method == "llp" and warmup == 0:
        state.update_density()
        state.propagate()  # no unlabeled example trains on a meaningless label

    if is_main:
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    pool = state.labeled_idx if args.method == "supervised" else torch.arange(len(train_y), device=device)
    metrics_path = run_dir / "metrics.jsonl"
    if is_main:
        trim_metrics(metrics_path, start_epoch if resume_ckpt is not None else 0)

    record = {}
    started = time.time()
    total = warmup + args.epochs
    for epoch in range(start_epoch, total):
        phase = "warmup" if epoch < warmup else args.method
        lr = args.lr if phase == "warmup" else schedule.lr
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        sums = train_epoch(model, optimizer, state, split, train_y, pool, batches, device, args, phase,
                           desc=f"epoch {epoch + 1}/{total}" + (" (warm-up)" if phase == "warmup" else ""),
                           group=group, augment=augment_generator(batches, args.seed, epoch, group))
        if args.method == "llp" and (phase != "warmup" or epoch + 1 == warmup):
            state.update_density()
            if epoch + 1 == warmup:
                state.propagate()  # LLP starts from labels propagated in the warmed-up embedding
        if phase != "warmup":
            schedule.end_epoch(epoch + 1 - warmup, sums["loss"] / len(pool))

        record = {"epoch": epoch + 1, "phase": phase, "lr": lr,
                  **{f"train_{k}": v / len(pool) for k, v in sums.items()},
                  **accuracy_metrics(run_model(net, split.test, device), test_y, split.num_classes),
                  **pseudo_label_metrics(state, train_y, known=phase != "warmup" or epoch + 1 == warmup),
                  "aggregation": aggregation_metric(state.bank, train_y, split.num_classes),
                  "density_count_r": density_count_correlation(state),
                  "seconds": time.time() - started}
        llp_state = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in state.state_dict().items()}
        if not is_main:
            continue
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_atomically({"format": FORMAT, "config": config, "epoch": epoch,
                         "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "schedule": schedule.state_dict(), "llp": llp_state,
                         "rng": rng_state(batches)}, run_dir / CHECKPOINT)
        if not args.quiet:
            print(f"epoch {epoch + 1:3d}  {phase:10s} lr {lr:.2g}  loss {record['train_loss']:.3f}  "
                  f"test top-1 {record['test_top1']:.4f}  pseudo-label acc "
                  f"{record['pseudo_acc']:.4f}", file=sys.stderr)

    if record and not args.quiet and is_main:
        print_summary(record, args, state, split, metrics_path, run_dir)
    return record


def augment_generator(batches: torch.Generator, seed: int, epoch: int, group) -> torch.Generator:
    """Where augmentation randomness comes from. One process: the batch generator itself.
    Several: a per-rank, per-epoch generator, so that the shared batch generator (which
    draws the epoch's order) stays identical on every rank and a resumed run is exact."""
    if group is None:
        return batches
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + group.rank)


PROGRESS_EVERY = 20  # steps between progress-bar updates (each one waits for the device)


def train_epoch(model, optimizer, state, split, train_y, pool, batches, device, args, phase, desc,
                group=None, augment=None) -> dict:
    """One pass over ``pool`` in a random order; returns summed loss parts. Loss sums stay
    on the device (fp64) so that a step never waits for the GPU, except for the progress
    bar every PROGRESS_EVERY steps."""
    from tqdm import tqdm

    model.train()
    order = pool[torch.randperm(len(pool), generator=batches).to(device)]
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, agg
    zero = torch.zeros((), device=device)
    world, rank = (1, 0) if group is None else (group.world, group.rank)
    # Each step takes world * batch_size rows of the shared order; rank r trains on its part.
    # A final step with fewer rows than processes is dropped (on every rank alike).
    steps = [s for s in range(0, len(order), world * args.batch_size) if len(order) - s >= world]
    bar = tqdm(steps, desc=desc, leave=False, disable=args.quiet or rank != 0, file=sys.stderr)
    for step, start in enumerate(bar):
        idx = order[start:start + world * args.batch_size].tensor_split(world)[rank]
        x = split.train.batch(idx, augment if augment is not None else batches).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            embedding, logits = model(x)
        embedding = embedding.float()
        if phase == "warmup":
            loss = state.instance_loss(idx, embedding)
            ce, agg = zero, loss.detach()
        elif phase == "supervised":
            ce = torch.nn.functional.cross_entropy(logits.float(), state.labels[idx])
            loss, agg = ce, zero
        else:
            loss, ce, agg = state.loss(idx, embedding, logits)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if phase != "supervised":
            state.update_bank(idx, embedding)
        if phase == "llp":
            if args.pseudo_labels == "classifier":
                state.set_labels_from_classifier(idx, logits)
            else:
                state.propagate(idx)
        sums += torch.stack([loss.detach(), ce.detach(), agg.detach()]).double() * len(idx)
        if not args.quiet and rank == 0 and (step % PROGRESS_EVERY == 0 or step == len(steps) - 1):
            postfix = {"loss": f"{float(loss.detach()):.3f}"}
            if phase == "llp":
                postfix["pseudo_acc"] = f"{pseudo_label_metrics(state, train_y)['pseudo_acc']:.3f}"
            bar.set_postfix(postfix)
    if group is not None:
        sums = distributed.all_sum(sums)
    return dict(zip(("loss", "ce", "agg"), sums.tolist()))


def trim_metrics(path: Path, keep_epochs: int) -> None:
    """A fresh run starts an empty metrics file; a resumed one drops lines past its checkpoint."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line and json.loads(line)["epoch"] <= keep_epochs]
    path.write_text("".join(line + "\n" for line in kept))


def print_summary(record, args, state, split, metrics_path, run_dir) -> None:
    name = "LLP" if args.method == "llp" else "supervised (labeled only)"
    print(f"\n| result ({name}, {int(state.labeled.sum())} labeled of {len(state.labels)}) | value |")
    print("|---|---|")
    print(f"| test top-1 | {record['test_top1']:.4f} |")
    print(f"| test top-5 | {record['test_top5']:.4f} |")
    if args.method == "llp":
        print(f"| pseudo-label accuracy on unlabeled | {record['pseudo_acc']:.4f} |")
    knn = labeled_only_knn_top1(split)
    if knn == knn:
        print(f"| for comparison: 1-NN on raw inputs, labeled rows only | {knn:.4f} |")
    print(f"| metrics (plots: python -m llp.report {run_dir}) | {metrics_path} |")
    print(f"| checkpoint | {run_dir / CHECKPOINT} |")


if __name__ == "__main__":
    main()

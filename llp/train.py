"""``python -m llp.train``: Local Label Propagation end to end (paper section 3, app. A).

Default: scikit-learn's bundled digits (1,797 real 8x8 images), 10% labels, a small
conv net, a few minutes on a CPU. Every epoch writes a metrics line to
RUN_DIR/metrics.jsonl and an atomic checkpoint; ``--resume RUN_DIR`` continues exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .algorithm import LLPConfig, LLPState
from .data import augment, load_digits_split
from .metrics import (accuracy_metrics, aggregation_metric, classify,
                      density_count_correlation, pseudo_label_metrics)
from .model import parameter_groups, small_convnet

CHECKPOINT = "checkpoint.pt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llp.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--method", choices=["llp", "supervised"], default="llp",
      help="llp, or supervised: labeled examples only, same network and schedule")
    a("--labeled-fraction", type=float, default=0.1, help="fraction of training examples labeled, in (0, 1]")
    a("--labeled-list", default=None, help="text file of training positions that are labeled (overrides --labeled-fraction)")
    a("--seed", type=int, default=0, help="seed of the labeled split, initialisation and batches")
    a("--epochs", type=int, default=60, help="training epochs")
    a("--batch-size", type=int, default=128, help="examples per step")
    a("--lr", type=float, default=0.03, help="initial SGD learning rate")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--weight-decay", type=float, default=1e-4, help="weight decay (not on biases or norm layers)")
    a("--lr-drops", default="40,52", help="comma-separated epochs at which the lr drops x0.1")
    a("--tau", type=float, default=0.07, help="temperature of the non-parametric softmax")
    a("--k", type=int, default=10, help="K labeled neighbours that vote in propagation")
    a("--t", type=int, default=25, help="T nearest unlabeled rows in the local density")
    a("--bank-momentum", type=float, default=0.5, help="memory-bank running-average momentum")
    a("--no-density-weighting", action="store_true", help="NoDW ablation: plain weighted kNN")
    a("--no-confidence", action="store_true", help="NoC ablation: every loss weight is 1")
    a("--pseudo-labels", choices=["propagation", "classifier"], default="propagation",
      help="where pseudo-labels come from (classifier: what the authors' release did)")
    a("--density-over", choices=["unlabeled", "all"], default="unlabeled",
      help="density over the T nearest unlabeled rows (paper) or over all rows (release)")
    a("--backend", default="auto", help="llp_kernels backend: auto, reference, cpu, triton, cuda")
    a("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    a("--run-dir", default=None, help="output directory (default runs/<method>-seed<seed>)")
    a("--resume", default=None, metavar="RUN_DIR", help="continue the run saved in RUN_DIR")
    a("--quiet", action="store_true", help="no progress bars")
    return p


def check_config(args, parser) -> None:
    """One clear line per bad value (argparse's error: usage + message, exit 2)."""
    if not 0.0 < args.labeled_fraction <= 1.0:
        parser.error(f"--labeled-fraction must lie in (0, 1], got {args.labeled_fraction}")
    for name in ("k", "t", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.tau <= 0 or args.lr <= 0:
        parser.error("--tau and --lr must be > 0")
    if not 0.0 <= args.bank_momentum <= 1.0:
        parser.error(f"--bank-momentum must lie in [0, 1], got {args.bank_momentum}")
    import llp_kernels as lk
    if args.backend != "auto" and args.backend not in lk.BACKENDS:
        parser.error(f"--backend must be auto or one of {', '.join(lk.BACKENDS)}, got {args.backend!r}")
    try:
        args.lr_drop_epochs = sorted(int(e) for e in args.lr_drops.split(",") if e.strip())
    except ValueError:
        parser.error(f"--lr-drops must be comma-separated epochs, got {args.lr_drops!r}")
    if args.labeled_list and not Path(args.labeled_list).is_file():
        parser.error(f"--labeled-list {args.labeled_list} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")


def save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"error: --resume {run_dir}: no {CHECKPOINT} there")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise SystemExit(f"error: --resume {run_dir}: {CHECKPOINT} is unreadable ({type(exc).__name__}: {exc})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != 1 or "config" not in ckpt:
        raise SystemExit(f"error: --resume {run_dir}: {CHECKPOINT} is not an llp checkpoint of format 1")
    return ckpt


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate(), "batches": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    generator.set_state(state["batches"])


def lr_at(epoch: int, args) -> float:
    return args.lr * 0.1 ** sum(epoch >= e for e in args.lr_drop_epochs)


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    resume_ckpt = None
    if args.resume:
        resume_ckpt = load_checkpoint(Path(args.resume))
        # The saved config wins; only --epochs (to extend a run) and --quiet apply.
        saved = dict(resume_ckpt["config"])
        epochs_given = any(a == "--epochs" or a.startswith("--epochs=") for a in (argv or sys.argv[1:]))
        saved.update(run_dir=args.resume, resume=args.resume, quiet=args.quiet,
                     epochs=args.epochs if epochs_given else saved["epochs"])
        args = argparse.Namespace(**saved)
    check_config(args, parser)
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    run_dir = Path(args.run_dir or f"runs/{args.method}-seed{args.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "lr_drop_epochs"}
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    batches = torch.Generator().manual_seed(args.seed)
    try:
        split = load_digits_split(args.labeled_fraction, args.seed, labeled_list=args.labeled_list)
    except ValueError as exc:
        parser.error(str(exc))
    model = small_convnet(split.num_classes).to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, args.weight_decay), lr=args.lr,
                                momentum=args.momentum)
    train_x, train_y = split.train_x.to(device), split.train_y.to(device)
    test_x, test_y = split.test_x.to(device), split.test_y.to(device)
    labeled = split.labeled.to(device)
    llp_cfg = LLPConfig(tau=args.tau, k=args.k, t=args.t, momentum=args.bank_momentum,
                        density_weighting=not args.no_density_weighting,
                        use_confidence=not args.no_confidence, density_over=args.density_over,
                        backend=args.backend)

    with torch.no_grad():  # bank starts from the initial network's embeddings
        model.eval()
        bank = torch.cat([model(train_x[i:i + 512])[0] for i in range(0, len(train_x), 512)])
    state = LLPState(bank.contiguous(), train_y, labeled, split.num_classes, llp_cfg)
    start_epoch = 0
    if resume_ckpt is not None:
        model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        state.load_state_dict({k: (v.to(device) if torch.is_tensor(v) else v)
                               for k, v in resume_ckpt["llp"].items()})
        set_rng_state(resume_ckpt["rng"], batches)
        start_epoch = resume_ckpt["epoch"] + 1
    elif args.method == "llp":
        state.update_density()
        state.propagate()  # no unlabeled example trains on a meaningless label

    pool = torch.arange(len(train_y), device=device)
    if args.method == "supervised":
        pool = state.labeled_idx
    metrics_path = run_dir / "metrics.jsonl"
    if resume_ckpt is None and metrics_path.exists():
        metrics_path.unlink()
    elif resume_ckpt is not None and metrics_path.exists():  # drop epochs past the checkpoint
        kept = [line for line in metrics_path.read_text().splitlines()
                if line and json.loads(line)["epoch"] <= start_epoch]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    from tqdm import tqdm

    record = {}
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(epoch, args)
        model.train()
        order = pool[torch.randperm(len(pool), generator=batches).to(device)]
        sums = {"loss": 0.0, "ce": 0.0, "agg": 0.0}
        steps = range(0, len(order), args.batch_size)
        bar = tqdm(steps, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=args.quiet, file=sys.stderr)
        for start in bar:
            idx = order[start:start + args.batch_size]
            x = augment(train_x[idx].cpu(), batches).to(device)
            embedding, logits = model(x)
            if args.method == "supervised":
                ce = torch.nn.functional.cross_entropy(logits, train_y[idx])
                loss, agg = ce, torch.zeros(())
            else:
                loss, ce, agg = state.loss(idx, embedding, logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if args.method == "llp":
                state.update_bank(idx, embedding)
                if args.pseudo_labels == "classifier":
                    state.set_labels_from_classifier(idx, logits)
                else:
                    state.propagate(idx)
            for key, value in (("loss", loss), ("ce", ce), ("agg", agg)):
                sums[key] += float(value.detach()) * len(idx)
            pseudo = pseudo_label_metrics(state, train_y)["pseudo_acc"]
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", pseudo_acc=f"{pseudo:.3f}")
        if args.method == "llp":
            state.update_density()

        record = {"epoch": epoch + 1, "lr": lr_at(epoch, args),
                  **{f"train_{k}": v / len(pool) for k, v in sums.items()},
                  **accuracy_metrics(classify(model, test_x), test_y, split.num_classes),
                  **pseudo_label_metrics(state, train_y),
                  "aggregation": aggregation_metric(state.bank, train_y, split.num_classes),
                  "density_count_r": density_count_correlation(state),
                  "seconds": time.time() - started}
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_atomically({"format": 1, "config": config, "epoch": epoch,
                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "llp": {k: (v.cpu() if torch.is_tensor(v) else v)
                                 for k, v in state.state_dict().items()},
                         "rng": rng_state(batches)}, run_dir / CHECKPOINT)
        if not args.quiet:
            print(f"epoch {epoch + 1:3d}  loss {record['train_loss']:.3f}  "
                  f"test top-1 {record['test_top1']:.4f}  pseudo-label acc "
                  f"{record['pseudo_acc']:.4f}", file=sys.stderr)

    if record and not args.quiet:
        name = "LLP" if args.method == "llp" else "supervised (labeled only)"
        print(f"\n| result ({name}, {int(labeled.sum())} labeled of {len(train_y)}) | value |")
        print("|---|---|")
        print(f"| test top-1 | {record['test_top1']:.4f} |")
        print(f"| test top-5 | {record['test_top5']:.4f} |")
        print(f"| pseudo-label accuracy on unlabeled | {record['pseudo_acc']:.4f} |")
        print(f"| metrics | {metrics_path} |")
        print(f"| checkpoint | {run_dir / CHECKPOINT} |")
    return record


if __name__ == "__main__":
    main()

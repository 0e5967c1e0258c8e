"""A seeded fuzzer over every public op: random valid inputs checked against the
reference, and random malformed inputs that must raise a TypeError/ValueError naming the
argument. ``python tests/fuzz_ops.py SEED CASES BACKEND...`` prints one summary line
and exits 1 on the first disagreement or unnamed exception (``tests/test_fuzz.py`` runs
it in a subprocess, which also catches crashes and hangs)."""
from __future__ import annotations

import os
import random
import sys
import time

if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

import llp_kernels as lk
from llp_kernels import reference as ref

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OPS = ("aggregation_loss", "aggregation_lse", "aggregation_grad", "topk_similarity", "local_density",
       "propagate_labels", "class_vote", "update_memory_bank_")


def unit(n, d, dtype, g):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).to(dtype)


def valid_args(op: str, rng: random.Random, g: torch.Generator, small: bool) -> dict:
    """Random valid arguments of ``op`` (odd sizes, every dtype, labels with -1)."""
    n = rng.choice([1, 2, 7, 33, 130] if small else [1, 2, 7, 33, 130, 257, 1000])
    rows = rng.choice([1, 3, 17] if small else [1, 3, 17, 65])
    d = rng.choice([1, 3, 16, 64] if small else [1, 3, 16, 64, 130, 256])
    qd, kd = rng.choice(DTYPES), rng.choice(DTYPES)
    tau = rng.choice([0.03, 0.07, 0.5, 1.0])
    q, keys = unit(rows, d, qd, g), unit(n, d, kd, g)
    if op.startswith("aggregation"):
        classes = rng.choice([1, 3, 50])
        args = dict(queries=q, bank=keys, bank_labels=torch.randint(-1, classes, (n,), generator=g),
                    query_labels=torch.randint(0, classes, (rows,), generator=g), tau=tau)
        if op == "aggregation_grad":
            lse_all, lse_same = ref.aggregation_lse(q.float(), keys.float(), args["bank_labels"],
                                                    args["query_labels"], tau)
            args.update(lse_all=lse_all, lse_same=lse_same, grad_output=torch.rand(rows, generator=g) + 0.5)
        return args
    k = rng.randint(1, n)
    bias = torch.randn(n, generator=g) if rng.random() < 0.5 else None
    if op == "topk_similarity":
        return dict(queries=q, keys=keys, k=k, tau=tau, key_bias=bias)
    if op == "local_density":
        return dict(labeled=q, unlabeled=keys, t=k, tau=tau)
    if op == "propagate_labels":
        classes = rng.choice([1, 4, 2 ** 40])
        labels = torch.randint(0, min(classes, 2 ** 31), (n,), generator=g)
        return dict(queries=q, labeled=keys, labeled_labels=labels, log_density=bias, k=k, tau=tau,
                    num_classes=rng.choice([None, classes]))
    if op == "class_vote":
        classes = rng.choice([1, 4, 2 ** 40])
        labels = torch.randint(-1, min(classes, 2 ** 31), (rows, k), generator=g)
        scores = (5 * torch.randn(rows, k, generator=g)).to(rng.choice(DTYPES))
        return dict(scores=scores, neighbour_labels=labels, num_classes=rng.choice([None, classes]))
    idx = torch.randint(0, n, (rows,), generator=g)
    return dict(bank=keys.contiguous(), indices=idx, embeddings=q, momentum=rng.choice([0.0, 0.5, 0.9, 1.0]))


# (argument, replacement, words the message must contain)
def malformations(op: str, args: dict, g: torch.Generator):
    first = next(iter(args))
    t = args[first]
    out = [(first, t.tolist(), [first, "torch.Tensor"]), (first, None, [first]), (first, t.flatten(), [first]),
           (first, t[:0], [first]), (first, t.to("meta"), ["device"]),
           ("backend", "gpu", ["backend"]), ("backend", 3, ["backend"])]
    if op != "class_vote":  # a vote takes scores of any float dtype
        out.append((first, t.double(), [first, "float64"]))
    for name, value in args.items():
        if isinstance(value, torch.Tensor) and name != first:
            out.append((name, value.tolist(), [name]))
            if value.dim() == 2:  # another D than the first argument's
                out.append((name, torch.cat([value, value[:, :1]], dim=1), [name]))
            else:  # one entry too few
                out.append((name, value[:-1] if value.shape[0] > 1 else value[:0], [name]))
            if value.dtype in (torch.int64,):
                out.append((name, value.float(), [name]))
        if name in ("k", "t"):
            out += [(name, 0, [name]), (name, 10 ** 9, [name]), (name, 2.0, [name]), (name, True, [name])]
        if name == "tau":
            out += [(name, 0.0, [name]), (name, float("nan"), [name]), (name, 1e-9, [name]), (name, "0.07", [name])]
        if name == "momentum":
            out += [(name, 1.5, [name]), (name, -0.1, [name])]
        if name == "num_classes":
            out += [(name, 0, [name]), (name, 1.5, [name])]
        if name in ("query_labels",):
            bad = value.clone()
            bad[0] = -1
            out.append((name, bad, [name]))
        if name in ("indices",):
            out += [(name, value + 10 ** 6, [name]), (name, value - 10 ** 6, [name])]
        if name == "labeled_labels" and args.get("num_classes") is not None:
            bad = value.clone()
            bad[0] = args["num_classes"]
            out.append((name, bad, [name]))
        if name == "neighbour_labels":
            below = value.clone()
            below[0, 0] = -2
            out.append((name, below, [name, ">= -1"]))
            if args.get("num_classes") is not None:
                above = value.clone()
                above[0, 0] = args["num_classes"]
                out.append((name, above, [name, f"< {args['num_classes']}"]))
    return out


def call(op: str, args: dict, backend: str):
    fn = getattr(lk, op)
    if op == "aggregation_loss":
        q = args["queries"]
        if isinstance(q, torch.Tensor) and q.is_floating_point():
            q = q.clone().requires_grad_()
        loss = fn(**{**args, "queries": q}, backend=backend)
        if torch.isfinite(loss).all():
            (loss * torch.linspace(0.5, 1.5, loss.shape[0])).sum().backward()
        return loss, q.grad
    if op == "update_memory_bank_":
        bank = args["bank"].clone() if isinstance(args["bank"], torch.Tensor) else args["bank"]
        fn(**{**args, "bank": bank}, backend=backend)
        return (bank,)
    out = fn(**args, backend=backend)
    return out if isinstance(out, tuple) else (out,)


QUERY_AND_KEYS = {"aggregation_loss": ("queries", "bank"), "aggregation_lse": ("queries", "bank"),
                  "aggregation_grad": ("queries", "bank"), "topk_similarity": ("queries", "keys"),
                  "local_density": ("labeled", "unlabeled"), "propagate_labels": ("queries", "labeled")}


def rounded(op: str, args: dict, backend: str) -> dict:
    """The oracle's inputs: backends that round queries to a 16-bit bank see those."""
    if op not in QUERY_AND_KEYS or not lk.registry.BACKENDS[backend].rounds_queries_to_bank_dtype:
        return args
    q, keys = QUERY_AND_KEYS[op]
    if args[keys].dtype == torch.float32:
        return args
    return {**args, q: args[q].to(args[keys].dtype)}


def agree(op: str, got, want, args) -> str:
    """'' when ``got`` matches the oracle's ``want`` within 16-bit tolerances, else why not."""
    low = any(isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float16) for v in args.values())
    tol = 0.05 if low else 2e-3
    if op in ("topk_similarity", "local_density", "propagate_labels"):
        # neighbour choices may differ on near-ties: compare the scores, not the indices
        got, want = got[:1], want[:1]
        if op == "propagate_labels":
            return ""  # labels of near-tied votes may differ; confidences are checked by the op tests
    for a, b in zip(got, want):
        if a is None or b is None:
            if (a is None) != (b is None):
                return "gradient presence differs"
            continue
        a, b = a.double().cpu(), b.double().cpu()
        if a.shape != b.shape:
            return f"shape {tuple(a.shape)} != {tuple(b.shape)}"
        if not torch.equal(torch.isnan(a), torch.isnan(b)) or not torch.equal(torch.isinf(a), torch.isinf(b)):
            return "non-finite pattern differs"
        fin = torch.isfinite(b)
        scale = max(1.0, b[fin].abs().max().item()) if fin.any() else 1.0
        if fin.any() and (a[fin] - b[fin]).abs().max().item() > tol * scale:
            return f"max error {(a[fin] - b[fin]).abs().max().item():.3g} (scale {scale:.3g})"
    return ""


def run(seed: int, cases: int, backends) -> dict:
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    counts = {"valid": 0, "malformed": 0}
    for case in range(cases):
        op, backend = rng.choice(OPS), rng.choice(backends)
        small = backend == "triton"
        args = valid_args(op, rng, g, small)
        where = f"case {case}: {op} on {backend}"
        if rng.random() < 0.5:
            want = call(op, {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                             for k, v in rounded(op, args, backend).items()}, "reference")
            why = agree(op, call(op, args, backend), want, args)
            if why:
                raise AssertionError(f"{where}: disagrees with the reference: {why}")
            counts["valid"] += 1
        else:
            name, value, words = rng.choice(malformations(op, args, g))
            try:
                call(op, {**args, name: value} if name != "backend" else args, value if name == "backend" else backend)
            except (TypeError, ValueError) as exc:
                if not all(w in str(exc) for w in words):
                    raise AssertionError(f"{where}, bad {name}: message does not name it: {exc}") from None
            else:
                raise AssertionError(f"{where}: bad {name} ({str(value)[:40]}) was accepted")
            counts["malformed"] += 1
    return counts


if __name__ == "__main__":
    seed, cases, backends = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    start = time.time()
    counts = run(seed, cases, backends)
    print(f"fuzz: {counts['valid']} valid and {counts['malformed']} malformed cases on "
          f"{', '.join(backends)} in {time.time() - start:.1f} s")

"""Shared test machinery: the (backend, device) matrix, input makers, oracle tolerances.

Without a CUDA device, Triton kernels run on CPU tensors under the interpreter, so
TRITON_INTERPRET is set here before anything imports triton. Every (backend, device)
pair that cannot run here becomes a skipped case whose reason pytest prints (-rs).
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import llp_kernels as lk  # noqa: E402
from llp_kernels import registry  # noqa: E402

KERNEL_BACKENDS = [name for name in lk.BACKENDS if name != "reference"]


def backend_cases(op):
    """pytest params (backend, device) for every kernel backend on every device type it
    registered for; pairs that cannot run ``op`` here are skipped with the reason."""
    cases = []
    for backend in KERNEL_BACKENDS:
        for device in registry.BACKENDS[backend].devices:
            if device == "cuda" and not torch.cuda.is_available():
                why = "no CUDA device on this machine"
            else:
                why = lk.unusable_reason(backend, op, device)
            marks = [pytest.mark.skip(reason=f"{backend} on {device}: {why}")] if why else []
            if device == "cuda":
                marks.append(pytest.mark.gpu)
            cases.append(pytest.param(backend, device, marks=marks, id=f"{backend}-{device}"))
    return cases


# Backends that round queries to a 16-bit bank's dtype for native tensor-core products
# (and the aggregation backward's weights too): the oracle gets the same rounded queries,
# and their 16-bit-bank gradients are held to bf16/fp16-level tolerance.
ROUNDS_TO_BANK_DTYPE = {name for name, b in registry.BACKENDS.items() if b.rounds_queries_to_bank_dtype}


def effective_queries(backend, queries, bank_dtype):
    if backend in ROUNDS_TO_BANK_DTYPE and bank_dtype != torch.float32:
        return queries.to(bank_dtype)
    return queries


def interpreted(backend, device):
    """True where kernels run in Triton's (slow) interpreter: keep shapes small there."""
    return backend == "triton" and device == "cpu"


def unit_rows(n, d, dtype=torch.float32, device="cpu", generator=None):
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(x, dim=1).to(dtype).to(device)


def max_err(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite), "inf/nan pattern differs from the oracle"
    assert torch.equal(a[~finite], b[~finite]), "non-finite values differ from the oracle"
    return (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0


def assert_as_accurate_as_torch(result, oracle64, torch32, factor=2.0, name="result", scale=None):
    """The project's accuracy standard: at most ~``factor`` x as far from the fp64 oracle as PyTorch's
    own fp32 computation (plus a few fp32 ulps of ``scale``, by default the oracle's
    magnitude, so that a torch result that happens to be exact does not demand
    bit-exactness; a difference of two reductions passes the operands' magnitude)."""
    err = max_err(result, oracle64)
    torch_err = max_err(torch32, oracle64)
    if scale is None:
        finite = oracle64[torch.isfinite(oracle64)]
        scale = finite.abs().max().item() if finite.numel() else 1.0
    floor = 4 * torch.finfo(torch.float32).eps * max(scale, 1e-30)
    assert err <= factor * torch_err + floor, (
        f"{name}: error {err:.3e} vs fp64 oracle exceeds {factor}x torch fp32's {torch_err:.3e} "
        f"(+ floor {floor:.1e})")

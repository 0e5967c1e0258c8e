"""Aggregation loss (paper eq. 1-2): forward (the two log-sum-exps), backward (dq from
the saved log-sum-exps) and forward + backward through autograd, per backend and size;
pykeops' LazyTensor log-sum-exp as a peer. D = 128, tau = 0.07, 1,000 classes."""
import pytest
import torch

import llp_kernels as lk

from . import checks, peers
from .harness import ELEMENT_BYTES, gemm_cost, info, measure, unit_rows

OP = "aggregation"
KERNEL_OP = "aggregation_lse"
PEERS = ("keops",)
D, TAU, CLASSES = 128, 0.07, 1000


def make_inputs(size, device):
    B, N = size.dims["B"], size.dims["N"]
    g = torch.Generator().manual_seed(1)
    bank = unit_rows(N, D, size.dtype, device, seed=2)
    queries = unit_rows(B, D, size.dtype, device, seed=3)
    bank_labels = torch.randint(-1, CLASSES, (N,), generator=g).to(device)
    query_labels = torch.randint(0, CLASSES, (B,), generator=g).to(device)
    grad = (0.5 + torch.rand(B, generator=g)).to(device)  # grad_output != 1
    return queries, bank, bank_labels, query_labels, grad


def cost(size, passes):
    B, N = size.dims["B"], size.dims["N"]
    bank_bytes = N * D * ELEMENT_BYTES[size.dtype] + N * 8
    return passes * gemm_cost(B, N, D), (1 if passes <= 2 else 2) * bank_bytes


def skip_if_reference_too_big(impl, size, device):
    if impl == "reference" and not checks.reference_fits(size.dims["B"], size.dims["N"], device):
        pytest.skip("reference: its B x N logits would not fit in memory here")


def test_forward(benchmark, size, impl, runnable, device, peaks):
    skip_if_reference_too_big(impl, size, device)
    q, bank, bl, ql, _ = make_inputs(size, device)
    want = checks.chunked_aggregation_lse(q, bank, bl, ql, TAU)
    if impl == "peer:keops":
        fn = lambda: peers.keops_aggregation(q, bank, bl, ql, TAU)
        err = checks.assert_close("loss", fn(), want[0] - want[1], size.dtype)
    else:
        fn = lambda: lk.aggregation_lse(q, bank, bl, ql, TAU, backend=impl)
        lse_all, lse_same = fn()
        err = max(checks.assert_close("lse_all", lse_all, want[0], size.dtype),
                  checks.assert_close("lse_same", lse_same, want[1], size.dtype))
    flops, nbytes = cost(size, 1)
    measure(benchmark, fn, device, info(OP + " forward", size, impl, peaks, flops, nbytes, max_abs_err=err))


def test_backward(benchmark, size, impl, runnable, device, peaks):
    if impl.startswith("peer:"):
        pytest.skip(f"{impl}: no separate backward (see forward+backward)")
    skip_if_reference_too_big(impl, size, device)
    q, bank, bl, ql, grad = make_inputs(size, device)
    lse_all, lse_same = checks.chunked_aggregation_lse(q, bank, bl, ql, TAU)
    want = checks.chunked_aggregation_grad(q, bank, bl, ql, lse_all, lse_same, TAU, grad)
    fn = lambda: lk.aggregation_grad(q, bank, bl, ql, lse_all, lse_same, TAU, grad, backend=impl)
    err = checks.assert_close("dq", fn(), want, size.dtype, scale=1 / TAU)
    flops, nbytes = cost(size, 2)
    measure(benchmark, fn, device, info(OP + " backward", size, impl, peaks, flops, nbytes, max_abs_err=err))


def test_forward_backward(benchmark, size, impl, runnable, device, peaks):
    skip_if_reference_too_big(impl, size, device)
    q, bank, bl, ql, grad = make_inputs(size, device)
    lse_all, lse_same = checks.chunked_aggregation_lse(q, bank, bl, ql, TAU)
    want_dq = checks.chunked_aggregation_grad(q, bank, bl, ql, lse_all, lse_same, TAU, grad)
    finite = torch.isfinite(lse_same)
    leaf = q.clone().requires_grad_()

    def fn():
        leaf.grad = None
        if impl == "peer:keops":
            loss = peers.keops_aggregation(leaf, bank, bl, ql, TAU)
            loss = torch.where(finite, loss, torch.zeros_like(loss))  # absent label: no gradient
        else:
            loss = lk.aggregation_loss(leaf, bank, bl, ql, TAU, backend=impl)
        loss.backward(grad)
        return loss

    loss = fn()
    err = checks.assert_close("loss", torch.where(finite, loss.detach(), lse_all - lse_same),
                              lse_all - lse_same, size.dtype)
    err = max(err, checks.assert_close("dq", leaf.grad, want_dq, size.dtype, scale=1 / TAU))
    flops, nbytes = cost(size, 3)
    measure(benchmark, fn, device,
            info(OP + " forward+backward", size, impl, peaks, flops, nbytes, max_abs_err=err))

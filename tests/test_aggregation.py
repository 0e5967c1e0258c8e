"""Aggregation loss (forward LSEs, loss, gradient) of every backend against the oracle."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from conftest import (ROUNDS_TO_BANK_DTYPE, assert_as_accurate_as_torch, backend_cases,
                      effective_queries, interpreted, unit_rows)

SHAPES = [  # (B, N, D, classes)
    (1, 1, 64, 1),
    (3, 7, 64, 3),
    (33, 1000, 128, 10),
    (17, 4099, 256, 50),
    (64, 4099, 128, 4099),  # instance recognition: almost every row its own class
]
SMALL_SHAPES = [(1, 1, 64, 1), (3, 7, 64, 3), (5, 77, 64, 4), (4, 130, 128, 7)]
BANK_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(B, N, D, classes, bank_dtype, device, seed=0, unlabeled_fraction=0.2):
    g = torch.Generator().manual_seed(seed)
    queries = unit_rows(B, D, generator=g)
    bank = unit_rows(N, D, generator=g).to(bank_dtype)
    bank_labels = torch.randint(0, classes, (N,), generator=g)
    bank_labels[torch.rand(N, generator=g) < unlabeled_fraction] = -1
    if N > 0 and (bank_labels >= 0).sum() == 0:
        bank_labels[0] = 0
    labeled = bank_labels[bank_labels >= 0]
    query_labels = labeled[torch.randint(0, labeled.numel(), (B,), generator=g)]
    return [t.to(device) for t in (queries, bank, bank_labels, query_labels)]


def shapes_for(backend, device):
    return SMALL_SHAPES if interpreted(backend, device) else SHAPES


def oracle(queries, bank, bank_labels, query_labels, tau=0.07):
    """fp64 and fp32 reference LSEs of the inputs as stored."""
    args = [t.cpu() for t in (queries, bank, bank_labels, query_labels)]
    lse64 = ref.aggregation_lse(args[0].double(), args[1].double(), *args[2:], tau=tau)
    lse32 = ref.aggregation_lse(args[0].float(), args[1].float(), *args[2:], tau=tau)
    return lse64, lse32


@pytest.mark.parametrize("bank_dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", backend_cases("aggregation_lse"))
def test_lse_and_loss_match_reference(backend, device, bank_dtype):
    for B, N, D, classes in shapes_for(backend, device):
        q, bank, bl, ql = make_inputs(B, N, D, classes, bank_dtype, device)
        lse_all, lse_same = lk.aggregation_lse(q, bank, bl, ql, backend=backend)
        assert lse_all.dtype == torch.float32 and lse_all.shape == (B,)
        (o_all, o_same), (t_all, t_same) = oracle(effective_queries(backend, q, bank_dtype),
                                                  bank, bl, ql)
        assert_as_accurate_as_torch(lse_all, o_all, t_all, name=f"lse_all {B}x{N}x{D}")
        assert_as_accurate_as_torch(lse_same, o_same, t_same, name=f"lse_same {B}x{N}x{D}")
        loss = lk.aggregation_loss(q, bank, bl, ql, backend=backend)
        assert_as_accurate_as_torch(loss, o_all - o_same, t_all - t_same, name="loss",
                                    scale=o_all.abs().max().item())
        assert (loss >= -1e-5).all()


@pytest.mark.parametrize("query_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bank_dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_gradient_matches_fp64_autograd(backend, device, bank_dtype, query_dtype):
    for B, N, D, classes in shapes_for(backend, device):
        q, bank, bl, ql = make_inputs(B, N, D, classes, bank_dtype, device, seed=1)
        q = q.to(query_dtype)
        grad_out = torch.linspace(-1.5, 2.5, B, device=device)  # != 1, one negative
        leaf = q.clone().requires_grad_()
        loss = lk.aggregation_loss(leaf, bank, bl, ql, backend=backend)
        (dq,) = torch.autograd.grad(loss, leaf, grad_out)
        assert dq.dtype == query_dtype and dq.shape == q.shape

        grads = {}
        q_eff = effective_queries(backend, q, bank_dtype)
        for dtype in (torch.float64, torch.float32):
            leaf_ref = q_eff.cpu().to(dtype).requires_grad_()
            loss_ref = ref.aggregation_loss(leaf_ref, bank.cpu().to(dtype), bl.cpu(), ql.cpu())
            (grads[dtype],) = torch.autograd.grad(loss_ref, leaf_ref, grad_out.cpu().to(dtype))
        rounded = backend in ROUNDS_TO_BANK_DTYPE and bank_dtype != torch.float32
        if query_dtype == torch.float32 and not rounded:
            assert_as_accurate_as_torch(dq, grads[torch.float64], grads[torch.float32],
                                        name=f"dq {B}x{N}x{D}")
        else:  # bf16 gradient, or bf16/fp16 products: compare within 16-bit rounding
            torch.testing.assert_close(dq.cpu().double(), grads[torch.float64],
                                       rtol=1e-2, atol=1e-2 * grads[torch.float64].abs().max().item())


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_bank_sizes_at_tile_boundaries(backend, device):
    """Bank sizes that are whole multiples of the common tile widths (16, 32, 64, 128),
    one below and one above: kernels that stream whole tiles without row masks and the
    partial tile separately must give the reference's LSEs and gradient on each."""
    g = torch.linspace(-1.0, 2.0, 6, device=device)
    for N in (31, 32, 33, 64, 128, 129):
        q, bank, bl, ql = make_inputs(6, N, 64, 4, torch.float32, device, seed=N)
        lse_all, lse_same = lk.aggregation_lse(q, bank, bl, ql, backend=backend)
        (o_all, o_same), (t_all, t_same) = oracle(q, bank, bl, ql)
        assert_as_accurate_as_torch(lse_all, o_all, t_all, name=f"lse_all N={N}")
        assert_as_accurate_as_torch(lse_same, o_same, t_same, name=f"lse_same N={N}")
        dq = lk.aggregation_grad(q, bank, bl, ql, lse_all, lse_same, grad_output=g, backend=backend)
        leaf = q.cpu().double().requires_grad_()
        (expected,) = torch.autograd.grad(ref.aggregation_loss(leaf, bank.cpu().double(), bl.cpu(), ql.cpu()),
                                          leaf, g.cpu().double())
        torch.testing.assert_close(dq.cpu().double(), expected, rtol=1e-4, atol=1e-4, msg=f"dq N={N}")


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_aggregation_grad_building_block_and_shards(backend, device):
    """Two bank shards: LSEs combine with logaddexp, gradients sum to the full one."""
    q, bank, bl, ql = make_inputs(9, 301, 64, 5, torch.float32, device, seed=2)
    g = torch.rand(9, device=device) + 0.5
    parts = [(bank[:120], bl[:120]), (bank[120:], bl[120:])]
    lses = [lk.aggregation_lse(q, b, l, ql, backend=backend) for b, l in parts]
    lse_all = torch.logaddexp(lses[0][0], lses[1][0])
    lse_same = torch.logaddexp(lses[0][1], lses[1][1])
    dq = sum(lk.aggregation_grad(q, b, l, ql, lse_all, lse_same, grad_output=g, backend=backend)
             for b, l in parts)
    (o_all, o_same), _ = oracle(q, bank, bl, ql)
    torch.testing.assert_close(lse_all.cpu().double(), o_all, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse_same.cpu().double(), o_same, rtol=0, atol=1e-5)
    leaf = q.cpu().double().requires_grad_()
    (expected,) = torch.autograd.grad(ref.aggregation_loss(leaf, bank.cpu().double(), bl.cpu(),
                                                           ql.cpu()), leaf, g.cpu().double())
    torch.testing.assert_close(dq.cpu().double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_absent_label_gives_inf_loss_and_zero_gradient(backend, device):
    q, bank, bl, ql = make_inputs(4, 50, 64, 3, torch.float32, device, seed=3)
    ql = ql.clone()
    ql[1] = 7  # no bank row carries label 7
    leaf = q.clone().requires_grad_()
    loss = lk.aggregation_loss(leaf, bank, bl, ql, backend=backend)
    assert torch.isinf(loss[1]) and loss[1] > 0
    assert torch.isfinite(loss[[0, 2, 3]]).all()
    (dq,) = torch.autograd.grad(loss, leaf, torch.ones(4, device=device))
    assert torch.isfinite(dq).all()
    assert (dq[1] == 0).all()
    assert dq[0].abs().sum() > 0


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_lse"))
def test_unlabeled_bank_rows_count_only_in_lse_all(backend, device):
    q, bank, bl, ql = make_inputs(3, 40, 64, 2, torch.float32, device, seed=4)
    bl = torch.full_like(bl, -1)
    bl[5] = ql[0]
    lse_all, lse_same = lk.aggregation_lse(q, bank, bl, ql[:1].expand(3).contiguous(),
                                           backend=backend)
    expected_same = (q[:, :] @ bank[5].float()) / 0.07
    torch.testing.assert_close(lse_same, expected_same, rtol=1e-5, atol=1e-5)
    (o_all, _), _ = oracle(q, bank, bl, ql)
    torch.testing.assert_close(lse_all.cpu().double(), o_all, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_rows_far_from_unit_norm(backend, device):
    """Large norms push logits far apart (hundreds of nats): no overflow, no underflow."""
    q, bank, bl, ql = make_inputs(6, 257, 64, 4, torch.float32, device, seed=5)
    q = q * torch.linspace(0.1, 12.0, 6, device=device)[:, None]
    bank = bank * torch.linspace(0.2, 9.0, 257, device=device)[:, None]
    leaf = q.clone().requires_grad_()
    loss = lk.aggregation_loss(leaf, bank, bl, ql, backend=backend)
    g = torch.linspace(0.5, 2.0, 6, device=device)
    (dq,) = torch.autograd.grad(loss, leaf, g)
    leaf64 = q.cpu().double().requires_grad_()
    loss64 = ref.aggregation_loss(leaf64, bank.cpu().double(), bl.cpu(), ql.cpu())
    (dq64,) = torch.autograd.grad(loss64, leaf64, g.cpu().double())
    torch.testing.assert_close(loss.cpu().double(), loss64.detach(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(dq.cpu().double(), dq64, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend,device", backend_cases("aggregation_grad"))
def test_bank_gets_no_gradient(backend, device):
    q, bank, bl, ql = make_inputs(3, 20, 64, 2, torch.float32, device, seed=6)
    leaf = q.clone().requires_grad_()
    bank_param = bank.clone().requires_grad_()
    lk.aggregation_loss(leaf, bank_param, bl, ql, backend=backend).sum().backward()
    assert leaf.grad is not None and bank_param.grad is None


def test_reference_explicit_gradient_matches_its_autograd():
    q, bank, bl, ql = make_inputs(7, 300, 64, 4, torch.float64, "cpu", seed=7)
    q, bank = q.double(), bank.double()
    ql[2] = 99  # absent label: zero gradient in both
    g = torch.linspace(-1, 3, 7, dtype=torch.float64)
    leaf = q.clone().requires_grad_()
    (auto,) = torch.autograd.grad(ref.aggregation_loss(leaf, bank, bl, ql), leaf, g)
    lse_all, lse_same = ref.aggregation_lse(q, bank, bl, ql)
    explicit = ref.aggregation_grad(q, bank, bl, ql, lse_all, lse_same, grad_output=g)
    torch.testing.assert_close(explicit, auto, rtol=1e-10, atol=1e-12)
    assert (explicit[2] == 0).all()


def test_reference_loss_is_minus_log_probability_of_positive_set():
    """Paper eq. 2 spelled out: L_A = -log sum_{j in A} softmax_j."""
    q, bank, bl, ql = make_inputs(5, 60, 64, 3, torch.float64, "cpu", seed=8)
    q, bank = q.double(), bank.double()
    p = torch.softmax(q @ bank.T / 0.07, dim=1)
    expected = -torch.log((p * (bl[None, :] == ql[:, None])).sum(dim=1))
    torch.testing.assert_close(ref.aggregation_loss(q, bank, bl, ql), expected)


@pytest.mark.slow
def test_cpu_large_bank_accuracy():
    """N = 300k: blocked fp32 summation must stay within 2x of torch's fp32 error."""
    q, bank, bl, ql = make_inputs(8, 300_000, 128, 100, torch.float32, "cpu", seed=9)
    lse_all, lse_same = lk.aggregation_lse(q, bank, bl, ql, backend="cpu")
    (o_all, o_same), (t_all, t_same) = oracle(q, bank, bl, ql)
    assert_as_accurate_as_torch(lse_all, o_all, t_all, name="lse_all N=300k")
    assert_as_accurate_as_torch(lse_same, o_same, t_same, name="lse_same N=300k")

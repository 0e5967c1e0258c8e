"""``normalize_rows``, the one L2 normalisation of the library, against float64 at every
magnitude a finite row can have; the bank update and the trainer's embedding head use it."""
import numpy as np
import pytest
import torch

import llp_kernels as lk

from conftest import backend_cases

SCALES = [1e-30, 1e-14, 1.0, 1e19, 1e30, 3e37]


def float64_unit(x):
    x = np.asarray(x, dtype=np.float64)
    x = x / np.abs(x).max(axis=1, keepdims=True)  # in float64 too, a norm of 1e300 squared overflows
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows_at_every_scale(d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(len(SCALES), d, generator=g, dtype=torch.float64)
    return (base * torch.tensor(SCALES, dtype=torch.float64)[:, None]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_finite_row_becomes_unit_length(dtype):
    x = rows_at_every_scale(dtype=dtype)
    if dtype == torch.float64:
        x = torch.cat([x, x[:1] * 1e-280, x[:1] * 1e270])  # far outside fp32's range
    got = lk.normalize_rows(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), float64_unit(x.numpy()), rtol=0,
                               atol=4 * torch.finfo(dtype).eps)


def test_denormal_zero_and_non_finite_rows():
    x = torch.tensor([[1e-40, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, float("nan"), 0.0], [1.0, float("inf"), 0.0]])
    got = lk.normalize_rows(x)
    assert got[0].tolist() == [1.0, 0.0, 0.0]
    assert got[1].tolist() == [0.0, 0.0, 0.0]
    assert torch.isnan(got[2:]).all()


def test_gradient_is_that_of_x_over_its_norm():
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 8, dtype=torch.float64)
    (lk.normalize_rows(x) * w).sum().backward()
    mine = x.grad.clone()
    x.grad = None
    (x / x.norm(dim=1, keepdim=True) * w).sum().backward()
    torch.testing.assert_close(mine, x.grad)


@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + backend_cases("update_memory_bank_"))
def test_bank_update_makes_every_finite_mix_a_unit_row(backend, device):
    """Embeddings at 1e-30 ... 3e37: the fp32 squared norm would overflow or underflow."""
    emb = rows_at_every_scale(d=64)
    bank = lk.normalize_rows(torch.randn(10, 64, generator=torch.Generator().manual_seed(1)))
    idx = torch.arange(len(SCALES))
    got = lk.update_memory_bank_(bank.clone().to(device), idx.to(device), emb.to(device), momentum=0.0,
                                 backend=backend).cpu()
    np.testing.assert_allclose(got[idx].double().numpy(), float64_unit(emb.numpy()), rtol=0, atol=1e-6)
    assert torch.equal(got[len(SCALES):], bank[len(SCALES):])


def test_the_embedding_head_gives_unit_rows_at_any_scale():
    from llp.train.model import mlp
    net = mlp(4, 3).eval()
    with torch.no_grad():
        net.embedding.weight.mul_(1e25)
        net.embedding.bias.mul_(1e25)
        embedding, _ = net(torch.randn(6, 4))
    norms = embedding.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_form_gives_the_same_bits_and_the_scales(dtype):
    special = torch.tensor([[1e-40, 0.0, -0.0, 0.0], [0.0, -0.0, 0.0, 0.0], [1.0, float("nan"), 0.0, 2.0],
                            [1.0, float("inf"), 0.0, -3.0], [-5.0, float("-inf"), 1.0, 0.0], [3.0, -4.0, 0.0, 0.0]],
                           dtype=dtype)
    g = torch.Generator().manual_seed(3)
    for x in (rows_at_every_scale(dtype=dtype), special, torch.randn(1000, 128, generator=g, dtype=dtype)):
        want = lk.normalize_rows(x)
        y = x.clone()
        scale = lk.normalize_rows_(y)
        assert torch.equal(torch.isnan(y), torch.isnan(want))
        assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(want))  # same bits (sign of zero too)
        assert torch.equal(torch.signbit(y), torch.signbit(want))
        want_scale = x.abs().amax(dim=1)
        assert torch.equal(torch.isnan(scale), torch.isnan(want_scale))
        assert torch.equal(torch.nan_to_num(scale), torch.nan_to_num(want_scale))
    assert lk.normalize_rows_(special.clone())[[1, 2, 3, 4]].tolist()[0] == 0.0  # a zero row's scale
    assert torch.isinf(lk.normalize_rows_(special.clone())[3:5]).all()


def test_in_place_form_refuses_a_tensor_that_requires_grad():
    with pytest.raises(ValueError, match="requires grad"):
        lk.normalize_rows_(torch.randn(3, 4, requires_grad=True))

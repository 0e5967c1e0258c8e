"""Memory-bank update: matches the oracle in every bank dtype, keeps unit norm, resolves
duplicate indices by the documented rule (last occurrence wins), touches nothing else."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from conftest import backend_cases, unit_rows

BANK_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def ulp_tolerance(dtype):
    return {torch.float32: 2e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]


@pytest.mark.parametrize("emb_dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("bank_dtype", BANK_DTYPES, ids=str)
@pytest.mark.parametrize("backend,device", backend_cases("update_memory_bank_"))
def test_update_matches_reference(backend, device, bank_dtype, emb_dtype):
    g = torch.Generator().manual_seed(0)
    for N, D, B in [(1, 64, 1), (1000, 128, 33), (4099, 256, 128)]:
        bank = unit_rows(N, D, generator=g).to(bank_dtype)
        idx = torch.randperm(N, generator=g)[:B]
        emb = unit_rows(B, D, generator=g).to(emb_dtype)
        expected = ref.update_memory_bank_(bank.clone(), idx, emb, momentum=0.3)
        got = bank.to(device)
        out = lk.update_memory_bank_(got, idx.to(device), emb.to(device), momentum=0.3,
                                     backend=backend)
        assert out is got
        got = got.cpu()
        untouched = torch.ones(N, dtype=torch.bool)
        untouched[idx] = False
        assert torch.equal(got[untouched], bank[untouched]), "rows outside indices changed"
        torch.testing.assert_close(got.double(), expected.double(), rtol=0,
                                   atol=ulp_tolerance(bank_dtype))
        norms = got[idx].double().norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0,
                                   atol=4 * ulp_tolerance(bank_dtype))


@pytest.mark.parametrize("backend,device", backend_cases("update_memory_bank_"))
def test_duplicate_indices_last_occurrence_wins(backend, device):
    g = torch.Generator().manual_seed(1)
    bank = unit_rows(10, 64, generator=g)
    emb = unit_rows(5, 64, generator=g)
    idx = torch.tensor([3, 7, 3, 1, 3])
    got = lk.update_memory_bank_(bank.clone().to(device), idx.to(device), emb.to(device),
                                 backend=backend).cpu()
    expected = bank.clone()
    for row, pos in ((3, 4), (7, 1), (1, 3)):  # the last position of each index
        expected[row] = torch.nn.functional.normalize(0.5 * bank[row] + 0.5 * emb[pos], dim=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)
    # Deterministic: the same call twice gives bit-identical banks.
    again = lk.update_memory_bank_(bank.clone().to(device), idx.to(device), emb.to(device),
                                   backend=backend).cpu()
    assert torch.equal(got, again)


@pytest.mark.parametrize("backend,device", backend_cases("update_memory_bank_"))
def test_momentum_extremes_and_zero_mix(backend, device):
    g = torch.Generator().manual_seed(2)
    bank = unit_rows(6, 64, generator=g).to(device)
    emb = (unit_rows(2, 64, generator=g) * 3.0).to(device)
    idx = torch.tensor([0, 5], device=device)
    keep = lk.update_memory_bank_(bank.clone(), idx, emb, momentum=1.0, backend=backend)
    torch.testing.assert_close(keep, bank, rtol=0, atol=2e-6)
    replace = lk.update_memory_bank_(bank.clone(), idx, emb, momentum=0.0, backend=backend)
    torch.testing.assert_close(replace[idx], torch.nn.functional.normalize(emb, dim=1),
                               rtol=0, atol=2e-6)
    # m*old + (1-m)*v == 0: an all-zero mix stays zero, never NaN.
    cancel = lk.update_memory_bank_(bank.clone(), idx, -bank[idx].clone(), momentum=0.5,
                                    backend=backend)
    assert torch.isfinite(cancel).all() and (cancel[idx] == 0).all()


def test_half_and_bfloat16_conversions_match_torch_on_every_bit_pattern():
    """The kernels' scalar converters (csrc/common/dtype.h) against torch's, exhaustively
    for 16-bit -> fp32 and on edge cases + random values for fp32 -> 16-bit."""
    from llp_kernels._extension import DTYPE_CODES, extension

    C = extension()
    every = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 65504.0, 65519.0, 65520.0,
                            6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-10, 3.4e38, 1.17e-38])
    wide = torch.cat([special, -special, torch.randn(100_000) * 10.0 ** torch.randint(
        -9, 6, (100_000,)).float()])
    for dtype in (torch.float16, torch.bfloat16):
        narrow = every.view(dtype)
        out = torch.empty(narrow.shape[0], dtype=torch.float32)
        C.testing.convert(narrow.data_ptr(), DTYPE_CODES[dtype], out.data_ptr(), 0, narrow.shape[0])
        expected = narrow.float()
        nan = torch.isnan(expected)
        assert torch.equal(torch.isnan(out), nan)
        assert torch.equal(out[~nan].view(torch.int32), expected[~nan].view(torch.int32))

        back = torch.empty(wide.shape[0], dtype=dtype)
        C.testing.convert(wide.data_ptr(), 0, back.data_ptr(), DTYPE_CODES[dtype], wide.shape[0])
        assert torch.equal(back.view(torch.int16), wide.to(dtype).view(torch.int16))
    nan_in = torch.tensor([float("nan")])
    for dtype in (torch.float16, torch.bfloat16):
        back = torch.empty(1, dtype=dtype)
        C.testing.convert(nan_in.data_ptr(), 0, back.data_ptr(), DTYPE_CODES[dtype], 1)
        assert torch.isnan(back).all()

"""The cpu backend's top-k kernels, each forced in turn with ``LLP_CPU_TOPK``: the fused
kernels (``avx512``, ``avx2``: dot products in registers, packed key panels, the heap
filter on the finished tile) and the BLAS ``tiles`` path, against the oracle. Where a
CPU lacks a kernel's instructions its cases are skipped with the reason.

The fused kernels block queries in groups of 14 (AVX-512) or 6 (AVX2) rows and keys in
panels of 32 or 16 columns inside packed blocks of 128 KiB (256 keys at D = 128), so the
shapes below put Q, N and k on each side of those edges."""
import pytest
import torch

import llp_kernels as lk
from llp_kernels.backends import cpu

import test_nonfinite
import test_topk
from conftest import unit_rows
from test_topk import check_topk, oracle_scores

KERNELS = ["avx512", "avx2", "tiles"]


def unavailable(kernel):
    from llp_kernels._extension import extension_error
    if extension_error():
        return f"the compiled extension is unavailable ({extension_error()})"
    have = lk._extension.extension().cpu_topk_fused_isa()
    return None if cpu.TOPK_KERNELS[kernel] <= have else f"this CPU lacks the {kernel} instructions"


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    monkeypatch.delenv("LLP_CPU_TOPK", raising=False)
    why = unavailable(request.param)
    if why:
        pytest.skip(why)
    monkeypatch.setenv("LLP_CPU_TOPK", request.param)
    return request.param


SHAPES = [  # (Q, N, D, k)
    (1, 1, 64, 1),
    (13, 31, 3, 31),        # D far below a vector; k == N inside one panel
    (14, 32, 64, 7),        # one full row group, one full AVX-512 panel
    (15, 33, 64, 33),       # one row and one key past them; k == N
    (29, 257, 128, 10),     # keys one past a packed block at D = 128
    (43, 600, 128, 599),    # k just below N across blocks
    (100, 1000, 256, 25),
    (7, 4099, 64, 256),
    (301, 517, 128, 1),
]


@pytest.mark.parametrize("key_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_kernel_matches_oracle(kernel, with_bias, key_dtype):
    g = torch.Generator().manual_seed(11)
    for Q, N, D, k in SHAPES:
        q = unit_rows(Q, D, generator=g)
        keys = unit_rows(N, D, generator=g).to(key_dtype)
        bias = torch.randn(N, generator=g) if with_bias else None
        values, indices = lk.topk_similarity(q, keys, k, key_bias=bias, backend="cpu")
        check_topk(values, indices, oracle_scores(q, keys, bias), k, atol=2e-4)


def test_kernel_matches_oracle_at_a_large_temperature_and_small(kernel):
    g = torch.Generator().manual_seed(12)
    q, keys = unit_rows(50, 128, generator=g), unit_rows(700, 128, generator=g)
    for tau in (1.0, 0.01):
        values, indices = lk.topk_similarity(q, keys, 20, tau, backend="cpu")
        check_topk(values, indices, oracle_scores(q, keys, None, tau), 20, atol=2e-6 / tau)


def test_ties_go_to_the_lower_index_across_panels_and_blocks(kernel):
    """Each key repeated 40 times, 1200 keys (several packed blocks at D = 64): tied
    scores must come out in ascending index order, whichever panel or block holds them."""
    g = torch.Generator().manual_seed(13)
    keys = unit_rows(30, 64, generator=g).repeat(40, 1)
    q = unit_rows(31, 64, generator=g)
    values, indices = lk.topk_similarity(q, keys, 100, backend="cpu")
    check_topk(values, indices, oracle_scores(q, keys, None), 100, atol=2e-4)
    tied = values[:, 1:] == values[:, :-1]
    assert tied.any()
    assert (indices[:, 1:][tied] > indices[:, :-1][tied]).all()


def test_the_fused_kernels_and_the_tiles_agree_exactly_on_indices(kernel):
    """On well-separated scores every kernel returns the same neighbours, in the same order."""
    g = torch.Generator().manual_seed(14)
    q, keys = unit_rows(57, 128, generator=g), unit_rows(2000, 128, generator=g)
    bias = torch.randn(2000, generator=g)
    _, got = lk.topk_similarity(q, keys, 10, key_bias=bias, backend="cpu")
    _, want = lk.topk_similarity(q, keys, 10, key_bias=bias, backend="reference")
    assert torch.equal(got, want)


@pytest.mark.parametrize("where", ["first key", "key beyond k", "bias", "query"])
def test_nan_ranks_last(kernel, where):
    test_nonfinite.test_topk_ranks_nan_last_and_keeps_the_finite_neighbours("cpu", "cpu", where)


def test_infinite_bias_excludes_rows(kernel):
    test_topk.test_topk_with_infinite_bias_excludes_rows("cpu", "cpu")


def test_the_small_shapes_of_the_topk_suite(kernel):
    for key_dtype in (torch.float32, torch.float16):
        test_topk.test_topk_matches_reference("cpu", "cpu", True, key_dtype)
    test_topk.test_topk_key_counts_at_tile_boundaries("cpu", "cpu")
    test_topk.test_topk_ties("cpu", "cpu")


def test_auto_picks_the_best_kernel_the_cpu_has(monkeypatch):
    if unavailable("tiles"):
        pytest.skip(unavailable("tiles"))
    monkeypatch.delenv("LLP_CPU_TOPK", raising=False)
    have = lk._extension.extension().cpu_topk_fused_isa()
    assert cpu.TOPK_KERNELS[cpu.topk_kernel()] == have
    assert f"top-k kernel {cpu.topk_kernel()}" in cpu._details()
    best = cpu.topk_kernel()
    if best != "tiles":  # a call of a few query rows goes to BLAS unless a kernel is named
        few = cpu.FUSED_ROWS[best] * cpu._threads() - 1
        assert cpu.topk_kernel(few) == "tiles" and cpu.topk_kernel(few + 1) == best
        monkeypatch.setenv("LLP_CPU_TOPK", best)
        assert cpu.topk_kernel(1) == best


def test_a_bad_kernel_name_is_a_clear_error(monkeypatch):
    if unavailable("tiles"):
        pytest.skip(unavailable("tiles"))
    monkeypatch.setenv("LLP_CPU_TOPK", "sse9")
    q = unit_rows(30, 64)
    with pytest.raises(ValueError, match="LLP_CPU_TOPK must be auto or one of avx512, avx2, tiles"):
        lk.topk_similarity(q, q, 3, backend="cpu")


def test_a_kernel_the_cpu_lacks_is_a_clear_error(monkeypatch):
    if unavailable("tiles"):
        pytest.skip(unavailable("tiles"))
    missing = [k for k in KERNELS if unavailable(k)]
    if not missing:
        pytest.skip("this CPU runs every kernel")
    monkeypatch.setenv("LLP_CPU_TOPK", missing[0])
    q = unit_rows(30, 64)
    with pytest.raises(ValueError, match="lacks those instructions"):
        lk.topk_similarity(q, q, 3, backend="cpu")

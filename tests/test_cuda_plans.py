"""The host-side planning of the CUDA kernels, which needs no GPU: how the split-N
kernels cut the bank into slices, and the buffer shapes the plans promise. Runs wherever
the extension was built with CUDA (CI builds it whenever nvcc is present)."""
import itertools

import pytest

from llp_kernels._extension import extension_error

C = None
if extension_error() is None:
    from llp_kernels import _C as C

pytestmark = pytest.mark.skipif(C is None or not getattr(C, "cuda_compiled", False),
                                reason="llp_kernels._C was built without CUDA")

SIZES = [1, 31, 32, 33, 1000, 65_537, 10_000_019]


@pytest.mark.parametrize("sms", [1, 108, 132])
@pytest.mark.parametrize("bn", [32, 64])
def test_slices_cover_every_row_once_in_whole_tiles(sms, bn):
    for row_blocks, N, min_tiles in itertools.product([1, 3, 40, 5000], SIZES, [1, 4, 32]):
        count, rows = C.testing.cuda_slice_rows(row_blocks, N, bn, min_tiles, sms)
        where = f"row_blocks={row_blocks} N={N} bn={bn} min_tiles={min_tiles} sms={sms}"
        assert rows > 0 and rows % bn == 0, where                     # whole tiles
        assert count * rows >= N and (count - 1) * rows < N, where    # all rows, no empty slice
        assert count == 1 or rows >= min_tiles * bn, where            # slices stay long enough
        wanted = -(-4 * sms // row_blocks)                            # ~4 blocks per SM
        assert count <= max(1, wanted), where                         # never more than asked
        tiles = -(-N // bn)
        if tiles >= min_tiles * wanted:
            assert 2 * count >= wanted, where                          # and not far fewer


def test_a_large_batch_is_not_split():
    assert C.testing.cuda_slice_rows(10_000, 1_000_000, 64, 1, 132)[0] == 1


@pytest.mark.parametrize("dtype_code,bn", [(0, 32), (1, 64), (2, 64)])
@pytest.mark.parametrize("backward", [False, True])
def test_aggregation_plan_shapes(dtype_code, bn, backward):
    for B, N, D in itertools.product([1, 33, 4096], [1, 77, 1_000_003], [1, 64, 100, 256]):
        splits, n_per_split, rows_padded, dim_padded = C.cuda_aggregation_plan(B, N, D, dtype_code, backward, 0)
        assert n_per_split % bn == 0 and splits * n_per_split >= N > (splits - 1) * n_per_split
        assert rows_padded % 64 == 0 and B <= rows_padded < B + 64
        assert dim_padded % 16 == 0 and D <= dim_padded < D + 16


@pytest.mark.parametrize("kp", [32, 64, 128, 256])
def test_topk_plan_keeps_slices_longer_than_the_kept_list(kp):
    for Q, N in itertools.product([1, 40, 20_000], [1, 300, 2_000_003]):
        splits, n_per_split = C.cuda_topk_plan(Q, N, kp, 1, 0)
        assert n_per_split % 64 == 0 and splits * n_per_split >= N > (splits - 1) * n_per_split
        assert splits == 1 or n_per_split >= 4 * kp


SM80_OPTIN = 166_912  # bytes of dynamic shared memory one block may opt into on sm_80 (sm_90: 232,448)


@pytest.mark.parametrize("dtype_code", [0, 1, 2])
def test_every_cuda_kernel_configuration_fits_an_sm80_block(dtype_code):
    # Shared memory grows with D and the kept list: the largest of each is the worst case,
    # and every D up to the limit must fit on the smallest target.
    for D in [1, 16, 100, 128, 129, C.cuda_max_dim]:
        agg = C.testing.cuda_shared_bytes("aggregation", dtype_code, D, 0)
        assert 0 < agg <= SM80_OPTIN, (dtype_code, D, agg)
        for kp in [32, 64, 128, C.cuda_max_kept]:
            topk = C.testing.cuda_shared_bytes("topk", dtype_code, D, kp)
            assert 0 < topk <= SM80_OPTIN, (dtype_code, D, kp, topk)
    # and the sizes grow with D as the tiles say (double-buffered key tiles, 16-byte row padding)
    assert C.testing.cuda_shared_bytes("aggregation", dtype_code, 256, 0) > \
        C.testing.cuda_shared_bytes("aggregation", dtype_code, 128, 0)


def test_shared_bytes_rejects_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be"):
        C.testing.cuda_shared_bytes("nope", 0, 64, 0)

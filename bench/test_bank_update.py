"""``update_memory_bank_``: in-place momentum update and re-normalisation of B rows of
an N-row bank, per backend and size. Each timed call updates the same rows again (the
work does not depend on the values)."""
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from . import checks
from .harness import ELEMENT_BYTES, info, measure, unit_rows

OP = "bank_update"
KERNEL_OP = "update_memory_bank_"
D = 128


def test_update_memory_bank(benchmark, size, impl, runnable, device, peaks):
    N, B = size.dims["N"], size.dims["B"]
    bank = unit_rows(N, D, size.dtype, device, seed=8)
    g = torch.Generator().manual_seed(9)
    indices = torch.randperm(N, generator=g)[:B].to(device)
    embeddings = unit_rows(B, D, "float32", device, seed=10)
    want = ref.update_memory_bank_(bank[indices].clone(), torch.arange(B, device=device), embeddings, 0.5)
    lk.update_memory_bank_(bank, indices, embeddings, 0.5, backend=impl)
    err = checks.assert_close("updated rows", bank[indices].float(), want.float(), size.dtype)
    fn = lambda: lk.update_memory_bank_(bank, indices, embeddings, 0.5, backend=impl)
    e = ELEMENT_BYTES[size.dtype]
    measure(benchmark, fn, device, info("update_memory_bank_", size, impl, peaks, 6 * B * D,
                                        B * D * (2 * e + 4) + B * 8, max_abs_err=err), rounds=20, warmup_rounds=3)

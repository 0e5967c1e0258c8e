"""GPU-only checks of the ``cuda`` backend beyond the shared op matrix (which covers odd
shapes, every bank dtype, gradients with grad_output != 1 and bad input): a bank in the
millions (aggregation and top-k), TF32 against 3xTF32 for fp32 banks, its own limits,
and compute-sanitizer.
Skipped with the reason on a machine without a usable CUDA device."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llp_kernels as lk
from llp_kernels import reference as ref

from conftest import unit_rows

pytestmark = pytest.mark.gpu
WHY = lk.unusable_reason("cuda", "aggregation_lse", "cuda") if torch.cuda.is_available() else \
    "no CUDA device on this machine"
if WHY:
    pytestmark = [pytest.mark.gpu, pytest.mark.skip(reason=f"cuda backend: {WHY}")]


def chunked_reference_loss(q, bank, bl, ql, tau=0.07, rows=16):
    return torch.cat([ref.aggregation_loss(q[i:i + rows], bank, bl, ql[i:i + rows], tau)
                      for i in range(0, q.shape[0], rows)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bank_in_the_millions(dtype):
    g = torch.Generator().manual_seed(0)
    N, B, D = 2_000_003, 37, 128
    bank = unit_rows(N, D, dtype, "cuda", g)
    q = unit_rows(B, D, dtype, "cuda", g).requires_grad_()
    bl = torch.randint(-1, 1000, (N,), generator=g).cuda()
    ql = torch.randint(0, 1000, (B,), generator=g).cuda()
    grad = torch.rand(B, generator=g).cuda() + 0.5
    loss = lk.aggregation_loss(q, bank, bl, ql, backend="cuda")
    loss.backward(grad)
    want = chunked_reference_loss(q.detach().double(), bank.double(), bl, ql)
    tol = 1e-4 if dtype == torch.float32 else 2e-3
    assert torch.allclose(loss.double(), want, atol=tol * 15, rtol=0)
    leaf = q.detach().double().requires_grad_()
    chunked_reference_loss(leaf, bank.double(), bl, ql).backward(grad.double())
    assert torch.allclose(q.grad.double(), leaf.grad, atol=tol * 15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_over_millions_of_keys(dtype):
    g = torch.Generator().manual_seed(2)
    N, Q, D, k = 2_000_003, 33, 128, 25
    keys = unit_rows(N, D, dtype, "cuda", g)
    q = unit_rows(Q, D, torch.float32, "cuda", g)
    bias = torch.rand(N, generator=g).cuda()
    values, indices = lk.topk_similarity(q, keys, k, key_bias=bias, backend="cuda")
    scores = (q.double() @ keys.double().T) / 0.07 - bias.double()
    want = torch.topk(scores, k, dim=1).values
    assert torch.allclose(values.double(), want, atol=1e-3, rtol=0)
    assert torch.allclose(torch.gather(scores, 1, indices), values.double(), atol=1e-3, rtol=0)
    density = lk.local_density(keys[:Q], keys, t=k, backend="cuda")
    want = torch.logsumexp(torch.topk(keys[:Q].double() @ keys.double().T / 0.07, k, dim=1).values, dim=1)
    assert torch.allclose(density.double(), want, atol=1e-3, rtol=0)


def test_tf32_and_split_fp32_paths():
    g = torch.Generator().manual_seed(1)
    bank = unit_rows(5003, 128, torch.float32, "cuda", g)
    q = unit_rows(70, 128, torch.float32, "cuda", g)
    bl, ql = torch.randint(0, 9, (5003,), generator=g).cuda(), torch.randint(0, 9, (70,), generator=g).cuda()
    exact = ref.aggregation_loss(q.double(), bank.double(), bl, ql)
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        split = lk.aggregation_loss(q, bank, bl, ql, backend="cuda").double()
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = lk.aggregation_loss(q, bank, bl, ql, backend="cuda").double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert (split - exact).abs().max() < 1e-4          # 3xTF32: fp32-level
    assert (tf32 - exact).abs().max() < 5e-2           # TF32: 10-bit mantissa products
    assert (split - exact).abs().max() < (tf32 - exact).abs().max()


def test_dimension_limit_is_a_clear_error():
    q, bank = torch.randn(4, 257, device="cuda"), torch.randn(10, 257, device="cuda")
    labels = torch.zeros(10, dtype=torch.long, device="cuda")
    with pytest.raises(ValueError, match="D <= 256"):
        lk.aggregation_loss(q, bank, labels, labels[:4], backend="cuda")


def find_compute_sanitizer():
    found = shutil.which("compute-sanitizer")
    for root in filter(None, [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]):
        candidate = Path(root) / "bin" / "compute-sanitizer"
        if found is None and candidate.is_file():
            found = str(candidate)
    return found


@pytest.mark.skipif(find_compute_sanitizer() is None,
                    reason="compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
def test_compute_sanitizer_clean():
    script = (
        "import torch, llp_kernels as lk\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for dt in (torch.float32, torch.bfloat16, torch.float16):\n"
        "    bank = torch.nn.functional.normalize(torch.randn(333, 72, generator=g), dim=1).to(dt).cuda()\n"
        "    q = torch.nn.functional.normalize(torch.randn(45, 72, generator=g), dim=1).cuda().requires_grad_()\n"
        "    bl = torch.randint(-1, 5, (333,), generator=g).cuda(); ql = torch.randint(0, 5, (45,), generator=g).cuda()\n"
        "    lk.aggregation_loss(q, bank, bl, ql, backend='cuda').sum().backward()\n"
        "    lk.update_memory_bank_(bank, torch.arange(7, device='cuda'), q.detach()[:7], backend='cuda')\n"
        "    for k in (1, 25, 200):\n"
        "        lk.topk_similarity(q.detach(), bank, k, key_bias=torch.rand(333, device='cuda'), backend='cuda')\n"
        "torch.cuda.synchronize()\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    result = subprocess.run([find_compute_sanitizer(), "--tool", "memcheck", "--error-exitcode", "9",
                             sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in result.stdout

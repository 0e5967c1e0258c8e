"""pytest-benchmark suites: ``pytest bench/ --benchmark-only [--llp-size small|large|huge]
[--benchmark-json=out.json]``; then ``python -m bench.report out.json``.

Each benchmark module sets ``OP`` (a key of ``bench.sizes.SIZES``) and ``KERNEL_OP``
(the ``llp_kernels.OPS`` entry behind it); its tests take the fixtures ``size`` (one
``bench.sizes.Size``) and ``impl`` (a backend name, or ``peer:faiss`` / ``peer:keops``
at the sizes marked for peers). An implementation that cannot run here is skipped with
its reason.
"""
from __future__ import annotations

import pytest
import torch

import llp_kernels as lk

from .harness import bench_device, device_peaks
from .peers import faiss_unavailable, keops_unavailable
from .sizes import SIZES


def pytest_addoption(parser):
    parser.addoption("--llp-size", choices=["small", "large", "gpu", "huge"], default=None,
                     help="benchmark sizes: small (CPU default), large (opt-in on CPU), gpu (CUDA default), "
                          "huge (the propagation tool only: 10M rows, written once to LLP_BENCH_CACHE)")
    parser.addoption("--llp-busy", action="store_true",
                     help="run every benchmark beside a competing process (a 2-thread torch matmul loop)")


@pytest.fixture(scope="session", autouse=True)
def busy_machine(request):
    """With --llp-busy, a competing process shares the cores for the whole session."""
    if not request.config.getoption("--llp-busy"):
        yield False
        return
    from .competitor import Competitor
    from .harness import BUSY
    with Competitor():
        BUSY["on"] = True
        yield True
        BUSY["on"] = False


def size_class(config) -> str:
    chosen = config.getoption("--llp-size")
    if chosen:
        return chosen
    return "gpu" if torch.cuda.is_available() else "small"


def pytest_generate_tests(metafunc):
    op = getattr(metafunc.module, "OP", None)
    if op is None or "size" not in metafunc.fixturenames:
        return
    chosen = size_class(metafunc.config)
    sizes = SIZES.get(chosen, {}).get(op, [])
    if not sizes:
        metafunc.parametrize("size,impl", [pytest.param(None, None, id=f"no-{chosen}-size", marks=pytest.mark.skip(
            reason=f"no {op} sizes at --llp-size {chosen}"))])
        return
    peers = getattr(metafunc.module, "PEERS", ())
    cases = []
    for size in sizes:
        for impl in lk.BACKENDS:
            cases.append(pytest.param(size, impl, id=f"{size.id}-{impl}"))
        for peer in peers:
            if peer in size.peers:
                cases.append(pytest.param(size, f"peer:{peer}", id=f"{size.id}-{peer}"))
    metafunc.parametrize("size,impl", cases)


@pytest.fixture(scope="session")
def device():
    dev = bench_device()
    if dev.type == "cuda":
        # fp32 products on tensor cores (TF32) for every implementation alike, as the
        # rooflines assume; the checks widen their fp32 tolerance to match.
        torch.backends.cuda.matmul.allow_tf32 = True
    return dev


@pytest.fixture(scope="session")
def peaks(device):
    return device_peaks(device)


@pytest.fixture
def runnable(request, device):
    """Skips the test when its implementation cannot run here; returns the impl name."""
    impl = request.getfixturevalue("impl")
    kernel_op = request.module.KERNEL_OP
    if impl.startswith("peer:"):
        why = {"faiss": faiss_unavailable, "keops": keops_unavailable}[impl[5:]](device)
    elif impl == "triton" and device.type == "cpu":
        why = "triton on CPU tensors runs only in the interpreter: a correctness tool, not timed"
    else:
        why = lk.unusable_reason(impl, kernel_op, device)
    if why:
        pytest.skip(f"{impl}: {why}")
    return impl


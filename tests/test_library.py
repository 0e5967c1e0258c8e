"""Packaging-level behaviour: backend discovery and selection, torch.library registration
(opcheck), torch.compile without graph breaks, and the extension's build facts."""
import os
import subprocess
import sys

import pytest
import torch

import llp_kernels as lk
from llp_kernels import registry

from conftest import unit_rows


def test_available_backends_describes_all_four():
    status = lk.available_backends()
    assert set(status) == {"reference", "cpu", "triton", "cuda"}
    assert status["reference"].startswith("ready")
    assert status["cpu"].startswith("ready"), status["cpu"]
    assert "reference" in lk.usable_backends("cpu") and "cpu" in lk.usable_backends("cpu")


def test_extension_was_built_with_cuda_when_nvcc_exists():
    """CI has nvcc: the CUDA sources must have been compiled into the module."""
    import shutil

    from llp_kernels._extension import extension
    if shutil.which("nvcc") is None and os.environ.get("LLP_CUDA") not in ("1", "ON"):
        pytest.skip("no nvcc on this machine, so no CUDA build expected")
    C = extension()
    assert C.cuda_compiled, "nvcc is present but the CUDA kernels were not compiled"
    assert "90" in C.cuda_archs.split(",")
    if not torch.cuda.is_available():
        assert lk.available_backends()["cuda"].startswith("unavailable: compiled for sm_")


def test_auto_picks_cpu_and_env_overrides(monkeypatch):
    cpu = registry.Call(torch.device("cpu"), dim=64)
    ops = (registry.OPS["aggregation_lse"], registry.OPS["aggregation_grad"])
    monkeypatch.delenv("LLP_BACKEND", raising=False)
    assert registry.resolve(ops, "auto", cpu) == "cpu"
    monkeypatch.setenv("LLP_BACKEND", "reference")
    assert registry.resolve(ops, "auto", cpu) == "reference"
    assert registry.resolve(ops, "cpu", cpu) == "cpu"  # explicit wins
    monkeypatch.setenv("LLP_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="LLP_BACKEND must be one of"):
        lk.topk_similarity(unit_rows(2, 64), unit_rows(5, 64), 2)


def test_env_backend_is_used_end_to_end(monkeypatch):
    """LLP_BACKEND=reference really routes the call (the reference never sorts ties by
    index, the cpu backend does: compare through a spy instead)."""
    calls = []
    kernels = registry.OPS["topk_similarity"].kernels
    original = kernels["reference"]
    monkeypatch.setitem(kernels, "reference", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setenv("LLP_BACKEND", "reference")
    lk.topk_similarity(unit_rows(2, 64), unit_rows(5, 64), 2)
    assert calls == [1]


def _agg_inputs():
    g = torch.Generator().manual_seed(0)
    q = unit_rows(5, 64, generator=g)
    bank = unit_rows(37, 64, generator=g)
    return q, bank, torch.randint(-1, 4, (37,), generator=g), torch.randint(0, 4, (5,), generator=g)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck_every_op(backend):
    q, bank, bl, ql = _agg_inputs()
    ql[0] = 99  # an absent label exercises the +inf path too
    opcheck = torch.library.opcheck
    opcheck(torch.ops.llp.aggregation_loss.default,
            (q.clone().requires_grad_(), bank, bl, ql, 0.07, backend))
    opcheck(torch.ops.llp.aggregation_lse.default, (q, bank, bl, ql, 0.07, backend))
    lse_all, lse_same = lk.aggregation_lse(q, bank, bl, ql)
    opcheck(torch.ops.llp.aggregation_grad.default,
            (q, bank, bl, ql, lse_all, lse_same, torch.rand(5), 0.07, backend))
    opcheck(torch.ops.llp.topk_similarity.default, (q, bank, 4, 0.07, torch.randn(37), backend))
    opcheck(torch.ops.llp.topk_similarity.default, (q, bank, 4, 0.07, None, backend))
    opcheck(torch.ops.llp.local_density.default, (q, bank, 25, 0.07, backend))
    opcheck(torch.ops.llp.propagate_labels.default,
            (q, bank, bl.clamp(min=0), torch.randn(37), 10, 0.07, 4, backend))
    opcheck(torch.ops.llp.update_memory_bank_.default,
            (bank.clone(), torch.tensor([3, 1, 3]), unit_rows(3, 64), 0.5, backend))


def test_torch_compile_fullgraph_through_aggregation_loss():
    torch._dynamo.reset()
    q, bank, bl, ql = _agg_inputs()
    layer = torch.nn.Linear(64, 64)

    def step(x):
        v = torch.nn.functional.normalize(layer(x), dim=1)
        loss = lk.aggregation_loss(v, bank, bl, ql, backend="cpu")
        return loss.mean()

    compiled = torch.compile(step, fullgraph=True)
    got = compiled(q)
    got.backward()
    grad_compiled = layer.weight.grad.clone()
    layer.weight.grad = None
    expected = step(q)
    expected.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(grad_compiled, layer.weight.grad, rtol=1e-5, atol=1e-6)


def _fresh_python(code: str, **variables) -> subprocess.CompletedProcess:
    """``code`` run by a new interpreter that imports this checkout, without LLP_BACKEND;
    each of ``variables`` set in its environment, or removed where it is None."""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    env.pop("LLP_BACKEND", None)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_import_without_triton_keeps_the_other_backends():
    """With triton unimportable, llp_kernels still imports, the triton backend says why
    it cannot run, and the other backends run."""
    code = (
        "import sys, torch\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('simulated: no triton')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import llp_kernels as lk\n"
        "assert 'triton' not in sys.modules\n"
        "s = lk.available_backends()\n"
        "assert s['triton'].startswith('unavailable: triton could not be imported') and 'simulated' in s['triton'], s\n"
        "q = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)\n"
        "print(lk.topk_similarity(q, q, 2, backend='cpu'))\n"
        "try:\n"
        "    lk.topk_similarity(q, q, 2, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'simulated' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('triton backend should be refused')\n"
    )
    result = _fresh_python(code, TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr + result.stdout


def test_triton_on_cpu_tensors_needs_the_interpreter_from_import():
    """Triton fixes at definition whether a kernel is interpreted: without
    TRITON_INTERPRET at import, CPU tensors are refused with the reason, even if the
    variable is set later."""
    code = (
        "import os, torch\n"
        "import llp_kernels as lk\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "q = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)\n"
        "try:\n"
        "    lk.topk_similarity(q, q, 2, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'TRITON_INTERPRET=1 (set before llp_kernels is imported)' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('triton on CPU tensors should be refused')\n"
    )
    result = _fresh_python(code, TRITON_INTERPRET=None)
    assert result.returncode == 0, result.stderr + result.stdout


def test_import_without_extension_warns_once_and_reference_works():
    """With llp_kernels._C unimportable, import still works, says why once, and the
    reference backend runs while the cpu backend is refused with the reason."""
    code = (
        "import sys, warnings, torch\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'llp_kernels._C':\n"
        "            raise ImportError('simulated: extension not built')\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import llp_kernels as lk\n"
        "    import llp_kernels.ops\n"
        "msgs = [str(x.message) for x in w if 'llp_kernels' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert 'simulated' in msgs[0] and 'reference' in msgs[0], msgs[0]\n"
        "s = lk.available_backends()\n"
        "assert s['cpu'].startswith('unavailable') and s['reference'].startswith('ready'), s\n"
        "q = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)\n"
        "print(lk.aggregation_loss(q, q, torch.arange(3), torch.arange(3)))\n"
        "try:\n"
        "    lk.aggregation_loss(q, q, torch.arange(3), torch.arange(3), backend='cpu')\n"
        "except ValueError as e:\n"
        "    assert 'compiled extension is unavailable' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('cpu backend should be refused')\n"
    )
    result = _fresh_python(code)
    assert result.returncode == 0, result.stderr + result.stdout

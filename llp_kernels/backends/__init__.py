"""The backends, one file each: ``reference.py`` (the ops' plain PyTorch oracles),
``cpu.py``, ``cuda.py`` and ``triton/``. Each declares itself with
``llp_kernels.registry.register_backend`` and registers each of its launchers to its op
with ``register_kernel(op, name, limits=...)``; ``llp_kernels/__init__.py`` imports them,
in the order ``auto`` and ``available_backends()`` list them.
"""
import torch


def fp32_as_tf32() -> bool:
    """Whether fp32 products may run as TF32 on tensor cores: they follow
    ``torch.get_float32_matmul_precision()`` ('highest': no), as torch's own matmul does."""
    return torch.get_float32_matmul_precision() != "highest"

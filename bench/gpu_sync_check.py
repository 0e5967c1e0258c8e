"""``python -m bench.gpu_sync_check``: a few training steps (supervised warm-up and LLP) on
the GPU under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any operation
that makes the host wait for the device (a tensor converted to a Python value, a shape
that depends on the data). Exit status 0 and one line when no step waited."""
from __future__ import annotations

import sys

import torch

from llp.train import loop
from llp.train.build import build_run
from llp.train.config import TrainConfig


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_sync_check: no CUDA device", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    run = build_run(TrainConfig(warmup_epochs=1, epochs=1), device, None)
    loop.start_llp(run)
    steps = 0
    for phase in ("warmup", "llp"):
        pool = loop.training_pool(run, phase).cpu()
        for start in range(0, 3 * 128, 128):
            rows = pool[start:start + 128]
            x = run.split.train.batch(rows, run.batches).pin_memory().to(device, non_blocking=True)
            idx = rows.pin_memory().to(device, non_blocking=True)
            torch.cuda.synchronize()  # outside the step: the copies above may wait
            torch.cuda.set_sync_debug_mode("error")
            try:
                loop.step(run, phase, idx, x, progress=0.5)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            steps += 1
    torch.cuda.synchronize()
    print(f"gpu_sync_check: {steps} steps (warm-up and LLP) ran with sync debug mode 'error': no host wait")
    return 0


if __name__ == "__main__":
    sys.exit(main())

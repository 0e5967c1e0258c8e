"""Benchmark sizes per op and size class.

- ``small``: the default on a CPU; the whole run stays under 5 minutes on 2 cores, so CI
  runs it. ``peers`` names the peer libraries that also run at a size (pykeops' CPU
  reductions take about a second at the smallest sizes, so only there).
- ``large``: opt-in on a CPU (``--llp-size large``): the CPU targets (top-k M=20k x N=200k,
  aggregation at N=1M).
- ``gpu``: the default when CUDA is present: the GPU target shapes (aggregation B=256 x
  N=1.28M, density 128k x 1.15M, a ResNet-18 step), and N up to
  10M with a bf16 bank.

D is 128 throughout (the paper's embedding), tau 0.07.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Size:
    name: str
    dims: Dict[str, int] = field(default_factory=dict)
    dtype: str = "float32"  # bank / keys dtype
    peers: Tuple[str, ...] = ()  # peer libraries that also run at this size

    @property
    def id(self) -> str:
        return f"{self.name}-{self.dtype}"


def _s(name, dtype="float32", peers=(), **dims):
    return Size(name, dims, dtype, peers)


SIZES: Dict[str, Dict[str, List[Size]]] = {
    "small": {
        "aggregation": [_s("B256-N16k", B=256, N=16_384, peers=("faiss", "keops")),
                        _s("B256-N200k", B=256, N=200_000),
                        _s("B256-N200k", "bfloat16", B=256, N=200_000)],
        "topk": [_s("Q512-N16k-k25", Q=512, N=16_384, k=25, peers=("faiss", "keops")),
                 _s("Q2048-N100k-k25", Q=2048, N=100_000, k=25),
                 _s("Q2048-N100k-k25", "bfloat16", Q=2048, N=100_000, k=25)],
        "density": [_s("M512-U16k-t25", M=512, U=16_384, t=25, peers=("faiss", "keops")),
                    _s("M2048-U100k-t25", M=2048, U=100_000, t=25)],
        "propagate": [_s("Q4096-M20k-k10", Q=4096, M=20_000, k=10, C=1000)],
        "bank_update": [_s("N1M-B128", N=1_000_000, B=128),
                        _s("N1M-B128", "bfloat16", N=1_000_000, B=128)],
    },
    "large": {
        "aggregation": [_s("B256-N1M", B=256, N=1_000_000),
                        _s("B256-N1M", "bfloat16", B=256, N=1_000_000)],
        "topk": [_s("Q20k-N200k-k25", Q=20_000, N=200_000, k=25, peers=("faiss",))],
        "density": [_s("M20k-U200k-t25", M=20_000, U=200_000, t=25, peers=("faiss",))],
        "propagate": [_s("Q200k-M20k-k10", Q=200_000, M=20_000, k=10, C=1000)],
        "bank_update": [_s("N10M-B128", N=10_000_000, B=128)],
    },
    "gpu": {
        "aggregation": [_s("B256-N1.28M", B=256, N=1_280_000, peers=("faiss", "keops")),
                        _s("B256-N1.28M", "bfloat16", B=256, N=1_280_000, peers=("faiss", "keops")),
                        _s("B256-N10M", "bfloat16", B=256, N=10_000_000)],
        "topk": [_s("Q4096-N1.15M-k25", Q=4096, N=1_150_000, k=25, peers=("faiss", "keops")),
                 _s("Q4096-N1.15M-k256", "bfloat16", Q=4096, N=1_150_000, k=256)],
        "density": [_s("M128k-U1.15M-t25", M=128_000, U=1_150_000, t=25, peers=("faiss", "keops")),
                    _s("M128k-U1.15M-t25", "bfloat16", M=128_000, U=1_150_000, t=25, peers=("faiss", "keops"))],
        "propagate": [_s("Q128-M128k-k10", Q=128, M=128_000, k=10, C=1000),
                      _s("Q1.15M-M128k-k10", "bfloat16", Q=1_150_000, M=128_000, k=10, C=1000)],
        "bank_update": [_s("N1.28M-B128", N=1_280_000, B=128),
                        _s("N10M-B128", "bfloat16", N=10_000_000, B=128)],
    },
}

"""The compile check's readers of cuobjdump output (pure text parsing: no GPU, no CUDA) and its cache key."""
import pytest

from bench.gpu_compile import parse_usage, sass_counts

SASS = """
\tcode for sm_90
\t\tFunction : _Z6kernelPf
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;
        /*0020*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0030*/               @P0 HMMA.16816.F32.BF16 R12, R4, R6, R12 ;
        /*0040*/              @!P1 LDS.64 R2, [R3] ;
        /*0050*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR4][R6.64] ;
        /*0060*/                   SHFL.BFLY PT, R0, R1, 0x1, 0x1f ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
\t\tFunction : _Z5otherv
        /*0000*/                   STS [R1], R2 ;
        /*0010*/                   EXIT ;
"""


def test_sass_counts_per_function_with_predicates():
    counts = sass_counts(SASS)
    assert counts["_Z6kernelPf"] == {"HMMA": 2, "LDSM": 1, "LDS": 1, "STS": 0, "LDGSTS": 1, "SHFL": 1, "BAR": 1}
    assert counts["_Z5otherv"]["STS"] == 1 and sum(counts["_Z5otherv"].values()) == 1


def test_parse_usage_reads_registers_and_spills():
    text = """
 Function _Z6kernelPf:
  REG:85 STACK:0 SHARED:1024 LOCAL:16 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    (row,) = parse_usage(text)
    assert row == {"function": "_Z6kernelPf", "registers": 85, "stack": 0, "static_shared": 1024, "spill_bytes": 16}


def test_cache_key_follows_what_is_compiled():
    pytest.importorskip("triton")
    from bench.gpu_compile import Config, cache_key
    a = Config("topk", 90, "fp16", 128, 64, 64)
    assert cache_key(a) == cache_key(Config("topk", 90, "fp16", 128, 64, 64))
    assert cache_key(a) != cache_key(Config("topk", 90, "fp16", 128, 64, 128))
    assert cache_key(a) != cache_key(Config("topk", 80, "fp16", 128, 64, 64))

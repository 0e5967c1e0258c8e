"""The benchmark machinery itself: its checks fail on a wrong result (a benchmark that
cannot fail proves nothing), and the report turns pytest-benchmark JSON into tables."""
import json

import numpy as np

import pytest
import torch

from bench import checks, report
from bench.harness import unit_rows
from llp_kernels import reference as ref


def test_assert_close_catches_a_wrong_value():
    want = torch.linspace(-14, 14, 100)
    checks.assert_close("ok", want + 1e-4, want, "float32")
    with pytest.raises(AssertionError, match="exceeds"):
        checks.assert_close("bad", want + 1e-2, want, "float32")
    inf = want.clone()
    inf[3] = float("inf")
    with pytest.raises(AssertionError, match="infinities"):
        checks.assert_close("inf", want, inf, "float32")


def test_topk_check_catches_wrong_indices():
    q, keys = unit_rows(8, 16, "float32", "cpu", 0), unit_rows(300, 16, "float32", "cpu", 1)
    values, indices = ref.topk_similarity(q, keys, 5, 0.07)
    checks.assert_topk_consistent(values, indices, q, keys, 0.07, None, values, "float32")
    shuffled = indices.roll(1, dims=0)
    with pytest.raises(AssertionError):
        checks.assert_topk_consistent(values, shuffled, q, keys, 0.07, None, values, "float32")


def test_chunked_reference_equals_plain(monkeypatch):
    monkeypatch.setattr(checks, "CHUNK_BYTES", 4 * 300 * 3)  # three query rows per chunk
    q, bank = unit_rows(10, 16, "float32", "cpu", 0), unit_rows(300, 16, "float32", "cpu", 1)
    bl, ql = torch.randint(-1, 4, (300,)), torch.randint(0, 4, (10,))
    got = checks.chunked_aggregation_lse(q, bank, bl, ql, 0.07)
    want = ref.aggregation_lse(q, bank, bl, ql, 0.07)
    assert torch.allclose(got[0], want[0]) and torch.allclose(got[1], want[1])
    g = torch.rand(10)
    assert torch.allclose(checks.chunked_aggregation_grad(q, bank, bl, ql, *want, 0.07, g),
                          ref.aggregation_grad(q, bank, bl, ql, *want, tau=0.07, grad_output=g), atol=1e-5)


def test_report_tables(tmp_path):
    peaks = {"name": "CPU", "bytes_per_s": 1e11, "flops_float32": 2e11, "flops_bfloat16": 8e11,
             "source": "stated"}

    def entry(impl, median, op="topk_similarity"):
        return {"stats": {"median": median}, "extra_info": {
            "op": op, "size": "Q1-N1", "dtype": "float32", "impl": impl, "peer": impl.startswith("peer:"),
            "flops": 2e9, "bytes": 1e6, "device_peaks": peaks, "peak_memory_bytes": 2**20,
            "max_abs_err": 1e-6}}
    data = {"datetime": "today", "benchmarks": [
        entry("reference", 0.04), entry("cpu", 0.01), entry("peer:faiss", 0.02),
        entry("supervised", 0.010, "train step"), entry("llp", 0.011, "train step")]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    text = report.main([str(path), "--out", str(tmp_path / "r.md")])
    assert "| cpu | Q1-N1 | float32 | 10.00 ms | 4.00x | 1.0 MiB | 200.0 | 0.1 | 100.0% |" in text
    assert "| faiss (peer) |" in text and "| llp | Q1-N1 | 11.00 ms | +10.0% |" in text
    assert (tmp_path / "r.md").read_text() == text


def test_auto_table_records_the_faster_backend_per_op(tmp_path):
    from bench import auto_table

    def entry(op, impl, median, size="s"):
        return {"stats": {"median": median}, "extra_info": {
            "op": op, "impl": impl, "size": size, "dtype": "float32",
            "device_peaks": {"name": "NVIDIA Test GPU"}}}
    data = {"datetime": "2026-11-24T00:00:00", "benchmarks": [
        entry("aggregation forward", "triton", 2.0), entry("aggregation forward", "cuda", 1.0),
        entry("topk_similarity", "triton", 1.0), entry("topk_similarity", "cuda", 3.0),
        entry("local_density", "triton", 1.0), entry("local_density", "cuda", 1.5),
        entry("update_memory_bank_", "cuda", 1.0)]}  # triton missing: no verdict
    results, table = tmp_path / "r.json", tmp_path / "table.json"
    results.write_text(json.dumps(data))
    got = auto_table.main([str(results), "--table", str(table)])
    assert got["gpu"] == "NVIDIA Test GPU" and got["date"] == "2026-11-24"
    assert got["fastest"] == {"aggregation_lse": "cuda", "topk_similarity": "triton"}
    assert json.loads(table.read_text())["entries"] == [got]


def test_dispatch_reads_the_measured_table(monkeypatch):
    from llp_kernels import _auto_table
    monkeypatch.setattr(_auto_table, "_entries", lambda: (
        {"gpu": "NVIDIA Test GPU", "fastest": {"aggregation_lse": "cuda"}},))
    assert _auto_table.measured_choice("aggregation_lse", "NVIDIA Test GPU") == "cuda"
    assert _auto_table.measured_choice("topk_similarity", "NVIDIA Test GPU") is None
    assert _auto_table.measured_choice("aggregation_lse", "Other GPU") is None


def test_shipped_table_is_valid_json():
    from llp_kernels._auto_table import TABLE_PATH
    data = json.loads(TABLE_PATH.read_text())
    for entry in data["entries"]:  # empty until a GPU run records one
        assert {"gpu", "date", "source", "fastest"} <= set(entry)


def test_the_huge_data_set_is_written_once_and_reused(tmp_path):
    from bench.test_propagate_tool import cached_clusters

    folder, labels, truth = cached_clusters(tmp_path, 3000, 0.01, seed=7)
    assert (labels >= 0).sum() == 30 and len(truth) == 3000
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again, labels2, _ = cached_clusters(tmp_path, 3000, 0.01, seed=7)
    assert again == folder and np.array_equal(labels, labels2)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary left


def test_the_chunked_faiss_peer_is_the_whole_file_one(tmp_path):
    pytest.importorskip("faiss")
    from bench.test_propagate_tool import cached_clusters, faiss_vote, faiss_vote_chunked

    folder, labels, _ = cached_clusters(tmp_path, 3000, 0.02, seed=8)
    whole, chunked = faiss_vote(folder, labels, "cpu")(), faiss_vote_chunked(folder, labels, chunk=257)()
    assert (whole[0] != chunked[0]).mean() <= 1e-3
    np.testing.assert_allclose(whole[1], chunked[1], atol=1e-5)


def test_compare_runs_cancels_the_machines_drift(tmp_path):
    """A machine 10% slower in the 'after' runs: every case's ratio is 1.1, but the cpu
    case relative to the reference case of the same run is unchanged (1.0)."""
    from bench import compare_runs

    def run(name, cpu, ref, tool):
        path = tmp_path / name
        path.write_text(json.dumps({"benchmarks": [
            {"fullname": f"bench/t.py::test_forward[B8-float32-{impl}]", "stats": {"median": t}}
            for impl, t in (("cpu", cpu), ("reference", ref))] + [
            {"fullname": "bench/t.py::test_tool[N20]", "stats": {"median": tool}}]}))
        return str(path)

    before = [run("b1.json", 1.0, 2.0, 3.0), run("b2.json", 1.0, 2.0, 3.0)]
    after = [run("a1.json", 1.1, 2.2, 3.3), run("a2.json", 1.1, 2.2, 3.3)]
    text = compare_runs.table(compare_runs.load(before, after))
    assert "| test_forward[B8-float32-cpu] | 1000.00 ms | 1100.00 ms | 1.100 | 1.000 | 1.000 |" in text
    assert "- tool: 1 cases, median 1.100" in text
    assert "| test_forward[B8-float32-cpu] | 0.500 | 0.500 | 1.000 |" in text

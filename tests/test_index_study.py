"""The index study (benchmarks.index_study): its exact ground truth, recall arithmetic and vector recipe, and a
tiny run of the real code path (the shipped model embeds 200 catalog images, a real Milvus standalone server
indexes 2,000 rows with IVF_FLAT and FLAT)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from benchmarks import index_study
from benchmarks.index_study import (
    Projection,
    VectorSource,
    choose_winner,
    exact_top_k,
    recall_at_k,
    report_lines,
    same_source_at_k,
    unit_rows,
)


def _brute_force_top_k(queries: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ rows.T), axis=1, kind="stable")[:, :k]


def test_exact_top_k_over_chunks_equals_one_sort_over_all_rows():
    rng = np.random.default_rng(0)
    rows = unit_rows(rng.normal(size=(1_037, 24)))
    queries = unit_rows(rng.normal(size=(31, 24)))
    chunks = ((start, rows[start : start + 100]) for start in range(0, len(rows), 100))
    found = exact_top_k(queries, chunks, k=10)
    assert found.shape == (31, 10)
    np.testing.assert_array_equal(found, _brute_force_top_k(queries, rows, 10))


def test_exact_top_k_with_chunks_smaller_than_k():
    rng = np.random.default_rng(1)
    rows = unit_rows(rng.normal(size=(40, 8)))
    queries = unit_rows(rng.normal(size=(5, 8)))
    found = exact_top_k(queries, ((start, rows[start : start + 3]) for start in range(0, 40, 3)), k=10)
    np.testing.assert_array_equal(found, _brute_force_top_k(queries, rows, 10))


def test_recall_at_k_counts_the_overlap_whatever_the_order():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k([[4, 3, 2, 1], [5, 6, 7, 8]], exact, k=4) == 1.0
    assert recall_at_k([[1, 2, 90, 91], [9, 10, 11, 12]], exact, k=4) == pytest.approx(0.25)
    assert recall_at_k([[1], []], exact, k=4) == pytest.approx(0.125)  # short answers count as misses


def test_same_source_at_k():
    row_sources = np.array([0, 0, 1, 1, 2])
    assert same_source_at_k([[0, 1], [2, 4]], np.array([0, 1]), row_sources, k=2) == pytest.approx(0.75)


def test_vector_source_is_deterministic_and_queries_are_held_out():
    rng = np.random.default_rng(2)
    base = unit_rows(rng.normal(size=(50, 32)))
    source = VectorSource(base, rows=500, noise=0.3)
    first = [(start, vectors.copy(), picks.copy()) for start, vectors, picks in source.chunks(chunk_rows=128)]
    second = list(source.chunks(chunk_rows=128))
    assert [start for start, _, _ in first] == [0, 50, 178, 306, 434]
    for (_, a, pa), (_, b, pb) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(pa, pb)
    rows = np.concatenate([v for _, v, _ in first])
    assert rows.shape == (500, 32)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(rows[:50], base)  # the real embeddings come first, untouched
    np.testing.assert_array_equal(source.sources(chunk_rows=128), np.concatenate([p for _, _, p in first]))
    queries, query_sources = source.queries(20)
    assert not (np.abs(queries @ rows.T - 1.0) < 1e-6).any()  # no query is a row of the collection
    # noise of norm 0.3 on a unit vector: cosine to the source about 1 / sqrt(1 + 0.09)
    assert source.mean_cos_to_source(queries, query_sources) == pytest.approx(0.958, abs=0.02)


def test_projection_keeps_rows_unit_length_and_fixes_the_top_components():
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 16))
    rows = unit_rows(signal + 0.01 * rng.normal(size=(400, 16)))
    projection = Projection.fit(rows, 4)
    reduced = projection(rows)
    assert reduced.shape == (400, 4) and projection.dim == 4
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    # rank-4 data: the neighbours in 4 PCA dimensions are the neighbours in 16
    exact = _brute_force_top_k(rows[:20], rows, 5)
    assert recall_at_k(_brute_force_top_k(reduced[:20], reduced, 5).tolist(), exact, k=5) > 0.9


def _point(recall: float, p50: float) -> dict:
    stats = {"p50": p50, "p99": 2 * p50, "qps": 100.0}
    return {"search_params": {"nprobe": int(p50 * 10)}, "recall_at_10": recall, "c1": stats, "c8": stats}


def test_choose_winner_takes_the_fastest_point_above_the_recall_target():
    results = [
        {
            "key": "A",
            "label": "A",
            "index_type": "HNSW",
            "space": "full",
            "build_params": {},
            "sweep": [_point(0.90, 1.0), _point(0.97, 4.0)],
        },
        {
            "key": "B",
            "label": "B",
            "index_type": "IVF_FLAT",
            "space": "full",
            "build_params": {},
            "sweep": [_point(0.96, 3.0), _point(0.99, 6.0)],
        },
        {
            "key": "F",
            "label": "F",
            "index_type": "FLAT",
            "space": "full",
            "build_params": {},
            "sweep": [_point(1.0, 0.5)],
        },  # exact search is the reference, never the winner
        {"key": "E", "label": "E", "error": "boom"},
    ]
    winner = choose_winner(results)
    assert winner is not None
    assert (winner["key"], winner["c1_p50_ms"], winner["meets_p50_target"]) == ("B", 3.0, True)
    assert choose_winner(results, target_recall=0.995) is None


def test_choose_winner_takes_the_smaller_index_when_the_latencies_are_level():
    def result(key: str, p50: float, loaded_mib: float) -> dict:
        return {
            "key": key,
            "label": key,
            "index_type": "IVF_SQ8",
            "space": "full",
            "build_params": {},
            "memory": {"rss_delta": loaded_mib * 2**20},
            "sweep": [_point(0.97, p50)],
        }

    graph, compact, slow_tiny = result("graph", 4.5, 900), result("compact", 4.8, 300), result("tiny", 6.0, 50)
    assert choose_winner([graph, compact, slow_tiny])["key"] == "compact"  # 4.8 ms is within 10 % of 4.5
    assert choose_winner([graph, result("compact", 5.2, 300)])["key"] == "graph"  # 5.2 ms is not


def _free_port_block(size: int) -> int:
    """The first port of `size` consecutive free ports within the study's test range."""
    for first in range(19850, 19900 - size):
        socks = []
        try:
            for port in range(first, first + size):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    pytest.skip("no free ports for the Milvus standalone server")


@pytest.mark.integration
def test_tiny_study_on_a_real_milvus_server(tmp_path):
    pytest.importorskip("milvus")
    port_base = _free_port_block(8)  # gRPC and the 7 components' ports
    study = index_study.main(
        [
            "--rows", "2000",
            "--items", "200",
            "--queries", "40",
            "--indexes", "IVF_FLAT", "FLAT",
            "--nlist", "16",
            "--nprobes", "1", "16",
            "--c8-requests", "40",
            "--no-restart",
            "--concurrency", "2",
            "--cache-dir", str(tmp_path / "cache"),
            "--port-base", str(port_base),
            "--metrics-port", str(port_base - 10_000),
            "--etcd-port", str(port_base - 17_000),
            "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    written = json.loads((tmp_path / "out" / "index_study.json").read_text())
    assert written["vectors"]["rows"] == 2000 and written["vectors"]["real_items"] == 200
    assert written["inserts"]["full"]["rows"] == 2000
    by_key = {result["key"]: result for result in study["results"]}
    assert set(by_key) == {"IVF_FLAT", "FLAT"}, study["results"]
    flat, ivf = by_key["FLAT"], by_key["IVF_FLAT"]
    # Milvus's exact search agrees with the numpy ground truth: the recall arithmetic and the ids line up
    assert flat["sweep"][0]["recall_at_10"] >= 0.99
    probes = [point["search_params"]["nprobe"] for point in ivf["sweep"]]
    recalls = [point["recall_at_10"] for point in ivf["sweep"]]
    assert probes == [1, 16]
    assert recalls[1] >= 0.99  # every list probed: exact
    assert recalls[0] <= recalls[1]  # one list of 16 can only miss neighbours
    for point in ivf["sweep"]:
        assert point["c1"]["requests"] == 40 and point["c8"]["requests"] == 40 and point["c8"]["threads"] == 2
        assert point["c1"]["p50"] > 0 and point["c8"]["p99"] >= point["c8"]["p50"]
    assert ivf["build"]["indexed_rows"] == 2000
    assert ivf["memory"]["rss_after_load"] > 0
    assert sum(ivf["segments"]) == 2000
    assert study["winner"] is not None and study["winner"]["key"] == "IVF_FLAT"
    markdown = (tmp_path / "out" / "index_study.md").read_text()
    assert markdown == "\n".join(report_lines(written)) + "\n"
    assert "## IVF_FLAT (nlist=16)" in markdown and "**Winner: IVF_FLAT (nlist=16), search nprobe=" in markdown

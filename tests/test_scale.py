"""benchmarks/scale.py: the id mixes, the resumable build record, the ports per size and the report's tables."""

from __future__ import annotations

from collections import Counter

from benchmarks import scale


def test_id_mixes():
    ids = list(range(1, 10_001))
    hot = scale.id_sequence(ids, "hot", 20_000, hot=100)
    assert len(hot) == 20_000 and len(set(hot)) == 100 and set(hot) <= set(ids)
    uniform = scale.id_sequence(ids, "uniform", 20_000, hot=100)
    assert len(set(uniform)) > 8_000
    zipf = Counter(scale.id_sequence(ids, "zipf", 20_000, hot=100, zipf_s=1.0))
    top, count = zipf.most_common(1)[0]
    assert count > 20_000 / 20  # rank 1 takes ~1/H(10,000) ~ 10% of the requests
    assert top != 1 or zipf[2] < count  # ranks are shuffled ids, not the smallest ids
    assert scale.id_sequence(ids, "zipf", 1000, hot=100) == scale.id_sequence(ids, "zipf", 1000, hot=100)


def test_build_record_skips_finished_steps(tmp_path):
    path = tmp_path / "build.json"
    record = scale.BuildRecord(path)
    assert not record.done("ingest")
    record.record("ingest", seconds=1.5, images=2000)
    again = scale.BuildRecord(path)
    assert again.done("ingest") and not again.done("gallery")
    assert again.data["steps"]["ingest"] == {"seconds": 1.5, "images": 2000}


def test_every_size_has_its_own_ports_in_the_assigned_ranges():
    offsets = {scale.port_offset(size) for size in scale.SIZES}
    assert len(offsets) == len(scale.SIZES)
    for offset in offsets:
        assert 19600 <= scale.MILVUS_PORT + offset < scale.MILVUS_INTERNAL_PORTS + offset + 6 <= 19699
        assert 9600 <= scale.MILVUS_METRICS_PORT + offset <= 9699
        assert 2600 <= scale.ETCD_PORT + offset < scale.ETCD_PORT + offset + 1 <= 2699
        assert 8600 <= scale.WEB_PORT + offset <= 8699
    # the Milvus ports of one size never reach into the next size's
    ranges = sorted((scale.MILVUS_PORT + o, scale.MILVUS_INTERNAL_PORTS + o + 6) for o in offsets)
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_tables_render_sizes_with_partial_results():
    built_only = {"size": 1_000_000, "build": {"steps": {"gallery": {"db_insert_s": 300.0, "dim": 512}}}}
    measured = {
        "size": 10_000,
        "build": {"steps": {"similar_lists": {"seconds": 35.0, "products_per_s": 284.0}}},
        "runs": {
            "similar": {
                "hot": {
                    "rps": 2500.0,
                    "p50": 5.0,
                    "p90": 20.0,
                    "p99": 60.0,
                    "errors": 0,
                    "distinct_ids": 1000,
                    "cpu_cores": {"gunicorn": 1.5, "milvus": 0.01},
                    "machine_busy": 0.99,
                    "loadavg": [[2.0, 2.0, 2.0], [2.5, 2.0, 2.0]],
                }
            }
        },
    }
    build = "\n".join(scale.build_rows([measured, built_only]))
    assert "284 products/s" in build and "300 s" in build
    similar = "\n".join(scale.similar_rows([measured, built_only]))
    assert "| 10,000 | hot (1,000 distinct) | 2,500 |" in similar and "**met**" in similar
    assert "1,000,000" not in similar  # no row for a size that was not measured
    assert scale.search_rows([built_only])[2:] == []

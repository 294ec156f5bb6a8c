"""The report's "What limits us": prose derived from the measured numbers."""

from __future__ import annotations

from benchmarks.harness import cpu_shares
from benchmarks.table import TARGETS, fmt

ROWS_CALL = "query by product_id (rows_for_product)"
SEARCH_CALL = "ANN search k=68, no filter"
MISS_CALLS = ("resolve active collection", ROWS_CALL, "ANN search k=68, filter product_id != id")


def _ingest(r: dict) -> str:
    cores = r["machine"]["cores"]
    ing = r["ingest"]
    worker_share = cpu_shares(ing["cpu"]).get("celery worker", 0)
    idle = ing.get("idle_between_tasks", 0.0)
    text = (
        f"- **Ingest: {fmt(ing['img_s_steady'])} img/s steady.** While a 32-image task runs the worker embeds at "
        f"{fmt(ing.get('img_s_in_task'))} img/s (task p50 {fmt(ing['task_p50_s'], '.2f')} s; the first task "
        f"{fmt(ing['first_task_s'], '.2f')} s includes the model load), using {worker_share:.2f} cores on average "
        f"({ing['worker_cpu_s_per_image'] * 1000:.0f} ms CPU per image; machine "
        f"{ing['cpu']['machine_busy'] * 100:.0f}% busy). "
    )
    if idle >= 0.15:
        text += (
            f"But between tasks the worker sits idle for p50 {fmt(ing.get('gap_p50_s'), '.2f')} s — "
            f"{idle * 100:.0f}% of the time — although work is queued: with the filesystem broker Celery runs its "
            f"blocking loop (`drain_events(timeout=2.0)`), and with acks_late + prefetch 1 the next message is "
            f"only fetched after the previous ack is processed at the end of that 2 s cycle "
            f"(`python -m benchmarks --worker-prefetch 2` measures the worker without that gap). "
        )
    text += (
        f"The embedding itself is CPU-bound: on {cores} cores more worker processes would split the same CPU; "
        f"a smaller input (EMBEDDER_IMAGE_SIZE=160) or a GPU worker is what raises images/s."
    )
    return text


def _freshness(r: dict) -> str:
    fr, ing = r["freshness"], r["ingest"]
    return (
        f"- **Freshness**: p50 {fmt(fr['vector_store']['p50'], '.2f')} s from save to searchable with an idle worker, "
        f"of which {fmt(fr['pickup']['p50'], '.2f')} s until the worker received the task (broker polling) and "
        f"{fmt(fr['task']['p50'], '.2f')} s running it (decode, thumbnail, embed one image, upsert + flush, DB "
        f"update). Behind a backlog it is the queue wait: {ing['images']:,} queued images drain in "
        f"{fmt(ing['all_ready_s'], '.0f')} s. Similar lists of *existing* products are cached for "
        f"SIMILAR_PRODUCTS_CACHE_SECONDS, so a new product shows up there only after that TTL."
    )


def _flush(r: dict) -> list[str]:
    fl = r.get("flush", {})
    if not fl:
        return []
    parts = "; ".join(f"{fmt(v['flush_ms_p50'])} ms at {v['collection_rows']:,} vectors" for v in fl.values())
    return [
        f"- **Milvus flush** after every 32-image upsert costs {parts} (p50): every flush writes a new "
        f"Parquet segment that Milvus Lite later compacts and re-indexes (HNSW) in the background."
    ]


def _milvus(calls: list[dict]) -> list[str]:
    if not calls:
        return []
    big = calls[-1]["calls"]
    miss_ms = sum(big.get(k, {}).get("p50_ms", 0) for k in MISS_CALLS)
    growth = ""
    if len(calls) > 1:
        small = calls[0]["calls"]
        growth = (
            f" From {calls[0]['vectors']:,} to {calls[-1]['vectors']:,} vectors the query by product_id goes "
            f"{fmt(small[ROWS_CALL]['p50_ms'])} → {fmt(big[ROWS_CALL]['p50_ms'])} ms and a search "
            f"{fmt(small[SEARCH_CALL]['p50_ms'])} → {fmt(big[SEARCH_CALL]['p50_ms'])} ms, "
            f"while a get by primary key stays at {fmt(big['get by primary key (image_id)']['p50_ms'])} ms."
        )
    return [
        f"- **Milvus Lite is the ceiling for anything that misses the cache.**{growth} Milvus Lite 3.2 is a Python "
        f"gRPC server that, on every search and query, walks every row of every segment in Python (dedup by "
        f"sequence number and a tombstone check per row; seen with cProfile: `_build_local_mask`, "
        f"`_update_max_seqs`, `delta_index.is_deleted`), while the faiss HNSW search itself takes under a "
        f"millisecond. So its cost grows linearly with the catalog, runs on one core (GIL), and one similar-products "
        f"miss costs about {fmt(miss_ms, '.0f')} ms of it: at most ~{1000 / max(miss_ms, 1e-9):.0f} misses/s, "
        f"whatever gunicorn does."
    ]


def _similar_cold(r: dict) -> str:
    cold = r["similar"]["cold"]
    cs = cpu_shares(cold["cpu"])
    return (
        f"- **Similar products, cache miss**: {fmt(cold['rps'])} req/s, p50 {fmt(cold['p50'])} ms at "
        f"c={cold['concurrency']} (latency is mostly queueing for Milvus). CPU during the run: Milvus Lite "
        f"{cs.get('milvus-lite', 0):.2f} cores, gunicorn {cs.get('gunicorn', 0):.2f}, load generator "
        f"{cs.get('load generator', 0):.2f}, other processes "
        f"{cold['cpu'].get('other_cpu_s', 0) / max(cold['cpu']['wall_s'], 1e-9):.2f} (machine "
        f"{cold['cpu']['machine_busy'] * 100:.0f}% busy)."
        + (
            f" The similar-products cache is local memory, per gunicorn worker process: each product misses once per "
            f"worker ({r['args_web_workers']} workers)."
            if r["cache"] != "Redis"
            else ""
        )
    )


def _similar_warm(r: dict) -> str:
    cores = r["machine"]["cores"]
    warm = r["similar"]["warm"]
    ws = cpu_shares(warm["cpu"])
    web_ms = 1000 * ws.get("gunicorn", 0) / max(warm["rps"], 1e-9)
    cap = cores * max(warm["rps"], 1e-9) / max(ws.get("gunicorn", 0) + ws.get("milvus-lite", 0), 1e-9)
    return (
        f"- **Similar products, cached**: {fmt(warm['rps'])} req/s, p99 {fmt(warm['p99'])} ms. gunicorn used "
        f"{ws.get('gunicorn', 0):.2f} cores, Milvus Lite still {ws.get('milvus-lite', 0):.2f}: every hit still makes "
        f"Milvus round trips to resolve the active collection (for the cache key and again for the response), runs "
        f"the catalog queries (products + categories + images) and DRF serialisation. At ~{web_ms:.1f} ms of "
        f"web CPU per request, {cores} cores cap Django at about {cap:,.0f} req/s "
        f"even with no load generator on the box; {TARGETS['similar_rps']:,.0f} req/s needs the response cached as "
        f"bytes (or a CDN/edge cache) and more cores."
    )


def _search(r: dict, calls: list[dict]) -> str:
    cores = r["machine"]["cores"]
    se = r["search"]
    seq, con = se["sequential"], se["concurrent"]
    ss = cpu_shares(seq["cpu"])
    search_ms = calls[-1]["calls"].get(SEARCH_CALL, {}).get("p50_ms") if calls else None
    stages = seq.get("stages") or {}

    def p50(name: str) -> str:
        return fmt(stages.get(name, {}).get("p50"))

    path = (
        f"decode {p50('decode')} ms, localize {p50('localize')} ms (detect {p50('detect')} in the worker, queue "
        f"{p50('queue')}), embed the crop {p50('embed')} ms, search {p50('search')} ms (p50 each)"
        if "localize" in stages
        else "one embedding on the web worker plus one Milvus search"
    )
    return (
        f"- **Search by photo** is {path}; the Milvus search alone takes "
        f"~{fmt(search_ms, '.0f')} ms at {calls[-1]['vectors'] if calls else 0:,} vectors: "
        f"p50 {fmt(seq['p50'])} ms sequential (gunicorn {ss.get('gunicorn', 0):.2f} cores busy, localize worker "
        f"{ss.get('localize worker', 0):.2f}); concurrent requests queue for the same {cores} cores and for the "
        f"one localize worker (p50 {fmt(con['p50'])} ms at c={con['concurrency']}). Each gunicorn worker holds "
        f"its own copy of the embedder and torch threads per process default to all cores, so concurrency "
        f"oversubscribes the CPU."
    )


def limits_section(r: dict) -> list[str]:
    """'What limits us', derived from the measured numbers."""
    calls = list(r.get("milvus_calls", {}).values())
    return [
        _ingest(r),
        _freshness(r),
        *_flush(r),
        *_milvus(calls),
        _similar_cold(r),
        _similar_warm(r),
        _search(r, calls),
    ]

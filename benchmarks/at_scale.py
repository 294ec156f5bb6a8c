"""The "At scale" section of docs/benchmarks.md: every figure of the scale, index and import studies against its
target, read from docs/scale.json, docs/index_study.json and docs/import_scale.json.

`make bench` writes it with the rest of the page; each study refreshes it in place when it rewrites its own docs
(between the two markers below), so the page never shows a study older than the study's own page.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness import DOCS
from benchmarks.table import INDEX_LATENCY_TIE, TARGETS, fastest_at_target

BEGIN = "<!-- at-scale: generated from docs/scale.json, docs/index_study.json, docs/import_scale.json -->"
END = "<!-- /at-scale -->"
SIMILAR_RPS, SIMILAR_P99_MS = TARGETS["similar_rps"], TARGETS["similar_p99_ms"]
SEARCH_P50_MS, SEARCH_P99_MS = TARGETS["search_p50_ms"], TARGETS["search_p99_ms"]
INDEX_P50_MS, INDEX_RECALL = TARGETS["index_p50_ms"], TARGETS["index_recall_at_10"]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _met(ok: bool) -> str:
    return "**met**" if ok else "not met"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _load_avg(run: dict) -> str:
    loadavg = run.get("loadavg")
    if not loadavg:
        return ""
    return f"load {loadavg[0][0]} → {loadavg[1][0]}"


def scale_rows(scale: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    for result in sorted(scale.get("sizes", []), key=lambda r: r["size"]):
        size, runs = result["size"], result.get("runs", {})
        for mix in ("hot", "zipf", "uniform"):
            run = (runs.get("similar") or {}).get(mix)
            if run:
                ok = run["rps"] >= SIMILAR_RPS and run["p99"] <= SIMILAR_P99_MS and run["errors"] == 0
                rows.append(
                    [
                        f"GET similar (stored lists), {mix} ({run.get('distinct_ids', 0):,} ids)",
                        f"{size:,} products, c={run.get('connections', 32)}",
                        f"{run['rps']:,.0f} req/s; p50 {_ms(run['p50'])} / p99 {_ms(run['p99'])} ms; "
                        f"{run['errors']} errors; {_load_avg(run)}",
                        f"≥ {SIMILAR_RPS:,.0f} req/s, p99 ≤ {SIMILAR_P99_MS:.0f} ms",
                        _met(ok),
                    ]
                )
        page = runs.get("page")
        if page:
            rows.append(
                [
                    "Product page (HTML, stored list), zipf",
                    f"{size:,} products, c={page.get('connections', 8)}",
                    f"{page['rps']:,.0f} req/s; p50 {_ms(page['p50'])} / p99 {_ms(page['p99'])} ms; "
                    f"{page['errors']} errors; {_load_avg(page)}",
                    "-",
                    "-",
                ]
            )
        for key, label in (("c1", "c=1"), ("c4", "c=4")):
            run = (runs.get("search") or {}).get(key)
            if not run:
                continue
            stages = run.get("stages", {})
            split = ", ".join(
                f"{stage} p50 {_ms(stages[stage]['p50'])}"
                for stage in ("embed", "search", "localize")
                if stage in stages
            )
            target = f"p50 ≤ {SEARCH_P50_MS:.0f} ms, p99 ≤ {SEARCH_P99_MS:.0f} ms" if key == "c1" else "-"
            ok = run["p50"] <= SEARCH_P50_MS and run["p99"] <= SEARCH_P99_MS and run["errors"] == 0
            rows.append(
                [
                    f"POST search by photo, {label}",
                    f"{size:,} products, {run['ok'] + run['errors']} photos",
                    f"p50 {_ms(run['p50'])} / p99 {_ms(run['p99'])} ms ({split}); {run['errors']} errors; "
                    f"{_load_avg(run)}",
                    target,
                    _met(ok) if key == "c1" else "-",
                ]
            )
        cold = (runs.get("coldstart") or {}).get("preload")
        if cold and cold.get("first_search_ms_median") is not None:
            lazy = (runs.get("coldstart") or {}).get("lazy") or {}
            before = f" (models loaded on first use: {_ms(lazy['first_search_ms_median'])} ms)" if lazy else ""
            rows.append(
                [
                    "First search after a gunicorn restart (models loaded at boot)",
                    f"{size:,} products",
                    f"median {_ms(cold['first_search_ms_median'])} ms{before}",
                    "no cold start",
                    "-",
                ]
            )
    return rows


def index_rows(study: dict) -> list[list[str]]:
    winner = study.get("winner")
    rows_n = (study.get("vectors") or {}).get("rows", 0)
    if not winner:
        return []
    ok = winner["c1_p50_ms"] <= INDEX_P50_MS and winner["recall_at_10"] >= INDEX_RECALL
    build = next((r for r in study.get("results", []) if r.get("key") == winner["key"]), {})
    build_s = (build.get("build") or {}).get("build_s")
    memory = (build.get("memory") or {}).get("rss_delta")
    extra = []
    if build_s is not None:
        extra.append(f"build {build_s:,.0f} s")
    if memory:
        extra.append(f"{memory / 2**20:,.0f} MiB loaded")
    return [
        [
            f"Vector index (winner: {winner['label']}, "
            + ", ".join(f"{k}={v}" for k, v in winner["search_params"].items())
            + ")",
            f"{rows_n:,} vectors of 512-d, c=1",
            f"recall@10 {winner['recall_at_10']:.3f}; p50 {_ms(winner['c1_p50_ms'])} / p99 "
            f"{_ms(winner['c1_p99_ms'])} ms; c=8 p50 {_ms(winner['c8_p50_ms'])} ms, {winner['c8_qps']:,.0f} q/s"
            + (f"; {', '.join(extra)}" if extra else ""),
            f"p50 ≤ {INDEX_P50_MS:g} ms at recall@10 ≥ {INDEX_RECALL}",
            _met(ok),
        ]
    ]


def index_choice_lines(study: dict) -> list[str]:
    """Why the default index: each index's best setting at the recall target, its cost and its memory."""
    results = [r for r in study.get("results", []) if r.get("sweep") and r.get("index_type") != "FLAT"]
    if not results:
        return []
    lines = [
        f"### Why the product's default vector index on a Milvus server is {study['winner']['label']}"
        if study.get("winner")
        else "### No index reached the recall target",
        "",
        f"| index | fastest setting at recall@10 ≥ {INDEX_RECALL} | recall@10 | c=1 p50 / p99 ms | c=8 q/s | "
        "build s | loaded MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        best = fastest_at_target(result["sweep"], INDEX_RECALL)
        build_s = (result.get("build") or {}).get("build_s")
        memory = (result.get("memory") or {}).get("rss_delta")
        cost = f"{build_s:,.0f}" if build_s is not None else "-"
        mib = f"{memory / 2**20:,.0f}" if memory else "-"
        if best is not None:
            setting = ", ".join(f"{k}={v}" for k, v in best["search_params"].items())
            lines.append(
                f"| {result['label']} | {setting} | {best['recall_at_10']:.3f} | {_ms(best['c1']['p50'])} / "
                f"{_ms(best['c1']['p99'])} | {best['c8']['qps']:,.0f} | {cost} | {mib} |"
            )
        else:
            top = max(point["recall_at_10"] for point in result["sweep"])
            lines.append(f"| {result['label']} | never (best recall@10 {top:.3f}) | | | | {cost} | {mib} |")
    lines += [
        "",
        f"The rule (benchmarks/index_study.py, choose_winner): of the settings reaching recall@10 ≥ {INDEX_RECALL}, "
        f"those within {INDEX_LATENCY_TIE * 100:.0f} % of the fastest p50 are level (a search's p50 here is mostly "
        "the gRPC round trip), and of those the index that takes the least memory once loaded wins: memory is what "
        "bounds the catalog one query node serves. `MILVUS_INDEX_TYPE` and `MILVUS_INDEX_*_PARAMS` choose another.",
        "",
    ]
    return lines


def import_rows(data: dict) -> list[list[str]]:
    rows = []
    for run in (data.get("runs") or {}).values():
        if run.get("rows_per_transaction", 0) == 1:
            continue  # the one-task-per-row comparison; its gain is in the comparison row
        ingest = run.get("ingest") or {}
        if not ingest.get("img_s_steady"):
            continue
        rows.append(
            [
                "Catalog import → embedded (batched tasks, 1 CPU worker)",
                f"{run['rows']:,} rows ({ingest.get('mode', '').split(':')[0]})",
                f"{ingest['img_s_steady']:.1f} img/s steady; import {run['import']['rows_per_s']:,.0f} rows/s; "
                f"load {run['load_average_start'][0]} → {run['load_average_end'][0]}",
                "-",
                "-",
            ]
        )
    comparison = data.get("comparison") or {}
    gain = (comparison.get("img_s_steady") or {}).get("gain")
    if gain:
        rows.append(
            [
                "Batched import vs one task per row",
                f"{comparison['rows']:,} rows",
                f"{gain:.1f}x images/s",
                "-",
                "-",
            ]
        )
    extrapolation = data.get("extrapolation") or {}
    if extrapolation.get("million_images_one_cpu_worker_h"):
        rows.append(
            [
                "1,000,000 images (extrapolated)",
                extrapolation.get("basis", ""),
                f"{extrapolation['million_images_one_cpu_worker_h']:.1f} h per CPU worker; "
                f"{extrapolation.get('million_images_one_gpu_worker_h', float('nan')):.1f} h per GPU worker "
                "(assumed GPU forward, see docs/import_scale.md)",
                "-",
                "-",
            ]
        )
    return rows


def section_lines(docs: Path = DOCS) -> list[str]:
    scale = _load(docs / "scale.json") or {}
    study = _load(docs / "index_study.json") or {}
    imports = _load(docs / "import_scale.json") or {}
    rows = [*scale_rows(scale), *index_rows(study), *import_rows(imports)]
    lines = [
        BEGIN,
        "## At scale: stored lists, real Milvus, one million products",
        "",
        "Every figure of the three scale studies against its target; the details, the commands and the machine's "
        "load during each run are on their own pages: [docs/scale.md](scale.md) (`python -m benchmarks.scale`, "
        "a real Milvus 2.3 standalone server, the load generator on the same 2 cores), "
        "[docs/index_study.md](index_study.md) (`python -m benchmarks.index_study`) and "
        "[docs/import_scale.md](import_scale.md) (`python -m benchmarks.import_scale`). Catalogs above the 2,000 "
        "real ingested items are perturbed copies of their embeddings (stated on each page).",
        "",
    ]
    if rows:
        lines += [
            "| path | load | result | target | status |",
            "|---|---|---|---|---|",
            *[f"| {' | '.join(row)} |" for row in rows],
            "",
        ]
    else:
        lines += ["No scale study has been run on this checkout yet.", ""]
    lines += index_choice_lines(study)
    if (docs / "scale_latency.png").exists():
        lines += ["![latency against catalog size](scale_latency.png)", ""]
    for status in (study.get("status"), *(imports.get("pending") or [])):
        if status:
            lines += [f"- {status}"]
    lines += ["", END]
    return lines


def refresh(path: Path | None = None) -> bool:
    """Rewrite the section in docs/benchmarks.md (appended when the page has none); False when there is no page."""
    path = path or DOCS / "benchmarks.md"
    if not path.exists():
        return False
    text = path.read_text()
    section = "\n".join(section_lines(path.parent))
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    return True


if __name__ == "__main__":
    print(f"docs/benchmarks.md refreshed: {refresh()}")

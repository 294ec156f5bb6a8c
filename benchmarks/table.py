"""The results table (printed and in docs/benchmarks.md) and the report's smaller tables."""

from __future__ import annotations

from benchmarks.harness import cpu_shares

TARGETS = {
    "ingest_img_s_per_worker": 40.0,
    "freshness_s": 2.0,
    "similar_rps": 2000.0,
    "similar_p99_ms": 100.0,
    "search_p50_ms": 250.0,
    "search_p99_ms": 600.0,
    "index_recall_at_10": 0.95,
    "index_p50_ms": 5.0,
}
# p50s within 10 % of the fastest are level: the index study's choose_winner then prefers the smaller index.
INDEX_LATENCY_TIE = 0.10


def fastest_at_target(sweep: list[dict], target_recall: float = TARGETS["index_recall_at_10"]) -> dict | None:
    """The index study sweep point with the lowest concurrency-1 p50 among those reaching `target_recall`."""
    passing = [point for point in sweep if point["recall_at_10"] >= target_recall]
    return min(passing, key=lambda point: point["c1"]["p50"]) if passing else None


# The search runs in results["search"]: key, label. "sequential"/"concurrent" are the product's request (localized).
SEARCH_RUNS = (
    ("sequential", "localized"),
    ("concurrent", "localized"),
    ("whole_sequential", "whole_photo=true"),
    ("whole_concurrent", "whole_photo=true"),
)
# The stages of the search breakdown: Server-Timing name (or derived), label.
SEARCH_STAGES = (
    ("decode", "decode"),
    ("localize", "localize (queue round trip)"),
    ("detect", "· detect (the detector, in the worker)"),
    ("queue", "· queue (localize − detect)"),
    ("embed", "embed (the crop)"),
    ("search", "search (Milvus + catalog rows)"),
    ("server", "server (sum of the stages)"),
    ("http", "HTTP, upload parsing, serialisation (total − server)"),
    ("total", "**total: upload → results (client)**"),
)
HEADERS = ["benchmark", "load", "result", "target", "status"]


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def fmt(value, spec=".1f") -> str:
    """A number for the report; "n/a" for None and nan."""
    try:
        if value is None or value != value:
            return "n/a"
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _ingest_rows(r: dict) -> list[list[str]]:
    ing = r["ingest"]
    rows = [
        [
            "Ingest (1 worker, concurrency 1)",
            f"{ing['images']:,} images",
            f"{fmt(ing['img_s_steady'])} img/s steady, {fmt(ing['img_s_end_to_end'])} img/s end-to-end",
            f"≥ {TARGETS['ingest_img_s_per_worker']:.0f} img/s per worker",
            met(ing["img_s_steady"] >= TARGETS["ingest_img_s_per_worker"]),
        ]
    ]
    fr = r["freshness"]
    vs, api = fr["vector_store"], fr["api"]
    worst = max(vs["max"], api["max"])
    ok = vs["missing"] == 0 and api["missing"] == 0 and worst <= TARGETS["freshness_s"]
    rows.append(
        [
            "Freshness: save → searchable",
            f"{len(fr['trials'])} new images",
            f"vector store p50 {fmt(vs['p50'], '.2f')} s (max {fmt(vs['max'], '.2f')}); "
            f"API similar p50 {fmt(api['p50'], '.2f')} s (max {fmt(api['max'], '.2f')})",
            f"≤ {TARGETS['freshness_s']:.0f} s",
            met(ok),
        ]
    )
    for label, fl in r.get("flush", {}).items():
        rows.append(
            [
                f"Milvus upsert+flush, 32 rows ({label})",
                f"{fl['collection_rows']:,} vectors",
                f"upsert {fmt(fl['upsert_ms_p50'])} ms + flush {fmt(fl['flush_ms_p50'])} ms (p50)",
                "-",
                "-",
            ]
        )
    return rows


def _similar_rows(r: dict) -> list[list[str]]:
    rows = []
    for kind in ("cold", "warm"):
        s = r["similar"][kind]
        ok = s["rps"] >= TARGETS["similar_rps"] and s["p99"] <= TARGETS["similar_p99_ms"] and s["errors"] == 0
        rows.append(
            [
                f"GET similar, {kind} ({'cache miss' if kind == 'cold' else 'cached'})",
                f"{s['ok']:,} req, c={s['concurrency']}, {r['scale']['products']:,} products",
                f"{fmt(s['rps'])} req/s; p50 {fmt(s['p50'])} / p90 {fmt(s['p90'])} / p99 {fmt(s['p99'])} ms; "
                f"{s['errors']} errors",
                f"≥ {TARGETS['similar_rps']:,.0f} req/s, p99 ≤ {TARGETS['similar_p99_ms']:.0f} ms",
                met(ok),
            ]
        )
    return rows


def search_met(s: dict) -> bool:
    """The search-by-photo latency target: p50 and p99 within bounds and no errors."""
    return s["p50"] <= TARGETS["search_p50_ms"] and s["p99"] <= TARGETS["search_p99_ms"] and s["errors"] == 0


def stage_summary(stages: dict) -> str:
    """`p50/p99 ms: decode 10/12, localize 80/90 (detect 20/25 + queue 60/70), embed ..` for one run."""

    def pair(name: str) -> str:
        s = stages[name]
        return f"{fmt(s['p50'], '.0f')}/{fmt(s['p99'], '.0f')}"

    parts = []
    for name in ("decode", "localize", "embed", "search", "http"):
        if name not in stages:
            continue
        part = f"{name} {pair(name)}"
        if name == "localize" and "detect" in stages and "queue" in stages:
            part += f" (detect {pair('detect')} + queue {pair('queue')})"
        parts.append(part)
    return "p50/p99 ms: " + ", ".join(parts) if parts else "no Server-Timing"


def search_rows(r: dict) -> list[list[str]]:
    se = r["search"]
    photo = se.get("photo")
    size = f", {photo['width']}×{photo['height']} JPEG" if photo else ""
    rows = []
    for key, kind in SEARCH_RUNS:
        if key not in se:
            continue
        s = se[key]
        concurrency = s.get("concurrency", 1)
        judged = kind == "localized"
        rows.append(
            [
                f"POST search, {kind}, {'sequential' if concurrency == 1 else 'concurrent'}",
                f"{s['ok']:,} req, c={concurrency}{size}",
                f"{fmt(s['rps'])} req/s; p50 {fmt(s['p50'])} / p99 {fmt(s['p99'])} ms; {s['errors']} errors",
                f"p50 ≤ {TARGETS['search_p50_ms']:.0f} ms, p99 ≤ {TARGETS['search_p99_ms']:.0f} ms" if judged else "-",
                met(search_met(s)) if judged else "-",
            ]
        )
        if judged and s.get("stages"):
            rows.append([f"  stages, {kind}, c={concurrency}", "Server-Timing", stage_summary(s["stages"]), "-", "-"])
    return rows


def table_rows(r: dict) -> list[list[str]]:
    """One row per measurement: benchmark, load, result, target, status (markdown bold on met/not met)."""
    return _ingest_rows(r) + _similar_rows(r) + search_rows(r)


def render_table(rows: list[list[str]]) -> str:
    """The table as plain aligned text (as printed at the end of a run)."""
    plain = [[c.replace("**", "") for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in plain)) for i, h in enumerate(HEADERS)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in plain]
    return "\n".join([line, "-" * len(line), *body])


def print_table(rows: list[list[str]]) -> None:
    print("\n" + render_table(rows) + "\n")


def markdown_table(rows: list[list[str]]) -> list[str]:
    header = ["| " + " | ".join(HEADERS) + " |", "|---|---|---|---|---|"]
    return header + ["| " + " | ".join(row) + " |" for row in rows]


def milvus_calls_table(r: dict) -> list[str]:
    runs = list(r.get("milvus_calls", {}).values())
    if not runs:
        return []
    lines = [
        "| call | " + " | ".join(f"p50 ms at {run['vectors']:,} vectors" for run in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for name in runs[0]["calls"]:
        lines.append(f"| {name} | " + " | ".join(fmt(run["calls"].get(name, {}).get("p50_ms")) for run in runs) + " |")
    return lines


def search_stage_table(se: dict) -> list[str]:
    """p50 and p99 of every stage (rows) for every search run (columns), from the Server-Timing headers."""
    runs = [(key, kind, se[key]) for key, kind in SEARCH_RUNS if key in se and se[key].get("stages")]
    if not runs:
        return []
    heads = [f"{kind}, c={s.get('concurrency', 1)}" for _, kind, s in runs]
    lines = [
        "| stage (ms) | " + " | ".join(f"{h} p50 | {h} p99" for h in heads) + " |",
        "|---|" + "---|---|" * len(runs),
    ]
    for name, label in SEARCH_STAGES:
        if not any(name in s["stages"] for _, _, s in runs):
            continue
        cells = []
        for _, _, s in runs:
            stage = s["stages"].get(name)
            cells += [fmt(stage["p50"]), fmt(stage["p99"])] if stage else ["-", "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| requests | " + " | ".join(f"{s['ok']:,} | ({s['errors']} errors)" for _, _, s in runs) + " |")
    return lines


def cpu_table(r: dict) -> list[str]:
    runs = [
        ("ingest", r["ingest"]["cpu"]),
        ("similar cold", r["similar"]["cold"]["cpu"]),
        ("similar warm", r["similar"]["warm"]["cpu"]),
        ("search sequential (both kinds)", r["search"]["sequential"]["cpu"]),
        ("search concurrent, localized", r["search"]["concurrent"]["cpu"]),
    ]
    if "whole_concurrent" in r["search"]:
        runs.append(("search concurrent, whole photo", r["search"]["whole_concurrent"]["cpu"]))
    names = ["celery worker", "localize worker", "gunicorn", "milvus-lite", "load generator", "bench (this process)"]
    lines = [
        "| run | wall s | machine busy | " + " | ".join(names) + " | other |",
        "|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for label, cpu in runs:
        shares = cpu_shares(cpu)
        lines.append(
            f"| {label} | {cpu['wall_s']:.0f} | {cpu['machine_busy'] * 100:.0f}% | "
            + " | ".join(f"{shares.get(n, 0):.2f}" for n in names)
            + f" | {cpu.get('other_cpu_s', 0) / max(cpu['wall_s'], 1e-9):.2f} |"
        )
    return lines

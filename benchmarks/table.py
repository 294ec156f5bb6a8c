"""The results table (printed and in docs/benchmarks.md) and the report's smaller tables."""

from __future__ import annotations

from benchmarks.harness import cpu_shares

TARGETS = {
    "ingest_img_s_per_worker": 40.0,
    "freshness_s": 2.0,
    "similar_rps": 2000.0,
    "similar_p99_ms": 100.0,
    "search_p50_ms": 250.0,
}
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


def _search_rows(r: dict) -> list[list[str]]:
    rows = []
    for kind in ("sequential", "concurrent"):
        s = r["search"][kind]
        sequential = kind == "sequential"
        rows.append(
            [
                f"POST search, {kind}",
                f"{s['ok']:,} req, c={1 if sequential else s['concurrency']}",
                f"{fmt(s['rps'])} req/s; p50 {fmt(s['p50'])} / p99 {fmt(s['p99'])} ms; {s['errors']} errors",
                f"p50 ≤ {TARGETS['search_p50_ms']:.0f} ms" if sequential else "-",
                met(s["p50"] <= TARGETS["search_p50_ms"] and s["errors"] == 0) if sequential else "-",
            ]
        )
    return rows


def table_rows(r: dict) -> list[list[str]]:
    """One row per measurement: benchmark, load, result, target, status (markdown bold on met/not met)."""
    return _ingest_rows(r) + _similar_rows(r) + _search_rows(r)


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


def cpu_table(r: dict) -> list[str]:
    runs = [
        ("ingest", r["ingest"]["cpu"]),
        ("similar cold", r["similar"]["cold"]["cpu"]),
        ("similar warm", r["similar"]["warm"]["cpu"]),
        ("search sequential", r["search"]["sequential"]["cpu"]),
        ("search concurrent", r["search"]["concurrent"]["cpu"]),
    ]
    names = ["celery worker", "gunicorn", "milvus-lite", "load generator", "bench (this process)"]
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

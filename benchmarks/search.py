"""Search by photo over HTTP: `POST /api/search/` with 1-megapixel street-like photos, sequential then concurrent.

Every request is sent twice: as the product sends it (the photo is localized in the `localize` worker, the best
item cropped, embedded and searched) and with `whole_photo=true`. Each answer's Server-Timing header gives the
stages: decode, localize (the whole queue round trip), detect (the detector's own time inside the worker), embed
and search; the queue's cost is localize minus detect.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import time
from collections import Counter

from benchmarks.harness import BenchError, Context, latency_stats, log, log_load, percentile
from benchmarks.loadgen import KeepAlive, http_call, multipart_request, run_load, warm_all_workers

PHOTO_SIZE = (1152, 864)  # 1.0 megapixel, 4:3
ITEM_PIXELS = (200, 400)  # side of a pasted item
ITEMS_PER_PHOTO = (1, 3)
JPEG_QUALITY = 88
GRAIN = 6.0  # std of the sensor noise added last (grey levels)
# Server-Timing stages in the order the request runs them; detect runs inside localize (in the worker).
STAGES = ("decode", "localize", "detect", "embed", "search")
# Derived per request: queue = localize - detect; server = the stages the web process ran one after the other;
# http = client latency - server (HTTP, multipart parsing, DRF serialisation, catalog queries); total = client.
DERIVED = ("queue", "server", "http", "total")
WHOLE_PHOTO_FIELDS = {"whole_photo": "true"}


# Server-Timing ---------------------------------------------------------------------------------
def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split on `separator` outside double-quoted strings (a Server-Timing desc may hold commas)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def parse_server_timing(header: str | None) -> dict[str, float]:
    """{metric: dur in ms} from a Server-Timing header (`name;dur=12.5;desc="..", other;dur=3`).

    Metrics without a numeric dur are left out; when a name repeats, the first one counts (as browsers do).
    """
    timings: dict[str, float] = {}
    for metric in _split_unquoted(header or "", ","):
        name, *params = (part.strip() for part in _split_unquoted(metric, ";"))
        if not name or name in timings:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() != "dur":
                continue
            with contextlib.suppress(ValueError):
                timings[name] = float(value.strip().strip('"'))
            break  # only the first dur counts
    return timings


def request_stages(timings: dict[str, float], total_ms: float | None = None) -> dict[str, float]:
    """One request's stages (ms) plus what follows from them: queue, server and, given the client latency, http and
    total. A stage the server skipped (no localization for a clean product shot) stays absent."""
    stages = dict(timings)
    if "localize" in timings and "detect" in timings:
        stages["queue"] = timings["localize"] - timings["detect"]
    serial = [timings[s] for s in STAGES if s in timings and s != "detect"]  # detect is inside localize
    if serial:
        stages["server"] = sum(serial)
    if total_ms is not None:
        stages["total"] = total_ms
        if serial:
            stages["http"] = total_ms - stages["server"]
    return stages


def stage_stats(requests: list[dict[str, float]]) -> dict[str, dict]:
    """p50/p99/mean (ms) and the number of requests that had it, for every stage, in request order."""
    known = [*STAGES, *DERIVED]
    names = [s for s in known if any(s in r for r in requests)]
    names += sorted({name for r in requests for name in r} - set(known))
    stats = {}
    for name in names:
        values = [r[name] for r in requests if name in r]
        stats[name] = {
            "n": len(values),
            "p50": percentile(values, 50),
            "p99": percentile(values, 99),
            "mean": sum(values) / len(values),
        }
    return stats


# Photos ----------------------------------------------------------------------------------------
def _background(rng: random.Random, width: int, height: int):
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    top = np.array([rng.randint(90, 200) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randint(30, 140) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    background = top * (1 - t) + bottom * t + np.zeros((1, width, 3), dtype=np.float32)
    background += np.random.default_rng(rng.randint(0, 2**31)).normal(0, 9, background.shape)
    photo = Image.fromarray(background.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(photo)
    scale = width / 640
    for _ in range(rng.randint(4, 9)):  # facades, windows, street furniture
        x0, y0 = rng.randint(-50, width), rng.randint(-50, height)
        x1, y1 = x0 + round(rng.randint(30, 260) * scale), y0 + round(rng.randint(30, 300) * scale)
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randint(20, 230) for _ in range(3)))
    return photo.filter(ImageFilter.GaussianBlur(2.5 * scale))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def street_photo(
    items,
    rng: random.Random,
    size: tuple[int, int] = PHOTO_SIZE,
    item_pixels: tuple[int, int] = ITEM_PIXELS,
    quality: int = JPEG_QUALITY,
) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """Fashion-MNIST items (28x28 arrays), each recoloured, enlarged to `item_pixels` and pasted on a blurred
    street-like background of `size`, overlapping each other at most a little: (JPEG bytes, boxes x1 y1 x2 y2)."""
    import numpy as np
    from PIL import Image, ImageFilter

    width, height = size
    photo = _background(rng, width, height)
    boxes: list[tuple[int, int, int, int]] = []
    for pixels in items:
        side = min(rng.randint(*item_pixels), width, height)
        for _ in range(30):  # a place that hides no more than a quarter of an item already there
            x, y = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x, y, x + side, y + side)
            if all(_overlap(box, other) <= 0.25 for other in boxes):
                break
        item = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
        colour = np.array([rng.randint(0, 200) for _ in range(3)], dtype=np.float32)
        shade = np.asarray(item, dtype=np.float32)[..., None] / 255.0
        garment = Image.fromarray((colour * (0.45 + 0.55 * shade)).clip(0, 255).astype("uint8"))
        mask = item.point(lambda v: 255 if v > 18 else 0).filter(ImageFilter.GaussianBlur(1.2 * side / 250))
        photo.paste(garment, box[:2], mask)
        boxes.append(box)
    # Sensor grain over everything, as a camera gives it: without it the blurred scene compresses to ~40 KB, a
    # quarter of what a real 1-megapixel JPEG weighs (~175 KB at quality 88 with it).
    grain = np.random.default_rng(rng.randint(0, 2**31)).normal(0, GRAIN, (height, width, 3))
    photo = Image.fromarray((np.asarray(photo, dtype=np.float32) + grain).clip(0, 255).astype("uint8"))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), boxes


def category_name(product) -> str | None:
    """The category name of a product in an API answer (nested object, plain string or flat field)."""
    if not isinstance(product, dict):
        return None
    category = product.get("category")
    if isinstance(category, dict):
        return category.get("name")
    if isinstance(category, str):
        return category
    return product.get("category_name")


def _photos(ctx: Context) -> list[tuple[bytes, set[str]]]:
    """(JPEG, the categories of the items in it), one per request; 1-3 ingested items each."""
    from ml.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    rng = random.Random(11)
    photos = []
    for _ in range(ctx.args.search_requests):
        picks = [rng.randrange(min(ctx.args.ingest, len(images))) for _ in range(rng.randint(*ITEMS_PER_PHOTO))]
        content, _ = street_photo([images[i] for i in picks], rng)
        photos.append((content, {CLASS_NAMES[int(labels[i])] for i in picks}))
    return photos


# Runs ------------------------------------------------------------------------------------------
def _empty_run() -> dict:
    return {"latencies": [], "stages": [], "errors": 0, "error_samples": [], "kinds": Counter(), "boxes": []}


def _finish_run(run: dict, usage: dict) -> dict:
    latencies, matches = run["latencies"], run.get("matches", [])
    return {
        "ok": len(latencies),
        "errors": run["errors"],
        "error_samples": run["error_samples"],
        "latencies_s": latencies,
        "rps": len(latencies) / max(usage["wall_s"], 1e-9),
        "cpu": usage,
        **latency_stats(latencies),
        "stages": stage_stats(run["stages"]),
        "timings": run["stages"],
        "query_kinds": dict(run["kinds"]),
        "boxes_p50": percentile(run["boxes"], 50),
        "category_precision_at_10": sum(matches) / len(matches) if matches else None,
    }


def _sequential(ctx: Context, variants: dict[str, list[bytes]], photos: list[tuple[bytes, set[str]]]) -> dict:
    """Every photo in every variant on ONE keep-alive connection, the variants interleaved (order alternating per
    photo) so both see the same machine state. One CPU meter covers all of them."""
    names = list(variants)
    log(f"search SEQUENTIAL: {len(photos)} photos x {names}, one keep-alive connection ...")
    client = KeepAlive(ctx.web_port, timeout=60)
    runs = {name: _empty_run() for name in names}
    cpu = ctx.cpu_meter()
    for n, (_, labels) in enumerate(photos):
        for name in names if n % 2 == 0 else names[::-1]:
            run = runs[name]
            head, _, body = variants[name][n].partition(b"\r\n\r\n")
            content_type = re.search(rb"Content-Type: (multipart[^\r]+)", head).group(1).decode()
            t0 = time.perf_counter()
            status, response = client.request("POST", "/api/search/", body=body, headers={"Content-Type": content_type})
            elapsed = time.perf_counter() - t0
            if status != 200:
                run["errors"] += 1
                if len(run["error_samples"]) < 3:
                    run["error_samples"].append(f"{status}: {response[:200]!r}")
                continue
            run["latencies"].append(elapsed)
            timing = parse_server_timing(client.last_headers.get("server-timing"))
            run["stages"].append(request_stages(timing, elapsed * 1000))
            answer = json.loads(response)
            run["kinds"][(answer.get("query") or {}).get("kind", "?")] += 1
            run["boxes"].append(len(answer.get("boxes") or []))
            categories = [category_name(r.get("product")) for r in answer.get("results", [])[:10]]
            if any(c is not None for c in categories):
                run.setdefault("matches", []).append(
                    sum(1 for c in categories if c in labels) / max(1, len(categories))
                )
    usage = cpu.stop()
    client.close()
    return {name: _finish_run(run, usage) | {"concurrency": 1} for name, run in runs.items()}


def _concurrent(ctx: Context, name: str, raws: list[bytes]) -> dict:
    concurrency = ctx.args.search_concurrency
    log(f"search CONCURRENT ({name}): {concurrency} connections, {len(raws)} requests ...")
    cpu = ctx.cpu_meter()
    result = run_load(
        ctx.web_port,
        raws,
        concurrency=concurrency,
        duration=ctx.args.search_timeout,
        procs=1,
        distinct=True,
        timeout=120,
        header="server-timing",
    )
    result["cpu"] = cpu.stop({"load generator": result["loadgen_cpu_s"]})
    timings = [
        request_stages(parse_server_timing(header), latency * 1000)
        for header, latency in zip(result.pop("header_values"), result["latencies_s"], strict=True)
    ]
    result["stages"] = stage_stats(timings)
    result["timings"] = timings
    return result


def _encode_cost_ms(photos: list[tuple[bytes, set[str]]]) -> dict:
    """What the web process spends preparing the worker's copy (shrink to 640 px, JPEG, base64), measured here in
    the benchmark process on the same photos with the product's own function; part of the queue's cost."""
    from webapp.catalog.images import open_normalised
    from webapp.search.localization import encode_for_worker

    costs, sizes = [], []
    for content, _ in photos[:20]:
        picture = open_normalised(content)
        t0 = time.perf_counter()
        payload, _ = encode_for_worker(picture)
        costs.append((time.perf_counter() - t0) * 1000)
        sizes.append(len(payload))
    return {"p50_ms": percentile(costs, 50), "payload_bytes_avg": sum(sizes) / len(sizes)}


def _log_stages(label: str, result: dict) -> None:
    parts = [f"{name} {s['p50']:.1f}/{s['p99']:.1f}" for name, s in result["stages"].items()]
    log(f"  {label} stages p50/p99 ms: " + ", ".join(parts))
    if result.get("query_kinds"):
        log(f"  {label} query kinds: {result['query_kinds']}, boxes per photo p50 {result['boxes_p50']:.0f}")


def bench_search(ctx: Context) -> None:
    photos = _photos(ctx)
    (ctx.var_dir / "search-sample.jpg").write_bytes(photos[0][0])
    variants = {
        "localized": [
            multipart_request("/api/search/", "image", f"street-{n}.jpg", p, "image/jpeg")
            for n, (p, _) in enumerate(photos)
        ],
        "whole_photo": [
            multipart_request("/api/search/", "image", f"street-{n}.jpg", p, "image/jpeg", fields=WHOLE_PHOTO_FIELDS)
            for n, (p, _) in enumerate(photos)
        ],
    }
    avg_kb = sum(len(p) for p, _ in photos) / len(photos) / 1024
    log(
        f"search: {len(photos)} street-like {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEGs (q{JPEG_QUALITY}, ~{avg_kb:.0f} KB, "
        f"{ITEMS_PER_PHOTO[0]}-{ITEMS_PER_PHOTO[1]} items); loading the models in every gunicorn worker and the "
        f"localize worker ..."
    )
    sent, took = warm_all_workers(ctx.web_port, variants["localized"], ctx.args.web_workers)
    log(f"search: warmed with {sent} requests on fresh connections ({took:.1f}s, not measured)")
    for name, raws in variants.items():
        status, body = http_call(ctx.web_port, raws[0], timeout=60)
        if status != 200:
            raise BenchError(f"POST /api/search/ ({name}) -> {status}: {body[:300]!r}")
    result: dict = _sequential(ctx, variants, photos)
    for name in variants:
        log_load(f"search sequential, {name}", result[name])
        _log_stages(name, result[name])
    for name, raws in variants.items():
        result[f"{name}_concurrent"] = _concurrent(ctx, name, raws)
        log_load(f"search concurrent, {name}", result[f"{name}_concurrent"])
        _log_stages(name, result[f"{name}_concurrent"])
    ctx.results["search"] = {
        # "sequential" / "concurrent" are the product's request (localized), as in earlier reports.
        "sequential": result["localized"],
        "concurrent": result["localized_concurrent"],
        "whole_sequential": result["whole_photo"],
        "whole_concurrent": result["whole_photo_concurrent"],
        "image_bytes_avg": sum(len(p) for p, _ in photos) / len(photos),
        "photo": {
            "width": PHOTO_SIZE[0],
            "height": PHOTO_SIZE[1],
            "quality": JPEG_QUALITY,
            "items": list(ITEMS_PER_PHOTO),
            "item_pixels": list(ITEM_PIXELS),
        },
        "encode_for_worker": _encode_cost_ms(photos),
        "detector": ctx.results.get("detector"),
        "broker": {
            "url": ctx.args.broker_url,
            "polling_interval_s": (getattr(ctx.settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get(
                "polling_interval"
            ),
            "result_backend": str(getattr(ctx.settings, "CELERY_RESULT_BACKEND", "")).split(":", 1)[0],
        },
    }

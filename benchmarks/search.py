"""Search by photo over HTTP: `POST /api/search/` with street-like photos, sequential then concurrent."""

from __future__ import annotations

import io
import json
import random
import re
import time

from benchmarks.harness import BenchError, Context, latency_stats, log, log_load
from benchmarks.loadgen import KeepAlive, http_call, multipart_request, run_load, warm_all_workers


def street_photo(pixels, rng: random.Random) -> bytes:
    """A Fashion-MNIST item recoloured and pasted on a blurred street-like 640x480 background (JPEG)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    width, height = 640, 480
    top = np.array([rng.randint(90, 200) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randint(30, 140) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    background = top * (1 - t) + bottom * t + np.zeros((1, width, 3), dtype=np.float32)
    background += np.random.default_rng(rng.randint(0, 2**31)).normal(0, 9, background.shape)
    photo = Image.fromarray(background.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(photo)
    for _ in range(rng.randint(4, 9)):  # facades, windows, street furniture
        x0, y0 = rng.randint(-50, width), rng.randint(-50, height)
        x1, y1 = x0 + rng.randint(30, 260), y0 + rng.randint(30, 300)
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randint(20, 230) for _ in range(3)))
    photo = photo.filter(ImageFilter.GaussianBlur(2.5))
    side = rng.randint(200, 300)
    item = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
    colour = np.array([rng.randint(0, 200) for _ in range(3)], dtype=np.float32)
    shade = np.asarray(item, dtype=np.float32)[..., None] / 255.0
    garment = Image.fromarray((colour * (0.45 + 0.55 * shade)).clip(0, 255).astype("uint8"))
    mask = item.point(lambda v: 255 if v > 18 else 0).filter(ImageFilter.GaussianBlur(1.2))
    photo.paste(garment, (rng.randint(0, width - side), rng.randint(0, height - side)), mask)
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


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


def _photos(ctx: Context) -> list[tuple[bytes, str]]:
    from ml.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    rng = random.Random(11)
    picks = [rng.randrange(min(ctx.args.ingest, len(images))) for _ in range(ctx.args.search_requests)]
    return [(street_photo(images[i], rng), CLASS_NAMES[int(labels[i])]) for i in picks]


def _sequential(ctx: Context, raws: list[bytes], photos: list[tuple[bytes, str]]) -> dict:
    log(f"search SEQUENTIAL: {len(raws)} requests, one keep-alive connection ...")
    client = KeepAlive(ctx.web_port, timeout=60)
    latencies, errors, matches, checked = [], 0, 0.0, 0
    cpu = ctx.cpu_meter()
    for raw, (_, label) in zip(raws, photos, strict=True):
        head, _, body = raw.partition(b"\r\n\r\n")
        content_type = re.search(rb"Content-Type: (multipart[^\r]+)", head).group(1).decode()
        t0 = time.perf_counter()
        status, response = client.request("POST", "/api/search/", body=body, headers={"Content-Type": content_type})
        elapsed = time.perf_counter() - t0
        if status != 200:
            errors += 1
            continue
        latencies.append(elapsed)
        categories = [category_name(r.get("product")) for r in json.loads(response).get("results", [])[:10]]
        if any(c is not None for c in categories):
            checked += 1
            matches += sum(1 for c in categories if c == label) / max(1, len(categories))
    usage = cpu.stop()
    client.close()
    return {
        "ok": len(latencies),
        "errors": errors,
        "latencies_s": latencies,
        "rps": len(latencies) / max(usage["wall_s"], 1e-9),
        "cpu": usage,
        **latency_stats(latencies),
        "category_precision_at_10": matches / checked if checked else None,
    }


def _concurrent(ctx: Context, raws: list[bytes]) -> dict:
    concurrency = ctx.args.search_concurrency
    log(f"search CONCURRENT: {concurrency} connections, {len(raws)} requests ...")
    cpu = ctx.cpu_meter()
    concurrent = run_load(
        ctx.web_port,
        raws,
        concurrency=concurrency,
        duration=ctx.args.search_timeout,
        procs=1,
        distinct=True,
        timeout=120,
    )
    concurrent["cpu"] = cpu.stop({"load generator": concurrent["loadgen_cpu_s"]})
    return concurrent


def bench_search(ctx: Context) -> None:
    photos = _photos(ctx)
    (ctx.var_dir / "search-sample.jpg").write_bytes(photos[0][0])
    raws = [
        multipart_request("/api/search/", "image", f"street-{n}.jpg", p, "image/jpeg")
        for n, (p, _) in enumerate(photos)
    ]
    log(
        f"search: {len(photos)} street-like 640x480 JPEGs (~{sum(len(p) for p, _ in photos) // len(photos) // 1024}"
        f" KB); loading the model in every gunicorn worker ..."
    )
    sent, took = warm_all_workers(ctx.web_port, raws, ctx.args.web_workers)
    log(f"search: warmed with {sent} requests on fresh connections ({took:.1f}s, not measured)")
    status, body = http_call(ctx.web_port, raws[0], timeout=60)
    if status != 200:
        raise BenchError(f"POST /api/search/ -> {status}: {body[:300]!r}")
    sequential = _sequential(ctx, raws, photos)
    log_load("search sequential", sequential)
    concurrent = _concurrent(ctx, raws)
    log_load("search concurrent", concurrent)
    ctx.results["search"] = {
        "sequential": sequential,
        "concurrent": concurrent,
        "image_bytes_avg": sum(len(p) for p, _ in photos) / len(photos),
    }

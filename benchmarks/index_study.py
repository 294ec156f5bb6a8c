"""Index and compression choices for the product's vectors, measured on a real Milvus server.

    .venv/bin/python -m benchmarks.index_study                       # full study: 1,000,000 vectors (see below)
    .venv/bin/python -m benchmarks.index_study --rows 100000 --indexes IVF_SQ8 --out /tmp/study
    .venv/bin/python -m benchmarks.index_study --gpu --uri http://GPU-HOST:19530   # GPU server + CUDA embedder
    .venv/bin/python -m benchmarks.index_study --render docs/index_study.json     # rewrite the .md from the .json

Time: at 100,000 rows the study took 23 min on 2 shared cores (docs/index_study.md). Milvus seals segments at
~60k rows of 512-d and indexes each on its own, so 1M rows build ~8x the 100k build time; the defaults here
(nlist 256, HNSW efConstruction 64, IVF_PQ at --small-rows) are sized to bring the 1M run to about 50 minutes.

Vectors: the shipped VisNet model (models/visnet-default) embeds --items Fashion-MNIST catalog images (the
demo catalog's first items; cached under var/index-study/). The collection holds those real embeddings plus
perturbed copies up to --rows: a random real embedding plus Gaussian noise of norm --noise, re-normalised (the
recipe of benchmarks/catalog_scale.py). Queries are --queries further perturbed copies that are not in the
collection. Ground truth: the exact top-10 by cosine (numpy matrix product over all rows, chunked).

Per index configuration (HNSW, IVF_FLAT, IVF_SQ8, IVF_PQ, PCA-256 + IVF_SQ8; optionally FLAT): build time
(index build, load; the insert is shared by every configuration of one vector space and reported once),
memory (the Milvus process's RSS after load minus its RSS after a restart with the collection released, the
peak RSS while building, the bytes of index files written), and for each search parameter of a sweep:
recall@10 against exact search, latency p50/p99 at concurrency 1 and 8 (8 threads, one client each).
The winner: among the configurations with recall@10 >= 0.95, those within 10 % of the lowest p50 at concurrency 1
are level; of those the one taking the least memory once loaded wins (choose_winner).

When this script starts the server (the default) it is the pip `milvus` package's standalone binary on
127.0.0.1 (ports from --port-base), restarted between builds and loads so each memory number starts from a
fresh process. With --uri it uses a server you run (memory is then not measured).

GPU mode (--gpu): GPU_CAGRA and GPU_IVF_PQ on a GPU build of Milvus (e.g. `milvusdb/milvus:v2.5.x-gpu`, see
docker/README.md) given by --uri, and the embedder's throughput on CUDA (batch sizes swept). Nothing else changes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks import at_scale
from benchmarks.harness import DOCS, ROOT, BenchError, latency_stats, log
from benchmarks.table import INDEX_LATENCY_TIE, TARGETS, fastest_at_target

if TYPE_CHECKING:
    from scripts.milvus_standalone import StandaloneServer

K = 10
TARGET_RECALL = TARGETS["index_recall_at_10"]
TARGET_P50_MS = TARGETS["index_p50_ms"]
LATENCY_TIE = INDEX_LATENCY_TIE
CHUNK_ROWS = 50_000
INSERT_ROWS = 2_000
DEFAULT_ARTIFACT = ROOT / "models" / "visnet-default"
CACHE_DIR = ROOT / "var" / "index-study"
COLLECTION = "index_study"
LOAD_RETRY_S = 15
STALE_SESSION_S = 31


# -- index configurations ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexSpec:
    """One index configuration: what is built, which search parameter is swept, in which vector space."""

    key: str  # the name used on the command line and in the results
    index_type: str
    build: dict
    search_param: str | None  # None: nothing to sweep (FLAT)
    sweep: tuple[int, ...]
    space: str = "full"  # "full" (the model's dimension) or "pca" (PCA-projected, re-normalised)
    fixed_search: dict = field(default_factory=dict)

    def label(self) -> str:
        build = ", ".join(f"{k}={v}" for k, v in self.build.items())
        prefix = "PCA-{pca} + " if self.space == "pca" else ""
        return f"{prefix}{self.index_type}" + (f" ({build})" if build else "")


# Build parameters sized for 2 cores: Milvus indexes each sealed segment (~60k rows of 512-d) on its own, so nlist
# 256 is ~4 sqrt(rows) per segment, and k-means at nlist 1024 or HNSW at efConstruction 128+ made the 1M builds
# several times longer (measured at 100k rows: docs/index_study.md).
NPROBES = (2, 4, 8, 16, 32)
CPU_SPECS = (
    IndexSpec("HNSW", "HNSW", {"M": 16, "efConstruction": 64}, "ef", (16, 32, 64, 128, 256)),
    IndexSpec("IVF_FLAT", "IVF_FLAT", {"nlist": 256}, "nprobe", NPROBES),
    IndexSpec("IVF_SQ8", "IVF_SQ8", {"nlist": 256}, "nprobe", NPROBES),
    IndexSpec("IVF_PQ", "IVF_PQ", {"nlist": 256, "m": 64, "nbits": 8}, "nprobe", NPROBES),
    IndexSpec("PCA_IVF_SQ8", "IVF_SQ8", {"nlist": 256}, "nprobe", NPROBES, space="pca"),
    IndexSpec("FLAT", "FLAT", {}, None, (0,)),
)
GPU_SPECS = (
    IndexSpec(
        "GPU_CAGRA",
        "GPU_CAGRA",
        {"intermediate_graph_degree": 64, "graph_degree": 32},
        "itopk_size",
        (16, 32, 64, 128),
        fixed_search={"search_width": 4},
    ),
    IndexSpec("GPU_IVF_PQ", "GPU_IVF_PQ", {"nlist": 1024, "m": 64, "nbits": 8}, "nprobe", NPROBES),
)
DEFAULT_CPU = ("HNSW", "IVF_FLAT", "IVF_SQ8", "PCA_IVF_SQ8", "FLAT")
DEFAULT_CPU_SMALL = ("IVF_PQ",)  # its build (PQ training per segment) alone would take about an hour at 1M here


def specs_by_key(gpu: bool) -> dict[str, IndexSpec]:
    return {spec.key: spec for spec in (GPU_SPECS if gpu else CPU_SPECS)}


def with_overrides(spec: IndexSpec, args) -> IndexSpec:
    """The command line's nlist, HNSW build parameters and search sweeps replace the defaults."""
    build = dict(spec.build)
    if args.nlist and "nlist" in build:
        build["nlist"] = args.nlist
    if spec.index_type == "HNSW":
        build.update({k: v for k, v in (("M", args.hnsw_m), ("efConstruction", args.hnsw_ef_construction)) if v})
    sweep = spec.sweep
    if spec.search_param == "nprobe" and args.nprobes:
        sweep = tuple(args.nprobes)
    if spec.search_param == "ef" and args.efs:
        sweep = tuple(args.efs)
    return replace(spec, build=build, sweep=sweep)


# -- the vectors -------------------------------------------------------------------------------------------
def load_catalog_embeddings(items: int, artifact_dir: Path, device: str, cache_dir: Path) -> tuple[np.ndarray, dict]:
    """The shipped model's embeddings of the first `items` demo-catalog images, cached per model version."""
    from ml.artifacts import read_artifact

    artifact = read_artifact(artifact_dir)
    cache = cache_dir / f"catalog-{artifact.model_version}-{items}.npz"
    meta_path = cache.with_suffix(".json")
    for stored_path in sorted(cache_dir.glob(f"catalog-{artifact.model_version}-*.npz")):
        count = int(stored_path.stem.rsplit("-", 1)[1])
        if count >= items and stored_path.with_suffix(".json").exists():  # the first `items` of a larger cache
            with np.load(stored_path) as stored:
                vectors = stored["vectors"][:items]
            meta = json.loads(stored_path.with_suffix(".json").read_text())
            meta.update(cached=True, items=items, cache=stored_path.name)
            log(f"catalog: {items:,} cached embeddings ({meta['model_version']}, {stored_path.name})")
            return vectors, meta
    from ml.data.street2shop import load_shop
    from ml.inference.visnet import load_visnet_embedder

    pixels, _, keys = load_shop()
    if items > len(pixels):
        raise BenchError(f"--items {items} exceeds the {len(pixels):,} catalog images")
    embedder = load_visnet_embedder(artifact, device=device)
    log(f"catalog: embedding {items:,} images with {embedder.model_version} on {embedder.device} ...")
    vectors, seconds = _embed_pixels(embedder, pixels[:items])
    meta = {
        "model_version": embedder.model_version,
        "items": items,
        "first_key": keys[0],
        "last_key": keys[items - 1],
        "device": str(embedder.device),
        "embed_s": seconds,
        "images_per_s": items / seconds,
        "cached": False,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors)
    meta_path.write_text(json.dumps(meta, indent=2))
    log(f"catalog: {items:,} images in {seconds:.0f}s ({meta['images_per_s']:.1f} img/s)")
    return vectors, meta


def _shop_images(pixels: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(255 - p).convert("RGB") for p in pixels]  # the catalog image (ml.data.street2shop)


def _embed_pixels(embedder, pixels: np.ndarray, batch: int = 512) -> tuple[np.ndarray, float]:
    from tqdm import tqdm

    chunks, t0 = [], time.monotonic()
    for start in tqdm(range(0, len(pixels), batch), desc="embed", unit="batch", mininterval=10):
        chunks.append(embedder.embed(_shop_images(pixels[start : start + batch])))
    return np.concatenate(chunks), time.monotonic() - t0


def embedding_throughput(artifact_dir: Path, device: str, images: int, batch_sizes: tuple[int, ...]) -> dict:
    """Images per second of the serving embedder (preprocessing included) per batch size, after a warm-up."""
    import torch

    from ml.data.street2shop import load_shop
    from ml.inference.visnet import load_visnet_embedder

    pixels, _, _ = load_shop()
    pil = _shop_images(pixels[:images])
    rows = []
    for batch_size in batch_sizes:
        embedder = load_visnet_embedder(artifact_dir, device=device, batch_size=batch_size)
        embedder.embed(pil[: min(batch_size, len(pil))])  # warm-up (CUDA context, cuDNN autotune)
        if embedder.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.monotonic()
        embedder.embed(pil)
        if embedder.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.monotonic() - t0
        rows.append(
            {"batch_size": batch_size, "images": len(pil), "seconds": seconds, "images_per_s": len(pil) / seconds}
        )
        log(f"embedding throughput on {embedder.device}: batch {batch_size}: {len(pil) / seconds:,.0f} img/s")
    return {"device": device, "rows": rows}


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


class VectorSource:
    """Rows 0..items-1 are the real embeddings; later rows are perturbed copies, generated per chunk from
    fixed seeds so every pass (ground truth, PCA sample, inserts) sees the same vectors without holding them."""

    def __init__(self, base: np.ndarray, rows: int, noise: float, seed: int = 12345):
        if rows < len(base):
            raise BenchError(f"--rows {rows} is below the {len(base):,} real embeddings")
        self.base, self.rows, self.noise, self.seed = base.astype(np.float32), rows, noise, seed
        self.dim = base.shape[1]
        self.sigma = noise / np.sqrt(self.dim)  # noise vector norm ~ `noise` before re-normalising

    def _perturbed(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        picks = rng.integers(0, len(self.base), n)
        noisy = self.base[picks] + rng.normal(0.0, self.sigma, (n, self.dim)).astype(np.float32)
        return unit_rows(noisy), picks

    def chunks(self, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row id, vectors, source item of each row) in row order."""
        yield 0, self.base, np.arange(len(self.base))
        start, number = len(self.base), 0
        while start < self.rows:
            n = min(chunk_rows, self.rows - start)
            vectors, picks = self._perturbed(np.random.default_rng([self.seed, number]), n)
            yield start, vectors, picks
            start, number = start + n, number + 1

    def queries(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Held-out perturbed copies (their own seed: no query is a row of the collection)."""
        return self._perturbed(np.random.default_rng([self.seed, 0x51]), n)

    def sources(self, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """The source item of every row (the picks are drawn first from each chunk's generator: no noise needed)."""
        picks, start, number = [np.arange(len(self.base))], len(self.base), 0
        while start < self.rows:
            n = min(chunk_rows, self.rows - start)
            picks.append(np.random.default_rng([self.seed, number]).integers(0, len(self.base), n))
            start, number = start + n, number + 1
        return np.concatenate(picks)

    def mean_cos_to_source(self, vectors: np.ndarray, picks: np.ndarray) -> float:
        return float(np.mean(np.sum(vectors * self.base[picks], axis=1)))


@dataclass
class Projection:
    """PCA to `dim` dimensions fitted on a sample of the collection; projected rows are re-normalised."""

    mean: np.ndarray
    basis: np.ndarray  # [full dim, dim]

    @classmethod
    def fit(cls, sample: np.ndarray, dim: int) -> Projection:
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        return cls(mean.astype(np.float32), vt[:dim].T.astype(np.float32))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return unit_rows((vectors - self.mean) @ self.basis)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[1])


def fit_projection(source: VectorSource, dim: int, sample_rows: int) -> tuple[Projection, float]:
    sample, taken = [], 0
    for _, vectors, _ in source.chunks():
        sample.append(vectors[: sample_rows - taken])
        taken += len(sample[-1])
        if taken >= sample_rows:
            break
    t0 = time.monotonic()
    projection = Projection.fit(np.concatenate(sample), dim)
    return projection, time.monotonic() - t0


def exact_top_k(queries: np.ndarray, chunks: Iterator[tuple[int, np.ndarray]], k: int = K) -> np.ndarray:
    """Row ids of the exact top-k by inner product (cosine on unit rows), best first; chunked over the rows."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start, vectors in chunks:
        scores = queries @ vectors.T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        best_ids = np.concatenate([best_ids, part + start], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
    return best_ids


def cached_exact(cache_dir: Path, key: list, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The exact top-K of one recipe (vectors, queries, space), computed once and kept under cache_dir."""
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]
    path = cache_dir / f"exact-{key[0]}-{digest}.npy"
    if path.exists():
        log(f"ground truth ({key[0]}): cached {path.name}")
        return np.load(path)
    exact = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, exact)
    return exact


def recall_at_k(found: list[list[int]], exact: np.ndarray, k: int = K) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k."""
    hits = [len(set(ids[:k]) & set(truth[:k].tolist())) for ids, truth in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / k


def same_source_at_k(found: list[list[int]], query_sources: np.ndarray, row_sources: np.ndarray, k: int = K) -> float:
    """Mean fraction of the top-k that are copies of (or are) the catalog item the query was made from."""
    fractions = [
        float(np.mean(row_sources[np.asarray(ids[:k], dtype=np.int64)] == src)) if ids else 0.0
        for ids, src in zip(found, query_sources, strict=True)
    ]
    return float(np.mean(fractions))


# -- the Milvus server -------------------------------------------------------------------------------------
def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class MilvusProcess:
    """A Milvus standalone server (scripts.milvus_standalone) on fixed loopback ports, restartable on its data."""

    def __init__(self, base_dir: Path, port_base: int, metrics_port: int, etcd_port: int):
        self.base_dir, self.port_base, self.metrics_port, self.etcd_port = base_dir, port_base, metrics_port, etcd_port
        self.server: StandaloneServer | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port_base}"

    @property
    def pid(self) -> int | None:
        return self.server.pid if self.server is not None else None

    def index_files_bytes(self) -> int:
        return dir_bytes(self.base_dir / "data" / "index_files")

    def start(self) -> float:
        from scripts.milvus_standalone import MilvusStartError, start

        t0 = time.monotonic()
        try:
            self.server = start(
                self.base_dir,
                self.port_base,  # gRPC; the components' own ports follow it: port_base+1 .. port_base+7
                internal_ports=self.port_base + 1,
                metrics_port=self.metrics_port,
                etcd_port=self.etcd_port,
                etcd_peer_port=self.etcd_port + 1,
            )
        except MilvusStartError as exc:
            raise BenchError(f"Milvus did not start: {exc}") from exc
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def restart(self) -> float:
        self.stop()
        return self.start()

    def wipe(self) -> None:
        if self.server is not None:
            raise BenchError("wipe() while Milvus runs")
        shutil.rmtree(self.base_dir, ignore_errors=True)


# -- one collection ----------------------------------------------------------------------------------------
def connect(uri: str, alias: str | None = None):
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, timeout=60, **({"alias": alias} if alias else {}))


def restart_server(server: MilvusProcess, uri: str):
    """Close every client (their connections end on our side, not as the server's TIME_WAIT), restart, reconnect."""
    from pymilvus import connections

    for alias, _ in connections.list_connections():
        connections.disconnect(alias)
    server.restart()
    return connect(uri)


def create_collection(client, name: str, dim: int) -> None:
    """The product's schema (webapp.search.vector_store), no index yet."""
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("image_id", DataType.INT64, is_primary=True)
    schema.add_field("product_id", DataType.INT64)
    schema.add_field("category_id", DataType.INT64)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("in_stock", DataType.BOOL)
    schema.add_field("model_version", DataType.VARCHAR, max_length=120)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(name, schema=schema)


def insert_rows(
    client, name: str, chunks: Iterator[tuple[int, np.ndarray]], total: int, model_version: str, categories: np.ndarray
) -> dict:
    """Insert every chunk in batches of INSERT_ROWS, flush, compact; timings and the segment layout."""
    t0, done, next_log = time.monotonic(), 0, 0.0
    for start, vectors in chunks:
        for offset in range(0, len(vectors), INSERT_ROWS):
            block = vectors[offset : offset + INSERT_ROWS]
            first = start + offset
            rows = [
                {
                    "image_id": first + j,
                    "product_id": first + j,
                    "category_id": int(categories[first + j]),
                    "price": 10.0,
                    "in_stock": True,
                    "model_version": model_version,
                    "vector": vector,
                }
                for j, vector in enumerate(block)
            ]
            client.insert(name, rows)
            done += len(block)
        if time.monotonic() > next_log:
            log(f"  inserted {done:,}/{total:,} ({done / (time.monotonic() - t0):,.0f} rows/s)")
            next_log = time.monotonic() + 30
    insert_s = time.monotonic() - t0
    t1 = time.monotonic()
    client.flush(name)
    flush_s = time.monotonic() - t1
    t2 = time.monotonic()
    job = client.compact(name)
    while client.get_compaction_state(job) != "Completed":
        time.sleep(1)
    compact_s = time.monotonic() - t2
    log(f"  {done:,} rows: insert {insert_s:.0f}s, flush {flush_s:.1f}s, compaction {compact_s:.0f}s")
    return {
        "rows": done,
        "insert_s": insert_s,
        "rows_per_s": done / insert_s,
        "flush_s": flush_s,
        "compact_s": compact_s,
    }


def loaded_segments(client, name: str) -> list[int]:
    from pymilvus import utility

    return sorted(int(s.num_rows) for s in utility.get_query_segment_info(name, using=client._using))


def build_index(client, name: str, spec: IndexSpec, pid: int | None) -> dict:
    """create_index and wait until every row is indexed, sampling the server's RSS for its peak."""
    drop_index(client, name)  # what an earlier, failed configuration left behind
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type=spec.index_type, metric_type="COSINE", params=dict(spec.build))
    t0 = time.monotonic()
    client.create_index(name, index_params, sync=False)
    peak = rss_bytes(pid) if pid else None
    while True:
        info = client.describe_index(name, "vector")
        if pid:
            peak = max(peak or 0, rss_bytes(pid) or 0)
        state = str(info.get("state", ""))
        if "Failed" in state:
            raise BenchError(f"index build failed: {info}")
        if "Finished" in state and int(info.get("pending_index_rows", 0)) == 0:
            break
        time.sleep(0.5)
    return {"build_s": time.monotonic() - t0, "build_peak_rss": peak, "indexed_rows": int(info.get("indexed_rows", 0))}


def load_collection(client, name: str, attempts: int = 4) -> tuple[float, int]:
    """Load and wait; seconds of the successful attempt and how many were needed (a freshly restarted server
    can refuse the first one while it still sees its predecessor's nodes)."""
    from pymilvus import MilvusException

    for attempt in range(1, attempts + 1):
        t0 = time.monotonic()
        try:
            client.load_collection(name)
            return time.monotonic() - t0, attempt
        except MilvusException as exc:
            if attempt == attempts:
                raise
            log(f"  load failed ({exc.message[:80]}); retrying in {LOAD_RETRY_S} s")
            time.sleep(LOAD_RETRY_S)
    raise AssertionError("unreachable")


def drop_index(client, name: str) -> None:
    client.release_collection(name)
    for index_name in client.list_indexes(name):
        client.drop_index(name, index_name)


# -- searching ---------------------------------------------------------------------------------------------
def search_params(spec: IndexSpec, value: int) -> dict:
    params = dict(spec.fixed_search)
    if spec.search_param:
        params[spec.search_param] = value
    return {"metric_type": "COSINE", "params": params}


def _search_one(client, name: str, vector: np.ndarray, params: dict) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    result = client.search(name, data=[vector.tolist()], limit=K, output_fields=["product_id"], search_params=params)
    return time.perf_counter() - t0, [int(hit["id"]) for hit in result[0]]


def measure_c1(client, name: str, queries: np.ndarray, params: dict, warmup: int = 20) -> tuple[dict, list[list[int]]]:
    for vector in queries[:warmup]:
        _search_one(client, name, vector, params)
    latencies, found = [], []
    for vector in queries:
        seconds, ids = _search_one(client, name, vector, params)
        latencies.append(seconds)
        found.append(ids)
    return latency_stats(latencies) | {"requests": len(latencies), "qps": len(latencies) / sum(latencies)}, found


def measure_concurrent(clients: list, name: str, queries: np.ndarray, params: dict, requests: int) -> dict:
    """`requests` searches spread over one thread per client; per-request latency and overall throughput."""
    per_thread = max(1, requests // len(clients))
    latencies: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(clients) + 1)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for j in range(per_thread):
                vector = queries[(i * per_thread + j) % len(queries)]
                latencies[i].append(_search_one(clients[i], name, vector, params)[0])
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.monotonic()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - t0
    if errors:
        raise BenchError(f"concurrent search failed: {errors[0]!r}")
    flat = [x for lat in latencies for x in lat]
    return latency_stats(flat) | {"requests": len(flat), "qps": len(flat) / wall, "threads": len(clients)}


# -- the study ---------------------------------------------------------------------------------------------
@dataclass
class Space:
    """One vector space of the study: its collection's rows, the queries in it, and the exact answers."""

    name: str
    dim: int
    transform: Callable[[np.ndarray], np.ndarray]
    queries: np.ndarray
    exact_full: np.ndarray  # exact top-K in the model's own space (what recall is measured against)
    exact_own: np.ndarray  # exact top-K in this space (equal to exact_full for the full space)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def study_space(
    args, server: MilvusProcess | None, uri: str, space: Space, specs: list[IndexSpec], source: VectorSource, ctx: dict
) -> list[dict]:
    """Insert the space's rows once, then build, load, measure and drop each index configuration."""
    client = connect(uri)
    log(f"[{space.name}] collection of {source.rows:,} x {space.dim}-d: inserting ...")
    create_collection(client, COLLECTION, space.dim)
    insert = insert_rows(
        client,
        COLLECTION,
        ((start, space.transform(vectors)) for start, vectors, _ in source.chunks()),
        source.rows,
        ctx["model_version"],
        ctx["categories"],
    )
    ctx["inserts"][space.name] = insert
    results = []
    for spec in specs:
        try:
            results.append(measure_index(args, server, uri, space, spec, ctx))
        except Exception as exc:  # noqa: BLE001 - one failed configuration must not lose the others
            log(f"[{spec.key}] FAILED: {exc!r}")
            results.append({"key": spec.key, "label": spec.label(), "error": repr(exc)})
            client = connect(uri)
            with contextlib.suppress(Exception):
                drop_index(client, COLLECTION)
        # One line per finished configuration: a long run stopped part-way keeps what it measured.
        Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
        with (Path(args.cache_dir) / "index_study.partial.jsonl").open("a") as partial:
            partial.write(json.dumps(results[-1], default=_jsonable) + "\n")
    client = connect(uri)
    client.drop_collection(COLLECTION)
    return results


def measure_index(args, server: MilvusProcess | None, uri: str, space: Space, spec: IndexSpec, ctx: dict) -> dict:
    label = spec.label().format(pca=space.dim) + ("" if ctx["rows"] == args.rows_main else f" at {ctx['rows']:,} rows")
    log(f"[{spec.key}] building {label} (load average {loadavg()}) ...")
    load_start = loadavg()
    restarts = server is not None and args.restart
    client = restart_server(server, uri) if server is not None and restarts else connect(uri)
    files_before = server.index_files_bytes() if server else 0
    build = build_index(client, COLLECTION, spec, server.pid if server else None)
    build["index_files_bytes"] = (server.index_files_bytes() - files_before) if server else None
    log(f"[{spec.key}] built in {build['build_s']:.0f}s")
    rss_before = None
    if server is not None:
        if restarts:
            client = restart_server(server, uri)
            # the restarted server's embedded etcd keeps its predecessor's node sessions until their lease ends
            # (30 s after the restart); a load before that fails after a long wait
            time.sleep(STALE_SESSION_S)
        time.sleep(3)
        rss_before = rss_bytes(server.pid) if server.pid else None
    load_s, load_attempts = load_collection(client, COLLECTION)
    time.sleep(3)
    rss_after = rss_bytes(server.pid) if server and server.pid else None
    segments = loaded_segments(client, COLLECTION)
    memory = {
        "rss_before_load": rss_before,
        "rss_after_load": rss_after,
        "rss_delta": (rss_after - rss_before) if rss_before and rss_after else None,
        "fresh_process": bool(restarts),
        "raw_vector_bytes": source_bytes(ctx["rows"], space.dim),
    }
    log(
        f"[{spec.key}] loaded in {load_s:.0f}s, {len(segments)} segments, "
        f"RSS +{_gib(memory['rss_delta'])} GiB (raw vectors {_gib(memory['raw_vector_bytes'])} GiB)"
    )
    clients = [connect(uri, alias=f"index-study-c8-{i}") for i in range(args.concurrency)]
    queries = space.queries
    sweep = []
    for value in spec.sweep:
        params = search_params(spec, value)
        n_c1 = len(queries) if spec.search_param else min(len(queries), args.flat_queries)
        c1, found = measure_c1(client, COLLECTION, queries[:n_c1], params)
        exact = space.exact_full[:n_c1]
        c8 = measure_concurrent(clients, COLLECTION, queries, params, args.c8_requests if spec.search_param else n_c1)
        point = {
            "search_params": params["params"],
            "recall_at_10": recall_at_k(found, exact),
            "recall_at_10_own_space": recall_at_k(found, space.exact_own[:n_c1]),
            "same_source_at_10": same_source_at_k(found, ctx["query_sources"][:n_c1], ctx["row_sources"]),
            "queries": n_c1,
            "c1": c1,
            "c8": c8,
        }
        sweep.append(point)
        log(
            f"[{spec.key}] {params['params'] or 'exact'}: recall@10 {point['recall_at_10']:.3f}, "
            f"c1 p50 {c1['p50']:.2f} p99 {c1['p99']:.2f} ms, c8 p50 {c8['p50']:.2f} p99 {c8['p99']:.2f} ms "
            f"({c8['qps']:.0f} qps)"
        )
    for extra in clients:
        extra.close()
    drop_index(client, COLLECTION)
    return {
        "key": spec.key,
        "rows": ctx["rows"],
        "label": label,
        "index_type": spec.index_type,
        "space": space.name,
        "dim": space.dim,
        "build_params": spec.build,
        "search_param": spec.search_param,
        "build": build,
        "load_s": load_s,
        "load_attempts": load_attempts,
        "segments": segments,
        "memory": memory,
        "sweep": sweep,
        "load_average": {"start": load_start, "end": loadavg()},
    }


def source_bytes(rows: int, dim: int) -> int:
    return rows * dim * 4


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.2f}"


def _loaded_bytes(result: dict) -> float:
    return (result.get("memory") or {}).get("rss_delta") or float("inf")


def choose_winner(results: list[dict], target_recall: float = TARGET_RECALL) -> dict | None:
    """The (configuration, search parameter) the product should use: among the points with recall@10 >= target,
    those whose concurrency-1 p50 is within LATENCY_TIE of the fastest are level (a search's p50 here is mostly
    the gRPC round trip, and its run-to-run noise is about that large); of those the index that takes the least
    memory once loaded wins (memory is what bounds the catalog one query node serves), then the faster point."""
    candidates = [
        (point["c1"]["p50"], result, point)
        for result in results
        if "sweep" in result and result["index_type"] != "FLAT"
        for point in result["sweep"]
        if point["recall_at_10"] >= target_recall
    ]
    if not candidates:
        return None
    fastest = min(p50 for p50, _, _ in candidates)
    level = [c for c in candidates if c[0] <= fastest * (1 + LATENCY_TIE)]
    p50, result, point = min(level, key=lambda c: (_loaded_bytes(c[1]), c[0]))
    return {
        "key": result["key"],
        "label": result["label"],
        "index_type": result["index_type"],
        "space": result["space"],
        "build_params": result["build_params"],
        "search_params": point["search_params"],
        "recall_at_10": point["recall_at_10"],
        "c1_p50_ms": p50,
        "c1_p99_ms": point["c1"]["p99"],
        "c8_p50_ms": point["c8"]["p50"],
        "c8_p99_ms": point["c8"]["p99"],
        "c8_qps": point["c8"]["qps"],
        "meets_p50_target": p50 <= TARGET_P50_MS,
    }


def run_study(args) -> dict:
    from ml.machine import describe_machine

    t_start, load_start = time.monotonic(), loadavg()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    specs_table = specs_by_key(args.gpu)
    unknown = [key for key in args.indexes if key not in specs_table]
    if unknown:
        raise BenchError(f"unknown --indexes {unknown}; choose from {sorted(specs_table)}")
    specs = [with_overrides(specs_table[key], args) for key in args.indexes]

    throughput = None
    if args.gpu or args.embed_throughput:
        throughput = embedding_throughput(
            args.artifact, "cuda" if args.gpu else "cpu", args.throughput_images, tuple(args.throughput_batches)
        )
    base, catalog = load_catalog_embeddings(args.items, args.artifact, args.device, args.cache_dir)
    source = VectorSource(base, args.rows, args.noise)
    queries, query_sources = source.queries(args.queries)
    row_sources = source.sources()
    ctx: dict = {
        "model_version": catalog["model_version"],
        "rows": args.rows,
        "categories": np.zeros(args.rows, dtype=np.int64),
        "query_sources": query_sources,
        "row_sources": row_sources,
        "inserts": {},
    }
    log(f"ground truth: exact top-{K} of {len(queries):,} queries over {args.rows:,} rows ...")
    recipe_key = [catalog["model_version"], args.items, args.rows, args.noise, source.seed, args.queries, CHUNK_ROWS]
    t0 = time.monotonic()
    exact_full = cached_exact(
        args.cache_dir, ["full", *recipe_key], lambda: exact_top_k(queries, ((s, v) for s, v, _ in source.chunks()))
    )
    exact_s = time.monotonic() - t0
    spaces = [Space("full", source.dim, lambda v: v, queries, exact_full, exact_full)]
    pca_info = None
    if any(spec.space == "pca" for spec in specs):
        projection, fit_s = fit_projection(source, args.pca_dim, args.pca_sample)
        q_pca = projection(queries)
        exact_pca = cached_exact(
            args.cache_dir,
            ["pca", args.pca_dim, args.pca_sample, *recipe_key],
            lambda: exact_top_k(q_pca, ((s, projection(v)) for s, v, _ in source.chunks())),
        )
        spaces.append(Space("pca", projection.dim, projection, q_pca, exact_full, exact_pca))
        pca_info = {
            "dim": projection.dim,
            "fitted_on_rows": min(args.pca_sample, args.rows),
            "fit_s": fit_s,
            "exact_pca_recall_at_10_vs_full": recall_at_k([row.tolist() for row in exact_pca], exact_full),
        }
        found = pca_info["exact_pca_recall_at_10_vs_full"]
        log(f"PCA-{projection.dim}: exact search in the reduced space finds {found:.3f} of the full top-10")

    server = None
    uri = args.uri
    if uri is None:
        server = MilvusProcess(args.cache_dir / "milvus", args.port_base, args.metrics_port, args.etcd_port)
        server.wipe()
        server.start()
        uri = server.uri
        log(f"{_milvus_version()} started at {uri} (pid {server.pid})")
    results: list[dict] = []
    try:
        for space in spaces:
            space_specs = [spec for spec in specs if spec.space == space.name]
            if space_specs:
                results += study_space(args, server, uri, space, space_specs, source, ctx)
    finally:
        if server is not None:
            server.stop()
            if not args.keep:
                server.wipe()
    winner = choose_winner(results)
    from pymilvus import __version__ as pymilvus_version

    return {
        "started_at": started_at,
        "wall_s": time.monotonic() - t_start,
        "machine": describe_machine() | {"load_average_start": load_start, "load_average_end": loadavg()},
        "milvus": {
            "server": _milvus_version() if server is not None else f"external at {uri}",
            "pymilvus": pymilvus_version,
            "metric": "COSINE",
            "notes": "default segment settings (maxSize 512 MB), compacted after insert; default consistency (Bounded)",
        },
        "vectors": {
            "model_version": catalog["model_version"],
            "dim": source.dim,
            "real_items": len(base),
            "rows": args.rows,
            "perturbed_rows": args.rows - len(base),
            "noise_norm": args.noise,
            "mean_cos_rows_to_source": _mean_cos_sample(source),
            "queries": len(queries),
            "mean_cos_queries_to_source": source.mean_cos_to_source(queries, query_sources),
            "recipe": (
                f"{len(base):,} real embeddings (by the shipped model) of the first demo-catalog images "
                f"(Fashion-MNIST, test split first), plus {args.rows - len(base):,} copies of random real "
                f"embeddings with Gaussian noise of norm {args.noise} re-normalised "
                "(as benchmarks/catalog_scale.py); queries are further such copies, not in the collection"
            ),
            "catalog_embedding": catalog,
            "exact_ground_truth_s": exact_s,
            "exact_same_source_at_10": same_source_at_k(
                [row.tolist() for row in exact_full], query_sources, row_sources
            ),
        },
        "pca": pca_info,
        "inserts": ctx["inserts"],
        "params": {
            "k": K,
            "target_recall": TARGET_RECALL,
            "target_p50_ms": TARGET_P50_MS,
            "concurrency": args.concurrency,
            "c8_requests": args.c8_requests,
        },
        "embedding_throughput": throughput,
        "results": results,
        "winner": winner,
        "command": "python -m benchmarks.index_study " + " ".join(args.argv),
    }


def _mean_cos_sample(source: VectorSource) -> float:
    for start, vectors, picks in source.chunks():
        if start >= len(source.base):
            return source.mean_cos_to_source(vectors, picks)
    return 1.0


def _milvus_version() -> str:
    try:
        import milvus

        return f"Milvus {milvus.__version__} standalone (the pip package's binary, scripts/milvus_standalone.py)"
    except ImportError:
        return "unknown"


# -- the report --------------------------------------------------------------------------------------------
def _ms(value: float) -> str:
    return f"{value:.2f}"


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def report_lines(study: dict) -> list[str]:
    vec, machine = study["vectors"], study["machine"]
    lines = [
        "# Index study: HNSW, IVF and compression at scale",
        "",
        *([f"**{study['status']}**", ""] if study.get("status") else []),
        f"Generated by `{study['command']}` on {study['started_at']} ({study['wall_s'] / 60:.0f} min). "
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, GPU {machine['gpu']}; "
        f"load average {machine['load_average_start']} at start, {machine['load_average_end']} at end "
        "(shared machine: other jobs ran beside it).",
        f"Server: {study['milvus']['server']}, pymilvus {study['milvus']['pymilvus']}, metric COSINE, "
        f"{study['milvus']['notes']}.",
        "",
        f"**Vectors** ({vec['rows']:,} x {vec['dim']}-d, model `{vec['model_version']}`): {vec['recipe']}. "
        f"Mean cosine of a perturbed row to its source: {vec['mean_cos_rows_to_source']:.3f}; "
        f"{vec['queries']:,} queries (mean cosine to source {vec['mean_cos_queries_to_source']:.3f}). "
        f"Ground truth: exact top-{study['params']['k']} by numpy matrix product over all rows.",
        "",
        "Every real item has about "
        f"{vec['rows'] // max(vec['real_items'], 1)} near-identical copies, so a query's exact top-10 is 10 of "
        "those copies, separated only by the noise we added: recall@10 here asks an index to order near-ties "
        "exactly, which is harder than telling products apart. `same-source@10` (the share of the top-10 that are "
        f"copies of the query's catalog item; {vec['exact_same_source_at_10']:.3f} for exact search) shows what a "
        "shopper would see.",
        "",
    ]
    small = study.get("small_study")
    if small:
        keys = sorted({r["key"] for r in study["results"] if r.get("rows") == small["vectors"]["rows"]})
        lines += [
            f"Measured at {small['vectors']['rows']:,} rows instead ({', '.join(keys)}): building them at "
            f"{vec['rows']:,} rows does not fit the run's time budget on this machine (see their build times). Those "
            f"rows hold {small['vectors']['real_items']:,} real embeddings, the same number of copies per item as the "
            f"full collection; load average {small['machine']['load_average_start']} at their start.",
            "",
        ]
    inserts = study["inserts"]
    if inserts:
        lines += [
            "| Space | Rows | Insert (s) | Rows/s | Flush (s) | Compaction (s) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, ins in inserts.items():
            lines.append(
                f"| {name} | {ins['rows']:,} | {ins['insert_s']:.0f} | {ins['rows_per_s']:,.0f} | {ins['flush_s']:.1f} "
                f"| {ins['compact_s']:.0f} |"
            )
        lines.append("")
    lines += [
        "## Build and memory",
        "",
        "RSS: the Milvus process after loading the collection minus after a restart with it released "
        "(vectors, index and scalar fields of the loaded segments). Index files: bytes the build wrote.",
        "",
        "| Index | Build (s) | Load (s) | Segments | RSS after load (MiB) | RSS delta (MiB) | Raw vectors (MiB) "
        "| Peak RSS in build (MiB) | Index files (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in study["results"]:
        if "error" in result:
            lines.append(f"| {result['label']} | failed: {result['error'][:80]} | | | | | | | |")
            continue
        mem, build = result["memory"], result["build"]
        lines.append(
            f"| {result['label']} | {build['build_s']:.0f} | {result['load_s']:.0f} | {len(result['segments'])} "
            f"| {_mb(mem['rss_after_load'])} | {_mb(mem['rss_delta'])} | {_mb(mem['raw_vector_bytes'])} "
            f"| {_mb(build['build_peak_rss'])} | {_mb(build['index_files_bytes'])} |"
        )
    lines.append("")
    for result in study["results"]:
        if "error" in result:
            continue
        lines += [
            f"## {result['label']}",
            "",
            f"Load average {result['load_average']['start']} -> {result['load_average']['end']}.",
            "",
            "| Search params | Recall@10 | Same-source@10 | c1 p50 (ms) | c1 p99 (ms) | c8 p50 (ms) | c8 p99 (ms) "
            "| c8 QPS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for point in result["sweep"]:
            params = ", ".join(f"{k}={v}" for k, v in point["search_params"].items()) or "exact"
            recall = f"{point['recall_at_10']:.3f}"
            if result["space"] == "pca":
                recall += f" ({point['recall_at_10_own_space']:.3f} in PCA space)"
            lines.append(
                f"| {params} | {recall} | {point['same_source_at_10']:.3f} | {_ms(point['c1']['p50'])} "
                f"| {_ms(point['c1']['p99'])} | {_ms(point['c8']['p50'])} | {_ms(point['c8']['p99'])} "
                f"| {point['c8']['qps']:,.0f} |"
            )
        lines.append("")
    lines += _summary_lines(study)
    return lines


def _summary_lines(study: dict) -> list[str]:
    lines = [
        "## Recall against latency",
        "",
        f"Per index, the fastest search setting reaching recall@10 >= {TARGET_RECALL} (concurrency 1), and the "
        "highest recall measured.",
        "",
        "| Index | Fastest at recall >= 0.95 | Recall@10 | c1 p50 (ms) | c8 p50 (ms) | Best recall@10 (its c1 p50) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for result in study["results"]:
        if "error" in result:
            continue
        fast = fastest_at_target(result["sweep"], TARGET_RECALL)
        best = max(result["sweep"], key=lambda p: p["recall_at_10"])
        best_text = f"{best['recall_at_10']:.3f} ({_ms(best['c1']['p50'])} ms)"
        if fast is not None:
            params = ", ".join(f"{k}={v}" for k, v in fast["search_params"].items()) or "exact"
            lines.append(
                f"| {result['label']} | {params} | {fast['recall_at_10']:.3f} | {_ms(fast['c1']['p50'])} "
                f"| {_ms(fast['c8']['p50'])} | {best_text} |"
            )
        else:
            lines.append(f"| {result['label']} | never | | | | {best_text} |")
    lines.append("")
    winner = study["winner"]
    if winner is None:
        lines += [f"**No configuration reached recall@10 >= {TARGET_RECALL}.**", ""]
    else:
        params = ", ".join(f"{k}={v}" for k, v in winner["search_params"].items())
        met = "meets" if winner["meets_p50_target"] else "misses"
        lines += [
            f"**Winner: {winner['label']}, search {params}**: recall@10 {winner['recall_at_10']:.3f}, "
            f"p50 {_ms(winner['c1_p50_ms'])} ms / p99 {_ms(winner['c1_p99_ms'])} ms at concurrency 1, "
            f"p50 {_ms(winner['c8_p50_ms'])} ms / p99 {_ms(winner['c8_p99_ms'])} ms at concurrency 8 "
            f"({winner['c8_qps']:,.0f} QPS); it {met} the target p50 <= {TARGET_P50_MS:g} ms at recall@10 >= "
            f"{TARGET_RECALL} on this machine at {study['vectors']['rows']:,} vectors. Chosen as choose_winner does: "
            f"of the settings reaching the recall, those within {LATENCY_TIE:.0%} of the fastest p50 are level (the "
            "p50 here is mostly the gRPC round trip), and of those the index taking the least memory once loaded "
            "wins.",
            "",
        ]
    if study.get("analysis"):
        lines += ["## What the numbers say (written after the run)", ""]
        lines += [f"- {item}" for item in study["analysis"]] + [""]
    pca = study.get("pca")
    if pca:
        lines += [
            f"PCA-{pca['dim']} was fitted on {pca['fitted_on_rows']:,} rows of the collection; exact search in the "
            f"reduced space returns {pca['exact_pca_recall_at_10_vs_full']:.3f} of the exact 512-d top-10. The "
            "dimension study in docs/evaluation.md finds PCA-256 lossless for retrieving the right product; here the "
            "discarded dimensions hold part of the synthetic noise that orders near-identical copies, so recall "
            "against the 512-d ranking drops even though same-source@10 does not.",
            "",
        ]
    if not any(result.get("index_type", "").startswith("GPU_") for result in study["results"]):
        lines += gpu_path_lines()
    throughput = study.get("embedding_throughput")
    if throughput:
        lines += [f"## Embedding throughput ({throughput['device']})", "", "| Batch | Images | img/s |"]
        lines.append("| ---: | ---: | ---: |")
        lines += [f"| {r['batch_size']} | {r['images']:,} | {r['images_per_s']:,.0f} |" for r in throughput["rows"]]
        lines.append("")
    return lines


def gpu_path_lines() -> list[str]:
    """How the GPU configurations are measured when a GPU machine is available (not measured in this run)."""
    lines = [
        "## GPU path (configured, not measured in this run)",
        "",
        "The same script measures the GPU indexes on a GPU build of Milvus (`milvusdb/milvus:v2.5.x-gpu`, see "
        "docker/README.md) with the same vectors, queries and ground truth, and the embedder's throughput on CUDA:",
        "",
        "```",
        "python -m benchmarks.index_study --gpu --uri http://127.0.0.1:19530 --out docs/gpu",
        "```",
        "",
        "| Index | Build params | Search sweep |",
        "| --- | --- | --- |",
    ]
    for spec in GPU_SPECS:
        build = ", ".join(f"{k}={v}" for k, v in spec.build.items())
        fixed = ", ".join(f"{k}={v}" for k, v in spec.fixed_search.items())
        sweep = f"{spec.search_param} in {list(spec.sweep)}" + (f" ({fixed})" if fixed else "")
        lines.append(f"| {spec.index_type} | {build} | {sweep} |")
    lines += [
        "",
        "With `--uri` the server is not restarted and its memory is not read (it may run elsewhere); GPU memory is "
        "visible with `nvidia-smi` on the server. Embedding throughput is measured for batch sizes 32, 128 and 512 "
        "after a warm-up batch (`--throughput-batches`).",
        "",
    ]
    return lines


def write_outputs(study: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "index_study.json", out / "index_study.md"
    json_path.write_text(json.dumps(study, indent=2, default=_jsonable) + "\n")
    md_path.write_text("\n".join(report_lines(study)) + "\n")
    if out.resolve() == DOCS.resolve():
        at_scale.refresh()
    return json_path, md_path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="vectors in the collection")
    parser.add_argument("--items", type=int, default=70_000, help="real catalog images embedded (70k: all)")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--noise", type=float, default=0.3, help="norm of the Gaussian noise of a perturbed copy")
    parser.add_argument("--indexes", nargs="+", default=None, help="index keys (default: all CPU or all GPU ones)")
    parser.add_argument(
        "--small-indexes", nargs="*", default=None, help="index keys measured at --small-rows instead (slow builds)"
    )
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--c8-requests", type=int, default=2_000, help="searches per concurrent measurement")
    parser.add_argument("--flat-queries", type=int, default=100, help="queries for FLAT (exact, slow)")
    parser.add_argument("--nlist", type=int, default=None, help="nlist of every IVF index (default 256)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=None, help="nprobe sweep of the IVF indexes")
    parser.add_argument("--hnsw-m", type=int, default=None, help="HNSW M (default 16)")
    parser.add_argument("--hnsw-ef-construction", type=int, default=None, help="HNSW efConstruction (default 64)")
    parser.add_argument("--efs", type=int, nargs="+", default=None, help="HNSW ef sweep")
    parser.add_argument("--pca-dim", type=int, default=256)
    parser.add_argument("--pca-sample", type=int, default=50_000, help="rows the PCA is fitted on")
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--device", default="cpu", help="device that embeds the catalog")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--uri", default=None, help="use this Milvus server instead of starting one")
    parser.add_argument("--port-base", type=int, default=19800, help="proxy port; 9 consecutive ports are used")
    parser.add_argument("--metrics-port", type=int, default=9800)
    parser.add_argument("--etcd-port", type=int, default=2800)
    parser.add_argument("--gpu", action="store_true", help="GPU_CAGRA/GPU_IVF_PQ on --uri and CUDA embedding")
    parser.add_argument("--embed-throughput", action="store_true", help="measure embedding throughput (CPU)")
    parser.add_argument("--throughput-images", type=int, default=2_048)
    parser.add_argument("--throughput-batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument(
        "--no-restart",
        dest="restart",
        action="store_false",
        help="do not restart the server before each build and load (faster; memory then not from a fresh process)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the server's data directory")
    parser.add_argument("--out", type=Path, default=DOCS, help="where index_study.json and .md go")
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the .md beside this study .json")
    args = parser.parse_args(argv)
    args.rows_main = args.rows
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.indexes is None:
        args.indexes = [spec.key for spec in GPU_SPECS] if args.gpu else list(DEFAULT_CPU)
        if args.small_indexes is None and not args.gpu:
            args.small_indexes = list(DEFAULT_CPU_SMALL)
    args.small_indexes = args.small_indexes or []
    if args.gpu and args.uri is None:
        raise SystemExit("--gpu needs --uri of a GPU build of Milvus (the pip package is CPU-only)")
    return args


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        study = json.loads(args.render.read_text())
        md_path = args.render.with_suffix(".md")
        md_path.write_text("\n".join(report_lines(study)) + "\n")
        log(f"wrote {md_path}")
        return study
    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds: the server we started stops
        signal.signal(signal.SIGTERM, _exit_on_signal)
    study = run_study(args)
    if args.small_indexes:
        # configurations too slow to build at --rows within the time budget: the same study at --small-rows
        items = max(1, round(args.items * args.small_rows / args.rows))  # as many copies per real item as at --rows
        small_args = {**vars(args), "rows": args.small_rows, "items": items, "indexes": args.small_indexes}
        small = run_study(argparse.Namespace(**small_args))
        study["results"] += small["results"]
        study["small_study"] = {key: small[key] for key in ("vectors", "inserts", "pca", "wall_s", "machine")}
        study["winner"] = choose_winner(study["results"])
        study["wall_s"] += small["wall_s"]
        study["machine"]["load_average_end"] = small["machine"]["load_average_end"]
    json_path, md_path = write_outputs(study, args.out)
    log(f"wrote {json_path} and {md_path} in {study['wall_s'] / 60:.1f} min")
    return study


if __name__ == "__main__":
    main()

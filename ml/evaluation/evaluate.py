"""Street-to-shop evaluation: exact-item Recall@K of street crops against the shop gallery, per embedding method.

    python -m ml.evaluation.evaluate --size small|full [--visnet DIR] [--visnet-deep-only DIR]

Rows: raw pixels, colour histogram, ImageNet backbone features (the product's current stand-in, Embedder),
VisNet without its shallow branches, VisNet. Queries are the test split's street items cropped at their
ground-truth box (+10% context, square); the gallery is the test split's shop images (full size: all 10,000
Fashion-MNIST test items, same-category distractors included; --gallery all: all 70,000). Category-level
Precision@10 and mAP@R are leave-one-out over the test shop images. A dimension study reduces the best embedding
with PCA (fitted on train-split vectors) and compresses it (8-bit scalar quantisation, product quantisation).
Features are cached under <benchmark root>/features/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml.artifacts import ArtifactInvalid, read_artifact
from ml.data.street2shop import build_benchmark
from ml.evaluation.metrics import category_metrics, exact_item_ranks, l2_normalise, recall_from_ranks
from ml.feature_cache import EmbeddingCache
from ml.machine import describe_machine

REPO = Path(__file__).resolve().parents[2]
KS = (1, 5, 20)
CURVE_KS = tuple(range(1, 51))
METHODS = ("pixels", "colour-histogram", "imagenet", "visnet-deep-only", "visnet")
TITLES = {
    "pixels": "Raw pixels (grey 28x28)",
    "colour-histogram": "Colour histogram (HSV 16x4x4)",
    "imagenet": "ImageNet backbone (Embedder)",
    "visnet-deep-only": "VisNet, deep branch only",
    "visnet": "VisNet",
}


# -- embedding methods --------------------------------------------------------------------------------------


class FunctionEmbedder:
    """A hand-made feature as an embedder: .embed(list[PIL]) -> float32 [N, dim] unit vectors."""

    def __init__(self, fn, dim: int, model_version: str):
        self.fn, self.dim, self.model_version = fn, dim, model_version

    def embed(self, images) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.stack([self.fn(image) for image in images]))


def pixel_vector(image: Image.Image) -> np.ndarray:
    """Grey 28x28, mean-centred (so cosine similarity is Pearson correlation)."""
    grey = np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    return grey - grey.mean()


HIST_BINS = (16, 4, 4)


def colour_histogram_vector(image: Image.Image) -> np.ndarray:
    """Joint HSV histogram (16 hue x 4 saturation x 4 value), square-rooted (Hellinger) before L2."""
    hsv = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR).convert("HSV"))
    bins = [(hsv[..., c].astype(np.int32) * n) // 256 for c, n in enumerate(HIST_BINS)]
    flat = (bins[0] * HIST_BINS[1] + bins[1]) * HIST_BINS[2] + bins[2]
    hist = np.bincount(flat.ravel(), minlength=int(np.prod(HIST_BINS))).astype(np.float32)
    return np.sqrt(hist / hist.sum())


def make_embedder(method: str, args) -> tuple[object | None, str]:
    """(embedder, note); embedder None means the row is not available ("not trained" and why)."""
    if method == "pixels":
        return FunctionEmbedder(pixel_vector, 784, "pixels-28-centred"), ""
    if method == "colour-histogram":
        return FunctionEmbedder(colour_histogram_vector, int(np.prod(HIST_BINS)), "hsv-hist-16x4x4-sqrt"), ""
    if method == "imagenet":
        from ml.inference.embedder import Embedder

        return Embedder(args.backbone, device=args.device, image_size=args.image_size, batch_size=args.batch_size), ""
    artifact_dir = args.visnet if method == "visnet" else args.visnet_deep_only
    if not artifact_dir:
        return None, f"not trained (no --{method} DIR given)"
    if not Path(artifact_dir).exists():
        return None, f"not trained ({artifact_dir} missing)"
    try:
        from ml.inference.visnet import load_visnet_embedder
    except ImportError as error:
        return None, f"not trained (ml.inference.visnet unavailable: {error})"
    return load_visnet_embedder(artifact_dir, device=args.device), ""


# -- dimension study ----------------------------------------------------------------------------------------


def fit_pca(train: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    return mean, vt[:dim].T.astype(np.float32)


def _faiss_ranks(index, queries: np.ndarray, targets: np.ndarray, k: int = 50) -> np.ndarray:
    """Rank of each true item in the compressed index's top-k (k when absent)."""
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hit = found == targets[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), k)


def dimension_study(
    train: np.ndarray, queries: np.ndarray, gallery: np.ndarray, targets: np.ndarray, dims=(512, 256, 128, 64)
) -> list[dict]:
    rows: list[dict] = []
    full_dim = gallery.shape[1]
    rows.append(
        {
            "variant": f"original {full_dim}-d float32",
            "bytes": 4 * full_dim,
            **recall_from_ranks(exact_item_ranks(queries, gallery, targets), KS),
        }
    )
    reduced_512 = None
    for dim in dims:
        if dim >= full_dim or dim > len(train):
            continue
        mean, basis = fit_pca(train, dim)
        q = l2_normalise((queries - mean) @ basis)
        g = l2_normalise((gallery - mean) @ basis)
        if reduced_512 is None:
            reduced_512 = (dim, q, g, l2_normalise((train - mean) @ basis))
        rows.append(
            {
                "variant": f"PCA {dim}-d float32",
                "bytes": 4 * dim,
                **recall_from_ranks(exact_item_ranks(q, g, targets), KS),
            }
        )
    if reduced_512 is None:  # the embedding is already small: compress it as it is
        reduced_512 = (full_dim, queries, gallery, train)
    try:
        import faiss
    except ImportError:
        rows.append({"variant": "scalar / product quantisation skipped (faiss not installed)"})
        return rows
    dim, q, g, t = reduced_512
    source = f"PCA {dim}-d" if dim != full_dim else f"{dim}-d"
    sq = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(np.ascontiguousarray(t))
    sq.add(np.ascontiguousarray(g))
    rows.append(
        {
            "variant": f"{source} + 8-bit scalar quantisation",
            "bytes": dim,
            **recall_from_ranks(_faiss_ranks(sq, q, targets), KS),
        }
    )
    for m in (64, 32, 16):
        if dim % m or len(t) < 256:
            continue
        pq = faiss.IndexPQ(dim, m, 8, faiss.METRIC_INNER_PRODUCT)
        pq.train(np.ascontiguousarray(t))
        pq.add(np.ascontiguousarray(g))
        rows.append(
            {"variant": f"{source} + PQ {m}x8 bit", "bytes": m, **recall_from_ranks(_faiss_ranks(pq, q, targets), KS)}
        )
    if len(t) < 256:
        rows.append({"variant": f"PQ skipped ({len(t)} training vectors < 256 centroids)"})
    return rows


# -- report -------------------------------------------------------------------------------------------------

CONDITION_BINS = {
    # (label, metadata -> value, [(bin label, upper bound exclusive)])
    "rotation (degrees, absolute)": (
        lambda item, photo: abs(item.get("rotation", 0.0)),
        [("< 8", 8), ("8-16", 16), (">= 16", float("inf"))],
    ),
    "item side in the photo (px)": (
        lambda item, photo: item.get("side", 0),
        [("< 70", 70), ("70-109", 110), (">= 110", float("inf"))],
    ),
    "occluded fraction": (
        lambda item, photo: item.get("occlusion", 0.0),
        [("none", 1e-9), ("< 15%", 0.15), (">= 15%", float("inf"))],
    ),
    "camera blur (sigma px)": (
        lambda item, photo: photo.get("blur", 0.0),
        [("none", 1e-9), ("< 1", 1.0), (">= 1", float("inf"))],
    ),
}


def condition_breakdown(benchmark, queries: np.ndarray, ranks: np.ndarray) -> list[dict]:
    """Exact-item recall of one method per rendering condition of the street query (from the benchmark's
    per-item metadata) and per category: where the misses are."""
    from ml.data.fashion_mnist import CLASS_NAMES

    ranks = np.asarray(ranks)
    item_meta = [benchmark.item_meta[int(q)] for q in queries]
    photo_meta = [benchmark.photo_meta[benchmark.items[int(q)].photo_index] for q in queries]
    rows = []

    def add(group: str, label: str, mask: np.ndarray) -> None:
        if mask.any():
            rows.append(
                {
                    "group": group,
                    "value": label,
                    "queries": int(mask.sum()),
                    **{f"recall@{k}": float((ranks[mask] < k).mean()) for k in KS},
                }
            )

    modes = np.array([m.get("mode", "?") for m in item_meta])
    for mode in ("grey", "tint", "pattern"):
        add("colour", mode, modes == mode)
    for group, (value_of, bins) in CONDITION_BINS.items():
        values = np.array(
            [value_of(item, photo) for item, photo in zip(item_meta, photo_meta, strict=True)], dtype=np.float64
        )
        lower = -np.inf
        for label, upper in bins:
            add(group, label, (values >= lower) & (values < upper))
            lower = upper
    labels = np.asarray(benchmark.shop_labels)[[benchmark.items[int(q)].shop_index for q in queries]]
    for cls, name in enumerate(CLASS_NAMES):
        add("category", name, labels == cls)
    return rows


def breakdown_lines(method_title: str, rows: list[dict]) -> list[str]:
    lines = [
        f"## Where the misses are ({method_title})",
        "",
        "Exact-item recall of the test street queries by how the item was rendered into the photo "
        "(the benchmark records it per item) and by category.",
        "",
        "| condition | value | queries | Recall@1 | Recall@5 | Recall@20 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['group']} | {row['value']} | {row['queries']:,} | {_pct(row['recall@1'])} | "
            f"{_pct(row['recall@5'])} | {_pct(row['recall@20'])} |"
        )
    return lines + [""]


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{100 * value:.1f}"


def _ms(value: float) -> str:
    return "cached" if value is None or np.isnan(value) else f"{value:.2f}"


def results_table(rows: list[dict], gallery_size: int) -> list[str]:
    header = (
        "| Method | dim | Recall@1 | Recall@5 | Recall@20 | gallery | P@10 (category) | mAP@R (category) | ms/image |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        if row.get("note"):
            lines.append(f"| {row['title']} | - | {row['note']} | | | {gallery_size:,} | | | |")
            continue
        lines.append(
            f"| {row['title']} | {row['dim']} | {_pct(row['recall'][1])} | {_pct(row['recall'][5])} | "
            f"{_pct(row['recall'][20])} | {gallery_size:,} | {_pct(row['category']['precision@10'])} | "
            f"{_pct(row['category']['map@r'])} | {_ms(row['ms_per_image'])} |"
        )
    return lines


def study_table(rows: list[dict]) -> list[str]:
    lines = ["| Variant | bytes / vector | Recall@1 | Recall@5 | Recall@20 |", "|---|---|---|---|---|"]
    for row in rows:
        if 1 not in row:
            lines.append(f"| {row['variant']} | | | | |")
        else:
            lines.append(f"| {row['variant']} | {row['bytes']:,} | {_pct(row[1])} | {_pct(row[5])} | {_pct(row[20])} |")
    return lines


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        if row.get("curve"):
            ax.plot(CURVE_KS, [100 * v for v in row["curve"]], label=row["title"])
    ax.set_xlabel("K")
    ax.set_ylabel("exact-item Recall@K (%)")
    ax.set_xlim(1, CURVE_KS[-1])
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class EvalSplit:
    """The test street queries, the gallery they search, and the train items the PCA study is fitted on."""

    benchmark: Any
    queries: np.ndarray
    gallery: np.ndarray
    targets: np.ndarray  # each query's true row in gallery
    category_set: np.ndarray  # the test shop images (full size: all 10k test items)
    fit_items: np.ndarray
    fit_shop: np.ndarray

    @classmethod
    def build(cls, args: argparse.Namespace) -> EvalSplit:
        benchmark = build_benchmark(args.size, args.seed, args.root, progress=not args.quiet)
        queries = benchmark.query_indices("test")
        gallery = benchmark.gallery_indices("test", scope=args.gallery)
        position = {int(shop): i for i, shop in enumerate(gallery)}
        targets = np.array([position[benchmark.items[i].shop_index] for i in queries], dtype=np.int64)
        train_items = benchmark.query_indices("train")
        rng = np.random.default_rng(args.seed)
        fit_items = np.sort(rng.choice(train_items, min(args.pca_items, len(train_items)), replace=False))
        fit_shop = np.unique([benchmark.items[i].shop_index for i in fit_items])
        return cls(benchmark, queries, gallery, targets, benchmark.gallery_indices("test"), fit_items, fit_shop)


def score_method(
    args: argparse.Namespace, split: EvalSplit, method: str
) -> tuple[dict, EmbeddingCache | None, np.ndarray | None]:
    """(table row, its embedding cache, the queries' ranks); a row with a note and no cache when unavailable."""
    embedder, note = make_embedder(method, args)
    title = TITLES[method] + deep_branch_suffix(getattr(embedder, "artifact_dir", None))
    if embedder is None:
        print(f"{title}: {note}", file=sys.stderr)
        return {"method": method, "title": title, "note": note}, None, None
    benchmark = split.benchmark
    cache = EmbeddingCache(
        benchmark, embedder, method, context=args.context, batch=args.batch_size * 4, progress=not args.quiet
    )
    q = cache.street(split.queries)
    g = cache.shop(split.gallery)
    ranks = exact_item_ranks(q, g, split.targets)
    category = category_metrics(cache.shop(split.category_set), benchmark.shop_labels[split.category_set], k=10)
    recall = recall_from_ranks(ranks, KS)
    row = {
        "method": method,
        "title": title,
        "dim": int(q.shape[1]),
        "model_version": str(getattr(embedder, "model_version", method)),
        "recall": recall,
        "curve": list(recall_from_ranks(ranks, CURVE_KS).values()),
        "category": category,
        "ms_per_image": cache.ms_per_image,
    }
    print(
        f"{title}: R@1 {_pct(recall[1])}  R@5 {_pct(recall[5])}  R@20 {_pct(recall[20])}"
        f"  P@10 {_pct(category['precision@10'])}  mAP@R {_pct(category['map@r'])}",
        file=sys.stderr,
    )
    return row, cache, ranks


def study_best(rows: list[dict], caches: dict[str, EmbeddingCache], split: EvalSplit) -> tuple[dict | None, list[dict]]:
    """(the best learned method's row, its dimension study): Recall@1 first, then Recall@20."""
    learned = [r for r in rows if not r.get("note") and r["method"] not in ("pixels", "colour-histogram")]
    if not learned:
        return None, []
    best = max(learned, key=lambda r: (r["recall"][1], r["recall"][20]))
    cache = caches[best["method"]]
    train = np.concatenate([cache.street(split.fit_items), cache.shop(split.fit_shop)])
    return best, dimension_study(train, cache.street(split.queries), cache.shop(split.gallery), split.targets)


def evaluate(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    split = EvalSplit.build(args)
    benchmark, gallery = split.benchmark, split.gallery
    rows: list[dict] = []
    caches: dict[str, EmbeddingCache] = {}
    method_ranks: dict[str, np.ndarray] = {}
    for method in args.methods:
        row, cache, ranks = score_method(args, split, method)
        rows.append(row)
        if cache is not None and ranks is not None:
            caches[method], method_ranks[method] = cache, ranks
    best, study = study_best(rows, caches, split) if not args.no_study else (None, [])
    breakdown_method = "visnet" if "visnet" in method_ranks else (best["method"] if best else None)
    breakdown = (
        condition_breakdown(benchmark, split.queries, method_ranks[breakdown_method])
        if breakdown_method in method_ranks
        else []
    )
    result = {
        "training": training_summary(args.visnet) if "visnet" in args.methods else None,
        "breakdown_method": TITLES.get(breakdown_method) if breakdown and breakdown_method else None,
        "breakdown": breakdown,
        "command": "python -m ml.evaluation.evaluate " + " ".join(args.argv),
        "benchmark": {
            "size": benchmark.size,
            "seed": benchmark.seed,
            "data_hash": benchmark.data_hash,
            "root": str(benchmark.root),
            "queries": int(len(split.queries)),
            "gallery": int(len(gallery)),
            "gallery_scope": args.gallery,
            "category_items": int(len(split.category_set)),
            "pca_fit_vectors": int(len(split.fit_items) + len(split.fit_shop)),
        },
        "settings": {
            "image_size": args.image_size,
            "backbone": args.backbone,
            "context": args.context,
            "device": args.device,
        },
        "machine": describe_machine(),
        "rows": rows,
        "study_method": best["title"] if best else None,
        "study": study,
        "seconds": round(time.monotonic() - started, 1),
    }
    print("\n".join(results_table(rows, len(gallery))))
    if study and best is not None:
        print(f"\nDimension study ({best['title']}):")
        print("\n".join(study_table(study)))
    if args.out:
        write_report(result, Path(args.out), Path(args.plot) if args.plot else None)
    results_path = benchmark.root / f"results-{args.gallery}.json"
    results_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    return result


def deep_branch_suffix(artifact_dir) -> str:
    """' (deep branch trained)' / ' (deep branch frozen)' for a VisNet artifact, '' for anything else."""
    training = training_summary(artifact_dir)
    if training is None:
        return ""
    return " (deep branch trained)" if training["deep_blocks_trained"] else " (deep branch frozen)"


def training_summary(artifact_dir: str | Path | None) -> dict | None:
    """How the evaluated VisNet artifact was trained, from its metrics.json and config.json (None when there is
    no valid artifact there)."""
    if not artifact_dir:
        return None
    try:
        artifact = read_artifact(artifact_dir)
    except ArtifactInvalid:
        return None
    metrics, config, train_cfg = artifact.metrics, artifact.config, artifact.train_config
    return {
        "artifact": str(Path(artifact_dir)),
        "model_version": artifact.model_version,
        "device": metrics.get("device_name") or metrics.get("device"),
        "threads": metrics.get("torch_threads"),
        "deep_blocks_trained": int(train_cfg.get("train_last_blocks") or 0),
        "deep_lr": train_cfg.get("deep_lr"),
        "bf16": train_cfg.get("autocast_dtype", "bfloat16" if train_cfg.get("cpu_bf16_used") else None) == "bfloat16",
        "timings": metrics.get("timings", {}),
        "triplets": config.get("triplets", {}),
        "pairs_only": train_cfg.get("mined_negatives", True) is False,
        "epochs": [
            {
                "epoch": e["epoch"],
                "loss": e["loss"],
                "triplets": e.get("triplets"),
                **{k: e["val"][k] for k in ("recall@1", "recall@5", "recall@20")},
            }
            for e in metrics.get("epochs", [])
        ],
        "val_gallery": (metrics.get("final", {}).get("val") or {}).get("gallery"),
    }


def training_lines(training: dict) -> list[str]:
    timings = training["timings"]
    triplets = training["triplets"]
    if training.get("pairs_only"):
        column, unit = "pairs", "(anchor, positive) pairs"
        negatives = ": the negatives of each anchor are the other positives of its one-class batch"
    else:
        column = unit = "triplets"
        negatives = ""
    if training.get("deep_blocks_trained"):
        deep_branch = (
            f"deep branch trained (its last {training['deep_blocks_trained']} blocks, learning rate "
            f"{training['deep_lr']:g}, online over the cached images)"
        )
    else:
        deep_branch = "deep branch frozen (cached features)"
    lines = [
        "## Training (VisNet)",
        "",
        f"`{training['model_version']}` from `{training['artifact']}` (its `metrics.json`, `config.json`, "
        f"`training_curves.png`): device `{training['device']}`, {training['threads']} torch threads, "
        f"bfloat16 autocast: {bool(training['bf16'])}; {deep_branch}; {triplets.get('count', 0):,} mined triplets "
        f"(source `{triplets.get('source', '?')}`), trained as {unit} ({triplets.get('street', 0):,} street, "
        f"{triplets.get('catalog', 0):,} catalog){negatives}. Timings (s): "
        + ", ".join(f"{k.removesuffix('_s')} {v:,.0f}" for k, v in timings.items())
        + ".",
        "",
        f"| epoch | {column} | loss | val R@1 | val R@5 | val R@20 (gallery {training['val_gallery'] or 0:,}) |",
        "|---|---|---|---|---|---|",
    ]
    for e in training["epochs"]:
        lines.append(
            f"| {e['epoch']} | {e['triplets'] or 0:,} | {e['loss']:.4f} | {_pct(e['recall@1'])} | "
            f"{_pct(e['recall@5'])} | {_pct(e['recall@20'])} |"
        )
    return lines + [""]


def write_report(result: dict, out: Path, plot: Path | None) -> None:
    bench, machine = result["benchmark"], result["machine"]
    if plot is not None:
        plot_curves(
            result["rows"],
            plot,
            f"Street-to-shop proxy ({bench['size']}, seed {bench['seed']}): "
            f"{bench['queries']:,} queries, gallery {bench['gallery']:,}",
        )
    lines = [
        "# Street-to-shop evaluation",
        "",
        "Generated by `ml/evaluation/evaluate.py`; the benchmark is described in [street2shop.md](street2shop.md).",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"* Benchmark: size `{bench['size']}`, seed {bench['seed']}, data hash `{bench['data_hash'][:16]}`; "
        f"{bench['queries']:,} test street queries (ground-truth box + {result['settings']['context']:g} context, "
        f"square) against a gallery of {bench['gallery']:,} shop images ({bench['gallery_scope']}).",
        f"* Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu']}; torch {machine['torch']}, "
        f"Python {machine['python']}. Wall time {result['seconds']:.0f} s (features cached afterwards).",
        f"* ImageNet backbone: `{result['settings']['backbone']}` at {result['settings']['image_size']} px "
        f"(the product's current Embedder).",
        "",
        "## Test split",
        "",
        "Exact-item Recall@K: the query's own product among the K nearest gallery images (cosine). Category "
        f"P@10 and mAP@R (Musgrave et al. 2020): leave-one-out over the {bench['category_items']:,} test shop images.",
        "",
        *results_table(result["rows"], bench["gallery"]),
        "",
    ]
    if plot is not None:
        lines += [f"![Recall@K]({plot.name})", ""]
    if result.get("breakdown"):
        lines += breakdown_lines(result["breakdown_method"], result["breakdown"])
    if result.get("training"):
        lines += training_lines(result["training"])
    if result["study"]:
        lines += [
            f"## Dimension study ({result['study_method']})",
            "",
            f"PCA fitted on {bench['pca_fit_vectors']:,} train-split vectors (street crops and their shop images, "
            "no test data), vectors re-normalised; the 8-bit scalar quantiser and product quantisers (faiss, "
            "inner product) compress the largest PCA output, as the paper reduced 4096-d to 512-d.",
            "",
            *study_table(result["study"]),
            "",
        ]
    lines += localization_lines(out.parent / "localization.json", out.parent / "category_modes.json")
    lines += curation_lines(out.parent / "curation_study.json", out.parent / "near_duplicates.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def localization_lines(localization_json: Path, category_json: Path) -> list[str]:
    """The end-to-end section: detected crops against ground-truth crops and the whole photo (the paper's
    VisNet-FRCNN against manual crops), and what the category does inside the query; from the JSON that
    `python -m ml.detection.evaluate` and `python -m ml.evaluation.category_modes` write beside the report."""
    if not localization_json.exists():
        return []
    result = json.loads(localization_json.read_text())
    test, detection = result["test"], result["detection"]
    lines = [
        "## Localization: detected crops against ground-truth crops and the whole photo",
        "",
        f"`python -m ml.detection.evaluate --size {result['size']} --detector models/detector-default --visnet "
        f"models/visnet-default --out docs/localization.md` (details and the val study: localization.md). Detector "
        f"`{result['detector']}`: test mAP50 {detection['mAP50']:.3f}, mAP50-95 {detection['mAP50-95']:.3f}; "
        f"{100 * test['item_recall_iou50']:.1f}% of the {test['queries']:,} test items get a box with IoU >= 0.5. "
        f"Detected crops: each item takes its best-overlapping box, a missed item counts as not found; the crop "
        f"context ({result['chosen_context']}) was chosen on val and is what the product serves.",
        "",
        "| Query (test) | Recall@1 | Recall@5 | Recall@20 | gallery |",
        "|---|---|---|---|---|",
    ]
    for name, recall in test["rows"].items():
        lines.append(
            f"| {name} | {_pct(recall['1'])} | {_pct(recall['5'])} | {_pct(recall['20'])} | {test['gallery']:,} |"
        )
    lines.append("")
    if category_json.exists():
        from ml.evaluation.category_modes import report_lines

        lines += [
            "### The category inside the vector query",
            "",
            "The detector is class-agnostic (10 category classes reached test mAP50 0.10 where one class reached 0.67 "
            "at the same budget: 2,000 photos x 2 epochs at 224 px), so the category is voted by the query's "
            "nearest gallery items; `python -m ml.evaluation.category_modes --size full` on ground-truth crops:",
            "",
            *report_lines(json.loads(category_json.read_text(), object_hook=_int_keys)),
            "",
        ]
    return lines


CURATION_ARMS = {
    "scorer-unreviewed": "(a) scorer-proposed positives, unreviewed",
    "scorer-approved": "(b) the same, approved by review only",
    "scorer-approved-wide": "(b') top-10 proposals per crop reviewed, approved only",
    "ground-truth": "(c) ground-truth positives",
}


def curation_lines(study_json: Path, duplicates_json: Path) -> list[str]:
    """What review was worth (the paper's loop, simulated) and the near-duplicate threshold, from the JSON that
    `python -m ml.evaluation.curation_study` and `python -m ml.evaluation.near_duplicates` write beside the report."""
    lines: list[str] = []
    if study_json.exists():
        study = json.loads(study_json.read_text())
        summary = study["summary"]
        lines += [
            "## Curation: what reviewed triplets were worth",
            "",
            f"`{study['command']}` (details, per-seed runs and the paired significance test: curation_study.md). "
            "Street triplets whose positive is proposed by the BISS scorers (no ground truth in mining); a simulated "
            "reviewer approves a triplet when its positive is the true item and its negative is not; every arm is "
            "trained with the same recipe and seeds, only the triplet file changes.",
            "",
            "| Training triplets | Recall@1 | Recall@5 | Recall@20 | median rank | test queries |",
            "|---|---|---|---|---|---|",
        ]
        for key, name in CURATION_ARMS.items():
            row = summary.get(key)
            if row is None:
                continue
            lines.append(
                f"| {name} | {_pct(row['recall@1'])} | {_pct(row['recall@5'])} | {_pct(row['recall@20'])} | "
                f"{row['median_rank']:g} | {row['queries']:,} |"
            )
        lines.append("")
    if duplicates_json.exists():
        dupes = json.loads(duplicates_json.read_text())
        test = dupes["test"]
        lines += [
            "## Near-duplicate products",
            "",
            f"`python -m ml.evaluation.near_duplicates` (near_duplicates.md): cosine threshold {dupes['threshold']} "
            f"chosen on val (highest recall at precision >= {dupes['target_precision']}); on test, against every "
            f"pair of the catalog half: precision {_pct(test['precision'])}%, recall {_pct(test['recall'])}% "
            f"({test['duplicate_pairs_found']:,} of {test['duplicate_pairs']:,} re-listed items found, "
            f"{test['false_pairs']} false pairs among {test['flagged_pairs']:,} flagged).",
            "",
        ]
    return lines


def _int_keys(mapping: dict) -> dict:
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in mapping.items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="benchmark size: small | full (tiny for tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="benchmark root (default var/street2shop/...)")
    parser.add_argument(
        "--gallery",
        default="split",
        choices=("split", "all"),
        help="split: the test items (10k on full); all: all 70k Fashion-MNIST items",
    )
    parser.add_argument("--visnet", default=None, help="VisNet artifact directory")
    parser.add_argument(
        "--visnet-deep-only", default=None, help="artifact directory of VisNet without shallow branches"
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128, help="input size for the ImageNet backbone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--context", type=float, default=0.1, help="margin around the ground-truth box")
    parser.add_argument(
        "--pca-items", type=int, default=1500, help="train street items (plus their shop images) for PCA"
    )
    parser.add_argument("--no-study", action="store_true")
    parser.add_argument("--out", default=str(REPO / "docs" / "evaluation.md"), help="markdown report ('' for none)")
    parser.add_argument("--plot", default=str(REPO / "docs" / "evaluation_recall_at_k.png"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None) -> dict:
    return evaluate(parse_args(argv))


if __name__ == "__main__":
    main()

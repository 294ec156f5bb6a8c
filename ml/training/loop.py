"""The VisNet training loop: set up the model, cache and triplets, train epoch by epoch keeping the best
validation checkpoint, evaluate it, and write the artifact (ml.artifacts).

Retraining (train.init_from, `curated` triplets, `on_progress`): a run can start from a trained artifact's weights
(its "model" section replaces the config's) and is then evaluated beside it on the same splits ("base" in the final
metrics); curated triplets (e.g. approved in review) train every epoch on top of the mined ones; `on_progress`
receives a dict per stage and per epoch (what a web page shows while the run goes on).

Frozen deep branch (CPUs by default): its pooled features for every image involved are computed once and cached
(ml.feature_cache), and training runs only the shallow branches and the projection. Trained deep blocks
(train.train_last_blocks, a GPU by default): the cache keeps the preprocessed uint8 images and every step runs the
whole model over them, in bfloat16.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ml.artifacts import Artifact, load_weights, read_artifact, training_data_hash, write_artifact
from ml.devices import autocast_dtype_name, autocast_for, cpu_bf16_supported, cuda_amp_dtype, resolve_device
from ml.feature_cache import DeepFeatureCache, safe_name
from ml.models.visnet import VisNet
from ml.training.augment import augment_pair_batch
from ml.training.config import TrainingConfig
from ml.training.data import load_bench, query_indices, subsample
from ml.training.losses import TripletMarginLoss
from ml.training.miners import InBatchNegativesMiner, MinedNegativesMiner, PairIndices
from ml.training.mining import TrainingSet, given_training_set, mine_training_set, pool_refs, remine_street, train_pool
from ml.training.samplers import Epoch, EpochSampler
from ml.training.validation import SplitEval, deep_only_baseline
from ml.triplets import MinedTriplet, RefResolver, parse_ref, triplets_hash

ROOT = Path(__file__).resolve().parents[2]

ProgressCallback = Callable[[dict], None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_last_blocks(value: int | str | None, model: VisNet, cuda: bool) -> int:
    """How many of the deep branch's last blocks train (0: frozen, features cached)."""
    if value in (None, "auto"):
        value = "all" if cuda else 0
    if value == "all":
        return len(model.deep.blocks) if hasattr(model.deep, "blocks") else 1
    return int(value)


@dataclass
class Run:
    """What a training run set up, shared by its steps."""

    cfg: TrainingConfig
    device: torch.device
    cpu_bf16: bool
    model: VisNet
    last_blocks: int
    bench: Any
    resolver: RefResolver
    cache: DeepFeatureCache
    val_eval: SplitEval
    progress: bool
    started: float
    cache_started: float = 0.0
    timings: dict = field(default_factory=dict)
    init: Artifact | None = None  # the artifact the run started from (train.init_from)
    init_state: dict[str, torch.Tensor] | None = None
    on_progress: ProgressCallback | None = None

    def notify(self, stage: str, **details: Any) -> None:
        if self.on_progress is not None:
            self.on_progress({"stage": stage, "elapsed_s": round(time.monotonic() - self.started, 1), **details})

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def online(self) -> bool:
        """The deep branch trains: batches run the whole model over the cached images."""
        return self.last_blocks > 0

    @property
    def pairs_only(self) -> bool:
        return not self.cfg.train.mined_negatives


def init_artifact(cfg: TrainingConfig) -> Artifact | None:
    """The artifact named by train.init_from (its "model" section becomes the run's), or None."""
    if not cfg.train.init_from:
        return None
    artifact = read_artifact(cfg.train.init_from)
    cfg.model = artifact.model_config
    return artifact


def set_up(
    cfg: TrainingConfig,
    bench: Any,
    progress: bool,
    init: Artifact | None = None,
    on_progress: ProgressCallback | None = None,
) -> Run:
    """Seeds, device, model (from `init`'s weights when given), benchmark and feature cache (with the validation
    split cached)."""
    started = time.monotonic()
    train_cfg, data_cfg = cfg.train, cfg.data
    seed_everything(int(train_cfg.seed))
    if train_cfg.threads:
        torch.set_num_threads(int(train_cfg.threads))
    device = resolve_device(train_cfg.device)
    cuda = device.type == "cuda"
    model = VisNet(cfg.model).to(device)
    init_state = None
    if init is not None:
        init_state = load_weights(init)
        model.load_trainable_state_dict(init_state)
    # a trained deep branch cannot use cached features: it runs online over the cached images (pays off on a GPU)
    last_blocks = resolve_last_blocks(train_cfg.train_last_blocks, model, cuda)
    bench = bench if bench is not None else load_bench(data_cfg, progress)
    resolver = RefResolver(bench, context=float(data_cfg.context))
    cache_dir: str | Path = data_cfg.cache_dir or (Path(os.environ.get("VAR_DIR") or ROOT / "var") / "visnet-cache")
    if init is not None and init_state is not None and any(k.startswith("deep.") for k in init_state):
        # the cache key covers the deep branch's config, not its weights: a fine-tuned deep branch gets its own files
        cache_dir = Path(cache_dir) / f"init-{safe_name(init.model_version)}"
    cpu_bf16 = not cuda and train_cfg.cpu_bf16 in ("auto", True) and cpu_bf16_supported()
    if not cuda:
        model = model.to(memory_format=torch.channels_last)
    cache = DeepFeatureCache(
        model,
        bench,
        resolver,
        cache_dir,
        device,
        batch_size=256 if cuda else 128,
        progress=progress,
        cpu_bf16=cpu_bf16,
        keep_images=last_blocks > 0,
        workers=data_cfg.loader_workers,
    )
    if last_blocks > 0:
        model.freeze_deep(True, train_last_blocks=last_blocks)
    val_eval = SplitEval(bench, "val", subsample(query_indices(bench, "val"), data_cfg.max_val_queries, 1))
    run = Run(cfg, device, cpu_bf16, model, last_blocks, bench, resolver, cache, val_eval, progress, started)
    run.init, run.init_state, run.on_progress = init, init_state, on_progress
    run.cache_started = time.monotonic()
    run.notify("caching")
    cache.ensure(val_eval.gallery_refs + val_eval.query_refs, "val")
    return run


def training_set(run: Run, triplets: list[MinedTriplet] | None) -> TrainingSet:
    """The given triplets, or mined ones (timings: cache_s, mining_s)."""
    t0 = run.cache_started
    if triplets is not None:
        chosen = given_training_set(triplets, run.cache, run.resolver)
        run.timings["cache_s"] = round(time.monotonic() - t0, 1)
    else:
        train_q, pool = train_pool(run.bench, run.cfg.data)
        run.cache.ensure(pool_refs(run.bench, train_q, pool), "train")
        run.timings["cache_s"] = round(time.monotonic() - t0, 1)
        run.notify("mining")
        t1 = time.monotonic()
        chosen = mine_training_set(
            run.bench, run.cache, train_q, pool, run.cfg.mining, float(run.cfg.train.mix.get("catalog", 0))
        )
        run.timings["mining_s"] = round(time.monotonic() - t1, 1)
    if not chosen.triplets:
        raise ValueError("no training triplets")
    return chosen


def curated_triplets(run: Run, given: list[MinedTriplet] | None) -> tuple[list[MinedTriplet], dict]:
    """The given curated triplets (e.g. approved in review) that this run can train on, cached, and a report.

    Kept: every image is a shop item or street crop of the benchmark, the positive a shop item, and no image is a
    val or test street crop or a val or test gallery item (training on those would flatter the evaluation that
    decides whether the new model is better). The kind follows the anchor (street crop or shop image)."""
    report = {"given": len(given or []), "used": 0, "unknown_image": 0, "held_out": 0, "positive_not_shop": 0}
    if not given:
        return [], report
    bench, resolver = run.bench, run.resolver
    held_out_shop = {int(i) for split in ("val", "test") for i in bench.gallery_indices(split)}

    def status(ref: str) -> str:
        try:
            kind, split, value = parse_ref(ref)
        except ValueError:
            return "unknown_image"
        if kind == "shop":
            index = resolver.key_to_index.get(str(value))
            if index is None:
                return "unknown_image"
            return "held_out" if index in held_out_shop else "ok"
        assert isinstance(value, int)
        if not 0 <= value < len(bench.items) or bench.items[value].split != split:
            return "unknown_image"
        return "held_out" if split != "train" else "ok"

    kept: dict[tuple[str, str, str], MinedTriplet] = {}
    for triplet in given:
        statuses = [status(ref) for ref in (triplet.anchor, triplet.positive, triplet.negative)]
        problem: str | None = next((s for s in ("unknown_image", "held_out") if s in statuses), None)
        if problem is None and not triplet.positive.startswith("shop:"):
            problem = "positive_not_shop"
        if problem is not None:
            report[problem] += 1
            continue
        kind = "street" if triplet.anchor.startswith("street:") else "catalog"
        kept.setdefault((triplet.anchor, triplet.positive, triplet.negative), replace(triplet, kind=kind))
    curated = list(kept.values())
    run.cache.ensure([r for t in curated for r in (t.anchor, t.positive, t.negative)], "curated")
    report["used"] = len(curated)
    return curated, report


@dataclass
class Objective:
    """The optimiser and schedule, and how a batch's loss is mined and reduced."""

    optimiser: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    miner: InBatchNegativesMiner | MinedNegativesMiner
    loss: TripletMarginLoss
    deep_lr: float


def make_objective(run: Run, total_steps: int) -> Objective:
    train_cfg, model = run.cfg.train, run.model
    lr = float(train_cfg.lr)
    deep_lr = lr * float(train_cfg.deep_lr_scale)
    head_params = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("deep.")]
    deep_params = [p for p in model.deep.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": head_params, "lr": lr}]
    if deep_params:
        groups.append({"params": deep_params, "lr": deep_lr})
    optimiser = torch.optim.AdamW(groups, lr=lr, weight_decay=float(train_cfg.weight_decay))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=0.15
    )
    scaler = torch.amp.GradScaler("cuda", enabled=run.cuda and cuda_amp_dtype() == torch.float16)
    margin = float(train_cfg.margin)
    if train_cfg.batch_negatives:
        reducer = "hardest" if train_cfg.negatives == "hardest" else "mean_active"
        return Objective(
            optimiser, scheduler, scaler, InBatchNegativesMiner(), TripletMarginLoss(margin, reducer), deep_lr
        )
    return Objective(optimiser, scheduler, scaler, MinedNegativesMiner(), TripletMarginLoss(margin, "mean"), deep_lr)


@dataclass
class EpochBatches:
    """An epoch's triplets as cache rows, in training order."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    street_anchor: torch.Tensor
    spans: list[tuple[int, int]]

    @classmethod
    def of(cls, plan: Epoch, cache: DeepFeatureCache) -> EpochBatches:
        rows = [plan.triplets[i] for i in plan.order]
        return cls(
            cache.index([t.anchor for t in rows]),
            cache.index([t.positive for t in rows]),
            cache.index([t.negative for t in rows]),
            torch.tensor([t.kind == "street" for t in rows]),
            plan.spans,
        )


def batch_embeddings(run: Run, idx: torch.Tensor, b: int, street_anchor: torch.Tensor) -> torch.Tensor:
    """float32 embeddings of the cache rows idx ([anchors; candidates]), augmented when train.augment."""
    device = run.device
    deep: torch.Tensor | None = None
    if run.online:
        images = run.cache.images(device)
        inputs = images[idx.to(images.device)].to(device, non_blocking=True).float().div_(255.0)
    else:
        deep_all, small_all = run.cache.tensors()
        deep = deep_all[idx].to(device, non_blocking=True)
        inputs = small_all[idx].float().to(device, non_blocking=True)
    if run.cfg.train.augment:
        augment_pair_batch(inputs, b, street_anchor.to(device), float(run.cfg.train.occlude or 0))
    with autocast_for(device, run.cpu_bf16):
        emb = run.model(inputs) if deep is None else run.model.forward_from_deep_features(deep, inputs)
    return emb.float()


def train_step(run: Run, objective: Objective, batches: EpochBatches, lo: int, hi: int) -> tuple[float, int]:
    """One optimiser step on rows [lo, hi) of the epoch: (loss, anchors)."""
    sl = slice(lo, hi)
    b = hi - lo
    candidates = [batches.positives[sl]] + ([] if run.pairs_only else [batches.negatives[sl]])
    idx = torch.cat([batches.anchors[sl]] + candidates)
    emb = batch_embeddings(run, idx, b, batches.street_anchor[sl])
    labels = torch.cat([batches.positives[sl], idx[b:]]).to(run.device)  # an anchor is labelled by its positive
    indices: PairIndices = objective.miner(emb, labels, b)
    loss = objective.loss(emb, indices)
    objective.optimiser.zero_grad(set_to_none=True)
    objective.scaler.scale(loss).backward()
    objective.scaler.step(objective.optimiser)
    objective.scaler.update()
    objective.scheduler.step()
    return float(loss.detach()), b


def train_epoch(run: Run, objective: Objective, plan: Epoch, epoch: int) -> tuple[float, int]:
    """(mean loss per anchor, anchors trained) over the epoch's batches."""
    run.model.train()
    run.model.deep.eval()  # its batch norms keep the pretrained statistics, trained blocks included
    batches = EpochBatches.of(plan, run.cache)
    total, count = 0.0, 0
    bar = tqdm(batches.spans, desc=f"epoch {epoch}/{run.cfg.train.epochs}", disable=not run.progress, mininterval=2)
    for step, (lo, hi) in enumerate(bar):
        if hi - lo < 2:
            continue
        loss, b = train_step(run, objective, batches, lo, hi)
        total += loss * b
        count += b
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    bar.close()
    return total / max(count, 1), count


@dataclass
class Fit:
    history: list[dict]
    best_state: dict[str, torch.Tensor]
    objective: Objective


def _selection_score(val: dict) -> float:
    """The best checkpoint maximises validation Recall@20 + 0.1 Recall@1."""
    return val["recall@20"] + 0.1 * val["recall@1"]


def _record_epoch(run: Run, epoch: int, loss: float, count: int) -> dict:
    val = run.val_eval.run(run.model, run.cache, run.device)
    row = {
        "epoch": epoch,
        "loss": loss,
        "triplets": count,
        "val": val,
        "elapsed_s": round(time.monotonic() - run.started, 1),
    }
    if run.progress:
        print(
            f"epoch {epoch}: loss {row['loss']:.4f} val R@1 {val['recall@1']:.3f} R@5 {val['recall@5']:.3f} "
            f"R@20 {val['recall@20']:.3f} ({row['elapsed_s']} s)",
            flush=True,
        )
    return row


def fit(
    run: Run,
    street: list[MinedTriplet],
    catalog: list[MinedTriplet],
    pool: np.ndarray,
    curated: list[MinedTriplet] | None = None,
) -> Fit:
    """Train for train.epochs (or the time budget), keeping the best validation checkpoint; the curated
    triplets train every epoch."""
    train_cfg, bench = run.cfg.train, run.bench
    curated = curated or []
    sampler = EpochSampler(
        train_cfg,
        len(street),
        len(catalog),
        len(np.unique(bench.shop_labels)),
        lambda t: int(bench.shop_labels[run.resolver.shop_index(t.positive)]),
        np.random.default_rng(int(train_cfg.seed)),
        n_always=len(curated),
    )
    epochs = int(train_cfg.epochs)
    objective = make_objective(run, epochs * sampler.steps_per_epoch)
    history: list[dict] = []
    best, best_state = -1.0, {}
    street_current, started = street, time.monotonic()
    for epoch in range(1, epochs + 1):
        loss, count = train_epoch(run, objective, sampler.epoch(epoch, street_current, catalog, curated), epoch)
        row = _record_epoch(run, epoch, loss, count)
        history.append(row)
        run.notify("training", epoch=epoch, epochs=epochs, loss=loss, triplets=count, val=row["val"])
        if _selection_score(row["val"]) > best:
            best = _selection_score(row["val"])
            best_state = {k: v.detach().cpu().clone() for k, v in run.model.trainable_state_dict().items()}
            row["best"] = True
        if run.cfg.mining.remine and street and epoch < epochs:
            remined = remine_street(
                run.model,
                run.cache,
                bench,
                street,
                pool,
                int(run.cfg.mining.remine_k),
                int(run.cfg.mining.street_hard_negatives),
                run.device,
                seed=100 + epoch,
            )
            street_current = remined + [t for t in street if t.negative_kind == "out_of_class"]
        if train_cfg.time_budget_s and time.monotonic() - started > float(train_cfg.time_budget_s):
            break
    run.timings["train_s"] = round(time.monotonic() - started, 1)
    return Fit(history, best_state, objective)


def final_metrics(run: Run, best_state: dict[str, torch.Tensor], baseline_val: dict) -> dict:
    """Validation (and test, with data.test_eval) Recall@K of the saved (float16) best checkpoint."""
    run.model.load_trainable_state_dict(best_state)
    final = {"val": run.val_eval.run(run.model, run.cache, run.device), "val_deep_only_baseline": baseline_val}
    if run.cfg.data.test_eval:
        t2 = time.monotonic()
        test_q = subsample(query_indices(run.bench, "test"), run.cfg.data.max_test_queries, 6)
        test_eval = SplitEval(run.bench, "test", test_q)
        run.cache.ensure(test_eval.gallery_refs + test_eval.query_refs, "test")
        final["test"] = test_eval.run(run.model, run.cache, run.device)
        final["test_deep_only_baseline"] = deep_only_baseline(run.cache, test_eval)
        run.timings["test_eval_s"] = round(time.monotonic() - t2, 1)
    return final


def base_metrics(run: Run, base_val: dict) -> dict:
    """The starting artifact (train.init_from) on the same val and test splits as the new model."""
    assert run.init is not None and run.init_state is not None
    base = {"model_version": run.init.model_version, "val": base_val}
    if run.cfg.data.test_eval:
        run.model.load_trainable_state_dict(run.init_state)
        test_q = subsample(query_indices(run.bench, "test"), run.cfg.data.max_test_queries, 6)
        test_eval = SplitEval(run.bench, "test", test_q)
        run.cache.ensure(test_eval.gallery_refs + test_eval.query_refs, "test")
        base["test"] = test_eval.run(run.model, run.cache, run.device)
    return base


def resolved_config(run: Run, deep_lr: float, triplets: dict) -> dict:
    """The config as run (config.json): the typed sections plus what this run resolved and trained on."""
    resolved = run.cfg.to_dict()
    resolved["train"].update(
        {
            "device_used": str(run.device),
            "cpu_bf16_used": run.cpu_bf16,
            "autocast_dtype": autocast_dtype_name(run.device, run.cpu_bf16),
            "train_last_blocks": run.last_blocks,
            "deep_lr": deep_lr if run.online else None,
        }
    )
    resolved["triplets"] = triplets
    return resolved


def _unique_pairs(triplets: list[MinedTriplet]) -> list[MinedTriplet]:
    return list({(t.anchor, t.positive): t for t in triplets}.values())


def _split_kinds(triplets: list[MinedTriplet], pairs_only: bool) -> tuple[list[MinedTriplet], list[MinedTriplet]]:
    street = [t for t in triplets if t.kind == "street"]
    catalog = [t for t in triplets if t.kind == "catalog"]
    if pairs_only:  # each (anchor, positive) pair once
        street = list({(t.anchor, t.positive): t for t in street}.values())
        catalog = list({(t.anchor, t.positive): t for t in catalog}.values())
    return street, catalog


def train(
    config: dict | TrainingConfig,
    out_dir: str | Path,
    bench: Any = None,
    triplets: list[MinedTriplet] | None = None,
    triplets_source: str = "mined",
    progress: bool = True,
    curated: list[MinedTriplet] | None = None,
    curated_source: str = "curated",
    on_progress: ProgressCallback | None = None,
) -> dict:
    """Train, evaluate and write the artifact to out_dir. Returns model_version, metrics, model, cache, val_eval,
    out_dir, triplets (and artifact, the ml.artifacts.Artifact written).

    `curated`: triplets trained every epoch besides the given or mined ones (see curated_triplets for which are
    kept). `on_progress`: called with {"stage": "caching" | "mining" | "training" | "evaluating" | "writing", ...};
    each "training" call reports an epoch (epoch, epochs, loss, triplets, val Recall@K)."""
    cfg = config if isinstance(config, TrainingConfig) else TrainingConfig.from_dict(config)
    cfg.train.check()  # before any feature caching or mining
    init = init_artifact(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = set_up(cfg, bench, progress, init, on_progress)
    chosen = training_set(run, triplets)
    extra, curated_report = curated_triplets(run, curated)
    street, catalog = _split_kinds(chosen.triplets, run.pairs_only)
    if run.pairs_only:
        extra = _unique_pairs(extra)
    baseline_val = deep_only_baseline(run.cache, run.val_eval)
    base_val = run.val_eval.run(run.model, run.cache, run.device) if run.init is not None else None
    run.notify("training", epoch=0, epochs=int(cfg.train.epochs))
    result = fit(run, street, catalog, chosen.pool, extra)
    # the artifact stores float16 weights (half the size); evaluate exactly what is saved
    best_state = {k: (v.half() if v.is_floating_point() else v) for k, v in result.best_state.items()}
    for key, value in (run.init_state or {}).items():
        if key.startswith("deep."):  # the starting artifact's trained deep blocks (kept frozen here) stay in it
            best_state.setdefault(key, value.half() if value.is_floating_point() else value)
    run.notify("evaluating")
    base = base_metrics(run, base_val) if base_val is not None else None
    final = final_metrics(run, best_state, baseline_val)
    if base is not None:
        final["base"] = base
    trip_hash = triplets_hash(chosen.triplets + extra)
    summary = {
        "source": triplets_source,
        "count": len(chosen.triplets) + len(extra),
        "street": len(street),
        "catalog": len(catalog),
        "hash": trip_hash,
    }
    if curated is not None:
        summary["curated"] = {"source": curated_source, **curated_report}
    if run.init is not None:
        summary["init_from"] = run.init.model_version
    run.notify("writing")
    run.timings["total_s"] = round(time.monotonic() - run.started, 1)
    metrics = {
        "epochs": result.history,
        "final": final,
        "timings": run.timings,
        "device": str(run.device),
        "device_name": torch.cuda.get_device_name(run.device) if run.cuda else None,
        "torch_threads": torch.get_num_threads(),
    }
    artifact = write_artifact(
        out_dir,
        config=resolved_config(run, result.objective.deep_lr, summary),
        metrics=metrics,
        data_hash=training_data_hash(run.bench.data_hash, trip_hash),
        weights_state=best_state,
        history=result.history,
    )
    return {
        "model_version": artifact.model_version,
        "metrics": artifact.metrics,
        "model": run.model,
        "cache": run.cache,
        "val_eval": run.val_eval,
        "out_dir": out_dir,
        "triplets": chosen.triplets,
        "artifact": artifact,
    }

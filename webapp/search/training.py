"""Retraining: approved triplets plus the benchmark's mined ones -> a new VisNet version, evaluated beside the
active one.

`training_run_start` (the admin's button, the nightly job) snapshots the approved triplets to a file and queues
`search.retrain_model` on the `train` queue once the run row is committed. `training_run_execute` is that task's
body, in the train worker: it fine-tunes the active VisNet (or trains one from the config when the active version
is the ImageNet stand-in) through `ml.training`, writes every epoch's loss and validation recall into the run, and
registers the artifact as a new ModelVersion with its evaluation; the active version is measured on the same
splits by the same run, so the two can be compared. A failure marks the run failed with the reason and leaves
nothing registered and no artifact behind. Activating the new version is a separate, human decision (the admin).

Where it runs: RETRAIN_CONFIG (the worker's environment) names the config; empty picks
configs/visnet_retrain_gpu.yaml on a worker with CUDA and configs/visnet_retrain.yaml otherwise. The artifact is
written under TRAINED_MODELS_DIR, which every worker that embeds must be able to read (a shared volume when the
train worker is another machine).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from webapp.curation.models import Triplet
from webapp.curation.services import triplets_export
from webapp.search import dispatch, registry
from webapp.search.models import ModelVersion, TrainingRun
from webapp.search.versions import model_version_register

logger = logging.getLogger(__name__)

RunState = TrainingRun.State
CPU_CONFIG = "configs/visnet_retrain.yaml"
GPU_CONFIG = "configs/visnet_retrain_gpu.yaml"
COMPARED = ("recall@1", "recall@5", "recall@20")
WATCHED = ("recall@1", "recall@20")  # worse on either: the admin warns


class TrainingBusy(RuntimeError):
    """A retrain is already queued or running (the `train` queue runs one at a time)."""


# Starting ----------------------------------------------------------------------------------------
def _run_dir(run: TrainingRun) -> Path:
    return Path(settings.TRAINED_MODELS_DIR) / "runs" / str(run.pk)


def training_run_start(*, requested_by=None, config: dict | None = None) -> TrainingRun:
    """Queue a retrain on the `train` queue; returns the queued run.

    `config` (recorded as asked): "config_file" (a training YAML, default: the worker's RETRAIN_CONFIG or the CPU/GPU
    retrain config), "epochs", "fine_tune" (default True: start from the active VisNet's weights), "trigger".
    The approved triplets are exported now, so later reviews do not change what this run trains on.
    Raises TrainingBusy while another run is queued or running.
    """
    config = dict(config or {})
    config.setdefault("trigger", "admin")
    config.setdefault("fine_tune", True)
    with transaction.atomic():
        busy = TrainingRun.objects.select_for_update().filter(state__in=[RunState.QUEUED, RunState.RUNNING]).first()
        if busy is not None:
            raise TrainingBusy(f"training run {busy.pk} is already {busy.state}; wait for it to finish")
        run = TrainingRun.objects.create(
            state=RunState.QUEUED,
            config=config,
            requested_by=requested_by,
            base_version=registry.active_version(fresh=True),
            progress={"stage": "queued"},
        )
        path = _run_dir(run) / "approved-triplets.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as out:
            run.approved_triplets = triplets_export(out=out, approved_only=True)
        run.config = {**config, "approved_triplets_file": str(path)}
        run.save(update_fields=["approved_triplets", "config"])
        dispatch.retrain_queue_on_commit(run_id=run.pk)
    logger.info("training run %s queued (%d approved triplets)", run.pk, run.approved_triplets)
    return run


def training_nightly_maybe_start() -> TrainingRun | None:
    """The nightly job: start a retrain when NIGHTLY_RETRAIN is on, no run is queued or running, and at least
    NIGHTLY_RETRAIN_MIN_APPROVALS triplets were approved since the last run that did not fail."""
    if not settings.NIGHTLY_RETRAIN:
        logger.info("nightly retrain: off (NIGHTLY_RETRAIN)")
        return None
    if TrainingRun.objects.filter(state__in=[RunState.QUEUED, RunState.RUNNING]).exists():
        logger.info("nightly retrain: a run is already queued or running")
        return None
    new = approvals_since_last_run()
    if new < settings.NIGHTLY_RETRAIN_MIN_APPROVALS:
        logger.info("nightly retrain: %d new approvals, fewer than %d", new, settings.NIGHTLY_RETRAIN_MIN_APPROVALS)
        return None
    return training_run_start(config={"trigger": "nightly", "new_approvals": new})


def approvals_since_last_run() -> int:
    """Triplets approved since the last run that did not fail was requested (all approved ones before any run)."""
    last = TrainingRun.objects.exclude(state=RunState.FAILED).order_by("-created_at", "-id").first()
    approved = Triplet.objects.filter(status=Triplet.Status.APPROVED)
    if last is not None:
        approved = approved.filter(reviewed_at__gt=last.created_at)
    return approved.count()


# Running (in the train worker) ---------------------------------------------------------------------
def _config_file(run: TrainingRun) -> Path:
    name = run.config.get("config_file") or settings.RETRAIN_CONFIG
    if not name:
        import torch  # only the train worker's child gets here; it may use CUDA

        name = GPU_CONFIG if torch.cuda.is_available() else CPU_CONFIG
    path = Path(name)
    return path if path.is_absolute() else Path(settings.BASE_DIR) / path


def _init_from(run: TrainingRun) -> ModelVersion | None:
    """The version whose weights the run starts from: the base version when it is a trained VisNet."""
    base = run.base_version
    if not run.config.get("fine_tune", True) or base is None or base.kind != ModelVersion.Kind.VISNET:
        return None
    return base


class _ProgressWriter:
    """Writes ml.training's progress events into the run (the admin reads them while it trains)."""

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.rows: list[dict] = []

    def __call__(self, event: dict) -> None:
        progress = {**event, "rows": self.rows, "updated_at": timezone.now().isoformat()}
        if event.get("stage") == "training" and event.get("epoch"):
            row = {
                "epoch": event["epoch"],
                "loss": round(float(event["loss"]), 5),
                "triplets": event.get("triplets"),
                **{k: round(float(v), 4) for k, v in (event.get("val") or {}).items() if k in COMPARED},
                "elapsed_s": event.get("elapsed_s"),
            }
            self.rows.append(row)
            progress.update(row)
            logger.info(
                "training run %s: epoch %s/%s loss %.4f val R@1 %.3f R@20 %.3f",
                self.run_id,
                event["epoch"],
                event.get("epochs"),
                row["loss"],
                row.get("recall@1", 0),
                row.get("recall@20", 0),
            )
        progress.pop("val", None)
        TrainingRun.objects.filter(pk=self.run_id).update(progress=progress)


def training_run_execute(*, run_id: int) -> TrainingRun | None:
    """The task's body: train, evaluate, register. Returns the run (None when it no longer exists).

    A run that already finished is left alone (a duplicate delivery); a run found running (its worker died) starts
    again from the beginning. Failures mark the run failed with the reason; no version is registered then and the
    partial artifact is removed.
    """
    from ml.training.config import load_config  # training code loads in the train worker only
    from ml.training.loop import train
    from ml.triplets import load_triplets

    run = TrainingRun.objects.select_related("base_version").filter(pk=run_id).first()
    if run is None:
        logger.warning("training run %s no longer exists", run_id)
        return None
    if run.state not in (RunState.QUEUED, RunState.RUNNING):
        logger.info("training run %s is already %s", run_id, run.state)
        return run
    TrainingRun.objects.filter(pk=run.pk).update(
        state=RunState.RUNNING, started_at=timezone.now(), error="", progress={"stage": "starting"}
    )
    partial = _run_dir(run) / "artifact.partial"
    final_dir: Path | None = None
    try:
        config_file = _config_file(run)
        # Nothing forks inside the worker: the benchmark builder and the feature cache decode in this process. (A
        # prefork child is a daemon and may not fork; forked from a solo worker, the loader pool hung: a loader died
        # holding the pool's queue lock and the run sat in "caching" for good.)
        overrides: dict = {"data": {"loader_workers": 1}}
        if run.config.get("epochs"):
            overrides["train"] = {"epochs": int(run.config["epochs"])}
        init = _init_from(run)
        if init is not None:
            overrides.setdefault("train", {})["init_from"] = init.artifact_dir
        config = load_config(config_file, overrides)
        approved_file = run.config.get("approved_triplets_file")
        curated = load_triplets(approved_file, approved_only=True) if approved_file else []
        shutil.rmtree(partial, ignore_errors=True)
        result = train(
            config,
            partial,
            curated=curated,
            curated_source=f"approved:{len(curated)}",
            on_progress=_ProgressWriter(run.pk),
            progress=False,
        )
        final_dir = Path(settings.TRAINED_MODELS_DIR) / result["model_version"]
        if final_dir.exists():
            final_dir = _run_dir(run) / result["model_version"]
        partial.rename(final_dir)
        summary = _summary(result["metrics"], result["artifact"].config, config_file, init)
        with transaction.atomic():
            version, _ = model_version_register(artifact_dir=final_dir)
            TrainingRun.objects.filter(pk=run.pk).update(
                state=RunState.SUCCEEDED,
                model_version=version,
                metrics=summary,
                finished_at=timezone.now(),
            )
        logger.info("training run %s registered %s", run.pk, version.model_version)
    except Exception as exc:  # noqa: BLE001 (whatever went wrong is recorded on the run)
        reason = f"{type(exc).__name__}: {exc}"
        logger.exception("training run %s failed", run.pk)
        for leftover in (partial, final_dir):
            if leftover is not None and not ModelVersion.objects.filter(artifact_dir=str(leftover)).exists():
                shutil.rmtree(leftover, ignore_errors=True)
        TrainingRun.objects.filter(pk=run.pk).update(
            state=RunState.FAILED, error=reason[:4000], finished_at=timezone.now()
        )
    run.refresh_from_db()
    return run


def _summary(metrics: dict, artifact_config: dict, config_file: Path, init: ModelVersion | None) -> dict:
    final = metrics.get("final", {})
    return {
        "config_file": str(config_file),
        "benchmark": {
            "source": artifact_config.get("data", {}).get("source"),
            "size": artifact_config.get("data", {}).get("size"),
        },
        "test": final.get("test"),
        "val": final.get("val"),
        "base": final.get("base"),
        "deep_only": final.get("test_deep_only_baseline") or final.get("val_deep_only_baseline"),
        "init_from": init.model_version if init is not None else None,
        "triplets": artifact_config.get("triplets"),
        "timings": metrics.get("timings"),
        "device": metrics.get("device"),
        "epochs_run": len(metrics.get("epochs", [])),
    }


# Reading the outcome -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricRow:
    name: str
    new: float | None
    reference: float | None

    @property
    def delta(self) -> float | None:
        return None if self.new is None or self.reference is None else self.new - self.reference

    @property
    def worse(self) -> bool:
        return self.delta is not None and self.delta < 0


@dataclass(frozen=True)
class Comparison:
    """The new version beside a reference on the same split (the base version, or ImageNet features)."""

    split: str
    reference_name: str
    rows: list[MetricRow]
    gallery: int | None
    queries: int | None
    active_changed: bool  # the active version is no longer the one the run started from

    @property
    def worse_on(self) -> list[str]:
        return [row.name for row in self.rows if row.name in WATCHED and row.worse]


def training_run_comparison(*, run: TrainingRun) -> Comparison | None:
    """How the run's new version compares with the version that was active when it started, measured by the run on
    the same test split (val when the config skips test); None until the run succeeded."""
    if run.state != RunState.SUCCEEDED or not run.metrics:
        return None
    metrics = run.metrics
    split = "test" if metrics.get("test") else "val"
    new = metrics.get(split) or {}
    base = (metrics.get("base") or {}).get(split)
    if base is not None:
        reference, reference_name = base, metrics["base"].get("model_version", "active version")
    else:
        reference, reference_name = metrics.get("deep_only") or {}, "ImageNet features (the deep branch alone)"
    active = registry.active_version(fresh=True)
    base_version = run.base_version
    return Comparison(
        split=split,
        reference_name=reference_name,
        rows=[MetricRow(k, new.get(k), reference.get(k)) for k in COMPARED],
        gallery=new.get("gallery"),
        queries=new.get("queries"),
        active_changed=bool(active and base_version and active.pk != base_version.pk),
    )


def training_runs_in_progress():
    return TrainingRun.objects.filter(Q(state=RunState.QUEUED) | Q(state=RunState.RUNNING))

"""Retraining: a real Celery worker on the `train` queue fine-tunes the active VisNet (the tiny fixture) on the
synthetic benchmark's mined triplets plus the approved ones, writes each epoch's progress, and registers the new
version with its evaluation beside the version it started from. Failures register nothing and leave no artifact.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from django.contrib.auth.models import Permission, User

from tests.conftest import ROOT, start_worker, stop_worker, wait_until
from webapp.curation.models import Triplet
from webapp.search import training
from webapp.search.models import ModelVersion, TrainingRun
from webapp.search.registry import reset_active_version_cache
from webapp.search.versions import model_version_register

TINY_VISNET = ROOT / "tests" / "fixtures" / "tiny-visnet"


def write_config(path: Path, **train) -> Path:
    """The tiny synthetic recipe (configs/visnet_tiny.yaml) as a retrain: 2 epochs without re-mining, tested."""
    settings_line = ", ".join(f"{key}: {value}" for key, value in {"epochs": 2, "threads": 2, **train}.items())
    path.write_text(
        f"extends: {ROOT / 'configs' / 'visnet_tiny.yaml'}\nmining: {{remine: false}}\ntrain: {{{settings_line}}}\n"
    )
    return path


@pytest.fixture
def tiny_active(db, settings, tmp_path):
    """The tiny VisNet fixture is the active version (the run fine-tunes it); artifacts go to a temporary dir."""
    settings.TRAINED_MODELS_DIR = tmp_path / "trained"
    version, _ = model_version_register(artifact_dir=TINY_VISNET)
    ModelVersion.objects.filter(pk=version.pk).update(state=ModelVersion.State.ACTIVE)
    reset_active_version_cache()
    yield ModelVersion.objects.get(pk=version.pk)
    reset_active_version_cache()


def synthetic_triplets() -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(usable, held out) triplets on the tiny synthetic benchmark: train street crops with their shop item and a
    same-category negative; held out: a val gallery item as the negative (training on it would flatter val)."""
    from ml.training.synthetic import build_synthetic_benchmark

    bench = build_synthetic_benchmark("tiny", seed=0)
    shop = lambda i: f"shop:{bench.shop_keys[int(i)]}"  # noqa: E731
    train_shop = np.flatnonzero(bench.shop_split == "train")
    val_shop = np.flatnonzero(bench.shop_split == "val")
    usable, held_out = [], []
    for index, item in enumerate(bench.items):
        if item.split != "train" or len(usable) >= 12:
            continue
        label = bench.shop_labels[item.shop_index]
        negative = next(i for i in train_shop if i != item.shop_index and bench.shop_labels[i] == label)
        usable.append((f"street:train:{index}", shop(item.shop_index), shop(negative)))
        if not held_out:
            held_out.append((f"street:train:{index}", shop(item.shop_index), shop(val_shop[0])))
    return usable, held_out


def add_triplets(rows, status, kind="street"):
    for anchor, positive, negative in rows:
        Triplet.objects.create(
            anchor_ref=anchor, positive_ref=positive, negative_ref=negative, kind=kind, source="test", status=status
        )


@pytest.mark.worker
def test_retrain_on_the_train_queue_registers_a_new_version_with_progress_and_metrics(
    tiny_active, transactional_db, settings, tmp_path, milvus_names, admin_client
):
    from webapp.celery import app

    app.set_current()
    app.set_default()
    usable, held_out = synthetic_triplets()
    add_triplets(usable, Triplet.Status.APPROVED)
    add_triplets(held_out, Triplet.Status.APPROVED)
    add_triplets([("shop:not-in-the-benchmark", usable[0][1], usable[1][2])], Triplet.Status.APPROVED, "feedback")
    add_triplets([(usable[0][0], usable[1][1], usable[2][2])], Triplet.Status.PENDING)  # not approved: not exported

    worker = start_worker(
        tmp_path,
        "http://127.0.0.1:9",  # training never touches the vector store
        milvus_names,
        settings.CELERY_BROKER_URL,
        extra_env={"TRAINED_MODELS_DIR": str(settings.TRAINED_MODELS_DIR)},
        queues="train",
    )
    try:
        run = training.training_run_start(config={"config_file": str(write_config(tmp_path / "retrain.yaml"))})
        assert run.state == "queued" and run.approved_triplets == len(usable) + 2
        try:
            wait_until(lambda: TrainingRun.objects.get(pk=run.pk).state in ("succeeded", "failed"), 300, interval=0.5)
        finally:
            log = worker.log()
    finally:
        stop_worker(worker)
    run.refresh_from_db()
    assert run.state == "succeeded", (run.error, log[-4000:])
    print("retrain timings", run.metrics["timings"], "queued to done", run.finished_at - run.created_at)
    assert "search.retrain_model" in log

    # Progress: one row per epoch, with the loss and validation recall.
    rows = run.progress["rows"]
    assert [row["epoch"] for row in rows] == [1, 2] and all(row["loss"] > 0 and "recall@20" in row for row in rows)

    # A new registered (not active) version from the artifact, with its evaluation beside the base version's.
    version = run.model_version
    assert version is not None and version.kind == "visnet" and version.state == "registered"
    assert version.pk != tiny_active.pk and run.base_version_id == tiny_active.pk
    assert Path(version.artifact_dir).is_dir() and Path(version.artifact_dir).parent == settings.TRAINED_MODELS_DIR
    assert not (settings.TRAINED_MODELS_DIR / "runs" / str(run.pk) / "artifact.partial").exists()
    assert version.config["train"]["init_from"] == str(TINY_VISNET.resolve())
    assert (
        0 <= run.metrics["test"]["recall@20"] <= 1 and run.metrics["base"]["model_version"] == tiny_active.model_version
    )
    assert set(run.metrics["base"]["test"]) >= {"recall@1", "recall@5", "recall@20"}
    curated = run.metrics["triplets"]["curated"]
    assert curated == {
        "source": f"approved:{len(usable) + 2}",
        "given": len(usable) + 2,
        "used": len(usable),
        "unknown_image": 1,
        "held_out": 1,
        "positive_not_shop": 0,
    }
    assert ModelVersion.objects.get(pk=tiny_active.pk).state == "active"  # activating is a person's decision

    comparison = training.training_run_comparison(run=run)
    assert comparison is not None and comparison.reference_name == tiny_active.model_version
    assert [row.name for row in comparison.rows] == ["recall@1", "recall@5", "recall@20"]
    page = admin_client.get(f"/admin/search/trainingrun/{run.pk}/change/").content.decode()
    assert 'id="epochs"' in page and 'id="comparison"' in page and version.model_version in page
    assert ('id="worse-warning"' in page) == bool(comparison.worse_on)


@pytest.mark.django_db
def test_a_bad_config_fails_the_run_with_the_reason_and_registers_nothing(tiny_active, tmp_path):
    config = write_config(tmp_path / "bad.yaml", bogus_setting=1)
    run = training.training_run_start(config={"config_file": str(config)})
    run = training.training_run_execute(run_id=run.pk)
    assert run.state == "failed" and "bogus_setting" in run.error and run.finished_at
    assert ModelVersion.objects.count() == 1  # only the active one
    assert not (training._run_dir(run) / "artifact.partial").exists()
    # A duplicate delivery of a finished run does nothing.
    assert training.training_run_execute(run_id=run.pk).state == "failed"


@pytest.mark.django_db
def test_a_run_whose_artifact_does_not_register_fails_and_leaves_no_artifact(tiny_active, tmp_path, monkeypatch):
    from ml.training import loop

    def fake_train(config, out_dir, **kwargs):
        kwargs["on_progress"]({"stage": "training", "epoch": 1, "epochs": 1, "loss": 0.3, "val": {"recall@20": 0.5}})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "config.json").write_text("{}")  # no weights, no model_version: registration refuses it
        return {"model_version": "visnet-half-written", "metrics": {}, "artifact": SimpleNamespace(config={})}

    monkeypatch.setattr(loop, "train", fake_train)
    run = training.training_run_start(config={"config_file": str(write_config(tmp_path / "ok.yaml"))})
    run = training.training_run_execute(run_id=run.pk)
    assert run.state == "failed" and "lacks" in run.error
    assert run.progress["rows"][0]["recall@20"] == 0.5  # what it got through is kept for the post-mortem
    assert not ModelVersion.objects.filter(model_version="visnet-half-written").exists()
    assert not list(Path(tiny_active.artifact_dir).parent.glob("visnet-half-written"))
    assert not (training.settings.TRAINED_MODELS_DIR / "visnet-half-written").exists()


@pytest.mark.django_db
def test_start_snapshots_the_approved_triplets_and_refuses_a_second_run(tiny_active):
    add_triplets([("street:train:1", "shop:a", "shop:b"), ("street:train:2", "shop:a", "shop:c")], "approved")
    add_triplets([("street:train:3", "shop:a", "shop:d")], "rejected")
    run = training.training_run_start(config={"epochs": 3})
    exported = Path(run.config["approved_triplets_file"]).read_text().splitlines()
    assert run.approved_triplets == 2 == len(exported)
    assert run.config["epochs"] == 3 and run.config["trigger"] == "admin" and run.base_version_id == tiny_active.pk
    with pytest.raises(training.TrainingBusy):
        training.training_run_start()


@pytest.mark.django_db
def test_admin_start_button_needs_the_add_permission(tiny_active, client):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_trainingrun"))
    client.force_login(viewer)
    assert "Start a retrain" not in client.get("/admin/search/trainingrun/").content.decode()
    assert client.post("/admin/search/trainingrun/start/").status_code == 403
    assert not TrainingRun.objects.exists()

    trainer = User.objects.create_user("trainer", password="pw", is_staff=True)
    trainer.user_permissions.add(*Permission.objects.filter(codename__in=["view_trainingrun", "add_trainingrun"]))
    client.force_login(trainer)
    assert "Start a retrain" in client.get("/admin/search/trainingrun/").content.decode()
    assert "approved triplet" in client.get("/admin/search/trainingrun/start/").content.decode()
    response = client.post("/admin/search/trainingrun/start/", {"epochs": "2"})
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/trainingrun/{run.pk}/change/")
    assert run.requested_by == trainer and run.config["epochs"] == 2 and run.state == "queued"
    page = client.get(f"/admin/search/trainingrun/{run.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' in page  # reloads itself while the run is queued or running
    client.post("/admin/search/trainingrun/start/")  # a second one while the first is queued: refused
    assert TrainingRun.objects.count() == 1


@pytest.mark.django_db
def test_the_change_page_warns_when_the_new_version_is_worse(tiny_active, admin_client):
    new, _ = model_version_register(artifact_dir=TINY_VISNET)  # any registered version stands for the new one
    base = {"recall@1": 0.30, "recall@5": 0.50, "recall@20": 0.70, "queries": 30, "gallery": 60}
    run = TrainingRun.objects.create(
        state="succeeded",
        base_version=tiny_active,
        model_version=new,
        progress={"stage": "writing", "rows": [{"epoch": 1, "loss": 0.2, "recall@1": 0.25, "recall@20": 0.65}]},
        metrics={
            "test": {**base, "recall@1": 0.28, "recall@20": 0.72},
            "base": {"model_version": tiny_active.model_version, "test": base},
        },
    )
    comparison = training.training_run_comparison(run=run)
    assert comparison.worse_on == ["recall@1"]
    page = admin_client.get(f"/admin/search/trainingrun/{run.pk}/change/").content.decode()
    assert 'id="worse-warning"' in page and "recall@1" in page and 'http-equiv="refresh"' not in page

    run.metrics["test"]["recall@1"] = 0.31
    run.save()
    page = admin_client.get(f"/admin/search/trainingrun/{run.pk}/change/").content.decode()
    assert 'id="worse-warning"' not in page
    assert "done" in admin_client.get("/admin/search/trainingrun/").content.decode()

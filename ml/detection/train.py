"""Train a YOLO detector on the street-to-shop benchmark's street photos, from a model config (no downloaded
weights), and write an artifact:

    python -m ml.detection.train --config configs/detector.yaml --out models/detector-default

Steps: build/load the benchmark -> write a YOLO-format dataset view (symlinked photos + label files) under
var/detection/ -> ultralytics trains from the model config (offline: see ml.detection.offline; plots=False;
the AMP check never loads yolo26n.pt) -> the last weights go into the artifact (float16) -> the served
Detector is evaluated on the TEST split (mAP50, mAP50-95) -> examples.png (copied to --examples-copy).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from ml.detection.offline import configure_offline, var_dir

DEFAULTS: dict = {
    "data": {
        "size": "full",
        "seed": 0,
        "labels": "item",  # "item" (class-agnostic) or "category" (the 10 catalog categories)
        "train_photos": None,  # a seeded subset of the train split's photos (None: all)
        "val_photos": 200,  # validated once, after the last epoch
        "subset_seed": 0,
    },
    "model": {
        "base": "yolo11n.yaml",  # an ultralytics model config (architecture only)
        "family": "yolo11n",
        "depth": None,  # override the scale's depth / width multiples and max channels (None: the scale's own)
        "width": None,
        "max_channels": None,
        "input_size": 256,
    },
    "train": {
        "epochs": 10,
        "batch": 32,  # on the CPU
        "gpu_batch": 128,  # on a GPU (lr follows ultralytics' nominal batch 64 scaling)
        "nbs": None,  # ultralytics' nominal batch (gradient accumulation up to it); None: the batch itself
        "workers": 2,
        "cpu_threads": None,  # torch threads on the CPU (None: every core; ultralytics would use cores - 1)
        "gpu_workers": 8,
        "optimizer": "auto",
        "lr0": 0.01,
        "warmup_epochs": 1.0,
        "mosaic": 1.0,
        "close_mosaic": 2,
        "scale": 0.5,
        "fliplr": 0.5,
        "cache": "ram",
        "seed": 0,
        "device": "auto",
    },
    "eval": {"split": "test", "limit": None, "examples": 8},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None, overrides: dict | None = None) -> dict:
    loaded = yaml.safe_load(Path(path).read_text()) if path else {}
    unknown = set(loaded or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    return deep_merge(deep_merge(DEFAULTS, loaded or {}), overrides or {})


# -- data ---------------------------------------------------------------------------------------------------
def label_names(mode: str) -> list[str]:
    if mode == "item":
        return ["item"]
    if mode == "category":
        from ml.data.fashion_mnist import CLASS_NAMES

        return list(CLASS_NAMES)
    raise ValueError(f"data.labels must be 'item' or 'category', not {mode!r}")


def pick_photos(benchmark, split: str, count: int | None, seed: int) -> list[int]:
    photos = benchmark.photos(split)
    if count is None or count >= len(photos):
        return photos
    rng = np.random.default_rng(seed)
    return sorted(int(p) for p in rng.choice(photos, size=int(count), replace=False))


def write_yolo_dataset(benchmark, data_cfg: dict, root: Path | None = None) -> tuple[Path, dict]:
    """A YOLO-format view of the benchmark (images/<split>/*.jpg symlinks, labels/<split>/*.txt) and its
    data.yaml. Returns (data.yaml path, {split: photo count})."""
    names = label_names(data_cfg["labels"])
    selection = {
        "train": pick_photos(benchmark, "train", data_cfg["train_photos"], data_cfg["subset_seed"]),
        "val": pick_photos(benchmark, "val", data_cfg["val_photos"], data_cfg["subset_seed"]),
    }
    key = hashlib.sha256(
        json.dumps([benchmark.data_hash, data_cfg["labels"], selection], sort_keys=True).encode()
    ).hexdigest()[:12]
    root = root or var_dir() / "detection" / f"{benchmark.size}-seed{benchmark.seed}-{data_cfg['labels']}-{key}"
    data_yaml = root / "data.yaml"
    counts = {split: len(photos) for split, photos in selection.items()}
    if data_yaml.is_file():
        return data_yaml, counts
    items_by_photo: dict[int, list] = {}
    for item in benchmark.items:
        items_by_photo.setdefault(item.photo_index, []).append(item)
    tmp = root.with_name(f"{root.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, photos in selection.items():
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        for p in photos:
            source = benchmark.photo_path(p).resolve()
            (tmp / "images" / split / source.name).symlink_to(source)
            width, height = benchmark.photo_meta[p].get("size", (320, 320)) if benchmark.photo_meta else (320, 320)
            lines = []
            for item in items_by_photo.get(p, []):
                x0, y0, x1, y1 = (float(v) for v in item.box)
                x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
                cls = 0 if data_cfg["labels"] == "item" else int(benchmark.shop_labels[item.shop_index])
                lines.append(
                    f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                    f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"
                )
            (tmp / "labels" / split / f"{source.stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    document = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    (tmp / "data.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        tmp.rename(root)
    except OSError:  # another process wrote the same view meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return data_yaml, counts


# -- model --------------------------------------------------------------------------------------------------
def resolve_arch(model_cfg: dict, nc: int) -> dict:
    """The ultralytics model dict (plain data) with nc and the scale resolved; stored in config.json."""
    from ultralytics.nn.tasks import yaml_model_load

    arch = dict(yaml_model_load(model_cfg["base"]))
    scale = arch.get("scale") or "n"
    depth, width, max_channels = arch["scales"][scale] if arch.get("scales") else (1.0, 1.0, 1024)
    depth = model_cfg["depth"] if model_cfg.get("depth") is not None else depth
    width = model_cfg["width"] if model_cfg.get("width") is not None else width
    max_channels = model_cfg["max_channels"] if model_cfg.get("max_channels") is not None else max_channels
    arch["scales"] = {"c": [float(depth), float(width), int(max_channels)]}
    arch["scale"] = "c"
    arch["nc"] = int(nc)
    arch.pop("yaml_file", None)
    arch["channels"] = 3
    return json.loads(json.dumps(arch))


def _no_download_amp_check(model) -> bool:
    """Replaces ultralytics' check_amp, which loads (downloads) yolo26n.pt: AMP on for CUDA, off elsewhere."""
    device = next(model.parameters()).device
    return device.type == "cuda"


def _losses(trainer) -> dict:
    try:
        items = trainer.label_loss_items(trainer.tloss, prefix="train")
        return {k.removeprefix("train/"): round(float(v), 3) for k, v in items.items()}
    except Exception:  # a different ultralytics version: the progress line just lacks losses
        return {}


# -- the run ------------------------------------------------------------------------------------------------
def train_detector(
    config: dict,
    out: str | Path,
    *,
    examples_copy: str | Path | None = None,
    run_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train, write the artifact to `out`, evaluate on the test split; returns metrics.json's content."""
    home = configure_offline()
    import ultralytics
    import ultralytics.engine.trainer as trainer_module
    from ultralytics import YOLO

    from ml.data.street2shop import build_benchmark
    from ml.detection.artifact import EXAMPLES, update_metrics, write_detector_artifact
    from ml.detection.detector import load_detector
    from ml.detection.metrics import draw_examples, evaluate_detector
    from ml.devices import resolve_device

    trainer_module.check_amp = _no_download_amp_check
    started = time.time()
    data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    benchmark = build_benchmark(size=data_cfg["size"], seed=data_cfg["seed"], progress=progress)
    data_yaml, counts = write_yolo_dataset(benchmark, data_cfg)
    names = label_names(data_cfg["labels"])
    arch = resolve_arch(model_cfg, len(names))
    device = resolve_device(train_cfg["device"])
    on_gpu = device.type == "cuda"
    batch = int(train_cfg["gpu_batch"] if on_gpu else train_cfg["batch"])
    workers = int(train_cfg["gpu_workers"] if on_gpu else train_cfg["workers"])
    run_dir = Path(run_dir or home / "runs" / f"{Path(out).name}-{int(started)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    arch_path = run_dir / "model.yaml"
    arch_path.write_text(yaml.safe_dump(arch, sort_keys=False))
    print(
        f"detector: {model_cfg['family']} {arch['scales']['c']} imgsz {model_cfg['input_size']}, labels "
        f"{data_cfg['labels']} ({len(names)}), train photos {counts['train']}, val {counts['val']}, "
        f"{train_cfg['epochs']} epochs, batch {batch}, device {device}",
        flush=True,
    )
    yolo = YOLO(str(arch_path), task="detect")
    epoch_times: list[float] = []

    def on_epoch_end(trainer) -> None:
        epoch_times.append(time.time())
        print(
            f"detector: epoch {trainer.epoch + 1}/{trainer.epochs} done at {time.time() - train_start:.0f}s, "
            f"loss {_losses(trainer)}",
            flush=True,
        )

    yolo.add_callback("on_train_epoch_end", on_epoch_end)
    threads = int(train_cfg.get("cpu_threads") or os.cpu_count() or 1)
    if not on_gpu:  # ultralytics leaves one core idle (1 of 2 here): all cores train 1.7x faster on 2 cores
        yolo.add_callback("on_train_start", lambda trainer: torch.set_num_threads(threads))
    train_start = time.time()
    yolo.train(
        data=str(data_yaml),
        epochs=int(train_cfg["epochs"]),
        imgsz=int(model_cfg["input_size"]),
        batch=batch,
        workers=workers,
        device=str(device.index or 0) if on_gpu else "cpu",
        project=str(run_dir),
        name="train",
        exist_ok=True,
        pretrained=False,
        plots=False,
        amp=on_gpu,
        val=False,
        seed=int(train_cfg["seed"]),
        deterministic=False,
        optimizer=train_cfg["optimizer"],
        lr0=float(train_cfg["lr0"]),
        warmup_epochs=float(train_cfg["warmup_epochs"]),
        mosaic=float(train_cfg["mosaic"]),
        close_mosaic=int(train_cfg["close_mosaic"]),
        scale=float(train_cfg["scale"]),
        fliplr=float(train_cfg["fliplr"]),
        cache=train_cfg["cache"] or False,
        single_cls=False,
        verbose=progress,
        save_period=-1,
        patience=1000,
        nbs=int(train_cfg["nbs"] or batch),
    )
    train_seconds = time.time() - train_start
    trainer = yolo.trainer
    assert trainer is not None
    checkpoint = torch.load(Path(trainer.save_dir) / "weights" / "last.pt", map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"]
    state = dict(model.float().state_dict())
    resolved = {
        **config,
        "model": {**model_cfg, "kind": "yolo-detector", "arch": arch, "labels": names},
        "train": {**train_cfg, "resolved_batch": batch, "resolved_workers": workers, "resolved_device": str(device)},
        "data": {**data_cfg, "photo_counts": counts},
    }
    epochs_done = len(epoch_times)
    per_epoch = [round(b - a, 1) for a, b in zip([train_start, *epoch_times[:-1]], epoch_times, strict=True)]
    metrics = {
        "train_seconds": round(train_seconds, 1),
        "epoch_seconds": per_epoch,
        "epochs": epochs_done,
        "device": str(device),
        "torch_threads": None if on_gpu else threads,
        "ultralytics": ultralytics.__version__,
        "final_val_ultralytics": {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()},
    }
    artifact = write_detector_artifact(
        out, config=resolved, metrics=metrics, data_hash=f"benchmark {benchmark.data_hash}", weights_state=state
    )
    print(
        f"detector: wrote {artifact.path} ({artifact.model_version}) after {train_seconds:.0f}s of training", flush=True
    )
    detector = load_detector(artifact.path, device=str(device))
    eval_cfg = config["eval"]
    evaluation_start = time.time()
    test = evaluate_detector(detector, benchmark, eval_cfg["split"], limit=eval_cfg["limit"], progress=progress)
    test["seconds"] = round(time.time() - evaluation_start, 1)
    examples = draw_examples(
        detector, benchmark, artifact.path / EXAMPLES, eval_cfg["split"], count=int(eval_cfg["examples"])
    )
    if examples_copy:
        Path(examples_copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(examples, examples_copy)
    update_metrics(artifact.path, {"test": test, "total_seconds": round(time.time() - started, 1)})
    print(
        f"detector: {eval_cfg['split']} mAP50 {test['mAP50']:.4f} mAP50-95 {test['mAP50-95']:.4f} "
        f"({test['photos']} photos, {test['items']} items)",
        flush=True,
    )
    return json.loads((artifact.path / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/detector.yaml")
    parser.add_argument("--out", default="models/detector-default")
    parser.add_argument("--examples-copy", default=None, help="also copy examples.png here (docs/...)")
    parser.add_argument("--run-dir", default=None, help="ultralytics' working dir (default var/ultralytics/runs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values")
    args = parser.parse_args(argv)
    overrides: dict = {}
    for assignment in args.set:
        dotted, _, raw = assignment.partition("=")
        section, _, key = dotted.partition(".")
        overrides.setdefault(section, {})[key] = yaml.safe_load(raw)
    config = load_config(args.config, overrides)
    if os.environ.get("DETECTOR_THREADS"):
        torch.set_num_threads(int(os.environ["DETECTOR_THREADS"]))
    metrics = train_detector(config, args.out, examples_copy=args.examples_copy, run_dir=args.run_dir)
    json.dump({k: metrics[k] for k in ("model_version", "train_seconds", "test")}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

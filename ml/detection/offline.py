"""Keep ultralytics offline and inside var/: call `configure_offline()` before anything imports ultralytics.

* YOLO_OFFLINE=1: ultralytics' ONLINE flag is False (no update checks, no analytics events, no hub).
* YOLO_CONFIG_DIR=<var>/ultralytics: its settings.json (and any font or weights dir) live in var/, not ~/.config.
* settings: analytics sync and every logger integration off, weights/runs/datasets dirs inside var/ultralytics.
Training adds plots=False (the plotting code downloads Arial.ttf) and never lets the AMP check load yolo26n.pt
(ml.detection.train).
"""

from __future__ import annotations

import os
from pathlib import Path

_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "neptune", "hub")


def var_dir() -> Path:
    return Path(os.environ.get("VAR_DIR") or Path(__file__).resolve().parents[2] / "var")


def ultralytics_home() -> Path:
    return Path(os.environ.get("YOLO_CONFIG_DIR") or var_dir() / "ultralytics")


def configure_offline() -> Path:
    """Set the environment for ultralytics (before its first import) and, once imported, its settings.
    Returns the ultralytics home directory (YOLO_CONFIG_DIR)."""
    os.environ["YOLO_OFFLINE"] = "1"
    home = ultralytics_home()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(home)
    omp_was_set = "OMP_NUM_THREADS" in os.environ
    from ultralytics.utils import SETTINGS

    if not omp_was_set:  # ultralytics sets OMP_NUM_THREADS=1 on import; keep it from reaching child processes
        os.environ.pop("OMP_NUM_THREADS", None)

    wanted: dict[str, object] = {
        "sync": False,
        "datasets_dir": str(home / "datasets"),
        "weights_dir": str(home / "weights"),
        "runs_dir": str(home / "runs"),
        "vscode_msg": False,
        "openvino_msg": False,
    }
    wanted.update({name: False for name in _INTEGRATIONS if name in SETTINGS})
    if any(SETTINGS.get(key) != value for key, value in wanted.items()):
        SETTINGS.update({key: value for key, value in wanted.items() if key in SETTINGS})
    restore_pillow_open()
    return home


def restore_pillow_open() -> None:
    """Undo ultralytics' patch of PIL.Image.open: on a file Pillow cannot identify, the patch tries to pip-install
    pi-heif (a download) and raises ModuleNotFoundError instead of UnidentifiedImageError, which would turn a bad
    upload in a worker that loaded the detector into a crash instead of a clear refusal."""
    from PIL import Image
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original

"""The detector (ml.detection): a seconds-long training run with configs/detector_tiny.yaml, done with every
non-local network connection made to fail (the offline guarantee), the artifact it writes, load_detector /
Detector.detect, the committed tests/fixtures/tiny-detector, and crop_with_context's geometry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.artifacts import ArtifactInvalid, read_artifact
from ml.data.street2shop import crop_box
from ml.detection.crops import context_box, crop_with_context
from ml.detection.detector import Detection, load_detector

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-detector"

# Run before anything else in a fresh interpreter: DNS lookups and connections to anything but loopback or a
# local socket are recorded and refused, so a download attempt (weights, fonts, AMP check, hub, analytics,
# update check) fails the run.
GUARD = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []
    LOCAL = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "")

    def _host(address):
        return address[0] if isinstance(address, tuple) else str(address)

    def _refuse(what, host):
        attempts.append(f"{what} {host}")
        raise OSError(f"network disabled by the test: {what} {host}")

    _getaddrinfo = socket.getaddrinfo
    def getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL:
            _refuse("getaddrinfo", host)
        return _getaddrinfo(host, *args, **kwargs)
    socket.getaddrinfo = getaddrinfo

    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in LOCAL:
            _refuse("connect", _host(address))
        return _connect(self, address)
    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _host(address) not in LOCAL:
            _refuse("connect_ex", _host(address))
        return _connect_ex(self, address)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex

    import atexit
    atexit.register(lambda: open(os.environ["GUARD_LOG"], "w").write(json.dumps(attempts)))
    """
)

RUN = textwrap.dedent(
    """
    import sys
    from ml.detection.train import main
    main(["--config", "configs/detector_tiny.yaml", "--out", sys.argv[1], "--run-dir", sys.argv[2]])
    from PIL import Image
    from ml.detection.detector import load_detector
    detector = load_detector(sys.argv[1], device="cpu")
    print("DETECTIONS", len(detector.detect(Image.new("RGB", (200, 150), (90, 120, 160)), min_score=0.0)))
    print("TRAINER_AT_INFERENCE", "ml.training" in sys.modules)
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run in a fresh interpreter with the network guard; (artifact dir, run result)."""
    tmp = tmp_path_factory.mktemp("detector")
    guard_log = tmp / "attempts.json"
    env = {
        **os.environ,
        "GUARD_LOG": str(guard_log),
        "HOME": str(tmp / "home"),  # anything written to ~ (e.g. ~/.config/Ultralytics) would land here
        "HTTP_PROXY": "http://127.0.0.1:9",  # a closed port: a client that ignores the guard still fails
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    env.pop("YOLO_CONFIG_DIR", None)
    env.pop("YOLO_OFFLINE", None)
    code = GUARD + "\nexec(compile(" + repr(RUN) + ", 'run', 'exec'))\n"
    out = tmp / "artifact"
    result = subprocess.run(
        [sys.executable, "-c", code, str(out), str(tmp / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out, result, guard_log, tmp / "home"


def test_tiny_training_makes_no_network_attempt(trained):
    out, result, guard_log, home = trained
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(guard_log.read_text()) == []
    assert not (home / ".config" / "Ultralytics").exists()  # settings live in var/ultralytics


def test_tiny_training_writes_a_loadable_artifact(trained):
    out, result, _, _ = trained
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("weights.pt", "config.json", "metrics.json", "data_hash", "model_version", "examples.png"):
        assert (out / name).is_file(), name
    artifact = read_artifact(out)
    assert artifact.model_version.startswith("detector-yolo11-tiny-64-")
    assert artifact.config["model"]["labels"] == ["item"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"mAP50", "mAP50-95"} and 0 <= metrics["test"]["mAP50"] <= 1
    assert metrics["train_seconds"] > 0
    assert "DETECTIONS" in result.stdout


def check_detections(detections, size, max_items):
    assert len(detections) <= max_items
    assert all(isinstance(d, Detection) for d in detections)
    scores = [d.score for d in detections]
    assert scores == sorted(scores, reverse=True)
    for d in detections:
        x1, y1, x2, y2 = d.box
        assert all(isinstance(v, float) for v in d.box)
        assert 0 <= x1 < x2 <= size[0] and 0 <= y1 < y2 <= size[1]
        assert d.label == "item" and 0 <= d.score <= 1


@pytest.mark.parametrize("size", [(320, 320), (500, 200), (90, 400)])
def test_detect_returns_well_formed_detections(size):
    detector = load_detector(FIXTURE, device="cpu")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    detections = detector.detect(image, min_score=0.0, max_items=7)
    check_detections(detections, size, 7)
    assert detections  # min_score 0 keeps something
    assert detector.detect(image, min_score=1.01) == []
    assert detector.detect(image.convert("L").convert("RGB"), max_items=0) == []


def test_the_fixture_artifact_is_small_and_named():
    detector = load_detector(FIXTURE, device="cpu")
    assert detector.model_version == (FIXTURE / "model_version").read_text().strip()
    assert detector.labels == ["item"] and detector.input_size == 64
    assert sum(p.stat().st_size for p in FIXTURE.iterdir()) < 1_000_000


def test_load_detector_rejects_bad_directories(tmp_path):
    with pytest.raises(ArtifactInvalid):
        load_detector(tmp_path / "missing")
    with pytest.raises(ArtifactInvalid):
        load_detector(ROOT / "models" / "visnet-default")  # a VisNet, not a detector
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "metrics.json", "data_hash", "model_version"):
        (broken / name).write_bytes((FIXTURE / name).read_bytes())
    (broken / "weights.pt").write_bytes(b"not a weights file")
    with pytest.raises(ArtifactInvalid):
        load_detector(broken)


def test_inference_imports_no_trainer():
    code = (
        "import sys; from ml.detection.detector import load_detector; from PIL import Image;"
        f"load_detector({str(FIXTURE)!r}, device='cpu').detect(Image.new('RGB', (64, 64)));"
        "import os, torch; assert 'OMP_NUM_THREADS' not in os.environ, 'leaked';"
        "bad = [m for m in sys.modules if m.startswith(('ml.training', 'ultralytics.engine', 'ultralytics.data',"
        " 'ultralytics.models'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- crops ---------------------------------------------------------------------------------------------------
def test_context_box_matches_the_benchmark_framing():
    rng = np.random.default_rng(1)
    for _ in range(300):
        x0, y0 = (int(v) for v in rng.integers(0, 280, 2))
        x1, y1 = x0 + int(rng.integers(5, 320 - x0 + 1)), y0 + int(rng.integers(5, 320 - y0 + 1))
        x1, y1 = min(x1, 320), min(y1, 320)
        for context in (0.0, 0.05, 0.1, 0.25):
            assert context_box((x0, y0, x1, y1), (320, 320), context) == crop_box(
                (x0, y0, x1, y1), (320, 320), context, square=True
            )


def test_crop_with_context_is_square_inside_and_covers_the_box():
    image = Image.new("RGB", (400, 300))
    for box in [(10.5, 20.2, 60.7, 90.1), (350.0, 250.0, 399.0, 299.0), (0.0, 0.0, 400.0, 300.0), (5, 5, 6, 6)]:
        for context in (0.0, 0.05, 0.1):
            left, top, right, bottom = context_box(box, image.size, context)
            assert right - left == bottom - top  # square
            assert left >= 0 and top >= 0 and right <= 400 and bottom <= 300
            crop = crop_with_context(image, box, context)
            assert crop.size == (right - left, bottom - top)
            side = min(round(max(box[2] - box[0], box[3] - box[1], 1) * (1 + 2 * context)), 300)
            assert crop.size[0] == max(side, 1)
            if side < 300:  # room to frame the whole box: its centre is inside the crop
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                assert left <= cx <= right and top <= cy <= bottom
    assert crop_with_context(image, (100, 100, 150, 120), 0.1).size == (60, 60)


# -- detection metrics and query matching ------------------------------------------------------------------------
def test_detection_map_is_one_for_perfect_boxes_and_drops_with_misses():
    from ml.detection.metrics import detection_map

    truth = [[((10, 10, 50, 60), "item"), ((100, 100, 180, 150), "item")], [((0, 0, 30, 30), "item")]]
    perfect = [[Detection(tuple(map(float, box)), 0.9, label) for box, label in image] for image in truth]
    assert detection_map(perfect, truth)["mAP50"] == pytest.approx(1.0)
    assert detection_map(perfect, truth)["mAP50-95"] == pytest.approx(1.0)
    shifted = [
        [Detection((d.box[0] + 3, d.box[1] + 3, d.box[2] + 3, d.box[3] + 3), d.score, d.label) for d in im]
        for im in perfect
    ]
    result = detection_map(shifted, truth)
    assert result["mAP50"] > 0.9 and result["mAP50-95"] < 0.9  # found at IoU 0.5, not at 0.9
    missing = [perfect[0][:1], []]
    assert detection_map(missing, truth)["mAP50"] == pytest.approx(34 / 101, abs=1e-3)


def test_detected_boxes_match_items_at_iou_half_and_misses_rank_last():
    from ml.data.street2shop import StreetItem
    from ml.detection.evaluate import MISS, match_items, ranks_with_misses

    class Bench:
        items = [StreetItem(0, (10, 10, 50, 50), 0, "test"), StreetItem(0, (200, 200, 260, 260), 1, "test")]

    detections = {
        0: [Detection((12.0, 11.0, 52.0, 49.0), 0.8, "item"), Detection((0.0, 0.0, 300.0, 300.0), 0.9, "item")]
    }
    boxes = match_items(Bench(), np.array([0, 1]), detections)
    assert boxes == [(12.0, 11.0, 52.0, 49.0), None]
    vectors = np.array([[1.0, 0.0], [np.nan, np.nan]], dtype=np.float32)
    ranks = ranks_with_misses(vectors, np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), np.array([0, 1]))
    assert ranks.tolist() == [0, MISS]

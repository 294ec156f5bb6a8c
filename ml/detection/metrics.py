"""Detection quality on the street-to-shop benchmark: COCO-style mAP50 / mAP50-95 of a Detector (the served
inference path, not ultralytics' validator) and a PNG of example detections drawn with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ml.detection.detector import Detection, Detector

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point AP (as pycocotools): at each recall r in 0, 0.01, ..., 1 the best precision at a recall
    >= r (0 beyond the largest recall reached), averaged. recall is non-decreasing (predictions by score)."""
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if len(recall) == 0:
        return 0.0
    envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
    thresholds = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, thresholds, side="left")
    reached = index < len(recall)
    return float(np.where(reached, envelope[np.minimum(index, len(recall) - 1)], 0.0).mean())


def match_predictions(pred_boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """bool [n_pred, 10]: prediction i (in score order) is a true positive at IoU threshold j (greedy, one match
    per ground-truth box)."""
    tp = np.zeros((len(pred_boxes), len(IOU_THRESHOLDS)), dtype=bool)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    iou = box_iou(pred_boxes, gt_boxes)
    for j, threshold in enumerate(IOU_THRESHOLDS):
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for i in range(len(pred_boxes)):
            candidates = np.where((iou[i] >= threshold) & ~taken)[0]
            if len(candidates):
                best = candidates[np.argmax(iou[i, candidates])]
                taken[best] = True
                tp[i, j] = True
    return tp


def detection_map(
    predictions: Sequence[Sequence[Detection]],
    ground_truth: Sequence[Sequence[tuple[Sequence[float], str]]],
) -> dict[str, float]:
    """mAP50, mAP50-95 (mean over classes present in the ground truth), precision/recall at the best F1 point
    over all classes at IoU 0.5. ground_truth per image: (box, label) pairs."""
    classes = sorted({label for image in ground_truth for _, label in image})
    per_class_ap = []
    all_tp, all_conf, n_gt_total = [], [], 0
    for cls in classes:
        tps: list[np.ndarray] = []
        confs: list[float] = []
        n_gt = 0
        for dets, gts in zip(predictions, ground_truth, strict=True):
            gt_boxes = np.array([box for box, label in gts if label == cls], dtype=np.float64).reshape(-1, 4)
            mine = sorted((d for d in dets if d.label == cls), key=lambda d: -d.score)
            pred_boxes = np.array([d.box for d in mine], dtype=np.float64).reshape(-1, 4)
            tps.append(match_predictions(pred_boxes, gt_boxes))
            confs.extend(d.score for d in mine)
            n_gt += len(gt_boxes)
        tp = np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool)
        conf = np.array(confs)
        order = np.argsort(-conf, kind="stable")
        tp, conf = tp[order], conf[order]
        tpc, fpc = np.cumsum(tp, axis=0), np.cumsum(~tp, axis=0)
        recall = tpc / max(n_gt, 1)
        precision = tpc / np.maximum(tpc + fpc, 1)
        per_class_ap.append([average_precision(recall[:, j], precision[:, j]) for j in range(len(IOU_THRESHOLDS))])
        all_tp.append(tp[:, 0])
        all_conf.append(conf)
        n_gt_total += n_gt
    if not per_class_ap:
        return {"mAP50": 0.0, "mAP50-95": 0.0, "precision": 0.0, "recall": 0.0}
    ap = np.array(per_class_ap)
    tp0 = np.concatenate(all_tp)
    conf0 = np.concatenate(all_conf)
    order = np.argsort(-conf0, kind="stable")
    tpc = np.cumsum(tp0[order])
    recall = tpc / max(n_gt_total, 1)
    precision = tpc / np.arange(1, len(tpc) + 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    best = int(np.argmax(f1)) if len(f1) else 0
    return {
        "mAP50": round(float(ap[:, 0].mean()), 4),
        "mAP50-95": round(float(ap.mean()), 4),
        "precision": round(float(precision[best]), 4) if len(f1) else 0.0,
        "recall": round(float(recall[best]), 4) if len(f1) else 0.0,
        "score_at_best_f1": round(float(conf0[order][best]), 4) if len(f1) else 0.0,
    }


def evaluate_detector(
    detector: Detector,
    benchmark,
    split: str = "test",
    batch_size: int = 32,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """mAP of `detector` on a benchmark split's street photos (min_score 0.001, up to 100 boxes per photo)."""
    photos = benchmark.photos(split)[:limit] if limit else benchmark.photos(split)
    by_photo: dict[int, list] = {p: [] for p in photos}
    for item in benchmark.items:
        if item.photo_index in by_photo:
            by_photo[item.photo_index].append(item)
    ground_truth = [[(item.box, gt_label(detector, benchmark, item)) for item in by_photo[p]] for p in photos]
    predictions: list[list[Detection]] = []
    bar = tqdm(total=len(photos), desc=f"detect {split}", disable=not progress, unit="photo")
    for start in range(0, len(photos), batch_size):
        chunk = photos[start : start + batch_size]
        images = [benchmark.street_photo(p) for p in chunk]
        predictions.extend(detector.detect_batch(images, min_score=0.001, max_items=100))
        bar.update(len(chunk))
    bar.close()
    result: dict = dict(detection_map(predictions, ground_truth))
    if detector.labels != ["item"]:  # also as a class-agnostic "item" detector, comparable with one
        agnostic = [[Detection(d.box, d.score, "item") for d in dets] for dets in predictions]
        agnostic_gt = [[(box, "item") for box, _ in gts] for gts in ground_truth]
        result["class_agnostic"] = detection_map(agnostic, agnostic_gt)
    result.update({"split": split, "photos": len(photos), "items": sum(len(g) for g in ground_truth)})
    return result


def gt_label(detector: Detector, benchmark, item) -> str:
    if detector.labels == ["item"]:
        return "item"
    from ml.data.fashion_mnist import CLASS_NAMES

    return CLASS_NAMES[int(benchmark.shop_labels[item.shop_index])]


def draw_examples(
    detector: Detector,
    benchmark,
    path: str | Path,
    split: str = "test",
    count: int = 8,
    columns: int = 4,
    min_score: float = 0.25,
) -> Path:
    """A grid of `count` test photos: ground truth in green, detections in red with their scores (Pillow)."""
    photos = benchmark.photos(split)
    picks = [photos[int(i)] for i in np.linspace(0, len(photos) - 1, count).round().astype(int)]
    tiles = []
    for p in picks:
        image = benchmark.street_photo(p)
        draw = ImageDraw.Draw(image)
        for item in benchmark.items:
            if item.photo_index == p:
                draw.rectangle(item.box, outline=(0, 200, 0), width=2)
        for det in detector.detect(image, min_score=min_score):
            draw.rectangle(det.box, outline=(230, 20, 20), width=2)
            text = f"{det.label} {det.score:.2f}"
            x, y = det.box[0], max(0.0, det.box[1] - 11)
            draw.rectangle((x, y, x + 6 * len(text) + 2, y + 11), fill=(230, 20, 20))
            draw.text((x + 1, y), text, fill=(255, 255, 255))
        tiles.append(image)
    side = tiles[0].width
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * side, rows * side + 18), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * side, 18 + (i // columns) * side))
    ImageDraw.Draw(sheet).text(
        (4, 3),
        f"{detector.model_version}: green = ground truth, red = detections (score >= {min_score})",
        fill=(0, 0, 0),
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out

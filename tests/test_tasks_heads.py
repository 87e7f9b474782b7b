"""The tasks for real model heads: binary (sigmoid) segmentation, object detection (YOLO decode, post-NMS outputs,
COCO mAP, agreement with FP32) and sequences (argmax agreement, greedy CTC, CER), against hand-computed values,
pycocotools, the streamed `evaluate` with a fake backend, and one real sweep through the cell."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtbench.harness.core import tasks
from qtbench.harness.core.config import parse_sweep
from qtbench.harness.core.errors import ConfigError, DataError
from qtbench.harness.run.sweep import run_sweep

from models import tiny_sweep

# ---------------------------------------------------------------------------------------------------------
# Binary segmentation
# ---------------------------------------------------------------------------------------------------------
FP_MAP = np.array([[[[0.9, 0.2], [0.6, 0.1]]], [[[0.4, 0.7], [0.3, 0.8]]]])  # masks [[1,0],[1,0]], [[0,1],[0,1]]
Q_MAP = np.array([[[[0.8, 0.55], [0.4, 0.1]]], [[[0.45, 0.75], [0.2, 0.9]]]])  # masks [[1,1],[0,0]], [[0,1],[0,1]]
MASKS = np.array([[[1, 1], [0, 0]], [[1, 1], [1, 0]]])


def test_binary_segmentation_by_hand():
    s = tasks.create("binary_segmentation").scorer("mask")
    s.update(Q_MAP[:1], FP_MAP[:1], MASKS[:1])  # streamed: counts accumulate over batches
    s.update(Q_MAP[1:], FP_MAP[1:], MASKS[1:])
    m = s.result().metrics
    # vs FP32 masks: tp 3, fp 1, fn 1, tn 3
    assert m["mask_agreement"] == pytest.approx(6 / 8) and m["iou_fp"] == pytest.approx(3 / 5)
    # vs labels: image 0 exact (tp 2, tn 2); image 1 tp 1, fp 1, fn 2 → IoU 3/6, F1 6/9, accuracy 5/8
    assert m["iou"] == pytest.approx(0.5) and m["f1"] == pytest.approx(2 / 3)
    assert m["pixel_accuracy"] == pytest.approx(5 / 8)
    assert all(math.isfinite(v) for v in m.values()) and 0 < m["cosine"] < 1


def test_binary_segmentation_logits_threshold_and_rank3():
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    s = tasks.create("binary_segmentation", {"logits": True}).scorer("mask")
    s.update(logit(Q_MAP)[:, 0], logit(FP_MAP)[:, 0], MASKS)  # N×H×W works too
    m = s.result().metrics
    assert m["iou_fp"] == pytest.approx(3 / 5) and m["iou"] == pytest.approx(0.5)
    # threshold 0.85: Q foreground only (1,1,1); FP's only (0,0,0) → no overlap, 2 of 8 pixels disagree
    s = tasks.create("binary_segmentation", {"threshold": 0.85}).scorer("mask")
    s.update(Q_MAP, FP_MAP, None)
    m = s.result().metrics
    assert m["iou_fp"] == 0.0 and m["mask_agreement"] == pytest.approx(6 / 8) and math.isnan(m["iou"])
    # nothing above the threshold anywhere: the masks agree, IoU 1 by definition
    s = tasks.create("binary_segmentation", {"threshold": 0.95}).scorer("mask")
    s.update(Q_MAP, FP_MAP, np.zeros((2, 2, 2), int))
    m = s.result().metrics
    assert m["iou_fp"] == 1.0 and m["iou"] == 1.0 and m["f1"] == 1.0 and m["pixel_accuracy"] == 1.0


def test_binary_segmentation_tells_how_to_fix_bad_inputs():
    s = tasks.create("binary_segmentation").scorer("mask")
    with pytest.raises(DataError, match="logits: true"):
        s.update(Q_MAP * 8 - 4, FP_MAP * 8 - 4, None)
    with pytest.raises(DataError, match=r"mask > 0"):
        s.update(Q_MAP, FP_MAP, MASKS * 255)
    ign = tasks.create("binary_segmentation", {"ignore_index": 255}).scorer("mask")
    ign.update(Q_MAP, FP_MAP, np.where(MASKS == 0, 255, MASKS))  # only foreground labelled: no fp counted
    assert ign.result().metrics["iou"] == pytest.approx(3 / 5)  # tp 3 (img 0: 2, img 1: 1), fn 2
    with pytest.raises(DataError, match="task binary_segmentation"):
        tasks.create("segmentation").scorer("mask").update(Q_MAP, FP_MAP, None)
    with pytest.raises(ConfigError, match=r"task\.threshold: expected a number in \(0\.0, 1\.0\)"):
        tasks.create("binary_segmentation", {"threshold": 1.5})
    with pytest.raises(ConfigError, match=r"task\.thresh: unknown option of task 'binary_segmentation'"):
        tasks.create("binary_segmentation", {"thresh": 0.3})


def test_one_channel_probability_maps_are_inferred_as_binary_segmentation():
    t = tasks.infer_task(4, FP_MAP, MASKS)
    assert t.name == "binary_segmentation" and t.options["labels"] is True
    assert tasks.infer_task(4, FP_MAP, np.zeros(2, int)).options["labels"] is False  # class labels: not masks
    assert tasks.infer_task(4, FP_MAP * 3, None).name == "tensor"  # beyond [0, 1]: logits? depth? not guessed
    assert tasks.infer_task(4, np.zeros((2, 3, 2, 2)), None).name == "tensor"
    assert tasks.infer_task(2, np.zeros((2, 3)), None).name == "classification"


# ---------------------------------------------------------------------------------------------------------
# Detection: geometry, decoding, NMS
# ---------------------------------------------------------------------------------------------------------
def test_boxes_and_iou_by_hand():
    assert tasks.boxes_to_xyxy(np.array([[10, 10, 4, 6]]), "cxcywh").tolist() == [[8, 7, 12, 13]]
    assert tasks.boxes_to_xyxy(np.array([[10, 10, 4, 6]]), "xywh").tolist() == [[10, 10, 14, 16]]
    iou = tasks.box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 7.2], [5, 0, 15, 10], [20, 20, 20, 30]]))
    assert iou[0].tolist() == pytest.approx([0.72, 50 / 150, 0.0])  # a zero-area box has IoU 0, not NaN


# One image, C = 2, three live anchors: 0 and 1 overlap (IoU 14/18 = 0.778) and both prefer class 0.
V8 = np.array(
    [
        [10, 10.5, 30],  # cx
        [10, 10, 30],  # cy
        [4, 4, 2],  # w
        [4, 4, 6],  # h
        [0.9, 0.8, 0.2],  # class 0
        [0.1, 0.3, 0.6],  # class 1
    ]
)[None]
V8 = np.concatenate([V8, np.zeros((1, 6, 5))], axis=2)  # 5 empty anchors: real heads have A ≫ 4 + C


def test_yolov8_decode_with_class_wise_nms():
    kw = {"score_threshold": 0.25, "max_detections": 100, "nms_iou": 0.7}
    (dets,) = tasks.decode_yolo(V8, "yolov8", **kw)
    assert dets.tolist() == [[8, 8, 12, 12, 0.9, 0], [29, 27, 31, 33, 0.6, 1]]  # anchor 1 suppressed by anchor 0
    (same,) = tasks.decode_yolo(np.swapaxes(V8, 1, 2), "yolov8", **kw)  # N×A×(4+C) is read the same
    assert np.array_equal(dets, same)
    (loose,) = tasks.decode_yolo(V8, "yolov8", **{**kw, "nms_iou": 0.8})
    assert len(loose) == 3 and loose[1].tolist() == [8.5, 8, 12.5, 12, 0.8, 0]
    # multi-label: anchor 1 also gives a class-1 box (0.3), which no class-1 box suppresses
    (multi,) = tasks.decode_yolo(V8, "yolov8", multi_label=True, **kw)
    assert multi[:, 4].tolist() == [0.9, 0.6, 0.3] and multi[2, 5] == 1
    (top1,) = tasks.decode_yolo(V8, "yolov8", **{**kw, "max_detections": 1})
    assert top1.tolist() == [[8, 8, 12, 12, 0.9, 0]]
    # logits: the same head before its sigmoid decodes to the same boxes
    logit = V8.copy()
    prob = np.clip(V8[:, 4:], 1e-9, 1 - 1e-9)
    logit[:, 4:] = np.log(prob / (1 - prob))
    (from_logits,) = tasks.decode_yolo(logit, "yolov8", logits=True, **kw)
    assert np.allclose(from_logits, dets)


def test_yolov5_decode_multiplies_objectness():
    head = np.array([[[10, 10, 4, 4, 0.5, 0.9, 0.1], [30, 30, 2, 2, 0.0005, 1.0, 0.0]]])
    (dets,) = tasks.decode_yolo(head, "yolov5", score_threshold=0.001, max_detections=100, nms_iou=0.7)
    assert dets.tolist() == [[8, 8, 12, 12, 0.45, 0]]


def test_post_nms_rows_and_separate_outputs():
    rows = np.array([[[0, 0, 10, 10, 0.3, 1], [0, 0, 0, 0, 0, 0], [5, 5, 8, 8, 0.9, 2], [1, 1, 2, 2, 5e-4, 0]]])
    (dets,) = tasks.decode_post_nms(rows, None, None, None, score_threshold=0.001, max_detections=100)
    assert dets.tolist() == [[5, 5, 8, 8, 0.9, 2], [0, 0, 10, 10, 0.3, 1]]  # best first; padding dropped
    boxes, scores, classes = rows[..., :4], rows[..., 4], rows[..., 5].astype(np.int32)
    (first,) = tasks.decode_post_nms(boxes, scores, classes, np.array([[1]]), score_threshold=0.001, max_detections=9)
    assert first.tolist() == [[0, 0, 10, 10, 0.3, 1]]  # count = 1: rows after it are padding
    with pytest.raises(DataError, match="N×K×6"):
        tasks.decode_post_nms(boxes, None, None, None, score_threshold=0.0, max_detections=9)


# ---------------------------------------------------------------------------------------------------------
# Detection: COCO mAP
# ---------------------------------------------------------------------------------------------------------
def test_coco_map_by_hand():
    truth = [np.array([[0, 0, 0, 10, 10], [0, 20, 0, 30, 10]], float)]
    # 0.9 hits box 1 exactly, 0.8 hits nothing, 0.7 hits box 2 at IoU 0.72
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0], [20, 0, 30, 7.2, 0.7, 0]], float)]
    ap = tasks.coco_map(dets, truth)
    # IoU ≤ 0.70 (5 thresholds): precision 1, ½, ⅔ at recall ½, ½, 1 → monotone 1, ⅔, ⅔: recall points
    # 0..0.50 (51) read 1, 0.51..1 (50) read ⅔. Above 0.70 the 0.7 box misses: 51 points of 1, the rest 0.
    assert ap[:5] == pytest.approx([(51 + 50 * 2 / 3) / 101] * 5)
    assert ap[5:] == pytest.approx([51 / 101] * 5)
    # a second class with truth but no detection scores 0 and halves the mean; a class without truth is left out
    truth2 = [np.vstack([truth[0], [[1, 0, 0, 5, 5]]])]
    dets2 = [np.vstack([dets[0], [[0, 0, 5, 5, 0.5, 2]]])]
    assert tasks.coco_map(dets2, truth2)[0] == pytest.approx(ap[0] / 2)
    assert np.isnan(tasks.coco_map(dets, [np.zeros((0, 5))])).all()
    assert tasks.coco_map([np.zeros((0, 6))], truth).tolist() == [0.0] * 10


def _random_case(rng: np.random.Generator, images: int, classes: int):
    truth, dets = [], []
    for _ in range(images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (m, 2))
        g = np.column_stack([rng.integers(0, classes, m), xy, xy + rng.uniform(4, 30, (m, 2))])
        d = []
        for row in g:  # jittered copies (sometimes the wrong class), and some false positives
            for _ in range(int(rng.integers(0, 3))):
                box = row[1:] + rng.normal(0, 3, 4)
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                cls = row[0] if rng.random() < 0.8 else rng.integers(0, classes)
                d.append([*box, rng.random(), cls])
        for _ in range(int(rng.integers(0, 4))):
            xy0 = rng.uniform(0, 80, 2)
            d.append([*xy0, *(xy0 + rng.uniform(4, 30, 2)), rng.random(), rng.integers(0, classes)])
        truth.append(g.reshape(-1, 5))
        dets.append(np.array(d, float).reshape(-1, 6))
    return truth, dets


def _pycocotools_map(truth, dets, classes: int, max_det: int) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    boxes = [(i, g) for i, t in enumerate(truth) for g in t]
    anns = [
        {"id": k + 1, "image_id": i + 1, "category_id": int(g[0]) + 1, "bbox": xywh(g[1:]), "iscrowd": 0}
        for k, (i, g) in enumerate(boxes)
    ]
    for a in anns:
        a["area"] = a["bbox"][2] * a["bbox"][3]
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1} for i in range(len(truth))],
        "annotations": anns,
        "categories": [{"id": c + 1} for c in range(classes)],
    }
    gt.createIndex()
    res = [
        {"image_id": i + 1, "category_id": int(d[5]) + 1, "bbox": xywh(d[:4]), "score": float(d[4])}
        for i, dd in enumerate(dets)
        for d in dd
    ]
    ev = COCOeval(gt, gt.loadRes(res), "bbox")
    ev.params.maxDets = [max_det]  # (pycocotools sorts the list and reads its last entry)
    ev.evaluate()
    ev.accumulate()
    p = ev.eval["precision"][:, :, :, 0, -1]  # T×R×K, area "all", the last maxDets
    return float(np.mean(p[0][p[0] > -1])), float(np.mean(p[p > -1]))


@pytest.mark.parametrize("seed", range(12))
def test_coco_map_matches_pycocotools_on_random_cases(seed: int, capsys):
    pytest.importorskip("pycocotools", reason="pycocotools (qtbench[test]) cross-checks the numpy mAP")
    rng = np.random.default_rng(seed)
    truth, dets = _random_case(rng, images=int(rng.integers(2, 8)), classes=3)
    if not any(len(t) for t in truth) or not any(len(d) for d in dets):
        truth[0] = np.array([[0, 1, 1, 20, 20]], float)
        dets[0] = np.array([[2, 1, 21, 19, 0.5, 0]], float)
    if seed % 2:  # ties: scores to one decimal, integer boxes (exact IoU ties), as pycocotools breaks them
        for t, d in zip(truth, dets, strict=True):
            t[:, 1:], d[:, :4], d[:, 4] = np.round(t[:, 1:]), np.round(d[:, :4]), np.round(d[:, 4], 1)
    max_det = (1, 3, 100)[seed % 3]  # per image and class, as pycocotools caps
    ap = tasks.coco_map(dets, truth, max_detections=max_det)
    ref50, ref = _pycocotools_map(truth, dets, 3, max_det)
    capsys.readouterr()
    assert ap[0] == pytest.approx(ref50, abs=1e-12) and float(np.mean(ap)) == pytest.approx(ref, abs=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Detection: the scorer, agreement with FP32, options
# ---------------------------------------------------------------------------------------------------------
FP_ROWS = np.array([[[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [0, 0, 0, 0, 0, 0]]])
Q_ROWS = np.array([[[0, 0, 10, 8, 0.85, 0], [20, 20, 30, 30, 0.7, 2], [50, 50, 60, 60, 0.1, 0]]])


def test_detection_agreement_with_fp32_by_hand():
    s = tasks.create("detection", {"format": "nms"}).scorer("dets")
    s.update(Q_ROWS, FP_ROWS, np.array([[[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [-1, 0, 0, 0, 0]]]))
    m = s.result().metrics
    # above 0.25: FP {A c0, B c1}, Q {A' c0 at IoU 0.8 with A, B' with the wrong class}
    assert m["det_agreement"] == 0.5 and m["det_precision_fp"] == 0.5 and m["matched_iou"] == pytest.approx(0.8)
    assert m["dets_per_image"] == 2 and m["dets_per_image_fp"] == 2
    # FP32 boxes as truth: class 0 AP 1 (A' first, then a miss), class 1 AP 0 → 0.5
    assert m["map50_fp"] == pytest.approx(0.5)
    # vs labels (= the FP boxes): class 0 hits at IoU 0.8 (AP 1 up to 0.80: 7 thresholds), class 1 missed
    assert m["map50"] == pytest.approx(0.5) and m["map50_95"] == pytest.approx(7 / 10 / 2)
    assert all(math.isfinite(v) for v in m.values())


def test_detection_options_and_errors():
    with pytest.raises(ConfigError, match=r"task\.format: expected one of auto, nms, yolov8, yolov5"):
        tasks.create("detection", {"format": "ssd"})
    with pytest.raises(ConfigError, match=r"task\.classes: needs `scores` too"):
        tasks.create("detection", {"classes": "cls"})
    with pytest.raises(ConfigError, match=r"task\.scores: .*set format: nms"):
        tasks.create("detection", {"format": "yolov8", "scores": "s"})
    with pytest.raises(ConfigError, match=r"task\.max_detections: expected an integer ≥ 1"):
        tasks.create("detection", {"max_detections": 0})
    with pytest.raises(ConfigError, match=r"task\.iou: unknown option of task 'detection'"):
        tasks.create("detection", {"iou": 0.5})
    with pytest.raises(DataError, match="set the task's `format`: nms"):  # N×300×6 could be a 1-class YOLOv5
        tasks.create("detection").scorer("o").update(np.zeros((1, 300, 6)), np.zeros((1, 300, 6)), None)
    with pytest.raises(DataError, match=r"N×M×5 \[class, x1, y1, x2, y2\]"):
        tasks.create("detection").scorer("o").update(V8, V8, np.zeros(1, int))
    with pytest.raises(DataError, match=r"label class 5 is outside \[0, 1\]"):
        tasks.create("detection").scorer("o").update(V8, V8, np.array([[[5, 0, 0, 1, 1]]]))
    # integer labels scaled: 100 × coordinates
    s = tasks.create("detection", {"label_scale": 100}).scorer("o")
    s.update(V8, V8, np.array([[[0, 800, 800, 1200, 1200]]]))
    m = s.result().metrics
    assert m["map50_95"] == pytest.approx(1.0) and m["det_agreement"] == 1.0 and m["sqnr_db"] == math.inf


def test_plan_adds_companion_outputs_and_checks_them():
    cfg = {"boxes": {"name": "detection", "scores": "scores", "classes": "classes"}}
    plan = tasks.plan_outputs(cfg, None, ["boxes", "scores", "classes", "extra"])
    assert [(o, i) for o, i, _t in plan.scored] == [("boxes", 0), ("scores", 1), ("classes", 2)]
    assert isinstance(plan.scored[1][2], tasks.CompanionOutput) and plan.ignored == ["extra"]
    # a companion that is also scored on its own stays scored (once)
    both = tasks.plan_outputs({**cfg, "scores": "tensor"}, None, ["boxes", "scores", "classes"])
    assert [o for o, _i, _t in both.scored] == ["boxes", "scores", "classes"]
    assert both.scored[1][2].name == "tensor"
    with pytest.raises(ConfigError, match=r"models\[\]\.task\.boxes\.classes: 'cls' is not an output"):
        tasks.plan_outputs({"boxes": {**cfg["boxes"], "classes": "cls"}}, None, ["boxes", "scores", "classes"])
    with pytest.raises(ConfigError, match="names the scored output 'boxes' itself"):
        tasks.plan_outputs({"boxes": {"name": "detection", "scores": "boxes"}}, None, ["boxes", "scores"])


class FakeEvaluation:
    """What `evaluate` reads of a dataset: length, batches, labels, a source name."""

    def __init__(self, n: int, labels: np.ndarray | None) -> None:
        self.x, self.labels, self.source = np.arange(n, dtype=np.float32)[:, None], labels, "fake.npz"

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {"input": self.x[start:stop]}


def test_evaluate_feeds_companion_outputs_to_the_detection_scorer():
    n = 3
    fp = np.repeat(FP_ROWS, n, axis=0)
    q = np.repeat(Q_ROWS, n, axis=0)
    ref = {0: fp[..., :4], 1: fp[..., 4], 2: fp[..., 5].astype(np.int64), 3: np.zeros((n, 2))}
    outs = {0: q[..., :4], 1: q[..., 4], 2: q[..., 5].astype(np.int64), 3: np.ones((n, 2))}
    seen = []

    def infer(feeds):  # a fake backend: the quantized outputs of the samples asked for, in output order
        idx = feeds["input"][:, 0].astype(int)
        seen.append(len(idx))
        return [outs[i][idx] for i in range(4)]

    cfg = {"name": "detection", "scores": "det_scores", "classes": "det_classes"}
    plan = tasks.plan_outputs(cfg, None, ["det_boxes", "det_scores", "det_classes", "proto"])
    ev = tasks.evaluate(infer, FakeEvaluation(n, None), plan, ref, batch=2)
    assert seen == [2, 1] and list(ev.results) == ["det_boxes"]
    row = ev.row_fields()
    assert row["task"] == "detection" and json.loads(row["outputs_ignored"]) == ["proto"]
    m = json.loads(row["output_metrics"])["det_boxes"]
    assert m["scores"] == "det_scores" and m["det_agreement"] == 0.5 and m["matched_iou"] == pytest.approx(0.8)
    assert m["map50"] is None  # no labels: NaN in the row, null in the JSON


def test_evaluate_infers_binary_segmentation_and_uses_mask_labels():
    def infer(feeds):
        return [Q_MAP[feeds["input"][:, 0].astype(int)]]

    plan = tasks.plan_outputs(None, None, ["mask"])
    ev = tasks.evaluate(infer, FakeEvaluation(2, MASKS), plan, {0: FP_MAP}, batch=1)
    task, res = ev.results["mask"]
    assert task.name == "binary_segmentation" and res.metrics["iou"] == pytest.approx(0.5)
    row = ev.row_fields()
    assert row["task_source"] == "inferred" and row["mask_agreement"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------------
def onehot_steps(ids: list[list[int]], classes: int = 4) -> np.ndarray:
    return np.eye(classes)[np.array(ids)] * 3.0


FP_IDS = [[1, 1, 0, 1, 2, 2, 0, 0, 3], [2, 2, 2, 0, 0, 0, 0, 0, 0]]  # CTC: "1 1 2 3", "2"
Q_IDS = [[1, 0, 0, 1, 2, 2, 2, 0, 3], [2, 3, 3, 0, 0, 0, 0, 0, 0]]  # CTC: "1 1 2 3", "2 3"


def test_ctc_greedy_and_edit_distance():
    assert [s.tolist() for s in tasks.ctc_greedy(onehot_steps(FP_IDS))] == [[1, 1, 2, 3], [2]]
    assert [s.tolist() for s in tasks.ctc_greedy(onehot_steps(FP_IDS), blank=2)] == [[1, 0, 1, 0, 3], [0]]
    assert tasks.edit_distance(list(b"kitten"), list(b"sitting")) == 3
    assert tasks.edit_distance([], [1, 2]) == 2 and tasks.edit_distance([1, 2, 3], [1, 2, 3]) == 0

    def slow(a, b):  # the textbook table
        d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
        return d[-1][-1]

    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.integers(0, 3, rng.integers(0, 9)), rng.integers(0, 3, rng.integers(0, 9))
        assert tasks.edit_distance(a, b) == slow(list(a), list(b))


def test_ctc_sequence_metrics_by_hand():
    s = tasks.create("sequence", {"ctc": True}).scorer("logits")
    labels = np.array([[1, 2, 3, -1], [3, -1, -1, -1]])
    s.update(onehot_steps(Q_IDS), onehot_steps(FP_IDS), labels)
    m = s.result().metrics
    assert m["token_agreement"] == pytest.approx(14 / 18)  # steps 1, 6 of sample 0 and 1, 2 of sample 1 differ
    assert m["sequence_agreement"] == 0.5  # sample 0's string is unchanged
    assert m["cer_fp"] == pytest.approx(1 / 5)  # one insertion over 4 + 1 FP characters
    # vs labels: "1 1 2 3" vs "1 2 3" (1 edit), "2 3" vs "3" (1 edit) over 4 label characters
    assert m["cer"] == pytest.approx(2 / 4) and m["sequence_accuracy"] == 0.0
    assert "token_accuracy" not in m and all(math.isfinite(v) for v in m.values())


def test_per_step_sequence_metrics_and_label_checks():
    s = tasks.create("sequence").scorer("tags")
    labels = np.array([[1, 0, 0, 1, 2, 2, 2, -1, -1], [2, 2, 2, 0, 0, 0, 0, 0, 1]])
    s.update(onehot_steps(Q_IDS), onehot_steps(FP_IDS), labels)
    m = s.result().metrics
    assert m["token_agreement"] == pytest.approx(14 / 18) and m["sequence_agreement"] == 0.0
    # labelled steps: sample 0 all 7 right; sample 1: steps 1, 2 and 8 wrong → 13 of 16
    assert m["token_accuracy"] == pytest.approx(13 / 16) and m["sequence_accuracy"] == 0.5
    with pytest.raises(DataError, match=r"N×9 per-step classes"):
        s.update(onehot_steps(Q_IDS), onehot_steps(FP_IDS), labels[:, :4])
    with pytest.raises(DataError, match="not the blank 0"):
        tasks.create("sequence", {"ctc": True}).scorer("x").update(onehot_steps(Q_IDS), onehot_steps(FP_IDS), labels)
    with pytest.raises(DataError, match="transpose a time-major"):
        s.update(np.zeros((2, 3)), np.zeros((2, 3)), None)
    with pytest.raises(ConfigError, match=r"task\.blank: expected an integer ≥ 0"):
        tasks.create("sequence", {"blank": -1})


def test_quality_summary_of_the_new_tasks():
    class Rec:
        task = "detection"
        output_metrics = json.dumps({"boxes": {"det_agreement": 0.5, "map50": None}})

    assert tasks.quality_summary(Rec()) == "det_agree=50.00% mAP50=–"


# ---------------------------------------------------------------------------------------------------------
# Through a real sweep: a post-NMS detector with separate outputs, scored by the cell
# ---------------------------------------------------------------------------------------------------------
def post_nms_model(path: Path, k: int = 4, classes: int = 3) -> Path:
    """input N×1×8×8 → boxes N×K×4 (cx, cy, w, h ≥ 0), scores N×K (sigmoid), classes N×K (argmax), count N×1."""
    rng = np.random.default_rng(5)
    wb = rng.normal(0, 1.0, (64, 4 * k)).astype(np.float32)
    ws = rng.normal(0, 0.5, (64, k)).astype(np.float32)
    wc = rng.normal(0, 0.5, (64, k * classes)).astype(np.float32)
    const = [
        numpy_helper.from_array(wb, "wb"),
        numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(wc, "wc"),
        numpy_helper.from_array(np.array([0, k, 4], np.int64), "shape_b"),
        numpy_helper.from_array(np.array([0, k, classes], np.int64), "shape_c"),
        numpy_helper.from_array(np.array([[k]], np.int64), "k"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([30.0], np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("MatMul", ["f", "wb"], ["b"]),
        helper.make_node("Reshape", ["b", "shape_b"], ["br"]),
        helper.make_node("Abs", ["br"], ["ba"]),
        helper.make_node("Mul", ["ba", "scale"], ["boxes"]),
        helper.make_node("MatMul", ["f", "ws"], ["s"]),
        helper.make_node("Sigmoid", ["s"], ["scores"]),
        helper.make_node("MatMul", ["f", "wc"], ["c"]),
        helper.make_node("Reshape", ["c", "shape_c"], ["cr"]),
        helper.make_node("ArgMax", ["cr"], ["classes"], axis=2, keepdims=0),
        helper.make_node("Shape", ["input"], ["in_shape"]),
        helper.make_node("Slice", ["in_shape", "zero", "one"], ["n"]),
        helper.make_node("Concat", ["n", "one"], ["count_shape"], axis=0),
        helper.make_node("Expand", ["k", "count_shape"], ["count"]),
    ]
    graph = helper.make_graph(
        nodes,
        "post_nms",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", k, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, ["N", k]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["N", 1]),
        ],
        const,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_post_nms_detector_through_a_sweep(tmp_path: Path):
    model = post_nms_model(tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    x = rng.random((24, 1, 8, 8), dtype=np.float32)
    labels = np.full((24, 2, 5), -1, np.int64)
    labels[:, 0] = [0, 10, 10, 40, 40]
    np.savez(tmp_path / "det_eval.npz", input=x, labels=labels)
    task = {
        "name": "detection",
        "format": "nms",
        "box_format": "cxcywh",
        "scores": "scores",
        "classes": "classes",
        "count": "count",
    }
    cfg = tiny_sweep(
        tmp_path,
        models=[{"path": str(model), "name": "det", "task": task}],
        evaluation={"path": str(tmp_path / "det_eval.npz")},
        run={"results_dir": str(tmp_path / "results"), "isolate": False},
    )
    df = run_sweep(cfg).set_index("spec_id")
    assert set(df["status"]) == {"ok"}, df["status_message"].tolist()
    fp, q8 = df.loc["fp32"], df.loc["int8-static-pc-wsym-minmax"]
    assert fp["task"] == "detection" and json.loads(fp["outputs"]) == ["boxes"]
    assert json.loads(fp["outputs_ignored"]) == []  # scores, classes and count are read by the task
    om = json.loads(fp["output_metrics"])["boxes"]
    assert om["det_agreement"] == 1.0 and om["map50_fp"] == 1.0 and 0.0 <= om["map50"] <= 1.0
    q = json.loads(q8["output_metrics"])["boxes"]
    assert 0.5 < q["det_agreement"] <= 1.0 and 0.5 < q["matched_iou"] <= 1.0 and q["dets_per_image_fp"] > 0
    assert math.isfinite(q["sqnr_db"]) and q8["sqnr_db"] == q["sqnr_db"]  # the flat columns hold the first output's
    # config errors name the key at load time
    cfg["models"][0]["task"] = {**task, "nms": 0.5}
    with pytest.raises(ConfigError, match=r"models\[0\]\.task\.nms: unknown option of task 'detection'"):
        parse_sweep(cfg)

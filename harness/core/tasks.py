"""Tasks own their metrics: how one model output is compared with labels and with the FP32 reference output.

A model entry's ``task:`` is a task name for its scored output (``task: segmentation``) or a mapping per output
(``task: {logits: classification, embed: {name: tensor, retrieval_k: 5}}``). Without one, the zoo's ONNX metadata
(``qtbench.task``) is used when present, else the task is inferred for the scored output (``output:`` or the first
one): a rank-2 output is ``classification``, an N×1×H×W map with FP32 values in [0, 1] ``binary_segmentation``,
anything else ``tensor``; the row states where its task came from. Outputs without a task are not scored and
every row lists them in ``outputs_ignored``.

Built-in tasks: ``classification``, ``segmentation``, ``binary_segmentation``, ``detection``, ``sequence``,
``tensor`` (user guide with every option and metric: docs/tasks.md). Third parties register theirs through the
``qtbench.tasks`` entry-point group (``mytask = "my_pkg.tasks:MyTask"``, a :class:`Task` subclass).

A task may read other outputs beside its own (:meth:`Task.companions`, e.g. a post-NMS detector's separate
``scores``/``classes`` outputs): the plan lists them in ``OutputPlan.scored`` as :class:`CompanionOutput` entries,
so their FP32 references are computed like any scored output's, and :func:`evaluate` hands their batches to the
owner's :meth:`Scorer.update_multi` instead of scoring them alone.

Scoring streams: a task's :class:`Scorer` sees one batch at a time (quantized output, FP32 output, labels), so
evaluation sets larger than memory work; the FP32 outputs are computed once per (model, data, output) and cached
as memory-mapped ``.npy`` files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.harness.core import metrics
from qtbench.harness.core.errors import ConfigError, DataError, QtbenchError
from qtbench.harness.core.zoo import META_TASK

ENTRY_POINT_GROUP = "qtbench.tasks"
BUILTIN: dict[str, str] = {
    "classification": "qtbench.harness.core.tasks:ClassificationTask",
    "segmentation": "qtbench.harness.core.tasks:SegmentationTask",
    "tensor": "qtbench.harness.core.tasks:TensorTask",
    "binary_segmentation": "qtbench.harness.core.tasks:BinarySegmentationTask",
    "detection": "qtbench.harness.core.tasks:DetectionTask",
    "sequence": "qtbench.harness.core.tasks:SequenceTask",
}


class NonFiniteOutput(QtbenchError):
    """A backend (or the FP32 reference) produced NaN/Inf: the cell fails instead of reporting NaN metrics."""


@dataclass
class TaskResult:
    """What a scorer returns: metric name → value, plus optional per-sample predictions and reliability bins."""

    metrics: dict[str, float]
    predictions: np.ndarray | None = None  # per-sample class ids (stored beside the rows, used by `check`)
    reliability: dict[str, list[float | None]] | None = None  # 15-bin count/confidence/accuracy


class Scorer(ABC):
    """Accumulates one output's comparison over batches."""

    @abstractmethod
    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None: ...

    @abstractmethod
    def result(self) -> TaskResult: ...

    def update_multi(
        self,
        q: np.ndarray,
        ref: np.ndarray,
        labels: np.ndarray | None,
        q_more: dict[str, np.ndarray],
        ref_more: dict[str, np.ndarray],
    ) -> None:
        """One batch of a task that reads companion outputs too (``Task.companions``): ``q_more``/``ref_more`` map
        each companion role (e.g. ``scores``) to that output's batch. Only such tasks' scorers implement it."""
        raise TypeError(f"{type(self).__name__} scores one output; its task must not name companion outputs")


class Task(ABC):
    """A task with its options; ``OPTIONS`` maps each option to (default, doc) and unknown options are refused."""

    name: ClassVar[str] = ""
    calibrated: ClassVar[bool] = False  # has calibration metrics (a reliability diagram) when labels exist
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {}

    def __init__(self, where: str = "task", **options: Any) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            allowed = ", ".join(self.OPTIONS) or "none"
            raise ConfigError(f"{where}.{unknown[0]}: unknown option of task {self.name!r}; allowed: {allowed}")
        self.options = {k: options.get(k, d) for k, (d, _doc) in self.OPTIONS.items()}
        self.where = where

    def spec(self) -> dict[str, Any]:
        """The task and the options that differ from the defaults (what a row records)."""
        changed = {k: v for k, v in self.options.items() if v != self.OPTIONS[k][0]}
        return {"task": self.name, **changed}

    @abstractmethod
    def scorer(self, output: str) -> Scorer: ...

    def companions(self) -> dict[str, str]:
        """Other model outputs this task reads beside its own, role → output name (e.g. a post-NMS detector's
        ``scores`` and ``classes``). The plan adds them so their FP32 references exist; they are not scored alone."""
        return {}


# ---------------------------------------------------------------------------------------------------------
# Built-in tasks
# ---------------------------------------------------------------------------------------------------------
class ClassificationTask(Task):
    """Logits N×C (higher ranks are flattened to N×·, as before tasks existed): qtbench.harness.core.metrics.quality."""

    name = "classification"
    calibrated = True
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {"labels": (True, "score against the evaluation labels")}

    def scorer(self, output: str) -> Scorer:
        return _ClassificationScorer(output, bool(self.options["labels"]))


class _ClassificationScorer(Scorer):
    def __init__(self, output: str, use_labels: bool) -> None:
        self.output, self.use_labels = output, use_labels
        self.q: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        self.q.append(np.asarray(q).reshape(len(q), -1))
        self.ref.append(np.asarray(ref).reshape(len(ref), -1))
        if labels is not None and self.use_labels:
            labels = np.asarray(labels)
            if labels.ndim != 1:
                raise DataError(
                    f"output {self.output!r} (classification) needs one class label per sample, but the evaluation "
                    f"labels have shape {labels.shape}; set task {{labels: false}} for this output"
                )
            self.labels.append(labels)

    def result(self) -> TaskResult:
        q, ref = np.concatenate(self.q), np.concatenate(self.ref)
        labels = np.concatenate(self.labels).astype(np.int64) if self.labels else None
        out = metrics.quality(q, ref, labels)
        reliability = None
        if labels is not None:
            out["fp_top1"] = metrics.topk_accuracy(ref, labels, 1)
            bins = metrics.calibration_bins(metrics.softmax(q), labels)
            reliability = {k: [None if np.isnan(v) else float(v) for v in arr] for k, arr in bins.items()}
        return TaskResult(out, np.argmax(q, axis=1), reliability)


class SegmentationTask(Task):
    """Per-pixel class logits N×C×H×W: mIoU and pixel accuracy vs masks (N×H×W labels), mask agreement and mIoU
    vs the FP32 model's own masks (always), pixel ECE over a seeded pixel sample."""

    name = "segmentation"
    calibrated = True
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "labels": (True, "score against the evaluation masks"),
        "ignore_index": (None, "mask value left out of every metric (e.g. 255 for VOC borders)"),
        "max_pixels": (65536, "pixels sampled per batch for the pixel ECE"),
    }

    def scorer(self, output: str) -> Scorer:
        return _SegmentationScorer(output, self.options)


class _SegmentationScorer(Scorer):
    def __init__(self, output: str, options: dict[str, Any]) -> None:
        self.output, self.opt = output, options
        self.cm_labels: np.ndarray | None = None
        self.cm_fp: np.ndarray | None = None
        self.probs: list[np.ndarray] = []
        self.pixel_labels: list[np.ndarray] = []
        self.sig = self.noise = 0.0
        self.max_abs = 0.0
        self.batches = 0

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        q, ref = np.asarray(q), np.asarray(ref)
        if q.ndim != 4:
            raise DataError(f"output {self.output!r} (segmentation) must be N×C×H×W class logits, got shape {q.shape}")
        c = q.shape[1]
        if c == 1:
            raise DataError(
                f"output {self.output!r} (segmentation) has one channel: a sigmoid/logit map, where argmax is always "
                "0; score it with task binary_segmentation (add `logits: true` if the map is not in [0, 1])"
            )
        pq, pf = np.argmax(q, axis=1), np.argmax(ref, axis=1)
        cm_fp = metrics.confusion_matrix(pq, pf, c)
        self.cm_fp = cm_fp if self.cm_fp is None else self.cm_fp + cm_fp
        d = q.astype(np.float64) - ref
        self.sig += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))))
        if labels is not None and self.opt["labels"]:
            labels = np.asarray(labels)
            if labels.shape != pq.shape:
                raise DataError(
                    f"output {self.output!r} (segmentation) predicts masks of shape {pq.shape[1:]} but the "
                    f"evaluation labels have shape {labels.shape[1:]}; give one N×H×W mask per sample, or set "
                    "task {labels: false}"
                )
            try:
                cm = metrics.confusion_matrix(pq, labels, c, self.opt["ignore_index"])
            except ValueError as exc:
                raise DataError(f"output {self.output!r}: {exc}") from None
            self.cm_labels = cm if self.cm_labels is None else self.cm_labels + cm
            idx = metrics.sample_pixels(q, int(self.opt["max_pixels"]), seed=self.batches)
            flat_labels = labels.reshape(-1)[idx]
            keep = flat_labels != self.opt["ignore_index"] if self.opt["ignore_index"] is not None else slice(None)
            self.probs.append(metrics.softmax(metrics.pixels_as_rows(q, idx))[keep])
            self.pixel_labels.append(flat_labels[keep].astype(np.int64))
        self.batches += 1

    def result(self) -> TaskResult:
        nan = float("nan")
        out = {
            "miou_fp": metrics.mean_iou(self.cm_fp),
            "mask_agreement": metrics.pixel_accuracy(self.cm_fp),
            "sqnr_db": _sqnr(self.sig, self.noise),
            "max_abs_err": self.max_abs,
            "miou": nan,
            "pixel_accuracy": nan,
            "pixel_ece": nan,
        }
        reliability = None
        if self.cm_labels is not None:
            out["miou"] = metrics.mean_iou(self.cm_labels)
            out["pixel_accuracy"] = metrics.pixel_accuracy(self.cm_labels)
            probs, labels = np.concatenate(self.probs), np.concatenate(self.pixel_labels)
            if len(labels):
                out["pixel_ece"] = metrics.ece_mce(probs, labels)[0]
                bins = metrics.calibration_bins(probs, labels)
                reliability = {k: [None if np.isnan(v) else float(v) for v in arr] for k, arr in bins.items()}
        return TaskResult(out, None, reliability)


class TensorTask(Task):
    """Any tensor (embeddings, features, probability masks, detector heads) against the FP32 output: SQNR,
    cosine, max |Δ|, relative L2; optional top-k retrieval agreement for N×D embeddings."""

    name = "tensor"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "retrieval_k": (None, "k of the nearest-neighbour retrieval agreement (embeddings; keeps them in memory)"),
    }

    def scorer(self, output: str) -> Scorer:
        k = self.options["retrieval_k"]
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"{self.where}.retrieval_k: expected a positive integer, got {k!r}")
        return _TensorScorer(output, k)


class _TensorScorer(Scorer):
    def __init__(self, output: str, k: int | None) -> None:
        self.output, self.k = output, k
        self.sig = self.noise = self.max_abs = 0.0
        self.cos: list[np.ndarray] = []
        self.rel: list[np.ndarray] = []
        self.q: list[np.ndarray] = []
        self.ref: list[np.ndarray] = []

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        q, ref = np.asarray(q), np.asarray(ref)
        d = q.astype(np.float64) - ref
        self.sig += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        self.cos.append(metrics.per_sample_cosine(q, ref))
        self.rel.append(metrics.per_sample_rel_l2(q, ref))
        if self.k:
            self.q.append(q.reshape(len(q), -1))
            self.ref.append(ref.reshape(len(ref), -1))

    def result(self) -> TaskResult:
        out = {
            "sqnr_db": _sqnr(self.sig, self.noise),
            "cosine": float(np.mean(np.concatenate(self.cos))),
            "rel_l2": float(np.mean(np.concatenate(self.rel))),
            "max_abs_err": self.max_abs,
        }
        if self.k:
            out["retrieval_agreement"] = metrics.retrieval_agreement(
                np.concatenate(self.q), np.concatenate(self.ref), self.k
            )
            out["retrieval_k"] = float(self.k)
        return TaskResult(out)


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


# ---------------------------------------------------------------------------------------------------------
# Option checks (at config load: a task is built when the sweep file is parsed)
# ---------------------------------------------------------------------------------------------------------
def _opt_bool(task: Task, key: str) -> bool:
    v = task.options[key]
    if not isinstance(v, bool):
        raise ConfigError(f"{task.where}.{key}: expected true or false, got {v!r}")
    return v


def _opt_float(task: Task, key: str, lo: float, hi: float, open_ends: bool = False) -> float:
    v = task.options[key]
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (lo < v < hi if open_ends else lo <= v <= hi)
    if not ok:
        bounds = f"({lo}, {hi})" if open_ends else f"[{lo}, {hi}]"
        raise ConfigError(f"{task.where}.{key}: expected a number in {bounds}, got {v!r}")
    return float(v)


def _opt_int(task: Task, key: str, lo: int, allow_none: bool = False) -> int | None:
    v = task.options[key]
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{task.where}.{key}: expected an integer ≥ {lo}, got {v!r}")
    return v


def _opt_choice(task: Task, key: str, choices: tuple[str, ...]) -> str:
    v = task.options[key]
    if v not in choices:
        raise ConfigError(f"{task.where}.{key}: expected one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _opt_output(task: Task, key: str) -> str | None:
    v = task.options[key]
    if v is not None and (not isinstance(v, str) or not v):
        raise ConfigError(f"{task.where}.{key}: expected the name of a model output, got {v!r}")
    return v


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1/(1+e^-x) without overflow warnings


# ---------------------------------------------------------------------------------------------------------
# Binary segmentation: one sigmoid (or logit) map per image
# ---------------------------------------------------------------------------------------------------------
class BinarySegmentationTask(Task):
    """A foreground probability (or logit) map N×1×H×W or N×H×W, thresholded into a mask. Its own task rather
    than a 1-channel case of ``segmentation``: argmax over one channel is meaningless, the threshold is a real
    choice, and foreground IoU/F1 are not the multi-class mIoU of the ``segmentation`` columns."""

    name = "binary_segmentation"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "labels": (True, "score against the evaluation masks (N×H×W or N×1×H×W of 0/1)"),
        "threshold": (0.5, "foreground when the probability exceeds this (a probability, also with logits: true)"),
        "logits": (False, "the map holds logits: sigmoid is applied before thresholding (0.5 ≡ logit 0)"),
        "ignore_index": (None, "mask value left out of the label metrics (e.g. 255 for unlabelled borders)"),
    }

    def __init__(self, where: str = "task", **options: Any) -> None:
        super().__init__(where, **options)
        _opt_bool(self, "labels")
        _opt_bool(self, "logits")
        _opt_float(self, "threshold", 0.0, 1.0, open_ends=True)
        ii = self.options["ignore_index"]
        if ii is not None and (isinstance(ii, bool) or not isinstance(ii, int) or ii in (0, 1)):
            raise ConfigError(
                f"{where}.ignore_index: expected an integer other than 0 and 1 (the mask values), got {ii!r}"
            )

    def scorer(self, output: str) -> Scorer:
        return _BinarySegmentationScorer(output, self.options)


class _BinarySegmentationScorer(Scorer):
    def __init__(self, output: str, options: dict[str, Any]) -> None:
        self.output, self.opt = output, options
        self.counts = np.zeros(4, np.int64)  # vs labels: tp, fp, fn, tn
        self.fp_counts = np.zeros(4, np.int64)  # vs the FP32 mask
        self.sig = self.noise = self.max_abs = 0.0
        self.cos: list[np.ndarray] = []
        self.rel: list[np.ndarray] = []

    def _mask(self, x: np.ndarray) -> np.ndarray:
        p = _sigmoid(x) if self.opt["logits"] else x
        return p > self.opt["threshold"]

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        q, ref = np.asarray(q), np.asarray(ref)
        if not (q.ndim == 3 or (q.ndim == 4 and q.shape[1] == 1)):
            raise DataError(
                f"output {self.output!r} (binary_segmentation) must be an N×1×H×W or N×H×W map, got shape {q.shape}; "
                "for C>1 class logits use task segmentation"
            )
        if not self.opt["logits"] and ref.size and (float(ref.min()) < -1e-3 or float(ref.max()) > 1 + 1e-3):
            raise DataError(
                f"output {self.output!r} (binary_segmentation): the FP32 map spans {float(ref.min()):.3g}.."
                f"{float(ref.max()):.3g}, outside [0, 1], so it holds logits, not probabilities; set "
                "{name: binary_segmentation, logits: true}"
            )
        d = q.astype(np.float64) - ref
        self.sig += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        self.cos.append(metrics.per_sample_cosine(q, ref))
        self.rel.append(metrics.per_sample_rel_l2(q, ref))
        mq, mf = self._mask(q).reshape(len(q), -1), self._mask(ref).reshape(len(ref), -1)
        self.fp_counts += _binary_counts(mq, mf)
        if labels is not None and self.opt["labels"]:
            labels = np.asarray(labels)
            if labels.size != mq.size or len(labels) != len(mq):
                raise DataError(
                    f"output {self.output!r} (binary_segmentation) predicts masks of shape {q.shape[-2:]} but the "
                    f"evaluation labels have shape {labels.shape[1:]}; give one N×H×W 0/1 mask per sample, or set "
                    "task {labels: false}"
                )
            truth = labels.reshape(len(labels), -1)
            keep = truth != self.opt["ignore_index"] if self.opt["ignore_index"] is not None else None
            values = truth[keep] if keep is not None else truth
            if values.size and (values.min() < 0 or values.max() > 1):
                raise DataError(
                    f"output {self.output!r} (binary_segmentation): mask labels must be 0 (background) or 1 "
                    f"(foreground), got values {int(values.min())}..{int(values.max())}; save (mask > 0) for 0/255 "
                    "masks, or set ignore_index for an 'unlabelled' value"
                )
            if keep is not None:
                self.counts += _binary_counts(mq[keep], truth[keep] == 1)
            else:
                self.counts += _binary_counts(mq, truth == 1)

    def result(self) -> TaskResult:
        nan = float("nan")
        tp, fp, fn, tn = (int(v) for v in self.fp_counts)
        out = {
            "mask_agreement": (tp + tn) / max(tp + fp + fn + tn, 1),
            "iou_fp": _iou_from_counts(tp, fp, fn),
            "sqnr_db": _sqnr(self.sig, self.noise),
            "cosine": float(np.mean(np.concatenate(self.cos))) if self.cos else nan,
            "rel_l2": float(np.mean(np.concatenate(self.rel))) if self.rel else nan,
            "max_abs_err": self.max_abs,
            "iou": nan,
            "f1": nan,
            "pixel_accuracy": nan,
        }
        tp, fp, fn, tn = (int(v) for v in self.counts)
        if tp + fp + fn + tn:
            out["iou"] = _iou_from_counts(tp, fp, fn)
            out["f1"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
            out["pixel_accuracy"] = (tp + tn) / (tp + fp + fn + tn)
        return TaskResult(out)


def _binary_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """tp, fp, fn, tn of boolean arrays of one shape."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return np.array([tp, fp, fn, pred.size - tp - fp - fn], np.int64)


def _iou_from_counts(tp: int, fp: int, fn: int) -> float:
    """Foreground IoU over all pixels of the set; 1.0 when neither side has any foreground (they agree)."""
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


# ---------------------------------------------------------------------------------------------------------
# Object detection: YOLO heads (decoded here) or post-NMS outputs; COCO-style mAP and agreement with FP32
# ---------------------------------------------------------------------------------------------------------
#: As pycocotools: IoU thresholds 0.50:0.05:0.95 and 101 recall points 0:0.01:1.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_NMS_CANDIDATES = 30000  # boxes entering NMS per image, best first (as ultralytics' max_nms)
AGREEMENT_IOU = 0.5  # a Q detection matches an FP32 one of its class at IoU ≥ this
DETECTION_FORMATS = ("auto", "nms", "yolov8", "yolov5")
BOX_FORMATS = ("auto", "xyxy", "cxcywh", "xywh")


class DetectionTask(Task):
    """Boxes, scores and classes. Raw YOLO heads are decoded here (cx,cy,w,h → x1,y1,x2,y2, score threshold,
    class-wise NMS, best ``max_detections``) so a backend is judged on the boxes a user would get; post-NMS
    outputs are read as they are. Metrics: COCO-style mAP against labelled boxes, and agreement with the FP32
    model's own detections (no labels needed)."""

    name = "detection"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "format": ("auto", "nms | yolov8 | yolov5 | auto (nms with `scores`, yolov8 for N×(4+C)×A, else asks)"),
        "scores": (None, "post-NMS: the output with N×K scores (this task's output then holds N×K×4 boxes)"),
        "classes": (None, "post-NMS: the output with N×K class ids (without it every box is class 0)"),
        "count": (None, "post-NMS: the output with each image's number of valid detections (N or N×1)"),
        "box_format": ("auto", "xyxy | cxcywh | xywh; auto = cxcywh for YOLO heads, xyxy for post-NMS outputs"),
        "logits": (False, "scores (and YOLOv5 objectness) are logits: sigmoid is applied first"),
        "score_threshold": (0.001, "detections kept for mAP score above this (COCO-style evaluation keeps nearly all)"),
        "agreement_threshold": (0.25, "detections compared with the FP32 ones score above this (a deployment value)"),
        "nms_iou": (0.7, "class-wise NMS drops a box overlapping a better one of its class by more than this"),
        "max_detections": (100, "detections kept per image, best first (COCO's maxDets)"),
        "multi_label": (False, "YOLO heads: an anchor gives one detection per class above the threshold"),
        "labels": (True, "score against the evaluation boxes: N×M×5 integers [class, x1, y1, x2, y2], class −1 = pad"),
        "label_scale": (1, "label coordinates are divided by this (sub-pixel or normalised boxes stored as integers)"),
    }

    def __init__(self, where: str = "task", **options: Any) -> None:
        super().__init__(where, **options)
        fmt = _opt_choice(self, "format", DETECTION_FORMATS)
        _opt_choice(self, "box_format", BOX_FORMATS)
        for key in ("logits", "multi_label", "labels"):
            _opt_bool(self, key)
        for key in ("score_threshold", "agreement_threshold"):
            _opt_float(self, key, 0.0, 1.0)
        _opt_float(self, "nms_iou", 0.0, 1.0)
        _opt_int(self, "max_detections", 1)
        scale = self.options["label_scale"]
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"{where}.label_scale: expected a positive number, got {scale!r}")
        names = {k: _opt_output(self, k) for k in ("scores", "classes", "count")}
        if names["scores"] is None and (names["classes"] or names["count"]):
            key = "classes" if names["classes"] else "count"
            raise ConfigError(
                f"{where}.{key}: needs `scores` too (separate post-NMS outputs: this output = boxes, plus scores, "
                "classes, count)"
            )
        if names["scores"] is not None and fmt not in ("auto", "nms"):
            raise ConfigError(
                f"{where}.scores: separate score outputs are post-NMS outputs; set format: nms (not {fmt})"
            )

    def companions(self) -> dict[str, str]:
        return {k: self.options[k] for k in ("scores", "classes", "count") if self.options[k] is not None}

    def scorer(self, output: str) -> Scorer:
        return _DetectionScorer(output, self.options)


class _DetectionScorer(Scorer):
    def __init__(self, output: str, options: dict[str, Any]) -> None:
        self.output, self.opt = output, options
        self.q_dets: list[np.ndarray] = []  # per image: K×6 [x1, y1, x2, y2, score, class], best first
        self.fp_dets: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []  # per image: M×5 [class, x1, y1, x2, y2]
        self.sig = self.noise = self.max_abs = 0.0
        self.cos: list[np.ndarray] = []

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        self.update_multi(q, ref, labels, {}, {})

    def update_multi(
        self,
        q: np.ndarray,
        ref: np.ndarray,
        labels: np.ndarray | None,
        q_more: dict[str, np.ndarray],
        ref_more: dict[str, np.ndarray],
    ) -> None:
        q, ref = np.asarray(q), np.asarray(ref)
        fmt = self._format(q.shape, bool(q_more))
        d = q.astype(np.float64) - ref
        self.sig += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        self.cos.append(metrics.per_sample_cosine(q, ref))
        self.q_dets += self._decode(q, q_more, fmt)
        self.fp_dets += self._decode(ref, ref_more, fmt)
        if labels is not None and self.opt["labels"]:
            classes = self._num_classes(q.shape, fmt)
            self.truth += detection_labels(labels, float(self.opt["label_scale"]), classes, self.output)

    def _format(self, shape: tuple[int, ...], separate: bool) -> str:
        fmt = self.opt["format"]
        if fmt == "auto":
            if separate:
                return "nms"
            if len(shape) == 3 and shape[1] < shape[2]:
                return "yolov8"
            raise DataError(
                f"output {self.output!r} (detection) has shape {shape}: set the task's `format`: nms for post-NMS "
                "rows [x1, y1, x2, y2, score, class] (e.g. N×300×6), yolov5 for N×A×(5+C) heads with objectness, "
                "yolov8 for N×A×(4+C) heads"
            )
        return fmt

    def _num_classes(self, shape: tuple[int, ...], fmt: str) -> int | None:
        if fmt == "yolov8":
            return (shape[1] if shape[1] < shape[2] else shape[2]) - 4
        return shape[2] - 5 if fmt == "yolov5" else None

    def _decode(self, x: np.ndarray, more: dict[str, np.ndarray], fmt: str) -> list[np.ndarray]:
        o = self.opt
        box_format = o["box_format"] if o["box_format"] != "auto" else ("xyxy" if fmt == "nms" else "cxcywh")
        common = {"score_threshold": float(o["score_threshold"]), "max_detections": int(o["max_detections"])}
        if fmt == "nms":
            return decode_post_nms(
                x,
                more.get("scores"),
                more.get("classes"),
                more.get("count"),
                box_format,
                bool(o["logits"]),
                output=self.output,
                **common,
            )
        return decode_yolo(
            x,
            fmt,
            box_format=box_format,
            logits=bool(o["logits"]),
            nms_iou=float(o["nms_iou"]),
            multi_label=bool(o["multi_label"]),
            output=self.output,
            **common,
        )

    def result(self) -> TaskResult:
        nan = float("nan")
        thr = float(self.opt["agreement_threshold"])
        q_conf = [dd[dd[:, 4] > thr] for dd in self.q_dets]
        fp_conf = [dd[dd[:, 4] > thr] for dd in self.fp_dets]
        n_q, n_fp = sum(len(dd) for dd in q_conf), sum(len(dd) for dd in fp_conf)
        matched, iou_sum = 0, 0.0
        for a, b in zip(q_conf, fp_conf, strict=True):
            m, s = match_detections(a, b, AGREEMENT_IOU)
            matched, iou_sum = matched + m, iou_sum + s
        fp_truth = [np.column_stack([dd[:, 5], dd[:, :4]]) for dd in fp_conf]
        max_det = int(self.opt["max_detections"])
        out = {
            "det_agreement": matched / n_fp if n_fp else 1.0,
            "det_precision_fp": matched / n_q if n_q else 1.0,
            "matched_iou": iou_sum / matched if matched else nan,
            "map50_fp": float(coco_map(self.q_dets, fp_truth, [0.5], max_det)[0]),
            "dets_per_image": n_q / max(len(q_conf), 1),
            "dets_per_image_fp": n_fp / max(len(fp_conf), 1),
            "sqnr_db": _sqnr(self.sig, self.noise),
            "cosine": float(np.mean(np.concatenate(self.cos))) if self.cos else nan,
            "max_abs_err": self.max_abs,
            "map50": nan,
            "map50_95": nan,
        }
        if self.truth:
            ap = coco_map(self.q_dets, self.truth, COCO_IOU_THRESHOLDS, max_det)
            out["map50"], out["map50_95"] = float(ap[0]), float(np.mean(ap))
        return TaskResult(out)


def boxes_to_xyxy(b: np.ndarray, box_format: str) -> np.ndarray:
    """N×4 boxes in ``box_format`` (xyxy, cxcywh = centre and size, xywh = top-left corner and size) → x1,y1,x2,y2."""
    b = np.asarray(b, dtype=np.float64)
    if box_format == "xyxy":
        return b.copy()
    if box_format == "cxcywh":
        half = b[..., 2:4] / 2
        return np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)
    if box_format == "xywh":
        return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)
    raise ValueError(f"unknown box format {box_format!r}")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a (n×4) and b (m×4); 0 where the union is empty (degenerate boxes)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.maximum(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0.0)
    h = np.maximum(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0.0)
    inter = w * h
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float, max_detections: int) -> np.ndarray:
    """Greedy class-wise NMS: indices of the kept boxes, best score first. Boxes of different classes are shifted
    apart so one pass serves all classes; it stops at ``max_detections`` (later boxes could not be kept anyway)."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float64)
    lo, hi = float(boxes.min()), float(boxes.max())
    shifted = boxes - lo + np.asarray(classes, np.float64)[:, None] * (hi - lo + 1.0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(shifted[i : i + 1], shifted[rest])[0] <= iou]
    return np.asarray(keep, np.int64)


def decode_yolo(
    x: np.ndarray,
    version: str,
    *,
    score_threshold: float,
    max_detections: int,
    nms_iou: float,
    box_format: str = "cxcywh",
    logits: bool = False,
    multi_label: bool = False,
    output: str = "output",
) -> list[np.ndarray]:
    """Raw YOLO head → per image K×6 [x1, y1, x2, y2, score, class], best first. ``yolov8``: N×(4+C)×A (as
    ultralytics exports it; N×A×(4+C) is accepted too), class scores only. ``yolov5``: N×A×(5+C) with objectness,
    score = objectness × class score (candidates need objectness above the threshold too, as YOLOv5 does)."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise DataError(f"output {output!r} (detection, {version}) must be rank 3, got shape {x.shape}")
    if version == "yolov8":
        if x.shape[1] < x.shape[2]:
            x = np.swapaxes(x, 1, 2)
        if x.shape[2] < 5:
            raise DataError(
                f"output {output!r} (detection, yolov8) needs 4 box + ≥1 class values per anchor: {x.shape}"
            )
    elif x.shape[2] < 6:
        raise DataError(f"output {output!r} (detection, yolov5) needs 4 box + objectness + ≥1 class values: {x.shape}")
    out = []
    for a in x:
        a = np.asarray(a, np.float64)
        if version == "yolov8":
            cls = _sigmoid(a[:, 4:]) if logits else a[:, 4:]
            cand = np.ones(len(a), bool)
        else:
            obj = _sigmoid(a[:, 4]) if logits else a[:, 4]
            cls = (_sigmoid(a[:, 5:]) if logits else a[:, 5:]) * obj[:, None]
            cand = obj > score_threshold
        boxes, cls = a[cand, :4], cls[cand]
        if multi_label:
            rows, c = np.nonzero(cls > score_threshold)
            s = cls[rows, c]
        else:
            c = np.argmax(cls, axis=1) if cls.size else np.zeros(0, np.int64)
            s = cls[np.arange(len(cls)), c]
            rows = np.nonzero(s > score_threshold)[0]
            c, s = c[rows], s[rows]
        if len(s) > MAX_NMS_CANDIDATES:
            top = np.argsort(-s, kind="stable")[:MAX_NMS_CANDIDATES]
            rows, c, s = rows[top], c[top], s[top]
        xyxy = boxes_to_xyxy(boxes[rows], box_format)
        keep = nms(xyxy, s, c, nms_iou, max_detections)
        out.append(np.column_stack([xyxy[keep], s[keep], c[keep]]).reshape(-1, 6))
    return out


def decode_post_nms(
    x: np.ndarray,
    scores: np.ndarray | None,
    classes: np.ndarray | None,
    count: np.ndarray | None,
    box_format: str = "xyxy",
    logits: bool = False,
    *,
    score_threshold: float,
    max_detections: int,
    output: str = "output",
) -> list[np.ndarray]:
    """Post-NMS detections → per image K×6 [x1, y1, x2, y2, score, class], best first, above the threshold.
    Either one N×K×(≥6) output of rows [box, score, class] (extra columns ignored), or boxes N×K×4 with
    separate ``scores`` N×K, ``classes`` N×K (absent: class 0) and ``count`` N (valid rows per image; padding
    after it is dropped, as TensorRT's EfficientNMS pads)."""
    x = np.asarray(x)
    if scores is None:
        if x.ndim != 3 or x.shape[2] < 6:
            raise DataError(
                f"output {output!r} (detection, nms) must be N×K×6 rows [x1, y1, x2, y2, score, class], got shape "
                f"{x.shape}; for separate outputs name them with the task's scores/classes/count options"
            )
        boxes, s, c = x[..., :4], x[..., 4], x[..., 5]
    else:
        s = np.asarray(scores)
        s = s[..., 0] if s.ndim == 3 and s.shape[2] == 1 else s
        if x.ndim != 3 or x.shape[2] != 4 or s.shape != x.shape[:2]:
            raise DataError(
                f"output {output!r} (detection, nms): boxes must be N×K×4 and scores N×K, got {x.shape} and "
                f"{np.shape(scores)}; the task's output is the boxes, `scores`/`classes` name the other outputs"
            )
        boxes = x
        c = np.zeros(s.shape) if classes is None else np.asarray(classes).reshape(s.shape)
    s = _sigmoid(s) if logits else np.asarray(s, np.float64)
    n_valid = None if count is None else np.asarray(count).reshape(len(x), -1)[:, 0].astype(np.int64)
    out = []
    for i in range(len(x)):
        keep = s[i] > score_threshold
        if n_valid is not None:
            keep &= np.arange(len(keep)) < n_valid[i]
        idx = np.nonzero(keep)[0]
        idx = idx[np.argsort(-s[i][idx], kind="stable")][:max_detections]
        xyxy = boxes_to_xyxy(boxes[i][idx], box_format)
        out.append(np.column_stack([xyxy, s[i][idx], np.rint(c[i][idx])]).reshape(-1, 6))
    return out


def detection_labels(labels: np.ndarray, scale: float, num_classes: int | None, output: str) -> list[np.ndarray]:
    """N×M×5 integer labels [class, x1, y1, x2, y2] (class −1 = padding) → per image M×5 float rows."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[2] != 5:
        raise DataError(
            f"output {output!r} (detection) needs labels of shape N×M×5 [class, x1, y1, x2, y2] padded with class -1, "
            f"got {labels.shape}; or set task {{labels: false}}"
        )
    cls = labels[..., 0]
    bad = (cls < -1) | ((cls >= num_classes) if num_classes is not None else False)
    if bad.any():
        raise DataError(
            f"output {output!r} (detection): label class {int(cls[bad][0])} is outside [0, "
            f"{'C' if num_classes is None else num_classes - 1}] (use -1 for padding rows)"
        )
    out = []
    for row in labels:
        row = row[row[:, 0] >= 0].astype(np.float64)
        row[:, 1:] /= scale
        out.append(row)
    return out


def _greedy_matches(ious: np.ndarray, thresholds: Any) -> np.ndarray:
    """COCO's matching: detections (rows, best score first) each take the still-free truth box (column) with the
    highest IoU ≥ threshold (ties: the later column, as pycocotools). Returns T×D: the column matched per IoU
    threshold and detection, −1 = none. All thresholds advance together; rows that reach no threshold are skipped
    (they can match nothing), which keeps the Python loop to the few detections near a truth box."""
    thr = np.minimum(np.asarray(thresholds, np.float64).reshape(-1), 1 - 1e-10)[:, None]
    n_det, n_truth = ious.shape
    match = np.full((len(thr), n_det), -1, np.int64)
    if not n_truth:
        return match
    taken = np.zeros((len(thr), n_truth), bool)
    for d in np.nonzero(ious.max(axis=1) >= thr.min())[0]:
        ok = ~taken & (ious[d][None, :] >= thr)
        rows = np.nonzero(ok.any(axis=1))[0]
        if not len(rows):
            continue
        vals = np.where(ok[rows], ious[d][None, :], -np.inf)[:, ::-1]
        g = n_truth - 1 - np.argmax(vals, axis=1)
        taken[rows, g], match[rows, d] = True, g
    return match


def match_detections(q: np.ndarray, ref: np.ndarray, iou: float = AGREEMENT_IOU) -> tuple[int, float]:
    """(matched pairs, sum of their IoUs) between one image's Q and FP32 detections (K×6, best first): per class,
    greedily as COCO matches detections to truth, the FP32 detections playing the truth."""
    matched, total = 0, 0.0
    for c in np.union1d(q[:, 5], ref[:, 5]):
        a, b = q[q[:, 5] == c], ref[ref[:, 5] == c]
        if not len(a) or not len(b):
            continue
        a = a[np.argsort(-a[:, 4], kind="stable")]
        ious = box_iou(a[:, :4], b[:, :4])
        m = _greedy_matches(ious, [iou])[0]
        hit = m >= 0
        matched += int(hit.sum())
        total += float(ious[np.nonzero(hit)[0], m[hit]].sum())
    return matched, total


def coco_map(
    dets: list[np.ndarray],
    truth: list[np.ndarray],
    iou_thresholds: Any = COCO_IOU_THRESHOLDS,
    max_detections: int = 100,
) -> np.ndarray:
    """Average precision per IoU threshold, averaged over the classes that have truth boxes, as pycocotools'
    bbox evaluation computes it (area range all, no crowd boxes, ``maxDets`` = ``max_detections``): per class,
    detections of all images ranked by score, greedy matching per image, precision made monotone, then read at
    101 recall points (0 beyond the highest recall reached). NaN when no image has a truth box.
    ``dets``: per image K×6 [x1, y1, x2, y2, score, class]; ``truth``: per image M×5 [class, x1, y1, x2, y2]."""
    thresholds = np.asarray(iou_thresholds, np.float64)
    classes = np.unique(np.concatenate([t[:, 0] for t in truth])) if truth else np.zeros(0)
    if not len(classes):
        return np.full(len(thresholds), np.nan)
    # per class, per image in order (image order breaks score ties, as in pycocotools): scores and IoUs
    pairs: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {float(c): [] for c in classes}
    for d, t in zip(dets, truth, strict=True):
        if not len(d) and not len(t):
            continue
        ious = box_iou(d[:, :4], t[:, 1:5])  # once per image, cut per class below
        for c in np.union1d(d[:, 5], t[:, 0]):
            if float(c) in pairs:  # detections of a class without truth anywhere are not evaluated
                di, gi = np.nonzero(d[:, 5] == c)[0], np.nonzero(t[:, 0] == c)[0]
                di = di[np.argsort(-d[di, 4], kind="mergesort")][:max_detections]
                pairs[float(c)].append((d[di, 4], ious[np.ix_(di, gi)]))
    ap = np.zeros((len(thresholds), len(classes)))
    for ci, c in enumerate(classes):
        n_truth, scores, hits = 0, [], []
        for sc, iou in pairs[float(c)]:
            n_truth += iou.shape[1]
            if len(sc):
                scores.append(sc)
                hits.append(_greedy_matches(iou, thresholds) >= 0)
        if not scores:
            continue  # truth but no detection: AP 0
        order = np.argsort(-np.concatenate(scores), kind="mergesort")
        tp = np.concatenate(hits, axis=1)[:, order]
        tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
        fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
        recall = tp_sum / n_truth
        precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        for ti in range(len(thresholds)):
            idx = np.searchsorted(recall[ti], COCO_RECALL_POINTS, side="left")
            ok = idx < precision.shape[1]
            ap[ti, ci] = np.sum(precision[ti, idx[ok]]) / len(COCO_RECALL_POINTS)
    return ap.mean(axis=1)


# ---------------------------------------------------------------------------------------------------------
# Sequences: N×T×C per-step class scores (token classifiers, CTC recognisers)
# ---------------------------------------------------------------------------------------------------------
class SequenceTask(Task):
    """Per-step class scores N×T×C (batch first). Always: per-step argmax agreement with FP32. With ``ctc``
    the steps are greedy-CTC decoded (argmax, repeats collapsed, blanks dropped) and whole strings compared, as
    an OCR/ASR user sees them; labels are then N×L target strings padded with −1, else N×T per-step classes."""

    name = "sequence"
    OPTIONS: ClassVar[dict[str, tuple[Any, str]]] = {
        "ctc": (False, "greedy CTC decoding: argmax per step, repeats collapsed, blanks dropped"),
        "blank": (0, "the CTC blank class"),
        "labels": (True, "score against the evaluation labels (N×L integers, −1 = padding)"),
    }

    def __init__(self, where: str = "task", **options: Any) -> None:
        super().__init__(where, **options)
        _opt_bool(self, "ctc")
        _opt_bool(self, "labels")
        _opt_int(self, "blank", 0)

    def scorer(self, output: str) -> Scorer:
        return _SequenceScorer(output, self.options)


class _SequenceScorer(Scorer):
    def __init__(self, output: str, options: dict[str, Any]) -> None:
        self.output, self.opt = output, options
        self.steps = self.steps_equal = 0
        self.samples = self.seq_equal = 0
        self.edits_fp = self.len_fp = 0
        self.labelled = self.seq_correct = self.edits = self.label_len = 0
        self.tok_total = self.tok_correct = 0
        self.sig = self.noise = self.max_abs = 0.0

    def update(self, q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> None:
        q, ref = np.asarray(q), np.asarray(ref)
        if q.ndim != 3:
            raise DataError(
                f"output {self.output!r} (sequence) must be N×T×C per-step class scores (batch first), got shape "
                f"{q.shape}; transpose a time-major T×N×C output in the model"
            )
        n, _t, c = q.shape
        blank = int(self.opt["blank"])
        if self.opt["ctc"] and blank >= c:
            raise DataError(f"output {self.output!r} (sequence): blank {blank} is not among its {c} classes")
        d = q.astype(np.float64) - ref
        self.sig += float(np.sum(np.square(ref, dtype=np.float64)))
        self.noise += float(np.sum(d * d))
        self.max_abs = max(self.max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        aq, af = np.argmax(q, axis=2), np.argmax(ref, axis=2)
        self.steps += aq.size
        self.steps_equal += int(np.count_nonzero(aq == af))
        self.samples += n
        if self.opt["ctc"]:
            sq, sf = ctc_greedy(q, blank), ctc_greedy(ref, blank)
            self.seq_equal += sum(np.array_equal(a, b) for a, b in zip(sq, sf, strict=True))
            self.edits_fp += sum(edit_distance(a, b) for a, b in zip(sq, sf, strict=True))
            self.len_fp += sum(len(b) for b in sf)
        else:
            self.seq_equal += int(np.count_nonzero(np.all(aq == af, axis=1)))
        if labels is None or not self.opt["labels"]:
            return
        labels = np.asarray(labels)
        if labels.ndim != 2 or len(labels) != n or (not self.opt["ctc"] and labels.shape[1] != aq.shape[1]):
            want = "N×L target strings padded with -1" if self.opt["ctc"] else f"N×{aq.shape[1]} per-step classes"
            raise DataError(
                f"output {self.output!r} (sequence) needs labels of shape {want}, got {labels.shape}; or set task "
                "{labels: false}"
            )
        bad = (labels < -1) | (labels >= c) | ((labels == blank) if self.opt["ctc"] else False)
        if bad.any():
            extra = f" and not the blank {blank}" if self.opt["ctc"] else ""
            raise DataError(
                f"output {self.output!r} (sequence): label value {int(labels[bad][0])} must lie in [0, {c - 1}]"
                f"{extra}, or be -1 (padding)"
            )
        self.labelled += n
        if self.opt["ctc"]:
            for pred, row in zip(sq, labels, strict=True):
                target = row[row >= 0]
                self.seq_correct += int(np.array_equal(pred, target))
                self.edits += edit_distance(pred, target)
                self.label_len += len(target)
        else:
            keep = labels >= 0
            self.tok_total += int(np.count_nonzero(keep))
            self.tok_correct += int(np.count_nonzero((aq == labels) & keep))
            self.seq_correct += int(np.count_nonzero(np.all((aq == labels) | ~keep, axis=1)))

    def result(self) -> TaskResult:
        nan = float("nan")
        out = {
            "token_agreement": self.steps_equal / self.steps if self.steps else nan,
            "sequence_agreement": self.seq_equal / self.samples if self.samples else nan,
            "sqnr_db": _sqnr(self.sig, self.noise),
            "max_abs_err": self.max_abs,
            "sequence_accuracy": self.seq_correct / self.labelled if self.labelled else nan,
        }
        if self.opt["ctc"]:
            out["cer_fp"] = _rate(self.edits_fp, self.len_fp)
            out["cer"] = _rate(self.edits, self.label_len) if self.labelled else nan
        else:
            out["token_accuracy"] = self.tok_correct / self.tok_total if self.tok_total else nan
        return TaskResult(out)


def _rate(edits: int, length: int) -> float:
    """Character error rate over a set; with no reference characters at all, 0 if nothing was added, else NaN
    (a rate per no characters is undefined; ``sequence_agreement``/``sequence_accuracy`` still tell)."""
    if length:
        return edits / length
    return 0.0 if edits == 0 else float("nan")


def ctc_greedy(scores: np.ndarray, blank: int = 0) -> list[np.ndarray]:
    """Greedy (best-path) CTC decoding of N×T×C scores: argmax per step, repeats collapsed, blanks dropped."""
    best = np.argmax(np.asarray(scores), axis=2)
    new = np.ones(best.shape, bool)
    new[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = new & (best != blank)
    return [row[k] for row, k in zip(best, keep, strict=True)]


def edit_distance(a: Any, b: Any) -> int:
    """Levenshtein distance (insertions, deletions, substitutions) of two integer sequences, one row at a time:
    the insertion chain of a row is a running minimum, so each row is a few vector operations."""
    a, b = np.asarray(a), np.asarray(b)
    if not len(a) or not len(b):
        return int(len(a) + len(b))
    cols = np.arange(len(b) + 1)
    row = cols.copy()
    for i in range(1, len(a) + 1):
        cand = np.empty_like(row)
        cand[0] = i
        cand[1:] = np.minimum(row[1:] + 1, row[:-1] + (b != a[i - 1]))
        row = np.minimum.accumulate(cand - cols) + cols
    return int(row[-1])


# ---------------------------------------------------------------------------------------------------------
# Registry and task configuration
# ---------------------------------------------------------------------------------------------------------
def registry() -> dict[str, tuple[str, str]]:
    """task name → (target, origin). Entry points never shadow a built-in name."""
    from importlib.metadata import entry_points

    out = {name: (target, "builtin") for name, target in BUILTIN.items()}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, (ep.value, "entry-point"))
    return out


def create(name: str, options: dict[str, Any] | None = None, where: str = "task") -> Task:
    """Instantiate task ``name``; unknown names and broken plugins are one-line ConfigErrors."""
    reg = registry()
    if name not in reg:
        raise ConfigError(f"{where}: task {name!r} is not registered; known tasks: {', '.join(sorted(reg))}")
    module_name, _, attr = reg[name][0].partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised raw
        raise ConfigError(
            f"{where}: task {name!r} ({reg[name][0]}) failed to load: {type(exc).__name__}: {exc}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"{where}: task {name!r} ({reg[name][0]}) is not a qtbench.harness.core.tasks.Task subclass")
    return cls(where, **(options or {}))


def _parse_one(value: Any, where: str) -> Task:
    if isinstance(value, str):
        return create(value, None, where)
    if isinstance(value, dict):
        opts = dict(value)
        name = opts.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: a task mapping needs `name` (one of {', '.join(sorted(registry()))})")
        return create(name, opts, where)
    raise ConfigError(f"{where}: expected a task name or a mapping with `name`, got {value!r}")


def parse_tasks(value: Any, where: str = "task") -> dict[str | None, Task]:
    """``task:`` of a model entry → {output name: Task}; a plain name (or a mapping with ``name``) maps the key
    None, meaning "the scored output". Validates names and options (used at config load and in the cell)."""
    if value is None:
        return {}
    if isinstance(value, str) or (isinstance(value, dict) and "name" in value):
        return {None: _parse_one(value, where)}
    if isinstance(value, dict):
        if not value:
            raise ConfigError(f"{where}: empty mapping; name a task per output, e.g. {{logits: classification}}")
        return {str(k): _parse_one(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: expected a task name or a mapping output → task, got {type(value).__name__}")


@dataclass
class OutputPlan:
    """Which outputs a cell scores, with which task, and why (``source``); the rest are listed as ignored."""

    scored: list[tuple[str, int, Task | None]]  # (output, index, task; None = infer from the output's rank)
    ignored: list[str]
    source: str  # config | model metadata | inferred
    notes: list[str] = field(default_factory=list)


def plan_outputs(
    task_cfg: Any, output: str | None, output_names: list[str], metadata: dict[str, str] | None = None
) -> OutputPlan:
    """Decide the scored outputs of a model. ``output`` (models[].output) is scored first when set."""

    source = "config"
    tasks = parse_tasks(task_cfg, "models[].task")
    if not tasks and metadata and META_TASK in metadata:
        try:
            tasks = parse_tasks(json.loads(metadata[META_TASK]), f"model metadata {META_TASK}")
            source = "model metadata"
        except (ValueError, ConfigError):
            tasks = {}
    if not tasks:
        primary = output or output_names[0]
        scored = [(primary, output_names.index(primary), None)]
        source = "inferred"
    else:
        if None in tasks:
            tasks = {(output or output_names[0]): tasks.pop(None), **tasks}
        missing = [o for o in tasks if o not in output_names]
        if missing:
            if source == "model metadata":
                tasks = {o: t for o, t in tasks.items() if o in output_names}
            else:
                raise ConfigError(
                    f"models[].task: output {missing[0]!r} is not an output of the model; outputs: "
                    f"{', '.join(output_names)}"
                )
        if output and output in tasks:  # the named output first: it fills the row's flat metric columns
            tasks = {output: tasks.pop(output), **tasks}
        elif output:
            raise ConfigError(f"models[].output {output!r} has no task in models[].task; add it or drop `output:`")
        scored = [(o, output_names.index(o), t) for o, t in tasks.items()]
        scored += _companion_entries(scored, output_names)
    names = {s[0] for s in scored}
    return OutputPlan(scored, [o for o in output_names if o not in names], source)


class CompanionOutput(Task):
    """Plan entry of an output that another output's task reads (``Task.companions``), not scored on its own:
    it sits in ``OutputPlan.scored`` so callers compute its FP32 reference like any scored output's."""

    name = "companion"

    def __init__(self, owner: str = "", role: str = "") -> None:
        super().__init__(f"companion of {owner}")
        self.owner, self.role = owner, role

    def scorer(self, output: str) -> Scorer:
        raise TypeError(f"output {output!r} is the {self.role!r} companion of {self.owner!r}; it is not scored alone")


def _companion_entries(
    scored: list[tuple[str, int, Task | None]], output_names: list[str]
) -> list[tuple[str, int, Task | None]]:
    """Plan entries for the companion outputs the scored tasks name (each once; a scored output stays scored)."""
    have = {o for o, _i, _t in scored}
    extra: list[tuple[str, int, Task | None]] = []
    for out, _i, task in scored:
        for role, name in (task.companions() if task is not None else {}).items():
            if name not in output_names:
                raise ConfigError(
                    f"{task.where}.{role}: {name!r} is not an output of the model; outputs: {', '.join(output_names)}"
                )
            if name == out:
                raise ConfigError(f"{task.where}.{role}: names the scored output {out!r} itself; name another output")
            if name not in have:
                extra.append((name, output_names.index(name), CompanionOutput(out, role)))
                have.add(name)
    return extra


def infer_task(ndim: int, ref: Any = None, labels: Any = None) -> Task:
    """Rank 2 → classification (logits); an N×1×H×W map whose FP32 values all lie in [0, 1] → binary
    segmentation (a sigmoid probability map), using the labels only when they are masks of its size; anything
    else → tensor (never guessed as multi-class segmentation: a C×H×W feature map and per-pixel logits look alike,
    and a 1-channel map outside [0, 1] may be logits, depth or a heat map)."""
    if ndim == 2:
        return ClassificationTask()
    if ndim == 4 and ref is not None and ref.shape[1] == 1 and len(ref) and _in_unit_range(ref):
        shape = None if labels is None else tuple(labels.shape)
        masks = shape is not None and shape[1:] in ((ref.shape[2], ref.shape[3]), tuple(ref.shape[1:]))
        return BinarySegmentationTask("task (inferred)", labels=masks)
    return TensorTask()


def _in_unit_range(ref: Any, chunk: int = 64) -> bool:
    """All values in [0, 1], read in chunks of samples (the reference may be a memory-mapped file)."""
    for start in range(0, len(ref), chunk):
        part = np.asarray(ref[start : start + chunk])
        if not np.issubdtype(part.dtype, np.floating) or part.min() < 0.0 or part.max() > 1.0:
            return False
    return True


# ---------------------------------------------------------------------------------------------------------
# The FP32 references and the streamed evaluation
# ---------------------------------------------------------------------------------------------------------
def fp32_references(
    model_path: str | Path, model_sha256: str, evaluation: Any, indices: list[int], batch: int, cache_dir: str | Path
) -> dict[int, np.ndarray]:
    """Outputs ``indices`` of the float model on ONNX Runtime's CPU EP (one thread), computed once per (model,
    data, output) and cached as ``.npy`` (memory-mapped when read back). Same file names as the single-output
    cache before tasks, so existing caches stay valid. A non-finite reference fails the cell."""
    cache = Path(cache_dir) / "reference"
    paths = {i: cache / f"{model_sha256[:16]}-{evaluation.sha256[:16]}-{i}.npy" for i in indices}
    todo = [i for i, p in paths.items() if not p.is_file()]
    if not todo:
        return {i: np.load(p, mmap_mode="r") for i, p in paths.items()}
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    # one process computes a model's references; another that needs them waits and reads them (compile workers)
    with open(cache / f".{model_sha256[:16]}-{evaluation.sha256[:16]}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _compute_references(model_path, evaluation, paths, batch)
    return {i: np.load(p, mmap_mode="r") for i, p in paths.items()}


def _compute_references(model_path: str | Path, evaluation: Any, paths: dict[int, Path], batch: int) -> None:
    """The float model's outputs for the entries of ``paths`` not yet on disk (see :func:`fp32_references`)."""
    todo = [i for i, p in paths.items() if not p.is_file()]
    if todo:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        tmps = {i: paths[i].with_suffix(f".{os.getpid()}.tmp.npy") for i in todo}
        arrays: dict[int, Any] = {}
        n = len(evaluation)
        try:
            start, step = 0, 1  # one sample first: its output size bounds the batch (see batch_for)
            while start < n:
                feeds = evaluation.batch(start, start + step)
                check_finite_inputs(feeds, evaluation.source, start)
                outs = sess.run([names[i] for i in todo], dict(feeds))
                for i, o in zip(todo, outs, strict=True):
                    o = np.asarray(o)
                    if not np.all(np.isfinite(o)):
                        raise NonFiniteOutput(
                            f"the FP32 reference (ONNX Runtime CPU) of output {names[i]!r} is non-finite for samples "
                            f"{start}–{start + len(o) - 1}: the model itself overflows on this data"
                        )
                    if i not in arrays:
                        arrays[i] = np.lib.format.open_memmap(tmps[i], "w+", o.dtype, (n, *o.shape[1:]))
                    arrays[i][start : start + len(o)] = o
                start += step
                step = batch_for(arrays, batch)
            for i in todo:
                arrays[i].flush()
                del arrays[i]
                os.replace(tmps[i], paths[i])
        finally:
            for t in tmps.values():
                t.unlink(missing_ok=True)


MAX_BATCH_OUTPUT_BYTES = 256 << 20


def batch_for(refs: dict[int, Any], requested: int) -> int:
    """``requested`` (measure.eval_batch_size), lowered so one batch's scored outputs stay under 256 MB: 256
    segmentation maps of 21×224×224 floats would be 1 GB per array, and scoring holds a few such arrays."""
    per_sample = sum(int(np.prod(r.shape[1:], dtype=np.int64)) * r.dtype.itemsize for r in refs.values())
    return max(1, min(requested, MAX_BATCH_OUTPUT_BYTES // max(per_sample, 1)))


def check_finite_inputs(feeds: dict[str, np.ndarray], source: str, start: int) -> None:
    for name, a in feeds.items():
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            first = start + int(np.argmax((~np.isfinite(a.reshape(len(a), -1))).any(axis=1)))
            raise DataError(
                f"evaluation data {source}: array {name!r} holds non-finite values (NaN/Inf), first in sample "
                f"{first}; clean or drop those samples"
            )


@dataclass
class Evaluation:
    """The scored outputs of one cell: per output its task spec and TaskResult, plus the ignored outputs."""

    plan: OutputPlan
    results: dict[str, tuple[Task, TaskResult]]
    outputs_sha256: str = ""  # digest of every scored output over the evaluation set (see :func:`evaluate`)

    def row_fields(self) -> dict[str, Any]:
        """Row columns: the first scored output's metrics in the flat columns (the classification contract
        columns when it is a classifier), every output's in ``output_metrics``."""
        _primary, (task, res) = next(iter(self.results.items()))
        fields: dict[str, Any] = {k: v for k, v in res.metrics.items() if k != "retrieval_k"}
        fields["task"] = task.name
        fields["task_source"] = self.plan.source
        fields["outputs"] = json.dumps(list(self.results))
        fields["outputs_ignored"] = json.dumps(self.plan.ignored)
        fields["outputs_sha256"] = self.outputs_sha256
        fields["output_metrics"] = json.dumps(
            {o: {**t.spec(), **{k: _json_num(v) for k, v in r.metrics.items()}} for o, (t, r) in self.results.items()}
        )
        rel = next((r.reliability for _t, r in self.results.values() if r.reliability), None)
        if rel:
            fields["reliability"] = json.dumps(rel)
        return fields

    @property
    def predictions(self) -> np.ndarray | None:
        return next((r.predictions for _t, r in self.results.values() if r.predictions is not None), None)

    def notes(self) -> list[str]:
        if not self.plan.ignored:
            return []
        return [
            f"outputs not scored (no task): {', '.join(self.plan.ignored)}; name them in models[].task to score them"
        ]


def _json_num(v: float) -> float | str | None:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def evaluate(
    infer: Any,
    evaluation: Any,
    plan: OutputPlan,
    refs: dict[int, np.ndarray],
    batch: int,
) -> Evaluation:
    """Run ``infer`` over the evaluation set batch by batch and score every planned output. A non-finite backend
    output fails the cell (NonFiniteOutput) instead of turning into NaN metrics."""
    labels = evaluation.labels
    tasks: dict[str, Task] = {}
    for out, idx, task in plan.scored:
        if not isinstance(task, CompanionOutput):  # companions are read by their owner's scorer
            tasks[out] = task if task is not None else infer_task(refs[idx].ndim, refs[idx], labels)
    scorers = {out: tasks[out].scorer(out) for out in tasks}
    # one digest per scored output, fed sample by sample in order (independent of the batch size): two cells whose
    # outputs are bit-identical are one numeric result, however many backends produced it (compare counts it once)
    digests = {out: hashlib.sha256() for out, _i, _t in plan.scored}
    batch = batch_for(refs, batch)
    for start in range(0, len(evaluation), batch):
        feeds = evaluation.batch(start, start + batch)
        check_finite_inputs(feeds, evaluation.source, start)
        outs = infer(feeds)
        lab = None if labels is None else np.asarray(labels[start : start + batch])
        qs: dict[str, np.ndarray] = {}
        rs: dict[str, np.ndarray] = {}
        for out, idx, _t in plan.scored:
            q = np.asarray(outs[idx])
            if np.issubdtype(q.dtype, np.inexact):
                bad = ~np.isfinite(q)
                if bad.any():
                    raise NonFiniteOutput(
                        f"the backend returned {int(np.isnan(q).sum())} NaN and {int(np.isinf(q).sum())} Inf values "
                        f"in output {out!r} for samples {start}–{start + len(q) - 1} (the FP32 reference is finite); "
                        "its metrics would be meaningless"
                    )
            ref = np.asarray(refs[idx][start : start + len(q)])
            if q.shape != ref.shape:
                raise DataError(f"output {out!r}: the backend returned shape {q.shape}, the FP32 reference {ref.shape}")
            qs[out], rs[out] = q, ref
            digests[out].update(np.ascontiguousarray(q).tobytes())
        for out, scorer in scorers.items():
            more = tasks[out].companions()
            if more:
                q_more = {role: qs[name] for role, name in more.items()}
                scorer.update_multi(qs[out], rs[out], lab, q_more, {role: rs[name] for role, name in more.items()})
            else:
                scorer.update(qs[out], rs[out], lab)
    results = {out: (tasks[out], scorers[out].result()) for out in scorers}
    whole = hashlib.sha256()
    for out, _i, _t in plan.scored:
        whole.update(f"{out}:{digests[out].hexdigest()};".encode())
    return Evaluation(plan, results, whole.hexdigest())


def quality_summary(rec: Any) -> str:
    """The headline quality figure of a row for one progress line: top-1 (or agreement without labels) for a
    classifier, mask agreement for segmentation, cosine and SQNR for tensors."""
    task = getattr(rec, "task", "") or "classification"
    if task == "segmentation":
        return f"mask_agree={100 * rec.mask_agreement:.2f}% mIoU_fp={100 * rec.miou_fp:.2f}%"
    if task == "tensor":
        return f"cos={rec.cosine:.4f} sqnr={rec.sqnr_db:.1f}dB"
    if task in ("binary_segmentation", "detection", "sequence"):
        m = _first_output_metrics(rec)  # their own metrics live in output_metrics (not all are row columns)
        if task == "binary_segmentation":
            return f"mask_agree={_pct(m.get('mask_agreement'))} IoU_fp={_pct(m.get('iou_fp'))}"
        if task == "detection":
            return f"det_agree={_pct(m.get('det_agreement'))} mAP50={_pct(m.get('map50'))}"
        return f"tok_agree={_pct(m.get('token_agreement'))} seq_agree={_pct(m.get('sequence_agreement'))}"
    if math.isnan(rec.top1) and not math.isnan(rec.top1_agreement):
        return f"agree={100 * rec.top1_agreement:.2f}%"
    return f"top1={100 * rec.top1:.2f}%"


def _first_output_metrics(rec: Any) -> dict[str, Any]:
    try:
        per_output = json.loads(getattr(rec, "output_metrics", "") or "{}")
    except ValueError:
        return {}
    return next(iter(per_output.values()), {}) if isinstance(per_output, dict) else {}


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) and math.isfinite(v) else "–"

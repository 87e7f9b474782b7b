"""Tasks own their metrics: how one model output is compared with labels and with the FP32 reference output.

A model entry's ``task:`` is a task name for its scored output (``task: segmentation``) or a mapping per output
(``task: {logits: classification, embed: {name: tensor, retrieval_k: 5}}``). Without one, the zoo's ONNX metadata
(``qtbench.task``) is used when present, else the task is inferred for the scored output (``output:`` or the first
one): a rank-2 output is ``classification``, anything else ``tensor``; the row states where its task came from.
Outputs without a task are not scored and every row lists them in ``outputs_ignored``.

Built-in tasks: ``classification``, ``segmentation``, ``tensor``. Third parties register theirs through the
``qtbench.tasks`` entry-point group (``mytask = "my_pkg.tasks:MyTask"``, a :class:`Task` subclass).

Scoring streams: a task's :class:`Scorer` sees one batch at a time (quantized output, FP32 output, labels), so
evaluation sets larger than memory work; the FP32 outputs are computed once per (model, data, output) and cached
as memory-mapped ``.npy`` files.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness import metrics
from harness.errors import ConfigError, DataError, QtbenchError

ENTRY_POINT_GROUP = "qtbench.tasks"
BUILTIN: dict[str, str] = {
    "classification": "harness.tasks:ClassificationTask",
    "segmentation": "harness.tasks:SegmentationTask",
    "tensor": "harness.tasks:TensorTask",
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


# ---------------------------------------------------------------------------------------------------------
# Built-in tasks
# ---------------------------------------------------------------------------------------------------------
class ClassificationTask(Task):
    """Logits N×C (higher ranks are flattened to N×·, as before tasks existed): harness.metrics.quality."""

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
        raise ConfigError(f"{where}: task {name!r} ({reg[name][0]}) is not a harness.tasks.Task subclass")
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
    from harness.zoo import META_TASK

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
    names = {s[0] for s in scored}
    return OutputPlan(scored, [o for o in output_names if o not in names], source)


def infer_task(ndim: int) -> Task:
    """Rank 2 → classification (logits), anything else → tensor (never guessed as segmentation: a C×H×W
    feature map and per-pixel logits look alike)."""
    return ClassificationTask() if ndim == 2 else TensorTask()


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

    def row_fields(self) -> dict[str, Any]:
        """Row columns: the first scored output's metrics in the flat columns (the classification contract
        columns when it is a classifier), every output's in ``output_metrics``."""
        _primary, (task, res) = next(iter(self.results.items()))
        fields: dict[str, Any] = {k: v for k, v in res.metrics.items() if k != "retrieval_k"}
        fields["task"] = task.name
        fields["task_source"] = self.plan.source
        fields["outputs"] = json.dumps(list(self.results))
        fields["outputs_ignored"] = json.dumps(self.plan.ignored)
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
    tasks: dict[str, Task] = {}
    for out, idx, task in plan.scored:
        tasks[out] = task if task is not None else infer_task(refs[idx].ndim)
    scorers = {out: tasks[out].scorer(out) for out in tasks}
    labels = evaluation.labels
    batch = batch_for(refs, batch)
    for start in range(0, len(evaluation), batch):
        feeds = evaluation.batch(start, start + batch)
        check_finite_inputs(feeds, evaluation.source, start)
        outs = infer(feeds)
        lab = None if labels is None else np.asarray(labels[start : start + batch])
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
            scorers[out].update(q, ref, lab)
    results = {out: (tasks[out], scorers[out].result()) for out in scorers}
    return Evaluation(plan, results)


def quality_summary(rec: Any) -> str:
    """The headline quality figure of a row for one progress line: top-1 (or agreement without labels) for a
    classifier, mask agreement for segmentation, cosine and SQNR for tensors."""
    task = getattr(rec, "task", "") or "classification"
    if task == "segmentation":
        return f"mask_agree={100 * rec.mask_agreement:.2f}% mIoU_fp={100 * rec.miou_fp:.2f}%"
    if task == "tensor":
        return f"cos={rec.cosine:.4f} sqnr={rec.sqnr_db:.1f}dB"
    if math.isnan(rec.top1) and not math.isnan(rec.top1_agreement):
        return f"agree={100 * rec.top1_agreement:.2f}%"
    return f"top1={100 * rec.top1:.2f}%"

"""What runs for one cell, usually inside a child process: compile, evaluate, time. Returns plain data.

Everything here may import heavy SDKs (through the adapter); the parent process never does.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtbench import backends
from qtbench.backends.base import ModelInput
from qtbench.devices.probe import LoopProbe
from qtbench.harness.core import audit, metrics, tasks
from qtbench.harness.core.config import DataSource, DeviceSettings, MeasureSettings
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import BackendUnavailable, QtbenchError, UnsupportedSpec, one_line
from qtbench.harness.core.onnxfacts import ModelFacts, model_facts, model_header
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.zoo import META_NOTE, META_WEIGHTS, RANDOM_WEIGHTS_NOTE
from qtbench.harness.run.measure import latency_stats, time_inference


@dataclass
class CellJob:
    """Everything a child needs, picklable."""

    model_path: str
    model_sha256: str
    output: str | None
    backend: str
    backend_target: str
    backend_options: dict[str, Any]
    spec: QuantSpec
    measure: MeasureSettings
    evaluation: DataSource | None
    calibration: DataSource | None
    eval_path: str | None
    calib_path: str | None
    cache_dir: str
    artifact_key: str
    device: DeviceSettings = field(default_factory=DeviceSettings)
    timed: bool = True  # False: fidelity only (models[].timing), compile + evaluate without the timed loop
    task: str | dict[str, Any] | None = None  # models[].task: how each output is scored (qtbench.harness.core.tasks)
    #: (spec, artifact key) of the sweep's other cells in this cell's build group (Backend.build_group): the
    #: adapter may build their artifacts in the same calibration pass as this one
    siblings: tuple[tuple[QuantSpec, str], ...] = ()
    #: the user's model as given, when ``model_path`` is intake's normalised form of it (qtbench.harness.core.intake):
    # the
    #: FP32 reference, metadata and files beside the model come from here, so intake cannot hide its own error
    source_path: str = ""
    source_sha256: str = ""
    #: the backend needs the device to itself while building and scoring (Backend.exclusive_device)
    exclusive: bool = False

    @property
    def reference_path(self) -> str:
        return self.source_path or self.model_path

    @property
    def reference_sha256(self) -> str:
        return self.source_sha256 or self.model_sha256

    @property
    def workdir(self) -> Path:
        """The cell's artifact cache entry (shared by every cell with the same artifact key)."""
        return Path(self.cache_dir) / "artifacts" / self.backend / self.artifact_key

    def sibling_workdirs(self) -> list[tuple[QuantSpec, Path]]:
        return [(spec, Path(self.cache_dir) / "artifacts" / self.backend / key) for spec, key in self.siblings]


@dataclass
class CellResult:
    status: str
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    samples: list[np.ndarray] = field(default_factory=list)
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None
    scoring: Scoring | None = None  # compile phase: the quality pass it already ran (see compile_cell)


@dataclass
class Scoring:
    """A cell's quality pass: its row fields, notes, per-sample predictions and labels. Made in a local sweep's
    compile phase when the backend allows (:func:`compile_cell`) and handed to the measure phase, which then only
    times: outputs do not depend on what else the machine runs, timings do."""

    fields: dict[str, Any]
    notes: list[str]
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None


def run_batched(infer: Any, data: Any, out_index: int, batch: int) -> np.ndarray:
    outs = []
    for start in range(0, len(data), batch):
        outs.append(np.asarray(infer(data.batch(start, start + batch))[out_index]))
    return np.concatenate(outs, axis=0)


def fp32_outputs(model_path: str | Path, data: Any, out_index: int, batch: int) -> np.ndarray:
    """Output ``out_index`` of the float model on ONNX Runtime's CPU EP (one thread): the fidelity reference."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return run_batched(lambda f: sess.run(None, dict(f)), data, out_index, batch)


def run_cell(job: CellJob, scoring: Scoring | None = None) -> CellResult:
    """Compile, evaluate and time one cell; every failure becomes a status, never an exception. ``scoring``: the
    quality pass the compile phase already ran for this cell (then only the timed loop runs here)."""
    return _guarded(_run_cell, job, scoring)


def _guarded(fn: Any, job: CellJob, *args: Any, prefix: str = "") -> CellResult:
    """``fn(job, *args)`` with every failure turned into a status: the mapping both phases of a cell share."""
    try:
        return fn(job, *args)
    except UnsupportedSpec as exc:
        return CellResult("skipped", one_line(exc, 600))
    except BackendUnavailable as exc:
        return CellResult("unavailable", one_line(exc, 600))
    except QtbenchError as exc:
        return CellResult("failed", f"{prefix}{type(exc).__name__}: {one_line(exc, 600)}")
    except Exception as exc:  # noqa: BLE001 - an SDK error costs this cell only
        return CellResult("failed", prefix + sdk_failure(job, exc))


def sdk_failure(job: CellJob, exc: BaseException) -> str:
    """One line for a cell that an SDK or library error ended: qtbench's own sentence first (which backend, which
    spec), the library's message after it, and the traceback in a log file beside the artifact, never in the row."""
    first = one_line(exc)
    log = ""
    try:
        job.workdir.mkdir(parents=True, exist_ok=True)
        path = job.workdir / "error.log"
        with path.open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {job.backend} {job.spec.id}\n")
            f.write(traceback.format_exc())
        log = f" (traceback: {path})"
    except OSError:
        pass
    return (
        f"{job.backend} could not run {job.spec.id} on this model: {type(exc).__name__}"
        + (f": {first}" if first else "")
        + log
    )


def _open(job: CellJob) -> tuple[Any, ModelFacts, Any, Any, Path] | CellResult:
    """Backend, graph facts, calibration data, model and workdir of a cell, or the status that ends it early."""

    backend = backends.create(job.backend, job.backend_options, job.backend_target)
    av = backend.availability()
    if not av.available:
        return CellResult("unavailable", av.reason)
    reason = backend.supports(job.spec)
    if reason:
        return CellResult("skipped", reason)
    facts = model_facts(job.model_path)
    calib = None
    if job.calib_path and job.calibration is not None:
        calib = load_dataset(job.calib_path, facts.input_names, None, job.calibration.limit, role="calibration")
    model = ModelInput(
        Path(job.model_path),
        job.model_sha256,
        facts.input_names,
        facts.output_names,
        facts.dynamic_batch,
        Path(job.reference_path),
    )
    return backend, facts, calib, model, job.workdir


def _references(job: CellJob, evaluation: Any, facts: ModelFacts, meta: dict[str, str]) -> tuple[Any, int, Any]:
    """(output plan, evaluation batch size, FP32 reference outputs) of a cell: the references are computed once
    per (model, evaluation set) and cached."""

    plan = tasks.plan_outputs(job.task, job.output, facts.output_names, meta)
    batch = job.measure.eval_batch_size if facts.dynamic_batch else 1
    refs = tasks.fp32_references(
        job.reference_path,
        job.reference_sha256,
        evaluation,
        [i for _o, i, _t in plan.scored],
        batch,
        job.cache_dir,
    )
    return plan, batch, refs


def _score(job: CellJob, compiled: Any, evaluation: Any, facts: ModelFacts, meta: dict[str, str]) -> Scoring:
    """The quality pass: the task(s) score each planned output batch by batch against the cached FP32 references."""

    plan, batch, refs = _references(job, evaluation, facts, meta)
    t_eval = time.perf_counter()
    scored = tasks.evaluate(compiled.infer, evaluation, plan, refs, batch)
    fields: dict[str, Any] = {"eval_s": time.perf_counter() - t_eval, **scored.row_fields()}
    fields.update(eval_samples=len(evaluation), eval_sha256=evaluation.sha256, metrics_version=metrics.METRICS_VERSION)
    labels = None
    if scored.predictions is not None and evaluation.labels is not None:
        labels = np.asarray(evaluation.labels)
    notes = [*scored.notes(), *getattr(evaluation, "warnings", ())]  # e.g. "no labels: accuracy not computed"
    return Scoring(fields, notes, scored.predictions, labels)


def _audit(backend: Any, compiled: Any, job: CellJob) -> Any:
    """The artifact audit of this cell (qtbench.harness.core.audit), once per cache entry: what was built against the
    label."""

    return audit.cached(job.workdir, job.spec, lambda: backend.audit(compiled, job.spec))


def _evaluation(job: CellJob, facts: ModelFacts) -> Any:

    return load_dataset(job.eval_path, facts.input_names, job.evaluation.labels, job.evaluation.limit, lazy=True)


def _run_cell(job: CellJob, scoring: Scoring | None = None) -> CellResult:

    t_cell = time.perf_counter()
    opened = _open(job)
    if isinstance(opened, CellResult):
        return opened
    backend, facts, calib, model, workdir = opened
    evaluation = _evaluation(job, facts) if job.eval_path else None
    fields: dict[str, Any] = {}
    siblings = {"siblings": job.sibling_workdirs()} if job.siblings else {}  # compile_first off: built here
    with backend.compile(model, job.spec, calib, workdir, **siblings) as compiled:
        info = compiled.info
        fields.update(
            numbers=info.numbers,
            artifact_bytes=info.artifact_bytes if info.artifact_bytes is not None else -1,
            compile_s=info.compile_s,
            cache_hit=info.cache_hit,
            execution_device=info.execution_device,
            coverage=json.dumps(info.coverage, sort_keys=True),
            fallback_ops=json.dumps(info.fallback_ops, sort_keys=True),
            notes="; ".join(info.notes),
            backend_extra=json.dumps(info.extra, sort_keys=True, default=str),
        )
        fields.update(_audit(backend, compiled, job).row_fields())
        if info.est_source:
            fields.update(
                est_latency_ms=info.est_latency_ms,
                est_fps=1000.0 / info.est_latency_ms if info.est_latency_ms > 0 else float("nan"),
                est_source=info.est_source,
            )
        result = CellResult("ok")
        meta = dict(model_header(job.reference_path)[1])
        if meta.get(META_WEIGHTS) == "random":  # the `weights` column comes from the sweep, for every row
            fields["notes"] = "; ".join(n for n in (meta.get(META_NOTE, RANDOM_WEIGHTS_NOTE), fields["notes"]) if n)
        if evaluation is not None:
            if scoring is None:
                scoring = _score(job, compiled, evaluation, facts, meta)
                fields["eval_phase"] = "measure"
            else:
                fields["eval_phase"] = "compile"
            fields.update(scoring.fields)
            if scoring.notes:
                fields["notes"] = "; ".join(n for n in (fields["notes"], *scoring.notes) if n)
            result.predictions, result.labels = scoring.predictions, scoring.labels
            timing_source = evaluation
        else:
            timing_source = calib
        if calib is not None and job.spec.is_static:
            if str(info.extra.get("calibration", "")).startswith("external"):
                fields["calib_sha256"] = ""  # a pre-converted artifact: our calibration set never reached it
            else:
                fields["calib_sha256"] = calib.head(job.spec.calib_samples).sha256
        if not job.timed:
            if evaluation is None:
                return CellResult("failed", "models[].timing is false but there is no evaluation data to score")
            fields.update(timing_boundary="none (fidelity only)", energy_source="unavailable: no timed loop ran")
            fields["cell_wall_s"] = time.perf_counter() - t_cell
            result.fields = fields
            return result
        if timing_source is None:
            return CellResult("failed", "no evaluation or calibration data to time with; set `evaluation:`")
        bs = job.measure.batch_size
        if bs > 1 and not facts.dynamic_batch:
            return CellResult("failed", f"measure.batch_size={bs} but the model's batch axis is fixed; use 1")
        feeds = timing_source.batch(0, bs)
        stats: dict[str, Any] = {}

        power = LoopProbe(job.device, info.execution_device)
        fields.update(power.before())
        device_ms: list[float] = []
        t_timed = time.perf_counter()
        for _ in range(job.measure.repeats):
            compiled.device_latencies_ms()  # drop warm-up and evaluation calls
            timing = time_inference(compiled.infer, feeds, job.measure, power.start, power.stop)
            power.loop_done(timing.process_cpu_s, timing.wall_s)
            result.samples.append(timing.samples_ns)
            stats = timing.stats(job.measure.cv_threshold)
            device_ms += (compiled.device_latencies_ms() or [])[-len(timing.samples_ns) :]
        fields["timed_s"] = time.perf_counter() - t_timed
        if device_ms:
            fields["device_latency_ms_p50"] = float(np.median(device_ms))
        if job.measure.repeats > 1:
            stats |= latency_stats(np.concatenate(result.samples), bs, job.measure.cv_threshold)
        fields.update(stats)
        fields.update(power.after([len(s) for s in result.samples], stats["fps"]))
        if info.numbers != "measured":
            # the host ran a simulation of the target: its energy is not the target's, so none is reported
            for k in [k for k in fields if k.startswith(("energy_mj", "power_w", "cost_per"))]:
                fields[k] = float("nan")
            fields["energy_source"] = f"unavailable: {info.numbers} cell; the host's energy is not the target's"
            fields["energy_numbers"] = ""
    fields["cell_wall_s"] = time.perf_counter() - t_cell
    result.fields = fields
    return result


def preload(job: CellJob) -> None:
    """Import what measuring ``job``'s backend needs (its SDK, the timing loop, the data readers) in a measure
    worker while the compile phase runs, so the measure phase does not pay a child's imports in its first cell
    of each backend. Best effort: whatever fails here fails again, and is reported, in the cell itself."""
    try:
        backends.create(job.backend, job.backend_options, job.backend_target).availability()
    except Exception:  # noqa: BLE001 - see the docstring
        pass


def compile_cell(job: CellJob, score: bool = False) -> CellResult:
    """The compile phase of a cell: build its artifact into the cache and report how long that took.

    Nothing is timed: the sweep measures the cell later, alone, from the cached artifact. With ``score`` (a local
    sweep, whose machine also measures) the cell's quality pass runs here too, on the artifact just built, where
    the backend allows (:meth:`backends.base.Backend.scores_off_clock`), and comes back as ``result.scoring``; a
    pass that fails is left to the measure phase, which reports it as the cell's status exactly as without this
    step. Build failures become statuses exactly as in :func:`run_cell`.
    """
    return _guarded(_compile_only, job, score, prefix="compile: ")


def compile_cell_on(job: CellJob, cores: set[int] | None, score: bool = False) -> CellResult:
    """:func:`compile_cell` in this process restricted to ``cores`` (a compile worker's share; None: all)."""
    import os

    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    return compile_cell(job, score)


def _compile_only(job: CellJob, score: bool = False) -> CellResult:
    opened = _open(job)
    if isinstance(opened, CellResult):
        return opened
    backend, facts, calib, model, workdir = opened
    siblings = {"siblings": job.sibling_workdirs()} if job.siblings else {}  # only adapters with a build group
    with backend.compile(model, job.spec, calib, workdir, **siblings) as compiled:
        info = compiled.info
        result = CellResult("ok", fields={"compile_s": info.compile_s, "cache_hit": info.cache_hit})
        if score and job.eval_path and backend.scores_off_clock():
            try:
                meta = dict(model_header(job.reference_path)[1])
                result.scoring = _score(job, compiled, _evaluation(job, facts), facts, meta)
            except Exception:  # noqa: BLE001 - see compile_cell: the measure phase runs it and reports it
                result.scoring = None
    if job.eval_path and result.scoring is None:
        _warm_references(job, facts)
    return result


def _warm_references(job: CellJob, facts: ModelFacts) -> None:
    """Compute the cell's FP32 reference outputs into the cache now, off the clock, so the measure phase only
    reads them. Best effort: a failure here (a model that overflows on the data, say) happens again when the cell
    is measured, which reports it as the cell's status exactly as without this step."""
    try:
        _references(job, _evaluation(job, facts), facts, dict(model_header(job.reference_path)[1]))
    except Exception:  # noqa: BLE001 - see the docstring: the measure phase reports it
        pass

"""What runs for one cell, usually inside a child process: compile, evaluate, time. Returns plain data.

Everything here may import heavy SDKs (through the adapter); the parent process never does.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import DataSource, DeviceSettings, MeasureSettings
from harness.errors import BackendUnavailable, QtbenchError, UnsupportedSpec
from harness.spec import QuantSpec


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


@dataclass
class CellResult:
    status: str
    message: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    samples: list[np.ndarray] = field(default_factory=list)
    predictions: np.ndarray | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class ModelFacts:
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool


def model_facts(path: str | Path) -> ModelFacts:
    """Input/output names and whether the batch axis is dynamic, from the ONNX graph (no runtime needed)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dyn = all(
        i.type.tensor_type.shape.dim and not i.type.tensor_type.shape.dim[0].HasField("dim_value") for i in inputs
    )
    return ModelFacts([i.name for i in inputs], [o.name for o in graph.output], dyn)


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


def reference_logits(job: CellJob, facts: ModelFacts, evaluation: Any, out_index: int) -> np.ndarray:
    """FP32 ONNX Runtime CPU outputs on the eval set, cached by (model sha, eval sha) — the fidelity baseline."""
    cache = Path(job.cache_dir) / "reference" / f"{job.model_sha256[:16]}-{evaluation.sha256[:16]}-{out_index}.npy"
    if cache.is_file():
        return np.load(cache)
    batch = job.measure.eval_batch_size if facts.dynamic_batch else 1
    ref = fp32_outputs(job.model_path, evaluation, out_index, batch)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, ref)
    os.replace(tmp, cache)
    return ref


def run_cell(job: CellJob) -> CellResult:
    """Compile, evaluate and time one cell; every failure becomes a status, never an exception."""
    try:
        return _run_cell(job)
    except UnsupportedSpec as exc:
        return CellResult("skipped", str(exc))
    except BackendUnavailable as exc:
        return CellResult("unavailable", str(exc))
    except QtbenchError as exc:
        return CellResult("failed", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - an SDK error costs this cell only
        tb = traceback.format_exc(limit=6)
        return CellResult("failed", f"{type(exc).__name__}: {exc}\n{tb}")


def _run_cell(job: CellJob) -> CellResult:
    import backends
    from harness import metrics
    from harness.data import load_dataset
    from harness.measure import time_inference

    t_cell = time.perf_counter()
    backend = backends.create(job.backend, job.backend_options, job.backend_target)
    av = backend.availability()
    if not av.available:
        return CellResult("unavailable", av.reason)
    reason = backend.supports(job.spec)
    if reason:
        return CellResult("skipped", reason)
    facts = model_facts(job.model_path)
    out_index = facts.output_names.index(job.output) if job.output else 0
    evaluation = calib = None
    if job.eval_path:
        evaluation = load_dataset(job.eval_path, facts.input_names, job.evaluation.labels, job.evaluation.limit)
    if job.calib_path:
        calib = load_dataset(job.calib_path, facts.input_names, None, job.calibration.limit)
    from backends.base import ModelInput

    model = ModelInput(
        Path(job.model_path), job.model_sha256, facts.input_names, facts.output_names, facts.dynamic_batch
    )
    workdir = Path(job.cache_dir) / "artifacts" / job.backend / job.artifact_key
    fields: dict[str, Any] = {}
    with backend.compile(model, job.spec, calib, workdir) as compiled:
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
        if info.est_source:
            fields.update(
                est_latency_ms=info.est_latency_ms,
                est_fps=1000.0 / info.est_latency_ms if info.est_latency_ms > 0 else float("nan"),
                est_source=info.est_source,
            )
        result = CellResult("ok")
        if evaluation is not None:
            ref = reference_logits(job, facts, evaluation, out_index)
            batch = job.measure.eval_batch_size if facts.dynamic_batch else 1
            logits = run_batched(compiled.infer, evaluation, out_index, batch)
            if logits.ndim > 2:
                logits = logits.reshape(len(logits), -1)
                ref = ref.reshape(len(ref), -1)
            q = metrics.quality(logits, ref, evaluation.labels)
            fields.update(q)
            fields.update(
                eval_samples=len(evaluation), eval_sha256=evaluation.sha256, metrics_version=metrics.METRICS_VERSION
            )
            if evaluation.labels is not None:
                fields["fp_top1"] = metrics.topk_accuracy(ref, evaluation.labels, 1)
                bins = metrics.calibration_bins(metrics.softmax(logits), evaluation.labels)
                fields["reliability"] = json.dumps(
                    {k: [None if np.isnan(v) else float(v) for v in arr] for k, arr in bins.items()}
                )
            result.predictions = np.argmax(logits, axis=1)
            result.labels = evaluation.labels
            timing_source = evaluation
        else:
            timing_source = calib
        if calib is not None and job.spec.is_static:
            fields["calib_sha256"] = calib.head(job.spec.calib_samples).sha256
        if timing_source is None:
            return CellResult("failed", "no evaluation or calibration data to time with; set `evaluation:`")
        bs = job.measure.batch_size
        if bs > 1 and not facts.dynamic_batch:
            return CellResult("failed", f"measure.batch_size={bs} but the model's batch axis is fixed; use 1")
        feeds = timing_source.batch(0, bs)
        stats: dict[str, Any] = {}
        power = _PowerProbe(job.device)
        fields.update(power.before())
        device_ms: list[float] = []
        for _ in range(job.measure.repeats):
            compiled.device_latencies_ms()  # drop warm-up and evaluation calls
            timing = time_inference(compiled.infer, feeds, job.measure, power.start, power.stop)
            result.samples.append(timing.samples_ns)
            stats = timing.stats(job.measure.cv_threshold)
            device_ms += (compiled.device_latencies_ms() or [])[-len(timing.samples_ns) :]
        if device_ms:
            fields["device_latency_ms_p50"] = float(np.median(device_ms))
        if job.measure.repeats > 1:
            from harness.measure import latency_stats

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


class _PowerProbe:
    """Meter + idle baseline + thermal snapshots around the timed loops of one cell."""

    def __init__(self, settings: DeviceSettings) -> None:
        from devices.power import PowerSession, choose_meter

        self.settings = settings
        self.meter, self.why_not = choose_meter(
            settings.meter, log=settings.meter_log, watts_per_core=settings.watts_per_core
        )
        self.session = PowerSession(self.meter, settings.sample_period_ms / 1000) if self.meter else None
        self.traces: list[Any] = []
        self.idle = None
        self.thermal0: dict[str, Any] = {}

    def before(self) -> dict[str, Any]:
        from devices.thermal import snapshot

        self.thermal0 = snapshot()
        if self.session and self.meter.kind == "measured" and self.settings.idle_s > 0:
            self.idle = self.session.idle(self.settings.idle_s)
        return {"temp_c_before": self.thermal0["temp_c_max"], "cpu_mhz_before": self.thermal0["cpu_mhz_mean"]}

    def start(self) -> None:
        if self.session:
            self.session.start()

    def stop(self) -> None:
        if self.session:
            self.traces.append(self.session.stop())

    def after(self, iterations: list[int], fps: float) -> dict[str, Any]:
        from devices.catalog import cost_per_million, load_catalog, match_board
        from devices.host import host_info
        from devices.power import energy_fields
        from devices.thermal import snapshot, throttled

        t1 = snapshot()
        hot, why = throttled(self.thermal0, t1)
        out: dict[str, Any] = {
            "temp_c_after": t1["temp_c_max"],
            "cpu_mhz_after": t1["cpu_mhz_mean"],
            "throttled": hot,
            "throttle_reason": why,
        }
        if not self.session:
            out["energy_source"] = "unavailable: " + "; ".join(self.why_not)
            return out
        out.update(energy_fields(self.traces, self.idle, iterations, self.meter, self.session.period_s))
        board = (
            load_catalog().get(self.settings.catalog)
            if self.settings.catalog
            else match_board(host_info()["board_model"])
        )
        price = self.settings.price_usd if self.settings.price_usd is not None else (board or {}).get("price_usd")
        out["cost_per_million_inferences"] = cost_per_million(
            out["energy_mj_per_inf"] / 1000,
            fps,
            price,
            self.settings.electricity_usd_per_kwh,
            self.settings.lifetime_years,
            self.settings.duty_cycle,
        )
        return out

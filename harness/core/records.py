"""One typed record per result row; the DataFrame is built here and nowhere else.

``SCHEMA_VERSION`` versions the columns. Readers refuse rows from a newer schema and fill columns that an older
schema lacked with their defaults (see :func:`to_frame`). The column names marked *contract* are what reports and
``qtbench check`` read; keep them stable.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from qtbench.harness.core.errors import ResultsError

SCHEMA_VERSION = 3  # 3: intake and artifact audit columns; 2: task plug-ins (task, outputs, output_metrics, ...)
STATUSES = ("ok", "skipped", "failed", "timeout", "unavailable")
NAN = math.nan


@dataclass(frozen=True)
class Record:
    """One cell's outcome: identity, status, timing, quality, compilation facts and provenance."""

    # identity (contract: model, model_sha256, backend, backend_version, device, spec_id ...)
    record_id: str
    run_id: str
    sweep: str
    cell_key: str
    created_utc: str
    model: str
    model_sha256: str
    backend: str
    backend_version: str
    device: str
    spec_id: str
    precision: str
    weight_bits: int
    activation_bits: int
    scaling: str
    granularity: str
    calibration: str
    status: str
    status_message: str = ""
    numbers: str = ""  # measured | simulated | estimated; empty when nothing ran (skipped, failed, ...)
    schema_version: int = SCHEMA_VERSION
    # spec details
    weight_symmetric: bool = True
    activation_symmetric: bool = False
    calib_percentile: float = NAN
    calib_samples: int = 0
    quant_format: str = ""
    backend_slug: str = ""  # the adapter; `backend` is its label when one adapter runs with several option sets
    backend_options: str = "{}"
    model_path: str = ""
    # intake (qtbench.harness.core.intake): what normalising the user's model did for this backend's form of it, and the
    # sha of the form compiled when it is not the user's file
    intake: str = ""
    intake_sha256: str = ""
    # artifact audit (qtbench.harness.core.audit): whether the built artifact honours the spec, from reading it back
    audit: str = ""  # "honoured …" | "mismatch: why" | "not audited: why" | "" (nothing was built)
    audit_reader: str = ""
    audit_share: float = NAN  # weight parameters at the spec's bits, granularity and symmetry
    audit_float_share: float = NAN  # weight parameters left in float
    audit_quantized_nodes: int = -1
    audit_float_nodes: int = -1
    audit_bits: str = ""  # weight parameters by bit width, e.g. "4:93%, float:7%"
    # study design (models[].group / seed / timing): which checkpoint family and training replica a row belongs to
    group: str = ""  # e.g. "fp" or "quanttrim"; `qtbench compare` contrasts groups
    seed: int = -1  # the checkpoint's training seed (replica); -1 = not declared
    timed: bool = True  # False: fidelity only, no timed loop ran (latency columns are empty by design)
    # timing (harness clock, host_to_host)
    warmup: int = 0
    min_iterations: int = 0  # the protocol's stop rules (iterations below is what the loop actually ran)
    min_duration_s: float = 0.0
    iterations: int = 0
    batch_size: int = 1
    latency_ms_mean: float = NAN
    latency_ms_std: float = NAN
    latency_ms_min: float = NAN
    latency_ms_p50: float = NAN
    latency_ms_p90: float = NAN
    latency_ms_p95: float = NAN
    latency_ms_p99: float = NAN
    latency_ms_max: float = NAN
    latency_cv: float = NAN
    unstable: bool = False
    fps: float = NAN
    timing_boundary: str = ""
    device_latency_ms_p50: float = NAN  # the runtime's own figure (e.g. OpenVINO InferRequest.latency), beside ours
    # The target's latency from a model, never a clock: vendor cycle counts (QNN HTP, Vela) or a roofline (simnpu).
    est_latency_ms: float = NAN
    est_fps: float = NAN
    est_source: str = ""  # how it was estimated, with the assumptions (clock, profile, cost model)
    timed_wall_s: float = NAN
    process_cpu_s: float = NAN
    cpu_utilization: float = NAN
    loadavg_1m_before: float = NAN
    loadavg_1m_after: float = NAN
    # quality (qtbench.harness.core.metrics, METRICS_VERSION)
    eval_samples: int = 0
    eval_sha256: str = ""
    #: sha256 of the scored outputs over the evaluation set: equal digests = bit-identical numerics
    outputs_sha256: str = ""
    calib_sha256: str = ""
    metrics_version: int = 0
    top1: float = NAN
    top5: float = NAN
    top1_agreement: float = NAN
    kl_fp: float = NAN
    logit_cosine: float = NAN
    sqnr_db: float = NAN
    max_abs_err: float = NAN
    ece: float = NAN
    mce: float = NAN
    nll: float = NAN
    brier: float = NAN
    fp_top1: float = NAN  # the FP32 reference's own top-1 on the same eval set, for the FP→Q gap
    reliability: str = "{}"  # JSON: 15-bin count/confidence/accuracy, the data of a reliability diagram
    # tasks (qtbench.harness.core.tasks): the flat quality columns hold the first scored output's metrics
    task: str = ""  # classification | segmentation | tensor | a plug-in's name: the task of the first scored output
    task_source: str = ""  # config | model metadata | inferred
    outputs: str = "[]"  # JSON list: the outputs scored, first = the one in the flat columns
    outputs_ignored: str = "[]"  # JSON list: outputs without a task (not scored)
    output_metrics: str = "{}"  # JSON {output: {task, options, metric: value}} for every scored output
    miou: float = NAN  # segmentation vs label masks
    pixel_accuracy: float = NAN
    pixel_ece: float = NAN
    miou_fp: float = NAN  # segmentation vs the FP32 model's own masks
    mask_agreement: float = NAN
    cosine: float = NAN  # tensor: mean per-sample cosine vs FP32
    rel_l2: float = NAN
    retrieval_agreement: float = NAN
    weights: str = ""  # "random" for a zoo model without trained weights (its accuracy means nothing)
    # energy and device state (devices/, contract columns for reports and checks)
    energy_mj_per_inf: float = NAN
    energy_mj_per_inf_above_idle: float = NAN
    power_w_mean: float = NAN
    power_w_peak: float = NAN
    power_w_p5: float = NAN  # 5th/95th percentile of per-repeat peak power (the report's whiskers)
    power_w_p95: float = NAN
    power_w_idle: float = NAN
    energy_source: str = ""  # the meter, e.g. "rapl (package-0)" or "estimated: process CPU time × 10 W/core"
    energy_numbers: str = ""  # measured | estimated
    power_sample_period_ms: float = NAN
    power_update_period_ms: float = NAN
    energy_window_short: bool = False
    cost_per_million_inferences: float = NAN
    throttled: bool = False
    throttle_reason: str = ""
    temp_c_before: float = NAN
    temp_c_after: float = NAN
    cpu_mhz_before: float = NAN
    cpu_mhz_after: float = NAN
    # compilation
    artifact_bytes: int = -1
    compile_s: float = NAN
    cache_hit: bool = False
    execution_device: str = ""
    coverage: str = "{}"  # JSON: nodes per compute unit
    fallback_ops: str = "{}"  # JSON: op → why it is not on the accelerator / not quantized
    notes: str = ""
    backend_extra: str = "{}"  # JSON: adapter-specific facts (providers, threads, ...)
    cell_wall_s: float = NAN
    # where a cell's wall time went: its quality pass and its timed loops (warm-ups included); the rest of
    # cell_wall_s is loading, compiling or reading the artifact, and writing results
    eval_s: float = NAN
    timed_s: float = NAN
    # where the quality pass ran: "compile" (in a local sweep's compile phase, beside other builds: outputs do
    # not depend on load; eval_s is then not part of cell_wall_s) or "measure" (in the cell, before its timed loop)
    eval_phase: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Record) if f.default is not MISSING}


def to_frame(records: list[Record] | list[dict[str, Any]]) -> Any:
    """Records (or their dicts, e.g. read back from Parquet) → a DataFrame with every column in schema order."""
    import pandas as pd

    rows = [r.to_dict() if isinstance(r, Record) else r for r in records]
    df = pd.DataFrame(rows, columns=list(COLUMNS)) if rows else pd.DataFrame(columns=list(COLUMNS))
    return df


def upgrade_frame(df: Any, source: str) -> Any:
    """Check a stored frame's schema and add columns newer schemas introduced, with their defaults."""

    if "schema_version" in df and len(df):
        newest = int(df["schema_version"].max())
        if newest > SCHEMA_VERSION:
            raise ResultsError(
                f"{source} was written with results schema {newest}; this qtbench reads ≤ {SCHEMA_VERSION}: "
                "upgrade qtbench (pip install -U qtbench)"
            )
    had_task = "task" in df
    for col in COLUMNS:
        if col not in df:
            df[col] = DEFAULTS.get(col, NAN)
    if not had_task and len(df):
        # schema 1 scored one output as classification logits whenever it had evaluation data
        scored = df["eval_samples"].fillna(0).astype(int) > 0
        df.loc[scored, "task"] = "classification"
        df.loc[scored, "task_source"] = "inferred (schema 1 rows: the first or named output as logits)"
    return df


def utc_now() -> str:
    """The timestamp rows and manifests carry: UTC, microseconds, ISO 8601 with Z."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

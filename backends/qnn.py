"""Qualcomm QNN adapter (``qnn``): ONNX Runtime's QNN execution provider, HTP backend.

On an x86 host the ``onnxruntime-qnn`` wheel (extra ``qtbench[qnn]``) ships Qualcomm's HTP backend library, which
runs the QNN graph on an x86 *simulation* of the Hexagon tensor processor. The numerics are the vendor stack's
(its graph compiler, fusions, requantization), so accuracy rows are ``simulated``; the harness's clock times the
simulator, not a device. The device figure comes from the HTP's own detailed profile: accelerator cycles per
inference, turned into ``est_latency_ms`` at a stated clock (``clock_ghz``, an assumption: Qualcomm publishes no
HTP clock). On a Snapdragon device with the same wheel the same code runs the real NPU and rows say ``measured``.

The QDQ graph comes from ``get_qnn_qdq_config`` (QNN's op-specific quantization overrides) with the activation
ranges the ``ort`` adapter uses (:func:`backends.qdq.static_ranges`), so a gap between ``ort`` and ``qnn`` rows is
the vendor stack's, not calibration's. Coverage comes from QNN EP's framework-op trace: nodes on HTP vs CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends._graph import fix_batch, per_sample
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once, quiet
from qtbench.backends.ort import OrtCompiled
from qtbench.backends.qdq import static_ranges, weight_type
from qtbench.harness.core.audit import audit_onnx
from qtbench.harness.core.errors import BackendUnavailable, ConfigError
from qtbench.harness.core.spec import QuantSpec

EP = "QNNExecutionProvider"
BACKEND_TYPES = ("htp", "cpu")
HTP_ARCHS = (0, 68, 69, 73, 75, 79, 81)
_registered = False
#: Bumped when the adapter changes what a cell computes (part of the cache key through the versions).
ADAPTER_VERSION = 2


def _register() -> Any:
    """Register the QNN plugin EP once per process; returns onnxruntime."""
    global _registered
    import onnxruntime as ort
    import onnxruntime_qnn

    if not _registered:
        with contextlib.suppress(Exception):  # already registered by someone else in this process
            ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
        _registered = True
    return ort


def on_qualcomm_soc() -> bool:
    """True on an ARM64 host, where the HTP library drives a real Hexagon NPU instead of the x86 simulator."""
    return platform.machine().lower() in ("aarch64", "arm64")


class QnnCompiled(OrtCompiled):
    """An ORT session holding the QNN EP; the graph has a fixed batch of 1, so larger batches run per sample."""

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return per_sample(super()._infer, feeds)


class QnnBackend(Backend):
    """ONNX Runtime + QNN EP: Qualcomm's HTP graph compiler and its x86 simulator (real NPU on Snapdragon)."""

    slug = "qnn"
    output_only = "the QNN EP runs a compiled context binary (EPContext node): intermediate tensors are not exposed"
    simulation_twin = ("simnpu", {"profile": "qualcomm-htp"})
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "Qualcomm QNN EP (onnxruntime-qnn): HTP simulator on x86, Hexagon NPU on Snapdragon"
    option_defaults: ClassVar[dict[str, Any]] = {
        "backend_type": "htp",  # htp | cpu (QNN's reference CPU backend, for op-level debugging)
        # Target: Snapdragon 8 Gen 3 (SM8650 = QNN soc_model 57, Hexagon HTP v75). Others: SM8550 = 43 / v73,
        # SM8750 = 69 / v79, SM8450 = 36 / v69, SA8295 = 39 / v68 (QNN's SoC table). Cycle counts and even
        # numerics differ by arch, so the row records both.
        "soc_model": 57,
        "htp_arch": 75,
        "clock_ghz": 1.0,  # ASSUMED HTP clock for cycles → ms; Qualcomm publishes none; set yours
        "profile_runs": 20,  # inferences profiled at compile time for the cycle count (median)
        "cpu_fallback": True,  # ops QNN rejects run on ORT's CPU EP (as deployed); False → the cell fails
        "threads": 1,  # CPU EP threads for the fallback part and I/O (de)quantization
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if o["backend_type"] not in BACKEND_TYPES:
            raise ConfigError(f"backends.qnn.options.backend_type: choose one of {', '.join(BACKEND_TYPES)}")
        if o["htp_arch"] not in HTP_ARCHS:
            raise ConfigError(f"backends.qnn.options.htp_arch: choose one of {', '.join(map(str, HTP_ARCHS))}")
        if not isinstance(o["clock_ghz"], int | float) or o["clock_ghz"] <= 0:
            raise ConfigError("backends.qnn.options.clock_ghz: a positive number (the HTP clock you assume)")
        if not isinstance(o["profile_runs"], int) or o["profile_runs"] < 1:
            raise ConfigError("backends.qnn.options.profile_runs: an integer ≥ 1")

    def availability(self) -> Availability:
        try:
            import onnxruntime_qnn
        except ImportError as exc:
            return Availability(False, f"onnxruntime-qnn is not importable ({exc}): pip install 'qtbench[qnn]'")
        try:
            ort = _register()
            devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
        except Exception as exc:  # noqa: BLE001 - a broken plugin library is an unavailable backend
            return Availability(False, f"QNN EP library failed to register: {exc}")
        if not devices:
            return Availability(False, "QNN EP registered but reports no device; check the onnxruntime-qnn install")
        versions = {
            "onnxruntime": ort.__version__,
            "onnxruntime-qnn": onnxruntime_qnn.__version__,
            "qnn-sdk": getattr(onnxruntime_qnn.build_and_package_info, "qnn_version", "?"),
            "adapter": str(ADAPTER_VERSION),
        }
        where = "npu" if on_qualcomm_soc() else "htp-simulator"
        return Availability(True, "", versions, (where,))

    def supports(self, spec: QuantSpec) -> str | None:
        htp = self.options["backend_type"] == "htp"
        if spec.precision == "bf16":
            return "QNN HTP bf16 needs soc_model ≥ 88 hardware; not wired in this adapter"
        if spec.precision == "fp16" and htp and not self.options["soc_model"]:
            return "QNN HTP fp16 needs options.soc_model (e.g. 57 = SM8650)"
        if spec.precision == "fp32" and htp:
            return "the HTP has no fp32 arithmetic (QNN runs float graphs in fp16); use fp16, or backend_type: cpu"
        if spec.scaling in ("dynamic", "weightonly"):
            return f"QNN HTP runs static QDQ graphs; {spec.scaling} quantization has no HTP path here"
        if spec.format == "qoperator":
            return "QNN EP consumes QDQ graphs only; use format qdq"
        if spec.precision == "int4" and spec.granularity != "per-channel":
            return "QNN takes 4-bit weights per-channel only (get_qnn_qdq_config); use granularity per-channel"
        if spec.precision in ("int8", "int4") and spec.granularity == "per-channel" and not spec.weight_symmetric:
            # read back from the artifacts: uint8 weights with zero point 128 (int4: int4, zero point 0)
            return "get_qnn_qdq_config quantizes per-channel weights symmetrically; use -pc-wsym (or -pt- for asym)"
        if spec.precision in ("int8", "int4") and spec.activation_symmetric:
            return "QNN HTP quantizes activations as asymmetric uint8 (get_qnn_qdq_config default); use asymmetric"
        return None

    def audit(self, compiled: Compiled, spec: QuantSpec) -> Any:
        """Read back the QDQ graph handed to QNN (``model.onnx`` beside the artifact) with the ONNX reader: the
        EPContext model the cell ships wraps an HTP context binary no public reader opens. A float graph on the
        HTP runs in fp16 (``enable_htp_fp16_precision``, set by this adapter for float graphs): its fp32 weights
        count as 16-bit, with a note saying so."""

        shipped = compiled.info.artifact_path
        qdq = shipped.with_name("model.onnx") if shipped is not None else None
        if qdq is None or not qdq.is_file():
            return f"qnn: the QDQ graph handed to QNN is missing ({qdq})"
        facts = audit_onnx(qdq, self.slug)
        facts.why["MatMul"] = "QNN's HTP has no per-channel MatMul: ORT's QNN config quantizes its weights per tensor"
        if shipped != qdq:
            facts.notes.append(
                "read from the QDQ graph handed to QNN; the HTP context binary itself is not readable here"
            )
        if spec.is_float and self.options["backend_type"] == "htp":
            widened = [w for w in facts.weights if w.bits == 32]
            for w in widened:
                w.bits = 16
            if widened:
                facts.notes.append(
                    f"{len(widened)} fp32 weight(s) counted as fp16: the HTP runs float graphs with "
                    "enable_htp_fp16_precision=1 (a provider option, not visible in the graph)"
                )
        return facts

    # -- compilation ---------------------------------------------------------------------------------------
    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        t0 = time.perf_counter()
        artifact = workdir / "model.onnx"

        def build(notes: list[str]) -> None:
            fixed = fix_batch(model.path, workdir / "fixed.onnx")
            if spec.is_float:
                fixed.replace(artifact)
            else:
                self._quantize(model, fixed, spec, calib, workdir, artifact, notes)
                fixed.unlink()

        notes, cache_hit = build_once(artifact, build)
        quant_s = time.perf_counter() - t0
        # what a killed compile left (we hold the compile lock): its trace folder, a half-written context
        for stale in [*workdir.glob("trace-*"), *workdir.glob(".tmp-*-model_ctx_*")]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        trace_dir = workdir / f"trace-{time.time_ns()}"
        htp = self.options["backend_type"] == "htp"
        ctx = workdir / f"model_ctx_{self.options['soc_model']}_v{self.options['htp_arch']}.onnx"
        # the context binary is written under a temp name and renamed when whole: a compile killed while writing
        # it leaves no file that a later compile would take for a finished context
        pending = None if ctx.is_file() or not htp else ctx.with_name(f".tmp-{os.getpid()}-{ctx.name}")
        with quiet(workdir / "qnn.log"):  # the HTP library prints its LIBNATIVE/thread-local banner on load
            session = self._session(artifact, spec.is_float, trace_dir=trace_dir, context=pending)
        if pending is not None and pending.is_file():
            os.replace(pending, ctx)
        compile_s = time.perf_counter() - t0
        simulated = not on_qualcomm_soc() and htp
        shipped = ctx if ctx.is_file() else artifact
        info = CompiledInfo(
            artifact_path=shipped,
            artifact_bytes=shipped.stat().st_size,
            numbers="simulated" if simulated else "measured",
            execution_device="npu" if htp else "cpu",
            notes=notes,
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.extra.update(
            {
                "providers": ",".join(session.get_providers()),
                "backend_type": self.options["backend_type"],
                "htp_arch": self.options["htp_arch"],
                "soc_model": self.options["soc_model"],
                "quantize_s": round(quant_s, 3),
                "qdq_onnx_bytes": artifact.stat().st_size,
                "artifact": "QNN context binary (EPContext model)" if shipped == ctx else "QDQ ONNX",
            }
        )
        if simulated:
            info.notes.append("numerics from Qualcomm's HTP simulator on x86; wall-clock latency is the simulator's")
        self._coverage(trace_dir, info)
        if htp:
            with quiet(workdir / "qnn.log"):
                self._estimate(artifact, spec.is_float, calib, workdir, info)
        return QnnCompiled(session, info)

    def _quantize(
        self,
        model: ModelInput,
        fixed: Path,
        spec: QuantSpec,
        calib: Any,
        workdir: Path,
        out: Path,
        notes: list[str],
    ) -> None:
        import onnxruntime.quantization as q
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer warns about pre-processing on every call
        fixed_model = ModelInput(fixed, model.sha256, model.input_names, model.output_names, dynamic_batch=False)
        cache, method = static_ranges(fixed_model, spec, calib, workdir, notes)
        wtype = weight_type(spec)
        cfg = get_qnn_qdq_config(
            str(fixed),
            None,
            calibrate_method=method,
            activation_type=q.QuantType.QUInt8,
            weight_type=wtype,
            per_channel=spec.granularity == "per-channel",
            weight_symmetric=spec.weight_symmetric,
        )
        with contextlib.redirect_stdout(io.StringIO()):
            q.quantize_static(
                str(fixed),
                str(out),
                None,
                calibrate_method=method,
                quant_format=cfg.quant_format,
                activation_type=cfg.activation_type,
                weight_type=cfg.weight_type,
                op_types_to_quantize=cfg.op_types_to_quantize,
                nodes_to_exclude=cfg.nodes_to_exclude,
                per_channel=cfg.per_channel,
                calibration_cache_path=str(cache),
                extra_options=cfg.extra_options,
            )
        notes.append("QDQ by get_qnn_qdq_config (QNN op overrides) on the ort adapter's activation ranges")

    def _provider_options(self, float_graph: bool, **extra: str) -> dict[str, str]:
        o = self.options
        # fp16 precision is only for float graphs, and QNN insists on a soc_model with it
        opts = {"backend_type": o["backend_type"], "enable_htp_fp16_precision": "1" if float_graph else "0"}
        if o["htp_arch"]:
            opts["htp_arch"] = str(o["htp_arch"])
        if o["soc_model"]:
            opts["soc_model"] = str(o["soc_model"])
        return opts | extra

    def _session(
        self,
        path: Path,
        float_graph: bool,
        trace_dir: Path | None = None,
        profile: Path | None = None,
        context: Path | None = None,
    ) -> Any:
        ort = _register()
        devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
        if not devices:
            raise BackendUnavailable("QNN EP reports no device")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options["threads"]
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if not self.options["cpu_fallback"]:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        if context is not None:  # write the compiled QNN context (what ships to the device) beside the model
            so.add_session_config_entry("ep.context_enable", "1")
            so.add_session_config_entry("ep.context_file_path", str(context))
            so.add_session_config_entry("ep.context_embed_mode", "1")
        extra: dict[str, str] = {}
        if trace_dir is not None:
            extra |= {"enable_framework_op_trace": "1", "framework_op_trace_dir": str(trace_dir)}
        if profile is not None:
            extra |= {"profiling_level": "detailed", "profiling_file_path": str(profile)}
        so.add_provider_for_devices(devices, self._provider_options(float_graph, **extra))
        return ort.InferenceSession(str(path), so)

    def _coverage(self, trace_dir: Path, info: CompiledInfo) -> None:
        """Nodes on the QNN graph vs left to ORT's CPU EP, from QNN EP's framework-op trace."""
        files = sorted(trace_dir.glob("*.json"))
        if not files:
            info.notes.append("QNN EP wrote no op trace; coverage unknown")
            return
        trace = json.loads(files[-1].read_text())
        summary = trace.get("summary", {})
        unit = "npu" if self.options["backend_type"] == "htp" else "qnn-cpu"
        on_qnn, off = int(summary.get("supported_nodes", 0)), int(summary.get("unsupported_nodes", 0))
        info.coverage = {k: v for k, v in {unit: on_qnn, "cpu": off}.items() if v}
        for node in trace.get("unsupported_nodes", []):
            info.fallback_ops.setdefault(node.get("op_type", "?"), node.get("reason", ""))
        info.extra["qnn_ops"] = summary.get("total_qnn_ops")
        info.extra["qnn_subgraphs"] = summary.get("qnn_subgraphs")
        for f in files:
            f.unlink()
        with contextlib.suppress(OSError):
            trace_dir.rmdir()

    def _estimate(self, artifact: Path, float_graph: bool, calib: Any, workdir: Path, info: CompiledInfo) -> None:
        """Profile ``profile_runs`` inferences; HTP accelerator cycles → est_latency_ms at ``clock_ghz``.

        QNN writes the profile when the session is released, so this runs in its own short-lived session.
        """
        if calib is not None and len(calib):
            feeds = calib.batch(0, 1)
        else:
            import onnx

            graph = onnx.load(str(artifact), load_external_data=False).graph
            feeds = {
                i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32) for i in graph.input
            }
        with tempfile.TemporaryDirectory(dir=workdir) as d:
            prof = Path(d) / "profile.csv"
            session = self._session(artifact, float_graph, profile=prof)
            for _ in range(self.options["profile_runs"] + 1):  # +1: the first run includes graph setup
                session.run(None, dict(feeds))
            del session
            if not prof.is_file():
                info.notes.append("QNN detailed profiling wrote no file; no cycle estimate")
                return
            cycles, per_op = parse_profile(prof.read_text())
        if not cycles:
            info.notes.append("QNN profile holds no accelerator cycle counts; no estimate")
            return
        runs = np.asarray(cycles[1:] or cycles, dtype=float)
        median = float(np.median(runs))
        p10, p90 = (float(v) for v in np.percentile(runs, [10, 90]))
        clock = float(self.options["clock_ghz"])
        info.est_latency_ms = median / (clock * 1e6)
        info.est_source = (
            f"QNN HTP profile: median {median:,.0f} accelerator cycles over {len(runs)} runs (p10–p90 "
            f"{p10:,.0f}–{p90:,.0f}) at an assumed {clock:g} GHz clock (set options.clock_ghz for your SoC); "
            f"soc_model {self.options['soc_model']}, HTP v{self.options['htp_arch']}"
        )
        info.extra.update(
            htp_cycles_p50=median, htp_cycles_p10=p10, htp_cycles_p90=p90, htp_cycles_min=float(runs.min())
        )
        if (p90 - p10) > 0.2 * median:
            info.notes.append(
                f"HTP simulator cycle counts vary {100 * (p90 - p10) / median:.0f}% (p10–p90) between identical runs "
                "on this host; treat est. ms as approximate"
            )
        top = sorted(per_op.items(), key=lambda kv: -kv[1])[:5]
        info.extra["htp_top_ops_cycles"] = {k: round(v) for k, v in top}


def parse_profile(text: str) -> tuple[list[float], dict[str, float]]:
    """QNN EP profiling CSV → (accelerator cycles per execute, median cycles per op).

    Rows look like ``0,BACKEND,779678,CYCLES,BACKEND,ROOT,Accelerator (execute) time (cycles),`` once per run and
    ``0,NODE,44524,CYCLES,BACKEND,SUB-EVENT,/stem/Conv_token_1:OpId_25 (cycles),<onnx ops>`` per op.
    """
    cycles: list[float] = []
    per_op: dict[str, list[float]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        unit = (row.get("Unit of Measurement") or "").strip().upper()
        ident = (row.get("Event Identifier") or "").strip()
        if unit != "CYCLES":
            continue
        try:
            value = float(row.get("Time") or "nan")
        except ValueError:
            continue
        if ident == "Accelerator (execute) time (cycles)":
            cycles.append(value)
        elif row.get("Message") == "NODE" and ident.endswith("(cycles)"):
            op = ident.rsplit(" (cycles)", 1)[0].split(":OpId_")[0]
            per_op.setdefault(op, []).append(value)
    return cycles, {k: statistics.median(v) for k, v in per_op.items()}

"""ONNX Runtime adapter (``ort``): fp32, fp16, INT8 static (QDQ / QOperator) and dynamic, INT4 W4A8 and weight-only.

Execution providers: ``providers: auto`` takes the first present of TensorRT, CUDA, DirectML, CoreML, then CPU;
the providers the session actually holds are recorded (CPU fallback included). Quantized graphs come from
:mod:`backends.qdq` (``onnxruntime.quantization`` fed with activation ranges from statistics collected once per
model and calibration set), the same builder the qnn, tensorrt, openvino and simnpu adapters call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import qdq, taps
from qtbench.backends._cuda import gpu_identity
from qtbench.backends._graph import GRAPH_OPT, ort_optimization_level
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.spec import QuantSpec

AUTO_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"}


class OrtCompiled(Compiled):
    def __init__(self, session: Any, info: CompiledInfo) -> None:
        super().__init__(info)
        self.session = session
        self._outputs = [o.name for o in session.get_outputs()]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, dict(feeds))

    def _close(self) -> None:
        self.session = None


class OrtBackend(Backend):
    """ONNX Runtime with onnxruntime.quantization; CPU here, GPU/NPU execution providers when present."""

    slug = "ort"
    float_fallback_option = "exclude_nodes"  # onnxruntime.quantization nodes_to_exclude
    description = "ONNX Runtime (onnxruntime.quantization QDQ/QOperator, dynamic, INT4)"
    option_defaults: ClassVar[dict[str, Any]] = {
        "threads": 1,  # intra-op threads; 0 = ORT's default (all physical cores)
        "inter_op_threads": 1,
        "spinning": True,  # ORT's default: worker threads spin between ops (lower latency, more CPU)
        "providers": "auto",  # or a list of execution provider names, in priority order
        "graph_optimization": "all",
        # int4 weight-only: "channel" = one MatMulNBits block spanning K (per output channel, as the spec id says);
        # an integer (power of two ≥ 16) = group-wise blocks of that many weights, recorded as such in the row
        "int4_block_size": "channel",
        # original-model node names kept in float (onnxruntime.quantization nodes_to_exclude): mixed precision,
        # e.g. from `qtbench localize --fallback-search`
        "exclude_nodes": [],
    }

    @property
    def exclusive_device(self) -> bool:  # type: ignore[override]
        """With a GPU execution provider (CUDA, TensorRT) the session builds and times on the GPU: the compile
        phase then runs this entry's cells one at a time (the TensorRT EP times kernels while it builds)."""
        try:
            return any(_device_of(p) == "gpu" for p in self.providers())
        except Exception:  # noqa: BLE001 - no onnxruntime or an unknown provider: the CPU default
            return False

    def device_identity(self) -> str:
        """The GPU's identity when a GPU provider runs the cells (rows and keys then say which GPU), else ''."""
        return gpu_identity() if self.exclusive_device else ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        o = self.options
        if not isinstance(o["threads"], int) or o["threads"] < 0:
            raise ConfigError(f"backends.ort.options.threads: {o['threads']!r} must be an integer ≥ 0")
        if o["graph_optimization"] not in GRAPH_OPT:
            raise ConfigError(f"backends.ort.options.graph_optimization: choose one of {', '.join(GRAPH_OPT)}")
        if o["providers"] != "auto" and not isinstance(o["providers"], list):
            raise ConfigError("backends.ort.options.providers: 'auto' or a list such as [CPUExecutionProvider]")
        if not isinstance(o["exclude_nodes"], list) or not all(isinstance(n, str) for n in o["exclude_nodes"]):
            raise ConfigError("backends.ort.options.exclude_nodes: a list of node names of the original model")
        bs = o["int4_block_size"]
        if bs != "channel" and not (isinstance(bs, int) and 16 <= bs <= 256 and bs & (bs - 1) == 0):
            raise ConfigError(
                f"backends.ort.options.int4_block_size: {bs!r}; use 'channel' or a power of two in 16..256 (e.g. 32)"
            )

    # -- probing -------------------------------------------------------------------------------------------
    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not importable ({exc}): pip install onnxruntime")
        present = ort.get_available_providers()
        wanted = self.options["providers"]
        missing = [] if wanted == "auto" else [p for p in wanted if p not in present]
        if missing:  # a GPU entry on a host without the GPU build: unavailable with the reason, not a failed cell
            gpu = any(_device_of(p) == "gpu" for p in missing)
            return Availability(
                False,
                f"{', '.join(missing)} not in this onnxruntime build (present: {', '.join(present)})"
                + ("; install onnxruntime-gpu in place of onnxruntime on a host with an NVIDIA GPU" if gpu else ""),
                {"onnxruntime": ort.__version__},
            )
        return Availability(True, "", {"onnxruntime": ort.__version__}, tuple(present))

    def providers(self) -> list[str]:
        import onnxruntime as ort

        present = ort.get_available_providers()
        if self.options["providers"] == "auto":
            return [p for p in AUTO_PROVIDERS if p in present]
        missing = [p for p in self.options["providers"] if p not in present]
        if missing:
            raise ConfigError(
                f"backends.ort.options.providers: {', '.join(missing)} not in this onnxruntime build "
                f"(present: {', '.join(present)}); install the matching onnxruntime package"
            )
        return list(self.options["providers"])

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.precision == "bf16":
            return "ONNX Runtime has no bf16 conversion path for CPU inference; use fp16 or another backend"
        if spec.precision == "int4" and spec.format == "qoperator":
            return "ORT QOperator kernels have no 4-bit weights; use format qdq"
        if spec.scaling == "dynamic" and spec.activation_symmetric:
            return "ORT dynamic quantization (DynamicQuantizeLinear) produces asymmetric uint8 activations only"
        if spec.scaling == "dynamic" and spec.precision == "int4":
            return "ORT has no dynamic activation quantization with 4-bit weights; use int4-weightonly"
        if spec.scaling == "dynamic" and spec.format == "qoperator":
            return "dynamic quantization has a single graph form in ORT; drop format qoperator"
        if spec.scaling == "weightonly" and spec.granularity == "per-tensor":
            return "ORT int4 weight-only (MatMulNBits) scales per block or per output channel, not per tensor; use -pc"
        return None

    # -- compilation ---------------------------------------------------------------------------------------
    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        import time

        t0 = time.perf_counter()
        if spec.precision == "fp32":
            artifact, notes, cache_hit = model.path, [], True
        else:
            artifact = workdir / "model.onnx"
            notes, cache_hit = build_once(
                artifact,
                lambda n: qdq.build(
                    model,
                    spec,
                    calib,
                    workdir,
                    artifact,
                    n,
                    exclude_nodes=self.options["exclude_nodes"],
                    int4_block_size=self.options["int4_block_size"],
                ),
            )
        compile_s = time.perf_counter() - t0
        session = self._session(artifact)
        actual = session.get_providers()
        requested = self.providers()
        info = CompiledInfo(
            artifact_path=artifact,
            artifact_bytes=artifact.stat().st_size,
            numbers="measured",
            execution_device=_device_of(actual[0]),
            notes=notes,
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.extra.update(
            {
                "providers_requested": ",".join(requested),
                "providers": ",".join(actual),
                "intra_op_threads": self.options["threads"],
                "inter_op_threads": self.options["inter_op_threads"],
                "spinning": self.options["spinning"],
                "graph_optimization": self.options["graph_optimization"],
            }
        )
        if self.options["exclude_nodes"] and not spec.is_float:
            info.extra["exclude_nodes"] = list(self.options["exclude_nodes"])
            info.notes.append(f"kept {len(self.options['exclude_nodes'])} node(s) in float (exclude_nodes)")
        if actual != requested:
            info.notes.append(f"providers fell back: requested {requested}, session holds {actual}")
        risk = s8s8_saturation_risk(spec, actual[0], self.options["graph_optimization"])
        if risk:
            info.extra["int8_saturation_risk"] = True
            info.notes.append(risk)
        self._cached_coverage(artifact, actual, spec, info, workdir)
        return OrtCompiled(session, info)

    def _cached_coverage(
        self, artifact: Path, providers: list[str], spec: QuantSpec, info: CompiledInfo, workdir: Path
    ) -> None:
        """:meth:`_coverage`, read from ``workdir`` when this artifact (path, size, mtime), ORT version, providers
        and options were read before: the compile phase pays for the extra 'basic' session, the timed cell not."""
        import hashlib
        import json
        import os

        import onnxruntime as ort

        st = artifact.stat()
        key = json.dumps(
            [str(artifact), st.st_size, st.st_mtime_ns, ort.__version__, providers, spec.id, self.reference_key()]
        )
        path = workdir / f"coverage-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        try:
            facts = json.loads(path.read_text())
        except (OSError, ValueError):
            facts = None
        if not isinstance(facts, dict) or facts.get("key") != key:
            fresh = CompiledInfo()
            self._coverage(artifact, providers, spec, fresh)
            facts = {
                "key": key,
                "coverage": fresh.coverage,
                "fallback_ops": fresh.fallback_ops,
                "notes": fresh.notes,
                "extra": fresh.extra,
            }
            tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
            try:
                tmp.write_text(json.dumps(facts))
                os.replace(tmp, path)
            except OSError:  # a read-only cache, or a concurrent build cleaned its temp files: read it next time
                tmp.unlink(missing_ok=True)
        info.coverage = dict(facts["coverage"])
        info.fallback_ops.update(facts["fallback_ops"])
        info.notes.extend(facts["notes"])
        info.extra.update(facts["extra"])

    def _session(self, path: Path, optimized_out: Path | None = None, level: str | None = None) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options["threads"]
        so.inter_op_num_threads = self.options["inter_op_threads"]
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.options["spinning"] else "0")
        so.graph_optimization_level = ort_optimization_level(level or self.options["graph_optimization"])
        so.log_severity_level = 3
        if optimized_out is not None:
            so.optimized_model_filepath = str(optimized_out)
        return ort.InferenceSession(str(path), so, providers=self.providers())

    # -- coverage ------------------------------------------------------------------------------------------
    def _coverage(self, artifact: Path, providers: list[str], spec: QuantSpec, info: CompiledInfo) -> None:
        """Nodes per device and which compute ops stayed float, read from the graph ORT actually runs."""
        import onnx

        with tempfile.TemporaryDirectory() as d:
            opt = Path(d) / "opt.onnx"
            # 'basic' keeps the graph portable (no NCHWc layout ops) but applies the fp16→fp32 cast insertion.
            self._session(artifact, optimized_out=opt, level="basic")
            graph = onnx.load(str(opt), load_external_data=False).graph
        nodes = list(graph.node)
        device = _device_of(providers[0])
        info.coverage = {device: len(nodes)} if len(providers) == 1 or device == "cpu" else {"unknown": len(nodes)}
        if device != "cpu" and len(providers) > 1:
            info.notes.append("per-node EP assignment not recorded; run with ORT profiling to split GPU/CPU")
        types = _elem_types(graph)
        compute = [n for n in nodes if n.op_type in COMPUTE_OPS]
        quantized_ops = [
            n
            for n in nodes
            if n.op_type.startswith(("QLinear", "MatMulInteger", "ConvInteger", "DynamicQuantize", "MatMulNBits"))
        ]
        dq_outputs = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
        float_compute = [n for n in compute if not (set(n.input[1:2]) & dq_outputs)]
        info.extra["nodes"] = len(nodes)
        info.extra["quantized_compute_nodes"] = (len(compute) - len(float_compute)) + len(quantized_ops)
        info.extra["float_compute_nodes"] = len(float_compute)
        nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
        blocks = sorted({a.i for n in nbits for a in n.attribute if a.name == "block_size"})
        if blocks:
            info.extra["int4_block_size"] = blocks[0] if len(blocks) == 1 else blocks
            info.extra["int4_grouping"] = (
                "per-channel" if self.options["int4_block_size"] == "channel" else f"group-{blocks[0]}"
            )
        if spec.precision == "fp16":
            fp16 = sum(1 for n in compute if types.get(n.input[0]) == onnx.TensorProto.FLOAT16)
            info.extra["fp16_executed_as"] = "fp16" if fp16 == len(compute) else "fp32" if fp16 == 0 else "mixed"
            if fp16 < len(compute):
                info.notes.append(
                    f"{len(compute) - fp16}/{len(compute)} compute ops run in fp32 on {providers[0]} "
                    "(no fp16 kernel; ORT inserted casts): weights are fp16-rounded, arithmetic is fp32"
                )
        elif not spec.is_float:
            for n in float_compute:
                info.fallback_ops.setdefault(n.op_type, "not quantized by onnxruntime.quantization (runs in float)")

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The artifact's QDQ or QOperator graph run by ONNX Runtime with the original tensors marked as outputs."""
        style = "qoperator" if spec.format == "qoperator" and spec.scaling != "weightonly" else "qdq"
        path = Path(compiled.info.artifact_path)
        threads = int(self.options["threads"] or 1)
        return taps.OnnxTap(path, style, self.options["graph_optimization"], threads, self.slug)


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI/AMX int8 dot products (None: not x86 or unknown)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def s8s8_saturation_risk(spec: QuantSpec, provider: str, graph_optimization: str) -> str:
    """A note when ORT's fused int8 CPU kernels may saturate on this CPU, else "".

    On x86 without VNNI, ONNX Runtime runs signed-activation (s8s8) QLinear kernels through the u8s8
    ``VPMADDUBSW`` path, whose pairwise int16 sums can saturate: measured here on a tiny CNN, the same QDQ graph
    was off by 0.68 (fused, level "all") vs 0.13 (unfused, level "basic") in max |logit error|. The row keeps the
    fused number (it is what this CPU runs) and says so.
    """
    if (
        provider == "CPUExecutionProvider"
        and spec.precision in ("int8", "int4")
        and spec.is_static
        and spec.activation_symmetric
        and graph_optimization in ("extended", "all")
        and cpu_has_vnni() is False
    ):
        return (
            "x86 CPU without VNNI: ORT's fused int8 kernels with signed (symmetric) activations can saturate "
            "int16 partial sums, so this row may show more error than the QDQ numerics imply; "
            "compare with options.graph_optimization: basic (unfused reference kernels)"
        )
    return ""


def _device_of(provider: str) -> str:
    return {
        "CUDAExecutionProvider": "gpu",
        "TensorrtExecutionProvider": "gpu",
        "DmlExecutionProvider": "gpu",
        "QNNExecutionProvider": "npu",
        "CoreMLExecutionProvider": "npu",
    }.get(provider, "cpu")


def _elem_types(graph: Any) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types

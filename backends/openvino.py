"""OpenVINO adapter (``openvino``, extra ``qtbench[openvino]``): fp32/fp16/bf16, INT8 via NNCF post-training
quantization or via ORT-made QDQ graphs, INT4 weight compression.

Notes found on real hardware:
- fp32 needs ``INFERENCE_PRECISION_HINT=f32`` explicitly: on CPUs with AMX/AVX512-BF16 the default is bf16,
  which silently changes numbers. The precision the compiled model actually uses is read back and recorded.
- OpenVINO runs QDQ graphs as int8 (``quantizer: ort`` builds them with ONNX Runtime's quantizer, same
  calibration as the ``ort`` backend: a cross-runtime check of one artifact); it cannot load ORT's QOperator
  graphs (com.microsoft QLinear* ops), so those are skipped with that reason.
- NNCF weight compression (INT4, ``all_layers``) does not keep convolutions in float: it compresses the layers it
  does not put in INT4 to int8_asym (on the demo ResNet: 9 of 10 layers, 99 % of the weights). The format applied
  to each layer is read back from the compressed model (``backend_extra.weight_compression``) and summarised in
  the row's notes.
"""

from __future__ import annotations

import contextlib
import operator
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import qdq as qdq_build
from qtbench.backends import taps, vendor_patches
from qtbench.backends.base import (
    Availability,
    Backend,
    Compiled,
    CompiledInfo,
    ModelInput,
    build_once,
    claim_entry,
    commit_entry,
    quiet,
)
from qtbench.harness.core.audit import MIN_SHARE, ArtifactFacts, WeightFact
from qtbench.harness.core.errors import ConfigError, UnsupportedSpec
from qtbench.harness.core.spec import QuantSpec

HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


#: the batch-1 static IR kept beside an entry's model.xml (machine-local: never shipped with the entry)
TWIN_PREFIX = "model_b1-"


class OpenVinoCompiled(Compiled):
    """Runs the compiled model; batch-1 calls go to a static-shape twin when the IR has a dynamic batch axis.

    On CPU a dynamic-shape model pays shape inference and memory re-planning on every call: on the demo ResNet
    its InferRequest.latency at batch 1 was 1.26× the static model's (what ``benchmark_app -shape`` runs). The
    harness times batch 1, so that call runs a batch-1 compile of the same IR with the same properties; other
    batch sizes (the quality pass) run the dynamic model.
    """

    def __init__(self, compiled: Any, info: CompiledInfo, batch1: Any = None) -> None:
        super().__init__(info)
        self.compiled, self.batch1 = compiled, batch1
        self.request = compiled.create_infer_request()
        self._batch1_request = batch1.create_infer_request() if batch1 is not None else None
        self._inputs = [i.any_name for i in compiled.inputs]
        self._n_out = len(compiled.outputs)
        self._last: tuple[list[np.ndarray], list[tuple[int, ...]], Any] | None = None  # arrays bound, shapes, request
        self._device_ms: list[float] = []  # InferRequest.latency: OpenVINO's own measure of each call

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        # Inputs are wrapped without a copy and outputs copied out (the host_to_host boundary). Setting tensors
        # and calling infer() without arguments is ~12 % faster per call than infer(dict), which builds an OVDict;
        # when the very arrays of the last call come again (the timed loop) they are still bound: nothing to set.
        arrays = [feeds[name] for name in self._inputs]
        last = self._last
        if last is not None and all(map(operator.is_, arrays, last[0])) and [a.shape for a in arrays] == last[1]:
            request = last[2]
        else:
            request = self._bind(arrays)
        request.infer()
        self._device_ms.append(request.latency)
        return [request.get_output_tensor(i).data.copy() for i in range(self._n_out)]

    def _bind(self, arrays: list[np.ndarray]) -> Any:
        """Pick the request for these inputs' batch and set its input tensors (shared memory where possible)."""
        import openvino as ov

        request = self.request
        if self._batch1_request is not None and all(a.ndim > 0 and a.shape[0] == 1 for a in arrays):
            request = self._batch1_request
        shared = True
        for i, array in enumerate(arrays):
            host = np.ascontiguousarray(array)
            request.set_input_tensor(i, ov.Tensor(host, shared_memory=True))
            shared = shared and host is array
        # an array that had to be copied is copied again on every call: its changes must reach the model
        self._last = (arrays, [a.shape for a in arrays], request) if shared else None
        return request

    def device_latencies_ms(self) -> list[float]:
        out, self._device_ms = self._device_ms, []
        return out

    def _close(self) -> None:
        self.request = self._batch1_request = None
        self.compiled = self.batch1 = None
        self._last = None


class OpenVinoBackend(Backend):
    """OpenVINO Runtime (CPU here; GPU/NPU devices when present) with NNCF quantization."""

    slug = "openvino"
    float_fallback_option = "exclude_nodes"  # NNCF ignored scope, or ORT nodes_to_exclude with quantizer: ort
    description = "OpenVINO Runtime + NNCF (fp32/fp16/bf16, INT8 PTQ, INT4 weight compression, ORT QDQ)"
    option_defaults: ClassVar[dict[str, Any]] = {
        "device": "CPU",
        "threads": 1,  # INFERENCE_NUM_THREADS; 0 = OpenVINO's default
        "hint": "LATENCY",  # PERFORMANCE_HINT
        "streams": 1,  # NUM_STREAMS
        "quantizer": "nncf",  # nncf | ort (run ONNX Runtime's QDQ graph in OpenVINO)
        "exclude_nodes": [],  # ONNX node names kept in float: NNCF ignored scope, or ORT nodes_to_exclude
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options["hint"] not in HINTS:
            raise ConfigError(f"backends.openvino.options.hint: choose one of {', '.join(HINTS)}")
        if self.options["quantizer"] not in ("nncf", "ort"):
            raise ConfigError("backends.openvino.options.quantizer: choose nncf or ort")

    def availability(self) -> Availability:
        try:
            import openvino as ov
        except ImportError as exc:
            return Availability(False, f"openvino is not importable ({exc}): pip install 'qtbench[openvino]'")
        versions = {"openvino": ov.__version__.split("-")[0]}
        from importlib.metadata import PackageNotFoundError, version

        try:  # read the version without importing NNCF: its import pulls in torch (~2.6 s a cell)
            versions["nncf"] = version("nncf")
        except PackageNotFoundError:
            pass
        devices = tuple(ov.Core().available_devices)
        if self.options["device"] not in devices and not self.options["device"].startswith(("AUTO", "HETERO")):
            return Availability(
                False,
                f"OpenVINO device {self.options['device']} not present (have: {', '.join(devices)})",
                versions,
                devices,
            )
        return Availability(True, "", versions, devices)

    def supports(self, spec: QuantSpec) -> str | None:
        nncf_missing = self._nncf_missing()
        if spec.precision in ("fp32", "fp16", "bf16"):
            return None
        if spec.format == "qoperator" and self.options["quantizer"] == "ort":
            return "OpenVINO cannot load ONNX Runtime QOperator graphs (com.microsoft QLinear* ops); use format qdq"
        if spec.scaling == "dynamic":
            return "OpenVINO has no dynamic activation quantization mode for CNN post-training quantization"
        if self.options["quantizer"] == "ort":
            if spec.scaling == "weightonly":
                return "quantizer ort: MatMulNBits is an ONNX Runtime contrib op OpenVINO does not load"
            return None
        if nncf_missing:
            return nncf_missing
        if spec.format == "qoperator":
            return "NNCF produces OpenVINO FakeQuantize graphs; format qoperator is an ONNX Runtime notion"
        if spec.precision == "int4" and spec.scaling == "static":
            return "NNCF has no 4-bit weight / 8-bit activation CNN quantization; use int4-weightonly"
        if spec.precision == "int4" and spec.granularity == "per-tensor":
            return "NNCF INT4 weight compression is per channel or per group, not per tensor"
        if spec.is_static and spec.calibration in ("entropy", "mse"):
            return f"NNCF PTQ has no {spec.calibration} activation range estimator; use minmax or percentile"
        return None

    def compile_config(self, spec: QuantSpec) -> dict[str, str]:
        """The ``compile_model`` properties a cell uses (``qtbench localize`` compiles its taps with the same)."""
        config = {
            "PERFORMANCE_HINT": self.options["hint"],
            "NUM_STREAMS": str(self.options["streams"]),
            "INFERENCE_PRECISION_HINT": {"fp16": "f16", "bf16": "bf16"}.get(spec.precision, "f32"),
        }
        if self.options["threads"]:
            config["INFERENCE_NUM_THREADS"] = str(self.options["threads"])
        return config

    def _nncf_missing(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("nncf") is None:  # presence only; NNCF is imported when a cell quantizes
            return "NNCF is not installed: pip install 'qtbench[openvino]'"
        return None

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        import openvino as ov

        core = ov.Core()
        t0 = time.perf_counter()
        xml = workdir / "model.xml"

        def build(notes: list[str]) -> None:
            with quiet(workdir / "nncf.log"):  # NNCF's progress bars and bit-width tables, off the CLI's lines
                ov_model = self._build(core, model, spec, calib, workdir, notes)
            _save_ir(ov_model, xml)

        notes, cache_hit = build_once(xml, build)
        compile_s = time.perf_counter() - t0
        config = self.compile_config(spec)
        # OpenVINO's model cache: the compile phase compiles (and exports the blobs), the measure phase imports
        # them (ViT-S/14 INT8: 0.55 s → 0.15 s a compile); the same compiled model, so outputs and timing match
        blobs = workdir / "ov_cache"
        before = set(blobs.iterdir()) if blobs.is_dir() else set()
        core.set_property({"CACHE_DIR": str(blobs)})
        compiled = core.compile_model(str(xml), self.options["device"], config)
        batch1 = self._batch1_twin(core, xml, config, notes)
        fresh_blobs = (set(blobs.iterdir()) if blobs.is_dir() else set()) - before
        actual = _property_str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        runtime = compiled.get_runtime_model()
        exec_types: dict[str, int] = {}
        for op in runtime.get_ops():
            rt = op.get_rt_info()
            prec = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
            exec_types[prec] = exec_types.get(prec, 0) + 1
        wanted = config["INFERENCE_PRECISION_HINT"]
        if actual.lower() != wanted and wanted in ("f16", "bf16"):
            # the row would be an f32 run under an fp16 label: skip it, saying why
            raise UnsupportedSpec(
                f"OpenVINO {self.options['device']} runs {spec.precision} as {actual} on this host (no native "
                f"{wanted} arithmetic: the device reads INFERENCE_PRECISION_HINT back as {actual}); use fp32 here, "
                "or fp16 on a CPU with AVX512-FP16/AMX or a GPU/NPU device"
            )
        if actual.lower() != wanted:
            notes.append(f"asked INFERENCE_PRECISION_HINT={wanted}, the device uses {actual}")
        properties = compiled_properties(compiled)
        for key in ("NUM_STREAMS", "INFERENCE_NUM_THREADS"):  # e.g. 2 streams on 1 thread: the device runs 1
            if key in config and properties.get(key, config[key]) != config[key]:
                notes.append(f"asked {key}={config[key]}, the device uses {properties[key]}")
        info = CompiledInfo(
            artifact_path=xml,
            artifact_bytes=xml.stat().st_size + xml.with_suffix(".bin").stat().st_size,
            coverage={self.options["device"].lower(): len(runtime.get_ops())},
            numbers="measured",
            execution_device=self.options["device"].lower().split(".")[0],
            notes=notes,
            compile_s=compile_s,
            cache_hit=cache_hit,
        )
        info.extra.update(
            {
                "inference_precision": actual,
                "runtime_precisions": exec_types,
                "performance_hint": self.options["hint"],
                "num_streams": self.options["streams"],
                "inference_num_threads": self.options["threads"],
                "quantizer": "none" if spec.is_float else self.options["quantizer"],
                # what the device settled on (threads 0 = OpenVINO's choice), to set benchmark_app the same way
                "compiled_properties": properties,
                "batch1_static": batch1 is not None,
                # False: compiled here and exported to the model cache; True: imported from it
                "model_cache_hit": blobs.is_dir() and not fresh_blobs,
            }
        )
        if self.options["exclude_nodes"] and not spec.is_float:
            info.extra["exclude_nodes"] = list(self.options["exclude_nodes"])
        if spec.scaling == "weightonly":
            bits = weight_bits(core.read_model(str(xml)))
            low = sum(v["share"] for m, v in bits["by_mode"].items() if m.startswith(f"int{spec.weight_bits}"))
            if spec.weight_bits == 4 and low < MIN_SHARE:
                # NNCF keeps convolution weights at 8 bit by design: a CNN's row would be an INT8 model
                raise UnsupportedSpec(
                    f"NNCF compresses only MatMul/Gemm (and embedding) weights to 4 bit and keeps convolutions at "
                    f"8 bit: {100 * low:.0f}% of this model's weights would be 4-bit, so the row would be an INT8 "
                    "model under an INT4 label; use int8 specs here, or INT4 weight-only on a MatMul-heavy model "
                    "(transformers)"
                )
            info.extra["weight_compression"] = bits
            info.notes.append(
                "NNCF applied "
                + ", ".join(
                    f"{mode} to {v['layers']} layer(s) ({100 * v['share']:.0f} % of weights)"
                    for mode, v in bits["by_mode"].items()
                )
            )
        return OpenVinoCompiled(compiled, info, batch1)

    def _batch1_twin(self, core: Any, xml: Path, config: Mapping[str, str], notes: list[str]) -> Any:
        """A batch-1 static-shape compile of the IR when the batch axis is its only dynamic dimension, else None."""
        ov_model = core.read_model(str(xml))
        shapes = {}
        for port in ov_model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_dynamic or len(shape) == 0 or not shape[0].is_dynamic:
                return None
            if any(d.is_dynamic for d in list(shape)[1:]):
                return None
            shapes[port.any_name] = [1, *(d.get_length() for d in list(shape)[1:])]
        st = xml.stat()  # named after this very IR: a rebuilt entry never finds an older build's twin
        twin = xml.with_name(f"{TWIN_PREFIX}{st.st_size}-{st.st_mtime_ns}.xml")  # kept beside it: see below
        try:
            if twin.is_file() and twin.with_suffix(".bin").is_file():
                return core.compile_model(str(twin), self.options["device"], config)
            ov_model.reshape(shapes)
            try:
                # compiled from a file, the model cache keys it by the file: an in-memory model is hashed whole
                # on every compile (ViT-S/14 INT8: 0.40 s vs 0.15 s a measured cell)
                _save_ir(ov_model, twin)
            except OSError:
                return core.compile_model(ov_model, self.options["device"], config)
            return core.compile_model(str(twin), self.options["device"], config)
        except RuntimeError as exc:  # a graph that hard-codes its batch elsewhere: time the dynamic model
            notes.append(f"batch-1 static compile failed ({str(exc).splitlines()[0]}); timed the dynamic model")
            return None

    def _build(self, core: Any, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path, notes: list[str]) -> Any:
        if spec.is_float:
            return core.read_model(str(model.path))
        if self.options["quantizer"] == "ort":
            qdq = workdir / "ort_qdq.onnx"
            qdq_build.build(model, spec, calib, workdir, qdq, notes, exclude_nodes=self.options["exclude_nodes"])
            notes.append("QDQ graph made by onnxruntime.quantization, executed by OpenVINO")
            return core.read_model(str(qdq))
        import nncf

        ov_model = core.read_model(str(model.path))
        if spec.scaling == "weightonly":
            mode = nncf.CompressWeightsMode.INT4_SYM if spec.weight_symmetric else nncf.CompressWeightsMode.INT4_ASYM
            out = nncf.compress_weights(ov_model, mode=mode, ratio=1.0, group_size=-1, all_layers=True)
            notes.append("NNCF INT4 weight compression requested (ratio 1.0, per output channel, all layers)")
            return out
        if calib is None:
            raise ConfigError("static quantization needs calibration data: set `calibration:` in the sweep file")
        data = calib.head(spec.calib_samples)
        dataset = nncf.Dataset([data.batch(i, i + 1) for i in range(len(data))])
        with contextlib.ExitStack() as claims:
            group = [(spec, workdir, notes, self._ptq_params(spec, notes))]
            for s, wd in self.siblings:  # other specs of this model: one NNCF statistics pass builds them all
                same = self.build_group(s) == self.build_group(spec)
                if same and claims.enter_context(claim_entry(wd / "model.xml")):  # not built, nobody building it
                    sib_notes: list[str] = []
                    group.append((s, wd, sib_notes, self._ptq_params(s, sib_notes)))
            shared = None
            if len(group) > 1:
                try:
                    with vendor_patches.applied("nncf", notes=notes):
                        shared = shared_ptq(ov_model, dataset, len(data), [g[3] for g in group])
                except Exception as exc:  # noqa: BLE001 - an optimisation: fall back to this spec alone
                    notes.append(f"shared NNCF statistics pass failed ({type(exc).__name__}: {exc}); quantized alone")
            if shared is None:
                with vendor_patches.applied("nncf.quantile", notes=notes):
                    return nncf.quantize(ov_model, dataset, subset_size=len(data), **group[0][3])
            ids = ", ".join(g[0].id for g in group)
            built = [spec.id]
            for (s, wd, sib_notes, _p), quantized in zip(group[1:], shared[1:], strict=True):
                sib_notes.append(f"built in {spec.id}'s NNCF pass: one statistics collection for {ids}")
                try:
                    _save_ir(quantized, wd / "model.xml")
                    commit_entry(wd / "model.xml", sib_notes)
                    built.append(s.id)
                except OSError as exc:  # that cell builds its own artifact when its turn comes
                    notes.append(f"could not save {s.id}'s artifact ({exc}); it is built on its own")
            notes.append(f"one NNCF statistics collection for {', '.join(built)}; their artifacts were built here")
            return shared[0]

    def _ptq_params(self, spec: QuantSpec, notes: list[str]) -> dict[str, Any]:
        """Keyword arguments of ``nncf.quantize`` for a static spec (besides model, data and subset size)."""
        import nncf
        from nncf.common.quantization.structs import QuantizationScheme
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            QuantizationParameters,
        )
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        adv = AdvancedQuantizationParameters(
            weights_quantization_params=QuantizationParameters(
                per_channel=spec.granularity == "per-channel",
                mode=QuantizationScheme.SYMMETRIC if spec.weight_symmetric else QuantizationScheme.ASYMMETRIC,
            ),
            activations_quantization_params=QuantizationParameters(
                mode=QuantizationScheme.SYMMETRIC if spec.activation_symmetric else QuantizationScheme.ASYMMETRIC,
            ),
            activations_range_estimator_params=(
                RangeEstimatorParametersSet.MINMAX
                if spec.calibration == "minmax"
                else RangeEstimatorParametersSet.MEAN_QUANTILE
            ),
        )
        if spec.calibration == "percentile":
            notes.append(
                "NNCF MEAN_QUANTILE range estimator (NNCF's own quantile, averaged over batches; "
                "the spec's percentile is not used)"
            )
        params: dict[str, Any] = {"fast_bias_correction": True, "advanced_parameters": adv}
        if self.options["exclude_nodes"]:
            # OpenVINO names an ONNX node's ops after it (a Conv with bias: "<name>/WithoutBiases" + "<name>")
            names = [x for n in self.options["exclude_nodes"] for x in (n, f"{n}/WithoutBiases")]
            params["ignored_scope"] = nncf.IgnoredScope(names=names, validate=False)
            notes.append(f"NNCF ignored scope: {len(self.options['exclude_nodes'])} node(s) kept in float")
        return params

    def build_group(self, spec: QuantSpec) -> str | None:
        """NNCF static INT8 specs of one model share one statistics pass (same calibration subset)."""
        if self.options["quantizer"] != "nncf" or not spec.is_static or spec.is_float:
            return None
        return f"nncf-ptq:{spec.calib_samples}"

    def audit(self, compiled: Compiled, spec: QuantSpec) -> Any:
        """Read the saved IR back for :mod:`qtbench.harness.core.audit` (see :func:`audit_ir`); float weights count at
        the
        precision the device runs their layer in (the compiled model's runtime graph, when it is still open)."""
        import openvino as ov

        xml = compiled.info.artifact_path
        if xml is None or not xml.is_file():
            return f"openvino: the IR {xml} is missing"
        runtime = None
        inner = getattr(compiled, "compiled", None)
        if inner is not None:
            with contextlib.suppress(Exception):  # the runtime graph only sharpens float layers' precision
                runtime = inner.get_runtime_model()
        precision = str(compiled.info.extra.get("inference_precision", ""))
        return audit_ir(ov.Core().read_model(str(xml)), runtime, precision, spec, self.slug)

    def tap(self, compiled: Compiled, spec: QuantSpec, label: str) -> Any:
        """The saved IR compiled for the same device and config with the original tensors' producers as outputs."""
        qdq_graph = self.options["quantizer"] == "ort" and not spec.is_float
        xml = Path(compiled.info.artifact_path)
        return taps.OpenVinoTap(xml, self.compile_config(spec), self.options["device"], qdq_graph, label)


def _save_ir(ov_model: Any, xml: Path) -> None:
    """Save an IR pair as ``xml`` (+ .bin): written under a temp name, the .bin moved in before the .xml."""
    import os

    import openvino as ov

    tmp = xml.with_name(f".tmp-{os.getpid()}-{xml.name}")  # per process: two writers never share a temp file
    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    tmp.replace(xml)


#: NNCF versions whose ``nncf.quantize`` (OpenVINO backend) :func:`shared_ptq` reproduces step by step, checked
#: bit for bit (tests/test_openvino.py); on any other version each spec runs ``nncf.quantize`` on its own.
SHARED_PTQ_NNCF = ("3.4.",)


def shared_ptq(model: Any, dataset: Any, subset_size: int, params: list[dict[str, Any]], force: bool = False) -> Any:
    """``[nncf.quantize(model, dataset, subset_size=subset_size, **p) for p in params]`` with one statistics
    collection: NNCF's own post-training pipeline, each spec's statistic points registered in one aggregator
    (equal reducers are collected once) and each spec's algorithm applied to the shared statistics, then the
    same weight compression and parameter dump as ``nncf.quantize``. Returns None where that reproduction is
    not known to hold (another NNCF version unless ``force``, a model with If ops): quantize each spec alone."""
    import nncf

    if not force and not nncf.__version__.startswith(SHARED_PTQ_NNCF):
        return None
    try:
        from nncf.common.factory import build_graph
        from nncf.openvino.quantization import quantize_model as ovq
        from nncf.quantization.algorithms.pipeline import collect_statistics
        from nncf.quantization.algorithms.post_training.algorithm import PostTrainingQuantization
        from nncf.quantization.quantize_model import _update_advanced_quantization_parameters
    except ImportError:
        return None
    model = ovq.remove_friendly_name_duplicates(model)
    if ovq.get_number_if_op(model) > 0:
        return None
    graph = build_graph(model)
    algorithms = []
    for p in params:
        adv = _update_advanced_quantization_parameters(p.get("advanced_parameters"), dataset)
        algorithm = PostTrainingQuantization(
            subset_size=subset_size,
            fast_bias_correction=p.get("fast_bias_correction", True),
            ignored_scope=p.get("ignored_scope"),
            advanced_parameters=adv,
        )
        algorithms.append((algorithm, adv, p))
    points = [algorithm.get_statistic_points(model, graph) for algorithm, _adv, _p in algorithms]
    statistics = collect_statistics(points, model, graph, dataset)
    out = []
    for algorithm, adv, p in algorithms:
        quantized = algorithm.apply(model, graph, statistics, dataset)
        if ovq.is_weight_compression_needed(adv):
            ovq.compress_quantize_weights_transformation(quantized)
        ovq.dump_parameters(
            quantized,
            {
                "preset": None,
                "target_device": nncf.TargetDevice.ANY.value,
                "subset_size": subset_size,
                "fast_bias_correction": p.get("fast_bias_correction", True),
                "model_type": None,
                "ignored_scope": p.get("ignored_scope"),
                "advanced_parameters": ovq.convert_to_dict_recursively(adv),
            },
        )
        out.append(quantized)
    return out


#: Compiled-model properties that decide CPU latency, recorded per row (``backend_extra.compiled_properties``).
RECORDED_PROPERTIES = (
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_NUM_THREADS",
    "INFERENCE_PRECISION_HINT",
    "EXECUTION_MODE_HINT",
    "ENABLE_CPU_PINNING",
    "SCHEDULING_CORE_TYPE",
    "ENABLE_HYPER_THREADING",
)


def _property_str(value: Any) -> str:
    """An OpenVINO property value as text: element types as ``f32``, enums by member name."""
    if hasattr(value, "to_string"):
        return str(value.to_string())
    if hasattr(value, "name") and not isinstance(value, str | bool | int | float):
        return str(value.name)
    return str(value)


def compiled_properties(compiled: Any) -> dict[str, str]:
    """The :data:`RECORDED_PROPERTIES` a compiled model reports (devices support different sets)."""
    supported = set(compiled.get_property("SUPPORTED_PROPERTIES"))
    return {k: _property_str(compiled.get_property(k)) for k in RECORDED_PROPERTIES if k in supported}


_LOW_BIT = {"u4": "int4_asym", "i4": "int4_sym", "u8": "int8_asym", "i8": "int8_sym"}
_DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape")


def weight_bits(ov_model: Any) -> dict[str, Any]:
    """Per-layer weight format NNCF actually applied, read from the compressed model's decompression subgraphs.

    A compressed weight is a u4/i4/u8/i8 Constant → Convert → [Subtract zero point] → Multiply scale → (Convert,
    Reshape) → the layer; zero points are the Subtract's second input and are skipped. Asymmetric modes have a
    zero point (NNCF's naming: int8_asym, int4_sym, ...). ``share`` is the fraction of compressed weights.
    """
    layers: dict[str, str] = {}
    counts: dict[str, list[int]] = {}
    for op in ov_model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        etype = op.get_output_element_type(0).get_type_name()
        if etype not in _LOW_BIT:
            continue
        node, port, path = op, -1, []
        while True:
            targets = list(node.output(0).get_target_inputs())
            if not targets:
                break
            port, node = targets[0].get_index(), targets[0].get_node()
            path.append((node.get_type_name(), port))
            if node.get_type_name() not in _DECOMPRESSION:
                break
        if any(t == "Subtract" and p == 1 for t, p in path):
            continue  # a zero point, not a weight
        asym = any(t == "Subtract" for t, _ in path)
        mode = _LOW_BIT[etype].rsplit("_", 1)[0] + ("_asym" if asym else "_sym")
        layers[node.get_friendly_name()] = mode
        n = int(np.prod(list(op.get_output_shape(0))))
        counts.setdefault(mode, [0, 0])
        counts[mode][0] += 1
        counts[mode][1] += n
    total = sum(w for _, w in counts.values()) or 1
    by_mode = {m: {"layers": c, "weights": w, "share": round(w / total, 4)} for m, (c, w) in sorted(counts.items())}
    return {"by_mode": by_mode, "layers": layers}


# ---------------------------------------------------------------------------------------------------------------
# The artifact audit: what the IR holds, layer by layer
# ---------------------------------------------------------------------------------------------------------------
_AUDIT_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")
#: ops a weight's decompression path or a constant goes through unchanged (layout, type)
_CONST_PATH = ("Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Broadcast")
#: ops an activation goes through without leaving the integer grid it was quantized onto
_ACT_PATH = (
    *_CONST_PATH,
    "MaxPool",
    "StridedSlice",
    "Slice",
    "Split",
    "VariadicSplit",
    "Gather",
    "Pad",
    "Concat",
    "DepthToSpace",
    "SpaceToDepth",
    "ShuffleChannels",
)


def _ov_source(node: Any, i: int) -> Any:
    return node.input(i).get_source_output().get_node()


def _ov_root_constant(node: Any) -> Any:
    """The Constant ``node`` is (through Convert/Reshape/...), or None when a computed tensor is on the way."""
    for _ in range(16):
        t = node.get_type_name()
        if t == "Constant":
            return node
        if t not in _CONST_PATH or node.get_input_size() == 0:
            return None
        node = _ov_source(node, 0)
    return None


def _ov_values(const: Any) -> np.ndarray:
    """A Constant's values as float64, low-bit (u4/i4/nf4) and bf16 storage unpacked by OpenVINO itself."""
    import openvino as ov
    from openvino import opset13

    shape = list(const.get_output_shape(0))
    out = [ov.Tensor(ov.Type.f32, shape)]
    if not opset13.convert(const.output(0), "f32").evaluate(out, [const.get_tensor_view()]):
        raise RuntimeError(f"could not read constant {const.get_friendly_name()}")
    return np.asarray(out[0].data, dtype=np.float64).ravel()


def _ov_weight(node: Any) -> dict[str, Any] | None:
    """What feeds a compute node's weight port: a compressed integer Constant (→ Convert → [Subtract zero point] →
    Multiply scale), a FakeQuantize on a float Constant, or a float Constant; None for a computed tensor."""
    scale_size, zp = 1, None
    scaled = False
    for _ in range(24):
        t = node.get_type_name()
        if t == "Constant":
            et = node.get_output_element_type(0)
            if et.bitwidth >= 16 and (et.is_real() or not scaled):
                return {"bits": 16 if et.bitwidth == 16 else 32} if et.is_real() else None
            signed = et.is_signed()
            if zp is None:
                symmetric = bool(signed)  # no zero point: 0, the middle of a signed grid only
            else:
                z = np.round(zp)
                mid = 2**et.bitwidth / 2
                symmetric = bool(np.all(z == 0)) if signed else bool(np.all((z == mid) | (z == mid - 1)))
            return {"bits": int(et.bitwidth), "per_channel": scale_size > 1 if scaled else None, "symmetric": symmetric}
        if t in _CONST_PATH:
            node = _ov_source(node, 0)
            continue
        if t == "Multiply" and not scaled:
            consts = [_ov_root_constant(_ov_source(node, i)) for i in (0, 1)]
            pick = [i for i in (0, 1) if consts[i] is not None and consts[i].get_output_element_type(0).is_real()]
            if len(pick) == 2:  # float × float constant: a folded float weight
                pick = [max(pick, key=lambda i: int(np.prod(list(consts[i].get_output_shape(0)) or [1])))]
                return _ov_weight(consts[pick[0]])
            if len(pick) != 1:
                return None
            scale_size = int(np.prod(list(consts[pick[0]].get_output_shape(0)) or [1]))
            scaled = True
            node = _ov_source(node, 1 - pick[0])
            continue
        if t == "Subtract" and scaled and zp is None:
            zc = _ov_root_constant(_ov_source(node, 1))
            if zc is None:
                return None
            zp = _ov_values(zc)
            node = _ov_source(node, 0)
            continue
        if t == "FakeQuantize":
            src = _ov_root_constant(_ov_source(node, 0))
            lo_c, hi_c = (_ov_root_constant(_ov_source(node, i)) for i in (1, 2))
            if src is None or lo_c is None or hi_c is None:
                return None
            levels = int(node.get_levels())
            lo, hi = np.broadcast_arrays(_ov_values(lo_c), _ov_values(hi_c))
            step = (hi - lo) / max(levels - 1, 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.where(step > 0, -lo / np.where(step > 0, step, 1), levels / 2)
            symmetric = bool(np.all(np.isclose(z, levels / 2, atol=0.01) | np.isclose(z, (levels - 1) / 2, atol=0.01)))
            return {"bits": int(np.ceil(np.log2(levels))), "per_channel": lo.size > 1, "symmetric": symmetric}
        return None
    return None


def _ov_activation(node: Any) -> str:
    """The data input's quantization: ``static`` when a FakeQuantize (or an integer tensor being dequantized)
    feeds it, else ``float``."""
    for _ in range(24):
        t = node.get_type_name()
        if t == "FakeQuantize":
            return "static"
        if t == "Convert" and not node.get_input_element_type(0).is_real():
            return "static"
        if t in ("Subtract", "Multiply"):  # a dequantization step: (x - zero point) · scale
            data = [i for i in (0, 1) if _ov_root_constant(_ov_source(node, i)) is None]
            if len(data) != 1:
                return "float"
            node = _ov_source(node, data[0])
            continue
        if t not in _ACT_PATH or node.get_input_size() == 0:
            return "float"
        node = _ov_source(node, 0)
    return "float"


def _ov_channels(op: Any, shape: list[int], port: int) -> int:
    t = op.get_type_name()
    if not shape:
        return 0
    if t == "Convolution":
        return shape[0]
    if t == "GroupConvolution":
        return shape[0] * shape[1] if len(shape) > 1 else shape[0]
    if t == "ConvolutionBackpropData":
        return shape[1] if len(shape) > 1 else shape[0]
    if t == "GroupConvolutionBackpropData":
        return shape[0] * shape[2] if len(shape) > 2 else shape[0]
    attrs = op.get_attributes()
    if port == 1:
        return shape[-2] if attrs.get("transpose_b") and len(shape) > 1 else shape[-1]
    return shape[-1] if attrs.get("transpose_a") or len(shape) < 2 else shape[-2]


def audit_ir(
    ov_model: Any, runtime: Any = None, inference_precision: str = "", spec: Any = None, reader: str = "openvino"
) -> Any:
    """Read an OpenVINO IR for :mod:`qtbench.harness.core.audit`: for every
    Convolution/GroupConvolution/ConvolutionBackpropData/
    MatMul with a constant weight, the weight's storage (NNCF's compressed int8/int4 Constant → Convert → [Subtract
    zero point] → Multiply scale, a FakeQuantize on a float Constant: levels 256 → 8 bits, 16 → 4; or a float
    Constant), its granularity (scale or FakeQuantize range with more than one element) and symmetry (no or zero
    zero point, the unsigned midpoint, or a FakeQuantize range centred on 0), and whether a FakeQuantize feeds the
    layer's data input ("static") or not ("float").

    A float weight counts as 16-bit when it is stored in f16/bf16 or when the device runs its layer in f16/bf16
    (``runtime``: the compiled model's runtime graph, else ``inference_precision``): the IR keeps f32 weights and
    INFERENCE_PRECISION_HINT decides, so an fp16 row on a CPU without f16 arithmetic reads as f32.
    """

    run_prec: dict[str, str] = {}
    if runtime is not None:
        for op in runtime.get_ops():
            rt = op.get_rt_info()
            if "originalLayersNames" in rt and "runtimePrecision" in rt:
                prec = rt["runtimePrecision"].astype(str).lower()
                for name in rt["originalLayersNames"].astype(str).split(","):
                    run_prec.setdefault(name.strip(), prec)
    device_prec = inference_precision.lower()
    facts = ArtifactFacts(reader)
    float_in_f32: list[str] = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in _AUDIT_OPS or op.get_input_size() < 2:
            continue
        port, w = 1, _ov_weight(_ov_source(op, 1))
        if w is None and op.get_type_name() == "MatMul":
            port, w = 0, _ov_weight(_ov_source(op, 0))
        if w is None:
            continue  # a computed weight (activation × activation MatMul): no parameter to audit
        pshape = op.input(port).get_partial_shape()
        if pshape.is_dynamic:
            continue
        shape = [int(d) for d in pshape.to_shape()]
        name = op.get_friendly_name()
        node = name.removesuffix("/WithoutBiases")
        prec = run_prec.get(name, device_prec)
        params = int(np.prod(shape)) if shape else 1
        channels = _ov_channels(op, shape, port)
        if w["bits"] >= 16:
            bits = 16 if w["bits"] == 16 or prec in ("f16", "bf16", "float16", "bfloat16") else 32
            facts.weights.append(
                WeightFact(node, op.get_type_name(), params, bits, activation="float", channels=channels)
            )
            continue
        activation = _ov_activation(_ov_source(op, 1 - port))
        facts.weights.append(
            WeightFact(
                node, op.get_type_name(), params, w["bits"], w["per_channel"], w["symmetric"], activation, channels
            )
        )
        if activation == "static" and run_prec.get(name) in ("f32", "f16", "bf16"):
            float_in_f32.append(node)  # the runtime graph says the layer was not run in integer arithmetic
    if float_in_f32:
        facts.notes.append(
            f"{len(float_in_f32)} layer(s) with quantized weights and activations run in float on the device "
            f"(runtime precision): {', '.join(float_in_f32[:5])}"
        )
    in_f32 = [w.node for w in facts.weights if w.bits == 32]
    if spec is not None and spec.is_float and spec.weight_bits == 16 and in_f32:
        source = "its runtime graph" if run_prec else f"inference precision {device_prec or 'unknown'}"
        facts.notes.append(
            f"{len(in_f32)} float layer(s) run in f32 on the device ({source}): the IR stores f32 weights and the "
            "device did not take the 16-bit INFERENCE_PRECISION_HINT"
        )
    return facts

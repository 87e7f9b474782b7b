"""TensorRT adapter (``tensorrt``, extra ``qtbench[tensorrt]``: TensorRT 10.x or 11.x + cuda-python).

Written against the TensorRT 10 and 11 Python APIs with one build path for both: a **strongly typed** network
(required in 11, where the weak-typing precision flags FP16/BF16/INT8 are gone; opt-in on 10.x, where this adapter
sets it too, so a row means the same engine on either). Precision therefore lives in the ONNX graph: fp16 is the
graph converted to fp16 with fp32 I/O (ONNX Runtime's float16 tool), bf16 is converted by NVIDIA ModelOpt's
AutoCast when it is installed, and INT8 is an explicit symmetric QDQ graph made by ONNX Runtime's quantizer with the
sweep's calibration data, biases kept float (TensorRT's parser rejects int32 bias DequantizeLinear). TF32 is off
unless ``options.tf32`` (TensorRT turns it on by default, so "fp32" engines would otherwise run 10-bit-mantissa
math); the math mode is recorded. Engines are built with detailed profiling verbosity so the engine inspector can
say each layer's precision: that is what the artifact audit reads back.

Engines are cached by content and keyed by the GPU (name, compute capability, driver) besides the TensorRT
version; a cached engine this GPU cannot deserialize is rebuilt once, then the cell fails with the reason. Host
buffers are page-locked; every TensorRT and CUDA call that reports failure raises instead of returning stale
buffers. The harness times host to host (copy in, execute, copy out, synchronise); the adapter adds the GPU's own
time from CUDA events as ``device_latency_ms_p50``.

No GPU and no TensorRT here: ``availability()`` says so with the reason, and the cells are ``unavailable``;
``tests/test_tensorrt.py`` drives the control flow with stand-in ``tensorrt`` 10 and 11 and cuda-python modules,
and ``benchmarks/gpu_check.sh`` is the check to run on a GPU. ONNX Runtime's CUDA and TensorRT execution
providers are the other route to NVIDIA hardware (``ort`` with ``providers``).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import qdq
from qtbench.backends._cuda import Cuda, gpu_identity
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once
from qtbench.harness.core.audit import ArtifactFacts, WeightFact
from qtbench.harness.core.errors import BackendUnavailable, CompileError
from qtbench.harness.core.spec import QuantSpec

#: Bumped when the adapter changes what a cell computes (part of the cache key through the versions).
ADAPTER_VERSION = 3
#: the TensorRT major versions this adapter is written against
MAJORS = (10, 11)


def math_mode(precision: str, tf32: bool) -> str:
    """What the engine's float layers may compute in: TensorRT enables TF32 (10-bit mantissa) for fp32 by default."""
    base = {"fp32": "fp32", "fp16": "fp16+fp32", "bf16": "bf16+fp32", "int8": "int8+fp32"}[precision]
    return base + ("/tf32" if tf32 else " (TF32 off)")


def strongly_typed_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network: the flag on 10.x; accepted and ignored on 11.x,
    where every network is strongly typed (0 when a build has no such flag)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def has_autocast() -> bool:
    """Whether NVIDIA ModelOpt's ONNX AutoCast (bf16 graphs for strongly typed builds) is importable."""
    try:
        return importlib.util.find_spec("modelopt.onnx.autocast") is not None
    except ModuleNotFoundError:
        return False


class TensorRtCompiled(Compiled):
    """An engine with page-locked host buffers (async copies from pageable memory are synchronous in CUDA)."""

    def __init__(self, engine: Any, info: CompiledInfo, cuda: Cuda, max_batch: int) -> None:
        super().__init__(info)
        import tensorrt as trt

        self.engine, self.cuda = engine, cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.stream()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self.names}
        self.max_batch = max_batch
        self.device: dict[str, tuple[int, int]] = {}
        self.host: dict[str, np.ndarray] = {}
        self._device_ms: list[float] = []
        self.start, self.end = cuda.event(), cuda.event()

    def _buffers(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
        """The pinned host array and device allocation for ``name`` at ``shape`` (grown on demand)."""
        host = self.host.get(name)
        if host is None or host.shape != shape:
            if host is not None:
                self.cuda.free_pinned(host)
            host = self.host[name] = self.cuda.pinned(shape, self.dtypes[name])
        nbytes = max(host.nbytes, 1)
        buf = self.device.get(name)
        if buf is None or buf[1] < nbytes:
            if buf is not None:
                self.cuda.free(buf[0])
            self.device[name] = buf = (self.cuda.malloc(nbytes), nbytes)
            if not self.context.set_tensor_address(name, buf[0]):
                raise RuntimeError(f"TensorRT rejected the device address of tensor {name!r}")
        return host, buf[0]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        for name in self.inputs:
            x = np.asarray(feeds[name])
            if not self.context.set_input_shape(name, tuple(x.shape)):
                raise RuntimeError(
                    f"TensorRT rejected input shape {tuple(x.shape)} for {name!r} (outside the engine's "
                    f"optimisation profile: batch 1..{self.max_batch}, other dims fixed)"
                )
            host, dev = self._buffers(name, tuple(x.shape))
            np.copyto(host, x, casting="same_kind")
            self.cuda.htod(dev, host, self.stream)
        outs = [self._buffers(name, tuple(self.context.get_tensor_shape(name))) for name in self.outputs]
        self.cuda.record(self.start, self.stream)
        if not self.context.execute_async_v3(int(self.stream)):
            self.cuda.synchronize(self.stream)
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log); no outputs were produced")
        self.cuda.record(self.end, self.stream)
        for host, dev in outs:
            self.cuda.dtoh(host, dev, self.stream)
        self.cuda.synchronize(self.stream)
        self._device_ms.append(self.cuda.elapsed_ms(self.start, self.end))
        return [host.astype(np.float32, copy=True) for host, _ in outs]  # the pinned buffers are reused

    def device_latencies_ms(self) -> list[float]:
        out, self._device_ms = self._device_ms, []
        return out

    def _close(self) -> None:
        self.context = None
        self.engine = None
        for ptr, _ in self.device.values():
            self.cuda.free(ptr)
        for host in self.host.values():
            self.cuda.free_pinned(host)
        self.device.clear()
        self.host.clear()


class TensorRtBackend(Backend):
    slug = "tensorrt"
    output_only = "a TensorRT engine fuses layers; marking outputs would build a different engine"
    simulation_twin = ("simnpu", {"profile": "tensorrt"})
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "NVIDIA TensorRT 10/11, strongly typed (FP32/FP16/BF16, INT8 from explicit QDQ), CUDA-event time"
    artifact_portable = False  # an engine plan is built for one GPU model and TensorRT version
    exclusive_device = True  # it times kernels while building: one build (and quality pass) at a time per GPU
    option_defaults: ClassVar[dict[str, Any]] = {
        "workspace_mb": 1024,
        "max_batch": 256,  # optimisation-profile max for dynamic-batch models (evaluation batches)
        "builder_optimization_level": 3,
        "tf32": False,  # TensorRT enables TF32 for fp32 layers by default; off so an fp32 row is IEEE fp32
    }

    def device_identity(self) -> str:
        """GPU model, compute capability and driver of device 0 (what an engine plan is bound to besides the
        TensorRT version, which the artifact key has already); '' when the device cannot be read."""
        return gpu_identity()

    def availability(self) -> Availability:
        try:
            import tensorrt as trt
        except ImportError as exc:
            return Availability(
                False,
                f"tensorrt is not importable ({exc}): pip install 'qtbench[tensorrt]' on a machine with an NVIDIA "
                "GPU (CUDA 12 or 13 wheels; on Jetson use JetPack's system TensorRT, see docs/backends.md)",
            )
        versions = {"tensorrt": trt.__version__, "adapter": str(ADAPTER_VERSION)}
        major = int(trt.__version__.split(".")[0])
        if major not in MAJORS:
            return Availability(
                False, f"TensorRT {trt.__version__} found; this adapter is written for 10.x and 11.x", versions
            )
        cuda, why = Cuda.open()
        if cuda is None:
            return Availability(False, why, versions)
        try:
            name = cuda.name()
        except RuntimeError as exc:  # a driver error is an unusable GPU, not a crash
            return Availability(False, f"no usable CUDA device: {exc}", versions)
        return Availability(True, "", versions, (name,))

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.scaling == "dynamic":
            return "TensorRT has no dynamic activation quantization; use static INT8"
        if spec.precision == "int4":
            return "TensorRT INT4 is weight-only with block-quantized DQ graphs; not built by this adapter yet"
        if spec.precision == "int8" and not (spec.weight_symmetric and spec.activation_symmetric):
            return "TensorRT INT8 is symmetric on weights and activations (no zero-point); use *-sym-*"
        if spec.format == "qoperator":
            return "TensorRT consumes QDQ graphs, not ONNX Runtime QOperator graphs"
        if spec.precision == "bf16" and not has_autocast():
            return (
                "bf16 in a strongly typed TensorRT network needs a bf16 ONNX graph from NVIDIA ModelOpt's AutoCast: "
                "pip install 'nvidia-modelopt[onnx]'"
            )
        return None

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        import tensorrt as trt

        cuda, why = Cuda.open()
        if cuda is None:
            raise BackendUnavailable(why)
        logger = trt.Logger(trt.Logger.WARNING)
        plan = workdir / "engine.plan"
        t0 = time.perf_counter()
        tf32 = bool(self.options["tf32"])
        build = lambda n: self._build(trt, logger, model, spec, calib, workdir, plan, n)  # noqa: E731
        notes, cache_hit = build_once(plan, build)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if engine is None and cache_hit:
            # a cached plan this GPU/driver cannot load (copied from another machine, an older key): a cache miss,
            # rebuilt once here; we hold the entry's compile lock, so no other build is using it
            plan.with_name("notes.json").unlink(missing_ok=True)
            plan.unlink(missing_ok=True)
            notes, cache_hit = build_once(plan, build)
            notes = [*notes, "the cached engine could not be deserialized on this GPU: rebuilt"]
            engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise CompileError(
                f"TensorRT could not deserialize the engine it just built ({plan}): a TensorRT/driver mismatch on "
                "this machine? Check that the tensorrt wheel matches the installed CUDA driver"
            )
        inspector = engine.create_engine_inspector()
        layers = engine.num_layers
        info = CompiledInfo(
            artifact_path=plan,
            artifact_bytes=plan.stat().st_size,
            coverage={"gpu": layers},
            numbers="measured",
            execution_device="gpu",
            notes=notes,
            compile_s=time.perf_counter() - t0,
            cache_hit=cache_hit,
        )
        detail = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        (workdir / "engine.json").write_text(detail)
        info.extra.update(
            {
                "tensorrt": trt.__version__,
                "layers": layers,
                "math_mode": math_mode(spec.precision, tf32),
                "tf32": tf32,
                "strongly_typed": True,
                "engine_summary": inspector.get_engine_information(trt.LayerInformationFormat.ONELINE)[:2000],
            }
        )
        return TensorRtCompiled(engine, info, cuda, int(self.options["max_batch"]))

    def audit(self, compiled: Compiled, spec: QuantSpec) -> Any:
        """Each layer's weight and input precision as the engine inspector reports it (engine.json beside the plan)."""
        path = Path(compiled.info.artifact_path).with_name("engine.json")
        if not path.is_file():
            return "the engine inspector's JSON was not written (engine built by an older adapter)"
        return audit_engine_json(path.read_text())

    def _build(
        self,
        trt: Any,
        logger: Any,
        model: ModelInput,
        spec: QuantSpec,
        calib: Any,
        workdir: Path,
        plan: Path,
        notes: list[str],
    ) -> None:
        """Type the ONNX graph for the spec, parse it into a strongly typed network, build, write the engine."""
        onnx_path = typed_graph(model, spec, calib, workdir, notes)
        builder = trt.Builder(logger)
        flags = strongly_typed_flags(trt)
        if not flags and int(trt.__version__.split(".")[0]) < 11:
            raise CompileError(
                f"TensorRT {trt.__version__} has no strongly typed networks; install tensorrt ≥ 10.0 (10.12+ or 11)"
            )
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20)
        config.builder_optimization_level = int(self.options["builder_optimization_level"])
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector then names layer precisions
        if self.options["tf32"]:
            config.set_flag(trt.BuilderFlag.TF32)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
        notes.append(
            f"strongly typed network; math mode {math_mode(spec.precision, config.get_flag(trt.BuilderFlag.TF32))}"
        )
        if model.dynamic_batch:
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                inp = network.get_input(i)
                rest = tuple(inp.shape)[1:]
                profile.set_shape(inp.name, (1, *rest), (1, *rest), (int(self.options["max_batch"]), *rest))
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError("TensorRT engine build failed; see the TensorRT log above")
        tmp = plan.with_suffix(".tmp")
        tmp.write_bytes(bytes(serialized))
        tmp.replace(plan)


def typed_graph(model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path, notes: list[str]) -> Path:
    """The ONNX graph whose types say the spec's precision (a strongly typed build follows the graph's types)."""
    if spec.precision == "int8":
        path = workdir / "qdq.onnx"
        # biases stay float: TensorRT's parser rejects ORT's int32 bias DequantizeLinear (onnx-tensorrt#850)
        # and quantizes biases itself from the input and weight scales
        qdq.build(model, spec, calib, workdir, path, notes, quantize_bias=False)
        notes.append("INT8 from an explicit QDQ graph made by onnxruntime.quantization")
        return path
    if spec.precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        path = workdir / "fp16.onnx"
        onnx.save(convert_float_to_float16(onnx.load(str(model.path)), keep_io_types=True), str(path))
        notes.append("FP16 graph from onnxruntime's float16 converter, fp32 inputs and outputs")
        return path
    if spec.precision == "bf16":
        import onnx
        from modelopt.onnx.autocast import convert_to_mixed_precision

        path = workdir / "bf16.onnx"
        converted = convert_to_mixed_precision(onnx_path=str(model.path), low_precision_type="bf16", keep_io_types=True)
        onnx.save(converted, str(path))
        notes.append("BF16 graph from NVIDIA ModelOpt AutoCast, fp32 inputs and outputs")
        return path
    return Path(model.path)


#: engine-inspector layer types that hold a weight (TensorRT names its convolution and GEMM kernels this way)
_WEIGHT_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatrixMultiply", "Gemm", "Cask")
_TYPE_BITS = {"int8": 8, "int4": 4, "fp8": 8, "half": 16, "fp16": 16, "bf16": 16, "float": 32, "fp32": 32}


def _bits(text: str) -> int | None:
    t = text.lower()
    for key in ("int4", "int8", "fp8", "bf16", "fp16", "half", "fp32", "float"):
        if key in t:
            return _TYPE_BITS[key]
    return None


def _io_type(tensor: Mapping[str, Any]) -> str:
    """A layer input's data type: TensorRT 10 writes "Format/Datatype" (one string), 11 "DataType" apart."""
    return str(tensor.get("DataType") or tensor.get("Format/Datatype") or "")


def audit_engine_json(text: str) -> ArtifactFacts | str:
    """What the engine holds, from ``IEngineInspector`` JSON at detailed verbosity (TensorRT 10 or 11 layout):
    each weighted layer's weight type and whether its input is quantized. TensorRT's INT8 weights are symmetric;
    their granularity is not in the JSON, so it stays unknown."""
    try:
        info = json.loads(text)
    except ValueError:
        return "the engine inspector's output is not JSON"
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    if layers and isinstance(layers[0], str):
        return "the engine was built without detailed profiling verbosity: layer precisions are not recorded"
    facts = ArtifactFacts("tensorrt-inspector")
    for layer in layers:
        weights = layer.get("Weights")
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
        if not isinstance(weights, Mapping) or not any(k in kind for k in _WEIGHT_LAYERS):
            continue
        bits = _bits(str(weights.get("Type", "")))
        if bits is None:
            continue
        inputs = layer.get("Inputs") or []
        act = _bits(_io_type(inputs[0])) if inputs else None
        facts.weights.append(
            WeightFact(
                node=str(layer.get("Name", "")),
                op=str(layer.get("ParameterType") or layer.get("LayerType") or ""),
                params=int(weights.get("Count", 0)),
                bits=bits,
                symmetric=True if bits in (4, 8) else None,
                activation=None if act is None else ("static" if act <= 8 else "float"),
            )
        )
    if not facts.weights:
        return "the engine inspector lists no layer with weights"
    return facts

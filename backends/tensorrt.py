"""TensorRT adapter (``tensorrt``, extra ``qtbench[tensorrt]``: tensorrt 10.x + pycuda).

Written against the TensorRT 10 Python API: parse ONNX, build FP32/FP16/BF16 engines, and INT8 engines from
explicit QDQ graphs (TensorRT 10's recommended path; implicit calibration is deprecated there). The QDQ graph is
made by ONNX Runtime's quantizer with the sweep's calibration data, symmetric on both sides (TensorRT's INT8 has
no zero-point), with float biases (TensorRT's parser rejects int32 bias DequantizeLinear). TF32 is off unless
``options.tf32`` (TensorRT turns it on by default, so "fp32" engines would otherwise run 10-bit-mantissa math);
the math mode is recorded. TensorRT 11 removed the weak-typing precision flags this adapter uses, so it is
refused with that reason (the extra pins ``tensorrt<11``). Engines are cached by content. Host buffers are
page-locked; every TensorRT call that reports failure (``set_input_shape``, ``execute_async_v3``) raises instead
of returning stale buffers. The harness times host to host (copy in, execute, copy out, synchronise); the adapter
adds the GPU's own time from CUDA events as ``device_latency_ms_p50``.

No GPU and no TensorRT here: ``availability()`` says so with the reason, and the cells are ``unavailable``;
``tests/test_tensorrt.py`` drives the control flow with stand-in ``tensorrt``/``pycuda`` modules.
The ORT adapter's TensorRT/CUDA execution providers are the other route to NVIDIA hardware.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends import qdq
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput, build_once
from qtbench.harness.core.errors import BackendUnavailable, CompileError
from qtbench.harness.core.spec import QuantSpec

#: Bumped when the adapter changes what a cell computes (part of the cache key through the versions).
ADAPTER_VERSION = 2


def _cuda() -> tuple[Any, str]:
    """(pycuda's driver with a context, "") or (None, why not)."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        return None, f"pycuda is not importable ({exc}): pip install 'qtbench[tensorrt]'"
    try:
        import pycuda.autoinit  # noqa: F401 - initialises the driver and makes a context on device 0
    except Exception as exc:  # noqa: BLE001 - pycuda raises its own driver errors (cuInit failed, no device)
        return None, f"pycuda is installed but CUDA is not usable here (no GPU or driver?): {type(exc).__name__}: {exc}"
    return cuda, ""


def math_mode(precision: str, tf32: bool) -> str:
    """What the engine's float layers may compute in: TensorRT enables TF32 (10-bit mantissa) for fp32 by default."""
    base = {"fp32": "fp32", "fp16": "fp16+fp32", "bf16": "bf16+fp32", "int8": "int8+fp32"}[precision]
    return base + ("/tf32" if tf32 else " (TF32 off)")


class TensorRtCompiled(Compiled):
    """An engine with page-locked host buffers (async copies from pageable memory are synchronous in CUDA)."""

    def __init__(self, engine: Any, info: CompiledInfo, cuda: Any, max_batch: int) -> None:
        super().__init__(info)
        import tensorrt as trt

        self.engine, self.cuda = engine, cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.Stream()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self.names}
        self.max_batch = max_batch
        self.device: dict[str, tuple[Any, int]] = {}
        self.host: dict[str, np.ndarray] = {}
        self._device_ms: list[float] = []
        self.start, self.end = cuda.Event(), cuda.Event()

    def _buffers(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        """The pinned host array and device allocation for ``name`` at ``shape`` (grown on demand)."""
        host = self.host.get(name)
        if host is None or host.shape != shape:
            host = self.host[name] = self.cuda.pagelocked_empty(shape, self.dtypes[name])
        nbytes = max(host.nbytes, 1)
        buf = self.device.get(name)
        if buf is None or buf[1] < nbytes:
            self.device[name] = buf = (self.cuda.mem_alloc(nbytes), nbytes)
            if not self.context.set_tensor_address(name, int(buf[0])):
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
            self.cuda.memcpy_htod_async(dev, host, self.stream)
        outs = [self._buffers(name, tuple(self.context.get_tensor_shape(name))) for name in self.outputs]
        self.start.record(self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            self.stream.synchronize()
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log); no outputs were produced")
        self.end.record(self.stream)
        for host, dev in outs:
            self.cuda.memcpy_dtoh_async(host, dev, self.stream)
        self.stream.synchronize()
        self._device_ms.append(self.end.time_since(self.start))
        return [host.astype(np.float32, copy=True) for host, _ in outs]  # the pinned buffers are reused

    def device_latencies_ms(self) -> list[float]:
        out, self._device_ms = self._device_ms, []
        return out

    def _close(self) -> None:
        self.context = None
        self.engine = None
        self.device.clear()
        self.host.clear()


class TensorRtBackend(Backend):
    slug = "tensorrt"
    output_only = "a TensorRT engine fuses layers; marking outputs would build a different engine"
    simulation_twin = ("simnpu", {"profile": "tensorrt"})
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "NVIDIA TensorRT 10 (FP32/FP16/BF16, INT8 from explicit QDQ), CUDA-event device time"
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
        cuda, _why = _cuda()
        if cuda is None:
            return ""
        try:
            dev = cuda.Device(0)
            cc = ".".join(str(v) for v in dev.compute_capability())
            driver = cuda.get_driver_version()
            return f"{dev.name()};sm_{cc};driver={driver}"
        except Exception:  # noqa: BLE001 - pycuda's driver errors: an unreadable device keys as ""
            return ""

    def availability(self) -> Availability:
        try:
            import tensorrt as trt
        except ImportError as exc:
            return Availability(
                False,
                f"tensorrt is not importable ({exc}): pip install 'qtbench[tensorrt]' "
                "on a machine with an NVIDIA GPU (its wheels come from NVIDIA's package index)",
            )
        versions = {"tensorrt": trt.__version__, "adapter": str(ADAPTER_VERSION)}
        major = int(trt.__version__.split(".")[0])
        if major < 10:
            return Availability(False, f"TensorRT {trt.__version__} found; this adapter needs 10.x", versions)
        if major >= 11:
            return Availability(
                False,
                f"TensorRT {trt.__version__} found; TensorRT 11 removed the precision builder flags (FP16/BF16/"
                "INT8) this adapter builds with: install tensorrt 10.x (pip install 'qtbench[tensorrt]' pins <11)",
                versions,
            )
        cuda, why = _cuda()
        if cuda is None:
            return Availability(False, why, versions)
        try:
            name = cuda.Device(0).name()
        except Exception as exc:  # noqa: BLE001 - a driver error is an unusable GPU, not a crash
            return Availability(False, f"no usable CUDA device: {type(exc).__name__}: {exc}", versions)
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
        return None

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        import tensorrt as trt

        cuda, why = _cuda()
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
        info.extra.update(
            {
                "tensorrt": trt.__version__,
                "layers": layers,
                "math_mode": math_mode(spec.precision, tf32),
                "tf32": tf32,
                "engine_summary": inspector.get_engine_information(trt.LayerInformationFormat.ONELINE)[:2000],
            }
        )
        return TensorRtCompiled(engine, info, cuda, int(self.options["max_batch"]))

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
        """Parse ONNX (a QDQ graph for INT8), set precision flags, build and write the serialized engine."""
        onnx_path = model.path
        if spec.precision == "int8":
            onnx_path = workdir / "qdq.onnx"
            # biases stay float: TensorRT's parser rejects ORT's int32 bias DequantizeLinear (onnx-tensorrt#850)
            # and quantizes biases itself from the input and weight scales
            qdq.build(model, spec, calib, workdir, onnx_path, notes, quantize_bias=False)
            notes.append("INT8 from an explicit QDQ graph made by onnxruntime.quantization")
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(self.options["workspace_mb"]) << 20)
        config.builder_optimization_level = int(self.options["builder_optimization_level"])
        if self.options["tf32"]:
            config.set_flag(trt.BuilderFlag.TF32)
        else:
            config.clear_flag(trt.BuilderFlag.TF32)
        flag = {"fp16": trt.BuilderFlag.FP16, "bf16": trt.BuilderFlag.BF16, "int8": trt.BuilderFlag.INT8}
        if spec.precision in flag:
            config.set_flag(flag[spec.precision])
        notes.append(f"math mode {math_mode(spec.precision, config.get_flag(trt.BuilderFlag.TF32))}")
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

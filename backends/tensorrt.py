"""TensorRT adapter (``tensorrt``, extra ``qtbench[tensorrt]``: tensorrt ≥ 10 + pycuda or cuda-python).

Written against the TensorRT 10 Python API: parse ONNX, build FP32/FP16/BF16 engines, and INT8 engines from
explicit QDQ graphs (TensorRT 10's recommended path; implicit calibration is deprecated there). The QDQ graph is
made by ONNX Runtime's quantizer with the sweep's calibration data, symmetric on both sides (TensorRT's INT8 has
no zero-point). Engines are cached by content. The harness times host to host (copy in, execute, copy out,
synchronise); the adapter adds the GPU's own time from CUDA events as ``device_latency_ms_p50``.

No GPU and no TensorRT here: ``availability()`` says so with the reason, and the cells are ``unavailable``.
The ORT adapter's TensorRT/CUDA execution providers are the other route to NVIDIA hardware.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput
from harness.errors import BackendUnavailable
from harness.spec import QuantSpec


def _cuda() -> Any:
    """pycuda's driver with a context, or None."""
    try:
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as cuda

        return cuda
    except ImportError:
        return None


class TensorRtCompiled(Compiled):
    def __init__(self, engine: Any, info: CompiledInfo, cuda: Any, max_batch: int) -> None:
        super().__init__(info)
        import tensorrt as trt

        self.engine, self.cuda = engine, cuda
        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.max_batch = max_batch
        self.device: dict[str, Any] = {}
        self._device_ms: list[float] = []
        self.start, self.end = cuda.Event(), cuda.Event()

    def _buffer(self, name: str, nbytes: int) -> Any:
        buf = self.device.get(name)
        if buf is None or buf[1] < nbytes:
            self.device[name] = (self.cuda.mem_alloc(nbytes), nbytes)
            self.context.set_tensor_address(name, int(self.device[name][0]))
        return self.device[name][0]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        import tensorrt as trt

        for name in self.inputs:
            x = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_input_shape(name, x.shape)
            self.cuda.memcpy_htod_async(self._buffer(name, x.nbytes), x, self.stream)
        outs = []
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self._buffer(name, out.nbytes)
            outs.append(out)
        self.start.record(self.stream)
        self.context.execute_async_v3(self.stream.handle)
        self.end.record(self.stream)
        for name, out in zip(self.outputs, outs, strict=True):
            self.cuda.memcpy_dtoh_async(out, self.device[name][0], self.stream)
        self.stream.synchronize()
        self._device_ms.append(self.end.time_since(self.start))
        return [o.astype(np.float32, copy=False) for o in outs]

    def device_latencies_ms(self) -> list[float]:
        out, self._device_ms = self._device_ms, []
        return out

    def _close(self) -> None:
        self.context = None
        self.engine = None
        self.device.clear()


class TensorRtBackend(Backend):
    slug = "tensorrt"
    description = "NVIDIA TensorRT 10 (FP32/FP16/BF16, INT8 from explicit QDQ), CUDA-event device time"
    option_defaults: ClassVar[dict[str, Any]] = {
        "workspace_mb": 1024,
        "max_batch": 256,  # optimisation-profile max for dynamic-batch models (evaluation batches)
        "builder_optimization_level": 3,
    }

    def availability(self) -> Availability:
        try:
            import tensorrt as trt
        except ImportError as exc:
            return Availability(
                False,
                f"tensorrt is not importable ({exc}): pip install 'qtbench[tensorrt]' "
                "on a machine with an NVIDIA GPU (its wheels come from NVIDIA's package index)",
            )
        versions = {"tensorrt": trt.__version__}
        if int(trt.__version__.split(".")[0]) < 10:
            return Availability(False, f"TensorRT {trt.__version__} found; this adapter needs ≥ 10", versions)
        cuda = _cuda()
        if cuda is None:
            return Availability(
                False, "pycuda is not importable (pip install pycuda) or no CUDA device/driver", versions
            )
        return Availability(True, "", versions, (cuda.Device(0).name(),))

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

        cuda = _cuda()
        if cuda is None:
            raise BackendUnavailable("no CUDA device or pycuda")
        logger = trt.Logger(trt.Logger.WARNING)
        plan = workdir / "engine.plan"
        t0 = time.perf_counter()
        notes: list[str] = []
        cache_hit = plan.is_file()
        if not cache_hit:
            onnx_path = model.path
            if spec.precision == "int8":
                from backends.ort import OrtBackend

                onnx_path = workdir / "qdq.onnx"
                OrtBackend()._build(model, spec, calib, workdir, onnx_path, notes)
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
            flag = {"fp16": trt.BuilderFlag.FP16, "bf16": trt.BuilderFlag.BF16, "int8": trt.BuilderFlag.INT8}
            if spec.precision in flag:
                config.set_flag(flag[spec.precision])
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
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan.read_bytes())
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
                "engine_summary": inspector.get_engine_information(trt.LayerInformationFormat.ONELINE)[:2000],
            }
        )
        return TensorRtCompiled(engine, info, cuda, int(self.options["max_batch"]))

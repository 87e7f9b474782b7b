"""The TensorRT adapter's control flow, driven by stand-in ``tensorrt`` (10 and 11) and cuda-python modules.

No GPU here, so these tests check what the adapter asks of TensorRT (network flags, the typed graph it parses,
builder flags, profiles, buffers, return values) with fakes that record every call and behave like TensorRT's
Python API where the adapter depends on it: calls that report failure by returning False, a parser that rejects
int32 bias DequantizeLinear (onnx-tensorrt#850), TF32 on by default, TensorRT 11 without the precision builder
flags, cuda-python's (error, value) returns, and async copies that must come from page-locked memory. The real
path runs where a GPU is present (benchmarks/gpu_check.sh); one test imports the real ``tensorrt`` when installed.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from qtbench.backends.base import ModelInput
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import BackendUnavailable
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

from models import tiny_data


# -- a stand-in for cuda-python's runtime: device memory is a dict, copies insist on page-locked host memory -------
def _make_cudart(device_count: int = 1) -> types.ModuleType:
    import ctypes

    rt = types.ModuleType("cuda.bindings.runtime")
    ok = types.SimpleNamespace(name="cudaSuccess")
    rt.cudaError_t = types.SimpleNamespace(
        cudaSuccess=ok, cudaErrorNoDevice=types.SimpleNamespace(name="cudaErrorNoDevice")
    )
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")
    rt.memory = {}  # device address → np.ndarray of bytes
    rt.pinned = {}  # host address → its buffer (only these may take part in async copies)
    rt.calls = []
    rt.props = types.SimpleNamespace(name=b"Fake GPU", major=8, minor=9)

    def cudaGetDeviceCount():
        if device_count < 1:
            return (rt.cudaError_t.cudaErrorNoDevice, 0)
        return (ok, device_count)

    def cudaMallocHost(nbytes):
        buf = (ctypes.c_byte * nbytes)()
        addr = ctypes.addressof(buf)
        rt.pinned[addr] = buf
        return (ok, addr)

    def cudaFreeHost(addr):
        rt.pinned.pop(addr)
        return (ok,)

    def cudaMalloc(nbytes):
        addr = 0x1000 + len(rt.memory) * 0x1000
        rt.memory[addr] = np.zeros(nbytes, np.uint8)
        return (ok, addr)

    def cudaFree(addr):
        rt.memory.pop(addr)
        return (ok,)

    def _pinned_view(addr, n):
        base = next((a for a, b in rt.pinned.items() if a <= addr < a + ctypes.sizeof(b)), None)
        assert base is not None, "async copy from pageable memory"
        return np.ctypeslib.as_array((ctypes.c_byte * n).from_address(addr)).view(np.uint8)

    def cudaMemcpyAsync(dst, src, n, kind, stream):
        rt.calls.append(("memcpy", kind))
        if kind == "h2d":
            rt.memory[dst][:n] = _pinned_view(src, n)
        else:
            _pinned_view(dst, n)[:] = rt.memory[src][:n]
        return (ok,)

    rt.cudaGetDeviceCount, rt.cudaMallocHost, rt.cudaFreeHost = cudaGetDeviceCount, cudaMallocHost, cudaFreeHost
    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = cudaMalloc, cudaFree, cudaMemcpyAsync
    rt.cudaStreamCreate = lambda: (ok, 7)
    rt.cudaStreamSynchronize = lambda s: (ok,)
    rt.cudaEventCreate = lambda: (ok, object())
    rt.cudaEventRecord = lambda e, s: (ok,)
    rt.cudaEventElapsedTime = lambda a, b: (ok, 0.25)
    rt.cudaGetDeviceProperties = lambda i: (ok, rt.props)
    rt.cudaDriverGetVersion = lambda: (ok, 12040)
    return rt


def _install_cudart(monkeypatch, rt: types.ModuleType) -> None:
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    bindings = types.ModuleType("cuda.bindings")
    bindings.__path__ = []
    bindings.runtime = rt
    cuda.bindings = bindings
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)


# -- a stand-in for tensorrt 10 and 11 ---------------------------------------------------------------------------
def _make_tensorrt(version: str, drv: types.ModuleType) -> types.ModuleType:
    import onnx
    from onnx import TensorProto

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []  # (config flags, parsed graph path, profiles, network flags, verbosity) per build
    trt.behaviour = {"shape_ok": True, "execute_ok": True}
    major = int(version.split(".")[0])
    if major >= 11:  # 11 removed the weak-typing precision flags; strong typing is always on
        trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    else:
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8", TF32="TF32")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed", LAYER_NAMES_ONLY="names")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.LayerInformationFormat = types.SimpleNamespace(ONELINE="oneline", JSON="json")
    # the inspector's JSON: TensorRT 10 writes "Format/Datatype", 11 "Format" and "DataType" apart
    io = (
        (lambda dt: {"Name": "x", "DataType": dt, "Format": "Row major"})
        if major >= 11
        else (lambda dt: {"Name": "x", "Format/Datatype": f"Row major linear {dt} format"})
    )
    trt.nptype = lambda dt: dt

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    class Network:
        def __init__(self, flags: int = 0) -> None:
            self.inputs: list[types.SimpleNamespace] = []
            self.path = ""
            self.flags = flags

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            g = onnx.load(path).graph
            int32 = {i.name for i in g.initializer if i.data_type == TensorProto.INT32}
            for n in g.node:
                if n.op_type == "DequantizeLinear" and n.input[0] in int32:
                    self.errors.append(f"{n.name}: DequantizeLinear of INT32 bias is not supported")
            self.network.path = path
            self.network.inputs = [
                types.SimpleNamespace(name=i.name, shape=(-1, *[d.dim_value for d in i.type.tensor_type.shape.dim[1:]]))
                for i in g.input
            ]
            return not self.errors

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Config:
        def __init__(self) -> None:
            self.flags = {"TF32"}  # TensorRT's default
            self.profiles: list[dict] = []
            self.profiling_verbosity = "names"

        def set_memory_pool_limit(self, pool, size) -> None:
            self.workspace = size

        def set_flag(self, f) -> None:
            self.flags.add(f)

        def clear_flag(self, f) -> None:
            self.flags.discard(f)

        def get_flag(self, f) -> bool:
            return f in self.flags

        def add_optimization_profile(self, p) -> None:
            self.profiles.append(p.shapes)

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append(
                (set(config.flags), network.path, config.profiles, network.flags, config.profiling_verbosity)
            )
            g = onnx.load(network.path).graph
            dt = (
                "INT8"
                if any(n.op_type == "QuantizeLinear" for n in g.node)
                else ("FP16" if any(i.data_type == TensorProto.FLOAT16 for i in g.initializer) else "FP32")
            )
            trt.last_json = json.dumps(
                {
                    "Layers": [
                        {
                            "Name": "conv",
                            "LayerType": "CaskConvolution",
                            "ParameterType": "Convolution",
                            "Inputs": [io(dt)],
                            "Weights": {"Type": {"INT8": "Int8", "FP16": "Half", "FP32": "Float"}[dt], "Count": 72},
                        },
                        {
                            "Name": "fc",
                            "LayerType": "CaskGemm",
                            "ParameterType": "Gemm",
                            "Inputs": [io(dt)],
                            "Weights": {"Type": {"INT8": "Int8", "FP16": "Half", "FP32": "Float"}[dt], "Count": 640},
                        },
                    ]
                }
            )
            return b"fake-engine"

    class Context:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}
            self.addr: dict[str, int] = {}

        def set_input_shape(self, name, shape) -> bool:
            self.shapes[name] = tuple(shape)
            return trt.behaviour["shape_ok"]

        def get_tensor_shape(self, name):
            return (self.shapes["input"][0], 5)

        def set_tensor_address(self, name, addr) -> bool:
            self.addr[name] = addr
            return True

        def execute_async_v3(self, handle) -> bool:
            if not trt.behaviour["execute_ok"]:
                return False
            b = self.shapes["input"][0]
            x = drv.memory[self.addr["input"]][: b * 64 * 4].view(np.float32).reshape(b, 64)
            y = (x[:, :5] * 2.0).astype(np.float32)  # a known function of the input
            drv.memory[self.addr["logits"]][: y.nbytes] = y.view(np.uint8).reshape(-1)
            return True

    class Engine:
        num_layers = 7
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_dtype(self, name):
            return np.float32

        def create_execution_context(self):
            return Context()

        def create_engine_inspector(self):
            return types.SimpleNamespace(get_engine_information=lambda fmt: trt.last_json if fmt == "json" else "fake")

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"fake-engine" else None

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, OnnxParser, Builder, Runtime
    return trt


@pytest.fixture(params=["10.13.0", "11.4.0"])
def fake_gpu(monkeypatch, request):
    """Install a fake tensorrt (10 and 11 in turn) + cuda-python with one device; returns the tensorrt module."""
    rt = _make_cudart()
    _install_cudart(monkeypatch, rt)
    trt = _make_tensorrt(request.param, rt)
    trt.cudart = rt
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


@pytest.fixture
def tiny(tmp_path: Path, tiny_model: Path):
    facts = model_facts(tiny_model)
    model = ModelInput(tiny_model, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    return model, calib, tmp_path


def test_tensorrt_reports_why_it_cannot_run_here():
    """No GPU and no TensorRT on this machine: the adapter must say so, never fake a number."""
    from qtbench.backends.tensorrt import TensorRtBackend

    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here; the unavailable path is not exercised")
    except ImportError:
        pass
    av = TensorRtBackend().availability()
    assert not av.available and "pip install 'qtbench[tensorrt]'" in av.reason and "Jetson" in av.reason
    b = TensorRtBackend()
    assert "symmetric" in b.supports(QuantSpec.parse("int8-static-pc-wsym-minmax"))
    assert "dynamic" in b.supports(QuantSpec.parse("int8-dynamic-pc-wsym"))
    assert b.supports(QuantSpec.parse("int8-static-pc-sym-minmax")) is None


def test_every_build_is_strongly_typed_and_precision_lives_in_the_graph(fake_gpu, tiny):
    """On 10.x and 11.x alike: a strongly typed network, no precision builder flag, TF32 cleared, detailed
    verbosity; fp16 is an fp16 graph with fp32 I/O, INT8 an explicit QDQ graph."""
    import onnx

    from qtbench.backends.tensorrt import TensorRtBackend

    model, _, tmp = tiny
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, tmp / "fp32") as c:
        flags, parsed, profiles, net_flags, verbosity = fake_gpu.built[-1]
        assert net_flags == 1 << 1 and verbosity == "detailed"
        assert flags == set() and parsed == str(model.path)  # TF32 cleared, nothing else set
        assert profiles == [{"input": ((1, 1, 8, 8), (1, 1, 8, 8), (256, 1, 8, 8))}]
        assert c.info.extra["math_mode"] == "fp32 (TF32 off)" and c.info.extra["strongly_typed"] is True
        assert c.info.numbers == "measured" and c.info.coverage == {"gpu": 7}
        x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        y = c.infer({"input": x})[0]  # the fakes assert every async copy used page-locked memory
        np.testing.assert_array_equal(y, x.reshape(3, -1)[:, :5] * 2)
        y1 = c.infer({"input": x[:1]})[0]  # a new batch size re-sizes the pinned buffers
        np.testing.assert_array_equal(y1, x[:1].reshape(1, -1)[:, :5] * 2)
        assert c.device_latencies_ms() == [0.25, 0.25]
    with TensorRtBackend({"tf32": True}).compile(model, QuantSpec("fp16"), None, tmp / "fp16-tf32") as c:
        flags, parsed, _, net_flags, _ = fake_gpu.built[-1]
        assert flags == {"TF32"} and net_flags == 1 << 1 and parsed.endswith("fp16.onnx")
        g = onnx.load(parsed).graph
        assert {i.data_type for i in g.initializer} == {onnx.TensorProto.FLOAT16}
        assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept fp32
        assert c.info.extra["math_mode"] == "fp16+fp32/tf32"
    assert not fake_gpu.cudart.memory and not fake_gpu.cudart.pinned  # close() freed every buffer


def test_int8_qdq_graph_has_float_biases_for_the_parser(fake_gpu, tiny):
    """ORT's default QDQ quantizes biases to int32 behind a DequantizeLinear, which TensorRT's parser rejects."""
    import onnx

    from qtbench.backends.tensorrt import TensorRtBackend

    model, calib, tmp = tiny
    spec = QuantSpec.parse("int8-static-pc-sym-minmax")
    with TensorRtBackend().compile(model, spec, calib, tmp / "int8") as c:
        flags, parsed, *_ = fake_gpu.built[-1]
        assert flags == set() and parsed.endswith("qdq.onnx")
        g = onnx.load(parsed).graph
        assert sum(n.op_type == "DequantizeLinear" for n in g.node) >= 3  # weights and activations are QDQ
        assert not [i.name for i in g.initializer if i.data_type == onnx.TensorProto.INT32]
        assert c.info.extra["math_mode"] == "int8+fp32 (TF32 off)"
        assert any("biases kept in float" in n for n in c.info.notes)
    # the cache: a second compile reuses the engine and the notes it was built with
    n_builds = len(fake_gpu.built)
    with TensorRtBackend().compile(model, spec, calib, tmp / "int8") as c:
        assert c.info.cache_hit and len(fake_gpu.built) == n_builds
        assert any("biases kept in float" in n for n in c.info.notes)


def test_the_audit_reads_layer_precisions_from_the_engine_inspector(fake_gpu, tiny):
    """The inspector's JSON (10.x's Format/Datatype, 11.x's DataType) is the audit: INT8 weights and quantized
    inputs honour an INT8 spec; an fp16 engine's weights read 16-bit."""
    from qtbench.backends.tensorrt import TensorRtBackend, audit_engine_json
    from qtbench.harness.core.audit import judge

    model, calib, tmp = tiny
    spec = QuantSpec.parse("int8-static-pc-sym-minmax")
    backend = TensorRtBackend()
    with backend.compile(model, spec, calib, tmp / "int8") as c:
        facts = backend.audit(c, spec)
        assert [w.bits for w in facts.weights] == [8, 8] and {w.activation for w in facts.weights} == {"static"}
        assert judge(spec, facts).ok
    with backend.compile(model, QuantSpec("fp16"), None, tmp / "fp16") as c:
        assert [w.bits for w in backend.audit(c, QuantSpec("fp16")).weights] == [16, 16]
    assert "detailed profiling" in audit_engine_json(json.dumps({"Layers": ["conv", "fc"]}))


def test_bf16_needs_autocast_under_strong_typing():
    from qtbench.backends import tensorrt as t

    reason = t.TensorRtBackend().supports(QuantSpec("bf16"))
    assert (reason is None) == t.has_autocast()
    if reason:
        assert "nvidia-modelopt" in reason


@pytest.mark.parametrize(("key", "match"), [("shape_ok", "rejected input shape"), ("execute_ok", "execute_async_v3")])
def test_failed_tensorrt_calls_raise_instead_of_returning_stale_buffers(fake_gpu, tiny, key, match):
    from qtbench.backends.tensorrt import TensorRtBackend

    model, _, tmp = tiny
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, tmp / "fp32") as c:
        x = np.ones((2, 1, 8, 8), np.float32)
        c.infer({"input": x})
        fake_gpu.behaviour[key] = False
        with pytest.raises(RuntimeError, match=match):
            c.infer({"input": x})


def test_cuda_without_a_device_is_unavailable_not_a_crash(fake_gpu, monkeypatch, tiny):
    from qtbench.backends.tensorrt import TensorRtBackend

    _install_cudart(monkeypatch, _make_cudart(device_count=0))
    av = TensorRtBackend().availability()
    assert not av.available
    assert "CUDA is not usable" in av.reason and "cudaErrorNoDevice" in av.reason
    model, _, tmp = tiny
    with pytest.raises(BackendUnavailable, match="cudaErrorNoDevice"):
        TensorRtBackend().compile(model, QuantSpec("fp32"), None, tmp / "w")
    assert TensorRtBackend().device_identity() == ""


def test_tensorrt_10_and_11_are_accepted_and_12_is_refused(fake_gpu):
    from qtbench.backends.tensorrt import TensorRtBackend

    assert TensorRtBackend().availability().available
    fake_gpu.__version__ = "12.0.0"
    av = TensorRtBackend().availability()
    assert not av.available and "10.x and 11.x" in av.reason
    fake_gpu.__version__ = "9.3.0"
    assert not TensorRtBackend().availability().available
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"tensorrt>=10,<12"' in text and "cuda-python" in text and "pycuda" not in text


def test_an_engine_this_gpu_cannot_load_is_rebuilt_once_then_a_clear_failure(fake_gpu, tiny):
    """A cached plan from another GPU (same size, valid marker) fails to deserialize: the adapter drops it and
    builds again, once; an engine that does not load even fresh is a one-line CompileError, not a crash."""
    from qtbench.backends.tensorrt import TensorRtBackend
    from qtbench.harness.core.errors import CompileError

    model, _, tmp = tiny
    work = tmp / "foreign"
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, work):
        pass
    builds = len(fake_gpu.built)
    (work / "engine.plan").write_bytes(b"alien-plan!")  # as long as b"fake-engine": the marker still matches
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, work) as c:
        assert len(fake_gpu.built) == builds + 1 and not c.info.cache_hit
        assert any("could not be deserialized on this GPU: rebuilt" in n for n in c.info.notes)
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, work) as c:  # the rebuilt entry is a cache hit
        assert c.info.cache_hit and len(fake_gpu.built) == builds + 1
    real_build = fake_gpu.Builder.build_serialized_network
    fake_gpu.Builder.build_serialized_network = lambda self, n, cfg: (real_build(self, n, cfg), b"broken")[1]
    with pytest.raises(CompileError, match="could not deserialize the engine it just built"):
        TensorRtBackend().compile(model, QuantSpec("fp16"), None, tmp / "broken")


def test_engines_are_keyed_by_the_gpu_and_built_one_at_a_time(fake_gpu):
    """The device identity (GPU, compute capability, driver) goes into the artifact key of this non-portable
    backend, and it declares an exclusive device, so the compile phase never builds two engines at once."""
    from qtbench.backends.tensorrt import TensorRtBackend
    from qtbench.harness.run.plan import artifact_key

    assert TensorRtBackend.exclusive_device and not TensorRtBackend.artifact_portable
    here = TensorRtBackend().device_identity()
    assert here == "Fake GPU;sm_8.9;driver=12040"
    fake_gpu.cudart.props = types.SimpleNamespace(name=b"Other GPU", major=9, minor=0)
    there = TensorRtBackend().device_identity()
    spec = QuantSpec("fp32")
    assert artifact_key("m", spec, "trt", {}, "", {}, here) != artifact_key("m", spec, "trt", {}, "", {}, there)


def test_the_real_tensorrt_module_has_what_the_adapter_calls():
    """Where tensorrt is installed (any GPU host), its API surface is what the adapter was written against."""
    trt = pytest.importorskip("tensorrt")
    major = int(trt.__version__.split(".")[0])
    assert major in (10, 11)
    for name in ("Builder", "OnnxParser", "Runtime", "Logger", "TensorIOMode", "MemoryPoolType"):
        assert hasattr(trt, name), name
    assert hasattr(trt.BuilderFlag, "TF32") and hasattr(trt.ProfilingVerbosity, "DETAILED")
    assert hasattr(trt.LayerInformationFormat, "JSON")
    if major == 10:
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    else:
        assert not hasattr(trt.BuilderFlag, "FP16")


def test_ort_with_a_gpu_provider_is_an_exclusive_device(monkeypatch):
    """ORT's CUDA/TensorRT execution providers build and time on the GPU: such an entry is exclusive (its cells
    build one at a time) and its cells are keyed by the GPU; on the CPU provider neither."""
    import onnxruntime

    from qtbench.backends import ort
    from qtbench.harness.run.plan import _probe

    b = ort.OrtBackend({"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]})
    present = ["CUDAExecutionProvider", "CPUExecutionProvider"]  # as onnxruntime-gpu on a GPU host reports
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: present)
    monkeypatch.setattr(ort, "gpu_identity", lambda: "Fake GPU;sm_8.9;driver=12040")
    assert b.exclusive_device and b.device_identity() == "Fake GPU;sm_8.9;driver=12040"
    cpu = ort.OrtBackend({"providers": ["CPUExecutionProvider"]})
    assert not cpu.exclusive_device and cpu.device_identity() == ""
    gpu = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
    probe = _probe("ort", "qtbench.backends.ort:OrtBackend", gpu, [QuantSpec("fp32")])
    assert probe["exclusive"] and probe["identity"] == "Fake GPU;sm_8.9;driver=12040"  # what the planner keys by
    probe = _probe("ort", "qtbench.backends.ort:OrtBackend", {"providers": ["CPUExecutionProvider"]}, [])
    assert not probe["exclusive"] and probe["identity"] == ""

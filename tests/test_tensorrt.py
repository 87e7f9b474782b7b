"""The TensorRT adapter's control flow, driven by stand-in ``tensorrt`` and ``pycuda`` modules.

No GPU here, so these tests check what the adapter asks of TensorRT (flags, QDQ graph, profiles, buffers, return
values) with fakes that behave like TensorRT 10's Python API where the adapter depends on it: calls that report
failure by returning False, a parser that rejects int32 bias DequantizeLinear (onnx-tensorrt#850), TF32 on by
default, and async copies that must come from page-locked memory. The real path runs where a GPU is present.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
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


class FakeDriverError(Exception):
    """Like pycuda._driver.Error: not an ImportError."""


# -- a stand-in for pycuda.driver: device memory is a dict, copies insist on page-locked host arrays ------------
class Pinned(np.ndarray):
    pass


def _make_pycuda() -> types.ModuleType:
    drv = types.ModuleType("pycuda.driver")
    drv.memory = {}  # address → np.ndarray

    class Alloc:
        def __init__(self, nbytes: int) -> None:
            self.addr = 0x1000 + len(drv.memory) * 0x1000
            drv.memory[self.addr] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.addr

    def pagelocked_empty(shape, dtype):
        return np.empty(shape, dtype).view(Pinned)

    def memcpy_htod_async(dev, host, stream):
        assert isinstance(host, Pinned), "async copy from pageable memory"
        raw = np.ascontiguousarray(host).view(np.uint8).reshape(-1)
        drv.memory[int(dev)][: raw.size] = raw

    def memcpy_dtoh_async(host, dev, stream):
        assert isinstance(host, Pinned), "async copy into pageable memory"
        raw = drv.memory[int(dev)][: host.nbytes]
        host[...] = raw.view(host.dtype).reshape(host.shape)

    class Stream:
        handle = 7

        def synchronize(self) -> None:
            pass

    class Event:
        def record(self, stream) -> None:
            pass

        def time_since(self, other) -> float:
            return 0.25

    class Device:
        def __init__(self, i: int) -> None:
            pass

        def name(self) -> str:
            return "Fake GPU"

    drv.Alloc, drv.mem_alloc = Alloc, Alloc
    drv.pagelocked_empty, drv.memcpy_htod_async, drv.memcpy_dtoh_async = (
        pagelocked_empty,
        memcpy_htod_async,
        memcpy_dtoh_async,
    )
    drv.Stream, drv.Event, drv.Device = Stream, Event, Device
    return drv


# -- a stand-in for tensorrt 10 ----------------------------------------------------------------------------------
def _make_tensorrt(version: str, drv: types.ModuleType) -> types.ModuleType:
    import onnx
    from onnx import TensorProto

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.built = []  # (config flags, parsed graph path) per build
    trt.behaviour = {"shape_ok": True, "execute_ok": True}
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8", TF32="TF32")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.LayerInformationFormat = types.SimpleNamespace(ONELINE="oneline")
    trt.nptype = lambda dt: dt

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    class Network:
        def __init__(self) -> None:
            self.inputs: list[types.SimpleNamespace] = []
            self.path = ""

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
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((set(config.flags), network.path, config.profiles))
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
            return types.SimpleNamespace(get_engine_information=lambda fmt: "fake engine")

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"fake-engine" else None

    trt.Logger, trt.OnnxParser, trt.Builder, trt.Runtime = Logger, OnnxParser, Builder, Runtime
    return trt


class _FailingAutoinit(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import pycuda.autoinit`` raising a driver error, as it does with pycuda installed and no GPU."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "pycuda.autoinit":
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise FakeDriverError("cuInit failed: no CUDA-capable device is detected")


@pytest.fixture
def fake_gpu(monkeypatch):
    """Install fake tensorrt 10 + pycuda with a working context; returns the tensorrt module."""
    drv = _make_pycuda()
    pkg = types.ModuleType("pycuda")
    pkg.__path__ = []
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", types.ModuleType("pycuda.autoinit"))
    trt = _make_tensorrt("10.9.0", drv)
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
    assert not av.available and "pip install 'qtbench[tensorrt]'" in av.reason
    b = TensorRtBackend()
    assert "symmetric" in b.supports(QuantSpec.parse("int8-static-pc-wsym-minmax"))
    assert "dynamic" in b.supports(QuantSpec.parse("int8-dynamic-pc-wsym"))
    assert b.supports(QuantSpec.parse("int8-static-pc-sym-minmax")) is None


def test_fp32_engine_clears_tf32_and_records_math_mode(fake_gpu, tiny):
    from qtbench.backends.tensorrt import TensorRtBackend

    model, _, tmp = tiny
    with TensorRtBackend().compile(model, QuantSpec("fp32"), None, tmp / "fp32") as c:
        flags, parsed, profiles = fake_gpu.built[-1]
        assert "TF32" not in flags and not {"FP16", "INT8"} & flags
        assert parsed == str(model.path)
        assert profiles == [{"input": ((1, 1, 8, 8), (1, 1, 8, 8), (256, 1, 8, 8))}]
        assert c.info.extra["math_mode"] == "fp32 (TF32 off)" and c.info.extra["tf32"] is False
        assert any("math mode fp32 (TF32 off)" in n for n in c.info.notes)
        assert c.info.numbers == "measured" and c.info.coverage == {"gpu": 7}
        x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
        y = c.infer({"input": x})[0]  # the fakes assert every async copy used page-locked memory
        np.testing.assert_array_equal(y, x.reshape(3, -1)[:, :5] * 2)
        y1 = c.infer({"input": x[:1]})[0]  # a new batch size re-sizes the pinned buffers
        np.testing.assert_array_equal(y1, x[:1].reshape(1, -1)[:, :5] * 2)
        assert c.device_latencies_ms() == [0.25, 0.25]
    with TensorRtBackend({"tf32": True}).compile(model, QuantSpec("fp16"), None, tmp / "fp16-tf32") as c:
        flags, *_ = fake_gpu.built[-1]
        assert {"FP16", "TF32"} <= flags and c.info.extra["math_mode"] == "fp16+fp32/tf32"


def test_int8_qdq_graph_has_float_biases_for_the_parser(fake_gpu, tiny):
    """ORT's default QDQ quantizes biases to int32 behind a DequantizeLinear, which TensorRT's parser rejects."""
    import onnx

    from qtbench.backends.tensorrt import TensorRtBackend

    model, calib, tmp = tiny
    spec = QuantSpec.parse("int8-static-pc-sym-minmax")
    with TensorRtBackend().compile(model, spec, calib, tmp / "int8") as c:
        flags, parsed, _ = fake_gpu.built[-1]
        assert "INT8" in flags and "TF32" not in flags and parsed.endswith("qdq.onnx")
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


def test_pycuda_without_a_gpu_is_unavailable_not_a_crash(fake_gpu, monkeypatch, tiny):
    from qtbench.backends.tensorrt import TensorRtBackend

    monkeypatch.delitem(sys.modules, "pycuda.autoinit")
    monkeypatch.setattr(sys, "meta_path", [_FailingAutoinit(), *sys.meta_path])
    av = TensorRtBackend().availability()
    assert not av.available
    assert "CUDA is not usable" in av.reason and "no CUDA-capable device" in av.reason
    model, _, tmp = tiny
    with pytest.raises(BackendUnavailable, match="no CUDA-capable device"):
        TensorRtBackend().compile(model, QuantSpec("fp32"), None, tmp / "w")


def test_tensorrt_11_is_refused_with_the_pin(monkeypatch, fake_gpu):
    from qtbench.backends.tensorrt import TensorRtBackend

    assert TensorRtBackend().availability().available
    fake_gpu.__version__ = "11.1.0"
    av = TensorRtBackend().availability()
    assert not av.available and "removed the precision builder flags" in av.reason and "<11" in av.reason
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"tensorrt>=10,<11"' in text


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


def test_engines_are_keyed_by_the_gpu_and_built_one_at_a_time(fake_gpu, monkeypatch):
    """The device identity (GPU, compute capability, driver) goes into the artifact key of this non-portable
    backend, and it declares an exclusive device, so the compile phase never builds two engines at once."""
    import pycuda.driver as drv

    from qtbench.backends.tensorrt import TensorRtBackend

    assert TensorRtBackend.exclusive_device and not TensorRtBackend.artifact_portable
    assert TensorRtBackend().device_identity() == ""  # the fake device cannot tell its compute capability
    monkeypatch.setattr(drv.Device, "compute_capability", lambda self: (8, 9), raising=False)
    monkeypatch.setattr(drv, "get_driver_version", lambda: 12040, raising=False)
    assert TensorRtBackend().device_identity() == "Fake GPU;sm_8.9;driver=12040"

"""The vendor patches (:mod:`qtbench.backends.vendor_patches`), on and off.

On: each replacement gives the bytes/arrays of the vendor function it replaces, called on the same inputs, and a
whole build with the patches writes the same artifact as without. Off: on a vendor version outside a patch's
checked range the vendor's own function stays in place, the build still works, and the build's notes (and the
log) name the patch that is off and why.

The equivalence tests run on whatever vendor version is installed (``qtbench[test]`` pins the checked ones):
inside the range a difference fails; outside it the patch is off anyway, and a difference is reported as an
expected failure that says the range must not be widened to that version.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qtbench.backends import vendor_patches as vp
from qtbench.backends.base import ModelInput
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

from models import tiny_data

ORT_PATCHES = [p.name for p in vp.PATCHES if p.package == "onnxruntime"]
NNCF_PATCHES = [p.name for p in vp.PATCHES if p.package == "nncf"]


_OFF_REASON = vp.VendorPatch.off_reason  # the real one: the ``forced`` fixture replaces it


@contextlib.contextmanager
def equivalence(name: str) -> Iterator[None]:
    """Run an equivalence check of patch ``name``: a failure inside the patch's range fails the test; outside
    it (the patch is off there) it is an xfail naming the version, so nobody widens the range to it."""
    patch = vp.BY_NAME[name]
    pytest.importorskip(patch.package, reason=f"{patch.package} is not installed")
    reason = _OFF_REASON(patch)
    try:
        yield
    except (AssertionError, LookupError, AttributeError, TypeError) as exc:
        if reason is None:
            raise
        pytest.xfail(f"{name} differs here, where it is off ({reason}): {type(exc).__name__}: {exc}")


@pytest.fixture
def forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every patch counts as in range (the equivalence tests run the replacement on any installed version)."""
    monkeypatch.delenv(vp.ENV, raising=False)
    monkeypatch.setattr(vp.VendorPatch, "off_reason", lambda self: None)


def _target(name: str, i: int = 0) -> object:
    return vp._Slot(vp.BY_NAME[name].targets[i]).get()


# --- declarations -------------------------------------------------------------------------------------------------


def test_every_patch_names_a_real_upstream_function_and_a_version_range():
    """Each patch's upstream reference is a file of the installed vendor package that defines the function, its
    range parses as a SpecifierSet, its targets exist here, and the names are unique."""
    import importlib
    import re

    from packaging.specifiers import SpecifierSet

    assert len(vp.BY_NAME) == len(vp.PATCHES)
    for p in vp.PATCHES:
        SpecifierSet(p.versions)
        assert p.why and p.targets
        try:
            root = Path(importlib.import_module(p.package).__file__).parent.parent
        except ImportError:
            continue
        path, _, func = p.upstream.partition(": ")
        source = (root / path).read_text()
        fn = func.split()[0].split(".")[-1]
        assert re.search(rf"def {fn}\b|@\w+\.{fn}\.register", source), (p.name, path, fn)
        for target in p.targets:
            assert callable(vp._Slot(target).get()), target


def test_status_lists_every_patch_with_why_it_is_off(monkeypatch: pytest.MonkeyPatch):
    import onnxruntime

    monkeypatch.delenv(vp.ENV, raising=False)
    here = {s.name: s for s in vp.status()}
    assert set(here) == set(vp.BY_NAME)
    for s in here.values():
        assert s.active == (vp.BY_NAME[s.name].off_reason() is None)
    monkeypatch.setattr(onnxruntime, "__version__", "9.99.0")
    for s in vp.status():
        if s.package == "onnxruntime":
            assert not s.active and s.installed == "9.99.0"
            assert s.reason == f"onnxruntime 9.99.0 not in {s.versions}"


# --- off: outside the range, nothing is patched, and it is said -------------------------------------------------


@pytest.mark.parametrize("name", [p.name for p in vp.PATCHES])
def test_outside_its_range_a_patch_is_not_applied_and_the_notes_say_so(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    patch = vp.BY_NAME[name]
    module = pytest.importorskip(patch.package)
    monkeypatch.delenv(vp.ENV, raising=False)
    monkeypatch.setattr(module, "__version__", "9.99.0")
    vp._WARNED.clear()
    before = [vp._Slot(t).get() for t in patch.targets]
    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger=vp.__name__), vp.applied(name, notes=notes) as active:
        assert active == []
        assert [vp._Slot(t).get() for t in patch.targets] == before
    line = f"vendor patch {name} off: {patch.package} 9.99.0 not in {patch.versions}"
    assert notes == [line]
    assert line in caplog.text


def test_the_environment_can_switch_patches_off(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv(vp.ENV, "none")
    before = _target("ort.pack_bytes_to_4bit")
    notes: list[str] = []
    with vp.applied("onnxruntime", notes=notes) as active:
        assert active == [] and _target("ort.pack_bytes_to_4bit") is before
    assert len(notes) == len(ORT_PATCHES) and all(f"off: selected out by {vp.ENV}=none" in n for n in notes)


@pytest.fixture
def tiny_setup(tmp_path: Path, tiny_model: Path):
    facts = model_facts(tiny_model)
    model = ModelInput(tiny_model, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    return model, calib, tmp_path


@pytest.mark.parametrize("spec_id", ["int8-static-pc-wsym-minmax", "int4-static-pt-wsym-minmax"])
def test_an_ort_build_outside_the_range_works_and_names_the_patches_off(
    tiny_setup, spec_id: str, monkeypatch: pytest.MonkeyPatch
):
    """With onnxruntime's version outside the range the build runs ORT's own helpers, writes the same graph as
    with the patches (on an installed version they were checked on) and its notes name every ORT patch off."""
    import onnxruntime

    from qtbench.backends import qdq

    model, calib, tmp = tiny_setup
    spec = QuantSpec.parse(spec_id)
    monkeypatch.delenv(vp.ENV, raising=False)
    in_range = all(vp.BY_NAME[n].off_reason() is None for n in ORT_PATCHES)
    on_notes: list[str] = []
    qdq.build(model, spec, calib, tmp / "on", tmp / "on.onnx", on_notes)
    monkeypatch.setattr(onnxruntime, "__version__", "9.99.0")
    off_notes: list[str] = []
    qdq.build(model, spec, calib, tmp / "off", tmp / "off.onnx", off_notes)
    for name in ORT_PATCHES:
        assert f"vendor patch {name} off: onnxruntime 9.99.0 not in {vp.BY_NAME[name].versions}" in off_notes
    assert any(n.startswith("vendor patch") for n in on_notes) != in_range
    with equivalence(ORT_PATCHES[0]):
        assert (tmp / "on.onnx").read_bytes() == (tmp / "off.onnx").read_bytes()


def test_an_fp16_build_says_nothing_of_the_quantizer_patches(tiny_setup, monkeypatch: pytest.MonkeyPatch):
    """fp16 conversion does not run ORT's quantizer: its notes carry no line about the quantizer's patches."""
    import onnxruntime

    from qtbench.backends import qdq

    model, calib, tmp = tiny_setup
    monkeypatch.setattr(onnxruntime, "__version__", "9.99.0")
    notes: list[str] = []
    qdq.build(model, QuantSpec.parse("fp16"), calib, tmp / "fp16", tmp / "fp16.onnx", notes)
    assert (tmp / "fp16.onnx").is_file() and not any(n.startswith("vendor patch") for n in notes)


def test_an_nncf_build_outside_the_range_works_and_names_the_patch_off(tiny_setup, monkeypatch: pytest.MonkeyPatch):
    """An OpenVINO/NNCF percentile build on an NNCF outside the range quantizes with NNCF's own quantile; the
    row's notes say so."""
    pytest.importorskip("openvino")
    nncf = pytest.importorskip("nncf")
    from qtbench.backends.openvino import OpenVinoBackend

    model, calib, tmp = tiny_setup
    monkeypatch.delenv(vp.ENV, raising=False)
    monkeypatch.setattr(nncf, "__version__", "9.99.0")
    spec = QuantSpec.parse("int8-static-pc-wsym-percentile")
    with OpenVinoBackend({"threads": 1}).compile(model, spec, calib, tmp / "ov" / spec.id) as c:
        x = calib.batch(0, 4)
        assert np.isfinite(c.infer(x)[0]).all()
        line = f"vendor patch nncf.quantile off: nncf 9.99.0 not in {vp.BY_NAME['nncf.quantile'].versions}"
        assert line in c.info.notes


# --- nesting and threads ------------------------------------------------------------------------------------------


def test_nested_and_concurrent_users_share_one_installation(forced):
    """The first in installs, an inner exit keeps the patch, the last out restores the vendor's functions."""
    pytest.importorskip("onnxruntime")
    name = "ort.pack_bytes_to_4bit"
    original = _target(name)
    with vp.applied(name):
        with vp.applied(name):
            assert _target(name) is vp.pack_4bit and _target(name, 1) is vp.pack_4bit
        assert _target(name) is vp.pack_4bit
    assert _target(name) is original and _target(name, 1) is original

    start, errors = threading.Barrier(4), []

    def worker() -> None:
        try:
            start.wait()
            for _ in range(50):
                with vp.applied(name):
                    assert _target(name) is vp.pack_4bit
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and _target(name) is original and not vp._DEPTH.get(name)


def test_a_target_that_moved_leaves_the_patch_off_and_noted(monkeypatch: pytest.MonkeyPatch, forced):
    pytest.importorskip("onnxruntime")
    moved = vp.VendorPatch(
        name="ort.moved",
        package="onnxruntime",
        versions=">=0",
        upstream="onnxruntime/quantization/quant_utils.py: gone",
        targets=("onnxruntime.quantization.quant_utils:pack_bytes_to_4bit", "onnxruntime.quantization:no_such"),
        make=lambda original: vp.pack_4bit,
        why="test",
    )
    from onnxruntime.quantization import quant_utils

    monkeypatch.setattr(vp, "PATCHES", (moved,))
    monkeypatch.setattr(vp, "BY_NAME", {moved.name: moved})
    before = quant_utils.pack_bytes_to_4bit
    notes: list[str] = []
    with vp.applied(notes=notes) as active:
        assert active == []
        assert quant_utils.pack_bytes_to_4bit is before  # the first target was put back
    assert len(notes) == 1 and notes[0].startswith("vendor patch ort.moved off: cannot install")


# --- on: ONNX Runtime ---------------------------------------------------------------------------------------------


def test_pack_4bit_packs_like_ort():
    """The numpy 4-bit packing is ORT's byte loop: empty, even and odd lengths, every byte value."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization.quant_utils import pack_bytes_to_4bit

    rng = np.random.default_rng(0)
    with equivalence("ort.pack_bytes_to_4bit"):
        for n in (0, 1, 2, 7, 256, 1001):
            src = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            assert vp.pack_4bit(src) == pack_bytes_to_4bit(src)
        every = bytes(range(256))
        assert vp.pack_4bit(every) == pack_bytes_to_4bit(every)


def test_per_channel_initializer_is_orts_bytes():
    """ORT's quantize_onnx_initializer and the replacement on the same weights, scales and zero points: per
    channel on axes 0 and 1, INT8/UINT8/INT4/UINT4, zero and tiny channels, odd sizes; the cases the
    replacement hands back (per tensor) give ORT's result too."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, numpy_helper
    from onnxruntime.quantization import quant_utils as qu

    original = qu.quantize_onnx_initializer
    fast = vp.per_channel_initializer(original)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32)
    w[1], w[2] = 0.0, w[2] * 1e-9
    cases = []
    for qtype in (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT4, TensorProto.UINT4):
        qmin, qmax = (int(v) for v in qu.get_qmin_qmax_for_qType(qtype))
        for axis, data in ((0, w), (1, rng.normal(0, 0.2, (7, 9)).astype(np.float32))):
            n = data.shape[axis]
            scale = (np.abs(data).max(axis=tuple(i for i in range(data.ndim) if i != axis)) / qmax).astype(np.float32)
            scale[scale == 0] = 1.0
            zp = np.full(n, 0 if qmin < 0 else (qmin + qmax + 1) // 2, onnx.helper.tensor_dtype_to_np_dtype(qtype))
            cases.append((numpy_helper.from_array(data, f"w{axis}"), qtype, zp, scale, axis))
    whole = numpy_helper.from_array(w, "t")
    cases.append((whole, TensorProto.INT8, np.array(0, np.int8), np.array(0.01, np.float32), None))
    with equivalence("ort.quantize_onnx_initializer"):
        for weight, qtype, zp, scale, axis in cases:
            ours = fast(weight, qtype, zp, scale, axis)
            theirs = original(weight, qtype, zp, scale, axis)
            assert ours.SerializeToString() == theirs.SerializeToString(), (weight.name, qtype, axis)


def test_replace_input_of_all_nodes_is_orts():
    """ORT's ONNXModel.replace_input_of_all_nodes and the replacement rename the same inputs (repeated, absent,
    a prefix of another name) of a copy of the same graph."""
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    from onnxruntime.quantization.onnx_model import ONNXModel

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["w", "w"], ["a"]),
            helper.make_node("Mul", ["a", "w_1"], ["b"]),
            helper.make_node("Sub", ["w_1", "b"], ["c"]),
            helper.make_node("Concat", ["x", "w", "a", "w"], ["y"], axis=0),
        ],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("w", "w_1", "x")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    proto = helper.make_model(graph)
    theirs, ours = ONNXModel(copy.deepcopy(proto)), ONNXModel(copy.deepcopy(proto))
    with equivalence("ort.replace_input_of_all_nodes"):
        for old, new in (("w", "w_dq"), ("w_1", "w_1_dq"), ("absent", "z"), ("a", "a2")):
            ONNXModel.replace_input_of_all_nodes(theirs, old, new)
            vp.replace_input_of_all_nodes(ours, old, new)
        assert ours.model.SerializeToString() == theirs.model.SerializeToString()
        assert list(ours.model.graph.node[3].input) == ["x", "w_dq", "a2", "w_dq"]


def _mixed_model(path: Path) -> Path:
    """Conv (channel axis 0), MatMul (axis 1) and Gemm with transB (axis 0) with seeded weights, some channels of
    them all zero or tiny (the degenerate scales), an odd number of INT4 weights to pack."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    conv_w = rng.normal(0, 0.3, (5, 3, 3, 3)).astype(np.float32)
    conv_w[1] = 0.0
    conv_w[2] *= 1e-9
    mm_w = rng.normal(0, 0.2, (5 * 6 * 6, 7)).astype(np.float32)
    mm_w[:, 3] = 0.0
    gemm_w = rng.normal(0, 0.5, (3, 7)).astype(np.float32)  # 21 weights: odd
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "cw"], ["c"], pads=[0, 0, 0, 0]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("MatMul", ["f", "mw"], ["m"]),
            helper.make_node("Gemm", ["m", "gw"], ["logits"], transB=1),
        ],
        "mixed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(conv_w, "cw"),
            numpy_helper.from_array(mm_w, "mw"),
            numpy_helper.from_array(gemm_w, "gw"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize(
    ("per_channel", "weight_type", "quant_format"),
    [
        (True, "QInt8", "QDQ"),
        (True, "QUInt8", "QDQ"),
        (True, "QInt4", "QDQ"),
        (True, "QUInt4", "QDQ"),
        (False, "QInt8", "QDQ"),
        (False, "QInt4", "QDQ"),
        (True, "QInt8", "QOperator"),
    ],
)
def test_quantize_static_writes_the_same_graph_bytes_with_the_ort_patches(
    tmp_path: Path, per_channel: bool, weight_type: str, quant_format: str, forced
):
    """quantize_static with and without every ORT patch writes byte-identical graphs (per-channel and
    per-tensor, INT8/UINT8/INT4/UINT4 weights, zero and tiny channels, QDQ and QOperator), and every patched
    function is ORT's own again after."""
    pytest.importorskip("onnxruntime")
    import onnxruntime.quantization as q

    model = _mixed_model(tmp_path / "mixed.onnx")
    before = [vp._Slot(t).get() for n in ORT_PATCHES for t in vp.BY_NAME[n].targets]

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"input": np.random.default_rng(i).normal(size=(2, 3, 8, 8)).astype(np.float32)} for i in range(4)]
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    outs = []
    for patched in (False, True):
        out = tmp_path / f"q{patched}.onnx"
        with vp.applied("onnxruntime") if patched else contextlib.nullcontext([]) as active:
            assert len(active) == (len(ORT_PATCHES) if patched else 0)
            q.quantize_static(
                str(model),
                str(out),
                Reader(),
                quant_format=getattr(q.QuantFormat, quant_format),
                per_channel=per_channel,
                activation_type=q.QuantType.QUInt8,
                weight_type=getattr(q.QuantType, weight_type),
                extra_options={"WeightSymmetric": weight_type in ("QInt8", "QInt4")},
            )
        outs.append(out.read_bytes())
    with equivalence(ORT_PATCHES[0]):
        assert outs[0] == outs[1]
    assert b"DequantizeLinear" in outs[0] or b"QLinear" in outs[0]
    assert [vp._Slot(t).get() for n in ORT_PATCHES for t in vp.BY_NAME[n].targets] == before


# --- on: NNCF -----------------------------------------------------------------------------------------------------


def test_tail_quantile_is_numpys_quantile_bit_for_bit():
    """The fast path (a threshold from a strided subsample, then the tail only) and its fallbacks give
    ``np.quantile``'s float64 result exactly: ties (ReLU zeros, integers), heavy tails, sorted data (a structured
    subsample), constants, NaN/inf, and sizes on both sides of the fast-path minimum."""
    rng = np.random.default_rng(0)
    makers = [
        lambda n: rng.standard_normal(n).astype(np.float32),
        lambda n: np.maximum(rng.standard_normal(n), 0).astype(np.float32),
        lambda n: rng.integers(-3, 4, n).astype(np.float32),
        lambda n: rng.standard_cauchy(n).astype(np.float32),
        lambda n: np.sort(rng.standard_normal(n)).astype(np.float32),
        lambda n: np.concatenate([np.zeros(n - 5), 100 * rng.standard_normal(5)]).astype(np.float32),
        lambda n: np.full(n, 1.5, np.float32),
        lambda n: rng.standard_normal(n),
    ]
    for make in makers:
        for n in (1000, 16384, 20001, 100003):
            x = make(n)
            for q in (1e-4, 1 - 1e-4, 0.01, 0.99, 0.0, 1.0, 0.5):
                assert vp.tail_quantile(x.reshape(1, -1), q) == float(np.quantile(x.astype(np.float64), q)), (n, q)
    x = rng.standard_normal(50000).astype(np.float32)
    x[7] = np.nan
    assert np.isnan(vp.tail_quantile(x, 1e-4))
    x[7] = np.inf
    assert vp.tail_quantile(x, 1 - 1e-4) == float(np.quantile(x.astype(np.float64), 1 - 1e-4))


def test_nncf_quantile_returns_nncfs_arrays():
    """NNCF's numpy quantile and the replacement on the same arrays and arguments: whole-tensor reductions
    (axis None or every axis, keepdims or not), partial axes, a scalar q and integer arrays (handed back)."""
    pytest.importorskip("nncf")
    original = _target("nncf.quantile")
    fast = vp.nncf_quantile(original)
    rng = np.random.default_rng(5)
    a = np.maximum(rng.standard_normal((1, 8, 48, 48)), 0).astype(np.float32)
    calls = [
        (a, [1e-4, 1 - 1e-4], None, False),
        (a, (1e-4, 1 - 1e-4), (0, 1, 2, 3), True),
        (a, [0.5], (0, 1, 2, 3), False),
        (a, [1e-4, 1 - 1e-4], (2, 3), False),
        (a, 0.99, None, False),
        (rng.integers(-5, 5, (40000,)), [0.01, 0.99], None, False),
        (rng.standard_normal(100), [0.25, 0.75], 0, True),
    ]
    with equivalence("nncf.quantile"):
        for arr, q, axis, keep in calls:
            ours, theirs = fast(arr, q, axis, keep), original(arr, q, axis, keep)
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, (q, axis, keep)
            np.testing.assert_array_equal(ours, theirs)


def test_nncf_quantizes_to_the_same_bytes_with_the_quantile_patch(tmp_path: Path, forced):
    """nncf.quantize with MEAN_QUANTILE activation ranges (a percentile spec) writes the same IR with and without
    the patch, the patch really answers NNCF's per-sample calls (activations above its minimum size), and
    NNCF's own function is back in place afterwards."""
    ov = pytest.importorskip("openvino")
    nncf = pytest.importorskip("nncf")
    from openvino import opset13 as ops

    from qtbench.backends.openvino import OpenVinoBackend

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 3, 48, 48], np.float32, name="input")
    w1 = ops.constant(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32))
    w2 = ops.constant(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32))
    c1 = ops.relu(ops.convolution(x, w1, [1, 1], [1, 1], [1, 1], [1, 1]))
    c2 = ops.convolution(c1, w2, [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([c2], [x], "quantile_probe")
    data = nncf.Dataset([{"input": rng.standard_normal((1, 3, 48, 48)).astype(np.float32)} for _ in range(6)])
    params = OpenVinoBackend()._ptq_params(QuantSpec.parse("int8-static-pc-wsym-percentile"), [])
    original = _target("nncf.quantile")
    calls = []
    real = vp.tail_quantile

    def counted(a, q):
        calls.append(a.size)
        return real(a, q)

    def ir(quantized, name: str) -> bytes:
        ov.save_model(quantized, str(tmp_path / f"{name}.xml"), compress_to_fp16=False)
        return (tmp_path / f"{name}.bin").read_bytes()

    plain = ir(nncf.quantize(model.clone(), data, subset_size=6, **params), "plain")
    vp.tail_quantile = counted
    try:
        with vp.applied("nncf.quantile"):
            fast = ir(nncf.quantize(model.clone(), data, subset_size=6, **params), "fast")
    finally:
        vp.tail_quantile = real
    with equivalence("nncf.quantile"):
        assert fast == plain
    assert calls and max(calls) == 8 * 48 * 48  # the conv activations went through the fast path
    assert _target("nncf.quantile") is original


def test_the_dispatch_registry_is_restored_with_its_cached_subclasses(forced):
    """NNCF's dispatcher caches a subclass's lookup (np.memmap → the ndarray entry): one made while the patch
    is in place points back at NNCF's function afterwards."""
    pytest.importorskip("nncf")
    from nncf.tensor import Tensor
    from nncf.tensor.functions import numeric

    registry = numeric.quantile.registry
    original = registry[np.ndarray]

    class Sub(np.ndarray):
        pass

    with vp.applied("nncf.quantile"):
        patched = registry[np.ndarray]
        assert patched is not original
        numeric.quantile(Tensor(np.arange(10.0).view(Sub)), [0.5])
        assert registry[Sub] is patched
    assert registry[np.ndarray] is original and registry[Sub] is original
    registry.pop(Sub, None)

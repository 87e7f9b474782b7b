"""Vendor NPUs: profiles, the simnpu grid rewrite and coverage fallback, the stubs, qnn, vela and rknn adapters."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from qtbench.backends.base import ModelInput
from qtbench.backends.simnpu import activation_grid, estimate_latency, fold_batchnorm, rewrite, weight_grid
from qtbench.devices.profiles import get_profile, load_profiles, parse_profile
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec
from tests.models import tiny_cnn, tiny_data, tiny_sweep

INT8 = QuantSpec.parse("int8-static-pc-wsym-minmax")
HAS_QNN = importlib.util.find_spec("onnxruntime_qnn") is not None
HAS_VELA = importlib.util.find_spec("ethosu") is not None
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("npu")
    path = tiny_cnn(d / "tiny.onnx")
    facts = model_facts(path)
    calib = load_dataset(tiny_data(d / "calib.npz", 32, seed=2, labels=False), facts.input_names, None)
    ev = load_dataset(tiny_data(d / "eval.npz", 48, seed=3), facts.input_names, "labels")
    model = ModelInput(path, "sha-tiny", facts.input_names, facts.output_names, facts.dynamic_batch)
    return model, calib, ev, d


def _base_profile(**over):
    d = {
        "precisions": {"int8": [8, 8]},
        "weights": {"symmetric": "required", "granularity": ["per-channel", "per-tensor"], "power_of_two": False},
        "activations": {"symmetric": "any", "granularity": "per-tensor", "power_of_two": False},
        "calibration": ["minmax"],
        "ops": ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"],
        "cost": {
            "utilization": 0.5,
            "host_gflops": 1,
            "link_gbps": 1,
            "invoke_overhead_ms": 0,
            "partition_switch_ms": 0.1,
        },
        "board": "hailo8-m2",
    }
    d.update(over)
    return parse_profile("t", d, "test")


# -- profiles ------------------------------------------------------------------------------------------------
def test_shipped_profiles_cover_the_vendors_and_cite_sources():
    profiles = load_profiles()
    for pid in ("hailo8", "nxp-imx8mp", "edgetpu", "qualcomm-htp", "rockchip", "ethos-u", "tensorrt"):
        assert pid in profiles
        assert profiles[pid].sources, f"{pid} cites no source"
        assert profiles[pid].uncertain, f"{pid} marks nothing uncertain (its cost model at least is)"
    assert profiles["vitis-dpu"].weights.power_of_two and profiles["vitis-dpu"].activations.power_of_two
    assert profiles["edgetpu"].check_spec(QuantSpec.parse("fp16"))  # int8 only
    assert profiles["tensorrt"].check_spec(INT8) is not None  # needs symmetric activations
    assert profiles["tensorrt"].check_spec(QuantSpec.parse("int8-static-pt-sym-minmax")) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounding": "stochastic"}, "rounding"),
        ({"weights": {"symmetric": "maybe", "granularity": "per-tensor"}}, "weights.symmetric"),
        ({"precisions": {"int8": [8]}}, "precisions.int8"),
        ({"colour": "red"}, "colour"),
        (
            {
                "cost": {
                    "utilization": 2,
                    "host_gflops": 1,
                    "link_gbps": 1,
                    "invoke_overhead_ms": 0,
                    "partition_switch_ms": 0,
                }
            },
            "utilization",
        ),
    ],
)
def test_bad_profile_fields_fail_with_their_key(change, message):
    with pytest.raises(ConfigError, match=message):
        _base_profile(**change)


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ConfigError, match=r"known: .*hailo8"):
        get_profile("nope")


# -- the grid --------------------------------------------------------------------------------------------------
def test_weight_grid_per_channel_symmetric_and_power_of_two():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * np.array([1, 0.1, 5, 0.01]).reshape(4, 1, 1, 1)
    g = weight_grid(w, 8, True, 0, pow2=False)
    assert g.scale.shape == (4,) and g.qmin == -127 and g.qmax == 127
    np.testing.assert_allclose(g.scale, np.abs(w).reshape(4, -1).max(1) / 127, rtol=1e-6)
    q = g.fake(w, "half_even", 0) / g.scale.reshape(4, 1, 1, 1)
    np.testing.assert_allclose(q, np.round(q), atol=1e-4)
    p2 = weight_grid(w, 8, True, 0, pow2=True)
    assert np.all(np.log2(p2.scale) == np.round(np.log2(p2.scale)))
    assert np.all(p2.scale >= g.scale)  # never shrinks the range
    four = weight_grid(w, 4, True, None, pow2=False)
    assert four.qmax == 7 and len(np.unique(four.fake(w, "half_even"))) <= 15


def test_rounding_modes_differ_exactly_on_halves():
    g = activation_grid(-1.0, 1.0, 8, True, False)
    s = float(g.scale)
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5]) * s
    even = g.fake(x, "half_even") / s
    away = g.fake(x, "half_away") / s
    floor = g.fake(x, "floor") / s
    np.testing.assert_allclose(even, [0, 2, 2, 0, -2], atol=1e-9)
    np.testing.assert_allclose(away, [1, 2, 3, -1, -3], atol=1e-9)
    np.testing.assert_allclose(floor, [0, 1, 2, -1, -3], atol=1e-9)


def _ranges_from(model_path: Path, calib) -> dict:
    import onnxruntime as ort

    proto = onnx.load(str(model_path))
    names = [o for n in proto.graph.node for o in n.output] + [i.name for i in proto.graph.input]
    for n in names:
        if n not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, calib.inputs)
    names = [o.name for o in sess.get_outputs()]
    return {n: (float(v.min()), float(v.max())) for n, v in zip(names, outs, strict=True)}


@pytest.mark.parametrize("profile_id", ["qualcomm-htp", "ethos-u", "vitis-dpu"])
def test_rewrite_lands_activations_and_weights_on_the_declared_grid(tiny, profile_id):
    """QDQ path (8-bit half-even), explicit path (half-away), power-of-two scales: every tensor on its grid."""
    import onnxruntime as ort
    from onnx import numpy_helper

    model, calib, ev, _ = tiny
    profile = get_profile(profile_id)
    spec = INT8 if profile_id != "vitis-dpu" else QuantSpec.parse("int8-static-pt-sym-minmax")
    proto = onnx.load(str(model.path))
    rep = rewrite(proto, profile, spec, _ranges_from(model.path, calib))
    # input, both Relu outputs (Conv→Relu fused: no requantization between), pool, flatten, logits
    assert len(rep.activation_grids) == 6 and len(rep.weight_grids) == 3 and not rep.cpu_nodes
    assert not any("Conv" in t for t in rep.activation_grids)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for wg in rep.weight_grids.values():
        w = inits[wg["tensor"]].astype(np.float64)
        s = np.asarray(wg["scale"])
        if wg["axis"] is not None:
            s = s.reshape([-1 if i == wg["axis"] else 1 for i in range(w.ndim)])
        q = w / s
        np.testing.assert_allclose(q, np.round(q), atol=1e-3)
        assert q.min() >= wg["qmin"] - 1e-3 and q.max() <= wg["qmax"] + 1e-3
    for t in rep.activation_grids.values():
        if t["tensor"] not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(t["tensor"]))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, ev.inputs), strict=True))
    for t in rep.activation_grids.values():
        if profile.activations.power_of_two:
            assert np.log2(t["scale"]) == np.round(np.log2(t["scale"]))
        q = values[t["tensor"]] / t["scale"] + t["zero_point"]
        np.testing.assert_allclose(q, np.round(q), atol=2e-3)
        assert q.min() >= t["qmin"] - 1e-3 and q.max() <= t["qmax"] + 1e-3


def test_uncovered_ops_run_on_the_host_in_float(tiny):
    model, calib, _, _ = tiny
    profile = _base_profile(ops=["Conv", "Relu", "Flatten", "Gemm"])  # no GlobalAveragePool
    proto = onnx.load(str(model.path))
    rep = rewrite(proto, profile, INT8, _ranges_from(model.path, calib))
    assert "GlobalAveragePool" in rep.fallback_ops and "operator list" in rep.fallback_ops["GlobalAveragePool"]
    assert len(rep.cpu_nodes) == 1 and rep.partitions == 2  # npu → host → npu
    pool = next(n for n in proto.graph.node if n.op_type == "GlobalAveragePool")
    consumers = [n.op_type for n in proto.graph.node if pool.output[0] in n.input]
    assert consumers == ["QuantizeLinear"]  # float host result requantized where it re-enters the NPU
    fixed = onnx.load(str(model.path))
    ms_fallback, cost = estimate_latency(fixed, profile, 8, 8)
    full = _base_profile()
    ms_full, cost_full = estimate_latency(fixed, full, 8, 8)
    assert cost["host_ms"] > 0 and cost_full["host_ms"] == 0
    assert ms_fallback > ms_full  # host fallback + transfers + two partition switches cost time


def test_batchnorm_is_folded_exactly():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)]
    inits = [numpy_helper.from_array(w, "w")] + [
        numpy_helper.from_array(a.astype(np.float32), n) for a, n in zip(bn, ["g", "b", "m", "v"], strict=True)
    ]
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 5, 5])],
        inits,
    )
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(1, 2, 5, 5)).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert fold_batchnorm(proto) == 1 and [n.op_type for n in proto.graph.node] == ["Conv"]
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)


# -- simnpu and stubs through the adapter contract -------------------------------------------------------------
def test_simnpu_compile_labels_rows_and_estimates(tiny):
    from qtbench import backends

    model, calib, ev, d = tiny
    b = backends.create("simnpu", {"profile": "hailo8"})
    with b.compile(model, INT8, calib, d / "sim-hailo") as c:
        out = c.infer(ev.batch(0, 8))[0]
        info = c.info
    assert out.shape == (8, 5)
    assert info.numbers == "simulated" and info.coverage == {"npu": 7}
    assert info.est_latency_ms > 0 and "roofline" in info.est_source and "uncertain" in info.est_source
    assert b.supports(QuantSpec.parse("int8-dynamic-pc-wsym")) is not None


@pytest.mark.parametrize("slug", ["hailo", "nxp", "edgetpu"])
def test_vendor_stub_falls_back_to_simnpu_and_says_why(tiny, slug):
    from qtbench import backends

    model, calib, _, d = tiny
    b = backends.create(slug)
    av = b.availability()
    assert av.available and av.devices == ("simulated",)  # no vendor runtime on this host
    with b.compile(model, INT8, calib, d / f"stub-{slug}") as c:
        info = c.info
    assert info.numbers == "simulated"
    assert "runtime not used" in info.notes[0] and b.profile.name in info.notes[0]
    forced = backends.create(slug, {"force_simulation": True})
    assert forced.real_runtime()[0] is False or forced.availability().devices == ("simulated",)


def test_simulated_rows_carry_no_host_energy(tmp_path):
    from qtbench.harness.run.sweep import run_sweep

    cfg = tiny_sweep(tmp_path, backends=[{"name": "simnpu", "options": {"profile": "rockchip"}}])
    cfg["specs"] = ["int8-static-pc-wsym-minmax"]
    df = run_sweep(cfg)
    row = df.iloc[0]
    assert row["status"] == "ok" and row["numbers"] == "simulated"
    assert np.isnan(row["energy_mj_per_inf"]) and row["energy_source"].startswith("unavailable: simulated")
    assert row["est_latency_ms"] > 0 and row["est_fps"] == pytest.approx(1000 / row["est_latency_ms"])


# -- qnn -------------------------------------------------------------------------------------------------------
PROFILE_CSV = """\
Msg Timestamp,Message,Time,Unit of Measurement,Timing Source,Event Level,Event Identifier,ONNX Source Ops
0,BACKEND,1000,CYCLES,BACKEND,ROOT,Accelerator (execute) time (cycles),
0,NODE,600,CYCLES,BACKEND,SUB-EVENT,/conv/Conv_token_1:OpId_25 (cycles),a;b
0,NODE,400,CYCLES,BACKEND,SUB-EVENT,/fc/Gemm:OpId_9 (cycles),c
0,BACKEND,900,CYCLES,BACKEND,ROOT,Accelerator (execute) time (cycles),
0,NODE,500,CYCLES,BACKEND,SUB-EVENT,/conv/Conv_token_1:OpId_25 (cycles),a;b
0,EXECUTE,17295,US,BACKEND,ROOT,QNN (execute) time,
"""


def test_qnn_profile_parsing():
    from qtbench.backends.qnn import parse_profile

    cycles, per_op = parse_profile(PROFILE_CSV)
    assert cycles == [1000.0, 900.0]
    assert per_op == {"/conv/Conv_token_1": 550.0, "/fc/Gemm": 400.0}


def test_qnn_unavailable_without_the_wheel(monkeypatch):
    from qtbench import backends

    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)
    av = backends.create("qnn").availability()
    assert not av.available and "qtbench[qnn]" in av.reason


@pytest.mark.skipif(not HAS_QNN, reason="onnxruntime-qnn not installed (pip install 'qtbench[qnn]')")
def test_qnn_htp_simulator_runs_int8_with_cycle_estimate(tiny):
    from qtbench import backends

    model, calib, ev, d = tiny
    b = backends.create("qnn", {"profile_runs": 3})
    assert b.supports(QuantSpec.parse("fp32")) is not None  # HTP has no fp32
    with b.compile(model, INT8, calib, d / "qnn") as c:
        out = c.infer(ev.batch(0, 6))[0]  # fixed batch 1 inside; the adapter loops
        info = c.info
    assert out.shape == (6, 5)
    assert info.numbers == "simulated" and info.coverage.get("npu", 0) > 0
    assert info.extra["htp_cycles_p50"] > 0
    assert info.est_latency_ms == pytest.approx(info.extra["htp_cycles_p50"] / 1e6)  # 1 GHz assumed
    assert info.extra["artifact"].startswith("QNN context") and info.artifact_path.is_file()
    with b.compile(model, INT8, calib, d / "qnn") as again:  # cached: QDQ model and context reused
        assert again.info.cache_hit and np.allclose(again.infer(ev.batch(0, 6))[0], out)
    ref = load_ref(model.path, ev)
    assert np.mean(out.argmax(1) == ref[:6].argmax(1)) >= 0.5


@pytest.mark.skipif(not HAS_QNN, reason="onnxruntime-qnn not installed (pip install 'qtbench[qnn]')")
def test_qnn_leftovers_of_a_killed_compile_are_cleared_and_never_taken_for_a_context(tiny, tmp_path):
    """A compile SIGKILLed while it wrote its trace folder and its context binary leaves both behind: the next
    compile of the entry (under its compile lock) removes them, and writes the context whole before using it."""
    from qtbench import backends

    model, calib, ev, _d = tiny
    work = tmp_path / "qnn"
    b = backends.create("qnn")
    with b.compile(model, INT8, calib, work) as c:
        ctx = Path(c.info.artifact_path)
    assert ctx.name.startswith("model_ctx_")
    ctx.unlink()  # as if the kill came before the context was renamed into place
    (work / "trace-123").mkdir()
    (work / "trace-123" / "ops.json").write_text("{")
    half = work / f".tmp-999-{ctx.name}"
    half.write_bytes(b"half a context")
    with b.compile(model, INT8, calib, work) as again:
        assert Path(again.info.artifact_path) == ctx and ctx.is_file() and ctx.stat().st_size > 1000
        again.infer(ev.batch(0, 2))
    assert not (work / "trace-123").exists() and not half.exists()
    assert not list(work.glob(".tmp-*")) and not list(work.glob("trace-*"))


def load_ref(path, ev):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, ev.inputs)[0]


# -- vela ------------------------------------------------------------------------------------------------------
VELA_OUT = """Network summary for tiny
CPU operators = 1 (12.5%)
NPU operators = 7 (87.5%)

Warning (supported operators) operator: MEAN, ofm: 'x'
Reason: Operation has tensor with unsupported DataType Float32 (y)
Feature-map dataTypes must be one of {"INT8"}
"""
VELA_CSV = (
    "experiment,network,accelerator_configuration,system_config,memory_mode,core_clock,inferences_per_second,"
    "inference_time,sram_memory_used,off_chip_flash_memory_used,dram_memory_used,nn_macs,cycles_npu,cycles_total\n"
    "default,tiny,Ethos_U55_256,Sys,Shared_Sram,500000000.0,5000.0,0.0002,11.9,78.7,0.0,2553024,34704,100000\n"
)


def test_vela_output_parsing():
    from qtbench.backends.vela import parse_vela

    f = parse_vela(VELA_OUT, VELA_CSV)
    assert (f["cpu_ops"], f["npu_ops"]) == (1, 7)
    assert f["inference_time_s"] == 0.0002 and f["cycles_total"] == 100000 and f["core_clock_hz"] == 5e8
    assert f["fallback"] == {"MEAN": "Operation has tensor with unsupported DataType Float32 (y)"}


@pytest.mark.skipif(not HAS_VELA, reason="ethos-u-vela not installed (pip install 'qtbench[vela]')")
def test_vela_estimates_the_tiny_int8_model(tmp_path):
    import shutil

    from qtbench import backends

    shutil.copy(FIX / "tiny.onnx", tmp_path / "tiny.onnx")
    shutil.copy(FIX / "tiny.full_integer_quant.tflite", tmp_path / "tiny.full_integer_quant.tflite")
    facts = model_facts(tmp_path / "tiny.onnx")
    model = ModelInput(tmp_path / "tiny.onnx", "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(FIX / "tiny_calib.npz", facts.input_names, None)
    b = backends.create("vela")
    assert b.supports(QuantSpec.parse("fp32")) is not None
    with b.compile(model, INT8, calib, tmp_path / "w") as c:
        out = c.infer(calib.batch(0, 2))[0]
        info = c.info
    assert out.shape[0] == 2
    assert info.numbers == "estimated" and info.est_latency_ms > 0 and "cycles" in info.est_source
    assert info.coverage.get("npu", 0) > 0


# -- rknn ------------------------------------------------------------------------------------------------------
RKNN_LOG = """\
D RKNN: [07:56:40.151] ID OpType DataType Target InputShape OutputShape Cycles(DDR/NPU/Total) RW(KB) FullName
D RKNN: [07:56:40.151] 0 InputOperator INT8 NPU \\ (1,1,14,14) 0/0/0 0 InputOperator:input
D RKNN: [07:56:40.151] 1 ConvRelu INT8 NPU (1,1,14,14),(16,1,3,3) (1,16,14,14) 250/1872/1872 2 Conv:/stem/Conv
D RKNN: [07:56:40.151] 12 Reshape INT8 CPU (1,10,1,1),(2) (1,10) 0/0/0 0 Reshape:logits_mm_tp_rs
I rknn building done.
"""


def test_rknn_build_table_parsing():
    from qtbench.backends.rknn import parse_build_table

    rows = parse_build_table(RKNN_LOG)
    assert [(r["op"], r["target"], r["cycles_total"]) for r in rows] == [
        ("InputOperator", "NPU", 0),
        ("ConvRelu", "NPU", 1872),
        ("Reshape", "CPU", 0),
    ]


def test_rknn_without_worker_env_is_unavailable_with_the_fix(tmp_path):
    from qtbench import backends

    av = backends.create("rknn", {"python": str(tmp_path / "nope" / "bin" / "python")}).availability()
    assert not av.available and "qtbench env create rknn" in av.reason


def test_rknn_board_mode_needs_toolkit_lite2(tmp_path):
    from qtbench import backends

    av = backends.create("rknn", {"rknn_model": str(tmp_path / "m.rknn")}).availability()
    assert not av.available and "rknn-toolkit-lite2" in av.reason


def test_rknn_worker_crash_is_a_clear_error(tmp_path):
    from qtbench.backends.rknn import RknnWorker

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'Segmentation fault (simulated crash)'\nexit 139\n")
    fake.chmod(0o755)
    worker = RknnWorker(fake, tmp_path / "worker.log")
    with pytest.raises(RuntimeError, match=r"worker died \(exit .*Segmentation fault"):
        worker.call(cmd="hello")
    worker.close()


def test_rknn_lowers_newer_opsets_exactly(tiny, tmp_path):
    """torch's dynamo exporter writes opset 18–20; rknn-toolkit2 refuses > 19, so the adapter lowers it first."""
    import onnxruntime as ort
    from onnx import version_converter

    from qtbench.backends.rknn import MAX_OPSET, _lower_opset

    model, _, ev, _ = tiny
    new = tmp_path / "opset20.onnx"
    onnx.save(version_converter.convert_version(onnx.load(str(model.path)), 20), str(new))
    same, notes = _lower_opset(model.path, tmp_path)
    assert same == model.path and notes == []  # an old-enough model is passed through untouched
    lowered, notes = _lower_opset(new, tmp_path)
    opsets = {o.domain: o.version for o in onnx.load(str(lowered)).opset_import}
    assert opsets[""] == MAX_OPSET and "opset 20 lowered to 19" in notes[0]
    x = {model.input_names[0]: ev.batch(0, 4)[model.input_names[0]]}
    a, b = (ort.InferenceSession(str(p)).run(None, x)[0] for p in (new, lowered))
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not os.environ.get("QTBENCH_RKNN_PYTHON"), reason="set QTBENCH_RKNN_PYTHON to an rknn env")
def test_rknn_simulator_builds_and_runs(tiny):
    from qtbench import backends

    model, calib, ev, d = tiny
    b = backends.create("rknn")
    assert b.availability().available
    with b.compile(model, INT8, calib, d / "rknn") as c:
        out = c.infer(ev.batch(0, 4))[0]
        info = c.info
    assert out.shape == (4, 5) and info.numbers == "simulated"
    assert info.coverage.get("npu", 0) > 0 and info.est_latency_ms > 0 and "cycles" in info.est_source
    assert info.artifact_path.name == "model.rknn" and info.artifact_bytes > 1000  # the deployable export


def test_narrow_accumulator_saturates(tiny):
    import onnxruntime as ort

    model, calib, ev, _ = tiny
    ranges = _ranges_from(model.path, calib)
    outs = {}
    for bits in (32, 10):
        proto = onnx.load(str(model.path))
        rewrite(proto, _base_profile(accumulator={"bits": bits, "saturate": True}), INT8, ranges)
        outs[bits] = (
            ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, ev.inputs)[0],
            sum(n.op_type == "Min" for n in proto.graph.node),
        )
    assert outs[32][1] == 0 and outs[10][1] == 3  # two Conv + one Gemm get a saturating clip
    assert not np.allclose(outs[32][0], outs[10][0])


def test_simgap_of_a_profile_against_itself_is_zero(tmp_path):
    import json

    import yaml

    from qtbench.harness.cli import main

    cfg = tiny_sweep(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "gap.json"
    rc = main(
        [
            "simgap",
            str(tmp_path / "s.yaml"),
            "--real",
            "simnpu",
            "--real-option",
            "profile=rockchip",
            "--profile",
            "rockchip",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    (row,) = json.loads(out.read_text())
    assert row["agreement"] == 1.0 and row["kl_real_sim"] == pytest.approx(0, abs=1e-12) and row["max_abs"] == 0
    assert row["samples"] == 64


def test_report_places_simulated_rows_at_the_targets_estimated_fps():
    import pandas as pd

    from qtbench.harness.analysis.report import throughput_frame
    from qtbench.harness.core.records import to_frame
    from tests.models import make_record

    rows = to_frame(
        [
            make_record(record_id="a", backend="ort", numbers="measured", fps=900.0),
            make_record(record_id="b", backend="qnn", numbers="simulated", fps=150.0, est_fps=1200.0),
            make_record(record_id="c", backend="rknn", numbers="simulated", fps=300.0),  # no estimate
        ]
    )
    out, dropped = throughput_frame(rows)
    assert dropped == 1 and list(out["record_id"]) == ["a", "b"]
    assert list(out["fps"]) == [900.0, 1200.0]  # never the simulator's 150 FPS
    assert list(out["_est"]) == [False, True] and out["device"].iloc[1] == "target: qnn"
    assert isinstance(out, pd.DataFrame)


def test_vela_unavailable_without_the_package(monkeypatch):
    from qtbench import backends

    monkeypatch.setitem(sys.modules, "ethosu", None)
    monkeypatch.setitem(sys.modules, "ethosu.vela", None)
    av = backends.create("vela").availability()
    assert not av.available and "qtbench[vela]" in av.reason


def test_nxp_stub_with_a_broken_delegate_falls_back_and_says_so(tiny, tmp_path):
    from qtbench import backends

    model, calib, _, _ = tiny
    bad = tmp_path / "libvx_delegate.so"
    bad.write_bytes(b"not an ELF file")
    b = backends.create("nxp", {"delegate": str(bad)})
    usable, why = b.real_runtime()
    assert not usable and "failed to load" in why
    with b.compile(model, INT8, calib, tmp_path / "w") as c:
        assert c.info.numbers == "simulated" and "failed to load" in c.info.notes[0]


def test_hailo_probe_without_a_device(monkeypatch):
    import types

    from qtbench import backends

    fake = types.ModuleType("hailo_platform")
    fake.Device = types.SimpleNamespace(scan=lambda: [])
    fake.__spec__ = importlib.machinery.ModuleSpec("hailo_platform", None)
    monkeypatch.setitem(sys.modules, "hailo_platform", fake)
    usable, why = backends.create("hailo").real_runtime()
    assert not usable and why == "HailoRT found but no Hailo device attached"
    fake.Device = types.SimpleNamespace(scan=lambda: ["0000:01:00.0"])
    usable, why = backends.create("hailo").real_runtime()
    assert not usable and "no compiled .hef" in why  # a device alone is not enough: the model must be compiled


def test_simgap_option_values_read_like_yaml():
    from qtbench.harness.cli.common import parse_option

    assert parse_option("profile=nxp-imx8mp") == ("profile", "nxp-imx8mp")  # a word starting with n is text
    assert parse_option("clock_ghz=1.5") == ("clock_ghz", 1.5)
    assert parse_option("cpu_fallback=false") == ("cpu_fallback", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_option("clock_ghz")

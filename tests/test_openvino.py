"""The openvino adapter against the real runtime (skipped with the reason when openvino is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backends.base import ModelInput
from harness.cell import model_facts
from harness.data import load_dataset
from harness.spec import QuantSpec

from models import tiny_data

ov = pytest.importorskip("openvino", reason="needs OpenVINO: pip install 'qtbench[openvino]'")
from backends.openvino import OpenVinoBackend  # noqa: E402


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path):
    facts = model_facts(tiny_model)
    model = ModelInput(tiny_model, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    x = load_dataset(tiny_data(tmp_path / "e.npz", 16, seed=3), ["input"]).batch(0, 16)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(None, x)[0]
    return model, calib, x, ref, tmp_path


def _run(backend, setup, spec_id):
    model, calib, x, _, tmp = setup
    spec = QuantSpec.parse(spec_id)
    with backend.compile(model, spec, calib, tmp / backend.options["quantizer"] / spec.id) as c:
        return c.infer(x)[0], c.info


def test_fp32_is_pinned_to_f32_and_matches_onnxruntime(setup):
    out, info = _run(OpenVinoBackend(), setup, "fp32")
    assert info.extra["inference_precision"] == "f32"
    np.testing.assert_allclose(out, setup[3], atol=1e-4)


def test_bf16_and_int8_paths_run_close_to_fp32(setup):
    ref = setup[3]
    b = OpenVinoBackend()
    out16, _ = _run(b, setup, "bf16")
    assert 0 < np.abs(out16 - ref).max() < 0.2
    for spec in ("int8-static-pc-wsym-minmax", "int8-static-pt-sym-percentile"):
        out, info = _run(b, setup, spec)
        assert 0 < np.abs(out - ref).max() < 0.5, spec
        assert info.extra["quantizer"] == "nncf" and "I8" in str(info.extra["runtime_precisions"]).upper()


def test_ort_qdq_graph_runs_in_openvino(setup):
    out, info = _run(OpenVinoBackend({"quantizer": "ort"}), setup, "int8-static-pc-wsym-minmax")
    assert 0 < np.abs(out - setup[3]).max() < 0.5
    assert any("onnxruntime.quantization" in n for n in info.notes)


def test_unsupported_specs_say_why():
    b = OpenVinoBackend()
    assert "entropy" in b.supports(QuantSpec.parse("int8-static-pc-wsym-entropy"))
    assert "dynamic" in b.supports(QuantSpec.parse("int8-dynamic-pc-wsym"))
    assert "QOperator" in OpenVinoBackend({"quantizer": "ort"}).supports(
        QuantSpec.parse("int8-static-pc-wsym-minmax-qoperator")
    )
    assert OpenVinoBackend({"device": "NPU"}).availability().available is ("NPU" in ov.Core().available_devices)


def test_rows_record_the_compiled_properties_benchmark_app_needs(setup):
    _, info = _run(OpenVinoBackend({"threads": 1}), setup, "fp32")
    props = info.extra["compiled_properties"]
    assert props["INFERENCE_NUM_THREADS"] == "1" and props["NUM_STREAMS"] == "1"
    assert props["INFERENCE_PRECISION_HINT"] == "f32" and props["ENABLE_CPU_PINNING"] in ("True", "False")
    _, info = _run(OpenVinoBackend({"hint": "THROUGHPUT", "streams": 2, "threads": 1}), setup, "bf16")
    assert info.extra["compiled_properties"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert info.extra["num_streams"] == 2 and info.extra["compiled_properties"]["NUM_STREAMS"] == "1"
    assert "asked NUM_STREAMS=2, the device uses 1" in info.notes  # 2 streams need 2 threads


def test_batch1_calls_run_a_static_twin_and_see_new_and_mutated_inputs(setup):
    model, calib, x, ref, tmp = setup
    assert model.dynamic_batch
    with OpenVinoBackend().compile(model, QuantSpec("fp32"), calib, tmp / "twin") as c:
        assert c.info.extra["batch1_static"] is True
        assert c.batch1.inputs[0].get_partial_shape().is_static  # what `benchmark_app -shape [1,...]` runs
        np.testing.assert_allclose(c.infer(x)[0], ref, atol=1e-4)  # batch 16: the dynamic model
        one = {"input": x["input"][:1].copy()}
        for _ in range(2):  # the second call re-uses the bound tensor
            np.testing.assert_allclose(c.infer(one)[0], ref[:1], atol=1e-4)
        one["input"][...] = x["input"][3]  # mutated in place: the shared tensor sees it
        np.testing.assert_allclose(c.infer(one)[0], ref[3:4], atol=1e-4)
        other = {"input": np.asfortranarray(x["input"][5:6])}  # a new array, and one that must be copied
        np.testing.assert_allclose(c.infer(other)[0], ref[5:6], atol=1e-4)
        assert len(c.device_latencies_ms()) == 5 and c.device_latencies_ms() == []


def test_a_fixed_batch_model_has_no_twin(setup):
    from backends._graph import fix_batch

    model, calib, x, ref, tmp = setup
    fixed = fix_batch(model.path, tmp / "fixed.onnx")
    m = ModelInput(fixed, "sha2", model.input_names, model.output_names, False)
    with OpenVinoBackend().compile(m, QuantSpec("fp32"), calib, tmp / "fixed") as c:
        assert c.info.extra["batch1_static"] is False and c.batch1 is None
        np.testing.assert_allclose(c.infer({"input": x["input"][:1]})[0], ref[:1], atol=1e-4)

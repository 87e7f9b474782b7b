"""The ort adapter on a tiny model: every spec family compiles, numerics differ where they must."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qtbench.backends.base import ModelInput
from qtbench.backends.ort import OrtBackend
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import ConfigError, UnsupportedSpec
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

from models import tiny_data


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path):
    facts = model_facts(tiny_model)
    model = ModelInput(tiny_model, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    x = load_dataset(tiny_data(tmp_path / "e.npz", 16, seed=3), ["input"])
    return model, calib, x, tmp_path


def _run(backend, setup, spec_id):
    model, calib, x, tmp = setup
    spec = QuantSpec.parse(spec_id)
    with backend.compile(model, spec, calib, tmp / "art" / spec.id) as c:
        return c.infer(x.batch(0, 16))[0], c.info


def test_all_spec_families_compile_and_stay_close_to_fp32(setup):
    b = OrtBackend({"threads": 1})
    ref, info = _run(b, setup, "fp32")
    assert info.numbers == "measured" and info.coverage == {"cpu": info.extra["nodes"]}
    for spec_id, tol in [
        ("fp16", 0.02),
        ("int8-static-pc-wsym-minmax", 0.3),
        ("int8-static-pt-sym-percentile", 0.3),
        ("int8-static-pc-wsym-minmax-qoperator", 0.3),
        ("int8-dynamic-pc-wsym", 0.3),
        ("int4-static-pc-wsym-minmax", 1.5),
    ]:
        out, info = _run(b, setup, spec_id)
        err = np.abs(out - ref).max()
        if info.extra.get("int8_saturation_risk"):
            # AVX2 without VNNI: the fused s8s8 kernels saturate; the unfused graph holds the QDQ numerics
            assert "without VNNI" in " ".join(info.notes)
            with OrtBackend({"threads": 1, "graph_optimization": "basic"}).compile(
                setup[0], QuantSpec.parse(spec_id), setup[1], setup[3] / "art" / f"{spec_id}-basic"
            ) as c:
                err = np.abs(c.infer(setup[2].batch(0, 16))[0] - ref).max()
        assert 0 < err < tol, (spec_id, err)
        assert info.artifact_bytes > 0
    _, info = _run(b, setup, "int8-static-pc-wsym-minmax")
    assert info.extra["quantized_compute_nodes"] >= 3 and info.extra["float_compute_nodes"] == 0


def test_fp16_on_cpu_says_it_runs_in_fp32(setup):
    _, info = _run(OrtBackend(), setup, "fp16")
    assert info.extra["fp16_executed_as"] == "fp32"
    assert any("run in fp32" in n for n in info.notes)


def test_entropy_is_real_and_differs_from_minmax(setup):
    b = OrtBackend()
    out_mm, _ = _run(b, setup, "int8-static-pt-wsym-minmax")
    out_en, info = _run(b, setup, "int8-static-pt-wsym-entropy")
    tmp = setup[3]
    mm = json.loads((tmp / "art" / "int8-static-pt-wsym-minmax" / "calibration.json").read_text())
    en = json.loads((tmp / "art" / "int8-static-pt-wsym-entropy" / "calibration.json").read_text())
    assert mm.keys() == en.keys()
    assert not np.array_equal(out_mm, out_en)
    assert any("entropy ranges computed by qtbench" in n for n in info.notes)


def test_int4_is_coarser_than_int8(setup):
    b = OrtBackend()
    ref, _ = _run(b, setup, "fp32")
    e8 = np.abs(_run(b, setup, "int8-static-pt-wsym-minmax")[0] - ref).mean()
    e4 = np.abs(_run(b, setup, "int4-static-pt-wsym-minmax")[0] - ref).mean()
    assert e4 > 2 * e8


def test_artifacts_are_cached(setup):
    b = OrtBackend()
    _, first = _run(b, setup, "int8-static-pc-wsym-minmax")
    _, second = _run(b, setup, "int8-static-pc-wsym-minmax")
    assert not first.cache_hit and second.cache_hit


def test_unsupported_specs_and_bad_options():
    b = OrtBackend()
    assert "4-bit" in b.supports(QuantSpec.parse("int4-static-pc-wsym-minmax-qoperator"))
    assert "asymmetric uint8" in b.supports(QuantSpec("int8", "dynamic", activation_symmetric=True))
    assert b.supports(QuantSpec.parse("int8-static-pc-wsym-minmax")) is None
    with pytest.raises(ConfigError, match=r"options\.thread: unknown option; allowed: threads"):
        OrtBackend({"thread": 2})
    with pytest.raises(ConfigError, match="not in this onnxruntime build"):
        OrtBackend({"providers": ["NoSuchExecutionProvider"]}).providers()
    av = OrtBackend({"providers": ["CUDAExecutionProvider"]}).availability()  # a GPU entry on a CPU build
    assert not av.available and "install onnxruntime-gpu" in av.reason


def test_int4_weightonly_without_matmul_is_skipped_with_reason(setup):
    with pytest.raises(UnsupportedSpec, match="MatMulNBits"):
        _run(OrtBackend(), setup, "int4-weightonly-pc-sym")


def test_s8s8_saturation_note_only_where_the_kernels_saturate(monkeypatch):
    import qtbench.backends.ort as ort_mod

    sym, wsym = QuantSpec.parse("int8-static-pt-sym-minmax"), QuantSpec.parse("int8-static-pt-wsym-minmax")
    monkeypatch.setattr(ort_mod, "cpu_has_vnni", lambda: False)
    assert "without VNNI" in ort_mod.s8s8_saturation_risk(sym, "CPUExecutionProvider", "all")
    assert ort_mod.s8s8_saturation_risk(wsym, "CPUExecutionProvider", "all") == ""  # uint8 activations
    assert ort_mod.s8s8_saturation_risk(sym, "CPUExecutionProvider", "basic") == ""  # unfused kernels
    assert ort_mod.s8s8_saturation_risk(sym, "CUDAExecutionProvider", "all") == ""
    monkeypatch.setattr(ort_mod, "cpu_has_vnni", lambda: True)
    assert ort_mod.s8s8_saturation_risk(sym, "CPUExecutionProvider", "all") == ""


def test_int4_weightonly_per_channel_refuses_k_above_mlas_blocks(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((384, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "k384",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 384])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "k384.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    model = ModelInput(path, "sha", ["x"], ["y"], True)
    spec = QuantSpec.parse("int4-weightonly-pc-sym")
    with pytest.raises(UnsupportedSpec, match="K=384 cannot have one scale per output channel"):
        OrtBackend({"threads": 1}).compile(model, spec, None, tmp_path / "a")
    with OrtBackend({"threads": 1, "int4_block_size": 128}).compile(model, spec, None, tmp_path / "b") as c:
        x = np.random.default_rng(1).standard_normal((4, 384)).astype(np.float32)
        y = c.infer({"x": x})[0]
        assert np.abs(y - x @ w).max() / np.abs(x @ w).max() < 0.2
        assert "group-wise" in " ".join(c.info.notes)
    with pytest.raises(ConfigError, match=r"16\.\.256"):
        OrtBackend({"int4_block_size": 512})

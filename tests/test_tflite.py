"""The tflite adapter on shipped fixtures converted by scripts/convert_tflite.py (runtime only: no TensorFlow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from qtbench.backends.base import ModelInput
from qtbench.harness.core.errors import BackendUnavailable
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

pytest.importorskip("ai_edge_litert", reason="needs LiteRT: pip install 'qtbench[tflite]'")
from qtbench.backends.tflite import TfliteBackend

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def setup(tmp_path: Path):
    import onnxruntime as ort

    facts = model_facts(FIX / "tiny.onnx")
    model = ModelInput(FIX / "tiny.onnx", "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    x = np.random.default_rng(4).random((6, 1, 8, 8), dtype=np.float32)
    sess = ort.InferenceSession(str(FIX / "tiny.onnx"), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    return model, x, ref, tmp_path


def _run(backend, setup, spec_id, batch=1):
    model, x, _, tmp = setup
    with backend.compile(model, QuantSpec.parse(spec_id), None, tmp / spec_id) as c:
        out = np.concatenate([c.infer({"input": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
        return out, c.info


@pytest.mark.parametrize(
    ("spec", "tol"),
    [
        ("fp32", 1e-4),
        ("fp16", 0.05),
        ("int8-dynamic-pc-wsym", 0.3),
        ("int8-static-pc-wsym-minmax", 0.5),
        ("int8-static-pt-wsym-minmax", 0.8),
    ],
)
def test_variants_match_onnx_reference(setup, spec, tol):
    out, info = _run(TfliteBackend(), setup, spec)
    err = np.abs(out - setup[2]).max()
    assert err < tol, (spec, err)
    assert info.extra["layout"] == "NHWC" and info.numbers == "measured"
    if spec.startswith("int8-static"):
        assert err > 0 and any("(de)quantizes" in n for n in info.notes)


def test_batch_resize_and_xnnpack_off(setup):
    out, _ = _run(TfliteBackend({"xnnpack": False}), setup, "fp32", batch=3)
    np.testing.assert_allclose(out, setup[2], atol=1e-4)


def test_missing_variant_and_missing_delegate_are_unavailable(setup, tmp_path: Path):
    model, *_ = setup
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(FIX / "tiny.onnx", lonely)
    moved = ModelInput(lonely, "sha", model.input_names, model.output_names, model.dynamic_batch)
    with pytest.raises(BackendUnavailable, match=r"convert_tflite\.py"):
        TfliteBackend().compile(moved, QuantSpec("fp32"), None, tmp_path / "w")
    av = TfliteBackend({"delegate": "/nonexistent/libedgetpu.so.1"}).availability()
    assert not av.available and "failed to load" in av.reason


def test_unsupported_specs():
    b = TfliteBackend()
    assert "minmax" in b.supports(QuantSpec.parse("int8-static-pc-wsym-entropy"))
    assert "no int4" in b.supports(QuantSpec.parse("int4-static-pc-wsym-minmax"))


@pytest.mark.sdk
def test_conversion_script_round_trip(tmp_path: Path):
    """ONNX → .tflite with onnx2tf + TensorFlow, in the interpreter named by $QTBENCH_TF_PYTHON (a venv with
    qtbench[tflite-convert]); skipped otherwise, since TensorFlow is too heavy for every CI run."""
    import os
    import subprocess

    py = os.environ.get("QTBENCH_TF_PYTHON")
    if not py:
        pytest.skip("set QTBENCH_TF_PYTHON to a Python with onnx2tf and tensorflow to test conversion")
    shutil.copy(FIX / "tiny.onnx", tmp_path / "tiny.onnx")
    script = Path(__file__).parents[1] / "scripts" / "convert_tflite.py"
    subprocess.run(
        [py, str(script), str(tmp_path / "tiny.onnx"), "--calib", str(FIX / "tiny_calib.npz")],
        check=True,
        capture_output=True,
        timeout=900,
    )
    made = sorted(p.name for p in tmp_path.glob("tiny.*.tflite"))
    assert made == sorted(p.name for p in FIX.glob("tiny.*.tflite"))


def test_replacing_a_pre_converted_file_makes_a_new_cell(tmp_path: Path):
    """The cell key includes the .tflite's sha256: a re-converted file is measured again, never reused."""
    from qtbench.harness.run.sweep import run_sweep

    from models import tiny_data

    for f in FIX.glob("tiny*"):
        shutil.copy(f, tmp_path / f.name)
    cfg = {
        "name": "tfl",
        "models": [{"path": str(tmp_path / "tiny.onnx")}],
        "evaluation": {"path": str(tiny_data(tmp_path / "ev.npz", 16))},
        "backends": ["tflite"],
        "specs": ["fp32"],
        "measure": {"warmup": 1, "iterations": 3},
        "run": {"results_dir": str(tmp_path / "results")},
    }
    first = run_sweep(cfg).iloc[0]
    assert first["status"] == "ok"
    assert run_sweep(cfg).iloc[0]["record_id"] == first["record_id"]  # unchanged file: reused
    shutil.copy(tmp_path / "tiny.float16.tflite", tmp_path / "tiny.float32.tflite")
    again = run_sweep(cfg)  # the views show the cell's latest row: the new file's, under a new key
    assert len(again) == 1 and again.iloc[0]["cell_key"] != first["cell_key"] and again.iloc[0]["status"] == "ok"
    from qtbench.harness.run.store import load_results

    assert len(load_results(tmp_path / "results" / "tfl", latest=False)) == 2  # the history keeps both


def test_converter_environment_is_found_without_an_option(tmp_path: Path, monkeypatch):
    """`qtbench env create tflite` builds the converter env where the backend looks: no option to set."""
    import qtbench.backends.tflite as tfl
    from qtbench.harness.run.envs import RECIPES, default_path

    monkeypatch.delenv("QTBENCH_TF_PYTHON", raising=False)
    monkeypatch.setattr(tfl, "CONVERTER_ENV", tmp_path / "envs" / "tflite")
    assert default_path("tflite") == tmp_path / "envs" / "tflite" and "tflite" in RECIPES
    assert tfl.converter_python(None) is None  # nothing built yet: the cell says how to build it
    py = tmp_path / "envs" / "tflite" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert tfl.converter_python(None) == str(py)
    monkeypatch.setenv("QTBENCH_TF_PYTHON", "/opt/tf/bin/python")
    assert tfl.converter_python(None) == "/opt/tf/bin/python"
    assert tfl.converter_python("/my/python") == "/my/python"  # the option wins

"""Intake: each normalisation step on the graph forms other exporters write, the check against the original,
the static variant, the cache, and the sweep using what intake made (and saying so in the row)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_forms import build
from onnx import TensorProto, helper, numpy_helper

from qtbench.harness.core import intake
from qtbench.harness.core.intake import compare_outputs, fold_constants, normalise, normalise_many

ort = pytest.importorskip("onnxruntime")


def _sha(p: Path) -> str:
    return intake.file_sha256(p)


def _sample(data: Path, n: int = 2) -> dict[str, np.ndarray]:
    d = np.load(data)
    return {k: d[k][:n] for k in d.files if k != "labels"}


def _run(path: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return intake._session(path).run(None, feeds)


def test_initializer_model_is_used_as_given(tmp_path: Path) -> None:
    model, data = build("initializers", tmp_path)
    r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
    assert r.dynamic.path == str(model) and r.dynamic.sha256 == _sha(model) and r.dynamic.notes == []
    assert r.static.path == str(model)  # input already fully static: nothing to fix either


def test_constant_weights_become_initializers_and_match(tmp_path: Path) -> None:
    model, data = build("constant_weights", tmp_path)
    before = onnx.load(str(model))
    n_const = sum(n.op_type == "Constant" for n in before.graph.node)
    assert n_const >= 8
    r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
    out = onnx.load(r.dynamic.path)
    assert not any(n.op_type == "Constant" for n in out.graph.node)
    conv_w = [n.input[1] for n in out.graph.node if n.op_type == "Conv"]
    inits = {i.name for i in out.graph.initializer}
    assert conv_w and all(w in inits for w in conv_w)
    assert any(f"folded {n_const} Constant node(s)" in note for note in r.dynamic.notes), r.dynamic.notes
    assert any(note.startswith("checked: equals the original") for note in r.dynamic.notes)
    # node names survive (float fallback and localize name the user's nodes)
    assert {n.name for n in out.graph.node} <= {n.name for n in before.graph.node}
    feeds = {k: v[:1] for k, v in _sample(data).items()}
    assert compare_outputs(_run(str(model), feeds), _run(r.dynamic.path, feeds)) < 1e-5
    # the -1 batch dim the form also carries became symbolic
    assert any("-1/0 made symbolic" in note for note in r.dynamic.notes)


def test_dynamic_hw_static_variant_folds_shape_subgraph(tmp_path: Path) -> None:
    model, data = build("dynamic_hw", tmp_path)
    sample = _sample(data)
    r = normalise(model, _sha(model), tmp_path / "cache", sample)
    static = onnx.load(r.static.path)
    assert r.static.static and r.static.path != r.dynamic.path
    dims = [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *next(iter(sample.values())).shape[1:]]
    assert not any(n.op_type in ("Shape", "Gather") for n in static.graph.node), [n.op_type for n in static.graph.node]
    assert any("Shape/Size node(s) folded" in note for note in r.static.notes)
    # the dynamic variant keeps its symbolic H/W (dynamic-shape backends get the model as general as it was)
    dyn = onnx.load(r.dynamic.path)
    assert any(d.dim_param for d in dyn.graph.input[0].type.tensor_type.shape.dim[2:])
    feeds = {k: v[:1] for k, v in sample.items()}
    assert compare_outputs(_run(str(model), feeds), _run(r.static.path, feeds)) < 1e-5


def test_old_opset_converted(tmp_path: Path) -> None:
    model, data = build("opset11", tmp_path)
    r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
    assert intake.default_opset(onnx.load(r.dynamic.path)) == intake.MIN_OPSET
    assert any("opset 11 converted to 13" in note for note in r.dynamic.notes)


def test_fp16_weights_upcast_io_types_kept(tmp_path: Path) -> None:
    model, data = build("fp16", tmp_path)
    r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
    out = onnx.load(r.dynamic.path)
    assert all(i.data_type == TensorProto.FLOAT for i in out.graph.initializer if i.data_type != TensorProto.INT64)
    src = onnx.load(str(model))
    io = lambda m: [v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]]  # noqa: E731
    assert io(out) == io(src) == [TensorProto.FLOAT16, TensorProto.FLOAT16]
    assert any("fp16 weights" in note for note in r.dynamic.notes)
    assert any(note.startswith("checked") for note in r.dynamic.notes)


def test_external_data_and_odd_names_survive(tmp_path: Path) -> None:
    for form in ("external_data", "odd_names"):
        model, data = build(form, tmp_path / form)
        r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
        feeds = {k: v[:1] for k, v in _sample(data).items()}
        for v in (r.dynamic, r.static):
            assert Path(v.path).is_file()
            assert compare_outputs(_run(str(model), feeds), _run(v.path, feeds)) < 1e-5, (form, v.notes)


def test_rewrite_that_diverges_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken rewrite (here: folding that flips a weight's sign) must fall back to the original, with a note."""
    model, data = build("constant_weights", tmp_path)
    real = intake.fold_constants

    def corrupt(proto: onnx.ModelProto) -> int:
        n = real(proto)
        for init in proto.graph.initializer:
            if init.name.startswith("w1"):
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        return n

    monkeypatch.setattr(intake, "fold_constants", corrupt)
    r = normalise(model, _sha(model), tmp_path / "cache", _sample(data))
    assert r.dynamic.path == str(model) and r.dynamic.sha256 == _sha(model)
    assert len(r.dynamic.notes) == 1 and "rewrite not used" in r.dynamic.notes[0]
    assert "differ from the original" in r.dynamic.notes[0]


def test_unreadable_model_costs_only_its_note(tmp_path: Path) -> None:
    good, data = build("constant_weights", tmp_path / "good")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    out = normalise_many(
        {"good": (str(good), _sha(good), _sample(data)), "bad": (str(bad), "0" * 64, None)}, tmp_path / "cache"
    )
    assert out["bad"].dynamic.path == str(bad) and "intake failed" in out["bad"].dynamic.notes[0]
    assert "\n" not in out["bad"].dynamic.notes[0]
    assert out["good"].dynamic.path != str(good)


def test_cache_is_reused_and_keyed_by_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = build("dynamic_hw", tmp_path)
    sample = _sample(data)
    first = normalise(model, _sha(model), tmp_path / "cache", sample)
    calls = []
    monkeypatch.setattr(intake, "normalise_proto", lambda *a, **k: calls.append(1) or [])
    again = normalise(model, _sha(model), tmp_path / "cache", sample)
    assert calls == [] and again == first
    other = {k: np.zeros((1, v.shape[1], 24, 24), v.dtype) for k, v in sample.items()}
    monkeypatch.undo()
    r2 = normalise(model, _sha(model), tmp_path / "cache", other)
    assert r2.static.path != first.static.path
    assert [d.dim_value for d in onnx.load(r2.static.path).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 24, 24]


def test_fold_keeps_large_expansions_and_random_ops() -> None:
    big = helper.make_node("ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", 1, [1], [1.0]))
    rnd = helper.make_node("RandomNormal", [], ["r"], shape=[2, 2])
    add = helper.make_node("Add", ["x", "r"], ["y"])
    red = helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0)
    g = helper.make_graph(
        [big, rnd, add, red],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2]), helper.make_tensor_value_info("s", 1, [])],
        [numpy_helper.from_array(np.array([2048, 1024], np.int64), "shape")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_constants(m) == 0
    assert [n.op_type for n in m.graph.node] == ["ConstantOfShape", "RandomNormal", "Add", "ReduceSum"]


def test_compare_outputs_counts_ids_and_nan() -> None:
    assert compare_outputs([np.array([1, 2, 3])], [np.array([1, 2, 4])]) == pytest.approx(1 / 3)
    assert compare_outputs([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])]) == 0.0
    assert compare_outputs([np.array([np.nan, 1.0])], [np.array([0.0, 1.0])]) == float("inf")
    assert compare_outputs([np.ones(3)], [np.ones(4)]) == float("inf")


def test_sweep_compiles_intake_form_and_row_says_so(tmp_path: Path) -> None:
    """End to end: a Constant-weight model's INT4 cell runs on the folded graph (so its weights really are 4-bit
    per-channel), the row names intake's notes and the sha of what was compiled, the FP32 reference stays the
    original's."""
    from qtbench.harness.run.sweep import run_sweep

    model, data = build("constant_weights", tmp_path / "m")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "name": "intake",
                "models": [
                    {
                        "name": "cw",
                        "path": str(model),
                        "evaluation": {"path": str(data), "labels": "labels"},
                        "calibration": {"path": str(data)},
                        "timing": False,
                    }
                ],
                "backends": [{"name": "ort", "options": {"threads": 1}}],
                "specs": ["int4-static-pc-wsym-minmax"],
                "run": {"results_dir": str(tmp_path / "out")},
            }
        )
    )
    df = run_sweep(cfg)
    row = df.iloc[0]
    assert row["status"] == "ok", row["status_message"]
    assert "folded" in row["intake"] and row["intake_sha256"] != _sha(model)
    assert row["audit"] == "honoured", row["audit"]
    assert row["audit_bits"] == "4:100%"
    assert row["fp_top1"] == 1.0  # labels are the original model's own top-1: the reference is the original

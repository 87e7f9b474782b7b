"""End-to-end sweeps: rows, reuse, and isolation of crashing / hanging / missing backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtbench import backends
from qtbench.harness.core.errors import ConfigError, DataError
from qtbench.harness.run.manifest import external_data_files
from qtbench.harness.run.store import ResultsStore, load_results
from qtbench.harness.run.sweep import run_sweep

from models import tiny_cnn, tiny_data, tiny_sweep


@pytest.fixture
def fault_registry(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "crashy", "fault_backends:CrashingBackend")
    monkeypatch.setitem(backends.BUILTIN, "hangy", "fault_backends:HangingBackend")
    monkeypatch.setitem(backends.BUILTIN, "nosdk", "fault_backends:MissingSdkBackend")
    monkeypatch.setitem(backends.BUILTIN, "broken", "no_such_module_qtbench:Backend")


def test_sweep_writes_rows_and_reuses_them(tmp_path: Path):
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax-qoperator"])
    df = run_sweep(cfg)
    assert list(df["status"]) == ["ok", "ok", "skipped"]
    fp, q8 = df.iloc[0], df.iloc[1]
    assert fp["top1_agreement"] == 1.0 and fp["kl_fp"] == pytest.approx(0, abs=1e-12)
    assert fp["top1"] == pytest.approx(fp["fp_top1"])
    assert 0.8 <= q8["top1_agreement"] <= 1.0 and q8["kl_fp"] > 0
    assert q8["iterations"] == 10 and q8["latency_ms_p50"] > 0 and q8["numbers"] == "measured"
    assert q8["calib_sha256"] and q8["eval_sha256"] and q8["weight_bits"] == 8
    assert "4-bit" in df.iloc[2]["status_message"]
    store = ResultsStore(tmp_path / "results" / "tiny")
    samples = store.samples([q8["record_id"]])
    assert len(samples) == 10
    assert samples["latency_ns"].median() / 1e6 == pytest.approx(q8["latency_ms_p50"])
    run = store.manifest()["runs"][0]
    assert run["finished_utc"] and run["environment"]["packages"]["onnxruntime"]
    events = []
    df2 = run_sweep(cfg, progress=events.append)
    assert all(e.reused for e in events)
    assert list(df2["record_id"]) == list(df["record_id"])
    df3 = run_sweep({**cfg, "run": {**cfg["run"], "rerun": True}, "specs": ["fp32"]})
    assert len(load_results(tmp_path / "results" / "tiny", latest=False)) == 4
    assert len(df3) == 3


def test_a_crash_a_hang_and_a_missing_sdk_each_cost_one_cell(tmp_path: Path, fault_registry):
    cfg = tiny_sweep(
        tmp_path,
        backends=["crashy", "nosdk", "broken", "ort", {"name": "hangy"}],
        run={"results_dir": str(tmp_path / "results"), "timeout_s": 5},
        exclude=[{"backend": "hangy", "spec": "int8-static-pc-wsym-minmax"}],
    )
    df = run_sweep(cfg)
    by = {(r.backend, r.spec_id): r for r in df.itertuples()}
    assert by[("crashy", "fp32")].status == "ok"
    crashed = by[("crashy", "int8-static-pc-wsym-minmax")]
    assert crashed.status == "failed" and "SIGSEGV" in crashed.status_message
    assert (
        by[("nosdk", "fp32")].status == "unavailable" and "pip install acme-npu" in by[("nosdk", "fp32")].status_message
    )
    assert (
        by[("broken", "fp32")].status == "unavailable"
        and "ModuleNotFoundError" in by[("broken", "fp32")].status_message
    )
    assert by[("ort", "int8-static-pc-wsym-minmax")].status == "ok"
    hung = by[("hangy", "fp32")]
    assert hung.status == "timeout" and "timeout_s=5" in hung.status_message


def test_a_bad_model_costs_its_cells_only(tmp_path: Path):
    """What only a compile can find (an op no runtime here knows) costs that model's cells; a file that is not a
    model at all is knowable up front and stops the sweep before anything is compiled or written."""
    import onnx
    from onnx import TensorProto, helper

    cfg = tiny_sweep(tmp_path)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])
    node = helper.make_node("Frobnicate", ["input"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [x], [y])
    odd = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(odd, tmp_path / "odd.onnx")
    cfg["models"].append({"path": str(tmp_path / "odd.onnx"), "name": "odd"})
    df = run_sweep(cfg)
    assert set(df[df.model == "odd"]["status"]) == {"failed"}
    assert set(df[df.model == "tiny"]["status"]) == {"ok"}

    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    cfg = tiny_sweep(tmp_path, run={"results_dir": str(tmp_path / "r2"), "timeout_s": 120})
    cfg["models"].append({"path": str(tmp_path / "bad.onnx"), "name": "bad"})
    with pytest.raises(ConfigError, match=r"model bad: .*bad.onnx is not a readable ONNX model.*nothing was compiled"):
        run_sweep(cfg)
    assert not (tmp_path / "r2").exists()


def test_planning_parses_a_model_once_and_sees_a_rewritten_file(tmp_path: Path, monkeypatch):
    """The kept parse serves planning's reads of one model (facts, external files, input types, metadata), and a
    model rewritten in place (another size or mtime) is parsed again, never answered from the old parse."""
    import os

    import onnx

    from qtbench.harness.core import onnxfacts as cell
    from qtbench.harness.core.data import check_against_model, load_dataset

    model = tiny_cnn(tmp_path / "m.onnx")
    data = tiny_data(tmp_path / "d.npz")
    loads = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    cell.forget_onnx_graph()
    cell._HEADERS.clear()
    facts = cell.model_facts(model)
    ds = load_dataset(str(data), facts.input_names, "labels", None, role="evaluation")
    check_against_model(ds, model, "evaluation")
    assert external_data_files(model) == [] and len(loads) == 1
    proto = real(str(model))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 7  # the file now wants 7 channels
    onnx.save(proto, str(model))
    os.utime(model, ns=(1, 1))  # a different mtime even on a coarse clock
    with pytest.raises(DataError, match="expects"):
        check_against_model(ds, model, "evaluation")
    assert len(loads) == 2
    cell.forget_onnx_graph()
    assert cell._parsed.cache_info().currsize == 0


def test_the_compile_phase_reports_progress(tmp_path: Path):
    """Each built artifact is reported as (built, total, failed) while the compile phase runs, so a long one
    (minutes at paper scale) is not silence; the CLI prints a throttled line from it."""
    calls: list[tuple[int, int, int]] = []
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax", "int8-dynamic-pc-wsym"])
    df = run_sweep(cfg, compile_progress=lambda *a: calls.append(a))
    assert set(df["status"]) == {"ok"}
    assert [c[0] for c in calls] == [1, 2, 3] and {c[1] for c in calls} == {3} and calls[-1][2] == 0

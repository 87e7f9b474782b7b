"""The newcomer's first hour: ten common mistakes are one line and exit 2 before any compile, nothing written; a
sweep with failed cells exits 1 and says how to retry; a failed-then-fixed cell shows its fixed numbers in every
view (show, report, compare, check); `qtbench results list/forget` see the same cells."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from qtbench import backends
from qtbench.harness.cli import main
from qtbench.harness.run.store import load_results

from models import tiny_cnn, tiny_data, tiny_sweep


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "flaky", "fault_backends:FlakyBackend")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err


def _write(tmp: Path, cfg: dict) -> str:
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def _read_only_dir(tmp: Path) -> Path | None:
    """A folder this process cannot write: chmod where that binds (not root), else a read-only mount (/sys)."""
    if os.geteuid() != 0:
        d = tmp / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d / "results"
    probe = Path("/sys/qtbench-probe")
    try:
        probe.mkdir()
    except OSError:
        return probe / "results"
    probe.rmdir()
    return None


def _mistake(tmp: Path, case: str) -> tuple[dict, str]:
    """(sweep dict, fragment the one error line must hold) for each newcomer mistake."""
    cfg = tiny_sweep(tmp, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    labels = np.zeros(16, np.int64)
    if case == "data-path":
        cfg["evaluation"] = {"path": str(tmp / "data" / "evl.npz")}
        return cfg, "evl.npz does not exist"
    if case == "array-name":
        np.savez(tmp / "e.npz", image=x, pixels=x, labels=labels)
        cfg["evaluation"] = {"path": str(tmp / "e.npz")}
        return cfg, "name the array after the input"
    if case == "shape":
        np.savez(tmp / "e.npz", input=x[:, :, :6, :6], labels=labels)
        cfg["evaluation"] = {"path": str(tmp / "e.npz")}
        return cfg, "has shape (16, 1, 6, 6) but the model input expects (?, 1, 8, 8)"
    if case == "dtype":
        np.savez(tmp / "c.npz", input=x.astype(np.float64))
        cfg["calibration"] = {"path": str(tmp / "c.npz")}
        return cfg, "is float64 but the model input is float32"
    if case == "labels-length":
        np.savez(tmp / "e.npz", input=x, labels=labels[:10])
        cfg["evaluation"] = {"path": str(tmp / "e.npz")}
        return cfg, "must be integers of shape (16,)"
    if case == "labels-key":
        np.savez(tmp / "e.npz", input=x, labels=labels)
        cfg["evaluation"] = {"path": str(tmp / "e.npz"), "labels": "targets"}
        return cfg, "labels array 'targets' not found"
    if case == "model-path":
        cfg["models"] = [{"path": str(tmp / "tinny.onnx"), "name": "tiny"}]
        return cfg, "tinny.onnx does not exist"
    if case == "backend":
        cfg["backends"] = ["onnxruntim"]
        return cfg, "backend 'onnxruntim' is not registered"
    if case == "spec":
        cfg["specs"] = ["int8-static-perchannel"]
        return cfg, "specs[0]"
    if case == "read-only-results":
        where = _read_only_dir(tmp)
        if where is None:
            pytest.skip("no read-only folder here (root with a writable /sys)")
        cfg["run"]["results_dir"] = str(where)
        return cfg, "cannot write the results folder"
    raise AssertionError(case)


MISTAKES = [
    "data-path",
    "array-name",
    "shape",
    "dtype",
    "labels-length",
    "labels-key",
    "model-path",
    "backend",
    "spec",
    "read-only-results",
]


@pytest.mark.parametrize("case", MISTAKES)
def test_newcomer_mistake_is_one_line_exit_2_before_any_compile(tmp_path: Path, capsys, monkeypatch, case):
    import qtbench.harness.run.cell

    def no_compile(*a, **k):
        raise AssertionError("a cell was compiled")

    monkeypatch.setattr(qtbench.harness.run.cell, "compile_cell", no_compile)
    cfg, fragment = _mistake(tmp_path, case)
    code, _out, err = _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("qtbench sweep: error:") and fragment in lines[0], lines[0]
    if case != "read-only-results":
        assert not (tmp_path / "results").exists()  # nothing written: the folder is not even created


def test_failed_cells_exit_1_with_a_summary_and_how_to_retry(tmp_path: Path, capsys, flaky):
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"], measure={"warmup": 1, "iterations": 3})
    cfg["backends"] = [{"name": "flaky", "options": {"threads": 1, "fail": True}}, {"name": "ort", "options": {}}]
    code, _out, err = _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")
    assert code == 1
    summary = [ln for ln in err.splitlines() if ln.startswith("qtbench sweep:")]
    assert len(summary) == 1 and "2 of 4 cells failed: 2× compile: CompileError: flaky" in summary[0]
    assert "run `qtbench sweep " in summary[0] and "failed ones are retried" in summary[0]


def test_a_fixed_cell_replaces_its_failure_in_every_view(tmp_path: Path, capsys, flaky):
    """Failed under one set of options (one cell key), fixed under another: show, report, compare and check see
    the fixed numbers only, and the counts agree."""
    base = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"], measure={"warmup": 1, "iterations": 5})
    other = tiny_cnn(tmp_path / "other.onnx", seed=3)
    base["models"] = [
        {"path": base["models"][0]["path"], "name": "a", "group": "fp"},
        {"path": str(other), "name": "b", "group": "qt"},
    ]
    results = tmp_path / "results" / "tiny"
    base["backends"] = [{"name": "flaky", "options": {"threads": 1, "fail": True}}]
    assert _cli(capsys, "sweep", _write(tmp_path, base), "-q", "--no-report")[0] == 1
    base["backends"] = [{"name": "flaky", "options": {"threads": 1, "fail": False}}]
    assert _cli(capsys, "sweep", _write(tmp_path, base), "-q", "--no-report")[0] == 0

    assert len(load_results(results, latest=False)) == 8  # the history keeps both runs
    rows = load_results(results)
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    code, out, _ = _cli(capsys, "show", str(results))
    assert code == 0 and "4 row(s)" in out and "failed" not in out
    code, out, _ = _cli(capsys, "report", str(results), "--out", str(tmp_path / "rep"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert code == 0 and "4 ok" in md and "| failed |" not in md
    code, out, _ = _cli(capsys, "compare", str(results))
    assert code == 0 and "qt" in out and "fp" in out
    code, out, _ = _cli(capsys, "check", "--baseline", str(results), "--candidate", str(results))
    assert code == 0 and "fail" not in out.lower().replace("0 fail", "")
    code, out, _ = _cli(capsys, "results", "list", str(results))
    assert code == 0 and "4 cell(s) shown (4 ok); history 8 row(s): 4 superseded" in out


def test_going_back_to_an_old_key_runs_the_cell_again(tmp_path: Path, capsys, flaky):
    """ok under key A, then failed under key B: going back to A must not leave every view on B's failure."""
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    results = tmp_path / "results" / "tiny"
    for fail, want in ((False, 0), (True, 1), (False, 0)):
        cfg["backends"] = [{"name": "flaky", "options": {"threads": 1, "fail": fail}}]
        assert _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")[0] == want
    rows = load_results(results)
    assert list(rows["status"]) == ["ok"] and len(load_results(results, latest=False)) == 3


def test_results_forget_failed_hides_them_from_views_only(tmp_path: Path, capsys, flaky):
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    cfg["backends"] = [{"name": "flaky", "options": {"threads": 1, "fail": True}}, {"name": "ort", "options": {}}]
    results = tmp_path / "results" / "tiny"
    _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")
    code, _, err = _cli(capsys, "results", "forget", str(results))
    assert code == 2 and "--failed and/or --superseded" in err
    code, out, _ = _cli(capsys, "results", "forget", str(results), "--failed")
    assert code == 0 and "forgot 1 row(s)" in out
    assert list(load_results(results)["backend"]) == ["ort"]
    assert len(load_results(results, latest=False)) == 2  # append-only: the history keeps the failure
    code, out, _ = _cli(capsys, "results", "list", str(results))
    assert "1 cell(s) shown (1 ok)" in out and "1 forgotten" in out


def test_tiny_data_fixture_matches_the_tiny_model(tmp_path: Path):
    """The mistakes above are mistakes only against a model whose input is float32 (N, 1, 8, 8)."""
    from qtbench.harness.core.onnxfacts import model_facts

    facts = model_facts(tiny_cnn(tmp_path / "m.onnx"))
    assert facts.input_names == ["input"]
    assert np.load(tiny_data(tmp_path / "d.npz", 4))["input"].shape == (4, 1, 8, 8)


def test_check_of_a_result_set_against_itself_is_clean(tmp_path: Path, capsys):
    """Fidelity-only cells (timing: false) have no latency by design: the latency gate does not apply to them
    (said once, counted), it is not 'inconclusive'; --strict passes."""
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"], measure={"warmup": 1, "iterations": 12})
    other = tiny_cnn(tmp_path / "other.onnx", seed=3)
    cfg["models"].append({"path": str(other), "name": "untimed", "timing": False})
    assert _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")[0] == 0
    results = str(tmp_path / "results" / "tiny")
    code, out, err = _cli(capsys, "check", "--baseline", results, "--candidate", results, "--strict")
    text = out + err
    assert code == 0 and "0 fail, 0 inconclusive" in text, text
    assert "latency_ms_p50 gate not applicable to 2 cell(s): not timed" in text
    assert "no labels or no reference" not in text


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_tables_fit_without_cutting_a_number(tmp_path: Path, capsys, monkeypatch, width):
    """`show` (and the sweep summary, the same table) at 80 and 120 columns: no line wider than the terminal, no
    number shortened, seeds told apart, untimed cells without latency, left-out columns named."""
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax"])
    cfg["measure"] = {"warmup": 1, "iterations": 3}
    cfg["models"] = [
        {"path": cfg["models"][0]["path"], "name": "qt-trim-seed-0"},
        {"path": str(tiny_cnn(tmp_path / "s1.onnx", seed=1)), "name": "qt-trim-seed-1", "timing": False},
    ]
    monkeypatch.setenv("COLUMNS", str(width))
    assert _cli(capsys, "sweep", _write(tmp_path, cfg), "-q", "--no-report")[0] == 0
    code, out, _ = _cli(capsys, "show", str(tmp_path / "results" / "tiny"))
    assert code == 0
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= width, out
    assert "…" not in out and "nan" not in out.lower()
    rows = load_results(tmp_path / "results" / "tiny")
    for v in rows["top1"]:  # every top-1 figure whole, as the table formats it
        assert f"{100 * v:.2f}" in out
    assert "qt-trim-seed-0" in out and "qt-trim-seed-1" in out
    if width == 80:
        assert "left out at this width:" in out
    untimed = [ln for ln in lines if "qt-trim-seed-1" in ln]
    assert untimed and all("ms" not in ln for ln in untimed)


def test_wrapped_text_breaks_at_separators_and_keeps_every_character():
    from qtbench.harness.cli.common import _wrap_words

    assert _wrap_words("int4-static-pc-wsym-minmax", 14) == "int4-static-\npc-wsym-minmax"
    assert _wrap_words("short", 14) == "short"
    long = "resnet_quanttrim_imagenet_seed_2"
    assert _wrap_words(long, 10).replace("\n", "") == long
    assert max(len(x) for x in _wrap_words("a" * 30, 8).splitlines()) == 8


def test_import_qtbench_is_the_python_api_and_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, qtbench, qtbench.harness.run.sweep as s; assert qtbench.run_sweep is s.run_sweep; "
        "assert 'load_results' in dir(qtbench); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'openvino', 'tensorflow', 'onnxruntime')]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    with pytest.raises(AttributeError, match=r"its API is: .*run_sweep"):
        import qtbench

        qtbench.no_such_thing  # noqa: B018

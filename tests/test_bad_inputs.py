"""A corpus of bad inputs, each one exit code, one line naming the key or path at fault, no traceback.

Cases cover sweep files, CLI flags, models, data, results folders and gate files. Where a case runs after a
good sweep, the test also proves the earlier results survive it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from qtbench.harness.run.store import load_results

from models import run_cli, tiny_cnn, tiny_data, tiny_sweep


def write_cfg(tmp: Path, cfg: dict, name: str = "sweep.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture
def base(tmp_path: Path) -> dict:
    return tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})


# -- sweep files: exit 2, the key path in the message ------------------------------------------------------------
CONFIG_CASES = [
    ("unknown-top-key", {"colour": "red"}, "colour: unknown key"),
    ("unknown-measure-key", {"measure": {"warmups": 3}}, "measure.warmups: unknown key"),
    ("iterations-zero", {"measure": {"iterations": 0}}, "measure.iterations: 0 is below the minimum 1"),
    ("iterations-negative", {"measure": {"iterations": -3}}, "measure.iterations"),
    ("iterations-string", {"measure": {"iterations": "many"}}, "measure.iterations: expected an integer"),
    ("iterations-bool", {"measure": {"iterations": True}}, "measure.iterations: expected an integer"),
    ("warmup-negative", {"measure": {"warmup": -1}}, "measure.warmup: -1 is below the minimum 0"),
    ("warmup-huge", {"measure": {"warmup": 10**10}}, "measure.warmup: 10000000000 is above the maximum"),
    ("iterations-over-cap", {"measure": {"iterations": 500, "max_iterations": 100}}, "measure.iterations: 500 exceeds"),
    ("timeout-nan", {"run": {"timeout_s": float("nan")}}, "run.timeout_s"),
    ("timeout-inf", {"run": {"timeout_s": float("inf")}}, "run.timeout_s"),
    ("name-dotdot", {"name": ".."}, "name: '..' must match"),
    ("name-dot", {"name": "."}, "name: '.' must match"),
    ("name-newline", {"name": "tiny\n"}, "name: 'tiny\\n' must match"),
    ("name-slash", {"name": "a/b"}, "name: 'a/b' must match"),
    ("no-models", {"models": []}, "models: needs at least 1 item"),
    ("model-not-mapping", {"models": ["x.onnx"]}, "models[0]: expected a mapping"),
    ("model-no-path", {"models": [{"name": "x"}]}, "models[0].path: required key is missing"),
    ("backend-unknown", {"backends": ["nosuchrt"]}, "backend 'nosuchrt' is not registered"),
    ("backend-bad-option", {"backends": [{"name": "ort", "options": {"treads": 1}}]}, "treads"),
    ("backend-dup", {"backends": ["ort", "ort"]}, "backends: 'ort' appears twice"),
    ("spec-bad-id", {"specs": ["int9-static"]}, "specs[0]"),
    ("spec-bad-field", {"specs": [{"precision": "int8", "calibration": "magic"}]}, "specs[0]"),
    ("include-incomplete", {"include": [{"model": "tiny"}]}, "include[0]: needs backend, spec"),
    ("exclude-not-list", {"exclude": {"backend": "ort"}}, "exclude: expected a list"),
    ("labels-not-string", {"evaluation": {"path": "e.npz", "labels": 3}}, "evaluation.labels"),
    ("limit-zero", {"evaluation": {"path": "e.npz", "limit": 0}}, "evaluation.limit: 0 is below the minimum 1"),
    ("meter-unknown", {"device": {"meter": "magic"}}, "device.meter: 'magic' is not one of"),
    ("isolate-string", {"run": {"isolate": "yes"}}, "run.isolate: expected true or false"),
]


@pytest.mark.parametrize("case,patch,fragment", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_sweep_file_is_one_line_exit_2(tmp_path: Path, base: dict, capsys, case, patch, fragment):
    cfg = {**base}
    for k, v in patch.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, cfg)), "--no-report")
    assert code == 2, text
    assert fragment in text
    assert not (tmp_path / "results" / "..").joinpath("manifest.json").exists()


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"name: [unclosed\n", "not valid YAML"),
        (b"name: \xff\xfe bad\n", "not UTF-8"),
        (b"!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
        (b"- just\n- a list\n", "expected a mapping at the top level"),
        (b"", "expected a mapping at the top level"),
    ],
    ids=["syntax", "non-utf8", "python-tag", "list", "empty"],
)
def test_unreadable_sweep_file(tmp_path: Path, capsys, content: bytes, fragment: str):
    p = tmp_path / "bad.yaml"
    p.write_bytes(content)
    code, text = run_cli(capsys, "sweep", str(p), "--no-report")
    assert code == 2 and fragment in text and "bad.yaml" in text


def test_missing_sweep_file(tmp_path: Path, capsys):
    code, text = run_cli(capsys, "sweep", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml does not exist" in text


# -- CLI flags go through the same validation ------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags,fragment",
    [
        (["--iterations", "0"], "measure.iterations: 0 is below the minimum 1"),
        (["--iterations", "-3"], "measure.iterations: -3 is below the minimum 1"),
        (["--warmup", "-1"], "measure.warmup: -1 is below the minimum 0"),
        (["--warmup", str(10**10)], "measure.warmup: 10000000000 is above the maximum"),
        (["--specs", "int8-bogus"], "--specs"),
    ],
    ids=["iter0", "iter-neg", "warmup-neg", "warmup-huge", "bad-spec"],
)
def test_bad_cli_flags(tmp_path: Path, base: dict, capsys, flags, fragment):
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "--no-report", *flags)
    assert code == 2 and fragment in text, text


def test_results_dir_is_a_file(tmp_path: Path, base: dict, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "--no-report", "--results-dir", str(blocker))
    assert code == 2 and str(blocker) in text and "not a folder" in text


def test_results_path_itself_is_a_file(tmp_path: Path, base: dict, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny").write_text("x")
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "--no-report")
    assert code == 2 and "is a file, not a folder" in text


# -- models and data: checked before any compile, one line naming the file, exit 2, nothing written --------------
def _sweep_two_models(tmp: Path, base: dict, bad_model: Path | None = None, **data) -> dict:
    good = tiny_cnn(tmp / "good.onnx")
    models = [{"path": str(good), "name": "good"}]
    if bad_model is not None:
        models.append({"path": str(bad_model), "name": "bad"})
    return {**base, "models": models, **data}


def _rows(tmp: Path) -> dict[str, object]:
    df = load_results(tmp / "results" / "tiny")
    return {r.model: r for r in df.itertuples()}


def _error_line(capsys_text: str) -> str:
    lines = [ln for ln in capsys_text.splitlines() if ln.startswith("qtbench sweep: error:")]
    assert len(lines) == 1, capsys_text
    return lines[0]


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(b"\x08\x07garbage-not-protobuf" * 10), "not a readable ONNX model"),
        (lambda p: p.write_text("hello, I am text"), "ONNX"),
        (lambda p: None, "does not exist"),
    ],
    ids=["zero-byte", "garbage", "text", "missing"],
)
def test_bad_model_stops_the_sweep_before_any_compile(tmp_path: Path, base: dict, capsys, make, fragment):
    bad = tmp_path / "bad.onnx"
    make(bad)
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, _sweep_two_models(tmp_path, base, bad))), "-q")
    line = _error_line(text)
    assert code == 2 and fragment in line and "bad.onnx" in line and "model bad:" in line
    assert not (tmp_path / "results").exists()  # not even the good model's cells: the user fixes, then runs


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _x(n: int = 16, shape=(1, 8, 8), dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(dtype)


DATA_CASES = [
    (
        "eval-nan",
        "evaluation",
        lambda p: _npz(
            p,
            x=np.where(np.arange(16)[:, None, None, None] == 3, np.nan, _x()).astype(np.float32),
            labels=np.zeros(16, np.int64),
        ),
        "non-finite value(s) (NaN/Inf), first in sample 3",
    ),
    (
        "calib-inf",
        "calibration",
        lambda p: _npz(p, x=np.where(np.arange(16)[:, None, None, None] == 0, np.inf, _x()).astype(np.float32)),
        "calibration data",
    ),
    ("zero-byte-npz", "evaluation", lambda p: _write(p, b""), "is empty (0 bytes)"),
    (
        "npy-not-npz",
        "evaluation",
        lambda p: (np.save(p.with_suffix(".npy"), _x()), p.with_suffix(".npy"))[1],
        "single .npy array",
    ),
    ("corrupt-npz", "evaluation", lambda p: _write(p, b"PK\x03\x04" + b"\x00" * 50), "cannot read as .npz"),
    ("missing-file", "evaluation", lambda p: p, "does not exist"),
    (
        "wrong-shape",
        "evaluation",
        lambda p: _npz(p, x=_x(shape=(1, 9, 9)), labels=np.zeros(16, np.int64)),
        "expects (?, 1, 8, 8)",
    ),
    (
        "wrong-rank",
        "evaluation",
        lambda p: _npz(p, x=_x(shape=(64,)), labels=np.zeros(16, np.int64)),
        "has shape (16, 64)",
    ),
    (
        "wrong-dtype",
        "calibration",
        lambda p: _npz(p, x=_x(dtype=np.float64)),
        "is float64 but the model input is float32",
    ),
    ("two-arrays-no-name", "evaluation", lambda p: _npz(p, a=_x(), b=_x()), "name the array after the input"),
    (
        "float-labels",
        "evaluation",
        lambda p: _npz(p, x=_x(), labels=np.zeros(16, np.float32)),
        "must be integers of shape (16,)",
    ),
    (
        "short-labels",
        "evaluation",
        lambda p: _npz(p, x=_x(), labels=np.zeros(3, np.int64)),
        "must be integers of shape (16,)",
    ),
    ("zero-samples", "evaluation", lambda p: _npz(p, x=_x(0)), "zero samples"),
    ("scalar", "evaluation", lambda p: _npz(p, x=np.float32(1.0)), "scalar"),
]


@pytest.mark.parametrize("case,kind,make,fragment", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_is_blamed_on_the_data_file(tmp_path: Path, base: dict, capsys, case, kind, make, fragment):
    path = make(tmp_path / f"bad_{kind}.npz")
    cfg = {**base, kind: {"path": str(path)}}
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, cfg)), "-q", "--no-report")
    line = _error_line(text)
    assert code == 2 and fragment in line and Path(path).name in line, line
    assert kind in line and "model file" not in line and "nothing was compiled or written" in line
    assert not (tmp_path / "results").exists()


def test_named_labels_key_that_is_absent_fails(tmp_path: Path, base: dict, capsys):
    ev = tiny_data(tmp_path / "ev.npz", 16)
    cfg = {**base, "evaluation": {"path": str(ev), "labels": "targets"}}
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, cfg)), "-q", "--no-report")
    assert code == 2 and "labels array 'targets' not found" in _error_line(text)


def test_unlabelled_evaluation_runs_and_says_so(tmp_path: Path, base: dict, capsys):
    from qtbench.harness.core.data import load_dataset

    ev = tiny_data(tmp_path / "ev.npz", 16, labels=False)
    ds = load_dataset(ev, ["x"], None)
    assert ds.labels is None and "accuracy, ECE and FP→Q gap are not computed" in ds.warnings[0]
    cfg = {**base, "evaluation": {"path": str(ev)}}
    run_cli(capsys, "sweep", str(write_cfg(tmp_path, cfg)), "-q", "--no-report")
    row = next(iter(_rows(tmp_path).values()))
    assert row.status == "ok" and np.isnan(row.top1) and row.top1_agreement == 1.0
    assert "accuracy, ECE and FP→Q gap are not computed" in row.notes


# -- results folders ------------------------------------------------------------------------------------------
@pytest.fixture
def done(tmp_path: Path, base: dict, capsys) -> Path:
    code, _ = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "-q", "--no-report")
    assert code == 0
    return tmp_path / "results" / "tiny"


def test_corrupt_parquet_is_named(done: Path, capsys):
    bad = done / "rows-zzzz.parquet"
    bad.write_bytes(b"PAR1 not really")
    code, text = run_cli(capsys, "show", str(done))
    assert code == 2 and "rows-zzzz.parquet is not a readable Parquet file" in text and "move it out" in text
    bad.unlink()
    assert run_cli(capsys, "show", str(done))[0] == 0  # the real rows are still there


def test_corrupt_manifest_is_named(done: Path, tmp_path: Path, base: dict, capsys):
    (done / "manifest.json").write_text("{not json")
    assert run_cli(capsys, "show", str(done))[0] == 0  # rows carry their own identity: still readable
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "-q", "--no-report")
    assert code == 2 and "manifest.json is not valid JSON" in text


def test_newer_schema_is_refused(done: Path, tmp_path: Path, base: dict, capsys):
    m = json.loads((done / "manifest.json").read_text())
    m["schema_version"] = 999
    (done / "manifest.json").write_text(json.dumps(m))
    code, text = run_cli(capsys, "sweep", str(write_cfg(tmp_path, base)), "-q", "--no-report")
    assert code == 2 and "upgrade qtbench" in text


@pytest.mark.parametrize("cmd", ["show", "report", "compare"])
def test_results_folder_missing_or_empty(tmp_path: Path, capsys, cmd):
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "nope", empty):
        args = [cmd, str(target)]
        if cmd == "report":
            args += ["--out", str(tmp_path / "rep")]
        code, text = run_cli(capsys, *args)
        assert code == 2 and str(target) in text


def test_check_against_missing_folder(done: Path, capsys):
    code, text = run_cli(capsys, "check", "--baseline", str(done), "--candidate", str(done.parent / "nope"))
    assert code == 2 and "nope" in text


# -- gates files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"top1: [-0.5pp\n", "(gates): not valid YAML"),
        (b"top1: !!python/name:os.system\n", "(gates): not valid YAML"),
        (b"- top1\n", "expected a mapping of metric: rule"),
        (b"top1: sideways\n", "top1"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
    ids=["syntax", "tag", "list", "bad-rule", "non-utf8"],
)
def test_bad_gates_file(done: Path, tmp_path: Path, capsys, content: bytes, fragment: str):
    gates = tmp_path / "gates.yaml"
    gates.write_bytes(content)
    code, text = run_cli(capsys, "check", "--baseline", str(done), "--candidate", str(done), "--gates", str(gates))
    assert code == 2 and fragment in text and "gates.yaml" in text
    assert load_results(done).status.tolist() == ["ok"]  # earlier results survive


def test_internal_error_is_one_line_exit_70(monkeypatch, tmp_path: Path, capsys):
    from qtbench.harness import cli
    from qtbench.harness.cli import schema

    def boom(_args):
        raise ZeroDivisionError("planted")

    monkeypatch.setenv("QTBENCH_CRASH_DIR", str(tmp_path / "crashes"))
    monkeypatch.setattr(schema, "cmd_schema", boom)  # the parser binds the command when main() builds it
    code = cli.main(["schema"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_INTERNAL and err.count("\n") == 1 and "ZeroDivisionError: planted" in err
    crash = next((tmp_path / "crashes").iterdir())
    assert "Traceback" in crash.read_text() and str(crash) in err


def test_sweep_names_cannot_escape_the_results_dir(tmp_path: Path, base: dict, capsys):
    for name in ("..", ".", "x\n"):
        cfg = {**base, "name": name}
        code, _ = run_cli(capsys, "sweep", str(write_cfg(tmp_path, cfg)), "--no-report", "-q")
        assert code == 2
    assert not (tmp_path / "manifest.json").exists() and not (tmp_path / "results" / "manifest.json").exists()

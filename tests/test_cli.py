"""The CLI as a user meets it: help, backends, errors, show; and the lazy-import contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qtbench.harness.cli import main

from models import tiny_sweep

HEAVY = ("onnxruntime", "torch", "openvino", "tensorflow", "pandas", "pyarrow")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qtbench", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_and_import_load_no_heavy_module():
    code = (
        "import sys, qtbench, qtbench.harness, qtbench.backends, qtbench.devices, qtbench.harness.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "sweep" in out.stdout and "backends" in out.stdout and "show" in out.stdout


def test_backends_lists_ort_available_with_version():
    out = _run("backends", "--json")
    rows = {r["slug"]: r for r in json.loads(out.stdout)}
    assert rows["ort"]["available"] and rows["ort"]["versions"]["onnxruntime"]


def test_user_errors_are_one_line_exit_2(tmp_path: Path):
    out = _run("sweep", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "does not exist" in out.stderr
    (tmp_path / "s.yaml").write_text("name: s\nmodels: [{path: m.onnx}]\nbackends: [ort]\nspecs: [int8-bogus]\n")
    out = _run("sweep", str(tmp_path / "s.yaml"))
    assert out.returncode == 2 and "specs[0]: unknown token 'bogus'" in out.stderr
    out = _run("show", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_sweep_then_show_filters(tmp_path: Path, capsys):
    import yaml

    cfg = tiny_sweep(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml"), "-q", "--report-dir", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "rep" / "report.html").is_file() and str(tmp_path / "rep") in printed
    assert "int8-static-pc-wsym-minmax" in printed and str(tmp_path / "results" / "tiny") in printed
    assert main(["show", str(tmp_path / "results" / "tiny"), "--spec", "fp32", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["spec_id"] for r in rows] == ["fp32"]
    assert main(["show", str(tmp_path / "results"), "--backend", "nope"]) == 0
    assert "no rows match" in capsys.readouterr().out


def test_show_limit_caps_the_table_and_says_how_many_are_left(tmp_path: Path, capsys):
    import yaml

    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax", "int8-dynamic-pc-wsym"])
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml"), "-q", "--no-report"]) == 0
    capsys.readouterr()
    folder = str(tmp_path / "results" / "tiny")
    assert main(["show", folder, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 row(s), the first 1 shown" in out and "2 more row(s) (3 ok in all)" in out
    assert main(["show", folder, "--limit", "0"]) == 0
    assert "more row(s)" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["show", folder, "--limit", "-1"])
    assert "negative" in capsys.readouterr().err

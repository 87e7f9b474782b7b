"""Hostile and careless inputs, round three: each case is one line and a documented exit code, bounded in time
and memory, and nothing a hostile file names reaches the terminal, a report or a subprocess unasked."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qtbench.harness.cli import main

from models import run_cli, tiny_sweep


@pytest.fixture
def base(tmp_path: Path) -> dict:
    return tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})


# -- YAML: bounded parsing ------------------------------------------------------------------------------------------
def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\ndescription: *a{levels - 1}\n"


def test_billion_laughs_is_refused_in_a_real_process_fast(tmp_path: Path, base: dict):
    """9 levels of 9-fold aliases is 387 million strings once built: refused before construction."""
    good = yaml.safe_dump(base)
    p = tmp_path / "laughs.yaml"
    p.write_text(billion_laughs() + good)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "qtbench", "sweep", str(p), "--results-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "aliases" in lines[0] and "expand to more than" in lines[0], proc.stderr
    assert len(lines[0]) < 400
    assert not (tmp_path / "r").exists()
    assert took < 30, took  # loose: a built structure takes minutes and gigabytes


def test_a_shared_alias_that_stays_small_is_fine(tmp_path: Path, base: dict, capsys):
    """Aliases themselves are legitimate: reusing one options mapping is what they are for."""
    base = dict(base, backends=[{"name": "ort", "options": {"threads": 1}}, {"name": "simnpu"}])
    cfg = yaml.safe_dump(base)
    cfg = cfg.replace("options:\n    threads: 1", "options: &opts\n    threads: 1").replace(
        "- name: simnpu", "- name: simnpu\n  options: *opts"
    )
    assert "*opts" in cfg and "&opts" in cfg
    p = tmp_path / "ok.yaml"
    p.write_text(cfg)
    code, text = run_cli(capsys, "sweep", str(p), "--no-report")
    assert code == 0, text


def test_repeated_key_is_refused_with_both_lines(tmp_path: Path, base: dict, capsys):
    text = yaml.safe_dump(base) + "specs:\n- int8-static\n"  # a second `specs:` at the end of the file
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    code, out = run_cli(capsys, "sweep", str(p), "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert "'specs' appears twice" in out and "remove one" in out
    first = next(i for i, line in enumerate(text.splitlines()) if line.startswith("specs:")) + 1
    assert f"lines {first} and {len(text.splitlines()) - 1}" in out
    assert not (tmp_path / "r").exists()


def test_oversized_sweep_file_is_refused(tmp_path: Path, base: dict, capsys):
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump(base) + "description: " + "x" * (2 << 20) + "\n")
    code, out = run_cli(capsys, "sweep", str(p))
    assert code == 2 and "too large for a sweep file" in out


def test_a_huge_bad_value_is_not_echoed_whole(tmp_path: Path, base: dict, capsys):
    """A validation error shows a bounded excerpt of the value, not the value."""
    cfg = dict(base, measure={"iterations": ["x" * 50] * 5000})
    p = tmp_path / "long.yaml"
    p.write_text(yaml.safe_dump(cfg))
    code, out = run_cli(capsys, "sweep", str(p))
    assert code == 2 and "measure.iterations: expected an integer" in out
    assert len(out) < 600, len(out)


def test_gates_file_with_aliases_bomb_and_duplicates(tmp_path: Path):
    from qtbench.harness.analysis.gates import load_gates
    from qtbench.harness.core.errors import ConfigError

    bomb = tmp_path / "g1.yaml"
    bomb.write_text(billion_laughs() + "top1: -0.5pp\n")
    with pytest.raises(ConfigError, match="expand to more than"):
        load_gates(bomb)
    dup = tmp_path / "g2.yaml"
    dup.write_text("top1: -0.5pp\ntop1: -5pp\n")
    with pytest.raises(ConfigError, match=r"'top1' appears twice in one mapping \(lines 1 and 2\)"):
        load_gates(dup)


# -- escape sequences: nothing a file names drives the viewer's terminal or renderer ------------------------------
EVIL = "evil\x1b]0;pwned\x07\x1b[2J\u202egnp.exe"


@pytest.mark.parametrize("where", ["name", "path", "group"])
def test_control_characters_in_a_sweep_file_are_refused(tmp_path: Path, base: dict, capsys, where: str):
    model = dict(base["models"][0])
    model[where] = EVIL if where != "path" else str(tmp_path / f"{EVIL}.onnx")
    p = tmp_path / "evil.yaml"
    p.write_text(yaml.safe_dump(dict(base, models=[model])))
    code, out = run_cli(capsys, "sweep", str(p))
    assert code == 2 and f"models[0].{where}" in out and "control character \\x1b" in out
    assert "\x1b" not in out and "\u202e" not in out


def test_escape_sequences_in_stored_results_are_shown_not_obeyed(tmp_path: Path, capsys, monkeypatch):
    """Rows from a foreign or merged folder may hold anything: show, report (HTML and Markdown) print them
    visibly escaped."""
    import numpy as np

    from qtbench.harness.run.store import ResultsStore

    from models import make_record

    store = ResultsStore(tmp_path / "s")
    store.record_run({"run_id": "run1"})
    for i, spec in enumerate(["fp32", "int8-static-pt-wsym-minmax"]):
        rec = make_record(
            record_id=f"r{i}", run_id="run1", cell_key=f"k{i}", model=EVIL, spec_id=spec, status="ok",
            status_message=f"done \x1b[31m{i}", top1=0.5, backend="ort", precision=spec[:4],
        )  # fmt: skip
        store.write_cell("run1", i, rec, [np.array([5, 6, 7])])
    store.consolidate("run1")
    monkeypatch.setenv("COLUMNS", "120")
    code, out = run_cli(capsys, "show", str(tmp_path / "s"), "--history")
    assert code == 0, out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\x1b" in out  # shown, visibly
    code, out = run_cli(capsys, "report", str(tmp_path / "s"), "--out", str(tmp_path / "rep"))
    assert code == 0, out
    for f in ("report.html", "report.md"):
        text = (tmp_path / "rep" / f).read_text()
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text, f
        assert "\\x1b" in text, f


# -- foreign files in a results folder -------------------------------------------------------------------------------
def test_foreign_parquet_in_a_results_folder_is_ignored_with_one_warning(tmp_path: Path, base: dict, capsys):
    import pandas as pd

    from qtbench.harness.run.store import load_results

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(base))
    code, out = run_cli(capsys, "sweep", str(p), "--no-report")
    assert code == 0, out
    folder = Path(base["run"]["results_dir"]) / base["name"]
    before = load_results(folder)
    capsys.readouterr()
    # another tool's tables: one named like ours, one not; both hold the columns a careless join would pick up
    pd.DataFrame({"model": ["x"], "top1": ["0.9"], "score": [1.0]}).to_parquet(folder / "rows-export.parquet")
    pd.DataFrame({"a": [1, 2]}).to_parquet(folder / "analysis.parquet")
    pd.DataFrame({"record_id": ["zz"], "x": [1]}).to_parquet(folder / "samples-other.parquet")
    after = load_results(folder)
    assert after["record_id"].tolist() == before["record_id"].tolist()
    err = capsys.readouterr().err
    for cmd in (["show", str(folder)], ["report", str(folder), "--out", str(tmp_path / "rep")], ["results", "list",
                str(folder)]):  # fmt: skip
        code, text = run_cli(capsys, *cmd)
        assert code == 0, text
        assert "nan × nan" not in text and "[nan]" not in text
        err += text
    for name in ("rows-export.parquet", "analysis.parquet", "samples-other.parquet"):
        assert sum(name in line and "warning: ignoring" in line for line in err.splitlines()) == 1, (name, err)
    code, text = run_cli(capsys, "results", "compact", str(folder))
    assert code == 0, text
    assert (folder / "rows-export.parquet").is_file() and (folder / "analysis.parquet").is_file()  # never folded
    assert load_results(folder)["record_id"].tolist() == before["record_id"].tolist()


# -- probes: a hanging plugin costs its own line and the probe's limit ------------------------------------------------
def test_backends_listing_survives_a_probe_that_hangs(monkeypatch, capsys):
    from qtbench import backends

    monkeypatch.setitem(backends.BUILTIN, "hangprobe", "fault_backends:HangingProbeBackend")
    monkeypatch.setenv("COLUMNS", "200")
    t0 = time.perf_counter()
    code, out = run_cli(capsys, "backends", "--timeout", "4")
    took = time.perf_counter() - t0
    assert code == 0
    line = next(x for x in out.splitlines() if "hangprobe" in x)
    assert "unavailable" in line and "probe did not finish within 4s" in line
    assert "ort" in out and took < 90, took  # probes run side by side; the hang costs its 4 s, not the command


# -- trust: a program a sweep file names runs only with the user's consent -----------------------------------------
def _cli_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("QTBENCH_")} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "qtbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )


def test_a_worker_interpreter_named_by_a_sweep_file_needs_consent(tmp_path: Path, base: dict):
    """An rknn worker 'environment' whose bin/python is a script: by default the sweep stops before anything
    runs, naming the key and --trust; with --trust the user's own file may name it."""
    marker = tmp_path / "ran"
    py = tmp_path / "env" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    py.chmod(0o755)
    cfg = dict(base, backends=[{"name": "rknn", "options": {"python": str(py)}}])
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    proc = _cli_process(tmp_path, "sweep", str(p), "--no-report", "-q")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "backends.rknn.options.python" in err[0] and "--trust" in err[0], err
    assert not marker.exists() and not (tmp_path / "results").exists()
    proc = _cli_process(tmp_path, "sweep", str(p), "--no-report", "-q", "--trust")
    # consented: planning goes on; the probe reads the environment's packages without running it, and finds no
    # rknn-toolkit2 there, so the cell is unavailable with the reason
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "unavailable" in proc.stdout and not marker.exists()
    proc = _cli_process(tmp_path, "sweep", str(p), "--no-report", "-q", "--untrusted", "--trust")
    assert proc.returncode == 2 and "conflicts" in proc.stderr and not marker.exists()


def test_the_python_api_is_the_callers_consent(tmp_path: Path, monkeypatch):
    """run_sweep from the user's own code is trusted by default; main() leaves no policy behind it."""
    import os

    from qtbench.harness.core.trust import TRUST_ENV, trusted

    monkeypatch.delenv(TRUST_ENV, raising=False)
    assert trusted()
    assert main(["schema"]) == 0
    assert TRUST_ENV not in os.environ and trusted()


# -- check against a baseline that has nothing to judge with ------------------------------------------------------
def test_check_against_an_all_failed_baseline_says_so(tmp_path: Path, base: dict, capsys, monkeypatch):
    from qtbench import backends

    monkeypatch.setitem(backends.BUILTIN, "flaky", "fault_backends:FlakyBackend")
    for name, fail in (("bad", True), ("good", False)):
        cfg = dict(base, backends=[{"name": "flaky", "options": {"threads": 1, "fail": fail}}])
        cfg["run"] = {**base["run"], "results_dir": str(tmp_path / name)}
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        run_cli(capsys, "sweep", str(p), "--no-report", "-q")
    code, out = run_cli(
        capsys, "check", "--baseline", str(tmp_path / "bad" / "tiny"), "--candidate", str(tmp_path / "good" / "tiny")
    )
    assert code == 2
    assert "no baseline cell finished ok (1 did not" in out and "re-run the baseline" in out
    assert "baseline cell is failed: compile: CompileError: flaky" in out  # the 'not compared' line says why
    assert "different backends" not in out


# -- what every cell of a model would fail on is a one-line mistake, before any compile -----------------------------
def test_a_scalar_model_input_is_named_not_a_numpy_error(tmp_path: Path, base: dict, capsys):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "scalar.onnx")
    np.savez(tmp_path / "e.npz", input=np.ones((8, 1, 8, 8), np.float32), labels=np.zeros(8, np.int64))
    cfg = dict(base, models=[{"path": str(tmp_path / "scalar.onnx")}], evaluation={"path": str(tmp_path / "e.npz")})
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    code, out = run_cli(capsys, "sweep", str(p))
    assert code == 2 and "model input 'input' is a scalar (0-dim)" in out and "leading batch axis" in out
    assert "broadcast" not in out and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "patch,fragment",
    [
        ({"evaluation": None, "calibration": None}, "no evaluation or calibration data to time with"),
        ({"evaluation": None, "timing": False}, "models[].timing is false but there is no evaluation data"),
        ({"measure": {"batch_size": 4}}, "measure.batch_size=4 but the model's batch axis is fixed"),
    ],
    ids=["no-data", "untimed-unscored", "batch-on-fixed"],
)
def test_what_every_cell_would_fail_on_stops_before_compiling(tmp_path: Path, base: dict, capsys, patch, fragment):
    from models import tiny_cnn

    cfg = dict(base)
    for key in ("evaluation", "calibration"):
        if key in patch:
            cfg.pop(key, None)
    if "timing" in patch:
        cfg["models"] = [{**cfg["models"][0], "timing": False}]
    if "measure" in patch:
        cfg["models"] = [{**cfg["models"][0], "path": str(tiny_cnn(tmp_path / "fixed.onnx", dynamic_batch=False))}]
        cfg["measure"] = {**cfg["measure"], **patch["measure"]}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(cfg))
    code, out = run_cli(capsys, "sweep", str(p))
    assert code == 2 and fragment in out and "nothing was compiled or written" in out, out
    assert not (tmp_path / "results").exists()


def test_localize_option_labels_do_not_embed_paths():
    """`SLUG:KEY=VALUE` targets name their rows; a path value gives its file name and a hash, never the path."""
    from qtbench.harness.analysis.localize.targets import parse_backends
    from qtbench.harness.core.config import parse_sweep

    sweep = parse_sweep({"name": "x", "models": [{"path": "m.onnx"}], "backends": ["ort"], "specs": ["fp32"]})
    a, b, c = parse_backends(
        ["tflite:converter_python=/home/alice/envs/tf/bin/python", "tflite:converter_python=/opt/tf/bin/python",
         "simnpu:hailo8"],
        sweep,
    )  # fmt: skip
    assert "/" not in a.key and "alice" not in a.key and a.key.startswith("tflite-python-")
    assert a.key != b.key and c.key == "simnpu-hailo8"
    assert a.options["converter_python"] == "/home/alice/envs/tf/bin/python"  # the option itself is kept whole

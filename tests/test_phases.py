"""The sweep's phases: plan → compile (all cells, off the clock) → measure (one at a time) → store."""

from __future__ import annotations

from pathlib import Path

import pytest

import backends
from harness.sweep import Executor, LocalExecutor, run_sweep

from models import tiny_sweep

SPECS = ["int8-static-pc-wsym-minmax", "int8-static-pt-wsym-minmax", "int8-static-pc-sym-minmax"]


@pytest.fixture
def logged(monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.setitem(backends.BUILTIN, "logged", "fault_backends:LoggingBackend")
    return tmp_path / "phases.log"  # tiny_sweep writes the model into tmp_path


def _events(log: Path) -> tuple[list[tuple[float, float, bool]], list[float]]:
    compiles, infers = [], []
    for line in log.read_text().splitlines():
        kind, _pid, *rest = line.split()
        if kind == "compile":
            compiles.append((float(rest[0]), float(rest[1]), rest[2] == "True"))
        else:
            infers.append(float(rest[0]))
    return compiles, infers


def test_every_artifact_is_built_before_any_cell_is_timed(tmp_path: Path, logged: Path):
    cfg = tiny_sweep(
        tmp_path, backends=["logged"], specs=SPECS, run={"results_dir": str(tmp_path / "r"), "compile_workers": 2}
    )
    df = run_sweep(cfg)
    assert list(df["status"]) == ["ok"] * 3
    compiles, infers = _events(logged)
    builds = [c for c in compiles if not c[2]]
    assert len(builds) == 3  # one real build per cell, in the compile phase
    assert max(end for _s, end, _h in builds) < min(infers)  # no build overlaps any inference of the sweep
    # the rows report the compile phase's build, not the cache hit the measure phase found
    assert not df["cache_hit"].any() and (df["compile_s"] > 0).all()


def test_compile_first_off_compiles_inside_the_cell(tmp_path: Path, logged: Path):
    cfg = tiny_sweep(
        tmp_path, backends=["logged"], specs=SPECS[:2], run={"results_dir": str(tmp_path / "r"), "compile_first": False}
    )
    run_sweep(cfg)
    compiles, infers = _events(logged)
    assert len(compiles) == 2 and not any(h for *_x, h in compiles)
    assert compiles[1][0] > min(infers)  # the second cell compiled after the first was measured


def test_a_compile_crash_costs_its_cell_in_the_compile_phase(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "crashy", "fault_backends:CrashingBackend")
    cfg = tiny_sweep(tmp_path, backends=["crashy", {"name": "ort", "options": {"threads": 1}}], specs=SPECS[:1])
    by = {r.backend: r for r in run_sweep(cfg).itertuples()}
    assert by["crashy"].status == "failed" and by["crashy"].status_message.startswith("compile: child process died")
    assert by["ort"].status == "ok"


def test_executor_seam(tmp_path: Path):
    seen = []

    class Recording(Executor):
        def run(self, cells, sweep):
            for cell, result in LocalExecutor().run(cells, sweep):
                seen.append(cell.label)
                yield cell, result

    cfg = tiny_sweep(tmp_path, specs=["fp32", SPECS[0]])
    df = run_sweep(cfg, executor=Recording())
    assert seen == ["tiny × ort × fp32", f"tiny × ort × {SPECS[0]}"] and set(df["status"]) == {"ok"}
    assert run_sweep(cfg, executor=Recording()) is not None and len(seen) == 2  # nothing to run on a re-run

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


@pytest.mark.parametrize("warm", [True, False])
def test_compile_workers_are_warm_and_each_gets_its_own_cores(tmp_path: Path, logged: Path, warm: bool):
    import os

    specs = [*SPECS, "int8-static-pt-sym-minmax"]
    run = {"results_dir": str(tmp_path / "r"), "compile_workers": 2, "warm_workers": warm}
    assert list(run_sweep(tiny_sweep(tmp_path, backends=["logged"], specs=specs, run=run))["status"]) == ["ok"] * 4
    lines = [ln.split() for ln in logged.read_text().splitlines() if ln.startswith("compile")]
    builds = [(int(ln[1]), ln[5]) for ln in lines if ln[4] == "False"]
    measured = [ln[5] for ln in lines if ln[4] == "True"]
    assert len(builds) == 4
    assert len({pid for pid, _c in builds}) == (2 if warm else 4)  # warm: one child per compile worker
    everything = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    if len(os.sched_getaffinity(0)) >= 2:  # two workers, two disjoint halves of the cores; measuring sees all
        halves = {c for _p, c in builds}
        assert len(halves) == 2 and not set.intersection(*(set(h.split(",")) for h in halves))
    assert set(measured) == {everything}


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


def _measure_pids(log: Path) -> list[int]:
    """pids of the measure phase's cells (their compile is a cache hit: the compile phase built the artifact)."""
    return [
        int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("compile") and "True" in line
    ]


@pytest.mark.parametrize("warm", [True, False])
def test_warm_worker_measures_consecutive_cells_in_one_process(tmp_path: Path, logged: Path, warm: bool):
    cfg = tiny_sweep(
        tmp_path, backends=["logged"], specs=SPECS, run={"results_dir": str(tmp_path / "r"), "warm_workers": warm}
    )
    assert list(run_sweep(cfg)["status"]) == ["ok"] * 3
    pids = _measure_pids(logged)
    assert len(pids) == 3
    assert len(set(pids)) == (1 if warm else 3)


def test_a_crash_in_a_warm_worker_costs_its_cell_only(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "crashinfer", "fault_backends:InferCrashBackend")
    specs = [SPECS[0], SPECS[2], SPECS[1]]  # the middle one (symmetric activations) crashes when it is timed
    df = run_sweep(tiny_sweep(tmp_path, backends=["crashinfer"], specs=specs))
    by = dict(zip(df["spec_id"], zip(df["status"], df["status_message"], strict=True), strict=True))
    assert by[SPECS[2]][0] == "failed" and "child process died" in by[SPECS[2]][1] and "SIGSEGV" in by[SPECS[2]][1]
    assert by[SPECS[0]][0] == by[SPECS[1]][0] == "ok"
    pids = _measure_pids(tmp_path / "phases.log")
    assert len(pids) == 3 and pids[0] == pids[1] != pids[2]  # the cell after the crash ran in a fresh worker


def test_worker_outcomes_and_restarts():
    from harness.isolate import Worker

    import fault_backends as fb

    with Worker(max_calls=3) as w:
        a = w.call(fb.whoami, (1,), 30)
        assert a[0] == "ok" and a[1][1] == 1
        assert w.call(fb.whoami, (2,), 30)[1][0] == a[1][0]  # same warm process
        kind, msg = w.call(fb.sleep_then, (30,), 1)
        assert kind == "timeout" and "run.timeout_s=1s" in msg
        b = w.call(fb.whoami, (), 30)
        assert b[0] == "ok" and b[1][0] != a[1][0]  # the timed-out child was killed; a fresh one answers
        kind, msg = w.call(fb.die, (), 30)
        assert kind == "died" and "exit code 3" in msg
        c = w.call(fb.unpicklable, (), 30)
        assert c[0] == "error" and "could not be sent back" in c[1]
        pid = w.call(fb.whoami, (), 30)[1][0]
        assert w.call(fb.whoami, (), 30)[1][0] == pid  # the unpicklable result did not cost the process
        w.call(fb.whoami, (), 30)
        assert w.call(fb.whoami, (), 30)[1][0] != pid  # max_calls=3: replaced by a fresh child
        last = w.pid
    assert last is not None and w.pid is None
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(last, 0)

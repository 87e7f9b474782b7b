"""The sweep's phases: plan → compile (all cells, off the clock) → measure (one at a time) → store."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from qtbench import backends
from qtbench.harness.run.executors import Executor, LocalExecutor
from qtbench.harness.run.sweep import run_sweep

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


def _by_process(log: Path) -> tuple[set[int], dict[int, list[float]]]:
    """(pids that built an artifact, inference times per pid)."""
    builders, infers = set(), {}
    for line in log.read_text().splitlines():
        kind, pid, *rest = line.split()
        if kind == "compile" and rest[2] == "False":
            builders.add(int(pid))
        elif kind == "infer":
            infers.setdefault(int(pid), []).append(float(rest[0]))
    return builders, infers


def test_every_artifact_is_built_before_any_cell_is_timed(tmp_path: Path, logged: Path):
    cfg = tiny_sweep(
        tmp_path, backends=["logged"], specs=SPECS, run={"results_dir": str(tmp_path / "r"), "compile_workers": 2}
    )
    df = run_sweep(cfg)
    assert list(df["status"]) == ["ok"] * 3
    compiles, _infers = _events(logged)
    builds = [c for c in compiles if not c[2]]
    assert len(builds) == 3  # one real build per cell, in the compile phase
    builders, infers = _by_process(logged)
    measured = [t for pid, ts in infers.items() if pid not in builders for t in ts]
    assert max(end for _s, end, _h in builds) < min(measured)  # no build overlaps any measure-phase inference
    # the quality pass ran in the compile phase (the compile workers' own inferences), so each cell's measure
    # phase ran only its timed loop: warm-ups plus at least the protocol's iterations, no evaluation batches
    assert (df["eval_phase"] == "compile").all() and (df["eval_samples"] > 0).all()
    from qtbench.harness.core.config import MeasureSettings

    bs = MeasureSettings().eval_batch_size  # the tiny model's batch axis is dynamic: evaluated in batches
    batches = sum(-(-int(n) // bs) for n in df["eval_samples"])
    assert sum(len(ts) for pid, ts in infers.items() if pid in builders) == batches
    timed = int((df["warmup"] + df["iterations"]).sum())
    assert len(measured) == timed
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
    measured = [ln[5] for ln in lines if ln[4] == "True"]  # the measure phase: the compile phase scored each
    assert len(builds) == 4 and len(measured) == 4  # cell on the artifact it had just built, without a reload
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
    # its quality pass crashed first in the compile phase: left to the measure phase, never the build's failure
    assert not by[SPECS[2]][1].startswith("compile:")
    assert by[SPECS[0]][0] == by[SPECS[1]][0] == "ok"
    pids = _measure_pids(tmp_path / "phases.log")
    assert len(pids) == 4  # the crashed compile call was repeated without its quality pass: one cache hit
    pids = pids[1:]  # then the measure phase's three cells
    assert pids[0] == pids[1] != pids[2]  # the cell after the crash ran in a fresh worker


def test_worker_outcomes_and_restarts():
    from qtbench.harness.core.isolate import Worker

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


def test_scoring_in_the_compile_phase_gives_the_measure_phases_numbers(tmp_path: Path):
    """The same cells scored in the compile phase (the default) and inside each cell (compile_first off): every
    quality column and the stored per-sample predictions are equal; only eval_phase says where it ran."""
    import numpy as np

    from qtbench.harness.analysis.check import _record_data

    cols = ["top1", "top5", "top1_agreement", "kl_fp", "logit_cosine", "sqnr_db", "max_abs_err", "ece", "nll"]
    cols += ["fp_top1", "reliability", "eval_samples", "eval_sha256"]
    rows, preds = {}, {}
    for phase, first in (("compile", True), ("measure", False)):
        run = {"results_dir": str(tmp_path / phase), "compile_first": first}
        ort = [{"name": "ort", "options": {"threads": 1}}]
        df = run_sweep(tiny_sweep(tmp_path, backends=ort, specs=SPECS, run=run)).sort_values("spec_id")
        assert list(df["status"]) == ["ok"] * 3 and (df["eval_phase"] == phase).all()
        rows[phase] = df[cols].reset_index(drop=True)
        data = _record_data(tmp_path / phase, list(df["record_id"]))["predictions"]
        preds[phase] = [data[r].pred for r in df["record_id"]]
    assert rows["compile"].notna().all().all() and rows["compile"].equals(rows["measure"])
    for a, b in zip(preds["compile"], preds["measure"], strict=True):
        assert len(a) == 64 and np.array_equal(a, b)


def test_an_exclusive_device_builds_one_cell_at_a_time_while_others_build_alongside(tmp_path: Path, monkeypatch):
    """Two compile workers, a GPU-like backend and ORT: the GPU-like backend's builds never overlap each other."""
    monkeypatch.setitem(backends.BUILTIN, "exclusive", "fault_backends:ExclusiveBackend")
    cfg = tiny_sweep(
        tmp_path,
        backends=["exclusive", {"name": "ort", "options": {"threads": 1}}],
        specs=SPECS,
        run={"results_dir": str(tmp_path / "r"), "compile_workers": 2},
    )
    df = run_sweep(cfg)
    assert set(df["status"]) == {"ok"} and len(df) == 6
    spans = sorted(tuple(map(float, line.split())) for line in (tmp_path / "exclusive.log").read_text().splitlines())
    assert len(spans) >= 3  # the compile phase builds 3; the measure phase opens each entry again (cache hits)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans  # one at a time


def test_a_device_bound_artifact_is_keyed_by_the_device(tmp_path: Path, monkeypatch):
    """A cache shared by two machines (or a GPU swapped): another device identity is another artifact key, so
    the engine built for the first device is never loaded on the second; back on the first, its entry is reused."""
    from fault_backends import BoundBackend

    monkeypatch.setitem(backends.BUILTIN, "bound", "fault_backends:BoundBackend")
    cfg = tiny_sweep(
        tmp_path,
        backends=["bound"],
        specs=["int8-static-pc-wsym-minmax"],
        run={"results_dir": str(tmp_path / "r"), "isolate": False, "rerun": True},
    )
    first = run_sweep(cfg).iloc[-1]
    monkeypatch.setattr(BoundBackend, "IDENTITY", "gpu-b;sm_9.0;driver=2")
    second = run_sweep(cfg).iloc[-1]
    monkeypatch.setattr(BoundBackend, "IDENTITY", "gpu-a;sm_8.9;driver=1")
    third = run_sweep(cfg).iloc[-1]
    assert not first["cache_hit"] and not second["cache_hit"] and third["cache_hit"]
    entries = list((tmp_path / "r" / ".cache" / "artifacts" / "bound").iterdir())
    assert len(entries) == 2  # one per device

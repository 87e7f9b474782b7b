"""Real processes: concurrent sweeps and readers on one folder, killed sweeps, timeouts, a full or read-only disk.

Each test starts ``qtbench`` (or a small driver around ``harness.cli.main``) as a separate process and checks what
survives: rows, exit codes, and — after a kill — that no process of the sweep is left (cells, their SDK children,
the forkserver, the resource tracker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from qtbench.harness.run.store import ResultsStore, load_results

from models import tiny_sweep

TESTS = Path(__file__).parent
DRIVER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from qtbench import backends
backends.BUILTIN["spawnhang"] = "fault_backends:SpawningHangBackend"
backends.BUILTIN["hangprobe"] = "fault_backends:HangingProbeBackend"
backends.BUILTIN["scratch"] = "fault_backends:ScratchBackend"
from qtbench.harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _write(tmp: Path, cfg: dict, name: str = "sweep.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def _qtbench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=kw.pop("env", _env()),
        **kw,
    )


def _marked(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in c for c in (p.info["cmdline"] or [])):
                out.append(p)
        except psutil.Error:
            pass
    return out


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_for(pred, timeout: float = 60.0, every: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def test_two_sweeps_and_a_reader_share_one_folder(tmp_path: Path):
    specs = ["fp32", "int8-static-pc-wsym-minmax", "int8-static-pt-wsym-minmax", "int8-dynamic-pc-wsym"]
    cfg = tiny_sweep(tmp_path, specs=specs, measure={"warmup": 1, "iterations": 5})
    cfg_a = _write(tmp_path, {**cfg, "run": {**cfg["run"], "rerun": True}}, "a.yaml")
    a = _qtbench("sweep", str(cfg_a), "-q", "--report-dir", str(tmp_path / "rep-a"))
    b = _qtbench("sweep", str(cfg_a), "-q", "--no-report")
    folder = tmp_path / "results" / "tiny"
    polls, errors = 0, []
    while a.poll() is None or b.poll() is None:  # a reader polling while both write and consolidate
        if (folder / "manifest.json").is_file():
            r = subprocess.run(
                [sys.executable, "-m", "qtbench", "show", str(folder), "--format", "csv"],
                capture_output=True,
                text=True,
                env=_env(),
            )
            polls += 1
            if r.returncode != 0 or "Traceback" in r.stderr:
                errors.append(r.stderr)
        time.sleep(0.05)
    out_a, out_b = a.stdout.read(), b.stdout.read()
    assert a.returncode == 0 and "Traceback" not in out_a, out_a
    assert b.returncode == 0 and "Traceback" not in out_b, out_b
    assert polls >= 1 and not errors, errors[:1]
    history = load_results(folder, latest=False)
    assert len(history) == 2 * len(specs) and set(history["status"]) == {"ok"}
    assert history["run_id"].nunique() == 2
    runs = ResultsStore(folder).manifest()["runs"]
    assert len(runs) == 2 and all(r["finished_utc"] for r in runs)  # neither manifest update was lost
    assert not (folder / "parts").exists()
    assert (tmp_path / "rep-a" / "report.html").is_file()


def _hanging_sweep(tmp: Path, timeout_s: float = 300) -> Path:
    cfg = tiny_sweep(
        tmp,
        backends=[{"name": "ort", "options": {"threads": 1}}, "spawnhang"],
        specs=["fp32"],
        measure={"warmup": 1, "iterations": 3},
        # compile inside the cell: the ort cell is measured and saved before the hanging one starts
        run={"results_dir": str(tmp / "results"), "timeout_s": timeout_s, "compile_first": False},
    )
    return _write(tmp, cfg)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"])
def test_no_process_outlives_a_killed_sweep(tmp_path: Path, sig):
    marker = f"qtbench-marker-{uuid.uuid4().hex[:8]}"
    proc = _qtbench("sweep", str(_hanging_sweep(tmp_path)), "--no-report", env=_env(QTBENCH_TEST_MARKER=marker))
    _wait_for(lambda: _marked(marker), timeout=90)
    family = psutil.Process(proc.pid).children(recursive=True) + _marked(marker)
    assert len(family) >= 3  # forkserver, cell, the SDK's helper (and the resource tracker)
    t0 = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(30)
    exit_s = time.monotonic() - t0
    _wait_for(lambda: not _alive(family), timeout=15)
    if sig == signal.SIGINT:
        assert code == 130 and exit_s < 5, (code, exit_s)
    # the finished ort cell was saved before the kill and is reused by the next run, which folds the stale parts
    folder = tmp_path / "results" / "tiny"
    assert (folder / "parts").is_dir() or any(folder.glob("rows-*.parquet"))
    cfg = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    cfg["backends"] = cfg["backends"][:1]
    again = subprocess.run(
        [sys.executable, "-m", "qtbench", "sweep", str(_write(tmp_path, cfg, "again.yaml")), "--no-report"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reused" in again.stdout
    assert not (folder / "parts").exists()
    runs = ResultsStore(folder).manifest()["runs"]
    assert all(r["finished_utc"] for r in runs)
    assert sum(bool(r.get("interrupted")) for r in runs) == 1  # the killed run, folded by the next one


def test_a_timed_out_cell_takes_its_children_with_it(tmp_path: Path):
    marker = f"qtbench-marker-{uuid.uuid4().hex[:8]}"
    cfg = _hanging_sweep(tmp_path, timeout_s=8)
    proc = _qtbench("sweep", str(cfg), "--no-report", env=_env(QTBENCH_TEST_MARKER=marker))
    helpers = _wait_for(lambda: _marked(marker), timeout=90)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out  # a timed-out cell is a failed cell: exit 1
    assert "1 of 2 cells failed" in out
    _wait_for(lambda: not _alive(helpers), timeout=10)
    rows = {r.backend: r for r in load_results(tmp_path / "results" / "tiny").itertuples()}
    assert rows["spawnhang"].status == "timeout" and "with its subprocesses" in rows["spawnhang"].status_message
    assert rows["ort"].status == "ok"


def test_stale_run_is_folded_by_the_next_sweep(tmp_path: Path):
    proc = _qtbench("sweep", str(_hanging_sweep(tmp_path)), "--no-report")
    folder = tmp_path / "results" / "tiny"
    _wait_for(lambda: list(folder.glob("parts/*/*.rows.parquet")), timeout=90)
    proc.kill()
    proc.wait(10)
    time.sleep(1)
    assert (folder / "parts").is_dir()
    store = ResultsStore(folder)
    from qtbench.harness.run.manifest import run_is_alive

    assert store.recover_stale_runs(run_is_alive)
    assert not (folder / "parts").exists()
    (run,) = store.manifest()["runs"]
    assert run["interrupted"] is True and run["finished_utc"]
    assert list(load_results(folder)["backend"]) == ["ort"]


@pytest.fixture
def tmpfs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_and_keeps_saved_rows(tmp_path: Path, tmpfs: Path):
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    cfg["run"] = {**cfg["run"], "results_dir": str(tmpfs / "results")}
    path = _write(tmp_path, cfg)
    first = subprocess.run(
        [sys.executable, "-m", "qtbench", "sweep", str(path), "--no-report", "-q"], capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    filler = tmpfs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until ENOSPC
    second = subprocess.run(
        [sys.executable, "-m", "qtbench", "sweep", str(path), "--no-report", "-q", "--rerun"],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert "Traceback" not in second.stderr and "disk is full" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert " ?: " not in second.stderr and f"{tmpfs}/results/tiny/" in second.stderr  # the file that failed
    filler.unlink()
    rows = load_results(tmpfs / "results" / "tiny", latest=False)
    assert list(rows["status"]) == ["ok"]


def test_read_only_results_folder(tmp_path: Path, tmpfs: Path):
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    cfg["run"] = {**cfg["run"], "results_dir": str(tmpfs / "results")}
    path = _write(tmp_path, cfg)
    cmd = [sys.executable, "-m", "qtbench", "sweep", str(path), "--no-report", "-q"]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    show = subprocess.run(
        [sys.executable, "-m", "qtbench", "show", str(tmpfs / "results" / "tiny")], capture_output=True, text=True
    )
    assert show.returncode == 0 and "tiny" in show.stdout
    again = subprocess.run([*cmd, "--rerun"], capture_output=True, text=True)
    assert again.returncode == 2 and "read-only" in again.stderr and "Traceback" not in again.stderr


def test_read_only_report_folder_is_found_before_the_sweep(tmp_path: Path, tmpfs: Path):
    """A report folder on a read-only mount: one line naming --report-dir, exit 2, before any cell runs."""
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    path = _write(tmp_path, cfg)
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    cmd = [sys.executable, "-m", "qtbench", "sweep", str(path), "-q", "--report-dir", str(tmpfs / "rep")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "read-only" in r.stderr and "--report-dir" in r.stderr
    assert "--results-dir" not in r.stderr
    assert not (tmp_path / "results").exists()  # found before the sweep: nothing ran


def test_result_files_are_shared_files_not_private(tmp_path: Path):
    """Parquet parts, compacted files and the manifest get 0666 less the umask (a team's folder), not 0600."""
    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 1, "iterations": 3})
    r = subprocess.run(
        ["bash", "-c", f"umask 022 && {sys.executable} -m qtbench sweep {_write(tmp_path, cfg)} -q --no-report"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert r.returncode == 0, r.stderr
    files = [f for f in (tmp_path / "results" / "tiny").rglob("*") if f.is_file() and not f.name.startswith(".")]
    assert files and {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o644)}, files


def test_poisoned_cache_entry_is_rebuilt(tmp_path: Path):
    from qtbench.harness.run.sweep import run_sweep

    cfg = tiny_sweep(tmp_path, specs=["int8-static-pc-wsym-minmax"], measure={"warmup": 1, "iterations": 3})
    first = run_sweep(cfg).iloc[0]
    assert first["status"] == "ok" and not first["cache_hit"]
    (notes,) = list((tmp_path / "results" / ".cache" / "artifacts").rglob("notes.json"))
    notes.write_text("")  # a kill between the artifact's rename and its marker
    second = run_sweep({**cfg, "run": {**cfg["run"], "rerun": True}}).iloc[-1]
    assert second["status"] == "ok" and not second["cache_hit"]
    assert second["top1_agreement"] == first["top1_agreement"]
    third = run_sweep({**cfg, "run": {**cfg["run"], "rerun": True}})
    assert bool(third.sort_values("created_utc").iloc[-1]["cache_hit"])
    leftover = notes.parent / "tmpdeadbeef"
    leftover.mkdir()
    (notes.parent / "model.onnx").write_bytes(b"")  # truncated artifact: size no longer matches the marker
    fourth = run_sweep({**cfg, "run": {**cfg["run"], "rerun": True}}).sort_values("created_utc").iloc[-1]
    assert fourth["status"] == "ok" and not fourth["cache_hit"] and not leftover.exists()


def test_module_entry_point_exists():
    # the tests above run `python -m qtbench`; keep that working
    r = subprocess.run([sys.executable, "-m", "qtbench", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "qtbench" in r.stdout


@pytest.mark.parametrize("phase", ["plan", "compile", "measure"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_signal_stops_a_hung_sweep_within_5_s_in_any_phase(tmp_path: Path, sig, phase: str):
    """A probe that hangs (planning), a build that hangs in a compile-phase worker thread, a cell that hangs in
    the measure phase: with a 300 s cell timeout, SIGTERM or SIGINT ends the sweep in seconds, kills the hung
    child's group, writes no row for it and marks the run interrupted at once."""
    marker = f"qtbench-marker-{uuid.uuid4().hex[:8]}"
    hung = "hangprobe" if phase == "plan" else "spawnhang"
    cfg = tiny_sweep(
        tmp_path,
        backends=[{"name": "ort", "options": {"threads": 1}}, hung],
        specs=["fp32"],
        measure={"warmup": 1, "iterations": 3},
        run={"results_dir": str(tmp_path / "results"), "timeout_s": 300, "compile_first": phase != "measure"},
    )
    proc = _qtbench("sweep", str(_write(tmp_path, cfg)), "--no-report", env=_env(QTBENCH_TEST_MARKER=marker))
    _wait_for(lambda: _marked(marker), timeout=90)
    time.sleep(1.0)  # the hang is under way
    family = psutil.Process(proc.pid).children(recursive=True) + _marked(marker)
    t0 = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(60)
    exit_s = time.monotonic() - t0
    out = proc.stdout.read()
    assert code == 130 and exit_s < 5, (code, exit_s, out)
    assert "Traceback" not in out and "interrupted" in out, out
    _wait_for(lambda: not _alive(family), timeout=10)
    folder = tmp_path / "results" / "tiny"
    runs = ResultsStore(folder).manifest()["runs"]
    assert len(runs) == 1 and runs[0]["finished_utc"] and runs[0].get("interrupted"), runs
    rows = load_results(folder, latest=False)
    assert hung not in set(rows["backend"]), rows[["backend", "status", "status_message"]]  # no false row


def test_two_sweeps_of_one_config_build_each_artifact_once_and_leave_no_false_failure(tmp_path: Path):
    """Two sweeps of one config started together into one folder and one artifact cache: simnpu writes helper
    graphs beside its artifact, QNN writes its context binary at session creation, and ``scratch`` works on a
    helper file for 1.5 s (so the two builds surely overlap). Each entry is compiled by one process at a time and
    the other reuses it; no row of either run is a failure."""
    import importlib.util

    backends_ = [{"name": "ort", "options": {"threads": 1}}, "simnpu", "scratch"]
    if importlib.util.find_spec("onnxruntime_qnn") is not None:
        backends_.append({"name": "qnn", "options": {"threads": 1}})
    specs = ["fp32", "int8-static-pt-wsym-minmax", "int8-static-pc-wsym-minmax"]
    cfg = tiny_sweep(tmp_path, backends=backends_, specs=specs, measure={"warmup": 1, "iterations": 3})
    path = _write(tmp_path, cfg)
    a = _qtbench("sweep", str(path), "-q", "--no-report")
    b = _qtbench("sweep", str(path), "-q", "--no-report")
    out_a, _ = a.communicate(timeout=600)
    out_b, _ = b.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    history = load_results(tmp_path / "results" / "tiny", latest=False)
    bad = history[~history["status"].isin(["ok", "skipped"])]
    assert bad.empty, bad[["backend", "spec_id", "status", "status_message"]].to_string()
    ran = history[history["status"] == "ok"]
    # every cell measured by at least one run, and an artifact built once: the other run's cell is a cache hit
    for (_bk, _spec), g in ran.groupby(["backend", "spec_id"]):
        assert (~g["cache_hit"].astype(bool)).sum() <= 1, g[["run_id", "cache_hit"]]

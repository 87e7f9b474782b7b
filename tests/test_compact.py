"""`qtbench results compact`: re-runs' files fold into one per kind, and nothing a reader sees changes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qtbench.harness.cli import main
from qtbench.harness.run import store as store_mod
from qtbench.harness.run.manifest import _process_identity
from qtbench.harness.run.store import COMPACTED, ResultsStore, compact, load_results

from models import make_record


def write_run(store: ResultsStore, run_id: str, cells: int = 3, finish: bool = True, seed: int = 0) -> list[str]:
    """One run of ``cells`` cells through the real store API (rows, raw latencies, predictions); its record ids."""
    rng = np.random.default_rng(seed)
    # the pid of this test process: `run_is_alive` sees the run as live until it finishes
    store.record_run({"run_id": run_id, "started_utc": run_id, "finished_utc": None, **_process_identity()})
    ids = []
    for i in range(cells):
        rid = f"{run_id}-{i}"
        rec = make_record(
            record_id=rid,
            run_id=run_id,
            sweep=store.root.name,
            cell_key=f"k{i}",
            created_utc=f"{run_id}-{i:03d}",
            spec_id=["fp32", "int8-static-pc-wsym-minmax", "int4-weightonly-pc-sym"][i % 3],
            latency_ms_p50=float(rng.uniform(1, 2)),
            top1=float(rng.uniform(0.8, 0.9)),
        )
        samples = [rng.integers(900_000, 1_100_000, 20), rng.integers(900_000, 1_100_000, 20)]
        store.write_cell(run_id, i, rec, samples, rng.integers(0, 5, 30), rng.integers(0, 5, 30))
        ids.append(rid)
    if finish:
        store.finish_run(run_id, finished_utc=f"{run_id}-end")
    return ids


def snapshot(store: ResultsStore) -> dict[str, pd.DataFrame]:
    """Everything a reader of the folder gets."""
    return {
        "latest": load_results(store.root),
        "history": load_results(store.root, latest=False),
        "rows": store.rows(),
        "samples": store.samples(),
        "predictions": store.predictions(),
        "samples_of_one": store.samples(["20260102T000000Z-1"]),
    }


def assert_same(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], check_exact=True, obj=key)


def parquet_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


@pytest.fixture
def rerun_store(tmp_path: Path) -> tuple[ResultsStore, list[str]]:
    """Four finished re-runs of the same three cells plus one live run whose parts are still being written."""
    store = ResultsStore(tmp_path / "results" / "sw")
    ids: list[str] = []
    for day in range(1, 5):
        ids += write_run(store, f"2026010{day}T000000Z", seed=day)
    ids += write_run(store, "20260105T000000Z", cells=2, finish=False, seed=5)
    return store, ids


def test_compact_keeps_every_record_and_drops_files(rerun_store: tuple[ResultsStore, list[str]]) -> None:
    store, ids = rerun_store
    before, files_before = snapshot(store), parquet_files(store.root)
    assert len(files_before) == 4 * 3 + 2 * 3  # 3 kinds per finished run, 3 part files per live cell

    s = compact(store)

    assert s.files_before == 18 and s.files_after == 3 + 6 and s.rows == len(ids) == 14 and s.runs == 5
    after = snapshot(store)
    assert_same(before, after)
    assert sorted(after["history"]["record_id"]) == sorted(ids)  # every re-run's rows, not just the latest
    for run in ("20260101T000000Z", "20260103T000000Z", "20260105T000000Z"):
        h_after, h_before = after["history"], before["history"]
        assert h_after[h_after["run_id"] == run].equals(h_before[h_before["run_id"] == run])
        assert len(h_after[h_after["run_id"] == run]) in (2, 3)
    assert len(after["samples"]) == 14 * 2 * 20 and len(after["predictions"]) == 14 * 30
    top = sorted(p.name for p in store.root.glob("*.parquet"))
    assert top == [f"{k}-{COMPACTED}.parquet" for k in ("predictions", "rows", "samples")]
    assert len(list((store.root / "parts" / "20260105T000000Z").glob("*.parquet"))) == 6  # the live run untouched
    folded = store.manifest()["compactions"][0]["folded"]
    assert folded["rows"] == [f"rows-2026010{d}T000000Z.parquet" for d in range(1, 5)]
    assert [r["run_id"] for r in store.manifest()["runs"]] == [f"2026010{d}T000000Z" for d in range(1, 6)]


def test_compact_is_idempotent_and_folds_later_runs(rerun_store: tuple[ResultsStore, list[str]]) -> None:
    store, _ = rerun_store
    compact(store)
    files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in store.root.rglob("*.parquet")}
    manifest = store.manifest()

    again = compact(store)

    assert again.files_before == again.files_after
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in store.root.rglob("*.parquet")} == files
    assert store.manifest() == manifest  # no second "compactions" entry for a no-op

    store.finish_run("20260105T000000Z")  # the live run ends, another runs: both fold into the compacted file
    write_run(store, "20260106T000000Z", seed=6)
    before = snapshot(store)
    compact(store)
    assert_same(before, snapshot(store))
    assert len(list(store.root.glob("*.parquet"))) == 3 and not (store.root / "parts").exists()
    assert len(store.manifest()["compactions"]) == 2


def test_compact_folds_dead_runs_parts(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "sw")
    write_run(store, "20260101T000000Z")
    write_run(store, "20260102T000000Z", finish=False)  # its process is gone (is_alive says so)
    before = snapshot(store)
    s = compact(store, is_alive=lambda entry: False)
    assert s.recovered == ["20260102T000000Z"] and not (store.root / "parts").exists()
    assert_same(before, snapshot(store))
    assert store.manifest()["runs"][1]["interrupted"] is True


def test_reader_during_compact_sees_the_same_rows(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "sw")
    for day in range(1, 10):
        write_run(store, f"2026010{day}T000000Z", cells=6, seed=day)
    expected = load_results(store.root, latest=False)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                df = load_results(store.root, latest=False)
                pd.testing.assert_frame_equal(df, expected)
                assert len(store.samples()) == 9 * 6 * 40
                seen.append(len(df))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    while len(seen) < 2 and not errors:  # readers are running before the compaction starts
        time.sleep(0.01)
    compact(store)
    n = len(seen)
    while len(seen) < n + 2 and not errors:  # ... and after it
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(list(store.root.glob("*.parquet"))) == 3


@pytest.mark.parametrize("where", ["write", "swap", "unlink"])
def test_failure_mid_compact_leaves_a_loadable_store(
    rerun_store: tuple[ResultsStore, list[str]], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The samples kind fails while writing its new file, at the swap, or while removing what it folded."""
    store, _ = rerun_store
    before = snapshot(store)

    def boom(*_a: object, **_k: object) -> None:
        raise OSError("simulated crash")

    if where == "write":
        real = store_mod._write_parquet
        monkeypatch.setattr(
            store_mod, "_write_parquet", lambda df, path: boom() if "samples" in path.name else real(df, path)
        )
    elif where == "swap":
        real_replace = os.replace
        monkeypatch.setattr(
            store_mod.os, "replace", lambda a, b: boom() if "compacting-samples" in str(a) else real_replace(a, b)
        )
    else:
        real_unlink = Path.unlink
        monkeypatch.setattr(
            Path, "unlink", lambda p, **k: boom() if p.name.startswith("samples-") else real_unlink(p, **k)
        )
    with pytest.raises(OSError, match="simulated crash"):
        compact(store)
    monkeypatch.undo()
    assert_same(before, snapshot(store))
    compact(store)  # the next compaction finishes the job
    assert_same(before, snapshot(store))
    assert sorted(p.name for p in store.root.glob("*parquet")) == [
        f"{k}-{COMPACTED}.parquet" for k in ("predictions", "rows", "samples")
    ]
    assert not list(store.root.glob(".compacting-*"))


CRASHER = """
import os, sys, time
from pathlib import Path
from qtbench.harness.run import store as s
real = s._fsync_dir
def slow(path):
    real(path)
    Path(sys.argv[2]).touch()  # the rows file is swapped in; its folded files are not removed yet
    time.sleep(60)
s._fsync_dir = slow
s.compact(s.ResultsStore(sys.argv[1]))
"""


def test_killed_mid_compact_leaves_a_loadable_store(
    rerun_store: tuple[ResultsStore, list[str]], tmp_path: Path
) -> None:
    store, _ = rerun_store
    before = snapshot(store)
    marker = tmp_path / "swapped"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(store.root), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the compacting process never reached the swap"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert (store.root / f"rows-{COMPACTED}.parquet").is_file() and (
        store.root / "rows-20260101T000000Z.parquet"
    ).is_file()
    assert_same(before, snapshot(store))  # the new file and the old ones side by side read as before
    compact(store)
    assert_same(before, snapshot(store))
    assert len(list(store.root.glob("*.parquet"))) == 3


def test_cli_results_compact(rerun_store: tuple[ResultsStore, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    store, _ = rerun_store
    before = snapshot(store)
    assert main(["results", "compact", str(store.root.parent)]) == 0
    out = capsys.readouterr().out
    assert "18 → 9 Parquet file(s)" in out and "14 row(s) of 5 run(s) kept" in out and "dead run" not in out
    assert_same(before, snapshot(store))
    assert main(["results", "compact", str(store.root.parent / "nowhere")]) == 2
    assert "holds no qtbench results" in capsys.readouterr().err

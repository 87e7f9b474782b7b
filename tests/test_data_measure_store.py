from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qtbench.harness.core.config import MeasureSettings
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.errors import DataError, ResultsError
from qtbench.harness.core.records import SCHEMA_VERSION, Record
from qtbench.harness.run.measure import latency_stats, time_inference
from qtbench.harness.run.store import ResultsStore, load_results

from models import make_record


# -- data -----------------------------------------------------------------------------------------------------
def test_npz_and_npy_folder_give_the_same_dataset_and_hash(tmp_path: Path):
    x = np.arange(24, dtype=np.float32).reshape(6, 1, 2, 2)
    y = np.array([0, 1, 0, 1, 1, 0])
    np.savez(tmp_path / "d.npz", input=x, labels=y)
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "input.npy", x)
    np.save(tmp_path / "f" / "labels.npy", y)
    a = load_dataset(tmp_path / "d.npz", ["input"])
    b = load_dataset(tmp_path / "f", ["input"])
    assert a.sha256 == b.sha256 and len(a) == 6 and a.labels.tolist() == y.tolist()
    assert load_dataset(tmp_path / "d.npz", ["input"], limit=4).sha256 != a.sha256
    assert a.head(4).sha256 == load_dataset(tmp_path / "d.npz", ["input"], limit=4).sha256


def test_single_input_takes_the_only_array_whatever_its_name(tmp_path: Path):
    np.savez(tmp_path / "d.npz", images=np.zeros((3, 4), np.float32))
    assert list(load_dataset(tmp_path / "d.npz", ["x"], labels_key=None).inputs) == ["x"]


@pytest.mark.parametrize(
    ("arrays", "inputs", "match"),
    [
        ({"a": np.zeros((2, 1)), "b": np.zeros((2, 1))}, ["x"], "several arrays"),
        ({"x": np.zeros((2, 1)), "labels": np.zeros(3, np.int64)}, ["x"], r"must be integers of shape \(2,\)"),
        ({"x": np.zeros((2, 1)), "labels": np.zeros(2, np.float32)}, ["x"], "must be integers"),
        ({"x": np.zeros((2, 1)), "y": np.zeros((3, 1))}, ["x", "y"], "different sample counts"),
        ({"x": np.zeros((2, 1))}, ["x", "z"], r"no array for model input\(s\) z"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, arrays, inputs, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_dataset(tmp_path / "d.npz", inputs)


# -- measurement ----------------------------------------------------------------------------------------------
def test_stats_from_known_samples():
    s = latency_stats(np.array([1, 2, 3, 4, 10]) * 1_000_000, batch_size=2, cv_threshold=0.5)
    assert s["latency_ms_p50"] == 3.0 and s["latency_ms_min"] == 1.0 and s["latency_ms_max"] == 10.0
    assert s["latency_ms_mean"] == 4.0 and s["fps"] == pytest.approx(2000 / 3)
    assert s["latency_cv"] == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1) / 4)
    assert s["unstable"] is True


def test_loop_honours_warmup_iterations_and_min_duration():
    calls = []
    t = time_inference(lambda f: calls.append(1), {}, MeasureSettings(warmup=5, iterations=7))
    assert len(calls) == 12 and len(t.samples_ns) == 7
    t = time_inference(lambda f: time.sleep(0.002), {}, MeasureSettings(warmup=0, iterations=2, min_duration_s=0.05))
    assert len(t.samples_ns) > 2 and t.wall_s >= 0.05
    assert np.median(t.samples_ns) >= 2_000_000  # the clock sees the sleep
    t = time_inference(
        lambda f: None, {}, MeasureSettings(warmup=0, iterations=1, min_duration_s=10, max_iterations=50)
    )
    assert len(t.samples_ns) == 50


# -- store ----------------------------------------------------------------------------------------------------
def _record(i: int, key: str = "k", status: str = "ok", created: str = "2026-01-01T00:00:00Z") -> Record:
    return make_record(
        record_id=f"r{i}",
        run_id="run1",
        cell_key=key,
        created_utc=created,
        status=status,
        top1=0.5 + i / 100,
        spec_id=f"spec-{key}",  # another cell key here means another cell (another spec), not a re-run of one
    )


def test_store_is_append_only_and_survives_interrupted_runs(tmp_path: Path):
    store = ResultsStore(tmp_path / "s")
    store.record_run({"run_id": "run1"})
    store.write_cell("run1", 0, _record(0, "a"), [np.array([5, 6, 7])], np.array([1, 0]), np.array([1, 1]))
    store.write_cell("run1", 1, _record(1, "b"))
    # not consolidated yet (as after a crash): rows are still readable
    assert sorted(store.rows()["record_id"]) == ["r0", "r1"]
    store.consolidate("run1")
    assert not (tmp_path / "s" / "parts").exists()
    assert sorted(store.rows()["record_id"]) == ["r0", "r1"]
    s = store.samples(["r0"])
    assert s["latency_ns"].tolist() == [5, 6, 7]
    p = store.predictions()
    assert p["correct"].tolist() == [True, False]
    # a later run re-measures cell 'a': history keeps both, the latest view keeps the newer one
    store.record_run({"run_id": "run2"})
    store.write_cell("run2", 0, _record(2, "a", created="2026-02-01T00:00:00Z"))
    store.consolidate("run2")
    assert len(load_results(tmp_path / "s", latest=False)) == 3
    latest = load_results(tmp_path / "s")
    assert sorted(latest["record_id"]) == ["r1", "r2"]
    assert [r["run_id"] for r in store.manifest()["runs"]] == ["run1", "run2"]


def test_newer_schema_is_refused(tmp_path: Path):
    store = ResultsStore(tmp_path / "s")
    store.record_run({"run_id": "r"})
    rec = _record(0)
    store.write_cell("r", 0, rec)
    f = next((tmp_path / "s").glob("parts/r/*.rows.parquet"))
    df = pd.read_parquet(f)
    df["schema_version"] = SCHEMA_VERSION + 1
    df.to_parquet(f)
    with pytest.raises(ResultsError, match="upgrade qtbench"):
        store.rows()


def test_missing_results_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(ResultsError, match="run `qtbench sweep` first"):
        load_results(tmp_path / "nope")
    with pytest.raises(ResultsError, match="holds no qtbench results"):
        load_results(tmp_path)


def test_record_arrays_deduplicate_and_order_like_the_readers(tmp_path: Path):
    """The numpy reader that check and report use returns what samples()/predictions() return: a record written
    twice (a re-folded run) keeps its first file's entries, shuffled rows come back in timing order, repeats
    split, and records not asked for are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qtbench.harness.run.store import record_arrays

    store = ResultsStore(tmp_path / "s")
    store.record_run({"run_id": "run1"})
    store.write_cell("run1", 0, _record(0, "a"), [np.array([5, 6, 7]), np.array([9, 8])], np.array([1, 0, 2]),
                     np.array([1, 1, 2]))  # fmt: skip
    store.write_cell("run1", 1, _record(1, "b"), [np.array([1, 2])], np.array([3]), None)
    store.consolidate("run1")
    first = pq.read_table(tmp_path / "s" / "samples-run1.parquet").to_pandas()
    # a later file holding r0 again with other values, rows shuffled: the first file must win
    dup = first[first.record_id == "r0"].assign(latency_ns=lambda d: d.latency_ns + 1000).sample(frac=1, random_state=0)
    pq.write_table(pa.Table.from_pandas(dup, preserve_index=False), tmp_path / "s" / "samples-run9.parquet")
    shuffled = first.sample(frac=1, random_state=1)
    pq.write_table(pa.Table.from_pandas(shuffled, preserve_index=False), tmp_path / "s" / "samples-run1.parquet")

    got = record_arrays([store], "samples", ["r0", "r1", "missing"])
    lat = got.columns["latency_ns"]
    assert [lat[a:b].tolist() for a, b in got.repeats["r0"]] == [[5, 6, 7], [9, 8]]
    assert [lat[a:b].tolist() for a, b in got.repeats["r1"]] == [[1, 2]]
    assert "missing" not in got.spans
    want = store.samples(["r0"]).sort_values(["repeat", "iteration"])["latency_ns"].tolist()
    assert lat[slice(*got.spans["r0"])].tolist() == want
    preds = record_arrays([store], "predictions", ["r1", "r0"])
    a, b = preds.spans["r0"]
    assert preds.columns["pred"][a:b].tolist() == [1, 0, 2]
    assert preds.columns["correct"][a:b].tolist() == [True, False, True]
    a, b = preds.spans["r1"]
    assert not preds.columns["has_label"][a:b].any()
    some = record_arrays([store], "predictions", ["r1", "r0"], ("correct",))  # only what a check reads
    assert set(some.columns) == {"correct"} and some.spans == preds.spans
    assert some.columns["correct"].tolist() == preds.columns["correct"].tolist()
    with pytest.raises(ValueError, match="no predictions column"):
        record_arrays([store], "predictions", ["r0"], ("logits",))

"""qtbench merge and offline board sweeps: a set union by record id, the same whatever the order or repetition."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from qtbench.harness.cli import main
from qtbench.harness.core.errors import ResultsError
from qtbench.harness.run.merge import merge
from qtbench.harness.run.store import ResultsStore, load_results
from qtbench.harness.run.sweep import run_sweep

from models import tiny_sweep


def _board_sweep(tmp: Path, board: str, specs: list[str]) -> Path:
    cfg = tiny_sweep(tmp, specs=specs, run={"results_dir": str(tmp / board), "timeout_s": 120, "board_id": board})
    run_sweep(cfg)
    return tmp / board / "tiny"


def _content(folder: Path) -> tuple:
    """The merged set: rows (by record id, with the columns that matter), samples, predictions, run ids."""
    store = ResultsStore(folder)
    rows = store.rows().sort_values("record_id")
    samples = store.samples().sort_values(["record_id", "repeat", "iteration"])
    preds = store.predictions().sort_values(["record_id", "sample_index"])
    runs = [r["run_id"] for r in store.manifest()["runs"]]
    return (
        tuple(rows[["record_id", "cell_key", "device", "status", "top1"]].itertuples(index=False)),
        tuple(samples[["record_id", "latency_ns"]].itertuples(index=False)),
        tuple(preds[["record_id", "sample_index", "pred"]].itertuples(index=False)),
        tuple(runs),
    )


@pytest.fixture(scope="module")
def boards(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("boards")
    a = _board_sweep(tmp, "board-a", ["fp32", "int8-static-pc-wsym-minmax"])
    b = _board_sweep(tmp, "board-b", ["fp32"])
    # board b again with one more spec: a second run in the same folder
    cfg = tiny_sweep(
        tmp,
        specs=["fp32", "int8-dynamic-pc-wsym"],
        run={"results_dir": str(tmp / "board-b"), "timeout_s": 120, "board_id": "board-b"},
    )
    run_sweep(cfg)
    return tmp, a, b


def test_board_id_is_the_device_and_part_of_the_cell_key(boards):
    _tmp, a, b = boards
    ra, rb = load_results(a), load_results(b)
    assert set(ra["device"]) == {"board-a"} and set(rb["device"]) == {"board-b"}
    assert len(rb) == 2, "the second run reused board-b's fp32 cell and measured only the new spec"
    fp_a = ra[ra["spec_id"] == "fp32"].iloc[0]
    fp_b = rb[rb["spec_id"] == "fp32"].iloc[0]
    assert fp_a["cell_key"] != fp_b["cell_key"], "same cell on two boards: two keys"
    assert fp_a["top1"] == fp_b["top1"]  # ORT CPU fp32 is deterministic
    assert ResultsStore(a).manifest()["runs"][0]["board_id"] == "board-a"


def test_merge_is_idempotent_and_order_independent(boards, tmp_path: Path):
    _tmp, a, b = boards
    s1 = merge(tmp_path / "ab", [a, b])
    assert s1[0].rows_added == 4 and s1[0].runs_added == 3 and s1[0].samples_added > 0
    merge(tmp_path / "ba", [b, a])
    one = _content(tmp_path / "ab")
    assert one == _content(tmp_path / "ba")
    files = sorted(p.name for p in (tmp_path / "ab").glob("*.parquet"))
    again = merge(tmp_path / "ab", [a, b, a])
    assert sum(s.rows_added for s in again) == 0 and again[0].rows_present == 6
    assert _content(tmp_path / "ab") == one
    assert sorted(p.name for p in (tmp_path / "ab").glob("*.parquet")) == files, "a repeated merge writes nothing"
    # merging a merge into another merge changes nothing either
    merge(tmp_path / "ba", [tmp_path / "ab"])
    assert _content(tmp_path / "ba") == one
    df = load_results(tmp_path / "ab")
    assert sorted(df["device"]) == ["board-a", "board-a", "board-b", "board-b"]
    assert len(one[1]) == 4 * 10 and len(one[2]) == 4 * 64  # 10 timed iterations, 64 eval samples per row


def test_merge_into_a_store_that_already_has_part_of_a_run(boards, tmp_path: Path):
    _tmp, a, b = boards
    out = tmp_path / "out"
    shutil.copytree(a, out)
    rows = ResultsStore(out).rows()
    # drop one row of a's run from the copy: the merge brings exactly that one back
    run_file = next(out.glob("rows-*.parquet"))
    rows[rows["record_id"] != rows["record_id"].iloc[0]].to_parquet(run_file, index=False)
    s = merge(out, [b, a])
    assert s[0].rows_added == 1 + 2 and s[0].rows_present == 1
    assert _content(out) == _content(merge(tmp_path / "fresh", [a, b])[0].out)


def test_merge_a_folder_of_sweep_folders_and_the_cli(boards, tmp_path: Path, capsys):
    tmp, _a, _b = boards
    assert main(["merge", str(tmp_path / "all"), str(tmp / "board-a"), str(tmp / "board-b")]) == 0
    assert "+4 row(s)" in capsys.readouterr().out
    assert len(load_results(tmp_path / "all" / "tiny")) == 4
    assert main(["merge", str(tmp_path / "all"), str(tmp / "board-a")]) == 0
    assert "+0 row(s), 2 already present" in capsys.readouterr().out


def test_merge_refuses_what_is_not_results(boards, tmp_path: Path):
    _tmp, a, _b = boards
    with pytest.raises(ResultsError, match="does not exist"):
        merge(tmp_path / "o", [tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="holds no qtbench results"):
        merge(tmp_path / "o", [tmp_path / "empty"])
    merge(tmp_path / "one", [a])
    with pytest.raises(ResultsError, match=r"pass .* as OUT"):
        merge(tmp_path / "one", [a.parent])
    newer = tmp_path / "newer"
    shutil.copytree(a, newer)
    m = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**m, "schema_version": 99}))
    with pytest.raises(ResultsError, match="upgrade qtbench"):
        merge(tmp_path / "o2", [newer])


def test_cli_board_id_flag_and_its_conflict_with_a_fleet(tmp_path: Path, capsys):
    import yaml

    cfg = tiny_sweep(tmp_path, specs=["fp32"])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(path), "--board-id", "jetson-01", "--no-report", "-q"]) == 0
    assert set(load_results(tmp_path / "results" / "tiny")["device"]) == {"jetson-01"}
    assert main(["sweep", str(path), "--board-id", "x", "--fleet", "auto", "--no-report", "-q"]) == 2
    assert "--board-id" in capsys.readouterr().err
    assert main(["sweep", str(path), "--board-id", "bad id", "--no-report", "-q"]) == 2
    assert "run.board_id" in capsys.readouterr().err


def test_conflicting_records_resolve_the_same_in_any_order_and_are_listed(boards, tmp_path: Path, capsys):
    """One record id, two contents (a copied folder edited): the newer measurement wins whatever the order, the
    other version is kept under conflicts/, and the CLI lists the conflict with what differs."""
    _tmp, a, _b = boards
    edited = tmp_path / "edited"
    shutil.copytree(a, edited)
    run_file = next(edited.glob("rows-*.parquet"))
    rows = pd.read_parquet(run_file)
    rid = rows["record_id"].iloc[0]
    original_top1 = float(rows.loc[0, "top1"])
    rows.loc[0, "top1"] = 0.01
    rows.loc[0, "created_utc"] = "2099-01-01T00:00:00Z"  # re-measured later
    rows.to_parquet(run_file, index=False)
    s_ab = merge(tmp_path / "ab", [a, edited])[0]
    s_ba = merge(tmp_path / "ba", [edited, a])[0]
    for out, s in ((tmp_path / "ab", s_ab), (tmp_path / "ba", s_ba)):
        df = load_results(out)
        assert float(df.loc[df["record_id"] == rid, "top1"].iloc[0]) == pytest.approx(0.01)
        assert len(s.conflicts) == 1 and rid in s.conflicts[0] and "top1" in s.conflicts[0]
        kept = pd.read_parquet(out / "conflicts" / "rows.parquet")
        assert kept["record_id"].tolist() == [rid] and float(kept["top1"].iloc[0]) == pytest.approx(original_top1)
        assert len(ResultsStore(out).samples([rid])) == 10  # the winner's raw latencies, once
    assert _content(tmp_path / "ab") == _content(tmp_path / "ba")
    again = merge(tmp_path / "ab", [a, edited])[0]
    assert again.conflicts and again.rows_added == 0  # listed again, nothing changes
    assert _content(tmp_path / "ab") == _content(tmp_path / "ba")
    assert main(["merge", str(tmp_path / "cli"), str(edited), str(a)]) == 0
    out = capsys.readouterr().out
    assert "1 record(s) differ" in out and "newest measurement wins" in out and "top1" in out

"""Fleet sweeps on a simulated Ray cluster: three nodes on this machine, each advertising one board resource.

Skipped with the reason when Ray (qtbench[fleet]) is not installed. One cluster serves the module; the test that
kills a board runs last.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import parse_sweep
from harness.errors import ConfigError
from harness.fleet import RayExecutor, load_fleet
from harness.store import load_results
from harness.sweep import run_sweep

from models import tiny_sweep

BACKENDS = [{"name": "ort", "options": {"threads": 1}}, {"name": "ort", "label": "ort-b", "options": {"threads": 1}}]


def test_harness_does_not_import_ray():
    code = "import sys, harness.cli, harness.sweep, harness.merge; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_fleet_file_errors(tmp_path: Path):
    assert load_fleet("ray://head:10001").address == "ray://head:10001"
    with pytest.raises(ConfigError, match="does not exist"):
        load_fleet("fleet.yaml", tmp_path)
    (tmp_path / "f.yaml").write_text("boards: {x: {backend: [ort]}}")
    with pytest.raises(ConfigError, match=r"boards\.x: expected keys resource, backends"):
        load_fleet("f.yaml", tmp_path)
    (tmp_path / "f.yaml").write_text("boards: {x: {backends: ort}}")
    with pytest.raises(ConfigError, match=r"boards\.x\.backends: a list"):
        load_fleet("f.yaml", tmp_path)
    (tmp_path / "f.yaml").write_text("address: auto\nboards: {rk3588-01: {backends: [ort, rknn]}, j: null}")
    fleet = load_fleet("f.yaml", tmp_path)
    assert [(b.id, b.resource, b.backends) for b in fleet.boards] == [
        ("rk3588-01", "board:rk3588-01", ("ort", "rknn")),
        ("j", "board:j", None),
    ]
    with pytest.raises(ConfigError, match=r"run\.fleet: run\.executor is ray but no fleet"):
        run_sweep(tiny_sweep(tmp_path, run={"results_dir": str(tmp_path / "r"), "executor": "ray"}))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'qtbench[fleet]'")
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("fleet")
    old = os.environ.get("QTBENCH_FLEET_DIR")
    os.environ["QTBENCH_FLEET_DIR"] = str(tmp / "boards")  # the nodes (and their workers) inherit it
    small = {"object_store_memory": 80 << 20, "num_cpus": 0}  # as the README advises for boards
    c = Cluster(
        initialize_head=True,
        head_node_args={
            **small,
            "resources": {"board:a": 1},
            "include_dashboard": False,
            # a killed node is declared dead after ~1.5 s instead of the default ~30 s
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3},
        },
    )
    nodes = {b: c.add_node(**small, resources={f"board:{b}": 1}) for b in ("b", "c")}
    ray.init(address=c.address, log_to_driver=False, logging_level="warning")
    yield c, nodes, tmp
    ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("QTBENCH_FLEET_DIR", None)
    else:
        os.environ["QTBENCH_FLEET_DIR"] = old


def _fleet_file(tmp: Path, boards: dict[str, list[str]]) -> Path:
    path = tmp / f"fleet-{len(list(tmp.glob('fleet-*')))}.yaml"
    path.write_text(yaml.safe_dump({"boards": {b: {"backends": offered} for b, offered in boards.items()}}))
    return path


def _intervals_overlap(spans: list[tuple[int, int]]) -> bool:
    spans = sorted(spans)
    return any(b0 < a1 for (_a0, a1), (b0, _b1) in itertools.pairwise(spans))


@pytest.mark.slow
def test_fleet_sweep_is_the_boards_local_sweeps_exclusive_and_resumable(cluster, capsys):
    import ray

    _c, _nodes, tmp = cluster
    fleet = _fleet_file(tmp, {"a": ["ort"], "b": ["ort"], "c": ["ort", "ort-b"]})  # only c offers ort-b
    cfg = tiny_sweep(tmp, backends=BACKENDS, run={"results_dir": str(tmp / "fleet-results"), "timeout_s": 120})
    cfg["run"].update(executor="ray", fleet=str(fleet))
    # another user's job that wants board c: Ray must run it before or after our cells there, never beside one
    foreign = ray.remote(lambda: (time.perf_counter_ns(), time.sleep(1.0), time.perf_counter_ns()))
    executor = RayExecutor.from_sweep(parse_sweep(cfg))
    t0 = time.perf_counter()
    done = threading.Event()
    refs = []

    def other_user() -> None:
        while not executor.intervals and not done.is_set():  # once our first cells have returned
            time.sleep(0.05)
        refs.append(foreign.options(num_cpus=0, resources={"board:c": 1}).remote())

    threading.Thread(target=other_user, daemon=True).start()
    df = run_sweep(cfg, executor=executor)
    done.set()
    wall = time.perf_counter() - t0
    assert sorted(zip(df["device"], df["backend"], df["spec_id"], strict=True)) == sorted(
        (b, k, s)
        for b, ks in (("a", ["ort"]), ("b", ["ort"]), ("c", ["ort", "ort-b"]))
        for k in ks
        for s in ("fp32", "int8-static-pc-wsym-minmax")
    )
    assert set(df["status"]) == {"ok"} and set(df["numbers"]) == {"measured"}

    # the same cells run here as board c's own sweep: same keys, statuses and fidelity numbers; boards a and b
    # (ort only) match c's ort rows number for number (ORT's CPU kernels are deterministic)
    local = run_sweep(tiny_sweep(tmp, backends=BACKENDS, run={"results_dir": str(tmp / "local-c"), "board_id": "c"}))
    cols = ["status", "top1", "top1_agreement", "kl_fp", "sqnr_db", "eval_samples"]
    mine = df[df["device"] == "c"].sort_values("cell_key")
    local = local.sort_values("cell_key")
    assert list(mine["cell_key"]) == list(local["cell_key"])
    assert mine[cols].values.tolist() == local[cols].values.tolist()
    local_ort = local[local["backend"] == "ort"].sort_values("spec_id")[cols].values.tolist()
    for board in "ab":
        assert df[df["device"] == board].sort_values("spec_id")[cols].values.tolist() == local_ort, board

    # exclusivity: per board, no two cells' board time overlaps, and the foreign job did not run beside ours
    by_board: dict[str, list[tuple[int, int]]] = {}
    for iv in executor.intervals:
        by_board.setdefault(iv.board, []).append(iv.timed_ns)
    assert {b: len(v) for b, v in by_board.items()} == {"a": 2, "b": 2, "c": 4}
    assert not any(_intervals_overlap(v) for v in by_board.values())
    assert refs, "the foreign job was submitted"
    f0, _none, f1 = ray.get(refs[0])
    assert not _intervals_overlap([*by_board["c"], (f0, f1)]), "another job ran on board c beside a timed cell"

    # re-submitting (here through the CLI: --fleet FILE) measures nothing
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump({**cfg, "run": {"results_dir": cfg["run"]["results_dir"]}}))
    assert main(["sweep", str(path), "--fleet", str(fleet), "--no-report"]) == 0
    assert capsys.readouterr().out.count(" reused ") == 8
    assert len(load_results(tmp / "fleet-results" / "tiny", latest=False)) == 8
    Path(tmp / "timings.json").write_text(json.dumps({"fleet_sweep_s": wall}))


@pytest.mark.slow
def test_fleet_status_shows_each_board(cluster, capsys):
    _c, _nodes, tmp = cluster
    fleet = _fleet_file(tmp, {"a": ["ort"], "b": ["ort"], "c": ["ort", "ort-b"], "gone": ["ort"]})
    assert main(["fleet", "status", "--fleet", str(fleet), "--backends", "ort", "nosuch", "--json"]) == 0
    rows = {r["board"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gone"]["state"].startswith("absent")
    for b in "abc":
        r = rows[b]
        assert r["state"] == "idle" and r["available"] == ["ort"] and "probe failed" in r["backends"]["nosuch"]
        assert r["python"] == sys.version.split()[0] and r["ray"] and r["qtbench"]
    assert len({rows[b]["node_id"] for b in "abc"}) == 3


@pytest.mark.slow
def test_a_board_killed_mid_cell_is_board_lost_and_the_rest_finish(cluster):
    c, nodes, tmp = cluster
    fleet = _fleet_file(tmp, {"a": ["ort"], "b": ["ort", "ort-b"], "c": ["ort"]})
    cfg = tiny_sweep(
        tmp,
        name="kill",
        backends=BACKENDS,
        specs=["fp32"],
        measure={"warmup": 2, "iterations": 10, "min_duration_s": 3.0},
        run={"results_dir": str(tmp / "kill-results"), "executor": "ray", "fleet": str(fleet)},
    )
    marker = tmp / "boards" / "b" / "current-cell.json"
    killed: list[float] = []

    def killer() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # well inside its 3 s timed loop
        killed.append(time.perf_counter())
        c.remove_node(nodes["b"], allow_graceful=False)

    threading.Thread(target=killer, daemon=True).start()
    events: list = []
    df = run_sweep(cfg, progress=lambda e: events.append((time.perf_counter(), e)))
    assert killed, "board b never started a cell"
    rows = {(r.device, r.backend): r for r in df.itertuples()}
    assert rows[("a", "ort")].status == "ok" and rows[("c", "ort")].status == "ok"
    lost = [rows[("b", "ort")], rows[("b", "ort-b")]]
    assert [r.status for r in lost] == ["failed", "failed"]
    assert all(r.status_message.startswith("board lost: b") for r in lost)
    assert "before this cell started" in lost[1].status_message  # queued behind the killed one
    seen = next(t for t, e in events if e.label.startswith("b ×"))
    Path(tmp / "kill.json").write_text(
        json.dumps({"detected_after_s": seen - killed[0], "msg": lost[0].status_message})
    )
    assert seen - killed[0] < 30

"""Fleet sweeps on a simulated Ray cluster: three board nodes on this machine, each advertising one board
resource, and a compile host advertising ``toolchain:x86``.

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

import numpy as np
import pytest
import yaml

from qtbench.harness.cli import main
from qtbench.harness.core.config import parse_sweep
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.run.fleet import RayExecutor, _evict, fleet_status, host_dir, load_fleet
from qtbench.harness.run.manifest import open_run
from qtbench.harness.run.merge import merge
from qtbench.harness.run.plan import plan
from qtbench.harness.run.store import load_results
from qtbench.harness.run.sweep import run_sweep

from models import tiny_sweep

HOST = "toolchain:x86"
FIX = Path(__file__).parent / "fixtures"
BACKENDS = [{"name": "ort", "options": {"threads": 1}}, {"name": "ort", "label": "ort-b", "options": {"threads": 1}}]


def test_harness_does_not_import_ray():
    code = "import sys, qtbench.harness.cli, qtbench.harness.run.sweep, qtbench.harness.run.merge; "
    code += "sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_fleet_file_errors(tmp_path: Path):
    assert load_fleet("ray://head:10001").address == "ray://head:10001"
    with pytest.raises(ConfigError, match="does not exist"):
        load_fleet("fleet.yaml", tmp_path)
    (tmp_path / "f.yaml").write_text("boards: {x: {backend: [ort]}}")
    with pytest.raises(ConfigError, match=r"boards\.x: expected keys resource, backends, compile_on"):
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
    nodes["host"] = c.add_node(**small, resources={HOST: 2})  # a compile host: two compiles at a time
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

    # the fleet's folder and board c's own (offline) folder merge by record id: idempotent, in any order, and
    # the merged set's latest rows are the fleet's cells (c's local cells have the same keys)
    fleet_dir, local_dir = tmp / "fleet-results" / "tiny", tmp / "local-c" / "tiny"
    merge(tmp / "merged-1", [fleet_dir, local_dir])
    again = merge(tmp / "merged-1", [local_dir, fleet_dir])
    assert [(s.rows_added, s.samples_added, s.predictions_added, s.runs_added) for s in again] == [(0, 0, 0, 0)]
    merge(tmp / "merged-2", [local_dir, fleet_dir])
    sets = [load_results(tmp / d, latest=False) for d in ("merged-1", "merged-2")]
    assert sorted(sets[0]["record_id"]) == sorted(sets[1]["record_id"])
    assert len(sets[0]) == 8 + 4 and set(load_results(tmp / "merged-1")["cell_key"]) == set(df["cell_key"])


def test_inputs_are_evicted_least_recently_used_but_never_while_held(tmp_path: Path):
    import fcntl

    inputs = tmp_path / "inputs"
    for i, name in enumerate(("old", "held", "new")):
        (inputs / name).mkdir(parents=True)
        (inputs / name / "f.bin").write_bytes(b"x" * 1000)
        os.utime(inputs / name, (1000 + i, 1000 + i))
    (inputs / ".dead.999999999.1.tmp").mkdir()  # an unpack whose process is gone
    with open(inputs / "held.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # a task on this board or host uses it now
        assert _evict(inputs, keep=2000) == ["old"]
        assert _evict(inputs, keep=0) == ["new"]
    assert sorted(p.name for p in inputs.iterdir() if p.is_dir()) == ["held"]
    assert _evict(inputs, keep=0) == ["held"]


@pytest.mark.slow
def test_compile_on_a_host_class_and_measure_from_the_shipped_artifact(cluster):
    import ray

    _c, _nodes, tmp = cluster
    host_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and HOST in n["Resources"])
    fleet = _fleet_file(tmp, {"a": ["ort"], "b": ["ort"]})
    cfg = tiny_sweep(tmp, run={"results_dir": str(tmp / "host-results"), "timeout_s": 120})
    cfg["run"].update(executor="ray", fleet=str(fleet), compile_on="toolchain:nosuch")
    with pytest.raises(ConfigError, match=r"run\.compile_on: no live node advertises toolchain:nosuch"):
        RayExecutor.from_sweep(parse_sweep(cfg))  # refused before anything is written
    cfg["run"]["compile_on"] = HOST
    executor = RayExecutor.from_sweep(parse_sweep(cfg))
    df = run_sweep(cfg, executor=executor)
    assert len(df) == 4 and set(df["status"]) == {"ok"}
    for r in df.itertuples():
        said = json.loads(r.backend_extra)["compiled_on"]
        assert said["where"] == "host" and said["node_id"] == host_node and said["board_cache_hit"], said
        assert "compiled on host" in r.notes and "the board loaded it from its cache" in r.notes
    # one compile per artifact, shared by both boards; the int8 one was built (not a cache hit) on the host
    assert sorted((m["status"], m["cache_hit"]) for m in executor.compiles) == [("ok", False), ("ok", True)]
    int8 = df[df["spec_id"] != "fp32"]
    assert not int8["cache_hit"].any() and (int8["compile_s"] > 0).all()
    key = next(m["artifact_key"] for m in executor.compiles if not m["cache_hit"])
    for where in (host_dir(HOST), tmp / "boards" / "a", tmp / "boards" / "b"):
        assert (where / "cache" / "artifacts" / "ort" / key / "notes.json").is_file(), where
    # the same cells compiled and measured on the board itself: same keys, same fidelity numbers
    cfg["run"].update(results_dir=str(tmp / "onboard-results"), compile_on="board")
    cfg["run"]["boards"] = ["a"]
    onboard = run_sweep(cfg).sort_values("spec_id")
    mine = df[df["device"] == "a"].sort_values("spec_id")
    cols = ["cell_key", "status", "top1", "top1_agreement", "kl_fp", "sqnr_db"]
    assert mine[cols].values.tolist() == onboard[cols].values.tolist()
    assert {json.loads(x)["compiled_on"]["where"] for x in onboard["backend_extra"]} == {"board"}


@pytest.mark.slow
def test_side_files_travel_with_the_model_and_key_its_cells(cluster):
    import shutil

    import onnx

    _c, _nodes, tmp = cluster
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT: pip install 'qtbench[tflite]'")
    models = tmp / "side-models"
    (models / "weights").mkdir(parents=True)
    for f in ("tiny.onnx", "tiny.float32.tflite"):
        shutil.copy(FIX / f, models / f)
    ext = onnx.load(str(FIX / "tiny.onnx"))  # weights in a file whose name is not <stem>.*
    onnx.save_model(ext, str(models / "ext.onnx"), save_as_external_data=True, location="weights/w.bin")
    cfg = tiny_sweep(
        tmp,
        name="side",
        models=[{"path": str(models / "tiny.onnx"), "name": "tiny"}, {"path": str(models / "ext.onnx"), "name": "ext"}],
        backends=[{"name": "tflite", "options": {"threads": 1}}, {"name": "ort", "options": {"threads": 1}}],
        specs=["fp32"],
        exclude=[{"model": "tiny", "backend": "ort"}, {"model": "ext", "backend": "tflite"}],
        run={"results_dir": str(tmp / "side-results"), "timeout_s": 120},
    )
    cfg["run"].update(executor="ray", fleet=str(_fleet_file(tmp, {"c": ["ort", "tflite"]})))
    df = run_sweep(cfg).set_index("model")
    assert set(df["status"]) == {"ok"}, df["status_message"].tolist()
    assert "pre-converted tiny.float32.tflite" in df.loc["tiny", "notes"]  # the shipped file ran on the board
    # keys as board c's own sweep plans them, with the .tflite and the external weights hashed in
    local = parse_sweep({**cfg, "run": {"results_dir": str(tmp / "side-local"), "board_id": "c"}})
    assert {c.base["model"]: c.key for c in plan(open_run(local))} == df["cell_key"].to_dict()
    # a replaced side file is another cell: both are measured again, the rest of the folder is kept
    shutil.copy(FIX / "tiny.float16.tflite", models / "tiny.float32.tflite")
    w = models / "weights" / "w.bin"
    (np.fromfile(w, np.float32) * 0.5).tofile(w)
    again = run_sweep(cfg)
    new = again[~again["cell_key"].isin(df["cell_key"])]
    assert sorted(new["model"]) == ["ext", "tiny"] and set(again["status"]) == {"ok"}
    # scored against the new weights' FP32 outputs, not the cached ones of the old weights
    assert new.set_index("model").loc["ext", "kl_fp"] < 1e-6
    assert len(load_results(tmp / "side-results" / "side", latest=False)) == 4


@pytest.mark.slow
def test_a_board_another_job_holds_is_waited_for_a_bounded_time_when_planning(cluster):
    import ray

    _c, _nodes, tmp = cluster
    started, release = tmp / "hold-started", tmp / "hold-release"

    def hold(started: str, release: str) -> None:  # another user's job on board c, until the test lets go
        Path(started).touch()
        deadline = time.monotonic() + 120
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    held = ray.remote(hold).options(num_cpus=0, resources={"board:c": 1}).remote(str(started), str(release))
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the other job never started on board c"
    status = {r["board"]: r for r in fleet_status(load_fleet(str(_fleet_file(tmp, {"c": ["ort"]}))), wait_s=5)}
    assert status["c"]["state"].startswith("busy")
    fleet = _fleet_file(tmp, {"b": ["ort"], "c": ["ort"]})
    cfg = tiny_sweep(tmp, name="busy", specs=["fp32"], run={"results_dir": str(tmp / "busy-results")})
    cfg["run"].update(executor="ray", fleet=str(fleet), board_wait_s=1.0, timeout_s=60)
    df = run_sweep(cfg).set_index("device")  # returns while the other job still holds c (until release)
    assert ray.wait([held], timeout=0)[0] == [], "the other job ended early: nothing was proven"
    assert df.loc["b", "status"] == "ok" and df.loc["c", "status"] == "unavailable"
    msg = df.loc["c", "status_message"]
    assert "board c busy" in msg and "run.board_wait_s" in msg and "a re-run measures" in msg
    release.touch()
    ray.get(held)
    events: list = []
    run_sweep(cfg, progress=events.append)  # the board is free again: its cell is measured, b's reused
    assert sorted((e.label.split(" × ")[0], e.status) for e in events) == [("b", "reused"), ("c", "ok")]


@pytest.mark.slow
def test_fleet_status_shows_each_board(cluster, capsys):
    _c, _nodes, tmp = cluster
    fleet = _fleet_file(tmp, {"a": ["ort"], "b": ["ort"], "c": ["ort", "ort-b"], "gone": ["ort"]})
    for _ in range(10):  # the previous test's sweep may still be handing its board back: wait for it, briefly
        assert main(["fleet", "status", "--fleet", str(fleet), "--backends", "ort", "nosuch", "--json"]) == 0
        rows = {r["board"]: r for r in json.loads(capsys.readouterr().out)}
        if not any(rows[b]["state"].startswith("busy") for b in "abc"):
            break
        time.sleep(1)
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

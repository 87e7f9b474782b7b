"""Wall time of the demo's timed cells (seed-0 checkpoints, ort) on a simulated 3-board Ray fleet vs the same
cells run here by the local executor, and the per-cell overhead the Ray executor adds; the fleet runs twice,
compiling on the boards and compiling on a host class (``run.compile_on``, a fourth node) with the artifacts
shipped to the boards.

Simulated: the three "boards" are Ray nodes on this one machine (``ray.cluster_utils.Cluster``), so they share
its cores; the figures measure the executor's overhead, not a fleet's speed-up. Needs ``qtbench[fleet]``.

    python benchmarks/fleet_overhead.py [--out fleet_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def demo_cells(results: Path) -> dict:
    """The bundled demo restricted to its timed seed-0 models on ONNX Runtime (every spec of the demo)."""
    from qtbench.harness.core.config import load_sweep
    from qtbench.harness.demo import demo_config_path

    cfg = load_sweep(demo_config_path()).to_dict()
    base = cfg.pop("base_dir")
    cfg["models"] = [m for m in cfg["models"] if m.get("timing", True)]
    for m in cfg["models"]:
        m["path"] = str(Path(base) / m["path"])
    for k in ("evaluation", "calibration"):
        cfg[k]["path"] = str(Path(base) / cfg[k]["path"])
    cfg["backends"] = [b for b in cfg["backends"] if b["name"] == "ort"]
    cfg["include"], cfg["exclude"] = [], []
    cfg["run"] = {**cfg["run"], "results_dir": str(results), "cache_dir": None}
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qtbench-fleet-"))
    os.environ["QTBENCH_FLEET_DIR"] = str(tmp / "boards")
    import ray
    from ray.cluster_utils import Cluster

    from qtbench.harness.run.fleet import Board, Fleet, RayExecutor
    from qtbench.harness.run.sweep import run_sweep

    boards = ("a", "b", "c")
    out: dict = {"simulated": "3 Ray nodes on one machine", "cpus": os.cpu_count()}
    t = time.perf_counter()
    small = {"object_store_memory": 80 << 20, "num_cpus": 1}
    cluster = Cluster(
        initialize_head=True, head_node_args={**small, "resources": {"board:a": 1}, "include_dashboard": False}
    )
    for b in boards[1:]:
        cluster.add_node(**small, resources={f"board:{b}": 1})
    cluster.add_node(**small, resources={"toolchain:x86": 2})  # the compile host: two compiles at a time
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    out["cluster_start_s"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        local_rows = []
        for b in boards:
            cfg = demo_cells(tmp / f"local-{b}")
            cfg["run"]["board_id"] = b
            local_rows.append(run_sweep(cfg))
        out["local_s"] = time.perf_counter() - t
        out["cells"] = sum(len(df) for df in local_rows)
        local_cell_s = sum(float(df["cell_wall_s"].fillna(0).sum()) for df in local_rows)
        out["local_overhead_s_per_cell"] = (out["local_s"] - local_cell_s) / out["cells"]

        fleet = Fleet(None, tuple(Board(b, f"board:{b}") for b in boards))
        outcomes = []
        for variant, compile_on in (("fleet", "board"), ("fleet_host_compile", "toolchain:x86")):
            for b in boards:  # every variant starts with empty board caches (the nodes share this disk)
                shutil.rmtree(tmp / "boards" / b / "cache", ignore_errors=True)
            executor = RayExecutor(fleet)
            cfg = demo_cells(tmp / variant)
            cfg["run"]["compile_on"] = compile_on
            t = time.perf_counter()
            df = run_sweep(cfg, executor=executor)
            out.update(_fleet_figures(variant, time.perf_counter() - t, df, executor, boards, out["cells"]))
            outcomes.append(sorted(zip(df["cell_key"], df["status"], strict=True)))
        assert outcomes[0] == outcomes[1], "compiling on the host changed a cell's key or status"
        out["fleet_vs_local"] = out["fleet_s"] / out["local_s"]
        out["fleet_host_compile_vs_local"] = out["fleet_host_compile_s"] / out["local_s"]
        t = time.perf_counter()
        run_sweep(demo_cells(tmp / "fleet"), executor=RayExecutor(fleet))
        out["fleet_resubmit_s"] = time.perf_counter() - t
    finally:
        ray.shutdown()
        cluster.shutdown()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if x == x)  # NaN: a cell skipped inside the board task has no cell time
    return xs[len(xs) // 2] if xs else float("nan")


def _fleet_figures(variant: str, wall: float, df, executor, boards: tuple[str, ...], cells: int) -> dict:
    """Wall time, Ray's dispatch and the isolation cost per measured cell, the busiest board, and (when a host
    compiled) how many artifacts it built and how long the compile phase ran."""
    assert len(df) == cells and set(df["status"]) <= {"ok", "skipped"}, df["status"].value_counts()
    cell_s = dict(zip(df["device"] + "|" + df["model"] + "|" + df["spec_id"], df["cell_wall_s"], strict=True))
    ivs = executor.intervals
    task_s = [(iv.task_ns[1] - iv.task_ns[0]) / 1e9 for iv in ivs]
    parts = [iv.label.split(" × ") for iv in ivs]  # board × model × backend × spec
    inner = [cell_s[f"{p[0]}|{p[1]}|{p[3]}"] for p in parts]
    out = {
        f"{variant}_s": wall,
        f"{variant}_measured_cells": len(ivs),
        # submit → result minus the task's own time on the board: Ray scheduling, argument and result transfer
        f"{variant}_ray_dispatch_s_per_cell_median": _median([w.wall_s - t for w, t in zip(ivs, task_s, strict=True)]),
        # the task's time minus the cell's own (compile + evaluate + time): unpacking inputs, the child process
        f"{variant}_isolation_s_per_cell_median": _median([t - c for t, c in zip(task_s, inner, strict=True)]),
        f"{variant}_overhead_s_per_cell_median": _median([w.wall_s - c for w, c in zip(ivs, inner, strict=True)]),
        f"{variant}_busiest_board_s": max(sum(iv.wall_s for iv in ivs if iv.board == b) for b in boards),
        f"{variant}_board_compile_s_sum": float(df["compile_s"].fillna(0).sum()) if not executor.compiles else 0.0,
    }
    if executor.compiles:
        ok = [m for m in executor.compiles if m["status"] == "ok"]
        out[f"{variant}_host_compiles"] = len(executor.compiles)
        out[f"{variant}_host_compile_wall_s_sum"] = sum(m["wall_s"] for m in executor.compiles)
        out[f"{variant}_shipped_artifact_bytes"] = sum(m["payload_bytes"] for m in ok)
        hits = [json.loads(x)["compiled_on"].get("board_cache_hit") for x in df["backend_extra"] if x != "{}"]
        out[f"{variant}_board_cache_hits"] = f"{sum(bool(h) for h in hits)}/{len(hits)}"
    return out


if __name__ == "__main__":
    main()

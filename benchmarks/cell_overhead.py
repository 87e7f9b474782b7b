"""Per-cell overhead of a sweep outside the timed loop and the quality pass, with its breakdown.

    python benchmarks/cell_overhead.py [--cells 24] [--rounds 2] [--modes cold,warm]

A sweep of the demo checkpoints on ``ort`` (fp32 and one INT8 spec, artifacts built in the compile phase) with
a fast protocol (5 warm-ups, 50 timed runs, 256 evaluation samples) is run once per mode, modes interleaved over
rounds so drift on a shared machine hits each equally:

- ``cold``: ``run.warm_workers: false`` — a fresh child process per cell (the old behaviour);
- ``warm``: the default — one warm worker process per backend runs consecutive cells.

Per measured cell the parent's wall time between two stored results is split into the row's ``eval_s`` (quality
pass), ``timed_s`` (timed loops, warm-ups included), the rest of the child's ``cell_wall_s`` (opening the
backend, loading the artifact and data) and the parent's share (starting or reaching the child, moving the
result back, writing the row). The target is overhead = wall − eval_s − timed_s ≤ 0.15 s per cell. Rows whose
quality pass ran in the compile phase (``eval_phase: compile``, the default now) count no quality time here.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def sweep_dict(root: Path, cells: int, warm: bool, tag: str) -> dict:
    from qtbench.harness.demo import DEMO_DIR

    models = sorted(p for p in DEMO_DIR.glob("fashion14_resnet_*.onnx"))
    specs = ["fp32", "int8-static-pt-wsym-minmax"]
    per_model = max(1, -(-cells // len(specs)))
    chosen = [models[i % len(models)] for i in range(per_model)]
    return {
        "name": f"overhead-{tag}",
        "models": [
            {
                "name": f"m{i}",
                "path": str(p),
                "evaluation": {"path": str(DEMO_DIR / "fashion14_eval.npz"), "limit": 256},
                "calibration": {"path": str(DEMO_DIR / "fashion14_calib.npz")},
            }
            for i, p in enumerate(chosen)
        ],
        "backends": [{"name": "ort", "options": {"threads": 1}}],
        "specs": specs,
        "measure": {"warmup": 5, "iterations": 50},
        "run": {
            "rerun": True,
            "warm_workers": warm,
            "results_dir": str(root / "results"),
            "cache_dir": str(root / "cache"),
        },
    }


def one(root: Path, cells: int, warm: bool, tag: str) -> dict[str, float]:
    from qtbench.harness.run.sweep import run_sweep

    stamps: list[tuple[float, object]] = []
    t0 = time.perf_counter()
    run_sweep(sweep_dict(root, cells, warm, tag), progress=lambda ev: stamps.append((time.perf_counter(), ev.record)))
    total = time.perf_counter() - t0
    rows = []
    for (t_prev, _), (t, rec) in itertools.pairwise(stamps):  # the first cell also waits for compiles
        if rec is None or rec.status != "ok":
            continue
        wall = t - t_prev
        child = rec.cell_wall_s
        ev = rec.eval_s if rec.eval_phase != "compile" else 0.0  # scored in the compile phase: not in this wall
        rows.append((wall, ev, rec.timed_s, child - ev - rec.timed_s, wall - child))
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    return {
        "cells": len(stamps),
        "total_s": total,
        "wall": med[0],
        "eval": med[1],
        "timed": med[2],
        "child_rest": med[3],
        "parent": med[4],
        "overhead": med[0] - med[1] - med[2],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="cold,warm")
    args = ap.parse_args()
    modes = args.modes.split(",")
    work = Path(tempfile.mkdtemp(prefix="qtbench-overhead-"))
    got: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    try:
        for r in range(args.rounds):
            for m in modes:
                res = one(work / f"{m}{r}", args.cells, m == "warm", f"{m}{r}")
                got[m].append(res)
                print(
                    f"round {r} {m:4s}: {res['cells']} cells in {res['total_s']:.1f} s | per measured cell (median): "
                    f"wall {res['wall']:.3f} s = quality {res['eval']:.3f} + timed {res['timed']:.3f} + "
                    f"child rest {res['child_rest']:.3f} + parent {res['parent']:.3f} -> overhead "
                    f"{res['overhead']:.3f} s"
                )
        if len(modes) == 2:
            a, b = (statistics.median(x["overhead"] for x in got[m]) for m in modes)
            print(f"overhead per cell: {modes[0]} {a:.3f} s, {modes[1]} {b:.3f} s, ratio {b / a:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

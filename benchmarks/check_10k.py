"""`qtbench check` on 10,000 rows per side (target ≤ 10 s): a baseline and a candidate results folder written
through the real store, then ``compare`` with the default gates (top1 -0.5pp, ece +1pp, latency_ms_p50 +5%).

    python benchmarks/check_10k.py [--rows 10000] [--repeats 1] [--keep DIR]

Each row is a cell as ``tests/models.py``'s ``synthetic_results`` writes one (``make_record`` + ``latency_stats``,
lognormal latencies, per-sample predictions), laid out as 50 checkpoints × 4 backends × rows/200 specs with 200
raw latencies and 1,000 predictions per cell; 2 % of the cells are skipped. The candidate is drawn from another
seed, and one cell in ten is 10 % slower and one in twenty-five has a lower top-1 and a higher ECE, so passes, fails and
inconclusive verdicts (and the settling of screened intervals near a boundary) all occur. The cells of a side are
written as one part per kind and folded by the store's own consolidation (``finish_run``): the same files a sweep
leaves, without 10,000 one-row writes. Prints one JSON line: wall seconds of ``compare`` (loading included, the
median of ``--repeats``), rows per side, verdict counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qtbench.harness.analysis.check import run_gates
from qtbench.harness.analysis.gates import load_gates
from qtbench.harness.core.records import Record, to_frame
from qtbench.harness.run.measure import latency_stats
from qtbench.harness.run.store import ResultsStore, _write_parquet, load_results

from models import make_record

RUN_ID = "20260101T000000Z-check10k-000000"
N_LAT, N_PRED = 200, 1000


def write_side(root: Path, rows: int, seed: int, candidate: bool) -> Path:
    """One results folder of ``rows`` cells; ``candidate``: the slowed and less accurate cells described above."""
    rng = np.random.default_rng(seed)
    store = ResultsStore(root)
    store.record_run({"run_id": RUN_ID, "started_utc": "2026-01-01T00:00:00Z", "finished_utc": None})
    labels = np.random.default_rng(99).integers(0, 10, N_PRED)
    backends, precisions = ["ort", "openvino", "tflite", "xnnpack"], ["fp32", "fp16", "int8", "int4"]
    records, samples, preds = [], {}, {}
    for i in range(rows):
        model, backend, spec_i = i % 50, backends[(i // 50) % 4], i // 200
        prec = precisions[spec_i % 4]
        ok = i % 50 != 7
        slow = 1.10 if candidate and i % 10 == 3 else 1.0
        base = (0.1 + 0.05 * (model % 5) + {"fp32": 0.4, "fp16": 0.25, "int8": 0.1, "int4": 0.08}[prec]) * slow
        lat = (rng.lognormal(np.log(base), 0.08, N_LAT) * 1e6).astype(np.int64)
        wrong = 0.12 + (0.02 if prec == "int4" else 0.0) + (0.01 if candidate and i % 25 == 4 else 0.0)
        correct = rng.random(N_PRED) > wrong
        stats = {k: v for k, v in latency_stats(lat).items() if k in Record.__dataclass_fields__} if ok else {}
        rid = f"{seed}-{i:05d}"
        records.append(
            make_record(
                record_id=rid,
                run_id=RUN_ID,
                sweep=root.name,
                cell_key=f"k{i:05d}",
                model=f"resnet-s{model}",
                backend=backend,
                backend_slug=backend,
                backend_version=f"{backend}=1",
                device="x86-host-2c",
                spec_id=f"{prec}-static-pc-wsym-minmax-n{spec_i}",
                precision=prec,
                status="ok" if ok else "skipped",
                status_message="" if ok else f"{backend} has no {prec} kernels for this graph",
                numbers="measured" if ok else "",
                warmup=20,
                min_iterations=N_LAT,
                eval_samples=N_PRED,
                eval_sha256="evalsha",
                top1=float(correct.mean()),
                fp_top1=0.88,
                ece=0.02 + 0.004 * (i % 5) + (0.015 if candidate and i % 25 == 4 else 0.0),
                **stats,
            )
        )
        if ok:
            samples[rid], preds[rid] = lat, np.where(correct, labels, (labels + 1) % 10)
    part = root / "parts" / RUN_ID
    ids = list(samples)
    _write_parquet(to_frame(records), part / "00000.rows.parquet")
    _write_parquet(
        pd.DataFrame(
            {
                "record_id": np.repeat(np.array(ids, dtype=object), N_LAT),
                "repeat": np.zeros(len(ids) * N_LAT, np.int64),
                "iteration": np.tile(np.arange(N_LAT, dtype=np.int64), len(ids)),
                "latency_ns": np.concatenate([samples[r] for r in ids]),
            }
        ),
        part / "00000.samples.parquet",
    )
    pred = np.concatenate([preds[r] for r in ids]).astype(np.int32)
    _write_parquet(
        pd.DataFrame(
            {
                "record_id": np.repeat(np.array(ids, dtype=object), N_PRED),
                "sample_index": np.tile(np.arange(N_PRED, dtype=np.int64), len(ids)),
                "pred": pred,
                "correct": pred == np.tile(labels, len(ids)),
                "has_label": np.ones(len(pred), bool),
            }
        ),
        part / "00000.predictions.parquet",
    )
    store.finish_run(RUN_ID, finished_utc="2026-01-01T01:00:00Z")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="write (or reuse) the two folders here instead of a temporary one")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qtbench-check10k-"))
    try:
        t0 = time.perf_counter()
        sides = []
        for name, seed in (("baseline", 0), ("candidate", 1)):
            root = work / name / "check10k"
            marker = root / ".rows"
            if not (marker.is_file() and marker.read_text() == str(args.rows)):
                shutil.rmtree(root, ignore_errors=True)
                write_side(root, args.rows, seed, candidate=seed == 1)
                marker.write_text(str(args.rows))
            sides.append(root)
        write_s = time.perf_counter() - t0
        gates = load_gates(None)
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            result = run_gates(sides[0], sides[1], gates)
            times.append(time.perf_counter() - t0)
        out = {
            "benchmark": "check_10k",
            "check_s": round(float(np.median(times)), 3),
            "runs_s": [round(t, 3) for t in times],
            "target_s": 10.0,
            "baseline_rows": len(load_results(sides[0])),
            "candidate_rows": len(load_results(sides[1])),
            "gates": [f"{g.metric} {g.rule}" for g in gates],
            "verdicts": len(result.verdicts),
            **result.counts(),
            "write_s": round(write_s, 1),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        }
        print(json.dumps(out))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

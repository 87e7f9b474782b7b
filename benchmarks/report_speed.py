"""`qtbench report` on 1,000 rows (target ≤ 5 s): synthetic rows written through the real store, 200 raw
latency samples and 2,000 predictions each, 5 checkpoints × 2 backends × 100 specs.

    python benchmarks/report_speed.py [--rows 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from qtbench.harness.analysis.report import build_report
from qtbench.harness.core.records import Record
from qtbench.harness.run.measure import latency_stats
from qtbench.harness.run.store import ResultsStore

from models import make_record


def write_rows(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    store = ResultsStore(root / "big")
    store.record_run({"run_id": "r"})
    labels = rng.integers(0, 10, 2000)
    for i in range(n):
        prec = ["fp32", "fp16", "int8", "int4"][i % 4]
        samples = (rng.lognormal(np.log(0.1 + (i % 7) / 10), 0.1, 200) * 1e6).astype(np.int64)
        top1 = 0.88 - (0.01 if prec == "int4" else 0) + rng.normal(0, 0.003)
        bins = {"count": [0.0] * 14 + [2000.0], "confidence": [None] * 14 + [0.95], "accuracy": [None] * 14 + [top1]}
        rec = make_record(
            record_id=f"r{i}",
            run_id="r",
            sweep="big",
            cell_key=f"k{i}",
            model=f"model-{i % 5}",
            backend=["ort", "openvino"][i % 2],
            device="dev",
            spec_id=f"{prec}-spec{i // 10}",
            precision=prec,
            weight_bits=8,
            activation_bits=8,
            scaling="static",
            granularity="per-channel",
            calibration="minmax",
            status="ok" if i % 50 else "skipped",
            numbers="measured",
            top1=top1,
            fp_top1=0.88,
            ece=0.03,
            kl_fp=0.01,
            top1_agreement=0.99,
            reliability=json.dumps(bins),
            **{k: v for k, v in latency_stats(samples).items() if k in Record.__dataclass_fields__},
        )
        store.write_cell("r", i, rec, [samples], rng.integers(0, 10, 2000), labels)
    store.consolidate("r")
    return root / "big"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = write_rows(Path(tmp), args.rows)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            build_report([results], Path(tmp) / "rep")
            times.append(time.perf_counter() - t0)
        size = (Path(tmp) / "rep" / "report.html").stat().st_size
        print(
            f"qtbench report on {args.rows} rows: median {np.median(times):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in times)}), report.html {size / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()

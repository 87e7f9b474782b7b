"""False-alarm rate of `qtbench check` on real A/A comparisons: the same sweep run N times, every run gated
against every other.

    python benchmarks/check_false_alarm.py [--runs 8] [--repeats 3] [--iterations 200] [--out DIR]

Each run is a full `qtbench sweep` (cells in child processes, as a user runs it) of the demo's FP checkpoint on
ONNX Runtime (1 thread) at fp32 and INT8, on 64 evaluation images, into its own results folder; the compiled
artifacts are shared through one cache so later runs only time. Nothing differs between runs but time, so
every failing gate is a false alarm. Each ordered pair (i, j), i ≠ j, is one comparison (gates are one-sided,
so (i, j) and (j, i) test opposite directions; comparisons sharing a run are not independent).

Printed per gate: the rate of `fail` verdicts under the current rule (interval of the gated statistic from a
block bootstrap within runs and a resampling of repeats, wholly past the threshold; a side measured while the
machine was oversubscribed makes it inconclusive), the same without that load guard, and under the rule it
replaced (threshold crossed and a Mann–Whitney U test on per-iteration samples, p < 0.01), on the same data.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

from qtbench.harness.analysis.check import run_gates
from qtbench.harness.analysis.gates import Gate
from qtbench.harness.demo import DEMO_DIR
from qtbench.harness.run.store import load_results, stores_under
from qtbench.harness.run.sweep import run_sweep

GATES = [Gate.parse("latency_ms_p50", "+5%"), Gate.parse("latency_ms_p99", "+10%"), Gate.parse("top1", "-0.5pp")]


def sweep_config(root: Path, index: int, repeats: int, iterations: int) -> dict:
    return {
        "name": f"aa{index:02d}",
        "models": [{"path": str(DEMO_DIR / "fashion14_resnet_fp.onnx"), "name": "resnet-fp"}],
        "evaluation": {"path": str(DEMO_DIR / "fashion14_eval.npz"), "labels": "labels", "limit": 64},
        "calibration": {"path": str(DEMO_DIR / "fashion14_calib.npz")},
        "backends": [{"name": "ort", "options": {"threads": 1}}],
        "specs": ["fp32", "int8-static-pc-wsym-minmax"],
        "measure": {"warmup": 20, "iterations": iterations, "repeats": repeats},
        "device": {"meter": "none"},
        "run": {"results_dir": str(root / "results"), "cache_dir": str(root / "cache"), "timeout_s": 300},
    }


def pooled_samples(folder: Path) -> dict[str, np.ndarray]:
    """spec → every raw latency of the cell (all repeats), for the old Mann–Whitney rule."""
    rows = load_results(folder)
    samples = {}
    for _, r in rows[rows.status == "ok"].iterrows():
        frames = [s.samples([r["record_id"]]) for s in stores_under(folder)]
        samples[r["spec_id"]] = np.concatenate([f["latency_ns"].to_numpy(float) for f in frames if len(f)])
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="measure.repeats per cell")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--out", help="keep the results here (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="qtbench-aa-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        folders, t0 = [], time.perf_counter()
        for i in range(args.runs):
            run_sweep(sweep_config(root, i, args.repeats, args.iterations))
            folders.append(root / "results" / f"aa{i:02d}")
        wall = time.perf_counter() - t0
        pooled = [pooled_samples(f) for f in folders]
        loads = [float(load_results(f)["loadavg_1m_before"].max()) for f in folders]
        medians = np.array([[np.median(p[s]) / 1e3 for s in sorted(p)] for p in pooled])
        new = {g.metric: 0 for g in GATES}
        old = {g.metric: 0 for g in GATES}
        incon = {g.metric: 0 for g in GATES}
        busy = {g.metric: 0 for g in GATES}  # crossed with the whole interval, but a side's machine was oversubscribed
        total = {g.metric: 0 for g in GATES}
        for i, j in itertools.permutations(range(args.runs), 2):
            res = run_gates(folders[i], folders[j], GATES)
            for v in res.verdicts:
                metric = v.gate.split()[0]
                gate = next(g for g in GATES if g.metric == metric)
                spec = v.cell.split(" · ")[-1]
                total[metric] += 1
                new[metric] += v.verdict == "fail"
                incon[metric] += v.verdict == "inconclusive"
                busy[metric] += "oversubscribed" in v.reason
                if metric.startswith("latency"):
                    a, b = pooled[i][spec], pooled[j][spec]  # the old rule: Mann-Whitney U, normal approximation
                    p = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=False).pvalue
                    old[metric] += gate.violated(v.baseline, v.candidate) and p < 0.01
                else:
                    old[metric] += v.verdict == "fail"  # top1 used the same paired bootstrap before
    print(
        f"{args.runs} A/A runs × 2 cells (ort fp32, int8), repeats={args.repeats}, iterations={args.iterations}; "
        f"{wall:.0f} s of sweeps"
    )
    print("median latency per run (µs; fp32, int8):")
    for i, m in enumerate(medians):
        print(f"  run {i:2d}: " + ", ".join(f"{x:.1f}" for x in m))
    print(
        f"{'gate':<24} {'comparisons':>11} {'fail (now)':>11} {'inconclusive':>13} {'of which busy':>14} "
        f"{'fail w/o load guard':>20} {'fail (old MWU rule)':>20}"
    )
    for g in GATES:
        n, m = total[g.metric], g.metric
        print(
            f"{m + ' ' + g.rule:<24} {n:>11} {new[m] / n:>11.1%} {incon[m] / n:>13.1%} {busy[m] / n:>14.1%} "
            f"{(new[m] + busy[m]) / n:>20.1%} {old[m] / n:>20.1%}"
        )
    print(f"1-min load average at the runs' cells: {min(loads):.1f}–{max(loads):.1f}")


if __name__ == "__main__":
    main()

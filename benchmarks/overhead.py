"""Harness overhead: median latency through qtbench.harness.run.measure vs a bare `sess.run` loop, same session,
interleaved.

    python benchmarks/overhead.py [--rounds 15] [--iterations 200]

Both loops call the same ORT session on the same feeds (the demo model, fp32 and int8, 1 thread). Rounds
alternate A/B so drift on a shared machine hits both equally; the figure is the median over rounds of
median(harness) / median(bare). Target ≤ 1.02. A third figure runs the harness loop with the power sampler
thread active (as in a sweep) to show what sampling costs. A third figure runs the harness loop with the power sampler
thread active (as in a sweep) to show what sampling costs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from qtbench.backends.base import ModelInput
from qtbench.backends.ort import OrtBackend
from qtbench.devices.power import PowerSession, choose_meter
from qtbench.harness.core.config import MeasureSettings
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.demo import DEMO_DIR
from qtbench.harness.run.measure import time_inference


def bare_loop(sess, names, feeds, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        sess.run(names, feeds)
        out[i] = clock() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    path = DEMO_DIR / "fashion14_resnet_fp.onnx"
    facts = model_facts(path)
    model = ModelInput(path, "bench", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(DEMO_DIR / "fashion14_calib.npz", facts.input_names, None)
    feeds = load_dataset(DEMO_DIR / "fashion14_eval.npz", facts.input_names).batch(0, 1)
    settings = MeasureSettings(warmup=20, iterations=args.iterations)
    with tempfile.TemporaryDirectory() as tmp:
        for spec_id in ("fp32", "int8-static-pc-wsym-minmax"):
            compiled = OrtBackend({"threads": 1}).compile(model, QuantSpec.parse(spec_id), calib, Path(tmp) / spec_id)
            sess, names = compiled.session, [o.name for o in compiled.session.get_outputs()]
            ratios, p_ratios, h_meds, b_meds = [], [], [], []
            meter, _ = choose_meter("auto")
            for _ in range(args.rounds):
                h = np.median(time_inference(compiled.infer, feeds, settings).samples_ns)
                power = PowerSession(meter)
                p = np.median(time_inference(compiled.infer, feeds, settings, power.start, power.stop).samples_ns)
                bare_loop(sess, names, feeds, settings.warmup)
                b = np.median(bare_loop(sess, names, feeds, settings.iterations))
                ratios.append(h / b)
                p_ratios.append(p / b)
                h_meds.append(h / 1e6)
                b_meds.append(b / 1e6)
            print(
                f"{spec_id:<28} harness p50 {np.median(h_meds):.4f} ms  bare p50 {np.median(b_meds):.4f} ms  "
                f"ratio median {np.median(ratios):.4f} (min {min(ratios):.4f}, max {max(ratios):.4f}); with the "
                f"{meter.name} power sampler running {np.median(p_ratios):.4f}; over {args.rounds} interleaved rounds"
            )
            compiled.close()


if __name__ == "__main__":
    main()

"""Calibration grid cost: 8 static specs through qtbench's shared activation statistics vs ONE plain ORT
``quantize_static`` min-max run, measured side by side in one process.

    python benchmarks/calibration_grid.py [--model resnet50] [--size 224] [--calib 32] [--rounds 1]

The grid is minmax, percentile, entropy and MSE × per-tensor / per-channel (INT8, symmetric weights, asymmetric
activations). qtbench collects the FP32 activation histograms + min/max once per (model, calibration set) and
derives every method's ranges from them; each spec then only writes its QDQ graph. The baseline is what a user
of onnxruntime.quantization does for a single spec. Target: grid / baseline ≤ 1.5. Rounds alternate the two
sides (baseline first) so machine drift hits both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

GRID = [f"int8-static-{g}-wsym-{c}" for c in ("minmax", "percentile", "entropy", "mse") for g in ("pt", "pc")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50", help="harness.zoo model name")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()

    import onnxruntime.quantization as q

    from backends.base import ModelInput
    from backends.ort import OrtBackend, _Reader
    from harness import zoo
    from harness.cell import model_facts
    from harness.data import load_dataset
    from harness.spec import QuantSpec

    work = Path(tempfile.mkdtemp(prefix="qtbench-calgrid-"))
    path = zoo.build(args.model, work / f"{args.model}.onnx", input_size=args.size)
    calib_path = zoo.synthetic_inputs(work / "calib.npz", args.calib, args.size, seed=1)
    facts = model_facts(path)
    model = ModelInput(path, "bench", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(calib_path, facts.input_names, None, role="calibration")
    print(f"{args.model} {args.size}x{args.size}: {path.stat().st_size / 1e6:.1f} MB, {args.calib} calibration images")

    def baseline() -> float:
        out = work / "plain.onnx"
        t0 = time.perf_counter()
        q.quantize_static(
            str(path),
            str(out),
            _Reader(calib, facts.dynamic_batch),
            quant_format=q.QuantFormat.QDQ,
            per_channel=False,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
        return time.perf_counter() - t0

    def grid(r: int) -> tuple[float, list[float]]:
        cache = work / f"cache{r}" / "artifacts" / "ort"
        per = []
        t0 = time.perf_counter()
        for sid in GRID:
            t = time.perf_counter()
            with OrtBackend({"threads": 1}).compile(model, QuantSpec.parse(sid), calib, cache / sid):
                pass
            per.append(time.perf_counter() - t)
        return time.perf_counter() - t0, per

    for r in range(args.rounds):
        b = baseline()
        g, per = grid(r)
        print(f"round {r}: one quantize_static minmax {b:.1f} s | 8-spec grid {g:.1f} s | ratio {g / b:.2f}")
        print("   per spec (first collects the statistics): " + ", ".join(f"{s:.1f}" for s in per))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Calibration grid cost: 8 static specs' ranges from qtbench's shared activation statistics vs ONE plain ORT
``quantize_static`` min-max run, measured side by side in one process.

    python benchmarks/calibration_grid.py [--model resnet50] [--size 224] [--calib 32] [--rounds 1] [--build]

The grid is minmax, percentile, entropy and MSE × per-tensor / per-channel (INT8, symmetric weights, asymmetric
activations). qtbench collects the FP32 activation histograms + min/max once per (model, calibration set) and
derives every method's activation ranges from them (per-tensor, as ORT's QDQ activations are); weights get their
per-tensor and per-output-channel ranges from the initializers. The baseline is what a user of
onnxruntime.quantization does for a single spec (its calibration and its QDQ graph). Target: calibration grid /
baseline ≤ 1.5. The plain FP32 forward pass over the same set is printed too: the baseline's cost moves with
the onnxruntime version, the forward pass is the floor any calibration pays. ``--build`` also times writing the 8
QDQ graphs from the cached ranges (onnxruntime.quantization's graph rewrite, once per spec, sequentially and with
``--workers`` processes as a sweep's compile phase runs them), so the whole cost of a grid is visible too. Rounds
start with the baseline so machine drift hits both sides.
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
    ap.add_argument("--model", default="resnet50", help="qtbench.harness.core.zoo model name")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--build", action="store_true", help="also time writing the 8 QDQ graphs")
    ap.add_argument("--workers", type=int, default=2, help="compile workers for the parallel QDQ build")
    args = ap.parse_args()

    import onnxruntime.quantization as q

    from qtbench.backends import qdq
    from qtbench.backends.base import ModelInput
    from qtbench.harness.core import zoo
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.onnxfacts import model_facts
    from qtbench.harness.core.spec import QuantSpec

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
            qdq.CalibrationReader(calib, facts.dynamic_batch),
            quant_format=q.QuantFormat.QDQ,
            per_channel=False,
            activation_type=q.QuantType.QUInt8,
            weight_type=q.QuantType.QInt8,
            calibrate_method=q.CalibrationMethod.MinMax,
        )
        return time.perf_counter() - t0

    def calibration_grid(r: int) -> tuple[float, list[float]]:
        """Every spec's ranges: activation ranges per method from the shared statistics, weight ranges per
        tensor and per output channel from the initializers."""
        import onnx
        from onnx import numpy_helper

        root = work / f"calgrid{r}" / "artifacts" / "ort"
        per = []
        t0 = time.perf_counter()
        for sid in GRID:
            t = time.perf_counter()
            qdq.static_ranges(model, QuantSpec.parse(sid), calib, root / sid, [])
            per.append(time.perf_counter() - t)
        t = time.perf_counter()
        proto = onnx.load(str(path))
        weights = {n.input[1] for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
        for init in proto.graph.initializer:
            if init.name in weights:
                w = numpy_helper.to_array(init)
                _ = (w.min(), w.max(), w.reshape(w.shape[0], -1).min(axis=1), w.reshape(w.shape[0], -1).max(axis=1))
        per.append(time.perf_counter() - t)
        return time.perf_counter() - t0, per

    def build_grid(r: int, workers: int) -> float:
        """Every spec's QDQ graph written by onnxruntime.quantization from the shared statistics."""
        from concurrent.futures import ProcessPoolExecutor

        root = work / f"build{r}-{workers}" / "artifacts" / "ort"
        t0 = time.perf_counter()
        if workers <= 1:
            for sid in GRID:
                _build(model, sid, calib, root / sid)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
                list(pool.map(_build, [model] * len(GRID), GRID, [calib] * len(GRID), [root / s for s in GRID]))
        return time.perf_counter() - t0

    def forward() -> float:
        """One plain FP32 pass over the calibration set (ORT, same batches): the work no calibration avoids."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        reader = qdq.CalibrationReader(calib, facts.dynamic_batch)
        t0 = time.perf_counter()
        while (feed := reader.get_next()) is not None:
            sess.run(None, feed)
        return time.perf_counter() - t0

    for r in range(args.rounds):
        b = baseline()
        f = forward()
        g, per = calibration_grid(r)
        print(
            f"round {r}: one quantize_static minmax {b:.1f} s | calibration grid (8 specs' ranges) {g:.1f} s | "
            f"ratio {g / b:.2f} | FP32 forward over the set {f:.1f} s (grid / forward {g / f:.2f})"
        )
        print(
            "   per spec (the first collects the statistics; last: weight ranges pt+pc): "
            + ", ".join(f"{s:.1f}" for s in per)
        )
        if args.build:
            seq = build_grid(r, 1)
            par = build_grid(r, args.workers)
            print(
                f"   8 QDQ graphs (ranges cached): sequential {seq:.1f} s ({(g + seq) / b:.2f}x with calibration), "
                f"{args.workers} workers {par:.1f} s ({(g + par) / b:.2f}x)"
            )
    shutil.rmtree(work, ignore_errors=True)


def _build(model: object, sid: str, calib: object, workdir: Path) -> None:
    from qtbench.backends import qdq
    from qtbench.harness.core.spec import QuantSpec

    workdir.mkdir(parents=True, exist_ok=True)
    qdq.build(model, QuantSpec.parse(sid), calib, workdir, workdir / "model.onnx", [])


if __name__ == "__main__":
    main()

"""The openvino adapter's latency vs OpenVINO's own `benchmark_app` on the same IR and settings.

    python benchmarks/openvino_benchmark_app.py [--rounds 3] [--seconds 5]

Both run the demo FP model, fp32 (INFERENCE_PRECISION_HINT f32), CPU, 1 stream, 1 thread (benchmark_app
needs `-hint none` to accept explicit streams/threads; the adapter sets the latency hint with the same values),
synchronous batch-1 requests; rounds alternate between the two. benchmark_app reports its median latency; the
harness its p50 over a loop of the same length. benchmark_app's figure is OpenVINO's own InferRequest.latency
(inside the runtime); the harness's is host to host around the Python call (input wrap, output copy). Both
ratios are printed: the adapter's recorded InferRequest.latency against benchmark_app shows whether the compiled
configuration matches; the host-to-host ratio shows the cost of calling from Python.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from backends.base import ModelInput
from backends.openvino import OpenVinoBackend
from harness.cell import model_facts
from harness.config import MeasureSettings
from harness.data import load_dataset
from harness.demo import DEMO_DIR
from harness.measure import time_inference
from harness.spec import QuantSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    tool = shutil.which("benchmark_app")
    if not tool:
        raise SystemExit("benchmark_app not found: it ships with `pip install openvino`")
    path = DEMO_DIR / "fashion14_resnet_fp.onnx"
    facts = model_facts(path)
    model = ModelInput(path, "bench", facts.input_names, facts.output_names, facts.dynamic_batch)
    feeds = load_dataset(DEMO_DIR / "fashion14_eval.npz", facts.input_names).batch(0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = OpenVinoBackend({"threads": 1}).compile(model, QuantSpec("fp32"), None, Path(tmp) / "fp32")
        xml = compiled.info.artifact_path
        ratios = []
        for r in range(args.rounds):
            out = subprocess.run(
                [
                    tool,
                    "-m",
                    str(xml),
                    "-d",
                    "CPU",
                    "-hint",
                    "none",
                    "-nstreams",
                    "1",
                    "-nthreads",
                    "1",
                    "-api",
                    "sync",
                    "-t",
                    str(args.seconds),
                    "-infer_precision",
                    "f32",
                    "-shape",
                    "[1,1,14,14]",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            m = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", out.stdout)
            if not m:
                raise SystemExit("could not read benchmark_app's median latency:\n" + out.stdout[-2000:])
            bapp = float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)
            timing = time_inference(
                compiled.infer, feeds, MeasureSettings(warmup=20, iterations=200, min_duration_s=args.seconds)
            )
            ours = float(np.median(timing.samples_ns)) / 1e6
            dev = float(np.median(compiled.device_latencies_ms()[-len(timing.samples_ns) :]))
            ratios.append((ours / bapp, dev / bapp))
            print(
                f"round {r}: harness p50 {ours:.4f} ms (OpenVINO's own latency {dev:.4f} ms), "
                f"benchmark_app median {bapp:.4f} ms"
            )
        host, device = np.median([r[0] for r in ratios]), np.median([r[1] for r in ratios])
        print(
            f"over {args.rounds} interleaved rounds: harness host-to-host p50 / benchmark_app median {host:.3f}; "
            f"adapter's InferRequest.latency p50 / benchmark_app median {device:.3f}"
        )
        compiled.close()


if __name__ == "__main__":
    main()

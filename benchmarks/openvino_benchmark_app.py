"""The openvino adapter's latency vs OpenVINO's own `benchmark_app` on the same IR, input and settings.

    python benchmarks/openvino_benchmark_app.py [--rounds 5] [--seconds 3] [--model M.onnx --data D.npz]

Both run the same model (default: the demo FP model), fp32 (INFERENCE_PRECISION_HINT f32), CPU, 1 stream,
1 thread, synchronous batch-1 requests on the same input (benchmark_app gets it as a .npy; it needs `-hint none`
to accept explicit streams/threads, and reports the same compiled properties as the adapter's row); rounds
alternate between the two processes. benchmark_app reports the median of InferRequest.latency, OpenVINO's own
clock around the C++ infer call. Three figures, each a median over rounds of per-round ratios:

- device: the adapter's recorded InferRequest.latency p50 / benchmark_app's median. Equal settings and shapes
  give ≈ 1; before the adapter timed a static batch-1 compile it was 1.23–1.28 (the dynamic-batch IR pays
  shape inference per call).
- host to host: the harness's p50 (perf_counter around ``Compiled.infer``) / benchmark_app's median, and how the
  difference splits into the Python binding's own cost (a bare ``request.infer()`` loop, timed host to host,
  minus its InferRequest.latency) and the adapter's (input binding check, output copy, latency read).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qtbench.backends.base import ModelInput
from qtbench.backends.openvino import OpenVinoBackend
from qtbench.harness.core.config import MeasureSettings
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.demo import DEMO_DIR
from qtbench.harness.run.measure import time_inference


def benchmark_app_median_ms(tool: str, xml: Path, npy: Path, shape: tuple[int, ...], seconds: int) -> float:
    """One `benchmark_app -api sync -nstreams 1 -nthreads 1` run; its median latency in ms."""
    cmd = [tool, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", "1", "-api", "sync"]
    cmd += [
        "-t",
        str(max(1, seconds)),
        "-infer_precision",
        "f32",
        "-ip",  # f32 input as the adapter feeds it (benchmark_app's default for 3-channel images is u8)
        "f32",
        "-shape",
        str(list(shape)).replace(" ", ""),
        "-i",
        str(npy),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", out)
    if not m:
        raise SystemExit("could not read benchmark_app's median latency:\n" + out[-2000:])
    return float(m.group(1)) / (1000.0 if m.group(2) == "us" else 1.0)


def bare_infer(request: Any, seconds: int) -> tuple[float, float]:
    """Host-to-host and InferRequest.latency medians (ms) of ``request.infer()`` on already bound inputs."""
    host, device = [], []
    clock, end = time.perf_counter_ns, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = clock()
        request.infer()
        host.append(clock() - t0)
        device.append(request.latency)
    return float(np.median(host)) / 1e6, float(np.median(device))


def compare(model_path: Path, data_path: Path, rounds: int, seconds: int) -> dict[str, float]:
    """Interleaved rounds of benchmark_app, the harness loop and a bare infer() loop; median ratios and ms."""
    tool = shutil.which("benchmark_app")
    if not tool:
        raise SystemExit("benchmark_app not found: it ships with `pip install openvino`")
    facts = model_facts(model_path)
    model = ModelInput(model_path, "bench", facts.input_names, facts.output_names, facts.dynamic_batch)
    feeds = load_dataset(data_path, facts.input_names).batch(0, 1)
    if len(feeds) != 1:
        raise SystemExit("benchmark_app gets one input as a .npy here; use a single-input model")
    (x,) = feeds.values()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        npy = Path(tmp) / "input.npy"
        np.save(npy, x)
        compiled = OpenVinoBackend({"threads": 1}).compile(model, QuantSpec("fp32"), None, Path(tmp) / "fp32")
        props = compiled.info.extra["compiled_properties"]
        print(f"adapter's compiled properties: {props}; batch-1 static twin: {compiled.info.extra['batch1_static']}")
        settings = MeasureSettings(warmup=20, iterations=200, min_duration_s=seconds)
        for r in range(rounds):
            bapp = benchmark_app_median_ms(tool, compiled.info.artifact_path, npy, x.shape, seconds)
            compiled.device_latencies_ms()
            timing = time_inference(compiled.infer, feeds, settings)
            host = float(np.median(timing.samples_ns)) / 1e6
            dev = float(np.median(compiled.device_latencies_ms()[-len(timing.samples_ns) :]))
            request = compiled._batch1_request or compiled.request  # bound by the harness loop above
            bare_host, bare_dev = bare_infer(request, seconds)
            rows.append({"bapp": bapp, "host": host, "device": dev, "bare_host": bare_host, "bare_device": bare_dev})
            print(
                f"round {r}: benchmark_app median {bapp:.4f} ms | harness p50 {host:.4f} ms, its "
                f"InferRequest.latency p50 {dev:.4f} ms | bare infer() {bare_host:.4f} ms (latency {bare_dev:.4f})"
            )
        compiled.close()
    med = {k: float(np.median([row[k] for row in rows])) for k in rows[0]}
    return med | {
        "device_ratio": float(np.median([row["device"] / row["bapp"] for row in rows])),
        "host_ratio": float(np.median([row["host"] / row["bapp"] for row in rows])),
        "binding_ms": float(np.median([row["bare_host"] - row["bare_device"] for row in rows])),
        "adapter_ms": float(np.median([row["host"] - row["bare_host"] for row in rows])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--model", type=Path, default=DEMO_DIR / "fashion14_resnet_fp.onnx")
    ap.add_argument("--data", type=Path, default=DEMO_DIR / "fashion14_eval.npz", help="npz; its first sample is fed")
    args = ap.parse_args()
    m = compare(args.model, args.data, args.rounds, args.seconds)
    print(
        f"over {args.rounds} interleaved rounds (medians of per-round ratios): adapter's InferRequest.latency p50 / "
        f"benchmark_app median {m['device_ratio']:.3f}; harness host-to-host p50 / benchmark_app median "
        f"{m['host_ratio']:.3f}: host to host adds {m['host'] - m['device']:.4f} ms a call, of which the Python "
        f"binding's infer() {m['binding_ms']:.4f} ms and the adapter (input check, output copy) "
        f"{m['adapter_ms']:.4f} ms"
    )


if __name__ == "__main__":
    main()

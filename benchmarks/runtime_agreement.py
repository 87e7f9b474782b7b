"""The harness's latency figures next to each runtime's own tool, on the demo FP model, 1 thread, batch 1.

    python benchmarks/runtime_agreement.py [--rounds 5] [--seconds 2] [--only openvino,ort,tflite]

Rounds alternate between the harness loop (``qtbench.harness.run.measure.time_inference`` on the adapter's ``infer``)
and
the runtime's tool; every figure is a median over rounds of per-round ratios.

- openvino: `benchmark_app -api sync -nstreams 1 -nthreads 1` (see ``openvino_benchmark_app.py``): the device
  figure (InferRequest.latency) and the host-to-host figure against its median.
- ort: `onnxruntime_perf_test` is not in the pip wheel (nor in Debian's packages); when it is on PATH it is
  run (`-I -x 1 -y 1 -e cpu -t SECONDS`). Otherwise the reference is a bare ``sess.run`` loop on the same
  session (host to host, the Python floor). ORT's Python API reports no per-run latency of its own, and its
  profiler (``enable_profiling``, the ``model_run`` event) is no reference: its per-node events made the demo
  model's runs 2.1× slower than unprofiled ones here.
- tflite: the ai-edge-litert wheel ships no benchmark binary, only ``ai_edge_litert.tools.benchmark_litert_model``
  (Python, CompiledModel API, host to host around ``run_by_name`` on pre-filled buffers; it prints and saves
  latencies rounded to 0.01 ms, so on the demo model its median is good to about ±8 %). It is run as shipped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from qtbench.backends.base import ModelInput
from qtbench.harness.core.config import MeasureSettings
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.demo import DEMO_DIR
from qtbench.harness.run.measure import time_inference

MODEL = DEMO_DIR / "fashion14_resnet_fp.onnx"
DATA = DEMO_DIR / "fashion14_eval.npz"


def _model() -> tuple[ModelInput, dict[str, np.ndarray]]:
    facts = model_facts(MODEL)
    model = ModelInput(MODEL, "bench", facts.input_names, facts.output_names, facts.dynamic_batch)
    return model, load_dataset(DATA, facts.input_names).batch(0, 1)


def _harness_ms(compiled: Any, feeds: dict[str, np.ndarray], seconds: float) -> float:
    timing = time_inference(compiled.infer, feeds, MeasureSettings(warmup=20, iterations=200, min_duration_s=seconds))
    return float(np.median(timing.samples_ns)) / 1e6


def _loop_ms(fn: Any, seconds: float) -> float:
    for _ in range(20):
        fn()
    samples, clock, end = [], time.perf_counter_ns, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return float(np.median(samples)) / 1e6


def ort_rounds(rounds: int, seconds: float) -> None:
    from qtbench.backends.ort import OrtBackend

    model, feeds = _model()
    tool = shutil.which("onnxruntime_perf_test")
    print(
        f"ort: onnxruntime_perf_test {'at ' + tool if tool else 'not found (not in the pip wheel nor Debian)'}; "
        "reference: a bare sess.run loop on the same session"
    )
    with tempfile.TemporaryDirectory() as tmp:
        compiled = OrtBackend({"threads": 1}).compile(model, QuantSpec("fp32"), None, Path(tmp) / "fp32")
        sess, names = compiled.session, [o.name for o in compiled.session.get_outputs()]
        rows = []
        for r in range(rounds):
            ours = _harness_ms(compiled, feeds, seconds)
            bare = _loop_ms(lambda: sess.run(names, feeds), seconds)
            row = {"harness": ours, "bare": bare}
            if tool:
                row["perf_test"] = _perf_test_ms(tool, MODEL, seconds)
            rows.append(row)
            print(f"  round {r}: " + ", ".join(f"{k} {v:.4f} ms" for k, v in row.items()))
        compiled.close()
    ratio = {k: float(np.median([row["harness"] / row[k] for row in rows])) for k in rows[0] if k != "harness"}
    print(
        "  ort over {} rounds: harness p50 / bare sess.run p50 {:.3f}{}".format(
            rounds,
            ratio["bare"],
            f"; / onnxruntime_perf_test {ratio['perf_test']:.3f}" if "perf_test" in ratio else "",
        )
    )


def _perf_test_ms(tool: str, path: Path, seconds: float) -> float:
    out = subprocess.run(
        [tool, "-I", "-x", "1", "-y", "1", "-e", "cpu", "-t", str(int(seconds)), str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if "P50 Latency" in line:
            return float(line.split(":")[1].split()[0]) * 1000.0  # seconds
    raise SystemExit("could not read onnxruntime_perf_test's P50 latency:\n" + out[-2000:])


def tflite_rounds(rounds: int, seconds: float) -> None:
    from qtbench.backends.tflite import TfliteBackend

    model, feeds = _model()
    tflite = MODEL.with_name(f"{MODEL.stem}.float32.tflite")
    runs = 5000  # the tool counts runs, not seconds
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        compiled = TfliteBackend({"threads": 1}).compile(model, QuantSpec("fp32"), None, Path(tmp) / "fp32")
        interp = compiled.interp
        for r in range(rounds):
            ours = _harness_ms(compiled, feeds, seconds)
            bare = _loop_ms(interp.invoke, seconds)
            result = Path(tmp) / "litert.json"
            cmd = [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model", f"--model={tflite}"]
            cmd += ["--num_threads=1", f"--num_runs={runs}", "--warmup_runs=50", f"--result_json={result}"]
            subprocess.run(cmd, capture_output=True, text=True, check=True)
            tool = float(json.loads(result.read_text())["latency"]["median_ms"])
            rows.append({"harness": ours, "bare": bare, "tool": tool})
            print(f"  round {r}: harness {ours:.4f} ms, bare invoke() {bare:.4f} ms, benchmark_litert_model {tool} ms")
        compiled.close()
    print(
        f"  tflite over {rounds} rounds: harness p50 / benchmark_litert_model median "
        f"{np.median([x['harness'] / x['tool'] for x in rows]):.3f} (tool rounds to 0.01 ms); "
        f"/ bare Interpreter.invoke() p50 {np.median([x['harness'] / x['bare'] for x in rows]):.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--only", default="openvino,ort,tflite")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "openvino" in only:
        sys.path.insert(0, str(Path(__file__).parent))
        from openvino_benchmark_app import compare

        print("openvino: benchmark_app -api sync -nstreams 1 -nthreads 1 -hint none -shape [1,...]")
        m = compare(MODEL, DATA, args.rounds, args.seconds)
        print(
            f"  openvino over {args.rounds} rounds: InferRequest.latency p50 / benchmark_app median "
            f"{m['device_ratio']:.3f}; harness p50 / benchmark_app median {m['host_ratio']:.3f} (host to host adds "
            f"{m['host'] - m['device']:.4f} ms: binding {m['binding_ms']:.4f}, adapter {m['adapter_ms']:.4f})"
        )
    if "ort" in only:
        ort_rounds(args.rounds, args.seconds)
    if "tflite" in only:
        tflite_rounds(args.rounds, args.seconds)


if __name__ == "__main__":
    main()

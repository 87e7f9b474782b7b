"""INT8 on ONNX Runtime for a CNN whose weights are ``Constant`` nodes (Paddle2ONNX's form) vs the same network
with initializers, before and after intake — latency ratios measured interleaved in one process.

    python benchmarks/constant_weights.py [--model resnet50] [--size 112] [--calib 16] [--iters 30] [--rounds 5]

Three INT8 artifacts (``int8-static-pc-wsym-minmax``, built by qtbench's ORT adapter) and their FP32 models:
``initializers`` (the zoo export), ``constant/as-given`` (every initializer turned into a Constant node and
quantized as it comes: what qtbench did before intake — ORT's quantizer takes those weights for activations and
re-quantizes them on every call) and ``constant/intake`` (the same file through ``qtbench.harness.core.intake`` first).
Each
round times every model ``--iters`` calls in turn (batch 1, one thread), so machine drift hits all of them; the
medians are printed with the ratios to the initializer model. Target: constant/intake INT8 ÷ initializers INT8
≈ 1.0 (within noise).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/export_forms.py: exporters' forms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet50", help="qtbench.harness.core.zoo model name")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--calib", type=int, default=16, help="calibration images")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per model per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import numpy as np
    import onnx
    from export_forms import as_constant_nodes

    from qtbench import backends
    from qtbench.backends.base import ModelInput
    from qtbench.harness.core import intake, zoo
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.intake import file_sha256
    from qtbench.harness.core.onnxfacts import model_facts
    from qtbench.harness.core.spec import QuantSpec

    work = Path(tempfile.mkdtemp(prefix="qtbench-constw-"))
    init_path = zoo.build(args.model, work / "initializers.onnx", input_size=args.size)
    proto = as_constant_nodes(onnx.load(str(init_path)))  # the test corpus's Paddle2ONNX form, not a second copy
    consts = [n for n in proto.graph.node if n.op_type == "Constant"]
    const_path = work / "constant.onnx"
    onnx.save(proto, str(const_path))
    calib_path = zoo.synthetic_inputs(work / "calib.npz", args.calib, args.size, seed=1)
    facts = model_facts(init_path)
    calib = load_dataset(calib_path, facts.input_names, None, role="calibration")
    x = calib.batch(0, 1)

    t0 = time.perf_counter()
    sample = {k: calib.batch(0, 2)[k] for k in facts.input_names}
    normalised = intake.normalise(const_path, file_sha256(const_path), work / "cache", sample).dynamic
    intake_s = time.perf_counter() - t0
    print(f"{args.model} {args.size}x{args.size}: {len(consts)} Constant weights; intake took {intake_s:.2f} s")
    print(f"  intake: {'; '.join(normalised.notes)}")

    ort_backend = backends.create("ort", {"threads": 1})
    spec8, spec32 = QuantSpec.parse("int8-static-pc-wsym-minmax"), QuantSpec.parse("fp32")
    forms = {
        "initializers": init_path,
        "constant/as-given": const_path,
        "constant/intake": Path(normalised.path),
    }
    sessions = {}
    for name, path in forms.items():
        model = ModelInput(path, file_sha256(path), facts.input_names, facts.output_names, facts.dynamic_batch)
        for spec in (spec32, spec8):
            wd = work / "artifacts" / name.replace("/", "-") / spec.id
            t0 = time.perf_counter()
            compiled = ort_backend.compile(model, spec, calib, wd)
            audit = ort_backend.audit(compiled, spec)
            from qtbench.harness.core.audit import judge

            verdict = judge(spec, audit).label() if not isinstance(audit, str) else audit
            print(f"  built {name:18s} {spec.id:28s} in {time.perf_counter() - t0:5.1f} s; audit: {verdict}")
            sessions[(name, spec.id)] = compiled
    times: dict[tuple[str, str], list[float]] = {k: [] for k in sessions}
    for _ in range(args.rounds):
        for key, compiled in sessions.items():
            compiled.infer(x)  # warm
            for _ in range(args.iters):
                t0 = time.perf_counter_ns()
                compiled.infer(x)
                times[key].append((time.perf_counter_ns() - t0) / 1e6)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"\nmedian latency, batch 1, 1 thread ({args.rounds} rounds × {args.iters} calls, interleaved)")
    print(f"{'form':20s} {'fp32 ms':>9s} {'int8 ms':>9s} {'int8/fp32':>10s} {'int8 ÷ initializers int8':>26s}")
    base = med[("initializers", spec8.id)]
    for name in forms:
        f32, i8 = med[(name, spec32.id)], med[(name, spec8.id)]
        print(f"{name:20s} {f32:9.2f} {i8:9.2f} {i8 / f32:10.2f} {i8 / base:26.2f}")
    for c in sessions.values():
        c.close()


if __name__ == "__main__":
    main()

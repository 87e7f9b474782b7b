"""Memory and time of ``qtbench localize`` on a paper-scale model (ResNet-50 or ViT-S/14 at 224×224, random weights).

Each measurement runs in its own child process so its peak RSS (``ru_maxrss``) is its own, not torch's export:

    python benchmarks/localize_memory.py                         # ResNet-50, ort INT8 QDQ, 8 samples, 256 MB batches
    python benchmarks/localize_memory.py --memory-mb 4096        # one layer batch: everything at once
    python benchmarks/localize_memory.py --baseline              # + ORT's qdq_loss_debug on the same graphs
    python benchmarks/localize_memory.py --model vit_s14 --backends ort simnpu:hailo8

The model comes from ``qtbench.harness.core.zoo`` (needs ``qtbench[train]`` for torch); inputs are seeded N(0, 1)
images.
Numbers are this host's; the JSON line per run is what the note quotes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_localize(args: argparse.Namespace) -> dict:
    import yaml

    from qtbench.harness.analysis.localize import LocalizeSettings, localize

    cfg = yaml.safe_load(Path(args.sweep).read_text())
    t0 = time.perf_counter()
    run = localize(
        cfg,
        specs=[args.spec],
        backends=args.backends,
        settings=LocalizeSettings(samples=args.samples, memory_mb=args.memory_mb),
    )
    wall = time.perf_counter() - t0
    s = run.summary
    return {
        "what": "qtbench localize",
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "samples": args.samples,
        "memory_mb": args.memory_mb,
        "layer_batches": [int(x) for x in s.get("layer_batches", [])],
        "tensors": [int(x) for x in s.get("tensors", [])],
        "compared": [int(x) for x in s.get("compared", [])],
        "compare_s": [round(float(x), 2) for x in s.get("compare_s", [])],
        "backends": list(s["backend"]),
        "first_divergent": list(s.get("first_divergent_node", [])),
        "output_sqnr_db": [round(float(x), 2) for x in s.get("output_sqnr_db", [])],
        "run": str(run.path),
    }


def child_baseline(args: argparse.Namespace) -> dict:
    """ONNX Runtime's own tool: every tensor of every sample held in memory, optimisations off."""
    import numpy as np
    import yaml
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    cfg = yaml.safe_load(Path(args.sweep).read_text())
    model = Path(cfg["models"][0]["path"])
    qdq = sorted((Path(cfg["run"]["results_dir"]) / ".cache" / "artifacts" / "ort").glob("*/model.onnx"))
    if not qdq:
        raise SystemExit("run the localize measurement first (it builds the QDQ artifact)")
    data = np.load(cfg["evaluation"]["path"])["input"][: args.samples]

    class Reader:
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(data):
                return None
            self.i += 1
            return {"input": data[self.i - 1 : self.i]}

        def rewind(self) -> None:
            self.i = 0

        def __iter__(self):  # collect_activations iterates the reader
            return iter(self.get_next, None)

    t0 = time.perf_counter()
    tmp = Path(args.sweep).parent
    modify_model_output_intermediate_tensors(str(model), str(tmp / "float_aug.onnx"))
    modify_model_output_intermediate_tensors(str(qdq[0]), str(tmp / "qdq_aug.onnx"))
    fa = collect_activations(str(tmp / "float_aug.onnx"), Reader())
    qa = collect_activations(str(tmp / "qdq_aug.onnx"), Reader())
    errors = compute_activation_error(create_activation_matching(qa, fa))
    return {
        "what": "onnxruntime qdq_loss_debug",
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "samples": args.samples,
        "tensors_matched": len(errors),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="qtbench.harness.core.zoo model (resnet50, vit_s14)")
    p.add_argument("--spec", default="int8-static-pt-wsym-minmax")
    p.add_argument("--backends", nargs="+", default=["ort"])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--calib", type=int, default=16, help="calibration images")
    p.add_argument("--memory-mb", type=float, default=256)
    p.add_argument("--baseline", action="store_true", help="also run ORT's qdq_loss_debug on the same samples")
    p.add_argument("--work", default="/tmp/qtbench-localize-bench", help="models, data and results live here")
    p.add_argument("--child", choices=("localize", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--sweep", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        out = child_localize(args) if args.child == "localize" else child_baseline(args)
        print("RESULT " + json.dumps(out))
        return

    import yaml

    from qtbench.harness.core import zoo

    work = Path(args.work)
    onnx_path = work / f"{args.model}.onnx"
    if not onnx_path.is_file():
        t0 = time.perf_counter()
        zoo.build(args.model, onnx_path)
        print(f"built {onnx_path} ({onnx_path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f}s")
    size = zoo.get(args.model).input_size
    ev = zoo.synthetic_inputs(work / "eval.npz", args.samples, size, seed=1)
    cal = zoo.synthetic_inputs(work / "calib.npz", args.calib, size, seed=2)
    cfg = {
        "name": f"bench-{args.model}",
        "models": [{"path": str(onnx_path), "name": args.model}],
        "evaluation": {"path": str(ev)},
        "calibration": {"path": str(cal)},
        "backends": ["ort"],
        "specs": [args.spec],
        "run": {"results_dir": str(work / "results")},
    }
    sweep = work / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(cfg))
    common = ["--sweep", str(sweep), "--spec", args.spec, "--samples", str(args.samples)]
    runs = [["--child", "localize", "--memory-mb", str(args.memory_mb), "--backends", *args.backends]]
    if args.baseline:
        runs.append(["--child", "baseline"])
    for extra in runs:
        proc = subprocess.run(
            [sys.executable, __file__, *common, *extra], capture_output=True, text=True, cwd=ROOT, check=False
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"child {extra[1]} failed ({proc.returncode})")
        print(line[len("RESULT ") :])


if __name__ == "__main__":
    main()

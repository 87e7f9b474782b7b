"""Build the zoo models and synthetic inputs that examples/paper_fig3.yaml and examples/segmentation.yaml use.

    python scripts/make_zoo.py [--out zoo]      # ~1 min on 2 cores, ~220 MB; no network (plain torch definitions)

Weights are random (seeded): the rows are labelled "random weights: latency, energy and size only; accuracy
meaningless". Same as `qtbench zoo build resnet50 vit_s14 seg_mnv3 --out zoo --data 32` plus a separate
calibration set (another seed) per model, so calibration and evaluation inputs differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qtbench.harness.core import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "zoo"))
    ap.add_argument("--samples", type=int, default=32, help="evaluation and calibration inputs per model")
    args = ap.parse_args()
    out = Path(args.out)
    for name, size, classes in (("resnet50", 224, None), ("vit_s14", 224, None), ("seg_mnv3", 224, 21)):
        path = zoo.build(name, out / f"{name}.onnx", input_size=size)
        zoo.synthetic_inputs(out / f"{name}_data.npz", args.samples, size, seed=0, classes=classes)
        zoo.synthetic_inputs(out / f"{name}_calib.npz", args.samples, size, seed=1)
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB) + {args.samples} synthetic eval/calibration inputs")


if __name__ == "__main__":
    main()

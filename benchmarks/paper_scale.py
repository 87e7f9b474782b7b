"""The paper-scale sweep, old checkout vs this one, back to back: ResNet-50 + ViT-S/14 × ort, openvino × 6 specs.

    git worktree add /tmp/oldmain a6d1ecd        # the checkout to compare against (issue 16's "today")
    python benchmarks/paper_scale.py --old /tmp/oldmain              # 224×224, 32 calibration images: the real run
    python benchmarks/paper_scale.py --old /tmp/oldmain --size 32 --calib 4 --eval 8 --iterations 20   # a smoke run

Builds both models offline with ``qtbench.harness.core.zoo`` (random weights, seeded; re-used when already built),
seeded N(0, 1)
calibration and evaluation sets as .npz, and one sweep YAML of 24 cells (2 models × 2 backends × 6 specs; the
specs OpenVINO/NNCF cannot run — entropy, W4A8 — are `skipped` rows in both versions and cost nothing). The YAML
uses only keys both checkouts parse (checked before timing). Then it times ``python -m harness.cli sweep`` of the
old checkout and of this one, one after the other, each into a fresh results folder (so no cache is shared), with
the report written as a user's sweep would, and prints both wall times, their ratio and each run's row statuses.
Issue 16's target: this checkout ≤ 1/3 of the old one's wall time. ViT-S/14 needs a multiple of 14: a ``--size``
that is not one is rounded down for ViT (and said so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SPECS = (
    "fp32",
    "int8-static-pc-wsym-minmax",
    "int8-static-pt-wsym-minmax",
    "int8-static-pc-wsym-percentile",
    "int8-static-pc-wsym-entropy",
    "int4-static-pc-wsym-minmax",
)
MODELS = ("resnet50", "vit_s14")


def build_inputs(work: Path, size: int, calib: int, evaluation: int) -> list[dict[str, object]]:
    """Zoo models and their data sets under ``work`` (kept between runs: building ViT-S/14 takes a while)."""
    from qtbench.harness.core import zoo

    models = []
    for name in MODELS:
        s = size - size % zoo.get(name).patch if size % zoo.get(name).patch else size
        if s != size:
            print(f"{name}: input size {size} is not a multiple of {zoo.get(name).patch}; using {s}")
        path = work / f"{name}_{s}.onnx"
        if not path.is_file():
            t0 = time.perf_counter()
            zoo.build(name, path, input_size=s, seed=0)
            print(f"built {path} in {time.perf_counter() - t0:.1f} s")
        data = {}
        for kind, n, seed in (("calibration", calib, 1), ("evaluation", evaluation, 2)):
            npz = work / f"{kind}_{s}_{n}.npz"
            if not npz.is_file():
                zoo.synthetic_inputs(npz, n, s, seed=seed)
            data[kind] = {"path": str(npz)}
        models.append({"name": name, "path": str(path), **data})
    return models


def sweep_yaml(work: Path, models: list[dict[str, object]], specs: list[str], iterations: int) -> Path:
    import yaml

    sweep = {
        "name": "paper_scale",
        "description": "ResNet-50 + ViT-S/14 (random weights) on ort and openvino, issue 16's 24-cell sweep",
        "models": models,
        "backends": [{"name": "ort", "options": {"threads": 1}}, {"name": "openvino", "options": {"threads": 1}}],
        "specs": specs,
        "measure": {"warmup": 20, "iterations": iterations, "min_duration_s": 0.2},
    }
    path = work / "paper_scale.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _env(checkout: Path) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}


def check_parses(checkout: Path, config: Path) -> None:
    """The sweep file loads in ``checkout`` (its own harness, not this one's) and plans 24 cells."""
    code = (
        "import harness, sys; from qtbench.harness.core.config import load_sweep; s = load_sweep(sys.argv[1]); "
        "print(harness.__file__, len(s.models) * len(s.backends) * len(s.specs))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(config)], cwd=checkout, env=_env(checkout), capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"{checkout} cannot load {config}:\n{out.stderr[-2000:]}")
    where, cells = out.stdout.split()
    if not Path(where).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"{checkout}: python imported harness from {where}, not from the checkout; check PYTHONPATH")
    print(f"{checkout}: parses {config.name}, {cells} cells")


def time_sweep(checkout: Path, config: Path, out: Path, report: bool) -> float:
    """Wall seconds of one `sweep` of ``checkout`` into a fresh ``out`` (results, cache and report inside)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "qtbench", "sweep", str(config), "--results-dir", str(out / "results")]
    cmd += ["--report-dir", str(out / "report")] if report else ["--no-report"]
    t0 = time.perf_counter()
    with (out / "sweep.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=checkout, env=_env(checkout), stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        tail = (out / "sweep.log").read_text()[-3000:]
        raise SystemExit(f"{checkout}: sweep exited {rc} after {wall:.0f} s; log {out / 'sweep.log'}:\n{tail}")
    return wall


def statuses(checkout: Path, results: Path) -> dict[str, int]:
    """Row status counts, read by ``checkout``'s own `show` (the row formats of the two versions differ)."""
    cmd = [sys.executable, "-m", "qtbench", "show", str(results / "paper_scale"), "--format", "json"]
    out = subprocess.run(cmd, cwd=checkout, env=_env(checkout), capture_output=True, text=True)
    if out.returncode:
        return {f"show failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}": 1}
    counts: dict[str, int] = {}
    for row in json.loads(out.stdout):
        counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, default=Path("/tmp/oldmain"), help="checkout to compare against")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qtbench_paper_scale"), help="models, data, results")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--eval", type=int, default=64, help="evaluation images")
    ap.add_argument("--iterations", type=int, default=200, help="timed iterations per cell (demo protocol: 200)")
    ap.add_argument("--specs", nargs="+", default=list(SPECS))
    ap.add_argument("--order", choices=("old-first", "new-first"), default="old-first")
    ap.add_argument("--no-report", action="store_true", help="time the sweeps without writing their reports")
    ap.add_argument("--only", choices=("old", "new"), help="time one checkout only (profiling; no ratio)")
    args = ap.parse_args()
    if not (args.old / "harness" / "cli.py").is_file():
        raise SystemExit(f"{args.old} is not a qtbench checkout: git worktree add {args.old} a6d1ecd")
    args.work.mkdir(parents=True, exist_ok=True)
    config = sweep_yaml(
        args.work, build_inputs(args.work, args.size, args.calib, args.eval), args.specs, args.iterations
    )
    runs = {"old": args.old.resolve(), "new": HERE}
    for checkout in runs.values():
        check_parses(checkout, config)
    order = ["old", "new"] if args.order == "old-first" else ["new", "old"]
    order = [w for w in order if args.only in (None, w)]
    wall = {}
    for which in order:
        print(f"timing {which} ({runs[which]}) ...", flush=True)
        wall[which] = time_sweep(runs[which], config, args.work / which, not args.no_report)
        print(f"  {which}: {wall[which]:.1f} s; rows {statuses(runs[which], args.work / which / 'results')}")
    if args.only:
        return
    print(
        f"paper-scale sweep ({args.size}×{args.size}, {args.calib} calibration images, {len(args.specs)} specs): "
        f"old {wall['old']:.1f} s ({wall['old'] / 60:.1f} min), new {wall['new']:.1f} s ({wall['new'] / 60:.1f} min), "
        f"new/old {wall['new'] / wall['old']:.3f} (target ≤ 0.333)"
    )


if __name__ == "__main__":
    main()

"""The Quant-Trim study: is one grid-family checkpoint more robust than the FP baseline across backends, and which
part of the method does it? One command trains, sweeps and compares; every step is a plain qtbench command.

    python examples/quanttrim_study.py                     # the full study (2 archs × 5 arms × 3 seeds)
    python examples/quanttrim_study.py --seeds 0 1 2 3     # add a seed to a finished study: trains only it
    python examples/quanttrim_study.py --arms fp quanttrim  # only the headline comparison
    python examples/quanttrim_study.py --quick              # plumbing check: 1 epoch, 1,000 images, 2 seeds

Needs ``qtbench[train]`` (torch), OpenVINO for its cells, and Fashion-MNIST
(``apt-get install dataset-fashion-mnist`` or ``--data-dir``). The data are Fashion-MNIST at full 28×28
resolution, not the demo's 14×14; the networks are a depthwise inverted-residual net (``mobilenetv2-s2``) and a
BN-ResNet with a stride-2 stem (``resnet-s2``), neither of them the demo's.

Steps, each resumable (a finished checkpoint or results row is kept, so an interrupted run goes on where it was):

1. ``data/``: evaluation split (the last ``--eval-images`` test images) and calibration split (256 training
   images no seed trains on), as ``.npz``.
2. ``qtbench train`` per architecture × arm, seeds in one call, ``--jobs`` calls at a time at 1 torch thread each.
   Arms (the ablation): ``fp`` (baseline, 8 epochs), and at 10 epochs ``quanttrim`` (the ``neutral`` recipe: the
   four INT4 grids + whole-network sampling + reverse pruning), ``single`` (one INT4 per-tensor grid, blended,
   + per-tensor pruning: the earlier recipe), ``prune`` (reverse pruning only), ``fakequant`` (the family's
   fake quantization only). 28 min on 2 cores at 3 seeds (measured), ~4 min per added seed; results and why
   5 seeds are worth it: docs/quanttrim.md.
3. ``qtbench sweep`` per architecture, started as soon as that architecture's checkpoints exist, over ONNX
   Runtime, OpenVINO and two simnpu vendor profiles (simulated: Hailo-8-like INT8/INT4, NXP i.MX 8M
   Plus-like INT8 with round-half-away), FP32/INT8/INT4 static per-tensor and per-channel, fidelity only (no
   timed loop). The Qualcomm-HTP-like profile is left out: its outputs are bit-identical to the Hailo-like one's
   on these specs, so compare would count it once anyway.
4. ``qtbench compare``'s statistics per architecture and pooled (each architecture × seed one paired
   replicate), every arm against ``fp``: the FP→Q mean-gap difference per precision and granularity with 95 %
   intervals over seeds and images, counting backends with bit-identical outputs once; and the FP32 accuracy
   difference on all 10,000 test images (paired t interval over the same replicates).
   Written to ``SUMMARY.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ARCHS = ("mobilenetv2-s2", "resnet-s2")
# The hardware-neutral recipe: the four INT4 grids backends build (per tensor or per channel, narrow ±7 with
# max/7 or full −8…7 with max/7.5), one grid for the whole network per step, the fully quantized network trained
# on a fraction λ of the steps (λ ramps to 0.75) and the FP one on the rest.
FAMILY = [
    "--grid-family",
    "bits=4;granularity=tensor,channel;range=narrow,full",
    "--family-draw",
    "step",
    "--lambda-mode",
    "sample",
    "--lambda-max",
    "0.75",
]
# Quant-Trim arms train 10 epochs against the baseline's 8: what keeping FP32 within 0.3 pp costs (at 8 epochs
# every Quant-Trim arm lost 0.2–0.5 pp of FP32 accuracy).
QT = ["--method", "quanttrim", "--epochs", "10"]
ARMS: dict[str, list[str]] = {
    "fp": ["--method", "fp"],
    "quanttrim": [*QT, *FAMILY],
    "single": [
        *QT,
        "--recipe",
        "paper",
        "--grid-family",
        "single",
        "--bits",
        "4",
        "--per-tensor",
        "--lambda-max",
        "0.5",
    ],
    "prune": [*QT, *FAMILY, "--prune-only"],
    "fakequant": [*QT, *FAMILY, "--no-prune"],
}
ARM_TEXT = {
    "quanttrim": "INT4 grid family (whole-network sampling, λ → 0.75) + reverse pruning",
    "single": "one grid (INT4 per-tensor, λ ≤ 0.5) + per-tensor pruning: the earlier recipe",
    "prune": "reverse pruning only",
    "fakequant": "grid-family fake quantization only",
}
BACKENDS = [
    {"name": "ort", "options": {"threads": 1}},
    {"name": "openvino", "options": {"threads": 1}},
    {"name": "simnpu", "label": "sim-hailo8", "options": {"profile": "hailo8"}},
    {"name": "simnpu", "label": "sim-nxp-imx8mp", "options": {"profile": "nxp-imx8mp"}},
]
SPECS = [
    "fp32",
    "int8-static-pt-wsym-minmax",
    "int8-static-pc-wsym-minmax",
    "int4-static-pt-wsym-minmax",
    "int4-static-pc-wsym-minmax",
]
# FP32 is the reference: ORT's cell is enough; other backends' FP32 cells would only cost time
EXCLUDE = [{"backend": [b.get("label", b["name"]) for b in BACKENDS if b["name"] != "ort"], "spec": "fp32"}]
SLICES = [  # (label, precision, compare slice, slice value)
    ("INT8 (all)", "int8", "all", ""),
    ("INT8 per-tensor", "int8", "family", "static-pt"),
    ("INT8 per-channel", "int8", "family", "static-pc"),
    ("INT4 per-tensor", "int4", "family", "static-pt"),
    ("INT4 per-channel", "int4", "family", "static-pc"),
]


def qtbench_cmd() -> list[str]:
    return [sys.executable, "-m", "qtbench"]


def make_data(out: Path, data_dir: str | None, eval_images: int, train_images: int, seeds: list[int]) -> None:
    from qtbench.quanttrim.data import load_fashion_mnist

    ev, cal = out / "data" / "eval28.npz", out / "data" / "calib28.npz"
    if ev.exists() and cal.exists():
        return
    data = load_fashion_mnist(28, data_dir)
    used: set[int] = set()
    n = len(data.y_train)
    for seed in seeds:  # `qtbench train` draws its subset as default_rng(seed).permutation(n)[:train_images]
        used |= set(np.random.default_rng(seed).permutation(n)[: train_images or n].tolist())
    calib = [i for i in np.random.default_rng(4321).permutation(n) if i not in used][:256]
    if len(calib) < 256:
        raise SystemExit("no 256 training images left for calibration: lower --train-images")
    ev.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(ev, input=data.x_test[-eval_images:], labels=data.y_test[-eval_images:])
    np.savez_compressed(cal, input=data.x_train[calib])


def ckpt(out: Path, arch: str, arm: str, seed: int) -> Path:
    return out / "checkpoints" / f"fashion-mnist_{arch}_{arm}_s{seed}.onnx"


def missing_seeds(args: argparse.Namespace, arch: str, arm: str) -> list[int]:
    return [s for s in args.seeds if not ckpt(args.out, arch, arm, s).exists()]


def train_cmd(args: argparse.Namespace, arch: str, arm: str) -> list[str]:
    cmd = [
        *qtbench_cmd(),
        "train",
        "--dataset",
        "fashion-mnist",
        "--image-size",
        "28",
        "--arch",
        arch,
        "--group",
        arm,
        "--seeds",  # only the missing ones: adding a seed to a finished study trains just that seed
        *map(str, missing_seeds(args, arch, arm)),
        "--epochs",
        str(args.epochs),
        "--train-images",
        str(args.train_images),
        "--test-images",
        "1000",  # per-epoch log only; the FP32 accuracy in the metadata uses all 10,000 test images
        "--out",
        str(args.out / "checkpoints"),
        *ARMS[arm],
        *(["--epochs", str(args.epochs)] if getattr(args, "quick", False) else []),  # --quick beats an arm's own
    ]
    return cmd + (["--data-dir", args.data_dir] if args.data_dir else [])


def sweep_cmd(args: argparse.Namespace, arch: str) -> list[str]:
    cmd = [*qtbench_cmd(), "sweep", str(write_sweep(args, arch)), "--results-dir", str(args.out / "results"), "-q"]
    return cmd + (["--report-dir", str(args.out / "reports" / arch)] if args.report else ["--no-report"])


def run_all(args: argparse.Namespace) -> dict[str, float]:
    """Run the missing trainings and every sweep, ``--jobs`` processes at a time at 1 torch thread each; an
    architecture's sweep starts when its last checkpoint is written. Returns seconds per job."""
    trains = {(arch, arm) for arch in args.archs for arm in args.arms if missing_seeds(args, arch, arm)}
    queue: list[tuple[str, str, str]] = [("train", arch, arm) for arch in args.archs for arm in args.arms]
    queue = [j for j in queue if (j[1], j[2]) in trains] + [("sweep", arch, "") for arch in args.archs]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[tuple[str, str, str], subprocess.Popen, float, Any]] = []
    seconds: dict[str, float] = {}

    def ready(job: tuple[str, str, str]) -> bool:
        pending = {(a, m) for kind, a, m in queue if kind == "train"} | {j[1:] for j, *_ in running}
        return job[0] == "train" or not any(a == job[1] for a, _ in pending)

    while queue or running:
        for job in [j for j in queue if ready(j)]:
            if len(running) >= args.jobs:
                break
            queue.remove(job)
            kind, arch, arm = job
            name = f"{kind} {arch}" + (f"/{arm}" if arm else "")
            cmd = train_cmd(args, arch, arm) if kind == "train" else sweep_cmd(args, arch)
            seeds = " ".join(map(str, missing_seeds(args, arch, arm))) if kind == "train" else ""
            print(name + (f" (seeds {seeds})" if seeds else ""), flush=True)
            log = (logs / (name.replace(" ", "_").replace("/", "_") + ".log")).open("w")
            running.append(
                (job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), time.time(), log)
            )
        time.sleep(1)
        for item in list(running):
            job, proc, t0, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            name = f"{job[0]} {job[1]}" + (f"/{job[2]}" if job[2] else "")
            seconds[name] = time.time() - t0
            # sweep exit 1: some cell failed; its row says why and compare leaves it out
            if proc.returncode and not (job[0] == "sweep" and proc.returncode == 1):
                for _, p, *_ in running:
                    p.terminate()
                raise SystemExit(f"{name} failed (exit {proc.returncode}); see {logs}")
            print(f"  done {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


def write_sweep(args: argparse.Namespace, arch: str) -> Path:
    import yaml

    models = [
        {
            "name": f"{arch}-{arm}-s{s}",
            "path": str(Path("checkpoints") / ckpt(args.out, arch, arm, s).name),
            "group": arm,
            "seed": s,
            "timing": False,
        }
        for arm in args.arms
        for s in args.seeds
    ]
    cfg = {
        "name": f"qt-study-{arch}",
        "description": f"Quant-Trim study, {arch} on Fashion-MNIST 28x28: FP baseline vs Quant-Trim arms",
        "models": models,
        "evaluation": {"path": "data/eval28.npz", "labels": "labels"},
        "calibration": {"path": "data/calib28.npz"},
        "backends": BACKENDS,
        "specs": SPECS,
        "exclude": EXCLUDE,
    }
    path = args.out / f"{arch}.yaml"
    path.write_text(
        "# written by examples/quanttrim_study.py; rerun `qtbench sweep` on it to extend the study\n"
        + yaml.safe_dump(cfg, sort_keys=False)
    )
    return path


def fp32_accuracy(args: argparse.Namespace, arch: str, arm: str) -> list[float]:
    """Each seed's exported FP32 accuracy on all 10,000 test images, from the checkpoint's metadata."""
    import onnx

    out = []
    for s in args.seeds:
        proto = onnx.load(str(ckpt(args.out, arch, arm, s)), load_external_data=False)
        meta = json.loads({p.key: p.value for p in proto.metadata_props}["qtbench.training"])
        out.append(100 * float(meta["test_accuracy"]))
    return out


def paired_t(base: list[float], cand: list[float]) -> tuple[float, float, float]:
    """Mean paired difference and its 95 % t interval over seeds."""
    from scipy import stats

    d = np.array(cand) - np.array(base)
    if len(d) < 2:
        return float(d.mean()), math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def load_arch_seeds(paths: list[Path], archs: list[str]) -> Any:
    """The study ``qtbench compare`` builds from ``paths``; pooled over architectures, each architecture × seed is
    its own replicate (a seed of one architecture has nothing in common with the same seed of another), so 2
    architectures × 3 seeds give 6 paired replicates instead of 3 averaged ones."""
    from qtbench.harness.analysis.compare import build_study, load_study

    study = build_study(*load_study(paths))
    if len(paths) > 1:
        arch_of = [next(i for i, a in enumerate(archs) if str(m).startswith(a + "-")) for m in study.cells["model"]]
        study.cells["seed"] = [1000 * i + int(s) for i, s in zip(arch_of, study.cells["seed"], strict=True)]
    return study


def summarize(args: argparse.Namespace, train_seconds: dict[str, float]) -> dict[str, Any]:
    from qtbench.harness.analysis.compare import compare_study

    folders = {arch: args.out / "results" / f"qt-study-{arch}" for arch in args.archs}
    studies = {a: load_arch_seeds([f], args.archs) for a, f in folders.items()}  # each results folder read once
    if len(folders) > 1:
        studies["pooled"] = load_arch_seeds(list(folders.values()), args.archs)
    fp32 = {(a, arm): fp32_accuracy(args, a, arm) for a in args.archs for arm in args.arms}
    summary: dict[str, Any] = {"archs": args.archs, "seeds": args.seeds, "arms": {}, "notes": {}}
    for arm in [a for a in args.arms if a != "fp"]:
        per: dict[str, Any] = {}
        for name, study in studies.items():
            df = compare_study(study, "fp", arm)
            summary["notes"][f"{name}/{arm}"] = df.attrs.get("notes", [])
            gap = df[df["metric"] == "mean_gap_pp"]
            row: dict[str, Any] = {}
            for label, prec, kind, value in SLICES:
                hit = gap[(gap["precision"] == prec) & (gap["slice"] == kind) & (gap["slice_value"] == value)]
                if len(hit):
                    r = hit.iloc[0]
                    row[label] = {
                        k: float(r[k]) for k in ("baseline_mean", "candidate_mean", "difference", "ci_lo", "ci_hi")
                    } | {"cells": int(r["cells"]), "seeds": int(r["candidate_seeds"])}
            archs = args.archs if name == "pooled" else [name]
            base = [v for a in archs for v in fp32[a, "fp"]]
            cand = [v for a in archs for v in fp32[a, arm]]
            d, lo, hi = paired_t(base, cand)
            row["FP32 accuracy"] = {
                "baseline_mean": float(np.mean(base)),
                "candidate_mean": float(np.mean(cand)),
                "difference": d,
                "ci_lo": lo,
                "ci_hi": hi,
            }
            per[name] = row
        summary["arms"][arm] = per
    summary["train_seconds"] = train_seconds
    return summary


def fmt(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "—"
    ci = "" if math.isnan(cell["ci_lo"]) else f" [{cell['ci_lo']:+.2f}, {cell['ci_hi']:+.2f}]"
    mark = " ✓" if cell["ci_lo"] > 0 else (" ✗" if cell["ci_hi"] < 0 else "")
    return f"{cell['difference']:+.2f}{ci}{mark}"


def arm_epochs(args: argparse.Namespace) -> str:
    """Epochs per arm as trained: an arm's own --epochs overrides the study's."""
    if getattr(args, "quick", False):
        return f"{args.epochs} epoch(s)"
    per: dict[int, list[str]] = {}
    for arm in args.arms:
        flags = ARMS[arm]
        n = int(flags[flags.index("--epochs") + 1]) if "--epochs" in flags else args.epochs
        per.setdefault(n, []).append(arm)
    return ", ".join(f"{n} epochs ({', '.join(arms)})" for n, arms in sorted(per.items()))


def to_markdown(summary: dict[str, Any], args: argparse.Namespace, minutes: float) -> str:
    cols = [label for label, *_ in SLICES] + ["FP32 accuracy"]
    lines = [
        "# Quant-Trim study: every arm against the FP baseline",
        "",
        f"Fashion-MNIST 28×28; {', '.join(args.archs)}; seeds {', '.join(map(str, args.seeds))}; "
        f"{arm_epochs(args)} on {args.train_images} images; {minutes:.1f} min on this host"
        + ("" if summary.get("trained_all") else " (a resumed run: existing checkpoints and results cells were reused)")
        + ". Each cell: candidate − baseline "
        "difference of the mean FP→Q top-1 gap in pp (positive: the candidate loses less), 95 % interval over "
        "seeds and evaluation images, backends with bit-identical outputs counted once (pooled: each "
        "architecture × seed is one paired replicate); FP32 accuracy: "
        "difference on all 10,000 test images, paired t interval over seeds. ✓ interval above 0, ✗ below.",
        "",
    ]
    for arm, per in summary["arms"].items():
        lines += [f"## {arm}: {ARM_TEXT.get(arm, arm)}", "", "| study | " + " | ".join(cols) + " |"]
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, row in per.items():
            lines.append(f"| {name} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
        lines.append("")
    lines += [
        "## Mean FP→Q gap per group (pp) and FP32 accuracy (%)",
        "",
        "| study | group | " + " | ".join(cols) + " |",
    ]
    lines.append("|---" * (len(cols) + 2) + "|")
    first = next(iter(summary["arms"].values()), {})
    for name in first:
        groups = {
            "fp": ("baseline_mean", next(iter(summary["arms"]))),
            **{a: ("candidate_mean", a) for a in summary["arms"]},
        }
        for g, (key, arm) in groups.items():
            row = summary["arms"][arm][name]
            vals = [f"{row[c][key]:.2f}" if c in row else "—" for c in cols]
            lines.append(f"| {name} | {g} | " + " | ".join(vals) + " |")
    lines.append("")
    if summary.get("train_seconds"):
        lines += [
            "Seconds per job (a training covers every seed; 2 jobs ran at once): "
            + ", ".join(f"{k} {v:.0f} s" for k, v in summary["train_seconds"].items()),
            "",
        ]
    notes = sorted({n for ns in summary["notes"].values() for n in ns})
    if notes:
        lines += ["## Notes from compare", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("study"), help="study folder (default ./study)")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS))
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--eval-images", type=int, default=5000, help="the last N test images (default 5000)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once, 1 torch thread each (default 2)")
    ap.add_argument("--data-dir", help="folder with Fashion-MNIST's IDX files (default: the Debian package)")
    ap.add_argument("--quick", action="store_true", help="plumbing check: 1 epoch, 1,000 images, seeds 0 1")
    ap.add_argument("--report", action="store_true", help="also write an HTML report per architecture")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.train_images, args.seeds, args.eval_images = 1, 1000, [0, 1], 500
    if "fp" not in args.arms:
        ap.error("--arms must include fp: every arm is compared with it")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_data(args.out, args.data_dir, args.eval_images, args.train_images, args.seeds)
    seconds = run_all(args)
    summary = summarize(args, seconds)
    minutes = (time.time() - t0) / 60
    summary["minutes"] = minutes
    summary["trained_all"] = sum(k.startswith("train ") for k in seconds) == len(args.archs) * len(args.arms)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    md = to_markdown(summary, args, minutes)
    (args.out / "SUMMARY.md").write_text(md)
    print(md)
    print(
        f"written: {args.out / 'SUMMARY.md'}; dig in with: qtbench compare {args.out / 'results'}/qt-study-<arch> "
        "--baseline-group fp --candidate-group quanttrim --details"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

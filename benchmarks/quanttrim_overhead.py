"""Quant-Trim cost and benefit on the demo setup, paired over seeds.

    python benchmarks/quanttrim_overhead.py [--seeds 0 1 2] [--epochs 8]

For each seed, trains the FP baseline and the Quant-Trim checkpoint (same data, seed, epochs; the demo's
Quant-Trim settings), then sweeps both through ONNX Runtime on the demo's quantization grid with the harness.
Prints: epoch time Quant-Trim / FP (target ≤ 1.3×, runs interleaved per seed), and per checkpoint the mean
FP→Q gap and max–min spread across specs, for INT8 and INT4, with KL and agreement. Needs qtbench[train] and
Fashion-MNIST (apt-get install dataset-fashion-mnist).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_demo import RECIPE

from qtbench.harness.demo import DEMO_DIR
from qtbench.harness.run.sweep import run_sweep
from qtbench.quanttrim.data import load_fashion_mnist
from qtbench.quanttrim.export import export_onnx
from qtbench.quanttrim.train import TrainConfig, train


def step_time_ratio(rounds: int = 7, steps: int = 40, batch: int = 128) -> tuple[float, list[float]]:
    """Training-step time Quant-Trim / FP, interleaved A/B rounds on the same batch, λ at its held value.

    Epoch wall times on a shared 2-core machine swing ±30 % with background load; interleaving short rounds puts
    the same noise on both sides, so the median ratio is the overhead.
    """
    from qtbench.quanttrim.core import QuantTrimConfig, prepare
    from qtbench.quanttrim.models import build_model

    torch.set_num_threads(1)
    x, y = torch.randn(batch, 1, 14, 14), torch.randint(0, 10, (batch,))
    fp = build_model("resnet")
    qt = prepare(build_model("resnet"), QuantTrimConfig(**RECIPE.config), total_steps=100)
    qt.quanttrim.step(99)  # held phase: λ = λ_max, pruning active

    def run(model, n):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        t0 = time.perf_counter()
        for i in range(n):
            if model is qt:
                model.quanttrim.step(60 + i)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    run(fp, 5), run(qt, 5)
    ratios = [run(qt, steps) / run(fp, steps) for _ in range(rounds)]
    return float(np.median(ratios)), ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--overhead-only", action="store_true", help="only the interleaved training-step ratio")
    args = ap.parse_args()
    med, ratios = step_time_ratio()
    print(
        f"training step Quant-Trim / FP (interleaved, λ held, batch 128): median {med:.3f}× "
        f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)})",
        flush=True,
    )
    if args.overhead_only:
        return
    import yaml

    demo = yaml.safe_load((DEMO_DIR / "demo.yaml").read_text())
    data = load_fashion_mnist(14)
    tmp = Path(tempfile.mkdtemp(prefix="qt-bench-"))
    models, epoch_ratio = [], []
    for seed in args.seeds:
        secs = {}
        for method in ("fp", "quanttrim"):
            cfg = TrainConfig(
                method=method, seed=seed, epochs=args.epochs, quanttrim=RECIPE.config if method == "quanttrim" else {}
            )
            res = train(data, cfg)
            secs[method] = res.seconds
            path = export_onnx(res.model, tmp / f"{method}_s{seed}.onnx", torch.zeros(1, 1, 14, 14))
            models.append({"path": str(path), "name": f"{method}-s{seed}"})
            print(f"seed {seed} {method:<9} test {100 * res.test_accuracy:.2f}%  {res.seconds:.1f}s", flush=True)
        epoch_ratio.append(secs["quanttrim"] / secs["fp"])
    cfg = {
        **demo,
        "name": "qt-bench",
        "models": models,
        "evaluation": {"path": str(DEMO_DIR / "fashion14_eval.npz"), "labels": "labels"},
        "calibration": {"path": str(DEMO_DIR / "fashion14_calib.npz")},
        "measure": {"warmup": 2, "iterations": 5},
        "run": {"results_dir": str(tmp / "results")},
    }
    df = run_sweep(cfg)
    df = df[df.status == "ok"].copy()
    df["method"] = df["model"].str.split("-s").str[0]
    df["gap_pp"] = 100 * (df["top1"] - df["fp_top1"])
    per_seed = ", ".join(f"{r:.3f}" for r in epoch_ratio)
    print(f"\nepoch time Quant-Trim / FP: {np.mean(epoch_ratio):.3f}× (per seed {per_seed})")
    header = "| checkpoint | precision | FP top-1 % | mean gap pp | worst gap pp | spread pp | KL×1e3 | agreement % |"
    print("\n" + header)
    print("|---|---|---|---|---|---|---|---|")
    for (method, prec), g in df[df.precision.isin(["int8", "int4"])].groupby(["method", "precision"]):
        per_seed = g.groupby("model")
        spread = per_seed["top1"].agg(lambda s: 100 * (s.max() - s.min())).mean()
        print(
            f"| {method} | {prec} | {100 * g['fp_top1'].mean():.2f} | {g['gap_pp'].mean():+.2f} | "
            f"{g['gap_pp'].min():+.2f} | {spread:.2f} | {1000 * g['kl_fp'].mean():.1f} | "
            f"{100 * g['top1_agreement'].mean():.2f} |"
        )


if __name__ == "__main__":
    main()

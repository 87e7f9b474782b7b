"""``qtbench train``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.core.errors import UserError

ARCH_NAMES = ("resnet", "mobilenet", "mobilenetv2-s2", "resnet-s2")


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise UserError("qtbench train needs torch: pip install 'qtbench[train]'") from None
    from qtbench.quanttrim.data import DatasetNotFound, load_dataset
    from qtbench.quanttrim.export import export_onnx
    from qtbench.quanttrim.train import TrainConfig, train

    try:
        data = load_dataset(args.dataset, args.image_size, args.data_dir)
    except DatasetNotFound as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    if args.prune_only and args.no_prune:
        raise UserError("--prune-only and --no-prune leave nothing of Quant-Trim; drop one (or use --method fp)")
    qt = {
        "bits": args.bits,
        "per_channel": not args.per_tensor,
        "lambda_max": args.lambda_max,
        "q_end": args.q_end,
        "fake_quant": not args.prune_only,
        "prune": not args.no_prune,
        "family": "" if args.grid_family in ("", "none", "single") else args.grid_family,
        "family_draw": args.family_draw,
        "lambda_mode": args.lambda_mode,
        "prune_granularity": args.prune_granularity,
    }
    if args.method == "quanttrim":
        from qtbench.quanttrim.core import QuantTrimConfig

        try:
            QuantTrimConfig(**qt)  # a bad family or combination is one line and exit 2, before any training
        except ValueError as exc:
            raise UserError(str(exc)) from None
    group = args.group or args.method
    trained: list[dict[str, Any]] = []
    for seed in args.seeds:
        cfg = TrainConfig(
            arch=args.arch,
            method=args.method,
            epochs=args.epochs,
            seed=seed,
            lr=args.lr,
            weight_decay=args.weight_decay,
            train_images=args.train_images,
            test_images=args.test_images,
            quanttrim=qt if args.method == "quanttrim" else {},
        )
        stem = f"{data.name}_{args.arch}_{group}_s{seed}"
        res = train(
            data,
            cfg,
            log_csv=out / f"{stem}.csv",
            on_epoch=lambda r: print(
                f"  epoch {r['epoch']:>2}: loss {r['train_loss']:.4f} "
                f"test {100 * r['test_accuracy']:.2f}%"
                + (f" λ={r['lambda']:.3f} τ̄={r['tau_mean']:.3f}" if "lambda" in r else ""),
                flush=True,
            ),
        )
        import torch

        example = torch.from_numpy(data.x_test[:1])
        path = export_onnx(
            res.model,
            out / f"{stem}.onnx",
            example,
            metadata={
                "dataset": data.name,
                "arch": args.arch,
                "seed": seed,
                "epochs": args.epochs,
                "group": group,
                # the exported FP model's accuracy (fake quantization off): what this ONNX file scores
                "test_accuracy": res.test_accuracy,
                **{k: res.history[-1][k] for k in ("fakequant_test_accuracy",) if k in res.history[-1]},
            },
        )
        print(f"{path}: test accuracy {100 * res.test_accuracy:.2f}% ({res.seconds:.1f}s); log {out / (stem + '.csv')}")
        trained.append({"path": path.name, "name": f"{args.arch}-{group}-s{seed}", "group": group, "seed": seed})
        snippet = out / f"{data.name}_{args.arch}_{group}.models.yaml"
        _write_models_snippet(snippet, trained)  # after every seed: an interrupted run keeps the finished ones
    print(f"sweep snippet: {snippet} (paste under `models:`, or merge the fp and quanttrim snippets of one study)")
    return 0


def _write_models_snippet(path: Path, models: list[dict[str, Any]]) -> None:
    """A sweep file's ``models:`` block for what was trained (paths relative to the snippet's folder)."""
    import yaml

    text = (
        "# models block for a study sweep written by `qtbench train`; `qtbench compare` contrasts groups over seeds\n"
        + yaml.safe_dump({"models": models}, sort_keys=False)
    )
    path.write_text(text)


def register(sub: Any) -> None:
    t = sub.add_parser("train", help="train an FP or Quant-Trim checkpoint and export it to ONNX (needs torch)")
    t.add_argument("--dataset", choices=("fashion-mnist", "digits", "idx"), default="fashion-mnist")
    t.add_argument("--data-dir", help="folder with IDX files (dataset idx, or a non-default Fashion-MNIST)")
    t.add_argument("--image-size", type=int, default=14, help="downsample IDX images to this size (default 14)")
    # the names of quanttrim.models.ARCHITECTURES (not imported here: --help must not import torch)
    t.add_argument("--arch", choices=ARCH_NAMES, default="resnet")
    t.add_argument("--method", choices=("fp", "quanttrim"), default="quanttrim")
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--train-images", type=int, default=10_000, help="0 = all")
    t.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="score each epoch on the first N test images (0 = all; the final "
        "accuracy in the ONNX metadata always uses every test image)",
    )
    t.add_argument("--bits", type=int, default=8, help="Quant-Trim weight bits target (4 or 8)")
    t.add_argument("--per-tensor", action="store_true", help="fake-quantize per tensor (default per channel)")
    t.add_argument("--lambda-max", type=float, default=1.0, help="cap of the blend λ (0.5 keeps FP intact at 4 bits)")
    t.add_argument("--q-end", type=float, default=99.7, help="final reverse-pruning percentile")
    t.add_argument("--prune-only", action="store_true", help="ablation: reverse pruning without fake quantization")
    t.add_argument("--no-prune", action="store_true", help="ablation: fake quantization without reverse pruning")
    t.add_argument(
        "--grid-family",
        default="",
        metavar="FAMILY",
        help="train against a family of quantizer grids instead of the one of --bits/--per-tensor: 'default' "
        "(4/8 bits, per tensor/channel, narrow/full range, float/power-of-two scale, round half even/away) or "
        "axes like 'bits=4:3,8:1;granularity=tensor,channel;range=narrow,full;scale=float,pow2;"
        "rounding=even,away;act=minmax,percentile' (':w' weights a value); '' or 'single': one grid",
    )
    t.add_argument(
        "--family-draw", choices=("layer", "step"), default="layer", help="draw a grid per layer or per step"
    )
    t.add_argument(
        "--lambda-mode",
        choices=("blend", "sample"),
        default="blend",
        help="blend: x + λ(Q(x) − x) (the paper); sample: the full grid with probability λ (per layer, or for the "
        "whole network at once with --family-draw step)",
    )
    t.add_argument(
        "--prune-granularity",
        choices=("auto", "tensor", "channel", "both"),
        default="auto",
        help="reverse-pruning threshold per tensor, per output channel, or the smaller of both (auto: both for a "
        "family with per-channel grids, else per tensor)",
    )
    t.add_argument("--group", help="study group name for file names and the models snippet (default: --method)")
    t.add_argument("--out", default="checkpoints", help="output folder for .onnx and .csv logs")
    t.set_defaults(func=cmd_train)

"""``qtbench train``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.core.errors import UserError

ARCH_NAMES = ("resnet", "mobilenet", "mobilenetv2-s2", "resnet-s2")
RECIPE_NAMES = ("neutral", "paper")  # the keys of quanttrim.core.RECIPES (not imported here: --help stays torch-free)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise UserError("qtbench train needs torch: pip install 'qtbench[train]'") from None
    from qtbench.quanttrim.data import DatasetNotFound, load_dataset
    from qtbench.quanttrim.export import export_onnx
    from qtbench.quanttrim.train import TrainConfig, train

    qt, epochs = resolve_quanttrim(args)  # a bad flag is one line and exit 2, before the data load
    try:
        data = load_dataset(args.dataset, args.image_size, args.data_dir)
    except DatasetNotFound as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    group = args.group or args.method
    trained: list[dict[str, Any]] = []
    for seed in args.seeds:
        cfg = TrainConfig(
            arch=args.arch,
            method=args.method,
            epochs=epochs,
            seed=seed,
            lr=args.lr,
            weight_decay=args.weight_decay,
            train_images=args.train_images,
            test_images=args.test_images,
            quanttrim=qt,
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
                "epochs": epochs,
                "group": group,
                **({"recipe": args.recipe} if args.method == "quanttrim" else {}),
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


def resolve_quanttrim(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The QuantTrimConfig fields and epochs a `qtbench train` call means: the recipe, then the flags given.
    Raises UserError (exit 2) for a bad family or combination, before any training."""
    from qtbench.quanttrim.core import RECIPES, QuantTrimConfig
    from qtbench.quanttrim.train import TrainConfig

    if args.method != "quanttrim":
        return {}, args.epochs or TrainConfig.epochs
    recipe = RECIPES[args.recipe]
    if args.prune_only and args.no_prune and args.kurtosis <= 0:
        raise UserError(
            "--prune-only and --no-prune leave nothing of Quant-Trim; drop one, add --kurtosis, or use --method fp"
        )
    family = args.grid_family
    given = {  # what the user typed wins over the recipe
        "bits": args.bits,
        "lambda_max": args.lambda_max,
        "family": "" if family in ("", "none", "single") else family,
        "family_draw": args.family_draw,
        "lambda_mode": args.lambda_mode,
    }
    qt = {
        **recipe.config,
        **{k: v for k, v in given.items() if v is not None},
        "per_channel": not args.per_tensor,
        "q_end": args.q_end,
        "fake_quant": not args.prune_only,
        "prune": not args.no_prune,
        "prune_granularity": args.prune_granularity,
        "kurtosis": args.kurtosis,
    }
    try:
        QuantTrimConfig(**qt)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return qt, args.epochs or recipe.epochs


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
    t.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        default="neutral",
        help="Quant-Trim starting point; the flags below override it. neutral (default): the four INT4 grids "
        "backends build (per tensor/channel, narrow ±7 and full −8…7), whole-network sampling with λ → 0.75, "
        "reverse pruning, 10 epochs; paper: one INT8 per-channel grid, blended λ → 1, 8 epochs",
    )
    t.add_argument("--epochs", type=int, help="default 8, or the recipe's for quanttrim (neutral: 10)")
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
    t.add_argument("--bits", type=int, help="Quant-Trim weight bits of a single grid (4 or 8; recipe's default)")
    t.add_argument("--per-tensor", action="store_true", help="fake-quantize per tensor (default per channel)")
    t.add_argument("--lambda-max", type=float, help="cap of λ (neutral 0.75, paper 1.0)")
    t.add_argument("--q-end", type=float, default=99.7, help="final reverse-pruning percentile")
    t.add_argument("--prune-only", action="store_true", help="ablation: reverse pruning without fake quantization")
    t.add_argument("--no-prune", action="store_true", help="ablation: fake quantization without reverse pruning")
    t.add_argument(
        "--grid-family",
        metavar="FAMILY",
        help="train against a family of quantizer grids instead of the one of --bits/--per-tensor: 'default' "
        "(4/8 bits, per tensor/channel, narrow/full range, float/power-of-two scale, round half even/away) or "
        "axes like 'bits=4:3,8:1;granularity=tensor,channel;range=narrow,full;scale=float,pow2;"
        "rounding=even,away;act=minmax,percentile' (':w' weights a value); '' or 'single': one grid",
    )
    t.add_argument(
        "--family-draw", choices=("layer", "step"), help="draw a grid per layer or per step (recipe's default)"
    )
    t.add_argument(
        "--lambda-mode",
        choices=("blend", "sample"),
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
    t.add_argument(
        "--kurtosis",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the kurtosis penalty that flattens each layer's and channel's weight distribution toward "
        "uniform, so any min-max grid's step stays small (default 0: off; KURE's own weight is 1.0)",
    )
    t.add_argument("--group", help="study group name for file names and the models snippet (default: --method)")
    t.add_argument("--out", default="checkpoints", help="output folder for .onnx and .csv logs")
    t.set_defaults(func=cmd_train)

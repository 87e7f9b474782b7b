"""Training loop for FP baselines and Quant-Trim checkpoints, with a per-epoch CSV log the report can plot.

The recipe is the one measured to work on the demo (Fashion-MNIST 14x14): SGD + Nesterov, OneCycle, peak lr 0.1,
weight decay 5e-4, batch 128, 8 epochs, one torch thread (2 threads on 2 shared cores were 4–5× slower).
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qtbench.quanttrim.core import QuantTrimConfig, prepare
from qtbench.quanttrim.data import ImageSplits
from qtbench.quanttrim.models import build_model


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; stored in the ONNX metadata and the CSV log header."""

    arch: str = "resnet"
    method: str = "fp"  # fp | quanttrim
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0
    train_images: int = 10_000  # 0 = all
    test_images: int = 0  # per-epoch evaluation on the first N test images (0 = all); the final score uses all
    threads: int = 1
    quanttrim: dict = field(default_factory=dict)  # QuantTrimConfig fields, used when method == "quanttrim"


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    history: list[dict[str, float]]
    seconds: float
    test_accuracy: float  # of the exported FP model (eval mode, fake quantization off): what the ONNX file scores


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (eval mode) on numpy data."""
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            xb = torch.from_numpy(x[i : i + batch_size])
            yb = torch.from_numpy(y[i : i + batch_size])
            logits = model(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return correct / len(y), loss_sum / len(y)


def train(
    data: ImageSplits,
    config: TrainConfig,
    log_csv: str | Path | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one model; with ``method='quanttrim'`` the model is wrapped by :func:`quanttrim.prepare` first."""
    if config.method not in ("fp", "quanttrim"):
        raise ValueError(f"unknown method {config.method!r}; choose fp or quanttrim")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    n = len(data.y_train) if config.train_images <= 0 else min(config.train_images, len(data.y_train))
    idx = rng.permutation(len(data.y_train))[:n]
    x_train, y_train = data.x_train[idx], data.y_train[idx]
    cap = len(data.y_test) if config.test_images <= 0 else min(config.test_images, len(data.y_test))
    x_eval, y_eval = data.x_test[:cap], data.y_test[:cap]

    model = build_model(config.arch, data.num_classes, data.x_train.shape[1])
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    controller = None
    if config.method == "quanttrim":
        qt_cfg = QuantTrimConfig(**{"seed": config.seed, **config.quanttrim})  # the family draws follow the seed
        model = prepare(model, qt_cfg, total_steps=total_steps)
        controller = model.quanttrim

    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps)
    history: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        order = rng.permutation(n)
        loss_sum, penalty_sum, correct = 0.0, 0.0, 0
        for b in range(steps_per_epoch):
            sel = order[b * config.batch_size : (b + 1) * config.batch_size]
            xb, yb = torch.from_numpy(x_train[sel]), torch.from_numpy(y_train[sel])
            if controller is not None:
                controller.step(step)
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            penalty = controller.regularizer() if controller is not None and controller.cfg.kurtosis > 0 else None
            opt.zero_grad(set_to_none=True)
            (loss + penalty if penalty is not None else loss).backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(sel)  # cross-entropy only; the penalty is its own column
            penalty_sum += float(penalty.detach()) * len(sel) if penalty is not None else 0.0
            correct += int((logits.argmax(1) == yb).sum())
        # Score what gets exported: the FP weights with fake quantization off. The weight fake-quant follows λ, not
        # eval mode, so evaluating the prepared model as is would score the λ-blended model instead.
        with controller.exporting() if controller is not None else contextlib.nullcontext():
            test_acc, test_loss = evaluate(model, x_eval, y_eval)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": loss_sum / n,
            "train_accuracy": correct / n,
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "lr": float(sched.get_last_lr()[0]),
            "seconds": time.perf_counter() - t0,
        }
        if controller is not None:
            # the λ-blended fake-quant model the optimiser sees, as its own column
            row["fakequant_test_accuracy"] = evaluate(model, x_eval, y_eval)[0]
            row.update(controller.state())
            if controller.cfg.kurtosis > 0:
                row["kurtosis_penalty"] = penalty_sum / n
        history.append(row)
        if on_epoch:
            on_epoch(row)
    seconds = time.perf_counter() - t0
    final = history[-1]["test_accuracy"]
    if len(x_eval) < len(data.x_test):  # epochs were scored on a subset: the exported model on every test image
        with controller.exporting() if controller is not None else contextlib.nullcontext():
            final = evaluate(model, data.x_test, data.y_test)[0]
        history[-1]["test_accuracy_all"] = final
    if log_csv:
        write_history(history, config, log_csv)
    return TrainResult(model, config, history, seconds, final)


def write_history(history: list[dict[str, float]], config: TrainConfig, path: str | Path) -> None:
    """Per-epoch log as CSV; ``#`` header lines carry the config so a report can label the curve."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        for k, v in asdict(config).items():
            f.write(f"# {k}={v}\n")
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)

"""Tiny ONNX models and data for tests, built with onnx.helper (no torch, no downloads, seeded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(path: Path, seed: int = 0, classes: int = 5, dynamic_batch: bool = True) -> Path:
    """Conv(1→8, 3×3) → Relu → Conv(8→8) → Relu → GlobalAveragePool → Flatten → Gemm(8→classes), 1×8×8 input."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    w2[0, 0, 0, 0] = 4.0  # one heavy tail weight: per-tensor INT4 feels it
    b2 = rng.normal(0, 0.1, 8).astype(np.float32)
    wf = rng.normal(0, 1.0, (classes, 8)).astype(np.float32)
    bf = np.zeros(classes, np.float32)
    batch = "N" if dynamic_batch else 1
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"), (bf, "bf"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_mlp(path: Path, seed: int = 0, classes: int = 5) -> Path:
    """Flatten → MatMul(64→64) → Relu → MatMul(64→32) → Relu → Gemm(32→classes) on tiny_cnn's 1×8×8 input: a
    MatMul-heavy model, the kind NNCF's INT4 weight compression is for (it keeps convolutions at 8 bit)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(0, 0.2, (64, 64)).astype(np.float32), rng.normal(0, 0.2, (64, 32)).astype(np.float32)
    wf, bf = rng.normal(0, 0.5, (classes, 32)).astype(np.float32), np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("MatMul", ["f", "w1"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
        helper.make_node("Relu", ["m2"], ["r2"]),
        helper.make_node("Gemm", ["r2", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (wf, "wf"), (bf, "bf"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def tiny_data(path: Path, n: int = 64, seed: int = 1, classes: int = 5, labels: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"input": rng.random((n, 1, 8, 8), dtype=np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, classes, n).astype(np.int64)
    np.savez(path, **arrays)
    return path


def tiny_sweep(tmp: Path, **overrides) -> dict:
    """A sweep dict over the tiny model; results under tmp/results."""
    model = tiny_cnn(tmp / "tiny.onnx")
    ev = tiny_data(tmp / "eval.npz", 64, seed=1)
    cal = tiny_data(tmp / "calib.npz", 32, seed=2, labels=False)
    cfg = {
        "name": "tiny",
        "models": [{"path": str(model), "name": "tiny"}],
        "evaluation": {"path": str(ev)},
        "calibration": {"path": str(cal)},
        "backends": [{"name": "ort", "options": {"threads": 1}}],
        "specs": ["fp32", "int8-static-pc-wsym-minmax"],
        "measure": {"warmup": 2, "iterations": 10},
        "run": {"results_dir": str(tmp / "results"), "timeout_s": 120},
    }
    cfg.update(overrides)
    return cfg


def make_record(**fields):
    """A Record with every required field filled with a neutral value; ``fields`` override any of them."""
    from qtbench.harness.core.records import Record

    base = {
        "record_id": "r0",
        "run_id": "r1",
        "sweep": "s",
        "cell_key": "k",
        "created_utc": "2026-01-01T00:00:00Z",
        "model": "m",
        "model_sha256": "sha",
        "backend": "ort",
        "backend_version": "1",
        "device": "d",
        "spec_id": "fp32",
        "precision": "fp32",
        "weight_bits": 32,
        "activation_bits": 32,
        "scaling": "none",
        "granularity": "",
        "calibration": "",
        "status": "ok",
    }
    return Record(**{**base, **fields})


def synthetic_results(
    root: Path,
    sweep: str,
    *,
    latency_ms: float = 1.0,
    correct: np.ndarray | None = None,
    seed: int = 0,
    device: str = "dev-a",
    specs: tuple[str, ...] = ("fp32", "int8-static-pc-wsym-minmax"),
    n_samples: int = 200,
    ece: float = 0.03,
) -> Path:
    """A results folder written through the real store: lognormal latency samples and per-sample correctness."""
    from qtbench.harness.core.records import Record
    from qtbench.harness.run.measure import latency_stats
    from qtbench.harness.run.store import ResultsStore

    rng = np.random.default_rng(seed)
    store = ResultsStore(root / sweep)
    store.record_run({"run_id": "r1"})
    if correct is None:
        correct = np.ones(1000, bool)
    labels = np.zeros(len(correct), np.int64)
    preds = np.where(correct, 0, 1)
    for i, spec in enumerate(specs):
        samples = (latency_ms * 1e6 * rng.lognormal(0, 0.05, n_samples)).astype(np.int64)
        stats = latency_stats(samples, 1, 0.1)
        rec = make_record(
            record_id=f"{sweep}-{i}",
            sweep=sweep,
            cell_key=f"k{i}",
            backend_version="onnxruntime=1",
            device=device,
            spec_id=spec,
            precision=spec.split("-")[0],
            weight_bits=8,
            activation_bits=8,
            scaling="static",
            granularity="per-channel",
            calibration="minmax",
            numbers="measured",
            warmup=2,
            eval_samples=len(correct),
            eval_sha256="evalsha",
            top1=float(correct.mean()),
            fp_top1=0.9,
            ece=ece,
            **{k: v for k, v in stats.items() if k in Record.__dataclass_fields__},
        )
        store.write_cell("r1", i, rec, [samples], preds, labels)
    store.consolidate("r1")
    return root / sweep


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``qtbench ARGV`` in this process: (exit code, stdout + stderr), asserting no traceback reached the user."""
    from qtbench.harness.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    text = out + err
    assert "Traceback" not in text, text
    return code, text

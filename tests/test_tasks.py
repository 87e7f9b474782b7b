"""Task plug-ins: segmentation and tensor metrics against hand-computed values, multi-output rows, non-finite
backend outputs, streamed evaluation data and the schema-1 upgrade path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtbench import backends
from qtbench.harness.core import metrics, tasks
from qtbench.harness.core.config import parse_sweep
from qtbench.harness.core.data import SampleFiles, load_dataset
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.records import SCHEMA_VERSION, upgrade_frame
from qtbench.harness.run.sweep import run_sweep

from models import tiny_sweep


def onehot_logits(pred: np.ndarray, classes: int) -> np.ndarray:
    """N×C×H×W logits whose argmax is ``pred`` (N×H×W)."""
    return np.moveaxis(np.eye(classes, dtype=np.float32)[pred], -1, 1) * 4.0


# Two 2×2 images, 4 classes (class 3 never appears). Image B is all background in the truth.
TRUTH = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 0]]])
PRED = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 2]]])


def test_segmentation_ious_by_hand():
    cm = metrics.confusion_matrix(PRED, TRUTH, 4)
    # class 0: 6 true pixels, 4 predicted right, 1 → class 1, 1 → class 2; class 1: 2 true, both right
    assert cm.tolist() == [[4, 1, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    iou = metrics.iou_per_class(cm)
    assert iou[0] == pytest.approx(4 / 6) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0.0
    assert math.isnan(iou[3])  # absent from truth and prediction: excluded, not 0 and not 1
    assert metrics.mean_iou(cm) == pytest.approx((4 / 6 + 2 / 3 + 0) / 3)
    assert metrics.pixel_accuracy(cm) == pytest.approx(6 / 8)
    # an all-background image predicted right scores 1, not NaN (only class 0 exists)
    bg = metrics.confusion_matrix(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), 4)
    assert metrics.mean_iou(bg) == 1.0
    # ignore_index leaves pixels out: ignoring B's wrong pixel makes class 2 absent
    truth = TRUTH.copy()
    truth[1, 1, 1] = 255
    cm2 = metrics.confusion_matrix(PRED, truth, 4, ignore_index=255)
    assert cm2.sum() == 7 and metrics.mean_iou(cm2) == pytest.approx((4 / 5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="mask labels must lie in"):
        metrics.confusion_matrix(PRED, truth, 4)


def test_segmentation_task_streams_and_scores_against_labels_and_fp():
    task = tasks.create("segmentation")
    scorer = task.scorer("out")
    q, ref = onehot_logits(PRED, 4), onehot_logits(TRUTH, 4)
    for i in range(2):  # one image per batch: the confusion matrices accumulate
        scorer.update(q[i : i + 1], ref[i : i + 1], TRUTH[i : i + 1])
    res = scorer.result()
    assert res.metrics["miou"] == pytest.approx(4 / 9)
    assert res.metrics["pixel_accuracy"] == pytest.approx(0.75)
    # FP masks equal the truth here, so the FP-relative numbers equal the label ones
    assert res.metrics["miou_fp"] == pytest.approx(4 / 9) and res.metrics["mask_agreement"] == pytest.approx(0.75)
    assert 0 <= res.metrics["pixel_ece"] <= 1 and res.reliability and sum(res.reliability["count"]) == 8
    with pytest.raises(Exception, match="predicts masks of shape"):
        task.scorer("out").update(q, ref, np.zeros((2, 3, 3), int))


def test_tensor_task_known_sqnr_and_retrieval():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 8)).astype(np.float32)
    scorer = tasks.create("tensor", {"retrieval_k": 3}).scorer("emb")
    scorer.update(ref[:10] * 1.1, ref[:10], None)
    scorer.update(ref[10:] * 1.1, ref[10:], None)
    m = scorer.result().metrics
    # Q = 1.1·FP: noise = 0.01·signal → SQNR = 20 dB exactly; cosine 1; relative L2 0.1; neighbours unchanged
    assert m["sqnr_db"] == pytest.approx(20.0, abs=1e-4)
    assert m["cosine"] == pytest.approx(1.0) and m["rel_l2"] == pytest.approx(0.1, rel=1e-5)
    assert m["retrieval_agreement"] == 1.0
    shuffled = tasks.create("tensor", {"retrieval_k": 3}).scorer("emb")
    shuffled.update(rng.normal(size=(16, 8)), ref, None)
    assert shuffled.result().metrics["retrieval_agreement"] < 1.0


def test_task_config_errors_name_the_key(tmp_path: Path):
    cfg = tiny_sweep(tmp_path)
    cfg["models"][0]["task"] = "segmentaton"
    with pytest.raises(ConfigError, match=r"models\[0\]\.task: task 'segmentaton' is not registered"):
        parse_sweep(cfg)
    cfg["models"][0]["task"] = {"logits": {"name": "tensor", "k": 3}}
    with pytest.raises(ConfigError, match=r"models\[0\]\.task\.logits\.k: unknown option of task 'tensor'"):
        parse_sweep(cfg)


def test_plugin_task_through_the_registry(monkeypatch):
    monkeypatch.setitem(tasks.BUILTIN, "argmax_only", "test_tasks:ArgmaxOnly")
    t = tasks.create("argmax_only")
    s = t.scorer("x")
    s.update(np.eye(3), np.eye(3), None)
    assert s.result().metrics == {"argmax_agreement": 1.0}
    monkeypatch.setitem(tasks.BUILTIN, "broken", "no_such_module_qtbench:Task")
    with pytest.raises(ConfigError, match="failed to load"):
        tasks.create("broken")


class ArgmaxOnly(tasks.Task):
    name = "argmax_only"

    def scorer(self, output):
        class S(tasks.Scorer):
            def __init__(self):
                self.hits = []

            def update(self, q, ref, labels):
                self.hits.append(np.argmax(q, 1) == np.argmax(ref, 1))

            def result(self):
                return tasks.TaskResult({"argmax_agreement": float(np.mean(np.concatenate(self.hits)))})

        return S()


def two_output_model(path: Path) -> Path:
    """input N×1×8×8 → Flatten → Gemm → logits N×5, and → Gemm → Tanh → embed N×6."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.3, (64, 5)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (64, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("MatMul", ["f", "w1"], ["logits"]),
        helper.make_node("MatMul", ["f", "w2"], ["e"]),
        helper.make_node("Tanh", ["e"], ["embed"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_out",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("embed", TensorProto.FLOAT, ["N", 6]),
        ],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_two_output_model_one_metric_set_per_output(tmp_path: Path):
    cfg = tiny_sweep(tmp_path, run={"results_dir": str(tmp_path / "results"), "isolate": False})
    model = two_output_model(tmp_path / "two.onnx")
    cfg["models"] = [
        {"path": str(model), "name": "both", "task": {"logits": "classification", "embed": "tensor"}},
        {"path": str(model), "name": "default"},
    ]
    df = run_sweep(cfg)
    assert set(df["status"]) == {"ok"}
    both = df[df["model"] == "both"].set_index("spec_id")
    for spec in ("fp32", "int8-static-pc-wsym-minmax"):
        row = both.loc[spec]
        om = json.loads(row["output_metrics"])
        assert json.loads(row["outputs"]) == ["logits", "embed"] and json.loads(row["outputs_ignored"]) == []
        assert om["logits"]["task"] == "classification" and "top1_agreement" in om["logits"]
        assert om["embed"]["task"] == "tensor" and "rel_l2" in om["embed"] and "top1" not in om["embed"]
        assert row["task"] == "classification" and row["top1_agreement"] == om["logits"]["top1_agreement"]
    q8 = json.loads(both.loc["int8-static-pc-wsym-minmax"]["output_metrics"])
    assert 0.9 < q8["embed"]["cosine"] < 1.0 and math.isfinite(q8["embed"]["sqnr_db"])
    assert json.loads(both.loc["fp32"]["output_metrics"])["embed"]["sqnr_db"] == "inf"  # fp32 on ORT ≡ reference
    # without a task: the first output is scored as inferred classification, the other one is named as ignored
    dflt = df[df["model"] == "default"].iloc[0]
    assert dflt["task"] == "classification" and dflt["task_source"] == "inferred"
    assert json.loads(dflt["outputs_ignored"]) == ["embed"] and "not scored (no task): embed" in dflt["notes"]
    assert dflt["schema_version"] == SCHEMA_VERSION


def test_nan_outputs_from_a_backend_fail_the_cell(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(backends.BUILTIN, "nanny", "fault_backends:NanOutputBackend")
    cfg = tiny_sweep(tmp_path, backends=["nanny"])
    df = run_sweep(cfg).set_index("spec_id")
    assert df.loc["fp32", "status"] == "ok"
    bad = df.loc["int8-static-pc-wsym-minmax"]
    assert bad["status"] == "failed" and math.isnan(bad["top1"])
    assert "NonFiniteOutput" in bad["status_message"] and "NaN" in bad["status_message"]
    assert "'logits'" in bad["status_message"]


def test_streamed_data_layouts_hash_like_memory(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.random((10, 3, 4, 4), dtype=np.float32)
    masks = rng.integers(0, 3, (10, 4, 4))
    np.savez(tmp_path / "d.npz", input=x, labels=masks)
    (tmp_path / "mm").mkdir()
    np.save(tmp_path / "mm" / "input.npy", x)
    np.save(tmp_path / "mm" / "labels.npy", masks)
    for i in range(10):
        for name, arr in (("input", x), ("labels", masks)):
            (tmp_path / "ps" / name).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "ps" / name / f"{i:04d}.npy", arr[i])
    eager = load_dataset(tmp_path / "d.npz", ["input"])
    mm = load_dataset(tmp_path / "mm", ["input"], lazy=True)
    ps = load_dataset(tmp_path / "ps", ["input"], lazy=True)
    assert isinstance(mm.inputs["input"], np.memmap) and isinstance(ps.inputs["input"], SampleFiles)
    assert eager.sha256 == mm.sha256 == ps.sha256 == load_dataset(tmp_path / "ps", ["input"]).sha256
    assert np.array_equal(ps.batch(3, 7)["input"], x[3:7]) and np.array_equal(ps.labels[2:4], masks[2:4])
    assert load_dataset(tmp_path / "ps", ["input"], limit=4, lazy=True).sha256 == eager.head(4).sha256


def test_segmentation_sweep_on_streamed_masks(tmp_path: Path):
    pytest.importorskip("torch")
    from qtbench.harness.core import zoo

    model = zoo.build("seg_mnv3", tmp_path / "seg.onnx", input_size=32, width=0.25, num_classes=4, inter_channels=8)
    rng = np.random.default_rng(0)
    for i in range(6):
        for name, arr in (
            ("input", rng.random((3, 32, 32), dtype=np.float32)),
            ("labels", rng.integers(0, 4, (32, 32))),
        ):
            (tmp_path / "ev" / name).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "ev" / name / f"{i:03d}.npy", arr)
    np.savez(tmp_path / "cal.npz", input=rng.random((8, 3, 32, 32), dtype=np.float32))
    cfg = tiny_sweep(
        tmp_path,
        models=[{"path": str(model), "name": "seg"}],
        evaluation={"path": str(tmp_path / "ev")},
        calibration={"path": str(tmp_path / "cal.npz")},
        specs=["fp32", "int8-static-pc-wsym-minmax"],
        measure={"warmup": 1, "iterations": 3, "eval_batch_size": 4},
        run={"results_dir": str(tmp_path / "results"), "isolate": False},
        device={"idle_s": 0},
    )
    df = run_sweep(cfg).set_index("spec_id")
    assert set(df["status"]) == {"ok"}, df["status_message"].tolist()
    fp, q8 = df.loc["fp32"], df.loc["int8-static-pc-wsym-minmax"]
    assert fp["task"] == "segmentation" and fp["task_source"] == "model metadata"
    assert fp["mask_agreement"] == 1.0 and fp["miou_fp"] == 1.0 and 0 <= fp["miou"] <= 1
    assert 0.5 < q8["mask_agreement"] <= 1.0 and q8["eval_samples"] == 6
    assert q8["weights"] == "random" and zoo.RANDOM_WEIGHTS_NOTE in q8["notes"]
    assert math.isnan(q8["top1"]) and json.loads(q8["reliability"])["count"]  # per-pixel calibration bins


def test_schema_1_rows_upgrade_with_their_task():
    import pandas as pd

    old = pd.DataFrame([{"schema_version": 1, "status": "ok", "eval_samples": 64, "top1": 0.5}])
    df = upgrade_frame(old, "old.parquet")
    assert df.loc[0, "task"] == "classification" and df.loc[0, "output_metrics"] == "{}"
    assert "schema 1" in df.loc[0, "task_source"]

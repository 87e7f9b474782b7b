"""Every export form over every backend installed here, at fp32 / INT8 / INT4: each cell is ``ok`` with an audit
that agrees with its label, or says in one line why not (skipped, unavailable, failed, or a mismatch whose cause
the backend states). Real exports from PyPI wheels (PaddleOCR's, by Paddle2ONNX) and torch's dynamo exporter
stand beside the forms built offline."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from export_forms import FORMS, TASKS, build, ocr_data, real_exports, torch_dynamo

from qtbench.harness.run.sweep import run_sweep

pytest.importorskip("onnxruntime")
SPECS = ["fp32", "int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax"]
# mismatches a backend builds on purpose and explains in the audit (the row, report and check carry them):
# QNN's HTP has no per-channel MatMul, so the token model's MatMul weights are per tensor
EXPLAINED = {("token_ids", "qnn"): "no per-channel MatMul"}


def _backends() -> list[object]:
    found: list[object] = [{"name": "ort", "options": {"threads": 1}}, "simnpu"]
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        found.append("openvino")
    if importlib.util.find_spec("onnxruntime_qnn") or _has_qnn_ep():
        found.append("qnn")
    if importlib.util.find_spec("ai_edge_litert"):
        found += ["tflite", "vela"] if importlib.util.find_spec("ethosu") else ["tflite"]
    if os.environ.get("QTBENCH_RKNN_PYTHON") or Path.home().joinpath(".cache/qtbench/envs/rknn/bin/python").exists():
        found.append("rknn")
    return found


def _has_qnn_ep() -> bool:
    import onnxruntime as ort

    return "QNNExecutionProvider" in ort.get_available_providers()


def _entry(name: str, model: Path, data: Path, labels: bool = True, task: object = None) -> dict:
    e = {
        "name": name,
        "path": str(model),
        "evaluation": {"path": str(data), **({"labels": "labels"} if labels else {})},
        "calibration": {"path": str(data)},
        "timing": False,
    }
    if task is not None:
        e["task"] = task
    return e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """One sweep over every form (and PaddleOCR's text-direction classifier when rapidocr is installed)."""
    d = tmp_path_factory.mktemp("forms")
    models = []
    for form in FORMS:
        model, data = build(form, d / form, n=16)
        models.append(_entry(form, model, data, labels=form != "yolo_head", task=TASKS.get(form)))
    ocr = real_exports()
    if "ppocr_cls" in ocr:
        data = ocr_data("cls", ocr["ppocr_cls"], d / "ocr", n=12)
        models.append(_entry("ppocr_cls", ocr["ppocr_cls"], data))
    cfg = {
        "name": "forms",
        "models": models,
        "backends": _backends(),
        "specs": SPECS,
        "run": {"results_dir": str(d / "results"), "timeout_s": 300},
    }
    return run_sweep(cfg)


def _one_line(msg: object) -> bool:
    text = str(msg)
    return "\n" not in text and "Traceback" not in text and len(text) < 700


@pytest.mark.parametrize("form", [*FORMS, "ppocr_cls"])
def test_every_cell_is_ok_and_honoured_or_says_why_in_one_line(corpus, form: str) -> None:
    rows = corpus[corpus["model"] == form]
    if rows.empty:
        pytest.skip(f"{form}: rapidocr-onnxruntime not installed (the test extra ships it)")
    assert len(rows) == len(SPECS) * len(_backends())
    for r in rows.itertuples():
        where = f"{form} × {r.backend} × {r.spec_id}"
        assert r.status in ("ok", "skipped", "unavailable", "failed"), f"{where}: {r.status}: {r.status_message}"
        assert _one_line(r.status_message), f"{where}: {r.status_message!r}"
        if r.status == "failed":  # an SDK that rejects the model: qtbench's sentence first, the SDK's line after
            assert f"{r.backend} could not run {r.spec_id} on this model: " in r.status_message, where
            assert "(traceback: " in r.status_message, where  # the traceback is in a log, never in the row
        if r.status != "ok":
            assert r.status_message, where
            continue
        assert _one_line(r.audit) and r.audit, where
        if r.audit.startswith("mismatch"):
            why = EXPLAINED.get((form, r.backend))
            assert why and why in r.audit, f"{where}: {r.audit}"
        elif r.audit.startswith("not audited"):
            assert r.backend == "rknn", f"{where}: {r.audit}"  # rknn's .rknn has no public reader
    ort_rows = rows[rows["backend"] == "ort"]
    assert (ort_rows["status"] == "ok").all() and ort_rows["audit"].str.startswith("honoured").all()


def test_int4_differs_from_int8_where_4bit_weights_were_built(corpus) -> None:
    ok = corpus[(corpus["status"] == "ok") & corpus["audit"].str.startswith("honoured")]
    pairs = 0
    for (model, backend), g in ok.groupby(["model", "backend"]):
        by_spec = g.set_index("spec_id")
        if {"int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax"} <= set(by_spec.index):
            i8, i4 = by_spec.loc["int8-static-pc-wsym-minmax"], by_spec.loc["int4-static-pc-wsym-minmax"]
            assert i4["audit_bits"].startswith("4:") and i8["audit_bits"].startswith("8:"), (model, backend)
            col = "kl_fp" if np.isfinite(i8.get("kl_fp", np.nan)) else "sqnr_db"
            assert i4[col] != pytest.approx(i8[col], rel=1e-6), (model, backend, col)
            pairs += 1
    assert pairs >= len(FORMS)  # at least ort on every form


def test_constant_weights_form_measures_like_initializers(corpus) -> None:
    """After intake the Paddle2ONNX-style graph is the initializer graph: same numbers on every backend."""
    ok = corpus[corpus["status"] == "ok"].set_index(["model", "backend", "spec_id"])
    compared = 0
    for (model, backend, spec), r in ok.iterrows():
        if model != "initializers" or ("constant_weights", backend, spec) not in ok.index:
            continue
        c = ok.loc[("constant_weights", backend, spec)]
        assert c["kl_fp"] == pytest.approx(r["kl_fp"], rel=1e-6, abs=1e-12), (backend, spec)
        assert c["top1_agreement"] == r["top1_agreement"]
        assert "folded" in c["intake"]
        compared += 1
    assert compared >= 3


def test_real_paddle_exports_score_their_heads() -> None:
    """PaddleOCR's detector (a 1-channel probability map) and recogniser (N×T×6625 CTC scores) with true labels
    from rendered text, on ORT: the tasks score the real heads, not only SQNR."""
    ocr = real_exports()
    if not {"ppocr_det", "ppocr_rec"} <= set(ocr):
        pytest.skip("rapidocr-onnxruntime not installed (the test extra ships it)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        det = ocr_data("det", ocr["ppocr_det"], d, n=4)
        rec = ocr_data("rec", ocr["ppocr_rec"], d, n=4)
        cfg = {
            "name": "ocr",
            "models": [
                _entry("det", ocr["ppocr_det"], det, task="binary_segmentation"),
                _entry("rec", ocr["ppocr_rec"], rec, task={"name": "sequence", "ctc": True}),
            ],
            "backends": [{"name": "ort", "options": {"threads": 1}}],
            "specs": ["fp32", "int8-static-pc-wsym-minmax"],
            "run": {"results_dir": str(d / "results")},
        }
        df = run_sweep(cfg).set_index(["model", "spec_id"])
    assert (df["status"] == "ok").all(), df["status_message"].tolist()
    assert df["audit"].str.startswith("honoured").all()

    def metrics(model: str, spec: str) -> dict:
        (out,) = json.loads(df.loc[(model, spec), "output_metrics"]).values()
        return out

    fp_det, q_det = metrics("det", "fp32"), metrics("det", "int8-static-pc-wsym-minmax")
    assert fp_det["task"] == "binary_segmentation" and fp_det["mask_agreement"] == 1.0
    assert 0.1 < fp_det["iou"] <= 1.0  # word boxes against the detector's text map
    assert 0.5 < q_det["mask_agreement"] <= 1.0 and 0 <= q_det["iou_fp"] <= 1.0
    fp_rec, q_rec = metrics("rec", "fp32"), metrics("rec", "int8-static-pc-wsym-minmax")
    assert fp_rec["task"] == "sequence" and fp_rec["token_agreement"] == 1.0 and fp_rec["cer_fp"] == 0.0
    assert 0 <= fp_rec["cer"] < 0.5  # the rendered words are read, mostly right
    assert 0 <= q_rec["token_agreement"] <= 1.0 and 0 <= q_rec["cer_fp"] <= 1.0


def test_torch_dynamo_export_runs_and_is_honoured(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    model, data = torch_dynamo(tmp_path / "m")
    cfg = {
        "name": "dynamo",
        "models": [_entry("dynamo", model, data)],
        "backends": [b for b in _backends() if b in ("simnpu", "qnn", "openvino") or isinstance(b, dict)],
        "specs": SPECS,
        "run": {"results_dir": str(tmp_path / "results")},
    }
    df = run_sweep(cfg)
    ok = df[df["status"] == "ok"]
    assert len(ok) >= 3 and ok["audit"].str.startswith("honoured").all(), ok[["backend", "spec_id", "audit"]]
    assert df["status_message"].map(_one_line).all()
    q = ok[ok["spec_id"] != "fp32"]
    assert (q["top1_agreement"] > 0.5).all()

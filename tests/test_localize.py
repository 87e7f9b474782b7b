"""qtbench localize: per-layer divergence on a model with one planted bad layer, fallback search, storage, CLI."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import tiny_data

SPEC = "int8-static-pt-wsym-minmax"
FIXTURES = Path(__file__).parent / "fixtures"


def planted_cnn(path: Path, seed: int = 0, classes: int = 5) -> Path:
    """conv1 → relu → conv2 → relu → conv3 → relu → GAP → Gemm, with one planted bad layer: conv2.

    conv1's channel 7 is dead (bias −50: Relu always outputs 0), and conv2 has a weight of 100 on that channel. The
    float model never sees it, but a per-tensor weight scale of 100/127 rounds every other conv2 weight (σ 0.3) to
    0: conv2 is crushed on every backend that scales weights per tensor, and nothing else is.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    b1[7] = -50.0
    w2 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    w2[0, 7, 1, 1] = 100.0
    b2 = rng.normal(0, 0.1, 8).astype(np.float32)
    w3 = rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)
    b3 = rng.normal(0, 0.1, 8).astype(np.float32)
    wf = rng.normal(0, 1.0, (classes, 8)).astype(np.float32)
    bf = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3, "wf": wf, "bf": bf}
    graph = helper.make_graph(
        nodes,
        "planted",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sweep_dict(tmp: Path, model: Path, backends: list, specs: list | None = None) -> dict:
    return {
        "name": "loc",
        "models": [{"path": str(model), "name": "planted"}],
        "evaluation": {"path": str(tiny_data(tmp / "eval.npz", 200, seed=1))},
        "calibration": {"path": str(tiny_data(tmp / "calib.npz", 32, seed=2, labels=False))},
        "backends": backends,
        "specs": specs or [SPEC],
        "measure": {"warmup": 1, "iterations": 5, "min_duration_s": 0},
        "run": {"results_dir": str(tmp / "results"), "isolate": False},
    }


@pytest.fixture
def planted(tmp_path: Path) -> dict:
    return sweep_dict(
        tmp_path,
        planted_cnn(tmp_path / "planted.onnx"),
        ["ort", {"name": "simnpu", "label": "simnpu-hailo8", "options": {"profile": "hailo8"}}],
    )


def test_planted_layer_is_named_first_on_ort_and_simnpu(planted: dict) -> None:
    from qtbench.harness.analysis.localize import LocalizeSettings, localize

    run = localize(planted, specs=[SPEC, "int8-static-pt-wsym-minmax-qoperator"], settings=LocalizeSettings(8))
    s = run.summary.set_index(["backend", "spec_id"])
    for backend in ("ort", "simnpu-hailo8"):
        row = s.loc[(backend, SPEC)]
        assert row["status"] == "ok" and row["kind"] == "per layer"
        assert row["first_divergent_node"] == "conv2", row.to_dict()
        assert row["largest_jump_node"] == "conv2"
        assert row["first_divergent_sqnr_db"] < 10
    q = s.loc[("ort", "int8-static-pt-wsym-minmax-qoperator")]  # QOperator: Conv+Relu fused, named by the Conv
    assert q["status"] == "ok" and q["first_divergent_node"] == "conv2"
    qop = run.layers[(run.layers["spec_id"] != SPEC) & (run.layers["backend"] == "ort")].set_index("tensor")
    assert qop.loc["r2", "compared_as"] == "c2_quantized" and qop.loc["c2", "status"] == "fused"
    assert s.loc[("simnpu-hailo8", "int8-static-pt-wsym-minmax-qoperator")]["status"] == "skipped"
    layers = run.layers[run.layers["spec_id"] == SPEC]
    ort = layers[layers["backend"] == "ort"].set_index("tensor")
    # conv1 stays above the threshold; ORT's u8s8 kernels on AVX2 without VNNI lose ~10 dB there (int16 pair
    # saturation on a 0..255 input), the simulated grid does not
    for b, floor in (("ort", 20), ("simnpu-hailo8", 30)):
        lb = layers[(layers["backend"] == b) & (layers["status"] == "compared")].set_index("tensor")
        assert lb.loc["r1", "sqnr_db"] > floor and lb.loc["r2", "sqnr_db"] < 10
    # ORT's QDQ graph writes Relu outputs from the Conv: the Conv output is the fused boundary, said so
    assert ort.loc["c2", "status"] == "fused" and "Relu" in ort.loc["c2", "note"]
    assert json.loads(ort.loc["r2", "covers"]) == ["conv2", "relu2"]
    assert run.summary.loc[run.summary["backend"] == "ort", "tap_vs_cell_gap_db"].iloc[0] < 0.01
    assert (run.path / f"sqnr-{SPEC}.png").stat().st_size > 5000
    assert "conv2" in (run.path / "report.md").read_text()


def test_fallback_keeps_the_planted_layer_in_float_and_sweep_runs_it(planted: dict) -> None:
    from qtbench import run_sweep
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.analysis.localize.fallback import FallbackSettings
    from qtbench.harness.core.config import load_sweep

    fb = FallbackSettings(budget_s=60, max_candidates=3, max_k=2, samples=200, target_agreement=0.99)
    run = localize(planted, specs=[SPEC], settings=LocalizeSettings(8), fallback=fb)
    f = run.fallback
    for backend in ("ort", "simnpu-hailo8"):
        fb_b = f[f["backend"] == backend]
        base = fb_b[fb_b["step"] == "baseline"]["agreement"].iloc[0]
        best = fb_b[fb_b["best"]].iloc[0]
        assert json.loads(best["nodes"])[0] == "conv2"
        assert best["agreement"] > base + 0.15 and best["agreement"] >= 0.9, (base, best.to_dict())
        assert best["recovered_pp"] == pytest.approx(100 * (best["agreement"] - best["base_agreement"]))
    suggested = sorted(run.path.glob("fallback-planted-ort-*.yaml"))
    assert suggested
    sweep = load_sweep(suggested[0])
    assert sweep.backends[1].options["exclude_nodes"][0] == "conv2"
    df = run_sweep(sweep).set_index("backend")
    keep = sweep.backends[1].key
    assert json.loads(df.loc[keep, "backend_options"])["exclude_nodes"][0] == "conv2"
    assert json.loads(df.loc[keep, "backend_extra"])["exclude_nodes"][0] == "conv2"
    assert df.loc[keep, "top1_agreement"] > df.loc["ort", "top1_agreement"] + 0.15


def test_output_only_backends_say_why(planted: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from qtbench import backends
    from qtbench.harness.analysis import localize as loc

    monkeypatch.setitem(backends.BUILTIN, "opaque", "fault_backends:MissingSdkBackend")
    monkeypatch.setitem(backends.BUILTIN, "blackbox", "fault_backends:BlackboxBackend")
    run = loc.localize(planted, specs=[SPEC], backends=["blackbox", "opaque"], settings=loc.LocalizeSettings(8))
    s = run.summary.set_index("backend")
    assert s.loc["blackbox", "status"] == "output_only"
    assert s.loc["blackbox", "reason"] == "a compiled blob: outputs only"
    assert np.isfinite(s.loc["blackbox", "output_sqnr_db"])
    assert s.loc["opaque", "status"] == "unavailable" and "acme_npu" in s.loc["opaque", "reason"]
    rows = run.layers[run.layers["backend"] == "blackbox"]
    assert list(rows["status"]) == ["output_only"] and list(rows["tensor"]) == ["logits"]  # no made-up curve


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_qnn") is None, reason="onnxruntime-qnn not installed")
def test_qnn_is_output_only(planted: dict) -> None:
    from qtbench.harness.analysis.localize import LocalizeSettings, localize

    run = localize(planted, specs=[SPEC], backends=["qnn"], settings=LocalizeSettings(4))
    row = run.summary.iloc[0]
    assert row["status"] in ("output_only", "unavailable", "skipped")
    if row["status"] == "output_only":
        assert "context binary" in row["reason"]


def test_tflite_names_map_through_onnx2tf(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from qtbench.harness.analysis.localize import LocalizeSettings, localize

    for f in FIXTURES.glob("tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    cfg = sweep_dict(tmp_path, tmp_path / "tiny.onnx", ["tflite"], ["fp32", SPEC])
    run = localize(cfg, specs=["fp32", SPEC], settings=LocalizeSettings(4))
    lay = run.layers
    fp = lay[(lay["spec_id"] == "fp32") & (lay["status"] == "compared")]
    assert set(fp["tensor"]) >= {"r1", "r2", "logits"}
    assert (fp["sqnr_db"] > 60).all(), fp[["tensor", "sqnr_db"]]  # a wrong mapping would be near 0 dB
    q = lay[(lay["spec_id"] == SPEC) & (lay["status"] == "compared")]
    assert set(q["tensor"]) == set(fp["tensor"]) and (q["sqnr_db"] < 60).all()


def test_load_localization_round_trip(planted: dict) -> None:
    from qtbench import load_localization
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.core.errors import ConfigError

    run = localize(planted, specs=[SPEC], backends=["ort"], settings=LocalizeSettings(4))
    results = Path(planted["run"]["results_dir"]) / "loc"
    for path in (run.path, results, results / "localize"):
        back = load_localization(path)
        assert back[["tensor", "status", "sqnr_db"]].equals(run.layers[["tensor", "status", "sqnr_db"]])
    assert load_localization(run.path, "summary")["first_divergent_node"].iloc[0] == "conv2"
    localize(planted, specs=[SPEC], backends=["ort"], settings=LocalizeSettings(4))
    assert load_localization(results, latest=False)["run_id"].nunique() == 2
    with pytest.raises(ConfigError, match="fallback tables exist only"):
        load_localization(run.path, "fallback")
    with pytest.raises(ConfigError, match="no localisation runs"):
        load_localization(results / "nowhere")


def test_cli_localize(planted: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    from qtbench.harness.cli import main

    cfg = tmp_path / "loc.yaml"
    cfg.write_text(yaml.safe_dump(planted))
    assert (
        main(["localize", str(cfg), "--spec", SPEC, "--backends", "ort", "simnpu:hailo8", "--samples", "4", "-q"]) == 0
    )
    out = capsys.readouterr().out
    assert "conv2" in out and "simnpu-hailo8" in out and "results:" in out
    assert main(["localize", str(cfg), "--model", "nope"]) == 2
    assert "--model nope" in capsys.readouterr().err

"""The bundled demo, reduced to ONNX Runtime and two seeds per group (the full one takes minutes): real models,
real data, real numbers; fidelity-only replicas; the comparison over them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from qtbench.harness.core.config import load_sweep
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.demo import demo_config_path
from qtbench.harness.run.sweep import run_sweep

SPECS = ["fp32", "int8-static-pc-wsym-minmax", "int8-dynamic-pc-wsym", "int4-static-pt-wsym-minmax"]


def test_demo_config_is_a_cross_backend_study():
    sweep = load_sweep(demo_config_path())
    groups = {}
    for m in sweep.models:
        groups.setdefault(m.group_name, set()).add(m.seed)
        assert sweep.resolve(m.path).is_file(), m.path
    assert groups == {"fp": {0, 1, 2}, "quanttrim": {0, 1, 2}}
    slugs = {b.name for b in sweep.backends}
    assert {"ort", "openvino", "tflite", "qnn"} <= slugs
    assert sum(b.name == "simnpu" for b in sweep.backends) >= 3
    assert {s.precision for s in sweep.specs} >= {"int8", "int4"}
    assert {s.scaling for s in sweep.specs if not s.is_float} >= {"static", "dynamic"}
    assert [m.timing for m in sweep.models if m.seed == 0] == [True, True]  # latency timed on seed 0 only


@pytest.mark.slow
def test_demo_int8_is_near_fp32_int4_is_lower_and_replicas_are_fidelity_only(tmp_path: Path):
    sweep = load_sweep(demo_config_path())
    sweep = dataclasses.replace(
        sweep,
        models=[m for m in sweep.models if m.seed in (0, 1)],
        backends=[b for b in sweep.backends if b.name == "ort"],
        specs=[QuantSpec.parse(s) for s in SPECS],
        exclude=[],
        run=dataclasses.replace(sweep.run, results_dir=str(tmp_path)),
        measure=dataclasses.replace(sweep.measure, warmup=2, iterations=20, min_duration_s=0.0),
    )
    df = run_sweep(sweep)
    assert len(df) == len(sweep.models) * len(sweep.specs)
    assert set(df["status"]) == {"ok"}
    for model, rows in df.groupby("model"):
        ok = rows.set_index("spec_id")
        fp32 = ok.loc["fp32", "top1"]
        assert 0.8 < fp32 < 0.95, model  # a trained Fashion-MNIST classifier, not noise
        assert ok.loc["fp32", "eval_samples"] == 2000
        int8 = ok[ok.precision == "int8"]
        assert (abs(int8["top1"] - fp32) <= 0.02).all(), int8["top1"]  # minmax per-channel: up to 1.3 pp here
        int4 = ok[ok.precision == "int4"]
        # ORT's static INT8 (u8 activations × s8 weights) loses more here than other backends (KL ≈ 1–3e-2 vs
        # ≈ 5e-4 on simnpu/OpenVINO with the same ranges), so INT4 is compared with the cleanest INT8 cell
        assert (int4["kl_fp"] > int8["kl_fp"].min()).all() and (int4["top1_agreement"] < 1).all()  # real 4-bit
        if "-fp-" in model:
            assert (int4["top1"] < fp32).all()
        else:  # a Quant-Trim checkpoint may match its FP32 at INT4 (2,000 images: ±0.7 pp noise), not beat it by much
            assert (int4["top1"] - fp32 <= 0.01).all() and (int4["top1"] > fp32 - 0.02).all(), int4["top1"]
        timed = bool(rows["timed"].iloc[0])
        assert timed == model.endswith("-s0")
        if timed:  # every timed row says where its energy figure comes from; estimates say so in the source
            assert (ok["energy_source"] != "").all() and (ok["energy_mj_per_inf"] > 0).all()
            est = ok[ok["energy_numbers"] == "estimated"]
            assert est["energy_source"].str.startswith("estimated").all()
        else:  # fidelity only: scored, never timed, and recorded as such
            assert ok["latency_ms_p50"].isna().all() and (ok["iterations"] == 0).all()
            assert (ok["timing_boundary"] == "none (fidelity only)").all() and not math.isnan(ok["top1"].max())
    assert set(df["group"]) == {"fp", "quanttrim"} and set(df["seed"]) == {0, 1}
    from qtbench.harness.analysis.compare import compare

    cmp = compare(sweep.results_path, "fp", "quanttrim", n_boot=200)
    row = cmp[(cmp.precision == "int4") & (cmp.slice == "all") & (cmp.metric == "mean_gap_pp")].iloc[0]
    assert row["paired"] and row["baseline_seeds"] == 2 and row["ci_lo"] < row["difference"] < row["ci_hi"]

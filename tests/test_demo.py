"""The bundled demo, as `qtbench sweep` runs it (fewer timed iterations): real model, real data, real numbers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config import load_sweep
from harness.demo import demo_config_path
from harness.sweep import run_sweep


@pytest.mark.slow
def test_demo_int8_is_near_fp32_and_int4_is_lower(tmp_path: Path):
    sweep = load_sweep(demo_config_path())
    sweep = dataclasses.replace(
        sweep,
        run=dataclasses.replace(sweep.run, results_dir=str(tmp_path)),
        measure=dataclasses.replace(sweep.measure, warmup=2, iterations=20),
    )
    df = run_sweep(sweep)
    assert len(df) == len(sweep.models) * len(sweep.specs)
    assert set(df["status"]) <= {"ok", "skipped"}
    for model, rows in df.groupby("model"):
        ok = rows[rows.status == "ok"].set_index("spec_id")
        fp32 = ok.loc["fp32", "top1"]
        assert 0.8 < fp32 < 0.95, model  # a trained Fashion-MNIST classifier, not noise
        assert ok.loc["fp32", "eval_samples"] == 2000
        int8 = ok[ok.precision == "int8"]
        assert len(int8) >= 6
        assert (abs(int8["top1"] - fp32) <= 0.01).all(), int8["top1"]
        int4 = ok[ok.precision == "int4"]
        assert (int4["top1"] < fp32).all() and (int4["kl_fp"] > int8["kl_fp"].max()).all()
        # every ok row says where its energy figure comes from; estimates say so in the source itself
        assert (ok["energy_source"] != "").all() and (ok["energy_mj_per_inf"] > 0).all()
        est = ok[ok["energy_numbers"] == "estimated"]
        assert est["energy_source"].str.startswith("estimated").all()

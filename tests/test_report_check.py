"""Reports render offline with escaped strings; `qtbench check` separates regressions from noise."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from qtbench.harness.analysis.check import run_gates
from qtbench.harness.analysis.gates import Gate, load_gates
from qtbench.harness.analysis.report import build_report, pareto_front
from qtbench.harness.cli import main
from qtbench.harness.core.errors import ConfigError, UserError
from qtbench.harness.run.store import load_results
from qtbench.harness.run.sweep import run_sweep

from models import synthetic_results, tiny_sweep


def _correct(n: int, acc: float, seed: int) -> np.ndarray:
    c = np.zeros(n, bool)
    c[np.random.default_rng(seed).permutation(n)[: round(acc * n)]] = True
    return c


@pytest.fixture
def baseline(tmp_path: Path) -> tuple[Path, np.ndarray]:
    correct = _correct(2000, 0.90, 0)
    return synthetic_results(tmp_path / "a", "base", latency_ms=1.0, correct=correct, seed=1), correct


def test_known_regression_fails_latency_and_accuracy(tmp_path: Path, baseline):
    base, correct = baseline
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:100]] = False  # −5 pp, paired
    cand = synthetic_results(tmp_path / "b", "cand", latency_ms=1.3, correct=worse, seed=2)
    res = run_gates(base, cand, load_gates(None))
    by = {(v.cell, v.gate.split()[0]): v for v in res.verdicts}
    assert by[("m · ort · int8-static-pc-wsym-minmax", "top1")].verdict == "fail"
    assert by[("m · ort · int8-static-pc-wsym-minmax", "latency_ms_p50")].verdict == "fail"
    assert by[("m · ort · int8-static-pc-wsym-minmax", "ece")].verdict == "pass"
    assert res.failed and main(["check", "--baseline", str(base), "--candidate", str(cand)]) == 1


def test_noise_only_passes(tmp_path: Path, baseline):
    base, correct = baseline
    noisy = correct.copy()
    flips = np.random.default_rng(5).permutation(len(noisy))[:6]
    noisy[flips] = ~noisy[flips]  # a handful of symmetric flips
    cand = synthetic_results(tmp_path / "b", "cand", latency_ms=1.0, correct=noisy, seed=3)
    res = run_gates(base, cand, load_gates(None))
    assert [v.verdict for v in res.verdicts] == ["pass"] * len(res.verdicts)
    assert main(["check", "--baseline", str(base), "--candidate", str(cand), "--strict"]) == 0


def test_small_eval_set_is_inconclusive_and_strict_exits_3(tmp_path: Path):
    a = _correct(50, 0.9, 0)
    b = a.copy()
    b[np.flatnonzero(a)[0]] = False  # −2 pp on 50 samples: past the gate, not significant
    base = synthetic_results(tmp_path / "a", "base", correct=a, seed=1)
    cand = synthetic_results(tmp_path / "b", "cand", correct=b, seed=1)
    gates = tmp_path / "g.yaml"
    gates.write_text("top1: -0.5pp\n")
    res = run_gates(base, cand, load_gates(gates))
    assert {v.verdict for v in res.verdicts} == {"inconclusive"}
    assert "not significant" in res.verdicts[0].reason
    args = ["check", "--baseline", str(base), "--candidate", str(cand), "--gates", str(gates)]
    assert main(args) == 0 and main([*args, "--strict"]) == 3
    junit = tmp_path / "j.xml"
    md = tmp_path / "s.md"
    main([*args, "--junit", str(junit), "--markdown", str(md)])
    suite = ET.parse(junit).getroot()
    assert suite.get("skipped") == "2" and suite.get("failures") == "0"
    assert "| ~ |" in md.read_text()


def test_bound_gates_and_device_mismatch(tmp_path: Path, baseline):
    base, correct = baseline
    cand = synthetic_results(tmp_path / "b", "cand", correct=correct, seed=1, ece=0.2)
    res = run_gates(base, cand, [Gate.parse("ece", "<= 0.05")])
    assert {v.verdict for v in res.verdicts} == {"fail"}
    other = synthetic_results(tmp_path / "c", "other", correct=correct, seed=1, device="dev-b")
    with pytest.raises(UserError, match="not comparable across devices"):
        run_gates(base, other, load_gates(None))
    assert main(["check", "--baseline", str(base), "--candidate", str(other)]) == 2
    assert run_gates(base, other, load_gates(None), allow_mismatch=True).notes


@pytest.mark.parametrize(
    ("metric", "rule", "match"), [("top1", "down a bit", "cannot read rule"), ("accuracy", "-1pp", "unknown metric")]
)
def test_bad_gates(metric, rule, match):
    with pytest.raises(ConfigError, match=match):
        Gate.parse(metric, rule)


def test_gate_arithmetic():
    assert Gate.parse("top1", "-0.5pp").violated(0.90, 0.894)
    assert not Gate.parse("top1", "-0.5pp").violated(0.90, 0.896)
    assert Gate.parse("latency_ms_p50", "+5%").violated(1.0, 1.06)
    assert not Gate.parse("latency_ms_p50", "+5%").violated(1.0, 0.5)
    assert Gate.parse("top1_agreement", ">= 0.99").violated(0.0, 0.98)


def test_pareto_front():
    assert pareto_front([1, 2, 3, 2.5], [5, 4, 1, 0.5]) == [0, 1, 2]


def test_report_renders_offline_with_escaped_strings(tmp_path: Path):
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax-qoperator"])
    cfg["models"][0]["name"] = "tiny<script>alert(1)</script>"
    run_sweep(cfg)
    out = build_report([tmp_path / "results" / "tiny"], tmp_path / "rep")
    text = out["html"].read_text()
    assert "<script>" not in text and "tiny&lt;script&gt;" in text
    assert "http://" not in text and "https://" not in text  # opens offline
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) >= 3
    for img in images:
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "numbers: measured" in text and "skipped" in text and "4-bit" in text
    md = out["markdown"].read_text()
    assert "| model | backend | spec |" in md and "![" in md
    assert all(p.is_file() for p in out.values())


def test_protocol_not_achieved_iterations_decides_comparability(tmp_path: Path, baseline):
    """With a min-duration stop rule faster cells run more iterations; that alone must not block a comparison."""
    import pandas as pd

    base, correct = baseline
    cand = synthetic_results(tmp_path / "b", "cand", correct=correct, seed=2, n_samples=300)
    assert run_gates(base, cand, load_gates(None)).verdicts
    f = next((tmp_path / "b" / "cand").glob("rows-*.parquet"))
    df = pd.read_parquet(f)
    df["min_duration_s"] = 0.5
    df.to_parquet(f)
    with pytest.raises(UserError, match="min_duration_s differs"):
        run_gates(base, cand, load_gates(None))


def test_report_survives_reruns_under_new_cell_keys_and_hostile_model_names(tmp_path: Path):
    """A plain re-run with another --iterations adds rows under new cell keys; a model name with matplotlib math
    text ($…$) and raw HTML must neither crash plotting nor reach the Markdown as HTML."""
    name = "tiny $x^2$ <script>alert(1)</script> [x](javascript:alert(1))"
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"])
    cfg["models"][0]["name"] = name
    run_sweep(cfg)
    run_sweep({**cfg, "measure": {"warmup": 2, "iterations": 12}})  # same cells, new keys
    out = build_report([tmp_path / "results" / "tiny"], tmp_path / "rep")
    md = out["markdown"].read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "](javascript" not in md
    assert len(load_results(tmp_path / "results" / "tiny", latest=False)) == 4  # the history keeps both runs
    html_text = out["html"].read_text()
    assert "<script>" not in html_text and "gap 95 % CI" in html_text
    assert md.count("int8-static-pc-wsym-minmax |") == 1  # one summary row per cell, the newest


def test_study_report_has_comparison_heatmap_and_per_cell_intervals(tmp_path: Path):
    from test_compare import write_study

    flip = {("fp", "int8"): 0.005, ("qt", "int8"): 0.005, ("fp", "int4"): 0.05, ("qt", "int4"): 0.01}
    out = build_report([write_study(tmp_path, flip, n=600)], tmp_path / "rep")
    md = out["markdown"].read_text()
    assert "## Comparison: is the candidate more robust?" in md
    assert "INT8 mean gap: no difference detectable, CI [" in md and "candidate better" in md
    assert {"gap_bars", "gap_heatmap"} <= set(out)
    # every quantized row carries its gap interval: "[lo, hi]" in the CI column
    rows = [line for line in md.splitlines() if "| int4-static-pt-wsym-minmax |" in line]
    assert len(rows) == 12 and all(re.search(r"\| \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\] \|", r) for r in rows)
    html_text = out["html"].read_text()
    assert "img{max-width:100%" in html_text


def test_row_flags_catch_unchanged_top1_with_low_agreement_and_unstable_timing():
    from qtbench.harness.analysis.report import row_flags

    r = {"status": "ok", "timed": True, "unstable": True, "latency_cv": 0.31, "top1_agreement": 0.84, "gap_pp": 1.6}
    flags = row_flags(r)
    assert "unstable timing (CV 31 %)" in flags
    assert "top-1 up +1.60 pp but only 84.0 % agreement with FP32" in flags
    assert "top-1 unchanged (|Δ| < 0.05 pp) but only 84.0 % agreement with FP32" in row_flags({**r, "gap_pp": 0.0})
    assert row_flags({**r, "gap_pp": -3.0, "unstable": False}) == []  # a visible drop needs no extra warning
    assert row_flags({**r, "timed": False, "top1_agreement": 0.99}) == ["fidelity only (not timed)"]


def test_check_table_lists_the_notable_verdicts_past_its_cap(tmp_path: Path, baseline, monkeypatch, capsys):
    """Past CHECK_TABLE_ROWS verdicts the terminal table keeps fails/inconclusives/significant changes and says
    how many it left out; --all lists every verdict."""
    from qtbench.harness.cli import check as check_cmd

    base, correct = baseline
    cand = synthetic_results(tmp_path / "b", "cand", latency_ms=1.3, correct=correct, seed=2)  # latency fails only
    monkeypatch.setattr(check_cmd, "CHECK_TABLE_ROWS", 1)
    args = ["check", "--baseline", str(base), "--candidate", str(cand)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "5 of 6 verdicts not listed" in out  # 2 cells × 3 gates; the cap keeps one (a fail)
    assert main([*args, "--all"]) == 1
    assert "not listed" not in capsys.readouterr().out

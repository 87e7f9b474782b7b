"""--fallback-search chooses on one split of the evaluation samples and confirms on a disjoint one: a suggestion is
written only with a paired interval above 0 on the held-out samples, and a lucky choice is rejected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_localize_rule import SPEC, planted_sweep

SIMNPU = {"name": "simnpu", "label": "simnpu-hailo8", "options": {"profile": "hailo8"}}


def _confirm_rows(fallback: object) -> object:
    return fallback[fallback["step"] == "confirm"].set_index("backend")  # type: ignore[index]


def test_paired_change_is_the_exact_paired_bootstrap_interval() -> None:
    from qtbench.harness.analysis.localize.fallback import paired_change

    base = np.zeros(100, bool)
    new = base.copy()
    new[:10] = True  # 10 samples fixed, none broken
    d, lo, hi = paired_change(base, new)
    assert d == pytest.approx(0.10) and 0.04 <= lo < 0.10 < hi <= 0.16
    new[10:12] = False
    base[10:12] = True  # now 2 of them break: +8 of 100
    d2, lo2, _ = paired_change(base, new)
    assert d2 == pytest.approx(0.08) and lo2 < lo
    few = np.zeros(100, bool)
    few[:2] = True  # the case: a choice that moves 2 samples
    d3, lo3, hi3 = paired_change(np.zeros(100, bool), few)
    assert d3 == pytest.approx(0.02) and lo3 <= 0 < hi3  # cannot be confirmed
    # a Monte Carlo paired bootstrap approaches the exact interval
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 100, (20_000, 100))
    reps = (new[idx].astype(float) - base[idx]).mean(axis=1)
    assert np.quantile(reps, 0.025) == pytest.approx(lo2, abs=0.011)
    assert np.quantile(reps, 0.975) == pytest.approx(paired_change(base, new)[2], abs=0.011)


def test_split_is_seeded_disjoint_and_complete() -> None:
    from qtbench.harness.analysis.localize.fallback import split_samples
    from qtbench.harness.core.errors import ConfigError

    s, c = split_samples(101, 0.5, 3)
    assert len(c) == 50 and len(s) == 51 and not set(s) & set(c) and set(s) | set(c) == set(range(101))
    assert np.array_equal(split_samples(101, 0.5, 3)[1], c) and not np.array_equal(split_samples(101, 0.5, 4)[1], c)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split_samples(10, 1.0)


def test_confirm_verdicts() -> None:
    from qtbench.harness.analysis.localize.fallback import _Outcome, confirm

    n = 200
    idx = np.arange(100, 200)  # the confirmation half
    ref_correct = np.ones(n, bool)
    base = _Outcome(np.zeros(n, bool), np.zeros(n, bool), np.ones(n))
    good = _Outcome(np.r_[np.zeros(100, bool), np.ones(100, bool)], np.ones(n, bool), np.zeros(n))
    v = confirm(base, good, ref_correct, idx)
    assert v["confirmed"] and v["recovered_pp"] == 100 and v["recovered_lo_pp"] == 100
    assert v["gap_base_pp"] == 100 and v["gap_pp"] == 0 and v["gap_change_hi_pp"] < 0 and v["kl"] == 0
    lucky = _Outcome(np.r_[np.ones(100, bool), np.zeros(100, bool)], np.zeros(n, bool), np.ones(n))
    v = confirm(base, lucky, ref_correct, idx)  # all of its gain was on the search half
    assert not v["confirmed"] and v["verdict"].startswith("rejected: no gain") and v["recovered_pp"] == 0
    agree = np.zeros(n, bool)
    agree[100:140] = True
    correct = np.ones(n, bool)
    base_c = _Outcome(np.zeros(n, bool), correct, np.ones(n))
    worse = _Outcome(agree, np.r_[np.ones(100, bool), np.zeros(100, bool)], np.ones(n))
    v = confirm(base_c, worse, ref_correct, idx)  # agreement up, accuracy down: not a fix
    assert not v["confirmed"] and "gap" in v["verdict"] and v["gap_change_lo_pp"] > 0


def test_fallback_confirms_the_planted_depthwise_layer(tmp_path: Path) -> None:
    """On ort, openvino and simnpu keeping dwconv (with its Relu) in float is chosen on the search split and confirmed
    on the held-out half with a paired interval above 0; the sweep file states that effect."""
    import yaml

    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.analysis.localize.fallback import FallbackSettings

    cfg = planted_sweep(tmp_path, "depthwise")
    fb = FallbackSettings(budget_s=120, max_candidates=2, max_k=1, samples=300)
    run = localize(cfg, specs=[SPEC], settings=LocalizeSettings(16), fallback=fb)
    f = run.fallback
    c = _confirm_rows(f)
    ran = [b for b in ("ort", "openvino", "simnpu-hailo8") if b in c.index]
    assert {"ort", "simnpu-hailo8"} <= set(ran)
    for b in ran:
        row = c.loc[b]
        assert row["confirmed"] and row["best"] and json.loads(row["nodes"]) == ["dwconv", "relu_dw"], row.to_dict()
        assert row["split"] == "confirmation" and row["confirm_samples"] == 150 and row["search_samples"] == 150
        assert row["recovered_lo_pp"] > 5 and row["recovered_pp"] > 15  # measured: +23 to +34 pp
        assert row["recovered_pp"] == pytest.approx(100 * (row["agreement"] - row["base_agreement"]))
        assert row["gap_change_hi_pp"] < 0 and row["kl"] < row["kl_base"]  # labels: the top-1 gap closes too
        search = f[(f["backend"] == b) & (f["step"] == "single") & f["chosen"]]
        assert len(search) == 1 and search["split"].iloc[0] == "search"
        path = run.path / f"fallback-depthwise-{b}-{SPEC}.yaml"
        text = path.read_text()
        assert "# confirmed on 150 held-out samples not used to choose" in text
        desc = yaml.safe_load(text)["description"]
        assert desc.startswith("keep dwconv, relu_dw in float:") and "95% paired interval" in desc
    report = (run.path / "report.md").read_text()
    assert "confirmed: agreement interval above 0" in report and "[+" in report


def test_a_choice_that_only_helps_the_search_split_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Force a candidate (pwconv, which does not fix the depthwise model) and put every sample it happens to fix into
    the search split: the search picks it, the confirmation split shows no gain, and no sweep file is written."""
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.analysis.localize import fallback as fbm

    cfg = planted_sweep(tmp_path, "depthwise", backends=[SIMNPU])
    fb = fbm.FallbackSettings(budget_s=120, max_candidates=1, max_k=1, samples=300)
    monkeypatch.setattr(fbm, "candidates", lambda rows, limit: [("pwconv", 1.0)])
    seen: list = []
    real = fbm._outcome

    def spy(q: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> object:
        seen.append(real(q, ref, labels))
        return seen[-1]

    monkeypatch.setattr(fbm, "_outcome", spy)
    localize(cfg, specs=[SPEC], settings=LocalizeSettings(8), fallback=fb)
    base, cand = seen[0], seen[1]
    helped = np.flatnonzero(~base.agree & cand.agree)
    assert len(helped) >= 1, "pwconv in float changes no prediction: the case cannot be built"
    unchanged = np.flatnonzero(base.agree == cand.agree)
    search = np.sort(np.r_[helped, unchanged[: 150 - len(helped)]])  # what it breaks stays held out
    held_out = np.setdiff1d(np.arange(300), search)
    assert not (~base.agree[held_out] & cand.agree[held_out]).any()  # nothing it fixes is held out
    monkeypatch.setattr(fbm, "split_samples", lambda n, fraction, seed: (search, held_out))

    run = localize(cfg, specs=[SPEC], settings=LocalizeSettings(8), fallback=fb)
    f = run.fallback
    single = f[f["step"] == "single"].iloc[0]
    assert single["recovered_pp"] > 0 and single["chosen"]  # the search split saw a gain
    row = _confirm_rows(f).loc["simnpu-hailo8"]
    assert json.loads(row["nodes"]) == ["pwconv", "relu_pw"] and not row["confirmed"] and not row["best"]
    assert row["verdict"].startswith("rejected") and row["recovered_pp"] <= 0 and row["recovered_lo_pp"] <= 0
    assert not f["best"].any() and not list(run.path.glob("fallback-*.yaml"))
    assert "rejected" in (run.path / "report.md").read_text()


def test_nothing_found_and_too_few_samples_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.analysis.localize import fallback as fbm

    cfg = planted_sweep(tmp_path, "depthwise", backends=[SIMNPU])
    monkeypatch.setattr(fbm, "candidates", lambda rows, limit: [("flatten", 1.0)])  # float already: no change
    fb = fbm.FallbackSettings(budget_s=60, max_candidates=1, max_k=1, samples=300)
    run = localize(cfg, specs=[SPEC], settings=LocalizeSettings(8), fallback=fb)
    row = _confirm_rows(run.fallback).loc["simnpu-hailo8"]
    assert row["verdict"].startswith("nothing found") and not row["confirmed"] and row["k"] == 0
    assert not list(run.path.glob("fallback-*.yaml"))
    few = fbm.FallbackSettings(budget_s=60, samples=12)
    row = _confirm_rows(localize(cfg, specs=[SPEC], settings=LocalizeSettings(8), fallback=few).fallback).iloc[0]
    assert row["verdict"].startswith("not run") and "--agreement-samples" in row["verdict"]

"""`qtbench compare`: a planted difference is found, none is reported as not detectable, and the interval covers
the truth in ~95 % of simulated studies (seed noise and evaluation-sample noise both random)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qtbench.harness.analysis.compare import Study, combine, compare, headlines, to_markdown
from qtbench.harness.run.store import ResultsStore

from models import make_record

SPECS = {"fp32": "fp32", "int8-static-pc-wsym-minmax": "int8", "int4-static-pt-wsym-minmax": "int4"}


def write_study(root: Path, flip: dict[tuple[str, str], float], n: int = 2000, seeds=(0, 1, 2), seed: int = 0) -> Path:
    """Groups fp/qt × seeds × (ort, openvino) × SPECS through the real store. ``flip[(group, precision)]`` is the
    probability that a quantized cell turns an image the FP32 model got right into an error; images differ in
    fragility (shared by every cell, so pairing over images matters) and seeds add their own offset."""
    rng = np.random.default_rng(seed)
    store = ResultsStore(root / "study")
    store.record_run({"run_id": "r1"})
    labels = rng.integers(0, 10, n)
    fragility = rng.uniform(0, 2, n)
    i = 0
    for group in ("fp", "qt"):
        for s in seeds:
            fp_correct = rng.random(n) < 0.88
            fp_pred = np.where(fp_correct, labels, (labels + 1) % 10)
            seed_shift = rng.normal(0, 0.003)
            for backend in ("ort", "openvino"):
                for spec, prec in SPECS.items():
                    if prec == "fp32":
                        pred = fp_pred
                    else:
                        p = np.clip(fragility * (flip[(group, prec)] + seed_shift), 0, 1)
                        broken = fp_correct & (rng.random(n) < p)
                        pred = np.where(broken, (labels + 2) % 10, fp_pred)
                    rec = make_record(
                        record_id=f"r{i}",
                        cell_key=f"k{i}",
                        model=f"{group}-s{s}",
                        group=group,
                        seed=s,
                        backend=backend,
                        backend_slug=backend,
                        spec_id=spec,
                        precision=prec,
                        scaling="none" if prec == "fp32" else "static",
                        granularity="" if prec == "fp32" else spec.split("-")[2],
                        numbers="measured",
                        eval_samples=n,
                        eval_sha256="ev",
                        top1=float((pred == labels).mean()),
                        fp_top1=float(fp_correct.mean()),
                        ece=0.03,
                        kl_fp=0.0 if prec == "fp32" else 0.01,
                    )
                    store.write_cell("r1", i, rec, None, pred, labels)
                    i += 1
    store.consolidate("r1")
    return root / "study"


def _row(df, prec: str, metric: str = "mean_gap_pp", slice_: str = "all"):
    sel = df[(df.precision == prec) & (df.metric == metric) & (df.slice == slice_)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_planted_int4_difference_is_found_and_int8_is_not_significant(tmp_path: Path):
    flip = {("fp", "int8"): 0.005, ("qt", "int8"): 0.005, ("fp", "int4"): 0.05, ("qt", "int4"): 0.01}
    df = compare(write_study(tmp_path, flip), "fp", "qt", n_boot=400)
    int4 = _row(df, "int4")
    # true mean gap: −0.88 × flip × E[fragility] = −4.4 pp (fp) vs −0.88 pp (qt) → +3.5 pp for qt
    assert 2.5 < int4["difference"] < 4.5 and int4["significant"] and int4["better"] == "candidate"
    assert int4["ci_lo"] > 0 and int4["paired"] and int4["baseline_seeds"] == 3 and int4["cells"] == 2
    assert int4["interval_covers"] == "seeds + samples"
    assert _row(df, "int4", "agreement_pct")["better"] == "candidate"
    int8 = _row(df, "int8")
    assert not int8["significant"] and int8["ci_lo"] < 0 < int8["ci_hi"] and abs(int8["difference"]) < 0.5
    assert set(df[df.precision == "int4"]["slice_value"]) >= {"ort", "openvino", "static-pt"}
    lines = headlines(df)
    assert any(h.startswith("INT8 mean gap: no difference detectable, CI [") for h in lines), lines
    assert any(h.startswith("INT4 mean gap: qt − fp = +") and "candidate better" in h for h in lines), lines
    md = to_markdown(df)
    assert "INT8 mean gap: no difference detectable, CI [" in md
    assert "| int4 | fp | 3 | 2 | -" in md.replace("−", "-")


def test_one_seed_says_seed_noise_not_estimable_and_groups_are_checked(tmp_path: Path):
    flip = {("fp", "int8"): 0.005, ("qt", "int8"): 0.005, ("fp", "int4"): 0.05, ("qt", "int4"): 0.01}
    path = write_study(tmp_path, flip, n=500, seeds=(0,))
    df = compare(path, n_boot=200)  # two groups: fp is the baseline without being told
    assert df.attrs["baseline"] == "fp" and df.attrs["candidate"] == "qt"
    assert _row(df, "int4")["interval_covers"].startswith("samples only (1 seed")
    assert math.isnan(_row(df, "int4", "kl_x1e3")["ci_lo"])
    from qtbench.harness.core.errors import UserError

    with pytest.raises(UserError, match="--candidate-group 'nope' is not a group"):
        compare(path, "fp", "nope")


def _simulated_breaks(rng: np.random.Generator, n: int, k: int, rate: dict[str, float], mult: np.ndarray) -> np.ndarray:
    """(group fp/qt, seed, cell, image): whether a quantized cell breaks an image FP32 got right. Images differ in
    fragility (shared by every cell), seeds shift each group's break rate, cells scale it by ``mult``."""
    fragility = rng.uniform(0, 2, n)
    fp_correct = rng.random((2, k, 1, n)) < 0.88
    shift = rng.normal(0, 0.006, (2, k, 1, 1))
    base = np.array([rate["fp"], rate["qt"]])[:, None, None, None]
    p = np.clip(fragility * (base + shift) * mult[None, None, :, None], 0, 1)
    return fp_correct & (rng.random((2, k, len(mult), n)) < p)


def test_interval_covers_the_true_difference_in_95_percent_of_simulated_studies():
    """200 studies: seed effects, image fragility and per-image outcomes all redrawn; the interval is computed by
    the same code path as `compare` (Study → compare_study) and must cover the population difference."""
    import pandas as pd

    from qtbench.harness.analysis.compare import compare_study

    rng = np.random.default_rng(7)
    n, k, cells_per_group = 400, 3, 4
    rate = {"fp": 0.05, "qt": 0.03}
    mult = np.array([0.5, 0.8, 1.2, 1.5])  # backend × spec differences, same for both groups
    truth = -0.88 * (rate["qt"] - rate["fp"]) * mult.mean() * 100  # qt − fp in pp; E[fragility] = 1
    meta = pd.DataFrame(
        [
            {"group": g, "seed": s, "backend": f"b{c % 2}", "spec_id": f"s{c}", "precision": "int4", "family": "x"}
            for g in ("fp", "qt")
            for s in range(k)
            for c in range(cells_per_group)
        ]
    ).assign(kl_fp=0.0, ece_change=0.0)
    covered = 0
    for study_i in range(200):
        broken = _simulated_breaks(rng, n, k, rate, mult)
        gap = -broken.reshape(-1, n).astype(np.float32)
        study = Study(meta, gap, 1 - broken.reshape(-1, n).astype(np.float32))
        df = compare_study(study, "fp", "qt", n_boot=300, seed=study_i, by=())
        r = df[(df.slice == "all") & (df.metric == "mean_gap_pp")].iloc[0]
        covered += r["ci_lo"] <= truth <= r["ci_hi"]
    assert 0.90 <= covered / 200 <= 0.995, covered


def test_combine_paired_and_unpaired():
    base, cand = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.1, 3.9])
    paired = combine(base, cand, True, None)
    unpaired = combine(base, cand, False, None)
    assert paired.estimate == pytest.approx(unpaired.estimate) == pytest.approx(1.0)
    # pairing removes the shared seed effect: a much narrower interval
    assert (paired.hi - paired.lo) < 0.3 * (unpaired.hi - unpaired.lo)
    assert paired.significant and not unpaired.significant


def test_compare_cli_prints_headlines_and_writes_markdown(tmp_path: Path, capsys):
    from qtbench.harness.cli import main

    flip = {("fp", "int8"): 0.005, ("qt", "int8"): 0.005, ("fp", "int4"): 0.05, ("qt", "int4"): 0.01}
    path = write_study(tmp_path, flip, n=500)
    md = tmp_path / "cmp.md"
    assert main(["compare", str(path), "--bootstrap", "200", "--markdown", str(md), "--details"]) == 0
    out = capsys.readouterr().out
    assert "INT8 mean gap: no difference detectable" in out and "backend: openvino" in out
    assert "| int4 | qt |" in md.read_text()
    assert main(["compare", str(path), "--baseline-group", "nope"]) == 2
    assert "--baseline-group 'nope' is not a group of these results (groups: fp, qt)" in capsys.readouterr().err


def test_sweep_of_a_two_group_study_prints_the_comparison(tmp_path: Path, capsys):
    import yaml

    from qtbench.harness.cli import main

    from models import tiny_cnn, tiny_sweep

    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"])
    cfg["models"] = [
        {
            "path": str(tiny_cnn(tmp_path / f"{g}{s}.onnx", seed=10 * i + s)),
            "name": f"{g}-s{s}",
            "group": g,
            "seed": s,
            **({} if s == 0 else {"timing": False}),
        }
        for i, g in enumerate(("fp", "qt"))
        for s in (0, 1)
    ]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml"), "-q", "--no-report", "--no-isolate"]) == 0
    out = capsys.readouterr().out
    assert "qt vs fp: mean ± sd over seeds" in out and "INT8 mean gap:" in out


def test_md_escape_neutralises_markdown_and_html_and_leaves_plain_text_alone():
    """Every character that could open Markdown or HTML syntax in a table cell is escaped (the fast path for
    plain text skips only strings without any of them): checked against the full escaping on 50k random strings."""
    import html
    import random
    import re

    from qtbench.harness.analysis.compare import md_escape

    def full(text):
        text = re.sub(r"([\\`*_{}|#~])", r"\\\1", html.escape(str(text), quote=False))
        return text.replace("](", "]\\(").replace("![", "!\\[")

    assert md_escape("a|b") == "a\\|b" and md_escape("<i>") == "&lt;i&gt;" and md_escape("[x](y)") == "[x]\\(y)"
    assert md_escape("![i](u)") == "!\\[i]\\(u)" and md_escape("12.5") == "12.5" and md_escape(0.25) == "0.25"
    rng = random.Random(0)
    alphabet = "ab1.-+ %\\`*_{}|#~&<>[]()!\"'"
    for _ in range(50_000):
        t = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert md_escape(t) == full(t), t


def test_backends_with_bit_identical_outputs_count_once(tmp_path: Path, capsys):
    """A real study sweep where two backend entries compute the same numbers (ort twice, under two labels) and a
    third differs (openvino): rows carry a digest of their outputs, compare counts the pair once and says so."""
    import yaml

    from qtbench.harness.cli import main
    from qtbench.harness.run.store import load_results

    from models import tiny_cnn, tiny_sweep

    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pt-wsym-minmax"], measure={"warmup": 1, "iterations": 3})
    cfg["backends"] = [
        {"name": "ort", "options": {"threads": 1}},
        {"name": "ort", "label": "ort-copy", "options": {"threads": 1, "spinning": False}},
        {"name": "openvino", "options": {"threads": 1}},
    ]
    cfg["models"] = [
        {"path": str(tiny_cnn(tmp_path / f"{g}{s}.onnx", seed=10 * i + s)), "name": f"{g}-s{s}", "group": g,
         "seed": s, **({} if s == 0 else {"timing": False})}
        for i, g in enumerate(("fp", "qt"))
        for s in (0, 1)
    ]  # fmt: skip
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["sweep", str(tmp_path / "s.yaml"), "-q", "--no-report"]) == 0
    rows = load_results(tmp_path / "results" / "tiny").set_index(["model", "backend", "spec_id"])
    q = "int8-static-pt-wsym-minmax"
    digest = rows["outputs_sha256"]
    assert digest[("fp-s0", "ort", q)] == digest[("fp-s0", "ort-copy", q)] != ""
    assert digest[("fp-s0", "ort", q)] != digest[("fp-s0", "openvino", q)]
    assert digest[("fp-s0", "ort", q)] != digest[("qt-s0", "ort", q)]
    df = compare(tmp_path / "results" / "tiny", "fp", "qt", n_boot=200)
    r = _row(df, "int8")
    assert r["cells"] == 2 and r["coincident"] == 1  # ort-copy counts once with ort; openvino stays
    note = next(n for n in df.attrs["notes"] if "bit-identical" in n)
    assert "ort-copy · int8-static-pt-wsym-minmax = ort · int8-static-pt-wsym-minmax" in note
    assert "2 distinct numeric result(s)" in note
    assert any("(over 2 distinct numerics)" in h for h in headlines(df))
    capsys.readouterr()


def test_duplicated_backends_do_not_narrow_the_interval_in_simulation():
    """Correlated backends, as the study that found this: 6 backend × spec cells of which 3 are exact copies of
    others. Counted once, the interval covers the mean over distinct numerics in ~95 % of 200 simulated studies
    and the estimate is unbiased; counted as independent backends (the old behaviour), the copies weigh the
    copied pipeline four times and the estimate is biased towards it."""
    import pandas as pd

    from qtbench.harness.analysis.compare import compare_study

    rng = np.random.default_rng(11)
    n, k = 400, 3
    rate = {"fp": 0.05, "qt": 0.03}
    mult = np.array([0.3, 0.6, 2.4])  # three distinct pipelines; the third is the one that is copied
    copies = [0, 1, 2, 2, 2, 2]  # cells 3-5 repeat pipeline 2 bit for bit (e.g. three simnpu profiles)
    truth = -0.88 * (rate["qt"] - rate["fp"]) * mult.mean() * 100
    meta = pd.DataFrame(
        [
            {"group": g, "seed": s, "model": f"{g}{s}", "backend": f"b{c}", "spec_id": "s", "precision": "int4",
             "family": "x"}
            for g in ("fp", "qt")
            for s in range(k)
            for c in range(len(copies))
        ]
    ).assign(kl_fp=0.0, ece_change=0.0)  # fmt: skip
    covered = {"distinct": 0, "as_independent": 0}
    estimates: dict[str, list[float]] = {"distinct": [], "as_independent": []}
    for study_i in range(200):
        broken = _simulated_breaks(rng, n, k, rate, mult)[:, :, copies, :]  # copies: the same draws, identical
        gap = -broken.reshape(-1, n).astype(np.float32)
        ids = [f"{g}{s}-p{copies[c]}" for g in range(2) for s in range(k) for c in range(len(copies))]
        for name, numerics in (("distinct", ids), ("as_independent", [f"u{i}" for i in range(len(ids))])):
            study = Study(meta.assign(numerics=numerics), gap, 1 - broken.reshape(-1, n).astype(np.float32))
            df = compare_study(study, "fp", "qt", n_boot=300, seed=study_i, by=())
            r = df[(df.slice == "all") & (df.metric == "mean_gap_pp")].iloc[0]
            covered[name] += r["ci_lo"] <= truth <= r["ci_hi"]
            estimates[name].append(r["difference"])
            if name == "distinct":
                assert r["cells"] == 3 and r["coincident"] == 3
    assert 0.93 <= covered["distinct"] / 200 <= 0.995, covered
    bias = {k: abs(float(np.mean(v)) - truth) for k, v in estimates.items()}
    assert bias["distinct"] < 0.1 < bias["as_independent"], (bias, truth)  # the copies pull the old estimate

"""A report answers on screen one: the verdict card comes first with its intervals, the header's counts are the
table's, the figures read plainly (no raw math text, not-run cells unlike zero, measured and estimated apart),
and the full table is collapsed with its repeated sentences as footnotes. No browser needed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import qtbench.harness.analysis.report as report
from qtbench.harness.analysis.report import build_report
from qtbench.harness.run.sweep import run_sweep

from models import make_record, tiny_sweep


@pytest.fixture
def captured(monkeypatch) -> list:
    """Every matplotlib figure a report draws, drawn once and kept open: (figure, its tick labels)."""
    figs: list = []
    original = report._fig_to_png

    def keep(fig):
        fig.canvas.draw()
        labels = [
            t.get_text()
            for ax in fig.axes
            for t in [*ax.get_xticklabels(which="both"), *ax.get_yticklabels(which="both")]
        ]
        figs.append((fig, labels))
        return original(fig)

    monkeypatch.setattr(report, "_fig_to_png", keep)
    return figs


def _study(tmp_path: Path) -> Path:
    from test_compare import write_study

    flip = {("fp", "int8"): 0.005, ("qt", "int8"): 0.005, ("fp", "int4"): 0.05, ("qt", "int4"): 0.01}
    return write_study(tmp_path, flip, n=600)


def test_verdict_card_is_first_and_states_the_comparison_intervals(tmp_path: Path):
    from qtbench.harness.analysis.compare import compare

    results = _study(tmp_path)
    out = build_report([results], tmp_path / "rep")
    text = out["html"].read_text()
    body = text[text.index("<body>") + len("<body>") :]
    # the first content section after the title is the card
    assert re.match(r"\s*<h1>[^<]*</h1>\s*<section id='verdict'", body)
    card = body[body.index("<section id='verdict'") : body.index("</section>")]
    assert "Is qt more robust to quantization than fp" in card
    # the numbers are compare's own (the same frame as `qtbench compare` and the comparison section)
    df = compare(results)
    sel = df[(df["slice"] == "all") & (df["metric"] == "mean_gap_pp")].set_index("precision")
    int4, int8 = sel.loc["int4"], sel.loc["int8"]
    assert int4["significant"] and int4["difference"] > 0 and not int8["significant"]
    assert f"qt loses {int4['difference']:.2f} pp less top-1 than fp" in card
    assert f"95 % CI {int4['ci_lo']:.2f} to {int4['ci_hi']:.2f} pp" in card and "a real difference" in card
    assert f"95 % CI {int8['ci_lo']:+.2f} to {int8['ci_hi']:+.2f} pp, which includes 0" in card
    assert "no detectable difference" in card
    assert "Worst backend × spec cells" in card and "measured on this host" in card
    # then the figures, then the comparison details, then the full table (collapsed)
    fig, cmp_, table = (text.index(s) for s in ("<figure>", "Comparison: is the candidate", "id='full-table'"))
    assert text.index("</section>") < fig < cmp_ < table
    md = out["markdown"].read_text()
    assert next(line for line in md.splitlines() if line.startswith("## ")) == "## Verdict"
    assert f"95 % CI {int4['ci_lo']:.2f} to {int4['ci_hi']:.2f} pp" in md


def _flag_study(root: Path) -> Path:
    """One model: FP32 plus three INT8 cells whose predictions moved behind (a) an unchanged top-1, (b) a −1 pp
    change within noise, (c) a clear −10 pp drop; all three agree with FP32 on < 97 % of samples."""
    from qtbench.harness.run.store import ResultsStore

    n = 200
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    fp_correct = np.arange(n) < 160
    fp_pred = np.where(fp_correct, labels, (labels + 1) % 10)
    wrong = np.flatnonzero(~fp_correct)
    right = np.flatnonzero(fp_correct)

    def moved(k_wrong: int, lost: int) -> np.ndarray:
        p = fp_pred.copy()
        p[wrong[:k_wrong]] = (labels[wrong[:k_wrong]] + 2) % 10  # wrong → another wrong class: top-1 flat
        p[right[:lost]] = (labels[right[:lost]] + 3) % 10  # right → wrong
        return p

    cells = {
        "fp32": fp_pred,
        "int8-static-pc-wsym-minmax": moved(10, 0),
        "int8-static-pt-wsym-minmax": moved(10, 2),
        "int8-dynamic-pc-wsym": moved(10, 20),
    }
    store = ResultsStore(root / "flags")
    store.record_run({"run_id": "r1"})
    for i, (spec, pred) in enumerate(cells.items()):
        rec = make_record(
            record_id=f"r{i}",
            cell_key=f"k{i}",
            backend_slug="ort",
            spec_id=spec,
            precision=spec.split("-")[0],
            scaling="none" if spec == "fp32" else spec.split("-")[1],
            granularity="" if spec == "fp32" else "per-channel",
            numbers="measured",
            eval_samples=n,
            eval_sha256="ev",
            top1=float((pred == labels).mean()),
            fp_top1=float(fp_correct.mean()),
            top1_agreement=float((pred == fp_pred).mean()),
            ece=0.03,
        )
        store.write_cell("r1", i, rec, None, pred, labels)
    store.consolidate("r1")
    return root / "flags"


def test_header_flag_count_is_the_tables_and_unchanged_means_unchanged(tmp_path: Path):
    out = build_report([_flag_study(tmp_path)], tmp_path / "rep")
    md = out["markdown"].read_text()
    flagged = [line for line in md.splitlines() if line.startswith("| ") and "agreement with FP32" in line]
    notes = re.findall(r"(\d+) quantized cell\(s\) agree with FP32 on (?:<|&lt;) 97 %", md)
    assert notes and {int(n) for n in notes} == {len(flagged)} and len(flagged) == 2
    (flat,) = [line for line in flagged if "int8-static-pc-wsym-minmax" in line]
    (noisy,) = [line for line in flagged if "int8-static-pt-wsym-minmax" in line]
    assert "top-1 unchanged" in flat
    assert "unchanged" not in noisy and "top-1 -1.00 pp, within noise" in noisy
    assert not any("int8-dynamic-pc-wsym" in line for line in flagged)  # a visible drop needs no extra warning
    html_text = out["html"].read_text()
    card = html_text[html_text.index("<section id='verdict'") : html_text.index("</section>")]
    assert f"{len(flagged)} quantized cell(s) agree with FP32" in card


def test_row_flag_wording_follows_the_tolerance():
    from qtbench.harness.analysis.report import low_agreement_flag

    r = {"top1_agreement": 0.9}
    assert low_agreement_flag({**r, "gap_pp": 0.0}).startswith("top-1 unchanged")
    assert low_agreement_flag({**r, "gap_pp": -0.04}).startswith("top-1 unchanged")
    assert low_agreement_flag({**r, "gap_pp": -0.95}) == ""  # no interval: a drop is a drop
    assert low_agreement_flag({**r, "gap_pp": -0.95}, -1.9, 0.1).startswith("top-1 -0.95 pp, within noise")
    assert low_agreement_flag({**r, "gap_pp": 1.6}).startswith("top-1 up +1.60 pp")
    assert low_agreement_flag({**r, "top1_agreement": 0.99, "gap_pp": 0.0}) == ""


def test_plain_sweep_report_log_ticks_table_in_details_and_footnotes(tmp_path: Path, captured):
    cfg = tiny_sweep(tmp_path, specs=["fp32", "int8-static-pc-wsym-minmax"])
    run_sweep(cfg)
    out = build_report([tmp_path / "results" / "tiny"], tmp_path / "rep")
    labels = [t for _, ls in captured for t in ls]
    assert labels and not any("mathdefault" in t or "$" in t for t in labels)
    text = out["html"].read_text()
    assert re.search(r"<h1>[^<]*</h1>\s*<section id='verdict'", text)
    assert "Which backend × spec cells keep top-1 fidelity" in text
    # the whole summary table sits inside <details>, collapsed by default
    details = text.index("<details id='full-table'>")
    assert text.index("<th>model</th>", details) < text.index("</details>", details)
    assert "<details id='full-table' open" not in text
    # each energy-source sentence: once, as a footnote, with [n] markers in the rows
    from qtbench.harness.run.store import load_results

    sources = {s for s in load_results(tmp_path / "results" / "tiny")["energy_source"] if s}
    assert sources
    table = text[details : text.index("</details>", details)]
    for s in sources:
        assert table.count(s.replace("'", "&#x27;")) == 1
    assert "<td>[1]</td>" in table and "Energy source" in table
    md = out["markdown"].read_text()
    md_table = md[md.index("<details><summary>Full table") : md.index("</details>")]
    assert "| [1] |" in md_table and all(md_table.count(s) == 1 for s in sources)


def test_plain_log_axis_reads_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False}):
        fig, ax = plt.subplots()
        ax.plot([0.05, 50], [1, 2])
        report.plain_log_axis(ax, "x")
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        plt.close(fig)
    assert {"0.1", "1", "10"} <= set(labels) and not any("math" in t for t in labels)


def test_heatmap_draws_not_run_cells_hatched_not_as_zero(captured):
    import pandas as pd
    from matplotlib.colors import to_rgba

    rep = pd.DataFrame(
        [
            ("fp", "ort", "int8-a", "int8", 0.0),
            ("fp", "ort", "int4-a", "int4", -3.0),
            ("fp", "qnn", "int8-a", "int8", -0.2),  # qnn × int4-a: not run
        ],
        columns=["group", "backend", "spec_id", "precision", "gap_pp"],
    ).assign(lo=-1.0, hi=1.0, seeds=1)
    report.fig_gap_heatmap(rep)
    fig, _ = captured[-1]
    ax = fig.axes[0]
    arr = ax.images[0].get_array()  # rows: ort, qnn; columns: int4-a, int8-a
    assert bool(arr.mask[1, 0]) and not bool(arr.mask[0, 1]) and float(arr[0, 1]) == 0.0
    # masked cells are transparent over a hatched grey axes background: never the colour of a zero gap
    assert ax.images[0].get_cmap().get_bad()[3] == 0 and ax.patch.get_hatch() == "///"
    assert to_rgba(ax.patch.get_facecolor()) == to_rgba(report.NOT_RUN_COLOR)
    zero = ax.images[0].to_rgba(np.ma.masked_invalid([[0.0]]))[0, 0]
    assert tuple(zero) != to_rgba(report.NOT_RUN_COLOR) and zero[3] == 1
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t for t in ax.texts}
    assert texts[(0, 1)].get_text() == "–"
    assert texts[(0, 0)].get_color() == "white" and texts[(1, 0)].get_color() == "black"  # −3.0 is dark red
    assert texts[(0, 0)].get_fontsize() >= 7


def test_measured_and_estimated_fps_are_separate_panels(captured):
    from qtbench.harness.core.records import to_frame

    rows = to_frame(
        [
            make_record(record_id="a", backend="ort", numbers="measured", fps=900.0, top1=0.8, fp_top1=0.8),
            make_record(record_id="b", backend="ort", spec_id="int8-x", precision="int8", fps=1500.0, top1=0.79),
            make_record(record_id="c", backend="qnn", numbers="simulated", fps=150.0, est_fps=1200.0, top1=0.78),
        ]
    )
    rows["numbers"] = rows["numbers"].replace("", "measured")
    report.fig_power_or_accuracy(rows, use_power=False)
    fig, _ = captured[-1]
    axes = [ax for ax in fig.axes if ax.get_xlabel()]
    assert len(axes) == 2
    assert "MEASURED" in axes[0].get_title() and "measured" in axes[0].get_xlabel()
    assert "ESTIMATED" in axes[1].get_title() and "ESTIMATED" in axes[1].get_xlabel()
    # each panel has its own points: the estimated target FPS (1200) never lands on the host's axis
    xs = [[float(x) for line in ax.lines if line.get_linestyle() == "None" for x in line.get_xdata()] for ax in axes]
    assert sorted(xs[0]) == [900.0, 1500.0] and xs[1] == [1200.0]


def test_reliability_shows_every_group_and_gap_legend_counts_seeds(captured):
    import json
    from dataclasses import asdict

    import pandas as pd

    rel = json.dumps({"confidence": [0.5] * 15, "accuracy": [0.5] * 15, "count": [1] * 15})
    recs = []
    for g in ("fp", "qt"):
        for spec, prec, ece in (("fp32", "fp32", 0.02), ("int8-a", "int8", 0.05), ("int4-a", "int4", 0.09)):
            rec = make_record(record_id=f"{g}{spec}", model=f"{g}-s0", group=g, spec_id=spec, precision=prec, ece=ece)
            recs.append(asdict(rec) | {"reliability": rel})
    report.fig_reliability(pd.DataFrame(recs))
    fig, _ = captured[-1]
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert any(t.startswith("group fp:") for t in titles) and any(t.startswith("group qt:") for t in titles)
    rep = pd.DataFrame(
        [("fp", "ort", "int8-a", "int8", -0.1, 1), ("qt", "ort", "int8-a", "int8", -0.2, 1)],
        columns=["group", "backend", "spec_id", "precision", "gap_pp", "seeds"],
    ).assign(lo=-1.0, hi=1.0)
    ok = pd.DataFrame(recs)
    report.fig_gap_facets(rep, ok)
    fig, _ = captured[-1]
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend == ["fp (1 seed per cell)", "qt (1 seed per cell)"]
    assert not [leg for ax in fig.axes if (leg := ax.get_legend()) is not None]  # no legend over the bars

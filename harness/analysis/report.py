"""`qtbench report`: a self-contained HTML report (plots embedded as data URIs, no network) and a Markdown twin.

Every plot is also written as PNG beside the report. Every figure says where its numbers come from (measured,
simulated, estimated); every string from results (model names, error messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench.harness.analysis.check import predictions_of, samples_of
from qtbench.harness.analysis.compare import (
    build_study,
    cell_intervals,
    compare_study,
    difference_table,
    group_table,
    headlines,
    latest_per_cell,
    md_table,
    replica_intervals,
    to_markdown,
)
from qtbench.harness.analysis.compare import md_escape as m
from qtbench.harness.analysis.report_verdict import UNCHANGED_PP, build_verdict
from qtbench.harness.core.errors import ResultsError, UserError
from qtbench.harness.core.tables import SUMMARY_COLUMNS, format_value, html_text, mismatched, with_gap
from qtbench.harness.core.zoo import RANDOM_WEIGHTS_NOTE
from qtbench.harness.run.store import load_results, stores_under

PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int4": "D"}
MAX_LATENCY_CELLS = 40
MAX_BAR_CELLS = 48
MAX_HEAT_AXIS = 24  # backends or specs per heat-map axis (the worst gaps)
MAX_HEAT_GROUPS = 6


@dataclass
class Figure:
    name: str
    title: str
    png: bytes
    caption: str


@dataclass
class ReportData:
    rows: Any
    samples: dict[str, Any]  # record id → raw latencies (ns), every repeat
    training: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, Any] = field(default_factory=dict)  # record id → per-sample predictions


def _provenance(df: Any) -> str:
    kinds = sorted({n for n in df.get("numbers", []) if isinstance(n, str) and n})
    text = "numbers: " + (", ".join(kinds) if kinds else "none")
    if (
        "weights" in df and (df["weights"] == "random").any()
    ):  # zoo models (qtbench.harness.core.zoo): say it on every figure
        text += f"; {RANDOM_WEIGHTS_NOTE}"
    return text


def _fig_to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # constrained layout instead of bbox_inches="tight", which draws every figure twice
    fig.set_layout_engine("constrained")
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _label_numbers(ax: Any, df: Any, text: str | None = None) -> None:
    """Where the numbers come from, as a second line of the x label: inside the axes it covered data."""
    label = ax.get_xlabel()
    ax.set_xlabel((label + "\n" if label else "") + (text or _provenance(df)), fontsize=9)


def pareto_front(x: list[float], y: list[float]) -> list[int]:
    """Indices of points not dominated when larger x and larger y are better, sorted by x."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], -y[i]))
    front, best_y = [], -math.inf
    for i in order:
        if y[i] > best_y:
            front.append(i)
            best_y = y[i]
    return sorted(front, key=lambda i: x[i])


# ---------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------
def has_power(ok: Any) -> bool:
    return "power_w_peak" in ok and bool(ok["power_w_peak"].notna().any())


def throughput_frame(ok: Any) -> tuple[Any, int]:
    """Rows for a throughput axis, and how many were left out.

    A simulator's wall clock is not the target's: simulated/estimated rows take the target's *estimated* FPS
    (``est_fps``; flagged ``_est``, coloured by backend as ``target: <backend>``), or are left out without one.
    """
    ok = ok.copy()
    measured = ok["numbers"].eq("measured") if "numbers" in ok else True
    est_fps = ok["est_fps"] if "est_fps" in ok else float("nan")
    ok["fps"] = ok["fps"].where(measured, est_fps)
    ok["_est"] = ~measured if "numbers" in ok else False
    dropped = int(ok["fps"].isna().sum())
    ok = ok[ok["fps"].notna()].copy()
    ok["device"] = ok["device"].where(~ok["_est"], "target: " + ok["backend"].astype(str))
    return ok, dropped


FILL_STYLES = ("full", "none", "left", "bottom", "right", "top")


def _group_col(df: Any) -> Any:
    """The checkpoint group of each row: models[].group, else the model name (each checkpoint its own group)."""
    if "group" not in df:
        return df["model"].astype(str)
    g = df["group"].fillna("").astype(str)
    return g.where(g != "", df["model"].astype(str))


def plain_number(v: float, _pos: Any = None) -> str:
    """A tick label without math text: 0.1, 1, 10, 1,000 (never ``$\\mathdefault{10^{-1}}$``)."""
    if v == 0 or not math.isfinite(v):
        return "0"
    if abs(v) >= 1:
        return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 * abs(v) else f"{v:,.1f}"
    return f"{v:.6f}".rstrip("0").rstrip(".") if abs(v) >= 1e-6 else f"{v:.0e}"


def plain_log_axis(ax: Any, axis: str = "x") -> None:
    """A log scale whose ticks read 0.1, 1, 10. With ``text.parse_math`` off (a report's strings must never be
    math text) matplotlib's default log formatter prints raw ``$\\mathdefault{10^{-1}}$``; this one prints plain
    numbers, and labels the 2× and 5× minor ticks where the axis spans under two decades (too few major ticks)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    a = ax.xaxis if axis == "x" else ax.yaxis
    getattr(ax, f"set_{axis}scale")("log")
    a.set_major_locator(LogLocator(base=10))
    a.set_major_formatter(FuncFormatter(plain_number))
    lo, hi = getattr(ax, f"get_{axis}lim")()
    if lo > 0 and hi / lo < 100:
        a.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
        a.set_minor_formatter(FuncFormatter(plain_number))
    else:
        a.set_minor_formatter(NullFormatter())


def fig_power_or_accuracy(ok: Any, use_power: bool) -> Figure | None:
    """Median FPS vs mean power (whisker up to the peak) or vs top-1; colour = backend, marker = precision,
    fill style = checkpoint group. Host FPS (measured here) and the target's FPS (ESTIMATED for simulated /
    estimated rows) are different quantities: separate panels, each with its own Pareto front (dashed)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    power_known = has_power(ok)
    all_backends = sorted(ok["backend"].astype(str).unique())  # colours stay the same across both plots
    untimed = 0
    if "timed" in ok:
        untimed = int((~ok["timed"].astype(bool)).sum())
        ok = ok[ok["timed"].astype(bool)]
    if use_power:
        ok = ok[ok["power_w_mean"].notna()]
    if "numbers" in ok and len(ok):  # simulated/estimated rows without the target's estimate: left out
        no_est = ok["est_fps"].isna() if "est_fps" in ok else True
        dropped = int((ok["numbers"].ne("measured") & no_est).sum())
    else:
        dropped = 0
    ok, _ = throughput_frame(ok)
    if ok.empty:
        return None
    ok = ok.assign(_group=_group_col(ok))
    ycol = "power_w_mean" if use_power else "top1"
    panels = [(est, ok[ok["_est"] == est]) for est in (False, True)]
    panels = [(est, d) for est, d in panels if len(d)] or [(False, ok)]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(7.5 if len(panels) == 1 else 11.0, 4.8), squeeze=False, sharey=True
    )
    cmap, n = (plt.cm.tab10, 10) if len(all_backends) <= 10 else (plt.cm.tab20, 20)
    colors = {b: cmap(i % n) for i, b in enumerate(all_backends)}
    groups = sorted(ok["_group"].unique())
    fills = {g: FILL_STYLES[i % len(FILL_STYLES)] for i, g in enumerate(groups)}
    scale = 1 if use_power else 100
    for ax, (est, d) in zip(axes[0], panels, strict=True):
        # one plot call per (backend, precision, group) set: per-point calls made 1,000-row reports slow
        for (backend, prec, grp), g in d.groupby(["backend", "precision", "_group"]):
            c = colors[str(backend)]
            ax.plot(
                g["fps"],
                g[ycol] * scale,
                ls="",
                marker=PRECISION_MARKERS.get(prec, "o"),
                markersize=7,
                color=c,
                markeredgecolor=c,
                markeredgewidth=1.3,
                fillstyle=fills[grp],
                alpha=0.95,
            )
            if use_power and "power_w_peak" in g:
                w = g.dropna(subset=["power_w_peak"])
                if len(w):
                    ax.errorbar(
                        w["fps"],
                        w[ycol],
                        yerr=[0 * w[ycol], (w["power_w_peak"] - w[ycol]).clip(lower=0)],
                        fmt="none",
                        color=c,
                        capsize=2,
                        lw=0.8,
                    )
        # lower power is better: negate y for the front
        idx = pareto_front(list(d["fps"]), list(-d[ycol] if use_power else d[ycol]))
        front = d.iloc[idx]
        ax.plot(front["fps"], front[ycol] * scale, "k--", lw=1, alpha=0.6)
        if est:
            ax.set_title("target, ESTIMATED (simulated / estimated rows)", fontsize=9, color="#8a4b00")
            ax.set_xlabel("target's ESTIMATED FPS (performance model, est_fps)")
        else:
            ax.set_title("this host, MEASURED" if len(panels) > 1 else "", fontsize=9)
            ax.set_xlabel("median FPS on this host (batch 1), measured")
        if len(d) and d["fps"].max() > 100 * max(d["fps"].min(), 1e-9):
            plain_log_axis(ax, "x")
        ax.grid(alpha=0.3)
        kinds = ", ".join(sorted({str(x) for x in d.get("energy_numbers", []) if x}))
        _label_numbers(ax, d, f"numbers: latency measured, power {kinds}" if use_power else None)
    two = len(panels) > 1
    if use_power:
        estimated = "estimated" in set(ok.get("energy_numbers", []))
        axes[0, 0].set_ylabel("mean power (W); whisker up to peak" + (" — ESTIMATED" if estimated else ""))
        sources = "; ".join(sorted({str(x) for x in ok["energy_source"] if x}))
        caption = (
            "Power–throughput: mean power over the timed loop (marker) with a whisker up to the peak sample. "
            f"Dashed: Pareto front (more FPS, less mean power), one per panel. Power source: {sources}."
            + (" These powers are ESTIMATED from CPU time, not measured by a meter." if estimated else "")
        )
    else:
        axes[0, 0].set_ylabel("top-1 accuracy (%)")
        caption = "Accuracy against throughput. Dashed: Pareto front (more FPS, more accuracy), one per panel."
        if two:
            caption += (
                " Left: FPS MEASURED on this host. Right: simulated/estimated rows at the target's ESTIMATED FPS "
                "(est_source), not at the simulator's speed on this host — a different quantity, so a separate "
                "panel and front."
            )
        if dropped:
            caption += f" {dropped} simulated/estimated row(s) without a target estimate are left out."
        if not power_known:
            caption += " Power is not known for these rows (no power meter recorded), so there is no power plot."
    if untimed:
        caption += f" {untimed} fidelity-only row(s) (models[].timing: false) have no latency and are not plotted."
    caption += " Colour = backend, marker = precision, fill style = checkpoint group."
    handles = [
        Line2D([], [], marker=m, ls="", color="gray", label=p)
        for p, m in PRECISION_MARKERS.items()
        if p in set(ok["precision"])
    ]
    handles += [
        Line2D([], [], marker="s", ls="", color=colors[b], label=b) for b in sorted(ok["backend"].astype(str).unique())
    ]
    handles += [
        Line2D([], [], marker="o", ls="", color="black", fillstyle=fills[g], markersize=7, label=f"group: {g}")
        for g in groups
    ]
    handles.append(Line2D([], [], ls="--", color="black", alpha=0.6, label="Pareto front"))
    axes[0, -1].legend(handles=handles, fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    title = "Power vs throughput" if use_power else "Accuracy vs throughput"
    fig.suptitle(title + (": measured host vs estimated target" if two else ""), fontsize=11)
    return Figure("power_throughput" if use_power else "accuracy_throughput", title, _fig_to_png(fig), caption)


def _numbers_tag(rows: Any) -> dict[tuple[str, str], str]:
    """(backend, spec) → " [sim]" / " [est]" for cells whose numbers are not measured on this host."""
    out = {}
    for (b, sp), g in rows.groupby(["backend", "spec_id"]):
        kinds = {str(n) for n in g["numbers"]} - {"measured", ""}
        out[(b, sp)] = "".join(f" [{k[:3]}]" for k in sorted(kinds))
    return out


def fig_gap_facets(rep: Any, ok: Any) -> Figure | None:
    """FP→Q gap per backend × spec, one panel per precision, one bar per checkpoint group (mean over seeds) with
    its 95 % interval (seeds + evaluation samples, or samples only for one seed). Horizontal, so a study with
    many backends grows downwards and fits the page width. The legend sits above the panels, off the bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    if rep is None or rep.empty:
        return None
    tags = _numbers_tag(ok)
    precs = [p for p in ("int4", "int8", "fp16") if p in set(rep["precision"])]
    groups = sorted(rep["group"].unique())
    panels = []
    for p in precs:
        r = rep[rep["precision"] == p]
        cells = r.groupby(["backend", "spec_id"])["gap_pp"].min().sort_values()
        cap = max(8, 2 * MAX_BAR_CELLS // max(1, len(groups)))  # bars per panel stay bounded: a figure per study
        shown = list(cells.index[:cap])  # the worst gaps matter most; the summary table has every cell
        panels.append((p, r, sorted(shown), len(cells) - len(shown)))
    heights = [max(1.2, 0.16 * len(c) * max(1, len(groups)) + 0.6) for _, _, c, _ in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7.5, sum(heights) + 1.0), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    h = 0.8 / max(1, len(groups))
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    most = int(rep["seeds"].max())
    for ax, (prec, r, cells, cut) in zip(axes[:, 0], panels, strict=True):
        y = np.arange(len(cells))
        for i, g in enumerate(groups):
            v = r[r["group"] == g].set_index(["backend", "spec_id"]).reindex(cells)
            ax.barh(
                y + i * h,
                v["gap_pp"],
                h,
                xerr=[v["gap_pp"] - v["lo"], v["hi"] - v["gap_pp"]],
                color=colors[g],
                ecolor="black",
                error_kw={"lw": 0.7, "capsize": 1.5},
            )
        seeds = r.groupby(["backend", "spec_id"])["seeds"].min()
        labels = [
            f"{b} · {sp}{tags.get((b, sp), '')}"
            + (f" ({int(seeds[(b, sp)])} seed{'s' * bool(seeds[(b, sp)] != 1)})" if seeds[(b, sp)] < most else "")
            for b, sp in cells
        ]
        ax.set_yticks(y + h * (len(groups) - 1) / 2, labels, fontsize=7)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{prec.upper()}" + (f" ({cut} cells with smaller gaps not shown)" if cut else ""), fontsize=9)
    # one legend for the figure, above the panels: it never covers a bar, and it says seeds honestly
    seeds_of = rep.groupby("group")["seeds"].agg(["min", "max"])
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colors[g], label=f"{g} ({_seed_range(seeds_of.loc[g])})") for g in groups
    ]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(groups)), fontsize=7.5, frameon=False)
    axes[-1, 0].set_xlabel("top-1 change vs own FP32 (pp), mean over seeds, 95 % interval")
    _label_numbers(axes[-1, 0], ok)
    return Figure(
        "gap_bars",
        "FP→Q gap per precision",
        _fig_to_png(fig),
        "Top-1 change of each quantized cell against the same checkpoint's FP32 reference on the same evaluation "
        "set, averaged over the seeds of each group; whiskers are 95 % intervals over seeds and evaluation "
        "samples (paired bootstrap; samples only where a group has one seed). A cell with fewer seeds than the "
        "rest says so in its label. [sim] = numerics of a simulated target (vendor simulator or simnpu profile), "
        "[est] = outputs from a stand-in runtime with a performance model for the target.",
    )


def _seed_range(s: Any) -> str:
    lo, hi = int(s["min"]), int(s["max"])
    if lo == hi:
        return f"{lo} seed{'s' * (lo != 1)} per cell"
    return f"{lo}–{hi} seeds per cell"


def heat_text_color(rgba: Any) -> str:
    """Black or white, whichever reads on a cell of colour ``rgba`` (relative luminance, WCAG)."""

    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(float(c)) for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.179 else "white"


NOT_RUN_COLOR = "#d9d9d9"
NOT_RUN_EDGE = "#9a9a9a"


def fig_gap_heatmap(rep: Any) -> Figure | None:
    """Backend × spec heat map of the FP→Q gap (mean over seeds), one panel per checkpoint group, shared scale.
    Cells without a result (not run) are grey, hatched and marked "–": never drawn like a zero gap."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    if rep is None or rep.empty:
        return None
    groups = sorted(rep["group"].unique())[:MAX_HEAT_GROUPS]
    rep = rep[rep["group"].isin(groups)]
    # bounded size: the backends and specs with the worst gaps (the summary table has every cell)
    backends = sorted(rep.groupby("backend")["gap_pp"].min().sort_values().index[:MAX_HEAT_AXIS])
    order = {"int4": 0, "int8": 1, "fp16": 2}
    worst_specs = rep.groupby("spec_id")["gap_pp"].min().sort_values().index[:MAX_HEAT_AXIS]
    specs = sorted(worst_specs, key=lambda x: (order.get(x.split("-")[0], 9), x))
    rep = rep[rep["backend"].isin(backends) & rep["spec_id"].isin(specs)]
    annotate = len(backends) * len(specs) <= 240
    fontsize = 8 if len(specs) <= 8 else 7
    lim = max(0.5, float(np.nanmax(np.abs(rep["gap_pp"].to_numpy()))))
    # not run = masked = transparent, over a hatched grey axes background: one patch per panel, not per cell
    cmap, norm = plt.get_cmap("RdBu").with_extremes(bad=(0, 0, 0, 0)), Normalize(-lim, lim)
    fig, axes = plt.subplots(len(groups), 1, figsize=(7.5, len(groups) * (0.36 * len(backends) + 1.5)), squeeze=False)
    im = None
    for ax, g in zip(axes[:, 0], groups, strict=True):
        m = rep[rep["group"] == g].pivot_table(index="backend", columns="spec_id", values="gap_pp", aggfunc="mean")
        vals = m.reindex(index=backends, columns=specs).to_numpy(float)
        ax.patch.set_facecolor(NOT_RUN_COLOR)
        ax.patch.set_edgecolor(NOT_RUN_EDGE)
        ax.patch.set_hatch("///")
        im = ax.imshow(np.ma.masked_invalid(vals), cmap=cmap, norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(vals):
            if not np.isfinite(v):  # not run: hatched grey with a dash, unlike any gap colour
                if annotate:
                    ax.text(j, i, "–", ha="center", va="center", fontsize=fontsize, color="#444444")
            elif annotate:
                color = heat_text_color(cmap(norm(v)))
                label = "0.0" if abs(v) < 0.05 else f"{v:+.1f}"  # never "-0.0"
                ax.text(j, i, label, ha="center", va="center", fontsize=fontsize, color=color)
        ax.set_yticks(range(len(backends)), backends, fontsize=7.5)
        ax.set_xticks(range(len(specs)), specs, fontsize=7, rotation=25, ha="right")
        ax.set_title(f"group: {g}", fontsize=9)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8, label="FP→Q gap (pp)")
    fig.legend(
        handles=[Patch(facecolor=NOT_RUN_COLOR, edgecolor=NOT_RUN_EDGE, hatch="///", label="– not run / no result")],
        loc="outside lower right",
        fontsize=7.5,
        frameon=False,
    )
    return Figure(
        "gap_heatmap",
        "FP→Q gap heat map (backend × spec)",
        _fig_to_png(fig),
        "Mean FP→Q top-1 gap over seeds per backend × spec, one panel per checkpoint group, one colour scale; "
        "hatched grey with “–” = not run (unsupported, excluded, or failed), which is not a zero gap. At most "
        f"{MAX_HEAT_AXIS} backends and specs (those with the worst gaps) and {MAX_HEAT_GROUPS} groups are drawn; "
        "the summary table has every cell.",
    )


def fig_reliability(ok: Any, max_groups: int = 4) -> Figure | None:
    """Reliability diagrams of every checkpoint group (up to ``max_groups``): per group one row — an FP32 cell,
    then the quantized cell with the highest ECE at each precision (at most two groups), or at any precision
    (more groups: two panels per row keep the figure, and its drawing time, bounded)."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = ok[ok["reliability"].fillna("{}") != "{}"]
    if rows.empty:
        return None
    rows = rows.assign(_group=_group_col(rows))
    groups = sorted(rows["_group"].unique())
    shown_groups = groups[:max_groups]
    precs = [p for p in ("int8", "int4", "fp16") if p in set(rows["precision"])]
    per_precision = len(groups) <= 2
    if not per_precision:  # FP32 + worst quantized per group, six panels at most (drawing time grows per panel)
        shown_groups = groups[: min(max_groups, 3)]
    grid: list[list[Any]] = []
    for g in shown_groups:
        gr = rows[rows["_group"] == g]
        line = []
        fp = gr[gr["precision"] == "fp32"]
        if len(fp):  # its FP32 cells on several backends are near-identical: the first model's first one
            line.append(fp.sort_values(["model", "backend"]).iloc[0])
        for p in precs if per_precision else [precs]:
            q = gr[gr["precision"].isin([p] if isinstance(p, str) else p)]
            if len(q):
                line.append(q.sort_values("ece", ascending=False).iloc[0])
        if line:
            grid.append(line)
    ncols = max(len(line) for line in grid)
    fig, axes = plt.subplots(len(grid), ncols, figsize=(7.5, 2.7 * len(grid)), squeeze=False)
    for line, axrow in zip(grid, axes, strict=True):
        for ax in axrow[len(line) :]:
            ax.set_visible(False)
        for ax, r in zip(axrow, line, strict=False):
            b = json.loads(r["reliability"])
            conf = np.array([np.nan if v is None else v for v in b["confidence"]])
            acc = np.array([np.nan if v is None else v for v in b["accuracy"]])
            centers = (np.arange(len(conf)) + 0.5) / len(conf)
            ax.bar(centers, np.nan_to_num(acc), width=1 / len(conf), edgecolor="k", lw=0.4, alpha=0.8)
            counts = b.get("count", [])
            for x, a, c in zip(centers, np.nan_to_num(acc), counts, strict=False):
                if c:  # samples per bin: a bar over 3 images says little
                    ax.text(x, min(a + 0.02, 0.93), f"{int(c)}", ha="center", va="bottom", fontsize=5, rotation=90)
            ax.plot([0, 1], [0, 1], "r--", lw=0.8)
            ece = r["ece"] if not math.isnan(r["ece"]) else r.get("pixel_ece", math.nan)  # segmentation: per pixel
            ax.set_title(
                f"group {r['_group']}: {r['model']}\n{r['backend']} · {r['spec_id']}\nECE {100 * ece:.2f}%", fontsize=7
            )
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6)
        axrow[0].set_ylabel("accuracy")
    fig.supxlabel("confidence (max softmax), 15 bins", fontsize=8)
    fig.text(0.99, 0.0, _provenance(ok), ha="right", fontsize=7, color="dimgray")
    left = len(groups) - len(shown_groups)
    return Figure(
        "reliability",
        "Reliability diagrams",
        _fig_to_png(fig),
        "One row per checkpoint group: an FP32 cell, then the quantized cell with the highest ECE "
        + ("at each precision" if per_precision else "of the group")
        + "; the diagonal is perfect calibration; the number over each bar is how many evaluation samples "
        "fell in that confidence bin." + (f" {left} more group(s) not drawn." if left else ""),
    )


def fig_latency(ok: Any, samples: Any) -> Figure | None:
    import matplotlib.pyplot as plt
    import numpy as np

    if not samples:
        return None
    ok = ok.sort_values(["model", "backend", "spec_id"])
    data, labels = [], []
    for r in ok[["record_id", "numbers", "model", "backend", "spec_id"]].to_dict("records"):
        if r["record_id"] in samples:
            data.append(samples[r["record_id"]] / 1e6)
            tag = "" if r.get("numbers") in ("measured", None, "") else f" [{r['numbers']}: host runs a simulator]"
            labels.append(f"{r['model']} · {r['backend']} · {r['spec_id']}{tag}")
    if not data:
        return None
    timed = int(ok["latency_ms_p50"].notna().sum()) if "latency_ms_p50" in ok else len(data)
    total = len(data)
    if total > MAX_LATENCY_CELLS:  # keep the figure readable: the slowest p50 cells are the interesting ones
        order = sorted(range(total), key=lambda i: -float(np.median(data[i])))[:MAX_LATENCY_CELLS]
        data, labels = [data[i] for i in sorted(order)], [labels[i] for i in sorted(order)]
    fig, ax = plt.subplots(figsize=(7.5, max(3, 0.28 * len(data))))
    ax.boxplot(data, orientation="horizontal", showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=6)
    ax.set_xlabel("latency per inference (ms), host to host")
    plain_log_axis(ax, "x")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Latency distributions (raw samples)")
    _label_numbers(ax, ok)
    return Figure(
        "latency",
        "Latency distributions",
        _fig_to_png(fig),
        "Every timed iteration of "
        + (f"the {len(data)} slowest of {timed} timed cells (by median)" if timed > len(data) else "every ok cell")
        + ", from the raw samples (box: quartiles, whiskers 1.5 IQR).",
    )


def fig_training(training: dict[str, Any]) -> Figure | None:
    import matplotlib.pyplot as plt

    if not training:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax2 = None
    lambda_drawn = False
    for i, (name, log) in enumerate(training.items()):
        c = plt.cm.tab10(i % 10)
        if "test_accuracy" in log:  # the exported FP model (fake quantization off)
            ax.plot(log["epoch"], 100 * log["test_accuracy"], marker="o", ms=3, color=c, label=f"{name}")
        if "fakequant_test_accuracy" in log:  # the λ-blended model the optimiser saw
            ax.plot(
                log["epoch"],
                100 * log["fakequant_test_accuracy"],
                ls="--",
                lw=0.8,
                color=c,
                label=f"{name} (fake-quant)",
            )
        if "lambda" in log and not lambda_drawn:  # one schedule per run length: draw it once
            ax2 = ax2 or ax.twinx()
            ax2.plot(log["epoch"], log["lambda"], ls=":", color="gray", label="λ (Quant-Trim)")
            lambda_drawn = True
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    if ax2 is not None:
        ax2.set_ylabel("λ (fake-quant blend)")
        ax2.legend(fontsize=6.5, loc="lower center")
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.12, 0.5))
    ax.grid(alpha=0.3)
    ax.set_title("Training curves (measured)")
    return Figure(
        "training",
        "Training curves",
        _fig_to_png(fig),
        "Per-epoch test accuracy of the exported FP model (solid) and, for Quant-Trim runs, of the λ-blended "
        "fake-quant model the optimiser saw (dashed), with the blend λ, from the training logs beside the "
        "checkpoints. Logs written before qtbench scored the exported model hold only the fake-quant curve.",
    )


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
SUMMARY = SUMMARY_COLUMNS
_cell = format_value


#: top-1 agreement with FP32 below this, with a top-1 change indistinguishable from zero (or a gain), is flagged:
#: the accuracy looks free while many predictions changed (e.g. INT4 cells at +1.6 pp gap and 84 % agreement).
LOW_AGREEMENT = 0.97
#: the phrase every low-agreement flag ends with: the header's count and the table's flags are counted by it
LOW_AGREEMENT_FLAG = "agreement with FP32"
_COLS = [c for c, _, _ in SUMMARY]
_AFTER_GAP = _COLS.index("gap_pp") + 1
_P50 = _COLS.index("latency_ms_p50")
SUMMARY_HEADER = [h for _, h, _ in SUMMARY[:_AFTER_GAP]] + ["gap 95 % CI"]
SUMMARY_HEADER += [h for _, h, _ in SUMMARY[_AFTER_GAP:]] + ["flags"]
_ENERGY_SOURCE_COL = SUMMARY_HEADER.index("energy source")


def low_agreement_flag(r: Any, lo: float = math.nan, hi: float = math.nan) -> str:
    """The one rule for "top-1 looks free but the predictions changed": agreement with FP32 below LOW_AGREEMENT
    while the top-1 change is a gain, within ±UNCHANGED_PP of zero, or a drop whose 95 % interval [lo, hi]
    reaches 0. "Unchanged" is said only within ±UNCHANGED_PP; other changes are said with their size."""

    agree, gap = r.get("top1_agreement", math.nan), r.get("gap_pp", math.nan)
    if not (isinstance(agree, float) and math.isfinite(agree) and agree < LOW_AGREEMENT):
        return ""
    if not (isinstance(gap, float) and math.isfinite(gap)):
        return ""
    noise = math.isfinite(lo) and lo <= 0 <= hi
    if abs(gap) < UNCHANGED_PP:
        change = f"top-1 unchanged (|Δ| < {UNCHANGED_PP} pp)"
    elif gap > 0:
        change = f"top-1 up {gap:+.2f} pp"
    elif noise:
        change = f"top-1 {gap:+.2f} pp, within noise (its 95 % CI reaches 0)"
    else:
        return ""  # a visible drop needs no extra warning
    return f"{change} but only {100 * agree:.1f} % {LOW_AGREEMENT_FLAG}"


def row_flags(r: Any, lo: float = math.nan, hi: float = math.nan) -> list[str]:
    """What a reader must not miss about a row: unstable timing, no timing, predictions changed behind a flat top-1."""
    flags = []
    audit = r.get("audit")
    if r.get("status") == "ok" and isinstance(audit, str) and audit.startswith("mismatch"):
        flags.append("spec not honoured by the artifact (see Spec audit)")
    timed = bool(r.get("timed", True))
    if r.get("status") == "ok" and not timed:
        flags.append("fidelity only (not timed)")
    if timed and bool(r.get("unstable", False)):
        cv = r.get("latency_cv", math.nan)
        flags.append(
            f"unstable timing (CV {100 * cv:.0f} %)"
            if isinstance(cv, float) and math.isfinite(cv)
            else "unstable timing"
        )
    low = low_agreement_flag(r, lo, hi)
    if low:
        flags.append(low)
    return flags


def footnoted(body: list[list[str]], col: int) -> tuple[list[list[str]], list[str]]:
    """Column ``col`` of a table body with each distinct text (e.g. an energy-source sentence repeated on every
    row) replaced by a footnote marker ``[n]``; returns the new body and the footnotes, n = 1, 2, …"""
    notes: dict[str, int] = {}
    out = []
    for r in body:
        text = r[col]
        if text and text != "–":
            n = notes.setdefault(text, len(notes) + 1)
            r = [*r[:col], f"[{n}]", *r[col + 1 :]]
        out.append(r)
    return out, list(notes)


def summary_rows(df: Any, cis: Any = None) -> list[list[str]]:
    """Summary table body (SUMMARY_HEADER): the shared columns plus the gap's paired-bootstrap CI and flags."""
    boards = "device" in df and df["device"].nunique() > 1  # rows of several boards: say whose each row is
    df = with_gap(df.sort_values(["model", "backend", "spec_id", *(["device"] if boards else [])]))
    ci = {} if cis is None or cis.empty else {r.record_id: (r.gap_lo, r.gap_hi) for r in cis.itertuples()}
    out = []
    present = set(df.columns)
    for r in df.to_dict("records"):  # plain dicts: iterrows builds a Series per row
        cells = [_cell(r.get(col), fmt) if col in present else "–" for col, _, fmt in SUMMARY]
        if boards:
            cells[0] = f"{cells[0]} @ {r['device']}"
        if bool(r.get("timed", True)) and bool(r.get("unstable", False)) and cells[_P50] != "–":
            cells[_P50] += "!"  # as the CLI marks it
        lo, hi = ci.get(r["record_id"], (math.nan, math.nan))
        ci_text = f"[{lo:+.2f}, {hi:+.2f}]" if math.isfinite(lo) else "–"
        out.append([*cells[:_AFTER_GAP], ci_text, *cells[_AFTER_GAP:], "; ".join(row_flags(r, lo, hi))])
    return out


def spread_table(ok: Any) -> list[list[str]]:
    """Per checkpoint and precision: mean and worst FP→Q gap, and max–min top-1 across backends × specs."""
    out = []
    q = ok[ok["precision"].isin(["int8", "int4"])].copy()
    q["gap"] = 100 * (q["top1"] - q["fp_top1"])
    for (model, prec), g in q.groupby(["model", "precision"]):
        out.append(
            [
                model,
                prec,
                str(len(g)),
                f"{g['gap'].mean():+.2f}",
                f"{g['gap'].min():+.2f}",
                f"{100 * (g['top1'].max() - g['top1'].min()):.2f}",
                f"{1000 * g['kl_fp'].mean():.1f}",
            ]
        )
    return out


def estimate_sources(rows: Any) -> list[tuple[str, str]]:
    """(who, how its est. ms was obtained): one line per backend, or per cell where a backend's cells differ."""
    if "est_source" not in rows:
        return []
    est = rows[rows["est_source"].fillna("").astype(str) != ""]
    out = set()
    for backend, g in est.groupby("backend"):
        if g["est_source"].nunique() == 1:
            out.add((str(backend), str(g["est_source"].iloc[0])))
        else:
            for _, r in g.iterrows():
                out.add((f"{backend} · {r['model']} · {r['spec_id']}", str(r["est_source"])))
    return sorted(out)


SPREAD_HEADER = ["model", "precision", "cells", "mean gap pp", "worst gap pp", "spread pp (max–min)", "KL×1e3"]


# ---------------------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------------------
def _latency_cells(rows: Any) -> list[str]:
    """Record ids whose raw samples the latency figure can show: the MAX_LATENCY_CELLS slowest ok cells by
    median (the row's p50 is the samples' median), so a 10k-row report reads 40 cells' samples, not 10k."""
    ok = rows[rows["status"] == "ok"]
    if "latency_ms_p50" not in ok:
        return list(ok["record_id"])
    timed = ok[ok["latency_ms_p50"].notna()]
    return list(timed.sort_values("latency_ms_p50", ascending=False, kind="stable")["record_id"][:MAX_LATENCY_CELLS])


def load_report_data(results: list[Path]) -> ReportData:
    import numpy as np
    import pandas as pd

    frames: list[Any] = []
    samples: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for r in results:
        df = load_results(r)
        frames.append(df)
        ok_ids = list(df.loc[df.status == "ok", "record_id"])
        stores = stores_under(r)
        for rid, runs in samples_of(stores, _latency_cells(df)).items():
            samples.setdefault(rid, np.concatenate(runs) if len(runs) > 1 else runs[0])
        for rid, p in predictions_of(stores, ok_ids).items():
            predictions.setdefault(rid, p)
    rows = pd.concat(frames, ignore_index=True)
    if rows.empty:
        raise ResultsError(f"{', '.join(map(str, results))}: no rows to report; run a sweep first")
    training = {}
    for name, path in rows.drop_duplicates("model")[["model", "model_path"]].itertuples(index=False):
        if not isinstance(path, str) or not path.endswith(".onnx"):
            continue
        log = Path(path).with_suffix(".csv")
        if log.is_file():
            training[name] = pd.read_csv(log, comment="#")
    return ReportData(rows, samples, training, predictions)


@dataclass
class Section:
    """A report section written twice: HTML (escaped by whoever builds it) and Markdown (escaped likewise)."""

    title: str
    html: str
    markdown: str


def audit_section(rows: Any) -> Section | None:
    """Every ok cell whose artifact, read back, contradicts its spec label (qtbench.harness.core.audit), one line each
    with the
    reason; None when every artifact honours its label (the summary's spec column then says ✓ throughout)."""

    bad = rows[mismatched(rows)].sort_values(["model", "backend", "spec_id"])
    if bad.empty:
        return None
    e = html_text
    items = [
        (f"{r['model']} × {r['backend']} × {r['spec_id']}", str(r["audit"]).removeprefix("mismatch: "))
        for _, r in bad.iterrows()
    ]
    lead = (
        f"{len(items)} cell(s) ran, but the artifact read back after compiling does not hold what the label says "
        "(weight bits, granularity, symmetry or activation quantization). Their numbers describe the artifact, "
        "not the spec: they are left out of the comparison's aggregates."
    )
    body = (
        f"<p class='note'>{e(lead)}</p><ul>"
        + "".join(f"<li><b>{e(c)}</b>: {e(why)}</li>" for c, why in items)
        + "</ul>"
    )
    md = m(lead) + "\n\n" + "\n".join(f"- **{m(c)}**: {m(why)}" for c, why in items)
    return Section("Spec audit: artifacts that contradict their labels", body, md)


def study_comparison(study: Any) -> tuple[Any, str]:
    """`qtbench compare`'s frame for results holding ≥ 2 checkpoint groups (or why there is none): the numbers
    behind both the verdict card and the comparison section."""

    groups = sorted(set(study.cells["group"])) if len(study.cells) else []
    if len(groups) < 2:
        return None, ""
    base = cand = None
    if len(groups) > 2:
        if {"fp", "quanttrim"} <= set(groups):
            base, cand = "fp", "quanttrim"
        else:
            return None, (
                f"{len(groups)} checkpoint groups ({', '.join(groups)}): run `qtbench compare RESULTS "
                "--baseline-group A --candidate-group B` for the comparison"
            )
    try:
        df = compare_study(study, base, cand)
    except UserError as exc:
        return None, str(exc)
    return (None, "") if df.empty else (df, "")


def comparison_section(study: Any, df: Any = None) -> tuple[Section | None, str]:
    """`qtbench compare`'s section for a report whose results hold ≥ 2 checkpoint groups (or why there is none);
    ``df``: study_comparison's frame when the caller has it already."""

    why = ""
    if df is None:
        df, why = study_comparison(study)
    if df is None:
        return None, why
    e = html_text
    b, c = df.attrs["baseline"], df.attrs["candidate"]
    body = [
        f"<p>Candidate <b>{e(c)}</b> vs baseline <b>{e(b)}</b>: FP→Q top-1 gap per precision over backends × "
        "specs, mean ± sd over seeds; differences with a 95 % interval over seeds and evaluation samples "
        "(paired bootstrap over the same images). Same numbers: <code>qtbench compare</code>.</p><ul>",
        *[f"<li>{e(h)}</li>" for h in headlines(df)],
        "</ul>",
        _html_table(*group_table(df)),
        "<details><summary>Differences per precision, backend and spec family (every metric, with its interval)"
        "</summary>",
        _html_table(*difference_table(df)),
        "</details>",
    ]
    if df.attrs.get("notes"):
        body.append("<ul>" + "".join(f"<li>note: {e(n)}</li>" for n in df.attrs["notes"]) + "</ul>")
    return Section("Comparison: is the candidate more robust?", "\n".join(body), to_markdown(df)), ""


def build_report(results: list[Path], out: Path, title: str | None = None) -> dict[str, Path]:
    """Write ``out/report.html``, ``out/report.md`` and ``out/*.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    # strings from results (model names with "$…$") must never be parsed as matplotlib math text
    with matplotlib.rc_context({"text.parse_math": False}):
        return _build_report(results, out, title)


@dataclass
class Page:
    """Everything a report page shows, in reading order: the verdict card, the figures, the detail sections
    (comparison, spec audit), notes, then the full table (collapsed) with its footnotes."""

    title: str
    rows: Any
    ok: Any
    not_ok: Any
    verdict: Any  # qtbench.harness.analysis.report_verdict.Verdict
    figures: list[Figure]
    provenance: str
    table: list[list[str]]
    footnotes: list[str]  # energy-source sentences, numbered [1], [2], … in the table
    spread: list[list[str]]
    sections: list[Section] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _build_report(results: list[Path], out: Path, title: str | None) -> dict[str, Path]:

    data = load_report_data([Path(r) for r in results])
    # the newest row per model × backend × spec: a re-run under another cell key (e.g. --iterations) is one cell
    rows, dropped = latest_per_cell(data.rows)
    notes = [f"{dropped} older row(s) of re-measured cells are not shown (newest per model × backend × spec)"] * bool(
        dropped
    )
    ok = rows[rows["status"] == "ok"]
    study = build_study(rows, data.predictions)
    notes += study.notes
    cis = cell_intervals(study)
    rep = replica_intervals(study)
    cmp_df, why = study_comparison(study)
    sections: list[Section] = []
    cmp_section, _ = comparison_section(study, cmp_df) if cmp_df is not None else (None, "")
    if cmp_section:
        sections.append(cmp_section)
    audit_sec = audit_section(rows)
    if audit_sec is not None:
        sections.append(audit_sec)
    if why:
        notes.append(why)
    figures: list[Figure] = []
    if not ok.empty:
        if ok["precision"].isin(["int8", "int4", "fp16"]).any():  # the figures that answer the question first
            figures += [f for f in (fig_gap_facets(rep, ok), fig_gap_heatmap(rep)) if f is not None]
        throughput = [fig_power_or_accuracy(ok, use_power=False)]
        if has_power(ok):
            throughput.append(fig_power_or_accuracy(ok, use_power=True))
        figures += [f for f in throughput if f is not None]  # None: no row has a throughput to plot
        extras = (fig_reliability(ok), fig_mask_agreement(ok))  # mask agreement: segmentation rows only
        extras += (fig_latency(ok, data.samples), fig_training(data.training))
        for extra in extras:
            if extra is not None:
                figures.append(extra)
    out.mkdir(parents=True, exist_ok=True)
    for f in figures:
        (out / f"{f.name}.png").write_bytes(f.png)
    title = title or "qtbench report: " + ", ".join(sorted(rows["sweep"].unique()))
    not_ok = rows[rows["status"] != "ok"].sort_values(["model", "backend", "spec_id"])
    timed = ok[ok["timed"].astype(bool)] if "timed" in ok else ok
    n_unstable = int(timed["unstable"].astype(bool).sum()) if len(timed) else 0
    # skipped/unavailable cells never ran: they are listed (grouped) under "Cells that did not run", not as rows
    ran = rows[~rows["status"].isin(["skipped", "unavailable"])]
    table = summary_rows(ran, cis)
    # the header's count is the table's: one rule (low_agreement_flag), counted on the table's own flags
    n_low = sum(LOW_AGREEMENT_FLAG in r[-1] for r in table)
    table, footnotes = footnoted(table, _ENERGY_SOURCE_COL)
    caveats = []
    n_bad = int(mismatched(rows).sum())
    if n_bad:
        caveats.append(
            f"{n_bad} cell(s) fail the spec audit (their artifact contradicts the spec label): left out of the "
            "comparison, listed under Spec audit."
        )
    if n_low:
        low = (
            f"{n_low} quantized cell(s) agree with FP32 on < {100 * LOW_AGREEMENT:.0f} % of samples although their "
            f"top-1 change is a gain, within ±{UNCHANGED_PP} pp, or within noise (flagged in the full table): their "
            "predictions changed even though accuracy barely did"
        )
        notes.append(low)
        caveats.append(low + ".")
    if n_unstable:
        notes.append(
            f"{n_unstable} of {len(timed)} timed cells are unstable (coefficient of variation above "
            "measure.cv_threshold; marked ! at p50 and in flags): compare their speeds with care"
        )
        caveats.append(f"{n_unstable} of {len(timed)} timed cells have unstable timing: compare speeds with care.")
    tags = _numbers_tag(ok) if not ok.empty else {}
    verdict = build_verdict(rows, ok, not_ok, rep, cmp_df, tags, caveats)
    page = Page(
        title,
        rows,
        ok,
        not_ok,
        verdict,
        figures,
        _provenance(rows),
        table,
        footnotes,
        spread_table(ok) if not ok.empty else [],
        sections,
        notes,
    )
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(_html(page))
    md_path.write_text(_markdown(page))
    return {"html": html_path, "markdown": md_path, **{f.name: out / f"{f.name}.png" for f in figures}}


def _html_table(header: list[str], body: list[list[str]]) -> str:
    e = html_text
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


CSS = (
    "body{font-family:sans-serif;margin:1em auto;max-width:1200px;padding:0 1em;line-height:1.35}"
    "h1{font-size:1.6em;margin:.3em 0 .5em}"
    ".verdict{border:2px solid #2b5797;border-radius:8px;background:#f4f8fd;padding:.4em 1.1em .5em;"
    "margin:0 0 1.5em}.verdict h2{margin:.2em 0 .3em;font-size:1.3em}.verdict p{margin:.35em 0}"
    ".verdict .short{font-size:1.1em}.verdict ul{margin:.2em 0 .4em;padding-left:1.3em}"
    ".verdict li{margin:.15em 0}.verdict .answers li{font-size:1.05em}.verdict .detail,.verdict .sub,"
    ".verdict .worst{font-size:13px;color:#333}.verdict .detail{color:#555}"
    "table{border-collapse:collapse;font-size:12px;display:block;overflow-x:auto;max-width:100%}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:nth-child(-n+4),"
    "th:nth-child(-n+4){text-align:left}figure{margin:1.5em 0}figcaption{color:#555;font-size:13px}"
    "img{max-width:100%;height:auto}.prov{color:#555}.note{color:#8a4b00}td:last-child{text-align:left}"
    "summary{cursor:pointer;margin:.5em 0;font-weight:bold}.footnotes{font-size:12px;color:#444}"
    "@media (max-width:600px){body{padding:0 .5em;margin-top:.5em}h1{font-size:1.35em}"
    ".verdict{padding:.2em .7em .4em}.verdict h2{font-size:1.15em}.verdict .short{font-size:1em}"
    ".verdict ul{padding-left:1em}.verdict .answers li{font-size:1em}.verdict .detail,.verdict .sub,"
    ".verdict .worst{font-size:12px}}"
)


def _html(page: Page) -> str:
    e = html_text
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(page.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(page.title)}</h1>",
        page.verdict.html(),
    ]
    for f in page.figures:
        data = base64.b64encode(f.png).decode()
        parts.append(
            f"<figure><h2>{e(f.title)}</h2><img alt='{e(f.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(f.caption)}</figcaption></figure>"
        )
    for sec in page.sections:
        parts += [f"<h2>{e(sec.title)}</h2>", sec.html]
    if page.notes:
        parts.append("<h2>Notes</h2><ul class='note'>" + "".join(f"<li>{e(n)}</li>" for n in page.notes) + "</ul>")
    parts += [
        "<h2>All cells</h2>",
        f"<p class='prov'>{len(page.rows)} cells, {len(page.ok)} ok. Every number is labelled by origin; "
        f"{e(page.provenance)}. Latency (p50, p99, FPS) is the harness's host-to-host clock; on simulated rows "
        "that clock timed the simulator on this host. 'est. ms' is the target's latency from a model, sources "
        "below. Gap intervals are 95 % paired-bootstrap intervals over the evaluation samples.</p>",
        f"<details id='full-table'><summary>Full table: {len(page.table)} rows (click to expand)</summary>",
        _html_table(SUMMARY_HEADER, page.table),
    ]
    if page.footnotes:
        parts.append(
            "<div class='footnotes'><p><b>Energy source</b> (the [n] in that column):</p><ol>"
            + "".join(f"<li id='fn{i}'>{e(t)}</li>" for i, t in enumerate(page.footnotes, 1))
            + "</ol></div>"
        )
    parts.append("</details>")
    if page.spread:
        parts += [
            "<details><summary>Spread across quantization settings</summary>",
            _html_table(SPREAD_HEADER, page.spread),
            "</details>",
        ]
    est = estimate_sources(page.rows)
    if est:
        parts.append("<h2>Estimated target latency: sources</h2><ul>")
        parts += [f"<li><b>{e(b)}</b>: {e(src)}</li>" for b, src in est]
        parts.append("</ul>")
    if not page.not_ok.empty:
        groups = not_run_groups(page.not_ok)
        parts.append(
            f"<h2>Cells that did not run</h2><details><summary>{len(page.not_ok)} cells, {len(groups)} reasons"
            "</summary><ul>"
        )
        for st, cell, msg, models in groups:
            parts.append(f"<li><b>{e(st)}</b> {e(cell)} — {e(_models_text(models))}: {e(msg)}</li>")
        parts.append("</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def not_run_groups(not_ok: Any) -> list[tuple[str, str, str, list[str]]]:
    """(status, "backend × spec", first line of the reason, models): one entry per distinct reason, so a study
    with many checkpoints lists each unsupported cell once rather than once per checkpoint."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for _, r in not_ok.iterrows():
        msg = str(r["status_message"]).strip().splitlines()[0] if r["status_message"] else ""
        out.setdefault((str(r["status"]), f"{r['backend']} × {r['spec_id']}", msg), []).append(str(r["model"]))
    return [(st, cell, msg, models) for (st, cell, msg), models in out.items()]


def _models_text(models: list[str]) -> str:
    return (
        models[0]
        if len(models) == 1
        else f"{len(models)} models ({', '.join(models[:3])}{', …' if len(models) > 3 else ''})"
    )


def _md_table(header: list[str], body: list[list[str]]) -> str:

    return md_table(header, body)


def _markdown(page: Page) -> str:
    """Markdown twin; every string from results is escaped (HTML entities + Markdown syntax), so a model named
    ``<script>`` or ``[x](javascript:…)`` reaches a renderer as text."""

    parts = [f"# {m(page.title)}", "", page.verdict.markdown()]
    for f in page.figures:
        parts += [f"## {m(f.title)}", "", f"![{m(f.title)}]({f.name}.png)", "", m(f.caption), ""]
    for sec in page.sections:
        parts += [f"## {m(sec.title)}", "", sec.markdown, ""]
    if page.notes:
        parts += ["## Notes", "", *[f"- {m(n)}" for n in page.notes], ""]
    parts += [
        "## All cells",
        "",
        f"{len(page.rows)} cells, {len(page.ok)} ok; {m(page.provenance)}. Gap intervals are 95 % paired-bootstrap "
        "intervals over the evaluation samples.",
        "",
        f"<details><summary>Full table: {len(page.table)} rows</summary>",
        "",
        _md_table(SUMMARY_HEADER, page.table),
        "",
    ]
    if page.footnotes:
        parts += ["Energy source (the [n] in that column):", ""]
        parts += [f"{i}. {m(t)}" for i, t in enumerate(page.footnotes, 1)] + [""]
    parts += ["</details>", ""]
    if page.spread:
        parts += ["## Spread across quantization settings", "", _md_table(SPREAD_HEADER, page.spread), ""]
    est = estimate_sources(page.rows)
    if est:
        parts += ["## Estimated target latency: sources", ""]
        parts += [f"- **{m(b)}**: {m(src)}" for b, src in est]
        parts.append("")
    if not page.not_ok.empty:
        parts += ["## Cells that did not run", ""]
        for st, cell, msg, models in not_run_groups(page.not_ok):
            parts.append(f"- **{m(st)}** {m(cell)} — {m(_models_text(models))}: {m(msg)}")
        parts.append("")
    return "\n".join(parts)


def fig_mask_agreement(ok: Any) -> Figure | None:
    """Segmentation rows (task ``segmentation``): pixel agreement and mIoU with the FP32 model's own masks, per
    backend × spec — the segmentation counterpart of the FP→Q gap, needing no labels."""
    import matplotlib.pyplot as plt
    import numpy as np

    if "task" not in ok:
        return None
    seg = ok[(ok["task"] == "segmentation") & ok["mask_agreement"].notna()]
    if seg.empty:
        return None
    seg = seg.sort_values(["model", "backend", "spec_id"]).head(MAX_BAR_CELLS)
    labels = [f"{r.model} · {r.backend} · {r.spec_id}" for r in seg.itertuples()]
    y = np.arange(len(seg))
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.28 * len(seg)))
    ax.barh(y - 0.2, 100 * seg["mask_agreement"], height=0.4, label="pixel agreement with FP32 masks")
    ax.barh(y + 0.2, 100 * seg["miou_fp"], height=0.4, label="mIoU vs FP32 masks")
    ax.set_yticks(y, labels, fontsize=7)  # no math text: build_report turns text.parse_math off
    ax.invert_yaxis()
    low = float(np.nanmin(100 * seg[["mask_agreement", "miou_fp"]].to_numpy()))
    ax.set_xlim(max(0.0, min(low - 5, 90.0)), 100.5)
    ax.set_xlabel("% (100 = the quantized masks equal the FP32 model's)")
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False)
    fig.text(0.99, 0.0, _provenance(seg), ha="right", fontsize=7, color="dimgray")
    return Figure(
        "mask_agreement",
        "Segmentation: agreement with the FP32 masks",
        _fig_to_png(fig),
        "Per-pixel argmax of each quantized cell against the FP32 model's own masks (no labels needed).",
    )

"""`qtbench report`: a self-contained HTML report (plots embedded as data URIs, no network) and a Markdown twin.

Every plot is also written as PNG beside the report. Every figure says where its numbers come from (measured,
simulated, estimated); every string from results (model names, error messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.tables import SUMMARY_COLUMNS, format_value, with_gap

PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "int4": "D"}
#: The runtime a platform ships as its default; rows of these backends are drawn filled, others unfilled.
DEFAULT_RUNTIME = {"cpu": "ort", "gpu": "tensorrt", "npu": "qnn"}
MAX_LATENCY_CELLS = 40
MAX_BAR_CELLS = 48


@dataclass
class Figure:
    name: str
    title: str
    png: bytes
    caption: str


@dataclass
class ReportData:
    rows: Any
    samples: Any
    training: dict[str, Any] = field(default_factory=dict)


def _provenance(df: Any) -> str:
    kinds = sorted({n for n in df.get("numbers", []) if isinstance(n, str) and n})
    return "numbers: " + (", ".join(kinds) if kinds else "none")


def _fig_to_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # constrained layout instead of bbox_inches="tight", which draws every figure twice
    fig.set_layout_engine("constrained")
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _label_numbers(ax: Any, df: Any) -> None:
    ax.text(
        0.99,
        0.01,
        _provenance(df),
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        color="dimgray",
        bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"},
    )


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


def fig_power_or_accuracy(ok: Any, use_power: bool) -> Figure:
    """Median FPS vs average peak power (paper Fig. 3 encoding) or vs top-1; Pareto front marked."""
    import matplotlib.pyplot as plt

    power_known = has_power(ok)
    if use_power:
        ok = ok[ok["power_w_peak"].notna()]
    ok, dropped = throughput_frame(ok)
    ycol = "power_w_peak" if use_power else "top1"
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    devices = sorted(ok["device"].unique())
    cmap, n = (plt.cm.tab10, 10) if len(devices) <= 10 else (plt.cm.tab20, 20)
    colors = {d: cmap(i % n) for i, d in enumerate(devices)}
    scale = 1 if use_power else 100
    exec_dev = ok["execution_device"].fillna("cpu").astype(str) if "execution_device" in ok else "cpu"
    filled = ok["backend"] == (
        exec_dev.map(lambda d: DEFAULT_RUNTIME.get(d, "ort")) if "execution_device" in ok else "ort"
    )
    # one scatter call per (device, precision, filled) group: per-point calls made 1,000-row reports slow
    for (dev, prec, fill, est), g in ok.assign(_filled=filled).groupby(["device", "precision", "_filled", "_est"]):
        c = colors[dev]
        ax.scatter(
            g["fps"],
            g[ycol] * scale,
            marker=PRECISION_MARKERS.get(prec, "o"),
            s=55,
            facecolors=[c] * len(g) if fill and not est else "none",
            edgecolors=[c],
            linewidths=1.4,
            linestyles="--" if est else "-",
        )
        if use_power and {"power_w_p5", "power_w_p95"} <= set(g.columns):
            w = g.dropna(subset=["power_w_p5", "power_w_p95"])
            if len(w):
                ax.errorbar(
                    w["fps"],
                    w[ycol],
                    yerr=[w[ycol] - w["power_w_p5"], w["power_w_p95"] - w[ycol]],
                    fmt="none",
                    color=c,
                    capsize=2,
                )
    if use_power:
        # lower power is better: negate y for the front
        idx = pareto_front(list(ok["fps"]), list(-ok[ycol]))
        estimated = "estimated" in set(ok.get("energy_numbers", []))
        ax.set_ylabel("average peak power (W), whiskers 5–95th pct" + (" — ESTIMATED" if estimated else ""))
        sources = "; ".join(sorted({str(x) for x in ok["energy_source"] if x}))
        caption = (
            "Power–throughput (paper Fig. 3 encoding). Dashed: Pareto front (more FPS, less power). "
            f"Power source: {sources}."
            + (" These powers are ESTIMATED from CPU time, not measured by a meter." if estimated else "")
        )
    else:
        idx = pareto_front(list(ok["fps"]), list(ok["top1"]))
        ax.set_ylabel("top-1 accuracy (%)")
        caption = "Accuracy against throughput. Dashed: Pareto front (more FPS, more accuracy)."
        if bool(ok["_est"].any()) or dropped:
            caption += (
                " Simulated/estimated rows (dashed outline) are placed at the target's ESTIMATED FPS (est_source), "
                f"not at the simulator's speed on this host; {dropped} such row(s) without an estimate are left out."
            )
        if not power_known:
            caption += " Power is not known for these rows (no power meter recorded), so there is no power plot."
    front = ok.iloc[idx]
    ax.plot(front["fps"], front[ycol] * (1 if use_power else 100), "k--", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xlabel("median FPS (batch 1)" + ("; dashed: target's estimated FPS" if bool(ok["_est"].any()) else ""))
    if len(ok) and ok["fps"].max() > 100 * max(ok["fps"].min(), 1e-9):
        ax.set_xscale("log")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker=m, ls="", color="gray", label=p)
        for p, m in PRECISION_MARKERS.items()
        if p in set(ok["precision"])
    ]
    handles += [Line2D([], [], marker="o", ls="", color=colors[d], label=d) for d in devices]
    handles += [
        Line2D([], [], marker="o", ls="", markerfacecolor="none", color="gray", label="alt. runtime (unfilled)")
    ]
    if bool(ok["_est"].any()):
        handles.append(
            Line2D([], [], marker="o", ls="", markerfacecolor="none", color="gray", label="est. target FPS (dashed)")
        )
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    if use_power:
        kinds = sorted({str(x) for x in ok.get("energy_numbers", []) if x})
        ax.text(
            0.99,
            0.01,
            f"numbers: latency measured, power {', '.join(kinds)}",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="dimgray",
        )
    else:
        _label_numbers(ax, ok)
    title = "Power vs throughput" if use_power else "Accuracy vs throughput"
    ax.set_title(title)
    return Figure("power_throughput" if use_power else "accuracy_throughput", title, _fig_to_png(fig), caption)


def fig_gap_bars(ok: Any) -> Figure:
    """FP→Q top-1 gap per backend × spec, one bar per checkpoint (e.g. FP baseline vs Quant-Trim)."""
    import matplotlib.pyplot as plt
    import numpy as np

    q = with_gap(ok[ok["precision"].isin(["int8", "int4", "fp16"])])
    tag = q["numbers"].map(lambda n: "" if n == "measured" else f" [{str(n)[:3]}]") if "numbers" in q else ""
    q["cell"] = q["backend"] + " · " + q["spec_id"] + tag
    cells = sorted(q["cell"].unique())
    models = sorted(q["model"].unique())
    if len(cells) > MAX_BAR_CELLS:  # the worst gaps matter most; the summary table has every cell
        worst = q.groupby("cell")["gap_pp"].min().sort_values().index[:MAX_BAR_CELLS]
        cells = sorted(worst)
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(cells) * max(1, len(models))), 4.6))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        vals = q[q["model"] == m].set_index("cell")["gap_pp"].reindex(cells)
        ax.bar(np.arange(len(cells)) + i * width, vals.fillna(0), width, label=m)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(np.arange(len(cells)) + width * (len(models) - 1) / 2, cells, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("top-1 change vs own FP32 (pp)")
    ax.set_title("FP→Q accuracy gap per backend × spec")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _label_numbers(ax, q)
    return Figure(
        "gap_bars",
        "FP→Q gap",
        _fig_to_png(fig),
        "Top-1 change of each quantized cell against the same "
        "checkpoint's FP32 reference on the same evaluation set; bars per checkpoint. [sim] = numerics of a "
        "simulated target (vendor simulator or simnpu profile), [est] = outputs from a stand-in runtime with a "
        "performance model for the target.",
    )


def fig_reliability(ok: Any, limit: int = 6) -> Figure | None:
    import matplotlib.pyplot as plt
    import numpy as np

    rows = ok[ok["reliability"].fillna("{}") != "{}"]
    if rows.empty:
        return None
    pick = rows[rows["precision"] == "fp32"].head(limit // 2)
    worst = rows[rows["precision"] != "fp32"].sort_values("ece", ascending=False).head(limit - len(pick))
    pick = [*pick.iterrows(), *worst.iterrows()]
    fig, axes = plt.subplots(1, len(pick), figsize=(2.7 * len(pick), 2.9), squeeze=False)
    for ax, (_, r) in zip(axes[0], pick, strict=True):
        b = json.loads(r["reliability"])
        conf = np.array([np.nan if v is None else v for v in b["confidence"]])
        acc = np.array([np.nan if v is None else v for v in b["accuracy"]])
        centers = (np.arange(len(conf)) + 0.5) / len(conf)
        ax.bar(centers, np.nan_to_num(acc), width=1 / len(conf), edgecolor="k", lw=0.4, alpha=0.8)
        ax.plot([0, 1], [0, 1], "r--", lw=0.8)
        ax.set_title(f"{r['model']}\n{r['spec_id']}\nECE {100 * r['ece']:.2f}%", fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("accuracy")
    fig.supxlabel("confidence (max softmax), 15 bins", fontsize=8)
    fig.text(0.99, 0.0, _provenance(ok), ha="right", fontsize=7, color="dimgray")
    return Figure(
        "reliability",
        "Reliability diagrams",
        _fig_to_png(fig),
        "FP32 cells and the quantized cells with the highest ECE; the diagonal is perfect calibration.",
    )


def fig_latency(ok: Any, samples: Any) -> Figure | None:
    import matplotlib.pyplot as plt
    import numpy as np

    if samples is None or samples.empty:
        return None
    ok = ok.sort_values(["model", "backend", "spec_id"])
    groups = samples.groupby("record_id")["latency_ns"]
    data, labels = [], []
    for _, r in ok.iterrows():
        if r["record_id"] in groups.groups:
            data.append(groups.get_group(r["record_id"]).to_numpy() / 1e6)
            tag = "" if r.get("numbers") in ("measured", None, "") else f" [{r['numbers']}: host runs a simulator]"
            labels.append(f"{r['model']} · {r['backend']} · {r['spec_id']}{tag}")
    if not data:
        return None
    total = len(data)
    if total > MAX_LATENCY_CELLS:  # keep the figure readable: the slowest p50 cells are the interesting ones
        order = sorted(range(total), key=lambda i: -float(np.median(data[i])))[:MAX_LATENCY_CELLS]
        data, labels = [data[i] for i in sorted(order)], [labels[i] for i in sorted(order)]
    fig, ax = plt.subplots(figsize=(7.5, max(3, 0.28 * len(data))))
    ax.boxplot(data, orientation="horizontal", showfliers=True, flierprops={"markersize": 2})
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=6)
    ax.set_xlabel("latency per inference (ms), host to host")
    ax.set_xscale("log")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Latency distributions (raw samples)")
    _label_numbers(ax, ok)
    return Figure(
        "latency",
        "Latency distributions",
        _fig_to_png(fig),
        "Every timed iteration of every ok cell, from the raw samples (box: quartiles, whiskers 1.5 IQR).",
    )


def fig_training(training: dict[str, Any]) -> Figure | None:
    import matplotlib.pyplot as plt

    if not training:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax2 = None
    for name, log in training.items():
        ax.plot(log["epoch"], 100 * log["test_accuracy"], marker="o", ms=3, label=f"{name} test acc")
        if "lambda" in log:
            ax2 = ax2 or ax.twinx()
            ax2.plot(log["epoch"], log["lambda"], ls=":", label=f"{name} λ")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    if ax2 is not None:
        ax2.set_ylabel("λ (fake-quant blend)")
        ax2.legend(fontsize=7, loc="lower center")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title("Training curves (measured)")
    return Figure(
        "training",
        "Training curves",
        _fig_to_png(fig),
        "Per-epoch test accuracy and the Quant-Trim blend λ from the training logs beside the checkpoints.",
    )


# ---------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------
SUMMARY = SUMMARY_COLUMNS
_cell = format_value


def summary_rows(df: Any) -> list[list[str]]:
    df = with_gap(df.sort_values(["model", "backend", "spec_id"]))
    return [[_cell(r.get(col), fmt) if col in df else "–" for col, _, fmt in SUMMARY] for _, r in df.iterrows()]


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
def load_report_data(results: list[Path]) -> ReportData:
    import pandas as pd

    from harness.store import load_results, stores_under

    frames, samples = [], []
    for r in results:
        df = load_results(r)
        frames.append(df)
        ok_ids = list(df.loc[df.status == "ok", "record_id"])
        samples += [store.samples(ok_ids) for store in stores_under(r)]
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
    return ReportData(rows, pd.concat(samples, ignore_index=True) if samples else pd.DataFrame(), training)


def build_report(results: list[Path], out: Path, title: str | None = None) -> dict[str, Path]:
    """Write ``out/report.html``, ``out/report.md`` and ``out/*.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    data = load_report_data([Path(r) for r in results])
    rows = data.rows
    ok = rows[rows["status"] == "ok"]
    figures: list[Figure] = []
    if not ok.empty:
        figures.append(fig_power_or_accuracy(ok, use_power=False))
        if has_power(ok):
            figures.append(fig_power_or_accuracy(ok, use_power=True))
        if ok["precision"].isin(["int8", "int4", "fp16"]).any():
            figures.append(fig_gap_bars(ok))
        for extra in (fig_reliability(ok), fig_latency(ok, data.samples), fig_training(data.training)):
            if extra is not None:
                figures.append(extra)
    out.mkdir(parents=True, exist_ok=True)
    for f in figures:
        (out / f"{f.name}.png").write_bytes(f.png)
    title = title or "qtbench report: " + ", ".join(sorted(rows["sweep"].unique()))
    not_ok = rows[rows["status"] != "ok"].sort_values(["model", "backend", "spec_id"])
    provenance = _provenance(rows)
    html_path, md_path = out / "report.html", out / "report.md"
    tables = (summary_rows(rows), spread_table(ok) if not ok.empty else [])
    html_path.write_text(_html(title, rows, ok, not_ok, figures, provenance, tables))
    md_path.write_text(_markdown(title, rows, ok, not_ok, figures, provenance, tables))
    return {"html": html_path, "markdown": md_path, **{f.name: out / f"{f.name}.png" for f in figures}}


def _html_table(header: list[str], body: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html(
    title: str, rows: Any, ok: Any, not_ok: Any, figures: list[Figure], provenance: str, tables: tuple[list, list]
) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:nth-child(-n+4),"
        "th:nth-child(-n+4){text-align:left}figure{margin:1.5em 0}figcaption{color:#555;font-size:13px}"
        ".prov{color:#555}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='prov'>{len(rows)} cells, {len(ok)} ok. Every number is labelled by origin; {e(provenance)}. "
        "Latency (p50, p99, FPS) is the harness's host-to-host clock; on simulated rows that clock timed the "
        "simulator on this host. 'est. ms' is the target's latency from a model, sources below.</p>",
        "<h2>Summary</h2>",
        _html_table([h for _, h, _ in SUMMARY], tables[0]),
    ]
    spread = tables[1]
    if spread:
        parts += ["<h2>Spread across quantization settings</h2>", _html_table(SPREAD_HEADER, spread)]
    est = estimate_sources(rows)
    if est:
        parts.append("<h2>Estimated target latency: sources</h2><ul>")
        parts += [f"<li><b>{e(b)}</b>: {e(src)}</li>" for b, src in est]
        parts.append("</ul>")
    if not not_ok.empty:
        parts.append("<h2>Cells that did not run</h2><ul>")
        for _, r in not_ok.iterrows():
            msg = str(r["status_message"]).strip().splitlines()[0] if r["status_message"] else ""
            parts.append(
                f"<li><b>{e(r['status'])}</b> {e(r['model'])} × {e(r['backend'])} × {e(r['spec_id'])}: {e(msg)}</li>"
            )
        parts.append("</ul>")
    for f in figures:
        data = base64.b64encode(f.png).decode()
        parts.append(
            f"<figure><h2>{e(f.title)}</h2><img alt='{e(f.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{e(f.caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _markdown(
    title: str, rows: Any, ok: Any, not_ok: Any, figures: list[Figure], provenance: str, tables: tuple[list, list]
) -> str:
    parts = [
        f"# {title}",
        "",
        f"{len(rows)} cells, {len(ok)} ok; {provenance}.",
        "",
        "## Summary",
        "",
        _md_table([h for _, h, _ in SUMMARY], tables[0]),
        "",
    ]
    spread = tables[1]
    if spread:
        parts += ["## Spread across quantization settings", "", _md_table(SPREAD_HEADER, spread), ""]
    est = estimate_sources(rows)
    if est:
        parts += ["## Estimated target latency: sources", ""]
        parts += [f"- **{b}**: {src}" for b, src in est]
        parts.append("")
    if not not_ok.empty:
        parts += ["## Cells that did not run", ""]
        for _, r in not_ok.iterrows():
            msg = str(r["status_message"]).strip().splitlines()[0] if r["status_message"] else ""
            parts.append(f"- **{r['status']}** {r['model']} × {r['backend']} × {r['spec_id']}: {msg}")
        parts.append("")
    for f in figures:
        parts += [f"## {f.title}", "", f"![{f.title}]({f.name}.png)", "", f.caption, ""]
    return "\n".join(parts)

"""The summary columns and number formats shared by `qtbench sweep/show` (rich) and reports (HTML/Markdown)."""

from __future__ import annotations

import math
import re
from typing import Any

#: characters a terminal or viewer would act on rather than show: C0/C1 controls (ESC starts escape sequences that
#: can clear or retitle a terminal), DEL, and the bidi overrides/isolates that reorder what a reader sees
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` with every control or bidi-override character shown as a visible escape (``\\x1b``, ``\\u202e``):
    names and messages from sweep files, results or SDKs reach terminals, Markdown and HTML, and must not drive
    them. Plain text (the common case) is returned unchanged."""
    text = str(text)
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def html_text(text: Any, quote: bool = True) -> str:
    """HTML-escaped and :func:`printable`: every string a report takes from results goes through this."""
    import html

    return html.escape(printable(text), quote=quote)


#: (column, header, format): "pct" = fraction as %, "kl" = ×1e3, "kb" = bytes as KB, else a str.format spec.
SUMMARY_COLUMNS: list[tuple[str, str, str]] = [
    ("model", "model", "{}"),
    ("backend", "backend", "{}"),
    ("spec_id", "spec", "{}"),
    ("status", "status", "{}"),
    ("spec_check", "audit", "{}"),  # the artifact audit: ✓ honoured, ✗ mismatch (listed below the table), ? not read
    ("numbers", "numbers", "{}"),
    ("top1", "top-1 %", "pct"),
    ("gap_pp", "FP→Q pp", "{:+.2f}"),
    ("top1_agreement", "agree %", "pct"),
    ("kl_fp", "KL×1e3", "kl"),
    ("ece", "ECE %", "pct"),
    ("latency_ms_p50", "p50 ms", "{:.3f}"),
    ("latency_ms_p99", "p99 ms", "{:.3f}"),
    ("fps", "FPS", "{:.0f}"),
    ("est_latency_ms", "est. ms", "{:.3f}"),
    ("accel_share", "on accel %", "pct"),
    ("energy_mj_text", "mJ/inf", "{}"),  # energy_mj_per_inf, "~0.270 est" when the CPU-time estimate made it
    ("energy_source", "energy source", "{}"),
    ("artifact_bytes", "size KB", "kb"),
]
#: The terminal table leaves out the long energy-source text (`qtbench show --format json` has it).
CLI_COLUMNS = [c for c in SUMMARY_COLUMNS if c[0] != "energy_source"]


def format_value(value: Any, fmt: str) -> str:
    """One cell as text; missing values (None/NaN, negative sizes) are an en dash, never a made-up number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "pct":
        return f"{100 * value:.2f}"
    if fmt == "kl":
        return f"{1000 * value:.2f}"
    if fmt == "kb":
        return "–" if value < 0 else f"{value / 1024:.0f}"
    return fmt.format(value)


def with_gap(df: Any) -> Any:
    """A copy with derived columns: ``gap_pp`` = top-1 change against the same checkpoint's FP32 reference, in
    points; ``energy_mj_text`` = energy per inference, marked when estimated; ``accel_share`` = share of graph
    nodes the accelerator runs (NaN for CPU backends)."""
    df = df.copy()
    df["gap_pp"] = 100 * (df["top1"] - df["fp_top1"])
    df["spec_check"] = [spec_check(a) for a in df.get("audit", [""] * len(df))]
    energy, kinds = df.get("energy_mj_per_inf", [math.nan] * len(df)), df.get("energy_numbers", [""] * len(df))
    df["energy_mj_text"] = [energy_text(e, n) for e, n in zip(energy, kinds, strict=True)]
    df["accel_share"] = [
        accel_share(c, d)
        for c, d in zip(df.get("coverage", [""] * len(df)), df.get("execution_device", [""] * len(df)), strict=True)
    ]
    return df


def spec_check(audit: Any) -> str:
    """The audit flag of a row: ✓ the artifact honours the spec, ✗ it contradicts it, ? it was not read back."""
    if not isinstance(audit, str) or not audit:
        return ""
    return "✓" if audit.startswith("honoured") else "✗" if audit.startswith("mismatch") else "?"


def mismatched(df: Any) -> Any:
    """Rows whose artifact contradicts their spec label (a boolean Series): never a plain ``ok`` anywhere."""
    import pandas as pd

    if "audit" not in df:
        return pd.Series(False, index=df.index)
    return df["audit"].fillna("").astype(str).str.startswith("mismatch") & (df["status"] == "ok")


def accel_share(coverage: Any, execution_device: Any) -> float:
    """Nodes not on the CPU / all nodes, from a row's coverage JSON; NaN when the backend runs on the CPU."""
    import json

    if not isinstance(coverage, str) or execution_device in ("cpu", "", None):
        return float("nan")
    counts = json.loads(coverage or "{}")
    total = sum(counts.values())
    return sum(v for k, v in counts.items() if k != "cpu") / total if total else float("nan")


def energy_text(mj: Any, numbers: Any) -> Any:
    """Energy per inference for tables: an estimate is never shown like a measurement ("~0.270 est")."""
    if mj is None or (isinstance(mj, float) and math.isnan(mj)):
        return math.nan
    return f"~{mj:.3f} est" if numbers == "estimated" else f"{mj:.3f}"

"""What the commands share: the results table that fits the terminal, option parsing, the trust flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qtbench.harness.core.tables import CLI_COLUMNS, with_gap
from qtbench.harness.core.tables import format_value as _fmt


def escape(text: str) -> str:
    """Escape rich markup in strings from results or SDKs ("pip install 'qtbench[tflite]'" must print as is)."""
    from rich.markup import escape as _escape

    from qtbench.harness.core.tables import printable

    return _escape(printable(text))


CLI_PRIORITY = (
    "model", "backend", "spec_id", "status", "spec_check", "top1", "gap_pp", "top1_agreement", "latency_ms_p50",
    "fps", "numbers", "est_latency_ms", "kl_fp", "ece", "latency_ms_p99", "accel_share", "energy_mj_text",
    "artifact_bytes", "sweep",
)  # fmt: skip

_TEXT_COLUMNS = ("sweep", "device", "model", "backend", "spec_id", "status")


def results_table(df: Any, title: str = "", width: int | None = None) -> Any:
    """A rich Table of result rows (one per cell) that fits ``width`` columns: numbers are never cut; columns of
    lower priority (:data:`CLI_PRIORITY`) are left out and named in the caption, and long model names or specs
    wrap instead of being shortened (seed suffixes stay)."""
    from rich.markup import escape as _markup_escape
    from rich.table import Table

    from qtbench.harness.core.tables import printable

    df = with_gap(df)
    columns = [c for c in CLI_COLUMNS if c[0] in CLI_PRIORITY]
    if "device" in df and df["device"].nunique() > 1:  # rows of several boards (a fleet, merged folders)
        columns.insert(0, ("device", "board", "{}"))
    if "sweep" in df and df["sweep"].nunique() > 1:  # a folder of several sweeps: say which row is whose
        columns.insert(0, ("sweep", "sweep", "{}"))
    if not df["timed"].astype(bool).any() if "timed" in df else False:  # fidelity-only rows: no latency columns
        columns = [c for c in columns if c[0] not in ("latency_ms_p50", "latency_ms_p99", "fps")]
    text = {col: [printable(_fmt(v, fmt)) for v in df[col]] if col in df else [] for col, _, fmt in columns}
    if "unstable" in df and ("latency_ms_p50", "p50 ms", "{:.3f}") in columns:
        flags = ["!" if u else "" for u in df["unstable"]]
        text["latency_ms_p50"] = [t + f for t, f in zip(text["latency_ms_p50"], flags, strict=True)]
    # a column carrying nothing (every row "–" or empty) is left out: it would only take width
    columns = [c for c in columns if any(t not in ("–", "") for t in text[c[0]]) or c[0] in _TEXT_COLUMNS]
    need = {col: max([len(head), *(len(t) for t in text[col])]) for col, head, _ in columns}
    wrap_min = {"model": 14, "spec_id": 14, "sweep": 8, "device": 10}  # may wrap (at '-', '_', '/') down to this
    budget = (width or 10_000) - 1  # the table's left border
    core = [c[0] for c in columns if c[0] in _TEXT_COLUMNS]
    whole = sum(need[c] + 3 for c in core) <= budget * 0.7  # the identity columns unwrapped, if room is left
    give = {c: need[c] if whole else min(need[c], wrap_min.get(c, need[c])) for c in core}
    budget -= sum(give[c] + 3 for c in core)
    shown = list(core)
    for col in sorted((c[0] for c in columns if c[0] not in core), key=CLI_PRIORITY.index):
        if need[col] + 3 <= budget:
            shown.append(col)
            give[col] = need[col]
            budget -= need[col] + 3
    for col in ("spec_id", "model", "device", "sweep"):  # what is left of the width goes to the wrapped text
        if col in shown:
            extra = max(0, min(budget, need[col] - give[col]))
            give[col] += extra
            budget -= extra
    hidden = [head for col, head, _ in columns if col not in shown]
    caption = f"left out at this width: {', '.join(hidden)} (widen the terminal, or --format csv)" if hidden else None
    table = Table(title=title or None, caption=caption, show_lines=False, header_style="bold", caption_justify="left")
    shown_cols = [c for c in columns if c[0] in shown]
    for col, header, _ in shown_cols:
        if give[col] < need[col]:
            text[col] = [_wrap_words(t, give[col]) for t in text[col]]
        table.add_column(header, justify="left" if col in _TEXT_COLUMNS else "right", no_wrap=True, min_width=give[col])
    style = {"ok": "", "skipped": "yellow", "failed": "red", "timeout": "red", "unavailable": "magenta"}
    for i, status in enumerate(df["status"]):
        # printable above, before wrapping: here only rich's markup is escaped (the wraps' newlines stay)
        table.add_row(*(_markup_escape(text[col][i]) for col, _, _ in shown_cols), style=style.get(status, ""))
    return table


def _wrap_words(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken after '-', '_', '/' or ' ' where it can be (a
    spec id or model name stays readable and whole), else inside a word."""
    import re

    lines, line = [], ""
    for part in re.findall(r"[^-_/ ]*[-_/ ]?", text):
        while len(part) > width:  # a single piece longer than the width: cut it (nothing is dropped)
            if line:
                lines.append(line)
                line = ""
            lines.append(part[:width])
            part = part[width:]
        if len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(ln.rstrip() for ln in lines if ln)


def unstable_note(df: Any) -> str:
    """Why timings were flagged unstable, with the host load measured around those cells (the usual cause)."""
    import os

    bad = df[df["unstable"].fillna(False).astype(bool)]
    text = (
        f"unstable timing in {len(bad)} of {int(df['timed'].astype(bool).sum()) if 'timed' in df else len(df)} "
        "timed cell(s) (coefficient of variation above measure.cv_threshold)"
    )
    loads = [c for c in ("loadavg_1m_before", "loadavg_1m_after") if c in bad]
    if loads:
        values = bad[loads].to_numpy(dtype=float).ravel()
        values = values[values == values]
        if len(values):
            text += (
                f"; the 1-minute load average was {values.min():.1f}–{values.max():.1f} during them (this machine "
                f"has {os.cpu_count() or 1} core(s); a load near or above that means other work shared them): "
                "compare their speeds with care, or re-run them on an idle machine"
            )
    return text


def _print_reasons(console: Any, df: Any) -> None:
    """Cells that did not run, once per (status, backend, reason) with their specs and how many models: a study
    skips or misses the same pair for every checkpoint, and one line says it."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for _, row in df[df["status"] != "ok"].iterrows():
        msg = str(row["status_message"]).strip().splitlines()[0] if row["status_message"] else ""
        groups.setdefault((row["status"], row["backend"], msg), []).append(row)
    order = {"failed": 0, "timeout": 1, "unavailable": 2, "skipped": 3}
    for (status, backend, msg), rows in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], 9)):
        specs = sorted({r["spec_id"] for r in rows})
        models = sorted({r["model"] for r in rows})
        who = models[0] + " × " if len(models) == 1 else ""
        where = f"{who}{backend} × {', '.join(specs)}" + (f" ({len(models)} models)" if len(models) > 1 else "")
        console.print(f"  [{status}] {where}: {msg}", markup=False, highlight=False)
    from qtbench.harness.core.tables import mismatched

    for _, row in df[mismatched(df)].iterrows():
        console.print(
            f"  [spec not honoured] {row['model']} × {row['backend']} × {row['spec_id']}: "
            f"{str(row['audit']).removeprefix('mismatch: ')}",
            markup=False,
            highlight=False,
        )
    if mismatched(df).any():
        console.print(
            "  spec ✗ = the artifact read back contradicts its label (see the audit); those rows are left out of "
            "compare's aggregates",
            highlight=False,
        )
    if "unstable" in df and df["unstable"].fillna(False).astype(bool).any():
        console.print(f"  ! = {unstable_note(df)}", highlight=False)


def _console() -> Any:
    """A rich console; when output is not a terminal (CI logs, pipes) use a wide fixed width so tables stay whole."""
    import os

    from rich.console import Console

    if os.environ.get("COLUMNS", "").isdigit():  # an explicit width (a test, `COLUMNS=80 qtbench show ...`) wins
        return Console(width=int(os.environ["COLUMNS"]))
    return Console() if sys.stdout.isatty() else Console(width=200)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. 50, or 0 for all)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 for all, or a count such as 50")
    return value


def parse_option(kv: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value), the value read as YAML like a sweep file's (1.5, true, [a, b], text)."""
    import yaml

    from qtbench.harness.core.errors import ConfigError

    key, sep, value = kv.partition("=")
    if not sep or not key:
        raise ConfigError(f"--real-option {kv!r}: write KEY=VALUE, e.g. --real-option target_platform=rk3576")
    return key, yaml.safe_load(value)


def _add_trust_flags(parser: Any) -> None:
    """--trust / --untrusted for a command that reads a sweep file (set $QTBENCH_TRUSTED for it and its cells)."""
    from qtbench.harness.core.trust import TrustAction, UntrustedAction  # light: os + argparse only

    parser.add_argument("--untrusted", action=UntrustedAction)
    parser.add_argument("--trust", action=TrustAction)

"""``qtbench compare``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _console, escape
from qtbench.harness.core.errors import UserError


def _print_comparison(console: Any, results: Path) -> None:
    """After a study sweep: the comparison's headlines and per-group table (`qtbench compare` has the rest)."""
    from rich.table import Table

    from qtbench.harness.analysis.compare import compare, group_table, headlines

    try:
        df = compare(results)
    except UserError as exc:  # e.g. more than two groups: the user picks them with `qtbench compare`
        console.print(f"compare: {exc}", markup=False, highlight=False)
        return
    if df.empty:
        return
    header, body = group_table(df)
    table = Table(header_style="bold", title=f"{df.attrs['candidate']} vs {df.attrs['baseline']}: mean ± sd over seeds")
    for h in header:
        table.add_column(escape(h))
    for r in body:
        table.add_row(*(escape(c) for c in r))
    console.print(table)
    for line in headlines(df):
        console.print(line, markup=False, highlight=False)
    console.print(f"details: qtbench compare {results} --details", markup=False, highlight=False)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from qtbench.harness.analysis.compare import compare, difference_table, group_table, headlines, to_markdown

    df = compare(args.results, args.baseline_group, args.candidate_group, n_boot=args.bootstrap)
    console = _console()
    if df.empty:
        raise UserError("no quantized cells with per-sample predictions and an FP32 cell to compare")
    for line in headlines(df):
        console.print(line, markup=False, highlight=False)
    slices = ("all", "backend", "family") if args.details else ("all",)
    diff_title = f"{df.attrs['candidate']} − {df.attrs['baseline']}, 95 % CI over seeds and samples"
    for title, (header, body) in (
        ("per group: mean ± sd over seeds", group_table(df)),
        (diff_title, difference_table(df, slices)),
    ):
        table = Table(header_style="bold", title=title)
        for h in header:
            table.add_column(escape(h))
        for r in body:
            table.add_row(*(escape(c) for c in r))
        console.print(table)
    for n in df.attrs.get("notes", []):
        console.print(f"note: {n}", markup=False, highlight=False)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="is group B more robust than group A? FP→Q gaps per precision/backend/spec with 95 %% intervals",
    )
    c.add_argument("results", nargs="+", help="results folders holding both groups (models[].group / seed)")
    c.add_argument("--baseline-group", help="e.g. fp (default: 'fp' when the results hold two groups)")
    c.add_argument("--candidate-group", help="e.g. quanttrim (default: the other group)")
    c.add_argument("--details", action="store_true", help="also print the per-backend and per-spec-family rows")
    c.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates over images (default 1000)")
    c.add_argument("--markdown", help="write the comparison as Markdown here")
    c.add_argument("--csv", help="write the full comparison frame as CSV here")
    c.set_defaults(func=cmd_compare)

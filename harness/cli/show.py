"""``qtbench show``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qtbench.harness.cli.common import _console, _non_negative_int, _print_reasons, results_table


def cmd_show(args: argparse.Namespace) -> int:
    from qtbench.harness.run.store import load_results

    df = load_results(args.results, latest=not args.history)
    for col, values in (
        ("backend", args.backend),
        ("spec_id", args.spec),
        ("model", args.model),
        ("status", args.status),
    ):
        if values:
            df = df[df[col].isin(values)]
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
        return 0
    if args.format == "json":
        print(df.to_json(orient="records", indent=1))
        return 0
    console = _console()
    if df.empty:
        console.print("no rows match", highlight=False)
        return 0
    df = df.sort_values(["sweep", "model", "backend", "spec_id"]) if not args.history else df.sort_values("created_utc")
    shown = df if args.limit == 0 else df.head(args.limit)
    title = f"{args.results}: {len(df)} row(s)" + (f", the first {len(shown)} shown" if len(shown) < len(df) else "")
    console.print(results_table(shown, title=title, width=console.width))
    if len(shown) < len(df):
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
        console.print(
            f"{len(df) - len(shown)} more row(s) ({counts} in all): filter with --backend/--model/--spec/--status, "
            "--limit 0 for every row, or --format csv for a file",
            highlight=False,
        )
    _print_reasons(console, df)
    return 0


def register(sub: Any) -> None:
    sh = sub.add_parser("show", help="print results as a table, filtered by backend/spec/model/status")
    sh.add_argument("results", help="a results folder (results/<sweep>) or a folder of them")
    sh.add_argument("--backend", nargs="+")
    sh.add_argument("--spec", nargs="+")
    sh.add_argument("--model", nargs="+")
    sh.add_argument("--status", nargs="+")
    sh.add_argument("--history", action="store_true", help="every row ever recorded, not just the latest per cell")
    sh.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sh.add_argument(
        "--limit",
        type=_non_negative_int,
        default=200,
        help="table rows to print (default 200; 0: all — a terminal table of thousands of rows is slow to draw)",
    )
    sh.set_defaults(func=cmd_show)

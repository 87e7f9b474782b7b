"""``qtbench report``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from qtbench.harness.analysis.report import build_report

    results = [Path(r) for r in args.results]
    out = (
        Path(args.out) if args.out else Path.cwd() / "reports" / (results[0].name if len(results) == 1 else "combined")
    )
    paths = build_report(results, out, args.title)
    print(f"report: {paths['html']}\n        {paths['markdown']}")
    return 0


def register(sub: Any) -> None:
    r = sub.add_parser("report", help="HTML + Markdown report with plots from one or more results folders")
    r.add_argument("results", nargs="+", help="results folders (results/<sweep>)")
    r.add_argument("--out", help="report folder (default reports/<sweep name>)")
    r.add_argument("--title")
    r.set_defaults(func=cmd_report)

"""``qtbench check``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _console, escape
from qtbench.harness.core.errors import UserError

CHECK_TABLE_ROWS = 200  # verdicts drawn in the terminal table before only the notable ones are


def cmd_check(args: argparse.Namespace) -> int:
    from rich.table import Table

    from qtbench.harness.analysis.check import run_gates, to_junit, to_markdown
    from qtbench.harness.analysis.gates import load_gates

    result = run_gates(
        args.baseline,
        args.candidate,
        load_gates(args.gates),
        args.baseline_model,
        args.candidate_model,
        args.allow_mismatch,
    )
    table = Table(header_style="bold", title=f"{args.candidate} vs {args.baseline}")
    for col in ("verdict", "cell", "gate", "baseline", "candidate", "change", "evidence", "why"):
        table.add_column(col)
    style = {"fail": "red", "inconclusive": "yellow", "pass": ""}
    shown = result.verdicts
    if not args.all and len(shown) > CHECK_TABLE_ROWS:
        # a terminal table of thousands of verdicts takes minutes to draw: the ones that need a look come first
        shown = [v for v in shown if v.verdict != "pass" or v.mark][:CHECK_TABLE_ROWS]
    for v in shown:
        table.add_row(
            escape(v.verdict_text),
            escape(v.cell),
            escape(v.gate),
            f"{v.baseline:.6g}",
            f"{v.candidate:.6g}",
            v.change,
            escape(v.evidence),
            escape(v.reason if v.verdict != "pass" else ""),
            style=style[v.verdict],
        )
    console = _console()
    console.print(table)
    if len(shown) < len(result.verdicts):
        console.print(
            f"{len(result.verdicts) - len(shown)} of {len(result.verdicts)} verdicts not listed (passes without a "
            f"significant change, and any past {CHECK_TABLE_ROWS} rows): --all lists every one; --markdown and "
            "--junit files hold them all",
            highlight=False,
        )
    for m in result.missing:
        console.print(f"not compared: {m}", highlight=False)
    for n in result.notes:
        console.print(f"note: {n}", highlight=False)
    console.print(f"qtbench check: {result.summary()}", highlight=False)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(result))
    if args.junit:
        Path(args.junit).write_text(to_junit(result))
    if not result.verdicts:
        unusable = sum("(baseline cell is " in m for m in result.missing)
        if unusable and unusable == len([m for m in result.missing if "(only in " not in m]):
            raise UserError(
                f"no baseline cell finished ok ({unusable} did not; see 'not compared' above): nothing to judge the "
                "candidate against; fix and re-run the baseline sweep"
            )
        raise UserError(
            "no cell is in both result sets (another model, backend, spec or device?); see 'not compared' above"
        )
    if result.failed:
        return 1
    if result.inconclusive and args.strict:
        return 3
    return 0


def register(sub: Any) -> None:
    c = sub.add_parser("check", help="gate a candidate's results against a baseline (exit 1 on regression)")
    c.add_argument("--baseline", required=True, help="baseline results folder")
    c.add_argument("--candidate", required=True, help="candidate results folder")
    c.add_argument("--gates", help="YAML of metric: rule (default: top1 -0.5pp, ece +1pp, latency_ms_p50 +5%%)")
    c.add_argument("--baseline-model", help="compare this model of the baseline folder")
    c.add_argument("--candidate-model", help="compare this model of the candidate folder")
    c.add_argument("--allow-mismatch", action="store_true", help="compare across devices or measurement settings")
    c.add_argument("--strict", action="store_true", help="exit 3 when any gate is inconclusive")
    c.add_argument("--markdown", help="write a Markdown summary here")
    c.add_argument("--junit", help="write JUnit XML here")
    c.add_argument(
        "--all",
        action="store_true",
        help=f"list every verdict (by default, past {CHECK_TABLE_ROWS} verdicts only fails, inconclusives and "
        "significant changes are listed)",
    )
    c.set_defaults(func=cmd_check)

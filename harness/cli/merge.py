"""``qtbench merge``."""

from __future__ import annotations

import argparse
from typing import Any

from qtbench.harness.cli.common import escape


def cmd_merge(args: argparse.Namespace) -> int:
    from qtbench.harness.run.merge import merge

    for s in merge(args.out, args.inputs):
        print(
            f"{s.out}: +{s.rows_added} row(s), {s.rows_present} already present, +{s.runs_added} run(s), "
            f"+{s.samples_added} latency samples, +{s.predictions_added} predictions "
            f"(from {', '.join(str(p) for p in s.sources)})"
        )
        if s.conflicts:
            print(
                f"{len(s.conflicts)} record(s) differ between the folders; newest measurement wins (ties: content "
                f"digest), the other version is kept in {s.out / 'conflicts'}:"
            )
            for line in s.conflicts:
                print(f"  {escape(line)}")
    return 0


def register(sub: Any) -> None:
    m = sub.add_parser(
        "merge", help="join results folders (e.g. offline boards' sweeps) into OUT by record id; idempotent"
    )
    m.add_argument("out", help="results folder to merge into (created if missing)")
    m.add_argument("inputs", nargs="+", help="results folders (results/<sweep>) or folders of them")
    m.set_defaults(func=cmd_merge)

"""``qtbench backends``."""

from __future__ import annotations

import argparse
from typing import Any

from qtbench.harness.cli.common import _console, escape


def cmd_backends(args: argparse.Namespace) -> int:
    import json

    from qtbench import backends

    statuses = backends.list_backends(timeout_s=args.timeout if args.timeout > 0 else None)
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return 0
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("backend", "status", "versions / reason", "source"):
        table.add_column(col)
    for s in statuses:
        detail = ", ".join(f"{k} {v}" for k, v in s.versions.items()) if s.available else s.reason
        table.add_row(
            s.slug,
            "available" if s.available else "unavailable",
            escape(detail),
            f"{s.origin}: {s.target}",
            style="" if s.available else "magenta",
        )
    _console().print(table)
    return 0


def register(sub: Any) -> None:
    b = sub.add_parser("backends", help="list registered backends: available or why not, with versions")
    b.add_argument("--json", action="store_true")
    b.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds each backend's probe may take; probes run side by side (0: probe in-process, no limit)",
    )
    b.set_defaults(func=cmd_backends)

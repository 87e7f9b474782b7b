"""``qtbench fleet``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _console, escape


def cmd_fleet(args: argparse.Namespace) -> int:
    import json

    from qtbench.harness.run.fleet import fleet_status, load_fleet

    fleet = load_fleet(args.fleet, Path.cwd())
    rows = fleet_status(fleet, probe_timeout_s=args.timeout, slugs=args.backends)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("board", "state", "node", "host", "python / ray / qtbench", "backends available (offered)"):
        table.add_column(col)
    for r in rows:
        versions = " / ".join(str(r.get(k, "?")) for k in ("python", "ray", "qtbench")) if "python" in r else ""
        offered = f" ({', '.join(r['offers'])})" if r.get("offers") else ""
        table.add_row(
            escape(r["board"]),
            escape(r["state"]),
            r["node_id"][:12],
            escape(r.get("hostname", "")),
            versions,
            escape(", ".join(r.get("available", [])) + offered),
            style="" if r["state"] == "idle" else "magenta",
        )
    _console().print(table)
    return 0


def register(sub: Any) -> None:
    f = sub.add_parser("fleet", help="boards of a Ray fleet: ids, backends there, versions, idle (qtbench[fleet])")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    st = fsub.add_parser("status", help="each board's node, idle or busy, versions and `qtbench backends` there")
    st.add_argument("--fleet", required=True, help="a fleet file or a cluster address (ray://HEAD:10001, auto)")
    st.add_argument("--timeout", type=float, default=60.0, help="seconds each backend probe may take on a board")
    st.add_argument("--backends", nargs="+", metavar="SLUG", help="probe only these backends (default: all)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_fleet)

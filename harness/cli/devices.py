"""``qtbench devices``."""

from __future__ import annotations

import argparse
from typing import Any

from qtbench.harness.cli.common import _console, escape


def cmd_devices(args: argparse.Namespace) -> int:
    import json
    import math

    from rich.table import Table

    from qtbench.devices.catalog import match_board
    from qtbench.devices.host import device_id, host_info
    from qtbench.devices.power import AUTO_ORDER, survey
    from qtbench.devices.thermal import describe, snapshot

    info, meters, thermal = host_info(), survey(log=args.meter_log, rail=args.rail), snapshot()
    board = match_board(info["board_model"]) if info["board_model"] else None
    if args.json:
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in thermal.items()}
        print(
            json.dumps(
                {
                    "device": device_id(),
                    "host": info,
                    "meters": [{"meter": n, "available": ok, "detail": d} for n, ok, d in meters],
                    "thermal": clean,  # null where there is no sensor (NaN is not JSON)
                    "catalog": board,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    console = _console()
    console.print(f"device id: [bold]{device_id()}[/]", highlight=False)
    console.print(
        f"cpu: {info['cpu_model']} ({info['cpu_count_physical']} physical / {info['cpu_count_logical']} "
        f"logical, {info['cpu_affinity']} usable), {info['memory_gb']} GB; {info['os']} {info['kernel']}",
        highlight=False,
    )
    console.print(f"cpu flags: {' '.join(info['cpu_flags']) or '-'}", highlight=False)
    console.print(
        f"board: {info['board_model'] or 'none (no /proc/device-tree/model)'}; catalog: "
        f"{board['id'] if board else 'no match'}",
        highlight=False,
    )
    table = Table(header_style="bold", title="power meters (auto: the first available one that serves the cell)")
    for col in ("meter", "status", "auto for cells on", "detail"):
        table.add_column(col)
    for name, ok, detail in meters:
        serves = ", ".join(d.replace("other", "npu/other") for d, order in AUTO_ORDER.items() if name in order)
        table.add_row(name, "available" if ok else "unavailable", serves, escape(detail), style="" if ok else "magenta")
    console.print(table)
    console.print(f"thermal: {describe(thermal)}", highlight=False)
    return 0


def register(sub: Any) -> None:
    d = sub.add_parser("devices", help="this host's identity, power meters (or why not), thermal sensors")
    d.add_argument("--meter-log", help="also check an external meter CSV log")
    d.add_argument("--rail", help="check this rail (device.rail): a hwmon label, 'sum', or a RAPL zone name")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_devices)

"""Thermal and DVFS state before/after a cell: temperatures, CPU clocks and kernel throttle counters.

A row is flagged ``throttled`` when a throttle counter rose during the cell, a sensor reached its critical
temperature, or the mean CPU clock fell by more than ``CLOCK_DROP`` — numbers measured while the chip
protected itself are not the chip's steady-state speed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLOCK_DROP = 0.10


def snapshot(root: str | Path = "/") -> dict[str, Any]:
    root = Path(root)
    temps: dict[str, float] = {}
    crit = False
    for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
        try:
            t = int((zone / "temp").read_text()) / 1000.0
        except (OSError, ValueError):
            continue
        kind = (zone / "type").read_text().strip() if (zone / "type").is_file() else zone.name
        temps[kind] = t
        for trip in zone.glob("trip_point_*_type"):
            if trip.read_text().strip() == "critical":
                try:
                    crit |= t >= int((zone / trip.name.replace("_type", "_temp")).read_text()) / 1000.0
                except (OSError, ValueError):
                    pass
    freqs = []
    for f in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        try:
            freqs.append(int(f.read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    throttles = 0
    for f in (root / "sys/devices/system/cpu").glob("cpu[0-9]*/thermal_throttle/*_throttle_count"):
        try:
            throttles += int(f.read_text())
        except (OSError, ValueError):
            continue
    return {
        "temp_c_max": max(temps.values()) if temps else float("nan"),
        "cpu_mhz_mean": sum(freqs) / len(freqs) if freqs else float("nan"),
        "throttle_count": throttles,
        "at_critical": crit,
        "sensors": len(temps),
    }


def throttled(before: dict[str, Any], after: dict[str, Any]) -> tuple[bool, str]:
    if after["throttle_count"] > before["throttle_count"]:
        return True, f"kernel throttle counters rose by {after['throttle_count'] - before['throttle_count']}"
    if after["at_critical"]:
        return True, f"a thermal zone reached its critical trip point ({after['temp_c_max']:.1f} °C)"
    b, a = before["cpu_mhz_mean"], after["cpu_mhz_mean"]
    if b == b and a == a and b > 0 and a < (1 - CLOCK_DROP) * b:
        return True, f"mean CPU clock fell {b:.0f} → {a:.0f} MHz"
    return False, ""


def describe(snap: dict[str, Any]) -> str:
    """One line for ``qtbench devices``: 'no sensor' where a reading is missing, never ``nan``."""
    temp = snap["temp_c_max"]
    mhz = snap["cpu_mhz_mean"]
    zones = f"{snap['sensors']} zone(s), max {temp:.1f} °C" if temp == temp else "no temperature sensor"
    clock = f"mean CPU clock {mhz:.0f} MHz" if mhz == mhz else "CPU clock: no sensor (no cpufreq)"
    return f"{zones}; {clock}; throttle events so far {snap['throttle_count']}"

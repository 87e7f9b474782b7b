"""The probe the harness puts around a cell's timed loops: power meter, idle baseline, thermal state and cost.

The harness asks for ``LoopProbe(settings, execution_device)`` and drives it with four calls; everything about
meters, rails, thermal zones and prices stays in ``devices``::

    probe = LoopProbe(job.device, info.execution_device)
    fields.update(probe.before())                     # thermal snapshot, idle baseline
    for each repeat:
        timing = time_inference(infer, feeds, settings, probe.start, probe.stop)
        probe.loop_done(timing.process_cpu_s, timing.wall_s)
    fields.update(probe.after(iterations_per_repeat, fps))   # energy, power, throttling, cost columns

The meter is chosen for the cell's execution device (:func:`devices.power.auto_order`). The CPU-time estimate
is computed from the timed loop's own process CPU time (measured by the harness strictly around the loop), not
from the sampler window, which would also count the sampler thread's start and join.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtbench.devices.catalog import cost_per_million, load_catalog, match_board
from qtbench.devices.host import host_info
from qtbench.devices.power import PowerSession, choose_meter, energy_fields
from qtbench.devices.thermal import snapshot, throttled

if TYPE_CHECKING:  # the harness's settings type; devices does not import the harness at run time
    from qtbench.harness.core.config import DeviceSettings


class LoopProbe:
    """Meter + idle baseline + thermal snapshots + cost around the timed loops of one cell."""

    def __init__(self, settings: DeviceSettings, execution_device: str | None = "cpu", root: str | Path = "/") -> None:

        self.settings = settings
        self.root = root
        self.meter, self.why_not = choose_meter(
            settings.meter,
            root,
            log=settings.meter_log,
            watts_per_core=settings.watts_per_core,
            rail=getattr(settings, "rail", None),
            execution_device=execution_device,
        )
        self.session = PowerSession(self.meter, settings.sample_period_ms / 1000) if self.meter else None
        self.traces: list[Any] = []
        self.loops: list[tuple[float, float]] = []  # (process CPU s, wall s) of each timed loop
        self.idle = None
        self.thermal0: dict[str, Any] = {}

    def before(self) -> dict[str, Any]:
        """Thermal snapshot and, for measuring meters, the idle baseline; returns the 'before' row columns."""

        self.thermal0 = snapshot(self.root)
        if self.session and self.meter.kind == "measured" and self.settings.idle_s > 0:
            self.idle = self.session.idle(self.settings.idle_s)
        return {"temp_c_before": self.thermal0["temp_c_max"], "cpu_mhz_before": self.thermal0["cpu_mhz_mean"]}

    def start(self) -> None:
        if self.session:
            self.session.start()

    def stop(self) -> None:
        if self.session:
            self.traces.append(self.session.stop())

    def loop_done(self, process_cpu_s: float, wall_s: float) -> None:
        """The timed loop's own process CPU time and wall time, as the harness measured them."""
        self.loops.append((process_cpu_s, wall_s))

    def _estimated_traces(self) -> list[Any]:
        """Estimate: energy = W/core × the loop's own CPU seconds over the loop's own wall time."""
        if len(self.loops) != len(self.traces):
            return self.traces  # loop_done() not called: fall back to the sampler window
        w = self.meter.watts_per_core
        return [
            dataclasses.replace(tr, energy_j=w * cpu, window_s=wall)
            for tr, (cpu, wall) in zip(self.traces, self.loops, strict=True)
        ]

    def after(self, iterations: list[int], fps: float) -> dict[str, Any]:
        """Energy, power, thermal and cost columns for the row."""

        t1 = snapshot(self.root)
        hot, why = throttled(self.thermal0, t1)
        out: dict[str, Any] = {
            "temp_c_after": t1["temp_c_max"],
            "cpu_mhz_after": t1["cpu_mhz_mean"],
            "throttled": hot,
            "throttle_reason": why,
        }
        if not self.session:
            out["energy_source"] = "unavailable: " + "; ".join(self.why_not)
            return out
        traces = self._estimated_traces() if self.meter.kind == "estimated" else self.traces
        out.update(energy_fields(traces, self.idle, iterations, self.meter, self.session.period_s))
        board = (
            load_catalog().get(self.settings.catalog)
            if self.settings.catalog
            else match_board(host_info()["board_model"])
        )
        price = self.settings.price_usd if self.settings.price_usd is not None else (board or {}).get("price_usd")
        out["cost_per_million_inferences"] = cost_per_million(
            out["energy_mj_per_inf"] / 1000,
            fps,
            price,
            self.settings.electricity_usd_per_kwh,
            self.settings.lifetime_years,
            self.settings.duty_cycle,
        )
        return out

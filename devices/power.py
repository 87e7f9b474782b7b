"""Power meters and energy per inference.

Sources, best first: board rails (jtop on Jetson, hwmon/INA sysfs), RAPL, NVML, an external meter log, and last
an *estimate* from process CPU time × a stated per-core power model. Every figure carries its source; estimated
numbers are never mixed with measured ones.

A meter is sampled in a background thread during the timed loop (``PowerSession``). Energy = ∫P dt over the
window (trapezoid over samples, or the difference of an energy counter, wrap handled). An idle baseline is
sampled before the loop, so energy is reported in total and above idle. Sensors update slower than they are
read; a window shorter than ``MIN_UPDATES`` sensor updates is flagged (``energy_window_short``), the
zero-energy trap of short windows.

All sysfs paths hang off ``root`` so tests run against a fixture tree laid out like the real files.
"""

from __future__ import annotations

import csv
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MIN_UPDATES = 4
DEFAULT_PERIOD_MS = 20.0
DEFAULT_WATTS_PER_CORE = 10.0  # estimate model: a busy x86 server core ≈ 10 W (stated, not measured)


@dataclass
class PowerTrace:
    """Samples of one window: times (s, monotonic) and watts; or an energy counter's start/end."""

    t: np.ndarray
    watts: np.ndarray
    energy_j: float | None = None  # from a counter, when the source has one (more exact than ∫ samples)
    window_s: float | None = None  # the measured window (start→stop); default: first→last sample

    @property
    def duration_s(self) -> float:
        if self.window_s is not None:
            return self.window_s
        return float(self.t[-1] - self.t[0]) if len(self.t) > 1 else 0.0

    def energy(self) -> float:
        if self.energy_j is not None:
            return self.energy_j
        if len(self.t) < 2:
            return float("nan")
        return float(np.sum((self.watts[1:] + self.watts[:-1]) / 2 * np.diff(self.t)))

    def update_period_s(self) -> float:
        """Median time between changes of the reading: how often the sensor really updates."""
        if len(self.t) < 3:
            return float("nan")
        changes = self.t[1:][np.diff(self.watts) != 0]
        return float(np.median(np.diff(changes))) if len(changes) > 1 else float("inf")


class PowerMeter:
    """A power source. Subclasses implement ``probe`` (available or why not) and ``read_watts`` or counters."""

    name = "meter"
    kind = "measured"  # measured | estimated

    def probe(self) -> tuple[bool, str]:
        raise NotImplementedError

    def label(self) -> str:
        return self.name

    def read_watts(self) -> float:
        raise NotImplementedError

    def read_energy_j(self) -> float | None:
        """Cumulative energy counter in joules, or None when the source has none."""
        return None

    def counter_delta(self, start: float, end: float) -> float:
        return end - start


# ---------------------------------------------------------------------------------------------------------
# Real meters
# ---------------------------------------------------------------------------------------------------------
class RaplMeter(PowerMeter):
    """Intel/AMD RAPL energy counters (``/sys/class/powercap/intel-rapl:N[:M]``).

    Default: the CPU *package* zones, summed over sockets. ``psys`` (the platform zone on laptops) already
    contains the packages, so it is never added to them; it is used alone when ``rail: psys`` asks for it (its
    scope differs between platforms, packages exist on every RAPL machine, so packages are the default). Any
    other zone name (``dram``, ``core``, ``uncore``, ``package-0``) selects the zones of that name.
    """

    name = "rapl"

    def __init__(self, root: str | Path = "/", rail: str | None = None) -> None:
        self.base = Path(root) / "sys/class/powercap"
        self.rail = rail
        self.zones: list[Path] = []
        self._last_e: float | None = None
        self._last_t: float | None = None

    def _zone_name(self, z: Path) -> str:
        return _read_label(z / "name") or z.name

    def probe(self) -> tuple[bool, str]:
        if not self.base.is_dir():
            return False, f"{self.base} does not exist (no powercap driver: VM, container or non-Intel/AMD CPU)"
        every = sorted(self.base.glob("intel-rapl:*"))
        top = [z for z in every if z.name.count(":") == 1]
        if not top:
            return False, f"no intel-rapl zones under {self.base}"
        rail = self.rail or "package"
        if rail == "package":
            zones = [z for z in top if self._zone_name(z).startswith("package")]
        else:
            zones = [z for z in every if self._zone_name(z) == rail]
        if not zones:
            names = ", ".join(sorted({self._zone_name(z) for z in every}))
            return False, f"no RAPL zone named {rail!r} (zones here: {names}); set device.rail to one of them"
        try:
            for z in zones:
                int((z / "energy_uj").read_text())
        except PermissionError:
            return False, "RAPL energy_uj is root-only since Linux 5.10 (CVE-2020-8694): run as root or chmod it"
        except (OSError, ValueError) as exc:
            return False, f"cannot read RAPL counters: {exc}"
        self.zones = zones
        return True, ""

    def label(self) -> str:
        names = " + ".join(self._zone_name(z) for z in self.zones)
        if not self.rail or self.rail == "package":
            return f"rapl {names} (CPU package; psys not counted)"
        return f"rapl {names} (device.rail)"

    def _raw(self) -> list[tuple[int, int]]:
        return [(int((z / "energy_uj").read_text()), int((z / "max_energy_range_uj").read_text())) for z in self.zones]

    def read_energy_j(self) -> float:
        # Accumulate per-zone deltas modulo each zone's range, so a wrap between reads is not lost.
        raw = self._raw()
        if not hasattr(self, "_prev"):
            self._prev = raw
            self._acc = 0.0
        for (e, rng), (pe, _) in zip(raw, self._prev, strict=True):
            self._acc += ((e - pe) % rng) / 1e6
        self._prev = raw
        return self._acc

    def read_watts(self) -> float:
        now, e = time.monotonic(), self.read_energy_j()
        watts = (
            float("nan") if self._last_t is None or now == self._last_t else (e - self._last_e) / (now - self._last_t)
        )
        self._last_e, self._last_t = e, now
        return watts


#: hwmon channel labels that are a board's input rail (the total: CPU/GPU/SoC rails are parts of it): Jetson's
#: INA3221 VDD_IN (Orin, Xavier NX, TX2) and POM_5V_IN (Nano); any label ending in _IN.
INPUT_RAIL = re.compile(r"(^|_)V?IN$", re.IGNORECASE)
#: hwmon chips that measure a whole system's input power (ACPI power meter).
INPUT_CHIPS = ("power_meter",)
INA_CHIPS = ("ina2", "ina3")  # ina219/226/230/238, ina3221: current/power monitors on boards


class HwmonMeter(PowerMeter):
    """Board rails through hwmon (INA219/INA226/INA3221 …): ``power*_input`` (µW) or ``in*_input`` (mV) ×
    ``curr*_input`` (mA).

    Rails overlap (on Jetson, VDD_IN is the module input and VDD_CPU_GPU_CV, VDD_SOC are parts of it), so one
    rail is read, never a sum by default: ``rail`` (``device.rail``) names a channel label; unset, the board
    input rail (a label ending in ``_IN``, or an ACPI power meter) is chosen, or the only channel of a single INA
    chip. Boards without an input rail (AGX Xavier/Orin list disjoint rails) need ``rail: sum`` or a label;
    channels of other chips (a GPU's own hwmon) are never picked unasked.
    """

    name = "hwmon"

    def __init__(self, root: str | Path = "/", rail: str | None = None) -> None:
        self.base = Path(root) / "sys/class/hwmon"
        self.rail = rail
        self.channels: list[tuple[str, Path, Path | None]] = []  # (label, power-or-voltage file, current file)
        self.why = ""

    def _all_channels(self) -> list[tuple[str, str, Path, Path | None]]:
        found = []
        for dev in sorted(self.base.glob("hwmon*")):
            chip = _read_label(dev / "name") or dev.name
            powers = sorted(dev.glob("power*_input"))
            for p in powers:
                idx = p.name[len("power") : -len("_input")]
                found.append((_read_label(dev / f"power{idx}_label") or f"{chip}/power{idx}", chip, p, None))
            if not powers:
                for v in sorted(dev.glob("in*_input")):
                    idx = v.name[2:-6]
                    c = dev / f"curr{idx}_input"
                    if c.is_file():
                        found.append((_read_label(dev / f"in{idx}_label") or f"{chip}/in{idx}", chip, v, c))
        return found

    def probe(self) -> tuple[bool, str]:
        if not self.base.is_dir():
            return False, f"{self.base} does not exist"
        found = self._all_channels()
        if not found:
            return False, "no hwmon power or voltage×current channels (no INA-type rail sensors on this board)"
        labels = ", ".join(f[0] for f in found)
        if self.rail == "sum":
            chosen, self.why = found, "sum of every rail (device.rail: sum)"
        elif self.rail:
            chosen, self.why = [f for f in found if f[0] == self.rail], "device.rail"
            if not chosen:
                return False, f"no hwmon rail labelled {self.rail!r} (rails here: {labels}); fix device.rail"
        else:
            inputs = [f for f in found if INPUT_RAIL.search(f[0]) or f[1] in INPUT_CHIPS]
            ina = [f for f in found if f[1].startswith(INA_CHIPS)]
            if len(inputs) == 1:
                chosen, self.why = inputs, "board input"
            elif len(inputs) > 1:
                return False, f"several input rails ({', '.join(f[0] for f in inputs)}): set device.rail to one"
            elif len(found) == 1 and ina:
                chosen, self.why = found, "the only rail"
            else:
                return False, (
                    f"rails {labels}: none is a board input (…_IN or an ACPI power meter) and rails may overlap, "
                    "so none is summed unasked: set device.rail to one label, or 'sum' if they are disjoint"
                )
        self.channels = [(label, p, c) for label, _chip, p, c in chosen]
        return True, ""

    def label(self) -> str:
        return "hwmon " + " + ".join(c[0] for c in self.channels) + (f" ({self.why})" if self.why else "")

    def read_watts(self) -> float:
        total = 0.0
        for _, p, c in self.channels:
            if c is None:
                total += int(p.read_text()) / 1e6  # µW
            else:
                total += int(p.read_text()) / 1e3 * int(c.read_text()) / 1e3  # mV × mA
        return total


def _read_label(p: Path) -> str:
    return p.read_text().strip() if p.is_file() else ""


class NvmlMeter(PowerMeter):
    """NVIDIA GPU board power via NVML (``pip install 'qtbench[nvml]'``): the total-energy counter when the GPU
    has one (Volta+), else power samples."""

    name = "nvml"

    def __init__(self, index: int = 0, module: Any = None) -> None:
        self.index = index
        self._nvml = module
        self.handle = None
        self.has_counter = False

    def probe(self) -> tuple[bool, str]:
        try:
            nvml = self._nvml or __import__("pynvml")
            nvml.nvmlInit()
            self.handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
        except ImportError:
            return False, "pynvml not installed: pip install 'qtbench[nvml]'"
        except Exception as exc:  # noqa: BLE001 - NVMLError_* when no driver/GPU
            return False, f"NVML unavailable: {exc}"
        self._nvml = nvml
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.has_counter = True
        except Exception:  # noqa: BLE001 - pre-Volta GPUs
            self.has_counter = False
        return True, ""

    def label(self) -> str:
        return f"nvml gpu{self.index} ({'energy counter' if self.has_counter else 'power samples'})"

    def read_watts(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def read_energy_j(self) -> float | None:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0 if self.has_counter else None


class JtopMeter(PowerMeter):
    """Jetson rails through jetson-stats (``pip install 'qtbench[jetson]'``); needs the jtop service running.

    Jetson rails overlap (VDD_IN is the module input; CPU/GPU/SOC rails are parts of it), so this meter uses the
    ``tot`` entry (VDD_IN on Orin) and says so, never a sum of rails.
    """

    name = "jtop"

    def __init__(self, module: Any = None, root: str = "/") -> None:
        self._mod = module
        self._root = Path(root)  # where /etc/nv_tegra_release and the device tree are read (tests: a fake root)
        self.jetson = None

    def is_jetson(self) -> bool:
        """An NVIDIA Jetson module: L4T's release file, or a device-tree model that names one."""
        if (self._root / "etc" / "nv_tegra_release").is_file():
            return True
        try:
            model = (self._root / "proc" / "device-tree" / "model").read_text(errors="replace")
        except OSError:
            return False
        return "jetson" in model.lower() or "nvidia" in model.lower()

    def probe(self) -> tuple[bool, str]:
        if not self.is_jetson():  # one reason, not a fix for a package or a service this machine cannot use
            return False, "this is not a Jetson (no /etc/nv_tegra_release): jtop reads Jetson power rails only"
        try:
            mod = self._mod or __import__("jtop")
        except ImportError:
            return False, "jetson-stats not installed (pip install 'qtbench[jetson]'; Jetson boards only)"
        try:
            self.jetson = mod.jtop()
            self.jetson.start()
        except Exception as exc:  # noqa: BLE001 - JtopException when the service is down
            return False, f"jtop service not reachable ({exc}): sudo systemctl restart jtop.service"
        return True, ""

    def label(self) -> str:
        return "jtop (tot = module input rail; rails overlap, not summed)"

    def read_watts(self) -> float:
        return float(self.jetson.power["tot"]["power"]) / 1000.0  # mW


class ExternalLogMeter(PowerMeter):
    """A bench meter's CSV log (``timestamp,watts`` with Unix-epoch seconds), aligned to the loop by wall clock.

    The log is read after the window; samples inside [start, end] (wall clock) are integrated.
    """

    name = "external"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def probe(self) -> tuple[bool, str]:
        if not self.path.is_file():
            return False, f"meter log {self.path} does not exist"
        return True, ""

    def label(self) -> str:
        return f"external log {self.path.name}"

    def window(self, start_epoch: float, end_epoch: float) -> PowerTrace:
        t, w = [], []
        with self.path.open() as f:
            for row in csv.reader(f):
                if not row or row[0].startswith("#") or row[0].strip().lower() == "timestamp":
                    continue
                ts, watts = float(row[0]), float(row[1])
                if start_epoch <= ts <= end_epoch:
                    t.append(ts)
                    w.append(watts)
        return PowerTrace(np.array(t), np.array(w))


class EstimatedMeter(PowerMeter):
    """Estimate: this process's CPU time × ``watts_per_core``. Labelled *estimated*; measures nothing.

    Energy of a timed loop = watts_per_core × the loop's own process CPU seconds (``devices.probe`` takes them
    from the harness's clock around the loop); the sampled power(t) = watts_per_core × CPU seconds per interval
    gives the peaks. Idle is unknown (0), so total and above-idle energy are the same number.
    """

    name = "estimate"
    kind = "estimated"

    def __init__(self, watts_per_core: float = DEFAULT_WATTS_PER_CORE) -> None:
        self.watts_per_core = watts_per_core
        self._last: tuple[float, float] | None = None

    def probe(self) -> tuple[bool, str]:
        return True, ""

    def label(self) -> str:
        return f"estimated: timed loop's process CPU time × {self.watts_per_core:g} W/core"

    def _cpu(self) -> float:
        t = time.process_time()
        return t

    def read_watts(self) -> float:
        now, cpu = time.monotonic(), self._cpu()
        watts = float("nan")
        if self._last is not None and now > self._last[0]:
            watts = self.watts_per_core * (cpu - self._last[1]) / (now - self._last[0])
        self._last = (now, cpu)
        return watts

    def read_energy_j(self) -> float:
        return self.watts_per_core * self._cpu()


# ---------------------------------------------------------------------------------------------------------
# Selection and sampling
# ---------------------------------------------------------------------------------------------------------
METER_ORDER = ("jtop", "hwmon", "rapl", "nvml", "external", "estimate")
#: ``auto`` per execution device: a cell is metered by what sees the silicon it runs on. A CPU cell never gets
#: the GPU's NVML figure; a GPU (CUDA/TensorRT) cell never gets the CPU package or a CPU-time estimate; an NPU or
#: delegate cell gets board rails or a bench meter only. Board input rails (jtop, hwmon) include everything.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("jtop", "hwmon", "rapl", "external", "estimate"),
    "gpu": ("jtop", "nvml", "hwmon", "external"),
    "other": ("jtop", "hwmon", "external"),
}


def auto_order(execution_device: str | None) -> tuple[str, ...]:
    """The meters ``auto`` tries, best first, for a cell running on ``execution_device`` (cpu, gpu, npu …)."""
    dev = (execution_device or "cpu").lower()
    return AUTO_ORDER.get(dev, AUTO_ORDER["gpu" if dev == "cuda" else "other"])


def make_meter(
    name: str,
    root: str | Path = "/",
    log: str | None = None,
    watts_per_core: float | None = None,
    rail: str | None = None,
) -> PowerMeter:
    if name == "rapl":
        return RaplMeter(root, rail)
    if name == "hwmon":
        return HwmonMeter(root, rail)
    if name == "nvml":
        return NvmlMeter()
    if name == "jtop":
        return JtopMeter()
    if name == "external":
        if not log:
            raise ValueError("meter 'external' needs a log path (device.meter_log)")
        return ExternalLogMeter(log)
    if name == "estimate":
        return EstimatedMeter(watts_per_core or DEFAULT_WATTS_PER_CORE)
    raise ValueError(f"unknown meter {name!r}; choose auto, none or one of {', '.join(METER_ORDER)}")


def survey(root: str | Path = "/", log: str | None = None, rail: str | None = None) -> list[tuple[str, bool, str]]:
    """Every meter kind: (name, available, reason or label)."""
    out = []
    for name in METER_ORDER:
        if name == "external" and not log:
            out.append((name, False, "no meter log configured (device.meter_log: CSV of timestamp,watts)"))
            continue
        m = make_meter(name, root, log, rail=rail)
        ok, why = m.probe()
        out.append((name, ok, m.label() if ok else why))
    return out


def choose_meter(
    preference: str = "auto",
    root: str | Path = "/",
    log: str | None = None,
    watts_per_core: float | None = None,
    rail: str | None = None,
    execution_device: str | None = "cpu",
) -> tuple[PowerMeter | None, list[str]]:
    """The best available meter for ``preference`` and the cell's execution device (auto = first available in
    :func:`auto_order`), and why the better ones lost. An explicit meter is used whatever the device."""
    if preference == "none":
        return None, ["power measurement disabled (device.meter: none)"]
    names = auto_order(execution_device) if preference == "auto" else (preference,)
    why = []
    for name in names:
        if name == "external" and not log:
            continue
        m = make_meter(name, root, log, watts_per_core, rail if name in ("hwmon", "rapl") else None)
        ok, reason = m.probe()
        if ok:
            return m, why
        why.append(f"{name}: {reason}")
    if preference == "auto":
        left_out = [n for n in METER_ORDER if n not in names]
        why.append(f"not used for a {execution_device or 'cpu'} cell: {', '.join(left_out)}")
    return None, why


@dataclass
class PowerSession:
    """Samples ``meter`` in a thread between ``start()`` and ``stop()``; ``idle()`` measures a baseline first."""

    meter: PowerMeter
    period_s: float = DEFAULT_PERIOD_MS / 1000
    _samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _e0: float | None = None
    _epoch0: float = 0.0
    _t0: float = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                w = self.meter.read_watts()
            except (OSError, ValueError):
                w = float("nan")
            self._samples.append((time.monotonic(), w))
            self._stop.wait(self.period_s)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._samples = []
        self._stop.clear()
        self._epoch0 = time.time()
        self._e0 = self.meter.read_energy_j() if not isinstance(self.meter, ExternalLogMeter) else None
        if not isinstance(self.meter, ExternalLogMeter):
            self.meter.read_watts()  # prime rate-based meters
            self._thread = threading.Thread(target=self._run, name="qtbench-power", daemon=True)
            self._thread.start()

    def stop(self) -> PowerTrace:
        if isinstance(self.meter, ExternalLogMeter):
            return self.meter.window(self._epoch0, time.time())
        window = time.monotonic() - self._t0
        self._stop.set()
        if self._thread:
            self._thread.join()
        e1 = self.meter.read_energy_j()
        arr = np.array([s for s in self._samples if not np.isnan(s[1])]) if self._samples else np.empty((0, 2))
        t = arr[:, 0] if len(arr) else np.array([])
        w = arr[:, 1] if len(arr) else np.array([])
        energy = None if self._e0 is None or e1 is None else e1 - self._e0
        return PowerTrace(t, w, energy, window)

    def idle(self, seconds: float) -> PowerTrace:
        self.start()
        time.sleep(seconds)
        return self.stop()


def energy_fields(
    traces: list[PowerTrace], idle: PowerTrace | None, iterations: list[int], meter: PowerMeter, period_s: float
) -> dict[str, Any]:
    """Row columns from the timed-loop traces (one per repeat) and the idle baseline."""
    nan = float("nan")
    energies = [tr.energy() for tr in traces]
    durations = [tr.duration_s for tr in traces]
    per_inf = [e / n for e, n in zip(energies, iterations, strict=True) if n]
    idle_w = nan
    if idle is not None and meter.kind == "measured" and idle.duration_s > 0:
        idle_w = idle.energy() / idle.duration_s
    # a peak needs a few samples inside the window; fewer means the window was too short to say
    peaks = [float(np.nanmax(tr.watts)) if len(tr.watts) >= 3 else nan for tr in traces]
    means = [e / d if d > 0 else nan for e, d in zip(energies, durations, strict=True)]
    above = nan
    if not np.isnan(idle_w):
        above = float(np.mean([(e - idle_w * d) / n for e, d, n in zip(energies, durations, iterations, strict=True)]))
    elif meter.kind == "estimated" and per_inf:
        above = float(np.mean(per_inf))  # the CPU-time model has no idle term: all of it is above idle
    upd = _nanstat(np.nanmedian, [tr.update_period_s() for tr in traces])
    window = float(np.mean([tr.duration_s for tr in traces])) if traces else nan
    return {
        "energy_mj_per_inf": 1000 * float(np.mean(per_inf)) if per_inf else nan,
        "energy_mj_per_inf_above_idle": 1000 * above if not np.isnan(above) else nan,
        "power_w_mean": float(np.nanmean(means)) if means else nan,
        "power_w_peak": _nanstat(np.nanmean, peaks),
        "power_w_p5": _nanstat(lambda v: np.nanpercentile(v, 5), peaks),
        "power_w_p95": _nanstat(lambda v: np.nanpercentile(v, 95), peaks),
        "power_w_idle": idle_w,
        "energy_source": meter.label(),
        "energy_numbers": meter.kind,
        "power_sample_period_ms": 1000 * period_s,
        "power_update_period_ms": 1000 * upd if np.isfinite(upd) else nan,
        # too few sensor updates (or, before any update is seen, too few samples) inside the window
        "energy_window_short": bool(window < MIN_UPDATES * (upd if np.isfinite(upd) else period_s)),
    }


def _nanstat(fn: Any, values: list[float]) -> float:
    return float(fn(values)) if values and not np.all(np.isnan(values)) else float("nan")

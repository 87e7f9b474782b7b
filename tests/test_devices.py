"""Power meters against fixture trees laid out like the real sysfs files, energy arithmetic, thermal, cost."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from devices.catalog import cost_per_million, load_catalog, match_board
from devices.power import (
    EstimatedMeter,
    ExternalLogMeter,
    HwmonMeter,
    JtopMeter,
    NvmlMeter,
    PowerSession,
    PowerTrace,
    RaplMeter,
    choose_meter,
    energy_fields,
    survey,
)
from devices.thermal import snapshot, throttled


def _write(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_rapl_counter_sums_packages_and_handles_wrap(tmp_path: Path):
    z0, z1 = tmp_path / "sys/class/powercap/intel-rapl:0", tmp_path / "sys/class/powercap/intel-rapl:1"
    for z, name in ((z0, "package-0"), (z1, "package-1")):
        _write(z / "name", name + "\n")
        _write(z / "max_energy_range_uj", "2000000\n")
    _write(tmp_path / "sys/class/powercap/intel-rapl:0:0/energy_uj", "5")  # a sub-zone (core): not summed
    _write(z0 / "energy_uj", "1900000\n")
    _write(z1 / "energy_uj", "100\n")
    m = RaplMeter(tmp_path)
    assert m.probe() == (True, "")
    assert m.label() == "rapl (package-0, package-1)"
    e0 = m.read_energy_j()
    _write(z0 / "energy_uj", "100000\n")  # wrapped: +200,000 µJ
    _write(z1 / "energy_uj", "300100\n")  # +300,000 µJ
    assert m.read_energy_j() - e0 == pytest.approx(0.5)


def test_rapl_absent_says_why(tmp_path: Path):
    ok, why = RaplMeter(tmp_path).probe()
    assert not ok and "no powercap driver" in why


def test_hwmon_power_and_voltage_current_channels(tmp_path: Path):
    ina = tmp_path / "sys/class/hwmon/hwmon0"
    _write(ina / "name", "ina3221\n")
    _write(ina / "in1_label", "VDD_IN\n")
    _write(ina / "in1_input", "5000\n")  # mV
    _write(ina / "curr1_input", "1200\n")  # mA
    _write(ina / "in2_input", "3300\n")  # no current channel: ignored
    other = tmp_path / "sys/class/hwmon/hwmon1"
    _write(other / "name", "ina226\n")
    _write(other / "power1_input", "2500000\n")  # µW
    m = HwmonMeter(tmp_path)
    assert m.probe()[0]
    assert m.read_watts() == pytest.approx(5.0 * 1.2 + 2.5)
    only = HwmonMeter(tmp_path, rails=["VDD_IN"])
    assert only.probe()[0] and only.read_watts() == pytest.approx(6.0) and "VDD_IN" in only.label()
    assert not HwmonMeter(tmp_path, rails=["VDD_GPU"]).probe()[0]


def test_external_log_window_and_trapezoid(tmp_path: Path):
    log = tmp_path / "meter.csv"
    rows = ["timestamp,watts"] + [f"{1000 + i * 0.1:.1f},{2.0 if i < 10 else 4.0}" for i in range(30)]
    log.write_text("\n".join(rows) + "\n")
    m = ExternalLogMeter(log)
    tr = m.window(1000.0, 1000.9)
    assert len(tr.t) == 10 and tr.energy() == pytest.approx(2.0 * 0.9)
    assert not ExternalLogMeter(tmp_path / "nope.csv").probe()[0]


def test_energy_fields_total_above_idle_and_whiskers():
    idle = PowerTrace(np.linspace(0, 1, 11), np.full(11, 1.0))
    loops = [PowerTrace(np.linspace(0, 2, 21), np.full(21, w), window_s=2.0) for w in (3.0, 3.0, 5.0)]
    from devices.power import HwmonMeter as M

    f = energy_fields(loops, idle, [100, 100, 100], M(), 0.1)
    assert f["energy_mj_per_inf"] == pytest.approx(1000 * np.mean([6, 6, 10]) / 100)
    assert f["energy_mj_per_inf_above_idle"] == pytest.approx(1000 * np.mean([4, 4, 8]) / 100)
    assert f["power_w_idle"] == pytest.approx(1.0) and f["power_w_peak"] == pytest.approx(11 / 3)
    assert f["power_w_p5"] == pytest.approx(3.0) and f["power_w_p95"] == pytest.approx(4.8)
    assert f["energy_numbers"] == "measured"


def test_short_window_is_flagged_against_the_sensor_update_period():
    t = np.linspace(0, 1, 101)
    w = np.repeat([1.0, 2.0, 3.0], [34, 33, 34])  # the sensor updated twice in 1 s (~0.33 s period)
    tr = PowerTrace(t, w)
    assert tr.update_period_s() == pytest.approx(0.33, abs=0.02)
    f = energy_fields([tr], None, [10], HwmonMeter("/nonexistent"), 0.01)
    assert f["energy_window_short"] is True and f["power_update_period_ms"] == pytest.approx(330, abs=20)


def test_estimate_is_labelled_and_tracks_cpu_time():
    m = EstimatedMeter(watts_per_core=10.0)
    s = PowerSession(m, 0.01)
    s.start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.2:
        pass
    tr = s.stop()
    assert m.kind == "estimated" and m.label().startswith("estimated")
    assert tr.energy() == pytest.approx(2.0, rel=0.3)  # 10 W × ~0.2 CPU-s
    f = energy_fields([tr], None, [100], m, 0.01)
    assert f["power_w_idle"] != f["power_w_idle"]  # NaN: the model knows no idle
    assert f["energy_mj_per_inf_above_idle"] == f["energy_mj_per_inf"]


class _FakeNvml:
    """Stands in for pynvml's module API: returns recorded values (mJ counter, mW power)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.energy_mj = fail, 10_000

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self.energy_mj += 500
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, h):
        return 42_500


def test_nvml_counter_and_absence():
    m = NvmlMeter(module=_FakeNvml())
    assert m.probe()[0] and m.has_counter and m.read_watts() == 42.5
    assert m.read_energy_j() - m.read_energy_j() == pytest.approx(-0.5)
    ok, why = NvmlMeter(module=_FakeNvml(fail=True)).probe()
    assert not ok and "Shared Library" in why


def test_jtop_missing_service_is_explained():
    class NoService:
        def jtop(self):
            raise ConnectionError("jtop.service is not active")

    ok, why = JtopMeter(module=NoService()).probe()
    assert not ok and "systemctl restart jtop.service" in why


def test_auto_choice_is_the_first_available_meter_and_never_silent():
    rows = survey()
    meter, why = choose_meter("auto")
    first = next(name for name, ok, _ in rows if ok)
    assert meter is not None and meter.name == first
    skipped = [name for name, ok, _ in rows[: [n for n, _, _ in rows].index(first)] if name != "external"]
    assert [w.split(":")[0] for w in why] == skipped  # every better meter that lost says why
    assert choose_meter("none")[0] is None
    with pytest.raises(ValueError, match="unknown meter"):
        choose_meter("wattmeter9000")


def test_thermal_snapshot_and_throttle_detection(tmp_path: Path):
    z = tmp_path / "sys/class/thermal/thermal_zone0"
    _write(z / "type", "cpu-thermal\n")
    _write(z / "temp", "55000\n")
    _write(z / "trip_point_0_type", "critical\n")
    _write(z / "trip_point_0_temp", "95000\n")
    for c in (0, 1):
        _write(tmp_path / f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq", "2000000\n")
        _write(tmp_path / f"sys/devices/system/cpu/cpu{c}/thermal_throttle/core_throttle_count", "3\n")
    before = snapshot(tmp_path)
    assert before["temp_c_max"] == 55.0 and before["cpu_mhz_mean"] == 2000.0 and before["throttle_count"] == 6
    assert throttled(before, snapshot(tmp_path)) == (False, "")
    _write(tmp_path / "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "1200000\n")
    hot, why = throttled(before, snapshot(tmp_path))
    assert hot and "2000 → 1600 MHz" in why
    _write(tmp_path / "sys/devices/system/cpu/cpu1/thermal_throttle/core_throttle_count", "4\n")
    assert "counters rose by 1" in throttled(before, snapshot(tmp_path))[1]
    _write(z / "temp", "96000\n")
    assert snapshot(tmp_path)["at_critical"]


def test_cost_formula_and_catalog():
    # 1 J/inference at 0.15 USD/kWh, 100 USD over 1 year at 10 FPS
    expected = 1e6 * (1 / 3.6e6 * 0.15 + 100 / (365.25 * 86400 * 10))
    assert cost_per_million(1.0, 10.0, 100.0, 0.15, 1.0, 1.0) == pytest.approx(expected)
    assert cost_per_million(1.0, 10.0, None) != cost_per_million(1.0, 10.0, None)  # NaN without a price
    cat = load_catalog()
    assert all({"int8_tops", "tdp_w", "price_usd", "price_source", "price_date"} <= set(b) for b in cat.values())
    assert match_board("NVIDIA Jetson Orin Nano Developer Kit")["id"] == "jetson-orin-nano-super-devkit"
    assert match_board("QEMU Virtual Machine") is None

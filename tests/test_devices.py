"""Power meters against fixture trees laid out like the real sysfs files, energy arithmetic, thermal, cost."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qtbench.devices.catalog import cost_per_million, load_catalog, match_board
from qtbench.devices.power import (
    EstimatedMeter,
    ExternalLogMeter,
    HwmonMeter,
    JtopMeter,
    NvmlMeter,
    PowerSession,
    PowerTrace,
    RaplMeter,
    auto_order,
    choose_meter,
    energy_fields,
    survey,
)
from qtbench.devices.thermal import snapshot, throttled


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
    assert m.label() == "rapl package-0 + package-1 (CPU package; psys not counted)"
    e0 = m.read_energy_j()
    _write(z0 / "energy_uj", "100000\n")  # wrapped: +200,000 µJ
    _write(z1 / "energy_uj", "300100\n")  # +300,000 µJ
    assert m.read_energy_j() - e0 == pytest.approx(0.5)


def _laptop_rapl(root: Path) -> None:
    """A laptop's powercap tree: package-0 (with core/dram sub-zones) and psys, which already contains the package."""
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "core", "intel-rapl:0:1": "dram", "intel-rapl:1": "psys"}
    for z, name in zones.items():
        _write(root / f"sys/class/powercap/{z}/name", name + "\n")
        _write(root / f"sys/class/powercap/{z}/max_energy_range_uj", "262143328850\n")
        _write(root / f"sys/class/powercap/{z}/energy_uj", "1000000\n")


def _advance(root: Path, zone: str, uj: int) -> None:
    f = root / f"sys/class/powercap/{zone}/energy_uj"
    f.write_text(str(int(f.read_text()) + uj))


def test_rapl_default_is_the_package_never_psys_on_top(tmp_path: Path):
    _laptop_rapl(tmp_path)
    pkg = RaplMeter(tmp_path)
    assert pkg.probe()[0] and pkg.label() == "rapl package-0 (CPU package; psys not counted)"
    psys = RaplMeter(tmp_path, rail="psys")
    assert psys.probe()[0] and psys.label() == "rapl psys (device.rail)"
    e_pkg, e_psys = pkg.read_energy_j(), psys.read_energy_j()
    for zone, uj in (("intel-rapl:0", 3_000_000), ("intel-rapl:1", 5_000_000), ("intel-rapl:0:1", 700_000)):
        _advance(tmp_path, zone, uj)
    assert pkg.read_energy_j() - e_pkg == pytest.approx(3.0)  # summing every zone would say 8.7 J
    assert psys.read_energy_j() - e_psys == pytest.approx(5.0)
    dram = RaplMeter(tmp_path, rail="dram")
    assert dram.probe()[0] and "dram" in dram.label()
    ok, why = RaplMeter(tmp_path, rail="gpu").probe()
    assert not ok and "zones here: core, dram, package-0, psys" in why


def test_rapl_absent_says_why(tmp_path: Path):
    ok, why = RaplMeter(tmp_path).probe()
    assert not ok and "no powercap driver" in why


def _ina3221(root: Path, hw: str, rails: dict[str, tuple[int, int]]) -> None:
    """An INA3221 hwmon device as on Jetson: in<N>_label, in<N>_input (mV), curr<N>_input (mA)."""
    dev = root / f"sys/class/hwmon/{hw}"
    _write(dev / "name", "ina3221\n")
    for i, (label, (mv, ma)) in enumerate(rails.items(), start=1):
        _write(dev / f"in{i}_label", label + "\n")
        _write(dev / f"in{i}_input", f"{mv}\n")
        _write(dev / f"curr{i}_input", f"{ma}\n")
    _write(dev / "in7_input", "3300\n")  # a voltage without a current channel: ignored


def test_hwmon_jetson_reads_the_input_rail_not_the_sum(tmp_path: Path):
    # Orin Nano: VDD_IN 5 V × 1.2 A = 6 W is the module input; the CPU/GPU/CV and SoC rails are parts of it
    _ina3221(tmp_path, "hwmon1", {"VDD_IN": (5000, 1200), "VDD_CPU_GPU_CV": (5000, 400), "VDD_SOC": (5000, 300)})
    m = HwmonMeter(tmp_path)
    assert m.probe()[0]
    assert m.read_watts() == pytest.approx(6.0)  # the old sum of every channel said 9.5 W
    assert m.label() == "hwmon VDD_IN (board input)"
    gpu = HwmonMeter(tmp_path, rail="VDD_CPU_GPU_CV")
    assert gpu.probe()[0] and gpu.read_watts() == pytest.approx(2.0) and gpu.label().endswith("(device.rail)")
    ok, why = HwmonMeter(tmp_path, rail="VDD_GPU").probe()
    assert not ok and "rails here: VDD_IN, VDD_CPU_GPU_CV, VDD_SOC" in why


def test_hwmon_nano_and_boards_without_an_input_rail(tmp_path: Path):
    nano = tmp_path / "nano"
    _ina3221(nano, "hwmon0", {"POM_5V_IN": (5000, 1000), "POM_5V_GPU": (5000, 100), "POM_5V_CPU": (5000, 200)})
    m = HwmonMeter(nano)
    assert m.probe()[0] and m.read_watts() == pytest.approx(5.0) and "POM_5V_IN" in m.label()
    agx = tmp_path / "agx"  # AGX Orin lists disjoint rails and no input: nothing is guessed
    _ina3221(agx, "hwmon0", {"VDD_GPU_SOC": (5000, 1000), "VDD_CPU_CV": (5000, 600), "VIN_SYS_5V0": (5000, 400)})
    ok, why = HwmonMeter(agx).probe()
    assert not ok and "set device.rail" in why and "'sum'" in why
    total = HwmonMeter(agx, rail="sum")
    assert total.probe()[0] and total.read_watts() == pytest.approx(10.0) and "device.rail: sum" in total.label()


def test_hwmon_power_channels_and_foreign_chips(tmp_path: Path):
    ina = tmp_path / "sys/class/hwmon/hwmon0"
    _write(ina / "name", "ina226\n")
    _write(ina / "power1_input", "2500000\n")  # µW
    m = HwmonMeter(tmp_path)
    assert m.probe()[0] and m.read_watts() == pytest.approx(2.5) and "the only rail" in m.label()
    gpu = tmp_path / "sys/class/hwmon/hwmon1"  # a GPU's own hwmon: never picked for the board unasked
    _write(gpu / "name", "amdgpu\n")
    _write(gpu / "power1_label", "PPT\n")
    _write(gpu / "power1_input", "30000000\n")
    assert not HwmonMeter(tmp_path).probe()[0]
    acpi = tmp_path / "sys/class/hwmon/hwmon2"  # the ACPI power meter measures the system input
    _write(acpi / "name", "power_meter\n")
    _write(acpi / "power1_input", "95000000\n")
    m = HwmonMeter(tmp_path)
    assert m.probe()[0] and m.read_watts() == pytest.approx(95.0)


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
    from qtbench.devices.power import HwmonMeter as M

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


def test_jtop_missing_service_is_explained(tmp_path: Path):
    class NoService:
        def jtop(self):
            raise ConnectionError("jtop.service is not active")

    jetson = tmp_path / "jetson"
    (jetson / "etc").mkdir(parents=True)
    (jetson / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3")
    ok, why = JtopMeter(module=NoService(), root=str(jetson)).probe()
    assert not ok and "systemctl restart jtop.service" in why


def test_jtop_on_a_machine_that_is_not_a_jetson_says_so_once(tmp_path: Path):
    """jetson-stats installed on a desktop: one reason (not a Jetson), not a package or service fix."""

    class Installed:
        def jtop(self):
            raise AssertionError("jtop must not be started off a Jetson")

    pc = tmp_path / "pc"
    (pc / "proc" / "device-tree").mkdir(parents=True)
    (pc / "proc" / "device-tree" / "model").write_text("Raspberry Pi 5 Model B Rev 1.0")
    ok, why = JtopMeter(module=Installed(), root=str(pc)).probe()
    assert not ok and why.startswith("this is not a Jetson") and "systemctl" not in why and "pip" not in why
    ok, why = JtopMeter(module=Installed(), root=str(tmp_path / "empty")).probe()
    assert not ok and why.startswith("this is not a Jetson")


def test_auto_choice_is_the_first_available_meter_and_never_silent():
    order = auto_order("cpu")
    available = {name: ok for name, ok, _ in survey()}
    meter, why = choose_meter("auto")
    first = next(name for name in order if available[name])
    assert meter is not None and meter.name == first
    skipped = [name for name in order[: order.index(first)] if name != "external"]
    assert [w.split(":")[0] for w in why] == skipped  # every better meter that lost says why
    assert "nvml" not in order  # a CPU cell is never metered by the GPU's counter
    assert choose_meter("none")[0] is None
    with pytest.raises(ValueError, match="unknown meter"):
        choose_meter("wattmeter9000")


def test_meter_follows_the_cells_execution_device(tmp_path: Path, monkeypatch):
    _laptop_rapl(tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    assert choose_meter("auto", tmp_path, execution_device="cpu")[0].name == "rapl"
    assert choose_meter("auto", tmp_path, execution_device="gpu")[0].name == "nvml"  # CUDA/TensorRT cell
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(fail=True))
    meter, why = choose_meter("auto", tmp_path, execution_device="gpu")
    assert meter is None  # neither the CPU package nor a CPU-time estimate stands in for the GPU
    assert why[-1] == "not used for a gpu cell: rapl, estimate" and any(w.startswith("nvml:") for w in why)
    assert choose_meter("auto", tmp_path, execution_device="npu")[0] is None
    assert choose_meter("rapl", tmp_path, execution_device="gpu")[0].name == "rapl"  # asked for explicitly
    jetson = tmp_path / "jetson"  # integrated GPU: the board input rail covers it
    _ina3221(jetson, "hwmon0", {"VDD_IN": (5000, 1200), "VDD_CPU_GPU_CV": (5000, 400)})
    meter, _ = choose_meter("auto", jetson, execution_device="gpu")
    assert meter.name == "hwmon" and "VDD_IN" in meter.label()
    assert choose_meter("auto", jetson, rail="VDD_CPU_GPU_CV")[0].read_watts() == pytest.approx(2.0)


def test_probe_estimates_from_the_loops_own_cpu_time(tmp_path: Path):
    """The estimate is W/core × the CPU seconds the harness measured around the loop, not the sampler window."""
    from qtbench.devices.probe import LoopProbe
    from qtbench.harness.core.config import DeviceSettings

    probe = LoopProbe(DeviceSettings(meter="estimate", idle_s=0), "cpu", root=tmp_path)
    before = probe.before()
    assert np.isnan(before["temp_c_before"])  # no thermal zones in the empty tree
    probe.start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.1:  # the window burns ~0.1 CPU-s; the "loop" inside it used 0.02
        pass
    probe.stop()
    probe.loop_done(0.02, 0.05)
    out = probe.after([100], 2000.0)
    assert out["energy_mj_per_inf"] == pytest.approx(1000 * 10.0 * 0.02 / 100)
    assert out["power_w_mean"] == pytest.approx(10.0 * 0.02 / 0.05)
    assert out["energy_numbers"] == "estimated" and "timed loop's process CPU time" in out["energy_source"]
    gpu = LoopProbe(DeviceSettings(idle_s=0), "gpu", root=tmp_path)  # no GPU meter here: said, not guessed
    gpu.before()
    assert gpu.after([10], 100.0)["energy_source"].startswith("unavailable: ")


def test_sweep_energy_is_the_loop_cpu_estimate_and_is_marked(tmp_path: Path):
    from qtbench.harness.cli.common import results_table
    from qtbench.harness.run.sweep import run_sweep

    from models import tiny_sweep

    cfg = tiny_sweep(tmp_path, specs=["fp32"], measure={"warmup": 2, "iterations": 50})
    cfg["device"] = {"meter": "estimate", "idle_s": 0}
    cfg["run"]["isolate"] = False
    row = run_sweep(cfg).iloc[0]
    assert row["energy_numbers"] == "estimated"
    assert row["energy_mj_per_inf"] == pytest.approx(1000 * 10.0 * row["process_cpu_s"] / row["iterations"])
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(results_table(run_sweep(cfg)))
    assert f"~{row['energy_mj_per_inf']:.3f} est" in console.export_text()


def test_devices_cli_says_no_sensor_instead_of_nan(capsys):
    from qtbench.devices.thermal import describe
    from qtbench.harness.cli import main

    nan = float("nan")
    text = describe({"temp_c_max": nan, "cpu_mhz_mean": nan, "throttle_count": 0, "sensors": 0})
    assert "nan" not in text and "no temperature sensor" in text and "CPU clock: no sensor" in text
    assert describe({"temp_c_max": 51.0, "cpu_mhz_mean": 2400.0, "throttle_count": 2, "sensors": 3}) == (
        "3 zone(s), max 51.0 °C; mean CPU clock 2400 MHz; throttle events so far 2"
    )
    assert main(["devices"]) == 0
    assert "nan" not in capsys.readouterr().out.lower()
    assert main(["devices", "--json"]) == 0
    assert "NaN" not in capsys.readouterr().out


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

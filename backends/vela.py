"""Arm Ethos-U adapter (``vela``, extra ``qtbench[vela]``): the Vela compiler's performance model + TFLite numerics.

Vela compiles a full-integer INT8 ``.tflite`` for an Ethos-U55/U65/U85 configuration and reports, from its own
performance model, cycles, inferences/s, SRAM/flash use and which operators stay on the Cortex-M CPU. No Ethos-U
is attached here, so:

* ``est_latency_ms`` is Vela's ``inference_time`` (its model at the configuration's clock and memory system);
* accuracy and fidelity come from running the *same* int8 ``.tflite`` in the TFLite interpreter's built-in
  kernels (Ethos-U executes TFLite int8 semantics; Arm's claim, not checked bit-for-bit here);
* rows say ``numbers: estimated``; coverage is Vela's NPU/CPU operator split, fallback reasons are Vela's.

The ``.tflite`` comes from the tflite adapter's lookup (``<stem>.full_integer_quant[_pt].tflite`` beside the model,
or converted with ``converter_python``), with its rules: a pre-converted file runs for its one canonical spec only
(other calibration settings are skipped) and its sha256 is recorded. A Vela error is a ``failed`` cell with the
compiler's message (full output in the workdir's ``vela.log``).
"""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from qtbench.backends.base import Availability, Backend, Compiled, ModelInput
from qtbench.backends.tflite import TfliteBackend
from qtbench.harness.core.errors import CompileError, ConfigError
from qtbench.harness.core.spec import QuantSpec

ACCELERATORS = (
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
)
_CPU_OPS = re.compile(r"CPU operators = (\d+)")
_NPU_OPS = re.compile(r"NPU operators = (\d+)")
_UNSUPPORTED = re.compile(r"Warning \(supported operators\) operator: (\w+), ofm: .*?\nReason: (.*?)\n", re.S)


def parse_vela(stdout: str, summary_csv: str) -> dict[str, Any]:
    """Vela's console output and summary CSV → the facts a row needs."""
    rows = list(csv.DictReader(summary_csv.splitlines()))
    if not rows:
        raise ValueError("Vela's summary CSV is empty")
    r = rows[0]
    facts: dict[str, Any] = {
        "inference_time_s": float(r["inference_time"]),
        "inferences_per_second": float(r["inferences_per_second"]),
        "cycles_total": float(r["cycles_total"]),
        "cycles_npu": float(r.get("cycles_npu") or "nan"),
        "core_clock_hz": float(r["core_clock"]),
        "sram_kib": float(r["sram_memory_used"]),
        "off_chip_flash_kib": float(r.get("off_chip_flash_memory_used") or 0),
        "dram_kib": float(r.get("dram_memory_used") or 0),
        "nn_macs": float(r.get("nn_macs") or "nan"),
        "accelerator_configuration": r.get("accelerator_configuration", ""),
        "system_config": r.get("system_config", ""),
        "memory_mode": r.get("memory_mode", ""),
    }
    cpu, npu = _CPU_OPS.search(stdout), _NPU_OPS.search(stdout)
    facts["cpu_ops"] = int(cpu.group(1)) if cpu else None
    facts["npu_ops"] = int(npu.group(1)) if npu else None
    facts["fallback"] = {}
    for op, reason in _UNSUPPORTED.findall(stdout):
        facts["fallback"].setdefault(op, reason.strip())
    return facts


class VelaBackend(Backend):
    """Ethos-U: Vela's estimate of the NPU, TFLite int8 kernels for the numbers it would compute."""

    slug = "vela"
    output_only = "Vela compiles the graph into an Ethos-U command stream; intermediates stay in NPU SRAM"
    simulation_twin = ("simnpu", {"profile": "ethos-u"})
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "Arm Ethos-U via the Vela compiler (performance model) + TFLite int8 numerics"
    executable_options: ClassVar[tuple[str, ...]] = ("converter_python",)
    option_defaults: ClassVar[dict[str, Any]] = {
        "accelerator_config": "ethos-u55-256",
        "system_config": None,  # a section of the Vela .ini; None = Vela's default for the accelerator
        "memory_mode": None,
        "config": None,  # a Vela .ini file (your SoC's memory system); None = Vela's bundled Arm/vela.ini
        "optimise": "Performance",
        "threads": 1,  # TFLite interpreter threads for the accuracy run
        "converter_python": None,  # passed to the tflite adapter when no .tflite sits beside the model
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options["accelerator_config"] not in ACCELERATORS:
            raise ConfigError(f"backends.vela.options.accelerator_config: choose one of {', '.join(ACCELERATORS)}")
        if self.options["optimise"] not in ("Performance", "Size"):
            raise ConfigError("backends.vela.options.optimise: Performance or Size")

    def availability(self) -> Availability:
        try:
            from ethosu.vela import __version__ as vela_version  # type: ignore[attr-defined]
        except ImportError:
            try:
                from importlib.metadata import version

                import ethosu.vela  # noqa: F401

                vela_version = version("ethos-u-vela")
            except ImportError as exc:
                return Availability(False, f"ethos-u-vela is not importable ({exc}): pip install 'qtbench[vela]'")

        tfl = TfliteBackend({"threads": self.options["threads"]}).availability()
        if not tfl.available:
            return Availability(False, f"vela needs a TFLite runtime for accuracy: {tfl.reason}")
        return Availability(True, "", {"ethos-u-vela": vela_version, **tfl.versions}, ("estimated",))

    def artifact_inputs(self, model_path: Path, spec: QuantSpec) -> dict[str, str]:

        return TfliteBackend().artifact_inputs(model_path, spec)

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.precision != "int8" or not spec.is_static:
            return "Ethos-U runs full-integer int8 (or int16x8) graphs only; use an int8 static spec"

        return TfliteBackend().supports(spec)

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:

        t0 = time.perf_counter()
        tfl = TfliteBackend(
            {"threads": self.options["threads"], "xnnpack": False, "converter_python": self.options["converter_python"]}
        )
        compiled = tfl.compile(model, spec, calib, workdir)  # the int8 .tflite, run by TFLite's builtin kernels
        tflite_path = compiled.info.artifact_path
        facts = self._vela(tflite_path, workdir)
        info = compiled.info
        info.numbers = "estimated"
        info.execution_device = "npu"
        info.compile_s = time.perf_counter() - t0
        info.coverage = {
            k: v for k, v in {"npu": facts["npu_ops"] or 0, "cpu": facts["cpu_ops"] or 0}.items() if v
        } or {"unknown": 1}
        info.fallback_ops = dict(facts["fallback"])
        info.est_latency_ms = facts["inference_time_s"] * 1e3
        info.est_source = (
            f"Vela {facts['accelerator_configuration']} performance model: {facts['cycles_total']:,.0f} cycles at "
            f"{facts['core_clock_hz'] / 1e6:g} MHz ({facts['system_config']}, {facts['memory_mode']})"
        )
        info.extra.update(
            {
                "vela": {k: v for k, v in facts.items() if k != "fallback"},
                "accuracy_from": f"TFLite builtin int8 kernels on {tflite_path.name}",
            }
        )
        info.notes.append(
            "latency/memory: Vela's model of the Ethos-U; outputs: TFLite int8 kernels on the same .tflite"
        )
        return compiled

    def _vela(self, tflite: Path, workdir: Path) -> dict[str, Any]:
        out = workdir / "vela"
        o = self.options
        cmd = [
            sys.executable,
            "-m",
            "ethosu.vela",
            str(tflite),
            "--accelerator-config",
            o["accelerator_config"],
            "--optimise",
            o["optimise"],
            "--output-dir",
            str(out),
            "--show-cpu-operations",
        ]
        for flag, key in (
            ("--config", "config"),
            ("--system-config", "system_config"),
            ("--memory-mode", "memory_mode"),
        ):
            if o[key]:
                cmd += [flag, str(o[key])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        (workdir / "vela.log").write_text(proc.stdout + proc.stderr)  # the compiler's full output, for the user
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            # the compiler ran and rejected the model: a failed cell with its message, not a missing SDK
            raise CompileError(f"vela failed on {tflite.name} (exit {proc.returncode}): {' | '.join(tail)}")
        summaries = sorted(out.glob(f"{tflite.stem}_summary_*.csv"))
        if not summaries:
            raise CompileError(f"vela exited 0 but wrote no summary CSV in {out}; see {workdir / 'vela.log'}")
        vela_tflite = out / f"{tflite.stem}_vela.tflite"
        facts = parse_vela(proc.stdout + proc.stderr, summaries[-1].read_text())
        facts["vela_tflite_bytes"] = vela_tflite.stat().st_size if vela_tflite.is_file() else None
        return facts

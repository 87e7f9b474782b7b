"""NPU quantization profiles (``npu_profiles.yaml``): what a vendor compiler does to a float graph.

A profile is data, not code: simnpu (``backends/simnpu.py``) reads it to rewrite a float ONNX graph onto the
profile's integer grid and to estimate latency with a roofline. Users add their own with
``backends: [{name: simnpu, options: {profile: mine, profile_file: my_profiles.yaml}}]``. Every field is checked
here with its key path, so a typo fails at load time instead of silently meaning "default".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench.devices.catalog import load_catalog
from qtbench.harness.core.errors import ConfigError

PROFILES = Path(__file__).with_name("npu_profiles.yaml")
ROUNDING = ("half_even", "half_away", "floor")
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")
GRANULARITIES = ("per-channel", "per-tensor")
COST_KEYS = {
    "utilization",
    "host_gflops",
    "link_gbps",
    "invoke_overhead_ms",
    "partition_switch_ms",
    "peak_tops",
    "memory_gbps",
}
KEYS = {
    "name",
    "vendor",
    "board",
    "sources",
    "precisions",
    "weights",
    "activations",
    "bias_bits",
    "rounding",
    "calibration",
    "accumulator",
    "bn_folding",
    "fuse",
    "ops",
    "cost",
    "uncertain",
}


@dataclass(frozen=True)
class Operand:
    """Weights or activations: symmetric required|forbidden|any, granularities allowed, power-of-two scales."""

    symmetric: str
    granularity: tuple[str, ...]
    power_of_two: bool


@dataclass(frozen=True)
class NpuProfile:
    id: str
    name: str
    vendor: str
    board: str | None
    sources: tuple[str, ...]
    precisions: dict[str, tuple[int, int]]
    weights: Operand
    activations: Operand
    bias_bits: int
    rounding: str
    calibration: tuple[str, ...]
    accumulator_bits: int
    accumulator_saturate: bool
    bn_folding: bool
    fuse: frozenset[str]
    ops: frozenset[str]
    cost: dict[str, float]
    uncertain: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    digest: str = ""  # sha256 of the profile's YAML mapping: part of the cache key, so an edited profile rebuilds

    def check_spec(self, spec: Any) -> str | None:
        """None when the hardware can run ``spec``, else why not (the skipped row's reason)."""
        if spec.precision not in self.precisions:
            return f"{self.name} takes precisions {', '.join(self.precisions)}, not {spec.precision}"
        if spec.is_float:
            return None
        if spec.scaling != "static":
            return f"{self.name} compiles static quantization only (ranges fixed at compile time), not {spec.scaling}"
        if spec.granularity not in self.weights.granularity:
            return f"{self.name} quantizes weights {'/'.join(self.weights.granularity)}, not {spec.granularity}"
        if self.weights.symmetric == "required" and not spec.weight_symmetric:
            return f"{self.name} needs symmetric weights (wsym)"
        if self.activations.symmetric == "required" and not spec.activation_symmetric:
            return f"{self.name} needs symmetric activations (sym)"
        if self.activations.symmetric == "forbidden" and spec.activation_symmetric:
            return f"{self.name} quantizes activations asymmetrically; drop activation symmetry"
        if spec.calibration not in self.calibration:
            return f"{self.name}'s toolchain calibrates with {', '.join(self.calibration)}, not {spec.calibration}"
        return None

    def bits(self, spec: Any) -> tuple[int, int]:
        return self.precisions[spec.precision]


def _need(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing")
    return d[key]


def _operand(d: Any, where: str, activations: bool) -> Operand:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a mapping with symmetric, granularity, power_of_two")
    unknown = set(d) - {"symmetric", "granularity", "power_of_two"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed: symmetric, granularity, power_of_two")
    sym = _need(d, "symmetric", where)
    allowed = ("required", "forbidden", "any") if activations else ("required", "any")
    if sym not in allowed:
        raise ConfigError(f"{where}.symmetric: {sym!r}; choose one of {', '.join(allowed)}")
    gran = _need(d, "granularity", where)
    gran = (gran,) if isinstance(gran, str) else tuple(gran)
    bad = [g for g in gran if g not in GRANULARITIES]
    if bad or not gran:
        raise ConfigError(f"{where}.granularity: {bad or gran!r}; use {' / '.join(GRANULARITIES)}")
    if activations and gran != ("per-tensor",):
        raise ConfigError(f"{where}.granularity: activations are quantized per-tensor in simnpu")
    pow2 = d.get("power_of_two", False)
    if not isinstance(pow2, bool):
        raise ConfigError(f"{where}.power_of_two: true or false")
    return Operand(sym, gran, pow2)


def parse_profile(pid: str, d: Any, where: str, common: dict[str, Any] | None = None) -> NpuProfile:
    """One profile mapping → NpuProfile, or ConfigError naming the key."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a mapping")
    unknown = set(d) - KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(sorted(KEYS))}")
    precisions: dict[str, tuple[int, int]] = {}
    for prec, bits in _need(d, "precisions", where).items():
        if prec not in ("int8", "int4", "fp16"):
            raise ConfigError(f"{where}.precisions.{prec}: simnpu models int8, int4 and fp16")
        if not (isinstance(bits, list) and len(bits) == 2 and all(isinstance(b, int) and 2 <= b <= 16 for b in bits)):
            raise ConfigError(f"{where}.precisions.{prec}: [weight bits, activation bits], each 2..16")
        precisions[prec] = (bits[0], bits[1])
    rounding = d.get("rounding", "half_even")
    if rounding not in ROUNDING:
        raise ConfigError(f"{where}.rounding: {rounding!r}; choose one of {', '.join(ROUNDING)}")
    calib = tuple(_need(d, "calibration", where))
    bad = [c for c in calib if c not in CALIBRATIONS]
    if bad:
        raise ConfigError(f"{where}.calibration: {bad[0]!r}; choose from {', '.join(CALIBRATIONS)}")
    acc = d.get("accumulator", {"bits": 32, "saturate": True})
    if not isinstance(acc.get("bits"), int) or not 8 <= acc["bits"] <= 64:
        raise ConfigError(f"{where}.accumulator.bits: an integer 8..64")
    cost = dict(_need(d, "cost", where))
    bad = sorted(set(cost) - COST_KEYS)
    if bad:
        raise ConfigError(f"{where}.cost.{bad[0]}: unknown key; allowed: {', '.join(sorted(COST_KEYS))}")
    for k in ("utilization", "host_gflops", "link_gbps", "invoke_overhead_ms", "partition_switch_ms"):
        v = _need(cost, k, f"{where}.cost")
        if not isinstance(v, int | float) or v < 0 or (k == "utilization" and not 0 < v <= 1):
            raise ConfigError(f"{where}.cost.{k}: {v!r} is not a valid number")
    ops = _need(d, "ops", where)
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
        raise ConfigError(f"{where}.ops: a list of ONNX op types")
    bias_bits = d.get("bias_bits", 32)
    if not isinstance(bias_bits, int) or not 8 <= bias_bits <= 32:
        raise ConfigError(f"{where}.bias_bits: an integer 8..32")
    import hashlib
    import json

    return NpuProfile(
        digest=hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12],
        id=pid,
        name=str(d.get("name", pid)),
        vendor=str(d.get("vendor", "")),
        board=d.get("board"),
        sources=tuple(d.get("sources", [])),
        precisions=precisions,
        weights=_operand(_need(d, "weights", where), f"{where}.weights", activations=False),
        activations=_operand(_need(d, "activations", where), f"{where}.activations", activations=True),
        bias_bits=bias_bits,
        rounding=rounding,
        calibration=calib,
        accumulator_bits=acc["bits"],
        accumulator_saturate=bool(acc.get("saturate", True)),
        bn_folding=bool(d.get("bn_folding", True)),
        fuse=frozenset(d.get("fuse", [])),
        ops=frozenset(ops),
        cost={k: float(v) for k, v in cost.items()},
        uncertain=tuple(d.get("uncertain", [])),
    )


@functools.lru_cache(maxsize=8)
def load_profiles(path: str | None = None) -> dict[str, NpuProfile]:
    """All profiles in ``path`` (default: the shipped npu_profiles.yaml)."""
    import yaml

    p = Path(path) if path else PROFILES
    if not p.is_file():
        raise ConfigError(f"profile file {p} not found; pass an existing YAML file as options.profile_file")
    data = yaml.safe_load(p.read_text()) or {}
    if data.get("schema", 1) != 1:
        raise ConfigError(f"{p}: profile schema {data.get('schema')} is newer than this qtbench reads (1)")
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError(f"{p}: needs a `profiles:` mapping of id → profile")
    return {pid: parse_profile(pid, d, f"{p.name}:profiles.{pid}") for pid, d in profiles.items()}


def get_profile(pid: str, path: str | None = None) -> NpuProfile:
    profiles = load_profiles(path)
    if pid not in profiles:
        raise ConfigError(f"NPU profile {pid!r} not found; known: {', '.join(sorted(profiles))}")
    return profiles[pid]


def roofline_peak(profile: NpuProfile) -> tuple[float, float | None, str]:
    """(peak INT8 TOPS, memory GB/s or None for on-chip-only parts, where the figures come from)."""

    board = load_catalog().get(profile.board or "", {}) if profile.board else {}
    tops = profile.cost.get("peak_tops", board.get("int8_tops"))
    bw = profile.cost.get("memory_gbps", board.get("memory_gbps"))
    if not tops:
        raise ConfigError(
            f"profile {profile.id}: no peak TOPS (board {profile.board!r} not in devices/catalog.yaml and no "
            "cost.peak_tops); add one"
        )
    src = f"catalog board {profile.board}" if board else "profile cost"
    return float(tops), (float(bw) if bw else None), src

"""QuantSpec: one point of the precision space, frozen, hashable, with a short stable id.

The id encodes every field that differs from its default, so ``QuantSpec.parse(spec.id) == spec`` and two specs
with the same id are the same spec. Examples::

    fp32                          float reference
    int8-static-pc-wsym-minmax    INT8, static activation ranges, per-channel weights, symmetric weights,
                                  asymmetric activations, min-max calibration
    int8-static-pt-sym-entropy    per-tensor, both symmetric, KL/entropy calibration
    int8-dynamic-pc-wsym          activations scaled per batch at run time
    int4-static-pc-wsym-minmax    4-bit weights, INT8 activations (W4A8)
    int4-weightonly-pc-sym        4-bit weights, float activations (W4A32; MatMulNBits on ORT)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from qtbench.harness.core.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
SCALINGS = ("static", "dynamic", "weightonly")
GRANULARITIES = ("per-tensor", "per-channel")
CALIBRATIONS = ("minmax", "entropy", "percentile", "mse")
FORMATS = ("qdq", "qoperator")
_GRAN_CODE = {"per-tensor": "pt", "per-channel": "pc"}
_SYM_CODE = {(True, True): "sym", (False, False): "asym", (True, False): "wsym", (False, True): "asym-wasym"}
DEFAULT_PERCENTILE = 99.999
DEFAULT_CALIB_SAMPLES = 256


@dataclass(frozen=True, order=True)
class QuantSpec:
    """A quantization recipe a backend compiles a float model under.

    ``precision`` fp32/fp16 ignore every other field. For int8/int4:
    ``scaling`` static (ranges from calibration data), dynamic (activation ranges computed per inference) or
    weightonly (activations stay float); ``granularity`` applies to weights (activations are per-tensor);
    ``weight_symmetric``/``activation_symmetric`` choose signed symmetric vs asymmetric with a zero-point;
    ``calibration`` (static only) with ``percentile`` for the percentile method and ``calib_samples`` images;
    ``format`` is the graph form for backends that distinguish (ORT QDQ vs QOperator).
    """

    precision: str = "fp32"
    scaling: str = "static"
    granularity: str = "per-channel"
    weight_symmetric: bool = True
    activation_symmetric: bool = False
    calibration: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    format: str = "qdq"

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("scaling", self.scaling, SCALINGS)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("calibration", self.calibration, CALIBRATIONS)
        _check_choice("format", self.format, FORMATS)
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile: {self.percentile} is outside (50, 100]; typical values are 99.9–99.999")
        if int(self.calib_samples) < 1:
            raise ConfigError(f"calib_samples: {self.calib_samples} must be ≥ 1")
        if self.precision == "int8" and self.scaling == "weightonly":
            raise ConfigError("scaling: weightonly is defined for int4 only; use int8 with static or dynamic")
        # Canonical form: fields that do not apply are reset to their defaults, so a spec has exactly one id
        # and one hash (fp16 with calibration=entropy is fp16).
        defaults = {f.name: f.default for f in fields(self)}
        unused: list[str] = []
        if self.is_float:
            unused = [n for n in defaults if n != "precision"]
        else:
            if self.scaling != "static":
                unused += ["calibration", "percentile", "calib_samples"]
            if self.scaling == "weightonly":
                unused += ["activation_symmetric", "format"]
            if self.calibration != "percentile":
                unused.append("percentile")
        for name in unused:
            object.__setattr__(self, name, defaults[name])

    # -- derived -----------------------------------------------------------------------------------------
    @property
    def is_float(self) -> bool:
        return self.precision in ("fp32", "fp16", "bf16")

    @property
    def is_static(self) -> bool:
        return not self.is_float and self.scaling == "static"

    @property
    def weight_bits(self) -> int:
        return {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "int4": 4}[self.precision]

    @property
    def activation_bits(self) -> int:
        """Bits of activations as executed: 32 for float and weight-only, 16 for fp16, else 8."""
        if self.precision in ("fp16", "bf16"):
            return 16
        if self.precision == "fp32" or self.scaling == "weightonly":
            return 32
        return 8

    @property
    def id(self) -> str:
        if self.is_float:
            return self.precision
        parts = [self.precision, self.scaling, _GRAN_CODE[self.granularity]]
        if self.scaling == "weightonly":
            parts.append("sym" if self.weight_symmetric else "asym")
        else:
            parts.append(_SYM_CODE[(self.weight_symmetric, self.activation_symmetric)])
        if self.scaling == "static":
            calib = self.calibration
            if calib == "percentile" and self.percentile != DEFAULT_PERCENTILE:
                calib += f"{self.percentile:g}"
            parts.append(calib)
            if self.calib_samples != DEFAULT_CALIB_SAMPLES:
                parts.append(f"n{self.calib_samples}")
        if self.format != "qdq":
            parts.append(self.format)
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- parsing -----------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, value: str | dict[str, Any] | QuantSpec, where: str = "spec") -> QuantSpec:
        """Build from an id string (``int8-static-pc-wsym-minmax``), a mapping of fields, or a QuantSpec."""
        if isinstance(value, QuantSpec):
            return value
        if isinstance(value, dict):
            return _from_dict(value, where)
        if isinstance(value, str):
            return _from_id(value.strip(), where)
        raise ConfigError(f"{where}: expected a spec id string or a mapping, got {type(value).__name__}")

    def with_(self, **changes: Any) -> QuantSpec:
        return replace(self, **changes)


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _from_dict(d: dict[str, Any], where: str) -> QuantSpec:
    names = {f.name: f for f in fields(QuantSpec)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys are {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        expected = names[key].type
        if expected == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {value!r}")
        if expected == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        if expected == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        if expected == "str" and not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        kwargs[key] = value
    try:
        return QuantSpec(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc}") from None


def _from_id(text: str, where: str) -> QuantSpec:
    hint = "write ids like fp32, int8-static-pc-wsym-minmax, int8-dynamic-pt-wsym or int4-weightonly-pc-sym"
    tokens = text.split("-")
    if not tokens or tokens[0] not in PRECISIONS:
        raise ConfigError(f"{where}: {text!r} does not start with a precision ({', '.join(PRECISIONS)}); {hint}")
    if tokens[0] in ("fp32", "fp16", "bf16"):
        if len(tokens) > 1:
            raise ConfigError(f"{where}: float spec {text!r} takes no options; write just {tokens[0]}")
        return QuantSpec(tokens[0])
    kw: dict[str, Any] = {"precision": tokens[0]}
    rest = tokens[1:]
    # "asym-wasym" is the one symmetry code with a dash; glue it back together.
    for i in range(len(rest) - 1):
        if rest[i] == "asym" and rest[i + 1] == "wasym":
            rest[i : i + 2] = ["asym-wasym"]
            break
    inv_gran = {v: k for k, v in _GRAN_CODE.items()}
    inv_sym = {v: k for k, v in _SYM_CODE.items()}
    for tok in rest:
        if tok in SCALINGS:
            kw["scaling"] = tok
        elif tok in inv_gran:
            kw["granularity"] = inv_gran[tok]
        elif tok in inv_sym:
            kw["weight_symmetric"], kw["activation_symmetric"] = inv_sym[tok]
        elif tok in FORMATS:
            kw["format"] = tok
        elif tok.startswith("percentile"):
            kw["calibration"] = "percentile"
            if tok != "percentile":
                try:
                    kw["percentile"] = float(tok[len("percentile") :])
                except ValueError:
                    raise ConfigError(f"{where}: bad percentile in {text!r}; e.g. percentile99.99") from None
        elif tok in CALIBRATIONS:
            kw["calibration"] = tok
        elif tok.startswith("n") and tok[1:].isdigit():
            kw["calib_samples"] = int(tok[1:])
        else:
            raise ConfigError(f"{where}: unknown token {tok!r} in {text!r}; {hint}")
    try:
        return QuantSpec(**kw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None

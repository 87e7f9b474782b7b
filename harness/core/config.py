"""Sweep configuration: YAML → validated, frozen objects; and the JSON schema generated from the same classes.

Validation walks the dataclasses below, so the schema, the defaults and the error messages cannot drift apart.
Every error names its key path (``models[1].path``) and what is allowed. Relative paths resolve against the
YAML file's folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from qtbench.harness.core import spec as s
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.tasks import parse_tasks

SCHEMA_ID = "https://qtbench.dev/schema/sweep-1.json"


def _f(default: Any = MISSING, doc: str = "", **meta: Any) -> Any:
    """A dataclass field with documentation and constraints used by both validation and the JSON schema."""
    meta["doc"] = doc
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataSource:
    """Input tensors for a model: a ``.npz`` of named arrays or a folder of ``<input-name>.npy`` files.

    Arrays are keyed by the model's input names (a single-input model also takes the one non-label array,
    whatever its name). The first axis is the sample axis.
    """

    path: str = _f(doc="a .npz file or a folder of .npy files; relative to the sweep file")
    labels: str | None = _f(
        None,
        doc="name of the integer label array; default: the array named 'labels' when there is one (a key named "
        "here must exist)",
    )
    limit: int | None = _f(None, doc="use only the first N samples", minimum=1)


@dataclass(frozen=True)
class ModelEntry:
    """One ONNX checkpoint to compile on every backend."""

    path: str = _f(doc="ONNX file; relative to the sweep file")
    name: str | None = _f(None, doc="display name; default: the file stem")
    output: str | None = _f(None, doc="output holding the logits; default: the first output")
    calibration: DataSource | None = _f(None, doc="overrides the sweep-level calibration data")
    evaluation: DataSource | None = _f(None, doc="overrides the sweep-level evaluation data")
    task: str | dict[str, Any] | None = _f(
        None,
        doc="how outputs are scored: a task (classification, segmentation, tensor, or a qtbench.tasks plug-in) "
        "for the scored output, or a mapping output -> task (or -> {name: task, option: value}); default: the "
        "zoo's metadata, else inferred from the output's rank (see harness/tasks.py)",
    )
    group: str | None = _f(None, doc="study group this checkpoint belongs to (e.g. fp, quanttrim); default: its name")
    seed: int | None = _f(None, doc="training seed (replica) of this checkpoint within its group", minimum=0)
    timing: bool = _f(
        True,
        doc="false: fidelity only - compile and evaluate, no timed loop (rows say timed=false); "
        "e.g. time one replica of a study and evaluate the others",
    )

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).stem

    @property
    def group_name(self) -> str:
        return self.group or self.display_name


@dataclass(frozen=True)
class BackendEntry:
    """A backend slug with adapter options (e.g. ``ort``: threads, spinning, providers)."""

    name: str = _f(doc="backend slug, see `qtbench backends`")
    options: dict[str, Any] = _f({}, doc="adapter options; each backend documents and checks its own")
    label: str | None = _f(None, doc="name in results when one backend runs with several option sets")

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class CellFilter:
    """Matches cells by model name, backend slug and spec id; each value may be a string or a list."""

    model: str | list[str] | None = _f(None, doc="model display name(s)")
    backend: str | list[str] | None = _f(None, doc="backend slug(s)")
    spec: str | list[str] | None = _f(None, doc="spec id(s)")

    def matches(self, model: str, backend: str, spec_id: str) -> bool:
        def ok(rule: str | list[str] | None, value: str) -> bool:
            return rule is None or value in ([rule] if isinstance(rule, str) else rule)

        return ok(self.model, model) and ok(self.backend, backend) and ok(self.spec, spec_id)


@dataclass(frozen=True)
class MeasureSettings:
    """The timing protocol. Defaults follow the Quant-Trim paper: batch 1, 20 warm-ups, 200 timed runs."""

    warmup: int = _f(20, doc="untimed iterations before the timed loop", minimum=0, maximum=1_000_000)
    iterations: int = _f(200, doc="minimum timed iterations", minimum=1, maximum=10_000_000)
    min_duration_s: float = _f(0.0, doc="keep timing until this many seconds have passed as well", minimum=0)
    max_iterations: int = _f(100_000, doc="hard cap when min_duration_s keeps the loop going", minimum=1)
    batch_size: int = _f(1, doc="samples per timed inference", minimum=1)
    cv_threshold: float = _f(0.10, doc="coefficient of variation above which a row is flagged unstable", minimum=0)
    eval_batch_size: int = _f(256, doc="samples per call when computing quality (dynamic-batch models)", minimum=1)
    repeats: int = _f(1, doc="independent timed runs per cell (the paper uses 5 for power whiskers)", minimum=1)


@dataclass(frozen=True)
class DeviceSettings:
    """Power metering, thermal checks and cost. See devices/power.py and devices/catalog.py."""

    meter: str = _f(
        "auto",
        doc="auto, none, jtop, hwmon, rapl, nvml, external or estimate",
        choices=("auto", "none", "jtop", "hwmon", "rapl", "nvml", "external", "estimate"),
    )
    meter_log: str | None = _f(None, doc="external meter CSV (timestamp,watts; Unix seconds)")
    rail: str | None = _f(
        None,
        doc="which rail the meter reads: a hwmon channel label (VDD_IN, VDD_GPU_SOC ...) or 'sum' of all "
        "(disjoint rails only); a RAPL zone (package, psys, dram ...). Default: the board input rail "
        "(VDD_IN / POM_5V_IN / ACPI power meter), RAPL package zones (never psys with them)",
    )
    sample_period_ms: float = _f(20.0, doc="power sampling period", minimum=1)
    idle_s: float = _f(0.5, doc="idle baseline window before the timed loop (0 = none)", minimum=0)
    watts_per_core: float = _f(10.0, doc="estimate model: W per busy core (used only by the estimate meter)", minimum=0)
    catalog: str | None = _f(None, doc="device catalog id for price/TOPS; default: matched from the board model")
    price_usd: float | None = _f(None, doc="board price overriding the catalog's", minimum=0)
    electricity_usd_per_kwh: float = _f(0.15, doc="for cost per inference", minimum=0)
    lifetime_years: float = _f(3.0, doc="amortisation period of the board price", minimum=0.01)
    duty_cycle: float = _f(1.0, doc="fraction of the lifetime spent inferring", minimum=0.001)


@dataclass(frozen=True)
class RunSettings:
    """Where results go and how cells are isolated."""

    results_dir: str = _f("results", doc="root folder; results land in <results_dir>/<sweep name>/")
    cache_dir: str | None = _f(None, doc="compiled-artifact cache; default <results_dir>/.cache")
    timeout_s: float = _f(900.0, doc="per-cell wall-clock limit; a cell past it is recorded as timeout", minimum=1)
    isolate: bool = _f(True, doc="run each cell in a child process so a crashing SDK costs one cell")
    warm_workers: bool = _f(
        True,
        doc="measure consecutive cells of one backend in one warm child process, and build artifacts in one warm "
        "child per compile worker (restarted after a crash, a timeout or worker_cells cells) instead of a fresh "
        "child per cell; false: a fresh child for every cell",
    )
    worker_cells: int = _f(50, doc="cells a warm worker measures before it is replaced by a fresh one", minimum=1)
    seed: int = _f(0, doc="seed for sample order and anything random in compilation")
    rerun: bool = _f(False, doc="measure cells again even when results hold them (rows are appended)")
    compile_first: bool = _f(
        True, doc="build every cell's artifact before timing any cell, so no compile runs beside a timed loop"
    )
    compile_workers: int = _f(
        0, doc="child processes compiling at once in the compile phase (0: min(4, CPU count))", minimum=0, maximum=64
    )
    board_id: str | None = _f(
        None,
        doc="this board's id when it runs its own (offline) sweep: rows' device and cell keys carry it instead of "
        "the host id, so results merged from several boards stay apart (qtbench sweep --board-id)",
        pattern=r"^[A-Za-z0-9._-]+$",
        not_dots=True,
    )
    executor: str = _f(
        "local",
        doc="where cells run: local (this machine) or ray (boards of a Ray cluster; qtbench[fleet])",
        choices=("local", "ray"),
    )
    fleet: str | None = _f(
        None,
        doc="ray executor: a fleet file (boards, their Ray resources and backends) or a cluster address "
        "(ray://HEAD:10001, HEAD:6379, auto), which discovers boards from nodes' board:<id> resources",
    )
    boards: list[str] = _f([], doc="ray executor: only these board ids (default: every board of the fleet)")
    compile_on: str = _f(
        "board",
        doc="ray executor: where cells compile: board (in the board's own task) or the Ray resource of a compile "
        "host class (e.g. toolchain:x86; one unit per concurrent compile), whose artifact is shipped to the board; "
        "a fleet file's boards.<id>.compile_on overrides it per board",
    )
    board_wait_s: float = _f(
        300.0,
        doc="ray executor: how long planning waits for a board that another job holds before its cells are "
        "recorded unavailable (a re-run measures them); measuring waits for a busy board without limit",
        minimum=0,
    )


@dataclass(frozen=True)
class Sweep:
    """A sweep: models × backends × specs, with data, measurement protocol and run settings."""

    name: str = _f(doc="results land in <results_dir>/<name>/", pattern=r"^[A-Za-z0-9._-]+$", not_dots=True)
    models: list[ModelEntry] = _f(doc="ONNX checkpoints", min_items=1)
    backends: list[BackendEntry] = _f(doc="backend slugs or {name, options}", min_items=1)
    specs: list[QuantSpec] = _f(doc="spec ids (int8-static-pc-wsym-minmax) or field mappings", min_items=1)
    calibration: DataSource | None = _f(None, doc="calibration inputs (labels ignored)")
    evaluation: DataSource | None = _f(None, doc="evaluation inputs and optional labels")
    include: list[CellFilter] = _f([], doc="extra cells beyond the matrix; each needs model, backend and spec")
    exclude: list[CellFilter] = _f([], doc="cells to drop from the matrix")
    measure: MeasureSettings = _f(MeasureSettings(), doc="timing protocol")
    run: RunSettings = _f(RunSettings(), doc="output and isolation")
    device: DeviceSettings = _f(DeviceSettings(), doc="power meter, thermal checks, cost model")
    description: str = _f("", doc="free text shown in reports")
    base_dir: str = field(default=".", metadata={"doc": "internal: folder relative paths resolve against"})

    def resolve(self, p: str) -> Path:
        import os

        path = Path(p).expanduser()
        return Path(os.path.normpath(path if path.is_absolute() else (Path(self.base_dir) / path)))

    @property
    def results_path(self) -> Path:
        return self.resolve(self.run.results_dir) / self.name

    @property
    def cache_path(self) -> Path:
        return self.resolve(self.run.cache_dir) if self.run.cache_dir else self.resolve(self.run.results_dir) / ".cache"

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def config_hash(self) -> str:
        plain = self.to_dict()
        plain.pop("base_dir", None)
        return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


_INTERNAL = {"base_dir"}


# ---------------------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------------------
def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep YAML file."""

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {p} does not exist; pass a YAML file or run `qtbench sweep` for the demo")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); save the sweep file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the sweep file ({exc.strerror})") from None
    data = load_yaml(text, str(p))
    try:
        return parse_sweep(data, base_dir=p.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


MAX_YAML_BYTES = 1 << 20  # a sweep file is configuration: 1 MiB is far above any real one
MAX_YAML_NODES = 100_000  # nodes after alias expansion: a "billion laughs" file is refused before it is built


def load_yaml(text: str, where: str) -> Any:
    """Parse a YAML document safely and boundedly: no size above :data:`MAX_YAML_BYTES`, no alias structure that
    expands past :data:`MAX_YAML_NODES` nodes, no key given twice in one mapping (YAML would keep the last one
    silently). Errors are one line naming ``where``."""
    import yaml

    if len(text.encode("utf-8", "replace")) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text) >> 10} KiB is too large for a sweep file (limit 1 MiB)")

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise ConfigError(
                        f"{where}: key {_show(key)} appears twice in one mapping (lines {seen[key] + 1} and "
                        f"{key_node.start_mark.line + 1}); YAML would keep only the last: remove one"
                    )
                if key is not None:
                    seen[key] = key_node.start_mark.line
            return super().construct_mapping(node, deep=deep)

    loader = Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        sizes: dict[int, int] = {}

        def size(n: Any) -> int:  # expanded size, each distinct node computed once (aliases share nodes)
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = 1  # a recursive alias counts once while it is being sized
            children = (
                [c for pair in n.value for c in pair]
                if isinstance(n, yaml.MappingNode)
                else (n.value if isinstance(n, yaml.SequenceNode) else [])
            )
            total = 1 + sum(size(c) for c in children)
            sizes[id(n)] = min(total, MAX_YAML_NODES + 1)
            return sizes[id(n)]

        if size(node) > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: its aliases (&anchor / *alias) expand to more than {MAX_YAML_NODES:,} values; a sweep "
                "file never needs that many (a 'billion laughs' structure?): write the lists out"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_show(' '.join(str(exc).split()), 300)}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply for a sweep file") from None
    finally:
        loader.dispose()


#: control characters refused in any sweep-file string (tab and newline are fine in a description): ESC starts
#: terminal escape sequences, the bidi overrides reorder what a reader sees
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, bounded: a user value is never expanded past ``limit`` characters
    (a deeply aliased structure would otherwise be formatted in full)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 6, 6, 3
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_sweep(data: Any, base_dir: str | Path = ".") -> Sweep:
    """Validate a plain mapping (e.g. parsed YAML) into a :class:`Sweep`."""
    if not isinstance(data, dict):
        raise ConfigError(f"sweep: expected a mapping at the top level, got {type(data).__name__}")
    data = {**data, "base_dir": str(base_dir)}
    sweep = _build(Sweep, data, "")
    for i, inc in enumerate(sweep.include):
        missing = [k for k in ("model", "backend", "spec") if getattr(inc, k) is None]
        if missing:
            raise ConfigError(f"include[{i}]: needs {', '.join(missing)} (an included cell is one exact cell)")
    keys = [b.key for b in sweep.backends]
    dup_b = {k for k in keys if keys.count(k) > 1}
    if dup_b:
        raise ConfigError(f"backends: {sorted(dup_b)[0]!r} appears twice; give each option set a distinct `label`")
    if sweep.measure.iterations > sweep.measure.max_iterations:
        raise ConfigError(
            f"measure.iterations: {sweep.measure.iterations} exceeds measure.max_iterations "
            f"{sweep.measure.max_iterations}; raise max_iterations or lower iterations"
        )
    names = [m.display_name for m in sweep.models]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"models: duplicate model name {sorted(dup)[0]!r}; give each model a distinct `name`")

    for i, m in enumerate(sweep.models):
        parse_tasks(m.task, f"models[{i}].task")  # unknown task names and options fail at load, with the key path
    return sweep


def _build(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types with the key path."""
    where = path or "sweep"
    if cls is QuantSpec:
        return QuantSpec.parse(data, where)
    if cls is BackendEntry and isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__} {_show(data)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known or (k in _INTERNAL and cls is not Sweep)]
    if unknown:
        allowed = ", ".join(k for k in known if k not in _INTERNAL)
        raise ConfigError(f"{_join(path, str(unknown[0]))}: unknown key; allowed keys are {allowed}")
    kwargs = {}
    for name, f in known.items():
        key_path = _join(path, name)
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{key_path}: required key is missing ({f.metadata.get('doc', '')})")
            continue
        kwargs[name] = _coerce(hints[name], data[name], key_path, f.metadata)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in (o for o in options if o is not type(None)):
            try:
                return _coerce(opt, value, path, meta)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[-1] if len(errors) == 1 else f"{path}: {_show(value)} matches none of: {_type_name(tp)}"
        )
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {_show(value)}")
        if len(value) < meta.get("min_items", 0):
            raise ConfigError(f"{path}: needs at least {meta['min_items']} item(s)")
        return [_coerce(item_tp, v, f"{path}[{i}]", {}) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if is_dataclass(tp) or tp is QuantSpec:
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_show(value)}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {_show(value)}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_show(value)}")
        bad = _CONTROL.search(value)
        if bad:
            raise ConfigError(
                f"{path}: {_show(value)} holds the control character {bad.group().encode('unicode_escape').decode()}"
                f" at position {bad.start()}: names and paths reach terminals and reports; remove it"
            )
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{path}: {_show(value)} is not one of {', '.join(meta['choices'])}")
        pattern = meta.get("pattern")
        if pattern:
            if not re.fullmatch(pattern, value) or (meta.get("not_dots") and set(value) == {"."}):
                raise ConfigError(
                    f"{path}: {_show(value)} must match {pattern} (letters, digits, '.', '_', '-'; not only dots)"
                )
    if "minimum" in meta and value < meta["minimum"]:
        raise ConfigError(f"{path}: {_show(value)} is below the minimum {meta['minimum']}")
    if "maximum" in meta and value > meta["maximum"]:
        raise ConfigError(f"{path}: {_show(value)} is above the maximum {meta['maximum']}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: {_show(value)} is not a finite number")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, QuantSpec):
        return obj.id
    if is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------------------
# JSON schema
# ---------------------------------------------------------------------------------------------------------
def json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a sweep file, generated from the dataclasses above."""
    defs: dict[str, Any] = {}
    root = _schema_for(Sweep, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **root, "$defs": defs}


def _schema_for(tp: Any, defs: dict[str, Any], meta: typing.Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta = meta or {}
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if origin in (typing.Union, types.UnionType):
        out = {"anyOf": [_schema_for(o, defs) for o in typing.get_args(tp)]}
    elif origin is list:
        out = {"type": "array", "items": _schema_for(typing.get_args(tp)[0], defs)}
        if meta.get("min_items"):
            out["minItems"] = meta["min_items"]
    elif origin is dict:
        out = {"type": "object"}
    elif tp is type(None):
        out = {"type": "null"}
    elif tp is QuantSpec:
        out = {"anyOf": [{"type": "string", "description": "spec id"}, _quantspec_schema()]}
    elif is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = typing.get_type_hints(tp)
            props = {}
            required = []
            for f in fields(tp):
                if f.name in _INTERNAL:
                    continue
                props[f.name] = _schema_for(hints[f.name], defs, f.metadata)
                if f.default is MISSING and f.default_factory is MISSING:
                    required.append(f.name)
            schema: dict[str, Any] = {
                "type": "object",
                "description": (tp.__doc__ or "").strip().split("\n")[0],
                "properties": props,
                "additionalProperties": False,
            }
            if required:
                schema["required"] = required
            if tp is BackendEntry:
                schema = {"anyOf": [{"type": "string"}, schema]}
            defs[name] = schema
        out = {"$ref": f"#/$defs/{name}"}
    else:
        out = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
        if "minimum" in meta:
            out["minimum"] = meta["minimum"]
        if "maximum" in meta:
            out["maximum"] = meta["maximum"]
        if "pattern" in meta:
            out["pattern"] = meta["pattern"]
        if "choices" in meta:
            out["enum"] = list(meta["choices"])
    if meta.get("doc"):
        out["description"] = meta["doc"]
    return out


def _quantspec_schema() -> dict[str, Any]:

    choices = {
        "precision": s.PRECISIONS,
        "scaling": s.SCALINGS,
        "granularity": s.GRANULARITIES,
        "calibration": s.CALIBRATIONS,
        "format": s.FORMATS,
    }
    props: dict[str, Any] = {}
    for f in fields(QuantSpec):
        if f.name in choices:
            props[f.name] = {"type": "string", "enum": list(choices[f.name])}
        else:
            props[f.name] = {"type": {"bool": "boolean", "int": "integer", "float": "number"}[f.type]}
    return {"type": "object", "properties": props, "additionalProperties": False}

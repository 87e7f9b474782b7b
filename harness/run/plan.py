"""Sweep planning: models × backends × specs (+ include, − exclude) → ordered, keyed cells.

A cell's key hashes everything that makes two measurements comparable: model bytes, backend and its version
and options, device, spec, timing protocol and data hashes. Re-running a sweep skips keys already recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qtbench import backends
from qtbench.harness.core.config import BackendEntry, DataSource, ModelEntry, Sweep
from qtbench.harness.core.data import check_against_model, load_dataset
from qtbench.harness.core.errors import ConfigError, DataError, QtbenchError, UserError
from qtbench.harness.core.intake import IntakeResult, Variant, file_sha256, normalise_many
from qtbench.harness.core.isolate import call_isolated
from qtbench.harness.core.onnxfacts import forget_onnx_graph, model_facts, onnx_graph
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.trust import check_options
from qtbench.harness.core.zoo import META_WEIGHTS
from qtbench.harness.run.cell import CellJob, CellResult
from qtbench.harness.run.manifest import SweepRun, _with_external, external_data_files


@dataclass(frozen=True)
class Cell:
    """One (model, backend, spec) point of a sweep."""

    index: int
    model: ModelEntry
    backend: BackendEntry
    spec: QuantSpec
    key: str = ""
    skip_reason: str | None = None
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"{self.model.display_name} × {self.backend.name} × {self.spec.id}"


def expand(sweep: Sweep) -> list[tuple[ModelEntry, BackendEntry, QuantSpec]]:
    """The matrix in config order, minus excludes, plus includes (deduplicated)."""
    backends = {b.key: b for b in sweep.backends}
    models = {m.display_name: m for m in sweep.models}
    out: list[tuple[ModelEntry, BackendEntry, QuantSpec]] = []
    seen: set[tuple[str, str, str]] = set()

    def add(m: ModelEntry, b: BackendEntry, s: QuantSpec) -> None:
        k = (m.display_name, b.key, s.id)
        if k not in seen:
            seen.add(k)
            out.append((m, b, s))

    for m in sweep.models:
        for b in sweep.backends:
            for s in sweep.specs:
                if not any(f.matches(m.display_name, b.key, s.id) for f in sweep.exclude):
                    add(m, b, s)
    for i, inc in enumerate(sweep.include):
        for mname in _as_list(inc.model):
            for bname in _as_list(inc.backend):
                for sid in _as_list(inc.spec):
                    if mname not in models:
                        raise ConfigError(
                            f"include[{i}].model: {mname!r} is not a model of this sweep ({', '.join(models)})"
                        )
                    b = backends.get(bname, BackendEntry(name=bname))
                    add(models[mname], b, QuantSpec.parse(sid, f"include[{i}].spec"))
    return out


def _as_list(v: str | list[str] | None) -> list[str]:
    return [] if v is None else [v] if isinstance(v, str) else list(v)


def cell_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def artifact_key(
    model_sha: str,
    spec: QuantSpec,
    backend_version: str,
    options: dict[str, Any],
    calib_sha: str,
    side_files: dict[str, str] | None = None,
    device: str = "",
) -> str:
    """The compiled-artifact cache key: what decides the artifact's bytes (not the timing protocol or device).

    The sweep and ``qtbench localize`` both call this, so a localisation reuses the sweep's compiled artifacts.
    ``side_files`` are files besides the model that decide the artifact (a pre-converted ``.tflite``), by hash.
    ``device``: the machine identity a non-portable artifact is bound to (``Backend.device_identity``).
    """
    return cell_key(
        {
            "model": model_sha,
            "spec": spec.id,
            "backend_version": backend_version,
            "options": options,
            "calib": calib_sha if spec.is_static else "",
            **({"artifact_inputs": side_files} if side_files else {}),
            **({"device": device} if device else {}),
        }
    )


def _probe(
    slug: str, target: str, options: dict[str, Any], specs: list[Any], model_paths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Child side of backend planning: availability, version, per-spec support, and the files besides each model
    that decide a cell's artifact (e.g. a pre-converted .tflite), by hash, keyed "<model path>|<spec id>"."""

    try:
        backend = backends.create(slug, options, target)
    except ConfigError as exc:
        return {"config_error": str(exc)}
    av = backend.availability()
    out = {
        "available": av.available,
        "reason": av.reason,
        "version": "",
        "supports": {},
        "static_shapes": bool(backend.static_shapes),
        "exclusive": bool(backend.exclusive_device),  # an instance may decide by its options (ORT GPU EPs)
        "identity": "",
    }
    if av.available:
        out["version"] = ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))
        if not type(backend).artifact_portable or out["exclusive"]:  # bound to, or built and timed on, a device
            out["identity"] = backend.device_identity()
        out["supports"] = {s.id: backend.supports(s) for s in specs}
        out["build_groups"] = {s.id: backend.build_group(s) for s in specs if not out["supports"][s.id]}
        out["artifact_inputs"] = {}
        for path in model_paths:
            for s in specs:
                try:
                    found = backend.artifact_inputs(Path(path), s)
                except OSError:
                    found = {}
                if found:
                    out["artifact_inputs"][f"{path}|{s.id}"] = found
    return out


# ---------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------
def _read_model(path: Path, m: ModelEntry) -> Any:
    """The model's graph facts, or a one-line error that blames the model file (not the data) when it is bad."""
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist (models[].path is relative to the sweep file)")
    if path.stat().st_size == 0:
        raise ConfigError(f"model file {path} is empty (0 bytes); re-export the ONNX model")
    try:
        facts = model_facts(path)
    except Exception as exc:  # noqa: BLE001 - protobuf errors of a corrupt file
        raise ConfigError(f"model file {path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not facts.input_names or not facts.output_names:
        raise ConfigError(f"model file {path} has no graph inputs or outputs: is it an ONNX model? re-export it")
    if m.output and m.output not in facts.output_names:
        raise ConfigError(f"model {m.display_name}: output {m.output!r} not in {facts.output_names}")
    return facts


def _data_path(sweep: Sweep, model: ModelEntry, kind: str) -> tuple[DataSource | None, str | None]:
    src: DataSource | None = getattr(model, kind) or getattr(sweep, kind)
    return src, (str(sweep.resolve(src.path)) if src else None)


@dataclass
class PlannedCell:
    """A cell after planning: its key and identity fields, and either a job to run or an outcome already known
    (reused, failed model/data, unavailable backend, unsupported spec)."""

    index: int
    total: int
    label: str
    key: str
    base: dict[str, Any]
    job: CellJob | None = None
    outcome: CellResult | None = None
    reused: bool = False


@dataclass
class Checked:
    """What :func:`preflight` learnt about the models and their data: per model its hashes (``info``), and what
    intake needs (``todo``: name → (path, sha with external data, a couple of evaluation samples))."""

    info: dict[str, dict[str, Any]]
    todo: dict[str, tuple[str, str, Any]]


def preflight(sweep: Sweep) -> Checked:
    """Everything knowable before the first compile, checked before anything is written: every model file, and
    every data file's arrays, names, shapes, dtypes and labels against its model's inputs.

    A mistake here is the user's (a typo in a path, an array of the wrong shape): it raises the first one as a
    one-line ``UserError`` (exit 2) naming the file and the fix, instead of a results folder full of failed
    cells. What only a compile can find (an SDK rejecting an op, intake failing) still costs only its cells.
    """
    if sweep.run.executor != "ray":  # a fleet's boards may offer plugins this host does not have
        for b in sweep.backends:
            backends.resolve(b.name)
        check_sweep(sweep)  # a program the sweep file names runs only with the user's consent
    checked = _check_models(sweep)
    errors = [(name, i["error"]) for name, i in checked.info.items() if i["error"]]
    if errors:
        name, first = errors[0]
        more = f" (and {len(errors) - 1} more model(s) with bad inputs)" if len(errors) > 1 else ""
        kind = checked.info[name].get("error_type", ConfigError)
        kind = kind if issubclass(kind, UserError) else ConfigError
        raise kind(f"model {name}: {first}{more}; nothing was compiled or written")
    return checked


def _check_models(sweep: Sweep) -> Checked:
    """Per model: sha and data hashes, or the one-line error that blames the model file or the data file."""

    model_info: dict[str, dict[str, Any]] = {}
    todo: dict[str, tuple[str, str, Any]] = {}
    for m in sweep.models:
        info: dict[str, Any] = {"error": None, "sha": "", "eval_sha": "", "calib_sha": ""}
        path = sweep.resolve(m.path)
        try:
            facts = _read_model(path, m)
            info["sha"] = file_sha256(path)
            here = path.parent.resolve()  # external weights: another weights file is another cell
            info["external"] = {str(f.relative_to(here)): file_sha256(f) for f in external_data_files(path)}
            info["weights"] = _zoo_weights(path)
            for kind in ("evaluation", "calibration"):
                src, p = _data_path(sweep, m, kind)
                if src and p:
                    labels = src.labels if kind == "evaluation" else None
                    try:
                        # evaluation folders stay on disk (memory-mapped / per-sample files): only hashed here
                        lazy = kind == "evaluation"
                        ds = load_dataset(p, facts.input_names, labels, src.limit, role=kind, lazy=lazy)
                        check_against_model(ds, path, kind)
                    except QtbenchError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a data file numpy cannot parse
                        raise DataError(f"{kind} data {p}: cannot be read ({type(exc).__name__}: {exc})") from None
                    info["eval_sha" if kind == "evaluation" else "calib_sha"] = ds.sha256
                    if kind == "evaluation" or "sample" not in info:
                        info["sample"] = ds.batch(0, min(2, len(ds)))
            _check_runnable(sweep, m, facts)
            todo[m.display_name] = (str(path), _with_external(info["sha"], info["external"]), info.pop("sample", None))
        except QtbenchError as exc:
            info["error"], info["error_type"] = str(exc), type(exc)
        info.pop("sample", None)
        model_info[m.display_name] = info
    forget_onnx_graph()
    return Checked(model_info, todo)


def _check_runnable(sweep: Sweep, m: Any, facts: Any) -> None:
    """What every cell of this model would fail on, known from the sweep file and the graph alone."""
    has_eval = bool(_data_path(sweep, m, "evaluation")[1])
    has_calib = bool(_data_path(sweep, m, "calibration")[1])
    if not m.timing and not has_eval:
        raise ConfigError("models[].timing is false but there is no evaluation data to score: set `evaluation:`")
    if m.timing and not (has_eval or has_calib):
        raise ConfigError(
            "no evaluation or calibration data to time with: set `evaluation: {path: eval.npz}` (arrays named "
            "like the model's inputs, plus `labels` to score top-1)"
        )
    bs = sweep.measure.batch_size
    if m.timing and bs > 1 and not facts.dynamic_batch:
        raise ConfigError(f"measure.batch_size={bs} but the model's batch axis is fixed: use 1, or export it dynamic")


def _model_facts(sweep: Sweep, checked: Checked | None = None) -> dict[str, dict[str, Any]]:
    """Per model: :func:`preflight`'s facts (checked again when planning on its own) and intake's result."""
    checked = checked or _check_models(sweep)
    model_info = {name: dict(info) for name, info in checked.info.items()}
    for name, result in _intake_all(sweep, checked.todo).items():
        model_info[name]["intake"] = result
    forget_onnx_graph()
    return model_info


def _intake_all(sweep: Sweep, todo: dict[str, tuple[str, str, Any]]) -> dict[str, IntakeResult]:
    """Intake's normalised forms of the models (name → (path, sha, sample)), cached by content, all in one child
    with a time limit when cells are isolated: a model that crashes the ONNX tools costs its own cells only."""

    if not todo:
        return {}
    args = (todo, str(sweep.cache_path))
    if sweep.run.isolate:
        kind, value = call_isolated(normalise_many, args, sweep.run.timeout_s)
    else:
        try:
            kind, value = "ok", normalise_many(*args)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            kind, value = "error", f"{type(exc).__name__}: {exc}"
    out: dict[str, IntakeResult] = value if kind == "ok" else {}
    first = str(value).strip().splitlines()[0][:200] if kind != "ok" and str(value).strip() else kind
    for name, (path, sha, _sample) in todo.items():
        if name not in out:
            as_given = Variant(path, sha, [f"intake failed ({first}); compiling the model as given"])
            out[name] = IntakeResult(path, sha, as_given, as_given)
    return out


def _probe_backends(
    sweep: Sweep, cells: list[Any], call: Callable[..., tuple[str, Any]] | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Availability, version and per-spec support of every backend, each probed in a child with a time limit
    (``call``: how to run that child elsewhere, e.g. on a fleet board; same contract as ``call_isolated``)."""
    probes: dict[str, dict[str, Any]] = {}
    specs_by_backend: dict[str, list[Any]] = {}
    for _m, b, s in cells:
        specs_by_backend.setdefault(b.key, [])
        if s not in specs_by_backend[b.key]:
            specs_by_backend[b.key].append(s)

    entries = {b.key: b for _m, b, _s in cells}
    targets = {key: backends.resolve(b.name) for key, b in entries.items()}
    paths = tuple(sorted({str(sweep.resolve(m.path)) for m, _b, _s in cells}))

    def one(name: str) -> dict[str, Any]:
        b = entries[name]
        if sweep.run.isolate or call is not None:
            kind, value = (call or call_isolated)(
                _probe,
                (b.name, targets[name], b.options, specs_by_backend[name], paths),
                min(sweep.run.timeout_s, 4 * backends.PROBE_TIMEOUT_S),  # a probe that hangs costs 2 min at most
            )
            return value if kind == "ok" else {"available": False, "reason": f"probe failed: {value}"}
        try:
            return _probe(b.name, targets[name], b.options, specs_by_backend[name], paths)
        except Exception as exc:  # noqa: BLE001
            return {"available": False, "reason": f"probe failed: {type(exc).__name__}: {exc}"}

    if sweep.run.isolate and call is None and len(entries) > 1:
        # each probe is its own child, so they run side by side (importing the SDKs dominates a probe)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(entries), os.cpu_count() or 1, 4)) as pool:
            found = dict(zip(entries, pool.map(one, entries), strict=True))
    else:
        found = {name: one(name) for name in entries}
    for name in entries:
        if "config_error" in found[name]:
            raise ConfigError(found[name]["config_error"])
        probes[name] = found[name]
    return probes, targets


def plan(run: SweepRun, probe_call: Callable[..., tuple[str, Any]] | None = None) -> list[PlannedCell]:
    """Expand the matrix and decide, for each cell, whether it is reused, known already, or has to run
    (``probe_call``: where backends are probed, default a child process here)."""
    sweep, device, done, run_id = run.sweep, run.device, run.done, run.run_id
    cells = expand(sweep)
    model_info = _model_facts(sweep, run.checked)
    probes, targets = _probe_backends(sweep, cells, probe_call)
    m_protocol = {k: v for k, v in asdict(sweep.measure).items() if k not in ("cv_threshold",)}
    out: list[PlannedCell] = []
    groups: dict[tuple[Any, ...], list[PlannedCell]] = {}
    for idx, (m, b, s) in enumerate(cells):
        info, probe = model_info[m.display_name], probes[b.key]
        intake = info.get("intake")
        form = intake.variant(bool(probe.get("static_shapes"))) if intake is not None else None
        rewritten = form is not None and form.path != str(sweep.resolve(m.path))
        side_files = {
            **info.get("external", {}),
            **probe.get("artifact_inputs", {}).get(f"{sweep.resolve(m.path)}|{s.id}", {}),
        }
        key = cell_key(
            {
                "model_sha256": info["sha"],
                "model": m.display_name,
                "backend": b.key,
                "slug": b.name,
                "backend_version": probe.get("version", ""),
                "options": b.options,
                "device": device,
                "spec": s.id,
                "measure": m_protocol,
                "eval_sha256": info["eval_sha"],
                "calib_sha256": info["calib_sha"] if s.is_static else "",
                "output": m.output,
                **({} if m.timing else {"timed": False}),  # a fidelity-only row never stands in for a timed one
                **({"task": m.task} if m.task is not None else {}),  # another task → other metrics → another cell
                **({"artifact_inputs": side_files} if side_files else {}),  # a replaced .tflite is another cell
                **({"intake": form.sha256} if rewritten else {}),  # what was compiled is intake's rewrite
            }
        )
        base = {
            "record_id": uuid.uuid4().hex,
            "run_id": run_id,
            "sweep": sweep.name,
            "cell_key": key,
            "model": m.display_name,
            "model_sha256": info["sha"],
            "model_path": str(sweep.resolve(m.path)),
            "weights": info.get("weights", ""),
            "backend": b.key,
            "backend_slug": b.name,
            "backend_version": probe.get("version", ""),
            "device": device,
            "backend_options": json.dumps(b.options, sort_keys=True),
            "spec_id": s.id,
            "precision": s.precision,
            "weight_bits": s.weight_bits,
            "activation_bits": s.activation_bits,
            "scaling": "none" if s.is_float else s.scaling,
            "granularity": "" if s.is_float else s.granularity,
            "calibration": s.calibration if s.is_static else "",
            "weight_symmetric": s.weight_symmetric,
            "activation_symmetric": s.activation_symmetric,
            "calib_percentile": s.percentile if s.is_static and s.calibration == "percentile" else float("nan"),
            "calib_samples": s.calib_samples if s.is_static else 0,
            "quant_format": "" if s.is_float else s.format,
            "warmup": sweep.measure.warmup,
            "min_iterations": sweep.measure.iterations,
            "min_duration_s": sweep.measure.min_duration_s,
            "batch_size": sweep.measure.batch_size,
            "group": m.group_name,
            "seed": -1 if m.seed is None else m.seed,
            "timed": m.timing,
            "intake": "; ".join(form.notes) if form is not None else "",
            "intake_sha256": form.sha256 if rewritten else "",
        }
        label = f"{m.display_name} × {b.key} × {s.id}"
        cell = PlannedCell(idx, len(cells), label, key, base)
        if key in done and not sweep.run.rerun:
            cell.reused = True
        elif info["error"]:
            cell.outcome = CellResult("failed", info["error"])
        elif not probe.get("available"):
            cell.outcome = CellResult("unavailable", probe.get("reason", ""))
        elif probe["supports"].get(s.id):
            cell.outcome = CellResult("skipped", probe["supports"][s.id])
        else:
            ev_src, ev_path = _data_path(sweep, m, "evaluation")
            ca_src, ca_path = _data_path(sweep, m, "calibration")
            source_sha = _with_external(info["sha"], info.get("external", {}))
            model_sha = form.sha256 if rewritten else info["sha"]
            art_key = artifact_key(
                model_sha, s, probe["version"], b.options, info["calib_sha"], side_files, probe.get("identity", "")
            )
            cell.job = CellJob(
                form.path if rewritten else str(sweep.resolve(m.path)),
                form.sha256 if rewritten else source_sha,
                m.output,
                b.name,
                targets[b.key],
                b.options,
                s,
                sweep.measure,
                ev_src,
                ca_src,
                ev_path,
                ca_path,
                str(sweep.cache_path),
                art_key,
                sweep.device,
                timed=m.timing,
                task=m.task,
                source_path=str(sweep.resolve(m.path)) if rewritten else "",
                source_sha256=source_sha if rewritten else "",
                exclusive=bool(probe.get("exclusive")),
            )
            group = probe.get("build_groups", {}).get(s.id)
            if group:
                groups.setdefault((b.key, cell.job.model_path, info["sha"], ca_path, group), []).append(cell)
        out.append(cell)
    _link_siblings(groups)
    return out


def _link_siblings(groups: dict[tuple[Any, ...], list[PlannedCell]]) -> None:
    """Give each cell of a build group the other cells' (spec, artifact key), so whichever is built first may
    build them all in one calibration pass (see Backend.build_group)."""
    for cells in groups.values():
        jobs = {c.job.artifact_key: c.job for c in cells if c.job is not None}  # one entry per artifact
        if len(jobs) < 2:
            continue
        for c in cells:
            assert c.job is not None
            c.job.siblings = tuple((j.spec, k) for k, j in jobs.items() if k != c.job.artifact_key)


def _zoo_weights(path: Path) -> str:
    """The weights label of a zoo model ("random" when built without a state dict), so every row of it says so."""

    try:
        meta = {p.key: p.value for p in onnx_graph(path).metadata_props}
    except Exception:  # noqa: BLE001 - an unreadable model fails its cells elsewhere, with the reason
        return ""
    return "random" if meta.get(META_WEIGHTS) == "random" else ""


def check_sweep(sweep: Any) -> None:
    """:func:`check_options` for every backend of a sweep, in the planning process, before anything runs (the
    cells' own construction checks again, in their children)."""
    for b in sweep.backends:
        try:
            keys = backends.load_target(backends.resolve(b.name)).executable_options
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 - an adapter that fails to import is reported by its cells
            continue
        check_options(b.name, b.options, keys)

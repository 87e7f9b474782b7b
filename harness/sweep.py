"""Run a sweep: plan the cells, run each in a child process with a timeout, append rows to the results store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing as mp
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.cell import CellJob, CellResult, model_facts, run_cell
from harness.config import DataSource, ModelEntry, Sweep, load_sweep, parse_sweep
from harness.errors import ConfigError, QtbenchError
from harness.plan import cell_key, expand
from harness.records import Record
from harness.store import ResultsStore, load_results

RESUMABLE = ("ok", "skipped")  # statuses a re-run keeps; failed/timeout/unavailable cells are tried again
PACKAGES = ("qtbench", "numpy", "onnx", "onnxruntime", "pandas", "pyarrow", "torch", "openvino", "ai-edge-litert")


@dataclass(frozen=True)
class CellEvent:
    """What the progress callback receives after each cell."""

    index: int
    total: int
    label: str
    status: str
    message: str
    record: Record | None
    reused: bool


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def git_sha() -> tuple[str, bool]:
    """(sha, dirty) of the qtbench checkout, or ("", False) when not a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode:
            return "", False
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "", False


def environment() -> dict[str, Any]:
    """Versions of Python and the numerics stack, host facts and git sha: the run's reproducibility manifest."""
    from importlib.metadata import PackageNotFoundError, version

    from devices.host import device_id, host_info

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    sha, dirty = git_sha()
    return {
        "python": sys.version.split()[0],
        "packages": packages,
        "host": host_info(),
        "device": device_id(),
        "git_sha": sha,
        "git_dirty": dirty,
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------------------
_CTX: Any = None


def _context() -> Any:
    """forkserver on Linux (children start from a clean, pre-imported server: fast and thread-safe), else spawn."""
    global _CTX
    if _CTX is None:
        if sys.platform.startswith("linux"):
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(["harness.cell", "backends.ort", "numpy", "onnx", "onnxruntime"])
        else:  # pragma: no cover
            _CTX = mp.get_context("spawn")
    return _CTX


def _child(fn: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - report anything, including SystemExit from an SDK
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def call_isolated(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
    """Run ``fn(*args)`` in a child process: ('ok', value) | ('error', msg) | ('timeout', msg) | ('died', msg)."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, send), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout_s):
            try:
                return recv.recv()
            except EOFError:
                pass
        else:
            proc.kill()
            return "timeout", f"cell exceeded run.timeout_s={timeout_s:g}s and was killed"
    finally:
        proc.join(10)
        recv.close()
    code = proc.exitcode
    sig = ""
    if code is not None and code < 0:
        import signal

        sig = f" ({signal.Signals(-code).name})" if -code in signal.Signals._value2member_map_ else ""
    return "died", f"child process died with exit code {code}{sig} before returning a result (SDK crash?)"


def _probe(slug: str, target: str, options: dict[str, Any], specs: list[Any]) -> dict[str, Any]:
    """Child side of backend planning: availability, version and per-spec support."""
    import backends

    try:
        backend = backends.create(slug, options, target)
    except ConfigError as exc:
        return {"config_error": str(exc)}
    av = backend.availability()
    out = {"available": av.available, "reason": av.reason, "version": "", "supports": {}}
    if av.available:
        out["version"] = ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))
        out["supports"] = {s.id: backend.supports(s) for s in specs}
    return out


# ---------------------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------------------
def _data_path(sweep: Sweep, model: ModelEntry, kind: str) -> tuple[DataSource | None, str | None]:
    src: DataSource | None = getattr(model, kind) or getattr(sweep, kind)
    return src, (str(sweep.resolve(src.path)) if src else None)


def run_sweep(
    config: Sweep | dict[str, Any] | str | Path,
    progress: Callable[[CellEvent], None] | None = None,
) -> Any:
    """Run every cell of ``config`` (a Sweep, a mapping, or a YAML path) and return the sweep's rows.

    Rows already recorded under the same cell key (status ok/skipped) are reused unless ``run.rerun``.
    The returned DataFrame holds the latest row per cell of this sweep's results folder.
    """
    from harness.data import load_dataset

    if isinstance(config, str | Path):
        sweep = load_sweep(config)
    elif isinstance(config, dict):
        sweep = parse_sweep(config)
    else:
        sweep = config
    store = ResultsStore(sweep.results_path)
    existing = store.rows()
    done = {k for k, s in zip(existing["cell_key"], existing["status"], strict=True) if s in RESUMABLE}
    env = environment()
    device = env["device"]
    sha = env["git_sha"][:7] or "nogit"
    run_id = (
        f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{sha}{'-dirty' if env['git_dirty'] else ''}-{uuid.uuid4().hex[:6]}"
    )
    started = utc_now()
    store.record_run(
        {
            "run_id": run_id,
            "started_utc": started,
            "finished_utc": None,
            "config": sweep.to_dict(),
            "config_hash": sweep.config_hash(),
            "environment": env,
            "seed": sweep.run.seed,
        }
    )

    cells = expand(sweep)
    # -- per-model facts (a bad model or bad data costs that model's cells, not the sweep) ----------------
    model_info: dict[str, dict[str, Any]] = {}
    for m in sweep.models:
        info: dict[str, Any] = {"error": None, "sha": "", "eval_sha": "", "calib_sha": ""}
        path = sweep.resolve(m.path)
        try:
            if not path.is_file():
                raise ConfigError(f"model file {path} does not exist (models[].path is relative to the sweep file)")
            info["sha"] = file_sha256(path)
            facts = model_facts(path)
            if m.output and m.output not in facts.output_names:
                raise ConfigError(f"model {m.display_name}: output {m.output!r} not in {facts.output_names}")
            for kind in ("evaluation", "calibration"):
                src, p = _data_path(sweep, m, kind)
                if src and p:
                    labels = src.labels if kind == "evaluation" else None
                    ds = load_dataset(p, facts.input_names, labels, src.limit)
                    info["eval_sha" if kind == "evaluation" else "calib_sha"] = ds.sha256
        except QtbenchError as exc:
            info["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - e.g. a corrupt ONNX file
            info["error"] = f"cannot read model {path}: {type(exc).__name__}: {exc}"
        model_info[m.display_name] = info

    # -- per-backend probe ---------------------------------------------------------------------------------
    probes: dict[str, dict[str, Any]] = {}
    specs_by_backend: dict[str, list[Any]] = {}
    for _m, b, s in cells:
        specs_by_backend.setdefault(b.key, [])
        if s not in specs_by_backend[b.key]:
            specs_by_backend[b.key].append(s)
    import backends

    entries = {b.key: b for _m, b, _s in cells}
    targets = {key: backends.resolve(b.name) for key, b in entries.items()}
    for name, b in entries.items():
        if sweep.run.isolate:
            kind, value = call_isolated(_probe, (b.name, targets[name], b.options, specs_by_backend[name]), 300)
            probe = value if kind == "ok" else {"available": False, "reason": f"probe failed: {value}"}
        else:
            try:
                probe = _probe(b.name, targets[name], b.options, specs_by_backend[name])
            except Exception as exc:  # noqa: BLE001
                probe = {"available": False, "reason": f"probe failed: {type(exc).__name__}: {exc}"}
        if "config_error" in probe:
            raise ConfigError(probe["config_error"])
        probes[name] = probe

    # -- cells -----------------------------------------------------------------------------------------------
    m_protocol = {k: v for k, v in asdict(sweep.measure).items() if k not in ("cv_threshold",)}
    for idx, (m, b, s) in enumerate(cells):
        info, probe = model_info[m.display_name], probes[b.key]
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
        }
        label = f"{m.display_name} × {b.key} × {s.id}"
        if key in done and not sweep.run.rerun:
            if progress:
                progress(CellEvent(idx, len(cells), label, "reused", "already recorded", None, True))
            continue
        samples, preds, labels = None, None, None
        if info["error"]:
            result = CellResult("failed", info["error"])
        elif not probe.get("available"):
            result = CellResult("unavailable", probe.get("reason", ""))
        elif probe["supports"].get(s.id):
            result = CellResult("skipped", probe["supports"][s.id])
        else:
            ev_src, ev_path = _data_path(sweep, m, "evaluation")
            ca_src, ca_path = _data_path(sweep, m, "calibration")
            artifact_key = cell_key(
                {
                    "model": info["sha"],
                    "spec": s.id,
                    "backend_version": probe["version"],
                    "options": b.options,
                    "calib": info["calib_sha"] if s.is_static else "",
                }
            )
            job = CellJob(
                str(sweep.resolve(m.path)),
                info["sha"],
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
                artifact_key,
                sweep.device,
            )
            t0 = time.perf_counter()
            if sweep.run.isolate:
                kind, value = call_isolated(run_cell, (job,), sweep.run.timeout_s)
                if kind == "ok":
                    result = value
                else:
                    result = CellResult("timeout" if kind == "timeout" else "failed", value)
                    result.fields["cell_wall_s"] = time.perf_counter() - t0
            else:
                result = run_cell(job)
            samples, preds, labels = result.samples, result.predictions, result.labels
        record = Record(
            **base,
            created_utc=utc_now(),
            status=result.status,
            status_message=result.message,
            **_known_fields(result.fields),
        )
        store.write_cell(run_id, idx, record, samples, preds, labels)
        if progress:
            progress(CellEvent(idx, len(cells), label, record.status, record.status_message, record, False))
    store.consolidate(run_id)
    entry = next(r for r in store.manifest()["runs"] if r["run_id"] == run_id)
    store.record_run({**entry, "finished_utc": utc_now(), "cells": len(cells)})
    return load_results(store.root)


_RECORD_FIELDS = set(Record.__dataclass_fields__)


def _known_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Result fields that are Record columns; anything else an adapter adds lives in backend_extra."""
    return {k: v for k, v in fields.items() if k in _RECORD_FIELDS}

"""Run a sweep: plan the cells, run each in a child process with a timeout, append rows to the results store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import isolate
from harness.cell import (
    CellJob,
    CellResult,
    compile_cell,
    compile_cell_on,
    forget_onnx_graph,
    model_facts,
    onnx_graph,
    preload,
    run_cell,
)
from harness.config import DataSource, ModelEntry, Sweep, load_sweep, parse_sweep
from harness.errors import ConfigError, DataError, QtbenchError, ResultsError, UserError
from harness.intake import IntakeResult, Variant, file_sha256
from harness.plan import artifact_key as plan_artifact_key
from harness.plan import cell_key, expand
from harness.records import Record
from harness.store import ResultsStore, latest_rows, load_results, os_error_message

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


def git_sha(where: Path | None = None) -> tuple[str, bool]:
    """(sha, dirty) of the git checkout holding ``where`` (default: qtbench itself), or ("", False) when none."""
    here = (where or Path(__file__)).resolve()
    here = here if here.is_dir() else here.parent
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


def environment(sweep_dir: Path | None = None) -> dict[str, Any]:
    """Versions of Python and the numerics stack, host facts and git shas: the run's reproducibility manifest.

    ``git_sha`` is qtbench's own checkout (empty for a pip-installed qtbench, whose ``qtbench_version`` then
    identifies it); ``sweep_git_sha`` is the repository holding the sweep file, when there is one.
    """
    from importlib.metadata import PackageNotFoundError, version

    from devices.host import device_id, host_info
    from harness import __version__

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    sha, dirty = git_sha()
    env = {
        "python": sys.version.split()[0],
        "qtbench_version": __version__,
        "packages": packages,
        "host": host_info(),
        "device": device_id(),
        "git_sha": sha,
        "git_dirty": dirty,
    }
    if sweep_dir is not None:
        env["sweep_git_sha"], env["sweep_git_dirty"] = git_sha(sweep_dir)
    return env


def _process_identity() -> dict[str, Any]:
    """pid, host and process start time: enough for a later sweep to tell whether this run is still alive."""
    import socket

    import psutil

    return {"pid": os.getpid(), "hostname": socket.gethostname(), "pid_started": psutil.Process().create_time()}


def run_is_alive(entry: dict[str, Any]) -> bool:
    """Whether the process that started a manifest run still runs (unknown hosts count as alive)."""
    import socket

    import psutil

    if "pid" not in entry:  # written by a qtbench that predates run recovery: it cannot still be running
        return False
    if entry.get("hostname") != socket.gethostname():
        return True  # another machine's run in a shared folder: not ours to judge
    try:
        return abs(psutil.Process(int(entry["pid"])).create_time() - float(entry.get("pid_started", 0))) < 1.0
    except (psutil.Error, ValueError):
        return False


def _with_external(sha: str, external: dict[str, str]) -> str:
    """The identity a cell's job gives its model: the .onnx file's sha, folded with its external weights' (caches
    keyed by it, e.g. the FP32 reference outputs, must not outlive a changed weights file)."""
    if not external:
        return sha
    return hashlib.sha256(json.dumps([sha, sorted(external.items())]).encode()).hexdigest()


def external_data_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model's initializers name (inside the model's folder): they hold its
    weights, so they key its cells and travel with it to fleet boards."""
    import onnx

    try:
        graph = onnx_graph(path).graph
    except Exception:  # noqa: BLE001 - an unreadable model fails its cells elsewhere, with the reason
        return []
    here = path.parent.resolve()
    out: list[Path] = []
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            f = (here / loc).resolve()
            if loc and f.is_file() and f.is_relative_to(here) and f not in out:
                out.append(f)
    return out


# ---------------------------------------------------------------------------------------------------------
# Child processes (harness.isolate): re-exported here for callers that import them from the sweep
# ---------------------------------------------------------------------------------------------------------
call_isolated = isolate.call_isolated


def _probe(
    slug: str, target: str, options: dict[str, Any], specs: list[Any], model_paths: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Child side of backend planning: availability, version, per-spec support, and the files besides each model
    that decide a cell's artifact (e.g. a pre-converted .tflite), by hash, keyed "<model path>|<spec id>"."""
    import backends

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
        "exclusive": bool(type(backend).exclusive_device),
        "identity": "",
    }
    if av.available:
        out["version"] = ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))
        if not type(backend).artifact_portable:
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
class SweepRun:
    """One run of a sweep into its results folder: the identity every row of the run carries."""

    sweep: Sweep
    store: ResultsStore
    run_id: str
    device: str
    done: set[str]
    checked: Checked | None = None  # preflight's facts, so planning does not read the data twice


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


class Executor:
    """Runs planned cells and yields each one's result as it finishes. The sweep plans and stores; where and how
    a cell is compiled and measured is the executor's business (local child processes here; other executors,
    e.g. a fleet of boards, plug in through :func:`run_sweep`'s ``executor``)."""

    #: called as ``(built, total, failed)`` while a compile phase runs, after each artifact (None: silent); the
    #: CLI prints a throttled line from it so a long compile phase is not minutes of silence
    compile_progress: Callable[[int, int, int], None] | None = None

    def plan(self, run: SweepRun) -> list[PlannedCell]:
        """The cells of this run (a fleet plans per board; this machine plans once)."""
        return plan(run)

    def run(self, cells: list[PlannedCell], sweep: Sweep) -> Iterator[tuple[PlannedCell, CellResult]]:
        raise NotImplementedError


class LocalExecutor(Executor):
    """This machine: compile every cell's artifact first, off the clock (``run.compile_workers`` child processes
    at a time, each a warm worker that builds cell after cell unless ``run.warm_workers`` is off), then measure
    cells one at a time with nothing else of the sweep running. A cell's quality pass runs in the compile phase
    too, right after its build, where its backend allows (``Backend.scores_off_clock``): outputs do not depend
    on what else runs, so the measure phase is left with the timed loop alone (rows say ``eval_phase``).

    With ``run.warm_workers`` (the default) the measure phase keeps one warm child per backend
    (:class:`harness.isolate.Worker`) for its consecutive cells; a crash or timeout costs its cell and the next
    cell gets a fresh child. At most ``WARM_WORKERS`` idle children are kept; the rest are ended.
    """

    WARM_WORKERS = 2

    def __init__(self) -> None:
        self._workers: dict[tuple[str, str, str], isolate.Worker] | None = None  # only while run() is going

    def run(self, cells: list[PlannedCell], sweep: Sweep) -> Iterator[tuple[PlannedCell, CellResult]]:
        todo = [c for c in cells if c.job is not None]
        self._workers = {}
        try:
            warming = self._preload(todo, sweep)
            try:
                compiled = self.compile_all(todo, sweep)
            finally:
                if warming is not None:
                    warming.join()
            for cell in cells:
                if cell.job is None:
                    assert cell.outcome is not None
                    yield cell, cell.outcome
                    continue
                built = compiled.get(cell.index)
                if built is not None and built.status != "ok":  # compile failed: that is the cell's outcome
                    yield cell, built
                    continue
                yield cell, self.measure(cell, sweep, built)
        finally:
            workers, self._workers = self._workers, None
            for w in workers.values():
                w.close()

    def _preload(self, cells: list[PlannedCell], sweep: Sweep) -> Any:
        """Start the measure phase's first warm workers (one per backend, in measure order, up to WARM_WORKERS)
        and import their backends while the compile phase runs; returns the thread to join before measuring."""
        if not (sweep.run.isolate and sweep.run.warm_workers and sweep.run.compile_first and cells):
            return None
        import threading

        first: dict[tuple[str, str, str], CellJob] = {}
        for c in cells:
            assert c.job is not None
            first.setdefault(self._key(c.job), c.job)
        jobs = list(first.items())[: self.WARM_WORKERS]
        workers = self._workers
        assert workers is not None
        for key, _job in reversed(jobs):  # least recently used first: the first backend to measure is kept last
            workers[key] = isolate.Worker(sweep.run.worker_cells)

        def warm() -> None:
            for key, job in jobs:
                workers[key].call(preload, (job,), sweep.run.timeout_s)

        thread = threading.Thread(target=warm, name="qtbench-preload", daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _key(job: CellJob) -> tuple[str, str, str]:
        return job.backend, job.backend_target, json.dumps(job.backend_options, sort_keys=True, default=str)

    def _worker(self, job: CellJob, sweep: Sweep) -> isolate.Worker | None:
        """The warm child for this cell's backend (least recently used ones ended past WARM_WORKERS)."""
        if self._workers is None or not sweep.run.warm_workers:
            return None
        key = self._key(job)
        worker = self._workers.pop(key, None) or isolate.Worker(sweep.run.worker_cells)
        self._workers[key] = worker  # most recent last
        while len(self._workers) > self.WARM_WORKERS:
            self._workers.pop(next(iter(self._workers))).close()
        return worker

    def compile_all(self, cells: list[PlannedCell], sweep: Sweep) -> dict[int, CellResult]:
        """Build artifacts into the cache; one entry per cell (status ok with compile facts, or the failure)."""
        if not sweep.run.compile_first or not cells:
            return {}
        workers = sweep.run.compile_workers or self.auto_workers(cells)
        jobs = {c.index: c.job for c in self.compile_order(cells)}
        if not sweep.run.isolate:
            return {i: compile_cell(j, score=True) for i, j in jobs.items()}

        import threading

        local = threading.local()  # each pool thread drives one warm child (or a fresh child per cell)
        started: list[isolate.Worker] = []
        shares = self.core_shares(workers)
        taken = iter(range(workers))
        lock = threading.Lock()

        def one(item: tuple[int, CellJob]) -> tuple[int, CellResult]:
            i, job = item
            t0 = time.perf_counter()
            if getattr(local, "slot", None) is None:
                with lock:
                    local.slot = next(taken)
            cores = shares[local.slot] if shares else None
            if sweep.run.warm_workers:
                if getattr(local, "worker", None) is None:
                    local.worker = isolate.Worker(sweep.run.worker_cells)
                    started.append(local.worker)
                call = local.worker.call
            else:
                call = call_isolated
            kind, value = call(compile_cell_on, (job, cores, True), sweep.run.timeout_s)
            committed = kind == "timeout" and (job.workdir / "notes.json").is_file()
            if job.eval_path and (kind == "died" or committed):
                # the quality pass runs in the same call, after the build committed its artifact: build again
                # without it (a cache hit when it was the pass that failed) and leave the pass to the measure
                # phase, which reports what happened as the cell's status; a build that timed out before its
                # commit is not tried again
                kind, value = call(compile_cell_on, (job, cores, False), sweep.run.timeout_s)
            if kind != "ok":
                status = "timeout" if kind == "timeout" else "failed"
                return i, CellResult(status, f"compile: {value}", {"cell_wall_s": time.perf_counter() - t0})
            return i, value

        from concurrent.futures import ThreadPoolExecutor

        pending = list(jobs.items())
        busy: dict[tuple[str, str], int] = {}
        results: dict[int, CellResult] = {}
        failed = [0]  # builds that failed or timed out so far (for compile_progress)
        exclusive: set[str] = set()  # backends with an exclusive-device build running now
        freed = threading.Condition(lock)

        def group(job: CellJob) -> tuple[str, str]:
            return job.model_path, job.backend

        def take() -> tuple[int, CellJob] | None:
            """The next cell in compile order whose (model, backend) has no cell building now, else the next one:
            cells of one model and backend share a calibration pass, so a second worker would wait on its lock
            while other models' cells could be building (measured: ~10 s of one idle worker at paper scale).
            A cell of an exclusive-device backend (a GPU) waits while another of that backend builds."""
            with freed:
                while pending:
                    free = [k for k, (_i, j) in enumerate(pending) if not (j.exclusive and j.backend in exclusive)]
                    if free:
                        k = next((k for k in free if not busy.get(group(pending[k][1]))), free[0])
                        item = pending.pop(k)
                        busy[group(item[1])] = busy.get(group(item[1]), 0) + 1
                        if item[1].exclusive:
                            exclusive.add(item[1].backend)
                        return item
                    freed.wait()  # only exclusive cells are left and their device is busy
                return None

        def drain() -> None:
            while (item := take()) is not None:
                try:
                    i, value = one(item)
                    results[i] = value
                finally:
                    with freed:
                        busy[group(item[1])] -= 1
                        if item[1].exclusive:
                            exclusive.discard(item[1].backend)
                        failed[0] += item[0] in results and results[item[0]].status in ("failed", "timeout")
                        built = len(results)
                        freed.notify_all()
                if self.compile_progress is not None:
                    self.compile_progress(built, len(jobs), failed[0])

        try:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for f in [pool.submit(drain) for _ in range(max(1, workers))]:
                    f.result()
            return {i: results[i] for i in jobs}
        finally:
            for w in started:  # the compile phase's children end before any cell is timed
                w.close()

    @staticmethod
    def compile_order(cells: list[PlannedCell]) -> list[PlannedCell]:
        """Cells in the order the compile workers take them: round-robin over (model, backend), largest model
        first. Cells of one model and backend share one calibration pass (the first collects, the rest wait on
        its lock), so workers that start on different models and backends all do useful work at once. A build
        group's first cell builds every sibling's artifact too: it goes first (the longest jobs start first, so
        none is left running alone at the end) and its siblings go last (cache hits by then)."""
        groups: dict[tuple[str, str], list[PlannedCell]] = {}
        for c in cells:
            assert c.job is not None
            groups.setdefault((c.job.model_path, c.job.backend), []).append(c)

        def size(key: tuple[str, str]) -> int:
            try:
                return Path(key[0]).stat().st_size
            except OSError:
                return 0

        queues = [groups[k] for k in sorted(groups, key=size, reverse=True)]
        out: list[PlannedCell] = []
        later: list[PlannedCell] = []  # cells a sibling built before them: cache hits, so they go last
        leaders: set[str] = set()
        while any(queues):
            for q in queues:
                if q:
                    c = q.pop(0)
                    assert c.job is not None
                    if c.job.siblings and any(k in leaders for _s, k in c.job.siblings):
                        later.append(c)
                        continue
                    leaders.add(c.job.artifact_key)
                    out.append(c)
        leading = [c for c in out if c.job is not None and c.job.siblings]  # builds several artifacts: start early
        return leading + [c for c in out if c not in leading] + later

    @staticmethod
    def core_shares(workers: int) -> list[set[int]]:
        """Disjoint CPU sets, one per compile worker, from the cores this process may use (empty when there are
        fewer cores than workers, or no affinity on this OS). SDKs size their thread pools from the set they
        see, so parallel builds do not oversubscribe the cores: on 2 cores, two workers' ORT calibration and
        OpenVINO/NNCF inference each spinning 2 threads made the paper-scale compile phase ~5 % slower."""
        if not hasattr(os, "sched_getaffinity"):
            return []
        cpus = sorted(os.sched_getaffinity(0))
        share = len(cpus) // max(1, workers)
        if workers < 2 or share < 1:
            return []
        return [set(cpus[k * share : (k + 1) * share]) for k in range(workers)]

    @staticmethod
    def auto_workers(cells: list[PlannedCell]) -> int:
        """min(4, cores), and fewer when memory is short: budget ~40× the largest model (calibration graphs hold
        every activation, a QDQ copy and the session) plus 0.5 GB per worker."""
        import psutil

        largest = max(Path(c.job.model_path).stat().st_size for c in cells if c.job is not None)
        per_worker = 40 * largest + (512 << 20)
        by_memory = max(1, int(psutil.virtual_memory().available * 0.7 // per_worker))
        return max(1, min(4, os.cpu_count() or 1, by_memory))

    def measure(self, cell: PlannedCell, sweep: Sweep, built: CellResult | None) -> CellResult:
        job = cell.job
        assert job is not None
        t0 = time.perf_counter()
        scoring = built.scoring if built is not None else None  # the quality pass the compile phase ran
        if sweep.run.isolate:
            worker = self._worker(job, sweep)
            if worker is not None:
                kind, value = worker.call(run_cell, (job, scoring), sweep.run.timeout_s)
            else:
                kind, value = call_isolated(run_cell, (job, scoring), sweep.run.timeout_s)
            if kind == "ok":
                result = value
            else:
                result = CellResult("timeout" if kind == "timeout" else "failed", value)
                result.fields["cell_wall_s"] = time.perf_counter() - t0
        else:
            result = run_cell(job, scoring)
        if built is not None and result.status == "ok":
            # the artifact was built in the compile phase: report that build, not the cache hit it left behind
            result.fields.update({k: v for k, v in built.fields.items() if k in ("compile_s", "cache_hit")})
        return result


def _load(config: Sweep | dict[str, Any] | str | Path) -> Sweep:
    if isinstance(config, str | Path):
        return load_sweep(config)
    if isinstance(config, dict):
        return parse_sweep(config)
    return config


def open_run(sweep: Sweep) -> SweepRun:
    """Check the folder, fold what dead runs left, and record this run in the manifest before any cell runs."""
    store = ResultsStore(sweep.results_path)
    store.check_writable()
    store.recover_stale_runs(run_is_alive)
    # only a cell's latest row can be reused: after a newer result under another key (say a failure with other
    # options), going back to the old key runs the cell again rather than leaving the views on the failure
    existing = latest_rows(store.rows())
    done = {k for k, s in zip(existing["cell_key"], existing["status"], strict=True) if s in RESUMABLE}
    env = environment(Path(sweep.base_dir))
    sha = env["git_sha"][:7] or "nogit"
    run_id = (
        f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{sha}{'-dirty' if env['git_dirty'] else ''}-{uuid.uuid4().hex[:6]}"
    )
    store.record_run(
        {
            "run_id": run_id,
            "started_utc": utc_now(),
            "finished_utc": None,
            "config": sweep.to_dict(),
            "config_hash": sweep.config_hash(),
            "environment": env,
            **({"board_id": sweep.run.board_id} if sweep.run.board_id else {}),
            "seed": sweep.run.seed,
            **_process_identity(),
        }
    )
    return SweepRun(sweep, store, run_id, sweep.run.board_id or env["device"], done)


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
        import backends

        for b in sweep.backends:
            backends.resolve(b.name)
        from harness.trust import check_sweep

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
    from harness.data import check_against_model, load_dataset

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
    from harness.intake import normalise_many

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
    import backends

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
        # each probe is its own child, so they run side by side (SDK imports dominate: ~1-2 s per backend)
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
            artifact_key = plan_artifact_key(
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
                artifact_key,
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


def store_result(run: SweepRun, cell: PlannedCell, result: CellResult) -> Record:
    """One row (and its raw samples and predictions) into the run's parts, atomically."""
    record = Record(
        **cell.base,
        created_utc=utc_now(),
        status=result.status,
        status_message=result.message,
        **_known_fields(result.fields),
    )
    try:
        run.store.write_cell(run.run_id, cell.index, record, result.samples, result.predictions, result.labels)
    except OSError as exc:  # disk full, folder removed or made read-only mid-sweep: stop, keep what is saved
        raise ResultsError(
            os_error_message(exc, f"cannot save cell {cell.label}; earlier cells of this run are saved")
        ) from None
    return record


def run_sweep(
    config: Sweep | dict[str, Any] | str | Path,
    progress: Callable[[CellEvent], None] | None = None,
    executor: Executor | None = None,
    compile_progress: Callable[[int, int, int], None] | None = None,
) -> Any:
    """Run every cell of ``config`` (a Sweep, a mapping, or a YAML path) and return the sweep's rows.

    Phases: open the run → plan the cells → the executor compiles and measures → each result is stored as it
    arrives → the run is closed. Rows already recorded under the same cell key (status ok/skipped) are reused
    unless ``run.rerun``. The returned DataFrame holds the latest row per cell of this sweep's results folder.
    """
    sweep = _load(config)
    if executor is None and sweep.run.executor == "ray":
        from harness.fleet import RayExecutor  # imports ray lazily; nothing else in the harness knows it

        executor = RayExecutor.from_sweep(sweep)
    executor = executor or LocalExecutor()
    if compile_progress is not None:
        executor.compile_progress = compile_progress
    checked = preflight(sweep)  # a user's mistake stops here: exit 2, nothing written
    run = open_run(sweep)
    run.checked = checked
    cells: list[PlannedCell] = []
    try:
        with isolate.interruptible():  # Ctrl-C / SIGTERM: every child group killed at once, whatever the phase
            cells = executor.plan(run)
            for cell in cells:
                if cell.reused and progress:
                    progress(CellEvent(cell.index, cell.total, cell.label, "reused", "already recorded", None, True))
            todo = [c for c in cells if not c.reused]
            for cell, result in executor.run(todo, sweep):
                record = store_result(run, cell, result)
                if progress:
                    msg = record.status_message
                    progress(CellEvent(cell.index, cell.total, cell.label, record.status, msg, record, False))
    except KeyboardInterrupt:
        # cells that finished are saved; the one that was running has no row (a re-run measures it)
        run.store.finish_run(run.run_id, finished_utc=utc_now(), cells=len(cells), interrupted=True)
        raise
    run.store.finish_run(run.run_id, finished_utc=utc_now(), cells=len(cells))
    df = load_results(run.store.root)
    df.attrs["cell_keys"] = [c.key for c in cells]  # this sweep's cells, for its exit status and summary
    return df


def _zoo_weights(path: Path) -> str:
    """The weights label of a zoo model ("random" when built without a state dict), so every row of it says so."""
    from harness.zoo import META_WEIGHTS

    try:
        meta = {p.key: p.value for p in onnx_graph(path).metadata_props}
    except Exception:  # noqa: BLE001 - an unreadable model fails its cells elsewhere, with the reason
        return ""
    return "random" if meta.get(META_WEIGHTS) == "random" else ""


_RECORD_FIELDS = set(Record.__dataclass_fields__)


def _known_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Result fields that are Record columns; anything else an adapter adds lives in backend_extra."""
    return {k: v for k, v in fields.items() if k in _RECORD_FIELDS}

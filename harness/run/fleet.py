"""Sweeps over a fleet of edge boards on a Ray cluster (``run.executor: ray``; ``pip install 'qtbench[fleet]'``).

Each board is a Ray node that advertises one unit of a custom resource, ``board:<id>``. The submitting process
plans cells per board × backend the board offers (backends are probed *on the board*, against the model files
shipped there), ships the model and data files through Ray's object store (no shared file system needed), and
runs every cell as a Ray task that asks for the board's whole resource: one cell at a time per board, and a
board busy with another user's sweep is waited for, never shared. Inside that task the cell is measured exactly
as on this machine, by :class:`qtbench.harness.run.sweep.LocalExecutor` (child processes with the sweep's timeout).

Phases: plan (per board) → compile → measure (on the board, exclusively) → store (this process). Compilation
happens in the board's task by default; with ``run.compile_on: <resource>`` (or a fleet file's per-board
``compile_on``) it runs first, off the boards, on nodes advertising that host-class resource (several at once,
one per unit), once per artifact; the artifact's cache entry travels as a tar through the object store into the
board's artifact cache, so the board's measure finds a cache hit. Rows say where their artifact was compiled
(``backend_extra.compiled_on``, and a note). Results come back to the submitting process and go through the
normal store, so resume, ``show``, ``report``, ``check`` and ``qtbench merge`` work unchanged; each row's
``device`` is its board id, which is part of the cell key.

A board whose node dies mid-cell gives that cell (and the cells still queued for it) ``failed: board lost``;
failed cells are measured again by the next run. Ray is imported here only, lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import sys
import tarfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench import backends
from qtbench.backends.base import BUILD_LOCK, MACHINE_LOCAL
from qtbench.devices.host import device_id
from qtbench.harness.core.config import Sweep, load_yaml
from qtbench.harness.core.errors import ConfigError, UserError, one_line
from qtbench.harness.core.isolate import call_isolated
from qtbench.harness.core.version import __version__
from qtbench.harness.run.cell import CellJob, CellResult, compile_cell
from qtbench.harness.run.executors import Executor, LocalExecutor
from qtbench.harness.run.manifest import SweepRun, external_data_files
from qtbench.harness.run.plan import PlannedCell, _probe, plan

RESOURCE_PREFIX = "board:"
FLEET_DIR_ENV = "QTBENCH_FLEET_DIR"  # where a board keeps shipped inputs and its artifact cache
KEEP_ENV = "QTBENCH_FLEET_KEEP_MB"  # per board (or compile host): shipped inputs kept beyond this are evicted, LRU
KEEP_MB_DEFAULT = 2048
COMPILE_FAILED = ("failed", "timeout", "skipped")  # a host compile ending so is the cell's outcome, as locally
LOST_ERRORS = ("NodeDiedError", "WorkerCrashedError", "ObjectLostError", "OwnerDiedError", "LocalRayletDiedError")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(
            "run.executor: ray needs Ray: pip install 'qtbench[fleet]' (same version on every node)"
        ) from None
    return ray


# ---------------------------------------------------------------------------------------------------------
# The fleet: boards and how to reach them
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Board:
    """One board: its id (rows' ``device``), the Ray resource its node advertises, the backends it offers."""

    id: str
    resource: str
    backends: tuple[str, ...] | None = None  # None: every backend of the sweep (probed on the board)
    node_id: str = ""  # the live Ray node advertising ``resource`` ("" when none does)
    compile_on: str | None = None  # "board" or a host-class resource; None: the sweep's run.compile_on


@dataclass(frozen=True)
class Fleet:
    address: str | None
    boards: tuple[Board, ...] = ()  # empty: discovered from the cluster's board:<id> resources
    source: str = ""


def load_fleet(spec: str, base_dir: str | Path = ".") -> Fleet:
    """A fleet file (YAML: ``address:``, ``boards: {id: {resource, backends, compile_on}}``) or a bare cluster
    address."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        if spec.endswith((".yaml", ".yml", ".json")):
            raise ConfigError(f"run.fleet: fleet file {path} does not exist (relative paths are from the sweep file)")
        return Fleet(address=spec, source=spec)

    data = load_yaml(path.read_text(encoding="utf-8", errors="replace"), f"fleet file {path}") or {}
    if not isinstance(data, dict) or set(data) - {"address", "boards"}:
        raise ConfigError(f"fleet file {path}: expected keys address, boards; got {sorted(data)}")
    boards = []
    for bid, entry in (data.get("boards") or {}).items():
        entry = entry or {}
        where = f"fleet file {path}: boards.{bid}"
        if not isinstance(entry, dict) or set(entry) - {"resource", "backends", "compile_on"}:
            raise ConfigError(f"{where}: expected keys resource, backends, compile_on")
        offered = entry.get("backends")
        if offered is not None and (not isinstance(offered, list) or not all(isinstance(b, str) for b in offered)):
            raise ConfigError(f"{where}.backends: a list of backend slugs or labels, e.g. [ort, rknn]")
        compile_on = entry.get("compile_on")
        if compile_on is not None and (not isinstance(compile_on, str) or not compile_on.strip()):
            raise ConfigError(f"{where}.compile_on: board, or the Ray resource of a compile host (toolchain:x86)")
        resource = str(entry.get("resource") or f"{RESOURCE_PREFIX}{bid}")
        boards.append(Board(str(bid), resource, tuple(offered) if offered else None, "", compile_on))
    return Fleet(address=data.get("address"), boards=tuple(boards), source=str(path))


def connect(address: str | None) -> Any:
    """Join the cluster once per process (an already initialised Ray, e.g. a test's cluster, is used as is)."""
    ray = _ray()
    if not ray.is_initialized():
        if not address:
            raise ConfigError(
                "run.fleet: no cluster address: pass --fleet ray://HEAD:10001 or set address: in the file"
            )

        last: Exception | None = None
        for attempt in range(3):  # Ray Client's proxy starts one server per client; on a loaded head that start
            try:  # can fail once ("ZombieProcess" from its own bookkeeping) and succeed on the next connection
                ray.init(address=address, log_to_driver=False, logging_level="warning")
                return ray
            except (ConnectionError, RuntimeError, ValueError) as exc:
                last = exc
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if attempt < 2:  # no wait after the last try
                    time.sleep(2.0 * (attempt + 1))
        raise UserError(
            f"run.fleet: cannot reach the Ray cluster at {address} ({one_line(last)}): check that the head runs "
            "(`ray status` on it), the address and port (--ray-client-server-port, default 10001), and that this "
            "host has the cluster's Ray and Python versions"
        ) from None
    return ray


def live_boards(fleet: Fleet) -> list[Board]:
    """The fleet's boards, each with the live node that advertises its resource (``node_id`` "" when none)."""
    ray = _ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    by_resource = {r: n["NodeID"] for n in nodes for r in n.get("Resources", {}) if r.startswith(RESOURCE_PREFIX)}
    if fleet.boards:
        return [dataclasses.replace(b, node_id=by_resource.get(b.resource, "")) for b in fleet.boards]
    return [Board(r[len(RESOURCE_PREFIX) :], r, None, nid) for r, nid in sorted(by_resource.items())]


def fleet_root() -> Path:
    return Path(os.environ.get(FLEET_DIR_ENV) or Path.home() / ".cache" / "qtbench" / "fleet")


def board_dir(board_id: str) -> Path:
    """A board's own folder for shipped inputs and its artifact cache (``$QTBENCH_FLEET_DIR/<board>``)."""
    return fleet_root() / board_id


def host_dir(resource: str) -> Path:
    """A compile host's folder (``$QTBENCH_FLEET_DIR/compile-<resource>``): its inputs and its artifact cache."""
    return fleet_root() / ("compile-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in resource))


def compile_place(board: Board, sweep: Sweep) -> str | None:
    """The host-class resource a board's cells compile on, or None for the board itself."""
    where = (board.compile_on or sweep.run.compile_on or "board").strip()
    return None if where == "board" else where


# ---------------------------------------------------------------------------------------------------------
# What runs on a board (inside a Ray task)
# ---------------------------------------------------------------------------------------------------------
_REMOTE: dict[Callable[..., Any], Any] = {}


def _remote(fn: Callable[..., Any]) -> Any:
    """``ray.remote(fn)``, made once per function and process (each one is exported to the cluster)."""
    if fn not in _REMOTE:
        _REMOTE[fn] = _ray().remote(fn)
    return _REMOTE[fn]


def _isolated_on_board(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:

    return call_isolated(fn, args, timeout_s)


def _probe_on_board(args: tuple, timeout_s: float, shipped: dict[str, Any], board_id: str) -> tuple[str, Any]:
    """:func:`qtbench.harness.run.sweep._probe` on the board against the model files shipped there, so the files beside
    a
    model that decide its artifact (a pre-converted ``.tflite``) are hashed where they will be read; the result
    is keyed by the submitting machine's paths again, so cell keys equal a local sweep's."""

    slug, target, options, specs, paths = args
    with _inputs(board_dir(board_id), shipped) as local:
        here = tuple(local.get(p, p) for p in paths)
        kind, value = call_isolated(_probe, (slug, target, options, specs, here), timeout_s)
    if kind == "ok" and value.get("artifact_inputs"):
        back = dict(zip(here, paths, strict=True))
        renamed = {}
        for k, v in value["artifact_inputs"].items():
            path, _, spec_id = k.rpartition("|")
            renamed[f"{back.get(path, path)}|{spec_id}"] = v
        value["artifact_inputs"] = renamed
    return kind, value


# -- shipped inputs: content-addressed bundles, used under a shared lock, evicted least recently used ---------
def _keep_bytes() -> int:
    try:
        return int(float(os.environ.get(KEEP_ENV, KEEP_MB_DEFAULT)) * (1 << 20))
    except ValueError:
        return KEEP_MB_DEFAULT << 20


@contextlib.contextmanager
def _inputs(root: Path, shipped: dict[str, tuple[str, str, Any]]) -> Iterator[dict[str, str]]:
    """Unpack the shipped bundles under ``root/inputs/<sha>/`` (once: a bundle already there is not even fetched
    from the object store) and yield submitter path → local path. Each bundle is held under a shared lock while
    the caller runs; afterwards bundles beyond ``$QTBENCH_FLEET_KEEP_MB`` are evicted, least recently used
    first, skipping any another task holds."""
    import fcntl

    ray = _ray()
    inputs = root / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    local: dict[str, str] = {}
    with contextlib.ExitStack() as held:
        for path, (name, sha, ref) in shipped.items():
            lock = held.enter_context(open(inputs / f"{sha[:24]}.lock", "a+"))  # held to the end
            fcntl.flock(lock, fcntl.LOCK_SH)
            dest = inputs / sha[:24]
            if not dest.exists():
                tmp = inputs / f".{sha[:24]}.{os.getpid()}.{threading.get_ident()}.tmp"
                with tarfile.open(fileobj=io.BytesIO(ray.get(ref))) as tar:
                    tar.extractall(tmp, filter="data")
                try:
                    os.replace(tmp, dest)
                except OSError:  # another task unpacked it first
                    if not dest.exists():
                        raise
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True)
            os.utime(dest)  # last use, for the LRU bound
            local[path] = str(dest / name)
        yield local
    _evict(inputs, _keep_bytes())


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _evict(inputs: Path, keep: int) -> list[str]:
    """Remove the least recently used bundles until the rest fit in ``keep`` bytes; a bundle some task holds
    (its lock taken shared) stays whatever its age. Temp folders of unpackers that died go too."""
    import fcntl
    import shutil

    for tmp in inputs.glob(".*.tmp"):
        try:
            pid = int(tmp.name.split(".")[2])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass
    bundles = sorted((d for d in inputs.iterdir() if d.is_dir() and not d.name.startswith(".")), key=_mtime)
    sizes = {d: _tree_bytes(d) for d in bundles}
    total = sum(sizes.values())
    removed = []
    for d in bundles:
        if total <= keep:
            break
        with open(inputs / f"{d.name}.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # in use
            shutil.rmtree(d, ignore_errors=True)
        total -= sizes[d]
        removed.append(d.name)
    return removed


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _localize(job: CellJob, local: dict[str, str], cache_dir: Path) -> CellJob:
    return dataclasses.replace(
        job,
        model_path=local[job.model_path],
        source_path=local[job.source_path] if job.source_path else "",
        eval_path=local.get(job.eval_path) if job.eval_path else None,
        calib_path=local.get(job.calib_path) if job.calib_path else None,
        cache_dir=str(cache_dir),
    )


# -- artifacts compiled on a host: the cache entry as a tar ------------------------------------------------
def _pack(workdir: Path) -> bytes:
    """A cache entry as tar bytes, its commit marker (``notes.json``) last: an unpack cut short leaves no marker,
    and the board's ``build_once`` then rebuilds instead of trusting a partial entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if workdir.is_dir():
            files = sorted(
                f
                for f in workdir.rglob("*")
                if f.is_file()
                and not f.name.startswith((".", "tmp"))
                and not f.relative_to(workdir).parts[0].startswith(MACHINE_LOCAL)
            )
            for f in sorted(files, key=lambda f: f.name == "notes.json"):
                tar.add(f, arcname=str(f.relative_to(workdir)))
    return buf.getvalue()


def _install_artifact(workdir: Path, payload: bytes) -> str:
    """Unpack a shipped cache entry into the board's cache under the entry's build lock: "installed", or
    "present" when the board already holds a committed entry (it is kept)."""
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)

    with open(workdir / BUILD_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (workdir / "notes.json").is_file():
            return "present"
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            tar.extractall(workdir, filter="data")
    return "installed"


def _compile_here(job: CellJob, board_version: str) -> tuple[CellResult, str]:
    """Child side of a host compile: refuse when the artifact would not be the board's (another SDK version, a
    backend whose artifacts bind to the machine that builds them), else
    :func:`qtbench.harness.run.cell.compile_cell`."""

    backend = backends.create(job.backend, job.backend_options, job.backend_target)
    if not getattr(type(backend), "artifact_portable", True):
        return CellResult("unavailable", f"{job.backend} artifacts are specific to the machine that builds them"), ""
    av = backend.availability()
    if not av.available:
        return CellResult("unavailable", f"{job.backend} is unavailable on the compile host: {av.reason}"), ""
    version = ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))
    if version != board_version:
        why = f"the compile host has {job.backend} {version or '?'}, the board {board_version or '?'}"
        return CellResult("unavailable", why), version
    return compile_cell(job), version


def compile_on_host(
    job: CellJob, board_version: str, shipped: dict[str, Any], resource: str, timeout_s: float
) -> tuple[dict[str, Any], bytes | None]:
    """The Ray task on a compile host: build the artifact into the host's cache (in a child with the sweep's
    timeout) and return (what happened, the cache entry as tar bytes or None). Ray keeps the two apart
    (``num_returns=2``): the submitting process reads the first, the bytes go from host to board."""

    ray = _ray()
    t0 = time.perf_counter()
    root = host_dir(resource)
    meta: dict[str, Any] = {
        "resource": resource,
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
    }
    with _inputs(root, shipped) as local:
        here = _localize(job, local, root / "cache")
        kind, value = call_isolated(_compile_here, (here, board_version), timeout_s)
    meta["wall_s"] = time.perf_counter() - t0
    if kind != "ok":
        meta.update(status="timeout" if kind == "timeout" else "failed", message=str(value))
        return meta, None
    result, _version = value
    if result.status == "unavailable":  # not buildable here: the board compiles it itself
        meta.update(status="board", message=result.message)
        return meta, None
    if result.status != "ok":
        meta.update(status=result.status, message=result.message)
        return meta, None
    payload = _pack(here.workdir)
    meta.update(
        status="ok",
        compile_s=result.fields.get("compile_s"),
        cache_hit=bool(result.fields.get("cache_hit")),
        payload_bytes=len(payload),
    )
    return meta, payload


def _where(meta: dict[str, Any]) -> str:
    return f"host {meta['hostname']} ({meta['resource']}, node {meta['node_id'][:12]})"


def _annotate(result: CellResult, compiled: dict[str, Any] | None, installed: str | None) -> None:
    """Say in the row where its artifact was compiled: ``backend_extra.compiled_on`` and a note. A host's
    artifact that the board did not load (its cache missed, so it built again) is reported as the board's."""
    if result.status != "ok":
        return
    fields = result.fields
    board_hit = bool(fields.get("cache_hit"))
    said: dict[str, Any] = {"where": "board"}
    note = ""
    if compiled is not None and compiled.get("status") == "ok":
        said = {k: compiled[k] for k in ("node_id", "hostname", "resource")}
        said.update(where="host", board_cache_hit=board_hit, shipped=installed, compile_wall_s=compiled["wall_s"])
        if board_hit:
            fields.update(compile_s=compiled["compile_s"], cache_hit=compiled["cache_hit"])
            note = f"artifact compiled on {_where(compiled)} and shipped; the board loaded it from its cache"
        else:
            said["where"] = "board"
            note = (
                f"artifact compiled on {_where(compiled)} but the board's cache missed it, so the board compiled "
                "it again (compile_s is the board's)"
            )
    elif compiled is not None:  # the host could not build it: why the board did
        said["why"] = compiled.get("message", "")
        note = f"compiled on the board: {said['why']}"
    try:
        extra = json.loads(fields.get("backend_extra") or "{}")
    except ValueError:
        extra = {}
    extra["compiled_on"] = said
    fields["backend_extra"] = json.dumps(extra, sort_keys=True, default=str)
    if note:
        fields["notes"] = "; ".join(n for n in (fields.get("notes", ""), note) if n)


def measure_on_board(
    cell: PlannedCell,
    sweep: Sweep,
    shipped: dict[str, Any],
    board_id: str,
    artifact: bytes | None = None,
    compiled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The Ray task: put the inputs (and a host-compiled artifact) in place, then measure the cell like this
    machine would (compiling it first when no artifact came)."""
    ray = _ray()
    t_task = time.perf_counter_ns()
    root = board_dir(board_id)
    assert cell.job is not None
    timed: tuple[int, int] | None = None
    installed = None
    with _inputs(root, shipped) as local:
        cell = dataclasses.replace(cell, job=_localize(cell.job, local, root / "cache"))
        assert cell.job is not None
        if artifact is not None:
            installed = _install_artifact(cell.job.workdir, artifact)
        marker = root / "current-cell.json"  # what the board is doing, for operators and `fleet status`
        marker.write_text(json.dumps({"cell": cell.label, "sweep": sweep.name, "pid": os.getpid()}))
        try:
            # compile (when no artifact came) and measure in one child: the task holds the whole board, so no
            # build runs beside a timed loop either way, and a separate child would cost one more process start
            t0 = time.perf_counter_ns()
            result = LocalExecutor().measure(cell, sweep, None)
            timed = (t0, time.perf_counter_ns())
        finally:
            marker.unlink(missing_ok=True)
    _annotate(result, compiled, installed)
    return {
        "result": result,
        "timed_ns": timed,  # node-local monotonic clock: compare only within one board
        "task_ns": (t_task, time.perf_counter_ns()),
        "node_id": ray.get_runtime_context().get_node_id(),
        "hostname": socket.gethostname(),
    }


def board_facts(board_id: str, probe_timeout_s: float = 60.0, slugs: list[str] | None = None) -> dict[str, Any]:
    """``qtbench fleet status`` on one board: versions, host identity, and ``qtbench backends`` run there
    (only ``slugs`` when given: probing every SDK takes tens of seconds on a small board)."""

    ray = _ray()
    if slugs is None:
        statuses = backends.list_backends(timeout_s=probe_timeout_s)
    else:
        statuses = []
        for slug in slugs:
            kind, value = call_isolated(backends.probe, (slug,), probe_timeout_s)
            if kind == "ok":
                statuses.append(value)
            else:
                statuses.append(backends.BackendStatus(slug, "", "", False, f"probe failed: {value}", {}))
    return {
        "board": board_id,
        "hostname": socket.gethostname(),
        "host_device": device_id(),
        "python": sys.version.split()[0],
        "ray": ray.__version__,
        "qtbench": __version__,
        "backends": {s.slug: (s.versions if s.available else s.reason) for s in statuses},
        "available": sorted(s.slug for s in statuses if s.available),
    }


# ---------------------------------------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------------------------------------
@dataclass
class BoardInterval:
    """When one cell held a board (node-local monotonic ns): the timed part and the whole task."""

    board: str
    label: str
    timed_ns: tuple[int, int] | None
    task_ns: tuple[int, int]
    wall_s: float  # submit → result, as the submitting process saw it


@dataclass
class RayExecutor(Executor):
    """Plan per board, compile where ``run.compile_on`` says, run each cell as a Ray task holding its board's
    resource, and yield results as they return."""

    fleet: Fleet
    only: tuple[str, ...] = ()
    poll_s: float = 0.5  # how often, while waiting, dead boards (and compile hosts) are looked for
    intervals: list[BoardInterval] = field(default_factory=list)
    compiles: list[dict[str, Any]] = field(default_factory=list)  # what each host compile reported
    board_of: dict[int, Board] = field(default_factory=dict)
    shipped: dict[str, tuple[str, str, Any]] = field(default_factory=dict)  # submitter path → (name, sha, ref)

    @classmethod
    def from_sweep(cls, sweep: Sweep) -> RayExecutor:
        if not sweep.run.fleet:
            raise ConfigError("run.fleet: run.executor is ray but no fleet is given: pass --fleet FILE|ADDRESS")
        fleet = load_fleet(sweep.run.fleet, sweep.base_dir)
        connect(fleet.address)  # before the run is opened: a missing Ray or an unreachable head writes nothing
        chosen = [b for b in fleet.boards if not sweep.run.boards or b.id in sweep.run.boards]
        hosts = {compile_place(b, sweep) for b in chosen or [Board("", "")]}  # none listed: run.compile_on
        _check_hosts({h for h in hosts if h})  # so is a compile host class no node offers
        return cls(fleet, tuple(sweep.run.boards))

    def boards(self) -> list[Board]:
        connect(self.fleet.address)
        boards = live_boards(self.fleet)
        if self.only:
            known = {b.id for b in boards}
            missing = [b for b in self.only if b not in known]
            if missing:
                raise ConfigError(f"run.boards: {missing} not in the fleet ({', '.join(sorted(known)) or 'no boards'})")
            boards = [b for b in boards if b.id in self.only]
        if not boards:
            raise ConfigError(
                f"run.fleet: no boards in {self.fleet.source}: join boards with "
                "`ray start --address HEAD:6379 --resources '{\"board:<id>\": 1}'` or list them in a fleet file"
            )
        return boards

    def plan(self, run: SweepRun) -> list[PlannedCell]:
        """Each board's cells: the sweep restricted to the backends it offers, probed on the board itself
        against the shipped model files (boards are probed at once; a busy one for ``run.board_wait_s``)."""
        from concurrent.futures import ThreadPoolExecutor

        boards = self.boards()
        hosts = {b.id: compile_place(b, run.sweep) for b in boards}
        _check_hosts({h for h in hosts.values() if h})
        entry = next(r for r in run.store.manifest()["runs"] if r.get("run_id") == run.run_id)
        fleet = {
            b.id: {"resource": b.resource, "node_id": b.node_id, "offers": b.backends, "compile_on": hosts[b.id]}
            for b in boards
        }
        run.store.record_run({**entry, "fleet": {"source": self.fleet.source, "boards": fleet}})
        models = [run.sweep.resolve(m.path) for m in run.sweep.models]
        self.shipped.update(_ship([(str(p), True) for p in models if p.is_file() and str(p) not in self.shipped]))

        def one(board: Board) -> list[PlannedCell]:
            sweep = run.sweep
            if board.backends is not None:
                sweep = dataclasses.replace(sweep, backends=[b for b in sweep.backends if b.key in board.backends])
                if not sweep.backends:
                    return []
            prober = self._prober(board, run.sweep.run.board_wait_s)
            cells = plan(dataclasses.replace(run, sweep=sweep, device=board.id), probe_call=prober)
            offered = {b.key for b in sweep.backends}
            return [c for c in cells if c.base["backend"] in offered]  # includes may name other backends

        with ThreadPoolExecutor(max_workers=len(boards)) as pool:
            per_board = list(pool.map(one, boards))
        out: list[PlannedCell] = []
        for board, cells in zip(boards, per_board, strict=True):
            for c in cells:
                out.append(c)
                self.board_of[len(out) - 1] = board
        for i, c in enumerate(out):  # one numbering across boards: cell parts are stored by index
            c.index, c.total = i, len(out)
            c.label = f"{self.board_of[i].id} × {c.label}"
        return out

    def _prober(self, board: Board, wait_s: float) -> Callable[..., tuple[str, Any]]:
        """``call_isolated`` run on the board, holding its resource (so it never lands beside a timed loop).

        A board another job holds is waited for up to ``wait_s`` in all (its probes share one deadline); then
        its probes answer "busy" at once, its cells are recorded unavailable with that reason, and the next run
        measures them: planning never hangs on someone else's sweep. A probe that got the board runs within its
        own child timeout."""

        state: dict[str, Any] = {"deadline": None, "busy": ""}

        def busy() -> tuple[str, Any]:
            state["busy"] = (
                f"board {board.id} busy: another job held {board.resource} for the {wait_s:g} s planning waits "
                "(run.board_wait_s); a re-run measures these cells"
            )
            return "error", state["busy"]

        def call(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
            if not board.node_id:
                return "error", f"board {board.id}: no live Ray node advertises {board.resource}"
            if state["busy"]:
                return "error", state["busy"]
            ray = _ray()
            if state["deadline"] is None:
                state["deadline"] = time.monotonic() + wait_s
            while _board_free(board) is False:
                if time.monotonic() >= state["deadline"]:
                    return busy()
                time.sleep(0.25)
            opts = {"num_cpus": 0, "resources": {board.resource: 1}, "max_retries": 0}
            if fn is _probe:
                mine = {p: self.shipped[p] for p in args[4] if p in self.shipped}
                ref = _remote(_probe_on_board).options(**opts).remote(args, timeout_s, mine, board.id)
            else:
                ref = _remote(_isolated_on_board).options(**opts).remote(fn, args, timeout_s)
            # the board looked free; another job may still take it first: bounded all the same
            left = max(0.0, state["deadline"] - time.monotonic())
            ready, _ = ray.wait([ref], timeout=left + timeout_s + 30)
            if not ready:
                with contextlib.suppress(ray.exceptions.RayError, ValueError, TypeError):
                    ray.cancel(ref, force=True)
                return busy()
            try:
                return ray.get(ref)
            except ray.exceptions.RayError as exc:
                return "died", f"board lost while probing {board.id}: {type(exc).__name__}"

        return call

    def run(self, cells: list[PlannedCell], sweep: Sweep) -> Iterator[tuple[PlannedCell, CellResult]]:
        ray = _ray()
        queues: dict[str, deque[PlannedCell]] = {}
        for cell in cells:
            if cell.job is None:
                assert cell.outcome is not None
                yield cell, cell.outcome
            else:
                queues.setdefault(self.board_of[cell.index].id, deque()).append(cell)
        if not queues:
            return
        jobs = [c.job for q in queues.values() for c in q if c.job is not None]
        data = {(p, False) for j in jobs for p in (j.eval_path, j.calib_path) if p and p not in self.shipped}
        models = {(p, True) for j in jobs for p in (j.model_path, j.source_path) if p and p not in self.shipped}
        self.shipped.update(_ship(sorted(data | models)))
        boards = {b.id: b for b in self.board_of.values()}
        measure = _remote(measure_on_board)

        def inputs(job: CellJob) -> dict[str, Any]:
            return {p: self.shipped[p] for p in (job.model_path, job.source_path, job.eval_path, job.calib_path) if p}

        # compile phase: every artifact a host class builds, once, all submitted now (hosts run one per unit)
        artifact_of: dict[int, tuple[str, str]] = {}  # cell index → (backend, artifact key)
        pending: dict[Any, tuple[tuple[str, str], Any]] = {}  # meta ref → (artifact, payload ref)
        built: dict[tuple[str, str], tuple[dict[str, Any], Any]] = {}  # artifact → (meta, payload ref)
        host_of: dict[tuple[str, str], str] = {}
        users: dict[tuple[str, str], int] = {}  # cells not yet on a board, per artifact: then its bytes are let go
        for q in queues.values():
            for cell in q:
                host = compile_place(self.board_of[cell.index], sweep)
                job = cell.job
                if host is None or job is None:
                    continue
                art = (job.backend, job.artifact_key)
                artifact_of[cell.index] = art
                users[art] = users.get(art, 0) + 1
                if art not in host_of:
                    host_of[art] = host
                    task = _remote(compile_on_host).options(
                        num_cpus=0, resources={host: 1}, max_retries=0, num_returns=2
                    )
                    meta_ref, payload_ref = task.remote(
                        job, cell.base["backend_version"], inputs(job), host, sweep.run.timeout_s
                    )
                    pending[meta_ref] = (art, payload_ref)
        in_flight: dict[Any, tuple[str, PlannedCell, float]] = {}

        def next_cell(bid: str) -> PlannedCell | None:
            for cell in queues[bid]:  # the first cell whose artifact is ready (or that compiles on the board)
                art = artifact_of.get(cell.index)
                if art is None or art in built:
                    queues[bid].remove(cell)
                    return cell
            return None

        def fill() -> None:
            busy = {bid for bid, _c, _t in in_flight.values()}
            for bid in queues:
                cell = None if bid in busy else next_cell(bid)
                if cell is None:
                    continue
                job = cell.job
                assert job is not None
                art = artifact_of.get(cell.index)
                meta, payload = built[art] if art is not None else (None, None)
                opts = measure.options(num_cpus=0, resources={boards[bid].resource: 1}, max_retries=0)
                ref = opts.remote(
                    cell, sweep, inputs(job), bid, payload if meta and meta["status"] == "ok" else None, meta
                )
                in_flight[ref] = (bid, cell, time.perf_counter())
                if art is not None:
                    users[art] -= 1
                    if not users[art]:  # the board tasks hold the bytes now; the object store frees them after
                        built[art] = (built[art][0], None)

        def lose(bid: str, why: str) -> Iterator[tuple[PlannedCell, CellResult]]:
            while queues[bid]:
                yield queues[bid].popleft(), CellResult("failed", f"board lost: {bid} before this cell started ({why})")

        def compiled(
            art: tuple[str, str], meta: dict[str, Any], payload: Any
        ) -> Iterator[tuple[PlannedCell, CellResult]]:
            """An artifact's host compile ended: a failure is its cells' outcome (as a local compile's is)."""
            built[art] = (meta, payload)
            self.compiles.append({"backend": art[0], "artifact_key": art[1], **meta})
            if meta["status"] not in COMPILE_FAILED:
                return
            for q in queues.values():
                for cell in [c for c in q if artifact_of.get(c.index) == art]:
                    q.remove(cell)
                    status = "skipped" if meta["status"] == "skipped" else meta["status"]
                    msg = meta["message"] if status == "skipped" else f"compile on {_where(meta)}: {meta['message']}"
                    yield cell, CellResult(status, msg, {"cell_wall_s": meta.get("wall_s", float("nan"))})

        fill()
        checked = time.perf_counter()
        while in_flight or pending:
            ready, _ = ray.wait([*in_flight, *pending], num_returns=1, timeout=self.poll_s)
            if not ready or time.perf_counter() - checked > self.poll_s:  # even while other boards keep returning
                checked = time.perf_counter()
                nodes = [n for n in ray.nodes() if n.get("Alive")]
                alive = {n["NodeID"] for n in nodes}
                for ref, (bid, cell, t0) in list(in_flight.items()):
                    if ref not in ready and boards[bid].node_id not in alive:  # else it would wait forever
                        del in_flight[ref]
                        with contextlib.suppress(ray.exceptions.RayError, ValueError):
                            ray.cancel(ref, force=True)
                        why = f"node {boards[bid].node_id[:12]} is dead"
                        yield cell, CellResult("failed", f"board lost: {bid} ({why})", {"cell_wall_s": _since(t0)})
                        yield from lose(bid, why)
                offered = {r for n in nodes for r in n.get("Resources", {})}
                for ref, (art, _payload) in list(pending.items()):
                    if ref not in ready and host_of[art] not in offered:  # no host of the class is left
                        del pending[ref]
                        with contextlib.suppress(ray.exceptions.RayError, ValueError):
                            ray.cancel(ref, force=True)
                        why = f"no live node advertises {host_of[art]} any more"
                        yield from compiled(art, {"status": "board", "message": why}, None)
                fill()
                if not ready or (ready[0] not in in_flight and ready[0] not in pending):
                    continue
            if ready[0] in pending:
                art, payload = pending.pop(ready[0])
                try:
                    meta = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the host died or failed: the board compiles it
                    meta = {"status": "board", "message": f"the compile host failed ({type(exc).__name__})"}
                yield from compiled(art, meta, payload)
                fill()
                continue
            bid, cell, t0 = in_flight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                name = type(exc).__name__
                art = artifact_of.get(cell.index)
                shipped_ok = art is not None and built[art][0].get("status") == "ok"
                if shipped_ok and isinstance(exc, ray.exceptions.ObjectLostError) and _alive(boards[bid].node_id):
                    # the host's artifact went with its node before the board fetched it: the board builds it
                    why = f"the artifact shipped from {_where(built[art][0])} was lost ({name})"
                    built[art] = ({"status": "board", "message": why}, None)
                    queues[bid].appendleft(cell)
                    fill()
                    continue
                if name in LOST_ERRORS or isinstance(exc, ray.exceptions.NodeDiedError):
                    why = f"{name} on node {boards[bid].node_id[:12]} mid-cell; a re-run measures it again"
                    yield cell, CellResult("failed", f"board lost: {bid} ({why})", {"cell_wall_s": _since(t0)})
                    yield from lose(bid, name)
                    continue
                yield cell, CellResult("failed", f"fleet task on {bid} failed: {name}: {str(exc).splitlines()[0]}")
                fill()
                continue
            self.intervals.append(BoardInterval(bid, cell.label, out["timed_ns"], out["task_ns"], _since(t0)))
            yield cell, out["result"]
            fill()
        for bid, q in queues.items():  # nothing should be left; never drop a cell silently
            while q:
                yield q.popleft(), CellResult("failed", f"fleet: cell on {bid} was never scheduled; re-run the sweep")


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _free_resources() -> dict[str, Any] | None:
    """Per node, the resources nobody holds now (None where this Ray has no such view without a dashboard)."""
    try:
        from ray._private.state import available_resources_per_node

        return available_resources_per_node()
    except Exception:  # noqa: BLE001 - no per-node view here: ImportError, or over ray:// (Ray Client) the state
        return None  # API raises RaySystemError "Ray has not been started yet"; callers then probe every board


def _board_free(board: Board) -> bool | None:
    """Whether nobody holds the board's resource now (None: unknown)."""
    free = _free_resources()
    return None if free is None else free.get(board.node_id, {}).get(board.resource, 0) >= 1


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n.get("Alive") for n in _ray().nodes())


def _check_hosts(resources: set[str]) -> None:
    """Every compile-host class the sweep names is advertised by a live node: else Ray would queue forever."""
    if not resources:
        return
    offered = {r for n in _ray().nodes() if n.get("Alive") for r in n.get("Resources", {})}
    missing = sorted(resources - offered)
    if missing:
        raise ConfigError(
            f"run.compile_on: no live node advertises {missing[0]}: join a compile host with "
            f"`ray start --address HEAD:6379 --resources '{{\"{missing[0]}\": 4}}'` (one unit per concurrent "
            "compile), or set run.compile_on: board"
        )


def _model_side_files(path: Path) -> list[Path]:
    """Files a model reads or that decide its artifact: ``<stem>.*`` beside it (pre-converted ``.tflite``
    variants) and the external-data files its ONNX graph names (any name, sub-folders included)."""

    out = [f.resolve() for f in sorted(path.parent.glob(f"{path.stem}.*")) if f != path and f.is_file()]
    extra = external_data_files(path) if path.suffix == ".onnx" else []
    return out + [f for f in extra if f not in out]


def _ship(paths: list[tuple[str, bool]]) -> dict[str, tuple[str, str, Any]]:
    """Model and data files, each put once into the object store as a tar bundle: path → (name inside the
    bundle, bundle sha, ref). A model travels with its side files (:func:`_model_side_files`); a data folder
    travels whole. The sha addresses the bundle on the boards, so a changed side file is a new bundle."""
    import hashlib

    ray = _ray()
    out: dict[str, tuple[str, str, Any]] = {}
    for p, is_model in paths:
        if p in out:
            continue
        path = Path(p)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(path, arcname=path.name)  # a folder recursively
            for f in _model_side_files(path) if is_model and path.is_file() else []:
                tar.add(f, arcname=str(f.relative_to(path.parent.resolve())))
        payload = buf.getvalue()
        out[p] = (path.name, hashlib.sha256(payload).hexdigest(), ray.put(payload))
    return out


# ---------------------------------------------------------------------------------------------------------
# qtbench fleet status
# ---------------------------------------------------------------------------------------------------------
def fleet_status(
    fleet: Fleet, probe_timeout_s: float = 60.0, wait_s: float = 300.0, slugs: list[str] | None = None
) -> list[dict[str, Any]]:
    """One entry per board: its node, whether it is idle, and (when idle) what ``qtbench backends`` says there.

    A busy board is not probed (the probe would run beside another sweep's timed loop); it says so instead. The
    probes of idle boards share one ``wait_s`` deadline: a board another job takes first is reported busy
    and its queued probe cancelled, so the command never waits on someone else's sweep.
    """
    ray = connect(fleet.address)
    free = _free_resources()  # None: this Ray has no per-node view without a dashboard: probe every board
    rows: list[dict[str, Any]] = []
    refs: dict[int, Any] = {}
    for b in live_boards(fleet):
        row: dict[str, Any] = {"board": b.id, "resource": b.resource, "node_id": b.node_id, "offers": b.backends}
        if not b.node_id:
            row["state"] = "absent (no live node advertises it)"
        elif free is not None and free.get(b.node_id, {}).get(b.resource, 0) < 1:
            row["state"] = "busy (another task holds it: measuring a cell; not probed)"
        else:
            row["state"] = "idle"
            task = _remote(board_facts).options(num_cpus=0, resources={b.resource: 1}, max_retries=0)
            refs[len(rows)] = task.remote(b.id, probe_timeout_s, slugs)
        rows.append(row)
    deadline = time.monotonic() + wait_s
    for i, ref in refs.items():
        try:
            rows[i].update(ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
        except ray.exceptions.GetTimeoutError:
            with contextlib.suppress(ray.exceptions.RayError, ValueError, TypeError):
                ray.cancel(ref, force=True)
            rows[i]["state"] = f"busy (taken by another task before the probe ran; no answer in {wait_s:g} s)"
        except ray.exceptions.RayError as exc:
            rows[i]["state"] = f"lost ({type(exc).__name__})"
    return rows

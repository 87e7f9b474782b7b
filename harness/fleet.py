"""Sweeps over a fleet of edge boards on a Ray cluster (``run.executor: ray``; ``pip install 'qtbench[fleet]'``).

Each board is a Ray node that advertises one unit of a custom resource, ``board:<id>``. The submitting process
plans cells per board × backend the board offers (backends are probed *on the board*), ships the model and data
files through Ray's object store (no shared file system needed), and runs every cell as a Ray task that asks for
the board's whole resource: one cell at a time per board, and a board busy with another user's sweep is waited
for, never shared. Inside that task the cell compiles and is measured exactly as on this machine, by
:class:`harness.sweep.LocalExecutor` (child processes with the sweep's timeout). Results come back to the
submitting process and go through the normal store, so resume, ``show``, ``report`` and ``check`` work unchanged;
each row's ``device`` is its board id, which is part of the cell key.

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

from harness.cell import CellResult
from harness.config import Sweep
from harness.errors import ConfigError, UserError
from harness.sweep import Executor, LocalExecutor, PlannedCell, SweepRun, plan

RESOURCE_PREFIX = "board:"
FLEET_DIR_ENV = "QTBENCH_FLEET_DIR"  # where a board keeps shipped inputs and its artifact cache
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


@dataclass(frozen=True)
class Fleet:
    address: str | None
    boards: tuple[Board, ...] = ()  # empty: discovered from the cluster's board:<id> resources
    source: str = ""


def load_fleet(spec: str, base_dir: str | Path = ".") -> Fleet:
    """A fleet file (YAML: ``address:``, ``boards: {id: {resource, backends}}``) or a bare cluster address."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        if spec.endswith((".yaml", ".yml", ".json")):
            raise ConfigError(f"run.fleet: fleet file {path} does not exist (relative paths are from the sweep file)")
        return Fleet(address=spec, source=spec)
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"fleet file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or set(data) - {"address", "boards"}:
        raise ConfigError(f"fleet file {path}: expected keys address, boards; got {sorted(data)}")
    boards = []
    for bid, entry in (data.get("boards") or {}).items():
        entry = entry or {}
        where = f"fleet file {path}: boards.{bid}"
        if not isinstance(entry, dict) or set(entry) - {"resource", "backends"}:
            raise ConfigError(f"{where}: expected keys resource, backends")
        offered = entry.get("backends")
        if offered is not None and (not isinstance(offered, list) or not all(isinstance(b, str) for b in offered)):
            raise ConfigError(f"{where}.backends: a list of backend slugs or labels, e.g. [ort, rknn]")
        boards.append(
            Board(
                str(bid), str(entry.get("resource") or f"{RESOURCE_PREFIX}{bid}"), tuple(offered) if offered else None
            )
        )
    return Fleet(address=data.get("address"), boards=tuple(boards), source=str(path))


def connect(address: str | None) -> Any:
    """Join the cluster once per process (an already initialised Ray, e.g. a test's cluster, is used as is)."""
    ray = _ray()
    if not ray.is_initialized():
        if not address:
            raise ConfigError(
                "run.fleet: no cluster address: pass --fleet ray://HEAD:10001 or set address: in the file"
            )
        try:
            ray.init(address=address, log_to_driver=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"run.fleet: cannot reach the Ray cluster at {address}: {exc}") from None
    return ray


def live_boards(fleet: Fleet) -> list[Board]:
    """The fleet's boards, each with the live node that advertises its resource (``node_id`` "" when none)."""
    ray = _ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    by_resource = {r: n["NodeID"] for n in nodes for r in n.get("Resources", {}) if r.startswith(RESOURCE_PREFIX)}
    if fleet.boards:
        return [dataclasses.replace(b, node_id=by_resource.get(b.resource, "")) for b in fleet.boards]
    return [Board(r[len(RESOURCE_PREFIX) :], r, None, nid) for r, nid in sorted(by_resource.items())]


def board_dir(board_id: str) -> Path:
    """A board's own folder for shipped inputs and its artifact cache (``$QTBENCH_FLEET_DIR/<board>``)."""
    base = Path(os.environ.get(FLEET_DIR_ENV) or Path.home() / ".cache" / "qtbench" / "fleet")
    return base / board_id


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
    from harness.isolate import call_isolated

    return call_isolated(fn, args, timeout_s)


def _materialize(root: Path, name: str, sha: str, payload: bytes) -> str:
    """Unpack a shipped bundle under ``root/inputs/<sha>/`` once; returns the local path of ``name`` in it."""
    dest = root / "inputs" / sha[:24]
    if not dest.exists():
        tmp = root / "inputs" / f".{sha[:24]}.{os.getpid()}.{threading.get_ident()}.tmp"
        with tarfile.open(fileobj=io.BytesIO(payload)) as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.replace(tmp, dest)
        except OSError:  # another task unpacked it first
            if not dest.exists():
                raise
    return str(dest / name)


def measure_on_board(cell: PlannedCell, sweep: Sweep, shipped: dict[str, Any], board_id: str) -> dict[str, Any]:
    """The Ray task: put the inputs in place, then compile and measure the cell like this machine would."""
    ray = _ray()
    t_task = time.perf_counter_ns()
    root = board_dir(board_id)
    job = cell.job
    assert job is not None
    local = {}
    for path, (name, sha, ref) in shipped.items():
        local[path] = _materialize(root, name, sha, ray.get(ref))
    job = dataclasses.replace(
        job,
        model_path=local[job.model_path],
        eval_path=local.get(job.eval_path) if job.eval_path else None,
        calib_path=local.get(job.calib_path) if job.calib_path else None,
        cache_dir=str(root / "cache"),
    )
    cell = dataclasses.replace(cell, job=job)
    marker = root / "current-cell.json"  # what the board is doing, for operators and `fleet status`
    marker.write_text(json.dumps({"cell": cell.label, "sweep": sweep.name, "pid": os.getpid()}))
    timed: tuple[int, int] | None = None
    try:
        # compile and measure in one child: the task holds the whole board, so no build runs beside a timed loop
        # either way, and a separate compile child would cost one more process start per cell
        t0 = time.perf_counter_ns()
        result = LocalExecutor().measure(cell, sweep, None)
        timed = (t0, time.perf_counter_ns())
    finally:
        marker.unlink(missing_ok=True)
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
    import backends
    from devices.host import device_id
    from harness import __version__
    from harness.isolate import call_isolated

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
    """Plan per board, run each cell as a Ray task holding its board's resource, yield results as they return."""

    fleet: Fleet
    only: tuple[str, ...] = ()
    poll_s: float = 0.5  # how often, while waiting, dead boards are looked for
    intervals: list[BoardInterval] = field(default_factory=list)
    board_of: dict[int, Board] = field(default_factory=dict)

    @classmethod
    def from_sweep(cls, sweep: Sweep) -> RayExecutor:
        if not sweep.run.fleet:
            raise ConfigError("run.fleet: run.executor is ray but no fleet is given: pass --fleet FILE|ADDRESS")
        fleet = load_fleet(sweep.run.fleet, sweep.base_dir)
        connect(fleet.address)  # before the run is opened: a missing Ray or an unreachable head writes nothing
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
        """Each board's cells: the sweep restricted to the backends it offers, probed on the board itself."""
        from concurrent.futures import ThreadPoolExecutor

        boards = self.boards()
        entry = next(r for r in run.store.manifest()["runs"] if r.get("run_id") == run.run_id)
        fleet = {b.id: {"resource": b.resource, "node_id": b.node_id, "offers": b.backends} for b in boards}
        run.store.record_run({**entry, "fleet": {"source": self.fleet.source, "boards": fleet}})

        def one(board: Board) -> list[PlannedCell]:
            sweep = run.sweep
            if board.backends is not None:
                sweep = dataclasses.replace(sweep, backends=[b for b in sweep.backends if b.key in board.backends])
                if not sweep.backends:
                    return []
            cells = plan(dataclasses.replace(run, sweep=sweep, device=board.id), probe_call=self._prober(board))
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

    def _prober(self, board: Board) -> Callable[..., tuple[str, Any]]:
        """``call_isolated`` run on the board (holding its resource, so it never lands beside a timed loop)."""

        def call(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
            if not board.node_id:
                return "error", f"board {board.id}: no live Ray node advertises {board.resource}"
            ray = _ray()
            task = _remote(_isolated_on_board).options(num_cpus=0, resources={board.resource: 1}, max_retries=0)
            try:
                return ray.get(task.remote(fn, args, timeout_s))
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
        shipped = _ship([c for q in queues.values() for c in q])
        task = _remote(measure_on_board)
        boards = {b.id: b for b in self.board_of.values()}
        in_flight: dict[Any, tuple[str, PlannedCell, float]] = {}

        def submit(bid: str) -> None:
            if queues[bid]:
                cell = queues[bid].popleft()
                job = cell.job
                assert job is not None
                mine = {p: shipped[p] for p in (job.model_path, job.eval_path, job.calib_path) if p}
                opts = task.options(num_cpus=0, resources={boards[bid].resource: 1}, max_retries=0)
                in_flight[opts.remote(cell, sweep, mine, bid)] = (bid, cell, time.perf_counter())

        def lose(bid: str, why: str) -> Iterator[tuple[PlannedCell, CellResult]]:
            while queues[bid]:
                yield queues[bid].popleft(), CellResult("failed", f"board lost: {bid} before this cell started ({why})")

        for bid in queues:
            submit(bid)
        checked = time.perf_counter()
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=self.poll_s)
            if not ready or time.perf_counter() - checked > self.poll_s:  # even while other boards keep returning
                checked = time.perf_counter()
                alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
                for ref, (bid, cell, t0) in list(in_flight.items()):
                    if ref not in ready and boards[bid].node_id not in alive:  # else it would wait forever
                        del in_flight[ref]
                        with contextlib.suppress(ray.exceptions.RayError, ValueError):
                            ray.cancel(ref, force=True)
                        why = f"node {boards[bid].node_id[:12]} is dead"
                        yield cell, CellResult("failed", f"board lost: {bid} ({why})", {"cell_wall_s": _since(t0)})
                        yield from lose(bid, why)
                if not ready or ready[0] not in in_flight:
                    continue
            bid, cell, t0 = in_flight.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                name = type(exc).__name__
                if name in LOST_ERRORS or isinstance(exc, ray.exceptions.NodeDiedError):
                    why = f"{name} on node {boards[bid].node_id[:12]} mid-cell; a re-run measures it again"
                    yield cell, CellResult("failed", f"board lost: {bid} ({why})", {"cell_wall_s": _since(t0)})
                    yield from lose(bid, name)
                    continue
                yield cell, CellResult("failed", f"fleet task on {bid} failed: {name}: {str(exc).splitlines()[0]}")
                submit(bid)
                continue
            self.intervals.append(BoardInterval(bid, cell.label, out["timed_ns"], out["task_ns"], _since(t0)))
            yield cell, out["result"]
            submit(bid)


def _since(t0: float) -> float:
    return time.perf_counter() - t0


def _ship(cells: list[PlannedCell]) -> dict[str, tuple[str, str, Any]]:
    """Every model and data file the cells read, put once into the object store as a tar bundle:
    path → (name inside the bundle, bundle sha, ref). A model travels with the files beside it that share its
    stem (``<stem>.*``: pre-converted ``.tflite`` variants, external weights); a data folder travels whole."""
    import hashlib

    ray = _ray()
    out: dict[str, tuple[str, str, Any]] = {}
    for cell in cells:
        job = cell.job
        assert job is not None
        for p, is_model in ((job.model_path, True), (job.eval_path, False), (job.calib_path, False)):
            if not p or p in out:
                continue
            path = Path(p)
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(path, arcname=path.name)  # a folder recursively
                for f in sorted(path.parent.glob(f"{path.stem}.*")) if is_model and path.is_file() else []:
                    if f != path and f.is_file():
                        tar.add(f, arcname=f.name)
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

    A busy board is not probed (the probe would run beside another sweep's timed loop); it says so instead.
    """
    ray = connect(fleet.address)
    try:  # no public per-node view of free resources without the dashboard; a Ray that moved it: probe all
        from ray._private.state import available_resources_per_node

        free: dict[str, Any] | None = available_resources_per_node()
    except (ImportError, AttributeError):
        free = None
    rows: list[dict[str, Any]] = []
    refs: dict[int, Any] = {}
    for b in live_boards(fleet):
        row: dict[str, Any] = {"board": b.id, "resource": b.resource, "node_id": b.node_id, "offers": b.backends}
        if not b.node_id:
            row["state"] = "absent (no live node advertises it)"
        elif free is not None and free.get(b.node_id, {}).get(b.resource, 0) < 1:
            row["state"] = "busy (measuring a cell; not probed)"
        else:
            row["state"] = "idle"
            task = _remote(board_facts).options(num_cpus=0, resources={b.resource: 1}, max_retries=0)
            refs[len(rows)] = task.remote(b.id, probe_timeout_s, slugs)
        rows.append(row)
    for i, ref in refs.items():
        try:
            rows[i].update(ray.get(ref, timeout=wait_s))
        except ray.exceptions.GetTimeoutError:
            rows[i]["state"] = f"busy (became busy; no answer in {wait_s:g}s)"
        except ray.exceptions.RayError as exc:
            rows[i]["state"] = f"lost ({type(exc).__name__})"
    return rows

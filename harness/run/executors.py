"""Executors run planned cells and yield their results: :class:`LocalExecutor` here (compile phase, then one
timed cell at a time); others (the Ray fleet) are chosen by name from :data:`EXECUTORS`, so the orchestrator never
imports them."""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qtbench.harness.core import isolate
from qtbench.harness.core.config import Sweep
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.isolate import call_isolated
from qtbench.harness.run.cell import CellJob, CellResult, compile_cell, compile_cell_on, preload, run_cell
from qtbench.harness.run.manifest import SweepRun
from qtbench.harness.run.plan import PlannedCell, plan


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
    (:class:`qtbench.harness.core.isolate.Worker`) for its consecutive cells; a crash or timeout costs its cell and the
    next
    cell gets a fresh child. At most ``WARM_WORKERS`` idle children are kept; the rest are ended.
    """

    WARM_WORKERS = 2

    @classmethod
    def from_sweep(cls, sweep: Sweep) -> LocalExecutor:
        return cls()

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
            while other models' cells could be building.
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


#: executors by ``run.executor`` name → "module:Class"; each class is built with ``from_sweep(sweep)``. Named, not
#: imported, so the orchestrator never loads the fleet (or Ray) for a local sweep.
EXECUTORS: dict[str, str] = {
    "local": "qtbench.harness.run.executors:LocalExecutor",
    "ray": "qtbench.harness.run.fleet:RayExecutor",
}


def executor_for(sweep: Sweep) -> Executor:
    """The executor ``sweep.run.executor`` names, built for this sweep."""
    target = EXECUTORS.get(sweep.run.executor)
    if target is None:
        raise ConfigError(f"run.executor: {sweep.run.executor!r}; choose one of {', '.join(sorted(EXECUTORS))}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name).from_sweep(sweep)

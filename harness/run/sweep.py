"""The orchestrator: one sweep's configuration flows down from here and never back up.

``run_sweep``: load the configuration → the planner checks it and plans the cells (:mod:`.plan`, which calls
intake) → the run is opened in the manifest (:mod:`.manifest`) → the executor chosen by name
(:mod:`.executors`) compiles and measures them (:mod:`.cell` → the adapter) → each result is written to the store
as it arrives (:mod:`.store`) → the run is closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtbench.harness.core import isolate
from qtbench.harness.core.config import Sweep, load_sweep, parse_sweep
from qtbench.harness.core.errors import ResultsError
from qtbench.harness.core.records import Record, utc_now
from qtbench.harness.run.cell import CellResult
from qtbench.harness.run.executors import Executor, executor_for
from qtbench.harness.run.manifest import SweepRun, open_run
from qtbench.harness.run.plan import PlannedCell, preflight
from qtbench.harness.run.store import load_results, os_error_message


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


def _load(config: Sweep | dict[str, Any] | str | Path) -> Sweep:
    if isinstance(config, str | Path):
        return load_sweep(config)
    if isinstance(config, dict):
        return parse_sweep(config)
    return config


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
    executor = executor or executor_for(sweep)
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


_RECORD_FIELDS = set(Record.__dataclass_fields__)


def _known_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Result fields that are Record columns; anything else an adapter adds lives in backend_extra."""
    return {k: v for k, v in fields.items() if k in _RECORD_FIELDS}

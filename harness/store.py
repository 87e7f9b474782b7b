"""Append-only results store: ``<results>/<sweep>/`` holds Parquet files plus a JSON manifest.

Layout::

    manifest.json                    schema version, and one entry per run (config, environment, timestamps)
    parts/<run_id>/<NNNN>.*.parquet  one cell's rows/samples/predictions, written atomically as the cell ends
    rows-<run_id>.parquet            a finished run's rows, consolidated from its parts
    samples-<run_id>.parquet         raw latencies: record_id, repeat, iteration, latency_ns
    predictions-<run_id>.parquet     per eval sample: record_id, sample_index, pred, correct

Nothing is rewritten in place: a run adds files; consolidation writes the run file first and removes the parts
after, and readers drop duplicate ``record_id`` rows, so an interruption at any point loses no finished cell.

Several processes may share one folder (two sweeps, a sweep and a reader): ``.lock`` is taken exclusively to
update the manifest or consolidate parts, and shared to read, so a reader never sees parts vanish mid-read. A run
whose process died (its manifest entry names the pid and host) is consolidated by the next sweep into the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ResultsError
from harness.records import SCHEMA_VERSION, Record, to_frame, upgrade_frame

MANIFEST = "manifest.json"
LOCK = ".lock"
KINDS = ("rows", "samples", "predictions")


def os_error_message(exc: OSError, what: str) -> str:
    """One line for a file-system failure: what failed, on which path, and what to do about it."""
    path = exc.filename or "?"
    fix = {
        errno.ENOSPC: "the disk is full: free space or pass --results-dir on another disk",
        errno.EDQUOT: "the disk quota is exhausted: free space or pass --results-dir elsewhere",
        errno.EACCES: "permission denied: make it writable or pass --results-dir to a folder you own",
        errno.EPERM: "permission denied: make it writable or pass --results-dir to a folder you own",
        errno.EROFS: "the file system is read-only: pass --results-dir to a writable folder",
        errno.ENOTDIR: "a path component is a file, not a folder: remove it or choose another path",
        errno.EEXIST: "a file is in the way of a folder: remove it or choose another path",
        errno.EISDIR: "a folder is in the way of a file: remove it or choose another path",
    }.get(exc.errno or 0, "check the path and the disk")
    return f"{what}: {path}: {exc.strerror or exc} ({fix})"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_parquet(df: Any, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class ResultsStore:
    """One sweep's results folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        """flock on ``<root>/.lock``: exclusive for writers that change shared files, shared for readers.

        A folder a reader cannot write to (read-only media, someone else's results) is read without a lock: no
        writer of ours can be changing it.
        """
        import fcntl

        path = self.root / LOCK
        try:
            if exclusive:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            else:
                fd = os.open(path, os.O_RDONLY) if path.exists() else os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exclusive:
                raise ResultsError(os_error_message(exc, "cannot write the results folder")) from None
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def check_writable(self) -> None:
        """Fail early, with one line, when this folder cannot hold results (before any cell runs)."""
        if self.root.exists() and not self.root.is_dir():
            raise ResultsError(f"results path {self.root} is a file, not a folder: remove it or pass --results-dir")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ResultsError(os_error_message(exc, "cannot write the results folder")) from None

    # -- manifest --------------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.root / MANIFEST
        if not path.is_file():
            return {"schema_version": SCHEMA_VERSION, "runs": []}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(
                f"{path} is not valid JSON ({exc}); restore it from backup or delete the folder"
            ) from None
        if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ResultsError(
                f"{path} uses results schema {data['schema_version']}; this qtbench reads ≤ {SCHEMA_VERSION}: "
                "upgrade qtbench"
            )
        return data

    def record_run(self, run: dict[str, Any]) -> None:
        """Add or update (by run_id) one run's manifest entry (read-modify-write under the folder's lock)."""
        with self.lock(exclusive=True):
            self._record_run_locked(run)

    def _record_run_locked(self, run: dict[str, Any]) -> None:
        data = self.manifest()
        runs = [r for r in data["runs"] if r.get("run_id") != run["run_id"]]
        data["runs"] = [*runs, run]
        data["schema_version"] = SCHEMA_VERSION
        try:
            atomic_write_bytes(self.root / MANIFEST, json.dumps(data, indent=2, default=str).encode())
        except OSError as exc:
            raise ResultsError(os_error_message(exc, "cannot write the results manifest")) from None

    def finish_run(self, run_id: str, **fields: Any) -> None:
        """Consolidate a run's parts and stamp its manifest entry, as one step under the lock."""
        with self.lock(exclusive=True):
            self._consolidate_locked(run_id)
            entry = next((r for r in self.manifest()["runs"] if r.get("run_id") == run_id), {"run_id": run_id})
            self._record_run_locked({**entry, **fields})

    def recover_stale_runs(self, is_alive: Any) -> list[str]:
        """Consolidate runs that never finished and whose process is gone; returns their ids.

        ``is_alive(entry)`` decides from the manifest entry (pid, host, process start time). Their rows were
        already safe in parts; this only folds the parts so they stop accumulating, and marks the run
        ``interrupted``.
        """
        from harness.sweep import utc_now

        recovered = []
        with self.lock(exclusive=True):
            for entry in self.manifest()["runs"]:
                if entry.get("finished_utc") is None and not is_alive(entry):
                    self._consolidate_locked(entry["run_id"])
                    self._record_run_locked({**entry, "finished_utc": utc_now(), "interrupted": True})
                    recovered.append(entry["run_id"])
            parts = self.root / "parts"
            known = {r.get("run_id") for r in self.manifest()["runs"]}
            if parts.is_dir():  # parts of a run the manifest never heard of (killed before its entry was written)
                for d in parts.iterdir():
                    if d.is_dir() and d.name not in known:
                        self._consolidate_locked(d.name)
                        recovered.append(d.name)
        return recovered

    # -- writing ---------------------------------------------------------------------------------------------
    def write_cell(
        self,
        run_id: str,
        index: int,
        record: Record,
        samples: list[np.ndarray] | None = None,
        predictions: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        import pandas as pd

        part = self.root / "parts" / run_id
        if samples:
            frames = [
                pd.DataFrame(
                    {
                        "record_id": record.record_id,
                        "repeat": r,
                        "iteration": np.arange(len(s)),
                        "latency_ns": np.asarray(s, dtype=np.int64),
                    }
                )
                for r, s in enumerate(samples)
            ]
            _write_parquet(pd.concat(frames, ignore_index=True), part / f"{index:05d}.samples.parquet")
        if predictions is not None:
            pred = np.asarray(predictions, dtype=np.int32)
            correct = (pred == labels) if labels is not None else np.zeros(len(pred), bool)
            df = pd.DataFrame(
                {
                    "record_id": record.record_id,
                    "sample_index": np.arange(len(pred)),
                    "pred": pred,
                    "correct": correct,
                    "has_label": labels is not None,
                }
            )
            _write_parquet(df, part / f"{index:05d}.predictions.parquet")
        # rows last: a row on disk implies its samples are too.
        _write_parquet(to_frame([record]), part / f"{index:05d}.rows.parquet")

    def consolidate(self, run_id: str) -> None:
        """Merge a run's per-cell parts into one file per kind, then drop the parts (under the folder's lock)."""
        with self.lock(exclusive=True):
            self._consolidate_locked(run_id)

    def _consolidate_locked(self, run_id: str) -> None:
        part = self.root / "parts" / run_id
        if not part.is_dir():
            return
        for kind in KINDS:
            files = sorted(part.glob(f"*.{kind}.parquet"))
            target = self.root / f"{kind}-{run_id}.parquet"
            if target.is_file():  # an earlier consolidation wrote it: keep its rows too (readers dedupe by id)
                files = [target, *files]
            bad: list[Path] = []
            if files:
                _write_parquet(_read_many(files, corrupt=bad), target)
            for f in bad:  # never delete what cannot be read: keep it aside for the user to inspect
                (self.root / "quarantine").mkdir(exist_ok=True)
                shutil.move(str(f), self.root / "quarantine" / f"{run_id}-{f.name}")
        shutil.rmtree(part)
        parent = self.root / "parts"
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    # -- reading ---------------------------------------------------------------------------------------------
    def _files(self, kind: str) -> list[Path]:
        return sorted(self.root.glob(f"{kind}-*.parquet")) + sorted(self.root.glob(f"parts/*/*.{kind}.parquet"))

    def rows(self) -> Any:
        with self.lock(exclusive=False):
            files = self._files("rows")
            if not files:
                return upgrade_frame(to_frame([]), str(self.root))
            df = upgrade_frame(_read_many(files), str(self.root))
        return df.drop_duplicates("record_id", keep="first").reset_index(drop=True)

    def samples(self, record_ids: list[str] | None = None) -> Any:
        return self._read_kind("samples", record_ids, ["record_id", "repeat", "iteration"])

    def predictions(self, record_ids: list[str] | None = None) -> Any:
        return self._read_kind("predictions", record_ids, ["record_id", "sample_index"])

    def _read_kind(self, kind: str, record_ids: list[str] | None, key: list[str]) -> Any:
        import pandas as pd

        filters = [("record_id", "in", list(record_ids))] if record_ids is not None else None
        with self.lock(exclusive=False):
            files = self._files(kind)
            if not files:
                return pd.DataFrame()
            df = _read_many(files, filters)
        return df.drop_duplicates(key, keep="first").reset_index(drop=True)


def _read_many(files: list[Path], filters: Any = None, corrupt: list[Path] | None = None) -> Any:
    """Concatenate Parquet files; a corrupt one is a one-line ResultsError naming it, or, when ``corrupt`` is
    given (folding parts), appended there and skipped."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frames = []
    for f in files:
        try:
            frames.append(pq.read_table(f, filters=filters).to_pandas())
        except (pa.ArrowException, OSError) as exc:
            if corrupt is not None:
                corrupt.append(f)
                continue
            raise ResultsError(
                f"{f} is not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "move it out of the results folder (its cells will be measured again on the next sweep)"
            ) from None
    frames = [f for f in frames if len(f.columns)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def stores_under(path: str | Path) -> list[ResultsStore]:
    """The store at ``path`` (a sweep folder), or every sweep folder directly inside it."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return [ResultsStore(root)]
    return [ResultsStore(p.parent) for p in sorted(root.glob(f"*/{MANIFEST}"))]


def load_results(path: str | Path, latest: bool = True) -> Any:
    """Rows of a results folder as a DataFrame.

    ``latest=True`` keeps the newest row per ``cell_key`` (a re-measured cell replaces the old one in views);
    ``latest=False`` returns the whole append-only history. ``path`` may also be a folder of sweep folders.
    """
    import pandas as pd

    root = Path(path)
    if not root.is_dir():
        raise ResultsError(f"results folder {root} does not exist; run `qtbench sweep` first or pass its path")
    stores = stores_under(root)
    if not stores:
        raise ResultsError(f"{root} holds no qtbench results (no {MANIFEST}); pass a folder written by `qtbench sweep`")
    df = pd.concat([s.rows() for s in stores], ignore_index=True)
    if latest and len(df):
        # a cell key is per sweep: two sweeps in one folder of folders may share one, and both rows are kept
        df = df.sort_values("created_utc").drop_duplicates(["sweep", "cell_key"], keep="last")
    return df.reset_index(drop=True)

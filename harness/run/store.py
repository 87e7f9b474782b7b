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
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qtbench.harness.core.errors import ResultsError
from qtbench.harness.core.records import SCHEMA_VERSION, Record, to_frame, upgrade_frame, utc_now
from qtbench.harness.core.tables import printable

MANIFEST = "manifest.json"
LOCK = ".lock"
KINDS = ("rows", "samples", "predictions")
#: Readers' duplicate keys per kind (the first file in name order wins); compaction and merge use the same keys.
KEYS = {
    "rows": ["record_id"],
    "samples": ["record_id", "repeat", "iteration"],
    "predictions": ["record_id", "sample_index"],
}


def os_error_message(exc: OSError, what: str, flag: str = "--results-dir") -> str:
    """One line for a file-system failure: what failed, on which path, and what to do about it (``flag``: the
    option that moves what failed elsewhere)."""
    path = exc.filename or "(a file under the results folder)"
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
    return f"{what}: {path}: {exc.strerror or exc} ({fix.replace('--results-dir', flag)})"


def check_writable_dir(path: Path, what: str, flag: str) -> None:
    """Fail early, with one line naming ``flag``, when ``path`` could not be created or written (before a sweep
    spends its time, e.g. on a report folder that is read-only). Creates nothing: the nearest existing folder
    is asked (``access``, which also reports a read-only file system)."""
    path = path.absolute()
    if path.exists() and not path.is_dir():
        raise ResultsError(f"{what} {path} is a file, not a folder: remove it or pass {flag}")
    here = path
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise ResultsError(f"{what} {path}: {here} is a file, not a folder: remove it or pass {flag}")
    if not os.access(here, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(here) else errno.EACCES
        exc = OSError(code, os.strerror(code), str(here))
        raise ResultsError(os_error_message(exc, f"cannot write the {what}", flag))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: results are shared files (a team's folder, a CI artifact): written with the mode a plain ``open`` would give
#: (0666 less the umask), not mkstemp's private 0600
_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (temp file, fsync, rename). A failure names ``path`` itself: a full disk
    raises from write() with no file name, which would otherwise print as '?'."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
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


_SCHEMAS: dict[str, Any] = {}  # per part kind: the Arrow schema pandas gave the first part written


def _write_columns(kind: str, columns: dict[str, Any], path: Path) -> None:
    """A per-cell part written straight through Arrow with the schema the DataFrame path produced (the same
    file, without building a DataFrame per cell: that was most of a cell's write time); the DataFrame path is
    the fallback whenever a value does not fit the remembered schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _SCHEMAS.get(kind)
    table = None
    if schema is not None:
        try:
            table = pa.Table.from_pydict(columns, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            table = None
    if table is None:
        import pandas as pd

        df = to_frame([dict(zip(columns, (v[0] for v in columns.values()), strict=True))]) if kind == "rows" else None
        table = pa.Table.from_pandas(df if df is not None else pd.DataFrame(columns), preserve_index=False)
        if not any(pa.types.is_null(f.type) for f in table.schema):  # a null-typed column would not generalise
            _SCHEMAS.setdefault(kind, table.schema)
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

    def forgotten(self) -> set[str]:
        """Record ids hidden from the views; a manifest that cannot be read hides nothing (rows carry their own
        identity and stay readable without it)."""
        try:
            return set(self.manifest().get("forgotten", []))
        except ResultsError:
            return set()

    def forget(self, record_ids: set[str]) -> int:
        """Hide rows from the views (``load_results``); the append-only history keeps them. Returns how many
        were newly forgotten."""
        with self.lock(exclusive=True):
            data = self.manifest()
            before = set(data.get("forgotten", []))
            data["forgotten"] = sorted(before | set(record_ids))
            try:
                atomic_write_bytes(self.root / MANIFEST, json.dumps(data, indent=2, default=str).encode())
            except OSError as exc:
                raise ResultsError(os_error_message(exc, "cannot write the results manifest")) from None
        return len(set(record_ids) - before)

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
        part = self.root / "parts" / run_id
        if samples:
            n = [len(s) for s in samples]
            _write_columns(
                "samples",
                {
                    "record_id": np.full(sum(n), record.record_id, dtype=object),
                    "repeat": np.repeat(np.arange(len(samples), dtype=np.int64), n),
                    "iteration": np.concatenate([np.arange(k, dtype=np.int64) for k in n]),
                    "latency_ns": np.concatenate([np.asarray(s, dtype=np.int64) for s in samples]),
                },
                part / f"{index:05d}.samples.parquet",
            )
        if predictions is not None:
            pred = np.asarray(predictions, dtype=np.int32)
            correct = (pred == labels) if labels is not None else np.zeros(len(pred), bool)
            _write_columns(
                "predictions",
                {
                    "record_id": np.full(len(pred), record.record_id, dtype=object),
                    "sample_index": np.arange(len(pred), dtype=np.int64),
                    "pred": pred,
                    "correct": np.asarray(correct, dtype=bool),
                    "has_label": np.full(len(pred), labels is not None),
                },
                part / f"{index:05d}.predictions.parquet",
            )
        # rows last: a row on disk implies its samples are too.
        _write_columns("rows", {k: [v] for k, v in record.to_dict().items()}, part / f"{index:05d}.rows.parquet")

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
        found = sorted(self.root.glob(f"{kind}-*.parquet")) + sorted(self.root.glob(f"parts/*/*.{kind}.parquet"))
        if kind == "rows":  # once per read of a folder: Parquet files no kind claims are named too
            claimed = {f for k in KINDS for f in self.root.glob(f"{k}-*.parquet")}
            for f in sorted(self.root.glob("*.parquet")):
                if f not in claimed:
                    _warn_foreign(f, "its name is not <kind>-<run id>.parquet")
        return [f for f in found if f.parent != self.root or _is_ours(f, kind)]  # parts/ are only ever ours

    def rows(self) -> Any:
        with self.lock(exclusive=False):
            files = self._files("rows")
            if not files:
                return upgrade_frame(to_frame([]), str(self.root))
            df = upgrade_frame(_read_many(files), str(self.root))
        return df.drop_duplicates(KEYS["rows"], keep="first").reset_index(drop=True)

    def samples(self, record_ids: list[str] | None = None) -> Any:
        return self._read_kind("samples", record_ids)

    def predictions(self, record_ids: list[str] | None = None) -> Any:
        return self._read_kind("predictions", record_ids)

    def _read_kind(self, kind: str, record_ids: list[str] | None) -> Any:
        import pandas as pd

        filters = [("record_id", "in", list(record_ids))] if record_ids is not None else None
        with self.lock(exclusive=False):
            files = self._files(kind)
            if not files:
                return pd.DataFrame()
            df = _read_many(files, filters)
        return df.drop_duplicates(KEYS[kind], keep="first").reset_index(drop=True)


#: Per kind: the value columns ``record_arrays`` returns, with the dtype and fill for files written before a
#: column existed. A record's entries are ordered by the rest of its duplicate key (``KEYS``; samples: repeat, then
#: iteration, the first splitting them into repeats).
_VALUES = {
    "samples": {"latency_ns": (np.float64, np.nan)},
    "predictions": {"pred": (np.int32, -1), "correct": (np.bool_, False), "has_label": (np.bool_, False)},
}


@dataclass
class RecordArrays:
    """One kind's per-sample data of many records as flat numpy columns, sorted by record then order key, with
    each record's [start, stop) span — what ``samples()``/``predictions()`` return, without a DataFrame of
    millions of Python strings (a 10k-cell check or report spent most of its time building and de-duplicating
    those)."""

    columns: dict[str, np.ndarray]
    spans: dict[str, tuple[int, int]]
    repeats: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # samples: one span per repeat


def record_arrays(
    stores: list[ResultsStore], kind: str, record_ids: list[str], values: tuple[str, ...] | None = None
) -> RecordArrays:
    """``kind`` ("samples" or "predictions") of ``record_ids`` across ``stores``, de-duplicated on the store's
    keys with the same rule as the readers (the first file in name order wins; stores in the order given).
    ``values``: only these value columns (the others are not read: a check needs no predicted classes).

    record_id is read dictionary-encoded and mapped to integer codes through each chunk's (small) dictionary,
    so no per-row string is ever materialised. Data as the store writes it (each record's entries together, in
    key order) is used as read; otherwise one stable lexsort orders it and drops duplicates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = {r: i for i, r in enumerate(dict.fromkeys(record_ids))}
    names = list(wanted)
    order_cols, value_cols = KEYS[kind][1:], _VALUES[kind]
    if values is not None:
        unknown = set(values) - set(value_cols)
        if unknown:
            raise ValueError(f"record_arrays: no {kind} column(s) {sorted(unknown)}; have {sorted(value_cols)}")
        value_cols = {c: v for c, v in value_cols.items() if c in values}
    kinds = {c: (np.int64, 0) for c in order_cols} | value_cols  # column -> (dtype, fill)
    codes, cols = [], {c: [] for c in kinds}
    for store in stores:
        with store.lock(exclusive=False):
            files = store._files(kind)
            for f in files:
                try:
                    present = set(pq.read_schema(f).names)
                    columns = [c for c in ("record_id", *kinds) if c in present]
                    table = pq.read_table(f, columns=columns, read_dictionary=["record_id"])
                except (pa.ArrowException, OSError) as exc:
                    raise _unreadable(f, exc) from None
                if not table.num_rows or "record_id" not in table.column_names:
                    continue
                rid = table.column("record_id")
                parts = []
                for chunk in rid.chunks:
                    if not pa.types.is_dictionary(chunk.type):
                        chunk = chunk.dictionary_encode()
                    lut = np.array([wanted.get(v, -1) for v in chunk.dictionary.to_pylist()] + [-1], np.int32)
                    idx = chunk.indices.to_numpy(zero_copy_only=False)
                    if chunk.null_count:
                        idx = np.where(chunk.is_valid().to_numpy(zero_copy_only=False), idx, len(lut) - 1)
                    parts.append(lut.take(idx))
                del rid
                code = np.concatenate(parts) if len(parts) != 1 else parts[0]
                del parts
                keep = code >= 0
                if not keep.any():
                    continue
                every = bool(keep.all())
                codes.append(code if every else code[keep])
                for c, (dtype, fill) in kinds.items():
                    if c in table.column_names:
                        col = table.column(c)
                        arr = np.asarray(col.fill_null(fill).to_numpy() if col.null_count else col.to_numpy())
                        cols[c].append((arr if every else arr[keep]).astype(dtype, copy=False))
                    else:
                        cols[c].append(np.full(int(keep.sum()), fill, dtype))
    if not codes:
        return RecordArrays({c: np.zeros(0, v[0]) for c, v in value_cols.items()}, {})
    code = np.concatenate(codes) if len(codes) != 1 else codes[0]
    flat = {c: np.concatenate(v) if len(v) != 1 else v[0] for c, v in cols.items()}
    del codes, cols
    keys = [flat[c] for c in order_cols]
    run_start = np.ones(len(code), bool)
    run_start[1:] = code[1:] != code[:-1]
    # as written (one cell's entries together, in order): strictly rising keys within each record's single run
    rising = np.zeros(len(code) - 1, bool)
    tied = np.ones(len(code) - 1, bool)
    for k in keys:
        a, b = k[:-1], k[1:]
        rising |= tied & (b > a)
        tied &= b == a
    heads = code[run_start]
    if len(np.unique(heads)) == len(heads) and (rising | run_start[1:]).all():
        out = {c: flat[c] for c in value_cols}
    else:  # duplicates (a re-folded run) or interleaved files: a stable sort, the first file's entry kept
        order = np.lexsort((*reversed(keys), code))
        code, keys = code[order], [k[order] for k in keys]
        first = np.ones(len(code), bool)
        first[1:] = code[1:] != code[:-1]
        for k in keys:
            first[1:] |= k[1:] != k[:-1]
        sel = order[first]
        code, keys = code[first], [k[first] for k in keys]
        out = {c: flat[c][sel] for c in value_cols}
    cuts = np.flatnonzero(code[1:] != code[:-1]) + 1
    starts, stops = np.r_[0, cuts], np.r_[cuts, len(code)]
    spans = {names[c]: (int(a), int(b)) for c, a, b in zip(code[starts].tolist(), starts, stops, strict=True)}
    repeats: dict[str, list[tuple[int, int]]] = {}
    if kind == "samples":
        rc = np.flatnonzero((code[1:] != code[:-1]) | (keys[0][1:] != keys[0][:-1])) + 1
        r_starts, r_stops = np.r_[0, rc], np.r_[rc, len(code)]
        for c, a, b in zip(code[r_starts].tolist(), r_starts.tolist(), r_stops.tolist(), strict=True):
            repeats.setdefault(names[c], []).append((a, b))
    return RecordArrays(out, spans, repeats)


def _unreadable(f: Path, exc: Exception) -> ResultsError:
    """The one-line error for a Parquet file no reader can open, with what to do about it."""
    return ResultsError(
        f"{f} is not a readable Parquet file ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
        "move it out of the results folder (its cells will be measured again on the next sweep)"
    )


def _read_many(files: list[Path], filters: Any = None, corrupt: list[Path] | None = None) -> Any:
    """Concatenate Parquet files; a corrupt one is a one-line ResultsError naming it, or, when ``corrupt`` is
    given (folding parts), appended there and skipped."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, filters=filters))
        except (pa.ArrowException, OSError) as exc:
            if corrupt is not None:
                corrupt.append(f)
                continue
            raise _unreadable(f, exc) from None
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pd.DataFrame()
    if all(t.schema.equals(tables[0].schema, check_metadata=False) for t in tables[1:]):
        # one conversion of the joined table rather than one per file: a run folds thousands of parts
        return pa.concat_tables(tables).to_pandas()
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)  # columns differ (schemas, nulls)


#: The compacted file's run-id slot: ``<kind>-0-compacted.parquet`` sorts before every run's own file (run ids
#: start with a year), so readers see its rows first, in the order the folded files had.
COMPACTED = "0-compacted"


@dataclass
class CompactSummary:
    """What ``compact`` did to one folder: Parquet files and bytes before/after, runs whose parts it folded."""

    root: Path
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rows: int = 0
    runs: int = 0
    recovered: list[str] = field(default_factory=list)


def _parquet_files(root: Path) -> list[Path]:
    return sorted(root.glob("*-*.parquet")) + sorted(root.glob("parts/*/*.parquet"))


#: the columns without which a Parquet file in a results folder is not one qtbench wrote (a file another tool
#: dropped there, or an export renamed): such a file is skipped with one warning, never read as rows
_REQUIRED = {
    "rows": {"record_id", "run_id", "cell_key", "status", "model", "backend", "spec_id", "schema_version"},
    "samples": {"record_id", "repeat", "iteration", "latency_ns"},
    "predictions": {"record_id", "sample_index", "pred"},
}
_WARNED: set[Path] = set()


def _is_ours(f: Path, kind: str) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(f).names)
    except (pa.ArrowException, OSError):
        return True  # unreadable: the reader names it as corrupt, with the fix
    missing = _REQUIRED[kind] - names
    if missing:
        _warn_foreign(f, f"no {', '.join(sorted(missing)[:4])} column{'s' if len(missing) > 1 else ''}")
    return not missing


def _warn_foreign(f: Path, why: str) -> None:
    """One line on stderr per foreign file and process: the views leave it out, and say so once."""
    if f in _WARNED:
        return
    _WARNED.add(f)

    print(
        f"qtbench: warning: ignoring {printable(f)}: not a qtbench results file ({why}); move it out of the "
        "results folder to silence this",
        file=sys.stderr,
    )


def compact(store: ResultsStore, is_alive: Any = None) -> CompactSummary:
    """Fold every finished run's files into one ``<kind>-0-compacted.parquet`` per kind, keeping all history.

    Re-runs add files per run; readers open each one, so a folder re-run for months gets slow. This keeps every
    record: what ``rows()``/``samples()``/``predictions()`` return is the same before and after (checked by reading
    the new file back before anything is removed). Parts of live runs are left alone; parts of dead runs
    (``is_alive(entry)`` false) are consolidated first, as the next sweep would. Crash-safe: the new file is written
    beside the old ones and swapped in atomically, the folded files are removed after, and readers drop the
    duplicates a crash in between leaves. Runs under the folder's exclusive lock, so readers wait, never see a
    half-compacted folder. Idempotent: a compacted folder is left as it is.
    """
    summary = CompactSummary(store.root)
    before = _parquet_files(store.root)
    summary.files_before, summary.bytes_before = len(before), sum(f.stat().st_size for f in before)
    if is_alive is not None:
        summary.recovered = store.recover_stale_runs(is_alive)
    with store.lock(exclusive=True):
        for stale in store.root.glob(".compacting-*.parquet"):  # a compaction that crashed before its swap
            stale.unlink()
        folded: dict[str, list[str]] = {}
        for kind in KINDS:
            names = _compact_kind(store.root, kind)
            if names:
                folded[kind] = names
        if folded:
            data = store.manifest()

            data["compactions"] = [*data.get("compactions", []), {"utc": utc_now(), "folded": folded}]
            atomic_write_bytes(store.root / MANIFEST, json.dumps(data, indent=2, default=str).encode())
        summary.runs = len(store.manifest()["runs"])
    after = _parquet_files(store.root)
    summary.files_after, summary.bytes_after = len(after), sum(f.stat().st_size for f in after)
    summary.rows = len(store.rows())
    return summary


def _compact_kind(root: Path, kind: str) -> list[str]:
    """Fold ``<kind>-*.parquet`` into the compacted file (caller holds the lock); returns the names folded."""
    target = root / f"{kind}-{COMPACTED}.parquet"
    files = [f for f in sorted(root.glob(f"{kind}-*.parquet")) if _is_ours(f, kind)]
    if not files or files == [target]:
        return []
    df = _read_many(files)  # a corrupt file stops here, named, before anything changed
    df = df.drop_duplicates(KEYS[kind], keep="first").reset_index(drop=True) if len(df.columns) else df
    tmp = root / f".compacting-{kind}.parquet"
    _write_parquet(df, tmp)
    back = _read_many([tmp])
    if not (len(df.columns) == 0 and len(back) == 0) and not back.equals(df):
        tmp.unlink()
        raise ResultsError(
            f"{root}: compacting the {kind} files would change what they read back as (mixed column types across "
            "runs?); nothing was changed. Report this with the folder's manifest.json"
        )
    os.replace(tmp, target)
    _fsync_dir(root)
    for f in files:
        if f != target:
            f.unlink()
    _fsync_dir(root)
    return [f.name for f in files if f != target]


def _fsync_dir(path: Path) -> None:
    """Make renames and unlinks in ``path`` durable (a crash must not bring back a folded file without the new)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stores_under(path: str | Path) -> list[ResultsStore]:
    """The store at ``path`` (a sweep folder), or every sweep folder directly inside it."""
    root = Path(path)
    if (root / MANIFEST).is_file():
        return [ResultsStore(root)]
    return [ResultsStore(p.parent) for p in sorted(root.glob(f"*/{MANIFEST}"))]


#: what a user means by "one cell": the same model (by name), backend (by key), spec and device in one sweep.
#: A change that gives a cell another key (the data fixed, options changed, a new checkpoint under the same name)
#: is still this cell: its newest row answers for it in every view (sweep, show, report, compare, check, merge).
LOGICAL_CELL = ("sweep", "model", "backend", "spec_id", "device")


def latest_rows(df: Any, across_sweeps: bool = False) -> Any:
    """The one definition of "the latest result of a cell": the newest row per :data:`LOGICAL_CELL`. A fixed cell's
    newer ``ok`` supersedes its older failure whatever its key; a newer failure is shown, never hidden behind an
    older success. ``across_sweeps``: one row per cell even when several sweeps measured it (a study pooling
    folders must not count a checkpoint twice)."""
    if not len(df):
        return df
    key = [c for c in LOGICAL_CELL if c in df.columns and not (across_sweeps and c == "sweep")]
    return df.sort_values("created_utc", kind="stable").drop_duplicates(key, keep="last")


def superseded(df: Any) -> Any:
    """Rows of the history that :func:`latest_rows` does not show (older results of a cell)."""
    if not len(df):
        return df
    return df[~df["record_id"].isin(set(latest_rows(df)["record_id"]))]


def load_results(path: str | Path, latest: bool = True) -> Any:
    """Rows of a results folder as a DataFrame.

    ``latest=True`` keeps each cell's latest row (:func:`latest_rows`) and leaves out rows forgotten with
    ``qtbench results forget``; ``latest=False`` returns the whole append-only history. ``path`` may also be a
    folder of sweep folders.
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
        forgotten = {r for s in stores for r in s.forgotten()}
        df = latest_rows(df[~df["record_id"].isin(forgotten)] if forgotten else df)
    return df.reset_index(drop=True)

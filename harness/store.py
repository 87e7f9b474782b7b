"""Append-only results store: ``<results>/<sweep>/`` holds Parquet files plus a JSON manifest.

Layout::

    manifest.json                    schema version, and one entry per run (config, environment, timestamps)
    parts/<run_id>/<NNNN>.*.parquet  one cell's rows/samples/predictions, written atomically as the cell ends
    rows-<run_id>.parquet            a finished run's rows, consolidated from its parts
    samples-<run_id>.parquet         raw latencies: record_id, repeat, iteration, latency_ns
    predictions-<run_id>.parquet     per eval sample: record_id, sample_index, pred, correct

Nothing is rewritten in place: a run adds files; consolidation writes the run file first and removes the parts
after, and readers drop duplicate ``record_id`` rows, so an interruption at any point loses no finished cell.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import ResultsError
from harness.records import SCHEMA_VERSION, Record, to_frame, upgrade_frame

MANIFEST = "manifest.json"
KINDS = ("rows", "samples", "predictions")


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
        """Add or update (by run_id) one run's manifest entry."""
        data = self.manifest()
        runs = [r for r in data["runs"] if r.get("run_id") != run["run_id"]]
        data["runs"] = [*runs, run]
        data["schema_version"] = SCHEMA_VERSION
        atomic_write_bytes(self.root / MANIFEST, json.dumps(data, indent=2, default=str).encode())

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
        """Merge a run's per-cell parts into one file per kind, then drop the parts."""
        part = self.root / "parts" / run_id
        if not part.is_dir():
            return
        for kind in KINDS:
            files = sorted(part.glob(f"*.{kind}.parquet"))
            if files:
                _write_parquet(_read_many(files), self.root / f"{kind}-{run_id}.parquet")
        shutil.rmtree(part)
        parent = self.root / "parts"
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    # -- reading ---------------------------------------------------------------------------------------------
    def _files(self, kind: str) -> list[Path]:
        return sorted(self.root.glob(f"{kind}-*.parquet")) + sorted(self.root.glob(f"parts/*/*.{kind}.parquet"))

    def rows(self) -> Any:
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

        files = self._files(kind)
        if not files:
            return pd.DataFrame()
        filters = [("record_id", "in", list(record_ids))] if record_ids is not None else None
        df = _read_many(files, filters)
        return df.drop_duplicates(key, keep="first").reset_index(drop=True)


def _read_many(files: list[Path], filters: Any = None) -> Any:
    import pandas as pd
    import pyarrow.parquet as pq

    frames = [pq.read_table(f, filters=filters).to_pandas() for f in files]
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
        df = df.sort_values("created_utc").drop_duplicates("cell_key", keep="last")
    return df.reset_index(drop=True)

"""Merge results folders by record id: ``qtbench merge OUT IN...``.

Offline boards run their own sweep (``qtbench sweep --board-id ID``) and their folders are joined afterwards.
The merge is a set union keyed by ``record_id`` (rows), ``(record_id, repeat, iteration)`` (raw latencies) and
``(record_id, sample_index)`` (predictions); manifest runs are joined by ``run_id``. Whatever the inputs' order,
and however often it is repeated, the output holds the same set, and what is already there is never rewritten
with other content: each run's records go to that run's own ``<kind>-<run_id>.parquet`` (rows sorted by record
id), which a later merge extends only with records it lacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ResultsError
from harness.records import SCHEMA_VERSION
from harness.store import KEYS, MANIFEST, ResultsStore, _read_many, _write_parquet, atomic_write_bytes, stores_under


@dataclass
class MergeSummary:
    """What one merge added to one output folder."""

    out: Path
    sources: list[Path] = field(default_factory=list)
    rows_added: int = 0
    rows_present: int = 0
    runs_added: int = 0
    samples_added: int = 0
    predictions_added: int = 0


def merge(out: str | Path, inputs: list[str | Path]) -> list[MergeSummary]:
    """Merge each input into ``out``; returns one summary per output sweep folder touched.

    An input that is one sweep's folder (it has a manifest) merges into ``out`` itself; an input that is a folder
    of sweep folders (``results/``) merges each ``<sweep>/`` into ``out/<sweep>/``.
    """
    out = Path(out)
    pairs: list[tuple[ResultsStore, ResultsStore]] = []
    for item in inputs:
        src = Path(item)
        if not src.is_dir():
            raise ResultsError(f"merge input {src} does not exist or is not a folder; pass a results folder")
        stores = stores_under(src)
        if not stores:
            raise ResultsError(f"merge input {src} holds no qtbench results (no {MANIFEST} in it or its sub-folders)")
        if (src / MANIFEST).is_file():
            pairs.append((stores[0], ResultsStore(out)))
        else:
            if (out / MANIFEST).is_file():
                raise ResultsError(
                    f"merge input {src} is a folder of sweep folders but {out} is one sweep's folder: "
                    f"pass {out.parent} as OUT (each sweep merges into OUT/<sweep>)"
                )
            pairs += [(s, ResultsStore(out / s.root.name)) for s in stores]
    summaries: dict[Path, MergeSummary] = {}
    for src, dst in pairs:
        if src.root.resolve() == dst.root.resolve():
            continue  # merging a folder into itself adds nothing
        s = summaries.setdefault(dst.root, MergeSummary(dst.root))
        s.sources.append(src.root)
        _merge_one(src, dst, s)
    return list(summaries.values())


def _merge_one(src: ResultsStore, dst: ResultsStore, summary: MergeSummary) -> None:
    src_manifest = src.manifest()  # refuses a newer schema with one line
    rows = src.rows()
    dst.check_writable()
    with dst.lock(exclusive=True):
        have = _rows_locked(dst)
        have_ids = set(have["record_id"]) if len(have) else set()
        new = rows[~rows["record_id"].isin(have_ids)] if len(rows) else rows
        summary.rows_present += len(rows) - len(new)
        if len(new):
            ids = list(new["record_id"])
            extra = {"samples": src.samples(ids), "predictions": src.predictions(ids)}
            run_of = dict(zip(new["record_id"], new["run_id"], strict=True))
            for run_id, group in new.groupby("run_id", sort=True):
                _extend(dst, "rows", str(run_id), group)
                summary.rows_added += len(group)
                for kind, df in extra.items():
                    if len(df):
                        part = df[df["record_id"].map(run_of) == run_id]
                        if len(part):
                            added = _extend(dst, kind, str(run_id), part)
                            setattr(summary, f"{kind}_added", getattr(summary, f"{kind}_added") + added)
        summary.runs_added += _merge_manifest(dst, src_manifest)


def _rows_locked(store: ResultsStore) -> Any:
    """The folder's rows while the caller holds its exclusive lock (``ResultsStore.rows`` takes a shared one)."""
    from harness.records import to_frame, upgrade_frame

    files = store._files("rows")
    if not files:
        return upgrade_frame(to_frame([]), str(store.root))
    return upgrade_frame(_read_many(files), str(store.root))


def _extend(dst: ResultsStore, kind: str, run_id: str, new: Any) -> int:
    """Add ``new`` records to ``<kind>-<run_id>.parquet`` (union by the kind's key, sorted): returns how many."""
    import pandas as pd

    target = dst.root / f"{kind}-{run_id}.parquet"
    key = KEYS[kind]
    old = _read_many([target]) if target.is_file() else pd.DataFrame()
    both = pd.concat([old, new], ignore_index=True) if len(old) else new
    both = both.drop_duplicates(key, keep="first").sort_values(key, kind="stable").reset_index(drop=True)
    added = len(both) - len(old)
    if added:
        _write_parquet(both, target)
    return added


def _merge_manifest(dst: ResultsStore, src_manifest: dict[str, Any]) -> int:
    """Join runs by run_id (a finished entry wins over an unfinished one; ties by content), sorted by start time."""
    data = dst.manifest()
    runs = {r["run_id"]: r for r in data.get("runs", []) if "run_id" in r}
    added = 0
    for entry in src_manifest.get("runs", []):
        rid = entry.get("run_id")
        if not rid:
            continue
        if rid not in runs:
            added += 1
            runs[rid] = entry
        else:
            runs[rid] = max(runs[rid], entry, key=_entry_rank)
    merged = {**data, "schema_version": SCHEMA_VERSION}
    merged["runs"] = sorted(runs.values(), key=lambda r: (str(r.get("started_utc") or ""), r["run_id"]))
    if merged != data:
        atomic_write_bytes(dst.root / MANIFEST, json.dumps(merged, indent=2, default=str).encode())
    return added


def _entry_rank(entry: dict[str, Any]) -> tuple[bool, str]:
    return entry.get("finished_utc") is not None, json.dumps(entry, sort_keys=True, default=str)

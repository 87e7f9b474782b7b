"""Merge results folders by record id: ``qtbench merge OUT IN...``.

Offline boards run their own sweep (``qtbench sweep --board-id ID``) and their folders are joined afterwards.
The merge is a set union keyed by ``record_id`` (rows), ``(record_id, repeat, iteration)`` (raw latencies) and
``(record_id, sample_index)`` (predictions); manifest runs are joined by ``run_id``. Whatever the inputs' order,
and however often it is repeated, the output holds the same set, and what is already there is not rewritten
with other content (conflicts aside, below): each run's records go to that run's own
``<kind>-<run_id>.parquet`` (rows sorted by record id), which a later merge extends only with records it lacks.

Conflicts: two folders may hold one record id with different content (a folder copied and then edited, or
re-measured by a tool that kept the ids). The rule is order-free: the newer measurement (``created_utc``) wins,
ties go to the larger content digest. The winner is what every view shows; the other version is not lost: it is
appended to ``OUT/conflicts/<kind>.parquet`` and each conflict is listed in the summary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtbench.harness.core.config import _show
from qtbench.harness.core.errors import ResultsError
from qtbench.harness.core.records import SCHEMA_VERSION, to_frame, upgrade_frame
from qtbench.harness.run.store import (
    KEYS,
    MANIFEST,
    ResultsStore,
    _read_many,
    _write_parquet,
    atomic_write_bytes,
    stores_under,
)


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
    conflicts: list[str] = field(default_factory=list)  # one line per conflicting record id: what won and why


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
        if len(rows) and len(have):
            _resolve_conflicts(src, dst, rows[rows["record_id"].isin(have_ids)], have, summary)
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


#: columns that describe the stored row rather than the measurement: a folder upgraded or merged may differ there
_BOOKKEEPING = ("schema_version",)


def _digest(row: dict[str, Any]) -> str:
    import hashlib
    import math

    clean = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k not in _BOOKKEEPING
    }
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def _rank(row: dict[str, Any]) -> tuple[str, str]:
    """Which of two versions of one record wins: the newer measurement, then the larger digest (order-free)."""
    return str(row.get("created_utc") or ""), _digest(row)


def _resolve_conflicts(src: ResultsStore, dst: ResultsStore, incoming: Any, have: Any, summary: MergeSummary) -> None:
    """Records both folders hold: equal content is simply present; different content is resolved by
    :func:`_rank`; the loser is kept under ``conflicts/`` and listed (caller holds ``dst``'s exclusive lock)."""
    import pandas as pd

    mine = {r["record_id"]: r for r in have.to_dict("records")}
    for theirs in incoming.to_dict("records"):
        rid = theirs["record_id"]
        ours = mine[rid]
        if _digest(ours) == _digest(theirs):
            continue
        wins = _rank(theirs) > _rank(ours)
        winner, loser = (theirs, ours) if wins else (ours, theirs)
        diff = [k for k in sorted(set(ours) | set(theirs)) if k not in _BOOKKEEPING and _digest({k: ours.get(k)})
                != _digest({k: theirs.get(k)})]  # fmt: skip
        shown = ", ".join(f"{k} {_short(loser.get(k))}→{_short(winner.get(k))}" for k in diff[:3])
        summary.conflicts.append(
            f"{rid} ({winner.get('model')} × {winner.get('backend')} × {winner.get('spec_id')}): kept the "
            f"{'newer' if winner.get('created_utc') != loser.get('created_utc') else 'tie-broken'} version from "
            f"{src.root if wins else dst.root} ({shown}{', …' if len(diff) > 3 else ''})"
        )
        loser_data = {"rows": pd.DataFrame([loser])}
        for kind in ("samples", "predictions"):
            loser_data[kind] = _record_data(dst, kind, rid) if wins else getattr(src, kind)([rid])
        _keep_conflict(dst, loser_data)
        if wins:  # replace the record (row and its samples/predictions) in dst by src's version
            for kind in ("rows", "samples", "predictions"):
                _drop_record(dst, kind, rid)
                part = pd.DataFrame([winner]) if kind == "rows" else getattr(src, kind)([rid])
                if len(part):
                    _extend(dst, kind, str(winner["run_id"]), part)


def _record_data(store: ResultsStore, kind: str, rid: str) -> Any:
    """One record's entries of ``kind`` while the caller holds the store's exclusive lock."""
    import pandas as pd

    files = store._files(kind)
    df = _read_many(files, [("record_id", "=", rid)]) if files else pd.DataFrame()
    return df


def _short(v: Any) -> str:

    return _show(v, 24)


def _keep_conflict(dst: ResultsStore, data: dict[str, Any]) -> None:
    """Append the losing version of a record to ``conflicts/<kind>.parquet`` (never read by the views)."""
    import pandas as pd

    folder = dst.root / "conflicts"
    folder.mkdir(exist_ok=True)
    for kind, df in data.items():
        if not len(df):
            continue
        target = folder / f"{kind}.parquet"
        old = _read_many([target]) if target.is_file() else pd.DataFrame()
        both = pd.concat([old, df], ignore_index=True) if len(old) else df
        _write_parquet(both.drop_duplicates().reset_index(drop=True), target)


def _drop_record(dst: ResultsStore, kind: str, rid: str) -> None:
    """Remove one record's entries from every ``<kind>-*.parquet`` of dst (caller holds the exclusive lock)."""
    for f in dst._files(kind):
        df = _read_many([f])
        if len(df) and "record_id" in df and (df["record_id"] == rid).any():
            _write_parquet(df[df["record_id"] != rid].reset_index(drop=True), f)


def _rows_locked(store: ResultsStore) -> Any:
    """The folder's rows while the caller holds its exclusive lock (``ResultsStore.rows`` takes a shared one)."""

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
    forgotten = set(data.get("forgotten", [])) | set(src_manifest.get("forgotten", []))
    if forgotten:  # rows a user forgot in either folder stay out of the merged views
        merged["forgotten"] = sorted(forgotten)
    if merged != data:
        atomic_write_bytes(dst.root / MANIFEST, json.dumps(merged, indent=2, default=str).encode())
    return added


def _entry_rank(entry: dict[str, Any]) -> tuple[bool, str]:
    return entry.get("finished_utc") is not None, json.dumps(entry, sort_keys=True, default=str)

"""``qtbench results``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.core.errors import UserError


def _results_stores(where: str) -> list[Any]:
    from qtbench.harness.run.store import stores_under

    root = Path(where)
    stores = stores_under(root) if root.is_dir() else []
    if not stores:
        raise UserError(f"{root} holds no qtbench results (no manifest.json); pass results/<sweep> or results/")
    return stores


def cmd_results(args: argparse.Namespace) -> int:
    from qtbench.harness.run.manifest import run_is_alive
    from qtbench.harness.run.store import compact

    for store in _results_stores(args.results):
        s = compact(store, run_is_alive)
        recovered = f", folded the parts of {len(s.recovered)} dead run(s)" if s.recovered else ""
        print(
            f"{s.root}: {s.files_before} → {s.files_after} Parquet file(s), {s.bytes_before / 1e6:.2f} → "
            f"{s.bytes_after / 1e6:.2f} MB; {s.rows} row(s) of {s.runs} run(s) kept{recovered}"
        )
    return 0


def _results_state(store: Any) -> tuple[Any, Any, Any, set[str]]:
    """(history, shown, superseded, forgotten ids) of one folder, by the one definition of a cell's latest row."""
    from qtbench.harness.run.store import latest_rows, superseded

    history = store.rows()
    forgotten = store.forgotten()
    live = history[~history["record_id"].isin(forgotten)] if len(history) else history
    return history, latest_rows(live), superseded(live), forgotten


def cmd_results_list(args: argparse.Namespace) -> int:
    """Per folder: rows shown by the views, by status, and the history they hide (superseded, forgotten)."""
    for store in _results_stores(args.results):
        history, shown, old, forgotten = _results_state(store)
        counts = shown["status"].value_counts().to_dict() if len(shown) else {}
        by_status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no rows"
        print(
            f"{store.root}: {len(shown)} cell(s) shown ({by_status}); history {len(history)} row(s): "
            f"{len(old)} superseded by a newer result of their cell, {len(forgotten)} forgotten"
        )
        if args.verbose:
            for r in shown[shown["status"].isin(["failed", "timeout"])].itertuples():
                print(f"  [{r.status}] {r.model} × {r.backend} × {r.spec_id}: {str(r.status_message)[:110]}")
    return 0


def cmd_results_forget(args: argparse.Namespace) -> int:
    """Hide failed (or superseded) rows from every view; the history keeps them (`show --history`)."""
    if not (args.failed or args.superseded):
        raise UserError("qtbench results forget: say what to forget: --failed and/or --superseded")
    for store in _results_stores(args.results):
        _, shown, old, _ = _results_state(store)
        ids: set[str] = set()
        if args.failed:
            ids |= set(shown.loc[shown["status"].isin(["failed", "timeout"]), "record_id"])
        if args.superseded:
            ids |= set(old["record_id"])
        n = store.forget(ids)
        print(f"{store.root}: forgot {n} row(s); `qtbench show {store.root} --history` still lists them")
    return 0


def register(sub: Any) -> None:
    r = sub.add_parser("results", help="maintain results folders: list what the views show, forget rows, compact")
    rsub = r.add_subparsers(dest="results_command", required=True)
    c = rsub.add_parser(
        "compact", help="fold finished runs' files into one per kind; every row, run and sample stays loadable"
    )
    c.add_argument("results", nargs="?", default="results", help="results/<sweep> or a folder of them")
    c.set_defaults(func=cmd_results)
    ls = rsub.add_parser("list", help="cells shown by the views per status, and the superseded/forgotten history")
    ls.add_argument("results", nargs="?", default="results", help="results/<sweep> or a folder of them")
    ls.add_argument("-v", "--verbose", action="store_true", help="also list the failed cells with their reason")
    ls.set_defaults(func=cmd_results_list)
    f = rsub.add_parser(
        "forget", help="hide failed and/or superseded rows from every view (the append-only history keeps them)"
    )
    f.add_argument("results", nargs="?", default="results", help="results/<sweep> or a folder of them")
    f.add_argument("--failed", action="store_true", help="the cells whose latest result failed or timed out")
    f.add_argument("--superseded", action="store_true", help="rows a newer result of the same cell replaced")
    f.set_defaults(func=cmd_results_forget)

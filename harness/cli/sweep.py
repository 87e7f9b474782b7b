"""``qtbench sweep``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _add_trust_flags, _console, _print_reasons, results_table
from qtbench.harness.cli.compare import _print_comparison
from qtbench.harness.core.errors import UserError


def with_overrides(sweep: Any, overrides: dict[str, dict[str, Any]]) -> Any:
    """Apply command-line values through the same validation as the YAML file (bad values: the same errors)."""
    from qtbench.harness.core.config import parse_sweep

    data = sweep.to_dict()
    base_dir = data.pop("base_dir")
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return parse_sweep(data, base_dir=base_dir)


def cmd_sweep(args: argparse.Namespace) -> int:
    import dataclasses

    from qtbench.harness.core.config import load_sweep
    from qtbench.harness.demo import demo_config_path
    from qtbench.harness.run.sweep import run_sweep

    console = _console()
    is_demo = args.config is None
    sweep = load_sweep(args.config or demo_config_path())
    overrides: dict[str, dict[str, Any]] = {"run": {}, "measure": {}}
    if is_demo:  # the demo's inputs live in the package; its results land where the user stands
        overrides["run"]["results_dir"] = str(Path.cwd() / "results")
    if args.results_dir:
        overrides["run"]["results_dir"] = str(Path(args.results_dir).resolve())
    if args.rerun:
        overrides["run"]["rerun"] = True
    if args.no_isolate:
        overrides["run"]["isolate"] = False
    if args.iterations is not None:
        overrides["measure"]["iterations"] = args.iterations
    if args.warmup is not None:
        overrides["measure"]["warmup"] = args.warmup
    if args.board_id:
        overrides["run"]["board_id"] = args.board_id
    if args.fleet:
        fleet = Path(args.fleet)  # a fleet file is relative to where the user stands, an address is kept as is
        overrides["run"].update(executor="ray", fleet=str(fleet.resolve()) if fleet.is_file() else args.fleet)
    if args.boards:
        overrides["run"]["boards"] = list(args.boards)
    sweep = with_overrides(sweep, overrides)
    if sweep.run.board_id and sweep.run.executor == "ray":
        raise UserError(
            "--board-id / run.board_id is for one board's own offline sweep; a fleet sweep (--fleet, "
            "run.executor: ray) takes board ids from the fleet: drop one of them"
        )
    if args.backends:
        from qtbench.harness.core.config import BackendEntry

        known = {b.key: b for b in sweep.backends}
        sweep = dataclasses.replace(sweep, backends=[known.get(n, BackendEntry(name=n)) for n in args.backends])
    if args.specs:
        from qtbench.harness.core.spec import QuantSpec

        sweep = dataclasses.replace(sweep, specs=[QuantSpec.parse(s, "--specs") for s in args.specs])

    console.print(
        f"sweep [bold]{sweep.name}[/]: {len(sweep.models)} model(s) × {len(sweep.backends)} backend(s) × "
        f"{len(sweep.specs)} spec(s) → {sweep.results_path}",
        highlight=False,
    )

    def progress(ev: Any) -> None:
        rec = ev.record
        extra = ""
        status = ev.status
        if rec is not None and rec.status == "ok":
            from qtbench.harness.core.tasks import quality_summary

            timed = rec.latency_ms_p50 == rec.latency_ms_p50  # NaN: a fidelity-only cell, no timed loop
            extra = quality_summary(rec) + (f" p50={rec.latency_ms_p50:.3f}ms" if timed else "")
            if rec.audit.startswith("mismatch"):
                status = "ok ✗spec"
                extra = f"spec not honoured: {rec.audit.removeprefix('mismatch: ')[:90]}"
        elif ev.message:
            extra = ev.message.strip().splitlines()[0][:100]
        lw = max(20, min(55, console.width - 45))  # a long label wraps; it is never shortened
        console.print(
            f"[{ev.index + 1:>3}/{ev.total}] {ev.label:<{lw}} {status:<11} {extra}", markup=False, highlight=False
        )

    import time

    report_dir = Path(args.report_dir or Path.cwd() / "reports" / sweep.name)
    if not args.no_report:  # found now, not after the sweep: a read-only report folder is a one-line mistake
        from qtbench.harness.run.store import check_writable_dir

        check_writable_dir(report_dir, "report folder", "--report-dir (or --no-report)")
    t0 = time.perf_counter()
    shown = {"at": t0, "lines": 0}

    def compiling(built: int, total: int, failed: int) -> None:
        """A line at most every 15 s while artifacts build (at paper scale the compile phase takes minutes), and
        a last one when it ends if any was printed; a short compile phase stays silent."""
        now = time.perf_counter()
        if now - shown["at"] < 15 and not (built == total and shown["lines"]):
            return
        shown["at"], shown["lines"] = now, shown["lines"] + 1
        bad = f", {failed} failed (reported with their cells)" if failed else ""
        console.print(f"compile phase: {built} of {total} artifact(s) built{bad}, {now - t0:.0f}s", highlight=False)

    df = run_sweep(sweep, progress=None if args.quiet else progress, compile_progress=None if args.quiet else compiling)
    wall = time.perf_counter() - t0
    keys = df.attrs.get("cell_keys")
    if keys is not None:  # this sweep's cells only: rows of other configurations in the folder are `show`'s
        attrs, df = df.attrs, df[df["cell_key"].isin(set(keys))]
        df.attrs = attrs
    ran = df[df["status"] != "skipped"]  # skipped pairs are listed once per reason below the table
    n_skip = len(df) - len(ran)
    title = f"{sweep.name}: {len(df)} cells ({wall:.1f}s)" + (f", {n_skip} skipped as unsupported" if n_skip else "")
    console.print(results_table(ran, title=title, width=console.width))
    _print_reasons(console, df)
    declared = {m.group for m in sweep.models if m.group}
    if len(declared) >= 2:  # a study (models[].group): its comparison; plain sweeps of several models have none
        _print_comparison(console, sweep.results_path)
    console.print(f"results: {sweep.results_path}", highlight=False)
    if not args.no_report:
        from qtbench.harness.analysis.report import build_report

        out = build_report([sweep.results_path], report_dir)
        console.print(f"report:  {out['html']}\n         {out['markdown']}", highlight=False)
    return _sweep_exit(df, args)


def _sweep_exit(df: Any, args: argparse.Namespace) -> int:
    """Exit 1 when any of this sweep's cells failed or timed out, with one line per reason and how to retry;
    skipped (unsupported) and unavailable (SDK or hardware absent) cells are answers, not failures."""
    keys = set(df.attrs.get("cell_keys", df["cell_key"]))
    bad = df[df["cell_key"].isin(keys) & df["status"].isin(["failed", "timeout"])]
    if bad.empty:
        return 0
    from qtbench.harness.core.errors import one_line

    reasons: dict[str, int] = {}
    for msg in bad["status_message"]:
        head = one_line(msg, 110)
        reasons[head] = reasons.get(head, 0) + 1
    top = "; ".join(f"{n}× {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    more = f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
    again = " ".join(["qtbench sweep", *([args.config] if args.config else [])])
    print(
        f"qtbench sweep: {len(bad)} of {len(keys)} cells failed: {top}{more}. Fix the cause and run `{again}` "
        "again: finished cells are reused, failed ones are retried, and a fixed cell replaces its failed row",
        file=sys.stderr,
    )
    return 1


def register(sub: Any) -> None:
    s = sub.add_parser("sweep", help="run a sweep (no CONFIG: the bundled Fashion-MNIST demo)")
    s.add_argument("config", nargs="?", help="sweep YAML file; omit for the bundled demo")
    s.add_argument("--results-dir", help="root folder for results (default: the config's run.results_dir)")
    s.add_argument("--backends", nargs="+", metavar="SLUG", help="only these backends")
    s.add_argument("--specs", nargs="+", metavar="SPEC", help="only these spec ids")
    s.add_argument("--iterations", type=int, help="timed iterations per cell (default 200)")
    s.add_argument("--warmup", type=int, help="warm-up iterations per cell (default 20)")
    s.add_argument("--rerun", action="store_true", help="measure cells again even if already recorded")
    s.add_argument("--no-isolate", action="store_true", help="run cells in this process (debugging)")
    s.add_argument("--no-report", action="store_true", help="do not write the HTML/Markdown report")
    s.add_argument("--report-dir", help="report folder (default reports/<sweep name>)")
    s.add_argument("-q", "--quiet", action="store_true", help="no per-cell progress lines")
    s.add_argument("--board-id", help="this board's id (offline fleet board): rows' device and cell keys carry it")
    s.add_argument(
        "--fleet", help="run on a Ray fleet: a fleet file or a cluster address (ray://HEAD:10001); qtbench[fleet]"
    )
    s.add_argument("--boards", nargs="+", metavar="ID", help="fleet sweep: only these boards")
    _add_trust_flags(s)
    s.set_defaults(func=cmd_sweep)

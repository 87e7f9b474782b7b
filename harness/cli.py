"""The ``qtbench`` command line. Sub-commands import what they need when they run, so ``--help`` stays light.

Exit codes: 0 success, 1 a regression or failure the command exists to report, 2 user error (one line, no
traceback), 3 inconclusive (``check --strict``), 70 internal error (with traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import QtbenchError, UserError
from harness.tables import CLI_COLUMNS, with_gap
from harness.tables import format_value as _fmt

EXIT_INTERNAL = 70


def escape(text: str) -> str:
    """Escape rich markup in strings from results or SDKs ("pip install 'qtbench[tflite]'" must print as is)."""
    from rich.markup import escape as _escape

    from harness.tables import printable

    return _escape(printable(text))


#: terminal columns by priority: at a narrow width the last ones are left out (and named), never cut
CLI_PRIORITY = (
    "model", "backend", "spec_id", "status", "spec_check", "top1", "gap_pp", "top1_agreement", "latency_ms_p50",
    "fps", "numbers", "est_latency_ms", "kl_fp", "ece", "latency_ms_p99", "accel_share", "energy_mj_text",
    "artifact_bytes", "sweep",
)  # fmt: skip
_TEXT_COLUMNS = ("sweep", "device", "model", "backend", "spec_id", "status")


def results_table(df: Any, title: str = "", width: int | None = None) -> Any:
    """A rich Table of result rows (one per cell) that fits ``width`` columns: numbers are never cut; columns of
    lower priority (:data:`CLI_PRIORITY`) are left out and named in the caption, and long model names or specs
    wrap instead of being shortened (seed suffixes stay)."""
    from rich.markup import escape as _markup_escape
    from rich.table import Table

    from harness.tables import printable

    df = with_gap(df)
    columns = [c for c in CLI_COLUMNS if c[0] in CLI_PRIORITY]
    if "device" in df and df["device"].nunique() > 1:  # rows of several boards (a fleet, merged folders)
        columns.insert(0, ("device", "board", "{}"))
    if "sweep" in df and df["sweep"].nunique() > 1:  # a folder of several sweeps: say which row is whose
        columns.insert(0, ("sweep", "sweep", "{}"))
    if not df["timed"].astype(bool).any() if "timed" in df else False:  # fidelity-only rows: no latency columns
        columns = [c for c in columns if c[0] not in ("latency_ms_p50", "latency_ms_p99", "fps")]
    text = {col: [printable(_fmt(v, fmt)) for v in df[col]] if col in df else [] for col, _, fmt in columns}
    if "unstable" in df and ("latency_ms_p50", "p50 ms", "{:.3f}") in columns:
        flags = ["!" if u else "" for u in df["unstable"]]
        text["latency_ms_p50"] = [t + f for t, f in zip(text["latency_ms_p50"], flags, strict=True)]
    # a column carrying nothing (every row "–" or empty) is left out: it would only take width
    columns = [c for c in columns if any(t not in ("–", "") for t in text[c[0]]) or c[0] in _TEXT_COLUMNS]
    need = {col: max([len(head), *(len(t) for t in text[col])]) for col, head, _ in columns}
    wrap_min = {"model": 14, "spec_id": 14, "sweep": 8, "device": 10}  # may wrap (at '-', '_', '/') down to this
    budget = (width or 10_000) - 1  # the table's left border
    core = [c[0] for c in columns if c[0] in _TEXT_COLUMNS]
    whole = sum(need[c] + 3 for c in core) <= budget * 0.7  # the identity columns unwrapped, if room is left
    give = {c: need[c] if whole else min(need[c], wrap_min.get(c, need[c])) for c in core}
    budget -= sum(give[c] + 3 for c in core)
    shown = list(core)
    for col in sorted((c[0] for c in columns if c[0] not in core), key=CLI_PRIORITY.index):
        if need[col] + 3 <= budget:
            shown.append(col)
            give[col] = need[col]
            budget -= need[col] + 3
    for col in ("spec_id", "model", "device", "sweep"):  # what is left of the width goes to the wrapped text
        if col in shown:
            extra = max(0, min(budget, need[col] - give[col]))
            give[col] += extra
            budget -= extra
    hidden = [head for col, head, _ in columns if col not in shown]
    caption = f"left out at this width: {', '.join(hidden)} (widen the terminal, or --format csv)" if hidden else None
    table = Table(title=title or None, caption=caption, show_lines=False, header_style="bold", caption_justify="left")
    shown_cols = [c for c in columns if c[0] in shown]
    for col, header, _ in shown_cols:
        if give[col] < need[col]:
            text[col] = [_wrap_words(t, give[col]) for t in text[col]]
        table.add_column(header, justify="left" if col in _TEXT_COLUMNS else "right", no_wrap=True, min_width=give[col])
    style = {"ok": "", "skipped": "yellow", "failed": "red", "timeout": "red", "unavailable": "magenta"}
    for i, status in enumerate(df["status"]):
        # printable above, before wrapping: here only rich's markup is escaped (the wraps' newlines stay)
        table.add_row(*(_markup_escape(text[col][i]) for col, _, _ in shown_cols), style=style.get(status, ""))
    return table


def _wrap_words(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken after '-', '_', '/' or ' ' where it can be (a
    spec id or model name stays readable and whole), else inside a word."""
    import re

    lines, line = [], ""
    for part in re.findall(r"[^-_/ ]*[-_/ ]?", text):
        while len(part) > width:  # a single piece longer than the width: cut it (nothing is dropped)
            if line:
                lines.append(line)
                line = ""
            lines.append(part[:width])
            part = part[width:]
        if len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    lines.append(line)
    return "\n".join(ln.rstrip() for ln in lines if ln)


def unstable_note(df: Any) -> str:
    """Why timings were flagged unstable, with the host load measured around those cells (the usual cause)."""
    import os

    bad = df[df["unstable"].fillna(False).astype(bool)]
    text = (
        f"unstable timing in {len(bad)} of {int(df['timed'].astype(bool).sum()) if 'timed' in df else len(df)} "
        "timed cell(s) (coefficient of variation above measure.cv_threshold)"
    )
    loads = [c for c in ("loadavg_1m_before", "loadavg_1m_after") if c in bad]
    if loads:
        values = bad[loads].to_numpy(dtype=float).ravel()
        values = values[values == values]
        if len(values):
            text += (
                f"; the 1-minute load average was {values.min():.1f}–{values.max():.1f} during them (this machine "
                f"has {os.cpu_count() or 1} core(s); a load near or above that means other work shared them): "
                "compare their speeds with care, or re-run them on an idle machine"
            )
    return text


def _print_reasons(console: Any, df: Any) -> None:
    """Cells that did not run, once per (status, backend, reason) with their specs and how many models: a study
    skips or misses the same pair for every checkpoint, and one line says it."""
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for _, row in df[df["status"] != "ok"].iterrows():
        msg = str(row["status_message"]).strip().splitlines()[0] if row["status_message"] else ""
        groups.setdefault((row["status"], row["backend"], msg), []).append(row)
    order = {"failed": 0, "timeout": 1, "unavailable": 2, "skipped": 3}
    for (status, backend, msg), rows in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], 9)):
        specs = sorted({r["spec_id"] for r in rows})
        models = sorted({r["model"] for r in rows})
        who = models[0] + " × " if len(models) == 1 else ""
        where = f"{who}{backend} × {', '.join(specs)}" + (f" ({len(models)} models)" if len(models) > 1 else "")
        console.print(f"  [{status}] {where}: {msg}", markup=False, highlight=False)
    from harness.tables import mismatched

    for _, row in df[mismatched(df)].iterrows():
        console.print(
            f"  [spec not honoured] {row['model']} × {row['backend']} × {row['spec_id']}: "
            f"{str(row['audit']).removeprefix('mismatch: ')}",
            markup=False,
            highlight=False,
        )
    if mismatched(df).any():
        console.print(
            "  spec ✗ = the artifact read back contradicts its label (harness.audit); those rows are left out of "
            "compare's aggregates",
            highlight=False,
        )
    if "unstable" in df and df["unstable"].fillna(False).astype(bool).any():
        console.print(f"  ! = {unstable_note(df)}", highlight=False)


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------
def _console() -> Any:
    """A rich console; when output is not a terminal (CI logs, pipes) use a wide fixed width so tables stay whole."""
    import os

    from rich.console import Console

    if os.environ.get("COLUMNS", "").isdigit():  # an explicit width (a test, `COLUMNS=80 qtbench show ...`) wins
        return Console(width=int(os.environ["COLUMNS"]))
    return Console() if sys.stdout.isatty() else Console(width=200)


def with_overrides(sweep: Any, overrides: dict[str, dict[str, Any]]) -> Any:
    """Apply command-line values through the same validation as the YAML file (bad values: the same errors)."""
    from harness.config import parse_sweep

    data = sweep.to_dict()
    base_dir = data.pop("base_dir")
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return parse_sweep(data, base_dir=base_dir)


def cmd_sweep(args: argparse.Namespace) -> int:
    import dataclasses

    from harness.config import load_sweep
    from harness.demo import demo_config_path
    from harness.sweep import run_sweep

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
        from harness.config import BackendEntry

        known = {b.key: b for b in sweep.backends}
        sweep = dataclasses.replace(sweep, backends=[known.get(n, BackendEntry(name=n)) for n in args.backends])
    if args.specs:
        from harness.spec import QuantSpec

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
            from harness.tasks import quality_summary

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
        from harness.store import check_writable_dir

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
        from harness.report import build_report

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
    from harness.errors import one_line

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


def cmd_backends(args: argparse.Namespace) -> int:
    import json

    import backends

    statuses = backends.list_backends(timeout_s=args.timeout if args.timeout > 0 else None)
    if args.json:
        print(json.dumps([s.__dict__ for s in statuses], indent=2))
        return 0
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("backend", "status", "versions / reason", "source"):
        table.add_column(col)
    for s in statuses:
        detail = ", ".join(f"{k} {v}" for k, v in s.versions.items()) if s.available else s.reason
        table.add_row(
            s.slug,
            "available" if s.available else "unavailable",
            escape(detail),
            f"{s.origin}: {s.target}",
            style="" if s.available else "magenta",
        )
    _console().print(table)
    return 0


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (e.g. 50, or 0 for all)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; use 0 for all, or a count such as 50")
    return value


def cmd_show(args: argparse.Namespace) -> int:
    from harness.store import load_results

    df = load_results(args.results, latest=not args.history)
    for col, values in (
        ("backend", args.backend),
        ("spec_id", args.spec),
        ("model", args.model),
        ("status", args.status),
    ):
        if values:
            df = df[df[col].isin(values)]
    if args.format == "csv":
        df.to_csv(sys.stdout, index=False)
        return 0
    if args.format == "json":
        print(df.to_json(orient="records", indent=1))
        return 0
    console = _console()
    if df.empty:
        console.print("no rows match", highlight=False)
        return 0
    df = df.sort_values(["sweep", "model", "backend", "spec_id"]) if not args.history else df.sort_values("created_utc")
    shown = df if args.limit == 0 else df.head(args.limit)
    title = f"{args.results}: {len(df)} row(s)" + (f", the first {len(shown)} shown" if len(shown) < len(df) else "")
    console.print(results_table(shown, title=title, width=console.width))
    if len(shown) < len(df):
        counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
        console.print(
            f"{len(df) - len(shown)} more row(s) ({counts} in all): filter with --backend/--model/--spec/--status, "
            "--limit 0 for every row, or --format csv for a file",
            highlight=False,
        )
    _print_reasons(console, df)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from harness.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qtbench",
        description="Compile ONNX checkpoints for edge backends at low precision; measure speed, energy and "
        "fidelity; report and gate regressions.",
    )
    p.add_argument("--version", action="version", version=f"qtbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

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

    b = sub.add_parser("backends", help="list registered backends: available or why not, with versions")
    b.add_argument("--json", action="store_true")
    b.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds each backend's probe may take; probes run side by side (0: probe in-process, no limit)",
    )
    b.set_defaults(func=cmd_backends)

    sh = sub.add_parser("show", help="print results as a table, filtered by backend/spec/model/status")
    sh.add_argument("results", help="a results folder (results/<sweep>) or a folder of them")
    sh.add_argument("--backend", nargs="+")
    sh.add_argument("--spec", nargs="+")
    sh.add_argument("--model", nargs="+")
    sh.add_argument("--status", nargs="+")
    sh.add_argument("--history", action="store_true", help="every row ever recorded, not just the latest per cell")
    sh.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sh.add_argument(
        "--limit",
        type=_non_negative_int,
        default=200,
        help="table rows to print (default 200; 0: all — a terminal table of 10,000 rows takes ~30 s to draw)",
    )
    sh.set_defaults(func=cmd_show)

    sc = sub.add_parser("schema", help="print the JSON schema of sweep files")
    sc.add_argument("--out", help="write to this file instead of stdout")
    sc.set_defaults(func=cmd_schema)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch
    except ImportError:
        raise UserError("qtbench train needs torch: pip install 'qtbench[train]'") from None
    from quanttrim.data import DatasetNotFound, load_dataset
    from quanttrim.export import export_onnx
    from quanttrim.train import TrainConfig, train

    try:
        data = load_dataset(args.dataset, args.image_size, args.data_dir)
    except DatasetNotFound as exc:
        raise UserError(str(exc)) from None
    out = Path(args.out)
    qt = {
        "bits": args.bits,
        "per_channel": not args.per_tensor,
        "lambda_max": args.lambda_max,
        "q_end": args.q_end,
        "fake_quant": not args.prune_only,
    }
    trained: list[dict[str, Any]] = []
    for seed in args.seeds:
        cfg = TrainConfig(
            arch=args.arch,
            method=args.method,
            epochs=args.epochs,
            seed=seed,
            lr=args.lr,
            weight_decay=args.weight_decay,
            train_images=args.train_images,
            test_images=args.test_images,
            quanttrim=qt if args.method == "quanttrim" else {},
        )
        stem = f"{data.name}_{args.arch}_{args.method}_s{seed}"
        res = train(
            data,
            cfg,
            log_csv=out / f"{stem}.csv",
            on_epoch=lambda r: print(
                f"  epoch {r['epoch']:>2}: loss {r['train_loss']:.4f} "
                f"test {100 * r['test_accuracy']:.2f}%"
                + (f" λ={r['lambda']:.3f} τ̄={r['tau_mean']:.3f}" if "lambda" in r else ""),
                flush=True,
            ),
        )
        import torch

        example = torch.from_numpy(data.x_test[:1])
        path = export_onnx(
            res.model,
            out / f"{stem}.onnx",
            example,
            metadata={
                "dataset": data.name,
                "arch": args.arch,
                "seed": seed,
                "epochs": args.epochs,
                # the exported FP model's accuracy (fake quantization off): what this ONNX file scores
                "test_accuracy": res.test_accuracy,
                **{k: res.history[-1][k] for k in ("fakequant_test_accuracy",) if k in res.history[-1]},
            },
        )
        print(f"{path}: test accuracy {100 * res.test_accuracy:.2f}% ({res.seconds:.1f}s); log {out / (stem + '.csv')}")
        trained.append({"path": path.name, "name": f"{args.method}-s{seed}", "group": args.method, "seed": seed})
        snippet = out / f"{data.name}_{args.arch}_{args.method}.models.yaml"
        _write_models_snippet(snippet, trained)  # after every seed: an interrupted run keeps the finished ones
    print(f"sweep snippet: {snippet} (paste under `models:`, or merge the fp and quanttrim snippets of one study)")
    return 0


def _write_models_snippet(path: Path, models: list[dict[str, Any]]) -> None:
    """A sweep file's ``models:`` block for what was trained (paths relative to the snippet's folder)."""
    import yaml

    text = (
        "# models block for a study sweep written by `qtbench train`; `qtbench compare` contrasts groups over seeds\n"
        + yaml.safe_dump({"models": models}, sort_keys=False)
    )
    path.write_text(text)


def _register_train(sub: Any) -> None:
    t = sub.add_parser("train", help="train an FP or Quant-Trim checkpoint and export it to ONNX (needs torch)")
    t.add_argument("--dataset", choices=("fashion-mnist", "digits", "idx"), default="fashion-mnist")
    t.add_argument("--data-dir", help="folder with IDX files (dataset idx, or a non-default Fashion-MNIST)")
    t.add_argument("--image-size", type=int, default=14, help="downsample IDX images to this size (default 14)")
    t.add_argument("--arch", choices=("resnet", "mobilenet"), default="resnet")
    t.add_argument("--method", choices=("fp", "quanttrim"), default="quanttrim")
    t.add_argument("--seeds", type=int, nargs="+", default=[0])
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--train-images", type=int, default=10_000, help="0 = all")
    t.add_argument(
        "--test-images",
        type=int,
        default=0,
        help="score each epoch on the first N test images (0 = all; the final "
        "accuracy in the ONNX metadata always uses every test image)",
    )
    t.add_argument("--bits", type=int, default=8, help="Quant-Trim weight bits target (4 or 8)")
    t.add_argument("--per-tensor", action="store_true", help="fake-quantize per tensor (default per channel)")
    t.add_argument("--lambda-max", type=float, default=1.0, help="cap of the blend λ (0.5 keeps FP intact at 4 bits)")
    t.add_argument("--q-end", type=float, default=99.7, help="final reverse-pruning percentile")
    t.add_argument("--prune-only", action="store_true", help="ablation: reverse pruning without fake quantization")
    t.add_argument("--out", default="checkpoints", help="output folder for .onnx and .csv logs")
    t.set_defaults(func=cmd_train)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    results = [Path(r) for r in args.results]
    out = (
        Path(args.out) if args.out else Path.cwd() / "reports" / (results[0].name if len(results) == 1 else "combined")
    )
    paths = build_report(results, out, args.title)
    print(f"report: {paths['html']}\n        {paths['markdown']}")
    return 0


def _register_report(sub: Any) -> None:
    r = sub.add_parser("report", help="HTML + Markdown report with plots from one or more results folders")
    r.add_argument("results", nargs="+", help="results folders (results/<sweep>)")
    r.add_argument("--out", help="report folder (default reports/<sweep name>)")
    r.add_argument("--title")
    r.set_defaults(func=cmd_report)


CHECK_TABLE_ROWS = 200  # verdicts drawn in the terminal table before only the notable ones are


def cmd_check(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.check import compare, load_gates, to_junit, to_markdown

    result = compare(
        args.baseline,
        args.candidate,
        load_gates(args.gates),
        args.baseline_model,
        args.candidate_model,
        args.allow_mismatch,
    )
    table = Table(header_style="bold", title=f"{args.candidate} vs {args.baseline}")
    for col in ("verdict", "cell", "gate", "baseline", "candidate", "change", "evidence", "why"):
        table.add_column(col)
    style = {"fail": "red", "inconclusive": "yellow", "pass": ""}
    shown = result.verdicts
    if not args.all and len(shown) > CHECK_TABLE_ROWS:
        # a terminal table of thousands of verdicts takes minutes to draw: the ones that need a look come first
        shown = [v for v in shown if v.verdict != "pass" or v.mark][:CHECK_TABLE_ROWS]
    for v in shown:
        table.add_row(
            escape(v.verdict_text),
            escape(v.cell),
            escape(v.gate),
            f"{v.baseline:.6g}",
            f"{v.candidate:.6g}",
            v.change,
            escape(v.evidence),
            escape(v.reason if v.verdict != "pass" else ""),
            style=style[v.verdict],
        )
    console = _console()
    console.print(table)
    if len(shown) < len(result.verdicts):
        console.print(
            f"{len(result.verdicts) - len(shown)} of {len(result.verdicts)} verdicts not listed (passes without a "
            f"significant change, and any past {CHECK_TABLE_ROWS} rows): --all lists every one; --markdown and "
            "--junit files hold them all",
            highlight=False,
        )
    for m in result.missing:
        console.print(f"not compared: {m}", highlight=False)
    for n in result.notes:
        console.print(f"note: {n}", highlight=False)
    console.print(f"qtbench check: {result.summary()}", highlight=False)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(result))
    if args.junit:
        Path(args.junit).write_text(to_junit(result))
    if not result.verdicts:
        unusable = sum("(baseline cell is " in m for m in result.missing)
        if unusable and unusable == len([m for m in result.missing if "(only in " not in m]):
            raise UserError(
                f"no baseline cell finished ok ({unusable} did not; see 'not compared' above): nothing to judge the "
                "candidate against; fix and re-run the baseline sweep"
            )
        raise UserError(
            "no cell is in both result sets (another model, backend, spec or device?); see 'not compared' above"
        )
    if result.failed:
        return 1
    if result.inconclusive and args.strict:
        return 3
    return 0


def _register_check(sub: Any) -> None:
    c = sub.add_parser("check", help="gate a candidate's results against a baseline (exit 1 on regression)")
    c.add_argument("--baseline", required=True, help="baseline results folder")
    c.add_argument("--candidate", required=True, help="candidate results folder")
    c.add_argument("--gates", help="YAML of metric: rule (default: top1 -0.5pp, ece +1pp, latency_ms_p50 +5%%)")
    c.add_argument("--baseline-model", help="compare this model of the baseline folder")
    c.add_argument("--candidate-model", help="compare this model of the candidate folder")
    c.add_argument("--allow-mismatch", action="store_true", help="compare across devices or measurement settings")
    c.add_argument("--strict", action="store_true", help="exit 3 when any gate is inconclusive")
    c.add_argument("--markdown", help="write a Markdown summary here")
    c.add_argument("--junit", help="write JUnit XML here")
    c.add_argument(
        "--all",
        action="store_true",
        help=f"list every verdict (by default, past {CHECK_TABLE_ROWS} verdicts only fails, inconclusives and "
        "significant changes are listed)",
    )
    c.set_defaults(func=cmd_check)


def _print_comparison(console: Any, results: Path) -> None:
    """After a study sweep: the comparison's headlines and per-group table (`qtbench compare` has the rest)."""
    from rich.table import Table

    from harness.compare import compare, group_table, headlines

    try:
        df = compare(results)
    except UserError as exc:  # e.g. more than two groups: the user picks them with `qtbench compare`
        console.print(f"compare: {exc}", markup=False, highlight=False)
        return
    if df.empty:
        return
    header, body = group_table(df)
    table = Table(header_style="bold", title=f"{df.attrs['candidate']} vs {df.attrs['baseline']}: mean ± sd over seeds")
    for h in header:
        table.add_column(escape(h))
    for r in body:
        table.add_row(*(escape(c) for c in r))
    console.print(table)
    for line in headlines(df):
        console.print(line, markup=False, highlight=False)
    console.print(f"details: qtbench compare {results} --details", markup=False, highlight=False)


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.compare import compare, difference_table, group_table, headlines, to_markdown

    df = compare(args.results, args.baseline_group, args.candidate_group, n_boot=args.bootstrap)
    console = _console()
    if df.empty:
        raise UserError("no quantized cells with per-sample predictions and an FP32 cell to compare")
    for line in headlines(df):
        console.print(line, markup=False, highlight=False)
    slices = ("all", "backend", "family") if args.details else ("all",)
    diff_title = f"{df.attrs['candidate']} − {df.attrs['baseline']}, 95 % CI over seeds and samples"
    for title, (header, body) in (
        ("per group: mean ± sd over seeds", group_table(df)),
        (diff_title, difference_table(df, slices)),
    ):
        table = Table(header_style="bold", title=title)
        for h in header:
            table.add_column(escape(h))
        for r in body:
            table.add_row(*(escape(c) for c in r))
        console.print(table)
    for n in df.attrs.get("notes", []):
        console.print(f"note: {n}", markup=False, highlight=False)
    if args.markdown:
        Path(args.markdown).write_text(to_markdown(df))
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def _register_compare(sub: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="is group B more robust than group A? FP→Q gaps per precision/backend/spec with 95 %% intervals",
    )
    c.add_argument("results", nargs="+", help="results folders holding both groups (models[].group / seed)")
    c.add_argument("--baseline-group", help="e.g. fp (default: 'fp' when the results hold two groups)")
    c.add_argument("--candidate-group", help="e.g. quanttrim (default: the other group)")
    c.add_argument("--details", action="store_true", help="also print the per-backend and per-spec-family rows")
    c.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates over images (default 1000)")
    c.add_argument("--markdown", help="write the comparison as Markdown here")
    c.add_argument("--csv", help="write the full comparison frame as CSV here")
    c.set_defaults(func=cmd_compare)


def cmd_devices(args: argparse.Namespace) -> int:
    import json
    import math

    from rich.table import Table

    from devices.catalog import match_board
    from devices.host import device_id, host_info
    from devices.power import AUTO_ORDER, survey
    from devices.thermal import describe, snapshot

    info, meters, thermal = host_info(), survey(log=args.meter_log, rail=args.rail), snapshot()
    board = match_board(info["board_model"]) if info["board_model"] else None
    if args.json:
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in thermal.items()}
        print(
            json.dumps(
                {
                    "device": device_id(),
                    "host": info,
                    "meters": [{"meter": n, "available": ok, "detail": d} for n, ok, d in meters],
                    "thermal": clean,  # null where there is no sensor (NaN is not JSON)
                    "catalog": board,
                },
                indent=2,
                default=str,
            )
        )
        return 0
    console = _console()
    console.print(f"device id: [bold]{device_id()}[/]", highlight=False)
    console.print(
        f"cpu: {info['cpu_model']} ({info['cpu_count_physical']} physical / {info['cpu_count_logical']} "
        f"logical, {info['cpu_affinity']} usable), {info['memory_gb']} GB; {info['os']} {info['kernel']}",
        highlight=False,
    )
    console.print(f"cpu flags: {' '.join(info['cpu_flags']) or '-'}", highlight=False)
    console.print(
        f"board: {info['board_model'] or 'none (no /proc/device-tree/model)'}; catalog: "
        f"{board['id'] if board else 'no match'}",
        highlight=False,
    )
    table = Table(header_style="bold", title="power meters (auto: the first available one that serves the cell)")
    for col in ("meter", "status", "auto for cells on", "detail"):
        table.add_column(col)
    for name, ok, detail in meters:
        serves = ", ".join(d.replace("other", "npu/other") for d, order in AUTO_ORDER.items() if name in order)
        table.add_row(name, "available" if ok else "unavailable", serves, escape(detail), style="" if ok else "magenta")
    console.print(table)
    console.print(f"thermal: {describe(thermal)}", highlight=False)
    return 0


def _register_devices(sub: Any) -> None:
    d = sub.add_parser("devices", help="this host's identity, power meters (or why not), thermal sensors")
    d.add_argument("--meter-log", help="also check an external meter CSV log")
    d.add_argument("--rail", help="check this rail (device.rail): a hwmon label, 'sum', or a RAPL zone name")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_devices)


def cmd_env(args: argparse.Namespace) -> int:
    from harness.envs import create

    py = create(args.name, Path(args.path) if args.path else None)
    print(f"{args.name} worker environment ready: {py}")
    if args.name == "rknn" and args.path:
        print(f"point qtbench at it: backends.rknn.options.python: {py}  (or QTBENCH_RKNN_PYTHON={py})")
    if args.name == "tflite" and args.path:
        print(f"point qtbench at it: backends.tflite.options.converter_python: {py}  (or QTBENCH_TF_PYTHON={py})")
    elif args.name == "tflite":
        print("the tflite and vela backends now convert your ONNX models with it (no option to set)")
    return 0


def _register_env(sub: Any) -> None:
    e = sub.add_parser("env", help="build environments for SDKs whose pins clash with qtbench (rknn, tflite converter)")
    esub = e.add_subparsers(dest="env_command", required=True)
    c = esub.add_parser("create", help="create (or update) a worker environment")
    c.add_argument("name", choices=["rknn", "tflite"])
    c.add_argument("--path", help="where to create it (default ~/.cache/qtbench/envs/NAME)")
    c.set_defaults(func=cmd_env)


def cmd_simgap(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import tempfile

    from rich.table import Table

    from harness.cell import model_facts
    from harness.config import load_sweep
    from harness.data import load_dataset
    from harness.demo import demo_config_path
    from harness.errors import ConfigError
    from harness.simgap import PAIRS, run_gap
    from harness.spec import QuantSpec
    from harness.sweep import _data_path

    sweep = load_sweep(args.config or demo_config_path())
    profile = args.profile or PAIRS.get(args.real)
    if not profile:
        raise ConfigError(f"no default profile for {args.real}; pass --profile (one of devices/npu_profiles.yaml)")
    options = dict(parse_option(kv) for kv in args.real_option or [])
    specs = [QuantSpec.parse(s) for s in args.specs]
    gaps = []
    with tempfile.TemporaryDirectory(prefix="qtbench-simgap-") as tmp:
        for m in sweep.models:
            path = sweep.resolve(m.path)
            facts = model_facts(path)
            ev_src, ev_path = _data_path(sweep, m, "evaluation")
            cal_src, cal_path = _data_path(sweep, m, "calibration")
            if not ev_path:
                raise ConfigError("simgap needs `evaluation:` data in the sweep file")
            limit = args.limit or ev_src.limit
            ev = load_dataset(ev_path, facts.input_names, ev_src.labels, limit)
            cal = load_dataset(cal_path, facts.input_names, None, cal_src.limit) if cal_path else None
            for spec in specs:
                gaps.append(run_gap(Path(path), spec, args.real, options, profile, ev, cal, Path(tmp), m.name))
    rows = [dataclasses.asdict(g) for g in gaps]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    table = Table(header_style="bold", title=f"sim vs real: {args.real} vs simnpu:{profile}")
    cols = ["model", "spec", "samples", "agreement", "kl_real_sim", "cosine", "max_abs", "real_top1", "sim_top1"]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(
            *[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols],
        )
    _console().print(table)
    return 0


def parse_option(kv: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → (key, value), the value read as YAML like a sweep file's (1.5, true, [a, b], text)."""
    import yaml

    from harness.errors import ConfigError

    key, sep, value = kv.partition("=")
    if not sep or not key:
        raise ConfigError(f"--real-option {kv!r}: write KEY=VALUE, e.g. --real-option target_platform=rk3576")
    return key, yaml.safe_load(value)


def _add_trust_flags(parser: Any) -> None:
    """--trust / --untrusted for a command that reads a sweep file (set $QTBENCH_TRUSTED for it and its cells)."""
    from harness.trust import TrustAction, UntrustedAction  # light: os + argparse only

    parser.add_argument("--untrusted", action=UntrustedAction)
    parser.add_argument("--trust", action=TrustAction)


def _register_simgap(sub: Any) -> None:
    g = sub.add_parser(
        "simgap", help="compare a real vendor toolchain (qnn, rknn, vela) with its simnpu profile, per output"
    )
    g.add_argument("config", nargs="?", help="sweep YAML for models and data (default: the bundled demo)")
    g.add_argument("--real", required=True, help="the vendor backend: qnn, rknn, vela, tensorrt")
    g.add_argument("--profile", help="simnpu profile (default: the one modelling --real)")
    g.add_argument("--specs", nargs="+", default=["int8-static-pc-wsym-minmax"])
    g.add_argument("--real-option", action="append", metavar="KEY=VALUE", help="an option for the real backend")
    _add_trust_flags(g)
    g.add_argument("--limit", type=int, help="evaluate only the first N samples")
    g.add_argument("--json", help="also write the rows to this JSON file")
    g.set_defaults(func=cmd_simgap)


def cmd_localize(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.table import Table

    from harness.config import load_sweep
    from harness.demo import demo_config_path
    from harness.localize import LocalizeSettings, run_localization
    from harness.spec import QuantSpec

    sweep = load_sweep(args.config or demo_config_path())
    if args.results_dir or args.config is None:  # the demo's results land where the user stands
        root = Path(args.results_dir).resolve() if args.results_dir else Path.cwd() / "results"
        sweep = dataclasses.replace(sweep, run=dataclasses.replace(sweep.run, results_dir=str(root)))
    specs = [QuantSpec.parse(s, "--spec") for s in args.spec] if args.spec else None
    settings = LocalizeSettings(
        samples=args.samples, threshold_db=args.threshold_db, memory_mb=args.memory_mb, threads=args.threads
    )
    fallback = None
    if args.fallback_search:
        from harness.localize.fallback import FallbackSettings

        fallback = FallbackSettings(
            budget_s=args.budget_s,
            max_candidates=args.max_candidates,
            max_k=args.max_k,
            samples=args.agreement_samples,
            target_agreement=args.target_agreement,
        )
    console = _console()
    run = run_localization(
        sweep,
        args.model,
        specs,
        args.backends,
        settings,
        fallback,
        progress=None if args.quiet else lambda m: console.print(m, markup=False, highlight=False),
    )
    table = Table(header_style="bold", title=f"where does each backend diverge? ({run.path})")
    for col in ("model", "spec", "backend", "kind", "first divergent", "rule", "dB", "largest jump", "Δ dB", "out dB"):
        table.add_column(col)
    for _, r in run.summary.iterrows():
        ok = r["status"] == "ok"
        kind = (r.get("kind") if isinstance(r.get("kind"), str) else "") or r["status"]

        def num(key: str, row: Any = r) -> str:
            v = row.get(key)
            return f"{v:.1f}" if isinstance(v, float) and v == v else ""

        table.add_row(
            escape(r["model"]),
            escape(r["spec_id"]),
            escape(r["backend"]),
            escape(kind if ok or kind == "output only" else f"{kind}: {str(r.get('reason', ''))[:60]}"),
            escape((r.get("first_divergent_node") or "none found") if ok else ""),
            escape(str(r.get("rule") or "") if ok else ""),
            num("first_divergent_sqnr_db"),
            escape(r.get("largest_jump_node") or "" if ok else ""),
            num("largest_jump_db"),
            num("output_sqnr_db"),
        )
    console.print(table)
    for _, r in run.summary[run.summary["status"] == "output_only"].iterrows():
        console.print(f"  output only: {r['backend']}: {r['reason']}", markup=False, highlight=False)
    if run.fallback is not None and not run.fallback.empty:
        from harness.localize.fallback import describe

        # every backend × spec's verdict on the held-out split: confirmed, rejected or nothing found
        for _, r in run.fallback[run.fallback["step"] == "confirm"].iterrows():
            head = f"  {r['backend']} {r['spec_id']} {r['model']}: "
            if bool(r.get("best")):
                line = f"keep {r['k']} layer(s) in float {r['nodes']}: {r['verdict']}; {describe(r.to_dict())}"
            elif int(r.get("k", 0) or 0):
                line = f"no suggestion: keeping {r['nodes']} in float was {r['verdict']}"
            else:
                line = f"no suggestion: {r['verdict']}"
            console.print(head + line, markup=False, highlight=False)
    console.print(f"results: {run.path}  (harness.load_localization)", highlight=False)
    for p in run.plots:
        console.print(f"plot:    {p}", highlight=False)
    return 0


def _register_localize(sub: Any) -> None:
    g = sub.add_parser(
        "localize", help="per-layer SQNR/cosine vs FP32 on each backend: where it diverges, which layers to keep float"
    )
    g.add_argument("config", nargs="?", help="sweep YAML for models, data and backends (default: the bundled demo)")
    _add_trust_flags(g)
    g.add_argument("--model", nargs="+", metavar="NAME", help="only these models (display names)")
    g.add_argument("--spec", nargs="+", metavar="SPEC", help="spec ids (default: the sweep's quantized specs)")
    g.add_argument(
        "--backends", nargs="+", metavar="KEY", help="sweep labels/slugs, simnpu:PROFILE or SLUG:KEY=VALUE[,KEY=VALUE]"
    )
    g.add_argument("--samples", type=int, default=16, help="evaluation samples compared per layer (default 16)")
    g.add_argument(
        "--threshold-db",
        type=float,
        help="name the first layer below this SQNR instead of the default decision rule (the layer that adds the "
        "most lost FP32 top-1 margin when spliced into the float model); faster, the rule of older versions",
    )
    g.add_argument("--memory-mb", type=float, default=256, help="activations held per layer batch (default 256)")
    g.add_argument("--threads", type=int, default=1, help="threads of the FP32 reference session")
    g.add_argument("--fallback-search", action="store_true", help="find layers to keep in float (ort/openvino/simnpu)")
    g.add_argument("--budget-s", type=float, default=300, help="time budget per backend × spec (default 300 s)")
    g.add_argument("--max-candidates", type=int, default=8, help="layers tried one at a time (default 8)")
    g.add_argument("--max-k", type=int, default=4, help="largest set of float layers tried (default 4)")
    g.add_argument("--agreement-samples", type=int, default=500, help="samples for top-1 agreement (default 500)")
    g.add_argument("--target-agreement", type=float, default=0.99, help="stop when reached (default 0.99)")
    g.add_argument("--results-dir", help="root folder for results (default: the config's run.results_dir)")
    g.add_argument("-q", "--quiet", action="store_true")
    g.set_defaults(func=cmd_localize)


def cmd_merge(args: argparse.Namespace) -> int:
    from harness.merge import merge

    for s in merge(args.out, args.inputs):
        print(
            f"{s.out}: +{s.rows_added} row(s), {s.rows_present} already present, +{s.runs_added} run(s), "
            f"+{s.samples_added} latency samples, +{s.predictions_added} predictions "
            f"(from {', '.join(str(p) for p in s.sources)})"
        )
        if s.conflicts:
            print(
                f"{len(s.conflicts)} record(s) differ between the folders; newest measurement wins (ties: content "
                f"digest), the other version is kept in {s.out / 'conflicts'}:"
            )
            for line in s.conflicts:
                print(f"  {escape(line)}")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    import json

    from harness.fleet import fleet_status, load_fleet

    fleet = load_fleet(args.fleet, Path.cwd())
    rows = fleet_status(fleet, probe_timeout_s=args.timeout, slugs=args.backends)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(header_style="bold")
    for col in ("board", "state", "node", "host", "python / ray / qtbench", "backends available (offered)"):
        table.add_column(col)
    for r in rows:
        versions = " / ".join(str(r.get(k, "?")) for k in ("python", "ray", "qtbench")) if "python" in r else ""
        offered = f" ({', '.join(r['offers'])})" if r.get("offers") else ""
        table.add_row(
            escape(r["board"]),
            escape(r["state"]),
            r["node_id"][:12],
            escape(r.get("hostname", "")),
            versions,
            escape(", ".join(r.get("available", [])) + offered),
            style="" if r["state"] == "idle" else "magenta",
        )
    _console().print(table)
    return 0


def _register_fleet(sub: Any) -> None:
    f = sub.add_parser("fleet", help="boards of a Ray fleet: ids, backends there, versions, idle (qtbench[fleet])")
    fsub = f.add_subparsers(dest="fleet_command", required=True)
    st = fsub.add_parser("status", help="each board's node, idle or busy, versions and `qtbench backends` there")
    st.add_argument("--fleet", required=True, help="a fleet file or a cluster address (ray://HEAD:10001, auto)")
    st.add_argument("--timeout", type=float, default=60.0, help="seconds each backend probe may take on a board")
    st.add_argument("--backends", nargs="+", metavar="SLUG", help="probe only these backends (default: all)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_fleet)


def _register_merge(sub: Any) -> None:
    m = sub.add_parser(
        "merge", help="join results folders (e.g. offline boards' sweeps) into OUT by record id; idempotent"
    )
    m.add_argument("out", help="results folder to merge into (created if missing)")
    m.add_argument("inputs", nargs="+", help="results folders (results/<sweep>) or folders of them")
    m.set_defaults(func=cmd_merge)


def _results_stores(where: str) -> list[Any]:
    from harness.store import stores_under

    root = Path(where)
    stores = stores_under(root) if root.is_dir() else []
    if not stores:
        raise UserError(f"{root} holds no qtbench results (no manifest.json); pass results/<sweep> or results/")
    return stores


def cmd_results(args: argparse.Namespace) -> int:
    from harness.store import compact
    from harness.sweep import run_is_alive

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
    from harness.store import latest_rows, superseded

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


def _register_results(sub: Any) -> None:
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


def _register_zoo(sub: Any) -> None:
    from harness.zoo import register_cli  # torch is imported only when a model is built

    register_cli(sub)


_EXTRA_COMMANDS: list[Any] = [
    _register_train,
    _register_report,
    _register_check,
    _register_compare,
    _register_devices,
    _register_env,
    _register_simgap,
    _register_localize,
    _register_zoo,
    _register_merge,
    _register_fleet,
    _register_results,
]


def _crash_report(command: str) -> str:
    """Write the current exception's traceback to a file and return its path (the console gets one line)."""
    import datetime as dt
    import os
    import tempfile
    import traceback

    folder = Path(os.environ.get("QTBENCH_CRASH_DIR") or Path(tempfile.gettempdir()) / "qtbench-crashes")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{command}-{os.getpid()}.txt"
        path.write_text(f"qtbench {__version__} {' '.join(sys.argv)}\n\n{traceback.format_exc()}")
        return str(path)
    except OSError:
        traceback.print_exc()
        return "(could not write a crash file; the traceback is above)"


def _terminate(signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so running cells are killed with their process groups and saved rows stay."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    import os

    from harness.trust import ASK, TRUST_ENV

    before = os.environ.get(TRUST_ENV)
    if before is None:  # a sweep file runs the programs it names only with the user's consent (--trust)
        os.environ[TRUST_ENV] = ASK
    try:
        return _main(argv)
    finally:  # the policy is this command's (a test or a notebook calling main() again starts afresh)
        if before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = before


def _main(argv: Sequence[str] | None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import contextlib

    with contextlib.suppress(ValueError):  # not the main thread (e.g. called from a test's worker thread)
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except QtbenchError as exc:
        print(f"qtbench {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved (a re-run resumes)", file=sys.stderr)
        return 130
    except OSError as exc:  # the environment: a path that is a file, a full disk, no permission
        from harness.store import os_error_message

        print(f"qtbench {args.command}: error: {os_error_message(exc, 'file system error')}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug: one line here, the traceback in a file
        where = _crash_report(args.command)
        print(
            f"qtbench {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} "
            f"(a bug in qtbench or an SDK; traceback written to {where})",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")).strip()
    return text[:2000]


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

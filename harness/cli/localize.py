"""``qtbench localize``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _add_trust_flags, _console, escape


def cmd_localize(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.table import Table

    from qtbench.harness.analysis.localize import LocalizeSettings, run_localization
    from qtbench.harness.core.config import load_sweep
    from qtbench.harness.core.spec import QuantSpec
    from qtbench.harness.demo import demo_config_path

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
        from qtbench.harness.analysis.localize.fallback import FallbackSettings

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
        from qtbench.harness.analysis.localize.fallback import describe

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


def register(sub: Any) -> None:
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

"""``qtbench simgap``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qtbench.harness.cli.common import _add_trust_flags, _console, parse_option


def cmd_simgap(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import tempfile

    from rich.table import Table

    from qtbench.harness.analysis.simgap import run_gap, twin_of
    from qtbench.harness.core.config import load_sweep
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.errors import ConfigError
    from qtbench.harness.core.onnxfacts import model_facts
    from qtbench.harness.core.spec import QuantSpec
    from qtbench.harness.demo import demo_config_path
    from qtbench.harness.run.plan import _data_path

    sweep = load_sweep(args.config or demo_config_path())
    twin = twin_of(args.real, args.profile)
    if twin is None:
        raise ConfigError(f"{args.real} declares no simulation twin; pass --profile (one of devices/npu_profiles.yaml)")
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
                gaps.append(run_gap(Path(path), spec, args.real, options, twin, ev, cal, Path(tmp), m.name))
    rows = [dataclasses.asdict(g) for g in gaps]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    table = Table(header_style="bold", title=f"sim vs real: {args.real} vs {rows[0]['sim'] if rows else twin[0]}")
    cols = ["model", "spec", "samples", "agreement", "kl_real_sim", "cosine", "max_abs", "real_top1", "sim_top1"]
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(
            *[f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols],
        )
    _console().print(table)
    return 0


def register(sub: Any) -> None:
    g = sub.add_parser(
        "simgap", help="compare a real vendor toolchain (qnn, rknn, vela) with its simnpu profile, per output"
    )
    g.add_argument("config", nargs="?", help="sweep YAML for models and data (default: the bundled demo)")
    g.add_argument("--real", required=True, help="the vendor backend: qnn, rknn, vela, tensorrt")
    g.add_argument("--profile", help="simnpu profile (default: the twin the --real adapter declares)")
    g.add_argument("--specs", nargs="+", default=["int8-static-pc-wsym-minmax"])
    g.add_argument("--real-option", action="append", metavar="KEY=VALUE", help="an option for the real backend")
    _add_trust_flags(g)
    g.add_argument("--limit", type=int, help="evaluate only the first N samples")
    g.add_argument("--json", help="also write the rows to this JSON file")
    g.set_defaults(func=cmd_simgap)

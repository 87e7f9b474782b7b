"""``qtbench schema``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from qtbench.harness.core.config import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def register(sub: Any) -> None:
    sc = sub.add_parser("schema", help="print the JSON schema of sweep files")
    sc.add_argument("--out", help="write to this file instead of stdout")
    sc.set_defaults(func=cmd_schema)

"""``qtbench env``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_env(args: argparse.Namespace) -> int:
    from qtbench.harness.run.envs import create

    py = create(args.name, Path(args.path) if args.path else None)
    print(f"{args.name} worker environment ready: {py}")
    if args.name == "rknn" and args.path:
        print(f"point qtbench at it: backends.rknn.options.python: {py}  (or QTBENCH_RKNN_PYTHON={py})")
    if args.name == "tflite" and args.path:
        print(f"point qtbench at it: backends.tflite.options.converter_python: {py}  (or QTBENCH_TF_PYTHON={py})")
    elif args.name == "tflite":
        print("the tflite and vela backends now convert your ONNX models with it (no option to set)")
    return 0


def register(sub: Any) -> None:
    e = sub.add_parser("env", help="build environments for SDKs whose pins clash with qtbench (rknn, tflite converter)")
    esub = e.add_subparsers(dest="env_command", required=True)
    c = esub.add_parser("create", help="create (or update) a worker environment")
    c.add_argument("name", choices=["rknn", "tflite"])
    c.add_argument("--path", help="where to create it (default ~/.cache/qtbench/envs/NAME)")
    c.set_defaults(func=cmd_env)

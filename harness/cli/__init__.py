"""The ``qtbench`` command line: one module per command, each with ``register(sub)`` (its arguments) and the
function that runs it. Commands import the analysis and SDK modules they need when they run, so ``--help``
stays light.

Exit codes: 0 success, 1 a regression or failure the command exists to report, 2 user error (one line, no
traceback), 3 inconclusive (``check --strict``), 70 internal error (with traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qtbench.harness.core.errors import QtbenchError
from qtbench.harness.core.version import __version__

EXIT_INTERNAL = 70

#: the sub-commands in the order ``--help`` lists them; each is a module of this package
COMMANDS = (
    "sweep",
    "backends",
    "show",
    "schema",
    "train",
    "report",
    "check",
    "compare",
    "devices",
    "env",
    "simgap",
    "localize",
    "merge",
    "fleet",
    "results",
    "zoo",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qtbench",
        description="Compile ONNX checkpoints for edge backends at low precision; measure speed, energy and "
        "fidelity; report and gate regressions.",
    )
    p.add_argument("--version", action="version", version=f"qtbench {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return p


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

    from qtbench.harness.core.trust import ASK, TRUST_ENV

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
        from qtbench.harness.run.store import os_error_message

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

"""Trust policy for sweep-file values that make qtbench run a program or load native code.

A few backend options name an executable or a shared library: ``rknn``'s ``python`` (the worker interpreter),
``tflite``/``vela``'s ``converter_python``, and the ``delegate`` library of ``tflite``/``nxp``/``edgetpu``. A
sweep file that sets them runs code of its author's choosing. That is the point on a developer's machine and a
hazard where sweep files come from pull requests (qtbench as a CI gate). So:

* **trusted** (default, ``QTBENCH_TRUSTED`` unset or ``1``): sweep files are the user's own; these options work.
* **untrusted** (``QTBENCH_TRUSTED=0``, or ``qtbench sweep --untrusted``): a sweep file that sets one of them
  is refused with a ConfigError naming the key, unless the value lies on the operator's allow-list
  ``QTBENCH_ALLOWED_EXECUTABLES`` (paths or folders, separated by ``os.pathsep``), set outside the sweep file.

Adapters declare such options in ``Backend.executable_options``; ``Backend.__init__`` calls :func:`check_options`,
so every path that constructs a backend (sweep, probe, simgap, a child process) applies the same rule. The policy
lives in the environment so that child processes inherit it. Files that are only *read* (models, datasets, simnpu
profile YAML, a Vela ``.ini``, a ``.hef``, a meter log) are data, not code, and are not gated here.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

TRUST_ENV = "QTBENCH_TRUSTED"
ALLOW_ENV = "QTBENCH_ALLOWED_EXECUTABLES"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def trusted() -> bool:
    """Whether sweep files may name programs/libraries (``$QTBENCH_TRUSTED``; default trusted)."""
    value = os.environ.get(TRUST_ENV, "1").strip().lower()
    if value in _TRUE or value == "":
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"${TRUST_ENV}={value!r}: use 1 (sweep files may name executables) or 0 (refuse them)")


def allow_list() -> list[Path]:
    """The operator's allow-list from ``$QTBENCH_ALLOWED_EXECUTABLES`` (resolved paths)."""
    raw = os.environ.get(ALLOW_ENV, "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def allowed(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` is an allow-listed file or lies inside an allow-listed folder."""
    path = Path(value).expanduser().resolve()
    return any(path == a or a in path.parents for a in allow_list())


def check_options(slug: str, options: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Refuse, when untrusted, any of ``keys`` set in ``options`` to a value outside the allow-list."""
    if not keys or trusted():
        return
    for key in keys:
        value = options.get(key)
        if value in (None, "") or allowed(str(value)):
            continue
        raise ConfigError(
            f"backends.{slug}.options.{key}: {value!r} names a program or library to run, and this sweep file is "
            f"untrusted (${TRUST_ENV}=0 or --untrusted); remove the option, or allow-list the path in "
            f"${ALLOW_ENV} on this machine"
        )


class UntrustedAction(argparse.Action):
    """``--untrusted``: refuse executable paths from the sweep file (sets ``$QTBENCH_TRUSTED=0`` for this process
    and the cells it starts)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help",
            f"refuse options that run programs/load libraries named by the sweep file "
            f"(CI gates on pull requests); same as {TRUST_ENV}=0",
        )
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        os.environ[TRUST_ENV] = "0"
        setattr(namespace, self.dest, True)

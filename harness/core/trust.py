"""Trust policy for sweep-file values that make qtbench run a program or load native code.

A few backend options name an executable or a shared library: ``rknn``'s ``python`` (the worker interpreter),
``tflite``/``vela``'s ``converter_python``, and the ``delegate`` library of ``tflite``/``nxp``/``edgetpu``. A
sweep file that sets them runs code of its author's choosing. That is the point on a developer's machine and a
hazard where sweep files come from pull requests (qtbench as a CI gate). So:

* **consent needed** (the default of ``qtbench sweep`` and every other command that reads a sweep file): a sweep
  file that sets one of them is refused with one line naming the key (exit 2), before anything runs, unless the
  user consents with ``--trust`` (the file is theirs), the value lies on the operator's allow-list
  ``QTBENCH_ALLOWED_EXECUTABLES`` (paths or folders, separated by ``os.pathsep``, set outside the sweep file), or
  it is an environment qtbench made itself (``qtbench env create``, under ``~/.cache/qtbench/envs``).
* **trusted** (``--trust``, or ``QTBENCH_TRUSTED=1``): sweep files are the user's own; these options work. The
  Python API (``run_sweep``) is trusted when ``QTBENCH_TRUSTED`` is unset: its caller's code is the consent.
* **untrusted** (``--untrusted`` or ``QTBENCH_TRUSTED=0``): as "consent needed", and ``--trust`` is not offered
  (CI gates on pull requests).

Programs the *user* names outside a sweep file (``$QTBENCH_RKNN_PYTHON``, ``$QTBENCH_TF_PYTHON``) are theirs and
are not gated.

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

from qtbench.harness.core.errors import ConfigError

TRUST_ENV = "QTBENCH_TRUSTED"
ALLOW_ENV = "QTBENCH_ALLOWED_EXECUTABLES"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


#: ``$QTBENCH_TRUSTED`` as the CLI sets it when the user gave neither ``--trust`` nor ``--untrusted``
ASK = "ask"


def trusted() -> bool:
    """Whether sweep files may name programs/libraries (``$QTBENCH_TRUSTED``; unset: trusted, the Python API)."""
    value = os.environ.get(TRUST_ENV, "1").strip().lower()
    if value in _TRUE or value == "":
        return True
    if value in _FALSE or value == ASK:
        return False
    raise ConfigError(f"${TRUST_ENV}={value!r}: use 1 (sweep files may name executables) or 0 (refuse them)")


#: where ``qtbench env create`` builds worker environments, one folder per SDK (rknn, tflite): qtbench made them,
#: so the programs inside are trusted like qtbench itself
ENVS_ROOT = Path.home() / ".cache" / "qtbench" / "envs"


def made_envs() -> list[Path]:
    """The environments qtbench builds: :data:`ENVS_ROOT`, and the TFLite converter's when ``$QTBENCH_TFLITE_ENV``
    moves it elsewhere."""
    moved = os.environ.get("QTBENCH_TFLITE_ENV")
    return [ENVS_ROOT, *([Path(moved)] if moved else [])]


def allow_list() -> list[Path]:
    """The operator's allow-list from ``$QTBENCH_ALLOWED_EXECUTABLES`` (resolved paths), and the environments
    qtbench made itself (``qtbench env create``)."""
    raw = os.environ.get(ALLOW_ENV, "")
    listed = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return [*listed, *(p.expanduser().resolve() for p in made_envs())]


def allowed(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` is an allow-listed file or lies inside an allow-listed folder. The path is compared
    as written and resolved (a venv's ``bin/python`` is a symlink to the interpreter it was made from)."""
    given = Path(value).expanduser().absolute()
    real = given.resolve()
    return any(p == a or a in p.parents for a in allow_list() for p in (given, real))


def check_options(slug: str, options: Mapping[str, Any], keys: Sequence[str]) -> None:
    """Refuse, when not trusted, any of ``keys`` set in ``options`` to a value outside the allow-list."""
    if not keys or trusted():
        return
    ask = os.environ.get(TRUST_ENV, "").strip().lower() == ASK
    for key in keys:
        value = options.get(key)
        if value in (None, "") or allowed(str(value)):
            continue
        why = (
            "qtbench runs what a sweep file names only with your consent: pass --trust if this sweep file is yours"
            if ask
            else f"and this sweep file is untrusted (${TRUST_ENV}=0 or --untrusted): remove the option"
        )
        raise ConfigError(
            f"backends.{slug}.options.{key}: {value!r} names a program or library to run, {why}, or allow-list "
            f"the path in ${ALLOW_ENV} on this machine"
        )


class TrustAction(argparse.Action):
    """``--trust``: this sweep file is the user's own; options naming programs/libraries may run."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help",
            "this sweep file is yours: let it name programs or libraries to run (a worker interpreter, a delegate); "
            f"same as {TRUST_ENV}=1",
        )
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, *_: Any) -> None:
        if os.environ.get(TRUST_ENV, "").strip().lower() in _FALSE or getattr(namespace, "untrusted", False):
            parser.error(f"--trust conflicts with --untrusted / {TRUST_ENV}=0")
        os.environ[TRUST_ENV] = "1"
        setattr(namespace, self.dest, True)


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

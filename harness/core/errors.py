"""One exception tree. A ``UserError`` is something the user can fix: the CLI prints its one-line message and exits 2.
Anything else escaping the CLI is an internal error (a bug in qtbench or an SDK) and keeps its traceback."""

from __future__ import annotations


class QtbenchError(Exception):
    """Base of every error qtbench raises on purpose."""

    exit_code = 1


class UserError(QtbenchError):
    """Bad input: the message says what was asked, what exists and how to fix it."""

    exit_code = 2


class ConfigError(UserError):
    """A sweep file or option is invalid; the message starts with the key path, e.g. ``specs[2].precision``."""


class DataError(UserError):
    """Calibration or evaluation data cannot be read or does not match the model's inputs."""


class BackendUnavailable(UserError):
    """A backend's runtime or hardware is not present here; the message names what to install."""


class CompileError(QtbenchError):
    """A backend's compiler or SDK worker ran and rejected this model/spec: the cell is ``failed`` with the
    compiler's message (not ``unavailable``, which means the SDK or hardware is missing)."""


class UnsupportedSpec(QtbenchError):
    """A backend cannot compile a QuantSpec; planning turns this into a ``skipped`` row with the reason."""


class ResultsError(UserError):
    """A results folder is missing, unreadable, or written by a newer qtbench."""


class InternalError(QtbenchError):
    """A broken invariant inside qtbench; report it as a bug."""


def one_line(text: object, limit: int = 240) -> str:
    """``text`` as one line for a status message: a Python traceback (SDKs put them in their messages) becomes its
    final ``Type: message`` line, other multi-line text its first non-empty line; the rest belongs in a log."""
    import re

    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    if any("Traceback (most recent call last)" in ln for ln in lines):
        raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", ln)]
        head = lines[0].split("Traceback (most recent call last)")[0].strip().rstrip(":").strip()
        tail = raised[-1] if raised else lines[-1]
        head = re.sub(r"[\w.]+(Error|Exception)$", "", head).strip().rstrip(":").strip()  # the type is in tail
        line = f"{head}: {tail}" if head and tail not in head else (head or tail)
    else:
        line = lines[0]
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"

"""Run risky work (a cell, a backend probe) in a child process that can never outlive the sweep.

Each child starts its own session, so the child and every process an SDK starts under it form one process group
that a timeout or an interrupt kills as a whole. A *lifeline* pipe ties the child to the sweep process: the
parent holds the only write end, a thread in the child blocks on the read end, and when the parent dies for any
reason (SIGKILL included) the read sees EOF and the child kills its own group. ``PR_SET_PDEATHSIG`` adds the
same guarantee against the forkserver dying.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

_CTX: Any = None
KILL_GRACE_S = 2.0  # after SIGKILL of a group: how long to wait for the child to be reaped


def context() -> Any:
    """forkserver on Linux (children start from a clean, pre-imported server: fast and thread-safe), else spawn."""
    global _CTX
    if _CTX is None:
        if sys.platform.startswith("linux"):
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(["harness.cell", "backends.ort", "numpy", "onnx", "onnxruntime"])
        else:  # pragma: no cover
            _CTX = mp.get_context("spawn")
    return _CTX


def _set_pdeathsig() -> None:
    """Linux: SIGKILL this process when its parent (the forkserver) dies."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the lifeline still holds
        pass


def _watch_lifeline(lifeline: Any) -> None:
    """Block until the sweep process's end of the lifeline closes, then kill this child's whole group."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            lifeline.recv_bytes()
    with contextlib.suppress(OSError):
        if os.getpgid(0) == os.getpid():  # never signal a group we do not lead (setsid failed)
            os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _child(fn: Callable[..., Any], args: tuple, conn: Any, lifeline: Any) -> None:
    with contextlib.suppress(OSError):
        os.setsid()  # own session and group: a timeout kills the cell and everything it started
    _set_pdeathsig()
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="qtbench-lifeline").start()
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - report anything, including SystemExit from an SDK
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:  # noqa: BLE001 - e.g. the result itself did not pickle and the pipe broke
            pass
    finally:
        conn.close()


def kill_group(proc: Any) -> None:
    """SIGKILL the child's process group (the child and its SDK subprocesses), or the child alone as a fallback."""
    pid = proc.pid
    if pid is None:
        return
    try:
        if os.getpgid(pid) == pid:  # setsid() has run: the group is the child's own
            os.killpg(pid, signal.SIGKILL)
            return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(Exception):
        proc.kill()


def call_isolated(fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
    """Run ``fn(*args)`` in a child process: ('ok', value) | ('error', msg) | ('timeout', msg) | ('died', msg).

    An interrupt (Ctrl-C, or SIGTERM turned into SystemExit by the CLI) kills the child's group at once and is
    re-raised; the child never survives the call.
    """
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, send, life_r), daemon=True)
    proc.start()
    send.close()
    life_r.close()
    outcome: tuple[str, Any] | None = None
    try:
        if recv.poll(timeout_s):
            with contextlib.suppress(EOFError, OSError):
                outcome = recv.recv()
        else:
            kill_group(proc)
            outcome = ("timeout", f"cell exceeded run.timeout_s={timeout_s:g}s and was killed (with its subprocesses)")
    except BaseException:
        kill_group(proc)
        proc.join(KILL_GRACE_S)
        raise
    finally:
        life_w.close()
        recv.close()
    proc.join(KILL_GRACE_S if outcome is None else 10)
    if proc.is_alive():
        kill_group(proc)
        proc.join(KILL_GRACE_S)
    if outcome is not None:
        return outcome
    code = proc.exitcode
    sig = ""
    if code is not None and code < 0 and -code in signal.Signals._value2member_map_:
        sig = f" ({signal.Signals(-code).name})"
    return "died", f"child process died with exit code {code}{sig} before returning a result (SDK crash?)"

"""Run risky work (a cell, a backend probe) in a child process that can never outlive the sweep.

Each child starts its own session, so the child and every process an SDK starts under it form one process group
that a timeout or an interrupt kills as a whole. A *lifeline* pipe ties the child to the sweep process: the
parent holds the only write end, a thread in the child blocks on the read end, and when the parent dies for any
reason (SIGKILL included) the read sees EOF and the child kills its own group. ``PR_SET_PDEATHSIG`` adds the
same guarantee against the forkserver dying.

:class:`Worker` keeps one such child warm across calls (a sweep's consecutive cells of one backend), so a cell
does not pay for a process start, imports and SDK initialisation; a call that times out or kills the child
costs that call only — the child is killed with its group and the next call starts a fresh one.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

_CTX: Any = None
KILL_GRACE_S = 2.0  # after SIGKILL of a group: how long to wait for the child to be reaped
#: every child this process started and has not reaped yet, so an interrupt can kill them all at once (worker
#: threads may be blocked waiting on them for up to run.timeout_s); set operations are atomic under the GIL, so
#: a signal handler may iterate a copy while another thread adds or removes
_LIVE: set[Any] = set()
_STOPPING = threading.Event()


def stop_all() -> None:
    """Kill every live child's process group now and make further calls raise KeyboardInterrupt: what an
    interrupt does first, so threads waiting on a hung cell return at once instead of at its timeout."""
    _STOPPING.set()
    for proc in list(_LIVE):
        kill_group(proc)


def _check_stopping() -> None:
    if _STOPPING.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Any:
    """While the body runs (in the main thread): SIGINT and SIGTERM first kill every live child group
    (:func:`stop_all`), then unwind as KeyboardInterrupt, so a sweep stops within seconds in any phase, whatever
    a cell is doing. The previous handlers come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        stop_all()
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _STOPPING.clear()


def context() -> Any:
    """forkserver on Linux (children start from a clean, pre-imported server: fast and thread-safe), else spawn."""
    global _CTX
    if _CTX is None:
        if sys.platform.startswith("linux"):
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(
                ["qtbench.harness.run.cell", "qtbench.backends.ort", "numpy", "onnx", "onnxruntime"]
            )
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


def _detach(lifeline: Any) -> None:
    """In a new child: its own session and group (a timeout kills it and everything it started), killed when its
    parent dies (PR_SET_PDEATHSIG, and the lifeline thread)."""
    with contextlib.suppress(OSError):
        os.setsid()
    _set_pdeathsig()
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="qtbench-lifeline").start()


def _timed_out(timeout_s: float) -> tuple[str, str]:
    return "timeout", f"cell exceeded run.timeout_s={timeout_s:g}s and was killed (with its subprocesses)"


def _died(code: int | None) -> tuple[str, str]:
    sig = ""
    if code is not None and code < 0 and -code in signal.Signals._value2member_map_:
        sig = f" ({signal.Signals(-code).name})"
    return "died", f"child process died with exit code {code}{sig} before returning a result (SDK crash?)"


def _child(fn: Callable[..., Any], args: tuple, conn: Any, lifeline: Any) -> None:
    _detach(lifeline)
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
    _check_stopping()
    ctx = context()
    recv, send = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, args, send, life_r), daemon=True)
    proc.start()
    _LIVE.add(proc)
    send.close()
    life_r.close()
    outcome: tuple[str, Any] | None = None
    try:
        if recv.poll(timeout_s):
            with contextlib.suppress(EOFError, OSError):
                outcome = recv.recv()
        else:
            kill_group(proc)
            outcome = _timed_out(timeout_s)
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
    _LIVE.discard(proc)
    _check_stopping()  # killed by an interrupt: not a cell that died
    return outcome if outcome is not None else _died(proc.exitcode)


def _serve(conn: Any, lifeline: Any) -> None:
    """A warm worker's loop: run each ``(fn, args)`` received, send back its outcome; ``None`` or EOF ends it."""
    import gc

    _detach(lifeline)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args = msg
        try:
            outcome: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:  # noqa: BLE001 - report anything, including SystemExit from an SDK
            outcome = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(outcome)
        except (OSError, EOFError):
            return
        except Exception as exc:  # noqa: BLE001 - the result did not pickle: say so, keep serving
            conn.send(("error", f"the result could not be sent back ({type(exc).__name__}: {exc})"))
        del outcome, msg
        gc.collect()  # the previous cell's sessions and buffers go before the next cell is timed


class Worker:
    """One warm child process that runs calls one at a time; ``call`` answers like :func:`call_isolated`.

    ``max_calls`` bounds what a long-lived process may accumulate (allocator fragmentation, SDK caches): after
    that many calls the child is replaced by a fresh one. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, max_calls: int = 50) -> None:
        self.max_calls = max(1, max_calls)
        self.calls = 0  # calls the current child has run
        self.starts = 0  # children started over this worker's life
        self._proc: Any = None
        self._conn: Any = None
        self._life_w: Any = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def _start(self) -> None:
        ctx = context()
        parent, child = ctx.Pipe(duplex=True)
        life_r, life_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_serve, args=(child, life_r), daemon=True)
        proc.start()
        _LIVE.add(proc)
        child.close()
        life_r.close()
        self._proc, self._conn, self._life_w = proc, parent, life_w
        self.calls = 0
        self.starts += 1

    def _stop(self, graceful: bool) -> None:
        proc, conn, life_w = self._proc, self._conn, self._life_w
        self._proc = self._conn = self._life_w = None
        if proc is None:
            return
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
            proc.join(KILL_GRACE_S)
        if proc.is_alive():
            kill_group(proc)
            proc.join(KILL_GRACE_S)
        _LIVE.discard(proc)
        for c in (conn, life_w):
            with contextlib.suppress(OSError):
                c.close()

    def close(self) -> None:
        """End the child (asked first, killed with its group if it does not go)."""
        self._stop(graceful=True)

    def call(self, fn: Callable[..., Any], args: tuple, timeout_s: float) -> tuple[str, Any]:
        """``fn(*args)`` in the warm child: ('ok', value) | ('error', msg) | ('timeout', msg) | ('died', msg)."""
        _check_stopping()
        if self._proc is not None and (self.calls >= self.max_calls or not self._proc.is_alive()):
            self._stop(graceful=True)
        if self._proc is None:
            self._start()
        proc, conn = self._proc, self._conn
        self.calls += 1
        deadline = time.monotonic() + timeout_s
        try:
            try:
                conn.send((fn, args))
            except (OSError, EOFError):  # the child went between calls: one fresh start, then the call
                self._stop(graceful=False)
                self._start()
                proc, conn = self._proc, self._conn
                self.calls += 1
                conn.send((fn, args))
            if conn.poll(max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(EOFError, OSError):
                    return conn.recv()
            else:
                self._stop(graceful=False)
                return _timed_out(timeout_s)
        except BaseException:
            self._stop(graceful=False)
            raise
        proc.join(KILL_GRACE_S)  # the pipe closed without an answer: the child died
        code = proc.exitcode
        self._stop(graceful=False)
        _check_stopping()  # killed by an interrupt: not a cell that died
        return _died(code)

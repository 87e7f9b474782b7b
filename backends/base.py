"""The backend contract (interface version ``BACKEND_API_VERSION``).

A backend compiles one float ONNX model under a :class:`~qtbench.harness.core.spec.QuantSpec` into a :class:`Compiled`
object that runs inference. It never times itself: the harness does (``qtbench.harness.run.measure``). An adapter fills
in
the abstract hooks; an incomplete adapter fails when it is constructed, not halfway through a sweep.

Lifecycle, as the harness drives it in a child process per cell::

    backend = Backend(options)          # options checked here (bad option → ConfigError)
    backend.availability()              # cheap; imports the SDK
    backend.supports(spec)              # None or a reason → 'skipped' row
    # compile() checks supports(), makes workdir, then calls the adapter's _compile()
    with backend.compile(model, spec, calib, workdir) as compiled:
        compiled.infer(feeds) -> list[np.ndarray]
"""

from __future__ import annotations

import abc
import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.harness.core.audit import audit_onnx
from qtbench.harness.core.errors import ConfigError, UnsupportedSpec
from qtbench.harness.core.trust import check_options

BACKEND_API_VERSION = 1
NUMBERS = ("measured", "simulated", "estimated")


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here; ``reason`` says why not and how to fix it."""

    available: bool
    reason: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    devices: tuple[str, ...] = ()


@dataclass
class ModelInput:
    """The float model a backend compiles, with what the harness already knows about it."""

    path: Path
    sha256: str
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    #: the user's file when ``path`` is intake's normalised form of it (files beside the model live there)
    source_path: Path | None = None

    @property
    def source(self) -> Path:
        return self.source_path or self.path


@dataclass
class CompiledInfo:
    """What a compilation produced, stored in the row.

    ``coverage`` counts nodes per compute unit (``{"cpu": 31}``, ``{"npu": 28, "cpu": 3}``); ``fallback_ops``
    names ops that left the accelerator and why. ``est_latency_ms``/``est_source`` hold a target latency that
    comes from a model, not a clock (vendor cycle counts, a roofline), kept apart from the harness's timing of
    whatever ran here (a simulator's wall time is not the device's). ``numbers`` says whether outputs/latency
    come from the real target (measured), from a simulation of its numerics (simulated) or from a cost model
    (estimated).
    """

    artifact_path: Path | None = None
    artifact_bytes: int | None = None
    coverage: dict[str, int] = field(default_factory=dict)
    fallback_ops: dict[str, str] = field(default_factory=dict)
    numbers: str = "measured"
    execution_device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    compile_s: float = float("nan")
    cache_hit: bool = False
    #: Target latency for one batch-1 inference from a model (cycle counts, a cost model), with how it was got.
    est_latency_ms: float = float("nan")
    est_source: str = ""

    def __post_init__(self) -> None:
        if self.numbers not in NUMBERS:
            raise ValueError(f"numbers must be one of {NUMBERS}, got {self.numbers!r}")


BUILD_LOCK = ".build.lock"  # per cache entry: one build at a time (and a fleet board's unpack of a shipped one)
#: per cache entry: one ``compile`` at a time across processes and threads. Adapters write beside the artifact
#: while compiling (simnpu's prepared graph, QNN's context binary, TFLite's conversion, Vela's report): two
#: sweeps sharing a cache must not build into one folder at once
COMPILE_LOCK = ".compile.lock"


_HELD = threading.local()  # per thread: the compile locks it holds (an adapter may compile another in its entry)


@contextlib.contextmanager
def compile_lock(workdir: Path) -> Iterator[None]:
    """Hold ``workdir``'s compile lock (blocking): a second compile of the entry, in another process or thread,
    waits, then finds it built. Re-entrant within a thread: Vela compiles its TFLite artifact in its own entry."""
    import fcntl

    key = str(workdir.resolve())
    held: set[str] = _HELD.__dict__.setdefault("paths", set())
    if key in held:
        yield
        return
    with open(workdir / COMPILE_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


#: Files a cache entry derives on the machine that runs it (OpenVINO's compiled-blob cache, ORT's coverage facts):
#: rebuilt where they are missing, never shipped with the entry to another machine.
MACHINE_LOCAL = ("ov_cache", "coverage-", "model_b1-")


def build_once(artifact: Path, build: Callable[[list[str]], None]) -> tuple[list[str], bool]:
    """Run ``build(notes)`` unless a complete cache entry for ``artifact`` exists; returns (notes, cache_hit).

    An entry is the artifact plus ``notes.json``, which is written last (atomically) and records the artifact's
    size: it is the entry's commit marker. An artifact without a valid marker (a build killed between its rename
    and the marker, an empty or truncated file) is discarded and rebuilt, never trusted. Builds of one entry are
    serialised by a lock file, and temp files a killed build left behind are removed before building.
    """
    import fcntl

    artifact.parent.mkdir(parents=True, exist_ok=True)
    with open(artifact.with_name(BUILD_LOCK), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _read_entry(artifact, artifact.with_name("notes.json"))
        if cached is not None:
            return cached, True
        _clear_entry(artifact)
        notes: list[str] = []
        build(notes)
        commit_entry(artifact, notes)
        return notes, False


@contextlib.contextmanager
def claim_entry(artifact: Path) -> Iterator[bool]:
    """:func:`build_once` without waiting, for an adapter that builds other cells' artifacts alongside its own
    (one calibration pass for several specs). Yields True while this process holds the entry's build lock and
    the entry is incomplete (cleaned: write the artifact, then :func:`commit_entry`); False when the entry is
    complete or another process is building it (leave it alone). Never blocks, so two builders claiming each
    other's entries cannot deadlock."""
    import fcntl

    artifact.parent.mkdir(parents=True, exist_ok=True)
    with open(artifact.with_name(BUILD_LOCK), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if _read_entry(artifact, artifact.with_name("notes.json")) is not None:
            yield False
            return
        _clear_entry(artifact)
        yield True


def commit_entry(artifact: Path, notes: list[str]) -> None:
    """Write the commit marker of a built entry (under its build lock): from now on it is a cache hit."""
    import os

    if not artifact.exists():
        raise RuntimeError(f"the backend's build finished without writing {artifact}")
    record = artifact.with_name("notes.json")
    marker = {"notes": notes, "artifact": artifact.name, "bytes": _entry_bytes(artifact)}
    tmp = record.with_name(f".tmp-notes-{os.getpid()}.json")
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, record)


def _clear_entry(artifact: Path) -> None:
    """Under the entry's lock no other build is running: drop its marker and a killed build's temp files."""
    import shutil

    for leftover in artifact.parent.iterdir():
        if leftover.name.startswith((".tmp", "tmp")) and leftover != artifact:
            with contextlib.suppress(OSError):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    artifact.with_name("notes.json").unlink(missing_ok=True)


def _entry_bytes(artifact: Path) -> int:
    return artifact.stat().st_size if artifact.is_file() else sum(p.stat().st_size for p in artifact.rglob("*"))


def _read_entry(artifact: Path, record: Path) -> list[str] | None:
    """The notes of a complete cache entry, or None when the entry is missing, partial or corrupt."""
    if not artifact.exists() or not record.is_file():
        return None
    try:
        marker = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(marker, list):  # entries written before the marker recorded a size
        return [str(n) for n in marker] if _entry_bytes(artifact) > 0 else None
    if not isinstance(marker, dict) or marker.get("bytes") != _entry_bytes(artifact):
        return None
    return [str(n) for n in marker.get("notes", [])]


class Compiled(abc.ABC):
    """A compiled model ready to run. Use as a context manager, or call :meth:`close`."""

    def __init__(self, info: CompiledInfo) -> None:
        self.info = info
        self._closed = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run one inference; ``feeds`` maps input names to host arrays; returns host arrays in output order."""
        if self._closed:
            raise RuntimeError("infer() after close()")
        return self._infer(feeds)

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...

    def device_latencies_ms(self) -> list[float] | None:
        """The runtime's own per-inference latency for the calls made so far, when it reports one (reset on read).

        The harness's clock stays the reference (host to host); this is recorded beside it, never instead.
        """
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources; default: nothing to release."""

    def __enter__(self) -> Compiled:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(abc.ABC):
    """Base class of every adapter. Subclasses set ``slug`` and ``option_defaults`` and fill the hooks."""

    slug: str = ""
    description: str = ""
    #: Options the adapter accepts, with defaults; unknown options are rejected with this list.
    option_defaults: ClassVar[Mapping[str, Any]] = {}
    #: Options whose value names a program to run or a library to load: refused from untrusted sweep files
    #: (see :mod:`qtbench.harness.core.trust`).
    executable_options: ClassVar[tuple[str, ...]] = ()
    #: Whether an artifact built on one machine runs on another with the same SDK version (a fleet may then
    #: compile on a host and ship it to the board); False for artifacts bound to the building machine's device.
    artifact_portable: ClassVar[bool] = True
    #: Whether builds and quality passes must have the device to themselves (a GPU: TensorRT picks kernels by timing
    #: them while it builds, so a build beside another would cache an engine tuned under contention): the local
    #: compile phase then runs this backend's cells one at a time while other backends' cells build alongside.
    exclusive_device: bool = False  # an adapter may make it a property of its options (ORT with a GPU provider)
    #: Whether the compiler needs every dimension static: the planner then hands it intake's static form of the
    #: model (non-batch dims fixed from the evaluation data, batch 1, shape subgraphs folded).
    static_shapes: ClassVar[bool] = False
    #: The option that keeps a list of named ONNX nodes in float (``exclude_nodes`` on ort, openvino, simnpu): the
    #: fallback search builds the backend with it set. None: this backend cannot keep chosen nodes in float.
    float_fallback_option: ClassVar[str | None] = None
    #: Why this backend's runtime returns final outputs only ('' when its adapter offers a :meth:`tap`).
    output_only: ClassVar[str] = ""
    #: The simulation twin of a vendor backend: (slug, options) of the backend that models its numerics on this
    #: host (``("simnpu", {"profile": "qualcomm-htp"})`` for qnn). ``qtbench simgap`` compares the two; None: none.
    simulation_twin: ClassVar[tuple[str, Mapping[str, Any]] | None] = None

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.siblings: tuple[tuple[Any, Path], ...] = ()  # see compile()
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            allowed = ", ".join(self.option_defaults) or "none"
            raise ConfigError(f"backends.{self.slug}.options.{unknown[0]}: unknown option; allowed: {allowed}")

        check_options(self.slug, options, self.executable_options)
        self.options = {**self.option_defaults, **options}

    def device_identity(self) -> str:
        """What of this machine a non-portable artifact is bound to besides the SDK version (GPU model, compute
        capability, driver): part of its artifact key, so an engine built on another GPU is never taken from a
        shared cache. '' for portable artifacts (the default) or when the device cannot be read."""
        return ""

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Probe the runtime/hardware. Must not raise for a missing SDK: return ``available=False`` with why."""

    @abc.abstractmethod
    def supports(self, spec: Any) -> str | None:
        """``None`` when ``spec`` can be compiled here, else the reason (kept in the skipped row)."""

    def compile(
        self, model: ModelInput, spec: Any, calib: Any, workdir: Path, siblings: Sequence[tuple[Any, Path]] = ()
    ) -> Compiled:
        """Build the artifact for ``spec`` (calibrating on ``calib`` when static) in ``workdir``.

        Checks ``supports(spec)`` first (an unsupported spec raises UnsupportedSpec → a 'skipped' row) and makes
        ``workdir``, which is stable per (model, spec, calibration set, backend version and options), so an
        adapter may treat files already there as its cache. ``siblings`` are (spec, workdir) of other cells of
        the sweep in the same :meth:`build_group`: an adapter may build their artifacts in the same pass
        (``self.siblings`` during the call), each claimed with :func:`claim_entry`; others ignore them.
        """

        reason = self.supports(spec)
        if reason:
            raise UnsupportedSpec(reason)
        workdir.mkdir(parents=True, exist_ok=True)
        self.siblings = tuple(siblings)
        try:
            with compile_lock(workdir):
                return self._compile(model, spec, calib, workdir)
        finally:
            self.siblings = ()

    def scores_off_clock(self) -> bool:
        """Whether a local sweep may run a cell's quality pass in its compile phase, beside other builds (its
        outputs do not depend on timing): True where inference runs in this process (a runtime or simulator on
        this host); an adapter whose inference runs on an attached board returns False there, so the board sees
        one job at a time and the pass runs in the measure phase."""
        return True

    def build_group(self, spec: Any) -> str | None:
        """A key shared by specs whose artifacts this adapter can build together with one calibration pass of a
        model (same key: one pass serves all), or None (default: every artifact is built on its own). Called
        in the planning probe; the sweep then hands each such cell the others as ``siblings``."""
        return None

    @abc.abstractmethod
    def _compile(self, model: ModelInput, spec: Any, calib: Any, workdir: Path) -> Compiled:
        """The adapter's build step, called by :meth:`compile` with a supported spec and an existing workdir."""

    def version(self) -> str:
        """The runtime's version string for the row's ``backend_version``."""
        av = self.availability()
        return ";".join(f"{k}={v}" for k, v in sorted(av.versions.items()))

    def reference_key(self) -> str:
        """Options that change numerics or speed, for the cache and comparability keys."""
        return ";".join(f"{k}={self.options[k]}" for k in sorted(self.options))

    def audit(self, compiled: Compiled, spec: Any) -> Any:
        """Read back what ``compiled`` holds for :mod:`qtbench.harness.core.audit`: an
        :class:`~qtbench.harness.core.audit.ArtifactFacts`
        (each compute node's weight bits, granularity, symmetry, activation quantization), or a string saying why
        this artifact cannot be read. Default: ONNX artifacts are read as QDQ/QOperator graphs; an adapter whose
        artifact is something else overrides this with its SDK's reader (layer precisions, tensor types)."""

        path = compiled.info.artifact_path
        if path is not None and path.suffix == ".onnx" and path.is_file():
            return audit_onnx(path, self.slug)
        return f"{self.slug} has no reader for its artifact ({path.name if path else 'none'}) yet"

    def tap(self, compiled: Compiled, spec: Any, label: str) -> Any:
        """A tap on ``compiled`` that reads the original model's intermediate tensors (see
        :mod:`qtbench.backends.taps`: ``locate`` then ``open``), or a string saying why this backend returns its
        final outputs only. Localisation asks here; it never looks at the slug. ``label`` names the tap in rows."""
        return self.output_only or f"no intermediate-tensor tap for backend '{self.slug}' (its adapter offers none)"

    def artifact_inputs(self, model_path: Path, spec: Any) -> dict[str, str]:
        """Files besides the ONNX model that decide this cell's artifact, as name → sha256 (default: none).

        A pre-converted ``.tflite`` beside the model is one: when it changes, the cell key must change with it.
        Cheap (hashes files, imports no SDK), so the parent process may call it while planning.
        """
        return {}


class _Quiet:
    """See :func:`quiet`."""

    def __init__(self, log: Path) -> None:
        self.log = Path(log)

    def __enter__(self) -> Path:
        import os
        import sys

        self.log.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._file = self.log.open("a", buffering=1, errors="replace")
        self._saved_fds = (os.dup(1), os.dup(2))
        self._saved_streams = (sys.stdout, sys.stderr)
        os.dup2(self._file.fileno(), 1)
        os.dup2(self._file.fileno(), 2)
        sys.stdout = sys.stderr = self._file
        return self.log

    def __exit__(self, *exc: object) -> None:
        import os
        import sys

        self._file.flush()
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self._file.close()


def quiet(log: Path) -> _Quiet:
    """``with quiet(workdir / "backend.log"):`` sends everything written to stdout/stderr to ``log``, file
    descriptors 1 and 2 included, so C/C++ libraries' chatter (LiteRT's "Created TensorFlow Lite XNNPACK delegate",
    NNCF's progress bars and bit-width tables) lands in the cell's log instead of between the CLI's cell lines.
    Not thread-safe (it swaps process-wide descriptors): use it around an SDK call in the cell's own process."""
    return _Quiet(log)

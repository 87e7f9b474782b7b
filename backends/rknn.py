"""Rockchip RKNN adapter (``rknn``): rknn-toolkit2's compiler and PC simulator, in a worker environment.

rknn-toolkit2 2.5 cannot share an environment with qtbench (numpy ≤ 1.26, onnx ≤ 1.18, an old torch, and builds
that crash the interpreter), so it runs in its own virtual environment (``qtbench env create rknn``; path in
``options.python`` or ``QTBENCH_RKNN_PYTHON``) as ``backends/rknn_worker.py``, driven over stdin/fd JSON lines
with arrays in .npy files. A crash in the worker fails one cell, never the sweep; a build the toolkit rejects is a
``failed`` cell with its message. Probing reads the env's installed packages and never starts its interpreter
(``options.python`` is refused from untrusted sweep files, see :mod:`qtbench.harness.core.trust`).

Specs: int8 static → ``w8a8`` with ``quantized_method`` channel/layer (granularity) and ``quantized_algorithm``
normal (minmax) / kl_divergence (entropy) / mmse (mse); fp16 → no quantization (the NPU's float path). The
simulator can't load a saved ``.rknn``, so every cell builds from ONNX; the calibration ``.npy`` files and dataset
list (NCHW, as the toolkit wants for ONNX inputs) are cached in the cell's workdir. Numbers are ``simulated``.
Each build also exports the deployable ``model.rknn`` (its size is the row's artifact size). On a Rockchip board,
``options.rknn_model`` runs such a file with rknn-toolkit-lite2 on the real NPU (rows ``measured``; written
against the lite2 API, not exercised in CI). Board-only measurements (``eval_perf``, ``eval_memory``) need a
board; the PC simulator has no timing model, so ``est. ms`` comes from the build's per-op cycle table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from qtbench.backends._graph import per_sample
from qtbench.backends.base import Availability, Backend, Compiled, CompiledInfo, ModelInput
from qtbench.harness.core.errors import BackendUnavailable, CompileError, ConfigError
from qtbench.harness.core.spec import QuantSpec
from qtbench.harness.core.trust import ENVS_ROOT

WORKER = Path(__file__).with_name("rknn_worker.py")
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1106", "rv1103", "rk2118")
ALGORITHMS = {"minmax": "normal", "entropy": "kl_divergence", "mse": "mmse"}
MAX_OPSET = 19  # rknn-toolkit2 2.x refuses newer ONNX opsets ("Unsupport onnx opset 20, need <= 19")
#: Bumped when the adapter changes what a cell computes (part of the cache key through the versions).
ADAPTER_VERSION = 2
DEFAULT_ENV = ENVS_ROOT / "rknn"


def worker_python(option: str | None) -> Path:
    """The rknn environment's interpreter: option, then $QTBENCH_RKNN_PYTHON, then the env create default."""
    if option:
        return Path(option)
    if os.environ.get("QTBENCH_RKNN_PYTHON"):
        return Path(os.environ["QTBENCH_RKNN_PYTHON"])
    return DEFAULT_ENV / "bin" / "python"


def installed_versions(python: Path, packages: tuple[str, ...]) -> dict[str, str]:
    """Versions of ``packages`` installed in the virtual environment of ``python``, read from its dist-info
    metadata (``<env>/lib/python*/site-packages``) without running the interpreter."""
    found: dict[str, str] = {}
    env = python.parent.parent
    wanted = {p.replace("-", "_").lower(): p for p in packages}
    for site in sorted(env.glob("lib/python*/site-packages")) + sorted(env.glob("Lib/site-packages")):
        for dist in site.glob("*.dist-info"):
            name, _, version = dist.name[: -len(".dist-info")].partition("-")
            pkg = wanted.get(name.replace("-", "_").lower())
            if pkg and pkg not in found:
                found[pkg] = version
    return found


_TABLE_ROW = re.compile(
    r"^D RKNN: \[[^\]]*\]\s+(\d+)\s+(\w+)\s+(\w+)\s+(NPU|CPU)\s+.*?\s(\d+)/(\d+)/(\d+)\s+(\d+)\s+(\S+)\s*$", re.M
)


def parse_build_table(log: str) -> list[dict[str, Any]]:
    """rknn.build(verbose) per-op table → [{id, op, dtype, target, cycles_ddr, cycles_npu, cycles_total, name}].

    Rows look like ``D RKNN: [07:56:40.151] 1 ConvRelu INT8 NPU (1,1,14,14),(16,1,3,3),(16) (1,16,14,14)
    250/1872/1872 2 Conv:/stem/stem.0/Conv``.
    """
    rows = []
    for m in _TABLE_ROW.finditer(log):
        rows.append(
            {
                "id": int(m.group(1)),
                "op": m.group(2),
                "dtype": m.group(3),
                "target": m.group(4),
                "cycles_ddr": int(m.group(5)),
                "cycles_npu": int(m.group(6)),
                "cycles_total": int(m.group(7)),
                "name": m.group(9),
            }
        )
    return rows


class RknnWorker:
    """One worker process; every call checks the reply and turns a dead worker into a clear error."""

    def __init__(self, python: Path, log: Path, timeout_s: float = 600) -> None:
        self.log_path = log
        self.timeout_s = timeout_s
        r, w = os.pipe()
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [str(python), "-I", str(WORKER), str(w)],  # -I: no script dir on sys.path (backends/rknn.py shadows rknn)
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(w,),
            text=True,
            cwd=log.parent,  # rknn-toolkit2 drops check*.onnx debug files in its working directory
        )
        os.close(w)
        self.replies = os.fdopen(r, "r")

    def call(self, **msg: Any) -> dict[str, Any]:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
            line = self.replies.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            code = self.proc.poll()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"rknn worker died (exit {code}) during {msg['cmd']}: {' | '.join(tail)}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"rknn {msg['cmd']}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
            except RuntimeError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.replies.close()
        self._log.close()


class RknnCompiled(Compiled):
    def __init__(self, worker: RknnWorker, info: CompiledInfo, io_dir: Path, names: list[str] | None = None) -> None:
        super().__init__(info)
        self.worker = worker
        self.io_dir = io_dir
        self.names = names or []
        self._x, self._y = io_dir / "x.npz", io_dir / "y.npz"

    def _one(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [feeds[n] for n in self.names if n in feeds] if len(feeds) > 1 else list(feeds.values())
        if len(arrays) != len(feeds):
            arrays = list(feeds.values())
        np.savez(self._x, *[np.ascontiguousarray(a if a.dtype.kind in "biu" else a.astype(np.float32)) for a in arrays])
        self.worker.call(cmd="infer", input=str(self._x), output=str(self._y))
        with np.load(self._y) as z:
            return [z[f"arr_{i}"].reshape(1, -1) if z[f"arr_{i}"].ndim == 1 else z[f"arr_{i}"] for i in range(len(z))]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return per_sample(self._one, feeds)

    def _close(self) -> None:
        self.worker.close()
        shutil.rmtree(self.io_dir, ignore_errors=True)  # per-compile exchange files: one folder per cell, not kept


def _lower_opset(path: Path, workdir: Path) -> tuple[Path, list[str]]:
    """Down-convert a model newer than the toolkit's opset (torch's dynamo exporter writes 18–20).

    onnx's version converter is exact for the ops whose semantics did not change between the two opsets, which
    is every op a CNN exporter emits; a model it cannot lower fails here with the fix, not deep in the toolkit.
    """
    import onnx
    from onnx import version_converter

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset <= MAX_OPSET:
        return path, []
    proto = onnx.load(str(path))
    try:
        lowered = version_converter.convert_version(proto, MAX_OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors per op
        raise CompileError(
            f"rknn-toolkit2 takes ONNX opset <= {MAX_OPSET} and this model is opset {opset}; onnx's version "
            f"converter could not lower it ({str(exc).strip().splitlines()[0][:200]}): re-export with "
            f"opset_version={MAX_OPSET}"
        ) from None
    out = workdir / f"opset{MAX_OPSET}.onnx"
    onnx.save(lowered, str(out))
    return out, [f"opset {opset} lowered to {MAX_OPSET} for rknn-toolkit2 (onnx version converter)"]


class RknnBackend(Backend):
    """rknn-toolkit2 (Rockchip RKNPU2): build + PC simulator, in its own environment."""

    slug = "rknn"
    output_only = "rknn-toolkit2's simulator worker returns outputs only (its accuracy_analysis is a separate tool)"
    simulation_twin = ("simnpu", {"profile": "rockchip"})
    static_shapes = True  # its compiler takes static shapes only: intake fixes them from the data
    description = "Rockchip rknn-toolkit2: RKNPU compiler + PC simulator (worker venv; board via adb target)"
    executable_options: ClassVar[tuple[str, ...]] = ("python",)
    option_defaults: ClassVar[dict[str, Any]] = {
        "target_platform": "rk3588",
        "python": None,  # the rknn env's python; default $QTBENCH_RKNN_PYTHON or ~/.cache/qtbench/envs/rknn
        "target": None,  # a board (e.g. "rk3588" with device_id) to run on; None = the PC simulator
        "optimization_level": 3,
        "rknn_model": None,  # on a Rockchip board: a .rknn (exported by an x86 run) to run with rknn-toolkit-lite2
        "npu_clock_ghz": 1.0,  # for the build's cycle estimate; RK3588's NPU runs at up to 1 GHz (set yours)
        "timeout_s": 600,
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        if self.options["target_platform"] not in PLATFORMS:
            raise ConfigError(f"backends.rknn.options.target_platform: choose one of {', '.join(PLATFORMS)}")

    def availability(self) -> Availability:
        if self.options["rknn_model"]:
            try:
                import rknnlite.api  # noqa: F401
            except ImportError as exc:
                return Availability(
                    False, f"options.rknn_model runs on a Rockchip board with rknn-toolkit-lite2, not here ({exc})"
                )
            return Availability(True, "", {"rknn-toolkit-lite2": _version("rknn-toolkit-lite2")}, ("npu",))
        py = worker_python(self.options["python"])
        if not py.is_file():
            return Availability(
                False,
                f"no rknn worker environment at {py.parent.parent}: run `qtbench env create rknn` "
                "(or set backends.rknn.options.python / QTBENCH_RKNN_PYTHON)",
            )
        # Read the environment's installed packages instead of starting its interpreter: probing (and `qtbench
        # backends`) never executes a program named by a sweep file or $QTBENCH_RKNN_PYTHON. The worker is
        # started, and checked, when a cell compiles.
        found = installed_versions(py, ("rknn-toolkit2", "numpy"))
        if "rknn-toolkit2" not in found:
            return Availability(
                False,
                f"the environment of {py} has no rknn-toolkit2 installed: run `qtbench env create rknn` "
                "(or point backends.rknn.options.python / QTBENCH_RKNN_PYTHON at an env that has it)",
            )
        where = self.options["target"] or "simulator"
        return Availability(
            True,
            "",
            {
                "rknn-toolkit2": found["rknn-toolkit2"],
                "worker-numpy": found.get("numpy", "?"),
                "adapter": str(ADAPTER_VERSION),
            },
            (where,),
        )

    def scores_off_clock(self) -> bool:
        """The PC simulator scores in the compile phase; a board (``target``) only in the measure phase."""
        return not self.options["target"]

    def supports(self, spec: QuantSpec) -> str | None:
        if spec.precision in ("fp32", "bf16"):
            return "the RKNPU computes float graphs in fp16; use fp16"
        if spec.precision == "int4":
            return "rknn-toolkit2's 4-bit mode is w4a16 on rk3576 only; qtbench's int4 specs are W4A8"
        if spec.scaling != "static" and not spec.is_float:
            return f"rknn-toolkit2 quantizes statically at build time; {spec.scaling} has no RKNN path"
        if spec.format == "qoperator":
            return "format qoperator is an ONNX Runtime notion; use qdq"
        if not spec.is_float and spec.calibration not in ALGORITHMS:
            return (
                f"rknn-toolkit2 calibrates with normal/kl_divergence/mmse (minmax/entropy/mse), not {spec.calibration}"
            )
        if not spec.is_float and spec.activation_symmetric:
            return "rknn-toolkit2 w8a8 quantizes activations asymmetrically (asymmetric_quantized-8)"
        return None

    def _compile(self, model: ModelInput, spec: QuantSpec, calib: Any, workdir: Path) -> Compiled:
        if self.options["rknn_model"]:
            return _lite_compile(Path(self.options["rknn_model"]))
        import onnx

        t0 = time.perf_counter()
        source, notes = _lower_opset(Path(model.path), workdir)
        graph = onnx.load(str(source), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        sizes = [[1] + [d.dim_value or 1 for d in i.type.tensor_type.shape.dim[1:]] for i in inputs]
        config: dict[str, Any] = {
            "target_platform": self.options["target_platform"],
            "optimization_level": int(self.options["optimization_level"]),
        }
        dataset = None
        if not spec.is_float:
            if calib is None:
                raise ConfigError("rknn static quantization needs calibration data: set `calibration:`")
            config |= {
                "quantized_dtype": "w8a8",
                "quantized_algorithm": ALGORITHMS[spec.calibration],
                "quantized_method": "channel" if spec.granularity == "per-channel" else "layer",
            }
            dataset = self._dataset(calib.head(spec.calib_samples), workdir, [i.name for i in inputs])
            if not spec.weight_symmetric:
                notes.append("rknn-toolkit2 picks its own weight symmetry; the spec's wasym is not forwarded")
        io_dir = Path(tempfile.mkdtemp(prefix="io-", dir=workdir))
        log = workdir / "worker.log"
        start = log.stat().st_size if log.is_file() else 0
        worker = RknnWorker(worker_python(self.options["python"]), log, self.options["timeout_s"])
        try:
            worker.call(cmd="hello")
        except RuntimeError as exc:
            worker.close()
            raise BackendUnavailable(
                f"rknn worker {worker_python(self.options['python'])} does not start: {exc}"
            ) from None
        try:
            worker.call(
                cmd="build",
                model=str(source),
                inputs=[i.name for i in inputs],
                input_size_list=sizes,
                dataset=str(dataset) if dataset else None,
                config=config,
                target=self.options["target"],
                export=str(workdir / "model.rknn"),
            )
        except RuntimeError as exc:
            worker.close()
            # the toolkit ran (or crashed) on this model: a failed cell with its message, not a missing SDK
            raise CompileError(f"rknn-toolkit2 build failed: {exc} (full log: {log})") from None
        on_board = bool(self.options["target"])
        exported = workdir / "model.rknn"
        info = CompiledInfo(
            artifact_path=exported if exported.is_file() else None,
            artifact_bytes=exported.stat().st_size if exported.is_file() else None,
            numbers="measured" if on_board else "simulated",
            execution_device="npu",
            notes=notes + ([] if on_board else ["rknn-toolkit2 PC simulator: vendor numerics, no device timing"]),
            compile_s=time.perf_counter() - t0,
        )
        info.extra.update({"rknn_config": config, "worker": str(worker_python(self.options["python"]))})
        with log.open("rb") as f:
            f.seek(start)
            ops = parse_build_table(f.read().decode(errors="replace"))
        if ops:
            compute = [o for o in ops if o["op"] not in ("InputOperator", "OutputOperator")]
            targets = [o["target"].lower() for o in compute]
            info.coverage = {k: targets.count(k) for k in ("npu", "cpu") if targets.count(k)}
            for o in compute:
                if o["target"] == "CPU":
                    info.fallback_ops.setdefault(o["op"], "placed on the CPU by rknn-toolkit2's partitioner")
            cycles = sum(o["cycles_total"] for o in ops)
            clock = float(self.options["npu_clock_ghz"])
            info.est_latency_ms = cycles / (clock * 1e6)
            info.est_source = (
                f"rknn-toolkit2 build estimate: {cycles:,} cycles summed over {len(compute)} ops at an assumed "
                f"{clock:g} GHz NPU clock; CPU ops count 0 cycles in RKNN's table (not modelled)"
            )
            info.extra["rknn_ops"] = [f"{o['op']}@{o['target']}" for o in compute]
        else:
            info.notes.append("rknn build log had no per-op table; coverage and cycle estimate unknown")
        return RknnCompiled(worker, info, io_dir, [i.name for i in inputs])

    @staticmethod
    def _dataset(data: Any, workdir: Path, names: list[str]) -> Path:
        """Calibration samples as .npy files + the list file rknn.build reads (cached by content): one line per
        sample with one file per model input, in the graph's input order, as rknn-toolkit2 expects."""
        folder = workdir / f"calib-{data.sha256[:12]}-{len(names)}"
        listing = folder / "dataset.txt"
        if listing.is_file():
            return listing
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(len(data)):
            batch = data.batch(i, i + 1)
            files = []
            for k, name in enumerate(names):
                x = np.asarray(batch[name] if name in batch else list(batch.values())[k])
                p = folder / f"{i:05d}-{k}.npy"
                np.save(p, np.ascontiguousarray(x if x.dtype.kind in "biu" else x.astype(np.float32)))
                files.append(str(p))
            lines.append(" ".join(files))
        listing.write_text("\n".join(lines) + "\n")
        return listing


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


class RknnLiteCompiled(Compiled):
    """rknn-toolkit-lite2 on the board itself: the real NPU, in-process."""

    def __init__(self, runtime: Any, info: CompiledInfo) -> None:
        super().__init__(info)
        self.runtime = runtime

    def _one(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.runtime.inference(inputs=[next(iter(feeds.values()))], data_format="nchw")
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return per_sample(self._one, feeds)

    def _close(self) -> None:
        self.runtime.release()


def _lite_compile(path: Path) -> Compiled:
    """Load a .rknn exported by an x86 run (``workdir/model.rknn``) on the board's NPU (not exercised in CI)."""
    from rknnlite.api import RKNNLite

    if not path.is_file():
        raise ConfigError(f"backends.rknn.options.rknn_model: {path} not found; copy the model.rknn an x86 run wrote")
    t0 = time.perf_counter()
    rt = RKNNLite()
    if rt.load_rknn(str(path)) != 0 or rt.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO) != 0:
        raise BackendUnavailable(f"rknn-toolkit-lite2 could not load/initialise {path} on this board's NPU")
    info = CompiledInfo(
        artifact_path=path,
        artifact_bytes=path.stat().st_size,
        numbers="measured",
        execution_device="npu",
        notes=["rknn-toolkit-lite2 on the board: quantization fixed by the x86 build that exported this .rknn"],
        compile_s=time.perf_counter() - t0,
    )
    return RknnLiteCompiled(rt, info)

"""A run's record in the results folder's manifest: identity (git, packages, device, process), the keys a
re-run may reuse, and whether the run that wrote an entry is still alive."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtbench.devices.host import device_id, host_info
from qtbench.harness.core.config import Sweep
from qtbench.harness.core.onnxfacts import onnx_graph
from qtbench.harness.core.records import utc_now
from qtbench.harness.core.version import __version__
from qtbench.harness.run.store import ResultsStore, latest_rows

if TYPE_CHECKING:
    from qtbench.harness.run.plan import Checked

RESUMABLE = ("ok", "skipped")  # statuses a re-run keeps; failed/timeout/unavailable cells are tried again

PACKAGES = ("qtbench", "numpy", "onnx", "onnxruntime", "pandas", "pyarrow", "torch", "openvino", "ai-edge-litert")


def git_sha(where: Path | None = None) -> tuple[str, bool]:
    """(sha, dirty) of the git checkout holding ``where`` (default: qtbench itself), or ("", False) when none."""
    here = (where or Path(__file__)).resolve()
    here = here if here.is_dir() else here.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode:
            return "", False
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "", False


def environment(sweep_dir: Path | None = None) -> dict[str, Any]:
    """Versions of Python and the numerics stack, host facts and git shas: the run's reproducibility manifest.

    ``git_sha`` is qtbench's own checkout (empty for a pip-installed qtbench, whose ``qtbench_version`` then
    identifies it); ``sweep_git_sha`` is the repository holding the sweep file, when there is one.
    """
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            pass
    sha, dirty = git_sha()
    env = {
        "python": sys.version.split()[0],
        "qtbench_version": __version__,
        "packages": packages,
        "host": host_info(),
        "device": device_id(),
        "git_sha": sha,
        "git_dirty": dirty,
    }
    if sweep_dir is not None:
        env["sweep_git_sha"], env["sweep_git_dirty"] = git_sha(sweep_dir)
    return env


def _process_identity() -> dict[str, Any]:
    """pid, host and process start time: enough for a later sweep to tell whether this run is still alive."""
    import socket

    import psutil

    return {"pid": os.getpid(), "hostname": socket.gethostname(), "pid_started": psutil.Process().create_time()}


def run_is_alive(entry: dict[str, Any]) -> bool:
    """Whether the process that started a manifest run still runs (unknown hosts count as alive)."""
    import socket

    import psutil

    if "pid" not in entry:  # written by a qtbench that predates run recovery: it cannot still be running
        return False
    if entry.get("hostname") != socket.gethostname():
        return True  # another machine's run in a shared folder: not ours to judge
    try:
        return abs(psutil.Process(int(entry["pid"])).create_time() - float(entry.get("pid_started", 0))) < 1.0
    except (psutil.Error, ValueError):
        return False


def _with_external(sha: str, external: dict[str, str]) -> str:
    """The identity a cell's job gives its model: the .onnx file's sha, folded with its external weights' (caches
    keyed by it, e.g. the FP32 reference outputs, must not outlive a changed weights file)."""
    if not external:
        return sha
    return hashlib.sha256(json.dumps([sha, sorted(external.items())]).encode()).hexdigest()


def external_data_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model's initializers name (inside the model's folder): they hold its
    weights, so they key its cells and travel with it to fleet boards."""
    import onnx

    try:
        graph = onnx_graph(path).graph
    except Exception:  # noqa: BLE001 - an unreadable model fails its cells elsewhere, with the reason
        return []
    here = path.parent.resolve()
    out: list[Path] = []
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            f = (here / loc).resolve()
            if loc and f.is_file() and f.is_relative_to(here) and f not in out:
                out.append(f)
    return out


@dataclass
class SweepRun:
    """One run of a sweep into its results folder: the identity every row of the run carries."""

    sweep: Sweep
    store: ResultsStore
    run_id: str
    device: str
    done: set[str]
    checked: Checked | None = None  # preflight's facts, so planning does not read the data twice


def open_run(sweep: Sweep) -> SweepRun:
    """Check the folder, fold what dead runs left, and record this run in the manifest before any cell runs."""
    store = ResultsStore(sweep.results_path)
    store.check_writable()
    store.recover_stale_runs(run_is_alive)
    # only a cell's latest row can be reused: after a newer result under another key (say a failure with other
    # options), going back to the old key runs the cell again rather than leaving the views on the failure
    existing = latest_rows(store.rows())
    done = {k for k, s in zip(existing["cell_key"], existing["status"], strict=True) if s in RESUMABLE}
    env = environment(Path(sweep.base_dir))
    sha = env["git_sha"][:7] or "nogit"
    run_id = (
        f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{sha}{'-dirty' if env['git_dirty'] else ''}-{uuid.uuid4().hex[:6]}"
    )
    store.record_run(
        {
            "run_id": run_id,
            "started_utc": utc_now(),
            "finished_utc": None,
            "config": sweep.to_dict(),
            "config_hash": sweep.config_hash(),
            "environment": env,
            **({"board_id": sweep.run.board_id} if sweep.run.board_id else {}),
            "seed": sweep.run.seed,
            **_process_identity(),
        }
    )
    return SweepRun(sweep, store, run_id, sweep.run.board_id or env["device"], done)

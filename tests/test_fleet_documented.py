"""The fleet as docs/fleet.md starts it: `ray start` for a head and two boards (real processes, one host), a
fleet file with a `ray://` address, then `qtbench fleet status` and `qtbench sweep --fleet` as a user types them.

The documented commands are run as written, with 127.0.0.1 for the hosts' addresses and a private
``--temp-dir`` so that only this test's Ray processes are stopped afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from qtbench.harness.run.store import load_results

from models import tiny_sweep

pytest.importorskip("ray", reason="Ray is not installed: pip install 'qtbench[fleet]'")
pytest.importorskip("grpc", reason="Ray Client needs ray[client] (the fleet extra installs it)")

HEAD, CLIENT = 6379, 10001  # the ports docs/fleet.md uses
BOARDS = ("rk3588-01", "jetson-orin-01")
#: what Ray's daemons and workers carry in their command lines (a repository path may contain "ray" anywhere)
RAY_MARKS = ("ray::", "/ray/", "raylet", "gcs_server", "ray.util.client", "ray._private", "dashboard/agent")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def documented_cluster(tmp_path_factory):
    if not (_free(HEAD) and _free(CLIENT)):
        pytest.skip(f"ports {HEAD}/{CLIENT} are taken (another Ray cluster on this host?)")
    tmp = tmp_path_factory.mktemp("documented")
    import tempfile

    temp_dir = Path(tempfile.mkdtemp(prefix="qtr-"))  # short and private: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "QTBENCH_FLEET_DIR": str(tmp / "boards")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    def ray_start(*args: str) -> None:
        r = subprocess.run(["ray", "start", *args], capture_output=True, text=True, env=env, timeout=180)
        if r.returncode:
            pytest.fail(f"ray start {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    import time

    before, t0 = {p.pid for p in psutil.process_iter()}, time.time()
    try:
        head = ["--head", "--port", str(HEAD), "--ray-client-server-port", str(CLIENT), "--num-cpus", "0"]
        ray_start(*head, "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir))
        for board in BOARDS:
            join = ["--address", f"127.0.0.1:{HEAD}", "--node-ip-address", "127.0.0.1", "--num-cpus", "0"]
            ray_start(*join, "--resources", json.dumps({f"board:{board}": 1}), "--object-store-memory", "200000000")
        yield tmp, env
    finally:
        # this cluster's processes only (started by this fixture; `ray stop` would end every Ray on the host):
        # the daemons `ray start` detaches are re-parented to init, so they are found by age and command line
        for p in psutil.process_iter(["cmdline", "create_time"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                ours = str(temp_dir) in cmd or any(m in cmd for m in RAY_MARKS)
                if p.pid not in before and p.info["create_time"] >= t0 - 1 and ours:
                    p.kill()
            except psutil.Error:
                pass
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)


def _qtbench(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qtbench", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=400
    )


def test_the_documented_fleet_commands_work(documented_cluster):
    tmp, env = documented_cluster
    fleet = tmp / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "address": f"ray://127.0.0.1:{CLIENT}",
                "boards": {BOARDS[0]: {"backends": ["ort", "rknn"]}, BOARDS[1]: {"backends": ["ort", "tensorrt"]}},
            }
        )
    )
    status = _qtbench(env, "fleet", "status", "--fleet", str(fleet), "--backends", "ort", cwd=tmp)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Traceback" not in status.stderr and "internal error" not in status.stderr
    for board in BOARDS:
        line = next(x for x in status.stdout.splitlines() if board in x)
        assert "idle" in line and "ort" in line, status.stdout
    cfg = tiny_sweep(tmp, specs=["fp32", "int8-static-pc-wsym-minmax"], measure={"warmup": 1, "iterations": 3})
    cfg["backends"] = [{"name": "ort", "options": {"threads": 1}}]
    (tmp / "s.yaml").write_text(yaml.safe_dump(cfg))
    sweep = _qtbench(env, "sweep", str(tmp / "s.yaml"), "--fleet", str(fleet), "--no-report", cwd=tmp)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    rows = load_results(tmp / "results" / "tiny")
    assert sorted(rows["device"]) == sorted([*BOARDS, *BOARDS]) and set(rows["status"]) == {"ok"}
    show = _qtbench({**env, "COLUMNS": "160"}, "show", str(tmp / "results" / "tiny"), cwd=tmp)
    header = next(x for x in show.stdout.splitlines() if "model" in x and "backend" in x)
    assert "board" in header  # rows of two boards are told apart, not shown as duplicates
    assert all(sum(b in x for x in show.stdout.splitlines()) == 2 for b in BOARDS), show.stdout

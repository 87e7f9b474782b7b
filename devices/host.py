"""Host and board identity: what the numbers were measured on, and a stable ``device`` id for result keys.

Reads only /proc, /sys and the platform module, so it is cheap and needs no SDK.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import socket
from pathlib import Path
from typing import Any

# CPU flags that change int8/fp16 inference speed; the full list is long and noisy.
INTERESTING_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "fphp",
    "asimdhp",
)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return ""


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key and key not in info:
            info[key] = value.strip()
    return info


@functools.lru_cache(maxsize=1)
def host_info() -> dict[str, Any]:
    """CPU model and relevant flags, core counts, memory, OS/kernel, and board model (device tree) when present."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    model = cpu.get("model name") or cpu.get("Hardware") or platform.processor() or platform.machine()
    board = _read("/proc/device-tree/model")
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 0
    except ImportError:  # pragma: no cover
        physical = 0
    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "os": platform.system(),
        "kernel": platform.release(),
        "cpu_model": model,
        "cpu_flags": sorted(flags & set(INTERESTING_FLAGS)),
        "cpu_count_logical": os.cpu_count() or 0,
        "cpu_count_physical": physical,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "board_model": board,
        "jetson_l4t": _read("/etc/nv_tegra_release").split(",")[0] if board else "",
    }


def device_id(info: dict[str, Any] | None = None) -> str:
    """A stable, readable id: board model if any, else CPU model, plus the cores this process may use."""
    info = info or host_info()
    base = info["board_model"] or info["cpu_model"] or info["machine"]
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower().replace("(r)", "").replace("(tm)", "")).strip("-")
    slug = re.sub(r"-cpu-@.*|-@-.*", "", slug)[:48].strip("-")
    return f"{info['machine']}-{slug}-{info['cpu_affinity']}c"


@functools.lru_cache(maxsize=1024)  # a check asks once per cell pair, of a handful of distinct ids
def cores_of(device: str) -> int | None:
    """The usable core count encoded at the end of a :func:`device_id` (``…-2c``), or None for other ids."""
    m = re.search(r"-(\d+)c$", str(device))
    return int(m.group(1)) if m else None

"""The measurement loop: the harness owns the clock.

Each timed iteration is ``perf_counter_ns`` around one ``infer(feeds)`` call on the same pre-built feeds, so the
boundary is host-to-host (inputs in host memory → outputs in host memory) for every backend. Warm-ups run first
and are not timed. The loop stops once it has ``iterations`` samples *and* has run ``min_duration_s`` (MLPerf's
two stop rules), capped at ``max_iterations``. Statistics are derived from the raw samples, which are kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtbench.harness.core.config import MeasureSettings

TIMING_BOUNDARY = "host_to_host"


@dataclass(frozen=True)
class Timing:
    """Raw per-iteration latencies (ns) and the process/machine state around the loop."""

    samples_ns: np.ndarray
    batch_size: int
    wall_s: float
    process_cpu_s: float
    loadavg_before: float
    loadavg_after: float

    def stats(self, cv_threshold: float) -> dict[str, Any]:
        """mean/std/min/percentiles/max in ms, FPS = batch / median, CV = std/mean, ``unstable`` if CV > threshold."""
        return latency_stats(self.samples_ns, self.batch_size, cv_threshold) | {
            "timing_boundary": TIMING_BOUNDARY,
            "timed_wall_s": self.wall_s,
            "process_cpu_s": self.process_cpu_s,
            # CPU seconds per wall second: > 1 means the backend used several cores during the loop.
            "cpu_utilization": self.process_cpu_s / self.wall_s if self.wall_s > 0 else float("nan"),
            "loadavg_1m_before": self.loadavg_before,
            "loadavg_1m_after": self.loadavg_after,
        }


def latency_stats(samples_ns: np.ndarray, batch_size: int = 1, cv_threshold: float = 0.10) -> dict[str, Any]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no timing samples")
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p = np.percentile(ms, [50, 90, 95, 99])
    cv = std / mean if mean > 0 else float("nan")
    return {
        "iterations": int(ms.size),
        "latency_ms_mean": mean,
        "latency_ms_std": std,
        "latency_ms_min": float(ms.min()),
        "latency_ms_p50": float(p[0]),
        "latency_ms_p90": float(p[1]),
        "latency_ms_p95": float(p[2]),
        "latency_ms_p99": float(p[3]),
        "latency_ms_max": float(ms.max()),
        "fps": batch_size * 1000.0 / float(p[0]) if p[0] > 0 else float("inf"),
        "latency_cv": cv,
        "unstable": bool(cv > cv_threshold),
    }


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


def time_inference(
    infer: Callable[[Mapping[str, np.ndarray]], Any],
    feeds: Mapping[str, np.ndarray],
    settings: MeasureSettings,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Timing:
    """Warm up, then time ``infer(feeds)`` per the stop rules. ``on_start``/``on_stop`` bracket the timed loop
    (power meters hook in there) and are not timed."""
    for _ in range(settings.warmup):
        infer(feeds)
    min_ns = int(settings.min_duration_s * 1e9)
    samples = np.empty(settings.max_iterations, dtype=np.int64)
    clock = time.perf_counter_ns
    load0 = _loadavg()
    if on_start:
        on_start()
    cpu0 = time.process_time()
    t_start = clock()
    n = 0
    while n < settings.max_iterations:
        t0 = clock()
        infer(feeds)
        t1 = clock()
        samples[n] = t1 - t0
        n += 1
        if n >= settings.iterations and t1 - t_start >= min_ns:
            break
    wall_ns = clock() - t_start
    cpu = time.process_time() - cpu0
    if on_stop:
        on_stop()
    return Timing(samples[:n].copy(), settings.batch_size, wall_ns / 1e9, cpu, load0, _loadavg())

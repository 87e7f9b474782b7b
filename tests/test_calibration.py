from __future__ import annotations

import numpy as np
import pytest

from harness.calibration import entropy_range, mse_range


def _hist(x, bins=2048):
    t = np.abs(x).max()
    h, e = np.histogram(x, bins, range=(-t, t))
    return h, e, x.min(), x.max()


def test_entropy_matches_onnxruntime_reference_implementation():
    """Same answer as ORT's own (slow) HistogramCollector.get_entropy_threshold, from the same histogram."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_t(3, 20000), 0).astype(np.float32)  # ReLU output with heavy tail
    h, e, lo, hi = _hist(x, 512)
    ort = HistogramCollector("entropy", False, 512, 128, None, None)
    ref = ort.get_entropy_threshold((h, e, lo, hi, max(abs(lo), hi)), 128)
    ours = entropy_range(h, e, lo, hi, max_candidates=10_000)
    assert ours[1] == pytest.approx(float(ref[1]), rel=1e-6)
    assert ours[0] == pytest.approx(max(float(ref[0]), lo), abs=1e-6)
    assert ours[1] < hi * 0.9  # the heavy tail is clipped


def test_mse_keeps_uniform_range_and_clips_outliers():
    rng = np.random.default_rng(1)
    u = rng.uniform(0, 1, 50000)
    h, e, lo, hi = _hist(u)
    assert mse_range(h, e, lo, hi)[1] == pytest.approx(hi, rel=0.02)
    # Laplace data: heavy tails, so the MSE-optimal 8-bit range clips well inside min-max.
    x = rng.laplace(0, 1, 50000)
    h, e, lo, hi = _hist(x)
    r = mse_range(h, e, lo, hi, bits=8, symmetric=True)
    assert r[0] == pytest.approx(-r[1])

    def raw_mse(t):
        s = 2 * t / 255
        return np.mean((np.clip(np.round((x + t) / s), 0, 255) * s - t - x) ** 2)

    grid = np.linspace(0.5, np.abs(x).max(), 400)
    best = min(raw_mse(t) for t in grid)
    assert raw_mse(r[1]) <= 1.05 * best
    assert r[1] < 0.9 * np.abs(x).max()  # it does clip the tail

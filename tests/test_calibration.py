from __future__ import annotations

import numpy as np
import pytest

from qtbench.harness.core.calibration import entropy_range, mse_range


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


@pytest.mark.parametrize("p", [99.0, 99.9, 99.999])
def test_percentile_range_matches_numpy_on_signed_data(p):
    from qtbench.harness.core.calibration import percentile_range

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal(200_000) * 2 - 1.0, rng.standard_t(2, 2_000) * 5])  # heavy tails
    t = float(np.abs(x).max())
    hist, edges = np.histogram(x, bins=2048, range=(-t, t))
    width = edges[1] - edges[0]
    sym = percentile_range(hist, edges, x.min(), x.max(), p, symmetric=True)
    want = np.percentile(np.abs(x), p)
    assert sym[0] == -sym[1] and want - 1e-9 <= sym[1] <= want + 2 * width
    lo, hi = percentile_range(hist, edges, x.min(), x.max(), p, symmetric=False)
    cut = (100 - p) / 2
    assert np.percentile(x, cut) - 2 * width <= lo <= np.percentile(x, cut) + 1e-9
    assert np.percentile(x, 100 - cut) - 1e-9 <= hi <= np.percentile(x, 100 - cut) + 2 * width
    assert lo < 0 < hi  # the negative side survives (ONNX Runtime's own percentile drops it when symmetric)


@pytest.mark.parametrize("symmetric", [False, True])
def test_shared_statistics_give_ort_minmax_ranges_exactly(tmp_path, symmetric):
    import json

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from qtbench.backends.base import ModelInput
    from qtbench.backends.qdq import CalibrationReader, static_ranges
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.onnxfacts import model_facts
    from qtbench.harness.core.spec import QuantSpec

    from models import tiny_cnn, tiny_data

    path = tiny_cnn(tmp_path / "m.onnx")
    f = model_facts(path)
    model = ModelInput(path, "sha", f.input_names, f.output_names, f.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    ref = create_calibrator(
        path,
        [],
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"symmetric": symmetric},
    )
    ref.collect_data(CalibrationReader(calib, True))
    want = {k: tuple(float(np.ravel(r)[0]) for r in v.range_value) for k, v in ref.compute_data().data.items()}
    cache_root = tmp_path / "cache" / "artifacts" / "ort"
    notes: list[str] = []
    spec = QuantSpec.parse("int8-static-pt-sym-minmax" if symmetric else "int8-static-pt-wsym-minmax")
    cache, _ = static_ranges(model, spec, calib, cache_root / "a", notes)
    got = {
        k: tuple(float(np.ravel(x["data"] if isinstance(x, dict) else x)[0]) for x in (v["lowest"], v["highest"]))
        for k, v in json.loads(cache.read_text())["data"].items()
    }
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-7), k
    assert any("collected once" in n for n in notes)
    # every other method, granularity and cell of this model and calibration set reuses the same statistics
    for i, other in enumerate(
        ["int8-static-pc-wsym-entropy", "int8-static-pt-sym-percentile", "int4-static-pc-sym-mse"]
    ):
        more: list[str] = []
        static_ranges(model, QuantSpec.parse(other), calib, cache_root / f"b{i}", more)
        assert any("reused from the calibration cache" in n for n in more)
    assert len(list((tmp_path / "cache" / "calibration").glob("*.npz"))) == 1


def test_own_histogram_collector_matches_ort_histograms(tmp_path, monkeypatch):
    """qtbench's streamed collector against ORT's on the same augmented model and data: a set that fits one batch
    equals ORT's HistogramCalibrater (stacked outputs); in several batches, ragged last one included, it equals
    ORT's HistogramCollector fed batch by batch (same range widening). Exact min/max, same edges, counts equal up
    to elements on a bin edge."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, create_calibrator

    import qtbench.backends.qdq as qdq
    from qtbench.backends.qdq import CalibrationReader, _collect
    from qtbench.harness.core.data import load_dataset

    from models import tiny_cnn, tiny_data

    path = tiny_cnn(tmp_path / "m.onnx")
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 150, seed=3, labels=False), ["input"], None)
    one = calib.head(64)  # ≤ CALIB_BATCH: one batch

    def calibrator(name: str):
        return create_calibrator(
            path,
            [],
            augmented_model_path=str(tmp_path / f"{name}.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": 2048},
        )

    def same(got: dict, want: dict) -> None:
        assert set(got) == set(want) and len(got) >= 5
        for name, (hist, edges, lo, hi) in got.items():
            w_hist, w_edges, w_lo, w_hi, _t = want[name]
            assert (lo, hi) == (float(w_lo), float(w_hi)), name
            assert len(hist) == len(w_hist), name
            np.testing.assert_allclose(edges, w_edges, rtol=1e-6, atol=1e-7)
            assert hist.sum() == w_hist.sum()
            assert np.abs(hist - w_hist).sum() <= max(2, 1e-3 * w_hist.sum()), name

    ref = calibrator("ref")
    with contextlib.redirect_stdout(io.StringIO()):
        ref.collect_data(CalibrationReader(one, True))
    same(_collect(calibrator("own"), one, True, 2048), ref.collector.histogram_dict)

    monkeypatch.setattr(qdq, "CALIB_BATCH", 16)  # 150 samples: 9 batches of 16 and one of 6
    cal = calibrator("batches")
    col = HistogramCollector("entropy", False, 2048, 128, None, None)
    names = [o.name for o in cal.infer_session.get_outputs()]
    for pos in range(0, 150, 16):
        outs = cal.infer_session.run(None, calib.batch(pos, pos + 16))
        col.collect_value({n: o for n, o in zip(names, outs, strict=True) if n in cal.tensors_to_calibrate})
    got = _collect(calibrator("own2"), calib, True, 2048)
    same(got, col.histogram_dict)
    assert any(len(h) > 2048 for h, *_ in got.values())  # some range widened past the first batch's


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_entropy_equals_per_candidate_reference(seed):
    """The prefix-sum KL search picks the same window as the per-candidate loop on awkward histograms: ReLU
    tails, sparse integer-valued data, a lone outlier, a constant tensor, bins odd and even, every candidate."""
    from qtbench.harness.core.calibration import _entropy_range_loop

    rng = np.random.default_rng(seed)
    xs = [
        np.maximum(rng.standard_t(3, 30_000), 0),
        rng.laplace(0, 1, 30_000) * (rng.random(30_000) < 0.3),
        rng.integers(-3, 4, 5_000).astype(float),
        np.concatenate([rng.normal(0, 1, 20_000), [60.0]]),
        np.full(1_000, 0.7),
    ]
    for x in xs:
        for bins in (512, 2048, 2049):
            t = float(np.abs(x).max())
            h, e = np.histogram(x, bins, range=(-t, t))
            for nq, mc in ((128, 256), (128, 10_000), (255, 256)):
                want = _entropy_range_loop(h, e, x.min(), x.max(), nq, mc)
                assert entropy_range(h, e, x.min(), x.max(), nq, mc) == want

"""The openvino adapter against the real runtime (skipped with the reason when openvino is not installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtbench.backends.base import ModelInput
from qtbench.harness.core.data import load_dataset
from qtbench.harness.core.onnxfacts import model_facts
from qtbench.harness.core.spec import QuantSpec

from models import tiny_data

ov = pytest.importorskip("openvino", reason="needs OpenVINO: pip install 'qtbench[openvino]'")
from qtbench.backends.openvino import OpenVinoBackend  # noqa: E402


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path):
    facts = model_facts(tiny_model)
    model = ModelInput(tiny_model, "sha", facts.input_names, facts.output_names, facts.dynamic_batch)
    calib = load_dataset(tiny_data(tmp_path / "c.npz", 32, seed=2, labels=False), ["input"], None)
    x = load_dataset(tiny_data(tmp_path / "e.npz", 16, seed=3), ["input"]).batch(0, 16)
    import onnxruntime as ort

    ref = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"]).run(None, x)[0]
    return model, calib, x, ref, tmp_path


def _run(backend, setup, spec_id):
    model, calib, x, _, tmp = setup
    spec = QuantSpec.parse(spec_id)
    with backend.compile(model, spec, calib, tmp / backend.options["quantizer"] / spec.id) as c:
        return c.infer(x)[0], c.info


def test_fp32_is_pinned_to_f32_and_matches_onnxruntime(setup):
    out, info = _run(OpenVinoBackend(), setup, "fp32")
    assert info.extra["inference_precision"] == "f32"
    np.testing.assert_allclose(out, setup[3], atol=1e-4)


def test_bf16_and_int8_paths_run_close_to_fp32(setup):
    ref = setup[3]
    b = OpenVinoBackend()
    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        out16, _ = _run(b, setup, "bf16")
        assert 0 < np.abs(out16 - ref).max() < 0.2
    else:  # a CPU without bf16 arithmetic runs the hint as f32: a bf16 row would be an f32 run, so it is skipped
        from qtbench.harness.core.errors import UnsupportedSpec

        with pytest.raises(UnsupportedSpec, match="runs bf16 as f32 on this host"):
            _run(b, setup, "bf16")
    for spec in ("int8-static-pc-wsym-minmax", "int8-static-pt-sym-percentile"):
        out, info = _run(b, setup, spec)
        assert 0 < np.abs(out - ref).max() < 0.5, spec
        assert info.extra["quantizer"] == "nncf" and "I8" in str(info.extra["runtime_precisions"]).upper()


def test_ort_qdq_graph_runs_in_openvino(setup):
    out, info = _run(OpenVinoBackend({"quantizer": "ort"}), setup, "int8-static-pc-wsym-minmax")
    assert 0 < np.abs(out - setup[3]).max() < 0.5
    assert any("onnxruntime.quantization" in n for n in info.notes)


def test_unsupported_specs_say_why():
    b = OpenVinoBackend()
    assert "entropy" in b.supports(QuantSpec.parse("int8-static-pc-wsym-entropy"))
    assert "dynamic" in b.supports(QuantSpec.parse("int8-dynamic-pc-wsym"))
    assert "QOperator" in OpenVinoBackend({"quantizer": "ort"}).supports(
        QuantSpec.parse("int8-static-pc-wsym-minmax-qoperator")
    )
    assert OpenVinoBackend({"device": "NPU"}).availability().available is ("NPU" in ov.Core().available_devices)


def test_rows_record_the_compiled_properties_benchmark_app_needs(setup):
    _, info = _run(OpenVinoBackend({"threads": 1}), setup, "fp32")
    props = info.extra["compiled_properties"]
    assert props["INFERENCE_NUM_THREADS"] == "1" and props["NUM_STREAMS"] == "1"
    assert props["INFERENCE_PRECISION_HINT"] == "f32" and props["ENABLE_CPU_PINNING"] in ("True", "False")
    backend = OpenVinoBackend({"hint": "THROUGHPUT", "streams": 2, "threads": 1, "quantizer": "ort"})
    _, info = _run(backend, setup, "fp32")  # another workdir than the first compile: a fresh build
    assert info.extra["compiled_properties"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert info.extra["num_streams"] == 2 and info.extra["compiled_properties"]["NUM_STREAMS"] == "1"
    assert "asked NUM_STREAMS=2, the device uses 1" in info.notes  # 2 streams need 2 threads


def test_batch1_calls_run_a_static_twin_and_see_new_and_mutated_inputs(setup):
    model, calib, x, ref, tmp = setup
    assert model.dynamic_batch
    with OpenVinoBackend().compile(model, QuantSpec("fp32"), calib, tmp / "twin") as c:
        assert c.info.extra["batch1_static"] is True
        assert c.batch1.inputs[0].get_partial_shape().is_static  # what `benchmark_app -shape [1,...]` runs
        np.testing.assert_allclose(c.infer(x)[0], ref, atol=1e-4)  # batch 16: the dynamic model
        one = {"input": x["input"][:1].copy()}
        for _ in range(2):  # the second call re-uses the bound tensor
            np.testing.assert_allclose(c.infer(one)[0], ref[:1], atol=1e-4)
        one["input"][...] = x["input"][3]  # mutated in place: the shared tensor sees it
        np.testing.assert_allclose(c.infer(one)[0], ref[3:4], atol=1e-4)
        other = {"input": np.asfortranarray(x["input"][5:6])}  # a new array, and one that must be copied
        np.testing.assert_allclose(c.infer(other)[0], ref[5:6], atol=1e-4)
        assert len(c.device_latencies_ms()) == 5 and c.device_latencies_ms() == []
        first = c.infer(one)[0]
    from qtbench.backends.openvino import TWIN_PREFIX

    twins = sorted((tmp / "twin").glob(f"{TWIN_PREFIX}*.xml"))
    assert len(twins) == 1  # the reshaped IR was kept beside the entry's
    stamp = twins[0].stat().st_mtime_ns
    with OpenVinoBackend().compile(model, QuantSpec("fp32"), calib, tmp / "twin") as c:  # a measured cell
        assert c.info.cache_hit and c.batch1.inputs[0].get_partial_shape().is_static
        np.testing.assert_array_equal(c.infer(one)[0], first)  # compiled from the kept twin: the same outputs
    assert sorted((tmp / "twin").glob(f"{TWIN_PREFIX}*.xml")) == twins and twins[0].stat().st_mtime_ns == stamp


def test_a_fixed_batch_model_has_no_twin(setup):
    from qtbench.backends._graph import fix_batch

    model, calib, x, ref, tmp = setup
    fixed = fix_batch(model.path, tmp / "fixed.onnx")
    m = ModelInput(fixed, "sha2", model.input_names, model.output_names, False)
    with OpenVinoBackend().compile(m, QuantSpec("fp32"), calib, tmp / "fixed") as c:
        assert c.info.extra["batch1_static"] is False and c.batch1 is None
        np.testing.assert_allclose(c.infer({"input": x["input"][:1]})[0], ref[:1], atol=1e-4)


SHARED = ("int8-static-pc-wsym-minmax", "int8-static-pt-wsym-minmax", "int8-static-pc-sym-percentile")


def test_one_nncf_statistics_pass_builds_every_sibling_bit_for_bit_like_nncf_quantize(setup):
    """The leader spec quantizes its build-group siblings in the same NNCF pass (``shared_ptq``, forced on
    whatever NNCF is installed, so a new NNCF that changes ``nncf.quantize`` fails here); each IR is the bytes
    ``nncf.quantize`` writes for that spec alone, and the siblings' cells then find complete cache entries."""
    import qtbench.backends.openvino as ovb

    model, calib, x, _ref, tmp = setup
    specs = [QuantSpec.parse(s) for s in SHARED]
    alone = {}
    for s in specs:
        with OpenVinoBackend().compile(model, s, calib, tmp / "alone" / s.id) as c:
            alone[s.id] = c.infer(x)[0]
    verified = ovb.SHARED_PTQ_NNCF
    ovb.SHARED_PTQ_NNCF = ("",)  # every version: this test is what verifies one
    try:
        b = OpenVinoBackend()
        assert {b.build_group(s) for s in specs} == {"nncf-ptq:256"}
        siblings = [(s, tmp / "shared" / s.id) for s in specs[1:]]
        with b.compile(model, specs[0], calib, tmp / "shared" / specs[0].id, siblings=siblings) as c:
            assert not c.info.cache_hit
            assert any("one NNCF statistics collection for " + ", ".join(SHARED) in n for n in c.info.notes)
    finally:
        ovb.SHARED_PTQ_NNCF = verified
    import re

    def ir(where: str, spec: QuantSpec) -> tuple[bytes, str]:
        """The weights' bytes and the graph, OpenVINO's process-wide counters in auto names ("Constant_120753")
        taken out: every other byte of the IR must match."""
        entry = tmp / where / spec.id
        graph = re.sub(r'name="([A-Za-z]+)_\d+"', r'name="\1_N"', (entry / "model.xml").read_text())
        return (entry / "model.bin").read_bytes(), graph

    for s in specs:
        assert ir("alone", s) == ir("shared", s), s.id
    for s in specs[1:]:  # the sibling's own cell: a complete cache entry, same outputs as built alone
        with OpenVinoBackend().compile(model, s, calib, tmp / "shared" / s.id) as c:
            assert c.info.cache_hit
            assert any(f"built in {specs[0].id}'s NNCF pass" in n for n in c.info.notes)
            np.testing.assert_array_equal(c.infer(x)[0], alone[s.id])


def test_a_sibling_another_process_is_building_is_left_to_it(setup):
    import fcntl

    import qtbench.backends.openvino as ovb

    model, calib, _x, _ref, tmp = setup
    specs = [QuantSpec.parse(s) for s in SHARED[:2]]
    busy = tmp / "s" / specs[1].id
    busy.mkdir(parents=True)
    verified, ovb.SHARED_PTQ_NNCF = ovb.SHARED_PTQ_NNCF, ("",)
    try:
        with open(busy / ".build.lock", "a+") as held:  # another builder holds the sibling's lock
            fcntl.flock(held, fcntl.LOCK_EX)
            with OpenVinoBackend().compile(model, specs[0], calib, tmp / "s" / specs[0].id, [(specs[1], busy)]) as c:
                assert not any("statistics collection for" in n for n in c.info.notes)  # built alone
    finally:
        ovb.SHARED_PTQ_NNCF = verified
    assert not (busy / "notes.json").exists() and not (busy / "model.xml").exists()


def test_a_sweep_hands_each_nncf_cell_its_siblings_and_compiles_one_leader_first(tmp_path: Path):
    """Planning links the NNCF static cells of one model (not fp32, weight-only or ort's cells) and the compile
    order runs one of them early, the rest last; the sweep's rows then say which cell's pass built them."""
    from qtbench.harness.run.executors import LocalExecutor
    from qtbench.harness.run.manifest import open_run
    from qtbench.harness.run.plan import plan
    from qtbench.harness.run.sweep import run_sweep

    from models import tiny_sweep

    specs = ["fp32", *SHARED, "int4-weightonly-pc-sym"]
    backends_ = [{"name": "openvino", "options": {"threads": 1}}, {"name": "ort", "options": {"threads": 1}}]
    cfg = tiny_sweep(tmp_path, backends=backends_, specs=specs, measure={"warmup": 1, "iterations": 3})
    from qtbench.harness.run.sweep import _load

    cells = [c for c in plan(open_run(_load(cfg))) if c.job is not None]
    by = {(c.job.backend, c.job.spec.id): c.job for c in cells}
    for s in SHARED:
        assert sorted(x.id for x, _k in by["openvino", s].siblings) == sorted(set(SHARED) - {s})
        assert by["ort", s].siblings == ()
    assert by["openvino", "fp32"].siblings == by["openvino", "int4-weightonly-pc-sym"].siblings == ()
    order = [(c.job.backend, c.job.spec.id) for c in LocalExecutor.compile_order(cells)]
    nncf = [i for i, k in enumerate(order) if k[0] == "openvino" and k[1] in SHARED]
    assert nncf == [0, len(order) - 2, len(order) - 1]  # the leader first, its two siblings last
    import qtbench.backends.openvino as ovb

    if not __import__("nncf").__version__.startswith(ovb.SHARED_PTQ_NNCF):
        pytest.skip("the shared NNCF pass is verified for another NNCF version; each spec is quantized alone")
    df = run_sweep(cfg)
    rows = df[df["backend"] == "openvino"].set_index("spec_id")
    assert set(rows.drop(index="int4-weightonly-pc-sym")["status"]) == {"ok"}
    # NNCF keeps convolutions at int8: on this CNN under half the weights would be 4-bit, so the label is refused
    assert rows.loc["int4-weightonly-pc-sym", "status"] == "skipped"
    assert "4-bit" in rows.loc["int4-weightonly-pc-sym", "status_message"]
    leader = order[nncf[0]][1]
    assert "one NNCF statistics collection for" in rows.loc[leader, "notes"] and not rows.loc[leader, "cache_hit"]
    for s in set(SHARED) - {leader}:
        assert f"built in {leader}'s NNCF pass" in rows.loc[s, "notes"] and rows.loc[s, "cache_hit"]

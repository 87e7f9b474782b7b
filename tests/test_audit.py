"""The artifact audit: artifacts built wrong on purpose must be judged wrong, and a mismatch must reach every
surface (row, terminal, report, compare, check) instead of passing as a plain ``ok``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qtbench.harness.core.audit import ArtifactFacts, WeightFact, audit_onnx, cached, judge
from qtbench.harness.core.spec import QuantSpec

ort = pytest.importorskip("onnxruntime")
from export_forms import build  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)


class _Reader(CalibrationDataReader):
    def __init__(self, data: Path) -> None:
        d = np.load(data)
        x = d[next(k for k in d.files if k != "labels")]
        self.it = iter([{"x": x[i : i + 1]} for i in range(8)])

    def get_next(self):
        return next(self.it, None)


def _static(form: str, tmp: Path, **kw) -> Path:
    model, data = build(form, tmp / form)
    out = tmp / f"{form}-{'-'.join(f'{k}{v}' for k, v in sorted(kw.items()) if not isinstance(v, dict))}.onnx"
    quantize_static(str(model), str(out), _Reader(data), quant_format=QuantFormat.QDQ, **kw)
    return out


def spec(text: str) -> QuantSpec:
    return QuantSpec.parse(text)


def test_ort_qdq_per_channel_int8_is_honoured_and_per_tensor_label_is_not(tmp_path: Path) -> None:
    art = _static("initializers", tmp_path, per_channel=True, weight_type=QuantType.QInt8)
    facts = audit_onnx(art)
    convs = [w for w in facts.weights if w.op == "Conv"]
    assert len(convs) == 3 and all(w.bits == 8 and w.per_channel and w.symmetric for w in convs)
    assert all(w.activation == "static" for w in facts.weights if w.bits == 8)
    ok = judge(spec("int8-static-pc-wsym-minmax"), facts)
    assert ok.verdict == "honoured" and ok.share > 0.9 and ok.bits.startswith("8:")
    wrong = judge(spec("int8-static-pt-wsym-minmax"), facts)
    assert wrong.verdict == "mismatch" and "per-channel" in wrong.label()
    fp = judge(spec("fp32"), facts)
    assert fp.verdict == "mismatch" and "integer weights" in fp.label()
    four = judge(spec("int4-static-pc-wsym-minmax"), facts)
    assert four.verdict == "mismatch" and "no 4-bit weight" in four.label() and "8:" in four.label()


def test_asymmetric_weights_contradict_a_symmetric_label(tmp_path: Path) -> None:
    art = _static(
        "initializers", tmp_path, per_channel=False, weight_type=QuantType.QUInt8, activation_type=QuantType.QUInt8
    )
    facts = audit_onnx(art)
    assert any(w.symmetric is False for w in facts.weights)
    audit = judge(spec("int8-static-pt-wsym-minmax"), facts)
    assert audit.verdict == "mismatch" and "asymmetric" in audit.label()
    assert judge(spec("int8-static-pt-asym-minmax"), facts).verdict == "honoured"


def test_constant_weights_quantized_as_given_have_no_4bit_weight(tmp_path: Path) -> None:
    """The bug this audit exists for: ORT quantizing a Paddle2ONNX-style graph (weights as Constant nodes)
    takes the weights for activations, so an "int4" artifact holds none (before intake, rows said ok)."""
    art = _static(
        "constant_weights",
        tmp_path,
        per_channel=True,
        weight_type=QuantType.QInt4,
        activation_type=QuantType.QUInt8,
    )
    audit = judge(spec("int4-static-pc-wsym-minmax"), audit_onnx(art))
    assert audit.verdict == "mismatch" and "4-bit" in audit.label()


def test_dynamic_artifact_against_static_label(tmp_path: Path) -> None:
    model, _ = build("initializers", tmp_path)
    art = tmp_path / "dyn.onnx"
    quantize_dynamic(str(model), str(art), weight_type=QuantType.QInt8, op_types_to_quantize=["Gemm", "MatMul"])
    facts = audit_onnx(art)
    q = [w for w in facts.weights if w.bits == 8]
    assert q and all(w.activation == "dynamic" for w in q)
    # Convs stayed float: most weight parameters are float, so the int8 label is a mismatch either way
    audit = judge(spec("int8-dynamic-pt-wsym"), facts)
    assert audit.float_nodes == 3 and audit.quantized_nodes == 1


def test_judge_rules_on_facts() -> None:
    w = lambda n, bits, pc=True, sym=True, act="static", p=1000: WeightFact(n, "Conv", p, bits, pc, sym, act, 8)  # noqa: E731
    honoured = judge(spec("int4-static-pc-wsym-minmax"), ArtifactFacts("t", [w("a", 4), w("b", 4), w("c", 32, p=10)]))
    assert honoured.verdict == "honoured" and "1 of 3 compute node(s) kept in float" in honoured.label()
    assert honoured.float_share == pytest.approx(10 / 2010)
    mostly_float = judge(spec("int4-static-pc-wsym-minmax"), ArtifactFacts("t", [w("a", 4, p=10), w("b", 32)]))
    assert mostly_float.verdict == "mismatch" and "1% of weight parameters are 4-bit" in mostly_float.label()
    weightonly_acts = judge(spec("int4-weightonly-pc-wsym"), ArtifactFacts("t", [w("a", 4, act="static")]))
    assert weightonly_acts.verdict == "mismatch" and "weight-only" in weightonly_acts.label()
    fp16 = judge(spec("fp16"), ArtifactFacts("t", [w("a", 32)]))
    assert fp16.verdict == "mismatch" and "fp16" in fp16.label()
    assert judge(spec("fp32"), ArtifactFacts("t", [])).verdict == "not audited"


def test_audit_is_cached_beside_the_artifact_and_unreadable_is_not_audited(tmp_path: Path) -> None:
    calls = []

    def read() -> ArtifactFacts:
        calls.append(1)
        return ArtifactFacts("t", [WeightFact("a", "Conv", 10, 8, True, True, "static", 4)])

    s = spec("int8-static-pc-wsym-minmax")
    first = cached(tmp_path, s, read)
    second = cached(tmp_path, s, read)
    assert first == second and calls == [1] and (tmp_path / f"audit-{s.id}.json").is_file()

    def broken() -> ArtifactFacts:
        raise ValueError("truncated flatbuffer\nmore detail")

    bad = cached(tmp_path / "x", s, broken)
    assert bad.verdict == "not audited" and "truncated flatbuffer" in bad.label() and "\n" not in bad.label()


# ---------------------------------------------------------------------------------------------------------------
# A backend whose label lies: every surface must say so
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def liar(monkeypatch: pytest.MonkeyPatch) -> None:
    from qtbench import backends

    monkeypatch.setitem(backends.BUILTIN, "liar", "fault_backends:LyingBackend")


def _cfg(tmp_path: Path, backend: str, name: str) -> dict:
    from models import tiny_sweep

    cfg = tiny_sweep(tmp_path, specs=["fp32", "int4-static-pc-wsym-minmax"])
    cfg["backends"] = [{"name": backend, "options": {"threads": 1}}]
    cfg["name"] = name
    cfg["measure"] = {"warmup": 1, "iterations": 5}
    return cfg


def test_lying_backend_is_flagged_everywhere(tmp_path: Path, liar: None, capsys: pytest.CaptureFixture) -> None:
    import yaml

    from qtbench.harness.analysis.check import run_gates
    from qtbench.harness.analysis.compare import build_study, load_study
    from qtbench.harness.analysis.gates import load_gates
    from qtbench.harness.analysis.report import build_report
    from qtbench.harness.cli import main
    from qtbench.harness.core.tables import mismatched
    from qtbench.harness.run.sweep import run_sweep

    cfg = _cfg(tmp_path, "liar", "cand")
    path = tmp_path / "cand.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["sweep", str(path), "--no-report"])
    out = capsys.readouterr().out
    assert code == 0
    assert "✗spec" in out and "spec not honoured" in out
    res = tmp_path / "results" / "cand"
    from qtbench.harness.run.store import load_results

    df = load_results(res)
    row = df[df["spec_id"] == "int4-static-pc-wsym-minmax"].iloc[0]
    assert row["status"] == "ok" and row["audit"].startswith("mismatch") and "no 4-bit weight" in row["audit"]
    assert row["audit_bits"].startswith("8:")
    assert list(mismatched(df)) == [False, True] or mismatched(df).sum() == 1
    md = build_report([res], tmp_path / "rep")["markdown"].read_text()
    assert "Spec audit: artifacts that contradict their labels" in md and "no 4-bit weight" in md
    rows, preds = load_study([res])
    study = build_study(rows, preds)
    assert any("left out" in n and "spec audit" in n for n in study.notes)
    assert "int4-static-pc-wsym-minmax" not in set(study.cells.get("spec_id", []))
    # check: an honest baseline vs a candidate whose ort build starts lying (a new SDK version, say) fails
    import pandas as pd

    run_sweep(_cfg(tmp_path, "ort", "base"))
    for f in res.glob("rows-*.parquet"):
        rows_f = pd.read_parquet(f)
        rows_f["backend"] = "ort"
        rows_f.to_parquet(f)
    result = run_gates(tmp_path / "results" / "base", res, load_gates(None))
    audit_fails = [v for v in result.verdicts if v.gate == "spec audit"]
    assert result.failed and len(audit_fails) == 1 and "4-bit" in audit_fails[0].reason

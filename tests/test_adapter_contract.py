"""Backend capabilities live in the adapter contract: localisation taps, float fallback, the artifact audit and the
simulation twin come from the adapter, so an adapter added as one file — or installed by a third party through the
``qtbench.backends`` entry point — gets them with no change anywhere else.

Two adapters prove it: the built-in ``nncf`` (NNCF's post-training quantization of the ONNX graph, run by ONNX
Runtime), and a plug-in written here, registered by an entry point in a dist-info folder on ``sys.path``, whose
float-fallback option has its own name.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from test_localize import SPEC, planted_cnn, sweep_dict

needs_nncf = pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf not installed")

PLUGIN = '''
"""A third party's adapter: ONNX Runtime's quantizer behind its own option names."""

from typing import Any, ClassVar

from qtbench.backends.ort import OrtBackend


class AcmeBackend(OrtBackend):
    slug = "acme"
    description = "Acme NPU SDK (a plug-in for the tests)"
    float_fallback_option = "keep_float"
    option_defaults: ClassVar[dict[str, Any]] = {**OrtBackend.option_defaults, "keep_float": []}

    def __init__(self, options=None):
        super().__init__(options)
        self.options["exclude_nodes"] = list(self.options["keep_float"])  # what the SDK calls it inside
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Install the plug-in the way pip would: its module and a dist-info with the entry point, on sys.path."""
    site = tmp_path / "site"
    (site / "acme_qtbench.py").parent.mkdir(parents=True)
    (site / "acme_qtbench.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "acme_qtbench-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-qtbench\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[qtbench.backends]\nacme = acme_qtbench:AcmeBackend\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "acme_qtbench", raising=False)
    return "acme"


def test_the_plugin_is_registered_by_its_entry_point(plugin: str) -> None:
    from qtbench import backends

    target, origin = backends.registry()[plugin]
    assert (target, origin) == ("acme_qtbench:AcmeBackend", "entry-point")
    assert backends.load_class(plugin).float_fallback_option == "keep_float"


def test_plugin_gets_localize_and_fallback_untouched(plugin: str, tmp_path: Path) -> None:
    """Localisation taps the plug-in through the tap it inherits, the fallback search sets *its* option, and the
    suggested sweep file names that option."""
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.analysis.localize.fallback import FallbackSettings
    from qtbench.harness.core.config import load_sweep

    cfg = sweep_dict(tmp_path, planted_cnn(tmp_path / "planted.onnx"), [plugin])
    fb = FallbackSettings(budget_s=60, max_candidates=3, max_k=2, samples=200, target_agreement=0.99)
    run = localize(cfg, specs=[SPEC], settings=LocalizeSettings(8), fallback=fb)
    row = run.summary.set_index("backend").loc[plugin]
    assert row["status"] == "ok" and row["kind"] == "per layer" and row["first_divergent_node"] == "conv2"
    best = run.fallback[run.fallback["best"]].iloc[0]
    assert json.loads(best["nodes"])[0] == "conv2" and best["agreement"] > best["base_agreement"] + 0.15
    suggested = sorted(run.path.glob(f"fallback-planted-{plugin}-*.yaml"))
    assert suggested, list(run.path.iterdir())
    assert load_sweep(suggested[0]).backends[1].options["keep_float"][0] == "conv2"


def test_plugin_rows_carry_the_audit(plugin: str, tmp_path: Path) -> None:
    """The default audit reads the plug-in's QDQ artifact: an INT8 row says what its artifact holds."""
    from qtbench import run_sweep

    cfg = sweep_dict(tmp_path, planted_cnn(tmp_path / "planted.onnx"), [plugin], [SPEC, "fp32"])
    df = run_sweep(cfg).set_index("spec_id")
    assert (df["status"] == "ok").all(), df[["status", "status_message"]]
    assert df.loc[SPEC, "audit"].startswith("honoured") and df.loc[SPEC, "audit_bits"].startswith("8:")


def test_output_only_reason_comes_from_the_adapter() -> None:
    """Localisation's 'outputs only' reasons are the adapters' own, and the default names the backend."""
    from qtbench import backends
    from qtbench.backends.base import Backend

    assert "context binary" in backends.load_class("qnn").output_only
    assert "hef" in backends.load_class("hailo").output_only
    assert backends.load_class("ort").output_only == ""

    class Bare(backends.load_class("ort")):  # an adapter that overrides nothing about taps uses the default
        slug = "bare"

        tap = Backend.tap

    assert "bare" in Bare().tap(None, None, "bare")


def test_simulation_twins_are_declared_by_the_vendor_adapters() -> None:
    from qtbench import backends
    from qtbench.harness.analysis.simgap import twin_of

    assert twin_of("qnn") == ("simnpu", {"profile": "qualcomm-htp"})
    assert twin_of("vela", "hailo8") == ("simnpu", {"profile": "hailo8"})
    assert twin_of("ort") is None
    assert backends.load_class("ort").simulation_twin is None


@needs_nncf
def test_nncf_adapter_audit_honours_its_grids(tmp_path: Path) -> None:
    """Per-channel and per-tensor INT8 read back as such; specs NNCF cannot build are skipped with a reason."""
    from qtbench import run_sweep

    specs = [SPEC, "int8-static-pc-wsym-minmax", "int8-static-pc-asym-minmax", "int8-dynamic-pc-wsym", "fp32"]
    cfg = sweep_dict(tmp_path, planted_cnn(tmp_path / "planted.onnx"), ["nncf"], specs)
    df = run_sweep(cfg).set_index("spec_id")
    for s in (SPEC, "int8-static-pc-wsym-minmax"):
        assert df.loc[s, "status"] == "ok" and df.loc[s, "audit"].startswith("honoured"), df.loc[s].to_dict()
        assert df.loc[s, "audit_bits"].startswith("8:")
    assert df.loc["int8-static-pc-asym-minmax", "status"] == "skipped"
    assert "symmetric" in df.loc["int8-static-pc-asym-minmax", "status_message"]
    assert df.loc["int8-dynamic-pc-wsym", "status"] == "skipped"
    assert "nncf" in json.loads(df.loc[SPEC, "backend_extra"])["quantizer"]


@needs_nncf
def test_nncf_adapter_localizes_and_keeps_the_chosen_node_in_float(tmp_path: Path) -> None:
    """Taps name the planted layer; ``exclude_nodes`` becomes NNCF's ignored scope: conv2's weight is left float."""
    from qtbench import backends
    from qtbench.backends.base import ModelInput
    from qtbench.harness.analysis.localize import LocalizeSettings, localize
    from qtbench.harness.core.data import load_dataset
    from qtbench.harness.core.spec import QuantSpec

    model_path = planted_cnn(tmp_path / "planted.onnx")
    cfg = sweep_dict(tmp_path, model_path, ["nncf"])
    run = localize(cfg, specs=[SPEC], settings=LocalizeSettings(8))
    row = run.summary.iloc[0]
    assert row["status"] == "ok" and row["first_divergent_node"] == "conv2", row.to_dict()

    spec = QuantSpec.parse(SPEC)
    calib = load_dataset(str(tmp_path / "calib.npz"), ["input"], None, None, role="calibration")
    model = ModelInput(model_path, "sha", ["input"], ["logits"], True)
    with backends.create("nncf", {"exclude_nodes": ["conv2"]}).compile(model, spec, calib, tmp_path / "w") as c:
        graph = onnx.load(str(c.info.artifact_path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv = {n.name: n for n in graph.node if n.op_type == "Conv"}
    assert producers.get(conv["conv2"].input[1]) is None  # a float initializer, no DequantizeLinear
    assert producers[conv["conv3"].input[1]].op_type == "DequantizeLinear"

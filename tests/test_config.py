from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtbench.harness.core.config import json_schema, load_sweep, parse_sweep
from qtbench.harness.core.errors import ConfigError
from qtbench.harness.demo import demo_config_path
from qtbench.harness.run.plan import expand

BASE = {"name": "s", "models": [{"path": "m.onnx"}], "backends": ["ort"], "specs": ["fp32", "int8"]}


def test_demo_config_is_valid_and_has_fp32_plus_six_quantized_specs():
    sweep = load_sweep(demo_config_path())
    assert sweep.specs[0].id == "fp32"
    assert sum(not s.is_float for s in sweep.specs) >= 6
    assert sweep.measure.warmup == 20 and sweep.measure.iterations == 200  # paper protocol


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        ({"modles": []}, r"^modles: unknown key; allowed keys are name, models"),
        ({"measure": {"iterations": 0}}, r"^measure\.iterations: 0 is below the minimum 1"),
        ({"measure": {"warmups": 3}}, r"^measure\.warmups: unknown key"),
        ({"models": [{"path": "m.onnx", "outptu": "x"}]}, r"^models\[0\]\.outptu: unknown key"),
        ({"specs": ["fp32", {"precision": "int9"}]}, r"^specs\[1\]\.precision: 'int9' is not one of"),
        ({"name": "a b"}, r"^name: 'a b' must match"),
        ({"run": {"isolate": "yes"}}, r"^run\.isolate: expected true or false"),
        ({"backends": []}, r"^backends: needs at least 1"),
        ({"device": {"meter": "wattmeter"}}, r"^device\.meter: 'wattmeter' is not one of auto, none"),
    ],
)
def test_errors_name_the_key_path(patch, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep({**BASE, **patch})


def test_missing_required_key():
    cfg = dict(BASE)
    del cfg["models"]
    with pytest.raises(ConfigError, match=r"^models: required key is missing"):
        parse_sweep(cfg)


def test_include_and_exclude():
    sweep = parse_sweep(
        {
            **BASE,
            "models": [{"path": "a.onnx"}, {"path": "b.onnx"}],
            "exclude": [{"model": "b", "spec": "int8-static-pc-wsym-minmax"}],
            "include": [{"model": "b", "backend": "ort", "spec": "int4-static-pc-wsym-minmax"}],
        }
    )
    cells = [(m.display_name, b.name, s.id) for m, b, s in expand(sweep)]
    assert ("b", "ort", "int8-static-pc-wsym-minmax") not in cells
    assert ("a", "ort", "int8-static-pc-wsym-minmax") in cells
    assert cells[-1] == ("b", "ort", "int4-static-pc-wsym-minmax")
    assert len(cells) == 4
    with pytest.raises(ConfigError, match=r"include\[0\]: needs spec"):
        parse_sweep({**BASE, "include": [{"model": "m", "backend": "ort"}]})


def test_relative_paths_resolve_against_the_sweep_file(tmp_path: Path):
    (tmp_path / "s.yaml").write_text("name: s\nmodels: [{path: m.onnx}]\nbackends: [ort]\nspecs: [fp32]\n")
    sweep = load_sweep(tmp_path / "s.yaml")
    assert sweep.resolve(sweep.models[0].path) == tmp_path / "m.onnx"
    assert sweep.results_path == tmp_path / "results" / "s"


def test_shipped_schema_matches_the_code():
    shipped = Path(__file__).parents[1] / "harness" / "schema" / "sweep.schema.json"
    assert json.loads(shipped.read_text()) == json_schema(), "regenerate: qtbench schema --out " + str(shipped)


def test_schema_rejects_unknown_keys_and_lists_spec_enums():
    schema = json_schema()
    sweep = schema["$defs"]["Sweep"]
    assert sweep["additionalProperties"] is False
    assert set(sweep["required"]) == {"name", "models", "backends", "specs"}
    spec_obj = sweep["properties"]["specs"]["items"]["anyOf"][1]
    assert spec_obj["properties"]["precision"]["enum"] == ["fp32", "fp16", "bf16", "int8", "int4"]

from __future__ import annotations

import itertools

import pytest

from qtbench.harness.core.errors import ConfigError
from qtbench.harness.core.spec import CALIBRATIONS, GRANULARITIES, QuantSpec


def test_ids_round_trip_and_are_unique_over_the_grid():
    seen = {}
    for prec, scaling, gran, wsym, asym, calib, fmt in itertools.product(
        ("fp32", "fp16", "bf16", "int8", "int4"),
        ("static", "dynamic", "weightonly"),
        GRANULARITIES,
        (True, False),
        (True, False),
        CALIBRATIONS,
        ("qdq", "qoperator"),
    ):
        if prec == "int8" and scaling == "weightonly":
            continue
        spec = QuantSpec(prec, scaling, gran, wsym, asym, calib, format=fmt)
        assert QuantSpec.parse(spec.id) == spec
        assert seen.setdefault(spec.id, spec) == spec  # one id ⇔ one canonical spec


def test_known_ids():
    assert QuantSpec("int8").id == "int8-static-pc-wsym-minmax"
    assert QuantSpec("int8", granularity="per-tensor", activation_symmetric=True, calibration="entropy").id == (
        "int8-static-pt-sym-entropy"
    )
    assert QuantSpec("int4", "weightonly").id == "int4-weightonly-pc-sym"
    assert QuantSpec("int8", calibration="percentile", percentile=99.9, calib_samples=64).id == (
        "int8-static-pc-wsym-percentile99.9-n64"
    )


def test_bits_follow_precision_and_scaling():
    assert (QuantSpec("int4").weight_bits, QuantSpec("int4").activation_bits) == (4, 8)
    assert QuantSpec("int4", "weightonly").activation_bits == 32
    assert (QuantSpec("fp16").weight_bits, QuantSpec("fp16").activation_bits) == (16, 16)


def test_canonical_form_drops_fields_that_do_not_apply():
    assert QuantSpec("fp16", calibration="entropy") == QuantSpec("fp16")
    assert QuantSpec("int8", "dynamic", calibration="entropy") == QuantSpec("int8", "dynamic")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("int3-static", "does not start with a precision"),
        ("int8-static-pc-banana", "unknown token 'banana'"),
        ("fp32-pc", "takes no options"),
        ("int8-weightonly", "weightonly is defined for int4 only"),
        ("int8-static-percentile42", "outside"),
    ],
)
def test_bad_ids_say_what_is_wrong(text, match):
    with pytest.raises(ConfigError, match=match):
        QuantSpec.parse(text)


def test_mapping_rejects_unknown_keys_and_bad_types():
    with pytest.raises(ConfigError, match=r"specs\[0\]\.bitz: unknown key"):
        QuantSpec.parse({"precision": "int8", "bitz": 3}, "specs[0]")
    with pytest.raises(ConfigError, match=r"weight_symmetric: expected true or false"):
        QuantSpec.parse({"precision": "int8", "weight_symmetric": "yes"})

"""The zoo builds offline (sockets disabled), exports ONNX with its labels, and runs fp32 + INT8 cells on ort."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from qtbench.harness.core.errors import ConfigError
from qtbench.harness.run.sweep import run_sweep

torch = pytest.importorskip("torch")
zoo = pytest.importorskip("qtbench.harness.core.zoo")

# (name, reduced size parameters, expected output shapes for a batch of 2)
SMALL = [
    ("resnet50", {"input_size": 64, "width": 8, "layers": (1, 1, 1, 1), "num_classes": 10}, [(2, 10)]),
    ("vit_s14", {"input_size": 56, "dim": 48, "depth": 2, "heads": 2}, [(2, 48), (2, 16, 48)]),
    ("seg_mnv3", {"input_size": 64, "width": 0.25, "num_classes": 5, "inter_channels": 8}, [(2, 5, 64, 64)]),
    (
        "nanosam2_resnet18",
        {"input_size": 64, "width": 8, "embed_dim": 32},
        [(2, 32, 4, 4), (2, 4, 16, 16), (2, 8, 8, 8)],
    ),
]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_zoo_builds_offline_and_runs_fp32_and_int8_on_ort(tmp_path: Path, no_network):
    import onnxruntime as ort

    models = []
    rng = np.random.default_rng(0)
    for name, params, shapes in SMALL:
        path = zoo.build(name, tmp_path / f"{name}.onnx", **params)
        meta = zoo.model_metadata(path)
        assert meta[zoo.META_WEIGHTS] == "random" and meta[zoo.META_NOTE] == zoo.RANDOM_WEIGHTS_NOTE
        assert json.loads(meta[zoo.META_ZOO])["name"] == name
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        s = params["input_size"]
        x = rng.random((2, 3, s, s), dtype=np.float32)
        outs = sess.run(None, {"input": x})
        assert [o.shape for o in outs] == shapes
        with torch.no_grad():  # the ONNX graph computes what the torch module computes
            ref = zoo.make_module(name, **params)(torch.from_numpy(x))
        ref = ref if isinstance(ref, tuple) else (ref,)
        assert all(np.allclose(o, r.numpy(), atol=1e-4) for o, r in zip(outs, ref, strict=True))
        data = tmp_path / f"{name}.npz"
        np.savez(data, input=rng.random((4, 3, s, s), dtype=np.float32))
        models.append({"path": str(path), "name": name, "evaluation": {"path": str(data)}})
    cfg = {
        "name": "zoo",
        "models": models,
        "calibration": {"path": str(tmp_path / "resnet50.npz")},
        "backends": [{"name": "ort", "options": {"threads": 1}}],
        "specs": ["fp32", "int8-static-pc-wsym-minmax", "int4-static-pc-wsym-minmax-qoperator"],  # last: skipped
        "measure": {"warmup": 1, "iterations": 3},
        "device": {"idle_s": 0},
        "run": {"results_dir": str(tmp_path / "results"), "isolate": False},
    }
    for m in cfg["models"]:  # each model calibrates on data of its own input size
        m["calibration"] = m["evaluation"]
    df = run_sweep(cfg)
    assert (df["weights"] == "random").all()  # every row, the skipped ones too
    assert list(df["status"].value_counts().sort_index().items()) == [("ok", 8), ("skipped", 4)]
    df = df[df["status"] == "ok"]
    assert df["notes"].str.contains(zoo.RANDOM_WEIGHTS_NOTE).all(), df["status_message"].tolist()
    assert (df["latency_ms_p50"] > 0).all()
    by = df.set_index(["model", "spec_id"])
    assert by.loc[("resnet50", "int8-static-pc-wsym-minmax"), "task"] == "classification"
    enc = by.loc[("nanosam2_resnet18", "int8-static-pc-wsym-minmax")]
    assert json.loads(enc["outputs"]) == ["image_embed", "high_res_feats_0", "high_res_feats_1"]
    assert all(0.5 < v["cosine"] <= 1.0 for v in json.loads(enc["output_metrics"]).values())
    vit = by.loc[("vit_s14", "fp32")]
    assert vit["task"] == "tensor" and vit["cosine"] == pytest.approx(1.0)


def test_state_dict_replaces_random_weights(tmp_path: Path):
    params = {"input_size": 28, "dim": 24, "depth": 1, "heads": 2}
    sd = zoo.make_module("vit_s14", seed=5, **params).state_dict()
    path = zoo.build("vit_s14", tmp_path / "v.onnx", state_dict=sd, **params)
    meta = zoo.model_metadata(path)
    assert meta[zoo.META_WEIGHTS].startswith("state_dict sha256=") and zoo.META_NOTE not in meta
    sd.pop("norm.weight")
    with pytest.raises(ConfigError, match=r"state dict does not fit zoo model 'vit_s14'.*norm\.weight"):
        zoo.build("vit_s14", tmp_path / "w.onnx", state_dict=sd, **params)
    with pytest.raises(ConfigError, match="input_size 30 must be a multiple of 14"):
        zoo.build("vit_s14", tmp_path / "x.onnx", input_size=30)
    with pytest.raises(ConfigError, match="zoo model 'resnet18' is unknown"):
        zoo.build("resnet18", tmp_path / "y.onnx")


def test_full_size_parameter_counts():
    """The layouts match the published networks (parameter counts, no export: fast)."""
    count = {n: sum(p.numel() for p in zoo.make_module(n).parameters()) for n in ("resnet50", "vit_s14")}
    assert count["resnet50"] == 25_557_032  # torchvision resnet50
    # DINOv2's dinov2_vits14 has 22,056,576: the same minus its mask token (384) and a position table for 37²
    # patches instead of 16² ((1370 − 257) × 384 = 427,392)
    assert count["vit_s14"] == 22_056_576 - 384 - 427_392


def test_cli_zoo_build_writes_model_and_synthetic_data(tmp_path: Path, no_network, capsys):
    from qtbench.harness.cli import main

    rc = main(
        [
            "zoo",
            "build",
            "seg_mnv3",
            "--out",
            str(tmp_path),
            "--input-size",
            "32",
            "--data",
            "3",
            "--param",
            "width=0.25",
            "--param",
            "num_classes=4",
            "--param",
            "inter_channels=8",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and zoo.RANDOM_WEIGHTS_NOTE in out
    assert zoo.model_metadata(tmp_path / "seg_mnv3_32.onnx")[zoo.META_TASK] == '{"out": "segmentation"}'
    data = np.load(tmp_path / "seg_mnv3_32_data.npz")
    assert data["input"].shape == (3, 3, 32, 32) and data["labels"].shape == (3, 32, 32) and data["labels"].max() < 4
    assert main(["zoo", "build", "seg_mnv3", "--out", str(tmp_path), "--param", "width"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err

"""Quant-Trim: schedule, quantizer, STE, reverse pruning, export, and that training learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="Quant-Trim needs torch: pip install 'qtbench[train]'")

from qtbench.quanttrim import QuantTrimConfig, export_onnx, lambda_at, percentile_at, posthoc_clip, prepare  # noqa: E402
from qtbench.quanttrim.core import fake_quantize, qrange, scale_zero_point  # noqa: E402
from qtbench.quanttrim.models import build_model  # noqa: E402

torch.set_num_threads(1)


def test_lambda_schedule_at_key_steps():
    cfg = QuantTrimConfig(warmup_frac=0.2, ramp_frac=0.4, lambda_max=0.8)
    assert lambda_at(0, 100, cfg) == 0.0
    assert lambda_at(19, 100, cfg) == 0.0
    assert lambda_at(20, 100, cfg) == 0.0  # the ramp starts at u = 0
    assert lambda_at(40, 100, cfg) == pytest.approx(0.8 * 0.5**4)  # quartic
    assert lambda_at(60, 100, cfg) == 0.8 and lambda_at(99, 100, cfg) == 0.8
    assert lambda_at(50, 100, QuantTrimConfig(fake_quant=False)) == 0.0
    assert percentile_at(20, 100, cfg) == 100.0
    assert percentile_at(40, 100, cfg) == pytest.approx(99.85)
    assert percentile_at(80, 100, cfg) == 99.7


def test_fake_quant_lands_on_the_integer_grid_at_lambda_1():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    for bits, sym, pc in [(8, True, True), (4, True, False), (4, False, True)]:
        s, z = scale_zero_point(w, bits, sym, pc)
        qmin, qmax = qrange(bits, sym)
        out = fake_quantize(w, s, z, qmin, qmax, 1.0)
        codes = out / s + z
        assert torch.allclose(codes, torch.round(codes), atol=1e-4)
        assert codes.min() >= qmin - 1e-4 and codes.max() <= qmax + 1e-4
        assert len(torch.unique(torch.round(codes))) <= qmax - qmin + 1
    half = fake_quantize(w, s, z, qmin, qmax, 0.5)
    full = fake_quantize(w, s, z, qmin, qmax, 1.0)
    assert torch.allclose(half, 0.5 * w + 0.5 * full, atol=1e-6)


def test_ste_gradient_is_identity_inside_and_zero_outside():
    scale, zero = torch.tensor(0.1), torch.tensor(0.0)
    qmin, qmax = qrange(4, True)  # range ±0.7
    x = torch.tensor([-2.0, -0.33, 0.0, 0.52, 0.69, 3.0], requires_grad=True)
    fake_quantize(x, scale, zero, qmin, qmax, 1.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    x.grad = None
    fake_quantize(x, scale, zero, qmin, qmax, 0.5).sum().backward()
    assert x.grad.tolist() == [0.5, 1.0, 1.0, 1.0, 1.0, 0.5]  # 1 − λ outside


def test_reverse_pruning_clips_exactly_at_the_quantile():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(50, 40))
    prepare(lin, QuantTrimConfig(fold_bn=False), total_steps=10)
    w = lin[0].parametrizations.weight.original
    expected = torch.quantile(w.detach().abs().flatten(), 0.99)
    taus = lin.quanttrim.prune(99.0)
    assert taus["0"] == pytest.approx(float(expected))
    assert float(w.abs().max()) == pytest.approx(float(expected))
    assert (w.abs() >= expected * (1 - 1e-6)).float().mean() == pytest.approx(0.01, abs=0.002)


def test_quantile_above_torch_limit_of_2_pow_24_elements():
    """torch.quantile refuses > 2**24 elements (a 4096×4096 layer has 2**24): reverse pruning must not crash."""
    from qtbench.quanttrim.core import clip_at_quantile, quantile_large

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 1001):
        x = torch.randn(n, generator=g)
        for q in (0.0, 0.003, 0.5, 0.997, 1.0):
            assert float(quantile_large(x, q)) == pytest.approx(float(torch.quantile(x, q)), abs=1e-6)
    w = torch.randn(2**24 + 3, generator=g)
    with pytest.raises(RuntimeError):
        torch.quantile(w.abs(), 0.99)  # the limit this works around (if torch lifts it, this line can go)
    exact = float(np.quantile(w.abs().numpy().astype(np.float64), 0.99))  # numpy has no such limit
    tau = clip_at_quantile(w, None, 99.0)
    assert tau == pytest.approx(exact, rel=1e-5) and float(w.abs().max()) == pytest.approx(tau)


def test_bn_folded_weights_are_what_gets_quantized_and_pruned():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4))
    model[1].running_var.fill_(4.0)
    model[1].weight.data = torch.tensor([1.0, 2.0, 0.5, 3.0])
    prepare(model, QuantTrimConfig(bits=4, per_channel=False), total_steps=10)
    p = model[0].parametrizations.weight[0]
    p.lam = 1.0
    w_eff = model[0].weight.detach()
    f = p.fold_factor(w_eff)
    folded = w_eff * f
    s, _ = scale_zero_point(folded, 4, True, False)
    codes = folded / s
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)  # the folded tensor sits on the INT4 grid
    taus = model.quanttrim.prune(95.0)
    w = model[0].parametrizations.weight.original.detach()
    assert float((w * f).abs().max()) == pytest.approx(taus["0"], rel=1e-5)


def test_export_is_plain_onnx_matching_torch(tmp_path: Path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model("mobilenet")
    prepare(model, QuantTrimConfig(bits=4), total_steps=10)
    model.quanttrim.step(9)  # λ = 1: fake quant active during training
    model.quanttrim.prune(99.0)
    x = torch.randn(4, 1, 14, 14)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1])
    proto = onnx.load(str(path))
    assert {n.domain for n in proto.graph.node} <= {""}
    assert all(op.version <= 17 for op in proto.opset_import)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded into the convs
    meta = dict((p.key, p.value) for p in proto.metadata_props)
    assert '"method": "quanttrim"' in meta["qtbench.training"] and '"bits": 4' in meta["qtbench.training"]
    model.eval()
    with model.quanttrim.exporting(), torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)  # stated tolerance: fp32 reassociation in ORT's fused convs


def test_training_on_digits_decreases_loss_and_logs_schedule(tmp_path: Path):
    pytest.importorskip("sklearn", reason="digits come with scikit-learn (qtbench[test])")
    from qtbench.quanttrim.data import load_digits
    from qtbench.quanttrim.train import TrainConfig, train

    data = load_digits()
    cfg = TrainConfig(
        arch="resnet",
        method="quanttrim",
        epochs=3,
        batch_size=64,
        lr=0.05,
        train_images=0,
        quanttrim={"bits": 4, "lambda_max": 0.5, "prune_every": 5},
    )
    res = train(data, cfg, log_csv=tmp_path / "log.csv")
    losses = [r["train_loss"] for r in res.history]
    assert losses[-1] < losses[0] * 0.7
    assert res.history[-1]["lambda"] == pytest.approx(0.5) and res.history[0]["lambda"] < 0.5
    assert 0 < res.history[-1]["clipped_fraction"] < 0.05
    text = (tmp_path / "log.csv").read_text()
    assert text.startswith("# arch=resnet") and "lambda,prune_percentile,tau_mean" in text


def test_posthoc_clip_and_bad_config():
    torch.manual_seed(0)
    lin = torch.nn.Linear(30, 30)
    before = lin.weight.detach().abs().max()
    taus = posthoc_clip(lin, 99.0)
    assert float(lin.weight.abs().max()) == pytest.approx(taus[""]) and taus[""] < float(before)
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        prepare(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ValueError, match="lambda_max"):
        QuantTrimConfig(lambda_max=1.5)


def test_train_cli_writes_onnx_and_log(tmp_path: Path, capsys):
    pytest.importorskip("sklearn", reason="digits come with scikit-learn (qtbench[test])")
    import onnx

    from qtbench.harness.cli import main

    rc = main(
        [
            "train",
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--train-images",
            "0",
            "--bits",
            "4",
            "--lambda-max",
            "0.5",
            "--out",
            str(tmp_path),
            "--seeds",
            "0",
            "1",
        ]
    )
    assert rc == 0
    proto = onnx.load(str(tmp_path / "digits_resnet_quanttrim_s0.onnx"))
    onnx.checker.check_model(proto)
    assert (tmp_path / "digits_resnet_quanttrim_s0.csv").read_text().count("\n") >= 2
    # the accuracy printed, logged and written into the metadata is the exported ONNX model's own
    import json

    import onnxruntime as ort

    from qtbench.quanttrim.data import load_digits

    meta = json.loads({p.key: p.value for p in proto.metadata_props}["qtbench.training"])
    data = load_digits()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_acc = float((sess.run(None, {"input": data.x_test})[0].argmax(1) == data.y_test).mean())
    assert abs(meta["test_accuracy"] - onnx_acc) <= 1.5 / len(data.y_test)  # ≤ 1 near-tie argmax flip
    assert "fakequant_test_accuracy" in meta
    import csv

    log = list(csv.DictReader(line for line in (tmp_path / "digits_resnet_quanttrim_s0.csv").open() if line[0] != "#"))
    assert float(log[-1]["test_accuracy"]) == pytest.approx(meta["test_accuracy"])
    assert "fakequant_test_accuracy" in log[-1]
    import yaml

    snippet = yaml.safe_load((tmp_path / "digits_resnet_quanttrim.models.yaml").read_text())
    assert snippet["models"] == [
        {
            "path": f"digits_resnet_quanttrim_s{s}.onnx",
            "name": f"resnet-quanttrim-s{s}",
            "group": "quanttrim",
            "seed": s,
        }
        for s in (0, 1)
    ]
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--dataset", "idx"]) == 2  # user error: no --data-dir


def test_train_cli_caps_epoch_evaluation_and_keeps_the_snippet_of_finished_seeds(tmp_path: Path, monkeypatch, capsys):
    """--test-images scores epochs on a subset, while the exported model's accuracy still uses every test image;
    the models snippet is written after each seed, so an interrupted multi-seed run keeps the finished ones."""
    pytest.importorskip("sklearn", reason="digits come with scikit-learn (qtbench[test])")
    import csv
    import json

    import onnx
    import yaml

    import qtbench.quanttrim.train as qtrain
    from qtbench.harness.cli import main
    from qtbench.quanttrim.data import load_digits

    real = qtrain.train
    calls: list[int] = []

    def second_seed_interrupted(data, cfg, **kw):
        calls.append(cfg.seed)
        if cfg.seed == 1:
            raise KeyboardInterrupt
        return real(data, cfg, **kw)

    monkeypatch.setattr(qtrain, "train", second_seed_interrupted)
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--train-images", "200", "--test-images", "40"]
    rc = main([*argv, "--method", "fp", "--out", str(tmp_path), "--seeds", "0", "1"])
    assert rc == 130 and calls == [0, 1]
    snippet = yaml.safe_load((tmp_path / "digits_resnet_fp.models.yaml").read_text())
    assert [m["seed"] for m in snippet["models"]] == [0]  # seed 0 finished before the interrupt: it is listed
    log = list(csv.DictReader(line for line in (tmp_path / "digits_resnet_fp_s0.csv").open() if line[0] != "#"))
    n_test = len(load_digits().y_test)
    assert float(log[-1]["test_accuracy"]) * 40 == pytest.approx(round(float(log[-1]["test_accuracy"]) * 40))
    proto = onnx.load(str(tmp_path / "digits_resnet_fp_s0.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["qtbench.training"])
    assert float(log[-1]["test_accuracy_all"]) == pytest.approx(meta["test_accuracy"])
    assert meta["test_accuracy"] * n_test == pytest.approx(round(meta["test_accuracy"] * n_test))
    capsys.readouterr()

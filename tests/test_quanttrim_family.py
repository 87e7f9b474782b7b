"""Quant-Trim's grid family: the backends' quantizer variants, the draws, family-aware pruning, the metadata."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="Quant-Trim needs torch: pip install 'qtbench[train]'")

from qtbench.quanttrim import QuantTrimConfig, export_onnx, prepare  # noqa: E402
from qtbench.quanttrim.core import (  # noqa: E402
    DEFAULT_FAMILY,
    Grid,
    GridFamily,
    clip_at_quantile,
    fake_quantize,
    grid_scale_zero,
    kurtosis,
    round_half,
)
from qtbench.quanttrim.models import ARCHITECTURES, build_model  # noqa: E402

torch.set_num_threads(1)


def _quantize(w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, z = grid_scale_zero(w, grid)
    qmin, qmax = grid.qrange()
    return fake_quantize(w, s, z, qmin, qmax, 1.0, grid.rounding), s, z


def test_grids_reproduce_the_backends_integer_maths():
    w = torch.tensor([[-1.5, 0.1, 0.75], [0.3, -0.2, 0.05]])
    # ORT's symmetric INT4: −8…7 with scale max|w|/7.5; the top code saturates at 7
    out, s, _ = _quantize(w, Grid(4, per_channel=False, narrow=False))
    assert float(s) == pytest.approx(1.5 / 7.5)
    assert Grid(4, False, narrow=False).qrange() == (-8, 7)
    assert float(out[0, 0]) == pytest.approx(-8 * 0.2)  # −7.5 rounds half-even to −8, inside the full range
    # narrow: ±7 with max|w|/7 (TFLite, the Hailo-like profile)
    out, s, _ = _quantize(w, Grid(4, per_channel=False, narrow=True))
    assert float(s) == pytest.approx(1.5 / 7) and float(out[0, 0]) == pytest.approx(-1.5)
    # power-of-two scales: the smallest power of two ≥ the min-max scale, so nothing saturates
    _, s, _ = _quantize(w, Grid(4, per_channel=True, pow2=True))
    assert s.shape == (2, 1)
    for v, amax in zip(s.flatten().tolist(), (1.5, 0.3), strict=True):
        assert np.log2(v) == round(np.log2(v)) and amax / 7 <= v < 2 * amax / 7
    # per-channel codes stay on each row's own grid; asymmetric uses 0…2^b−1 with a zero-point
    out, s, z = _quantize(w, Grid(8, per_channel=True, symmetric=False))
    codes = out / s + z
    assert torch.allclose(codes, torch.round(codes), atol=1e-3) and codes.min() >= 0 and codes.max() <= 255


def test_rounding_modes_differ_only_at_halves():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6])
    assert round_half(x, "even").tolist() == [-2, -2, -0, 0, 2, 2, 0, -1]
    assert round_half(x, "away").tolist() == [-3, -2, -1, 1, 2, 3, 0, -1]


def test_family_parse_weights_and_errors():
    fam = GridFamily.parse("default")
    assert len(fam.grids) == 32 and len({g.name for g in fam.grids}) == 32
    assert sum(fam.weights) == pytest.approx(1.0)
    assert {g.bits for g in fam.grids} == {4, 8} and {g.rounding for g in fam.grids} == {"even", "away"}
    assert GridFamily.parse(DEFAULT_FAMILY) == fam
    # axes left out follow the config's own grid: a 4-bit per-tensor config with two ranges is 2 grids at 4 bits
    narrowfull = QuantTrimConfig(bits=4, per_channel=False, family="range=narrow,full").grid_family()
    assert [(g.bits, g.per_channel, g.narrow) for g in narrowfull.grids] == [(4, False, True), (4, False, False)]
    w = GridFamily.parse("bits=4:3,8:1;granularity=tensor")
    assert [(g.bits, g.per_channel) for g in w.grids] == [(4, False), (8, False)]
    assert w.weights == pytest.approx((0.75, 0.25))
    # asymmetric weights have no narrow/full distinction: the two collapse into one grid with both weights
    asym = GridFamily.parse("weights=sym,asym;range=narrow,full")
    assert len(asym.grids) == 3 and max(asym.weights) == pytest.approx(0.5)
    for bad, msg in [
        ("bits=4;color=red", "axes: bits"),
        ("bits=9", "choose from"),
        ("bits=4;bits=8", "given twice"),
        ("bits=4:0", "must be > 0"),
        ("bits=4:x", "not a number"),
        ("bits", "not axis=values"),
    ]:
        with pytest.raises(ValueError, match=msg):
            GridFamily.parse(bad)
    with pytest.raises(ValueError, match="choose from"):
        QuantTrimConfig(family="rounding=floor")  # the config validates its family at construction
    with pytest.raises(ValueError, match="family_draw"):
        QuantTrimConfig(family_draw="epoch")


def test_draws_follow_the_family_weights_per_layer_and_are_seeded():
    def draws(seed: int, draw: str = "layer") -> tuple[list[list[str]], dict[str, int]]:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        cfg = QuantTrimConfig(family="bits=4:3,8:1;granularity=tensor,channel", family_draw=draw, seed=seed)
        prepare(model, cfg, total_steps=400)
        seen = []
        for t in range(400):
            model.quanttrim.step(t)
            seen.append([p.grid.name for _, _, p in model.quanttrim.layers])
        return seen, model.quanttrim.draws

    a, counts = draws(0)
    assert a == draws(0)[0] and a != draws(1)[0]  # reproducible per seed, different across seeds
    per_layer = Counter(name for row in a for name in row)
    four = sum(v for k, v in per_layer.items() if k.startswith("w4"))
    assert 0.70 < four / (3 * 400) < 0.80  # bits 4:3,8:1 → 75 % of layer-steps at 4 bits
    assert sum(len(set(row)) > 1 for row in a) > 200  # per layer: the layers of one step differ
    # draws are counted only while λ > 0 (after the 20 % warm-up, from the ramp's first positive λ)
    assert 0 < sum(counts.values()) < 3 * 400 and sum(counts.values()) >= 3 * 400 * 0.75
    shared, _ = draws(0, "step")
    assert all(len(set(row)) == 1 for row in shared)


def test_family_aware_pruning_clips_each_channel_and_the_tensor():
    torch.manual_seed(0)
    w = torch.randn(4, 1000)
    w[0] *= 10  # one loud channel: a per-tensor τ leaves the quiet channels' own tails alone
    w[1, 7] = 50.0  # one outlier inside a quiet channel
    tensor = w.clone()
    tau_t = clip_at_quantile(tensor, None, 99.0, "tensor")
    # per tensor, the loud channel sets τ: the quiet channel's outlier survives at τ, far above its own tail
    assert float(tensor[1].abs().max()) == pytest.approx(tau_t) and tau_t > 10
    both = w.clone()
    clip_at_quantile(both, None, 99.0, "both")
    for c in range(4):
        row_q = float(torch.quantile(w[c].abs(), 0.99))
        assert float(both[c].abs().max()) == pytest.approx(min(row_q, tau_t), rel=1e-5)
    assert float(both[1].abs().max()) < 3.0  # the outlier is clipped to its channel's quantile
    chan = w.clone()
    clip_at_quantile(chan, None, 99.0, "channel")
    assert float(chan[0].abs().max()) > tau_t  # per channel alone keeps the loud channel's range
    assert QuantTrimConfig().prune_mode() == "tensor"
    assert QuantTrimConfig(family="default").prune_mode() == "both"
    assert QuantTrimConfig(family="granularity=tensor").prune_mode() == "tensor"


def test_percentile_activation_ranges_track_their_own_estimate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    cfg = QuantTrimConfig(family="act=percentile", quantize_activations=True, warmup_frac=0, ramp_frac=0)
    prepare(model, cfg, total_steps=10)
    model.quanttrim.step(5)
    x = torch.randn(20000, 8)
    x[0, 0] = 1000.0  # one outlier sets the min-max range, not the percentile range
    model.train()
    model(x)
    hook = model.quanttrim.act_hooks[0]
    assert hook.mode == "percentile"
    lo_p, hi_p = hook.ranges["percentile"]
    assert float(hook.ranges["minmax"][1]) == pytest.approx(1000.0) and float(hi_p) < 10.0 and float(lo_p) > -10.0


def test_family_checkpoint_exports_plain_onnx_naming_the_family(tmp_path: Path):
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model("mobilenetv2-s2")
    cfg = QuantTrimConfig(family="default", lambda_max=0.5)
    prepare(model, cfg, total_steps=20)
    model.train()
    for t in range(20):
        model.quanttrim.step(t)
        model(torch.randn(2, 1, 28, 28)).sum().backward()
    x = torch.randn(3, 1, 28, 28)
    path = export_onnx(model, tmp_path / "fam.onnx", x[:1])
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {n.domain for n in proto.graph.node} <= {""}
    assert not ops & {"QuantizeLinear", "DequantizeLinear", "BatchNormalization"}  # FP, BN folded
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["qtbench.training"])["quanttrim"]
    assert meta["family"] == "default" and meta["prune_granularity_used"] == "both"
    assert len(meta["grid_family"]["grids"]) == 32
    assert set(meta["grid_draws"]) <= set(meta["grid_family"]["grids"]) and sum(meta["grid_draws"].values()) > 0
    model.eval()
    with model.quanttrim.exporting(), torch.no_grad():
        ref = model(x).numpy()
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, atol=1e-4)


def test_study_architectures_build_and_the_cli_lists_them():
    from qtbench.harness.cli.train import ARCH_NAMES

    assert set(ARCH_NAMES) == set(ARCHITECTURES)  # the CLI's choices (no torch import at --help) match the models
    for arch in ("mobilenetv2-s2", "resnet-s2"):
        m = build_model(arch)
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    dw = [c for c in build_model("mobilenetv2-s2").modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert dw and all(c.groups == c.in_channels for c in dw)  # depthwise


def test_train_cli_refuses_a_bad_family_before_training(tmp_path: Path, capsys):
    from qtbench.harness.cli import main

    base = ["train", "--dataset", "digits", "--out", str(tmp_path)]
    assert main([*base, "--grid-family", "bits=4;granularity=row"]) == 2
    assert "choose from" in capsys.readouterr().err
    assert main([*base, "--prune-only", "--no-prune"]) == 2
    capsys.readouterr()
    assert main([*base, "--kurtosis", "-1"]) == 2
    assert "kurtosis must be ≥ 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_small_channels_keep_the_tensor_threshold():
    """A 9-weight depthwise kernel has no 0.3 % tail: its own percentile would pull its largest weight onto the
    second; such channels keep the tensor's τ alone."""
    torch.manual_seed(0)
    w = torch.randn(64, 1, 3, 3)
    both = w.clone()
    tau = clip_at_quantile(both, None, 99.7, "both")
    assert tau == pytest.approx(float(torch.quantile(w.abs().flatten(), 0.997)), rel=1e-5)
    assert torch.equal(both, w.clamp(-tau, tau))  # exactly the per-tensor clip
    chan = w.clone()
    assert clip_at_quantile(chan, None, 99.7, "channel") == float("inf") and torch.equal(chan, w)
    big = torch.randn(4, 400)  # 400 ≥ 100 / 0.3 weights per channel: the channel's own tail counts
    clipped = big.clone()
    clip_at_quantile(clipped, None, 99.7, "channel")
    assert all(float(clipped[c].abs().max()) < float(big[c].abs().max()) for c in range(4))


def _study_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "quanttrim_study.py"
    spec = importlib.util.spec_from_file_location("quanttrim_study", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_study_recipe_writes_a_valid_sweep_and_honest_summary(tmp_path: Path):
    import argparse

    from qtbench.harness.core.config import load_sweep

    study = _study_module()
    args = argparse.Namespace(out=tmp_path, arms=list(study.ARMS), seeds=[0, 1, 2], archs=["resnet-s2"])
    sweep = load_sweep(study.write_sweep(args, "resnet-s2"))
    assert len(sweep.models) == 3 * len(study.ARMS) and {m.group for m in sweep.models} == set(study.ARMS)
    assert all(m.timing is False for m in sweep.models)
    # every arm's flags are ones `qtbench train` takes, and make a valid Quant-Trim config; the ablation arms
    # switch off exactly one part of the full method
    from qtbench.harness.cli import build_parser
    from qtbench.harness.cli.train import resolve_quanttrim

    run = argparse.Namespace(out=tmp_path, seeds=[0, 1], epochs=8, train_images=10_000, data_dir=None)
    for arm, flags in study.ARMS.items():
        ns = build_parser().parse_args(["train", "--arch", "resnet-s2", *flags])
        assert ns.method == ("fp" if arm == "fp" else "quanttrim")
        cmd = study.train_cmd(run, "resnet-s2", arm)  # what the study runs: the arm's --epochs overrides the default
        full = build_parser().parse_args(cmd[cmd.index("train") :])
        assert (full.epochs, full.seeds, full.group) == (8 if arm == "fp" else 10, [0, 1], arm)
        qt, _ = resolve_quanttrim(ns)  # raises UserError for a flag set `qtbench train` would refuse
        assert bool(qt) == (arm != "fp") and (not qt or QuantTrimConfig(**qt))
    arms = {k: set(v) for k, v in study.ARMS.items()}
    full = arms["quanttrim"]
    assert arms["prune"] - full == {"--prune-only"} and arms["fakequant"] - full == {"--no-prune"}
    d, lo, hi = study.paired_t([88.0, 87.0, 86.0], [88.1, 87.3, 86.2])
    assert d == pytest.approx(0.2) and lo < 0.2 < hi
    assert study.fmt({"difference": 1.0, "ci_lo": 0.2, "ci_hi": 1.8}).endswith("✓")
    assert study.fmt({"difference": -1.0, "ci_lo": -1.8, "ci_hi": -0.2}).endswith("✗")
    assert study.fmt({"difference": 0.1, "ci_lo": -0.5, "ci_hi": 0.7}) == "+0.10 [-0.50, +0.70]"


def test_sample_mode_alternates_the_fp_and_the_fully_quantized_network():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    cfg = QuantTrimConfig(
        family="bits=4,8", family_draw="step", lambda_mode="sample", lambda_max=0.5, warmup_frac=0, ramp_frac=0
    )
    prepare(model, cfg, total_steps=1000)
    on = []
    for t in range(1000):
        model.quanttrim.step(t)
        lams = {p.lam for _, _, p in model.quanttrim.layers}
        assert lams in ({0.0}, {1.0})  # the whole network is FP or fully quantized at one step
        on.append(lams == {1.0})
    assert 0.45 < sum(on) / 1000 < 0.55  # with probability λ = 0.5
    layerwise = QuantTrimConfig(family="bits=4,8", lambda_mode="sample", warmup_frac=0, ramp_frac=0)
    m2 = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(8)])
    prepare(m2, layerwise, total_steps=50)
    m2.quanttrim.step(10)  # λ = 1: every layer sees its full grid
    assert {p.lam for _, _, p in m2.quanttrim.layers} == {1.0}
    with pytest.raises(ValueError, match="lambda_mode"):
        QuantTrimConfig(lambda_mode="mix")


def test_kurtosis_penalty_flattens_the_folded_weights_and_shrinks_every_grids_error():
    """The penalty drives κ = E[w⁴]/E[w²]² of the BN-folded weights (per tensor and per channel) toward 1.8; flat
    weights have the smallest max/rms, so INT4 error falls on every grid, trained on or not."""
    torch.manual_seed(0)
    assert float(kurtosis(torch.rand(200_000) * 2 - 1)) == pytest.approx(1.8, abs=0.03)
    assert float(kurtosis(torch.randn(200_000))) == pytest.approx(3.0, abs=0.1)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3), torch.nn.BatchNorm2d(32))
    with torch.no_grad():
        net[0].weight.copy_(torch.distributions.Laplace(0.0, 0.1).sample(net[0].weight.shape))
        net[1].weight.uniform_(0.2, 3.0)  # unequal channel gains: the folded tensor is what the grids see
        net[1].running_var.uniform_(0.5, 2.0)
    assert float(prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)), QuantTrimConfig()).quanttrim.regularizer()) == 0
    net = prepare(net, QuantTrimConfig(kurtosis=1.0, fake_quant=False, prune=False), total_steps=1)
    _, module, p = net.quanttrim.layers[0]

    def folded() -> torch.Tensor:
        w = module.parametrizations.weight.original.detach()
        return w * p.fold_factor(w)

    grids = [Grid(4, pc, narrow=n) for pc in (False, True) for n in (True, False)] + [Grid(4, False, pow2=True)]

    def errors() -> list[float]:
        w = folded()
        return [float((_quantize(w, g)[0] - w).norm() / w.norm()) for g in grids]

    before, k_before = errors(), float(kurtosis(folded().flatten()))
    assert k_before > 4  # Laplace tails, and the channel gains make the tensor heavier still
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        net.quanttrim.regularizer().backward()
        opt.step()
    w = folded()
    assert float(kurtosis(w.flatten())) < 2.3
    assert float(kurtosis(w.reshape(32, -1)).mean()) < 2.3
    after = errors()
    for g, b, a in zip(grids, before, after, strict=True):
        assert a < 0.75 * b, (g.name, b, a)


def test_train_recipes_resolve_with_the_flags_winning_and_the_study_arm_is_the_default():
    from qtbench.harness.cli import build_parser
    from qtbench.harness.cli.train import RECIPE_NAMES, resolve_quanttrim
    from qtbench.quanttrim.core import RECIPES

    assert set(RECIPE_NAMES) == set(RECIPES)  # the CLI's choices (torch-free at --help) match the library's
    parse = lambda *a: build_parser().parse_args(["train", *a])  # noqa: E731
    qt, epochs = resolve_quanttrim(parse())
    assert epochs == RECIPES["neutral"].epochs == 10
    assert {k: qt[k] for k in RECIPES["neutral"].config} == RECIPES["neutral"].config
    assert QuantTrimConfig(**qt).prune_mode() == "both"  # the family holds per-channel grids
    paper, epochs = resolve_quanttrim(parse("--recipe", "paper"))
    cfg, ref = QuantTrimConfig(**paper), QuantTrimConfig()
    assert (cfg.bits, cfg.family, cfg.lambda_max, cfg.lambda_mode, cfg.family_draw, epochs) == (
        ref.bits,
        ref.family,
        ref.lambda_max,
        ref.lambda_mode,
        ref.family_draw,
        8,
    )
    qt, epochs = resolve_quanttrim(parse("--lambda-max", "0.5", "--grid-family", "single", "--epochs", "6"))
    assert (qt["lambda_max"], qt["family"], qt["lambda_mode"], epochs) == (0.5, "", "sample", 6)
    assert resolve_quanttrim(parse("--method", "fp")) == ({}, 8)
    # the study's headline arm is the default recipe, so what the study measured is what `qtbench train` trains
    study = _study_module()
    qt, epochs = resolve_quanttrim(parse(*study.ARMS["quanttrim"]))
    assert qt == resolve_quanttrim(parse())[0] and epochs == 10

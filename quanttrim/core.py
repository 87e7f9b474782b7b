"""Quant-Trim: progressive fake quantization + reverse pruning, for any tree of Conv2d/Linear (+BatchNorm2d).

Usage inside your own training loop::

    model = quanttrim.prepare(model, QuantTrimConfig(**RECIPES["neutral"].config), total_steps=steps)
    for t, (x, y) in enumerate(loader):
        model.quanttrim.step(t)          # sets λ_t, and every `prune_every` steps clips weights at ±τ_ℓ,t
        loss = criterion(model(x), y); loss.backward(); opt.step()
    quanttrim.export_onnx(model, "ckpt.onnx", example)   # plain FP ONNX, no fake-quant ops

**Progressive fake quantization.** Each weight (and optionally each Conv/Linear input) is replaced in the forward
pass by x̃ = x + λ_t·stopgrad(Q(x) − x), with Q(x) = s·(clip(round(x/s) + z, q_min, q_max) − z). The gradient is
straight-through: 1 inside the clip range, 1 − λ_t outside (0 at λ = 1). λ_t is 0 for the first ``warmup_frac``
of steps (FP warm-up), rises as a quartic u⁴ over the next ``ramp_frac`` to ``lambda_max``, then holds.

**Reverse pruning.** Every ``prune_every`` steps each layer's weights are clipped in place to ±τ_ℓ,t, the
``q_t``-th percentile of |W| (q falls linearly from ``q_start`` to ``q_end`` over the ramp). It removes the
largest magnitudes, the tails that inflate quantization scales, while the weights keep learning. τ is
recomputed from the current, already-clipped weights ("recursive"): each recomputation tightens it a little, so
more than (100 − q)% of weights end up at ±τ (≈1.1 % for q = 99.7 in the notes). Set ``prune_every`` high to
approach the nominal fraction.

**BN folding.** Deployed weights are the BN-folded ones (W·γ/√(var+ε)); with ``fold_bn`` the fake quantizer and
the pruning threshold act on those (per output channel, with running statistics), then un-fold.

Measured on this project's 2-core test machine (docs/quanttrim.md): reverse pruning carries the INT4 per-tensor
gain, and training against the four INT4 grids backends build (sampled for the whole network, λ → 0.75) the
per-channel one; that is the ``neutral`` recipe (:data:`RECIPES`). λ → 1 with one 4-bit grid costs FP accuracy.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass(frozen=True)
class QuantTrimConfig:
    """Quant-Trim hyper-parameters. Defaults follow the measured notes (20 % warm-up, 40 % ramp, q 100→99.7)."""

    bits: int = 8  # weight bits targeted by fake quantization (4 or 8)
    per_channel: bool = True
    symmetric: bool = True
    fake_quant: bool = True  # False: reverse pruning only (the `prune_only` ablation)
    lambda_max: float = 1.0
    warmup_frac: float = 0.2
    ramp_frac: float = 0.4
    prune: bool = True
    q_start: float = 100.0
    q_end: float = 99.7
    prune_every: int = 10
    fold_bn: bool = True
    quantize_activations: bool = False
    activation_bits: int = 8
    activation_momentum: float = 0.9
    # The grid family (see GridFamily.parse): "" trains against the one grid above (bits, per_channel, symmetric);
    # a family draws a quantizer variant per layer (family_draw="layer") or per step ("step") at every step.
    family: str = ""
    family_draw: str = "layer"
    # reverse pruning's threshold per tensor (the paper), per output channel, or both (the smaller one);
    # "auto": per tensor for one grid, and for a family with per-channel grids both.
    prune_granularity: str = "auto"
    seed: int = 0  # the family's draws
    # "blend": every layer sees x + λ_t·(Q(x) − x) (the paper). "sample": a layer sees the full Q(x) with
    # probability λ_t and x otherwise, drawn per layer, or once per step for the whole network with
    # family_draw="step", so training alternates between the FP network and a fully quantized one.
    lambda_mode: str = "blend"
    # Kurtosis regularization (Shkolnik et al. 2020, "KURE"): adds kurtosis · mean over layers of
    # (κ − kurtosis_target)² to the loss, κ = E[w⁴]/E[w²]² of the (BN-folded) weights per output channel and per
    # tensor. A flat (uniform-like, κ = 1.8) distribution has the smallest max/rms, so every min-max grid's step is
    # small relative to the weights: robustness to grids the training never saw. 0 = off.
    kurtosis: float = 0.0
    kurtosis_target: float = 1.8

    def __post_init__(self) -> None:
        if self.family:
            GridFamily.parse(self.family)  # raises with the allowed axes and values
        if self.lambda_mode not in ("blend", "sample"):
            raise ValueError(f"lambda_mode={self.lambda_mode!r}: choose blend or sample")
        if self.family_draw not in ("layer", "step"):
            raise ValueError(f"family_draw={self.family_draw!r}: choose layer or step")
        if self.prune_granularity not in ("auto", "tensor", "channel", "both"):
            raise ValueError(f"prune_granularity={self.prune_granularity!r}: choose auto, tensor, channel or both")
        if self.bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"bits={self.bits}: choose 4 or 8 (2..8 allowed)")
        if not 0 <= self.lambda_max <= 1:
            raise ValueError(f"lambda_max={self.lambda_max} must lie in [0, 1]")
        if self.warmup_frac < 0 or self.ramp_frac < 0 or self.warmup_frac + self.ramp_frac > 1:
            raise ValueError("warmup_frac and ramp_frac must be ≥ 0 and sum to ≤ 1")
        if not 50 < self.q_end <= self.q_start <= 100:
            raise ValueError(f"need 50 < q_end ({self.q_end}) ≤ q_start ({self.q_start}) ≤ 100")
        if self.prune_every < 1:
            raise ValueError("prune_every must be ≥ 1")
        if self.kurtosis < 0 or not 1.0 <= self.kurtosis_target <= 3.0:
            raise ValueError("kurtosis must be ≥ 0 and kurtosis_target in [1, 3] (1.8: uniform, 3: Gaussian)")

    def grid_family(self) -> GridFamily:
        """The grids training draws from: the parsed ``family``, or the single grid of bits/per_channel/symmetric."""
        if self.family:
            return GridFamily.parse(self.family, self.activation_bits, self.bits, self.per_channel, self.symmetric)
        one = Grid(self.bits, self.per_channel, self.symmetric, narrow=True)
        return GridFamily((one,), (1.0,), self.activation_bits, ("minmax",), (1.0,))

    def prune_mode(self) -> str:
        """Resolve ``prune_granularity="auto"``: both thresholds when the family holds per-channel grids."""
        if self.prune_granularity != "auto":
            return self.prune_granularity
        if not self.family:
            return "tensor"
        return "both" if any(g.per_channel for g in self.grid_family().grids) else "tensor"


@dataclass(frozen=True)
class Recipe:
    """A named starting point: QuantTrimConfig fields, and the epochs it was measured with."""

    config: dict[str, Any]
    epochs: int


RECIPES: dict[str, Recipe] = {
    # measured in examples/quanttrim_study.py (docs/quanttrim.md): robust across the INT4 per-tensor and
    # per-channel grids of ONNX Runtime and a Hailo-like NPU, INT8 unharmed; 10 epochs (FP: 8) keep FP32 accuracy.
    "neutral": Recipe(
        {
            "bits": 4,
            "family": "bits=4;granularity=tensor,channel;range=narrow,full",
            "family_draw": "step",
            "lambda_mode": "sample",
            "lambda_max": 0.75,
        },
        10,
    ),
    # the dataclass defaults: one INT8 per-channel grid, blended λ → 1, per-tensor pruning
    "paper": Recipe({}, 8),
}


# ---------------------------------------------------------------------------------------------------------
# The grid family: the quantizer variants that backends actually use
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """One weight quantizer as a backend builds it.

    ``narrow``: symmetric grid ±(2^(b−1)−1) with scale max|w|/qmax (TFLite, simnpu's Hailo-like profile); full:
    −2^(b−1)…2^(b−1)−1 with scale max|w|/((qmax−qmin)/2) (ONNX Runtime's INT4: −8…7, max|w|/7.5). ``pow2``: the
    scale rounded up to a power of two (fixed-point NPUs). ``rounding``: ``even`` (half to even, numpy/ORT) or
    ``away`` (half away from zero, C's round and many NPU compilers).
    """

    bits: int
    per_channel: bool
    symmetric: bool = True
    narrow: bool = True
    pow2: bool = False
    rounding: str = "even"

    def qrange(self) -> tuple[int, int]:
        if not self.symmetric:
            return 0, 2**self.bits - 1
        m = 2 ** (self.bits - 1) - 1
        return (-m, m) if self.narrow else (-m - 1, m)

    @property
    def name(self) -> str:
        parts = [
            f"w{self.bits}",
            "pc" if self.per_channel else "pt",
            ("sym-" + ("narrow" if self.narrow else "full")) if self.symmetric else "asym",
            "pow2" if self.pow2 else "float",
            self.rounding,
        ]
        return "-".join(parts)


# axis → its allowed values; the text form is "axis=v1,v2[:weight];axis=…"
_FAMILY_AXES: dict[str, tuple[str, ...]] = {
    "bits": ("2", "3", "4", "5", "6", "7", "8"),
    "granularity": ("tensor", "channel"),
    "weights": ("sym", "asym"),
    "range": ("narrow", "full"),
    "scale": ("float", "pow2"),
    "rounding": ("even", "away"),
    "act": ("minmax", "percentile"),
}
DEFAULT_FAMILY = "bits=4,8;granularity=tensor,channel;range=narrow,full;scale=float,pow2;rounding=even,away"


@dataclass(frozen=True)
class GridFamily:
    """A weighted set of weight grids (every combination of the axes' values) and activation-range estimators.

    ``parse("bits=4:3,8:1;granularity=tensor,channel")`` draws 4-bit grids three times as often as 8-bit ones;
    axes left out take the config's ``bits``/``per_channel``/``symmetric`` (``parse``'s defaults: 8, per channel,
    symmetric) and narrow range, float scale, round half to even, min-max activation ranges.
    ``"default"`` is :data:`DEFAULT_FAMILY`.
    """

    grids: tuple[Grid, ...]
    weights: tuple[float, ...]
    activation_bits: int = 8
    act_ranges: tuple[str, ...] = ("minmax",)
    act_weights: tuple[float, ...] = (1.0,)

    @staticmethod
    def parse(
        text: str, activation_bits: int = 8, bits: int = 8, per_channel: bool = True, symmetric: bool = True
    ) -> GridFamily:
        if text.strip() == "default":
            text = DEFAULT_FAMILY
        axes: dict[str, list[tuple[str, float]]] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            key, sep, values = part.partition("=")
            key = key.strip()
            if not sep or key not in _FAMILY_AXES:
                raise ValueError(
                    f"grid family {text!r}: {part!r} is not axis=values; axes: {', '.join(_FAMILY_AXES)} "
                    f"(e.g. {DEFAULT_FAMILY!r})"
                )
            if key in axes:
                raise ValueError(f"grid family {text!r}: axis {key!r} given twice")
            chosen: list[tuple[str, float]] = []
            for item in filter(None, (v.strip() for v in values.split(","))):
                value, _, weight = item.partition(":")
                if value not in _FAMILY_AXES[key]:
                    raise ValueError(f"grid family: {key}={value!r}; choose from {', '.join(_FAMILY_AXES[key])}")
                try:
                    w = float(weight) if weight else 1.0
                except ValueError:
                    raise ValueError(f"grid family: weight {weight!r} of {key}={value} is not a number") from None
                if w <= 0:
                    raise ValueError(f"grid family: weight of {key}={value} must be > 0")
                chosen.append((value, w))
            if not chosen:
                raise ValueError(f"grid family: axis {key!r} has no value")
            axes[key] = chosen
        get = lambda k, d: axes.get(k, [(d, 1.0)])  # noqa: E731
        grids, weights = [], []
        for (b, wb), (g, wg), (sy, ws), (r, wr), (sc, wsc), (ro, wro) in itertools.product(
            get("bits", str(bits)),
            get("granularity", "channel" if per_channel else "tensor"),
            get("weights", "sym" if symmetric else "asym"),
            get("range", "narrow"),
            get("scale", "float"),
            get("rounding", "even"),
        ):
            grid = Grid(int(b), g == "channel", sy == "sym", r == "narrow" or sy != "sym", sc == "pow2", ro)
            if grid in grids:  # asym collapses the range axis
                weights[grids.index(grid)] += wb * wg * ws * wr * wsc * wro
                continue
            grids.append(grid)
            weights.append(wb * wg * ws * wr * wsc * wro)
        acts = get("act", "minmax")
        return GridFamily(
            tuple(grids),
            tuple(w / sum(weights) for w in weights),
            activation_bits,
            tuple(a for a, _ in acts),
            tuple(w / sum(w for _, w in acts) for _, w in acts),
        )

    def draw(self, gen: torch.Generator) -> Grid:
        if len(self.grids) == 1:
            return self.grids[0]
        i = int(torch.multinomial(torch.tensor(self.weights), 1, generator=gen))
        return self.grids[i]

    def draw_act(self, gen: torch.Generator) -> str:
        if len(self.act_ranges) == 1:
            return self.act_ranges[0]
        return self.act_ranges[int(torch.multinomial(torch.tensor(self.act_weights), 1, generator=gen))]

    def describe(self) -> dict[str, Any]:
        """What the exported metadata records: every grid with its draw probability."""
        return {
            "grids": {g.name: round(w, 6) for g, w in zip(self.grids, self.weights, strict=True)},
            "activation_ranges": dict(zip(self.act_ranges, [round(w, 6) for w in self.act_weights], strict=True)),
        }


# ---------------------------------------------------------------------------------------------------------
# Quantizer and schedule
# ---------------------------------------------------------------------------------------------------------
def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid: symmetric uses the narrow signed range [−(2^(b−1)−1), 2^(b−1)−1], asymmetric [0, 2^b−1]."""
    return Grid(bits, per_channel=False, symmetric=symmetric).qrange()


def scale_zero_point(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    per_channel: bool,
    lo: torch.Tensor | None = None,
    hi: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero-point of the narrow-range grid, per output channel (dim 0) or per tensor."""
    return grid_scale_zero(x, Grid(bits, per_channel, symmetric), lo, hi)


def grid_scale_zero(
    x: torch.Tensor, grid: Grid, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero-point of ``grid`` (range, power-of-two rounding), shaped to broadcast against x."""
    qmin, qmax = grid.qrange()
    if lo is None or hi is None:
        if grid.per_channel and x.dim() > 1:
            flat = x.detach().reshape(x.shape[0], -1)
            lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
        else:
            lo, hi = x.detach().min(), x.detach().max()
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    if grid.symmetric:
        amax = torch.maximum(hi.abs(), lo.abs())
        scale = amax / (qmax if grid.narrow else (qmax - qmin) / 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.clamp(scale, min=1e-12)
    if grid.pow2:
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    zero = torch.zeros_like(scale) if grid.symmetric else torch.round(qmin - lo / scale)
    if scale.dim() == 1 and x.dim() > 1:
        shape = (-1,) + (1,) * (x.dim() - 1)
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return scale, zero


def round_half(x: torch.Tensor, rounding: str) -> torch.Tensor:
    """Round half to even (``torch.round``, numpy, ONNX Runtime) or half away from zero (C ``round``)."""
    if rounding == "away":
        return torch.sign(x) * torch.floor(x.abs() + 0.5)
    return torch.round(x)


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: int,
    qmax: int,
    lam: float,
    rounding: str = "even",
) -> torch.Tensor:
    """x + λ·stopgrad(Q(x) − x) with a clipped straight-through gradient (1 inside the range, 1 − λ outside)."""
    if lam == 0.0:
        return x
    lo, hi = (qmin - zero) * scale, (qmax - zero) * scale
    q = (torch.clamp(round_half(x / scale, rounding) + zero, qmin, qmax) - zero) * scale
    x_clip = torch.minimum(torch.maximum(x, lo), hi)
    ste = x_clip + (q - x_clip).detach()
    return x + lam * (ste - x) if lam < 1.0 else ste


def lambda_at(step: int, total_steps: int, cfg: QuantTrimConfig) -> float:
    """λ_t: 0 during warm-up, λ_max·u⁴ over the ramp (u from 0 to 1), λ_max after."""
    if not cfg.fake_quant or total_steps <= 0:
        return 0.0
    w, r = cfg.warmup_frac * total_steps, cfg.ramp_frac * total_steps
    if step < w:
        return 0.0
    if r <= 0 or step >= w + r:
        return cfg.lambda_max
    return cfg.lambda_max * ((step - w) / r) ** 4


def percentile_at(step: int, total_steps: int, cfg: QuantTrimConfig) -> float:
    """q_t: q_start before the ramp, linear to q_end across it, q_end after."""
    w, r = cfg.warmup_frac * total_steps, cfg.ramp_frac * total_steps
    if step <= w:
        return cfg.q_start
    if r <= 0 or step >= w + r:
        return cfg.q_end
    return cfg.q_start + (cfg.q_end - cfg.q_start) * (step - w) / r


# ---------------------------------------------------------------------------------------------------------
# Parametrization and controller
# ---------------------------------------------------------------------------------------------------------
class _WeightFakeQuant(nn.Module):
    """Parametrization of a Conv/Linear weight: fake-quantizes the (BN-folded) weight with the current λ."""

    def __init__(self, cfg: QuantTrimConfig, bn: nn.BatchNorm2d | None, grid: Grid | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.bn = [bn]  # a list, so the BN is not registered as a sub-module of the parametrization
        self.lam = 0.0
        self.enabled = True
        self.grid = grid or cfg.grid_family().grids[0]  # the controller draws a grid from the family every step

    def fold_factor(self, w: torch.Tensor) -> torch.Tensor | None:
        bn = self.bn[0]
        if bn is None or not self.cfg.fold_bn:
            return None
        gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
        f = gamma / torch.sqrt(bn.running_var + bn.eps)
        return f.reshape((-1,) + (1,) * (w.dim() - 1))

    def folded(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The deployed (BN-folded) weight and the fold factor that maps back to ``w`` (None: nothing to fold)."""
        f = self.fold_factor(w)
        return (w * f if f is not None else w), f

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.lam == 0.0:
            return w
        target, f = self.folded(w)
        scale, zero = grid_scale_zero(target, self.grid)
        qmin, qmax = self.grid.qrange()
        out = fake_quantize(target, scale, zero, qmin, qmax, self.lam, self.grid.rounding)
        return out / f if f is not None else out


class _ActivationFakeQuant:
    """Forward pre-hook: fake-quantizes a layer's input, asymmetric per tensor, with EMA ranges.

    Two range estimators are tracked, as calibrators differ: min-max, and the 0.01/99.99 percentiles; the controller
    picks which one a step uses (``act`` axis of the grid family).
    """

    PERCENTILE = 0.9999

    def __init__(self, cfg: QuantTrimConfig) -> None:
        self.cfg = cfg
        self.lam = 0.0
        self.enabled = True
        self.mode = "minmax"
        self.ranges: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _update(self, key: str, lo: torch.Tensor, hi: torch.Tensor) -> None:
        m = self.cfg.activation_momentum
        old = self.ranges.get(key)
        self.ranges[key] = (lo, hi) if old is None else (m * old[0] + (1 - m) * lo, m * old[1] + (1 - m) * hi)

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        if module.training:
            flat = x.detach().flatten()
            self._update("minmax", flat.min(), flat.max())
            if self.mode == "percentile" or "percentile" in self.ranges:  # tracked from its first draw on
                p = self.PERCENTILE
                self._update("percentile", quantile_large(flat, 1 - p), quantile_large(flat, p))
        rng = self.ranges.get(self.mode) or self.ranges.get("minmax")
        if not self.enabled or self.lam == 0.0 or rng is None:
            return args
        grid = Grid(self.cfg.activation_bits, per_channel=False, symmetric=False)
        scale, zero = grid_scale_zero(x, grid, *rng)
        qmin, qmax = grid.qrange()
        return (fake_quantize(x, scale, zero, qmin, qmax, self.lam), *args[1:])


class QuantTrimController:
    """Owns the schedule: ``step(t)`` updates λ and prunes; ``state()`` is what the training log records."""

    def __init__(self, model: nn.Module, cfg: QuantTrimConfig, total_steps: int) -> None:
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.layers: list[tuple[str, nn.Module, _WeightFakeQuant]] = []
        self.act_hooks: list[_ActivationFakeQuant] = []
        self.handles: list[Any] = []
        self.lam = 0.0
        self.q = cfg.q_start
        self.taus: dict[str, float] = {}
        self.bounds: dict[str, torch.Tensor] = {}
        self.family = cfg.grid_family()
        self.prune_granularity = cfg.prune_mode()  # resolved once: both parse the family text
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.draws: dict[str, int] = {}  # grid name → layer-steps trained against it (λ > 0)

    def step(self, t: int) -> None:
        self.lam = lambda_at(t, self.total_steps, self.cfg)
        per_step = self.cfg.family_draw == "step"
        shared = self.family.draw(self.gen) if per_step else None
        sample = self.cfg.lambda_mode == "sample"
        on = float(torch.rand((), generator=self.gen)) < self.lam if sample and per_step else True
        for _, _, p in self.layers:
            p.grid = shared or self.family.draw(self.gen)
            if not sample:
                p.lam = self.lam
            else:
                p.lam = 1.0 if (on if per_step else float(torch.rand((), generator=self.gen)) < self.lam) else 0.0
            if p.lam > 0:
                self.draws[p.grid.name] = self.draws.get(p.grid.name, 0) + 1
        act = self.family.draw_act(self.gen)
        for h in self.act_hooks:
            h.lam = self.lam
            h.mode = act
        self.q = percentile_at(t, self.total_steps, self.cfg)
        if self.cfg.prune and self.q < 100.0 and t % self.cfg.prune_every == 0:
            self.prune(self.q)

    def regularizer(self) -> torch.Tensor:
        """The kurtosis penalty to add to the loss (a 0 tensor when ``kurtosis`` is 0)."""
        if self.cfg.kurtosis <= 0 or not self.layers:
            return torch.zeros(())
        terms = []
        for _, module, p in self.layers:
            target, _ = p.folded(parametrize_original(module))
            terms.append((kurtosis(target.flatten()) - self.cfg.kurtosis_target) ** 2)
            if target.dim() > 1 and target[0].numel() >= 4:
                terms.append(((kurtosis(target.reshape(target.shape[0], -1)) - self.cfg.kurtosis_target) ** 2).mean())
        return self.cfg.kurtosis * torch.stack(terms).mean()

    @torch.no_grad()
    def prune(self, q: float) -> dict[str, float]:
        """Clip each layer's (folded) weights at ±τ (q-th percentile of |W| per tensor, per output channel, or the
        smaller of both: ``prune_granularity``); returns the mean τ per layer."""
        for name, module, p in self.layers:
            w = parametrize_original(module)
            target, f = p.folded(w)
            self.bounds[name] = clip_bound(target, self.prune_granularity, q)
            _clip(w, f, self.bounds[name])
            b = self.bounds[name]
            self.taus[name] = float(b[torch.isfinite(b)].mean()) if torch.isfinite(b).any() else float("inf")
        return dict(self.taus)

    def state(self) -> dict[str, float]:
        clipped, kurt = [], []
        for name, module, p in self.layers:
            target, _ = p.folded(parametrize_original(module).detach())
            kurt.append(float(kurtosis(target.flatten())))
            if name in self.taus:
                clipped.append(float((target.abs() >= self.bounds[name] * (1 - 1e-6)).float().mean()))
        return {
            "lambda": self.lam,
            "prune_percentile": self.q,
            "tau_mean": sum(self.taus.values()) / len(self.taus) if self.taus else float("nan"),
            "clipped_fraction": sum(clipped) / len(clipped) if clipped else 0.0,
            "weight_kurtosis": sum(kurt) / len(kurt) if kurt else float("nan"),  # 1.8 uniform, 3 Gaussian
        }

    def describe(self) -> dict[str, Any]:
        """The exported metadata: config, the family's grids with their draw probabilities, and the draws made."""
        return {
            **asdict(self.cfg),
            "total_steps": self.total_steps,
            "layers": len(self.layers),
            "prune_granularity_used": self.prune_granularity,
            "grid_family": self.family.describe(),
            "grid_draws": dict(sorted(self.draws.items())),
        }

    @contextlib.contextmanager
    def exporting(self) -> Iterator[None]:
        """Disable fake quantization so the exported graph holds the plain FP (pruned) weights."""
        params = [p for _, _, p in self.layers]
        saved = [p.enabled for p in params] + [h.enabled for h in self.act_hooks]
        for obj in [*params, *self.act_hooks]:
            obj.enabled = False
        try:
            yield
        finally:
            for obj, was in zip([*params, *self.act_hooks], saved, strict=True):
                obj.enabled = was

    def remove(self) -> nn.Module:
        """Strip Quant-Trim from the model, keeping the trained (pruned, FP) weights."""
        for _, module, _ in self.layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        for h in self.handles:
            h.remove()
        self.layers.clear()
        self.act_hooks.clear()
        if hasattr(self.model, "quanttrim"):
            del self.model.quanttrim
        return self.model


def kurtosis(w: torch.Tensor) -> torch.Tensor:
    """E[w⁴]/E[w²]² along the last dimension (about 0, as symmetric grids see the weights): 1.8 uniform, 3 Gaussian."""
    m2 = (w * w).mean(dim=-1)
    return (w**4).mean(dim=-1) / (m2 * m2).clamp(min=1e-20)


def parametrize_original(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


def _bn_pairs(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Conv2d → the BatchNorm2d registered right after it with matching channels (torch's export folds these)."""
    pairs: dict[str, nn.BatchNorm2d] = {}
    mods = list(model.named_modules())
    for (name, m), (_, nxt) in itertools.pairwise(mods):
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels:
            pairs[name] = nxt
    return pairs


def prepare(model: nn.Module, config: QuantTrimConfig | None = None, total_steps: int = 1) -> nn.Module:
    """Wrap every Conv2d/Linear of ``model`` in place; the controller is ``model.quanttrim``."""
    cfg = config or QuantTrimConfig()
    if hasattr(model, "quanttrim"):
        raise ValueError("model is already prepared for Quant-Trim")
    ctl = QuantTrimController(model, cfg, total_steps)
    pairs = _bn_pairs(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d | nn.Linear):
            p = _WeightFakeQuant(cfg, pairs.get(name), ctl.family.grids[0])
            parametrize.register_parametrization(module, "weight", p, unsafe=True)
            ctl.layers.append((name, module, p))
            if cfg.quantize_activations:
                hook = _ActivationFakeQuant(cfg)
                ctl.handles.append(module.register_forward_pre_hook(hook))
                ctl.act_hooks.append(hook)
    if not ctl.layers:
        raise ValueError("Quant-Trim found no Conv2d or Linear layer to wrap")
    model.quanttrim = ctl
    return model


@torch.no_grad()
def posthoc_clip(model: nn.Module, q: float = 99.7, fold_bn: bool = True) -> dict[str, float]:
    """Ablation: clip a trained FP model's weights once at the q-th percentile (no training). Returns τ per layer."""
    pairs = _bn_pairs(model) if fold_bn else {}
    taus = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            f = _WeightFakeQuant(QuantTrimConfig(fold_bn=fold_bn), pairs.get(name)).fold_factor(m.weight)
            taus[name] = clip_at_quantile(m.weight, f, q)
    return taus


@torch.no_grad()
def clip_at_quantile(w: torch.Tensor, fold: torch.Tensor | None, q: float, mode: str = "tensor") -> float:
    """Clip ``w`` in place so its (BN-folded, when ``fold`` is given) magnitudes stay ≤ τ, the q-th percentile of
    |W| per tensor, per output channel, or the smaller of both (``mode``). Returns the mean τ."""
    tau = clip_bound(w * fold if fold is not None else w, mode, q)
    _clip(w, fold, tau)
    finite = tau[torch.isfinite(tau)]
    return float(finite.mean()) if finite.numel() else float("inf")


def _clip(w: torch.Tensor, fold: torch.Tensor | None, tau: torch.Tensor) -> None:
    """Clip ``w`` in place so |W·fold| ≤ τ."""
    bound = tau / fold.abs().clamp(min=1e-12) if fold is not None else tau
    w.copy_(torch.maximum(torch.minimum(w, bound), -bound))


def clip_bound(target: torch.Tensor, mode: str, q: float) -> torch.Tensor:
    """τ for ``clip_at_quantile``: a scalar tensor (per tensor) or shaped (C, 1, …) per output channel.

    A channel's own percentile is used only when the channel holds enough weights for its top (100 − q) % to be
    at least one weight (n ≥ 100/(100 − q): 334 at q = 99.7). Below that the "tail" of a 9-weight depthwise
    kernel would be its largest weight pulled onto the second, which moves several weights onto the grid's edge
    where full-range grids (−8…7) saturate; such channels keep the tensor's τ alone ("channel": no clipping).
    """
    a = target.detach().abs().float()
    if mode == "tensor" or a.dim() < 2:
        return quantile_large(a.flatten(), q / 100.0)
    rows = a.reshape(a.shape[0], -1)
    if q >= 100.0 or rows.shape[1] < 100.0 / (100.0 - q):
        per_row = torch.full((a.shape[0],), float("inf"))
    else:
        per_row = row_quantile(rows, q / 100.0)
    per_row = per_row.reshape((-1,) + (1,) * (a.dim() - 1))
    return per_row if mode == "channel" else torch.minimum(per_row, quantile_large(a.flatten(), q / 100.0))


def row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``torch.quantile(x, q, dim=1)`` (linear interpolation) via ``kthvalue``, exact at any size."""
    n = x.shape[1]
    pos = q * (n - 1)
    lo = int(pos)
    frac = pos - lo
    a = torch.kthvalue(x, lo + 1, dim=1).values
    if frac == 0.0 or lo + 1 >= n:
        return a
    b = torch.kthvalue(x, lo + 2, dim=1).values
    return a + (b - a) * frac


def quantile_large(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q)`` (linear interpolation) for a 1-D tensor of any size.

    ``torch.quantile`` refuses inputs above 2**24 elements (a 4096×4096 linear layer already has 2**24), so this
    takes the two order statistics around position q·(n−1) with ``kthvalue``: exact, no sampling, O(n) memory.
    """
    n = x.numel()
    if n == 0:
        raise ValueError("quantile of an empty tensor")
    pos = q * (n - 1)
    lo = int(pos)
    frac = pos - lo
    a = torch.kthvalue(x, lo + 1).values
    if frac == 0.0 or lo + 1 >= n:
        return a
    b = torch.kthvalue(x, lo + 2).values
    return a + (b - a) * frac

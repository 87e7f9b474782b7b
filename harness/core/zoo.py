"""A model zoo built offline from plain torch definitions: paper-scale networks for speed/energy benchmarks.

torchvision's wheel does not import beside the pinned CPU torch here (and timm needs torchvision), so the layouts
are written out below. Weights are random unless a state dict is given; a random-weight model carries ONNX
metadata that every row and report repeats: its accuracy means nothing, its latency, energy and size do.

    build("resnet50", "zoo/resnet50.onnx")                       # 224×224, 1000 classes
    build("vit_s14", "zoo/vit_s14.onnx")                         # DINOv2 ViT-S/14 layout, 224×224
    build("seg_mnv3", "zoo/seg.onnx", input_size=256)            # LRASPP-MobileNetV3-Large-like segmentation
    build("nanosam2_resnet18", "zoo/enc.onnx", input_size=1024)  # NanoSAM2-like ResNet-18 image encoder

Every builder takes size parameters (``width``, ``depth``, …) so tests can build the same layout small. torch is
imported inside the functions (``qtbench[train]``); ``import harness`` never loads it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtbench.harness.core.errors import ConfigError

RANDOM_WEIGHTS_NOTE = "random weights: latency, energy and size only; accuracy meaningless"
OPSET = 17
# ONNX metadata keys written by build() and read by the harness (qtbench.harness.run.cell, qtbench.harness.core.tasks)
META_ZOO = "qtbench.zoo"
META_WEIGHTS = "qtbench.weights"  # "random" or "state_dict sha256=<hex>"
META_NOTE = "qtbench.note"
META_TASK = "qtbench.task"  # JSON {output: task}: the default tasks when a sweep names none


@dataclass(frozen=True)
class ZooModel:
    """How to make one zoo network: its module factory, default input size, outputs and their default tasks."""

    name: str
    description: str
    make: Callable[..., Any]
    input_size: int
    outputs: tuple[str, ...]
    tasks: dict[str, str]
    patch: int = 1  # input_size must be a multiple of this


def _resnet(block: str, layers: tuple[int, ...], width: int = 64, num_classes: int = 1000) -> Any:
    """torchvision's ResNet layout (v1.5: stride in the 3×3 conv of a bottleneck)."""
    from torch import nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin: int, c: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = _down(cin, c, stride)

        def forward(self, x: Any) -> Any:
            idt = self.downsample(x) if self.downsample is not None else x
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + idt)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, c: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c * 4)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = _down(cin, c * 4, stride)

        def forward(self, x: Any) -> Any:
            idt = self.downsample(x) if self.downsample is not None else x
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + idt)

    def _down(cin: int, cout: int, stride: int) -> Any:
        if stride == 1 and cin == cout:
            return None
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    blk = Bottleneck if block == "bottleneck" else Basic

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, stages = width, []
            for i, n in enumerate(layers):
                c = width * 2**i
                stage = []
                for j in range(n):
                    stage.append(blk(cin, c, 2 if (j == 0 and i > 0) else 1))
                    cin = c * blk.expansion
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.channels = [width * 2**i * blk.expansion for i in range(4)]
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes) if num_classes else None

        def features(self, x: Any) -> list[Any]:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            f1 = self.layer1(x)
            f2 = self.layer2(f1)
            f3 = self.layer3(f2)
            return [f1, f2, f3, self.layer4(f3)]

        def forward(self, x: Any) -> Any:
            return self.fc(self.avgpool(self.features(x)[-1]).flatten(1))

    return ResNet()


def resnet50(width: int = 64, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000) -> Any:
    """ResNet-50 (25.6 M parameters at the defaults): one output, ``logits`` N×num_classes."""
    return _resnet("bottleneck", tuple(layers), width, num_classes)


def vit_s14(
    input_size: int = 224,
    dim: int = 384,
    depth: int = 12,
    heads: int = 6,
    patch: int = 14,
    mlp_ratio: float = 4.0,
    layerscale: float = 0.1,
) -> Any:
    """DINOv2 ViT-S/14 backbone layout (22 M parameters): patch 14, dim 384, depth 12, 6 heads, LayerScale, no
    register tokens. Outputs ``embedding`` (the normed CLS token, N×dim) and ``patch_tokens`` (N×P×dim).

    Attention is written as MatMul/Softmax so every backend sees the same plain graph. ``layerscale`` is the
    LayerScale init (DINOv2 uses 1e-5 at the start of training; 0.1 keeps random blocks from being identities).
    """
    import torch
    from torch import nn

    n_patches = (input_size // patch) ** 2

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, dim * 3)
            self.proj = nn.Linear(dim, dim)
            self.scale = (dim // heads) ** -0.5

        def forward(self, x: Any) -> Any:
            b, n, _ = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
            return self.proj((attn @ v).transpose(1, 2).reshape(b, n, dim))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1 = nn.LayerNorm(dim, eps=1e-6)
            self.attn = Attention()
            self.ls1 = nn.Parameter(torch.full((dim,), layerscale))
            self.norm2 = nn.LayerNorm(dim, eps=1e-6)
            hidden = int(dim * mlp_ratio)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.ls2 = nn.Parameter(torch.full((dim,), layerscale))

        def forward(self, x: Any) -> Any:
            x = x + self.ls1 * self.attn(self.norm1(x))
            return x + self.ls2 * self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Conv2d(3, dim, patch, patch)
            self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(depth)])
            self.norm = nn.LayerNorm(dim, eps=1e-6)

        def forward(self, x: Any) -> tuple[Any, Any]:
            t = self.patch_embed(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
            t = self.norm(self.blocks(t))
            return t[:, 0], t[:, 1:]

    return ViT()


# MobileNetV3-Large (in, kernel, expanded, out, squeeze-excite, hardswish, stride, dilation) — torchvision's table,
# the last stage dilated (stride 16 output) as for segmentation.
_MNV3_LARGE = [
    (16, 3, 16, 16, False, False, 1, 1),
    (16, 3, 64, 24, False, False, 2, 1),
    (24, 3, 72, 24, False, False, 1, 1),
    (24, 5, 72, 40, True, False, 2, 1),
    (40, 5, 120, 40, True, False, 1, 1),
    (40, 5, 120, 40, True, False, 1, 1),  # stride 8: the LRASPP low-level features
    (40, 3, 240, 80, False, True, 2, 1),
    (80, 3, 200, 80, False, True, 1, 1),
    (80, 3, 184, 80, False, True, 1, 1),
    (80, 3, 184, 80, False, True, 1, 1),
    (80, 3, 480, 112, True, True, 1, 1),
    (112, 3, 672, 112, True, True, 1, 1),
    (112, 5, 672, 160, True, True, 1, 2),
    (160, 5, 960, 160, True, True, 1, 2),
    (160, 5, 960, 160, True, True, 1, 2),
]


def seg_mnv3(num_classes: int = 21, width: float = 1.0, inter_channels: int = 128) -> Any:
    """LRASPP on a MobileNetV3-Large backbone (like torchvision's ``lraspp_mobilenet_v3_large``, ~3.2 M
    parameters): one output ``out``, N×num_classes×H×W per-pixel class logits at the input resolution."""
    from torch import nn
    from torch.nn import functional as F

    def ch(c: int) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    class SE(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            s = ch(c // 4)
            self.fc1, self.fc2 = nn.Conv2d(c, s, 1), nn.Conv2d(s, c, 1)

        def forward(self, x: Any) -> Any:
            return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))

    def cbr(cin: int, cout: int, k: int, s: int = 1, d: int = 1, groups: int = 1, act: Any = None) -> Any:
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2 * d, d, groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, act) if act is not None else nn.Sequential(*layers)

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, s: int, d: int) -> None:
            super().__init__()
            act = nn.Hardswish() if hs else nn.ReLU()
            cin, exp, cout = ch(cin), ch(exp), ch(cout)
            layers = [] if exp == cin else [cbr(cin, exp, 1, act=act)]
            layers.append(cbr(exp, exp, k, s, d, exp, act=act))
            if se:
                layers.append(SE(exp))
            layers.append(cbr(exp, cout, 1))
            self.block = nn.Sequential(*layers)
            self.residual = s == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = self.block(x)
            return x + y if self.residual else y

    class LRASPP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = cbr(3, ch(16), 3, 2, act=nn.Hardswish())
            blocks = [InvertedResidual(*row) for row in _MNV3_LARGE]
            self.low = nn.Sequential(*blocks[:6])
            self.high = nn.Sequential(*blocks[6:], cbr(ch(160), ch(960), 1, act=nn.Hardswish()))
            low_c, high_c = ch(40), ch(960)
            self.cbr = cbr(high_c, inter_channels, 1, act=nn.ReLU())
            self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_c, inter_channels, 1), nn.Sigmoid())
            self.low_classifier = nn.Conv2d(low_c, num_classes, 1)
            self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

        def forward(self, x: Any) -> Any:
            low = self.low(self.stem(x))
            high = self.high(low)
            y = self.cbr(high) * self.scale(high)
            y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
            y = self.low_classifier(low) + self.high_classifier(y)
            return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return LRASPP()


def nanosam2_resnet18(width: int = 64, embed_dim: int = 256) -> Any:
    """NanoSAM2-like image encoder: a ResNet-18 trunk distilled (in NanoSAM2) to stand in for SAM2's Hiera
    encoder. Outputs follow SAM2's image encoder: ``image_embed`` (embed_dim at stride 16; 256×64×64 at 1024²),
    ``high_res_feats_0`` (embed_dim/8 at stride 4) and ``high_res_feats_1`` (embed_dim/4 at stride 8)."""
    from torch import nn
    from torch.nn import functional as F

    trunk = _resnet("basic", (2, 2, 2, 2), width, num_classes=0)
    c1, c2, c3, c4 = trunk.channels

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk
            self.lateral3 = nn.Conv2d(c3, embed_dim, 1)
            self.lateral4 = nn.Conv2d(c4, embed_dim, 1)
            self.neck = nn.Sequential(
                nn.Conv2d(embed_dim, embed_dim, 3, 1, 1), nn.GELU(), nn.Conv2d(embed_dim, embed_dim, 1)
            )
            self.hr0 = nn.Conv2d(c1, embed_dim // 8, 1)
            self.hr1 = nn.Conv2d(c2, embed_dim // 4, 1)

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            f1, f2, f3, f4 = self.trunk.features(x)
            top = F.interpolate(self.lateral4(f4), size=f3.shape[-2:], mode="nearest")
            return self.neck(self.lateral3(f3) + top), self.hr0(f1), self.hr1(f2)

    return Encoder()


ZOO: dict[str, ZooModel] = {
    "resnet50": ZooModel(
        "resnet50",
        "ResNet-50 classifier (torchvision layout)",
        resnet50,
        224,
        ("logits",),
        {"logits": "classification"},
    ),
    "vit_s14": ZooModel(
        "vit_s14",
        "ViT-S/14, DINOv2 backbone layout (CLS embedding + patch tokens)",
        vit_s14,
        224,
        ("embedding", "patch_tokens"),
        {"embedding": "tensor", "patch_tokens": "tensor"},
        patch=14,
    ),
    "seg_mnv3": ZooModel(
        "seg_mnv3", "LRASPP-MobileNetV3-Large-like segmentation net", seg_mnv3, 224, ("out",), {"out": "segmentation"}
    ),
    "nanosam2_resnet18": ZooModel(
        "nanosam2_resnet18",
        "NanoSAM2-like ResNet-18 image encoder (SAM2 encoder outputs)",
        nanosam2_resnet18,
        1024,
        ("image_embed", "high_res_feats_0", "high_res_feats_1"),
        {"image_embed": "tensor", "high_res_feats_0": "tensor", "high_res_feats_1": "tensor"},
        patch=32,
    ),
}


def get(name: str) -> ZooModel:
    if name not in ZOO:
        raise ConfigError(f"zoo model {name!r} is unknown; the zoo has {', '.join(sorted(ZOO))}")
    return ZOO[name]


def make_module(name: str, *, input_size: int | None = None, seed: int = 0, **params: Any) -> Any:
    """The torch module of zoo model ``name`` in eval mode, seeded (same seed ⇒ same weights), for reuse in
    benchmarks that do not go through ONNX. ``params`` are the builder's size arguments (``width``, ``depth``…)."""
    import torch

    zm = get(name)
    torch.manual_seed(seed)
    import inspect

    accepted = inspect.signature(zm.make).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"zoo model {name!r}: unknown parameter {unknown[0]!r}; it takes {', '.join(accepted)}")
    if "input_size" in accepted:
        params["input_size"] = input_size or zm.input_size
    module = zm.make(**params)
    _condition(module, params.get("input_size", input_size or zm.input_size), seed)
    return module.eval()


def _condition(module: Any, input_size: int, seed: int) -> None:
    """Make a random network behave like a trained one numerically: convolutions get torchvision's init
    (Kaiming normal, fan-out; zero biases, so per-pixel classifiers do not predict their bias everywhere),
    BatchNorm gets random affine parameters and running statistics measured on seeded N(0, 1) inputs (default
    statistics would let activations shrink or blow up with depth). Activation ranges then have the spread
    quantization meets in practice, and a segmentation net's masks vary across the image."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed + 1234)
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration passes
        module.train()
        x = torch.randn(4, 3, input_size, input_size, generator=g)
        module(x)
        module.eval()


def build(
    name: str,
    out_path: str | Path,
    *,
    input_size: int | None = None,
    seed: int = 0,
    state_dict: str | Path | dict[str, Any] | None = None,
    dynamic_batch: bool = True,
    **params: Any,
) -> Path:
    """Export zoo model ``name`` to ONNX (opset 17, input ``input`` N×3×S×S) at ``out_path`` and return the path.

    Random weights (seeded) unless ``state_dict`` (a mapping or a ``torch.save`` file) is given; it is loaded
    strictly, so a mismatched layout fails here, naming the missing/unexpected keys. The ONNX metadata records
    the zoo name, parameters, weights and the default task per output (``qtbench.task``).
    """
    import onnx
    import torch

    zm = get(name)
    size = input_size or zm.input_size
    if size % zm.patch:
        raise ConfigError(f"zoo model {name!r}: input_size {size} must be a multiple of {zm.patch}")
    module = make_module(name, input_size=size, seed=seed, **params)
    weights = "random"
    if state_dict is not None:
        sd = state_dict
        if not isinstance(sd, dict):
            p = Path(sd)
            if not p.is_file():
                raise ConfigError(f"state dict {p} does not exist")
            sd = torch.load(p, map_location="cpu", weights_only=True)
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise ConfigError(f"state dict does not fit zoo model {name!r}: {' '.join(first[:3])}") from None
        h = hashlib.sha256()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].detach().cpu().numpy().tobytes())
        weights = f"state_dict sha256={h.hexdigest()[:16]}"
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    axes = {n: {0: "N"} for n in ("input", *zm.outputs)} if dynamic_batch else None
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, still exact
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=list(zm.outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    meta = {
        META_ZOO: json.dumps({"name": name, "input_size": size, "seed": seed, **params}, sort_keys=True),
        META_WEIGHTS: weights,
        META_TASK: json.dumps(zm.tasks),
    }
    if weights == "random":
        meta[META_NOTE] = RANDOM_WEIGHTS_NOTE
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = f"qtbench zoo: {zm.description}; {weights} weights"
    onnx.save(model, str(out))
    tmp.unlink(missing_ok=True)
    return out


def model_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props (empty for a file qtbench did not build); reads no weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def synthetic_inputs(path: str | Path, n: int, input_size: int, seed: int = 0, classes: int | None = None) -> Path:
    """``n`` seeded N(0, 1) images (N×3×S×S float32, the scale of normalised camera input) as ``input`` in a
    ``.npz``: enough to time, calibrate and compare against FP32; no accuracy can come from them. With ``classes``,
    also seeded random ``labels`` masks (N×S×S), only to exercise the label path of a segmentation sweep."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = {"input": rng.standard_normal((n, 3, input_size, input_size), dtype=np.float32)}
    if classes:
        arrays["labels"] = rng.integers(0, classes, (n, input_size, input_size)).astype(np.int64)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r}: expected KEY=VALUE, e.g. --param width=32")
        v = yaml.safe_load(value)
        params[key] = tuple(v) if isinstance(v, list) else v
    return params


def cmd_zoo(args: Any) -> int:
    """``qtbench zoo list`` / ``qtbench zoo build NAME... --out DIR``."""
    if args.zoo_command == "list":
        for zm in ZOO.values():
            print(f"{zm.name:<20} {zm.input_size:>5}²  outputs {', '.join(zm.outputs):<50} {zm.description}")
        return 0
    params = _parse_params(args.param or [])
    out_dir = Path(args.out)
    for name in args.names:
        zm = get(name)
        size = args.input_size or zm.input_size
        stem = name if size == zm.input_size and not params else f"{name}_{size}"
        path = build(
            name, out_dir / f"{stem}.onnx", input_size=size, seed=args.seed, state_dict=args.state_dict, **params
        )
        line = f"{path} ({path.stat().st_size / 1e6:.1f} MB"
        if args.data:
            classes = params.get("num_classes", 21) if "segmentation" in zm.tasks.values() else None
            data = synthetic_inputs(out_dir / f"{stem}_data.npz", args.data, size, args.seed, classes)
            line += f"; {args.data} synthetic inputs in {data}"
        weights = "weights from the state dict" if args.state_dict else RANDOM_WEIGHTS_NOTE
        print(f"{line}; {weights})")
    return 0


def register_cli(sub: Any) -> None:
    z = sub.add_parser("zoo", help="build paper-scale ONNX models offline (ResNet-50, ViT-S/14, segmentation, encoder)")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    ls = zsub.add_parser("list", help="the zoo's models, default input sizes and outputs")
    ls.set_defaults(func=cmd_zoo)
    b = zsub.add_parser("build", help="export zoo models to ONNX (opset 17; random weights unless --state-dict)")
    b.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {', '.join(ZOO)}")
    b.add_argument("--out", required=True, help="output folder (NAME.onnx; NAME_SIZE.onnx for another size)")
    b.add_argument("--input-size", type=int, help="square input size (default: the model's own)")
    b.add_argument("--seed", type=int, default=0, help="weight and data seed (default 0)")
    b.add_argument("--state-dict", help="torch.save()d state dict to load instead of random weights")
    b.add_argument("--param", action="append", metavar="KEY=VALUE", help="builder parameter, e.g. width=32")
    b.add_argument("--data", type=int, default=0, metavar="N", help="also write N synthetic inputs (NAME_data.npz)")
    b.set_defaults(func=cmd_zoo)

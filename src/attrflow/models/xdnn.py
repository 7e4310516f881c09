"""X-DNN checks and conversion (Hesse et al., 2021 Sec. 3: Assumption 3.7, Corollary 3.10).

A network is an X-DNN when it is nonnegatively homogeneous, F(a·x) = a·F(x) for a ≥ 0; then
X-Gradient x ⊙ ∂F/∂x equals Integrated Gradients from the zero baseline in one backward pass.
That holds for compositions of bias-free linear maps (conv, linear), two-piece piecewise-linear
activations split at 0 (ReLU, LeakyReLU, PReLU) and pooling that is linear or selects by order
(average, max). Normalisation layers, smooth activations, softmax attention and biases break it.

The structural check here looks at modules only: an operation written inline in some module's
`forward` (a functional `sigmoid`, a constant added to a tensor) is invisible to it. Unknown
leaf module types are therefore reported rather than trusted, and `homogeneity_residual` gives
the numerical check that catches what the structure cannot show.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

# Layers whose forward accepts `bias=None`, so removing their bias leaves a working layer.
_LINEAR_MAPS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

# Parameter-free (or scale-only) leaves that commute with multiplication by a ≥ 0.
_HOMOGENEOUS_LEAVES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,  # the identity in eval mode, which is where attributions are computed
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Upsample,  # nearest and (bi)linear interpolation are linear maps
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)

# Third-party layers (timm, torchvision) recognised by class name, so the message can say why.
_NON_HOMOGENEOUS_NAMES = re.compile(
    r"Norm|GELU|SiLU|Swish|Mish|Sigmoid|Tanh|Softmax|Softplus|ELU|ReLU6|Hard|Attention|"
    r"SqueezeExcite|SEModule|EcaModule|CbamModule",
)


def _display(name: str) -> str:
    return name or "(root)"


def _structural_offenders(net: nn.Module) -> list[tuple[str, str]]:
    """(qualified name, reason) for every module that no bias removal can make homogeneous."""
    found = []
    for name, module in net.named_modules():
        kind = type(module).__name__
        if isinstance(module, _LINEAR_MAPS + _HOMOGENEOUS_LEAVES):
            continue
        if _NON_HOMOGENEOUS_NAMES.search(kind):
            found.append((name, f"{kind} is not nonnegatively homogeneous"))
            continue
        own = [p for p, _ in module.named_parameters(recurse=False)]
        if any("bias" in p for p in own):
            found.append((name, f"{kind} adds its own bias parameter(s) {own} in forward()"))
        elif own:
            found.append(
                (name, f"{kind} uses its own parameters {own} in a forward() that cannot be verified")
            )
        elif not any(True for _ in module.children()):
            found.append((name, f"{kind} is an unknown layer type whose homogeneity cannot be verified"))
    return found


def _biased_layers(net: nn.Module) -> list[str]:
    return [
        name
        for name, module in net.named_modules()
        if isinstance(module, _LINEAR_MAPS) and getattr(module, "bias", None) is not None
    ]


def check_x_dnn(net: nn.Module) -> list[str]:
    """Qualified names of the modules that keep `net` from being an X-DNN (empty when none).

    Both kinds of offender are listed, in module order: layers that are not homogeneous at all
    (BatchNorm, GELU, attention, unknown leaves) and linear layers that still carry a bias.
    """
    offenders = {name for name, _ in _structural_offenders(net)} | set(_biased_layers(net))
    return [_display(name) for name, _ in net.named_modules() if name in offenders]


def to_x_dnn(net: nn.Module) -> nn.Module:
    """A copy of `net` with every bias removed (Hesse et al., 2021 Cor. 3.10); `net` itself is untouched.

    Raises ValueError naming every layer (qualified name and type) that bias removal cannot fix.
    """
    offenders = _structural_offenders(net)
    if offenders:
        listing = "; ".join(f"{_display(name)}: {reason}" for name, reason in offenders)
        raise ValueError(
            f"cannot convert {type(net).__name__} to an X-DNN: removing biases is not enough "
            f"because {len(offenders)} layer(s) break nonnegative homogeneity: {listing}"
        )
    converted = copy.deepcopy(net)
    for name in _biased_layers(converted):
        converted.get_submodule(name).bias = None
    return converted


@torch.no_grad()
def homogeneity_residual(model: nn.Module, x: torch.Tensor, alpha: float) -> float:
    """max |F(o + α(x − o)) − αF(x)| / max |F(x)|, the relative failure of homogeneity.

    `o` is the model's homogeneity origin when it declares one (a `WrappedModel` of an X-DNN:
    its normalisation mean in pixel space), else 0. Exactly homogeneous networks give ~1e-7
    in float32; ordinary networks give values of order 1.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be nonnegative, got {alpha}")
    origin = getattr(model, "homogeneity_origin", None)
    origin = torch.zeros_like(x) if origin is None else origin.to(x).expand_as(x)
    reference = model(x)
    scaled = model(origin + alpha * (x - origin))
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return float((scaled - alpha * reference).abs().max() / scale)

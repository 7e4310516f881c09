"""Layer-wise Relevance Propagation (Bach et al., 2015; Montavon et al., 2017/2019) through zennit.

zennit (Anders et al., 2021) is the maintained implementation of LRP's rules as PyTorch backward
hooks; the rules and composites here are zennit's, attrflow only chooses them, feeds them the
right input bounds and batches the work.

**Rules and composites** (``composite``):

* ``epsilon``: the ε rule on every convolution and linear layer, R_i = Σ_j x_i w_ij /
  (z_j + ε·sign(z_j)) R_j. With ε → 0 on a bias-free ReLU network it conserves relevance
  exactly (Σ R = logit) and equals gradient × input (Ancona et al., 2018).
* ``alpha2_beta1`` / ``alpha1_beta0``: the αβ rule (Bach et al., 2015) on every convolution and
  linear layer; α1β0 is the z⁺ rule, i.e. deep Taylor decomposition for ReLU networks
  (Montavon et al., 2017).
* the composites recommended for CNNs (Montavon et al., 2019; Kohlbrenner et al., 2020), as
  zennit defines them, ε on the dense layers: ``epsilon_plus`` (z⁺ on convolutions),
  ``epsilon_alpha2_beta1`` (α2β1 on convolutions), their ``…_flat`` variants (flat rule on the
  first layer) and ``epsilon_gamma_box`` (γ on convolutions, z^B on the first layer).

Activations pass relevance unchanged, sum and average pooling redistribute it in proportion
(zennit's layer_map_base), max pooling routes it to the winner (plain gradient), and BatchNorm is
first merged into the convolution before it (zennit's SequentialMergeBatchNorm canonizer). For
torchvision ResNets zennit's ResNetCanonizer also turns each residual sum into a module with the
proportional rule. Other residual sums written as ``a + b`` in a forward (timm's ResNets) pass
relevance as the gradient does, so relevance is not conserved across them: a known limit, not
hidden — ``conservation_residual`` shows it.

**Where the input layer lives.** The `WrappedModel` normalises inside (z = (x − mean)/std), so
the first convolution sees z, not pixels. The z^B rule therefore gets the pixel bounds [0, 1]
mapped into that space, low = (0 − mean)/std and high = (1 − mean)/std per channel. Relevance is
taken at z (the rules' output at the first layer) and stored per pixel: relevance is a quantity
distributed over input elements, not a derivative, so it is not rescaled by 1/std. It is read
off the pixel gradient of the wrapper, which is relevance/std, times std.

**Output relevance.** The target logit: the output layer starts with R = e_target · logit, so an
exactly conserving rule gives Σ maps = logit. Diagnostics store the logit (``output_logit``) and
``conservation_residual`` = |Σ maps − logit| (biases and stabilisers absorb relevance, so it is
not zero in general).

Cost per image: one forward and one (modified) backward pass; samples run in chunks of
``max_batch``.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import torch
from torch import nn

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.params import Doc, Ge, Gt

# LRP rules applied to every layer, then zennit's composites for CNNs (module doc).
Composite = Literal[
    "epsilon",
    "alpha2_beta1",
    "alpha1_beta0",
    "epsilon_plus",
    "epsilon_plus_flat",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon_gamma_box",
]
COMPOSITES = get_args(Composite)
# zennit's defaults; a rule that never reads one refuses any other value (see `lrp`).
ZENNIT_EPSILON = 1e-6
ZENNIT_GAMMA = 0.25


def input_bounds(model: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel range [0, 1] in the model's input space: ((0 − mean)/std, (1 − mean)/std),
    shaped (1, C, 1, 1), for the z^B rule of the first layer."""
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    if mean is None or std is None:
        zeros = torch.zeros(1, like.shape[1], 1, 1, dtype=like.dtype, device=like.device)
        return zeros, zeros + 1
    mean, std = mean.to(like), std.to(like)
    return (0 - mean) / std, (1 - mean) / std


def canonizers_for(net: nn.Module) -> list:
    """zennit's canonizers for ``net``: its ResNet canonizer for torchvision ResNets (BatchNorm
    merged, and each block's residual sum made a module that splits relevance in proportion),
    else BatchNorm merged into the linear layer right before it."""
    from zennit.canonizers import SequentialMergeBatchNorm

    try:
        from torchvision.models import ResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        ResNet = ()  # noqa: N806
    if isinstance(net, ResNet):
        from zennit.torchvision import ResNetCanonizer

        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def make_composite(composite: str, *, epsilon: float, gamma: float, low, high, canonizers: list):
    """The zennit composite for ``composite`` (module doc) with the given canonizers."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Linear

    if composite == "epsilon":
        return zc.LayerMapComposite(
            # Pooling layers' proportional rule takes the same stabiliser, so ε → 0 conserves.
            layer_map=zc.layer_map_base(epsilon) + [(Linear, zr.Epsilon(epsilon=epsilon))],
            canonizers=canonizers,
        )
    if composite in ("alpha2_beta1", "alpha1_beta0"):
        alpha, beta = (2.0, 1.0) if composite == "alpha2_beta1" else (1.0, 0.0)
        return zc.LayerMapComposite(
            layer_map=zc.layer_map_base() + [(Linear, zr.AlphaBeta(alpha=alpha, beta=beta))],
            canonizers=canonizers,
        )
    if composite == "epsilon_plus":
        return zc.EpsilonPlus(epsilon=epsilon, canonizers=canonizers)
    if composite == "epsilon_plus_flat":
        return zc.EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    if composite == "epsilon_alpha2_beta1":
        return zc.EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers)
    if composite == "epsilon_alpha2_beta1_flat":
        return zc.EpsilonAlpha2Beta1Flat(epsilon=epsilon, canonizers=canonizers)
    if composite == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high, epsilon=epsilon, gamma=gamma, canonizers=canonizers)
    raise ValueError(f"lrp: parameter composite must be one of {', '.join(COMPOSITES)}; got {composite!r}")


def _check_modules(model: nn.Module) -> None:
    """zennit's rules act on modules: an activation or normalisation it has no rule for would
    pass relevance through as a gradient and silently break what the rules promise."""
    unsupported = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.Softmax)
    for path, module in model.named_modules():
        if isinstance(module, unsupported):
            raise MethodNotApplicable(
                f"lrp: module {path!r} ({type(module).__name__}) has no LRP rule in zennit's composites"
            )


@register_method("lrp")
def lrp(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    composite: Annotated[
        Composite,
        Doc(
            "LRP rule on every layer (epsilon, alpha2_beta1, alpha1_beta0) or a zennit composite "
            "for CNNs (epsilon_plus[_flat], epsilon_alpha2_beta1[_flat], epsilon_gamma_box)"
        ),
    ] = "epsilon_plus_flat",
    epsilon: Annotated[
        float, Gt(0), Doc("stabiliser ε of the ε rule (zennit's default 1e-6)")
    ] = ZENNIT_EPSILON,
    gamma: Annotated[
        float, Ge(0), Doc("γ of the γ rule (epsilon_gamma_box only; zennit's default 0.25)")
    ] = ZENNIT_GAMMA,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, C, H, W) LRP relevance of the target logit, in pixel space (module doc)."""
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    # A parameter the chosen rules never read is a misconfiguration, not a silent no-op.
    if composite in ("alpha2_beta1", "alpha1_beta0") and epsilon != ZENNIT_EPSILON:
        raise ValueError(f"lrp: parameter epsilon is set ({epsilon!r}) but composite {composite!r} has no ε rule")
    if composite != "epsilon_gamma_box" and gamma != ZENNIT_GAMMA:
        raise ValueError(f"lrp: parameter gamma is set ({gamma!r}) but only composite 'epsilon_gamma_box' has a γ rule")
    net = getattr(model, "net", model)
    _check_modules(net)
    low, high = input_bounds(model, x)
    rules = make_composite(
        composite, epsilon=float(epsilon), gamma=float(gamma), low=low, high=high, canonizers=canonizers_for(net)
    )
    std = getattr(model, "std", None)
    scale = std.to(x) if std is not None else torch.ones(1, dtype=x.dtype, device=x.device)
    maps, logits = [], []
    with evaluation_mode(model), torch.enable_grad(), rules.context(net):
        for start in range(0, x.shape[0], max_batch):
            chunk = x[start : start + max_batch].detach().requires_grad_(True)
            out = model(chunk)
            chosen = out.gather(1, target[start : start + max_batch].unsqueeze(1))
            seed = torch.zeros_like(out).scatter(1, target[start : start + max_batch].unsqueeze(1), chosen.detach())
            (grad,) = torch.autograd.grad(out, chunk, grad_outputs=seed)
            maps.append((grad * scale).detach())
            logits.append(chosen.detach().squeeze(1))
    relevance = torch.cat(maps)
    logit = torch.cat(logits)
    residual = (relevance.flatten(1).sum(dim=1) - logit).abs()
    return Attribution(
        maps=relevance, diagnostics={"output_logit": logit, "conservation_residual": residual}
    )

"""Class activation maps at any layer: GradCAM, GradCAM++ and FullGrad.

All three explain the target LOGIT and return channel-free (n, H, W) maps on the model's device,
upsampled bilinearly (``align_corners=False``, the half-pixel convention of OpenCV's resize that
pytorch-grad-cam uses) from the layer's resolution to the input's. Each costs one forward and one
backward pass per sample, run in chunks of ``max_batch`` samples.

GradCAM and GradCAM++ read one layer, named by ``layer`` and resolved with
`attrflow.models.layers.resolve_layer` ("default" = the model's CAM layer, "stage1".."stage4" for
the layer study of Khakzar, 2023, or a module path). A CNN layer gives (n, K, h, w) activations; a ViT block
gives tokens (n, prefix + h·w, d), whose patch tokens are laid on their grid (class/register
tokens dropped), so d plays the role of K. The layer's output is detached from the graph below
it, so the backward pass stops at the layer instead of running down to the pixels — except
inside `differentiable_maps` (all three are registered ``differentiable=True``): there the layer
stays attached and the gradients are taken with ``create_graph=True``, so the maps carry a graph
to x (each chunk's graph is kept until the caller back-propagates).

Maps are returned raw (not min-max normalised): a per-sample positive rescaling changes no
ranking-based metric, and raw values keep the maps of one sample comparable across targets.
pytorch-grad-cam min-max normalises every map to [0, 1]; the conformance tests do the same to
ours before comparing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attrflow.methods._batching import (
    check_max_batch,
    evaluation_mode,
    maps_differentiable,
    validate_batch,
)
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.models.layers import prefix_tokens, resolve_layer, tokens_to_grid
from attrflow.params import Doc, MinLen

# Added to (max − min) when min-max normalising a FullGrad term: the authors' code uses 1e-6,
# pytorch-grad-cam 1e-7; each normalisation keeps its source's constant.
NORMALISE_EPS = {"per_layer": 1e-6, "per_channel": 1e-7}

ChannelWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(activations (n, K, h, w), gradients (n, K, h, w)) -> channel weights (n, K)."""


def class_activation_map(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    weighting: str,
    layer: Annotated[
        str,
        MinLen(1),
        Doc("'default' (the model's CAM layer), 'stage1'..'stage4', or a module path"),
    ] = "default",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """ReLU(Σ_k w_k A_k) at ``layer``, the channel weights w_k read from the gradients as
    ``weighting`` (a key of `CHANNEL_WEIGHTS`) says. No normalisation."""
    return Attribution(maps=_cam(model, x, target, layer, max_batch, CHANNEL_WEIGHTS[weighting]))


# GradCAM and GradCAM++ differ only in their channel weights: one function, registered per variant.
CAM_VARIANTS = {
    "gradcam": """GradCAM (Selvaraju et al. 2017): ReLU(Σ_k α_k A_k), α_k = mean_ij ∂logit/∂A_k,ij.

    ReLU is applied to the weighted sum at the layer's resolution, before upsampling, as in the
    paper and pytorch-grad-cam. No normalisation.""",
    "gradcampp": """GradCAM++ (Chattopadhay et al. 2018): ReLU(Σ_k w_k A_k) with w_k = Σ_ij α_k,ij ReLU(g_k,ij).

    g = ∂logit/∂A. The closed-form α of the paper's Eq. 19, derived for the score exp(logit), is
    g² / (2g² + Σ_ab A_k,ab · g³) = 1 / (2 + Σ_ab A_k,ab · g) wherever g ≠ 0, and 0 where g = 0 or
    the denominator vanishes (the paper's rule; pytorch-grad-cam adds 1e-6 to the denominator
    instead). The paper's weights carry a further factor exp(logit), a positive per-sample
    constant that pytorch-grad-cam also drops (it overflows float32 for logits above ~88).
    ReLU is applied to the weighted sum before upsampling; no normalisation.""",
}
for _name, _doc in CAM_VARIANTS.items():
    register_method(
        _name, channel_free=True, differentiable=True, bind={"weighting": _name}, doc=_doc
    )(class_activation_map)


@register_method("fullgrad", channel_free=True, differentiable=True)
def fullgrad(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    normalise: Annotated[
        Literal["per_layer", "per_channel"],
        Doc(
            "min-max each |term| over all its channels and positions (the authors' code) or "
            "per channel (pytorch-grad-cam)"
        ),
    ] = "per_layer",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """FullGrad (Srinivas & Fleuret 2019): post(z ⊙ ∇_z F) + Σ_layers post(b ⊙ ∇_b F), summed.

    FullGrad reads every layer, so it takes no ``layer``. The full-gradient decomposition
    F(x) = Σ z ⊙ ∇_z F + Σ_layers Σ b ⊙ ∇_b F is exact for piecewise-linear networks (ReLU,
    max/avg pooling, eval-mode BatchNorm). Its terms:

    * input: z ⊙ ∇_z F on the network's own input z = (x − mean) / std, i.e. (x − mean) ⊙ ∇_x F
      in pixel units, as the authors (and the papers, on normalised inputs) compute it;
    * bias: b ⊙ ∂F/∂(layer output) for every Conv2d and Linear with a bias and every BatchNorm,
      whose effective bias in eval mode is β − μ_running · γ / √(σ²_running + ε). For timm's
      BatchNorm+activation modules the gradient is taken before the activation.

    The map, as in the authors' code and pytorch-grad-cam: post(t) = |t| min-max normalised
    (``normalise``: over all channels and positions of the term per sample, the authors'
    choice and the default, or per channel, pytorch-grad-cam's), summed over channels,
    upsampled bilinearly and summed over the input term and every spatial (4-D) bias term.
    Token and Linear bias terms (2-D or 3-D) count in the decomposition but not in the map,
    again as in both codes. On a bias-free network (X-DNN) only the input term remains, so the
    map is post(X-Gradient) summed over channels. Deviation: the authors upsample with
    ``align_corners=True``; this uses ``False`` like every CAM here and pytorch-grad-cam.

    Diagnostics: ``full_gradient_residual`` (n,) = |Σ of all raw terms − logit|, ~0 when every
    bias is accounted for (it is not on GELU/softmax/LayerNorm networks such as ViTs, where
    the decomposition does not hold).
    """
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    sites = _bias_sites(getattr(model, "net", model))
    maps, residuals = [], []
    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, x.shape[0], max_batch):
            stop = start + max_batch
            chunk_map, chunk_residual = _fullgrad_chunk(
                model, x[start:stop], target[start:stop], sites, normalise
            )
            maps.append(chunk_map)
            residuals.append(chunk_residual)
    return Attribution(
        maps=torch.cat(maps), diagnostics={"full_gradient_residual": torch.cat(residuals)}
    )


# --------------------------------------------------------------------------------------------
# GradCAM / GradCAM++


def _gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return gradients.mean(dim=(2, 3))


def _gradcampp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    denominator = 2.0 + activations.sum(dim=(2, 3), keepdim=True) * gradients
    defined = (gradients != 0) & (denominator != 0)
    alpha = torch.where(defined, 1.0 / torch.where(defined, denominator, 1.0), 0.0)
    return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


CHANNEL_WEIGHTS: dict[str, ChannelWeights] = {"gradcam": _gradcam_weights, "gradcampp": _gradcampp_weights}


def _cam(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    layer: str,
    max_batch: int,
    channel_weights: ChannelWeights,
) -> torch.Tensor:
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    path, module = resolve_layer(model, layer)
    num_prefix = prefix_tokens(getattr(model, "net", model))
    maps = []
    with evaluation_mode(model), torch.enable_grad():
        for start in range(0, x.shape[0], max_batch):
            chunk, chunk_target = x[start : start + max_batch], target[start : start + max_batch]
            activations, gradients = _layer_activations_and_gradients(
                model, chunk, chunk_target, module, path
            )
            activations = _spatial(activations, path, num_prefix)
            gradients = _spatial(gradients, path, num_prefix)
            weights = channel_weights(activations, gradients)
            cam = torch.relu((weights[:, :, None, None] * activations).sum(dim=1))
            maps.append(_upsample(cam, x.shape[-2:]))
    return torch.cat(maps)


def _layer_activations_and_gradients(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, module: nn.Module, path: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and ∂(target logit)/∂output, one forward and one backward."""
    attached = maps_differentiable() and x.requires_grad
    with _captured_outputs(module, path, attached) as captured:
        logits = model(x)
    if len(captured) != 1:
        raise ValueError(
            f"layer {path!r} ran {len(captured)} times in one forward pass; CAMs need a module "
            f"that runs exactly once (name another module path)"
        )
    (activations,) = captured
    chosen = logits.gather(1, target.unsqueeze(1)).sum()
    (gradients,) = torch.autograd.grad(chosen, activations, create_graph=attached)
    return (activations if attached else activations.detach()), gradients


def _spatial(tensor: torch.Tensor, path: str, num_prefix: int) -> torch.Tensor:
    if tensor.dim() == 3:
        return tokens_to_grid(tensor, num_prefix)
    if tensor.dim() == 4:
        return tensor
    raise MethodNotApplicable(
        f"layer {path!r} outputs shape {tuple(tensor.shape)}; CAMs need a spatial (n, K, h, w) "
        f"map or ViT tokens (n, tokens, d)"
    )


@contextmanager
def _captured_outputs(
    module: nn.Module, path: str, attached: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Record ``module``'s output on every call as a fresh leaf (the backward pass stops there),
    or, if ``attached``, as it is (in the graph below); the hook is removed even on errors.

    Downstream layers get a clone, so an in-place operation after the module (a ResNet's
    ``ReLU(inplace=True)``) cannot overwrite the recorded tensor.
    """
    captured: list[torch.Tensor] = []

    def record(_module: nn.Module, _inputs: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise MethodNotApplicable(
                f"layer {path!r} returns {type(output).__name__}, not a tensor; name a module "
                f"that returns one"
            )
        leaf = output if attached else output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    handle = module.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


def _upsample(maps: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """(n, h, w) → (n, H, W), bilinear with half-pixel centres."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    upsampled = F.interpolate(
        maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
    )
    return upsampled[:, 0]


# --------------------------------------------------------------------------------------------
# FullGrad


class _BiasSite:
    """A bias of the network and where its layer's output (the bias' gradient) is recorded."""

    def __init__(
        self, name: str, bias: torch.Tensor, hooked: nn.Module, before: bool, channel_dim: int
    ) -> None:
        self.name = name
        self.bias = bias.detach()
        self.hooked = hooked  # the module whose output (or, if ``before``, input) is b's output
        self.before = before
        self.channel_dim = channel_dim  # 1 for Conv/BatchNorm outputs, -1 for Linear outputs
        self.outputs: list[torch.Tensor] = []

    def bias_times(self, gradient: torch.Tensor) -> torch.Tensor:
        shape = [1] * gradient.dim()
        shape[self.channel_dim] = -1
        return self.bias.to(gradient.dtype).view(shape) * gradient


def _bias_sites(net: nn.Module) -> list[_BiasSite]:
    sites = []
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            drop = getattr(module, "drop", None)  # timm BatchNormAct2d: bn → drop → act in one module
            fused = isinstance(drop, nn.Module) and isinstance(getattr(module, "act", None), nn.Module)
            sites.append(
                _BiasSite(name, _batchnorm_bias(name, module), drop if fused else module, fused, 1)
            )
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            channel_dim = 1 if isinstance(module, nn.Conv2d) else -1
            sites.append(_BiasSite(name, module.bias, module, False, channel_dim))
    return sites


def _batchnorm_bias(name: str, module: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """β − μ γ / √(σ² + ε): BatchNorm's output at a zero input, in eval mode."""
    if module.running_mean is None or module.running_var is None:
        raise MethodNotApplicable(
            f"BatchNorm {name!r} keeps no running statistics, so its bias depends on the batch; "
            f"FullGrad's decomposition is undefined"
        )
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = module.bias if module.bias is not None else torch.zeros_like(scale)
    return shift - module.running_mean * scale


@contextmanager
def _recording(sites: list[_BiasSite]) -> Iterator[None]:
    """Record every site's layer output (kept in the graph); all hooks go, even on errors."""
    handles = []

    def recorder(site: _BiasSite):
        def after(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            site.outputs.append(output)
            return output.clone()  # in-place ops downstream must not rewrite the recorded tensor

        def before(_module: nn.Module, inputs: tuple) -> tuple:
            site.outputs.append(inputs[0])
            return (inputs[0].clone(), *inputs[1:])

        return before if site.before else after

    try:
        for site in sites:
            site.outputs = []
            if site.before:
                handles.append(site.hooked.register_forward_pre_hook(recorder(site)))
            else:
                handles.append(site.hooked.register_forward_hook(recorder(site)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for site in sites:
            site.outputs = []


def _fullgrad_chunk(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    sites: list[_BiasSite],
    normalise: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    attached = maps_differentiable() and x.requires_grad
    inputs = x if attached else x.detach().requires_grad_(True)
    with _recording(sites):
        logits = model(inputs)
        chosen = logits.gather(1, target.unsqueeze(1)).squeeze(1)
        recorded = [(site, output) for site in sites for output in site.outputs]
        gradients = torch.autograd.grad(
            chosen.sum(), [inputs, *(output for _, output in recorded)], allow_unused=True,
            create_graph=attached,
        )
    with torch.set_grad_enabled(attached):
        origin = getattr(model, "mean", torch.zeros(()))  # z = 0 ⇔ x = mean
        input_term = (x - origin.to(x)) * gradients[0]
        total = input_term.flatten(1).sum(dim=1)
        maps = _post(input_term, normalise).sum(dim=1)
        for (site, output), gradient in zip(recorded, gradients[1:]):
            if gradient is None:  # the layer does not reach the target logit
                continue
            term = site.bias_times(gradient)
            total = total + term.flatten(1).sum(dim=1)
            if term.dim() == 4 and site.channel_dim == 1:
                maps = maps + _upsample(_post(term, normalise).sum(dim=1), x.shape[-2:])
        return maps, (total - chosen.detach()).abs()


def _post(term: torch.Tensor, normalise: str) -> torch.Tensor:
    """|term| min-max normalised per sample (``per_layer``) or per sample and channel."""
    magnitude = term.abs()
    flat = magnitude.flatten(1) if normalise == "per_layer" else magnitude.flatten(2)
    low = flat.min(dim=-1, keepdim=True).values
    high = flat.max(dim=-1, keepdim=True).values
    scaled = (flat - low) / (high - low + NORMALISE_EPS[normalise])
    return scaled.view_as(magnitude)

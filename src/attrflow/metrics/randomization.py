"""Cascading parameter-randomisation sanity check (Adebayo et al. 2018).

A map that explains the model must change when the model's parameters are destroyed. The check
re-initialises the layers of a copy of the model one after the other, from the output layer
towards the input (cumulatively: after step j the top j layers are random), re-runs the method
on the copy after every step, and compares each map with the original model's. Lower similarity
passes the check.

Choices, with their sources:

* **Layers** are the modules that own parameters directly (Conv, Linear, and normalisation
  layers with affine parameters), output side first: the reverse of the model's module
  registration order, which for common architectures (sequential stacks, torchvision ResNets)
  is the forward order. Buffers such as BatchNorm running statistics are kept.
* **Re-initialisation** (`init`): ``normal`` draws every parameter of the layer from
  N(0, `std`²), Khakzar et al., 2021's "normal distribution with mean = 0 and variance = 0.01" (std 0.1);
  ``reset`` calls the layer's own ``reset_parameters()`` (PyTorch's default initialisation,
  which for BatchNorm also resets its running statistics), as Quantus' MPRT does. Either way the
  random numbers come from the injected generator, so one seed gives one score.
* **Similarity** (`similarity`): Spearman ρ of the flattened maps, or SSIM (Wang et al. 2004:
  Gaussian window 11 × 11, σ = 1.5, K₁ = 0.01, K₂ = 0.03, data range 1, mean over the valid
  window positions, i.e. no padding; this equals scikit-image's ``structural_similarity`` with
  ``gaussian_weights=True, use_sample_covariance=False, data_range=1``). For SSIM the maps are
  normalised per sample to [0, 1]: signed maps as Khakzar et al., 2021 to [−1, 1] by their largest magnitude and
  then mapped by (m + 1) / 2, magnitudes (`absolute`) divided by their largest value. Maps with a
  side below 11 pixels use the largest odd window that fits (same σ). Kept channels are compared
  channel by channel and averaged.
* **Signed or absolute** (`absolute`): Khakzar et al., 2021 normalises signed maps to [−1, 1]; Adebayo et al.
  report both, and Quantus' MPRT defaults to magnitudes.
* The original map is recomputed through ``inputs.explain`` like the randomised ones, so a
  difference is the randomisation's and not the store's (dtype, batch size, noise draws).

Value: the similarity after every layer is random. Curve: the similarity after each step, output
layer first. The model given is never modified: all changes happen on a deep copy.
"""

from __future__ import annotations

import copy
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrflow.metrics._removal import CONSTANT_MAP, NONFINITE_MAP, gaussian_kernel1d, with_reasons
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.metrics.stability import cleaned, flat_scores, spearman_rows
from attrflow.params import Doc, Gt

SIMILARITIES = ("spearman", "ssim")
INITS = ("normal", "reset")
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def parametric_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, output side first."""
    return [
        name
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    ][::-1]


def randomize_layer(module: nn.Module, init: str, std: float, generator: torch.Generator) -> None:
    """Re-initialise the parameters `module` owns, in place, from `generator`."""
    if init == "normal":
        with torch.no_grad():
            for parameter in module.parameters(recurse=False):
                draw = torch.randn(parameter.shape, generator=generator, device=generator.device)
                parameter.copy_(draw * std)
        return
    if init != "reset":
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    reset = getattr(module, "reset_parameters", None)
    if reset is None:
        raise ValueError(
            f"layer {type(module).__name__} has no reset_parameters(); use init 'normal'"
        )
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cuda = sorted({p.device.index or 0 for p in module.parameters(recurse=False) if p.is_cuda})
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        with torch.no_grad():
            reset()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (m, H, W) images with values in [0, 1]: (m,) float64 (see module docstring)."""
    a, b = a.double(), b.double()
    height, width = a.shape[-2:]
    size = min(SSIM_WINDOW, height - 1 + height % 2, width - 1 + width % 2)
    taps = gaussian_kernel1d(size, SSIM_SIGMA, device=a.device)

    def local_mean(z: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(z.unsqueeze(1), taps.view(1, 1, size, 1))
        return F.conv2d(z, taps.view(1, 1, 1, size)).squeeze(1)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2
    var_b = local_mean(b * b) - mu_b**2
    cov = local_mean(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(dim=1)


def unit_range(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Maps scaled per sample to [0, 1] for SSIM: |m| / max|m|, or (m / max|m| + 1) / 2."""
    maps = maps.double()
    peak = maps.abs().flatten(1).amax(dim=1).view(-1, *[1] * (maps.dim() - 1))
    scaled = maps / torch.where(peak == 0, torch.ones_like(peak), peak)
    return scaled.abs() if absolute else (scaled + 1.0) / 2.0


def map_similarity(
    original: torch.Tensor, other: torch.Tensor, similarity: str, absolute: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) similarity of two batches of finite maps, and a mask where it is undefined."""
    if similarity == "spearman":
        order = "absolute" if absolute else "signed"
        return spearman_rows(flat_scores(original, order), flat_scores(other, order))
    if similarity == "ssim":
        n, height, width = original.shape[0], original.shape[-2], original.shape[-1]
        pair = [unit_range(m, absolute).reshape(-1, height, width) for m in (original, other)]
        values = ssim(*pair).view(n, -1).mean(dim=1)
        return values, torch.zeros_like(values, dtype=torch.bool)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, not {similarity!r}")


def _sample_reason(finite: bool, constant: bool, last: float, similarity: str) -> str | None:
    if not finite:
        return NONFINITE_MAP
    if constant:
        return CONSTANT_MAP
    if np.isnan(last):
        return f"{similarity} is undefined once every layer is random (non-finite or constant map)"
    return None


@register_metric("randomization_sanity", kind="explainer", direction="lower")
def randomization_sanity(
    inputs: MetricInputs,
    *,
    similarity: Annotated[
        Literal["spearman", "ssim"],
        Doc(
            "how each randomised map is compared with the original (Khakzar et al., 2021: "
            "both)"
        ),
    ] = "spearman",
    absolute: Annotated[
        bool,
        Doc("compare map magnitudes instead of signed maps (Quantus MPRT default)"),
    ] = False,
    init: Annotated[
        Literal["normal", "reset"],
        Doc(
            "draw from N(0, std²) (Khakzar et al., 2021) or call each layer's "
            "reset_parameters()"
        ),
    ] = "normal",
    std: Annotated[
        float,
        Gt(0),
        Doc("standard deviation of init 'normal' (Khakzar et al., 2021: variance 0.01)"),
    ] = 0.1,
    generator: torch.Generator | None = None,
) -> MetricOutput:
    """Similarity of the map after cascading randomisation of every layer to the original map
    (Adebayo et al. 2018; lower passes). Curve: the similarity after each cascade step, output
    layer first. See the module docstring for layers, initialisation and similarities."""
    from attrflow.methods import MethodNotApplicable

    who = f"method {inputs.method!r} (fn {inputs.method_fn!r})"
    if inputs.explain is None:
        raise ValueError(f"randomization_sanity: no explain callable was given for {who}")
    model = inputs.model
    layers = parametric_layers(model)
    if not layers:
        return MetricOutput.skipped(
            inputs.n,
            f"randomization_sanity: model {getattr(model, 'name', '')!r} has no parameters",
        )
    if init == "reset":
        missing = [
            name for name in layers if not hasattr(model.get_submodule(name), "reset_parameters")
        ]
        if missing:
            return MetricOutput.skipped(
                inputs.n,
                f"randomization_sanity: layer(s) {missing} have no reset_parameters(); "
                "use init 'normal'",
            )
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    order = "absolute" if absolute else "signed"
    try:
        original, original_ok = cleaned(inputs.explain(inputs.images, inputs.targets))
        randomised = copy.deepcopy(model)
        columns: list[torch.Tensor] = []
        for name in layers:
            randomize_layer(randomised.get_submodule(name), init, std, generator)
            maps, finite = cleaned(inputs.explain(inputs.images, inputs.targets, model=randomised))
            values, undefined = map_similarity(original, maps, similarity, absolute)
            columns.append(torch.where(finite & ~undefined, values, float("nan")))
    except MethodNotApplicable as err:
        return MetricOutput.skipped(
            inputs.n, f"randomization_sanity: {who} cannot be re-run here: {err}"
        )
    curves = torch.stack(columns, dim=1).cpu().numpy()
    flat = flat_scores(original, order)
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
    reasons = [
        _sample_reason(ok, same, last, similarity)
        for ok, same, last in zip(original_ok.tolist(), constant, curves[:, -1])
    ]
    return with_reasons(curves[:, -1], list(curves.astype(np.float64)), reasons)

"""Single-gradient methods: gradient (saliency), Input×Gradient and X-Gradient.

All three explain the target LOGIT (Hesse et al., 2021), cost one forward and one backward pass per sample, and
return signed (n, C, H, W) maps (the runner reduces channels).

X-Gradient is Input×Gradient taken about the model's homogeneity origin; it equals Integrated
Gradients from that origin only on an X-DNN (bias-free, nonnegatively homogeneous network, Hesse et al., 2021
Def. 3.5). On any other network it is refused rather than silently reported: the same numbers
there are I×G, which carries none of IG's axioms.
"""

from __future__ import annotations

from typing import Annotated

import torch

from attrflow.methods._batching import evaluation_mode, input_gradients, validate_batch
from attrflow.methods.base import (
    DEFAULT_MAX_BATCH,
    Attribution,
    MethodNotApplicable,
    register_method,
)
from attrflow.params import Doc


@register_method("gradient", differentiable=True)
def gradient(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    absolute: Annotated[
        bool,
        Doc("return |∇x logit|; Hesse et al., 2021, 'saliency' is the absolute gradient"),
    ] = False,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """∇_x logit_target(x) (signed, or its magnitude when ``absolute``)."""
    x, target = validate_batch(model, x, target)
    grads = input_gradients(model, x, target, max_batch=max_batch).gradient_sums
    return Attribution(maps=grads.abs() if absolute else grads)


@register_method("input_x_gradient", differentiable=True)
def input_x_gradient(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """x ⊙ ∇_x logit_target(x) (Shrikumar et al.; Hesse et al., 2021 Sec. 2)."""
    x, target = validate_batch(model, x, target)
    grads = input_gradients(model, x, target, max_batch=max_batch).gradient_sums
    return Attribution(maps=x * grads)


@register_method("x_gradient", completeness=True, differentiable=True)
def x_gradient(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(x − origin) ⊙ ∇F(x) on an X-DNN; equals IG from the origin in one pass (Hesse et al., 2021 Eq. 4).

    The origin is the pixel-space point where the normalised input is zero (the normalisation
    mean), so F(origin) = 0 and the maps sum to F(x). Diagnostics: ``baselines`` (the origin per
    sample), ``output_delta`` F(x) − F(origin) and ``completeness_residual``
    |Σ maps − output_delta|; F(origin) costs one extra forward of a single image.
    """
    if not getattr(model, "is_x_dnn", False) or model.homogeneity_origin is None:
        raise MethodNotApplicable(
            f"x_gradient needs an X-DNN (bias-free, nonnegatively homogeneous); model "
            f"{getattr(model, 'name', '')!r} is not one, and its Input×Gradient would not equal IG"
        )
    x, target = validate_batch(model, x, target)
    origin = model.homogeneity_origin.to(dtype=x.dtype, device=x.device).expand_as(x)
    result = input_gradients(model, x, target, max_batch=max_batch)
    maps = (x - origin) * result.gradient_sums
    with evaluation_mode(model), torch.no_grad():
        origin_logits = model(origin[:1])[0, target]  # one image: the origin is shared
    output_delta = result.target_logits[:, 0] - origin_logits
    return Attribution(
        maps=maps,
        diagnostics={
            "baselines": origin.contiguous(),
            "output_delta": output_delta,
            "completeness_residual": (maps.flatten(1).sum(dim=1) - output_delta).abs(),
        },
    )

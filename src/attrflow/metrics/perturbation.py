"""Deletion and insertion curves (Zhang et al., 2021 Sec. 4.4.2, App. D.3).

*Deletion* removes the highest-ranked pixels first, replacing them with a fill (black in
Zhang et al., 2021), and watches the target output fall: a faithful map makes it fall fast, so a lower area
is better. *Insertion* starts from the fill canvas (a Gaussian-blurred copy, 29 taps, σ = 15, in
Zhang et al., 2021: "insert pixel on black canvas generates stronger adversarial effect") and puts the
highest-ranked pixels back first: a faithful map makes the output rise fast, so a higher area is
better.

Zhang et al., 2021 moves 10 pixels per step. By default we move equal *fractions* of the image instead
(`steps`, 20 by default), so that curves and areas compare across image sizes and cost the same
on 64² and 224² inputs; `pixels_per_step` restores the paper's protocol (ceil(HW/p) + 1 points,
5 018 forward passes per 224² image for p = 10). Either way the curve holds the output before
the first and after the last step, and the value is its trapezoid area over the fraction of
pixels moved, in [0, 1], so it is in the units of the output (softmax probability by default;
the papers do not say which output they used).
"""

from __future__ import annotations

import torch

from attrflow.metrics._removal import (
    NONFINITE_MAP,
    checked_maps,
    fill_image,
    masked_outputs,
    pixel_positions,
    ranking_scores,
    step_counts,
    trapezoid_auc,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric


def _curves(
    inputs: MetricInputs,
    *,
    metric: str,
    insert: bool,
    steps: int,
    pixels_per_step: int | None,
    fill: str,
    blur_kernel: int,
    blur_sigma: float,
    output: str,
    order: str,
    max_batch: int,
) -> MetricOutput:
    maps = checked_maps(inputs, metric)
    broken = ~torch.isfinite(maps).flatten(1).all(dim=1)
    scores = ranking_scores(torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps)), order)
    positions = pixel_positions(scores)  # (n, HW): 0 = the most important pixel
    h, w = maps.shape[1:]
    counts = step_counts(h * w, steps, pixels_per_step).to(maps.device)
    canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        moved = positions[sample] < counts[variant].unsqueeze(1)  # the first counts[v] pixels
        return (~moved if insert else moved).view(-1, h, w)

    curves = masked_outputs(
        inputs.model,
        inputs.images,
        canvas,
        inputs.targets,
        replace_mask,
        counts.shape[0],
        output=output,
        max_batch=max_batch,
    )
    values = trapezoid_auc(curves, counts.double() / (h * w)).cpu().numpy()
    reasons = [NONFINITE_MAP if bad else None for bad in broken.tolist()]
    return with_reasons(values, list(curves.cpu().numpy()), reasons)


@register_metric(
    "deletion",
    kind="map",
    direction="lower",
    params={
        "steps": {"type": "integer", "minimum": 1, "default": 20},
        "pixels_per_step": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "fill": {"enum": ["black", "blur", "mean"], "default": "black"},
        "blur_kernel": {"type": "integer", "minimum": 1, "not": {"multipleOf": 2}, "default": 29},
        "blur_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 15.0},
        "output": {"enum": ["prob", "logit"], "default": "prob"},
        "order": {"enum": ["signed", "absolute"], "default": "signed"},
    },
)
def deletion(
    inputs: MetricInputs,
    *,
    steps: int = 20,
    pixels_per_step: int | None = None,
    fill: str = "black",
    blur_kernel: int = 29,
    blur_sigma: float = 15.0,
    output: str = "prob",
    order: str = "signed",
    max_batch: int = 256,
) -> MetricOutput:
    """Area under the target output as the top-ranked pixels are replaced by the fill (lower is better).

    `steps` equal pixel-fraction steps give a curve of steps + 1 points; `pixels_per_step`, when
    set, overrides them (Zhang et al., 2021: 10). `fill` is the replacement canvas (`blur_kernel` /
    `blur_sigma` shape the blur fill); `output` is the target's softmax probability or logit;
    `order` ranks pixels by the signed map, highest first, or by its magnitude. Ties go to the
    lower row-major pixel index.
    """
    return _curves(
        inputs,
        metric="deletion",
        insert=False,
        steps=steps,
        pixels_per_step=pixels_per_step,
        fill=fill,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        output=output,
        order=order,
        max_batch=max_batch,
    )


@register_metric(
    "insertion",
    kind="map",
    direction="higher",
    params={
        "steps": {"type": "integer", "minimum": 1, "default": 20},
        "pixels_per_step": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "fill": {"enum": ["black", "blur", "mean"], "default": "blur"},
        "blur_kernel": {"type": "integer", "minimum": 1, "not": {"multipleOf": 2}, "default": 29},
        "blur_sigma": {"type": "number", "exclusiveMinimum": 0, "default": 15.0},
        "output": {"enum": ["prob", "logit"], "default": "prob"},
        "order": {"enum": ["signed", "absolute"], "default": "signed"},
    },
)
def insertion(
    inputs: MetricInputs,
    *,
    steps: int = 20,
    pixels_per_step: int | None = None,
    fill: str = "blur",
    blur_kernel: int = 29,
    blur_sigma: float = 15.0,
    output: str = "prob",
    order: str = "signed",
    max_batch: int = 256,
) -> MetricOutput:
    """Area under the target output as the top-ranked pixels are put back onto the canvas (higher is better).

    The curve starts at the fill canvas (blurred copy, 29 taps, σ = 15, by default as in
    Zhang et al., 2021) and ends at the image; the parameters mean what they mean for `deletion`.
    """
    return _curves(
        inputs,
        metric="insertion",
        insert=True,
        steps=steps,
        pixels_per_step=pixels_per_step,
        fill=fill,
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma,
        output=output,
        order=order,
        max_batch=max_batch,
    )

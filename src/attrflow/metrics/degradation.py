"""LeRF and MoRF input degradation (Samek et al., 2017; Khakzar et al., 2021, critical pathways).

Pixels are removed in the order the map ranks them — least relevant first (LeRF) or most
relevant first (MoRF) — replacing them with a fill, and after each step the output change is
measured as the absolute fractional change

    c(k) = |F(x) − F(x_k)| / |F(x)|,

where x_k is the image with the first k pixels removed (Khakzar et al. describe "the absolute
fractional change of the output" in words; this is that formula). The score is the area under
c over the fraction of pixels removed, in [0, 1] by the trapezoid rule:

* **LeRF**: removing what the map calls irrelevant should change little — lower is better;
* **MoRF**: removing what the map calls relevant first should change much — higher is better.

**Against a random order** (Samek et al. compare every ordering with random removal): with
``against_random`` (the default) the value is AUC(map order) − mean AUC over ``random_orders``
uniformly random orders of the same image, drawn from the job's seeded generator; 0 means "no
better than random", negative is better for LeRF and positive for MoRF. The curve stored is the
map order's c(k) either way.

Neither the removal value nor the step size is given by the paper: ``fill`` (black, a blurred
copy or the mean colour, as for deletion) and ``steps`` equal fractions are parameters; the
output is the target's softmax probability by default (``output: logit`` is allowed, and an
image whose |F(x)| is below 1e-12 gets NaN with a reason: the fraction is undefined).

Cost per image: (steps + 1)·(1 + random_orders) forward passes, in chunks of ``max_batch``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from attrflow.metrics._removal import (
    NONFINITE_MAP,
    Fill,
    TargetOutput,
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
from attrflow.params import Doc, Ge

TINY_OUTPUT = 1e-12
ZERO_OUTPUT = "|F(x)| is below 1e-12: the fractional output change is undefined"


def fractional_change_curves(
    inputs: MetricInputs,
    scores: torch.Tensor,
    *,
    least_first: bool,
    steps: int,
    fill: str,
    output: str,
    max_batch: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, steps + 1) curves c(k) for pixels removed in the order of ``scores`` (n, H, W), their
    abscissae (the fractions removed) and F(x) (n,)."""
    h, w = scores.shape[1:]
    positions = pixel_positions(scores, descending=not least_first)  # 0 = removed first
    counts = step_counts(h * w, steps, None).to(scores.device)
    canvas = fill_image(inputs.images, fill)

    def removed(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        return (positions[sample] < counts[variant].unsqueeze(1)).view(-1, h, w)

    outputs = masked_outputs(
        inputs.model, inputs.images, canvas, inputs.targets, removed, counts.shape[0],
        output=output, max_batch=max_batch,
    )  # fmt: skip
    original = outputs[:, :1]  # no pixel removed: F(x)
    curves = (original - outputs).abs() / original.abs().clamp(min=TINY_OUTPUT)
    return curves, counts.double() / (h * w), original.squeeze(1)


def degradation(
    inputs: MetricInputs,
    *,
    metric: str,
    least_first: bool,
    steps: Annotated[
        int, Ge(1), Doc("equal pixel-fraction steps; the curve has steps + 1 points")
    ] = 20,
    fill: Annotated[
        Fill,
        Doc("what removed pixels show: black, the image blurred (29 taps, σ = 15) or its mean colour"),
    ] = "black",
    output: TargetOutput = "prob",
    order: Annotated[
        Literal["signed", "absolute"],
        Doc("rank pixels by the signed map, highest first, or by its magnitude"),
    ] = "signed",
    against_random: Annotated[
        bool,
        Doc(
            "report the area minus the mean area of random removal orders (Samek et al., 2017): "
            "0 means no better than random"
        ),
    ] = True,
    random_orders: Annotated[
        int, Ge(1), Doc("random removal orders averaged per image when against_random")
    ] = 1,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Area under the fractional output change c(k) as pixels are removed least relevant first
    (``least_first=True``, LeRF) or most relevant first (MoRF); with ``against_random``, minus the
    mean area for random orders (module doc)."""
    maps = checked_maps(inputs, metric)
    broken = ~torch.isfinite(maps).flatten(1).all(dim=1)
    scores = ranking_scores(torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps)), order)
    curves, fractions, original = fractional_change_curves(
        inputs, scores, least_first=least_first, steps=steps, fill=fill, output=output, max_batch=max_batch
    )
    values = trapezoid_auc(curves, fractions)
    if against_random:
        device = maps.device
        random_auc = torch.zeros_like(values)
        for _ in range(random_orders):
            noise = torch.rand(maps.shape, generator=generator, device=generator.device if generator else device)
            random_curves, _, _ = fractional_change_curves(
                inputs, noise.to(device), least_first=least_first, steps=steps, fill=fill,
                output=output, max_batch=max_batch,
            )  # fmt: skip
            random_auc += trapezoid_auc(random_curves, fractions)
        values = values - random_auc / random_orders
    undefined = original.abs() < TINY_OUTPUT
    reasons: list[str | None] = [
        NONFINITE_MAP if bad else ZERO_OUTPUT if zero else None
        for bad, zero in zip(broken.tolist(), undefined.tolist(), strict=True)
    ]
    return with_reasons(values.cpu().numpy(), list(curves.cpu().numpy()), reasons)


# LeRF and MoRF are one measurement with the removal order reversed.
REGISTERED = {
    "lerf": dict(
        direction="lower",
        bind={"metric": "lerf", "least_first": True},
        doc="Area under the fractional output change as the LEAST relevant pixels are removed first "
        "(lower is better; with against_random, minus the area for random orders).",
    ),
    "morf": dict(
        direction="higher",
        bind={"metric": "morf", "least_first": False},
        doc="Area under the fractional output change as the MOST relevant pixels are removed first "
        "(higher is better; with against_random, minus the area for random orders).",
    ),
}
for _name, _registration in REGISTERED.items():
    register_metric(_name, kind="map", **_registration)(degradation)

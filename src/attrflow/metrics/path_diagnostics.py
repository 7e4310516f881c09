"""Diagnostics of path methods: path monotonicity (UNI (Choi et al., 2024) Table 1), MARD to IG-128 (Hesse et al., 2021 Eq. 14) and
IG convergence against the step count (Hesse et al., 2021 App. B.5).

`path_monotonicity` only reads what the method stored. The other two need Integrated Gradients
computed again, so they are *explainer* metrics: `mard_ig` runs IG through the methods registry
on the stored model, `ig_convergence` re-runs the evaluated method itself with other step counts
through ``inputs.explain``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from attrflow.metrics._removal import NONFINITE_MAP, with_reasons
from attrflow.metrics._stats import spearman_rows
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, Lt, MinLen, Unique

IG_FN = "integrated_gradients"
PATH_KEYS = {"prob": "path_probs", "logit": "path_logits"}


def _who(inputs: MetricInputs) -> str:
    return f"method {inputs.method!r} (fn {inputs.method_fn!r})"


@register_metric("path_monotonicity", kind="diagnostic", direction="higher")
def path_monotonicity(
    inputs: MetricInputs,
    *,
    output: Annotated[
        Literal["prob", "logit"],
        Doc("the target output along the path: softmax probability (UNI) or logit"),
    ] = "prob",
) -> MetricOutput:
    """Spearman ρ between path position and the target's output along the path (UNI Table 1).

    "Integrating from a featureless baseline to the sample should give a path of monotonically
    increasing prediction confidence" (UNI (Choi et al., 2024)): ρ = 1 for a monotone path. The method must have
    stored ``path_probs`` (or ``path_logits``), (n, P), in path order; the position is
    ``path_alphas`` when stored, else the storage order (Spearman only needs ranks). Ties
    share average ranks; a path whose output never changes is NaN with a reason. The curve is
    the output along the path.
    """
    key = PATH_KEYS[output]
    outputs = inputs.diagnostics.get(key)
    if outputs is None:
        return MetricOutput.skipped(
            inputs.n, f"{_who(inputs)} stored no {key!r} diagnostic, so it has no path to check"
        )
    outputs = outputs.double()
    if outputs.dim() != 2 or outputs.shape[0] != inputs.n:
        raise ValueError(
            f"path_monotonicity: {key!r} of {_who(inputs)} has shape {tuple(outputs.shape)}, "
            f"expected ({inputs.n}, P)"
        )
    alphas = inputs.diagnostics.get("path_alphas")
    if alphas is None:
        positions = torch.arange(outputs.shape[1], dtype=torch.float64, device=outputs.device)
        alphas = positions.expand_as(outputs)
    elif tuple(alphas.shape) != tuple(outputs.shape):
        raise ValueError(
            f"path_monotonicity: 'path_alphas' of {_who(inputs)} has shape {tuple(alphas.shape)}, "
            f"{key!r} {tuple(outputs.shape)}"
        )
    finite = torch.isfinite(outputs).all(dim=1)
    rho, constant = spearman_rows(alphas.to(outputs), torch.where(torch.isfinite(outputs), outputs, 0.0))
    reasons = [
        "the path has fewer than two points" if outputs.shape[1] < 2
        else f"{key} has non-finite values" if not ok
        else "the target output is constant along the path (correlation undefined)" if flat
        else None
        for ok, flat in zip(finite.tolist(), constant.tolist())
    ]
    curves = list(outputs.cpu().numpy())
    return with_reasons(rho.cpu().numpy(), curves, reasons)


def _compared_maps(
    inputs: MetricInputs, reference: torch.Tensor, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored maps and the (n, C, H, W) reference at the stored maps' reduction, float64.

    Stored maps are channel-summed (n, H, W) unless the method kept channels; the reference is
    summed the same way, so the comparison is per pixel or per input element accordingly.
    """
    maps = inputs.maps.double()
    reference = reference.double()
    if maps.dim() == 3:
        reference = reference.sum(dim=1)
    if tuple(maps.shape) != tuple(reference.shape):
        raise ValueError(
            f"{metric}: maps of {_who(inputs)} have shape {tuple(inputs.maps.shape)}, which matches "
            f"neither IG's {tuple(reference.shape)} nor its channel sum"
        )
    return maps, reference


@register_metric("mard_ig", kind="explainer", direction="lower")
def mard_ig(
    inputs: MetricInputs,
    *,
    steps: Annotated[int, Ge(1), Doc("IG steps (Hesse et al., 2021: 128)")] = 128,
    rule: Annotated[
        Literal["left", "right", "trapezoid", "gausslegendre"],
        Doc("IG quadrature rule of the reference"),
    ] = "gausslegendre",
    baseline: Annotated[
        Literal["auto", "black", "origin"],
        Doc(
            "IG's reference point: auto = the homogeneity origin on an X-DNN, black otherwise"
            " (Hesse et al., 2021, IG(F, x, 0) for X-G and I×G respectively)"
        ),
    ] = "auto",
    ig_floor: Annotated[
        float,
        Ge(0),
        Lt(1),
        Doc("elements with |IG| < ig_floor · max|IG| of their sample are left out"),
    ] = 0.001,
    max_batch: int = 256,
) -> MetricOutput:
    """Mean absolute relative difference to Integrated Gradients (Hesse et al., 2021 Eq. 14, Table 2; lower is better).

    d(A, x) = mean_i |IG_i − A_i| / |IG_i|, per sample, as a fraction (Hesse et al., 2021 prints ×100 %).

    * IG is computed here by the registered ``integrated_gradients`` with `steps` (128 as in Hesse et al., 2021)
      and `rule`. Gauss–Legendre by default: the reference should be as exact as 128 gradient
      evaluations allow, and Captum's IG, which Hesse et al., 2021, numbers most likely used, defaults to it.
    * Baseline: Hesse et al., 2021 compares X-G on X-DNNs and I×G on regular DNNs with IG from the network's
      input zero. Here the method's zero is the homogeneity origin for X-Gradient (the
      normalisation mean) and black for attrflow's pixel-space Input×Gradient, hence ``auto``.
    * Reduction: maps stored channel-summed (the default) are compared with IG summed over
      channels, i.e. per pixel; maps kept per channel are compared per input element, as Eq. 14.
    * Zero guard: Eq. 14 divides by |IG_i|, which vanishes on pixels the model ignores and is
      dominated there by IG's own quadrature error. Elements with |IG_i| < `ig_floor`·max_j|IG_j|
      (per sample) are left out of the mean; a sample whose IG is zero everywhere is NaN.
    """
    from attrflow.methods import MethodNotApplicable, call_method, get_method

    # A static import, so the metric's code fingerprint follows the IG it compares with.
    from attrflow.methods.integrated_gradients import BASELINES  # noqa: F401

    if baseline == "auto":
        baseline = "origin" if getattr(inputs.model, "is_x_dnn", False) else "black"
    ig_params = {"baseline": baseline, "steps": steps, "rule": rule}
    try:
        ig = get_method(IG_FN)
        reference = call_method(
            ig, inputs.model, inputs.images, inputs.targets, ig_params, max_batch=max_batch
        ).maps
    except MethodNotApplicable as err:
        return MetricOutput.skipped(inputs.n, f"mard_ig: the IG reference is not defined here: {err}")
    maps, reference = _compared_maps(inputs, reference, "mard_ig")
    maps, reference = maps.flatten(1), reference.flatten(1)
    finite = torch.isfinite(maps).all(dim=1)
    magnitude = reference.abs()
    peak = magnitude.amax(dim=1, keepdim=True)
    kept = (magnitude >= ig_floor * peak) & (magnitude > 0)
    difference = (reference - torch.where(torch.isfinite(maps), maps, 0.0)).abs()
    relative = difference / torch.where(kept, magnitude, 1.0)
    values = (relative * kept).sum(dim=1) / kept.sum(dim=1).clamp(min=1)
    reasons = [
        NONFINITE_MAP if not ok
        else "IG is zero everywhere: relative differences are undefined" if p == 0
        else None
        for ok, p in zip(finite.tolist(), peak.squeeze(1).tolist())
    ]
    return with_reasons(values.cpu().numpy(), None, reasons)


@register_metric("ig_convergence", kind="explainer", direction="lower")
def ig_convergence(
    inputs: MetricInputs,
    *,
    step_grid: Annotated[
        list[Annotated[int, Ge(1)]],
        MinLen(1),
        Unique(),
        Doc("step counts whose error the curve reports (Hesse et al., 2021: 1…256)"),
    ] = [1, 2, 4, 8, 16, 32, 64],  # noqa: B006 (never mutated; a literal default)
    reference_steps: Annotated[
        int,
        Ge(2),
        Doc("steps of the reference IG (Hesse et al., 2021: 300)"),
    ] = 128,
    relative: Annotated[bool, Doc("divide each error by mean |IG_ref| of the sample")] = False,
) -> MetricOutput:
    """How far the evaluated IG is from converged: mean_i |IG_B,i − IG_ref,i| at the method's own
    step count B (Hesse et al., 2021 App. B.5; lower is better). Only for ``integrated_gradients`` methods.

    Hesse et al., 2021 plots the mean absolute difference between IG with n ∈ {1, 2, …, 256} steps and IG with
    300 steps. The per-sample value here is that difference at the method's configured B: the
    question this metric answers is whether *this* configuration has converged, and a continuous
    error aggregates into means and intervals where a "first n below a tolerance" would not
    (its tolerance would carry the units of each model's logits). The curve holds the errors at
    the sorted `step_grid`. The defaults (grid up to 64, reference 128) suit a CPU; the papers'
    setting is grid 1…256 against 300. All runs keep the method's baseline and rule, go through
    ``inputs.explain`` and are compared at the stored maps' reduction. ``relative`` divides by
    mean |IG_ref| so errors compare across models. A B ≥ `reference_steps` is NaN with a reason.
    """
    if inputs.method_fn != IG_FN:
        return MetricOutput.skipped(
            inputs.n, f"ig_convergence applies to {IG_FN} methods only; {_who(inputs)} is not one"
        )
    if inputs.explain is None:
        raise ValueError(f"ig_convergence: no explain callable was given for {_who(inputs)}")
    grid = sorted({int(n) for n in step_grid})
    own = inputs.method_params.get("steps")
    if own is None:
        from attrflow.methods import get_method

        own = get_method(IG_FN).params["steps"]["default"]
    if own >= reference_steps:
        reason = f"the method's steps ({own}) are not fewer than reference_steps ({reference_steps})"
        return with_reasons(np.full(inputs.n, np.nan), None, [reason] * inputs.n)

    def mean_error(steps: int, reference: torch.Tensor) -> torch.Tensor:
        maps = inputs.explain(inputs.images, inputs.targets, steps=steps).double()
        return (maps - reference).abs().flatten(1).mean(dim=1)

    reference = inputs.explain(inputs.images, inputs.targets, steps=reference_steps).double()
    errors = {n: mean_error(n, reference) for n in grid}
    if own not in errors:
        errors[own] = mean_error(own, reference)
    scale = reference.abs().flatten(1).mean(dim=1)
    if not relative:
        scale = torch.ones_like(scale)
    zero_scale = (scale == 0).tolist()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    curves = torch.stack([errors[n] / scale for n in grid], dim=1)
    finite_ref = torch.isfinite(reference).flatten(1).all(dim=1).tolist()
    reasons = [
        "the reference IG has non-finite values" if not ok
        else "the reference IG is zero everywhere: relative errors are undefined" if z
        else None
        for ok, z in zip(finite_ref, zero_scale)
    ]
    values = (errors[own] / scale).cpu().numpy()
    return with_reasons(values, list(curves.cpu().numpy().astype(np.float64)), reasons)

"""Completeness residual (UNI (Choi et al., 2024) Sec. 4.2, Hesse et al., 2021 axioms).

Path methods (IG and its baselines, UNI, X-Gradient on X-DNNs…) claim
Σ_i A_i(x) = F_c(x) − F_c(x'). How far a stored map misses that identity measures the method's
numerical error (Riemann steps, float precision) or a broken claim. The method must have stored
the baseline x' it integrated from (`diagnostics["baselines"]`, (n, C, H, W)) or, for a
distribution of baselines (DeepSHAP), the mean target logit over it (`diagnostics["baseline_output"]`,
(n,)); F(x) is always evaluated here. Methods that claim nothing are skipped rather than scored,
since a residual means nothing for them.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from attrflow.metrics._removal import TargetOutput, target_outputs, with_reasons
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc


@register_metric("completeness", kind="diagnostic", direction="lower")
def completeness(
    inputs: MetricInputs,
    *,
    relative: Annotated[bool, Doc("divide the residual by |F_c(x) − F_c(x')|")] = False,
    output: TargetOutput = "logit",
    max_batch: int = 256,
) -> MetricOutput:
    """|Σ maps − (F_c(x) − F_c(x'))|, F_c the target logit (lower is better).

    `relative` divides by |F_c(x) − F_c(x')| (NaN with a reason where that is zero). `output`
    is "prob" for methods that explain the softmax probability instead of the logit.
    """
    who = f"method {inputs.method!r} (fn {inputs.method_fn!r})"
    if not inputs.method_claims_completeness:
        return MetricOutput.skipped(inputs.n, f"{who} does not claim completeness")
    at_input = target_outputs(inputs.model, inputs.images, inputs.targets, output, max_batch)
    baseline_output = inputs.diagnostics.get("baseline_output")
    if baseline_output is not None and output == "logit":
        # A distribution baseline (DeepSHAP's background): the maps sum to F(x) − E_b F(x'_b),
        # which no single stored image gives; the method stores E_b F(x'_b) (target logit).
        gap = at_input - baseline_output.to(at_input)
    else:
        gap = at_input - _baseline_outputs(inputs, who, output, max_batch)
    total = inputs.maps.reshape(inputs.n, -1).double().sum(dim=1)
    residual = (total - gap).abs()
    reasons: list[str | None] = [None] * inputs.n
    if relative:
        residual = residual / gap.abs()
        reasons = [
            "F(x) - F(x') is zero: the relative residual is undefined" if g == 0 else None
            for g in gap.tolist()
        ]
    return with_reasons(residual.cpu().numpy().astype(np.float64), None, reasons)


def _baseline_outputs(inputs: MetricInputs, who: str, output: str, max_batch: int) -> torch.Tensor:
    baselines = inputs.diagnostics.get("baselines")
    if baselines is None:
        raise ValueError(f"completeness: {who} claims completeness but stored no 'baselines' diagnostic")
    if tuple(baselines.shape) != tuple(inputs.images.shape):
        raise ValueError(
            f"completeness: baselines of {who} have shape {tuple(baselines.shape)}, "
            f"images {tuple(inputs.images.shape)}"
        )
    return target_outputs(inputs.model, baselines.to(inputs.images), inputs.targets, output, max_batch)

"""Correlation of an attribution map with a severity map (Khakzar et al., MICCAI 2021, Sec. 3.2).

"For each image, we first assign each pixel with its severity score, obtaining a severity score
map. We then flatten both the attribution and severity score maps and compute their Pearson
correlation coefficient." Higher is better: the map follows where, and how severely, the image is
affected. The datasets that carry severity maps (``requires: [severity]``) are the regression
scenes of `attrflow.data.regression` (BrixIA's zone scores, embedded); on a dataset without them
every sample is skipped with a reason.

The map is the channel-summed attribution, signed as the method gives it (the paper's IBA maps
are nonnegative); ``absolute=True`` correlates |A| instead, for methods whose sign carries no
meaning. A constant map or a constant severity map (an image with one score everywhere, e.g. a
healthy one) has no correlation: NaN with a reason. Pearson's r is computed here in float64,
vectorised over the batch (scipy's ``pearsonr`` takes one pair at a time; the unit test checks
the two agree).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from attrflow.metrics._removal import NONFINITE_MAP, checked_maps
from attrflow.metrics.base import NAN, OK, MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc

CONSTANT_ATTRIBUTION = "the attribution map is constant: it has no correlation"
CONSTANT_SEVERITY = "the severity map is constant (one score everywhere): no correlation is defined"


def no_severity_reason(method: str) -> str:
    return (
        f"severity_correlation needs severity maps and the dataset has none (maps of method "
        f"{method!r}); select it only for datasets with severity maps (kind synthetic_severity)"
    )


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's r between the rows of (n, N) a and b, float64; NaN where a row is constant."""
    a, b = a.double(), b.double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(dim=1) / torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.where(norm > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))


@register_metric("severity_correlation", kind="map", direction="higher", requires=["severity"])
def severity_correlation(
    inputs: MetricInputs, *, absolute: Annotated[bool, Doc("correlate |A| instead of A")] = False
) -> MetricOutput:
    """Pearson's r of the flattened map with the flattened severity map. Requires severity maps."""
    if inputs.severity is None:
        return MetricOutput.skipped(inputs.n, no_severity_reason(inputs.method))
    maps = checked_maps(inputs, "severity_correlation").double()
    severity = inputs.severity.to(device=maps.device, dtype=torch.float64)
    if tuple(severity.shape) != tuple(maps.shape):
        raise ValueError(
            f"severity_correlation: severity maps have shape {tuple(severity.shape)} but maps of "
            f"method {inputs.method!r} have shape {tuple(maps.shape)}"
        )
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    maps = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    flat = (maps.abs() if absolute else maps).flatten(1)
    levels = severity.flatten(1)
    values = pearson_rows(flat, levels).cpu().numpy()
    constant_map = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
    constant_severity = (levels.amax(dim=1) == levels.amin(dim=1)).tolist()
    status, reasons = [], []
    for i in range(inputs.n):
        reason = (
            NONFINITE_MAP if not bool(finite[i])
            else CONSTANT_SEVERITY if constant_severity[i]
            else CONSTANT_ATTRIBUTION if constant_map[i]
            else None
        )
        if reason is not None:
            values[i] = np.nan
        status.append(OK if reason is None else NAN)
        reasons.append(reason)
    return MetricOutput(values, None, status, reasons)

"""Localisation metrics: does a map's heat fall on the object?

All four read the stored maps and the dataset's object masks and never query the model. They
*need masks*: on a dataset without them every sample is skipped with a reason, and the workflow
should refuse the combination at config time (each registration's docstring says "requires
masks"; the registration option that would carry it is an open question for `base.py`).

Shared conventions, and why:

* *Heat.* Localisation asks where the evidence *for* the target lies, so the heat of a pixel is
  the positive part of its (channel-summed) attribution; ``absolute=True`` uses |A| instead, for
  methods whose sign carries no meaning. The pointing game ranks the signed map (or |A|).
* *Region.* ``region="mask"`` compares with the object mask; ``"box"`` with the tightest
  axis-aligned box around it (all of its components), as the papers' ImageNet protocols use
  bounding boxes.
* *Undefined cases* are NaN with a reason, never a crash: a non-finite map, a constant map (it
  points nowhere; an all-zero map is constant), an empty mask, a map without any heat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F

from attrflow.metrics._removal import NONFINITE_MAP, checked_maps, trapezoid_auc
from attrflow.metrics.base import NAN, OK, SKIPPED, MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, Gt, Le

CONSTANT_MAP = "the attribution map is constant: it points nowhere"
EMPTY_REGION = "the object mask of this sample is empty"
NO_HEAT = "the map has no positive attribution (no heat to localise)"
NO_HEAT_ABSOLUTE = "the map is zero everywhere (no heat to localise)"

# Parameters the localisation metrics share, declared once (`attrflow.params`).
Region = Annotated[
    Literal["mask", "box"],
    Doc("compare with the object mask, or with the tightest axis-aligned box around it"),
]
AbsoluteHeat = Annotated[bool, Doc("heat = |A| instead of max(A, 0)")]


def no_masks_reason(metric: str, method: str) -> str:
    return (
        f"{metric} needs object masks and the dataset has none (maps of method {method!r}); "
        f"select it only for datasets with masks"
    )


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(n, H, W) bool → the tightest axis-aligned box around each mask's pixels, (n, H, W) bool.

    An empty mask gives an empty box.
    """
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # (n, H), (n, W)

    def span(hit: torch.Tensor) -> torch.Tensor:
        index = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
        first = torch.where(hit, index, hit.shape[1]).amin(dim=1, keepdim=True)
        last = torch.where(hit, index, -1).amax(dim=1, keepdim=True)
        return (index >= first) & (index <= last)

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def heat_of(maps: torch.Tensor, absolute: bool) -> torch.Tensor:
    """The heat each pixel carries: the positive part of the map, or its magnitude."""
    return maps.abs() if absolute else maps.clamp(min=0)


@dataclass
class _Prepared:
    """Maps (float64, non-finite entries zeroed), regions and per-sample reasons."""

    maps: torch.Tensor
    regions: torch.Tensor
    reasons: list[str | None]

    def flag(self, bad: torch.Tensor, reason: str) -> None:
        """Give `reason` to the samples where `bad` (n,) holds and that have none yet."""
        for i, b in enumerate(bad.tolist()):
            if b and self.reasons[i] is None:
                self.reasons[i] = reason


def _prepare(inputs: MetricInputs, metric: str, region: str) -> _Prepared | None:
    """Checked maps and regions, or None when the dataset has no masks."""
    if inputs.masks is None:
        return None
    maps = checked_maps(inputs, metric).double()
    masks = inputs.masks
    if tuple(masks.shape) != tuple(maps.shape):
        raise ValueError(
            f"{metric}: object masks have shape {tuple(masks.shape)} but maps of method "
            f"{inputs.method!r} have shape {tuple(maps.shape)}"
        )
    masks = masks.to(device=maps.device, dtype=torch.bool)
    regions = bounding_boxes(masks) if region == "box" else masks
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    maps = torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps))
    flat = maps.flatten(1)
    prepared = _Prepared(maps, regions, [None] * inputs.n)
    prepared.flag(~finite, NONFINITE_MAP)
    prepared.flag(~regions.flatten(1).any(dim=1), EMPTY_REGION)
    prepared.flag(flat.amax(dim=1) == flat.amin(dim=1), CONSTANT_MAP)
    return prepared


def _output(
    values: torch.Tensor,
    prepared: _Prepared,
    curves: torch.Tensor | None = None,
    skipped: list[str | None] | None = None,
) -> MetricOutput:
    """NaN with reason where a reason was flagged, skipped where `skipped` names one."""
    vals = values.detach().double().cpu().numpy().copy()
    curve_rows = None if curves is None else list(curves.detach().double().cpu().numpy())
    status, reasons = [], []
    for i in range(vals.shape[0]):
        skip = skipped[i] if skipped is not None else None
        reason = skip or prepared.reasons[i]
        if reason is not None:
            vals[i] = np.nan
            if curve_rows is not None:
                curve_rows[i] = None
        elif not np.isfinite(vals[i]):
            reason = "value is not finite"
        status.append(SKIPPED if skip else (OK if reason is None else NAN))
        reasons.append(reason)
    return MetricOutput(vals, curve_rows, status, reasons)


def _no_heat(absolute: bool) -> str:
    return NO_HEAT_ABSOLUTE if absolute else NO_HEAT


# ---------------------------------------------------------------- pointing game


def disk_dilation(regions: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean distance `radius` of a region pixel (n, H, W) bool."""
    if radius <= 0:
        return regions
    reach = int(np.floor(radius))
    offsets = torch.arange(-reach, reach + 1, device=regions.device, dtype=torch.float64)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= float(radius) ** 2).float()
    hits = F.conv2d(regions.float().unsqueeze(1), disk.view(1, 1, *disk.shape), padding=reach)
    return hits.squeeze(1) > 0.5


@register_metric("pointing_game", kind="map", direction="higher", requires=["masks"])
def pointing_game(
    inputs: MetricInputs,
    *,
    tolerance: Annotated[
        float,
        Ge(0),
        Doc(
            "a hit may miss the region by up to this many pixels (Euclidean); Zhang et al.'s "
            "protocol uses 15 at 224²"
        ),
    ] = 0,
    absolute: Annotated[bool, Doc("point at max |A|")] = False,
    region: Region = "mask",
) -> MetricOutput:
    """1 if the map's maximum lies on the object (within `tolerance` pixels), else 0. Requires masks.

    Ties for the maximum score the fraction of tied pixels that hit: the expected score of
    breaking the tie uniformly at random. (Quantus counts a hit if *any* tied maximum hits,
    which lets a flat map win; the conformance test pins the difference.)
    """
    prepared = _prepare(inputs, "pointing_game", region)
    if prepared is None:
        return MetricOutput.skipped(inputs.n, no_masks_reason("pointing_game", inputs.method))
    scores = prepared.maps.abs() if absolute else prepared.maps
    flat = scores.flatten(1)
    top = flat == flat.amax(dim=1, keepdim=True)
    near = disk_dilation(prepared.regions, tolerance).flatten(1)
    hits = (top & near).sum(dim=1).double() / top.sum(dim=1).double()
    return _output(hits, prepared)


# ---------------------------------------------------------------- relevance mass


@register_metric("relevance_mass", kind="map", direction="higher", requires=["masks"])
def relevance_mass(
    inputs: MetricInputs,
    *,
    absolute: AbsoluteHeat = False,
    region: Region = "mask",
) -> MetricOutput:
    """Relevance mass accuracy (Arras et al., CLEVR-XAI): heat inside the region / all heat.

    Requires masks. Arras et al. count positive relevance only, hence heat = max(A, 0) by
    default; Quantus's RelevanceMassAccuracy sums the signed map unless ``abs=True``.
    """
    prepared = _prepare(inputs, "relevance_mass", region)
    if prepared is None:
        return MetricOutput.skipped(inputs.n, no_masks_reason("relevance_mass", inputs.method))
    heat = heat_of(prepared.maps, absolute).flatten(1)
    total = heat.sum(dim=1)
    inside = (heat * prepared.regions.flatten(1)).sum(dim=1)
    prepared.flag(total <= 0, _no_heat(absolute))
    return _output(inside / torch.where(total > 0, total, torch.ones_like(total)), prepared)


# ---------------------------------------------------------------- IoU


def top_pixels(heat: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(n, N) heat, (n,) counts → (n, N) bool: the `counts` hottest pixels that have heat > 0.

    Ties are broken in row-major pixel order (a stable sort), as the removal metrics do.
    """
    order = torch.sort(heat, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(heat.shape[1], device=heat.device).expand_as(order)
    )
    return (ranks < counts.view(-1, 1)) & (heat > 0)


@register_metric("iou", kind="map", direction="higher", requires=["masks"])
def iou(
    inputs: MetricInputs,
    *,
    threshold_mode: Annotated[
        Literal["fraction_of_max", "quantile", "mask_area"],
        Doc(
            "fraction_of_max: heat >= threshold·max (CAM: 0.2); quantile: the hottest (1 − "
            "threshold) fraction of pixels; mask_area: as many hottest pixels as the region "
            "has (threshold ignored)"
        ),
    ] = "fraction_of_max",
    threshold: Annotated[float, Ge(0), Le(1), Doc("the threshold_mode's threshold")] = 0.2,
    absolute: AbsoluteHeat = False,
    region: Region = "mask",
) -> MetricOutput:
    """|S ∩ R| / |S ∪ R| between the thresholded map S and the region R. Requires masks.

    The papers leave the threshold open (Khakzar et al., MICCAI 2021). The default, pixels with at least 20 % of the
    maximum heat, is the threshold of CAM's localisation protocol (Zhou et al. 2016), which Khakzar, 2023
    cites for IoU. ``quantile`` and ``mask_area`` select a fixed number of the hottest pixels
    (ties in row-major order), never pixels without heat; ``mask_area`` needs no parameter and
    makes S as large as R.
    """
    prepared = _prepare(inputs, "iou", region)
    if prepared is None:
        return MetricOutput.skipped(inputs.n, no_masks_reason("iou", inputs.method))
    heat = heat_of(prepared.maps, absolute).flatten(1)
    regions = prepared.regions.flatten(1)
    peak = heat.amax(dim=1)
    prepared.flag(peak <= 0, _no_heat(absolute))
    if threshold_mode == "fraction_of_max":
        selected = (heat >= threshold * peak.view(-1, 1)) & (heat > 0)
    elif threshold_mode == "quantile":
        count = round((1.0 - threshold) * heat.shape[1])
        selected = top_pixels(heat, torch.full_like(peak, count, dtype=torch.long))
    elif threshold_mode == "mask_area":
        selected = top_pixels(heat, regions.sum(dim=1))
    else:
        raise ValueError(
            f"iou: threshold_mode must be fraction_of_max, quantile or mask_area, not {threshold_mode!r}"
        )
    intersection = (selected & regions).sum(dim=1).double()
    union = (selected | regions).sum(dim=1).double()
    return _output(intersection / union.clamp(min=1), prepared)


# ---------------------------------------------------------------- Effective Heat Ratio

EHR_CURVE_THRESHOLDS = 100  # value convention: the curve samples EHR(t) at t = k/100, k < 100
EHR_QUANTILES = 11  # quantile convention: q = 0, 0.1, …, 1, as the authors' released code
EHR_QUANTILE_CAP = 0.99  # quantile convention: thresholds are capped at 0.99·max heat (ditto)


def scaled_heat(maps: torch.Tensor, scale: str, absolute: bool) -> torch.Tensor:
    """(n, N) maps → heat on the [0, 1] scale EHR assumes (rows without heat stay zero)."""
    if scale == "none":
        return heat_of(maps, absolute)
    if scale == "max":
        heat = heat_of(maps, absolute)
        peak = heat.amax(dim=1, keepdim=True)
        return heat / torch.where(peak > 0, peak, torch.ones_like(peak))
    if scale == "minmax":
        signed = maps.abs() if absolute else maps
        low, high = signed.amin(dim=1, keepdim=True), signed.amax(dim=1, keepdim=True)
        spread = high - low
        return (signed - low) / torch.where(spread > 0, spread, torch.ones_like(spread))
    raise ValueError(f"ehr: scale must be max, minmax or none, not {scale!r}")


def ehr_value_integral(heat: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """∫_0^1 EHR(t) dt exactly, EHR(t) = Σ_{p∈R, h_p>t} h_p / |{p : h_p > t}| (0 if empty).

    EHR(t) is a step function of t: with the heats sorted, v_1 ≥ v_2 ≥ … ≥ v_N, and v_{N+1} = 0,
    it equals H_k / k on [v_{k+1}, v_k), H_k the in-region heat of the k hottest pixels. Hence
    ∫ = Σ_k (v_k − v_{k+1}) H_k / k; tied heats give zero-width intervals, so ties need no care.
    """
    order = torch.sort(heat, dim=1, descending=True, stable=True).indices
    values = heat.gather(1, order)
    in_heat = torch.cumsum(values * regions.gather(1, order), dim=1)
    widths = values - torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    ranks = torch.arange(1, heat.shape[1] + 1, device=heat.device, dtype=heat.dtype)
    return (widths * in_heat / ranks).sum(dim=1)


def ehr_value_curve(heat: torch.Tensor, regions: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """EHR(t) at each threshold t (K,): (n, K)."""
    ascending, order = torch.sort(heat, dim=1)
    in_heat = torch.cat(
        [torch.zeros_like(heat[:, :1]), torch.cumsum(ascending * regions.gather(1, order), dim=1)], dim=1
    )
    levels = thresholds.expand(heat.shape[0], -1).contiguous()
    below = torch.searchsorted(ascending.contiguous(), levels, right=True)
    count = heat.shape[1] - below
    hot_in_region = in_heat[:, -1:] - in_heat.gather(1, below)
    return torch.where(count > 0, hot_in_region / count.clamp(min=1), torch.zeros_like(hot_in_region))


def linear_quantiles(values: torch.Tensor, valid: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per row, the q-quantiles (linear interpolation, as numpy's default) of values[valid]: (n, K).

    Rows without a valid value give NaN.
    """
    count = valid.sum(dim=1, keepdim=True)
    ordered = torch.sort(torch.where(valid, values, torch.full_like(values, float("inf"))), dim=1).values
    position = q.view(1, -1) * (count - 1).clamp(min=0).to(values.dtype)
    low = position.floor().long()
    high = torch.minimum(low + 1, (count - 1).clamp(min=0))
    frac = position - low.to(values.dtype)
    low_v, high_v = ordered.gather(1, low), ordered.gather(1, high)
    result = low_v + frac * (high_v - low_v)
    return torch.where(count > 0, result, torch.full_like(result, float("nan")))


def quantile_levels(like: torch.Tensor) -> torch.Tensor:
    """q = k/10, k = 0…10, each the double nearest k/10: on 21 hot pixels q = 0.6 then sits exactly
    on a pixel (position 12), where a linspace-made 0.6000000000000001 would step past it."""
    steps = EHR_QUANTILES - 1
    return torch.arange(EHR_QUANTILES, dtype=like.dtype, device=like.device) / steps


def ehr_quantile_curve(heat: torch.Tensor, regions: torch.Tensor, base_threshold: float) -> torch.Tensor:
    """The authors' reading: per-map quantile thresholds over the pixels with heat ≥ the base
    threshold (the others count as zero heat), t_q capped at 0.99·max, pixels with heat ≥ t_q,
    ratio = in-region heat / their number. (n, 11); rows without such pixels are all zero (the
    metric reports them as NaN with a reason).
    """
    hot = heat >= base_threshold
    heat = torch.where(hot, heat, torch.zeros_like(heat))
    q = quantile_levels(heat)
    cap = EHR_QUANTILE_CAP * heat.amax(dim=1, keepdim=True)
    thresholds = torch.minimum(linear_quantiles(heat, hot, q), cap)
    above = heat[:, None, :] >= thresholds[:, :, None]  # (n, K, N)
    in_heat = (above * (heat * regions)[:, None, :]).sum(dim=2)
    return in_heat / above.sum(dim=2).clamp(min=1)


@register_metric("ehr", kind="map", direction="higher", requires=["masks"])
def ehr(
    inputs: MetricInputs,
    *,
    convention: Annotated[
        Literal["value", "quantile"],
        Doc(
            "value: thresholds t in [0, 1) on the heat, exact integral (seed digest B.22); "
            "quantile: the authors' code, 11 per-map quantiles, trapezoid"
        ),
    ] = "value",
    scale: Annotated[
        Literal["max", "minmax", "none"],
        Doc(
            "how heat is brought to [0, 1]: divide by its maximum, min-max the signed map, or"
            " none (the map must already lie in [0, 1])"
        ),
    ] = "max",
    max_region_fraction: Annotated[
        float,
        Gt(0),
        Le(1),
        Doc(
            "samples whose region covers more of the image are skipped (Zhang et al., 2021 "
            "keeps boxes under 33 %)"
        ),
    ] = 0.33,
    base_threshold: Annotated[
        float,
        Ge(0),
        Le(1),
        Doc("quantile convention only: heat below it is ignored"),
    ] = 0.1,
    absolute: AbsoluteHeat = False,
    region: Region = "mask",
) -> MetricOutput:
    """Effective Heat Ratio (Zhang et al., 2021 Sec. 4.5, App. F): area under the in-region heat per hot pixel
    as the heat threshold rises (higher is better). Requires masks.

    The paper's wording is ambiguous. Our choices:

    * ``convention="value"`` (default) is the digest's reading, the one that reproduces App. F:
      EHR(t) = Σ_{p∈R, h_p>t} h_p / |{p : h_p > t}| (0 when no pixel is hotter than t), for value
      thresholds t ∈ [0, 1), EHR = ∫_0^1 EHR(t) dt. EHR(t) is a step function of t, so the
      integral is computed exactly and no threshold count has to be chosen; the curve samples
      EHR(t) at t = k/100, k = 0…99, for plots. With ``scale="none"`` and a region of 25 % of
      the image, App. F's maps score (a) 1.0, (b) 0.8125, (c) 0.0625.
    * ``convention="quantile"`` re-implements the authors' released evaluation
      (CAMP-eXplain-AI/InputIBA, ``EffectiveHeatRatios``): pixels with heat < `base_threshold`
      count as cold; thresholds are the q-quantiles q = 0, 0.1, …, 1 of the remaining heat,
      capped at 0.99·max; a pixel is hot if heat ≥ t; area by the trapezoid rule over q. It
      scores App. F's maps (a) 1.0, (b) 0.4375, (c) 0.25. The curve is the 11 ratios.
    * ``scale``: EHR assumes heat on a fixed [0, 1] scale. Our maps come in the units of each
      method (logits, probabilities, capacities), so by default the heat is divided by its
      maximum. That makes EHR blind to a map's overall level: App. F's (c) (in-box 0.25) then
      scores like (a). ``"none"`` keeps the values (maps outside [0, 1] are NaN with a
      reason) and reproduces App. F literally; ``"minmax"`` rescales the signed map as the
      authors' code does before saving maps with negative values.
    * Samples whose region covers more than `max_region_fraction` of the image are skipped,
      as Zhang et al., 2021 evaluates only boxes under 33 % of the image.
    """
    prepared = _prepare(inputs, "ehr", region)
    if prepared is None:
        return MetricOutput.skipped(inputs.n, no_masks_reason("ehr", inputs.method))
    flat = prepared.maps.flatten(1)
    regions = prepared.regions.flatten(1)
    heat = scaled_heat(flat, scale, absolute)
    if scale == "none":
        signed = flat.abs() if absolute else flat
        prepared.flag(signed.amax(dim=1) > 1, "with scale 'none' the map must lie in [0, 1]; it exceeds 1")
    prepared.flag(heat.amax(dim=1) <= 0, _no_heat(absolute))
    if convention == "value":
        values = ehr_value_integral(heat, regions.double())
        steps = torch.arange(EHR_CURVE_THRESHOLDS, dtype=heat.dtype, device=heat.device)
        thresholds = steps / EHR_CURVE_THRESHOLDS
        curves = ehr_value_curve(heat, regions.double(), thresholds)
    elif convention == "quantile":
        curves = ehr_quantile_curve(heat, regions.double(), base_threshold)
        values = trapezoid_auc(curves, quantile_levels(heat))
        cold = heat.amax(dim=1) < base_threshold
        prepared.flag(cold, f"no pixel reaches the base threshold {base_threshold}")
    else:
        raise ValueError(f"ehr: convention must be value or quantile, not {convention!r}")
    fraction = regions.double().mean(dim=1)
    skipped = [
        f"the region covers {f:.0%} of the image, more than max_region_fraction={max_region_fraction}"
        if f > max_region_fraction else None
        for f in fraction.tolist()
    ]
    return _output(values, prepared, curves, skipped)

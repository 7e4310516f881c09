"""Localisation IoU against bounding boxes, the CAM protocol (Zhou et al., 2016).

Khakzar et al. (MICCAI 2021, Sec. 3.2) threshold attribution maps and report the mean IoU with
expert bounding boxes (NIH ChestX-ray8), with the threshold left open; Khakzar (2023) names
"bounding boxes in terms of intersection over union" after CAM's localisation. CAM's protocol
turns a map into a *box*: keep the pixels whose heat is at least ``threshold`` × the maximum
(CAM: 20 %), take the largest connected region of them (8-connectivity), and its bounding box
is the prediction; the value is its IoU with the ground-truth box it overlaps best (1 when it is
that box). ``iou`` (`attrflow.metrics.localisation`) compares the thresholded *pixels* with the
mask or with one box around all of it; this metric compares *boxes with boxes*, one per object.

Ground-truth boxes are the bounding boxes of the connected components (8-connectivity) of the
sample's object mask: one per lesion for the regression scenes (`attrflow.data.regression`,
whose lesions never touch), one per object for masks made from annotation boxes
(``boxes: {format: imagenet_xml | coco}``) — where two annotated boxes overlap their union is one
component, so they count as one box (the sample store keeps the original boxes). Heat is the
positive part of the map (``absolute=True``: |A|). Requires masks. A map without heat, a
constant map or an empty mask is NaN with its reason. The connected components come from
``scipy.ndimage``.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from scipy import ndimage

from attrflow.metrics._removal import NONFINITE_MAP, checked_maps
from attrflow.metrics.base import NAN, OK, MetricInputs, MetricOutput, register_metric
from attrflow.metrics.localisation import CONSTANT_MAP, EMPTY_REGION, NO_HEAT, NO_HEAT_ABSOLUTE, no_masks_reason
from attrflow.params import Doc, Ge, Le

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

Box = tuple[int, int, int, int]  # (top, left, bottom, right), half-open pixel ranges


def component_boxes(mask: np.ndarray) -> list[Box]:
    """The bounding box of every 8-connected component of a (H, W) bool mask."""
    labelled, _ = ndimage.label(mask, structure=EIGHT_CONNECTED)
    return [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndimage.find_objects(labelled) if s is not None]


def largest_component_box(selected: np.ndarray) -> Box | None:
    """The bounding box of the largest 8-connected component (ties: the first in row-major order)."""
    labelled, count = ndimage.label(selected, structure=EIGHT_CONNECTED)
    if count == 0:
        return None
    sizes = np.bincount(labelled.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    rows, cols = ndimage.find_objects(labelled)[largest - 1]
    return (rows.start, cols.start, rows.stop, cols.stop)


def box_iou_value(a: Box, b: Box) -> float:
    """IoU of two half-open pixel boxes (top, left, bottom, right)."""
    height = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    width = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = height * width
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@register_metric("box_iou", kind="map", direction="higher", requires=["masks"])
def box_iou(
    inputs: MetricInputs,
    *,
    threshold: Annotated[
        float, Ge(0), Le(1), Doc("keep heat >= threshold × max before boxing the largest region (CAM: 0.2)")
    ] = 0.2,
    absolute: Annotated[bool, Doc("heat = |A| instead of max(A, 0)")] = False,
) -> MetricOutput:
    """IoU of the box around the map's largest hot region with the best-matching object box."""
    if inputs.masks is None:
        return MetricOutput.skipped(inputs.n, no_masks_reason("box_iou", inputs.method))
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"box_iou: threshold must lie in [0, 1], got {threshold}")
    maps = checked_maps(inputs, "box_iou").double().cpu().numpy()
    masks = inputs.masks.bool().cpu().numpy()
    if masks.shape != maps.shape:
        raise ValueError(
            f"box_iou: object masks have shape {masks.shape} but maps of method {inputs.method!r} have shape {maps.shape}"
        )
    values = np.full(inputs.n, np.nan)
    status, reasons = [], []
    for i in range(inputs.n):
        heat = np.abs(maps[i]) if absolute else np.clip(maps[i], 0.0, None)
        truth = component_boxes(masks[i])
        reason = None
        if not np.isfinite(maps[i]).all():
            reason = NONFINITE_MAP
        elif not truth:
            reason = EMPTY_REGION
        elif maps[i].max() == maps[i].min():
            reason = CONSTANT_MAP
        elif heat.max() <= 0:
            reason = NO_HEAT_ABSOLUTE if absolute else NO_HEAT
        if reason is None:
            predicted = largest_component_box((heat >= threshold * heat.max()) & (heat > 0))
            assert predicted is not None  # the maximum itself is selected
            values[i] = max(box_iou_value(predicted, box) for box in truth)
        status.append(OK if reason is None else NAN)
        reasons.append(reason)
    return MetricOutput(values, None, status, reasons)

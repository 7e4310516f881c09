"""Hand-computed cases for the severity correlation (PCC) and the CAM-protocol box IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics._removal import select_output
from attrflow.metrics.box_localisation import box_iou_value, component_boxes, largest_component_box
from attrflow.metrics.severity import CONSTANT_ATTRIBUTION, CONSTANT_SEVERITY, pearson_rows


def inputs_for(maps: torch.Tensor, *, masks=None, severity=None) -> MetricInputs:
    n = maps.shape[0]
    targets = torch.zeros(n, dtype=torch.long)
    return MetricInputs(
        model=nn.Identity(), images=torch.zeros(n, 1, *maps.shape[-2:]), maps=maps.double(), targets=targets,
        labels=targets, ids=[f"s{i}" for i in range(n)], masks=masks, severity=severity, method="m",
    )


def score(name: str, maps: torch.Tensor, **kwargs):
    params = kwargs.pop("params", {})
    return call_metric(get_metric(name), inputs_for(maps, **kwargs), params)


# ---------------------------------------------------------------------------------------------
# Severity correlation


def test_severity_correlation_by_hand():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    severity = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    # centred: a = (−1.5, −0.5, 0.5, 1.5), b = (−0.5, −0.5, 0.5, 0.5); a·b = 2, |a| = √5, |b| = 1
    out = score("severity_correlation", maps, severity=severity)
    assert out.status == ["ok"]
    assert out.values[0] == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    # |A| differs from A only where A < 0: −4 in the last cell flips the sign of the relation
    signed = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    a = np.array([1.0, 2.0, 3.0, -4.0])
    b = np.array([0.0, 0.0, 1.0, 1.0])
    assert score("severity_correlation", signed, severity=severity).values[0] == pytest.approx(np.corrcoef(a, b)[0, 1])
    absolute = score("severity_correlation", signed, severity=severity, params={"absolute": True}).values[0]
    assert absolute == pytest.approx(2 / math.sqrt(5), abs=1e-12)


def test_pearson_rows_agree_with_scipy():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 50, generator=gen, dtype=torch.float64), torch.randn(5, 50, generator=gen, dtype=torch.float64)
    b[2] = 0.3 * a[2] + 0.1 * b[2]  # one strongly related pair
    ours = pearson_rows(a, b).numpy()
    theirs = [stats.pearsonr(a[i].numpy(), b[i].numpy()).statistic for i in range(5)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_severity_correlation_undefined_cases_and_missing_maps():
    severity = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]], [[0.0, 1.0], [2.0, 3.0]]])
    maps = torch.tensor([[[5.0, 5.0], [5.0, 5.0]], [[1.0, 2.0], [3.0, 4.0]], [[float("nan"), 0.0], [0.0, 0.0]]])
    out = score("severity_correlation", maps, severity=severity)
    assert out.status == ["nan", "nan", "nan"] and np.isnan(out.values).all()
    assert out.reasons[0] == CONSTANT_ATTRIBUTION and out.reasons[1] == CONSTANT_SEVERITY
    assert "non-finite" in out.reasons[2]
    skipped = score("severity_correlation", maps)
    assert skipped.status == ["skipped"] * 3 and "synthetic_severity" in skipped.reasons[0]
    with pytest.raises(ValueError, match="severity maps have shape"):
        score("severity_correlation", maps, severity=severity[:, :1])


# ---------------------------------------------------------------------------------------------
# Box IoU


def two_objects() -> torch.Tensor:
    """6×6: object A = rows 0–1 × cols 0–1, object B = rows 3–5 × cols 3–5 (separate components)."""
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, :2, :2] = True
    mask[0, 3:, 3:] = True
    return mask


def test_box_helpers_by_hand():
    mask = two_objects()[0].numpy()
    assert component_boxes(mask) == [(0, 0, 2, 2), (3, 3, 6, 6)]
    diagonal = np.eye(3, dtype=bool)  # 8-connected: one component
    assert component_boxes(diagonal) == [(0, 0, 3, 3)]
    assert box_iou_value((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou_value((0, 0, 2, 2), (2, 2, 4, 4)) == 0.0
    selected = np.zeros((5, 5), dtype=bool)
    selected[0, 0] = True
    selected[2:4, 2:5] = True
    assert largest_component_box(selected) == (2, 2, 4, 5)
    assert largest_component_box(np.zeros((2, 2), dtype=bool)) is None


def test_box_iou_is_the_cam_protocol_by_hand():
    masks = two_objects()
    heat = torch.zeros(1, 6, 6)
    heat[0, 3:5, 3:6] = 1.0  # the hot region: rows 3–4 × cols 3–5, box (3, 3, 5, 6): 6 px
    heat[0, 0, 0] = 0.1  # below 0.2 × max: dropped by the threshold
    # best box: B (3, 3, 6, 6), 9 px; intersection 6; union 9 → 2/3; A scores 0
    out = score("box_iou", heat, masks=masks)
    assert out.status == ["ok"] and out.values[0] == pytest.approx(2 / 3)
    # at threshold 0.05 the corner pixel joins, but a region of 1 px is not the largest one
    assert score("box_iou", heat, masks=masks, params={"threshold": 0.05}).values[0] == pytest.approx(2 / 3)
    # a hot region covering A exactly → 1
    exact = torch.zeros(1, 6, 6)
    exact[0, :2, :2] = 3.0
    assert score("box_iou", exact, masks=masks).values[0] == 1.0
    # negative heat counts only with absolute
    negative = -exact
    assert score("box_iou", negative, masks=masks).reasons[0] == "the map has no positive attribution (no heat to localise)"
    assert score("box_iou", negative, masks=masks, params={"absolute": True}).values[0] == 1.0


def test_box_iou_undefined_cases_and_missing_masks():
    masks = torch.cat([two_objects(), torch.zeros(1, 6, 6, dtype=torch.bool)])
    maps = torch.stack([torch.ones(6, 6), torch.rand(6, 6, generator=torch.Generator().manual_seed(0))])
    out = score("box_iou", maps, masks=masks)
    assert out.status == ["nan", "nan"] and "constant" in out.reasons[0] and "empty" in out.reasons[1]
    assert score("box_iou", maps).status == ["skipped", "skipped"]


# ---------------------------------------------------------------------------------------------
# Regression models and class-probability outputs


def test_single_output_models_have_no_class_probability():
    scores = torch.tensor([[2.5], [-1.0]])
    targets = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(select_output(scores, targets, "logit"), torch.tensor([2.5, -1.0], dtype=torch.float64))
    for output in ("prob", "top1"):
        with pytest.raises(ValueError, match="output: logit"):
            select_output(scores, targets, output)

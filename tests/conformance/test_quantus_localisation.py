"""Pointing game, relevance mass and IoU against Quantus 0.6 on the same maps and masks.

What Quantus computes, read from its source (metrics/localisation/pointing_game.py,
relevance_mass_accuracy.py, top_k_intersection.py):

* `PointingGame`: a hit if *any* pixel equal to the map's maximum lies in the mask; no
  tolerance. It normalises by the maximum first (default), which moves no maximum. With an
  empty mask it assigns NaN into a boolean array, which numpy stores as True: a hit.
* `RelevanceMassAccuracy`: Σ_mask a / Σ a on the *signed* map (after the same normalisation,
  which cancels in the ratio); ``abs=True`` takes |a| first. Arras et al. count positive
  relevance only, as we do.
* `TopKIntersection`: the fraction of the k highest-valued pixels that fall in the mask. With k
  the mask's area, S = top-k and |S| = |R| = k, so our ``iou`` with ``threshold_mode=mask_area``
  is t / (2 − t) of Quantus's t.

Matched settings agree exactly; where the definitions differ the tests pin the difference.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric

quantus = pytest.importorskip("quantus")

torch.set_num_threads(2)
SIDE = 8


def data(n: int = 6, seed: int = 0, positive: bool = False):
    generator = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, SIDE, SIDE, generator=generator, dtype=torch.float64)  # continuous: no ties
    if positive:
        maps = maps.abs() + 0.01
    masks = torch.zeros(n, SIDE, SIDE, dtype=torch.bool)
    corners = torch.randint(0, SIDE - 3, (n, 2), generator=generator)
    for i, (r, c) in enumerate(corners.tolist()):
        masks[i, r : r + 3, c : c + 4] = True  # 12 pixels each
    return maps, masks


def ours(name: str, maps: torch.Tensor, masks: torch.Tensor, **params) -> np.ndarray:
    n = maps.shape[0]
    targets = torch.zeros(n, dtype=torch.long)
    inputs = MetricInputs(
        model=nn.Identity(), images=torch.zeros(n, 1, SIDE, SIDE), maps=maps, targets=targets,
        labels=targets, ids=[str(i) for i in range(n)], masks=masks,
    )
    return call_metric(get_metric(name), inputs, params).values


def theirs(metric, maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    n = maps.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = metric(
            model=None,
            x_batch=np.zeros((n, 1, SIDE, SIDE), dtype=np.float32),
            y_batch=np.zeros(n, dtype=np.int64),
            a_batch=maps.unsqueeze(1).numpy(),
            s_batch=masks.unsqueeze(1).numpy().astype(np.float32),
            channel_first=True,
            device="cpu",
        )
    return np.asarray(scores, dtype=np.float64)


@pytest.mark.parametrize("absolute", [False, True])
def test_pointing_game_matches(absolute):
    maps, masks = data(12, seed=1)
    expected = theirs(quantus.PointingGame(abs=absolute, disable_warnings=True), maps, masks)
    got = ours("pointing_game", maps, masks, absolute=absolute)
    np.testing.assert_array_equal(got, expected)
    assert 0 < got.sum() < len(got)  # both hits and misses are exercised


def test_pointing_game_differences_are_pinned():
    maps, masks = data(2, seed=2)
    maps[0] = 0.0
    maps[0, 0, 0] = maps[0, 7, 7] = 1.0  # two tied maxima
    masks[0] = False
    masks[0, 0, 0] = True  # only one of them is on the object
    masks[1] = False  # empty mask
    quantus_scores = theirs(quantus.PointingGame(disable_warnings=True), maps, masks)
    assert quantus_scores.tolist() == [1.0, 1.0]  # any tie hits; an empty mask counts as a hit
    out = call_metric(
        get_metric("pointing_game"),
        MetricInputs(
            model=nn.Identity(), images=torch.zeros(2, 1, SIDE, SIDE), maps=maps,
            targets=torch.zeros(2, dtype=torch.long), labels=torch.zeros(2, dtype=torch.long),
            ids=["tie", "empty"], masks=masks,
        ),
        {},
    )
    assert out.values[0] == 0.5 and out.status == ["ok", "nan"]  # expected hit; undefined


def test_relevance_mass_matches_on_nonnegative_maps():
    maps, masks = data(8, seed=3, positive=True)
    expected = theirs(quantus.RelevanceMassAccuracy(disable_warnings=True), maps, masks)
    np.testing.assert_allclose(ours("relevance_mass", maps, masks), expected, rtol=1e-5)


def test_relevance_mass_on_signed_maps():
    maps, masks = data(8, seed=4)
    # Quantus on the positive part is our default; Quantus with abs=True is our absolute=True
    positive = theirs(quantus.RelevanceMassAccuracy(disable_warnings=True), maps.clamp(min=0), masks)
    np.testing.assert_allclose(ours("relevance_mass", maps, masks), positive, rtol=1e-5)
    magnitude = theirs(quantus.RelevanceMassAccuracy(abs=True, disable_warnings=True), maps, masks)
    np.testing.assert_allclose(ours("relevance_mass", maps, masks, absolute=True), magnitude, rtol=1e-5)
    # pinned: on the signed map Quantus sums negative relevance too, a ratio that can leave [0, 1]
    signed = theirs(quantus.RelevanceMassAccuracy(disable_warnings=True), maps, masks)
    flat, inside = maps.flatten(1), masks.flatten(1)
    np.testing.assert_allclose(signed, ((flat * inside).sum(1) / flat.sum(1)).numpy(), rtol=1e-5)
    assert not np.allclose(signed, positive)


def test_iou_at_mask_area_matches_top_k_intersection():
    maps, masks = data(8, seed=5, positive=True)
    k = int(masks[0].sum())
    assert (masks.flatten(1).sum(1) == k).all()  # Quantus takes one k for the batch
    fraction = theirs(quantus.TopKIntersection(k=k, disable_warnings=True), maps, masks)
    got = ours("iou", maps, masks, threshold_mode="mask_area")
    np.testing.assert_allclose(got, fraction / (2 - fraction), rtol=1e-9)
    assert 0 < fraction.min() and fraction.max() < 1  # partial overlaps are exercised

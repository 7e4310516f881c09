"""Hand-computed cases for the localisation metrics: pointing game, relevance mass, IoU and EHR.

Most cases use 4×4 single-channel maps whose object mask is the top-left 2×2 block (25 % of the
image), so every value can be written down by hand. The model is never queried.
"""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics.localisation import (
    CONSTANT_MAP,
    EMPTY_REGION,
    NO_HEAT,
    bounding_boxes,
    disk_dilation,
    linear_quantiles,
)

torch.set_num_threads(2)

LOCALISATION = ("pointing_game", "relevance_mass", "iou", "ehr")
TOP_LEFT = torch.zeros(4, 4, dtype=torch.bool)
TOP_LEFT[:2, :2] = True


def inputs_for(maps: torch.Tensor, masks: torch.Tensor | None, method: str = "ig_black") -> MetricInputs:
    maps = maps if maps.dtype == torch.float64 else maps.float()
    n = maps.shape[0]
    images = torch.zeros(n, 1, *maps.shape[-2:])
    targets = torch.zeros(n, dtype=torch.long)
    return MetricInputs(
        model=nn.Identity(),
        images=images,
        maps=maps,
        targets=targets,
        labels=targets,
        ids=[f"s{i}" for i in range(n)],
        masks=masks,
        method=method,
    )


def score(name: str, maps: torch.Tensor, masks: torch.Tensor | None = None, **params):
    if masks is None:
        masks = TOP_LEFT.expand(maps.shape[0], -1, -1)
    return call_metric(get_metric(name), inputs_for(maps, masks), params)


def one_hot_map(*cells: tuple[int, int], value: float = 1.0) -> torch.Tensor:
    m = torch.zeros(1, 4, 4)
    for r, c in cells:
        m[0, r, c] = value
    return m


# ---------------------------------------------------------------- helpers


def test_bounding_boxes_cover_every_component():
    masks = torch.zeros(3, 5, 6, dtype=torch.bool)
    masks[0, 1, 1] = masks[0, 3, 4] = True  # two components → one box rows 1–3, cols 1–4
    masks[1, 2:4, 0:2] = True  # already a box
    boxes = bounding_boxes(masks)
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[1:4, 1:5] = True
    assert torch.equal(boxes[0], expected)
    assert torch.equal(boxes[1], masks[1])
    assert not boxes[2].any()  # empty mask, empty box


def test_disk_dilation():
    region = torch.zeros(1, 5, 5, dtype=torch.bool)
    region[0, 2, 2] = True
    plus = disk_dilation(region, 1)[0]
    assert plus.sum() == 5 and plus[1, 2] and plus[2, 1] and not plus[1, 1]
    square = disk_dilation(region, 1.5)[0]  # √2 ≤ 1.5: the diagonal neighbours join
    assert square.sum() == 9
    assert torch.equal(disk_dilation(region, 0), region)


def test_linear_quantiles_match_numpy():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(3, 17, generator=generator, dtype=torch.float64)
    valid = values > 0.3
    q = torch.linspace(0, 1, 11, dtype=torch.float64)
    ours = linear_quantiles(values, valid, q)
    for i in range(3):
        np.testing.assert_allclose(ours[i].numpy(), np.quantile(values[i][valid[i]].numpy(), q.numpy()), atol=1e-12)
    assert torch.isnan(linear_quantiles(values, torch.zeros_like(valid), q)).all()


# ---------------------------------------------------------------- pointing game


def test_pointing_game_hit_and_miss():
    maps = torch.cat([one_hot_map((1, 1)), one_hot_map((3, 3))])
    out = score("pointing_game", maps)
    assert out.values.tolist() == [1.0, 0.0] and out.status == ["ok", "ok"]


def test_pointing_game_tolerance_is_euclidean():
    corner = torch.zeros(1, 4, 4, dtype=torch.bool)
    corner[0, 0, 0] = True
    maps = torch.cat([one_hot_map((2, 1)), one_hot_map((0, 3))])  # distances √5 ≈ 2.24 and 3
    masks = corner.expand(2, -1, -1)
    assert score("pointing_game", maps, masks).values.tolist() == [0.0, 0.0]
    assert score("pointing_game", maps, masks, tolerance=2).values.tolist() == [0.0, 0.0]
    assert score("pointing_game", maps, masks, tolerance=2.3).values.tolist() == [1.0, 0.0]
    assert score("pointing_game", maps, masks, tolerance=3).values.tolist() == [1.0, 1.0]


def test_pointing_game_ties_score_the_fraction_that_hits():
    maps = torch.cat([one_hot_map((0, 0), (3, 3)), one_hot_map((0, 0), (0, 1), (1, 0), (2, 2))])
    assert score("pointing_game", maps).values.tolist() == [0.5, 0.75]


def test_pointing_game_absolute_and_box():
    signed = one_hot_map((0, 0), value=-5.0) + one_hot_map((3, 3))
    assert score("pointing_game", signed).values[0] == 0.0
    assert score("pointing_game", signed, absolute=True).values[0] == 1.0
    l_shape = torch.zeros(1, 4, 4, dtype=torch.bool)
    l_shape[0, 0, 0] = l_shape[0, 1, 0] = l_shape[0, 1, 1] = True  # its box adds (0, 1)
    on_corner = one_hot_map((0, 1))
    assert score("pointing_game", on_corner, l_shape).values[0] == 0.0
    assert score("pointing_game", on_corner, l_shape, region="box").values[0] == 1.0


# ---------------------------------------------------------------- relevance mass


def test_relevance_mass_by_hand():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 3, 3], maps[0, 2, 2] = 3.0, -5.0, 1.0, -2.0
    assert score("relevance_mass", maps).values[0] == pytest.approx(3 / 4)  # positive heat only
    assert score("relevance_mass", maps, absolute=True).values[0] == pytest.approx(8 / 11)
    everything = torch.ones(1, 4, 4, dtype=torch.bool)
    assert score("relevance_mass", maps, everything).values[0] == pytest.approx(1.0)


def test_relevance_mass_without_positive_heat_is_nan():
    out = score("relevance_mass", -one_hot_map((0, 0)))
    assert out.status == ["nan"] and out.reasons == [NO_HEAT]


# ---------------------------------------------------------------- IoU


def iou_map() -> torch.Tensor:
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 1, 0], maps[0, 3, 3] = 1.0, 0.5, 0.1, 0.3
    maps[0, 2, 0] = -4.0  # negative evidence is never selected
    return maps


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, 2 / 5),  # ≥ 0.2·max: (0,0), (0,1), (3,3); 2 inside, union 4 + 1
        ({"threshold": 0.4}, 2 / 4),
        ({"threshold_mode": "quantile", "threshold": 0.875}, 2 / 4),  # the 2 hottest
        ({"threshold_mode": "quantile", "threshold": 0.75}, 3 / 5),  # 4 hottest: 3 inside
        ({"threshold_mode": "quantile", "threshold": 0.5}, 3 / 5),  # 8 asked, only 4 have heat
        ({"threshold_mode": "mask_area"}, 3 / 5),  # as many as the mask: 4
        ({"threshold": 0.02, "absolute": True}, 3 / 6),  # ≥ 0.08: |−4| joins, outside
    ],
)
def test_iou_by_hand(params, expected):
    assert score("iou", iou_map(), **params).values[0] == pytest.approx(expected)


def test_iou_rejects_unknown_mode():
    with pytest.raises(ValueError, match="threshold_mode"):
        score("iou", iou_map(), threshold_mode="otsu")


# ---------------------------------------------------------------- EHR


def app_f_maps() -> torch.Tensor:
    """S4-IIBA App. F: (a) in-box 1, outside 0; (b) in-box 1, outside 0.25; (c) in-box 0.25."""
    inside = TOP_LEFT.float()
    return torch.stack([inside, inside + 0.25 * (1 - inside), 0.25 * inside])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"scale": "none"}, [1.0, 0.8125, 0.0625]),  # the digest's reading reproduces App. F
        ({}, [1.0, 0.8125, 1.0]),  # divided by its max, (c) is (a)
        ({"convention": "quantile", "scale": "none"}, [1.0, 0.4375, 0.25]),  # the authors' code
    ],
)
def test_ehr_reproduces_appendix_f(params, expected):
    out = score("ehr", app_f_maps(), **params)
    np.testing.assert_allclose(out.values, expected, atol=1e-9)
    assert out.status == ["ok"] * 3


def test_ehr_curves_by_hand():
    value = score("ehr", app_f_maps()[1:2], scale="none")
    np.testing.assert_allclose(value.curves[0], [0.25] * 25 + [1.0] * 75, atol=1e-9)  # t = k/100
    quantile = score("ehr", app_f_maps()[1:2], scale="none", convention="quantile")
    # 16 heats (12 × 0.25, 4 × 1): quantiles ≤ 0.7 are 0.25 (all pixels hot), ≥ 0.8 reach 1 → 0.99
    np.testing.assert_allclose(quantile.curves[0], [0.25] * 8 + [1.0] * 3, atol=1e-9)


def test_ehr_value_integral_is_exact():
    # Heats on the 1/100 grid: EHR(t) is constant on every [k/100, (k+1)/100), so the mean of the
    # curve (a left Riemann sum) is the exact integral.
    generator = torch.Generator().manual_seed(1)
    maps = torch.randint(0, 101, (3, 6, 6), generator=generator).double() / 100
    masks = torch.rand(3, 6, 6, generator=generator) < 0.3
    out = call_metric(get_metric("ehr"), inputs_for(maps, masks), {"scale": "none", "max_region_fraction": 1.0})
    np.testing.assert_allclose(out.values, [c.mean() for c in out.curves], atol=1e-6)
    # and a brute-force midpoint rule over a fine grid on continuous heats agrees
    heat = torch.rand(2, 5, 5, generator=generator, dtype=torch.float64)
    regions = torch.rand(2, 5, 5, generator=generator) < 0.3
    out = call_metric(get_metric("ehr"), inputs_for(heat, regions), {"scale": "none", "max_region_fraction": 1.0})
    t = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    for i in range(2):
        h, r = heat[i].flatten(), regions[i].flatten().double()
        hot = h[None, :] > t[:, None]
        ratio = (hot * (h * r)).sum(1) / hot.sum(1).clamp(min=1)
        assert out.values[i] == pytest.approx(ratio.mean().item(), abs=1e-4)


def quantile_ehr_reference(heat: np.ndarray, region: np.ndarray, base: float) -> float:
    """The authors' quantile reading, written out with numpy, one map at a time."""
    heat = np.where(heat >= base, heat, 0.0)
    hot_values = heat[heat >= base]
    q = np.arange(11) / 10  # not np.linspace, whose 0.6000000000000001 steps past tied positions
    ratios = []
    for quantile in q:
        t = min(np.quantile(hot_values, quantile), 0.99 * heat.max())
        above = heat >= t
        ratios.append(heat[above & region].sum() / above.sum())
    return float(np.trapezoid(ratios, q))


def test_ehr_quantile_convention_matches_a_direct_implementation():
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(4, 7, 7, generator=generator, dtype=torch.float64)
    masks = torch.rand(4, 7, 7, generator=generator) < 0.25
    out = call_metric(get_metric("ehr"), inputs_for(maps, masks), {"convention": "quantile", "max_region_fraction": 1.0})
    for i in range(4):
        heat = maps[i].clamp(min=0).numpy()
        heat = heat / heat.max()
        assert out.values[i] == pytest.approx(quantile_ehr_reference(heat, masks[i].numpy(), 0.1), abs=1e-9)


def test_ehr_region_filter_and_range_checks():
    large = torch.zeros(1, 4, 4, dtype=torch.bool)
    large[0, :, :2] = True  # 50 % of the image
    out = score("ehr", one_hot_map((0, 0)), large)
    assert out.status == ["skipped"] and "50%" in out.reasons[0] and "max_region_fraction" in out.reasons[0]
    assert score("ehr", one_hot_map((0, 0)), large, max_region_fraction=0.5).status == ["ok"]
    too_hot = score("ehr", one_hot_map((0, 0), value=2.0), scale="none")
    assert too_hot.status == ["nan"] and "exceeds 1" in too_hot.reasons[0]
    cold = score("ehr", one_hot_map((0, 0), value=0.05), scale="none", convention="quantile")
    assert cold.status == ["nan"] and "base threshold" in cold.reasons[0]


def test_ehr_minmax_scale_uses_the_signed_map():
    # signed map −1 outside, +1 inside → min-max heat 0 outside, 1 inside: case (a)
    maps = (2 * TOP_LEFT.float() - 1).unsqueeze(0)
    assert score("ehr", maps, scale="minmax").values[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- edge cases, all four


@pytest.mark.parametrize("name", LOCALISATION)
def test_without_masks_every_sample_is_skipped(name):
    out = call_metric(get_metric(name), inputs_for(torch.rand(2, 4, 4), None, method="saliency"), {})
    assert out.status == ["skipped"] * 2 and np.isnan(out.values).all()
    assert "masks" in out.reasons[0] and "saliency" in out.reasons[0]


@pytest.mark.parametrize("name", LOCALISATION)
def test_degenerate_maps_and_masks_are_nan_with_reason(name):
    maps = torch.stack(
        [
            torch.full((4, 4), 0.3),  # constant
            torch.zeros(4, 4),  # all zero (constant)
            one_hot_map((0, 0))[0].clone().index_put_((torch.tensor(3), torch.tensor(3)), torch.tensor(float("nan"))),
            one_hot_map((0, 0))[0],  # fine map, empty mask
            one_hot_map((0, 0))[0],  # fine
        ]
    )
    masks = TOP_LEFT.repeat(5, 1, 1)
    masks[3] = False
    out = score(name, maps, masks)
    assert out.status == ["nan", "nan", "nan", "nan", "ok"], out.reasons
    assert out.reasons[:4] == [CONSTANT_MAP, CONSTANT_MAP, "attribution map has non-finite values", EMPTY_REGION]
    assert out.values[4] == pytest.approx(0.25 if name == "iou" else 1.0)  # one pixel of four
    assert np.isnan(out.values[:4]).all()


@pytest.mark.parametrize("name", LOCALISATION)
def test_batch_invariance_channels_and_determinism(name):
    generator = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 2, 8, 8, generator=generator)  # kept channels: summed per pixel
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 1:6] = True
    params = {"max_region_fraction": 1.0} if name == "ehr" else {}
    together = score(name, maps, masks, **params)
    summed = score(name, maps.sum(dim=1), masks, **params)
    np.testing.assert_allclose(together.values, summed.values, atol=1e-6)
    for i in range(3):  # batch size 1 gives the same numbers
        alone = score(name, maps[i : i + 1], masks[i : i + 1], **params)
        np.testing.assert_allclose(alone.values, together.values[i : i + 1], atol=1e-12)
    np.testing.assert_array_equal(score(name, maps, masks, **params).values, together.values)
    assert np.isfinite(together.values).all()


def test_masks_of_the_wrong_shape_name_the_method():
    with pytest.raises(ValueError, match="ig_black"):
        score("relevance_mass", torch.rand(1, 4, 4), torch.ones(1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="region"):
        score("iou", torch.rand(1, 4, 4), region="hull")


def test_registrations():
    for name in LOCALISATION:
        info = get_metric(name)
        assert (info.kind, info.direction) == ("map", "higher")
        assert "Requires masks" in info.fn.__doc__
        for fragment in info.params.values():
            jsonschema.Draft202012Validator.check_schema(fragment)
            jsonschema.validate(fragment["default"], fragment)

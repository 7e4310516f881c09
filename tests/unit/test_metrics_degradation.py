"""LeRF and MoRF input degradation: hand-computed curves on a linear model, the random-order
reference, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_metrics import linear_model, make_inputs, score

# logit 0 = 4·x00 + 3·x01 + 2·x10 + 1·x11 on an all-ones 2×2 image: F(x) = 10.
WEIGHTS = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
ONES = torch.ones(1, 1, 2, 2)
# The map ranks pixel (1, 1) highest and (0, 0) lowest.
MAP = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])


def test_lerf_by_hand():
    inputs = make_inputs(linear_model(WEIGHTS), ONES, MAP)
    out = score("lerf", inputs, steps=4, output="logit", against_random=False)
    # Least relevant first removes weights 4, 3, 2, 1: F = 10, 6, 3, 1, 0, so
    # c = |10 − F| / 10 = 0, .4, .7, .9, 1 and the area is .25·(.2 + .55 + .8 + .95) = .625.
    assert np.allclose(out.curves[0], [0.0, 0.4, 0.7, 0.9, 1.0])
    assert out.values[0] == pytest.approx(0.625)


def test_morf_by_hand():
    inputs = make_inputs(linear_model(WEIGHTS), ONES, MAP)
    out = score("morf", inputs, steps=4, output="logit", against_random=False)
    # Most relevant first removes weights 1, 2, 3, 4: F = 10, 9, 7, 4, 0 → c = 0, .1, .3, .6, 1;
    # area .25·(.05 + .2 + .45 + .8) = .375.
    assert np.allclose(out.curves[0], [0.0, 0.1, 0.3, 0.6, 1.0])
    assert out.values[0] == pytest.approx(0.375)


def test_against_random_is_zero_when_every_order_gives_the_same_curve():
    # Equal weights: every removal order removes the same logit per step.
    inputs = make_inputs(linear_model(torch.ones(2, 2)), ONES, MAP)
    for name in ("lerf", "morf"):
        out = score(name, inputs, steps=4, output="logit", random_orders=3)
        assert out.values[0] == pytest.approx(0.0, abs=1e-12)


def test_against_random_subtracts_the_random_orders_area_reproducibly():
    inputs = make_inputs(linear_model(WEIGHTS), ONES, MAP)
    plain = score("morf", inputs, steps=4, output="logit", against_random=False).values[0]
    a = score("morf", inputs, seed=3, steps=4, output="logit", random_orders=50).values[0]
    b = score("morf", inputs, seed=3, steps=4, output="logit", random_orders=50).values[0]
    assert a == b
    # A random order removes 2.5 logit per pixel on average: c = k/4, area .5; 50 orders
    # average close to it, and a one-pixel-per-step curve lies between .375 and .625.
    assert plain - a == pytest.approx(0.5, abs=0.05)


def test_probability_output_and_undefined_fraction():
    inputs = make_inputs(linear_model(WEIGHTS), ONES, MAP)
    out = score("lerf", inputs, steps=2, against_random=False)  # softmax of (F, 0)
    p = torch.sigmoid(torch.tensor([10.0, 3.0, 0.0])).numpy()
    assert np.allclose(out.curves[0], np.abs(p[0] - p) / p[0])
    zero = make_inputs(linear_model(WEIGHTS), torch.zeros(1, 1, 2, 2), MAP)
    bad = score("lerf", zero, steps=2, output="logit", against_random=False)
    assert bad.status == ["nan"] and "undefined" in bad.reasons[0]

"""Inverse IBA, Regression IBA and Multi-layer IBA (Khakzar et al., 2021).

* Inverse IBA on a model with two redundant predictive regions (either alone decides the class):
  IBA keeps the sufficient one, Inverse IBA marks both.
* Regression IBA's three output terms, and their inverse, on a linear model: with near-constant
  noise the bottleneck output and the direction of the first Adam step on every element are
  hand-computable (Adam's first step moves each logit by −lr · sign(gradient)).
* Multi-layer IBA's thresholded intersection on constructed maps, and its output contract.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attrflow.methods import MethodNotApplicable, call_method, get_method
from attrflow.methods._bottleneck import LayerStatistics, gaussian_capacity
from attrflow.methods.iba import iba
from attrflow.methods.iba_variants import (
    intersect_thresholded,
    inverse_iba,
    multi_layer_iba,
    regression_iba,
    regression_objective,
)
from attrflow.models import WrappedModel
from tests.unit.test_methods_iba import FAST, SIZE, as_references, small_cnn, train_split

torch.set_num_threads(1)
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Inverse IBA


class TwoRegions(nn.Module):
    """features = [z, −z] (1×1 conv, layer "0"); the class-0 evidence is a smooth maximum of the
    means of the top-left and bottom-right quadrants: either bright quadrant alone decides."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("0", nn.Conv2d(1, 2, 1, bias=False))
        with torch.no_grad():
            self._modules["0"].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = self._modules["0"](z)[:, 0]
        a, b = f[:, :4, :4].mean(dim=(1, 2)), f[:, 4:, 4:].mean(dim=(1, 2))
        evidence = 20 * (torch.logsumexp(10 * torch.stack([a, b], dim=1), dim=1) / 10 - 0.65)
        return torch.stack([evidence, -evidence], dim=1)


def uniform_feature_stats(channels_of, n: int = 500) -> dict[str, LayerStatistics]:
    train = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=F64)
    features = channels_of(train)
    return {"0": LayerStatistics(features.mean(0), features.std(0), (features != 0).double().mean(0))}


def quadrant_heat(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    first, second = maps[:, :4, :4].mean(dim=(1, 2)), maps[:, 4:, 4:].mean(dim=(1, 2))
    rest = (maps.sum(dim=(1, 2)) - maps[:, :4, :4].sum(dim=(1, 2)) - maps[:, 4:, 4:].sum(dim=(1, 2))) / 32
    return first, second, rest


def test_inverse_iba_marks_every_predictive_region_where_iba_keeps_a_sufficient_one():
    model = WrappedModel(TwoRegions(), num_classes=2, mean=[0.0], std=[1.0]).to(F64).eval()
    refs = uniform_feature_stats(lambda t: torch.cat([t, -t], dim=1))
    x = torch.full((1, 1, 8, 8), 0.5, dtype=F64)
    x[:, :, :4, :4], x[:, :, 4:, 4:] = 1.0, 0.9  # both quadrants predict class 0; the first more
    # β = 1: on this 128-element layer the mean KL of the open quadrants outweighs the CE at 10
    settings = dict(layer="0", beta=1.0, sigma=0.0, references=refs)
    kept = iba(model, x, torch.tensor([0]), generator=torch.Generator().manual_seed(0), **settings)
    deleted = inverse_iba(model, x, torch.tensor([0]), generator=torch.Generator().manual_seed(0), **settings)
    first, second, rest = quadrant_heat(kept.maps)
    inv_first, inv_second, inv_rest = quadrant_heat(deleted.maps)
    # IBA: the first quadrant suffices, the second is mostly dropped
    assert bool((second < 0.5 * first).all())
    # Inverse IBA: both quadrants must go for the prediction to go; both carry heat
    assert bool((inv_second > 0.7 * inv_first).all())
    assert bool((inv_second > 100 * inv_rest).all()) and bool((inv_first > 100 * inv_rest).all())
    assert bool((inv_second > 5 * second).all())
    # deleting the marked features removes the prediction; keeping IBA's keeps it
    assert bool((deleted.diagnostics["deleted_target_prob"] < 0.5).all())
    assert bool((kept.diagnostics["bottleneck_target_prob"] > 0.9).all())
    assert bool((deleted.maps >= 0).all())


@pytest.fixture(scope="module")
def cnn_setup():
    from attrflow.methods.references import build_feature_statistics

    model = small_cnn()
    stats, attrs = build_feature_statistics(model, train_split(12), seed=0, max_batch=5)
    x = torch.rand((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=F64)
    return model, as_references(stats, attrs), x, torch.tensor([0, 1, 2])


def test_inverse_iba_output_contract_determinism_and_bad_parameters(cnn_setup):
    model, refs, x, target = cnn_setup
    run = lambda max_batch, seed: inverse_iba(  # noqa: E731
        model, x, target, references=refs, max_batch=max_batch, generator=torch.Generator().manual_seed(seed), **FAST
    )
    result = run(256, 0)
    assert result.maps.shape == (3, SIZE, SIZE) and bool((result.maps >= 0).all())
    assert set(result.diagnostics) == {"information_bits", "deleted_target_prob"}
    torch.testing.assert_close(run(2, 0).maps, result.maps)
    assert not torch.allclose(run(256, 1).maps, result.maps)
    with pytest.raises(ValueError, match="beta"):
        inverse_iba(model, x, target, references=refs, beta=-1.0)
    assert all(not m._forward_hooks for m in model.modules())
    maps = call_method(get_method("inverse_iba"), model, x, target, {"steps": 2, "copies": 2},
                       generator=torch.Generator().manual_seed(0), references=refs).maps
    assert maps.shape == (3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------
# Regression IBA on a linear model


class LinearScore(nn.Module):
    """Layer "0" is the identity (a 1×1 conv of weight 1); Φ(z) = Σ_k W_k z_k."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.add_module("0", nn.Conv2d(1, 1, 1, bias=False))
        with torch.no_grad():
            self._modules["0"].weight.fill_(1.0)
        self.register_buffer("weights", weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self._modules["0"](z)[:, 0] * self.weights).sum(dim=(1, 2)).unsqueeze(1)


LINEAR_SIZE = 4
NOISE_STD = 1e-4  # the bottleneck's noise ≈ its mean μ: Z = λ R + (1 − λ) μ, deterministic
INITIAL_ALPHA = 5.0
LAMBDA0 = 1 / (1 + math.exp(-INITIAL_ALPHA))
# between the two samples' bottleneck scores (≈ 0.96 and 1.20), so mse pulls them opposite ways
TARGET_SCORE = 1.1


@pytest.fixture(scope="module")
def linear_setup():
    gen = torch.Generator().manual_seed(3)
    weights = torch.randn((LINEAR_SIZE, LINEAR_SIZE), generator=gen, dtype=F64)
    model = WrappedModel(LinearScore(weights), num_classes=1, mean=[0.0], std=[1.0], task="regression")
    model = model.to(F64).eval().requires_grad_(False)
    mu = torch.full((1, LINEAR_SIZE, LINEAR_SIZE), -0.8, dtype=F64)  # Φ(μ) is far from 0
    refs = {"0": LayerStatistics(mu, torch.full_like(mu, NOISE_STD), torch.ones_like(mu))}
    x = torch.rand((2, 1, LINEAR_SIZE, LINEAR_SIZE), generator=gen, dtype=F64)
    return model, refs, x, weights, mu


def hand_computed_step(loss: str, inverse: bool, x, weights, mu, target_score: float):
    """(Φ seen in the first step, λ direction per element: +1 up, −1 down) for β = 0.

    Φ(Z) = Φ(μ) + Σ_k λ_k d_k with d_k = W_k (R_k − μ_k), so ∂Φ/∂λ_k = d_k (−d_k for the inverse
    bottleneck, where the model sees 1 − λ). The output term L(Φ) has derivative
    mse: 2(Φ − y); maximisation: −2Φ; deviation: 2(Φ − Φ(R)). Inverse IBA minimises −L.
    """
    d = weights * (x[:, 0] - mu)
    phi_mu = (weights * mu).sum(dim=(1, 2)).expand(x.shape[0])
    phi_clean = (weights * x[:, 0]).sum(dim=(1, 2))
    lam = 1 - LAMBDA0 if inverse else LAMBDA0
    phi = phi_mu + lam * d.sum(dim=(1, 2))
    dloss_dphi = {"mse": 2 * (phi - target_score), "maximisation": -2 * phi, "deviation": 2 * (phi - phi_clean)}[loss]
    dphi_dlambda = -d if inverse else d
    gradient = dloss_dphi.view(-1, 1, 1) * dphi_dlambda * (-1 if inverse else 1)
    return phi, phi_clean, -torch.sign(gradient)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("loss", ["mse", "maximisation", "deviation"])
def test_regression_iba_losses_move_lambda_as_hand_computed_on_a_linear_model(linear_setup, loss, inverse):
    model, refs, x, weights, mu = linear_setup
    target_score = TARGET_SCORE
    result = regression_iba(
        model, x, torch.zeros(2, dtype=torch.long), loss=loss, inverse=inverse, target_score=target_score,
        layer="0", beta=0.0, steps=1, lr=0.5, copies=1, initial_alpha=INITIAL_ALPHA, sigma=0.0,
        min_std=NOISE_STD / 10, references=refs, generator=torch.Generator().manual_seed(0),
    )
    phi, phi_clean, direction = hand_computed_step(loss, inverse, x, weights, mu, target_score)
    torch.testing.assert_close(result.diagnostics["clean_score"], phi_clean)
    torch.testing.assert_close(result.diagnostics["bottleneck_score"], phi, atol=1e-2, rtol=0)
    # the map is the capacity of λ after the step; capacity grows with λ, so it tells the direction
    standardised = (x[:, 0] - mu) / NOISE_STD
    before = gaussian_capacity(standardised, torch.full_like(standardised, LAMBDA0)) / math.log(2)
    after_up = gaussian_capacity(standardised, torch.full_like(standardised, 1 / (1 + math.exp(-INITIAL_ALPHA - 0.5))))
    after_down = gaussian_capacity(standardised, torch.full_like(standardised, 1 / (1 + math.exp(-INITIAL_ALPHA + 0.5))))
    expected = torch.where(direction > 0, after_up, after_down) / math.log(2)
    assert bool(((result.maps > before) == (direction > 0)).all())
    # a step of lr · |g| / (|g| + ε) on every logit: lr up to Adam's ε
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=0)


def test_the_hand_computed_directions_tell_the_terms_apart(linear_setup):
    """On a linear model every term moves λ_k along ±sign(d_k), one sign per image; the cases
    above are chosen so that the sign differs between terms, images and inverse forms."""
    _, _, x, weights, mu = linear_setup
    d_sign = torch.sign(weights * (x[:, 0] - mu))

    def per_image(loss: str, inverse: bool) -> list[float]:
        direction = hand_computed_step(loss, inverse, x, weights, mu, TARGET_SCORE)[2]
        return (direction * d_sign).flatten(1)[:, 0].tolist()

    assert per_image("mse", False) == [1.0, -1.0]  # Φ ≈ 0.96 below y, Φ ≈ 1.20 above
    assert per_image("maximisation", False) == [1.0, 1.0]  # Φ > 0: raise it
    assert per_image("maximisation", True) == [-1.0, -1.0]  # shrink Φ(Z_inv)² ≈ 1.6²: keep what raises Φ
    assert per_image("deviation", False) == [1.0, 1.0]  # Φ(Z) just below Φ(X): open up


def test_regression_objective_terms_by_hand():
    logits = torch.tensor([[2.0], [-1.0], [0.5]], dtype=F64)
    images = torch.tensor([0, 1, 2])
    target = torch.zeros(3, dtype=torch.long)
    clean = torch.tensor([1.0, 1.0, 0.5], dtype=F64)
    mse = regression_objective("mse", target, target_score=3.0, clean_scores=None)
    rm = regression_objective("maximisation", target, target_score=0.0, clean_scores=None)
    dv = regression_objective("deviation", target, target_score=0.0, clean_scores=clean)
    torch.testing.assert_close(mse.loss(logits, images), torch.tensor([1.0, 16.0, 6.25], dtype=F64))
    torch.testing.assert_close(rm.loss(logits, images), torch.tensor([-4.0, -1.0, -0.25], dtype=F64))
    torch.testing.assert_close(dv.loss(logits, images), torch.tensor([1.0, 4.0, 0.0], dtype=F64))
    torch.testing.assert_close(dv.tracked(logits, images), logits[:, 0])
    with pytest.raises(ValueError, match="loss must be one of"):
        regression_objective("mae", target, target_score=0.0, clean_scores=None)


def test_regression_models_refuse_the_cross_entropy_variants(linear_setup):
    """One output: its log-softmax is 0 whatever passes, so CE cannot guide the bottleneck."""
    model, refs, x, *_ = linear_setup
    for method in (iba, inverse_iba):
        with pytest.raises(MethodNotApplicable, match="regression_iba"):
            method(model, x, torch.zeros(2, dtype=torch.long), layer="0", references=refs)


# ---------------------------------------------------------------------------------------------
# Multi-layer IBA


def test_intersection_of_thresholded_maps_by_hand():
    first = torch.tensor([[[4.0, 2.0], [1.0, 0.0]]])  # ≥ 0.5·4: {(0,0), (0,1)}
    second = torch.tensor([[[0.3, 0.1], [0.6, 0.2]]])  # ≥ 0.5·0.6: {(0,0), (1,0)}
    third = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])  # all
    expected = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(intersect_thresholded([first, second, third], 0.5), expected)
    torch.testing.assert_close(intersect_thresholded([first], 0.25), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]))
    # threshold 0 keeps every pixel with information, never one without
    torch.testing.assert_close(intersect_thresholded([first, second], 0.0), torch.tensor([[[1.0, 1.0], [1.0, 0.0]]]))
    with pytest.raises(ValueError, match="threshold"):
        intersect_thresholded([first], 1.5)
    with pytest.raises(ValueError, match="layers"):
        intersect_thresholded([], 0.5)


def test_multi_layer_iba_is_the_intersection_of_the_layers_iba_maps(cnn_setup):
    model, refs, x, target = cnn_setup
    layers = ["stage1", "stage2", "stage3"]
    result = multi_layer_iba(model, x, target, layers=layers, threshold=0.3, references=refs,
                             generator=torch.Generator().manual_seed(0), **FAST)
    assert result.maps.shape == (3, SIZE, SIZE)
    assert set(result.maps.unique().tolist()) <= {0.0, 1.0}
    assert result.diagnostics["layer_information_bits"].shape == (3, 3)
    # the same layers' IBA maps, with the seeds multi_layer_iba draws from one generator in turn
    generator = torch.Generator().manual_seed(0)
    singles = [iba(model, x, target, layer=layer, references=refs, generator=generator, **FAST).maps for layer in layers]
    torch.testing.assert_close(result.maps, intersect_thresholded(singles, 0.3))
    torch.testing.assert_close(result.diagnostics["selected_fraction"], result.maps.flatten(1).mean(1))
    with pytest.raises(ValueError, match="layers"):
        multi_layer_iba(model, x, target, layers="stage1", references=refs)


"""Axioms and hand-computed cases for gradient, Input×Gradient, X-Gradient, IG and random maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.catalog import catalog
from attrflow.methods import METHODS, MethodNotApplicable, call_method, get_method, reduce_channels
from attrflow.methods.gradient import gradient, input_x_gradient, x_gradient
from attrflow.methods.integrated_gradients import integrated_gradients, quadrature
from attrflow.methods.random_attribution import random_attribution
from attrflow.models import WrappedModel
from tiny_models import CLASSES, images, masked_cnn, regular_cnn, targets, x_cnn

torch.set_num_threads(2)
F64 = torch.float64
RULES = ["left", "right", "trapezoid", "gausslegendre"]


def logits_of(model: WrappedModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, target.unsqueeze(1)).squeeze(1)


def mard(attribution: torch.Tensor, reference_ig: torch.Tensor) -> float:
    """Mean absolute relative difference to IG (S3 Eq. 14), in [0, ∞).

    Elements where |IG| < 1e-6 · max|IG| are skipped: the seed leaves the division by zero
    open, and near-zero IG entries would otherwise dominate the mean with noise.
    """
    scale = reference_ig.abs()
    keep = scale >= 1e-6 * scale.max()
    return float(((attribution - reference_ig).abs()[keep] / scale[keep]).mean())


# ---------------------------------------------------------------------------------------------
# Hand-computed toy cases: a two-class "network" with closed-form gradients and integrals.


class Quadratic(nn.Module):
    """logit 0 = Σ z², logit 1 = Σ w·z (z = the wrapper's normalised input; here z = x)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([(z**2).flatten(1).sum(1), (z * self.w).flatten(1).sum(1)], dim=1)


@pytest.fixture
def toy():
    weights = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]], dtype=F64)
    model = WrappedModel(Quadratic(weights), num_classes=2, mean=[0.0], std=[1.0], name="toy").to(
        F64
    )
    x = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]], [[[1.0, 0.5], [0.25, 0.0]]]], dtype=F64)
    return model, x, weights


def test_gradient_methods_on_toy_match_hand_computation(toy):
    model, x, weights = toy
    quadratic, linear = torch.tensor([0, 0]), torch.tensor([1, 1])
    assert torch.allclose(gradient(model, x, quadratic).maps, 2 * x)
    assert torch.allclose(gradient(model, x, linear).maps, weights.expand_as(x))
    assert torch.allclose(gradient(model, -x, quadratic, absolute=True).maps, 2 * x)
    assert torch.allclose(input_x_gradient(model, x, quadratic).maps, 2 * x**2)
    assert torch.allclose(input_x_gradient(model, x, linear).maps, weights * x)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_ig_rules_on_quadratic_match_their_closed_form_sums(toy, steps):
    """F = Σx², black baseline: ∇F(αx) = 2αx, so IG_i = x_i²·2·Σ_k w_k α_k. Exact values:
    right (B+1)/B, left (B−1)/B, trapezoid and Gauss–Legendre 1 (both exact for linear g)."""
    model, x, _ = toy
    expected_factor = {
        "right": (steps + 1) / steps,
        "left": (steps - 1) / steps,
        "trapezoid": 1.0,
        "gausslegendre": 1.0,
    }
    for rule, factor in expected_factor.items():
        result = integrated_gradients(model, x, torch.tensor([0, 0]), steps=steps, rule=rule)
        assert torch.allclose(result.maps, factor * x**2, atol=1e-12), rule


def test_ig_of_linear_logit_is_exact_for_every_rule(toy):
    model, x, weights = toy
    for rule in RULES:
        for baseline, reference in [("black", 0.0), ("white", 1.0)]:
            result = integrated_gradients(
                model, x, torch.tensor([1, 1]), steps=2, rule=rule, baseline=baseline
            )
            assert torch.allclose(result.maps, weights * (x - reference)), (rule, baseline)
            assert torch.allclose(
                result.diagnostics["completeness_residual"], torch.zeros(2, dtype=F64), atol=1e-12
            )


def test_ig_mean_baseline_is_each_images_mean_colour(toy):
    model, x, weights = toy
    result = integrated_gradients(model, x, torch.tensor([1, 1]), baseline="mean", steps=1)
    per_image_mean = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(result.diagnostics["baselines"], per_image_mean.expand_as(x))
    assert torch.allclose(result.maps, weights * (x - per_image_mean))
    colour = images()  # three channels: one mean per channel, not one per image
    baselines = integrated_gradients(
        regular_cnn(), colour, targets(), baseline="mean", steps=1
    ).diagnostics["baselines"]
    assert torch.allclose(baselines, colour.mean(dim=(2, 3), keepdim=True).expand_as(colour))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [1, 2, 5, 16])
def test_quadrature_weights_sum_to_one_and_nodes_ascend(rule, steps):
    alphas, weights = quadrature(rule, steps)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12)
    assert np.all(np.diff(alphas) > 0) and alphas[0] >= 0 and alphas[-1] <= 1
    assert len(alphas) == (steps + 1 if rule == "trapezoid" else steps)


def test_gauss_legendre_integrates_polynomials_of_degree_2b_minus_1_exactly():
    alphas, weights = quadrature("gausslegendre", 4)
    assert math.isclose(float((weights * alphas**7).sum()), 1 / 8, rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Completeness and convergence on a real (tiny) network.


@pytest.mark.parametrize("baseline", ["black", "white", "mean"])
def test_ig_gauss_legendre_128_is_complete_within_one_percent(baseline):
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    result = integrated_gradients(
        model, x, target, baseline=baseline, steps=128, rule="gausslegendre"
    )
    reference = result.diagnostics["baselines"]
    output_delta = logits_of(model, x, target) - logits_of(model, reference, target)
    recomputed = (result.maps.flatten(1).sum(1) - output_delta).abs()
    assert torch.allclose(result.diagnostics["output_delta"], output_delta, atol=1e-12)
    assert torch.allclose(result.diagnostics["completeness_residual"], recomputed, atol=1e-12)
    assert (recomputed < 0.01 * output_delta.abs()).all(), (
        recomputed / output_delta.abs()
    ).tolist()


@pytest.mark.parametrize("rule", ["right", "left", "trapezoid"])
def test_riemann_rules_converge_as_steps_grow(rule):
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    converged = integrated_gradients(model, x, target, steps=512, rule="gausslegendre").maps
    residuals, map_errors = [], []
    for steps in (4, 32, 256):
        result = integrated_gradients(model, x, target, steps=steps, rule=rule)
        d = result.diagnostics
        residuals.append(float((d["completeness_residual"] / d["output_delta"].abs()).mean()))
        map_errors.append(float((result.maps - converged).abs().mean()))
    assert residuals[0] > residuals[1] > residuals[2], residuals
    assert map_errors[0] > map_errors[1] > map_errors[2], map_errors
    assert residuals[2] < 0.02


@pytest.mark.parametrize(
    "rule,extra", [("right", 1), ("left", 1), ("trapezoid", 0), ("gausslegendre", 2)]
)
def test_ig_path_diagnostics_span_both_endpoints_in_alpha_order(rule, extra):
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    steps = 6
    d = integrated_gradients(model, x, target, steps=steps, rule=rule).diagnostics
    points = len(quadrature(rule, steps)[0]) + extra
    for key in ("path_alphas", "path_logits", "path_probs"):
        assert d[key].shape == (4, points), key
    alphas = d["path_alphas"][0]
    assert alphas[0] == 0 and alphas[-1] == 1 and (alphas.diff() > 0).all()
    assert torch.allclose(
        d["path_logits"][:, 0], logits_of(model, torch.zeros_like(x), target), atol=1e-12
    )
    assert torch.allclose(d["path_logits"][:, -1], logits_of(model, x, target), atol=1e-12)
    middle = alphas[points // 2]
    with torch.no_grad():
        probs = torch.softmax(model(middle * x), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        middle_logit = logits_of(model, middle * x, target)
    assert torch.allclose(d["path_probs"][:, points // 2], probs, atol=1e-12)
    assert torch.allclose(d["path_logits"][:, points // 2], middle_logit, atol=1e-12)
    assert d["baselines"].shape == x.shape and d["completeness_residual"].shape == (4,)


# ---------------------------------------------------------------------------------------------
# X-Gradient (S3): equals IG on X-DNNs, is homogeneous, is refused elsewhere.


@pytest.mark.parametrize("normalised", [False, True], ids=["origin-zero", "origin-mean"])
def test_x_gradient_equals_ig_on_x_cnn(normalised):
    model, x, target = x_cnn(dtype=F64, normalised=normalised), images(dtype=F64), targets()
    xg = x_gradient(model, x, target)
    ig = integrated_gradients(model, x, target, baseline="origin", steps=128, rule="gausslegendre")
    assert mard(xg.maps, ig.maps) < 0.01
    assert torch.allclose(xg.diagnostics["baselines"], ig.diagnostics["baselines"])
    # completeness: Σ maps = F(x) − F(origin) = F(x) because F(origin) = 0 without biases
    assert torch.allclose(xg.diagnostics["output_delta"], logits_of(model, x, target), atol=1e-12)
    assert (xg.diagnostics["completeness_residual"] < 1e-10).all()


def test_input_x_gradient_is_not_ig_on_a_regular_cnn():
    model, x, target = regular_cnn(dtype=F64), images(dtype=F64), targets()
    ig = integrated_gradients(model, x, target, baseline="black", steps=128, rule="gausslegendre")
    assert mard(input_x_gradient(model, x, target).maps, ig.maps) > 0.10


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0])
def test_x_gradient_is_nonnegatively_homogeneous(alpha):
    x, target = images(dtype=F64), targets()
    zero_origin = x_cnn(dtype=F64, normalised=False)
    base = x_gradient(zero_origin, x, target).maps
    assert torch.allclose(
        x_gradient(zero_origin, alpha * x, target).maps, alpha * base, rtol=1e-10, atol=1e-14
    )
    # with normalisation the model is homogeneous about its origin (the mean), not about 0
    mean_origin = x_cnn(dtype=F64, normalised=True)
    origin = mean_origin.homogeneity_origin
    base = x_gradient(mean_origin, x, target).maps
    scaled = x_gradient(mean_origin, origin + alpha * (x - origin), target).maps
    assert torch.allclose(scaled, alpha * base, rtol=1e-10, atol=1e-14)


def test_x_gradient_and_origin_baseline_are_refused_on_a_regular_cnn():
    model, x, target = regular_cnn(), images(), targets()
    with pytest.raises(MethodNotApplicable, match="tiny_cnn"):
        x_gradient(model, x, target)
    with pytest.raises(MethodNotApplicable, match="tiny_cnn"):
        integrated_gradients(model, x, target, baseline="origin")


# ---------------------------------------------------------------------------------------------
# Sensitivity, batching, modes, randomness, input errors.


@pytest.mark.parametrize(
    "method,params",
    [
        (gradient, {}),
        (input_x_gradient, {}),
        (integrated_gradients, {"steps": 8}),
        (integrated_gradients, {"baseline": "white", "rule": "gausslegendre"}),
    ],
)
def test_pixels_the_model_ignores_get_zero_attribution(method, params):
    model, ignored = masked_cnn()
    maps = method(model, images(), targets(), **params).maps
    assert (maps[:, :, ignored] == 0).all()
    assert (maps[:, :, ~ignored] != 0).float().mean() > 0.5


BATCHED_CASES = [
    ("regular", gradient, {}),
    ("regular", input_x_gradient, {}),
    ("x", x_gradient, {}),
    ("regular", integrated_gradients, {"steps": 5, "rule": "right"}),
    ("regular", integrated_gradients, {"steps": 3, "rule": "gausslegendre", "baseline": "mean"}),
]


@pytest.mark.parametrize("kind,method,params", BATCHED_CASES)
def test_maps_and_pass_counts_do_not_depend_on_max_batch(kind, method, params):
    model = regular_cnn() if kind == "regular" else x_cnn()
    x, target = images(n=5), targets(n=5)
    runs = []
    for max_batch in (1, 7, 1000):
        model.reset_counters()
        result = method(model, x, target, max_batch=max_batch, **params)
        runs.append((result, model.forward_samples, model.backward_samples))
    first, forwards, backwards = runs[0]
    for result, f, b in runs[1:]:
        assert (f, b) == (forwards, backwards)
        assert torch.allclose(result.maps, first.maps, rtol=1e-6, atol=1e-6)
        for key, value in first.diagnostics.items():
            assert torch.allclose(result.diagnostics[key], value, rtol=1e-6, atol=1e-6), key


def test_ig_pass_counts_are_one_backward_per_point_plus_endpoint_forwards():
    model, x, target = regular_cnn(), images(n=3), targets(n=3)
    model.reset_counters()
    integrated_gradients(model, x, target, steps=5, rule="right", max_batch=4)
    assert (model.forward_samples, model.backward_samples) == (3 * 5 + 3, 3 * 5)
    model.reset_counters()
    integrated_gradients(model, x, target, steps=5, rule="gausslegendre", max_batch=4)
    assert (model.forward_samples, model.backward_samples) == (3 * 5 + 2 * 3, 3 * 5)


def test_model_mode_and_parameters_are_left_as_found():
    model, x, target = regular_cnn(), images(), targets()
    in_eval = gradient(model, x, target).maps
    model.train()
    in_train = gradient(model, x, target).maps
    assert model.training, "the caller's mode must be restored"
    assert torch.equal(in_train, in_eval), "BatchNorm must use running statistics while attributing"
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())


def test_maps_never_carry_the_callers_graph():
    model, x, target = regular_cnn(), images(), targets()
    for method in (gradient, input_x_gradient, integrated_gradients):
        assert not method(model, x.clone().requires_grad_(True), target).maps.requires_grad


def test_methods_work_inside_no_grad():
    model, x, target = regular_cnn(), images(), targets()
    expected = integrated_gradients(model, x, target, steps=4).maps
    with torch.no_grad():
        assert torch.allclose(integrated_gradients(model, x, target, steps=4).maps, expected)


def test_random_attribution_is_reproducible_per_seed():
    model, x, target = regular_cnn(), images(n=6), targets(n=6)

    def draw(seed: int, distribution: str = "uniform") -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return random_attribution(
            model, x, target, distribution=distribution, generator=generator
        ).maps

    assert draw(0).shape == (6, x.shape[2], x.shape[3])
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert (draw(0) >= 0).all() and (draw(0) < 1).all()
    assert (draw(0, "normal") < 0).any()
    with pytest.raises(ValueError, match="distribution"):
        draw(0, "cauchy")


ALL_METHODS = [
    (gradient, {}),
    (input_x_gradient, {}),
    (integrated_gradients, {"steps": 2}),
    (random_attribution, {}),
]


@pytest.mark.parametrize("method,params", ALL_METHODS)
def test_bad_inputs_name_the_sample_and_parameter(method, params):
    model, x, target = regular_cnn(), images(), targets()
    poisoned = x.clone()
    poisoned[2, 1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"sample 2: parameter x"):
        method(model, poisoned, target, **params)
    for bad in (CLASSES, -1):
        wrong = target.clone()
        wrong[1] = bad
        with pytest.raises(ValueError, match=r"sample 1: parameter target"):
            method(model, x, wrong, **params)
    with pytest.raises(ValueError, match="parameter target"):
        method(model, x, target[:2], **params)


def test_x_gradient_rejects_non_finite_input():
    model, x, target = x_cnn(), images(), targets()
    x[3, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"sample 3: parameter x"):
        x_gradient(model, x, target)


def test_bad_parameters_are_named():
    model, x, target = regular_cnn(), images(), targets()
    # checked against the signature's declarations, with the config's message and key path
    ig = get_method("integrated_gradients")
    with pytest.raises(ValueError, match=r"'integrated_gradients\.steps'"):
        call_method(ig, model, x, target, {"steps": 0})
    with pytest.raises(ValueError, match=r"'integrated_gradients\.rule'"):
        call_method(ig, model, x, target, {"rule": "middle"})
    with pytest.raises(ValueError, match=r"'integrated_gradients\.baseline'"):
        call_method(ig, model, x, target, {"baseline": "grey"})
    with pytest.raises(ValueError, match="parameter max_batch"):
        gradient(model, x, target, max_batch=0)


# ---------------------------------------------------------------------------------------------
# Registration and channel reduction.


def test_registrations_declare_the_right_claims_and_match_the_catalog():
    expected = {
        "gradient": (False, False),
        "input_x_gradient": (False, False),
        "x_gradient": (True, False),
        "integrated_gradients": (True, False),
        "random_attribution": (False, True),
    }
    entries = catalog("methods")
    for name, (completeness, channel_free) in expected.items():
        info = get_method(name)
        assert (info.completeness, info.channel_free) == (completeness, channel_free), name
        assert entries[name].params == info.params
        assert entries[name].options.get("completeness", False) == completeness
    assert METHODS.get("integrated_gradients").params["rule"]["default"] == "right"


def test_call_method_injects_runtime_keywords():
    model, x, target = regular_cnn(), images(), targets()
    info = get_method("random_attribution")
    first = call_method(info, model, x, target, {}, generator=torch.Generator().manual_seed(3))
    second = call_method(info, model, x, target, {}, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.maps, second.maps)
    ig = call_method(
        get_method("integrated_gradients"), model, x, target, {"steps": 3}, max_batch=2
    )
    assert torch.allclose(ig.maps, integrated_gradients(model, x, target, steps=3).maps, atol=1e-6)


def test_reduce_channels():
    maps = torch.tensor([[[[1.0]], [[-2.0]], [[4.0]]]])  # (1, 3, 1, 1)
    assert reduce_channels(maps, "sum").item() == 3.0
    assert reduce_channels(maps, "abs_sum").item() == 7.0
    assert reduce_channels(maps, "mean").item() == 1.0
    assert reduce_channels(maps).shape == (1, 1, 1)
    channel_free = torch.ones(2, 4, 4)
    assert reduce_channels(channel_free, "abs_sum") is channel_free
    with pytest.raises(ValueError, match="median"):
        reduce_channels(maps, "median")

"""Hand-computed cases for path monotonicity, MARD to IG and IG convergence.

Two toy models make IG known in closed form (one channel, no normalisation, class 1 = 0):

* linear, logit_0 = Σ w z: IG from black = w ⊙ x = Input×Gradient, for every rule and step count;
* quadratic, logit_0 = Σ w z²: ∇ = 2 w z is linear along the path, so IG from black = w ⊙ x²
  exactly (Gauss–Legendre is exact for it), Input×Gradient = 2 w ⊙ x², and the right Riemann
  sum with n steps gives w ⊙ x² · (n + 1)/n.
"""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from attrflow.methods import call_method, get_method
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics._stats import average_ranks
from attrflow.models import WrappedModel

from tiny_models import images as tiny_images
from tiny_models import regular_cnn, targets as tiny_targets, x_cnn

torch.set_num_threads(2)

X = torch.tensor([[[[0.5, 1.0], [0.25, 0.75]]]])
W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


class Polynomial(nn.Module):
    """logit_0 = Σ w ⊙ z^power over channels and pixels, logit_1 = 0."""

    def __init__(self, weight: torch.Tensor, power: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.power = power

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (self.weight * z**self.power).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def toy_model(weight: torch.Tensor, power: int, channels: int = 1) -> WrappedModel:
    model = WrappedModel(Polynomial(weight, power), num_classes=2, mean=[0.0] * channels, std=[1.0] * channels)
    return model.eval().requires_grad_(False)


def make_inputs(model, images, maps, *, targets=None, **extra) -> MetricInputs:
    n = images.shape[0]
    targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return MetricInputs(
        model=model, images=images, maps=maps, targets=targets, labels=targets,
        ids=[f"s{i}" for i in range(n)], **extra,
    )


def score(name: str, inputs: MetricInputs, **params):
    return call_metric(get_metric(name), inputs, params, generator=torch.Generator().manual_seed(0))


def explainer(model, params: dict, keep_channels: bool = False):
    """The runner's `explain`: the IG method with its config params, overrides on top."""
    info = get_method("integrated_gradients")

    def explain(x, target, model_override=None, **overrides):
        maps = call_method(info, model_override or model, x, target, {**params, **overrides}).maps
        return maps if keep_channels else maps.sum(dim=1)

    return explain


# ---------------------------------------------------------------- path monotonicity


def path_inputs(outputs: torch.Tensor, alphas: torch.Tensor | None = None, key: str = "path_probs"):
    n = outputs.shape[0]
    diagnostics = {key: outputs}
    if alphas is not None:
        diagnostics["path_alphas"] = alphas
    return make_inputs(
        nn.Identity(), torch.zeros(n, 1, 2, 2), torch.zeros(n, 2, 2), diagnostics=diagnostics,
        method="ig_black", method_fn="integrated_gradients",
    )


def test_average_ranks():
    ranks = average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]]))
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0]]


def test_path_monotonicity_by_hand():
    alphas = torch.linspace(0, 1, 5).expand(3, -1)
    probs = torch.tensor([[0.1, 0.3, 0.2, 0.5, 0.9], [0.9, 0.5, 0.4, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4, 0.5]])
    out = score("path_monotonicity", path_inputs(probs, alphas))
    # sample 0: rank differences (0, 1, −1, 0, 0) → ρ = 1 − 6·2 / (5·24) = 0.9
    np.testing.assert_allclose(out.values, [0.9, -1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(out.curves[0], probs[0].numpy(), atol=1e-7)
    logits = score("path_monotonicity", path_inputs(probs, alphas, key="path_logits"), output="logit")
    np.testing.assert_allclose(logits.values, out.values, atol=1e-12)


def test_path_monotonicity_ties_match_scipy_and_order_does_not_matter():
    generator = torch.Generator().manual_seed(0)
    probs = torch.randint(0, 4, (4, 9), generator=generator).double() / 4  # many ties
    probs[:, 0] = 0.0
    probs[:, 1] = 1.0  # never constant
    alphas = torch.linspace(0, 1, 9, dtype=torch.float64).expand(4, -1)
    out = score("path_monotonicity", path_inputs(probs, alphas))
    expected = [spearmanr(alphas[i].numpy(), probs[i].numpy()).statistic for i in range(4)]
    np.testing.assert_allclose(out.values, expected, atol=1e-12)
    shuffled = torch.randperm(9, generator=generator)
    again = score("path_monotonicity", path_inputs(probs[:, shuffled], alphas[:, shuffled]))
    np.testing.assert_allclose(again.values, out.values, atol=1e-12)
    storage_order = score("path_monotonicity", path_inputs(probs))  # no alphas: position = index
    np.testing.assert_allclose(storage_order.values, out.values, atol=1e-12)


def test_path_monotonicity_on_a_real_ig_path():
    model, x, target = regular_cnn(), tiny_images(3), tiny_targets(3)
    result = call_method(get_method("integrated_gradients"), model, x, target, {"steps": 16, "rule": "trapezoid"})
    inputs = make_inputs(
        model, x, result.maps.sum(1), targets=target, diagnostics=result.diagnostics,
        method="ig_black", method_fn="integrated_gradients",
    )
    out = score("path_monotonicity", inputs)
    alphas, probs = result.diagnostics["path_alphas"], result.diagnostics["path_probs"]
    assert alphas.shape == (3, 17)
    expected = [spearmanr(alphas[i].numpy(), probs[i].numpy()).statistic for i in range(3)]
    np.testing.assert_allclose(out.values, expected, atol=1e-9)
    assert out.status == ["ok"] * 3


def test_path_monotonicity_undefined_and_missing():
    flat = torch.tensor([[0.5, 0.5, 0.5], [0.1, float("nan"), 0.3], [0.1, 0.2, 0.3]])
    out = score("path_monotonicity", path_inputs(flat))
    assert out.status == ["nan", "nan", "ok"]
    assert "constant" in out.reasons[0] and "non-finite" in out.reasons[1]
    assert out.curves[0] is None and out.values[2] == pytest.approx(1.0)
    missing = score("path_monotonicity", path_inputs(flat), output="logit")
    assert missing.status == ["skipped"] * 3
    assert "ig_black" in missing.reasons[0] and "path_logits" in missing.reasons[0]


# ---------------------------------------------------------------- MARD to IG


def test_mard_is_zero_where_input_x_gradient_is_ig():
    model = toy_model(W, power=1)
    out = score("mard_ig", make_inputs(model, X, (W * X[0, 0]).unsqueeze(0)))
    assert out.values[0] == pytest.approx(0.0, abs=1e-6) and out.status == ["ok"]


def test_mard_by_hand():
    model = toy_model(W, power=1)
    ig = W * X[0, 0]
    scaled = score("mard_ig", make_inputs(model, X, 1.1 * ig.unsqueeze(0)))
    assert scaled.values[0] == pytest.approx(0.1, abs=1e-6)
    one_off = ig.clone()
    one_off[1, 0] *= 2  # relative difference 1 on one element of four
    assert score("mard_ig", make_inputs(model, X, one_off.unsqueeze(0))).values[0] == pytest.approx(0.25, abs=1e-6)
    # quadratic: IG = w x², Input×Gradient = 2 w x² → relative difference 1 everywhere
    quadratic = toy_model(W, power=2)
    ixg = call_method(get_method("input_x_gradient"), quadratic, X, torch.zeros(1, dtype=torch.long), {}).maps
    inputs = make_inputs(quadratic, X, ixg.sum(1))
    assert score("mard_ig", inputs).values[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(score("mard_ig", inputs).values, score("mard_ig", inputs).values)


def test_mard_leaves_out_elements_where_ig_vanishes():
    weight = torch.tensor([[1.0, 2.0], [4.0, 1e-5]])
    model, x = toy_model(weight, power=1), torch.ones(1, 1, 2, 2)
    maps = (weight + 0.01).unsqueeze(0)  # IG = weight; every element off by 0.01
    kept = score("mard_ig", make_inputs(model, x, maps))
    assert kept.values[0] == pytest.approx((0.01 + 0.005 + 0.0025) / 3, rel=1e-4)
    everything = score("mard_ig", make_inputs(model, x, maps), ig_floor=0.0)
    assert everything.values[0] > 200  # 0.01 / 1e-5 dominates
    zero_image = score("mard_ig", make_inputs(model, torch.zeros(1, 1, 2, 2), maps))
    assert zero_image.status == ["nan"] and "zero everywhere" in zero_image.reasons[0]


def test_mard_compares_at_the_stored_reduction():
    weight = torch.stack([W, W])  # two channels, equal weights
    model = toy_model(weight, power=1, channels=2)
    x = X.repeat(1, 2, 1, 1)
    ig = (weight * x[0]).unsqueeze(0)
    shifted = ig.clone()
    shifted[0, 0] += 0.5
    shifted[0, 1] -= 0.5  # cancels in the channel sum
    assert score("mard_ig", make_inputs(model, x, shifted.sum(1))).values[0] == pytest.approx(0.0, abs=1e-6)
    per_element = score("mard_ig", make_inputs(model, x, shifted)).values[0]
    assert per_element == pytest.approx(float((0.5 / ig).mean()), rel=1e-5)


def test_mard_on_x_dnn_and_regular_network():
    x, target = tiny_images(3), tiny_targets(3)
    xnet = x_cnn()
    xg = call_method(get_method("x_gradient"), xnet, x, target, {}).maps.sum(1)
    out = score("mard_ig", make_inputs(xnet, x, xg, targets=target))
    assert (out.values < 1e-5).all(), out.values  # X-G is IG from the origin on an X-DNN (~1e-7)
    net = regular_cnn()
    ixg = call_method(get_method("input_x_gradient"), net, x, target, {}).maps.sum(1)
    regular = score("mard_ig", make_inputs(net, x, ixg, targets=target))
    assert (regular.values > 0.05).all(), regular.values
    refused = score("mard_ig", make_inputs(net, x, ixg, targets=target), baseline="origin")
    assert refused.status == ["skipped"] * 3 and "X-DNN" in refused.reasons[0]


def test_mard_nonfinite_map_and_bad_shape():
    model = toy_model(W, power=1)
    maps = (W * X[0, 0]).unsqueeze(0).clone()
    maps[0, 0, 0] = float("nan")
    out = score("mard_ig", make_inputs(model, X, maps))
    assert out.status == ["nan"] and "non-finite" in out.reasons[0]
    with pytest.raises(ValueError, match="ig_black"):
        score("mard_ig", make_inputs(model, X, torch.zeros(1, 3, 3), method="ig_black"))


# ---------------------------------------------------------------- IG convergence


def convergence_inputs(model, x, params, method_fn="integrated_gradients"):
    return make_inputs(
        model, x, torch.zeros(x.shape[0], *x.shape[2:]), explain=explainer(model, params),
        method_params=params, method="ig_right", method_fn=method_fn,
    )


def test_ig_convergence_by_hand():
    # right rule on the quadratic model: IG_n = w x² (n + 1)/n, so |IG_n − IG_R| = |w| x² (1/n − 1/R)
    model = toy_model(W, power=2)
    x = torch.cat([X, 0.5 * X])
    params = {"baseline": "black", "rule": "right", "steps": 8}
    out = score("ig_convergence", convergence_inputs(model, x, params), step_grid=[4, 1, 2], reference_steps=16)
    mass = (W.abs() * x[:, 0] ** 2).flatten(1).mean(1).numpy()
    for i in range(2):
        np.testing.assert_allclose(out.curves[i], mass[i] * (1 / np.array([1, 2, 4]) - 1 / 16), rtol=1e-5)
        assert out.values[i] == pytest.approx(mass[i] * (1 / 8 - 1 / 16), rel=1e-5)  # at B = 8
    relative = score(
        "ig_convergence", convergence_inputs(model, x, params), step_grid=[1], reference_steps=16, relative=True
    )
    # mean |IG_ref| = mass · 17/16
    np.testing.assert_allclose(relative.values, (1 / 8 - 1 / 16) * 16 / 17, rtol=1e-5)


def test_ig_convergence_is_zero_where_every_rule_is_exact():
    model = toy_model(W, power=1)  # constant gradient: IG_n is exact for every n
    params = {"baseline": "black", "rule": "right", "steps": 4}
    out = score("ig_convergence", convergence_inputs(model, X, params), step_grid=[1, 2], reference_steps=8)
    np.testing.assert_allclose(out.curves[0], [0.0, 0.0], atol=1e-6)
    assert out.values[0] == pytest.approx(0.0, abs=1e-6)


def test_ig_convergence_on_a_cnn_shrinks_with_steps():
    model, x = regular_cnn(), tiny_images(2)
    params = {"baseline": "black", "rule": "right", "steps": 32}
    inputs = convergence_inputs(model, x, params)
    inputs.targets = tiny_targets(2)
    out = score("ig_convergence", inputs, step_grid=[1, 4, 16], reference_steps=64)
    for curve in out.curves:
        assert curve[0] > curve[1] > curve[2] > 0
    # the value is the mean |IG_32 − IG_64| computed directly
    info = get_method("integrated_gradients")
    ig = {n: call_method(info, model, x, inputs.targets, {**params, "steps": n}).maps.sum(1).double() for n in (32, 64)}
    np.testing.assert_allclose(out.values, (ig[32] - ig[64]).abs().flatten(1).mean(1).numpy(), rtol=1e-6)


def test_ig_convergence_applicability():
    model = toy_model(W, power=1)
    params = {"baseline": "black", "rule": "right", "steps": 4}
    other = score("ig_convergence", convergence_inputs(model, X, params, method_fn="gradient"))
    assert other.status == ["skipped"] and "ig_right" in other.reasons[0]
    too_many = score("ig_convergence", convergence_inputs(model, X, params), step_grid=[1], reference_steps=4)
    assert too_many.status == ["nan"] and "reference_steps" in too_many.reasons[0]
    black = torch.zeros_like(X)  # IG from black of a black image is zero: no relative error
    flat = score("ig_convergence", convergence_inputs(model, black, params), step_grid=[1], relative=True)
    assert flat.status == ["nan"] and "zero everywhere" in flat.reasons[0]
    assert score("ig_convergence", convergence_inputs(model, black, params), step_grid=[1]).status == ["ok"]


def test_registrations():
    expected = {
        "path_monotonicity": ("diagnostic", "higher"),
        "mard_ig": ("explainer", "lower"),
        "ig_convergence": ("explainer", "lower"),
    }
    for name, (kind, direction) in expected.items():
        info = get_metric(name)
        assert (info.kind, info.direction) == (kind, direction)
        for fragment in info.params.values():
            jsonschema.Draft202012Validator.check_schema(fragment)
            jsonschema.validate(fragment["default"], fragment)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([4, 4], get_metric("ig_convergence").params["step_grid"])

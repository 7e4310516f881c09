"""Hand-checkable cases for the explainer metrics: attribution attack (attack_spearman,
attack_topk), Riemann-step stability and the cascading parameter-randomisation sanity check.

Toy models whose maps are known in closed form:

* linear, logits = A · flatten(z): the gradient map is A[target] whatever x is, so no attack can
  change it (ρ = top-k intersection = 1), and IG from black is x ⊙ A[target] at every step count;
* quadratic, logit_0 = Σ w z²: IG from black with the right Riemann rule and B steps is
  w x² · (B + 1)/B (the scaling keeps the ranking, not the L1 distance);
* two bias-free linear layers whose reset_parameters() *negates* their weights: randomising the
  output layer negates the gradient map (signed ρ = −1), then randomising the input layer negates
  it back (ρ = +1).
"""

from __future__ import annotations

from dataclasses import replace

import jsonschema
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from attrflow.methods import (
    MapsNotDifferentiable,
    MethodNotApplicable,
    call_method,
    differentiable_maps,
    get_method,
    reduce_channels,
)
import attrflow.metrics.attack as attack_module
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics.attack import (
    CURVE,
    AttackSettings,
    SoftplusForReLU,
    attack,
    exact_objective_gradient,
    fgsm_keeping_label,
    noise_margin,
    objective_gradient,
    predicted_classes,
    softplus_surrogate,
    spsa_objective_gradient,
    topk_intersection,
    topk_mask,
    topk_mass,
    topk_size,
)
from attrflow.metrics.randomization import parametric_layers, randomize_layer, ssim, unit_range
from attrflow.metrics._stats import average_ranks, spearman_rows
from attrflow.metrics.stability import flat_scores, l1_agreement_rows
from attrflow.models import WrappedModel

from tiny_models import images as tiny_images
from tiny_models import regular_cnn, targets as tiny_targets

torch.set_num_threads(2)

SIDE = 4


def wrap(net: nn.Module, channels: int = 1) -> WrappedModel:
    model = WrappedModel(
        net, num_classes=2, mean=[0.0] * channels, std=[1.0] * channels, name="toy"
    )
    return model.eval().requires_grad_(False)


def linear_model(channels: int = 1, seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    return wrap(nn.Sequential(nn.Flatten(), nn.Linear(channels * SIDE * SIDE, 2)), channels)


class Quadratic(nn.Module):
    """logit_0 = Σ w z², logit_1 = 0; no parameters (w is a buffer)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (self.weight * z**2).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


class NegatingLinear(nn.Linear):
    """A bias-free linear layer whose reset_parameters() negates its weights once built."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__(fan_in, fan_out, bias=False)
        self.built = True

    def reset_parameters(self) -> None:
        if getattr(self, "built", False):
            with torch.no_grad():
                self.weight.neg_()
        else:
            super().reset_parameters()


def negating_model(side: int = 12) -> WrappedModel:
    torch.manual_seed(3)
    return wrap(nn.Sequential(nn.Flatten(), NegatingLinear(side * side, 3), NegatingLinear(3, 2)))


def images(n: int, channels: int = 1, seed: int = 1, side: int = SIDE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, side, side, generator=generator) * 0.8 + 0.1


def explainer(fn: str, params: dict, default_model: nn.Module, keep_channels: bool = False):
    """The runner's `explain`: the registered method with its config params, overrides on top."""
    info = get_method(fn)

    def explain(x, target, model=None, **overrides):
        maps = call_method(
            info,
            model or default_model,
            x,
            target,
            {**params, **overrides},
            generator=torch.Generator().manual_seed(0),
        ).maps
        return maps if keep_channels else reduce_channels(maps)

    return explain


def make_inputs(
    model, x, fn: str, params: dict | None = None, targets=None, explain=None
) -> MetricInputs:
    params = params or {}
    targets = torch.zeros(x.shape[0], dtype=torch.long) if targets is None else targets
    explain = explain or explainer(fn, params, model)
    return MetricInputs(
        model=model,
        images=x,
        maps=explain(x, targets),
        targets=targets,
        labels=targets,
        ids=[f"s{i}" for i in range(x.shape[0])],
        method=f"my_{fn}",
        method_fn=fn,
        explain=explain,
        method_params=params,
    )


def score(name: str, inputs: MetricInputs, seed: int = 0, **params):
    return call_metric(
        get_metric(name), inputs, params, generator=torch.Generator().manual_seed(seed)
    )


# ---------------------------------------------------------------- agreement helpers


def test_spearman_rows_match_scipy_with_ties():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 40), generator=generator).double()  # many ties
    b = torch.randint(0, 5, (3, 40), generator=generator).double()
    rho, constant = spearman_rows(a, b)
    expected = [stats.spearmanr(a[i], b[i]).statistic for i in range(3)]
    np.testing.assert_allclose(rho.numpy(), expected, atol=1e-12)
    assert not constant.any()
    ranks = average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0]]))
    assert ranks.tolist() == [[4.0, 1.0, 4.0, 2.0, 4.0]]
    rho, constant = spearman_rows(torch.ones(1, 5), torch.arange(5.0).view(1, 5))
    assert constant.tolist() == [True] and rho.item() == 0.0


def test_l1_agreement_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    value, zero = l1_agreement_rows(a, b)
    # row 0: 1 − 6 / 18; row 1: opposite signs → 0; row 2: both zero → undefined
    np.testing.assert_allclose(value.numpy(), [2 / 3, 0.0, 0.0], atol=1e-12)
    assert zero.tolist() == [False, False, True]


def test_topk_helpers_by_hand():
    before = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    after = torch.tensor([[0.0, 4.0, 5.0, 1.0, 2.0, 3.0]])
    assert topk_intersection(before, after, 2).item() == 0.5  # {0, 1} vs {2, 1}
    assert topk_intersection(before, after, 3).item() == pytest.approx(2 / 3)  # {0,1,2} vs {2,5,1}
    assert topk_intersection(before, before, 4).item() == 1.0
    ties = topk_mask(torch.zeros(1, 5), 2)  # ties keep the row-major order
    assert ties.tolist() == [[True, True, False, False, False]]
    mass = topk_mass(
        torch.tensor([[3.0, -1.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[True, True, False, False]] * 2),
    )
    np.testing.assert_allclose(mass.numpy(), [2 / 8, 0.0])
    assert topk_size(None, 224 * 224) == 1000
    assert topk_size(None, 64 * 64) == 82  # 81.6
    assert topk_size(None, 10 * 10) == 2
    assert topk_size(None, 3) == 1
    assert topk_size(7, 100) == 7
    with pytest.raises(ValueError, match="parameter k"):
        topk_size(101, 100)


# ---------------------------------------------------------------- attribution attack


def test_attack_cannot_change_gradient_maps_of_a_linear_model():
    model, x = linear_model(), images(3)
    inputs = make_inputs(model, x, "gradient")
    for name in ("attack_spearman", "attack_topk"):
        out = score(name, inputs, softplus_beta=0.0, spsa_samples=2)
        assert out.values.tolist() == [1.0, 1.0, 1.0] and out.status == ["ok"] * 3
        # ε used, the same metric under random noise (also 1), exact gradient
        np.testing.assert_allclose(out.curves[0], [8 / 255, 1.0, 1.0])
    assert CURVE == ("epsilon_used", "noise_value", "exact_gradient")
    assert noise_margin(out.values[0], out.curves[0]) == 0.0  # noise and attack alike: no margin
    assert noise_margin(0.25, [8 / 255, 0.75, 1.0]) == 0.5
    assert np.isnan(noise_margin(0.25, None)) and np.isnan(noise_margin(0.25, [0.1, np.nan, 1]))
    assert (
        score("attack_topk", inputs, softplus_beta=0.0, spsa_samples=2, k=3).values.tolist()
        == [1.0] * 3
    )
    # no ReLU to smooth: the surrogate changes nothing and the attack runs all the same
    assert score("attack_spearman", inputs).values.tolist() == [1.0] * 3


def test_attack_skips_maps_that_ignore_the_input():
    model, x = regular_cnn(), tiny_images(2)
    out = score("attack_topk", make_inputs(model, x, "random_attribution"))
    assert out.status == ["skipped"] * 2 and "my_random_attribution" in out.reasons[0]


def test_fgsm_halves_epsilon_until_the_label_holds():
    class Margin(nn.Module):  # logit_0 = Σ z − 1.9, logit_1 = 0: class 0 at x = 0.5 by 0.1
        def forward(self, z):
            score = z.flatten(1).sum(dim=1) - 1.9
            return torch.stack([score, torch.zeros_like(score)], dim=1)

    model, x = wrap(Margin()), torch.full((1, 1, 2, 2), 0.5)
    down = -torch.ones_like(x)
    # ε = 8/255 lowers the logit by 4·8/255 = 0.125 > 0.1 (flip); ε/2 by 0.0627 (kept)
    attacked, used = fgsm_keeping_label(model, x, down, 8 / 255, max_halvings=3, max_batch=4)
    assert used.tolist() == [4 / 255]
    torch.testing.assert_close(attacked, x - 4 / 255)
    attacked, used = fgsm_keeping_label(model, x, down, 8 / 255, max_halvings=0, max_batch=4)
    assert np.isnan(used).all() and torch.equal(attacked, x)
    clipped, _ = fgsm_keeping_label(
        model, torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 0.1, 0, 4
    )
    assert clipped.max().item() == 1.0  # stays in pixel space


def test_attack_reports_samples_whose_label_always_flips():
    anchor = images(2)

    class Knife(nn.Module):  # class 0 only within 1e-4 (L1) of the anchor image
        def forward(self, z):
            score = 1e-4 - (z - anchor[: z.shape[0]]).abs().flatten(1).sum(dim=1)
            return torch.stack([score, torch.zeros_like(score)], dim=1)

    model = wrap(Knife())

    def smooth_explain(x, target, model=None):  # differentiable maps: the exact-gradient path
        return (x**2).sum(dim=1)

    inputs = make_inputs(model, anchor, "custom", explain=smooth_explain)
    out = score("attack_spearman", inputs, softplus_beta=0.0)
    assert out.status == ["nan", "nan"]
    assert "label changes at every epsilon" in out.reasons[0] and out.curves[0] is None


def test_objective_gradient_exact_path_and_spsa_estimate_agree():
    torch.manual_seed(0)
    model = wrap(nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 8), nn.ReLU(), nn.Linear(8, 2)))
    x, target = images(1), torch.zeros(1, dtype=torch.long)
    surrogate = softplus_surrogate(model, 10.0)

    def differentiable(x, target, model=None):  # gradient maps with create_graph
        with torch.enable_grad():
            logit = model(x).gather(1, target.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(logit, x, create_graph=True)
        return grad.sum(dim=1)

    registered = explainer("gradient", {}, model)
    top = topk_mask(flat_scores(registered(x, target), "absolute"), 3)
    kwargs = dict(samples=64, step=1 / 255, tile=1, generator=torch.Generator().manual_seed(0))
    exact, kind = objective_gradient(
        differentiable, surrogate, x, target, top, "absolute", **kwargs
    )
    assert kind == "exact"
    probe = x.clone().requires_grad_(True)
    mass = topk_mass(flat_scores(differentiable(probe, target, surrogate), "absolute"), top)
    torch.testing.assert_close(exact, torch.autograd.grad(mass.sum(), probe)[0])
    assert exact.abs().sum() > 0
    # the registered gradient method gives the same exact gradient inside differentiable_maps
    through_method = exact_objective_gradient(
        registered, surrogate, x, target, top, "absolute", group=1
    )
    torch.testing.assert_close(through_method, exact)
    estimate = spsa_objective_gradient(
        registered, surrogate, x, target, top, "absolute", **kwargs
    )
    cosine = F.cosine_similarity(estimate.flatten(1), exact.flatten(1)).item()
    assert cosine > 0.7, cosine  # SPSA: unbiased but noisy, about √(S/d) for S << d


class FunctionalReLUNet(nn.Module):
    """ReLUs as F.relu, an in-place Tensor.relu_() whose result is discarded, and torch.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(SIDE * SIDE, 6), nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, z):
        h = F.relu(self.first(z.flatten(1)))
        h = self.second(h)
        h.relu_()
        return self.out(torch.relu(h))


def test_softplus_surrogate_replaces_every_relu_and_leaves_the_model_alone():
    model, x = regular_cnn(), tiny_images(2)
    smooth = softplus_surrogate(model, 10.0)
    with SoftplusForReLU(10.0) as mode:
        smooth_logits = model(x)
    assert mode.replaced == 2  # the two nn.ReLU modules
    torch.testing.assert_close(smooth(x), smooth_logits)
    assert not torch.allclose(smooth(x), model(x))  # a different function …
    torch.testing.assert_close(softplus_surrogate(model, 1e4)(x), model(x), atol=1e-3, rtol=0)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2  # … the model untouched
    assert softplus_surrogate(model, 0.0) is model
    torch.manual_seed(0)
    functional = wrap(FunctionalReLUNet())
    z = images(3)
    with SoftplusForReLU(5.0) as mode:
        got = functional(z)
    assert mode.replaced == 3
    net = functional.net
    h = F.softplus(net.second(F.softplus(net.first(z.flatten(1)), beta=5.0)), beta=5.0)
    torch.testing.assert_close(got, net.out(F.softplus(h, beta=5.0)))
    # the in-place form is differentiable: double backprop through it works
    probe = z.clone().requires_grad_(True)
    smooth_net = softplus_surrogate(functional, 5.0)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(smooth_net(probe)[:, 0].sum(), probe, create_graph=True)
        (second,) = torch.autograd.grad(grad.square().sum(), probe)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


def test_attack_on_a_cnn_changes_maps_keeps_labels_and_is_deterministic():
    model, x, t = regular_cnn(), tiny_images(3), tiny_targets(3)
    inputs = make_inputs(model, x, "gradient", targets=t)
    first = score("attack_spearman", inputs, spsa_samples=4)
    assert first.status == ["ok"] * 3
    assert (first.values < 1).all() and (first.values > -1).all(), first.values
    attack_module._LAST_ATTACK.clear()  # recompute from scratch, not from the shared attack
    again = score("attack_spearman", inputs, spsa_samples=4)
    np.testing.assert_array_equal(first.values, again.values)
    topk = score("attack_topk", inputs, spsa_samples=4, k=10)
    assert set(np.round(topk.values * 10, 9)) <= set(range(11))  # multiples of 1/k
    assert {c[0] for c in topk.curves} <= {8 / 255, 4 / 255, 2 / 255, 1 / 255}
    assert {c[2] for c in topk.curves} == {1.0}  # the gradient method is differentiated


def test_both_attack_metrics_measure_one_attack_seeded_by_the_job():
    model, x, t = regular_cnn(), tiny_images(3), tiny_targets(3)
    calls = []
    base = explainer("gradient", {}, model)

    def counting(x, target, model=None, **overrides):  # detached maps: the SPSA fallback
        calls.append(x.shape[0])
        return base(x.detach(), target, model=model, **overrides)

    inputs = make_inputs(model, x, "gradient", targets=t, explain=counting)
    attack_module._LAST_ATTACK.clear()
    calls.clear()
    spearman = score("attack_spearman", inputs, seed=1, spsa_samples=4)
    spent = len(calls)
    assert spent > 2  # the maps before and after, and the SPSA probes
    topk = score("attack_topk", inputs, seed=2, spsa_samples=4)  # another metric generator
    assert len(calls) == spent, "the second metric reuses the attack"
    attack_module._LAST_ATTACK.clear()
    alone = score("attack_topk", inputs, seed=3, spsa_samples=4)
    np.testing.assert_array_equal(alone.values, topk.values)  # whichever runs first
    attack_module._LAST_ATTACK.clear()
    reseeded = score("attack_spearman", replace(inputs, seed=7), spsa_samples=4)
    assert not np.array_equal(reseeded.values, spearman.values)  # the job's seed drives SPSA


def test_attack_lowers_the_top_k_share_on_a_smooth_model():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(SIDE * SIDE, 8), nn.Softplus(beta=5.0), nn.Linear(8, 2)
    )
    model, x = wrap(net), images(4)
    t = predicted_classes(model, x, 8)

    def differentiable(x, target, model=model):  # exact gradient, real (already smooth) model
        with torch.enable_grad():
            x = x if x.requires_grad else x.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(
                model(x).gather(1, target.view(-1, 1)).sum(), x, create_graph=True
            )
        return grad.sum(dim=1)

    inputs = make_inputs(model, x, "custom", targets=t, explain=differentiable)
    settings = AttackSettings(8 / 255, 3, "absolute", 0.0, 1, 1 / 255, 1, 3)
    result = attack(inputs, "attack_topk", settings, generator=None, max_batch=8)
    assert result.reasons == [None] * 4 and result.k == 3
    top = topk_mask(result.before, 3)
    assert (topk_mass(result.after, top) < topk_mass(result.before, top)).all()


# ---------------------------------------------------------------- Riemann-step stability


def test_riemann_stability_is_one_on_a_linear_model():
    model, x = linear_model(), images(2)
    inputs = make_inputs(model, x, "integrated_gradients", {"baseline": "black", "steps": 8})
    out = score("riemann_stability", inputs)
    assert out.values.tolist() == [1.0, 1.0]
    assert [c.tolist() for c in out.curves] == [[1.0, 1.0]] * 2
    np.testing.assert_allclose(
        score("riemann_stability", inputs, agreement="l1").values, 1.0, atol=1e-6
    )


def test_riemann_stability_quadratic_by_hand():
    weight = torch.arange(1.0, SIDE * SIDE + 1).view(1, SIDE, SIDE)
    model, x = wrap(Quadratic(weight)), images(1)
    inputs = make_inputs(
        model, x, "integrated_gradients", {"baseline": "black", "rule": "right", "steps": 4}
    )
    # IG_B = w x² (B + 1)/B: same ranking at every B; L1 agreement 1 − |s − s'|/(s + s')
    assert score("riemann_stability", inputs).values.tolist() == [1.0]
    l1 = score("riemann_stability", inputs, agreement="l1")
    np.testing.assert_allclose(l1.curves[0], [62 / 91, 62 / 63], rtol=1e-6)
    assert l1.values[0] == pytest.approx((62 / 91 + 62 / 63) / 2, rel=1e-6)
    custom = score("riemann_stability", inputs, agreement="l1", steps_grid=[2, 1])
    np.testing.assert_allclose(custom.values, [1 - (2 - 1.5) / 3.5], rtol=1e-6)


def test_riemann_stability_applicability_and_undefined_cases():
    model, x = linear_model(), images(2)
    other = score("riemann_stability", make_inputs(model, x, "gradient"))
    assert other.status == ["skipped"] * 2 and "my_gradient" in other.reasons[0]
    ig = make_inputs(
        model, x, "integrated_gradients"
    )  # steps not in the config: the registry has it
    ig.method_params = {}
    assert score("riemann_stability", ig).status == ["ok"] * 2
    black = make_inputs(model, torch.zeros(1, 1, SIDE, SIDE), "integrated_gradients")  # IG ≡ 0
    for agreement in ("spearman", "l1"):
        flat = score("riemann_stability", black, agreement=agreement)
        assert flat.status == ["nan"] and "undefined" in flat.reasons[0]
    with pytest.raises(ValueError, match="steps_grid"):
        score("riemann_stability", ig, steps_grid=[4])


# ---------------------------------------------------------------- randomisation sanity check


def test_layers_are_listed_output_side_first():
    assert parametric_layers(regular_cnn()) == ["net.8", "net.4", "net.1", "net.0"]
    assert parametric_layers(negating_model()) == ["net.2", "net.1"]
    assert parametric_layers(wrap(Quadratic(torch.ones(1, SIDE, SIDE)))) == []


def test_randomization_sign_flip_by_hand():
    model, x = negating_model(), images(2, side=12)
    inputs = make_inputs(model, x, "gradient")
    signed = score("randomization_sanity", inputs, init="reset")
    # output layer negated → map negated (ρ = −1); input layer negated too → map restored
    assert [c.tolist() for c in signed.curves] == [[-1.0, 1.0]] * 2 and signed.values.tolist() == [
        1.0,
        1.0,
    ]
    magnitude = score("randomization_sanity", inputs, init="reset", absolute=True)
    assert [c.tolist() for c in magnitude.curves] == [[1.0, 1.0]] * 2
    # SSIM of signed maps in [0, 1]: u = (m/max|m| + 1)/2 against the negated map's 1 − u
    skimage_metrics = pytest.importorskip("skimage.metrics")
    ssim_out = score("randomization_sanity", inputs, init="reset", similarity="ssim")
    original = unit_range(inputs.maps, absolute=False).numpy()
    for i in range(2):
        expected = skimage_metrics.structural_similarity(
            original[i],
            1.0 - original[i],
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        np.testing.assert_allclose(ssim_out.curves[i], [expected, 1.0], atol=1e-10)
        assert expected < 0.5


def test_ssim_matches_scikit_image_wang_settings():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 24, 32, generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(3, 24, 32, generator=generator, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b)
    for i in range(3):
        theirs = skimage_metrics.structural_similarity(
            a[i].numpy(),
            b[i].numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        assert ours[i].item() == pytest.approx(theirs, abs=1e-10)
    assert ssim(a, a).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    small = ssim(a[:, :5, :6], b[:, :5, :6])  # window shrinks to 5 × 5
    assert small.shape == (3,) and torch.isfinite(small).all()


def test_randomization_never_touches_the_model():
    model, x, t = regular_cnn(), tiny_images(2), tiny_targets(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    explain = explainer("gradient", {}, model)

    def recording(x, target, model=None, **overrides):
        if model is not None:
            seen.append(model)
        return explain(x, target, model=model, **overrides)

    inputs = make_inputs(model, x, "gradient", targets=t, explain=recording)
    out = score("randomization_sanity", inputs)
    assert out.status == ["ok"] * 2 and len(out.curves[0]) == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    randomised = seen[-1]
    assert randomised is not model
    for name in parametric_layers(model):
        assert not torch.equal(
            randomised.get_submodule(name).weight, model.get_submodule(name).weight
        ), name

    overrides_seen = []

    def failing(x, target, model=None, **overrides):
        if model is not None:
            overrides_seen.append(model)
            if len(overrides_seen) == 2:  # after the output layer was randomised
                raise RuntimeError("boom on the second layer")
        return explain(x, target, model=model, **overrides)

    inputs.explain = failing
    with pytest.raises(RuntimeError, match="boom"):
        score("randomization_sanity", inputs, init="reset")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_normal_reinitialisation_is_seeded():
    layer = nn.Linear(200, 100)
    randomize_layer(layer, "normal", 0.1, torch.Generator().manual_seed(5))
    assert layer.weight.std().item() == pytest.approx(0.1, rel=0.03)
    assert abs(layer.weight.mean().item()) < 0.005 and layer.bias.std().item() == pytest.approx(
        0.1, rel=0.3
    )
    twin = nn.Linear(200, 100)
    randomize_layer(twin, "normal", 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(layer.weight, twin.weight)
    randomize_layer(twin, "reset", 0.1, torch.Generator().manual_seed(5))
    state = torch.random.get_rng_state()
    randomize_layer(layer, "reset", 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(layer.weight, twin.weight)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone


def test_model_independent_maps_fail_the_check():
    model, x, t = regular_cnn(), tiny_images(2), tiny_targets(2)
    inputs = make_inputs(model, x, "random_attribution", targets=t)
    for similarity in ("spearman", "ssim"):
        out = score("randomization_sanity", inputs, similarity=similarity)
        np.testing.assert_allclose(np.stack(out.curves), 1.0, atol=1e-12)


def test_randomization_destroys_gradient_maps_and_is_deterministic():
    model, x, t = regular_cnn(), tiny_images(3), tiny_targets(3)
    inputs = make_inputs(model, x, "gradient", targets=t)
    out = score("randomization_sanity", inputs)
    assert (np.abs(out.values) < 0.9).all(), out.values
    np.testing.assert_array_equal(out.values, score("randomization_sanity", inputs).values)
    assert not np.array_equal(out.values, score("randomization_sanity", inputs, seed=1).values)


def test_randomization_skips():
    parameter_free = wrap(Quadratic(torch.ones(1, SIDE, SIDE)))
    out = score("randomization_sanity", make_inputs(parameter_free, images(1), "gradient"))
    assert out.status == ["skipped"] and "no parameters" in out.reasons[0]
    model = regular_cnn()
    base = explainer("gradient", {}, model)

    def refusing(x, target, model=None, **overrides):
        if model is not None:
            raise MethodNotApplicable("needs an X-DNN")
        return base(x, target)

    inputs = make_inputs(model, tiny_images(1), "gradient", explain=refusing)
    refused = score("randomization_sanity", inputs)
    assert refused.status == ["skipped"] and "X-DNN" in refused.reasons[0]
    constant = make_inputs(
        linear_model(),
        images(1),
        "gradient",
        explain=lambda x, t, model=None: torch.ones(1, SIDE, SIDE),
    )
    flat = score("randomization_sanity", constant)
    assert flat.status == ["nan"] and "constant" in flat.reasons[0]


# ---------------------------------------------------------------- registrations


def test_registrations():
    expected = {
        "attack_spearman": ("explainer", "higher"),
        "attack_topk": ("explainer", "higher"),
        "riemann_stability": ("explainer", "higher"),
        "randomization_sanity": ("explainer", "lower"),
    }
    for name, (kind, direction) in expected.items():
        info = get_metric(name)
        assert (info.kind, info.direction) == (kind, direction)
        for fragment in info.params.values():
            jsonschema.Draft202012Validator.check_schema(fragment)
            jsonschema.validate(fragment["default"], fragment)
    assert get_metric("attack_spearman").params == get_metric("attack_topk").params
    assert get_metric("attack_spearman").params["epsilon"]["default"] == pytest.approx(
        8 / 255, abs=1e-15
    )


def test_parameters_out_of_range_are_named():
    inputs = make_inputs(linear_model(), images(1), "gradient")
    # checked as the config is, against the signature's declarations: the message names the key
    with pytest.raises(ValueError, match=r"'attack_topk\.(epsilon|spsa_samples)'"):
        score("attack_topk", inputs, epsilon=0.0, spsa_samples=0, softplus_beta=0.0)
    with pytest.raises(ValueError, match="similarity"):
        score("randomization_sanity", inputs, similarity="hog")


def test_maps_that_keep_their_channels():
    model, x, t = regular_cnn(), tiny_images(2), tiny_targets(2)
    explain = explainer("gradient", {}, model, keep_channels=True)
    inputs = make_inputs(model, x, "gradient", targets=t, explain=explain)
    assert inputs.maps.shape == (2, 3, 10, 10)
    topk = score("attack_topk", inputs, spsa_samples=2)
    assert topk.status == ["ok"] * 2  # k = round(300 · 1000/224²) = 6 elements
    assert set(np.round(topk.values * 6, 9)) <= set(range(7))
    sanity = score("randomization_sanity", inputs, similarity="ssim")
    assert sanity.status == ["ok"] * 2 and (np.abs(sanity.values) <= 1).all()

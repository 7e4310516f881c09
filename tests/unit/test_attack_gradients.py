"""Differentiable maps (`attrflow.methods.differentiable_maps`) and the attribution attack built
on them (Ghorbani, Abid & Zou, AAAI 2019).

* closed form: on logit_0 = Σ w z² (z = x: the wrapper's mean 0, std 1) the gradient map is
  2wx, Input×Gradient 2wx², IG from black (right rule, B steps) wx²(B + 1)/B and SmoothGrad of
  the gradient 2w(x + ε) averaged; so ∇_x Σ v ⊙ map is 2wv, 4wxv, 2wxv(B + 1)/B and 2wv;
* a smooth (GELU) network in float64, where the chunked double backprop of IG must equal central
  finite differences whatever max_batch is;
* memory: the activations of at most max_batch path points are alive at any time;
* the attack beats random noise of the same ℓ∞ size by a clear margin (max-pool CNN, GELU
  network, resnet18), and methods without differentiable maps take the declared SPSA fallback.
"""

from __future__ import annotations

import logging
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import attrflow.metrics.attack as attack_module
from attrflow.methods import (
    MapsNotDifferentiable,
    call_method,
    differentiable_maps,
    get_method,
    reduce_channels,
)
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics.attack import predicted_classes
from attrflow.models import WrappedModel

torch.set_num_threads(1)


def wrap(
    net: nn.Module, channels: int, classes: int, dtype=torch.float32, mean=0.0, std=1.0
) -> WrappedModel:
    model = WrappedModel(net, num_classes=classes, mean=[mean] * channels, std=[std] * channels)
    return model.to(dtype).eval().requires_grad_(False)


class Quadratic(nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (self.weight * z**2).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def maps_with_graph(fn: str, params: dict, model, x, target, max_batch: int = 256):
    probe = x.clone().requires_grad_(True)
    with differentiable_maps():
        maps = call_method(
            get_method(fn), model, probe, target, params,
            generator=torch.Generator().manual_seed(0), max_batch=max_batch,
        ).maps  # fmt: skip
    return probe, maps


def smoothgrad_scale_term(w, x, v, n: int = 5, sigma: float = 0.2) -> torch.Tensor:
    """SmoothGrad's noise std is σ·(max x − min x) per sample, so its map 2w(x + σ·range·ε̄)
    (ε̄ the mean of the sample's n standard normal draws, drawn as the method draws them) also
    moves with the extreme pixels: ∂/∂x_max = +2σ Σ v w ε̄, ∂/∂x_min = −2σ Σ v w ε̄."""
    draws = torch.randn(
        (x.shape[0] * n, *x.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=x.dtype
    )
    mean_draw = draws.view(x.shape[0], n, *x.shape[1:]).mean(dim=1)
    slope = 2 * sigma * (v * w * mean_draw).flatten(1).sum(dim=1)
    term = torch.zeros_like(x).flatten(1)
    rows = torch.arange(x.shape[0])
    term[rows, x.flatten(1).argmax(dim=1)] += slope
    term[rows, x.flatten(1).argmin(dim=1)] -= slope
    return term.view_as(x)


def test_double_backprop_equals_the_closed_form_on_a_quadratic():
    generator = torch.Generator().manual_seed(0)
    w = torch.rand(1, 2, 3, 3, generator=generator, dtype=torch.float64) + 0.5
    model = wrap(Quadratic(w), channels=2, classes=2, dtype=torch.float64)
    x = torch.rand(2, 2, 3, 3, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 2, 3, 3, generator=generator, dtype=torch.float64)
    target = torch.zeros(2, dtype=torch.long)
    steps = 7
    expected = {
        ("gradient", ()): 2 * w * v,
        ("input_x_gradient", ()): 4 * w * x * v,
        ("integrated_gradients", (("steps", steps),)): 2 * w * x * v * (steps + 1) / steps,
        ("smoothgrad", (("n", 5), ("sigma", 0.2))): 2 * w * v + smoothgrad_scale_term(w, x, v),
    }
    for (fn, params), analytic in expected.items():
        for max_batch in (3, 256):  # chunks that split samples, and one chunk
            probe, maps = maps_with_graph(fn, dict(params), model, x, target, max_batch)
            assert maps.requires_grad, fn
            (gradient,) = torch.autograd.grad((v * maps).sum(), probe)
            torch.testing.assert_close(gradient, analytic, msg=f"{fn}, max_batch {max_batch}")
            # …and the maps themselves are the ones the default path computes
            plain = call_method(
                get_method(fn), model, x, target, dict(params),
                generator=torch.Generator().manual_seed(0), max_batch=max_batch,
            ).maps  # fmt: skip
            assert not plain.requires_grad
            torch.testing.assert_close(maps.detach(), plain)


def gelu_net(seed: int = 0, side: int = 4, dtype=torch.float32) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(side * side, 12), nn.GELU(), nn.Linear(12, 3))
    return wrap(net, channels=1, classes=3, dtype=dtype)


def test_chunked_double_backprop_of_ig_matches_finite_differences():
    model = gelu_net(dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    v = torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    target = torch.tensor([0, 2])
    params = {"steps": 5, "baseline": "blur", "blur_sigma": 1.0}  # the baseline depends on x too

    def objective(images: torch.Tensor) -> torch.Tensor:
        maps = call_method(get_method("integrated_gradients"), model, images, target, params).maps
        return (v * maps).sum()

    gradients = []
    for max_batch in (1, 4, 64):
        probe, maps = maps_with_graph("integrated_gradients", params, model, x, target, max_batch)
        gradients.append(torch.autograd.grad((v * maps).sum(), probe)[0])
    torch.testing.assert_close(gradients[0], gradients[1])
    torch.testing.assert_close(gradients[0], gradients[2])
    for seed in range(3):
        seeded = torch.Generator().manual_seed(seed)
        direction = torch.randn(x.shape, generator=seeded, dtype=x.dtype)
        h = 1e-5
        numeric = (objective(x + h * direction) - objective(x - h * direction)) / (2 * h)
        analytic = (gradients[0] * direction).sum()
        torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)


def smooth_cnn(dtype=torch.float64) -> WrappedModel:
    """Conv → GELU → conv → GELU → average pool → linear, with biases: smooth everywhere, so
    every map below is differentiable and finite differences apply."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 5, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    return wrap(net, channels=3, classes=3, dtype=dtype, mean=0.5, std=0.25)


@pytest.mark.parametrize(
    "fn, params",
    [
        ("input_x_gradient", {}),
        ("gradcam", {"layer": "2"}),
        ("gradcampp", {"layer": "2"}),
        ("fullgrad", {}),
        ("blur_ig", {"steps": 6, "max_sigma": 2.0}),
        ("smoothgrad", {"of": "integrated_gradients", "of_params": {"steps": 3}, "n": 3}),
    ],
)
def test_double_backprop_of_every_kind_of_method_matches_finite_differences(fn, params):
    model = smooth_cnn()
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 6, 6, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    target = torch.tensor([0, 2])
    probe, maps = maps_with_graph(fn, params, model, x, target, max_batch=4)
    v = torch.randn(maps.shape, generator=generator, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((v * maps).sum(), probe)

    def objective(images: torch.Tensor) -> torch.Tensor:
        maps = call_method(
            get_method(fn), model, images, target, params,
            generator=torch.Generator().manual_seed(0), max_batch=4,
        ).maps  # fmt: skip
        return (v * maps).sum()

    for seed in range(2):
        seeded = torch.Generator().manual_seed(seed)
        direction = torch.randn(x.shape, generator=seeded, dtype=x.dtype)
        h = 1e-6
        numeric = (objective(x + h * direction) - objective(x - h * direction)) / (2 * h)
        torch.testing.assert_close((gradient * direction).sum(), numeric, rtol=1e-5, atol=1e-7)


def rule_cnn(dtype=torch.float64) -> WrappedModel:
    """Units DeepLIFT has rules for (Softplus, max pool, Tanh), smooth where it matters."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(beta=2.0), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(5, 3),
    )  # fmt: skip
    return wrap(net, channels=3, classes=3, dtype=dtype, mean=0.5, std=0.25)


@pytest.mark.parametrize(
    "fn, params",
    [
        ("deeplift", {"baseline": "black"}),
        ("deeplift", {"baseline": "blur", "blur_sigma": 1.0}),  # x' moves with x
        ("deepshap", {"background": 3}),
    ],
)
def test_double_backprop_of_deeplift_matches_finite_differences(fn, params):
    """The rescale and max-pool rules' multipliers are functions of x: differentiated through
    a recorded plain pass (`_deeplift_pairs_differentiable`), not through the rule pass."""
    model = rule_cnn()
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 6, 6, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    target = torch.tensor([0, 2])
    pool = torch.rand(4, 3, 6, 6, generator=generator, dtype=torch.float64)
    extra = {"references": pool, "reference_weights": torch.full((4,), 0.25, dtype=torch.float64)}
    extra = extra if fn == "deepshap" else {}

    def run(images: torch.Tensor) -> torch.Tensor:
        return call_method(
            get_method(fn), model, images, target, params,
            generator=torch.Generator().manual_seed(0), max_batch=4, **extra,
        ).maps  # fmt: skip

    probe = x.clone().requires_grad_(True)
    with differentiable_maps():
        maps = run(probe)
    torch.testing.assert_close(maps.detach(), run(x))  # the same maps (up to summation order)
    v = torch.randn(maps.shape, generator=generator, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((v * maps).sum(), probe)
    for seed in range(2):
        seeded = torch.Generator().manual_seed(seed)
        direction = torch.randn(x.shape, generator=seeded, dtype=x.dtype)
        h = 1e-6
        numeric = ((v * run(x + h * direction)).sum() - (v * run(x - h * direction)).sum()) / (2 * h)
        torch.testing.assert_close((gradient * direction).sum(), numeric, rtol=1e-5, atol=1e-7)


class Tracked(nn.Module):
    """z ⊙ tanh(z): the product saves its input for the backward pass, so the input stays alive
    exactly as long as some graph holds it. Counts how many input rows are alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[weakref.ref] = []
        self.peak_rows = 0
        self.largest_call = 0
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.alive = [ref for ref in self.alive if ref() is not None]
        self.alive.append(weakref.ref(z))
        rows = sum(ref().shape[0] for ref in self.alive)
        self.peak_rows = max(self.peak_rows, rows)
        self.largest_call = max(self.largest_call, z.shape[0])
        self.calls += 1
        return z * torch.tanh(z)


def test_ig32_holds_at_most_max_batch_path_points_at_once():
    torch.manual_seed(0)
    tracked = Tracked()
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), tracked, nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )
    model = wrap(net, channels=3, classes=3)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2])
    max_batch = 8
    probe, maps = maps_with_graph(
        "integrated_gradients", {"steps": 32}, model, x, target, max_batch
    )
    (gradient,) = torch.autograd.grad(maps.square().sum(), probe)
    assert gradient.abs().sum() > 0
    # 3 samples × 32 points = 96 points went through the network: 8 at a time for the maps,
    # 4 at a time for the double-backprop pass (+ one forward of the 3 baselines, α = 0)
    assert tracked.largest_call == max_batch
    assert tracked.peak_rows <= max_batch, tracked.peak_rows
    assert tracked.calls == 96 // 8 + 96 // 4 + 1


def test_methods_without_differentiable_maps_are_refused_inside_the_context():
    model = gelu_net()
    x, target = torch.rand(1, 1, 4, 4), torch.zeros(1, dtype=torch.long)
    with pytest.raises(MapsNotDifferentiable, match="occlusion"):
        maps_with_graph("occlusion", {"patch_size": 2, "stride": 2}, model, x, target)
    with pytest.raises(MapsNotDifferentiable, match="occlusion"):  # SmoothGrad of occlusion
        maps_with_graph(
            "smoothgrad", {"of": "occlusion", "of_params": {"patch_size": 2, "stride": 2}, "n": 2},
            model, x, target,
        )  # fmt: skip
    assert get_method("gradient").differentiable and not get_method("occlusion").differentiable


# ------------------------------------------------------------------ the attack against noise


def explainer(fn: str, params: dict, default_model):
    info = get_method(fn)

    def explain(x, target, model=None, **overrides):
        maps = call_method(
            info, model or default_model, x, target, {**params, **overrides},
            generator=torch.Generator().manual_seed(0), max_batch=64,
        ).maps  # fmt: skip
        return reduce_channels(maps)

    return explain


def attack_scores(model, x, fn: str, params: dict, metric: str, **metric_params):
    attack_module._LAST_ATTACK.clear()
    targets = predicted_classes(model, x, 64)
    explain = explainer(fn, params, model)
    inputs = MetricInputs(
        model=model, images=x, maps=explain(x, targets), targets=targets, labels=targets,
        ids=[f"s{i}" for i in range(x.shape[0])], method=fn, method_fn=fn, explain=explain,
        method_params=params,
    )  # fmt: skip
    out = call_metric(get_metric(metric), inputs, metric_params, max_batch=64)
    ok = np.array(out.status) == "ok"
    curves = np.array([c for c, good in zip(out.curves, ok) if good])
    return out.values[ok], curves


def maxpool_cnn(seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 5),
    )  # fmt: skip
    return wrap(net, channels=3, classes=5)


def gelu_cnn(seed: int = 0) -> WrappedModel:
    """No ReLU, no max pool: smooth everywhere. Inputs normalised to about [−2, 2] so that the
    GELUs work in their curved range (on [0, 1] a random GELU net is nearly linear)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 5),
    )  # fmt: skip
    return wrap(net, channels=3, classes=5, mean=0.5, std=0.25)


@pytest.mark.parametrize("network", [maxpool_cnn, gelu_cnn])
@pytest.mark.parametrize("fn, params", [("gradient", {}), ("integrated_gradients", {"steps": 8})])
def test_the_attack_beats_random_noise_of_the_same_size(network, fn, params):
    model = network()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    values, curves = attack_scores(model, x, fn, params, "attack_topk", k=40)
    assert len(values) >= 4 and (curves[:, 2] == 1.0).all()  # exact gradient
    margin = curves[:, 1] - values  # noise value − attack value: > 0 when the attack wins
    assert (margin > 0).all(), (values, curves[:, 1])
    assert margin.mean() > 0.2, (values, curves[:, 1])
    if fn == "gradient":  # Spearman is not what the top-k objective targets: a smaller margin
        values, curves = attack_scores(model, x, fn, params, "attack_spearman", k=40)
        assert values.mean() < curves[:, 1].mean() - 0.005, (values, curves[:, 1])


def test_the_attack_on_deeplift_beats_random_noise():
    model = maxpool_cnn()  # DeepLIFT's rules refuse GELU, so only the ReLU/max-pool network
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    values, curves = attack_scores(model, x, "deeplift", {}, "attack_topk", k=40)
    assert len(values) >= 4 and (curves[:, 2] == 1.0).all()
    assert (curves[:, 1] > values).all() and (curves[:, 1] - values).mean() > 0.15


def test_the_attack_beats_noise_on_resnet18():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=10)
    model = wrap(net, channels=3, classes=10)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    values, curves = attack_scores(model, x, "gradient", {}, "attack_topk")
    assert len(values) >= 2 and (curves[:, 2] == 1.0).all()
    assert (curves[:, 1] - values).mean() > 0.1, (values, curves[:, 1])


def test_methods_without_differentiable_maps_take_the_declared_spsa_fallback(caplog):
    model = maxpool_cnn()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with caplog.at_level(logging.WARNING, logger="attrflow.metrics.attack"):
        values, curves = attack_scores(
            model, x, "occlusion", {"patch_size": 8, "stride": 8}, "attack_topk",
            spsa_samples=2, k=40,
        )  # fmt: skip
    assert len(values) == 2 and (curves[:, 2] == 0.0).all()  # recorded: not the exact gradient
    assert any("gradient-free SPSA" in record.message for record in caplog.records)

"""Guided Backprop, Deconvolution, DeepLIFT (rescale), DeepSHAP and Occlusion.

Hand-derived toy cases (a one-hidden-layer ReLU net, a single max-pool window, a linear model),
completeness on the tiny CNNs, class sensitivity, batching invariance, honest cost counters,
refusal of networks the rules cannot handle (naming the module), and hook hygiene.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.methods import METHODS, MethodNotApplicable, call_method, get_method
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.methods.backprop import deconvolution, deeplift, deepshap, guided_backprop
from attrflow.methods.occlusion import occlusion, window_cover
from attrflow.models import WrappedModel
from tiny_models import images, regular_cnn, targets, x_cnn

torch.set_num_threads(1)
F64 = torch.float64
HOOKED = (guided_backprop, deconvolution, deeplift)


def wrap(net: nn.Module, classes: int, channels: int = 1, **stats) -> WrappedModel:
    """Raw pixels (mean 0, std 1 per channel) unless ``stats`` give the normalisation."""
    stats = stats or {"mean": [0.0] * channels, "std": [1.0] * channels}
    model = WrappedModel(net, num_classes=classes, name="toy", **stats).to(F64).eval()
    return model.requires_grad_(False)


def hidden_layer_net(
    mean: float = 0.3, std: float = 0.5
) -> tuple[WrappedModel, nn.Linear, nn.Linear]:
    """z = (x − mean)/std on a 1×2×2 image; logits = W2 relu(W1 z + b1) + b2, three hidden units."""
    first, second = nn.Linear(4, 3), nn.Linear(3, 2)
    with torch.no_grad():
        first.weight.copy_(
            torch.tensor([[1.0, -2.0, 0.5, 1.0], [-1.0, 1.0, 1.0, -0.5], [2.0, 0.0, -1.0, 1.0]])
        )
        first.bias.copy_(torch.tensor([0.1, -0.2, -0.5]))
        second.weight.copy_(torch.tensor([[1.5, -2.0, 0.7], [-1.0, 0.5, 2.0]]))
        second.bias.copy_(torch.tensor([0.3, -0.1]))
    net = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)
    return wrap(net, 2, mean=[mean], std=[std]), first, second


def assert_no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks), f"hook left on {name!r}"


# ---------------------------------------------------------------------------------------------
# Hand-derived cases.


@pytest.mark.parametrize("target", [0, 1])
def test_modified_relu_gradients_by_hand(target):
    model, first, second = hidden_layer_net()
    x = torch.tensor([[[[0.9, 0.1], [0.6, 0.2]]]], dtype=F64)
    z = ((x - 0.3) / 0.5).flatten()
    active = (first.weight.to(F64) @ z + first.bias.to(F64)) > 0
    upstream = second.weight[target].to(F64)  # ∂logit/∂h
    pixel = 1 / 0.5  # ∂z/∂x: maps are in pixel space
    gbp = first.weight.to(F64).T @ (active * upstream.clamp(min=0)) * pixel
    deconv = first.weight.to(F64).T @ upstream.clamp(min=0) * pixel
    t = torch.tensor([target])
    assert torch.allclose(guided_backprop(model, x, t).maps.flatten(), gbp)
    assert torch.allclose(deconvolution(model, x, t).maps.flatten(), deconv)
    assert active.tolist() != [True] * 3  # the ReLU mask matters in this case


def test_deeplift_rescale_by_hand():
    """h = relu(z1 + z2 − 1), F = 2h; x = (1, 1), x' = 0: Δh/Δa = (1 − 0)/(1 − (−1)) = 1/2, so
    each input gets 1 · 1/2 · 2 = 1 (gradient × Δx would give 2 each, twice F(x) − F(x'))."""
    first, second = nn.Linear(2, 1), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 1.0]]))
        first.bias.fill_(-1.0)
        second.weight.fill_(2.0)
    model = wrap(nn.Sequential(nn.Flatten(), first, nn.ReLU(), second), 1)
    x = torch.ones(1, 1, 1, 2, dtype=F64)
    result = deeplift(model, x, torch.tensor([0]))
    assert torch.allclose(result.maps.flatten(), torch.tensor([1.0, 1.0], dtype=F64))
    assert float(result.diagnostics["output_delta"][0]) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "x,reference,expected",
    [
        # o = 3 at p = 0, o' = 2 at q = 1: share (3 − 2)/(3 − 0) at p, 0 at q.
        ([3.0, 1.0], [0.0, 2.0], [1.0, 0.0]),
        # o = 1 at p = 0, o' = 3 at q = 1: 0 at p, (1 − 3)/(0 − 3) at q → Δx_q · 2/3 = −2.
        ([1.0, 0.0], [0.0, 3.0], [0.0, -2.0]),
        # same argmax: the plain ratio Δo/Δx_p = 1.
        ([2.0, 1.0], [1.0, 0.5], [1.0, 0.0]),
    ],
)
def test_deeplift_max_pool_rule_by_hand(tmp_path, x, reference, expected):
    scale = 0.25  # baselines are pixel-space images in [0, 1]; the rule is scale-free
    model = wrap(nn.Sequential(nn.MaxPool2d((1, 2)), nn.Flatten()), 1)
    path = tmp_path / "reference.npy"
    np.save(path, scale * np.array(reference, dtype=np.float64).reshape(1, 1, 2))
    inputs = scale * torch.tensor(x, dtype=F64).view(1, 1, 1, 2)
    result = deeplift(model, inputs, torch.tensor([0]), baseline="file", baseline_file=str(path))
    assert torch.allclose(result.maps.flatten(), scale * torch.tensor(expected, dtype=F64))
    assert float(result.diagnostics["completeness_residual"][0]) < 1e-12


def linear_model(weights: torch.Tensor) -> WrappedModel:
    """logits = w · flatten(x) on 1-channel images (raw pixels)."""
    head = nn.Linear(weights.shape[1], weights.shape[0], bias=False, dtype=F64)
    with torch.no_grad():
        head.weight.copy_(weights)
    return wrap(nn.Sequential(nn.Flatten(), head), weights.shape[0])


@pytest.mark.parametrize("patch,stride", [(2, 2), (3, 1), (3, 2), (5, 5)])
@pytest.mark.parametrize("fill", ["black", "mean", "value"])
def test_occlusion_on_a_linear_model_is_the_mean_covering_window_sum(patch, stride, fill):
    size = 5
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(2, size * size, generator=generator, dtype=F64)
    x = torch.rand(2, 1, size, size, generator=generator, dtype=F64)
    target = torch.tensor([1, 0])
    fill_value = 0.25 if fill == "value" else None
    result = occlusion(linear_model(w), x, target, patch_size=patch, stride=stride, fill=fill,
                       fill_value=fill_value, max_batch=4)  # fmt: skip
    for s in range(2):
        canvas = {"black": 0.0, "mean": float(x[s].mean()), "value": 0.25}[fill]
        contribution = (w[target[s]].view(size, size) * (x[s, 0] - canvas)).numpy()
        total, count = np.zeros((size, size)), np.zeros((size, size))
        starts = range(0, size - patch + stride, stride)  # the last window may be cut off
        for top in starts:
            for left in starts:
                window = np.zeros((size, size), dtype=bool)
                window[top : top + patch, left : left + patch] = True
                total[window] += contribution[window].sum()
                count[window] += 1
        assert count.min() >= 1
        np.testing.assert_allclose(result.maps[s].numpy(), total / count, rtol=1e-12, atol=1e-12)


def test_window_cover_reaches_the_border():
    cover = window_cover(10, 4, 3, dtype=F64, device=torch.device("cpu"))
    assert cover.shape == (3, 10)  # starts 0, 3, 6
    assert cover.sum(dim=0).min() >= 1 and cover[-1, -1] == 1


# ---------------------------------------------------------------------------------------------
# Completeness, class sensitivity, batching, cost.


@pytest.mark.parametrize("make", [regular_cnn, x_cnn])
@pytest.mark.parametrize("baseline", ["black", "white", "blur", "uniform"])
def test_deeplift_is_complete_on_the_tiny_cnns(make, baseline):
    model, x, t = make(dtype=F64), images(4, dtype=F64), targets(4)
    result = deeplift(model, x, t, baseline=baseline, generator=torch.Generator().manual_seed(0))
    reference = result.diagnostics["baselines"]
    with torch.no_grad():
        delta = (model(x) - model(reference)).gather(1, t.unsqueeze(1))[:, 0]
    assert torch.allclose(result.diagnostics["output_delta"], delta, atol=1e-12)
    assert torch.allclose(result.maps.flatten(1).sum(dim=1), delta, atol=1e-10)
    assert float(result.diagnostics["completeness_residual"].max()) < 1e-10


def test_deepshap_averages_deeplift_over_the_whole_small_pool(tmp_path):
    model, x, t = regular_cnn(dtype=F64), images(3, dtype=F64), targets(3)
    pool = images(3, seed=7, dtype=F64)
    result = deepshap(model, x, t, background=5, references=pool, max_batch=4)
    single = []
    for k in range(3):
        path = tmp_path / f"ref{k}.npy"
        np.save(path, pool[k].numpy())
        single.append(deeplift(model, x, t, baseline="file", baseline_file=str(path)).maps)
    assert torch.allclose(result.maps, torch.stack(single).mean(dim=0), atol=1e-12)
    assert result.diagnostics["reference_indices"].tolist() == [[0, 1, 2]] * 3
    assert torch.allclose(result.diagnostics["baselines"], pool.mean(dim=0).expand_as(x))
    with torch.no_grad():
        expected = model(x).gather(1, t.unsqueeze(1))[:, 0] - model(pool)[:, t].mean(dim=0)
    assert torch.allclose(result.diagnostics["output_delta"], expected, atol=1e-12)
    assert float(result.diagnostics["completeness_residual"].max()) < 1e-10
    # the completeness metric evaluates F(x) itself and reads the background's mean output
    inputs = MetricInputs(
        model=model, images=x, maps=result.maps.sum(dim=1), targets=t, labels=t, ids=["a", "b", "c"],
        diagnostics=result.diagnostics, method="deepshap", method_fn="deepshap", method_claims_completeness=True,
    )
    residual = call_metric(get_metric("completeness"), inputs, {}).values
    assert np.abs(residual).max() < 1e-10
    broken = {**result.diagnostics, "baseline_output": result.diagnostics["baseline_output"] + 0.5}
    residual = call_metric(get_metric("completeness"), replace(inputs, diagnostics=broken), {}).values
    assert np.allclose(residual, 0.5)


def test_deepshap_draws_distinct_references_reproducibly_and_batch_free():
    model, x, t = regular_cnn(dtype=F64), images(4, dtype=F64), targets(4)
    pool = images(9, seed=7, dtype=F64)

    def run(max_batch: int):
        return deepshap(model, x, t, background=4, references=pool, max_batch=max_batch,
                        generator=torch.Generator().manual_seed(5))  # fmt: skip

    first, second = run(3), run(64)
    index = first.diagnostics["reference_indices"]
    assert index.shape == (4, 4)
    assert all(len(set(row)) == 4 for row in index.tolist())
    assert torch.equal(index, second.diagnostics["reference_indices"])
    assert torch.allclose(first.maps, second.maps, atol=1e-12)
    with pytest.raises(ValueError, match="reference_weights must be uniform"):
        deepshap(model, x, t, references=pool, reference_weights=torch.arange(9.0) / 36)


SMALL_OCCLUSION = {"patch_size": 4, "stride": 3}


@pytest.mark.parametrize("fn", ["guided_backprop", "deconvolution", "deeplift", "occlusion"])
def test_maps_change_with_the_target(fn):
    info = get_method(fn)
    model, x = regular_cnn(dtype=F64), images(3, dtype=F64)
    params = SMALL_OCCLUSION if fn == "occlusion" else {}
    one = call_method(info, model, x, torch.tensor([0, 1, 2]), params).maps
    other = call_method(info, model, x, torch.tensor([3, 4, 0]), params).maps
    assert not torch.allclose(one, other)


def test_deepshap_changes_with_the_target():
    model, x, pool = regular_cnn(dtype=F64), images(2, dtype=F64), images(4, seed=7, dtype=F64)
    info = get_method("deepshap")
    one = call_method(info, model, x, torch.tensor([0, 1]), {"background": 2}, references=pool)
    other = call_method(info, model, x, torch.tensor([2, 3]), {"background": 2}, references=pool)
    assert not torch.allclose(one.maps, other.maps)


@pytest.mark.parametrize("fn", ["guided_backprop", "deconvolution", "deeplift", "occlusion"])
def test_maps_do_not_depend_on_max_batch(fn):
    info = get_method(fn)
    model, x, t = x_cnn(dtype=F64), images(5, dtype=F64), targets(5)
    params = SMALL_OCCLUSION if fn == "occlusion" else {}
    small = call_method(info, model, x, t, params, max_batch=2).maps
    large = call_method(info, model, x, t, params, max_batch=256).maps
    assert torch.allclose(small, large, atol=1e-12)


def test_cost_counters():
    model, x, t = regular_cnn(dtype=F64), images(5, dtype=F64), targets(5)
    for method, forward, backward in (
        (guided_backprop, 6, 5),
        (deconvolution, 6, 5),
        (deeplift, 11, 10),
    ):
        model.reset_counters()
        method(model, x, t, max_batch=4)
        assert (model.forward_samples, model.backward_samples) == (
            forward,
            backward,
        ), method.__name__
    model.reset_counters()
    deepshap(model, x, t, background=3, references=images(4, seed=7, dtype=F64), max_batch=4)
    assert (model.forward_samples, model.backward_samples) == (1 + 2 * 15, 2 * 15)
    model.reset_counters()
    occlusion(model, x, t, patch_size=4, stride=3)  # 3 × 3 windows on 10 × 10
    assert (model.forward_samples, model.backward_samples) == (5 + 5 * 9, 0)


def test_registrations():
    get_method("deepshap")
    assert METHODS.get("deeplift").completeness and METHODS.get("occlusion").channel_free
    assert METHODS.get("deepshap").references == "train_pool"
    assert METHODS.get("deepshap").completeness  # against mean_b F(x'_b), see its docstring


# ---------------------------------------------------------------------------------------------
# Networks the rules cannot handle, in-place and reused modules, hooks.


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(z)))


def gelu_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    )


class ReusedRelu(nn.Module):
    """torchvision's ResNet pattern: one ReLU module applied twice, ReLU → MaxPool adjacency."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv2(self.pool(self.relu(self.conv1(z))))))


@pytest.mark.parametrize("method", HOOKED)
def test_functional_relu_is_refused_naming_the_module(method):
    torch.manual_seed(0)
    model = wrap(FunctionalRelu(), 5, channels=3)
    with pytest.raises(MethodNotApplicable, match=r"module 'net' \(FunctionalRelu\) applies relu"):
        method(model, images(2, dtype=F64), targets(2))
    assert_no_hooks(model)


@pytest.mark.parametrize("method", HOOKED)
def test_uncovered_activation_is_refused(method):
    torch.manual_seed(0)
    model = wrap(gelu_net(), 5, channels=3)
    with pytest.raises(MethodNotApplicable, match=r"module 'net.1' \(GELU\) applies gelu"):
        method(model, images(2, dtype=F64), targets(2))


def test_reused_inplace_relu():
    torch.manual_seed(0)
    model = wrap(ReusedRelu(), 5, channels=3)
    x, t = images(3, dtype=F64), targets(3)
    with pytest.raises(MethodNotApplicable, match=r"module 'net.relu' \(ReLU\) runs 2 times"):
        deconvolution(model, x, t)
    result = deeplift(model, x, t, baseline="white")
    assert float(result.diagnostics["completeness_residual"].max()) < 1e-10
    assert model.net.relu.inplace  # restored
    reference = guided_backprop(model, x, t).maps
    model.net.relu.inplace = False
    assert torch.allclose(guided_backprop(model, x, t).maps, reference)
    assert torch.allclose(deeplift(model, x, t, baseline="white").maps, result.maps)
    assert_no_hooks(model)


class Exploding(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[0] > 1:  # the one-image probe passes; the attribution pass fails
            raise RuntimeError("boom")
        return z


@pytest.mark.parametrize("method", HOOKED)
def test_hooks_are_removed_when_a_call_raises(method):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        Exploding(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )
    model = wrap(net, 5, channels=3)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="boom"):
            method(model, images(2, dtype=F64), targets(2))
    assert_no_hooks(model)


@pytest.mark.slow  # importing timm alone takes seconds
def test_timm_resnet_with_inplace_relus():
    """timm's ResNet (resnet18's blocks, one per stage to stay fast): in-place ReLUs, stem
    ReLU → MaxPool, residual additions."""
    resnet = pytest.importorskip("timm.models.resnet")
    torch.manual_seed(0)
    net = resnet.ResNet(block=resnet.BasicBlock, layers=[1, 1, 1, 1], num_classes=5)
    model = wrap(net, 5, channels=3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x, t = images(2, dtype=F64), targets(2)
    x = torch.nn.functional.interpolate(x, size=32)
    result = deeplift(model, x, t)
    assert float(result.diagnostics["completeness_residual"].max()) < 1e-9
    assert guided_backprop(model, x, t).maps.abs().sum() > 0
    assert deconvolution(model, x, t).maps.abs().sum() > 0
    assert_no_hooks(model)


# ---------------------------------------------------------------------------------------------
# Bad parameters.


def test_bad_parameters_name_the_culprit():
    model, x, t = regular_cnn(dtype=F64), images(2, dtype=F64), targets(2)
    with pytest.raises(ValueError, match="max_batch must be >= 2"):
        deeplift(model, x, t, max_batch=1)
    with pytest.raises(ValueError, match="stride 5 exceeds patch_size 4"):
        occlusion(model, x, t, patch_size=4, stride=5)
    with pytest.raises(ValueError, match="patch_size 11 exceeds the image size 10×10"):
        occlusion(model, x, t, patch_size=11, stride=2)
    with pytest.raises(ValueError, match="fill_value is set"):
        occlusion(model, x, t, fill_value=0.5)
    with pytest.raises(ValueError, match="fill 'value' needs a number"):
        occlusion(model, x, t, patch_size=4, fill="value")
    with pytest.raises(ValueError, match=r"'deepshap\.background'"):  # the signature's declaration
        call_method(get_method("deepshap"), model, x, t, {"background": 0}, references=images(3, dtype=F64))

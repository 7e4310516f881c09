"""PathwayGrad: hand-built single-pathway network, NeuronMCT / NeuronIntGrad by hand, sparsity
limits, class sensitivity, cost counters, hooks and layer errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tiny_models
from attrflow.methods import MethodNotApplicable, call_method, get_method
from attrflow.methods.gradient import gradient
from attrflow.methods.pathway_grad import (
    neuron_intgrad,
    neuron_mct,
    pathway_grad,
    pathway_modules,
    select_pathway,
)
from attrflow.models import WrappedModel


pytestmark = pytest.mark.usefixtures("one_thread")


SIDE = 2  # 2×2 images: 4 pixels per channel
OUT_WEIGHTS = {0: [3.0, 0.5, 7.0], 1: [-1.0, 2.0, 0.0]}  # classifier rows per class


def single_pathway_model() -> WrappedModel:
    """1×1 conv (2 → 3 channels) + ReLU + global average pool + linear, weights by hand.

    On inputs in [0, 1]: channel 0 = x0 + 2·x1 + 0.5 is always active and strong; channel 1 =
    0.1·(x0 + x1) is active but weak; channel 2 = −x0 − x1 − 1 is always dead. For class 0 the
    units' contributions are channel 0 ≥ 3·0.5/4 = 0.375 > channel 1 ≤ 0.5·0.2/4 = 0.025 > 0.
    """
    conv = nn.Conv2d(2, 3, 1)
    linear = nn.Linear(3, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [0.1, 0.1], [-1.0, -1.0]]).view(3, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
        linear.weight.copy_(torch.tensor([OUT_WEIGHTS[0], OUT_WEIGHTS[1]]))
        linear.bias.copy_(torch.tensor([0.25, -0.5]))
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    model = WrappedModel(net, num_classes=2, mean=[0.0, 0.0], std=[1.0, 1.0], name="pathway_toy")
    return model.eval().requires_grad_(False)


def toy_inputs(n: int = 3) -> torch.Tensor:
    return torch.rand((n, 2, SIDE, SIDE), generator=torch.Generator().manual_seed(3))


def hidden(x: torch.Tensor) -> torch.Tensor:
    """The ReLU layer's output by hand, (n, 3, H, W)."""
    return torch.stack(
        [x[:, 0] + 2 * x[:, 1] + 0.5, 0.1 * (x[:, 0] + x[:, 1]), (-x[:, 0] - x[:, 1] - 1).clamp_min(0)],
        dim=1,
    )


def test_neuron_contributions_by_hand():
    model, x = single_pathway_model(), toy_inputs()
    target = torch.zeros(3, dtype=torch.long)
    relu = pathway_modules(model, ["all_relus"])
    by_hand = hidden(x) * torch.tensor(OUT_WEIGHTS[0]).view(1, 3, 1, 1) / SIDE**2
    (mct,) = neuron_mct(model, x, target, relu)
    torch.testing.assert_close(mct, by_hand.abs())
    # above the ReLU the network is linear, so IG over the layer is exact for any step count,
    # and it is complete: Σ c = Φ(x) − Φ(a ← 0) = Φ(x) − bias
    (intgrad,) = neuron_intgrad(model, x, target, relu, steps=3, max_batch=4)
    torch.testing.assert_close(intgrad, by_hand)
    logits = model(x)[:, 0]
    torch.testing.assert_close(intgrad.flatten(1).sum(dim=1), logits - 0.25)


@pytest.mark.parametrize("criterion", ["neuron_mct", "neuron_intgrad"])
def test_single_active_pathway_is_selected_and_its_gradient_is_the_channels(criterion):
    model, x = single_pathway_model(), toy_inputs()
    target = torch.zeros(3, dtype=torch.long)
    relu = pathway_modules(model, ["all_relus"])
    scores = (
        neuron_mct(model, x, target, relu)
        if criterion == "neuron_mct"
        else neuron_intgrad(model, x, target, relu, steps=4, max_batch=16)
    )
    (kept,), _ = select_pathway(scores, sparsity=2 / 3)  # 8 of 12 units left out
    expected = torch.zeros(3, 3, SIDE, SIDE, dtype=torch.bool)
    expected[:, 0] = True
    assert torch.equal(kept, expected)

    result = pathway_grad(model, x, target, criterion=criterion, sparsity=2 / 3, steps=4)
    # Φ̂ = 3 · mean(channel 0) + constants: ∂/∂x = 3/4 · (1, 2) at every pixel
    by_hand = (0.75 * torch.tensor([1.0, 2.0])).view(1, 2, 1, 1).expand(3, 2, SIDE, SIDE)
    torch.testing.assert_close(result.maps, by_hand)
    # the full gradient also flows through the weak channel 1: 0.5/4 · 0.1 more per input
    torch.testing.assert_close(gradient(model, x, target).maps, by_hand + 0.0125)
    torch.testing.assert_close(result.diagnostics["kept_fraction"], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("criterion", ["neuron_mct", "neuron_intgrad"])
def test_sparsity_zero_is_the_plain_gradient_and_one_is_zero(criterion):
    model, x, target = tiny_models.regular_cnn(), tiny_models.images(3), tiny_models.targets(3)
    plain = gradient(model, x, target).maps
    whole = pathway_grad(model, x, target, criterion=criterion, sparsity=0.0, steps=4)
    torch.testing.assert_close(whole.maps, plain)
    empty = pathway_grad(model, x, target, criterion=criterion, sparsity=1.0, steps=4)
    assert torch.count_nonzero(empty.maps) == 0
    assert torch.all(empty.diagnostics["kept_fraction"] == 0)
    partial = pathway_grad(model, x, target, criterion=criterion, sparsity=0.7, steps=4)
    assert not torch.allclose(partial.maps, plain)


def test_class_sensitivity():
    model, x = single_pathway_model(), toy_inputs()
    for_zero = pathway_grad(model, x, torch.zeros(3, dtype=torch.long), sparsity=2 / 3).maps
    for_one = pathway_grad(model, x, torch.ones(3, dtype=torch.long), sparsity=2 / 3).maps
    # class 1 reads channel 0 with weight −1: ∂/∂x = −1/4 · (1, 2)
    torch.testing.assert_close(for_one, (-0.25 * torch.tensor([1.0, 2.0])).view(1, 2, 1, 1).expand_as(for_one))
    assert not torch.allclose(for_zero, for_one)
    tiny, images = tiny_models.regular_cnn(), tiny_models.images(2)
    a = pathway_grad(tiny, images, torch.tensor([0, 0])).maps
    b = pathway_grad(tiny, images, torch.tensor([1, 1])).maps
    assert (a - b).abs().max() > 1e-3


def test_chunking_and_counters():
    model, x, target = tiny_models.regular_cnn(), tiny_models.images(3), tiny_models.targets(3)
    model.reset_counters()
    whole = pathway_grad(model, x, target, criterion="neuron_mct")
    assert (model.forward_samples, model.backward_samples) == (6, 6)  # contributions + pathway
    model.reset_counters()
    chunked = pathway_grad(model, x, target, criterion="neuron_intgrad", steps=5, max_batch=4)
    # one recording forward, 2 ReLU layers × 5 steps, one pathway pass, per sample
    assert (model.forward_samples, model.backward_samples) == (3 * 12, 3 * 11)
    again = pathway_grad(model, x, target, criterion="neuron_intgrad", steps=5, max_batch=64)
    torch.testing.assert_close(chunked.maps, again.maps)
    assert whole.maps.shape == x.shape


class SharedReLU(nn.Module):
    """One ReLU module used twice in a forward pass (as in a torchvision ResNet block)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(4, tiny_models.CLASSES)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv2(self.relu(self.conv1(z)))).mean(dim=(2, 3)))


def test_a_module_called_twice_gives_two_layers():
    model = WrappedModel(SharedReLU(), num_classes=tiny_models.CLASSES).eval().requires_grad_(False)
    x, target = tiny_models.images(2), tiny_models.targets(2)
    scores = neuron_mct(model, x, target, pathway_modules(model, ["all_relus"]))
    assert [s.shape[1] for s in scores] == [4, 4] and len(scores) == 2
    whole = pathway_grad(model, x, target, criterion="neuron_intgrad", sparsity=0.0, steps=2)
    torch.testing.assert_close(whole.maps, gradient(model, x, target).maps)


class Exploding(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_hooks_are_removed_even_when_a_pass_raises():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), Exploding())
    model = WrappedModel(net, num_classes=2).eval()
    x, target = tiny_models.images(1), torch.tensor([0])
    for _ in range(1000):
        with pytest.raises(RuntimeError, match="boom"):
            pathway_grad(model, x, target)
    assert not net[1]._forward_hooks


def test_layer_names_and_refusals():
    model, x, target = tiny_models.regular_cnn(), tiny_models.images(1), tiny_models.targets(1)
    with pytest.raises(ValueError, match="'no_such_layer'.*stage1"):
        pathway_grad(model, x, target, layers=["no_such_layer"])
    by_path = pathway_grad(model, x, target, layers=["2", "5"], sparsity=0.5)
    by_relus = pathway_grad(model, x, target, layers=["all_relus"], sparsity=0.5)
    torch.testing.assert_close(by_path.maps, by_relus.maps)  # regular_cnn's ReLUs are 2 and 5
    no_relu = WrappedModel(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.LazyLinear(2)), num_classes=2)
    no_relu(x)
    with pytest.raises(MethodNotApplicable, match="no nn.ReLU"):
        pathway_grad(no_relu, x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"'pathway_grad\.sparsity'"):
        call_method(get_method("pathway_grad"), model, x, target, {"sparsity": 1.5})


def test_registered():
    info = get_method("pathway_grad")
    assert not info.channel_free and info.params["sparsity"]["default"] == 0.7

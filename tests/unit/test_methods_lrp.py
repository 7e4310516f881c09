"""LRP (zennit): conservation, the ε rule as gradient × input, and a hand-computed 2-layer case."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("zennit")

from tiny_models import CLASSES, images, regular_cnn, targets, x_cnn  # noqa: E402

from attrflow.methods import MethodNotApplicable, call_method, get_method  # noqa: E402
from attrflow.methods.lrp import COMPOSITES, lrp  # noqa: E402
from attrflow.models import WrappedModel  # noqa: E402

F64 = torch.float64


def _logits(model, x, t):
    with torch.no_grad():
        return model(x).gather(1, t.unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("normalised", [False, True])
def test_epsilon_rule_conserves_the_logit_on_a_bias_free_relu_net(normalised):
    model = x_cnn(dtype=F64, normalised=normalised)
    x, t = images(dtype=F64), targets()
    result = lrp(model, x, t, composite="epsilon", epsilon=1e-12)
    sums = result.maps.flatten(1).sum(dim=1)
    assert torch.allclose(sums, _logits(model, x, t), rtol=1e-8, atol=1e-10)
    assert float(result.diagnostics["conservation_residual"].max()) < 1e-8


def test_epsilon_rule_to_zero_is_gradient_times_input_in_the_models_input_space():
    # LRP-0 on a ReLU net is z ⊙ ∇_z F (Ancona et al., 2018); in pixels, (x − mean) ⊙ ∇_x F.
    model = x_cnn(dtype=F64, normalised=True)
    x, t = images(dtype=F64), targets()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).gather(1, t.unsqueeze(1)).sum(), xg)
    expected = (x - model.mean) * grad
    ours = lrp(model, x, t, composite="epsilon", epsilon=1e-12).maps
    assert torch.allclose(ours, expected, rtol=1e-7, atol=1e-10)


def _two_layer(w1, w2) -> WrappedModel:
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(w1, dtype=F64))
        net[3].weight.copy_(torch.tensor(w2, dtype=F64))
    return WrappedModel(net.to(F64), num_classes=2, mean=[0.0], std=[1.0]).eval()


def test_hand_computed_two_layer_linear_relu_net():
    # x = (1, 2) (one channel, a 1×2 image), W1 = [[1, 1], [2, −0.5]]: hidden z = (3, 1), both
    # active. Output 0 reads W2[0] = (1, −1): logit = 3 − 1 = 2.
    model = _two_layer([[1.0, 1.0], [2.0, -0.5]], [[1.0, -1.0], [0.5, 0.5]])
    x = torch.tensor([[[[1.0, 2.0]]]], dtype=F64)
    t = torch.tensor([0])
    # ε → 0: hidden relevance R_h = h_j w_j / logit · logit = (3, −1).
    # Input: R_i = Σ_j x_i W1_ji / z_j · R_hj:
    #   R_1 = 1·1/3·3 + 1·2/1·(−1) = 1 − 2 = −1;  R_2 = 2·1/3·3 + 2·(−0.5)/1·(−1) = 2 + 1 = 3.
    eps = lrp(model, x, t, composite="epsilon", epsilon=1e-12).maps
    assert torch.allclose(eps.flatten(), torch.tensor([-1.0, 3.0], dtype=F64), atol=1e-9)
    # α1β0 (z⁺): output layer splits logit 2 by positive contributions only: h·w⁺ = (3, 0), so
    # R_h = (2, 0). Input: z⁺ of hidden 1 = (1, 2) → R = 2·(1/3, 2/3) = (2/3, 4/3).
    plus = lrp(model, x, t, composite="alpha1_beta0").maps
    assert torch.allclose(plus.flatten(), torch.tensor([2 / 3, 4 / 3], dtype=F64), atol=1e-5)
    # α2β1, R_i = Σ_j (α c⁺_ij / z⁺_j − β c⁻_ij / z⁻_j) R_j. Output: contributions (3, −1):
    # R_h = (2·3/3·2, −1·(−1)/(−1)·2) = (4, −2). Hidden 1, contributions (1, 2), none negative:
    # 4·2·(1/3, 2/3) = (8/3, 16/3). Hidden 2, contributions (2, −1): −2·(2·2/2, −(−1)/(−1)) =
    # (−4, 2). Sum: (8/3 − 4, 16/3 + 2).
    ab = lrp(model, x, t, composite="alpha2_beta1").maps
    assert torch.allclose(ab.flatten(), torch.tensor([8 / 3 - 4, 16 / 3 + 2], dtype=F64), atol=1e-5)


def test_box_rule_gets_the_pixel_bounds_in_the_models_input_space():
    """z^B with bounds (0 − mean)/std, (1 − mean)/std must equal zennit on the bare net given
    normalised input and those bounds, and differ from bounds left in pixel space."""
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox

    model = regular_cnn(dtype=F64)
    x, t = images(dtype=F64), targets()
    ours = lrp(model, x, t, composite="epsilon_gamma_box").maps
    z = (x - model.mean) / model.std
    onehot = torch.eye(CLASSES, dtype=F64)[t]

    def zennit_maps(low, high):
        composite = EpsilonGammaBox(low=low, high=high, canonizers=[SequentialMergeBatchNorm()])
        with Gradient(model.net, composite) as attributor:
            out, rel = attributor(z, lambda out: onehot * out)
        return rel

    right = zennit_maps((0 - model.mean) / model.std, (1 - model.mean) / model.std)
    wrong = zennit_maps(torch.zeros_like(model.mean), torch.ones_like(model.mean))
    assert torch.allclose(ours, right, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(ours, wrong, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_every_composite_runs_batched_and_deterministic(composite):
    model = regular_cnn(dtype=F64)
    x, t = images(n=5, dtype=F64), targets(5)
    whole = lrp(model, x, t, composite=composite)
    chunked = lrp(model, x, t, composite=composite, max_batch=2)
    assert whole.maps.shape == x.shape and torch.isfinite(whole.maps).all()
    assert torch.allclose(whole.maps, chunked.maps, rtol=1e-10, atol=1e-12)
    # The logit relevance starts from is the model's, up to zennit's merged BatchNorm, which
    # keeps its ε (a relative 1/sqrt(1 + 1e-5) ≈ 1 − 5e-6).
    assert torch.allclose(_logits(model, x, t), whole.diagnostics["output_logit"], rtol=2e-5)


def test_refuses_layers_without_a_rule_and_bad_parameters():
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2))
    model = WrappedModel(net, num_classes=2, mean=[0.0], std=[1.0]).eval()
    x = torch.rand(1, 1, 1, 2)
    with pytest.raises(MethodNotApplicable, match="LayerNorm"):
        lrp(model, x, torch.tensor([0]))
    info = get_method("lrp")
    with pytest.raises(ValueError, match=r"'lrp\.composite'"):
        call_method(info, x_cnn(), images(), targets(), {"composite": "zplus_everywhere"})
    with pytest.raises(ValueError, match=r"'lrp\.epsilon'"):
        call_method(info, x_cnn(), images(), targets(), {"epsilon": 0.0})
    with pytest.raises(ValueError, match="no ε rule"):
        lrp(x_cnn(), images(), targets(), composite="alpha1_beta0", epsilon=0.25)
    with pytest.raises(ValueError, match="γ rule"):
        lrp(x_cnn(), images(), targets(), composite="epsilon_plus", gamma=0.5)

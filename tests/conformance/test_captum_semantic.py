"""Semantic attribution's per-unit contributions (Khakzar et al., 2021, Eq. 6) against Captum.

Eq. 6 is Integrated Gradients of the network *after* the layer, from a zero activation to the
layer's own activation: Captum's IntegratedGradients on that head, with baselines 0 and
``riemann_right`` (α = k/n, weights 1/n, the rule attrflow's layer IG uses), computes the same
quantity from the layer's activation.
"""

from __future__ import annotations

import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")

from tiny_models import images, regular_cnn  # noqa: E402

from attrflow.methods.semantic_attribution import semantic_attribution  # noqa: E402

F64 = torch.float64


def test_per_unit_ig_matches_captum_ig_on_the_head():
    model = regular_cnn(dtype=F64)
    x, target = images(3, dtype=F64), torch.tensor([1, 3, 0])
    steps = 16
    out = semantic_attribution(model, x, target, layer="3", steps=steps, top_units=8)
    net = model.net
    with torch.no_grad():  # the wrapper normalises with its mean and std, then runs the net
        activation = net[:4]((x - model.mean) / model.std)
    head = torch.nn.Sequential(*list(net)[4:])
    theirs = captum_attr.IntegratedGradients(head).attribute(
        activation.clone().requires_grad_(True), baselines=torch.zeros_like(activation), target=target,
        n_steps=steps, method="riemann_right",
    ).detach()
    torch.testing.assert_close(out.diagnostics["unit_contributions"], theirs.abs().flatten(2).sum(dim=2))
    torch.testing.assert_close(out.diagnostics["layer_total"], theirs.flatten(1).sum(dim=1))

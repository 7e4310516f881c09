"""Semantic attribution (Khakzar et al., 2021): per-unit IG contributions by hand, their
completeness at the layer, the top unit and its map; and the pathway diagnostics of Khakzar et
al., CVPR 2021 (dead share, Jaccard) by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tiny_models
from attrflow.methods import call_method, get_method
from attrflow.methods.pathway_grad import dead_share, pathway_grad
from attrflow.methods.semantic_attribution import normalise_unit_maps, semantic_attribution
from attrflow.metrics.base import MetricInputs
from attrflow.metrics.pathway_diagnostics import jaccard, pathway_dead_share, pathway_jaccard
from test_methods_pathway import OUT_WEIGHTS, SIDE, hidden, single_pathway_model, toy_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

RELU = "1"  # the toy network's ReLU: Sequential(conv, relu, pool, flatten, linear)


def test_unit_contributions_by_hand_on_a_network_linear_after_the_layer():
    model, x = single_pathway_model(), toy_inputs()
    target = torch.zeros(3, dtype=torch.long)
    out = semantic_attribution(model, x, target, layer=RELU, steps=3, top_units=2)
    # s = a · w_c / (H·W) exactly: the head is linear, so any Riemann sum is exact
    s = hidden(x) * torch.tensor(OUT_WEIGHTS[0]).view(1, 3, 1, 1) / SIDE**2
    d = out.diagnostics
    torch.testing.assert_close(d["unit_contributions"], s.abs().flatten(2).sum(dim=2))
    # completeness at the layer: Σ_k Σ_i s = f(x) − f(a ← 0) = f(x) − bias
    logits = model(x)[:, 0]
    torch.testing.assert_close(d["layer_total"], s.flatten(1).sum(dim=1))
    torch.testing.assert_close(d["layer_gap"], logits - 0.25)
    torch.testing.assert_close(d["layer_total"], d["layer_gap"])
    # channel 0 (x0 + 2·x1 + 0.5, weight 3) dominates, channel 1 (weight 0.5, tiny) comes next
    assert d["top_units"].tolist() == [[0, 1]] * 3
    top_map = s[:, 0] / s[:, 0].flatten(1).amax(dim=1).view(-1, 1, 1)
    torch.testing.assert_close(d["top_unit_maps"][:, 0], top_map)
    torch.testing.assert_close(out.maps, top_map)  # 2×2 layer on 2×2 input: no resampling
    assert get_method("semantic_attribution").channel_free


def test_completeness_on_a_nonlinear_head():
    """Σ over units of per-unit IG = the layer's IG total → f(x) − f(a ← 0) as steps grow."""
    model = tiny_models.regular_cnn()
    x = tiny_models.images(3)
    target = torch.tensor([0, 2, 4])
    errors = []
    for steps in (4, 256):
        out = semantic_attribution(model, x, target, layer="3", steps=steps, max_batch=64)
        total = out.diagnostics["unit_contributions"]  # Σ|s| ≥ |Σ s|
        assert (total.sum(dim=1) >= out.diagnostics["layer_total"].abs() - 1e-6).all()
        errors.append((out.diagnostics["layer_total"] - out.diagnostics["layer_gap"]).abs().max().item())
    assert errors[1] < 1e-2 * max(1.0, out.diagnostics["layer_gap"].abs().max().item())
    assert errors[1] <= errors[0]


def test_normalisation_and_refusals():
    maps = torch.tensor([[[[1.0, -4.0]], [[-1.0, -2.0]], [[0.0, 0.0]]]])
    normalised = normalise_unit_maps(maps)
    torch.testing.assert_close(normalised[0, 0], torch.tensor([[1.0, -4.0]]))  # max s = 1
    torch.testing.assert_close(normalised[0, 1], torch.tensor([[-0.5, -1.0]]))  # no positive: max |s|
    torch.testing.assert_close(normalised[0, 2], torch.zeros(1, 2))
    model, x = single_pathway_model(), toy_inputs(1)
    with pytest.raises(ValueError, match=r"'semantic_attribution\.steps'"):
        call_method(
            get_method("semantic_attribution"), model, x, torch.zeros(1, dtype=torch.long),
            {"layer": RELU, "steps": 0},
        )  # fmt: skip
    with pytest.raises(ValueError, match="not a module"):
        semantic_attribution(model, x, torch.zeros(1, dtype=torch.long), layer="nope")


# ------------------------------------------------------------------------------ pathway diagnostics
def test_jaccard_and_dead_share_by_hand():
    first = [torch.tensor([[True, True, False, False]]), torch.tensor([[True, False]])]
    second = [torch.tensor([[True, False, True, False]]), torch.tensor([[False, False]])]
    overall, per_site = jaccard(first, second)
    # site 0: ∩ 1, ∪ 3; site 1: ∩ 0, ∪ 1; network-wide ∩ 1, ∪ 4
    torch.testing.assert_close(overall, torch.tensor([0.25], dtype=torch.float64))
    torch.testing.assert_close(per_site, torch.tensor([[1 / 3, 0.0]], dtype=torch.float64))
    empty = [torch.zeros(1, 2, dtype=torch.bool)]
    assert torch.isnan(jaccard(empty, empty)[0]).all()
    activations = [torch.tensor([[0.0, 2.0, 0.0, 1.0]]), torch.tensor([[0.0, 3.0]])]
    share, per_layer = dead_share(first, activations)
    # the pathway keeps 3 units: (site 0) 0.0 dead and 2.0 alive, (site 1) 0.0 dead → 2/3
    torch.testing.assert_close(share, torch.tensor([2 / 3], dtype=torch.float64))
    torch.testing.assert_close(per_layer, torch.tensor([[0.5, 1.0]], dtype=torch.float64))


def _inputs(model, x, target, out, params) -> MetricInputs:
    return MetricInputs(
        model=model, images=x, maps=out.maps, targets=target, labels=target, ids=[str(i) for i in range(len(x))],
        diagnostics=out.diagnostics, method="pg", method_fn="pathway_grad", method_params=params,
    )


def test_pathway_dead_share_on_the_toy_network():
    model, x = single_pathway_model(), toy_inputs()
    target = torch.zeros(3, dtype=torch.long)
    # κ = 0 keeps every unit: the dead channel 2 is 4 of the 12 units
    whole = pathway_grad(model, x, target, sparsity=0.0, layers=["all_relus"])
    torch.testing.assert_close(whole.diagnostics["dead_fraction"], torch.full((3,), 1 / 3))
    metric = pathway_dead_share(_inputs(model, x, target, whole, {"sparsity": 0.0}))
    np.testing.assert_allclose(metric.values, 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(np.stack(metric.curves), 1 / 3, rtol=1e-6)
    # leaving out the 4 lowest contributions drops exactly the dead units (NeuronMCT gives them 0)
    sparse = pathway_grad(model, x, target, sparsity=4 / 12, layers=["all_relus"])
    assert pathway_dead_share(_inputs(model, x, target, sparse, {})).values.tolist() == [0.0] * 3


def test_pathway_jaccard_by_hand():
    """Class 1 weights the channels −1, 2, 0: NeuronIntGrad (signed) leaves out channel 0, the
    negative one, and keeps channels 1 and 2 (c = 0 ≥ c_κ = 0); NeuronMCT (|c|) leaves out the dead
    channel 2 and keeps 0 and 1. The pathways share channel 1: J = 4 / 12 px."""
    model, x = single_pathway_model(), toy_inputs()
    target = torch.ones(3, dtype=torch.long)
    params = {"criterion": "neuron_mct", "sparsity": 4 / 12, "layers": ["all_relus"]}
    out = pathway_grad(model, x, target, **params)
    result = pathway_jaccard(_inputs(model, x, target, out, params), criterion="neuron_intgrad", steps=4)
    np.testing.assert_allclose(result.values, 1 / 3)
    same = pathway_jaccard(_inputs(model, x, target, out, params), criterion="neuron_mct")
    np.testing.assert_allclose(same.values, 1.0)
    from dataclasses import replace

    other = pathway_jaccard(replace(_inputs(model, x, target, out, params), method_fn="gradient"))
    assert other.status == ["skipped"] * 3

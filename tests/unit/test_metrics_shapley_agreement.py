"""Shapley agreement: Spearman and top-k overlap of grid-pooled maps with exact Shapley values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_metrics import linear_model, make_inputs, score
from tiny_models import images, regular_cnn, targets

from attrflow.methods.shapley import exact_shapley
from attrflow.metrics.base import PeerMaps

PHI = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # exact values of a 2×2 grid, one sample


def cell_map(values) -> torch.Tensor:
    """A 4×4 map whose 2×2 cells sum to ``values`` (row-major)."""
    v = torch.tensor(values, dtype=torch.float32).view(2, 2) / 4
    return v.repeat_interleave(2, 0).repeat_interleave(2, 1).unsqueeze(0)


def inputs_with(maps, ids=("s0",), phi=PHI, fn="exact_shapley"):
    model = linear_model(torch.ones(4, 4))
    inputs = make_inputs(model, torch.ones(maps.shape[0], 1, 4, 4), maps)
    inputs.peers = {
        "exact": PeerMaps(
            ids=list(ids), maps=torch.zeros(len(ids), 4, 4),
            diagnostics={"shapley_values": phi} if fn == "exact_shapley" else {}, method_fn=fn,
        )
    }  # fmt: skip
    return inputs


def test_spearman_and_topk_by_hand():
    reversed_map = inputs_with(cell_map([1.0, 2.0, 3.0, 4.0]))
    assert score("shapley_spearman", reversed_map, reference="exact").values[0] == pytest.approx(-1.0)
    assert score("shapley_topk", reversed_map, reference="exact", top_k=2).values[0] == 0.0
    # Cells ranked 0, 2, 1, 3: ρ = 1 − 6·(0 + 1 + 1 + 0)/(4·15) = 0.8; top-2 {0, 2} vs {0, 1}: 1/2.
    close = inputs_with(cell_map([9.0, 1.0, 5.0, 0.0]))
    assert score("shapley_spearman", close, reference="exact").values[0] == pytest.approx(0.8)
    assert score("shapley_topk", close, reference="exact", top_k=2).values[0] == 0.5


def test_absolute_order_ranks_magnitudes():
    phi = torch.tensor([[[-4.0, 3.0], [2.0, 1.0]]])
    inputs = inputs_with(cell_map([5.0, 3.0, 2.0, 1.0]), phi=phi)
    # Signed ranks (4, 3, 2, 1) vs (1, 4, 3, 2): Σd² = 12, ρ = 1 − 72/60 = −0.2.
    assert score("shapley_spearman", inputs, reference="exact").values[0] == pytest.approx(-0.2)
    assert score("shapley_spearman", inputs, reference="exact", order="absolute").values[0] == pytest.approx(1.0)


def test_samples_without_exact_values_are_skipped_and_constant_maps_are_nan():
    maps = torch.cat([cell_map([1.0, 2.0, 3.0, 4.0]), torch.zeros(1, 4, 4)])
    inputs = make_inputs(linear_model(torch.ones(4, 4)), torch.ones(2, 1, 4, 4), maps)
    inputs.peers = inputs_with(maps[:1], ids=("s1",)).peers  # the peer holds s1 only
    out = score("shapley_topk", inputs, reference="exact", top_k=1)
    assert out.status == ["skipped", "nan"]
    assert "no exact Shapley values" in out.reasons[0] and "constant" in out.reasons[1]


def test_a_reference_without_shapley_values_is_refused_and_an_absent_one_skipped():
    with pytest.raises(ValueError, match="exact_shapley"):
        score("shapley_spearman", inputs_with(cell_map([1, 2, 3, 4]), fn="lime"), reference="exact")
    # An entry that did not run on this model or shard: every sample is skipped, with the reason.
    absent = score("shapley_spearman", inputs_with(cell_map([1, 2, 3, 4])), reference="missing")
    assert absent.status == ["skipped"] and "'missing'" in absent.reasons[0]


def test_exact_shapley_maps_agree_perfectly_with_their_own_values():
    model = regular_cnn()
    x, t = images(n=2), targets(2)
    result = exact_shapley(model, x, t, grid=3)
    inputs = make_inputs(model, x, result.maps, t)
    inputs.ids = ["a", "b"]
    inputs.peers = {
        "exact": PeerMaps(["a", "b"], result.maps, result.diagnostics, "exact_shapley")
    }
    rho = score("shapley_spearman", inputs, reference="exact").values
    overlap = score("shapley_topk", inputs, reference="exact", top_k=3).values
    assert np.allclose(rho, 1.0) and np.allclose(overlap, 1.0)

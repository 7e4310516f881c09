"""Exact grid Shapley values: the closed form of an additive model plus one interaction, and the
efficiency, symmetry and dummy axioms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tiny_models import images, regular_cnn, targets  # noqa: E402

from attrflow.methods import call_method, get_method
from attrflow.methods.superpixels import grid_segments
from attrflow.methods.shapley import MAX_COALITIONS, exact_shapley, shapley_from_worths
from attrflow.models import WrappedModel

F64 = torch.float64


class CellGame(nn.Module):
    """logit 0 = Σ_i a_i m_i + b · m_0 · m_1, m_i the mean of channel 0 over 2×2 cell i of a 4×4
    image; logit 1 = −logit 0. With a black baseline, removing a cell sets its m_i to 0."""

    def __init__(self, a, b) -> None:
        super().__init__()
        self.a = torch.tensor(a, dtype=F64)
        self.b = float(b)

    def means(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].reshape(-1, 2, 2, 2, 2).mean(dim=(2, 4)).reshape(-1, 4)  # row-major cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.means(x)
        out = m @ self.a + self.b * m[:, 0] * m[:, 1]
        return torch.stack([out, -out], dim=1)


def _game(a, b):
    game = CellGame(a, b)
    return WrappedModel(game, num_classes=2, mean=[0.0, 0.0], std=[1.0, 1.0]).eval(), game


def test_two_by_two_grid_matches_the_closed_form_of_additive_plus_interaction():
    model, game = _game([1.0, -2.0, 0.5, 3.0], 4.0)
    x = torch.rand(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([0, 1, 0])
    result = exact_shapley(model, x, t, grid=2, baseline="black", max_batch=7)
    m = game.means(x)
    # φ_i = a_i m_i, and the interaction b m_0 m_1 split equally between cells 0 and 1.
    expected = m * game.a
    expected[:, :2] += (game.b * m[:, 0] * m[:, 1] / 2).unsqueeze(1)
    expected[1] *= -1  # target 1 is −logit 0
    values = result.diagnostics["shapley_values"].reshape(3, 4)
    assert torch.allclose(values, expected, rtol=1e-12, atol=1e-12)
    # The map spreads each value over its cell's 4 pixels and pools back to it.
    assert torch.allclose(result.maps[:, :2, :2].sum(dim=(1, 2)), values[:, 0], atol=1e-12)


def test_efficiency_symmetry_and_dummy():
    # Cell 3 is a dummy (a_3 = 0); cells 0 and 1 interchangeable when a_0 m_0 = a_1 m_1.
    model, _ = _game([2.0, 1.0, 0.5, 0.0], -3.0)
    x = torch.rand(2, 2, 4, 4, dtype=F64)
    x[:, 0, :2, :2] = 0.3  # m_0 = 0.3
    x[:, 0, :2, 2:] = 0.6  # m_1 = 0.6: a_0 m_0 = a_1 m_1, and the interaction is symmetric
    t = torch.tensor([0, 0])
    result = exact_shapley(model, x, t, grid=2)
    values = result.diagnostics["shapley_values"].reshape(2, 4)
    with torch.no_grad():
        delta = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    assert torch.allclose(values.sum(dim=1), delta, atol=1e-12)  # efficiency
    assert torch.allclose(result.maps.sum(dim=(1, 2)), delta, atol=1e-12)
    assert torch.allclose(values[:, 0], values[:, 1], atol=1e-12)  # symmetry
    assert torch.all(values[:, 3].abs() < 1e-12)  # dummy
    assert float(result.diagnostics["completeness_residual"].max()) < 1e-12


def test_shapley_from_worths_on_a_three_player_game():
    # v(S) = |S|² on 3 players: symmetric, so each gets v(N)/3 = 3.
    codes = torch.arange(8)
    sizes = sum(((codes >> b) & 1) for b in range(3))
    values = shapley_from_worths((sizes**2).double().unsqueeze(0), 3)
    assert torch.allclose(values, torch.full((1, 3), 3.0, dtype=F64))


def test_efficiency_on_a_cnn_and_batching_does_not_change_values():
    model = regular_cnn(dtype=F64)
    x, t = images(n=3, dtype=F64), targets(3)
    one = exact_shapley(model, x, t, grid=3, baseline="mean", max_batch=1000)
    chunked = exact_shapley(model, x, t, grid=3, baseline="mean", max_batch=37)
    assert torch.allclose(one.maps, chunked.maps, rtol=1e-12, atol=1e-14)
    assert float(one.diagnostics["completeness_residual"].max()) < 1e-10
    assert model.forward_samples == 2 * 3 * 2**9


def test_refuses_grids_above_the_coalition_limit_and_grids_larger_than_the_image():
    model = regular_cnn()
    info = get_method("exact_shapley")
    # 5×5 cells would be 2^25 coalitions; the bound states the limit
    with pytest.raises(ValueError, match=r"'exact_shapley\.grid'.*maximum of 4"):
        call_method(info, model, images(1), targets(1), {"grid": 5})
    assert MAX_COALITIONS == 2 ** (4 * 4)
    with pytest.raises(ValueError, match="does not fit"):
        exact_shapley(model, torch.rand(1, 3, 3, 3), targets(1), grid=4)
    with pytest.raises(ValueError, match=r"'exact_shapley\.baseline'"):
        call_method(info, model, images(1), targets(1), {"grid": 2, "baseline": "uniform"})


def test_grid_cells_are_contiguous_and_balanced():
    cells = grid_segments(10, 7, 3)
    assert cells.shape == (10, 7) and set(cells.unique().tolist()) == set(range(9))
    counts = torch.bincount(cells.flatten())
    assert int(counts.max() - counts.min()) <= 3 + 4  # rows 3–4 × cols 2–3

"""LIME and KernelSHAP against Captum called directly, and KernelSHAP on an additive model.

Ours seeds torch's global generator from the injected one (inside fork_rng); Captum called
directly after `torch.manual_seed` with the same seed draws the same coalitions, so the maps
must agree to rounding. On a model additive in the grid cells, KernelSHAP's least-squares fit is
exact for any full-rank set of coalitions: it must recover each cell's contribution.
"""

from __future__ import annotations

import pytest
import torch

captum_attr = pytest.importorskip("captum.attr")
pytest.importorskip("sklearn")

from test_methods_shapley import CellGame  # noqa: E402
from tiny_models import images, regular_cnn, targets  # noqa: E402

from attrflow.methods.superpixels import grid_segments, segment_images  # noqa: E402
from attrflow.methods.surrogates import kernel_shap, lime  # noqa: E402
from attrflow.models import WrappedModel  # noqa: E402

F64 = torch.float64


def _seed_of(generator_seed: int) -> int:
    gen = torch.Generator().manual_seed(generator_seed)
    return int(torch.randint(0, 2**62, (1,), generator=gen))


def _captum(explainer, model, x, t, segments, n_samples, per_eval, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        return explainer.attribute(
            x, baselines=torch.zeros_like(x), target=t, feature_mask=segments.unsqueeze(1),
            n_samples=n_samples, perturbations_per_eval=per_eval,
        )[:, 0].to(x.dtype)


def test_kernel_shap_matches_captum():
    model = regular_cnn(dtype=F64)
    x, t = images(n=2, dtype=F64), targets(2)
    ours = kernel_shap(model, x, t, n_samples=40, n_segments=3, generator=torch.Generator().manual_seed(5), max_batch=16).maps
    segments = grid_segments(10, 10, 3).expand(2, -1, -1)
    theirs = _captum(captum_attr.KernelShap(model), model, x, t, segments, 40, 16, _seed_of(5))
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-8)


def test_lime_matches_captum():
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    model = regular_cnn(dtype=F64)
    x, t = images(n=2, dtype=F64), targets(2)
    gen = torch.Generator().manual_seed(9)
    ours = lime(model, x, t, n_samples=50, n_segments=3, kernel_width=0.5, alpha=0.001, generator=gen, max_batch=8).maps
    explainer = captum_attr.Lime(
        model, interpretable_model=SkLearnLasso(alpha=0.001),
        similarity_func=get_exp_kernel_similarity_function("cosine", 0.5),
    )
    segments = grid_segments(10, 10, 3).expand(2, -1, -1)
    theirs = _captum(explainer, model, x, t, segments, 50, 8, _seed_of(9))
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-8)
    assert ours.abs().max() > 0


def test_same_seed_same_maps_and_the_global_generator_is_left_alone():
    model = regular_cnn(dtype=F64)
    x, t = images(n=2, dtype=F64), targets(2)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = lime(model, x, t, n_samples=30, n_segments=2, generator=torch.Generator().manual_seed(1)).maps
    after = torch.rand(3)
    b = lime(model, x, t, n_samples=30, n_segments=2, generator=torch.Generator().manual_seed(1)).maps
    c = lime(model, x, t, n_samples=30, n_segments=2, generator=torch.Generator().manual_seed(2)).maps
    assert torch.equal(before, after)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kernel_shap_recovers_the_contributions_of_an_additive_model():
    game = CellGame([1.0, -2.0, 0.5, 3.0], 0.0)  # no interaction: additive in the 4 cells
    model = WrappedModel(game, num_classes=2, mean=[0.0, 0.0], std=[1.0, 1.0]).eval()
    x = torch.rand(2, 2, 4, 4, dtype=F64)
    t = torch.tensor([0, 1])
    maps = kernel_shap(model, x, t, n_samples=60, n_segments=2, generator=torch.Generator().manual_seed(0)).maps
    expected = game.means(x) * game.a
    expected[1] *= -1
    got = maps[:, ::2, ::2].reshape(2, 4)  # every pixel of a cell carries the cell's weight
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_slic_segments_cover_the_image_with_consecutive_labels():
    pytest.importorskip("skimage")
    x = images(n=2, dtype=F64)
    segments = segment_images(x, "slic", 6, 10.0)
    assert segments.shape == (2, 10, 10)
    for labels in segments:
        assert labels.unique().tolist() == list(range(int(labels.max()) + 1))
    model = regular_cnn(dtype=F64)
    maps = lime(model, x, targets(2), n_samples=20, segmentation="slic", n_segments=6, generator=torch.Generator().manual_seed(0)).maps
    assert maps.shape == (2, 10, 10) and torch.isfinite(maps).all()


def test_kernel_shap_converges_to_the_exact_shapley_values_of_the_grid():
    """The ground truth exact_shapley exists for: KernelSHAP's estimate on the same 2×2 grid and
    baseline approaches it as coalitions grow (a CNN, not additive, so only approximately)."""
    from attrflow.methods.shapley import exact_shapley

    model = regular_cnn(dtype=F64)
    x, t = images(n=2, dtype=F64), targets(2)
    exact = exact_shapley(model, x, t, grid=2).diagnostics["shapley_values"].reshape(2, 4)
    cells = grid_segments(10, 10, 2)
    corners = [int((cells == c).nonzero()[0, 0]) * 10 + int((cells == c).nonzero()[0, 1]) for c in range(4)]

    def estimate(n_samples):
        maps = kernel_shap(model, x, t, n_samples=n_samples, n_segments=2, generator=torch.Generator().manual_seed(0)).maps
        return maps.reshape(2, -1)[:, corners]

    scale = float(exact.abs().max())
    coarse = float((estimate(8) - exact).abs().max()) / scale
    fine = float((estimate(2000) - exact).abs().max()) / scale
    assert fine < 0.05 and fine < coarse

"""Hand-computed toy cases for MuFidelity, Faithfulness Correlation, KPM/KNM/KAM/RAM/RPM/RNM,
DiffID and Sensitivity-N, plus their directions, edge cases and determinism.

Most cases use a linear "model" on a tiny single-channel image whose class-0 logit is
Σ w ⊙ z (z the normalised input) and whose class-1 logit is a constant, so every output a
metric reads can be written down by hand:

    x = [0.5, 1.0, 0.25, 0.75], w = [1, 2, 3, 4]  (2 × 2, row-major pixel indices 0…3)
"""

from __future__ import annotations

import math

import jsonschema
import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics._removal import CONSTANT_MAP, NONFINITE_MAP, gaussian_blur
from attrflow.metrics.diffid import NONPOSITIVE_LOGIT
from attrflow.metrics.keep_remove_mask import blur_sigma_for, keep_fractions, kept_counts
from attrflow.metrics._stats import average_ranks
from attrflow.metrics.mufidelity import (
    CONSTANT_ATTRIBUTION,
    CONSTANT_OUTPUT,
    correlate,
    draw_bernoulli_subsets,
    draw_index_subsets,
    grid_cells,
    subset_fidelity,
)
from attrflow.models import WrappedModel

torch.set_num_threads(2)

X = torch.tensor([[[[0.5, 1.0], [0.25, 0.75]]]])
W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


class LinearLogit(nn.Module):
    """logit_0 = g(Σ w ⊙ z) (g the identity unless given), logit_1 = `other` (a constant)."""

    def __init__(self, weight: torch.Tensor, other: float = 0.0, squash=None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.other = other
        self.squash = squash

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (z * self.weight).flatten(1).sum(dim=1)
        if self.squash is not None:
            score = self.squash(score)
        return torch.stack([score, torch.full_like(score, self.other)], dim=1)


def linear_model(weight=W, channels=1, other=0.0, squash=None, mean=0.0, std=1.0) -> WrappedModel:
    return WrappedModel(
        LinearLogit(weight, other, squash), num_classes=2, mean=[mean] * channels, std=[std] * channels
    ).eval()


def small_cnn(channels: int = 3, seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    return WrappedModel(net, num_classes=3, mean=[0.4] * channels, std=[0.3] * channels).eval()


def make_inputs(model, images, maps, targets=None, labels=None) -> MetricInputs:
    n = images.shape[0]
    targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return MetricInputs(
        model=model,
        images=images,
        maps=maps,
        targets=targets,
        labels=targets if labels is None else labels,
        ids=[f"s{i}" for i in range(n)],
    )


def score(name: str, inputs: MetricInputs, seed: int = 0, max_batch: int = 256, **params):
    generator = torch.Generator().manual_seed(seed)
    return call_metric(get_metric(name), inputs, params, generator=generator, max_batch=max_batch)


def trapezoid(curve, xs) -> float:
    curve, xs = np.asarray(curve, float), np.asarray(xs, float)
    return float(((curve[1:] + curve[:-1]) / 2 * np.diff(xs)).sum())


def _cnn_batch(n=3, side=8, seed=9):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, side, side, generator=generator)
    maps = torch.randn(n, side, side, generator=generator)
    return small_cnn(), images, maps, torch.arange(n) % 3


def _linear_6x6(seed=8, **model_kwargs):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(6, 6, generator=generator)
    images = torch.rand(2, 1, 6, 6, generator=generator)
    return linear_model(weight, **model_kwargs), images, weight * images[:, 0]


# ================================================================ registrations


def test_registrations_and_defaults():
    expected = {
        "mufidelity": "higher",
        "faithfulness_correlation": "higher",
        "kpm": "higher",
        "knm": "lower",
        "kam": "higher",
        "ram": "lower",
        "rpm": "lower",
        "rnm": "higher",
        "diffid": "higher",
        "sensitivity_n": "higher",
    }
    for name, direction in expected.items():
        info = get_metric(name)
        assert (info.kind, info.direction) == ("map", direction), name
        for fragment in info.params.values():
            jsonschema.Draft202012Validator.check_schema(fragment)
            jsonschema.validate(fragment["default"], fragment)
    defaults = {k: v["default"] for k, v in get_metric("mufidelity").params.items()}
    assert defaults | {"fill": "black"} == {
        "subsets": 200, "subset_fraction": 0.2, "grid": 9, "fill": "black", "blur_kernel": 29,
        "blur_sigma": 15.0, "output": "prob", "correlation": "spearman", "absolute": True,
        "subset_draw": "bernoulli",  # Xplique's draw stays the default (UNI's numbers come from it)
    }  # fmt: skip
    faith = {k: v["default"] for k, v in get_metric("faithfulness_correlation").params.items()}
    assert (faith["subsets"], faith["subset_size"], faith["fill"], faith["output"], faith["absolute"]) == (
        100, 224, "black", "logit", False,
    )  # fmt: skip
    for name in ("kpm", "knm", "kam", "ram", "rpm", "rnm"):
        params = get_metric(name).params
        assert params["fractions"]["default"] == 16 and params["min_fraction"]["default"] == 0.01
        assert (params["blur_kernel"]["default"], params["blur_sigma"]["default"]) == (51, 41.0)
    assert get_metric("sensitivity_n").params["subsets"]["default"] == 200
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("box", get_metric("kpm").params["sigma_convention"])


# ================================================================ correlations and draws


def test_average_ranks_match_scipy_with_ties():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5, -1.0]], dtype=torch.float64)
    expected = np.stack([stats.rankdata(row) for row in values.numpy()])
    np.testing.assert_allclose(average_ranks(values).numpy(), expected)


def test_spearman_and_pearson_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 3.0, 2.0, 4.0], [10.0, 20.0, 30.0, 40.0]])
    rho, flat_a, flat_b = correlate(a, b, "spearman")
    assert rho[0].item() == pytest.approx(1 - 6 * 2 / (4 * 15))  # d² = 0 + 1 + 1 + 0
    assert rho[1].item() == pytest.approx(stats.spearmanr([1, 1, 2, 3], [10, 20, 30, 40])[0])
    assert not flat_a.any() and not flat_b.any()
    r = correlate(a, b, "pearson")[0]
    assert r[0].item() == pytest.approx(0.8)  # centred: (-1.5,-.5,.5,1.5)·(-1.5,.5,-.5,1.5)/5
    constant = correlate(torch.ones(1, 4), b[:1], "spearman")
    assert constant[1].tolist() == [True] and constant[2].tolist() == [False]
    with pytest.raises(ValueError, match="kendall"):
        correlate(a, b, "kendall")


def test_half_pixel_cells_follow_tensorflow_nearest_resize():
    # floor((y + 0.5)·3/10) vs floor(y·3/10) on a 10-pixel side
    assert grid_cells(10, 10, 3, half_pixel=True)[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert grid_cells(10, 10, 3)[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (grid_cells(10, 10, 3, half_pixel=True)[:, 0] // 3).tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert torch.equal(grid_cells(7, 7, 7, half_pixel=True).flatten(), torch.arange(49))
    cells = grid_cells(224, 224, 9, half_pixel=True)
    sizes = torch.bincount(cells[0])
    assert sizes.shape == (9,) and set(sizes.tolist()) <= {24, 25} and sizes.sum() == 224


def test_bernoulli_and_index_draws():
    generator = torch.Generator().manual_seed(0)
    drops = draw_bernoulli_subsets(4, 200, 81, 0.2, generator)
    assert drops.shape == (4, 200, 81) and drops.dtype == torch.bool
    assert drops.double().mean().item() == pytest.approx(0.2, abs=0.01)
    assert drops.sum(-1).unique().numel() > 5  # sizes vary, unlike a fixed-size draw
    again = draw_bernoulli_subsets(4, 200, 81, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(drops, again)
    index_sets = draw_index_subsets(3, 50, 64, 10, torch.Generator().manual_seed(1))
    assert index_sets.shape == (3, 50, 10)
    assert all(len(set(row.tolist())) == 10 for row in index_sets.reshape(-1, 10))
    assert int(index_sets.min()) >= 0 and int(index_sets.max()) < 64
    assert torch.equal(index_sets, draw_index_subsets(3, 50, 64, 10, torch.Generator().manual_seed(1)))
    assert torch.equal(draw_index_subsets(2, 5, 9, 3, None), draw_index_subsets(2, 5, 9, 3, None))
    counts = torch.bincount(draw_index_subsets(1, 2000, 8, 2, torch.Generator().manual_seed(2)).flatten())
    assert (counts.double() / counts.sum() - 1 / 8).abs().max() < 0.02  # uniform over cells


# ================================================================ MuFidelity (Xplique)


def test_mufidelity_spearman_is_one_for_a_monotone_model_where_pearson_is_not():
    # logit_0 = exp(Σ w x / 2): each drop is a strictly increasing function of the removed
    # contribution, so Spearman (the default) is exactly 1 and Pearson is not.
    model, images, exact = _linear_6x6(squash=lambda s: torch.exp(s / 2))
    inputs = make_inputs(model, images, exact)
    spearman = score("mufidelity", inputs, grid=6, output="logit", absolute=False, subsets=60)
    np.testing.assert_allclose(spearman.values, [1.0, 1.0], atol=1e-12)
    pearson = score("mufidelity", inputs, grid=6, output="logit", absolute=False, subsets=60, correlation="pearson")
    assert (pearson.values < 0.999).all() and (pearson.values > 0.5).all()
    negated = score("mufidelity", make_inputs(model, images, -exact), grid=6, output="logit", subsets=60)
    np.testing.assert_allclose(negated.values, [1.0, 1.0], atol=1e-12)  # |ρ| by default


def test_mufidelity_spearman_by_hand_on_explicit_subsets():
    # cells = pixels, linear logit, black fill: the drop of subset S is Σ_S w x
    maps = torch.tensor([[[1.0, 0.0], [2.0, 5.0]]])
    subsets = torch.tensor([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 0]]]).bool()
    out = subset_fidelity(
        make_inputs(linear_model(), X, maps),
        subsets,
        grid_cells(2, 2, 2),
        metric="mufidelity",
        output="logit",
        absolute=False,
        correlation="spearman",
    )
    sums, drops = [1.0, 0.0, 2.0, 5.0, 1.0], [0.5, 2.0, 0.75, 3.0, 2.5]
    # ranks: sums (2.5, 1, 4, 5, 2.5) vs drops (1, 3, 2, 5, 4)
    assert out.values[0] == pytest.approx(stats.spearmanr(sums, drops)[0], abs=1e-12)
    assert out.values[0] == pytest.approx(np.corrcoef([2.5, 1, 4, 5, 2.5], [1, 3, 2, 5, 4])[0, 1], abs=1e-12)


def test_mufidelity_draws_xplique_cells_and_counts_its_passes():
    model = small_cnn()
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 10, 10, generator=generator)
    maps = torch.randn(2, 10, 10, generator=generator)
    model.reset_counters()
    out = score("mufidelity", make_inputs(model, images, maps), grid=3, subsets=40, seed=5)
    assert model.forward_samples == 2 * 40 + 2  # every subset plus the clean images
    # the same numbers from the explicit subsets the metric draws (its generator, in order)
    subsets = draw_bernoulli_subsets(2, 40, 9, 0.2, torch.Generator().manual_seed(5))
    explicit = subset_fidelity(
        make_inputs(model, images, maps),
        subsets,
        grid_cells(10, 10, 3, half_pixel=True),
        metric="mufidelity",
        correlation="spearman",
    )
    np.testing.assert_allclose(out.values, explicit.values, atol=1e-12)


def test_mufidelity_edge_cases():
    model, images, exact = _linear_6x6()
    with pytest.raises(ValueError, match="grid=9"):  # the default 9×9 grid on a 6×6 image
        score("mufidelity", make_inputs(model, images, exact))
    # a constant map: its sums vary with the number of cells each subset drops, but it ranks nothing
    flat = score("mufidelity", make_inputs(model, images, torch.full((2, 6, 6), 0.3)), grid=3)
    assert flat.status == ["nan", "nan"] and flat.reasons == [CONSTANT_MAP] * 2
    zero = score("mufidelity", make_inputs(model, images, torch.zeros(2, 6, 6)), grid=3)
    assert zero.reasons == [CONSTANT_ATTRIBUTION] * 2
    blind = score("mufidelity", make_inputs(linear_model(torch.zeros(6, 6)), images, exact), grid=3)
    assert blind.reasons == [CONSTANT_OUTPUT] * 2
    broken = exact.clone()
    broken[1, 2, 2] = float("nan")
    out = score("mufidelity", make_inputs(model, images, broken), grid=3)
    assert out.status == ["ok", "nan"] and out.reasons[1] == NONFINITE_MAP
    with pytest.raises(ValueError, match="correlation"):
        score("mufidelity", make_inputs(model, images, exact), grid=3, correlation="kendall")


# ================================================================ Faithfulness Correlation


def test_faithfulness_correlation_by_hand_on_index_subsets():
    maps = torch.tensor([[[1.0, 0.0], [2.0, 5.0]]])
    index_sets = torch.tensor([[[0, 1], [1, 2], [2, 3], [0, 3], [1, 3]]])
    out = subset_fidelity(
        make_inputs(linear_model(), X, maps), index_sets, None, metric="f", output="logit", absolute=False
    )
    contributions = np.array([0.5, 2.0, 0.75, 3.0])
    attributions = np.array([1.0, 0.0, 2.0, 5.0])
    sums = [attributions[list(s)].sum() for s in index_sets[0].tolist()]
    drops = [contributions[list(s)].sum() for s in index_sets[0].tolist()]
    assert out.values[0] == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-12)


def test_faithfulness_correlation_uses_its_draws_and_is_one_for_the_exact_map():
    model, images, exact = _linear_6x6()
    out = score("faithfulness_correlation", make_inputs(model, images, exact), subset_size=5, subsets=30)
    np.testing.assert_allclose(out.values, [1.0, 1.0], atol=1e-6)
    generator = torch.Generator().manual_seed(4)
    maps = torch.randn(2, 6, 6, generator=generator)
    ours = score("faithfulness_correlation", make_inputs(model, images, maps), subset_size=5, subsets=30, seed=7)
    draws = draw_index_subsets(2, 30, 36, 5, torch.Generator().manual_seed(7)).numpy()
    contributions = exact.reshape(2, -1).double().numpy()
    for i in range(2):
        sums = maps[i].reshape(-1).double().numpy()[draws[i]].sum(-1)
        drops = contributions[i][draws[i]].sum(-1)
        assert ours.values[i] == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-6)


def test_faithfulness_correlation_edge_cases():
    model, images, exact = _linear_6x6()
    with pytest.raises(ValueError, match="subset_size=224"):  # default on a 36-pixel image
        score("faithfulness_correlation", make_inputs(model, images, exact))
    flat = score("faithfulness_correlation", make_inputs(model, images, torch.zeros(2, 6, 6)), subset_size=4)
    assert flat.reasons == [CONSTANT_ATTRIBUTION] * 2
    one = score("faithfulness_correlation", make_inputs(model, images[:1], exact[:1]), subset_size=4)
    assert one.status == ["ok"] and one.values[0] == pytest.approx(1.0, abs=1e-6)


# ================================================================ KPM / KNM / KAM / RAM / RPM / RNM


def test_default_fraction_grid_and_counts():
    grid = keep_fractions(16, 0.01)
    np.testing.assert_array_equal(grid.numpy(), np.geomspace(0.01, 1.0, 16))
    eligible = torch.tensor([224 * 224, 100])
    counts = kept_counts(eligible, grid, 224 * 224)
    np.testing.assert_array_equal(counts[0].numpy(), np.floor(np.geomspace(0.01, 1.0, 16) * 224 * 224))
    assert counts[0, 0] == 501 and counts[0, -1] == 224 * 224 and (counts[1] <= 100).all()


# The 2×2 case: map A = [[-1, 3], [2, 0.5]] (pixels 0…3); 3 fractions p = 0.25, 0.5, 1 keep
# k = 1, 2, 4 pixels (capped by the eligible count); every other pixel shows the blurred copy B.
A = torch.tensor([[[-1.0, 3.0], [2.0, 0.5]]])
KEPT_BY_HAND = {
    "kpm": [[1], [1, 2], [1, 2, 3]],  # positives 3 > 2 > 0.5; pixel 0 (negative) never kept
    "knm": [[0], [0], [0]],  # the only negative pixel
    "rpm": [[3], [3, 2], [3, 2, 1]],  # least positive first
    "rnm": [[0], [0], [0]],
    "kam": [[1], [1, 2], [0, 1, 2, 3]],  # |A| = 1, 3, 2, 0.5: largest first
    "ram": [[3], [3, 0], [0, 1, 2, 3]],  # smallest |A| first
}
FEW = {"fractions": 3, "min_fraction": 0.25}


def _blurred_logit_parts():
    blurred = gaussian_blur(X.double(), 51, 41.0)[0, 0].reshape(-1)
    w, x = W.reshape(-1).double(), X[0, 0].reshape(-1).double()
    return float((w * blurred).sum()), (w * (x - blurred)).numpy()  # F(B), per-pixel gain if kept


@pytest.mark.parametrize("name", ["kpm", "knm", "rpm", "rnm"])
def test_signed_orders_by_hand(name):
    base, gain = _blurred_logit_parts()
    out = score(name, make_inputs(linear_model(), X, A), **FEW)
    expected = [base + gain[kept].sum() for kept in KEPT_BY_HAND[name]]
    np.testing.assert_allclose(out.curves[0], expected, atol=1e-5)
    assert out.values[0] == pytest.approx(trapezoid(expected, [0.25, 0.5, 1.0]), abs=1e-5)


@pytest.mark.parametrize("name", ["kam", "ram"])
def test_absolute_orders_by_hand(name):
    base, gain = _blurred_logit_parts()  # B is nearly flat here: F(B) = 6.25, gains ≈ (−⅙, 1, −1.5, ⅔)
    threshold = 6.5  # class 1's constant logit: top-1 is class 0 iff its logit exceeds 6.5
    out = score(name, make_inputs(linear_model(other=threshold), X, A), **FEW)
    expected = [float(base + gain[kept].sum() > threshold) for kept in KEPT_BY_HAND[name]]
    assert expected == ([1.0, 0.0, 0.0] if name == "kam" else [1.0, 1.0, 0.0])
    np.testing.assert_allclose(out.curves[0], expected)
    assert out.values[0] == pytest.approx(trapezoid(expected, [0.25, 0.5, 1.0]))


def test_accuracy_against_target_or_label():
    model = linear_model(other=6.5)
    inputs = make_inputs(model, X, A, targets=torch.tensor([0]), labels=torch.tensor([1]))
    target = score("kam", inputs, **FEW)
    label = score("kam", inputs, accuracy_against="label", **FEW)
    np.testing.assert_allclose(label.curves[0], 1.0 - target.curves[0])


def test_the_exact_contributions_bound_every_other_map():
    """For a linear model the map w ⊙ (x − B) keeps, at every p, the subset with the largest
    (KPM) or smallest (KNM) possible logit, so no other map can beat it."""
    generator = torch.Generator().manual_seed(11)
    weight = torch.randn(6, 6, generator=generator)
    image = torch.rand(1, 1, 6, 6, generator=generator)
    model = linear_model(weight)
    exact = weight * (image[0, 0] - gaussian_blur(image, 51, 41.0)[0, 0])
    others = torch.cat([torch.randn(20, 6, 6, generator=generator), -exact[None], exact.flip(-1)[None]])
    images = image.expand(others.shape[0] + 1, -1, -1, -1)
    inputs = make_inputs(model, images, torch.cat([exact[None], others]))
    kpm = score("kpm", inputs)
    knm = score("knm", inputs)
    assert (kpm.values[1:] <= kpm.values[0] + 1e-6).all() and (kpm.values[1:] < kpm.values[0] - 1e-3).any()
    assert (knm.values[1:] >= knm.values[0] - 1e-6).all()
    curves = np.stack(kpm.curves)
    assert (curves[1:] <= curves[0] + 1e-6).all()  # pointwise, not only in area


def test_authors_sigma_convention_reproduces_their_kernel():
    assert blur_sigma_for(41.0, "standard") == 41.0
    assert blur_sigma_for(41.0, "authors_code") == pytest.approx(41.0 * math.sqrt(2))
    with pytest.raises(ValueError, match="sigma_convention"):
        blur_sigma_for(41.0, "box")
    # their GaussianSmoothing: exp(-((t - 25) / (2·41))²) on 51×51, normalised, reflect pad 25
    generator = torch.Generator().manual_seed(12)
    image = torch.rand(1, 1, 30, 30, generator=generator, dtype=torch.float64)
    t = torch.arange(51, dtype=torch.float64)
    taps = torch.exp(-(((t - 25) / (2 * 41.0)) ** 2))
    kernel = (taps[:, None] * taps[None, :]) / (taps[:, None] * taps[None, :]).sum()
    theirs = F.conv2d(F.pad(image, (25,) * 4, mode="reflect"), kernel[None, None])
    ours = gaussian_blur(image, 51, blur_sigma_for(41.0, "authors_code"))
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)
    assert not torch.allclose(gaussian_blur(image, 51, 41.0), theirs, atol=1e-4)
    # through the metric: an all-negative map keeps nothing, so KPM's curve is F(blurred) throughout
    model = linear_model(torch.randn(30, 30, generator=generator))
    maps = -torch.rand(1, 30, 30, generator=generator) - 0.1
    out = score("kpm", make_inputs(model, image.float(), maps), sigma_convention="authors_code", fractions=3)
    with torch.no_grad():
        expected = model(theirs.float())[0, 0].item()
    np.testing.assert_allclose(out.curves[0], [expected] * 3, rtol=1e-5)


def test_keep_remove_edge_cases():
    model, images, exact = _linear_6x6()
    for name in ("kpm", "kam", "ram"):
        out = score(name, make_inputs(model, images, torch.stack([exact[0], torch.zeros(6, 6)])))
        assert out.status == ["ok", "nan"] and out.reasons[1] == CONSTANT_MAP and out.curves[1] is None
    signs = torch.where(exact > 0, 1.0, -1.0)  # |A| constant: no absolute ranking, signed ones fine
    assert score("kam", make_inputs(model, images, signs)).reasons == [CONSTANT_MAP] * 2
    assert score("kpm", make_inputs(model, images, signs)).status == ["ok", "ok"]
    broken = exact.clone()
    broken[0, 0, 0] = float("inf")
    out = score("knm", make_inputs(model, images, broken))
    assert out.status == ["nan", "ok"] and out.reasons[0] == NONFINITE_MAP
    with pytest.raises(ValueError, match="accuracy_against"):
        score("kam", make_inputs(model, images, exact), accuracy_against="prediction")
    with pytest.raises(ValueError, match="fractions"):
        score("kpm", make_inputs(model, images, exact), fractions=1)


# ================================================================ DiffID


def _diffid_case(other=0.0):
    # normalised z = (x − 0.5)/0.25 = [0, 2, −1, 1]; logit_0 = Σ w z = 5; |A| ranks 1, 3, 2, 0
    model = linear_model(other=other, mean=0.5, std=0.25)
    return make_inputs(model, X, torch.tensor([[[1.0, 4.0], [2.0, 3.0]]]))


def test_diffid_by_hand():
    out = score("diffid", _diffid_case(), ratios=[0.25, 0.5, 0.75])
    # deletion, k = 1, 2, 3: fill z with the mean of the preserved z → logits 1, −6, 0
    # insertion (least salient removed): preserved means 2/3, 1.5, 2 → logits 17/3, 14, 20
    deletion = np.array([1.0, -6.0, 0.0]) / 5
    insertion = np.array([17 / 3, 14.0, 20.0]) / 5
    np.testing.assert_allclose(out.curves[0], insertion - deletion, atol=1e-6)
    assert out.values[0] == pytest.approx(trapezoid(insertion - deletion, [0.25, 0.5, 0.75]), abs=1e-6)
    assert out.values[0] == pytest.approx(0.25 * (14 / 15 + 4) / 2 + 0.25 * 4, abs=1e-6)
    reversed_ranking = make_inputs(_diffid_case().model, X, _diffid_case().maps.reciprocal())
    assert score("diffid", reversed_ranking, ratios=[0.25, 0.5, 0.75]).values[0] < 0 < out.values[0]


def test_diffid_accuracy_by_hand():
    out = score("diffid", _diffid_case(other=2.0), ratios=[0.25, 0.5, 0.75], score="accuracy")
    # deletion logits 1, −6, 0 all lose to class 1 (2.0); insertion 17/3, 14, 20 all win
    np.testing.assert_allclose(out.curves[0], [1.0, 1.0, 1.0])
    assert out.values[0] == pytest.approx(0.5)


def test_diffid_preserved_mean_in_normalised_space_with_colour():
    """Against a direct per-copy construction: the fill of a copy is, in every channel c,
    mean_c + std_c · (mean of the preserved normalised elements over all channels)."""
    generator = torch.Generator().manual_seed(13)
    images = 0.5 + 0.5 * torch.rand(2, 3, 5, 5, generator=generator)  # above the mean: z > 0
    weight = torch.rand(3, 5, 5, generator=generator)  # so the clean logit is positive
    means, stds = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    model = WrappedModel(LinearLogit(weight, 0.0), num_classes=2, mean=means.tolist(), std=stds.tolist()).eval()
    maps = torch.randn(2, 3, 5, 5, generator=generator)
    ratios = [0.2, 0.6]
    out = score("diffid", make_inputs(model, images, maps), ratios=ratios, max_batch=3)
    saliency = maps.abs().sum(dim=1).reshape(2, -1)  # Σ_c |A_c|, channels kept
    expected = []  # rows of insertion − deletion fractional logits
    for i in range(2):
        z = (images[i] - means[:, None, None]) / stds[:, None, None]
        clean = (weight * z).sum()
        row = []
        for r in ratios:
            k = math.floor(r * 25)
            results = []
            for most_first in (False, True):
                order = torch.argsort(saliency[i], descending=most_first, stable=True)
                removed = torch.zeros(25, dtype=torch.bool)
                removed[order[:k]] = True
                fill = z.reshape(3, -1)[:, ~removed].mean()
                perturbed = torch.where(removed.view(5, 5), fill, z)
                results.append(float((weight * perturbed).sum() / clean))
            row.append(results[0] - results[1])
        expected.append(row if clean > 0 else None)
    for i, row in enumerate(expected):
        if row is None:
            assert out.reasons[i] == NONPOSITIVE_LOGIT
        else:
            np.testing.assert_allclose(out.curves[i], row, atol=1e-5)
    assert any(row is not None for row in expected)


def test_diffid_edge_cases():
    inputs = _diffid_case()
    negative = make_inputs(linear_model(-W, mean=0.5, std=0.25), X, inputs.maps)  # logit −5
    out = score("diffid", negative, ratios=[0.25, 0.5])
    assert out.status == ["nan"] and out.reasons == [NONPOSITIVE_LOGIT]
    assert score("diffid", negative, ratios=[0.25, 0.5], score="accuracy").status == ["ok"]
    assert score("diffid", make_inputs(inputs.model, X, torch.ones(1, 2, 2))).reasons == [CONSTANT_MAP]
    assert score("diffid", make_inputs(inputs.model, X, torch.full((1, 2, 2), float("nan")))).reasons == [
        NONFINITE_MAP
    ]
    for bad in ([0.5], [0.5, 0.4], [0.0, 0.5], [0.5, 1.0]):
        with pytest.raises(ValueError, match="ratios"):
            score("diffid", inputs, ratios=bad)
    model, images, maps, targets = _cnn_batch()
    for fill in ("black", "blur", "mean"):
        assert len(score("diffid", make_inputs(model, images, maps, targets), fill=fill, score="accuracy").curves[0]) == 9


# ================================================================ Sensitivity-N


def test_sensitivity_n_by_hand_against_its_own_draws():
    model, images, exact = _linear_6x6()
    generator = torch.Generator().manual_seed(14)
    maps = exact + 0.5 * torch.randn(2, 6, 6, generator=generator)
    sizes = [1, 3, 12]
    out = score("sensitivity_n", make_inputs(model, images, maps), n=sizes, subsets=25, seed=3)
    draws = torch.Generator().manual_seed(3)
    contributions = exact.reshape(2, -1).double().numpy()  # black fill: the drop is Σ_S w x
    expected = np.zeros((2, len(sizes)))
    for j, size in enumerate(sizes):
        index_sets = draw_index_subsets(2, 25, 36, size, draws).numpy()
        for i in range(2):
            sums = maps[i].reshape(-1).double().numpy()[index_sets[i]].sum(-1)
            expected[i, j] = np.corrcoef(sums, contributions[i][index_sets[i]].sum(-1))[0, 1]
    np.testing.assert_allclose(np.stack(out.curves), expected, atol=1e-6)
    np.testing.assert_allclose(out.values, expected.mean(axis=1), atol=1e-6)
    exact_out = score("sensitivity_n", make_inputs(model, images, exact), n=sizes, subsets=25)
    np.testing.assert_allclose(np.stack(exact_out.curves), 1.0, atol=1e-6)


def test_sensitivity_n_on_grid_cells():
    model, images, exact = _linear_6x6()
    out = score("sensitivity_n", make_inputs(model, images, exact), n=[1, 4], grid=3, subsets=20)
    np.testing.assert_allclose(out.values, [1.0, 1.0], atol=1e-6)  # cells of the exact map still sum up
    with pytest.raises(ValueError, match=r"n=\[9\]"):
        score("sensitivity_n", make_inputs(model, images, exact), n=[1, 9], grid=3)
    with pytest.raises(ValueError, match="grid=7"):
        score("sensitivity_n", make_inputs(model, images, exact), n=[1], grid=7)


def test_sensitivity_n_edge_cases():
    model, images, exact = _linear_6x6()
    with pytest.raises(ValueError, match=r"n=\[64, 256\].*36 pixels"):  # defaults on 6×6
        score("sensitivity_n", make_inputs(model, images, exact))
    flat = score("sensitivity_n", make_inputs(model, images, torch.full((2, 6, 6), 2.0)), n=[2, 5])
    assert flat.status == ["nan", "nan"] and flat.reasons == [f"{CONSTANT_ATTRIBUTION} at n=2"] * 2
    blind = score("sensitivity_n", make_inputs(linear_model(torch.zeros(6, 6)), images, exact), n=[2])
    assert blind.reasons == [f"{CONSTANT_OUTPUT} at n=2"] * 2
    broken = exact.clone()
    broken[0, 1, 1] = float("nan")
    assert score("sensitivity_n", make_inputs(model, images, broken), n=[2]).reasons[0] == NONFINITE_MAP


# ================================================================ shared: batching, determinism


RANDOM_METRICS = {
    "mufidelity": {"grid": 4, "subsets": 12},
    "faithfulness_correlation": {"subset_size": 6, "subsets": 12},
    "sensitivity_n": {"n": [2, 8], "subsets": 10},
}
FIXED_METRICS = {name: {"fractions": 5} for name in ("kpm", "knm", "kam", "ram", "rpm", "rnm")} | {
    "diffid": {"ratios": [0.25, 0.5, 0.75]},
}


@pytest.mark.parametrize("name", [*RANDOM_METRICS, *FIXED_METRICS])
def test_batch_size_invariance_single_samples_and_determinism(name):
    params = RANDOM_METRICS.get(name) or FIXED_METRICS[name]
    model, images, maps, targets = _cnn_batch()
    inputs = make_inputs(model, images, maps, targets)
    small = score(name, inputs, max_batch=7, seed=2, **params)  # chunks straddle samples
    large = score(name, inputs, max_batch=1000, seed=2, **params)
    np.testing.assert_allclose(small.values, large.values, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(score(name, inputs, seed=2, **params).values, large.values)
    single = score(name, make_inputs(model, images[:1], maps[:1], targets[:1]), seed=2, **params)
    assert single.values.shape == (1,) and single.status[0] in ("ok", "nan")
    if name in RANDOM_METRICS:
        assert not np.array_equal(score(name, inputs, seed=3, **params).values, large.values)
        assert np.isfinite(large.values).all() and (np.abs(large.values) <= 1 + 1e-9).all()

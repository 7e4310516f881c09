"""Hand-computed toy cases for deletion, insertion, MuFidelity, completeness and their helpers.

Most cases use a linear "model" on a 2×2 single-channel image, logit_0 = Σ w_i x_i and
logit_1 = 0, so every point of every curve can be written down by hand:

    x = [0.5, 1.0, 0.25, 0.75], w = [1, 2, 3, 4]  →  w⊙x = [0.5, 2.0, 0.75, 3.0], Σ = 6.25
"""

from __future__ import annotations

import math

import jsonschema
import numpy as np
import pytest
import torch
from torch import nn

from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.metrics._removal import (
    fill_image,
    gaussian_blur,
    gaussian_kernel1d,
    pixel_positions,
    rank_pixels,
    step_counts,
    trapezoid_auc,
)
from attrflow.metrics.mufidelity import (
    CONSTANT_ATTRIBUTION,
    CONSTANT_OUTPUT,
    draw_bernoulli_subsets,
    draw_subsets,
    grid_cells,
    subset_fidelity,
)
from attrflow.models import WrappedModel

torch.set_num_threads(2)

X = torch.tensor([[[[0.5, 1.0], [0.25, 0.75]]]])
W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
CONTRIBUTIONS = (W * X[0, 0]).view(1, 2, 2)  # [[0.5, 2.0], [0.75, 3.0]]


class LinearLogit(nn.Module):
    """logit_0 = Σ w ⊙ z over all channels and pixels, logit_1 = 0."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = (z * self.weight).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def linear_model(weight: torch.Tensor, channels: int = 1) -> WrappedModel:
    return WrappedModel(
        LinearLogit(weight), num_classes=2, mean=[0.0] * channels, std=[1.0] * channels
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


def make_inputs(model, images, maps, targets=None, **extra) -> MetricInputs:
    n = images.shape[0]
    targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return MetricInputs(
        model=model,
        images=images,
        maps=maps,
        targets=targets,
        labels=targets,
        ids=[f"s{i}" for i in range(n)],
        **extra,
    )


def score(name: str, inputs: MetricInputs, seed: int = 0, max_batch: int = 256, **params):
    generator = torch.Generator().manual_seed(seed)
    return call_metric(get_metric(name), inputs, params, generator=generator, max_batch=max_batch)


def trapezoid(curve, fractions) -> float:
    curve, fractions = np.asarray(curve, float), np.asarray(fractions, float)
    return float(((curve[1:] + curve[:-1]) / 2 * np.diff(fractions)).sum())


def sigmoid(v) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(v, dtype=float)))


# ---------------------------------------------------------------- ordering and step helpers


def test_ranking_is_highest_first_with_ties_in_pixel_order():
    scores = torch.tensor([[[1.0, 1.0], [0.0, 1.0]], [[-2.0, 5.0], [5.0, -2.0]]])
    assert rank_pixels(scores).tolist() == [[0, 1, 3, 2], [1, 2, 0, 3]]
    assert rank_pixels(scores, descending=False).tolist() == [[2, 0, 1, 3], [0, 3, 1, 2]]
    # positions are the inverse permutation: pixel 2 of sample 0 goes last
    assert pixel_positions(scores).tolist() == [[0, 1, 3, 2], [2, 0, 1, 3]]


def test_ranking_ties_are_stable_at_scale():
    scores = torch.zeros(1, 300, 300)
    scores[0, ::3] = 1.0
    order = rank_pixels(scores)[0]
    top = order[: 100 * 300]
    assert torch.equal(top, torch.sort(top).values)  # tied pixels keep row-major order
    assert torch.equal(order[100 * 300 :], torch.sort(order[100 * 300 :]).values)


def test_step_counts():
    assert step_counts(4, 4, None).tolist() == [0, 1, 2, 3, 4]
    assert step_counts(4, 3, None).tolist() == [0, 1, 3, 4]  # round(4/3), round(8/3)
    assert step_counts(4, 2, None).tolist() == [0, 2, 4]
    assert step_counts(4, 3, 3).tolist() == [0, 3, 4]  # pixels_per_step wins; last step partial
    assert step_counts(224 * 224, 20, 10).shape[0] == math.ceil(224 * 224 / 10) + 1
    # steps >= 1 is declared by the metrics' signatures and checked with the config's message
    from attrflow.metrics import get_metric
    from attrflow.params import check_params

    with pytest.raises(ValueError, match=r"'deletion\.steps'"):
        check_params(get_metric("deletion").params, {"steps": 0}, "deletion")


def test_trapezoid_auc():
    curves = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    fractions = torch.tensor([0.0, 0.75, 1.0])
    assert trapezoid_auc(curves, fractions).tolist() == [0.375, 0.625]


# ---------------------------------------------------------------- fills


def blur_reference(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Direct 2-D correlation with the outer-product kernel, reflect-101 borders, by index."""
    c, h, w = image.shape
    k = kernel.shape[0]
    half = k // 2

    def reflect(i, n):
        i = np.abs(i)
        return np.where(i > n - 1, 2 * (n - 1) - i, i)

    out = np.zeros_like(image, dtype=np.float64)
    for dy in range(-half, half + 1):
        rows = reflect(np.arange(h) + dy, h)
        for dx in range(-half, half + 1):
            cols = reflect(np.arange(w) + dx, w)
            out += kernel[dy + half] * kernel[dx + half] * image[:, rows][:, :, cols]
    return out


def test_blur_matches_direct_2d_convolution():
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 9, 11, generator=generator, dtype=torch.float64)
    kernel = gaussian_kernel1d(7, 1.7).numpy()
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel[3] / kernel[4] == pytest.approx(math.exp(1 / (2 * 1.7**2)))
    ours = gaussian_blur(images, 7, 1.7).numpy()
    for i in range(2):
        np.testing.assert_allclose(ours[i], blur_reference(images[i].numpy(), kernel), atol=1e-12)


def test_blur_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 1, 40, 33, generator=generator, dtype=torch.float64)
    ours = gaussian_blur(image, 29, 15.0)[0, 0].numpy()
    theirs = cv2.GaussianBlur(image[0, 0].numpy(), (29, 29), 15.0, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_blur_kernel_is_truncated_on_small_images():
    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 1, 4, 4, generator=generator, dtype=torch.float64)
    # 51 taps cannot reflect-pad a 4-pixel side: the central 2·4 − 1 = 7 taps are kept, renormalised
    central = gaussian_kernel1d(51, 41.0)[22:29]
    central = (central / central.sum()).numpy()
    np.testing.assert_allclose(
        gaussian_blur(image, 51, 41.0)[0].numpy(), blur_reference(image[0].numpy(), central), atol=1e-12
    )
    constant = torch.full((1, 2, 3, 5), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 51, 41.0), constant)


def test_fill_canvases():
    images = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]], [[0.2, 0.2], [0.2, 0.6]]]])
    assert torch.equal(fill_image(images, "black"), torch.zeros_like(images))
    mean = fill_image(images, "mean")
    torch.testing.assert_close(mean[0, 0], torch.full((2, 2), 0.75))
    torch.testing.assert_close(mean[0, 1], torch.full((2, 2), 0.3))
    torch.testing.assert_close(
        fill_image(images, "blur", blur_kernel=3, blur_sigma=1.0), gaussian_blur(images, 3, 1.0)
    )
    with pytest.raises(ValueError, match="unknown fill 'white'"):
        fill_image(images, "white")
    with pytest.raises(ValueError, match="odd"):
        fill_image(images, "blur", blur_kernel=4)


# ---------------------------------------------------------------- deletion / insertion


def test_deletion_curve_and_area_by_hand():
    inputs = make_inputs(linear_model(W), X, CONTRIBUTIONS)
    out = score("deletion", inputs, steps=4, output="logit")
    # removal order by w⊙x: pixel 3 (3.0), 1 (2.0), 2 (0.75), 0 (0.5)
    np.testing.assert_allclose(out.curves[0], [6.25, 3.25, 1.25, 0.5, 0.0], atol=1e-6)
    assert out.values[0] == pytest.approx(0.25 * (4.75 + 2.25 + 0.875 + 0.25), abs=1e-6)  # 2.03125
    assert out.status == ["ok"]

    prob = score("deletion", inputs, steps=4)  # default output: softmax probability of class 0
    expected = sigmoid([6.25, 3.25, 1.25, 0.5, 0.0])
    np.testing.assert_allclose(prob.curves[0], expected, atol=1e-6)
    assert prob.values[0] == pytest.approx(trapezoid(expected, [0, 0.25, 0.5, 0.75, 1]), abs=1e-6)


def test_insertion_curve_and_area_by_hand():
    inputs = make_inputs(linear_model(W), X, CONTRIBUTIONS)
    out = score("insertion", inputs, steps=4, output="logit", fill="black")
    np.testing.assert_allclose(out.curves[0], [0.0, 3.0, 5.0, 5.75, 6.25], atol=1e-6)
    assert out.values[0] == pytest.approx(0.25 * (1.5 + 4.0 + 5.375 + 6.0), abs=1e-6)  # 4.21875


def test_insertion_defaults_to_the_blurred_canvas():
    model = small_cnn()
    generator = torch.Generator().manual_seed(6)
    images = torch.rand(2, 3, 8, 8, generator=generator)
    maps = torch.randn(2, 8, 8, generator=generator)
    out = score("insertion", make_inputs(model, images, maps))
    assert len(out.curves[0]) == 21
    with torch.no_grad():
        start = model(gaussian_blur(images, 29, 15.0)).softmax(1)[:, 0]
        end = model(images).softmax(1)[:, 0]
    np.testing.assert_allclose([c[0] for c in out.curves], start.numpy(), atol=1e-6)
    np.testing.assert_allclose([c[-1] for c in out.curves], end.numpy(), atol=1e-6)
    deleted = score("deletion", make_inputs(model, images, maps))
    np.testing.assert_allclose([c[0] for c in deleted.curves], end.numpy(), atol=1e-6)
    with torch.no_grad():
        black = model(torch.zeros_like(images)).softmax(1)[:, 0]
    np.testing.assert_allclose([c[-1] for c in deleted.curves], black.numpy(), atol=1e-6)


def test_coarser_steps_and_pixels_per_step():
    inputs = make_inputs(linear_model(W), X, CONTRIBUTIONS)
    two = score("deletion", inputs, steps=2, output="logit")
    np.testing.assert_allclose(two.curves[0], [6.25, 1.25, 0.0], atol=1e-6)
    per3 = score("deletion", inputs, pixels_per_step=3, output="logit")
    np.testing.assert_allclose(per3.curves[0], [6.25, 0.5, 0.0], atol=1e-6)
    assert per3.values[0] == pytest.approx(0.75 * 6.75 / 2 + 0.25 * 0.5 / 2, abs=1e-6)


def test_mean_fill_by_hand():
    inputs = make_inputs(linear_model(W), X, CONTRIBUTIONS)
    out = score("deletion", inputs, steps=4, output="logit", fill="mean")
    # each removed pixel becomes the mean 0.625: Δ = w_i (0.625 − x_i)
    np.testing.assert_allclose(out.curves[0], [6.25, 5.75, 5.0, 6.125, 6.25], atol=1e-6)


def test_absolute_order_and_ties():
    inputs = make_inputs(linear_model(W), X, torch.tensor([[[-5.0, 1.0], [2.0, 0.0]]]))
    signed = score("deletion", inputs, steps=4, output="logit")
    np.testing.assert_allclose(signed.curves[0], [6.25, 5.5, 3.5, 0.5, 0.0], atol=1e-6)  # 2, 1, 3, 0
    absolute = score("deletion", inputs, steps=4, output="logit", order="absolute")
    np.testing.assert_allclose(absolute.curves[0], [6.25, 5.75, 5.0, 3.0, 0.0], atol=1e-6)  # 0, 2, 1, 3
    tied = score("deletion", make_inputs(linear_model(W), X, torch.ones(1, 2, 2)), steps=4, output="logit")
    np.testing.assert_allclose(tied.curves[0], [6.25, 5.75, 3.75, 3.0, 0.0], atol=1e-6)  # row-major


def test_a_pixel_is_removed_with_all_its_channels():
    weight = torch.stack([W, 10 * W])  # (2, 2, 2): channel 1 weighs ten times channel 0
    images = torch.stack([X[0, 0], X[0, 0]]).unsqueeze(0)
    maps = torch.stack([CONTRIBUTIONS[0], torch.zeros(2, 2)]).unsqueeze(0)  # (1, C, H, W) maps
    out = score(
        "deletion", make_inputs(linear_model(weight, channels=2), images, maps), steps=4, output="logit"
    )
    np.testing.assert_allclose(out.curves[0], 11 * np.array([6.25, 3.25, 1.25, 0.5, 0.0]), atol=1e-5)


def test_deletion_counts_forward_passes_and_ignores_batch_size():
    model = small_cnn()
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(3, 3, 8, 8, generator=generator)
    maps = torch.randn(3, 3, 8, 8, generator=generator)
    inputs = make_inputs(model, images, maps, targets=torch.tensor([0, 1, 2]))
    model.reset_counters()
    one = score("deletion", inputs, max_batch=1, steps=10, fill="blur")
    assert model.forward_samples == 3 * 11
    many = score("deletion", inputs, max_batch=1000, steps=10, fill="blur")
    np.testing.assert_allclose(one.values, many.values, rtol=0, atol=1e-7)
    for name, params in (("insertion", {"steps": 6}), ("mufidelity", {"grid": 4, "subsets": 12})):
        small = score(name, inputs, max_batch=1, **params)
        large = score(name, inputs, max_batch=1000, **params)
        np.testing.assert_allclose(small.values, large.values, rtol=0, atol=1e-6)


def test_nonfinite_maps_give_nan_with_reason():
    maps = torch.stack([CONTRIBUTIONS[0], torch.tensor([[0.0, float("nan")], [1.0, 2.0]])])
    inputs = make_inputs(linear_model(W), X.repeat(2, 1, 1, 1), maps)
    for name in ("deletion", "insertion", "mufidelity"):
        params = {"grid": 2} if name == "mufidelity" else {}
        out = score(name, inputs, **params)
        assert out.status == ["ok", "nan"], name
        assert np.isnan(out.values[1]) and "non-finite" in out.reasons[1]
    assert score("deletion", inputs).curves[1] is None


def test_mismatched_maps_name_the_method():
    inputs = make_inputs(linear_model(W), X, torch.ones(1, 3, 3), method="ig_black")
    with pytest.raises(ValueError, match="ig_black"):
        score("deletion", inputs)


# ---------------------------------------------------------------- MuFidelity


def test_grid_cells_and_subset_draws():
    assert grid_cells(5, 4, 2).tolist() == [[0, 0, 1, 1]] * 3 + [[2, 2, 3, 3]] * 2
    assert torch.equal(grid_cells(3, 3, 3).flatten(), torch.arange(9))
    with pytest.raises(ValueError, match="grid=9"):
        grid_cells(8, 8, 9)
    subsets = draw_subsets(2, 50, 16, 3, torch.Generator().manual_seed(0))
    assert subsets.shape == (2, 50, 16) and (subsets.sum(-1) == 3).all()
    again = draw_subsets(2, 50, 16, 3, torch.Generator().manual_seed(0))
    assert torch.equal(subsets, again)
    assert not torch.equal(subsets, draw_subsets(2, 50, 16, 3, torch.Generator().manual_seed(1)))
    assert torch.equal(draw_subsets(2, 5, 16, 3, None), draw_subsets(2, 5, 16, 3, None))


def _linear_6x6():
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(6, 6, generator=generator)
    images = torch.rand(2, 1, 6, 6, generator=generator)
    return linear_model(weight), images, (weight * images[:, 0])


@pytest.mark.parametrize("grid", [6, 3])
def test_mufidelity_is_one_for_the_exact_linear_attribution(grid):
    model, images, exact = _linear_6x6()
    inputs = make_inputs(model, images, exact)
    out = score("mufidelity", inputs, grid=grid, output="logit", absolute=False, subsets=32)
    np.testing.assert_allclose(out.values, [1.0, 1.0], atol=1e-6)
    negated = score(
        "mufidelity",
        make_inputs(model, images, -exact),
        grid=grid,
        output="logit",
        absolute=False,
        subsets=32,
    )
    np.testing.assert_allclose(negated.values, [-1.0, -1.0], atol=1e-6)
    absolute = score("mufidelity", make_inputs(model, images, -exact), grid=grid, output="logit", subsets=32)
    np.testing.assert_allclose(absolute.values, [1.0, 1.0], atol=1e-6)


def test_mufidelity_pearson_by_hand_on_explicit_subsets():
    # cells = pixels; subset j removes pixel j; drop_j = w_j x_j (linear logit, black fill)
    maps = torch.tensor([[[1.0, 0.0], [2.0, 5.0]]])
    subsets = torch.eye(4, dtype=torch.bool).unsqueeze(0)
    out = subset_fidelity(
        make_inputs(linear_model(W), X, maps),
        subsets,
        grid_cells(2, 2, 2),
        metric="mufidelity",
        output="logit",
        absolute=False,
    )
    expected = np.corrcoef([1.0, 0.0, 2.0, 5.0], [0.5, 2.0, 0.75, 3.0])[0, 1]
    assert out.values[0] == pytest.approx(expected, abs=1e-9)


def test_mufidelity_absolute_is_the_magnitude_and_is_deterministic():
    model = small_cnn()
    generator = torch.Generator().manual_seed(9)
    images = torch.rand(3, 3, 8, 8, generator=generator)
    inputs = make_inputs(model, images, torch.randn(3, 8, 8, generator=generator))
    signed = score("mufidelity", inputs, grid=4, absolute=False, seed=3)
    absolute = score("mufidelity", inputs, grid=4, seed=3)
    np.testing.assert_allclose(absolute.values, np.abs(signed.values), atol=1e-12)
    assert (np.abs(signed.values) < 1).all()
    np.testing.assert_array_equal(score("mufidelity", inputs, grid=4, seed=3).values, absolute.values)
    assert not np.array_equal(score("mufidelity", inputs, grid=4, seed=4).values, absolute.values)


def test_mufidelity_nan_when_a_side_is_constant():
    _, images, exact = _linear_6x6()
    blind = linear_model(torch.zeros(6, 6))  # output never changes
    out = score("mufidelity", make_inputs(blind, images, exact), grid=3)
    assert out.status == ["nan", "nan"] and out.reasons == [CONSTANT_OUTPUT] * 2
    model, images, _ = _linear_6x6()
    flat = score("mufidelity", make_inputs(model, images, torch.zeros(2, 6, 6)), grid=3)
    assert flat.status == ["nan", "nan"] and flat.reasons == [CONSTANT_ATTRIBUTION] * 2


def test_mufidelity_rejects_bad_parameters():
    model, images, exact = _linear_6x6()
    inputs = make_inputs(model, images, exact)
    with pytest.raises(ValueError, match="grid"):
        score("mufidelity", inputs, grid=1)
    with pytest.raises(ValueError, match="subset_fraction"):
        score("mufidelity", inputs, subset_fraction=1.0)


# ---------------------------------------------------------------- completeness


def _completeness_inputs(maps, baselines=None, claims=True):
    diagnostics = {} if baselines is None else {"baselines": baselines}
    return make_inputs(
        linear_model(W),
        X,
        maps,
        diagnostics=diagnostics,
        method="ig_black",
        method_fn="integrated_gradients",
        method_claims_completeness=claims,
    )


def test_completeness_residual_by_hand():
    baseline = torch.full_like(X, 0.25)
    exact = W * (X - baseline)  # IG on a linear model: Σ = F(x) − F(x') = 6.25 − 2.5 = 3.75
    off = exact.clone()
    off[0, 0, 1, 1] += 0.3
    assert score("completeness", _completeness_inputs(exact, baseline)).values[0] == pytest.approx(
        0.0, abs=1e-6
    )
    out = score("completeness", _completeness_inputs(off, baseline))
    assert out.values[0] == pytest.approx(0.3, abs=1e-6) and out.status == ["ok"]
    rel = score("completeness", _completeness_inputs(off, baseline), relative=True)
    assert rel.values[0] == pytest.approx(0.3 / 3.75, abs=1e-6)
    prob = score("completeness", _completeness_inputs(off, baseline), output="prob")
    gap = sigmoid(6.25) - sigmoid(2.5)
    assert prob.values[0] == pytest.approx(abs(3.75 + 0.3 - gap), abs=1e-6)


def test_completeness_relative_with_no_gap_is_nan():
    out = score("completeness", _completeness_inputs(torch.zeros(1, 2, 2), X.clone()), relative=True)
    assert out.status == ["nan"] and "zero" in out.reasons[0]


def test_completeness_skips_methods_that_do_not_claim_it():
    out = score("completeness", _completeness_inputs(CONTRIBUTIONS, claims=False))
    assert out.status == ["skipped"] and "ig_black" in out.reasons[0]
    assert np.isnan(out.values[0])


def test_completeness_without_baselines_names_the_method():
    with pytest.raises(ValueError, match="ig_black.*baselines"):
        score("completeness", _completeness_inputs(CONTRIBUTIONS))


def test_registrations():
    expected = {
        "deletion": ("map", "lower"),
        "insertion": ("map", "higher"),
        "mufidelity": ("map", "higher"),
        "completeness": ("diagnostic", "lower"),
    }
    for name, (kind, direction) in expected.items():
        info = get_metric(name)
        assert (info.kind, info.direction) == (kind, direction)
        for key, fragment in info.params.items():  # valid JSON schema, accepting its own default
            jsonschema.Draft202012Validator.check_schema(fragment)
            jsonschema.validate(fragment["default"], fragment)
    assert get_metric("deletion").params["fill"]["default"] == "black"
    assert get_metric("insertion").params["fill"]["default"] == "blur"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(28, get_metric("insertion").params["blur_kernel"])  # even kernel


def test_mufidelity_fixed_draw_is_one_for_the_exact_linear_attribution():
    model, images, exact = _linear_6x6()
    out = score("mufidelity", make_inputs(model, images, exact), grid=3, output="logit", absolute=False, subsets=32, subset_draw="fixed")
    np.testing.assert_allclose(out.values, [1.0, 1.0], atol=1e-6)


def test_mufidelity_fixed_draw_removes_exactly_k_cells():
    # round(0.2 · 81) = 16 cells in every subset; Xplique's Bernoulli draw varies the size
    fixed = draw_subsets(2, 50, 81, round(0.2 * 81), torch.Generator().manual_seed(0))
    assert set(fixed.sum(dim=-1).flatten().tolist()) == {16}
    bernoulli = draw_bernoulli_subsets(2, 50, 81, 0.2, torch.Generator().manual_seed(0))
    assert len(set(bernoulli.sum(dim=-1).flatten().tolist())) > 5


def test_mufidelity_random_map_correlates_through_the_subset_size_only_under_bernoulli():
    """A non-negative map unrelated to the model: with |corr|, Xplique's variable subset size makes
    it look faithful (both sides grow with the number of cells removed); |S| = k does not."""
    generator = torch.Generator().manual_seed(11)
    model = linear_model(torch.ones(9, 9))  # every pixel matters equally
    images = torch.rand(8, 1, 9, 9, generator=generator) + 0.5
    noise = torch.rand(8, 9, 9, generator=generator)  # a random, non-negative map
    inputs = make_inputs(model, images, noise)
    common = dict(grid=9, subsets=200, output="logit")
    variable = score("mufidelity", inputs, **common).values
    fixed = score("mufidelity", inputs, subset_draw="fixed", **common).values
    assert variable.mean() > 0.6 and fixed.mean() < 0.35
    assert (variable > fixed).all()


def test_mufidelity_fixed_draw_rejects_an_empty_subset():
    model, images, exact = _linear_6x6()
    with pytest.raises(ValueError, match="subset_draw='fixed'"):
        score("mufidelity", make_inputs(model, images, exact), grid=2, subset_fraction=0.1, subset_draw="fixed")

"""Reference sets (train pool, LPI clusters), Expected Gradients, LPI and AGI.

Hand-computed cases on linear models (where every estimator is exact for any α), convergence to
IG from the reference distribution as the number of draws grows, batching invariance,
determinism, and errors that name the culprit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.data.sample_store import SampleSet
from attrflow.methods import METHODS, call_method, get_method
from attrflow.methods.agi import agi
from attrflow.methods.expected_gradients import expected_gradients
from attrflow.methods.lpi import lpi
from attrflow.methods.references import _lloyd, build_references, kmeans
from attrflow.models import WrappedModel
from tiny_models import CLASSES, images, regular_cnn, targets

torch.set_num_threads(2)
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Helpers and toy models.


class Linear(nn.Module):
    """logits = W · flatten(z); closed-form gradients everywhere."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", weights)  # (classes, C·H·W)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.w.T


def linear_model(weights: torch.Tensor) -> WrappedModel:
    channels = 1
    return WrappedModel(
        Linear(weights.to(F64)), num_classes=weights.shape[0], mean=[0.0] * channels, std=[1.0] * channels
    ).to(F64)


class MeanColour(nn.Module):
    """logits = 10 × per-channel mean: images of one colour group share their logits."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 10.0 * z.mean(dim=(2, 3))


def colour_model() -> WrappedModel:
    return WrappedModel(MeanColour(), num_classes=3, name="colour").to(F64)


def colour_groups(sizes: tuple[int, ...], seed: int = 0) -> tuple[SampleSet, np.ndarray]:
    """Images in well-separated colour groups: group g is bright in channel g, plus noise."""
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(len(sizes)), sizes)
    base = np.full((len(group), 3, 4, 4), 0.1)
    base[np.arange(len(group)), group] = 0.8
    pixels = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
    order = rng.permutation(len(group))  # groups interleaved in the train split
    ids = [f"train-{i}" for i in range(len(group))]
    return SampleSet(pixels[order], group[order], ids), group[order]


def gradient_at(model: nn.Module, points: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    points = points.detach().requires_grad_(True)
    (grads,) = torch.autograd.grad(model(points).gather(1, target.unsqueeze(1)).sum(), points)
    return grads


def ig_from(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor, steps: int = 32):
    """IG from an explicit baseline (n, C, H, W) by Gauss–Legendre quadrature, computed plainly."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x)
    for node, weight in zip(0.5 * (nodes + 1), 0.5 * weights):
        total += weight * gradient_at(model, baseline + node * (x - baseline), target)
    return (x - baseline) * total


def uniform(k: int) -> torch.Tensor:
    return torch.full((k,), 1.0 / k, dtype=F64)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def cnn_setup():
    return regular_cnn(dtype=F64), images(dtype=F64), targets()


# ---------------------------------------------------------------------------------------------
# k-means and build_references.


def test_kmeans_recovers_well_separated_clusters():
    rng = np.random.default_rng(3)
    centres = np.array([[0, 0, 0, 0], [10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 10]], dtype=float)
    truth = rng.integers(0, 4, 400)
    points = torch.as_tensor(centres[truth] + rng.normal(0, 0.5, (400, 4)))
    fit = kmeans(points, 4, generator=seeded(1))
    labels = fit.labels.numpy()
    # a bijection between true groups and found labels
    assert all(len(set(labels[truth == g])) == 1 for g in range(4))
    assert len(set(labels)) == 4
    found = fit.centres.numpy()[[labels[truth == g][0] for g in range(4)]]
    assert np.abs(found - centres).max() < 0.2
    again = kmeans(points, 4, generator=seeded(1))
    assert torch.equal(again.labels, fit.labels) and torch.equal(again.centres, fit.centres)


def test_kmeans_reseeds_an_emptied_cluster():
    """Centres far from every point lose all members; they are re-seeded on far-off points."""
    points = torch.tensor([[0.0], [0.1], [0.2], [10.0]], dtype=F64)
    fit = _lloyd(points, torch.tensor([[0.0], [100.0], [200.0]], dtype=F64), iterations=50)
    assert (torch.bincount(fit.labels, minlength=3) > 0).all()
    assert fit.labels[3] != fit.labels[0]


def test_train_pool_is_a_seeded_uniform_subset():
    train, _ = colour_groups((30, 30, 30))
    model = colour_model()
    pool, weights, attrs = build_references("train_pool", model, train, seed=5, pool_size=16)
    assert pool.shape == (16, 3, 4, 4) and pool.dtype == np.float32
    assert np.allclose(weights, 1 / 16) and math.isclose(weights.sum(), 1.0)
    assert np.array_equal(pool, train.images[attrs["train_indices"]])
    assert attrs["train_ids"] == [train.ids[i] for i in attrs["train_indices"]]
    assert len(set(attrs["train_indices"])) == 16
    same = build_references("train_pool", model, train, seed=5, pool_size=16)
    other = build_references("train_pool", model, train, seed=6, pool_size=16)
    assert same[2]["train_indices"] == attrs["train_indices"] != other[2]["train_indices"]
    everything = build_references("train_pool", model, train, seed=5, pool_size=1000)
    assert everything[0].shape[0] == 90


def test_lpi_references_follow_the_clusters_of_the_logits():
    train, group = colour_groups((40, 25, 35))
    images_, weights, attrs = build_references(
        "lpi", colour_model(), train, seed=0, clusters=3, sub_clusters=4, max_batch=7
    )
    assert images_.shape == (12, 3, 4, 4) and weights.shape == (12,)
    assert math.isclose(weights.sum(), 1.0, rel_tol=1e-12) and (weights > 0).all()
    chosen = np.asarray(attrs["train_indices"])
    assert np.array_equal(images_, train.images[chosen])
    # every block of 4 rows is one colour group, and each group is one block
    block_groups = group[chosen].reshape(3, 4)
    assert all(len(set(row)) == 1 for row in block_groups)
    assert sorted(block_groups[:, 0]) == [0, 1, 2]
    # a block's weights sum to its cluster's share of the train split
    sizes = np.bincount(group)
    for block, g in enumerate(block_groups[:, 0]):
        assert math.isclose(weights[4 * block : 4 * block + 4].sum(), sizes[g] / 100, rel_tol=1e-12)
    assert attrs["reference_cluster"] == [0] * 4 + [1] * 4 + [2] * 4
    assert sorted(attrs["cluster_sizes"]) == [25, 35, 40]
    assert attrs["centre_estimate_agreement"] == 1.0 and attrs["padded_rows"] == 0
    again = build_references("lpi", colour_model(), train, seed=0, clusters=3, sub_clusters=4)
    assert again[2]["train_indices"] == attrs["train_indices"]


def test_lpi_reference_is_the_train_image_nearest_its_sub_centre():
    """With one cluster and as many sub-clusters as images, every image is its own reference."""
    train, _ = colour_groups((3, 2, 1))
    images_, weights, attrs = build_references("lpi", colour_model(), train, seed=0, clusters=1, sub_clusters=6)
    assert sorted(attrs["train_indices"]) == list(range(6))
    assert np.allclose(weights, 1 / 6)


def test_lpi_references_pad_a_cluster_smaller_than_sub_clusters_with_zero_weight():
    train, group = colour_groups((20, 20, 2))
    images_, weights, attrs = build_references("lpi", colour_model(), train, seed=0, clusters=3, sub_clusters=4)
    assert attrs["padded_rows"] == 2
    blocks = group[np.asarray(attrs["train_indices"])].reshape(3, 4)
    small = int(np.flatnonzero(blocks[:, 0] == 2)[0])
    assert np.allclose(np.sort(weights[4 * small : 4 * small + 4]), [0, 0, 1 / 42, 1 / 42])
    assert math.isclose(weights.sum(), 1.0)


def test_lpi_references_refuse_fewer_distinct_logits_than_clusters():
    train = SampleSet(np.full((6, 3, 4, 4), 0.5), np.zeros(6), [str(i) for i in range(6)])
    with pytest.raises(ValueError, match="cluster 1 .* is empty"):
        build_references("lpi", colour_model(), train, seed=0, clusters=2, sub_clusters=2)


@pytest.mark.parametrize(
    "kind,params,culprit",
    [
        ("nearest", {}, "unknown reference kind 'nearest'"),
        ("train_pool", {"pool_size": 0}, "pool_size"),
        ("lpi", {"clusters": 200}, "clusters"),
        ("lpi", {"sub_clusters": 0}, "sub_clusters"),
        ("lpi", {"max_train": -1}, "max_train"),
        ("lpi", {"centres": 3}, r"unknown parameter\(s\) \['centres'\]"),
    ],
)
def test_build_references_errors_name_the_parameter(kind, params, culprit):
    train, _ = colour_groups((5, 5, 5))
    with pytest.raises(ValueError, match=culprit):
        build_references(kind, colour_model(), train, seed=0, **params)


# ---------------------------------------------------------------------------------------------
# Expected Gradients.


def test_registrations_ask_for_their_reference_sets():
    assert get_method("expected_gradients").references == "train_pool"
    assert get_method("lpi").references == "lpi"
    assert get_method("agi").references is None
    for name in ("expected_gradients", "lpi", "agi"):
        assert not METHODS.get(name).completeness  # complete in expectation only


def test_eg_on_a_linear_model_is_x_minus_mean_reference_times_w_for_any_alpha():
    torch.manual_seed(0)
    w = torch.randn(3, 8, dtype=F64)
    model = linear_model(w)
    x = torch.rand(5, 1, 2, 4, dtype=F64)
    pool = torch.rand(6, 1, 2, 4, dtype=F64)
    target = torch.tensor([0, 1, 2, 1, 0])
    result = expected_gradients(model, x, target, k=7, generator=seeded(), references=pool, reference_weights=uniform(6))
    drawn = result.diagnostics["reference_indices"]
    mean_reference = pool[drawn].mean(dim=1)
    expected = (x - mean_reference) * w[target].view(5, 1, 2, 4)
    assert torch.allclose(result.maps, expected, atol=1e-12)
    assert torch.allclose(result.diagnostics["baselines"], mean_reference, atol=1e-12)
    assert torch.allclose(result.diagnostics["completeness_residual"], torch.zeros(5, dtype=F64), atol=1e-12)
    alphas = result.diagnostics["path_alphas"]
    assert alphas.shape == (5, 7) and (alphas.diff(dim=1) >= 0).all() and (alphas > 0).all() and (alphas < 1).all()


def test_eg_honours_reference_weights():
    model = linear_model(torch.ones(1, 4, dtype=F64))
    pool = torch.rand(3, 1, 2, 2, dtype=F64)
    weights = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    result = expected_gradients(
        model, torch.rand(2, 1, 2, 2, dtype=F64), torch.tensor([0, 0]), k=20, generator=seeded(),
        references=pool, reference_weights=weights,
    )
    assert (result.diagnostics["reference_indices"] == 1).all()


@pytest.mark.parametrize("pool_weights", [[1.0], [0.5, 0.3, 0.2]], ids=["one-image", "weighted-pool"])
def test_eg_approaches_ig_from_the_reference_distribution_as_k_grows(cnn_setup, pool_weights):
    model, x, target = cnn_setup
    pool = images(len(pool_weights), seed=9, dtype=F64)
    weights = torch.tensor(pool_weights, dtype=F64)
    limit = sum(w * ig_from(model, x, target, pool[j].expand_as(x)) for j, w in enumerate(weights))
    errors = []
    for k in (4, 32, 256):
        maps = expected_gradients(
            model, x, target, k=k, generator=seeded(k), references=pool, reference_weights=weights
        ).maps
        errors.append(float((maps - limit).abs().mean() / limit.abs().mean()))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.12, errors


def test_eg_completeness_residual_shrinks_with_k(cnn_setup):
    model, x, target = cnn_setup
    pool = images(8, seed=9, dtype=F64)
    residuals = []
    for k in (2, 512):
        d = expected_gradients(
            model, x, target, k=k, generator=seeded(1), references=pool, reference_weights=uniform(8)
        ).diagnostics
        residuals.append(float((d["completeness_residual"] / d["output_delta"].abs().clamp(min=1e-3)).mean()))
    assert residuals[1] < residuals[0] / 3, residuals


def test_eg_without_endpoint_outputs_gives_the_same_maps_and_skips_the_residual(cnn_setup):
    model, x, target = cnn_setup
    pool = images(5, seed=9, dtype=F64)
    kwargs = dict(k=3, references=pool, reference_weights=uniform(5))
    full = expected_gradients(model, x, target, generator=seeded(3), **kwargs)
    model.reset_counters()
    lean = expected_gradients(model, x, target, generator=seeded(3), endpoint_outputs=False, **kwargs)
    assert model.forward_samples == 4 * 3  # the gradient points only
    assert torch.equal(full.maps, lean.maps)
    assert "output_delta" not in lean.diagnostics and "completeness_residual" not in lean.diagnostics
    assert torch.equal(full.diagnostics["baselines"], lean.diagnostics["baselines"])


def test_eg_is_deterministic_and_independent_of_max_batch(cnn_setup):
    model, x, target = cnn_setup
    pool = images(5, seed=9, dtype=F64)
    runs = [
        expected_gradients(model, x, target, k=9, generator=seeded(3), max_batch=mb, references=pool,
                           reference_weights=uniform(5))
        for mb in (1, 7, 1000)
    ]
    for other in runs[1:]:
        assert torch.allclose(runs[0].maps, other.maps, rtol=1e-12, atol=1e-14)
        assert torch.equal(runs[0].diagnostics["reference_indices"], other.diagnostics["reference_indices"])
    repeat = expected_gradients(model, x, target, k=9, generator=seeded(3), references=pool, reference_weights=uniform(5))
    assert torch.equal(repeat.maps, runs[2].maps)
    different = expected_gradients(model, x, target, k=9, generator=seeded(4), references=pool, reference_weights=uniform(5))
    assert not torch.allclose(different.maps, runs[2].maps)


def test_eg_through_the_registry_with_runtime_references(cnn_setup):
    model, x, target = cnn_setup
    pool = images(5, seed=9, dtype=F64)
    info = get_method("expected_gradients")
    via_registry = call_method(info, model, x, target, {"k": 3}, generator=seeded(2), references=pool,
                               reference_weights=uniform(5))
    direct = expected_gradients(model, x, target, k=3, generator=seeded(2), references=pool, reference_weights=uniform(5))
    assert torch.equal(via_registry.maps, direct.maps)
    with pytest.raises(ValueError, match="needs a 'train_pool' reference set"):
        call_method(info, model, x, target, {}, generator=seeded(2))


@pytest.mark.parametrize(
    "change,culprit",
    [
        ({"k": 0}, r"'expected_gradients\.k'"),  # the signature's declaration, as in the config
        ({"references": torch.zeros(3, 3, 5, 5, dtype=F64)}, "parameter references must be"),
        ({"references": torch.full((2, 3, 10, 10), float("nan"), dtype=F64)}, "reference 0 of parameter references"),
        ({"reference_weights": torch.tensor([0.5, 0.6], dtype=F64)}, "reference_weights sums to"),
        ({"reference_weights": torch.tensor([1.5, -0.5], dtype=F64)}, r"reference_weights\[1\]"),
        ({"reference_weights": torch.ones(3, dtype=F64) / 3}, r"reference_weights must have shape \(2,\)"),
        ({"target": torch.tensor([0, 1, 2, 9])}, "sample 3: parameter target"),
    ],
)
def test_eg_bad_input_errors_name_the_parameter(cnn_setup, change, culprit):
    model, x, target = cnn_setup
    kwargs = {"k": 2, "references": images(2, seed=9, dtype=F64), "reference_weights": uniform(2), **change}
    target = kwargs.pop("target", target)
    runtime = {key: kwargs.pop(key) for key in ("references", "reference_weights")}
    with pytest.raises(ValueError, match=culprit):
        call_method(get_method("expected_gradients"), model, x, target, kwargs, generator=seeded(), **runtime)


def test_methods_leave_the_model_as_they_found_it(cnn_setup):
    model, x, target = cnn_setup
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pool = images(4, seed=9, dtype=F64)
    expected_gradients(model, x, target, k=2, references=pool, reference_weights=uniform(4))
    lpi(model, x, target, sub_clusters=2, references=pool, reference_weights=uniform(4))
    agi(model, x, target, steps=3)
    with pytest.raises(ValueError):
        agi(model, x, target, false_classes=CLASSES)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


class FailsOnThirdForward(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("device lost")
        return self.net(z)


@pytest.mark.parametrize("method", ["eg", "lpi", "agi"])
def test_an_exception_mid_method_restores_the_models_mode(cnn_setup, method):
    _, x, target = cnn_setup
    model = WrappedModel(FailsOnThirdForward(regular_cnn(dtype=F64).net), num_classes=CLASSES).to(F64)
    model.train()
    pool = images(4, seed=9, dtype=F64)
    run = {
        "eg": lambda: expected_gradients(model, x, target, k=4, max_batch=4, references=pool,
                                         reference_weights=uniform(4)),
        "lpi": lambda: lpi(model, x, target, sub_clusters=2, max_batch=2, references=pool,
                           reference_weights=uniform(4)),
        "agi": lambda: agi(model, x, target, steps=5, epsilon=0.01, max_batch=4),
    }[method]
    with pytest.raises(RuntimeError, match="device lost"):
        run()
    assert model.training and model.net.net.training


# ---------------------------------------------------------------------------------------------
# LPI.


def test_lpi_on_a_linear_model_is_x_minus_density_weighted_local_reference_times_w():
    torch.manual_seed(1)
    w = torch.randn(2, 8, dtype=F64)
    model = linear_model(w)
    x = torch.rand(3, 1, 2, 4, dtype=F64)
    references = torch.rand(4, 1, 2, 4, dtype=F64)
    weights = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=F64)  # one cluster of four
    target = torch.tensor([0, 1, 1])
    result = lpi(model, x, target, sub_clusters=4, samples_per_reference=3, generator=seeded(),
                 references=references, reference_weights=weights)
    local = torch.einsum("r,rchw->chw", weights, references)
    assert torch.allclose(result.maps, (x - local) * w[target].view(3, 1, 2, 4), atol=1e-12)
    assert torch.allclose(result.diagnostics["baselines"], local.expand_as(x), atol=1e-12)
    assert torch.allclose(result.diagnostics["completeness_residual"], torch.zeros(3, dtype=F64), atol=1e-12)
    assert result.diagnostics["path_alphas"].shape == (3, 12)


def test_lpi_integrates_from_the_inputs_own_cluster_with_its_density():
    train, group = colour_groups((40, 25, 35))
    model = colour_model()
    refs_np, weights_np, attrs = build_references("lpi", model, train, seed=0, clusters=3, sub_clusters=4)
    references, weights = torch.as_tensor(refs_np, dtype=F64), torch.as_tensor(weights_np)
    block_group = group[np.asarray(attrs["train_indices"])].reshape(3, 4)[:, 0]
    x = torch.as_tensor(colour_groups((1, 1, 1), seed=7)[0].images, dtype=F64)  # one per group
    x_group = colour_groups((1, 1, 1), seed=7)[1]
    result = lpi(model, x, torch.tensor([0, 1, 2]), sub_clusters=4, generator=seeded(),
                 references=references, reference_weights=weights)
    chosen = result.diagnostics["reference_cluster"].numpy()
    assert np.array_equal(block_group[chosen], x_group)
    for s, cluster in enumerate(chosen):
        block = slice(4 * cluster, 4 * cluster + 4)
        density = weights[block] / weights[block].sum()
        expected = torch.einsum("r,rchw->chw", density, references[block])
        assert torch.allclose(result.diagnostics["baselines"][s], expected, atol=1e-12)


def test_lpi_pairs_each_reference_with_its_own_path_gradients(cnn_setup):
    """Reproduce the α draws and compute Σ_r p_r/k Σ_j (x − r) ⊙ ∇F(r + α_rj (x − r)) by hand."""
    model, x, target = cnn_setup
    references = images(3, seed=9, dtype=F64)
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=F64)
    k = 2
    result = lpi(model, x, target, sub_clusters=3, samples_per_reference=k, generator=seeded(11),
                 references=references, reference_weights=weights)
    alphas = torch.rand((4, 3 * k), generator=seeded(11), dtype=F64)
    expected = torch.zeros_like(x)
    for p in range(3 * k):
        r = p // k
        ref = references[r].expand_as(x)
        point = ref + alphas[:, p].view(-1, 1, 1, 1) * (x - ref)
        expected += weights[r] / k * (x - ref) * gradient_at(model, point, target)
    assert torch.allclose(result.maps, expected, rtol=1e-10, atol=1e-13)


def test_lpi_approaches_density_weighted_ig_as_draws_grow(cnn_setup):
    model, x, target = cnn_setup
    references = images(3, seed=9, dtype=F64)
    weights = torch.tensor([0.5, 0.2, 0.3], dtype=F64)
    limit = sum(w * ig_from(model, x, target, references[j].expand_as(x)) for j, w in enumerate(weights))
    errors = []
    for k in (2, 64):
        maps = lpi(model, x, target, sub_clusters=3, samples_per_reference=k, generator=seeded(k),
                   references=references, reference_weights=weights).maps
        errors.append(float((maps - limit).abs().mean() / limit.abs().mean()))
    assert errors[1] < errors[0] / 3 and errors[1] < 0.12, errors


def test_lpi_is_deterministic_and_independent_of_max_batch(cnn_setup):
    model, x, target = cnn_setup
    references = images(6, seed=9, dtype=F64)
    runs = [
        lpi(model, x, target, sub_clusters=3, samples_per_reference=2, generator=seeded(5), max_batch=mb,
            references=references, reference_weights=uniform(6))
        for mb in (1, 5, 1000)
    ]
    for other in runs[1:]:
        assert torch.allclose(runs[0].maps, other.maps, rtol=1e-12, atol=1e-14)
        assert torch.equal(runs[0].diagnostics["reference_cluster"], other.diagnostics["reference_cluster"])


@pytest.mark.parametrize(
    "change,culprit",
    [
        ({"sub_clusters": 4}, "parameter sub_clusters is 4 but the reference set holds 6 rows"),
        ({"samples_per_reference": 0}, r"'lpi\.samples_per_reference'"),
        ({"reference_weights": None}, "reference_weights is missing"),
        ({"reference_weights": torch.tensor([0, 0, 0, 0.5, 0.25, 0.25], dtype=F64)}, "cluster 0"),
    ],
)
def test_lpi_bad_input_errors_name_the_parameter(cnn_setup, change, culprit):
    model, x, target = cnn_setup
    kwargs = {"sub_clusters": 3, "references": images(6, seed=9, dtype=F64), "reference_weights": uniform(6), **change}
    runtime = {key: kwargs.pop(key) for key in ("references", "reference_weights")}
    with pytest.raises(ValueError, match=culprit):
        call_method(get_method("lpi"), model, x, target, kwargs, generator=seeded(), **runtime)


# ---------------------------------------------------------------------------------------------
# AGI.

# Two classes over four pixels: z0 = x1 + x2, z1 = −x1 + x3 − x4. From x = 0.5 everywhere,
# z0 − z1 = 1.5. Explaining class 0, the only false class is 1.
AGI_W = torch.tensor([[1.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 1.0, -1.0]], dtype=F64)


def agi_toy():
    return linear_model(AGI_W), torch.full((1, 1, 2, 2), 0.5, dtype=F64), torch.tensor([0])


def test_agi_on_a_linear_logit_walks_sign_steps_until_the_class_flips():
    """Logit output: ∇z1 = W1, each step Δ = ε·sign(W1) = ε(−1, 0, 1, −1) lowers the gap by 4ε.
    ε = 0.04: the gap 1.5 − 0.16 t turns negative at t = 10, so AGI = −10 · W0 ⊙ Δ =
    (0.4, 0, 0, 0), and Σ AGI = z0(x) − z0(x_end) exactly (the path is straight, z0 linear)."""
    model, x, target = agi_toy()
    result = agi(model, x, target, epsilon=0.04, steps=20, output="logit", generator=seeded())
    d = result.diagnostics
    assert torch.allclose(result.maps.flatten(), torch.tensor([0.4, 0, 0, 0], dtype=F64), atol=1e-12)
    assert d["attack_steps"].tolist() == [[10]] and d["attack_succeeded"].tolist() == [[True]]
    assert d["adversarial_classes"].tolist() == [[1]]
    end = torch.tensor([0.1, 0.5, 0.9, 0.1], dtype=F64)
    assert torch.allclose(d["baselines"].flatten(), end, atol=1e-12)
    assert torch.allclose(d["output_delta"], torch.tensor([0.4], dtype=F64))
    assert float(d["completeness_residual"]) < 1e-12
    # path stored from the adversarial end (α = 0) to x (α = 1); after arrival it stays put
    assert torch.allclose(d["path_logits"][0, -1], torch.tensor(1.0, dtype=F64))
    assert torch.allclose(d["path_logits"][0, :11], torch.full((11,), 0.6, dtype=F64))
    assert d["path_alphas"][0, 0] == 0 and d["path_alphas"][0, -1] == 1


def test_agi_stops_after_steps_without_success():
    model, x, target = agi_toy()
    result = agi(model, x, target, epsilon=0.04, steps=5, output="logit")
    assert torch.allclose(result.maps.flatten(), torch.tensor([0.2, 0, 0, 0], dtype=F64), atol=1e-12)
    assert result.diagnostics["attack_succeeded"].tolist() == [[False]]


def test_agi_probability_output_follows_the_softmax_gradient_direction():
    """Output prob: ∇p1 = p0 p1 (W1 − W0), so Δ = ε·sign(W1 − W0) = ε(−1, −1, 1, −1) and the gap
    falls by 5ε = 0.2 per step (arrival at t = 8). ∇p0 = −∇p1, hence
    AGI = ε Σ_{t<8} σ(g_t) σ(−g_t) · (2, 1, 1, 1) with g_t = 1.5 − 0.2 t."""
    model, x, target = agi_toy()
    result = agi(model, x, target, epsilon=0.04, steps=20, output="prob")
    sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    scale = 0.04 * sum(sigmoid(1.5 - 0.2 * t) * sigmoid(-(1.5 - 0.2 * t)) for t in range(8))
    expected = scale * torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=F64)
    assert torch.allclose(result.maps.flatten(), expected, atol=1e-12)
    assert result.diagnostics["attack_steps"].tolist() == [[8]]


def test_agi_code_variant_restarts_every_step_from_the_input():
    """restart_from_input: every step lands on x + εsign(W1) and Δ is measured from x, so the
    attack never flips the class and AGI = steps · (−W0 ⊙ Δ) = steps · (ε, 0, 0, 0)."""
    model, x, target = agi_toy()
    result = agi(model, x, target, epsilon=0.04, steps=7, output="logit", restart_from_input=True)
    assert torch.allclose(result.maps.flatten(), torch.tensor([7 * 0.04, 0, 0, 0], dtype=F64), atol=1e-12)
    assert result.diagnostics["attack_steps"].tolist() == [[7]]


def test_agi_clips_steps_to_the_pixel_range():
    model, _, target = agi_toy()
    x = torch.tensor([[[[0.02, 0.5], [0.5, 0.5]]]], dtype=F64)  # z0 = 0.52 > z1 = −0.02
    result = agi(model, x, target, epsilon=0.04, steps=1, output="logit")
    # one step: x1 can only fall by 0.02 before hitting 0
    assert torch.allclose(result.maps.flatten(), torch.tensor([0.02, 0, 0, 0], dtype=F64), atol=1e-12)
    assert float(result.diagnostics["baselines"].min()) == 0.0


def test_agi_false_classes_are_distinct_and_never_the_target(cnn_setup):
    model, x, target = cnn_setup
    result = agi(model, x, target, false_classes=CLASSES - 1, steps=2, generator=seeded())
    drawn = result.diagnostics["adversarial_classes"]
    assert drawn.shape == (4, CLASSES - 1)
    for row, t in zip(drawn.tolist(), target.tolist()):
        assert sorted(row + [t]) == list(range(CLASSES))


def test_agi_is_deterministic_and_independent_of_max_batch(cnn_setup):
    model, x, target = cnn_setup
    runs = [
        agi(model, x, target, false_classes=2, steps=6, epsilon=0.1, generator=seeded(2), max_batch=mb)
        for mb in (1, 3, 1000)
    ]
    for other in runs[1:]:
        assert torch.allclose(runs[0].maps, other.maps, rtol=1e-12, atol=1e-15)
        for key in ("attack_steps", "adversarial_classes", "attack_succeeded"):
            assert torch.equal(runs[0].diagnostics[key], other.diagnostics[key]), key
    assert runs[0].maps.abs().sum() > 0


@pytest.mark.parametrize(
    "change,culprit",
    [
        ({"false_classes": CLASSES}, "parameter false_classes is 5 but the model has only 4"),
        ({"steps": 0}, r"'agi\.steps'"),
        ({"epsilon": 0.0}, r"'agi\.epsilon'"),
        ({"output": "softmax"}, r"'agi\.output'"),
    ],
)
def test_agi_bad_input_errors_name_the_parameter(cnn_setup, change, culprit):
    model, x, target = cnn_setup
    with pytest.raises(ValueError, match=culprit):
        call_method(get_method("agi"), model, x, target, change)

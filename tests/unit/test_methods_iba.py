"""IBA, InputIBA and the cached feature statistics they read.

Hand computations of the statistics on a small CNN, the bottleneck's defining behaviour (it
opens only where the output looks, and closes as β grows), bits-per-pixel maps, determinism,
layer resolution, hooks that never leak, and InputIBA's output contract.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attrflow.data.sample_store import SampleSet
from attrflow.jobs.references import load_references
from attrflow.methods import call_method, get_method
from attrflow.methods._bottleneck import LayerStatistics, gaussian_capacity, gaussian_smoothing
from attrflow.methods.iba import iba
from attrflow.methods.input_iba import input_iba
from attrflow.methods.references import build_feature_statistics
from attrflow.models import WrappedModel
from attrflow.models.small_cnn import SmallCNN
from attrflow.store import write_store

torch.set_num_threads(1)
F64 = torch.float64
SIZE, CLASSES = 16, 5


def small_cnn(seed: int = 0) -> WrappedModel:
    torch.manual_seed(seed)
    net = SmallCNN(CLASSES, width=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        net.classifier.weight.normal_(0, 2.0)  # decisive logits, so the features matter to CE
    model = WrappedModel(net, num_classes=CLASSES, mean=[0.4] * 3, std=[0.3] * 3, cam_layer="features.3")
    return model.to(F64).eval().requires_grad_(False)


def train_split(n: int = 7, seed: int = 0) -> SampleSet:
    pixels = np.random.default_rng(seed).random((n, 3, SIZE, SIZE))
    return SampleSet(pixels, np.zeros(n, np.int64), [f"train-{i}" for i in range(n)])


def as_references(stats: dict, attrs: dict) -> dict:
    """What `load_references` hands a method: layer name and module path → LayerStatistics."""
    out = {}
    for name, arrays in stats.items():
        out[name] = LayerStatistics(*(torch.from_numpy(arrays[k]).to(F64) for k in LayerStatistics._fields))
        out.setdefault(attrs["layers"][name], out[name])
    return out


@pytest.fixture(scope="module")
def cnn_setup():
    model = small_cnn()
    stats, attrs = build_feature_statistics(model, train_split(12), seed=0, max_batch=5)
    x = torch.rand((3, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1), dtype=F64)
    return model, as_references(stats, attrs), x, torch.tensor([0, 1, 2])


FAST = dict(steps=4, copies=3)


# ---------------------------------------------------------------------------------------------
# Feature statistics.


def test_feature_statistics_match_a_hand_computation():
    model = small_cnn()
    train = train_split(7)
    stats, attrs = build_feature_statistics(model, train, seed=0, max_batch=3)  # 3 uneven chunks
    assert attrs["layers"] == {
        "default": "features.3", "stage1": "features.0", "stage2": "features.1",
        "stage3": "features.2", "stage4": "features.3",
    }
    assert attrs["unavailable"] == {} and attrs["train_size"] == 7
    activations = (torch.from_numpy(train.images).to(F64) - 0.4) / 0.3
    by_stage = {}
    for i, block in enumerate(model.net.features):
        activations = block(activations)
        by_stage[f"stage{i + 1}"] = activations
    by_stage["default"] = by_stage["stage4"]
    for name, expected in by_stage.items():
        assert stats[name]["mean"].shape == tuple(expected.shape[1:])
        np.testing.assert_allclose(stats[name]["mean"], expected.mean(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[name]["std"], expected.std(0).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats[name]["nonzero"], (expected != 0).double().mean(0).numpy(), atol=1e-6)
    # ReLU outputs: some elements are 0 in some images, so the share is informative
    assert 0 < stats["stage1"]["nonzero"].mean() < 1


def test_feature_statistics_use_a_seeded_subset_of_max_train_images():
    model, train = small_cnn(), train_split(9)
    stats, attrs = build_feature_statistics(model, train, seed=3, max_train=4)
    again, _ = build_feature_statistics(model, train, seed=3, max_train=4, max_batch=1)
    chosen = attrs["train_indices"]
    assert len(chosen) == 4 == attrs["train_size"] and chosen == sorted(chosen)
    subset = SampleSet(train.images[chosen], train.labels[chosen], [train.ids[i] for i in chosen])
    expected, _ = build_feature_statistics(model, subset, seed=0)
    for name in stats:
        np.testing.assert_allclose(stats[name]["std"], expected[name]["std"], rtol=1e-6)
        np.testing.assert_allclose(stats[name]["mean"], again[name]["mean"], rtol=1e-6, atol=1e-7)


def test_feature_statistics_name_unresolvable_layers_and_bad_parameters():
    model = small_cnn()
    model.cam_layer = None
    stats, attrs = build_feature_statistics(model, train_split(3), seed=0)
    assert "default" not in stats and "declares no default" in attrs["unavailable"]["default"]
    with pytest.raises(ValueError, match="max_train"):
        build_feature_statistics(model, train_split(3), seed=0, max_train=0)


def test_a_feature_stats_store_loads_as_layer_statistics_by_name_and_path(tmp_path):
    model = small_cnn()
    stats, attrs = build_feature_statistics(model, train_split(4), seed=0)
    path = write_store(tmp_path / "feature_stats.zarr", {}, {"references": "feature_stats", **attrs}, groups=stats)
    loaded, weights = load_references(path, "cpu")
    assert weights is None
    assert set(loaded) == set(attrs["layers"]) | set(attrs["layers"].values())
    assert loaded["features.1"] is loaded["stage2"]
    np.testing.assert_array_equal(loaded["stage2"].std.numpy(), stats["stage2"]["std"])


def test_the_prepare_references_job_stores_feature_statistics(tmp_path, monkeypatch):
    import attrflow.jobs.references as job
    import attrflow.models.cards as cards

    model, train = small_cnn(), train_split(5)
    monkeypatch.setattr(cards, "load_model", lambda model_dir, device: model)
    monkeypatch.setattr(job, "read_samples", lambda path, split: train)
    out = job.prepare_reference_store(
        samples_path="unused", model_dir="unused", out_path=tmp_path / "fs.zarr", dataset="toy",
        model_name="cnn", kind="feature_stats", params={"max_train": 4}, code="c0de", device="cpu",
        seed=0, max_batch=2,
    )
    loaded, weights = load_references(out, "cpu")
    assert weights is None and loaded["stage3"].mean.shape == (16, 2, 2)
    assert loaded["default"] is loaded["stage4"] or torch.equal(loaded["default"].std, loaded["stage4"].std)


# ---------------------------------------------------------------------------------------------
# IBA.


def test_registrations_ask_for_feature_statistics():
    for name in ("iba", "input_iba"):
        info = get_method(name)
        assert info.references == "feature_stats" and info.channel_free and not info.completeness


def test_gaussian_capacity_is_the_closed_form_kl():
    r, lam = torch.tensor([0.0, 1.5, -2.0], dtype=F64), torch.tensor([0.0, 0.5, 0.9], dtype=F64)
    mu, var = lam * r, (1 - lam) ** 2
    expected = 0.5 * (var + mu**2 - 1) - torch.log(1 - lam)  # KL[N(mu, var) ‖ N(0, 1)]
    torch.testing.assert_close(gaussian_capacity(r, lam), expected)
    assert float(gaussian_capacity(r, lam)[0]) == 0.0  # λ = 0: nothing passes


def test_smoothing_is_a_normalised_gaussian_with_kernel_five():
    impulse = torch.zeros(1, 1, 9, 9, dtype=F64)
    impulse[0, 0, 4, 4] = 1
    smoothed = gaussian_smoothing(impulse, 1.0)
    assert smoothed.shape == impulse.shape and math.isclose(float(smoothed.sum()), 1.0)
    assert float(smoothed[0, 0, 4, 1]) == 0 and float(smoothed[0, 0, 4, 2]) > 0  # radius 2
    torch.testing.assert_close(gaussian_smoothing(impulse, 0.0), impulse)
    assert gaussian_smoothing(torch.rand(1, 2, 2, 2), 1.0).shape == (1, 2, 2, 2)  # too small to reflect


def test_iba_maps_are_nonnegative_bits_per_pixel(cnn_setup):
    model, refs, x, target = cnn_setup
    result = iba(model, x, target, layer="stage1", references=refs, generator=torch.Generator().manual_seed(0), **FAST)
    maps, bits = result.maps, result.diagnostics["information_bits"]
    assert maps.shape == (3, SIZE, SIZE) and bool((maps >= 0).all()) and bool(torch.isfinite(maps).all())
    torch.testing.assert_close(maps.flatten(1).sum(1), bits, rtol=0.05, atol=0)  # bits per input pixel
    assert bool((result.diagnostics["bottleneck_target_prob"] > 0).all())


def test_iba_capacity_shrinks_as_beta_grows(cnn_setup):
    model, refs, x, target = cnn_setup
    bits = [
        iba(model, x, target, layer="stage2", beta=beta, references=refs,
            generator=torch.Generator().manual_seed(0), **FAST).diagnostics["information_bits"]
        for beta in (0.01, 1.0, 100.0)
    ]
    assert bool((bits[0] > bits[1]).all()) and bool((bits[1] > bits[2]).all()) and bool((bits[2] >= 0).all())


class RegionReader(nn.Module):
    """features = [z, −z] (1×1 conv, layer "0"); logits = ±20 (mean of channel 0 over the top-left
    quadrant − 0.5): the output looks at that quadrant only."""

    def __init__(self) -> None:
        super().__init__()
        self.add_module("0", nn.Conv2d(1, 2, 1, bias=False))
        with torch.no_grad():
            self._modules["0"].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        quadrant = self._modules["0"](z)[:, 0, :4, :4].mean(dim=(1, 2)) - 0.5
        return torch.stack([20 * quadrant, -20 * quadrant], dim=1)


def test_the_bottleneck_opens_only_where_the_output_looks():
    model = WrappedModel(RegionReader(), num_classes=2, mean=[0.0], std=[1.0]).to(F64).eval()
    train = torch.rand((500, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=F64)
    features = torch.cat([train, -train], dim=1)
    refs = {"0": LayerStatistics(features.mean(0), features.std(0), (features != 0).double().mean(0))}
    x = torch.full((2, 1, 8, 8), 0.5, dtype=F64)
    x[:, :, :4, :4] = torch.tensor([1.0, 0.0], dtype=F64).view(2, 1, 1, 1)  # class 0, then class 1
    # β = 1: at the default 10 the KL of 32 open elements outweighs all CE can gain (ln 2)
    result = iba(model, x, torch.tensor([0, 1]), layer="0", beta=1.0, sigma=0.0, references=refs,
                 generator=torch.Generator().manual_seed(0))
    inside = result.maps[:, :4, :4].mean(dim=(1, 2))
    outside = (result.maps.sum(dim=(1, 2)) - result.maps[:, :4, :4].sum(dim=(1, 2))) / 48
    assert bool((inside > 50 * outside).all())
    assert bool((result.diagnostics["bottleneck_target_prob"] > 0.8).all())


def test_iba_is_deterministic_and_independent_of_max_batch_and_companions(cnn_setup):
    model, refs, x, target = cnn_setup

    def run(images, targets, max_batch):
        return iba(model, images, targets, layer="stage2", references=refs, max_batch=max_batch,
                   generator=torch.Generator().manual_seed(7), **FAST).maps

    full = run(x, target, 256)
    torch.testing.assert_close(run(x, target, 256), full, rtol=0, atol=0)
    torch.testing.assert_close(run(x, target, 2), full)  # one image's copies over two passes
    assert not torch.allclose(full, iba(model, x, target, layer="stage2", references=refs,
                                        generator=torch.Generator().manual_seed(8), **FAST).maps)


def test_layers_resolve_by_stage_name_or_module_path(cnn_setup):
    model, refs, x, target = cnn_setup
    by_name = iba(model, x, target, layer="stage3", references=refs, generator=torch.Generator().manual_seed(0), **FAST)
    by_path = iba(model, x, target, layer="features.2", references=refs, generator=torch.Generator().manual_seed(0), **FAST)
    torch.testing.assert_close(by_name.maps, by_path.maps, rtol=0, atol=0)
    with pytest.raises(ValueError, match="stage1"):  # unknown layers list the names to use
        iba(model, x, target, layer="features.9", references=refs)
    partial = {"stage4": refs["stage4"]}
    with pytest.raises(ValueError, match=r"no feature statistics for layer 'stage1'.*stage4"):
        iba(model, x, target, layer="stage1", references=partial)
    with pytest.raises(ValueError, match="references must map"):
        iba(model, x, target, references=torch.zeros(2, 3, SIZE, SIZE))


def test_iba_counts_its_passes_and_leaves_no_hook_even_when_it_raises(cnn_setup):
    model, refs, x, target = cnn_setup
    model.reset_counters()
    iba(model, x, target, layer="stage2", references=refs, **FAST)
    assert model.forward_samples == 3 * (1 + 4 * 3) and model.backward_samples == 3 * 4 * 3
    wrong = {"stage2": refs["stage1"]}  # statistics of another shape
    for _ in range(3):
        with pytest.raises(ValueError, match="cached feature statistics"):
            iba(model, x, target, layer="stage2", references=wrong, **FAST)
    assert all(not m._forward_hooks for m in model.modules())
    assert not model.training


@pytest.mark.parametrize(
    "change,culprit",
    [({"beta": -1.0}, "beta"), ({"steps": 0}, "steps"), ({"copies": 0}, "copies"), ({"min_std": 0.0}, "min_std")],
)
def test_iba_bad_parameters_are_named(cnn_setup, change, culprit):
    model, refs, x, target = cnn_setup
    with pytest.raises(ValueError, match=rf"'iba\.{culprit}'"):  # the signature's declaration
        call_method(get_method("iba"), model, x, target, change, references=refs)


def test_iba_through_the_registry(cnn_setup):
    model, refs, x, target = cnn_setup
    maps = call_method(get_method("iba"), model, x, target, {"layer": "stage4", "steps": 2, "copies": 2},
                       generator=torch.Generator().manual_seed(0), references=refs).maps
    assert maps.shape == (3, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------
# InputIBA.


def test_input_iba_returns_nonnegative_input_resolution_masks(cnn_setup):
    model, refs, x, target = cnn_setup
    settings = dict(feature_steps=2, steps=3, copies=2, prior_steps=2, prior_samples=3)
    result = input_iba(model, x, target, layer="stage1", references=refs, max_batch=5,
                       generator=torch.Generator().manual_seed(0), **settings)
    maps = result.maps
    assert maps.shape == (3, SIZE, SIZE) and bool(torch.isfinite(maps).all())
    assert bool((maps >= 0).all()) and bool((maps <= 1).all())
    assert set(result.diagnostics) == {"feature_information_bits", "prior_distance", "bottleneck_target_prob"}
    assert bool(torch.isfinite(result.diagnostics["prior_distance"]).all())
    again = input_iba(model, x, target, layer="stage1", references=refs, max_batch=64,
                      generator=torch.Generator().manual_seed(0), **settings)
    torch.testing.assert_close(again.maps, maps)
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------------------------------------
# Config.


def test_config_accepts_the_iba_entries_and_names_bad_keys():
    from pathlib import Path

    import yaml

    from attrflow.config import ConfigError, validate_config

    repo = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["methods"].update(
        iba={"fn": "iba"}, input_iba={"fn": "input_iba"},
        **{f"iba_layer{i}": {"fn": "iba", "layer": f"stage{i}"} for i in range(1, 5)},
    )
    config["run"]["methods"] = ["gradient", "iba", "iba_layer1", "input_iba"]
    config.setdefault("references", {})["feature_stats"] = {"max_train": 2000}
    checked = validate_config(config, workdir=repo)
    assert checked["methods"]["iba"]["layer"] == "stage2" and checked["methods"]["iba_layer1"]["layer"] == "stage1"
    for path, mutate in [
        ("references.feature_stats.max_train", lambda c: c["references"]["feature_stats"].update(max_train=0)),
        ("methods.iba.beta", lambda c: c["methods"]["iba"].update(beta=-1.0)),
    ]:
        bad = yaml.safe_load(yaml.safe_dump(config))
        mutate(bad)
        with pytest.raises(ConfigError) as err:
            validate_config(bad, workdir=repo)
        assert err.value.key_path == path

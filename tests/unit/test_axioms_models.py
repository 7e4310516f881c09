"""Axiom synthesis on registry models at input sizes other than 64 and 224: the embedded CNN, a
timm ResNet and a timm ViT, through the same job functions the workflow calls.

The models have random weights and the runs a handful of iterations, so nothing here is about
acceptance being reachable; what is checked is that every shape follows the model's input size
(patch side, boxes, masks, residuals, iteration counts), that candidates which miss the
thresholds are flagged, and that maps of a gradient and a CAM method come out of
`attribute_axioms` for what `synthesize_axioms` stored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attrflow.axioms.settings import SCENARIOS, SEED_PATCH_FRACTION, resolve_setting
from attrflow.jobs.axioms import attribute_axioms, synthesize_axioms
from attrflow.models import WrappedModel
from attrflow.models.architectures import build_architecture, default_cam_layer
from attrflow.models.cards import save_model
from attrflow.store import open_store

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLASSES = 4

# (architecture as a card records it, input side, scenario): sides that are neither 64 nor 224,
# one of them odd, and one ViT whose side is not a multiple of its 16 px token size.
MODELS = {
    "small_cnn": ({"library": "attrflow", "name": "small_cnn", "kwargs": {"num_classes": CLASSES, "width": 8}},
                  37, "null_feature"),
    "timm_resnet": ({"library": "timm", "name": "resnet10t", "kwargs": {"num_classes": CLASSES}},
                    45, "class_sensitivity_double"),
    "timm_vit": ({"library": "timm", "name": "vit_tiny_patch16_224",
                  "kwargs": {"num_classes": CLASSES, "img_size": 40, "depth": 2}},
                 40, "saturation"),
}


def _model_dir(tmp_path: Path, name: str, architecture: dict, size: int) -> Path:
    """A saved model as `prepare_model` leaves it: weights plus a card that `load_model` rebuilds."""
    torch.manual_seed(0)
    net = build_architecture(architecture)
    model = WrappedModel(net, num_classes=CLASSES, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         cam_layer=default_cam_layer(net), name=name)
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, CLASSES)
    card = {"name": name, "kind": architecture["library"], "architecture": architecture, "num_classes": CLASSES,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "cam_layer": model.cam_layer, "is_x_dnn": False}
    out = tmp_path / name
    save_model(model, card, out)
    return out


def _setting(scenario: str, size: int, **overrides) -> dict:
    """The entry's complete setting, the input side coming from the model's dataset (its crop)."""
    config = {
        "models": {"m": {"kind": "timm", "dataset": "d"}},
        "datasets": {"d": {"kind": "image_folder", "crop": size}},
        "axioms": {scenario: {"samples": 2, "batch": 2, "iterations": 3, "warmup": 1, "check_after": 1,
                              "prior_width": 8, "max_candidates": 2, **overrides}},
    }
    return resolve_setting(config, "m", scenario)


def _synthesize(model_dir: Path, out: Path, name: str, setting: dict) -> object:
    synthesize_axioms(model_dir=model_dir, out_path=out, model_name=name, entry=setting["scenario"], setting=setting,
                      code="test", device="cpu", seed=0, max_batch=64)
    return open_store(out)


@pytest.mark.parametrize("name", list(MODELS))
def test_synthesis_and_maps_follow_the_models_input_size(tmp_path, name):
    torch.set_num_threads(1)
    architecture, size, scenario_name = MODELS[name]
    scenario = SCENARIOS[scenario_name]
    model_dir = _model_dir(tmp_path, name, architecture, size)
    patch = round(size * SEED_PATCH_FRACTION)

    # The seed's thresholds are out of reach in three iterations: both candidates fail, flagged.
    strict = _setting(scenario_name, size)
    assert strict["input_size"] == size and strict["patch_size"] == patch
    failed = _synthesize(model_dir, tmp_path / "strict.zarr", name, strict)
    assert not failed["accepted"][:].any() and (failed["iterations"][:] == strict["iterations"]).all()
    assert dict(failed.attrs)["failed"] == 2 and dict(failed.attrs)["accepted"] == 0

    # Thresholds every candidate meets at once: accepted samples, which the maps are computed on.
    lenient = _setting(scenario_name, size, accuracy_threshold=0.01, tolerance="absolute", independence_threshold=1e6)
    store = _synthesize(model_dir, tmp_path / "lenient.zarr", name, lenient)
    m, k, constraints = 2, scenario.patches, len(scenario.constraints)
    assert store["accepted"][:].all() and (store["iterations"][:] == lenient["check_after"]).all()
    assert store["inputs"].shape == (m, 3, size, size) and store["backgrounds"].shape == (m, 3, size, size)
    assert store["patches"].shape == (m, k, 3, patch, patch)
    assert store["residuals"].shape == (m, constraints) and store["relative_change"].shape == (m, constraints)
    assert store["coalition_logits"].shape == (m, 2**k, 2) and store["own_probability"].shape == (m, k)
    assert store["iterations"].shape == (m,) and store["targets"].shape == (m, 2)
    boxes, masks = store["boxes"][:], store["masks"][:]
    assert boxes.min() >= 0 and boxes.max() <= size - patch
    assert masks.shape == (m, k, size, size) and (masks.sum(axis=(2, 3)) == patch**2).all()
    if k == 2:
        assert not (masks[:, 0] & masks[:, 1]).any()
    inputs, patches = store["inputs"][:], store["patches"][:]
    for i in range(k):  # the explained input carries each patch in its box
        top, left = boxes[0, i]
        np.testing.assert_array_equal(inputs[0, :, top : top + patch, left : left + patch], patches[0, i])

    for method, entry in (("gradient", {"fn": "gradient"}), ("gradcam", {"fn": "gradcam", "layer": "default"})):
        out = tmp_path / f"{method}.zarr"
        attribute_axioms(inputs_paths=[tmp_path / "lenient.zarr"], entries=[scenario_name], model_dir=model_dir,
                         out_path=out, model_name=name, method=method, method_entry=entry, code="test", device="cpu",
                         seed=0, max_batch=64)
        maps = open_store(out)
        assert dict(maps.attrs)["entries"][scenario_name]["applicable"], (name, method)
        for column in ("maps_a", "maps_b"):
            values = maps[scenario_name][column][:]
            assert values.shape == (m, size, size) and np.isfinite(values).all(), (name, method, column)
            assert np.abs(values).sum() > 0, (name, method, column)


def test_reference_methods_use_the_models_training_set_references_on_axiom_inputs(tmp_path):
    """IBA (and EG, LPI, DeepSHAP) explain axiom inputs with the reference set built on the model's
    training dataset; without one they are recorded as not applicable, never run without it."""
    from attrflow.data.sample_store import SampleSet, write_sample_store
    from attrflow.jobs.references import prepare_reference_store

    torch.set_num_threads(1)
    architecture, size, scenario_name = MODELS["small_cnn"]
    model_dir = _model_dir(tmp_path, "small_cnn", architecture, size)
    lenient = _setting(scenario_name, size, accuracy_threshold=0.01, tolerance="absolute", independence_threshold=1e6)
    _synthesize(model_dir, tmp_path / "inputs.zarr", "small_cnn", lenient)
    rng = np.random.default_rng(0)

    def samples(n: int, split: str) -> SampleSet:
        images = rng.random((n, 3, size, size), dtype=np.float32)
        return SampleSet(images, rng.integers(0, CLASSES, n), [f"{split}-{i}" for i in range(n)], None)

    write_sample_store(tmp_path / "samples.zarr", samples(2, "test"), samples(8, "train"), {})
    prepare_reference_store(
        samples_path=tmp_path / "samples.zarr", model_dir=model_dir, out_path=tmp_path / "stats.zarr", dataset="d",
        model_name="small_cnn", kind="feature_stats", params={"max_train": 8}, code="test", device="cpu", seed=0,
        max_batch=64,
    )
    entry = {"fn": "iba", "layer": "stage2", "steps": 2, "copies": 2}
    common = dict(inputs_paths=[tmp_path / "inputs.zarr"], entries=[scenario_name], model_dir=model_dir,
                  model_name="small_cnn", method="iba", method_entry=entry, code="test", device="cpu", seed=0,
                  max_batch=64)
    attribute_axioms(out_path=tmp_path / "with.zarr", references_path=tmp_path / "stats.zarr", **common)
    with_refs = open_store(tmp_path / "with.zarr")
    assert dict(with_refs.attrs)["entries"][scenario_name]["applicable"]
    maps = with_refs[scenario_name]["maps_a"][:]
    assert maps.shape == (2, size, size) and np.isfinite(maps).all() and (maps >= 0).all() and maps.sum() > 0
    attribute_axioms(out_path=tmp_path / "without.zarr", **common)
    status = dict(open_store(tmp_path / "without.zarr").attrs)["entries"][scenario_name]
    assert not status["applicable"] and "training dataset" in status["reason"]


def test_the_max_pooled_cnn_saturates_where_the_average_pooled_one_adds():
    """A second copy of a feature, out of reach of the first one's receptive field (~38 px), adds
    nothing under global max pooling (saturation is possible) and adds its share under the
    average (the embedded CNN, where the saturation axiom cannot be synthesised)."""
    from attrflow.models.architectures import trainable_network

    patch = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    # 160 px: each copy is > 19 px (half the receptive field) from the border and from the other,
    # and the shift (72 px) is a multiple of the 8 px pooling stride, so each copy alone has
    # the same features
    one, two = torch.zeros(2, 1, 3, 160, 160)
    one[0, :, 32:48, 32:48] = patch
    two[0, :, 32:48, 32:48] = patch
    two[0, :, 104:120, 104:120] = patch
    logits = {}
    for arch in ("small_cnn_max", "small_cnn"):
        torch.manual_seed(0)
        net = trainable_network(arch, 4, in_channels=3, width=8).eval()
        with torch.no_grad():
            logits[arch] = (net(one), net(two), net(torch.zeros(1, 3, 160, 160)))
    once, twice, empty = logits["small_cnn_max"]
    torch.testing.assert_close(twice, once)  # each copy alone gives what both give
    once, twice, empty = logits["small_cnn"]
    effect = once - empty
    assert ((twice - once) - effect).abs().max() < 0.05 * effect.abs().max()  # additive: the copy adds its effect again

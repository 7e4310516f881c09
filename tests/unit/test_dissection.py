"""Network Dissection (Bau et al., 2017) on constructed activations, and the embedded data's
concept labels it reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrflow.data.adapters import prepare_dataset, prepare_eval_range
from attrflow.data.concepts import ConceptLabels
from attrflow.data.sample_store import read_samples, write_sample_store
from attrflow.dissection.network_dissection import (
    IoUAccumulator,
    ThresholdAccumulator,
    dissect,
    kept_above,
    unit_masks,
    unit_thresholds,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ thresholds
def test_threshold_is_the_top_half_percent_level():
    # 400 values 0..399 per unit: m = floor(0.005 · 400) = 2 may lie above T, so T = 397
    # (the third largest) and exactly 2 values, 0.5 %, exceed it.
    values = torch.arange(400.0).view(1, 1, 20, 20)
    two_units = torch.cat([values, 10 * values], dim=1)
    torch.testing.assert_close(unit_thresholds(two_units), torch.tensor([397.0, 3970.0], dtype=torch.float64))
    assert kept_above(400, 0.005) == 2
    assert kept_above(199, 0.005) == 0  # fewer than 200 values: T is the maximum


def test_threshold_accumulates_over_batches_exactly():
    activations = torch.randn(7, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    whole = unit_thresholds(activations, quantile=0.05)
    acc = ThresholdAccumulator(3, 7 * 5 * 6, quantile=0.05)
    for chunk in activations.split(2):
        acc.add(chunk)
    torch.testing.assert_close(acc.thresholds(), whole)
    # the same level numpy finds: m = floor(0.05 · 210) = 10 values above, the 11th largest
    flat = activations.transpose(0, 1).reshape(3, -1).double().numpy()
    np.testing.assert_allclose(whole.numpy(), -np.sort(-flat, axis=1)[:, 10])
    with pytest.raises(ValueError, match="expected 210"):
        ThresholdAccumulator(3, 210, 0.05).thresholds()


def test_upsampled_mask_by_hand():
    # a 2×2 map with one active cell, upsampled bilinearly (align_corners=False) to 4×4: pixel
    # centres fall at source coordinates -0.25, 0.25, 0.75, 1.25, i.e. weights 0, .25, .75, 1 of
    # the active cell along each axis, so the values are 4·wy·wx and ≥ 2.25 holds on the 2×2
    # bottom-right block (2.25, 3, 3, 4).
    activation = torch.tensor([[0.0, 0.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    mask = unit_masks(activation, torch.tensor([2.25]), (4, 4))[0, 0]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[2:, 2:] = True
    assert torch.equal(mask, expected)


# ------------------------------------------------------------------------------ IoU and detectors
def test_iou_by_hand_sums_over_the_images_that_contain_the_concept():
    # Two 4×4 images, one unit at input resolution (upsampling is then the identity) whose
    # threshold we fix at 1: it fires on the top-left 2×2 block of image 0 and on the top row
    # of image 1.
    activations = torch.zeros(2, 1, 4, 4)
    activations[0, 0, :2, :2] = 1.0
    activations[1, 0, 0, :] = 1.0
    # concept A: image 0's left half (8 px); absent from image 1, so image 1 (where the unit
    # fires on 4 px) does not count. concept B: image 1's first column (4 px) only.
    concepts = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    concepts[0, 0, :, :2] = True
    concepts[1, 1, :, 0] = True
    acc = IoUAccumulator(torch.tensor([1.0]), concepts=2)
    acc.add(activations, concepts)
    # A: intersection 4 (the block), union 8 (the half contains the block) → 0.5
    # B: intersection 1 (corner), union 4 + 4 − 1 = 7 → 1/7
    torch.testing.assert_close(acc.intersection, torch.tensor([[4.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(acc.union, torch.tensor([[8.0, 7.0]], dtype=torch.float64))
    torch.testing.assert_close(acc.iou(), torch.tensor([[0.5, 1 / 7]], dtype=torch.float64))
    # accumulating image by image gives the same sums
    split = IoUAccumulator(torch.tensor([1.0]), concepts=2)
    for i in range(2):
        split.add(activations[i : i + 1], concepts[i : i + 1])
    torch.testing.assert_close(split.iou(), acc.iou())


def test_a_unit_firing_exactly_on_one_concept_is_its_only_detector():
    gen = torch.Generator().manual_seed(0)
    n, size = 12, 8
    concepts = torch.zeros(n, 3, size, size, dtype=torch.bool)
    for i in range(n):  # concept 0: a random square per image; 1: its complement; 2: never present
        r, c = torch.randint(0, size - 3, (2,), generator=gen).tolist()
        concepts[i, 0, r : r + 3, c : c + 3] = True
    concepts[:, 1] = ~concepts[:, 0]
    detector = concepts[:, 0].float()  # fires exactly on concept 0
    # 9 of 64 px per image fire, 108 of 768 values: with m = 107 values allowed above T, T is the
    # 108th largest value, 1
    noise = torch.rand(n, size, size, generator=gen) * 0.01  # a unit firing nowhere in particular
    activations = torch.stack([detector, noise], dim=1)
    result = dissect(activations, concepts, ["a:square", "a:rest", "a:never"], quantile=107 / 768)
    assert result.thresholds[0] == 1.0
    assert result.iou[0, 0] == 1.0
    assert np.isnan(result.iou[:, 2]).all()  # no image contains it
    assert result.best_concept[0] == 0 and result.is_detector[0]
    assert result.detector_counts() == {"a:square": 1, "a:rest": int(result.is_detector[1]), "a:never": 0}
    assert result.unit_labels()[0] == "a:square"
    # the noise unit's best IoU is small: its mask covers random pixels, a ninth of each image
    assert result.best_iou[1] < result.best_iou[0]


def test_detector_threshold_is_strict():
    activations = torch.zeros(1, 1, 10, 10)
    activations[0, 0, 0, :4] = 1.0  # fires on 4 px
    concepts = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    concepts[0, 0, :, :] = True  # the whole image: IoU = 4 / 100 = 0.04, not > 0.04
    result = dissect(activations, concepts, ["c:all"], quantile=0.03)  # m = 3: T = 1, the 4th largest
    assert result.iou[0, 0] == pytest.approx(0.04)
    assert not result.is_detector[0]
    assert result.detector_counts() == {"c:all": 0}


# ------------------------------------------------------------------------------ concept labels
SPEC = {"kind": "synthetic_shapes", "n_train": 0, "n_test": 12, "size": 32, "classes": 4}


def test_shapes_carry_consistent_concept_labels():
    evaluation, _, _ = prepare_dataset("shapes", SPEC, 0)
    concepts = evaluation.concepts
    assert concepts is not None and concepts.category_order == ["region", "shape", "colour", "texture"]
    masks = concepts.masks()
    names = concepts.concepts
    obj, background = masks[:, names.index("region:object")], masks[:, names.index("region:background")]
    assert np.array_equal(obj, evaluation.masks) and np.array_equal(background, ~evaluation.masks)
    for i, label in enumerate(evaluation.labels):
        shape = ["circle", "square", "triangle", "star"][label]
        assert np.array_equal(masks[i, names.index(f"shape:{shape}")], evaluation.masks[i])
    colour = [k for k, n in enumerate(names) if n.startswith("colour:")]
    texture = [k for k, n in enumerate(names) if n.startswith("texture:")]
    assert (masks[:, colour].sum(axis=1) == 1).all()  # every pixel has exactly one colour
    assert (masks[:, texture].sum(axis=1) == background).all()  # one texture, on the background
    # every background texture of an image is the same one
    assert ((masks[:, texture].reshape(12, len(texture), -1).any(axis=2)).sum(axis=1) == 1).all()


def test_concepts_of_an_eval_range_and_the_store_round_trip(tmp_path):
    evaluation, _, _ = prepare_dataset("shapes", SPEC, 0)
    part = prepare_eval_range("shapes", SPEC, 0, 4, 10)
    assert np.array_equal(part.concepts.labels, evaluation.concepts.labels[4:10])
    write_sample_store(tmp_path / "s.zarr", evaluation, None, {"dataset": "shapes"})
    back = read_samples(tmp_path / "s.zarr", "eval", 4, 10)
    assert back.concepts.concepts == evaluation.concepts.concepts
    assert np.array_equal(back.concepts.labels, part.concepts.labels)
    assert back.fingerprint() == part.fingerprint()
    changed = ConceptLabels(part.concepts.labels.copy(), part.concepts.names, part.concepts.categories, part.concepts.category_order)
    changed.labels[0, 0, 0, 0] = 0
    from dataclasses import replace

    assert replace(part, concepts=changed).fingerprint() != part.fingerprint()


def test_concept_labels_refuse_bad_shapes():
    with pytest.raises(ValueError, match="categories"):
        ConceptLabels(np.zeros((2, 3, 4, 4)), ["a"], ["x"], ["x"])
    with pytest.raises(ValueError, match="exceeds the vocabulary"):
        ConceptLabels(np.full((2, 1, 4, 4), 2), ["a"], ["x"], ["x"])


def test_label_planes_give_the_dense_masks_sums():
    """`add_labels` (one index per pixel and plane) equals `add` (one mask per concept), also
    where two planes repeat a concept at a pixel."""
    evaluation, _, _ = prepare_dataset("shapes", SPEC, 0)
    labels = evaluation.concepts.labels.astype(np.int64)
    labels = np.concatenate([labels, labels[:, 1:2]], axis=1)  # the shape plane twice
    concepts = ConceptLabels(labels, evaluation.concepts.names, evaluation.concepts.categories,
                             [*evaluation.concepts.category_order, "shape"])
    activations = torch.rand(12, 5, 4, 4, generator=torch.Generator().manual_seed(2))
    thresholds = unit_thresholds(activations, 0.2)
    dense, planes = IoUAccumulator(thresholds, len(concepts.names)), IoUAccumulator(thresholds, len(concepts.names))
    for rows in (slice(0, 5), slice(5, 12)):
        dense.add(activations[rows], torch.from_numpy(concepts.masks(rows)))
        planes.add_labels(activations[rows], torch.from_numpy(concepts.labels[rows].astype(np.int64)))
    torch.testing.assert_close(planes.intersection, dense.intersection)
    torch.testing.assert_close(planes.union, dense.union)
    torch.testing.assert_close(planes.images_with, dense.images_with)


def test_dissecting_a_model_layer_names_the_unit_that_copies_a_concept():
    """A network whose first channel is the object mask itself (the images' red channel, where a
    constructed dataset paints objects red on black) is labelled region:object by the job."""
    from attrflow.dissection.job import dissect_model_layer, dissection_table
    from attrflow.models import WrappedModel

    evaluation, _, _ = prepare_dataset("shapes", SPEC, 0)
    images = np.zeros_like(evaluation.images)
    images[:, 0] = evaluation.masks
    images[:, 1] = np.random.default_rng(0).uniform(size=evaluation.masks.shape)
    conv = torch.nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0  # unit 0: the red channel, i.e. the object mask
        conv.weight[1, 1] = 1.0  # unit 1: noise
    net = torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = WrappedModel(net, num_classes=2, mean=[0.0] * 3, std=[1.0] * 3, name="copy").eval()
    object_share = evaluation.masks.mean()  # T at the object's share of pixels: the mask exactly
    concepts = evaluation.concepts
    result, module = dissect_model_layer(
        model, images, concepts.labels, concepts.concepts, concepts.categories, "0",
        quantile=object_share * 0.999, iou_threshold=0.04, batch=5,
    )
    assert module == "0"
    assert result.unit_labels()[0] == "region:object"
    assert result.iou[0, result.concepts.index("region:object")] == pytest.approx(1.0)
    table = dissection_table(result, dataset="d", model="copy", layer="0", module=module, quantile=0.1)
    detector_rows = table.to_pandas().query("detector")
    assert "region:object" in set(detector_rows["concept"])
    assert table.num_rows == 2 * len(result.concepts)


def test_the_embedded_default_selects_the_new_entries_at_a_bounded_pass_count():
    """`make run` selects semantic attribution, the pathway diagnostics and dissection; their model
    passes are counted (not timed): per-unit IG steps × images, NeuronIntGrad steps × layers ×
    images for the Jaccard reference, two passes per test image and dissected layer."""
    from pathlib import Path

    from attrflow.config import load_config
    from attrflow.plan import Plan

    config = load_config(Path(__file__).resolve().parents[2] / "config.yaml")
    plan = Plan(config)
    run = config["run"]
    semantic = [config["methods"][m] for m in run["methods"] if config["methods"][m]["fn"] == "semantic_attribution"]
    assert semantic and {"pathway_dead_share", "pathway_jaccard"} <= {config["metrics"][m]["fn"] for m in run["metrics"]}
    jobs = plan.dissection_jobs()
    assert jobs and {layer for _, _, layer in jobs} >= {e.get("layer", "default") for e in semantic}
    passes = sum(e["steps"] * e["samples"] * len(e["models"]) for e in semantic)
    jaccard = config["metrics"]["pathway_jaccard"]
    pathway = config["methods"]["pathway_grad"]
    passes += (1 + jaccard["steps"] * len(pathway["layers"])) * jaccard["samples"]
    passes += 2 * plan.eval_count("shapes") * len(jobs)
    assert passes <= 1000, passes  # the small CNN: ~1 ms per image and pass on one core


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dissection_on_a_gpu_matches_the_cpu():
    gen = torch.Generator().manual_seed(3)
    activations = torch.rand(6, 4, 5, 5, generator=gen)
    labels = torch.randint(0, 4, (6, 2, 20, 20), generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        acc = ThresholdAccumulator(4, 6 * 25, 0.1)
        acc.add(activations.to(device))
        iou = IoUAccumulator(acc.thresholds(), 3, device=device)
        iou.add_labels(activations.to(device), labels.to(device))
        results.append(iou.iou())
    torch.testing.assert_close(results[0], results[1])

"""The Broden reader (Bau et al., 2017) on a constructed miniature of its layout."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from attrflow.data.adapters import count_eval_samples, prepare_dataset, prepare_eval_range
from attrflow.data.broden import BrodenError, load_broden
from attrflow.data.sources import source_files

LABELS = [  # number, name, category (with Broden's counts)
    (1, "red", "color(3)"),
    (2, "dog", "object(2);part(1)"),
    (3, "leg", "part(5)"),
    (4, "street", "scene(1)"),
]


def _label_png(path, values: np.ndarray) -> None:
    rgb = np.zeros((*values.shape, 3), dtype=np.uint8)
    rgb[..., 0] = values % 256
    rgb[..., 1] = values // 256
    Image.fromarray(rgb).save(path)


def make_broden(root, rows: int = 3):
    (root / "images").mkdir(parents=True)
    with open(root / "label.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for number, name, category in LABELS:
            writer.writerow([number, name, category, 1, 1.0, ""])
    index = [["image", "split", "ih", "iw", "sh", "sw", "color", "object", "part", "material", "scene", "texture"]]
    for i in range(rows):
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / "images" / f"im{i}.jpg")
        color = np.zeros((4, 4), dtype=np.int64)
        color[:2, :2] = 1  # red on the top-left quarter (at half resolution)
        _label_png(root / "images" / f"im{i}_color.png", color)
        dog = np.zeros((4, 4), dtype=np.int64)
        dog[2:, :] = 2
        _label_png(root / "images" / f"im{i}_dog.png", dog)
        leg = np.zeros((4, 4), dtype=np.int64)
        leg[3, :2] = 3
        _label_png(root / "images" / f"im{i}_leg.png", leg)
        objects = f"im{i}_dog.png" + (f";im{i}_dog.png" if i == 0 else "")  # row 0: two object planes
        index.append([f"im{i}.jpg", "val" if i else "train", 8, 8, 4, 4, f"im{i}_color.png", objects,
                      f"im{i}_leg.png", "", "4", ""])
    with open(root / "index.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(index)
    return root


def test_reads_images_and_label_planes(tmp_path):
    root = make_broden(tmp_path / "broden")
    samples, classes = load_broden(root)
    assert classes == ["unlabelled"] and samples.images.shape == (3, 3, 8, 8)
    concepts = samples.concepts
    assert concepts.category_order == ["color", "object", "object", "part", "scene"]
    assert concepts.concepts == ["color:red", "object:dog", "part:leg", "scene:street"]
    masks = concepts.masks()
    expected_red = np.zeros((8, 8), dtype=bool)
    expected_red[:4, :4] = True  # the 4×4 label upsampled to 8×8, nearest neighbour
    assert np.array_equal(masks[1, 0], expected_red)
    assert masks[:, 1, 4:].all() and not masks[:, 1, :4].any()  # dog: bottom half
    assert masks[:, 3].all()  # a whole-image scene label
    assert masks[0, 2].sum() == 2 * 4 and masks[0, 2, 6:, :4].all()  # leg at row 3 → rows 6–7
    # the split filter and counts
    assert count_broden_rows(root, "val") == 2
    val, _ = load_broden(root, split="val")
    assert val.ids == ["im1.jpg", "im2.jpg"]


def count_broden_rows(root, split):
    return count_eval_samples({"kind": "broden", "root": str(root), "split": split})


def test_dataset_entry_and_eval_range(tmp_path):
    root = make_broden(tmp_path / "broden")
    spec = {"kind": "broden", "root": str(root), "categories": ["color", "object"]}
    evaluation, train, attrs = prepare_dataset("broden", spec, 0)
    assert train is None and attrs["class_names"] == ["unlabelled"]
    assert evaluation.concepts.category_order == ["color", "object", "object"]
    part = prepare_eval_range("broden", spec, 0, 1, 3)
    assert np.array_equal(part.concepts.labels, evaluation.concepts.labels[1:3])
    _, files = source_files(spec, 1, 3)
    assert root / "images" / "im1_dog.png" in files and root / "index.csv" in files


def test_refusals(tmp_path):
    with pytest.raises(BrodenError, match="index.csv"):
        load_broden(tmp_path)
    root = make_broden(tmp_path / "broden")
    with pytest.raises(BrodenError, match="unknown Broden categories"):
        load_broden(root, categories=["smell"])
    (root / "images" / "im1.jpg").unlink()
    with pytest.raises(BrodenError, match="im1.jpg"):
        load_broden(root)


def test_config_dissects_broden_without_selecting_it(tmp_path):
    from attrflow.config import ConfigError, load_config, validate_config
    from attrflow.plan import Plan

    root = make_broden(tmp_path / "broden")
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "config.yaml")
    config["datasets"]["broden"] = {"kind": "broden", "root": str(root)}
    config["dissection"] = {"layers": ["stage4"], "datasets": ["broden"], "models": ["shapes_cnn"]}
    checked = validate_config(config)
    assert Plan(checked).dissection_jobs() == [("broden", "shapes_cnn", "stage4")]
    config["dissection"]["datasets"] = ["nope"]
    with pytest.raises(ConfigError, match=r"dissection\.datasets\[0\]"):
        validate_config(config)
    config["datasets"]["plain"] = {"kind": "cifar", "root": str(root)}
    config["dissection"]["datasets"] = ["plain"]
    with pytest.raises(ConfigError, match="no per-pixel concept labels"):
        validate_config(config)

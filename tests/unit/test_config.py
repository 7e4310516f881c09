"""The config checks: every bad value fails before any job, naming its key path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from attrflow.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[2]
N_METHODS = len(yaml.safe_load((REPO / "config.yaml").read_text())["run"]["methods"])


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture
def small(config) -> dict:
    """config.yaml's catalogues with a small selection, for tests that change the selection."""
    config["run"] = {"datasets": ["shapes"], "models": ["shapes_cnn"], "methods": ["gradient", "ig_black"], "metrics": ["deletion"]}
    return config


def test_default_config_is_valid_and_gets_defaults(config):
    checked = validate_config(config, workdir=REPO)
    assert checked["seed"] == 0
    assert checked["datasets"]["shapes"]["kind"] == "synthetic_shapes"
    # defaults of the registered function are filled in, so jobs see the complete setting
    assert checked["metrics"]["deletion"]["output"] == "prob"
    assert checked["methods"]["x_gradient"]["keep_channels"] is False
    assert config == yaml.safe_load((REPO / "config.yaml").read_text()), "input must not be mutated"


@pytest.mark.parametrize(
    ("mutate", "key_path", "words"),
    [
        (lambda c: c["run"]["methods"].append("no_such_method"), f"run.methods[{N_METHODS}]", "not an entry"),
        (lambda c: c["methods"]["ig_black"].update(steps=-3), "methods.ig_black.steps", "minimum"),
        (lambda c: c["methods"]["ig_black"].update(stpes=3), "methods.ig_black", "stpes"),
        (lambda c: c["methods"]["ig_black"].update(fn="integrated_gradientz"), "methods.ig_black.fn", "unknown function"),
        (lambda c: c["metrics"]["deletion"].update(fill="purple"), "metrics.deletion.fill", "purple"),
        (lambda c: c.update(shard_size=0), "shard_size", "minimum"),
        (lambda c: c.update(sahrd_size=3), "", "sahrd_size"),
        (lambda c: c["datasets"]["shapes"].update(size="big"), "datasets.shapes.size", "big"),
        (lambda c: c["models"]["shapes_cnn"].update(dataset="nope"), "models.shapes_cnn.dataset", "nope"),
        (lambda c: c.update(device="tpu"), "device", "tpu"),
    ],
)
def test_bad_values_name_their_key(config, mutate, key_path, words):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == key_path
    assert words in str(err.value)
    assert f"'{key_path}'" in str(err.value) or not key_path


def test_missing_dataset_path_names_the_key(small, tmp_path):
    bad = copy.deepcopy(small)
    bad["datasets"]["folder"] = {"kind": "image_folder", "root": str(tmp_path / "missing")}
    bad["run"]["datasets"] = ["folder"]
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=tmp_path)
    assert err.value.key_path == "datasets.folder.root"
    assert "does not exist" in str(err.value)


def test_unselected_entries_may_point_to_absent_files(config, tmp_path):
    fine = copy.deepcopy(config)
    fine["datasets"]["folder"] = {"kind": "image_folder", "root": str(tmp_path / "missing")}
    validate_config(fine, workdir=tmp_path)


def test_missing_checkpoint_names_the_key(small, tmp_path):
    bad = copy.deepcopy(small)
    bad["models"]["r18"] = {"kind": "timm", "name": "resnet18", "checkpoint": "nope.safetensors"}
    bad["run"]["models"] = ["r18"]
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=tmp_path)
    assert err.value.key_path == "models.r18.checkpoint"


def test_metric_needing_masks_is_refused_on_a_dataset_without_them(config, tmp_path):
    bad = copy.deepcopy(config)
    (tmp_path / "val").mkdir()
    bad["datasets"]["folder"] = {"kind": "image_folder", "root": str(tmp_path / "val")}
    bad["metrics"]["pg"] = {"fn": "pointing_game"}
    bad["run"]["datasets"] = ["folder"]
    bad["run"]["metrics"] = ["deletion", "pg"]
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=tmp_path)
    assert err.value.key_path == "run.metrics[1]"
    assert "masks" in str(err.value) and "'folder'" in str(err.value)
    bad["run"]["datasets"] = ["shapes"]
    validate_config(bad, workdir=tmp_path)


def test_imagenet_config_is_valid_once_its_folders_exist(tmp_path):
    config = yaml.safe_load((REPO / "config" / "imagenet.yaml").read_text())
    from PIL import Image

    for key in ("root", "train_root"):
        (tmp_path / key / "n01440764").mkdir(parents=True)  # ImageNet's class 0, a WordNet-id folder
        Image.new("RGB", (8, 8)).save(tmp_path / key / "n01440764" / "a.JPEG")
        config["datasets"]["imagenet_val"][key] = str(tmp_path / key)
    config["datasets"]["imagenet_val"]["n"] = 1  # n may not exceed the folder's images
    (tmp_path / "broden").mkdir()  # Network Dissection's Broden folder
    config["datasets"]["broden"]["root"] = str(tmp_path / "broden")
    checked = validate_config(config, workdir=tmp_path)
    assert checked["methods"]["ig_black"]["steps"] == 128

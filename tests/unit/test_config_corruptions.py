"""Config checks and planning for `corrupted` datasets: bad entries fail naming their key; the
planner hands each job the resolved base spec; models keep training on their clean dataset."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from attrflow.config import ConfigError, validate_config
from attrflow.plan import Plan

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config() -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    # a small selection: the tests below add the entries they are about
    config["run"] = {"datasets": ["shapes"], "models": ["shapes_cnn"], "methods": ["gradient", "ig_black"], "metrics": ["deletion"]}
    config["datasets"]["shapes_blur3"] = {"kind": "corrupted", "of": "shapes", "corruption": "gaussian_blur", "severity": 3}
    config["run"]["datasets"] = ["shapes", "shapes_blur3"]
    return config


def test_a_corrupted_dataset_with_its_base_is_valid(config):
    checked = validate_config(config, workdir=REPO)
    assert checked["datasets"]["shapes_blur3"] == {
        "kind": "corrupted", "of": "shapes", "corruption": "gaussian_blur", "severity": 3, "train": "clean"
    }


@pytest.mark.parametrize(
    ("change", "key_path", "words"),
    [
        ({"corruption": "fog"}, "datasets.shapes_blur3.corruption", "'fog' is not one of"),
        ({"corruption": "Brightness"}, "datasets.shapes_blur3.corruption", "Brightness"),
        ({"severity": 0}, "datasets.shapes_blur3.severity", "minimum"),
        ({"severity": 6}, "datasets.shapes_blur3.severity", "maximum"),
        ({"severity": "3"}, "datasets.shapes_blur3.severity", "'3'"),
        ({"severity": 2.5}, "datasets.shapes_blur3.severity", "2.5"),
        ({"of": "imagenet"}, "datasets.shapes_blur3.of", "'imagenet' is not an entry of 'datasets'"),
        ({"size": 32}, "datasets.shapes_blur3", "size"),
        ({"train": "dirty"}, "datasets.shapes_blur3.train", "dirty"),
    ],
)
def test_bad_corrupted_entries_name_their_key(config, change, key_path, words):
    bad = copy.deepcopy(config)
    bad["datasets"]["shapes_blur3"].update(change)
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == key_path
    assert words in str(err.value)


@pytest.mark.parametrize("missing", ["of", "corruption", "severity"])
def test_missing_required_option_is_named(config, missing):
    bad = copy.deepcopy(config)
    del bad["datasets"]["shapes_blur3"][missing]
    with pytest.raises(ConfigError, match=f"'{missing}' is a required property") as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == "datasets.shapes_blur3"


def test_a_corrupted_base_is_refused_even_when_unselected(config):
    bad = copy.deepcopy(config)
    bad["datasets"]["twice"] = {"kind": "corrupted", "of": "shapes_blur3", "corruption": "brightness", "severity": 1}
    with pytest.raises(ConfigError, match="itself corrupted") as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == "datasets.twice.of"


def test_saturation_alias_and_base_capabilities_are_accepted(config):
    ok = copy.deepcopy(config)
    ok["datasets"]["shapes_sat5"] = {"kind": "corrupted", "of": "shapes", "corruption": "saturation", "severity": 5}
    ok["run"]["datasets"].append("shapes_sat5")
    ok["run"]["metrics"].append("pointing_game")  # needs masks: the corrupted variant keeps the base's
    ok["run"]["methods"].append("eg")  # needs a train split: the variant has the base's, corrupted
    validate_config(ok, workdir=REPO)


def test_a_variant_without_train_split_refuses_reference_methods(config):
    bad = copy.deepcopy(config)
    bad["datasets"]["shapes_blur3"]["train"] = "none"
    bad["run"]["methods"].append("eg")
    with pytest.raises(ConfigError, match="train split") as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == f"run.methods[{len(bad['run']['methods']) - 1}]"


def test_a_corrupted_image_folder_checks_its_base_folder(config, tmp_path):
    bad = copy.deepcopy(config)
    bad["datasets"]["folder"] = {"kind": "image_folder", "root": str(tmp_path / "missing")}
    bad["datasets"]["folder_noise1"] = {"kind": "corrupted", "of": "folder", "corruption": "shot_noise", "severity": 1}
    bad["run"]["datasets"] = ["folder_noise1"]
    with pytest.raises(ConfigError) as err:
        validate_config(bad, workdir=REPO)
    assert err.value.key_path == "datasets.folder.root"


def test_plan_resolves_the_base_spec_and_pairs_probes(config):
    config["datasets"]["shapes_noise2"] = {"kind": "corrupted", "of": "shapes", "corruption": "gaussian_noise", "severity": 2, "seed": 5}
    config["datasets"]["other"] = {"kind": "synthetic_shapes", "n_test": 8}
    config["datasets"]["other_sat1"] = {"kind": "corrupted", "of": "other", "corruption": "saturation", "severity": 1}
    config["run"]["datasets"] = ["shapes", "shapes_blur3", "shapes_noise2", "other_sat1"]
    plan = Plan(validate_config(config, workdir=REPO))
    base = {**config["datasets"]["shapes"], "seed": 0}
    assert plan.dataset_spec("shapes_blur3") == {
        "kind": "corrupted", "of": base, "corruption": "gaussian_blur", "severity": 3, "train": "clean", "seed": 0
    }
    assert plan.dataset_spec("shapes_noise2")["seed"] == 5
    # shard jobs do not depend on the sample count, at either level
    assert "n_test" not in plan.shard_dataset_spec("shapes_blur3")["of"]
    assert plan.eval_count("shapes_blur3") == plan.eval_count("shapes") == base["n_test"]
    # probes pair a variant with its base only when both are selected; names are canonical
    assert plan.corrupted_datasets() == {
        "shapes_blur3": {"of": "shapes", "corruption": "gaussian_blur", "severity": 3},
        "shapes_noise2": {"of": "shapes", "corruption": "gaussian_noise", "severity": 2},
    }
    # models keep training on their (clean) dataset; the variants add no training store
    assert {plan.model_dataset(m) for m in config["run"]["models"]} == {"shapes"}
    assert plan.sample_stores("r") == [f"r/data/{d}/samples.zarr" for d in ("other_sat1", "shapes", "shapes_blur3", "shapes_noise2")]


def test_plan_without_pairs_requests_no_probe_report(config):
    config["run"]["datasets"] = ["shapes_blur3"]
    assert Plan(validate_config(config, workdir=REPO)).corrupted_datasets() == {}


def test_planning_a_corrupted_dataset_imports_neither_torch_nor_numpy():
    import os
    import subprocess
    import sys

    code = (
        "import sys; import attrflow.data.adapters as a; "
        "base = {'kind': 'synthetic_shapes', 'n_test': 7}; "
        "n = a.count_eval_samples({'kind': 'corrupted', 'of': base, 'corruption': 'defocus_blur', 'severity': 2}); "
        "print(n, sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "7 []"

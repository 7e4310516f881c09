"""What the plan derives from a config: shards, sample prefixes of costly entries, model pairs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from attrflow.config import ConfigError, validate_config
from attrflow.plan import Plan

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = yaml.safe_load((REPO / "config" / "test.yaml").read_text())


def plan_of(mutate=lambda c: None) -> Plan:
    config = copy.deepcopy(TEST_CONFIG)
    mutate(config)
    return Plan(validate_config(config, workdir=REPO))


def test_a_limited_method_explains_a_prefix_of_the_shards():
    def limit(c):
        c["shard_size"] = 5  # 12 samples: shards [0, 5) [5, 10) [10, 12)
        c["methods"]["ig"]["samples"] = 7

    plan = plan_of(limit)
    assert plan.shards("tiny") == [0, 1, 2]
    assert plan.shards("tiny", "gradient") == [0, 1, 2]
    assert plan.shards("tiny", "ig") == [0, 1]
    assert plan.shard_range("tiny", 1, "ig") == [5, 7]
    assert plan.shard_range("tiny", 1, "gradient") == [5, 10]
    stores = dict(plan.attribution_stores_with_ranges())
    assert stores["results/attributions/tiny/cnn/ig/shard-1.zarr"] == [5, 7]
    assert "results/attributions/tiny/cnn/ig/shard-2.zarr" not in stores


def test_shards_per_job_groups_evaluation_shards_into_fewer_jobs():
    def grouped(c):
        c["shard_size"] = 5  # 12 samples: evaluation shards [0, 5) [5, 10) [10, 12)
        c["methods"]["gradient"]["shards_per_job"] = 2
        c["methods"]["ig"].update(shards_per_job=4, samples=7)

    plan = plan_of(grouped)
    assert plan.eval_shards("tiny") == [0, 1, 2]
    assert plan.shards("tiny", "gradient") == [0, 1]
    assert plan.shard_range("tiny", 0, "gradient") == [0, 10]
    assert plan.shard_range("tiny", 1, "gradient") == [10, 12]
    assert plan.job_eval_shards("tiny", 0, "gradient") == [0, 1]
    assert plan.job_eval_shards("tiny", 1, "gradient") == [2]
    assert plan.shards("tiny", "ig") == [0]  # 7 samples in one job, from two evaluation shards
    assert plan.job_eval_shards("tiny", 0, "ig") == [0, 1]
    assert plan.shards("tiny", "xg") == [0, 1, 2]  # other entries keep a job per shard
    assert plan.job_eval_shards("tiny", 1, "xg") == [1]
    # Grouping is not what the maps are: it stays out of the entry jobs key their results on.
    assert "shards_per_job" not in plan.method_entry("gradient")
    assert plan.method_fingerprint("gradient") == plan_of().method_fingerprint("gradient")


def test_shards_per_job_below_one_is_refused_with_its_key():
    with pytest.raises(ConfigError) as err:
        plan_of(lambda c: c["methods"]["ig"].update(shards_per_job=0))
    assert "methods.ig.shards_per_job" in str(err.value)


def test_a_limit_above_the_dataset_size_changes_nothing():
    plan = plan_of(lambda c: c["methods"]["ig"].update(samples=1000))
    assert plan.eval_count("tiny", "ig") == plan.eval_count("tiny") == 12


def test_a_method_restricted_to_models_gets_jobs_on_those_only():
    plan = plan_of(lambda c: c["methods"]["xg"].update(models=["xcnn"]))
    assert ("xcnn", "xg") in plan.pairs() and ("cnn", "xg") not in plan.pairs()
    assert ("cnn", "gradient") in plan.pairs()
    assert not any("/cnn/xg/" in path for path in plan.attribution_stores())
    assert not any("/model=cnn/method=xg/" in path for path in plan.score_files())
    assert any("/model=xcnn/method=xg/" in path for path in plan.score_files())


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda c: c["methods"]["xg"].update(models=["resnet"]), "methods.xg.models[0]"),
        (lambda c: c["methods"]["xg"].update(models=[]), "methods.xg.models"),
        (lambda c: c["methods"]["ig"].update(samples=0), "methods.ig.samples"),
        (lambda c: c["metrics"]["mufidelity"].update(samples=-1), "metrics.mufidelity.samples"),
    ],
)
def test_bad_limits_name_their_key(mutate, key_path):
    with pytest.raises(ConfigError) as err:
        plan_of(mutate)
    assert err.value.key_path == key_path


def test_a_method_restricted_to_datasets_runs_on_those_only():
    def two_datasets(c):
        c["datasets"]["tiny2"] = dict(c["datasets"]["tiny"], seed=5)
        c["run"]["datasets"].append("tiny2")
        c["methods"]["ig"]["datasets"] = ["tiny2"]

    plan = plan_of(two_datasets)
    assert ("tiny2", "cnn", "ig") in plan.triples() and ("tiny", "cnn", "ig") not in plan.triples()
    assert ("tiny", "cnn", "gradient") in plan.triples()
    assert not any("dataset=tiny/model=cnn/method=ig/" in path for path in plan.score_files())


def test_selection_keys_do_not_reach_job_params():
    """Moving a method onto another model, or capping its samples, must not recompute its maps."""
    plan = plan_of(lambda c: c["methods"]["ig"].update(samples=5, models=["cnn"]))
    assert plan.method_entry("ig") == plan_of().method_entry("ig") == {
        "fn": "integrated_gradients", **{k: v for k, v in plan.config["methods"]["ig"].items() if k not in ("fn", "samples", "models")}
    }


def test_axiom_models_limit_which_models_get_axiom_jobs():
    def axioms(c):
        c["run"]["axioms"] = ["null_feature"]
        c["axioms"] = {"null_feature": {"samples": 2}}
        c["run"]["axiom_models"] = ["cnn"]

    plan = plan_of(axioms)
    assert plan.axiom_models() == ["cnn"]
    assert {m for m, _ in plan.axiom_pairs()} == {"cnn"}
    assert plan.axiom_score_files() == ["results/axioms/cnn/scores.parquet"]
    with pytest.raises(ConfigError) as err:
        plan_of(lambda c: (axioms(c), c["run"].update(axiom_models=["resnet"])))
    assert err.value.key_path == "run.axiom_models[0]"


def test_a_metric_restricted_to_methods_scores_only_those():
    plan = plan_of(lambda c: c["metrics"]["completeness"].update(methods=["ig"]))
    assert plan.scored_samples("tiny", "ig", "completeness") == 10  # ig explains 10 of 12
    assert plan.scored_samples("tiny", "gradient", "completeness") == 0
    assert "completeness" in plan.metric_entries("ig") and "completeness" not in plan.metric_entries("gradient")
    assert "methods" not in plan.metric_entries("ig")["completeness"]  # other methods' lists do not re-run ig
    with pytest.raises(ConfigError) as err:
        plan_of(lambda c: c["metrics"]["completeness"].update(methods=["nope"]))
    assert err.value.key_path == "metrics.completeness.methods[0]"

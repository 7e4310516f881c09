"""Metrics that read another method entry's maps (the exact Shapley values of the Shapley
agreement metrics): config checks, the score jobs' inputs and params."""

from __future__ import annotations

import pytest

from test_plan import plan_of

from attrflow.config import ConfigError


def with_shapley(c, samples=3, reference="shap"):
    c["shard_size"] = 5  # 12 samples: shards [0, 5) [5, 10) [10, 12)
    c["methods"]["shap"] = {"fn": "exact_shapley", "grid": 2, "samples": samples}
    c["metrics"]["agree"] = {"fn": "shapley_spearman", "reference": reference}
    c["run"]["metrics"].append("agree")


def test_score_jobs_read_the_named_entrys_shards_where_it_has_them():
    plan = plan_of(with_shapley)  # shap is not selected in run.methods: it is built as an input
    assert plan.metric_peers("gradient") == ["shap"]
    assert plan.peer_stores("tiny", "cnn", "gradient", 0) == {
        "shap": ["results/attributions/tiny/cnn/shap/shard-0.zarr"]
    }
    assert plan.peer_stores("tiny", "cnn", "gradient", 1) == {}  # shap covers the first 3 only
    setting = plan.score_setting("tiny", "cnn", "gradient", 0)
    assert setting["peers"]["shap"]["entry"]["grid"] == 2
    assert setting["peers"]["shap"]["code"] == plan.method_fingerprint("shap")


def test_a_changed_reference_entry_changes_the_params_of_the_score_jobs_that_read_it():
    before = plan_of(with_shapley).score_setting("tiny", "cnn", "gradient", 0)

    def finer(c):
        with_shapley(c)
        c["methods"]["shap"]["grid"] = 3

    after = plan_of(finer).score_setting("tiny", "cnn", "gradient", 0)
    assert before["peers"] != after["peers"]


def test_score_jobs_without_such_metrics_keep_their_params():
    plain = plan_of().score_setting("tiny", "cnn", "gradient", 0)
    assert "peers" not in plain

    def restricted(c):
        with_shapley(c)
        c["metrics"]["agree"]["methods"] = ["ig"]

    plan = plan_of(restricted)
    assert "peers" not in plan.score_setting("tiny", "cnn", "gradient", 0)
    assert plan.peer_stores("tiny", "cnn", "ig", 0)


def test_a_reference_that_is_not_a_method_entry_is_refused_with_its_key():
    with pytest.raises(ConfigError) as err:
        plan_of(lambda c: with_shapley(c, reference="nothing"))
    assert "metrics.agree.reference" in str(err.value)


def test_grids_above_the_coalition_limit_are_refused_before_any_job():
    def too_fine(c):
        with_shapley(c)
        c["methods"]["shap"]["grid"] = 5

    with pytest.raises(ConfigError) as err:
        plan_of(too_fine)
    assert "methods.shap.grid" in str(err.value)


def test_only_score_jobs_of_shards_the_reference_covers_carry_it():
    plan = plan_of(with_shapley)
    assert "peers" in plan.score_setting("tiny", "cnn", "gradient", 0)
    assert "peers" not in plan.score_setting("tiny", "cnn", "gradient", 1)


def test_jobs_grouping_shards_differently_read_every_peer_store_that_holds_their_samples():
    def grouped(c):
        with_shapley(c, samples=12)  # shap: jobs [0, 5) [5, 10) [10, 12)
        c["methods"]["gradient"]["shards_per_job"] = 2  # gradient: jobs [0, 10) [10, 12)

    plan = plan_of(grouped)
    stores = "results/attributions/tiny/cnn/shap/shard-{}.zarr".format
    assert plan.peer_stores("tiny", "cnn", "gradient", 0) == {"shap": [stores(0), stores(1)]}
    assert plan.peer_stores("tiny", "cnn", "gradient", 1) == {"shap": [stores(2)]}

    def reversed_grouping(c):
        with_shapley(c, samples=12)
        c["methods"]["shap"]["shards_per_job"] = 3  # shap: one job [0, 12)

    plan = plan_of(reversed_grouping)
    assert plan.peer_stores("tiny", "cnn", "gradient", 2) == {"shap": [stores(0)]}

"""A method entry's `shards_per_job` in the real workflow: switching it on re-plans that entry's
jobs (and the scores reading its maps) only, and every score comes out as before, bit for bit."""

from __future__ import annotations

import copy
import subprocess
import sys

import duckdb

import pandas as pd
import pytest

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

KEYS = ["model", "method", "metric", "sample_id"]


def one_job_per_shard() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["shard_size"] = 4  # 12 samples: evaluation shards [0, 4) [4, 8) [8, 12)
    config["run"].update(models=["cnn"], methods=["random", "gradient"], metrics=["deletion", "mufidelity", "agree"])
    config["methods"]["shap"] = {"fn": "exact_shapley", "grid": 2}  # read by `agree` only
    config["metrics"]["agree"] = {"fn": "shapley_spearman", "reference": "shap"}
    config["metrics"]["mufidelity"].pop("samples")
    return config


def grouped() -> dict:
    config = one_job_per_shard()
    config["methods"]["gradient"]["shards_per_job"] = 2  # jobs [0, 8) [8, 12)
    config["methods"]["shap"]["shards_per_job"] = 3  # one job [0, 12)
    return config


def _scores(wf: Workflow) -> pd.DataFrame:
    scores = pd.read_parquet(wf.workdir / "results" / "reports" / "scores.parquet")
    return scores.sort_values(KEYS).reset_index(drop=True)[[*KEYS, "value", "value_retest", "status", "target"]]


def test_grouping_shards_into_jobs_replans_that_entry_only_and_changes_no_score(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    wf.write_config(one_job_per_shard())
    wf.snakemake()
    before = _scores(wf)
    assert (before.status == "ok").sum() > 0 and len(before) == 2 * 3 * 12

    config = wf.write_config(grouped(), "grouped.yaml")
    jobs = wf.planned(config)
    attributed = sorted((w["method"], w["shard"]) for rule, w in jobs if rule == "attribute")
    assert attributed == [("gradient", "0"), ("gradient", "1"), ("shap", "0")]
    assert not {rule for rule, _ in jobs} & {"prepare_eval_shard", "prepare_model", "prepare_dataset"}

    wf.snakemake(config=config)
    after = _scores(wf)
    pd.testing.assert_frame_equal(after, before)
    proc = wf.snakemake("-n", config=config)
    assert "Nothing to be done" in proc.stdout + proc.stderr

    # gradient's third one-shard file is no longer planned: the partitioned set would count its
    # rows twice until `attrflow.clean --unplanned` removes it.
    stale = wf.workdir / "results" / "scores" / "dataset=tiny" / "model=cnn" / "method=gradient" / "shard-2.parquet"
    assert stale.exists()
    subprocess.run([sys.executable, "-m", "attrflow.clean", "--unplanned", str(config)], cwd=wf.workdir, env=wf.env(), check=True)
    assert not stale.exists()
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{wf.workdir}/results/scores/**/*.parquet')").fetchall()[0][0]
    assert rows == len(after)

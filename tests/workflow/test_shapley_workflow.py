"""Exact Shapley ground truth in the real workflow: the agreement metrics read the stored maps of
a named method entry; changing that entry re-plans its maps and exactly the score jobs that read
them. LeRF/MoRF and the new methods run end to end."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def shapley_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["run"]["models"] = ["cnn"]
    config["run"]["methods"] = ["random", "gradient", "lrp", "kernel_shap"]
    config["run"]["metrics"] = ["agree_rho", "agree_topk", "lerf", "morf"]
    config["methods"].update(
        {
            # not selected: built because the agreement metrics name it, on the first 3 samples
            "shap": {"fn": "exact_shapley", "grid": 2, "samples": 3},
            "lrp": {"fn": "lrp", "composite": "epsilon_plus_flat"},
            "kernel_shap": {"fn": "kernel_shap", "n_segments": 2, "n_samples": 16, "samples": 2},
        }
    )
    config["metrics"].update(
        {
            "agree_rho": {"fn": "shapley_spearman", "reference": "shap"},
            "agree_topk": {"fn": "shapley_topk", "reference": "shap", "top_k": 1},
            "lerf": {"fn": "lerf", "steps": 4, "samples": 4},
            "morf": {"fn": "morf", "steps": 4, "samples": 4},
        }
    )
    return config


@pytest.fixture(scope="module")
def shapley_run(tmp_path_factory) -> Workflow:
    base = tmp_path_factory.mktemp("shapley")
    wf = Workflow(copy_workflow(base / "repo"), base / "work")
    wf.workdir.mkdir()
    wf.write_config(shapley_config())
    wf.snakemake()
    return wf


def test_agreement_rows_exist_where_exact_values_were_computed(shapley_run: Workflow):
    scores = pd.read_parquet(shapley_run.workdir / "results" / "reports" / "scores.parquet")
    agree = scores[scores.metric == "agree_rho"]
    gradient = agree[agree.method == "gradient"].sort_values("sample_id")
    assert (gradient.status == "ok").sum() == 3  # the 3 samples `shap` explains
    assert set(gradient.status) == {"ok", "skipped"}
    assert gradient[gradient.status == "ok"].value.between(-1, 1).all()
    for metric in ("lerf", "morf"):
        rows = scores[(scores.metric == metric) & (scores.method == "lrp")]
        assert len(rows) == 4 and rows.value.notna().all()
    assert not (shapley_run.workdir / "results" / "scores" / "dataset=tiny" / "model=cnn" / "method=shap").exists()


def test_a_changed_reference_replans_its_maps_and_the_scores_that_read_them_only(shapley_run: Workflow):
    proc = shapley_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    finer = shapley_config()
    finer["methods"]["shap"]["grid"] = 3
    jobs = shapley_run.planned(shapley_run.write_config(finer, "finer.yaml"))
    attributed = {(w["method"], w["shard"]) for rule, w in jobs if rule == "attribute"}
    scored = {(w["method"], w["shard"]) for rule, w in jobs if rule == "score"}
    assert attributed == {("shap", "0")}
    # shard 0 of every selected method reads shap's shard 0; shard 1 has no exact values
    assert scored == {(m, "0") for m in ("random", "gradient", "lrp", "kernel_shap")}

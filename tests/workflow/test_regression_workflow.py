"""The regression study (config/regression.yaml) end to end, shrunk to run in a few minutes:
the severity scenes are prepared, a regression CNN is trained, the IBA variants and baselines
explain its score, and the severity correlation, box IoU and score-removal metrics read them."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml

from harness import REPO, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

STUDY = yaml.safe_load((REPO / "config" / "regression.yaml").read_text())


def shrunk(config: dict) -> dict:
    """The study at test size: 96 train and 6 test scenes at 48², one epoch, few optimiser steps."""
    config = copy.deepcopy(config)
    config["device"] = "cpu"
    # the IBA variants, a gradient baseline and the random control; the metrics this task brings
    config["run"]["methods"] = ["random", "gradient", "regression_iba_dv", "inverse_regression_iba", "multi_layer_iba"]
    config["run"]["metrics"] = ["severity_correlation", "box_iou", "deletion_score"]
    config["datasets"]["severity"].update(n_train=96, n_test=6, size=48)
    config["models"]["severity_cnn"].update(epochs=1, width=8)
    config["references"]["feature_stats"] = {"max_train": 96}
    for entry in config["methods"].values():
        if "regression_iba" in entry["fn"] or entry["fn"] == "multi_layer_iba":
            entry.update(steps=2, copies=2)
    config["metrics"]["deletion_score"]["steps"] = 4
    return config


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Workflow:
    base = tmp_path_factory.mktemp("regression")
    wf = Workflow(copy_workflow(base / "repo"), base / "work")
    wf.workdir.mkdir()
    wf.write_config(shrunk(STUDY))
    wf.snakemake(timeout=1800)  # ~20 jobs, each a fresh process
    return wf


def test_the_regression_study_scores_every_method_on_the_severity_maps(regression_run: Workflow):
    results = regression_run.workdir / "results"
    card = yaml.safe_load((results / "models" / "severity_cnn" / "card.json").read_text())
    assert card["task"] == "regression" and card["num_classes"] == 1
    scores = pd.read_parquet(results / "reports" / "scores.parquet")
    run = shrunk(STUDY)["run"]
    assert set(scores.method) == set(run["methods"]) and set(scores.metric) == set(run["metrics"])
    assert (scores.target == 0).all()  # a regression model explains its one output
    pcc = scores[scores.metric == "severity_correlation"]
    assert (pcc.status != "skipped").all() and pcc[pcc.status == "ok"].value.between(-1, 1).all()
    ok = pcc[pcc.status == "ok"]
    assert set(ok.method) >= {"gradient", "regression_iba_dv", "inverse_regression_iba"}
    boxes = scores[scores.metric == "box_iou"]
    assert boxes[boxes.status == "ok"].value.between(0, 1).all() and (boxes.status == "ok").any()
    removal = scores[scores.metric == "deletion_score"]
    assert (removal.status == "ok").all()  # the score itself, never a class probability
    summary = pd.read_parquet(results / "reports" / "summary.parquet")
    assert {"severity_correlation", "box_iou"} <= set(summary.metric)


def test_nothing_to_do_on_a_second_run(regression_run: Workflow):
    proc = regression_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr

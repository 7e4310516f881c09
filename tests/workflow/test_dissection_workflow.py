"""Network Dissection, semantic attribution and the pathway diagnostics end to end on a tiny config."""

from __future__ import annotations

import copy

import pandas as pd
import pytest

from harness import TINY_CONFIG, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def dissection_config() -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["run"].update(models=["cnn"], methods=["gradient", "pg", "sem"], metrics=["deletion", "dead", "jaccard"])
    config["methods"].update(
        pg={"fn": "pathway_grad", "layers": ["stage1", "stage2", "stage3", "stage4"], "sparsity": 0.7},
        sem={"fn": "semantic_attribution", "layer": "stage4", "steps": 4, "top_units": 2, "samples": 4},
    )
    config["metrics"].update(
        deletion={"fn": "deletion", "steps": 4, "methods": ["gradient", "sem"]},
        dead={"fn": "pathway_dead_share", "methods": ["pg"]},
        jaccard={"fn": "pathway_jaccard", "steps": 2, "samples": 4, "methods": ["pg"]},
    )
    config["dissection"] = {"layers": ["stage3"]}
    return config


def test_dissection_tables_counts_report_and_what_a_change_replans(tmp_path):
    wf = Workflow(copy_workflow(tmp_path / "repo"), tmp_path / "work")
    wf.workdir.mkdir()
    config = dissection_config()
    wf.write_config(config)
    wf.snakemake()
    results = wf.workdir / "results"
    for layer in ("stage3", "stage4"):  # the configured layer and the semantic entry's
        table = pd.read_parquet(results / f"dissection/tiny/cnn/{layer}.parquet")
        assert table["unit"].nunique() > 0 and table["best"].groupby(table["unit"]).sum().le(1).all()
        assert {"region:object", "texture:stripes"} <= set(table["concept"])
    counts = pd.read_parquet(results / "reports/dissection_counts.parquet")
    assert set(counts["layer"]) == {"stage3", "stage4"}
    assert "## cnn on tiny" in (results / "reports/dissection.md").read_text()
    scores = pd.read_parquet(results / "reports/scores.parquet")
    dead = scores[scores.metric == "dead"]
    assert len(dead) == 12 and (dead.status == "ok").all() and dead.value.between(0, 1).all()
    jaccard = scores[scores.metric == "jaccard"]
    assert len(jaccard) == 4 and jaccard.value.between(0, 1).all() and jaccard.curve.map(len).eq(4).all()
    assert len(scores[(scores.method == "sem") & (scores.metric == "deletion")]) == 4
    html = (results / "reports/report.html").read_text()
    assert "Network Dissection and semantic attribution" in html and "report-semantic-tiny-cnn-sem.png" in html
    proc = wf.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # a new detector threshold re-dissects and re-reports; no map, score or model is recomputed
    config["dissection"]["iou_threshold"] = 0.1
    changed = wf.write_config(config, "changed.yaml")
    rules = {rule for rule, _ in wf.planned(config=changed)}
    assert rules == {"dissect", "dissection_report", "report"}

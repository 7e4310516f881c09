"""ROAR / DiffROAR end to end on config/roar_tiny.yaml: rows, figure, and what a change re-plans."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import yaml

from harness import REPO, Workflow, copy_workflow

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

ROAR_TINY = yaml.safe_load((REPO / "config" / "roar_tiny.yaml").read_text())


@pytest.fixture(scope="module")
def roar_run(tmp_path_factory) -> Workflow:
    base = tmp_path_factory.mktemp("roar")
    wf = Workflow(copy_workflow(base / "repo"), base / "work")
    wf.workdir.mkdir()
    wf.write_config(ROAR_TINY)
    wf.snakemake()
    return wf


def test_roar_rows_figure_and_table(roar_run: Workflow):
    reports = roar_run.workdir / "results" / "reports"
    rows = pd.read_parquet(reports / "roar.parquet")
    roar = ROAR_TINY["roar"]
    cells = len(roar["methods"]) * len(roar["fractions"]) * roar["repeats"]
    assert (rows.metric == "roar").sum() == cells + roar["repeats"]  # + the no-removal accuracy
    assert (rows.metric == "diffroar").sum() == cells
    assert set(rows.method) == {*roar["methods"], "no_removal"}
    assert (rows.status == "ok").all() and rows.value.between(-1, 1).all()
    assert rows[rows.metric == "roar"].value.between(0, 1).all()
    assert rows.dataset_fingerprint.notna().all() and rows.retrain_fingerprint.notna().all()
    assert (reports / "figures" / "roar-tiny.png").stat().st_size > 1000
    assert "## roar ↓ — tiny, cnn" in (reports / "roar.md").read_text()


def test_nothing_to_do_then_report_settings_replan_only_the_report(roar_run: Workflow):
    proc = roar_run.snakemake("-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    fewer = copy.deepcopy(ROAR_TINY)
    fewer["roar"]["fractions"] = fewer["roar"]["fractions"][:1]
    fewer["roar"]["mem_mb"] = 1234  # a scheduler resource, not a training setting
    jobs = roar_run.planned(roar_run.write_config(fewer, "fewer.yaml"))
    # report.html shows the ROAR figure, so the report is redrawn too; nothing is retrained
    assert {rule for rule, _ in jobs} == {"roar_report", "report"}


def test_changed_recipe_retrains_without_recomputing_maps(roar_run: Workflow):
    changed = copy.deepcopy(ROAR_TINY)
    changed["roar"]["epochs"] = 2
    jobs = roar_run.planned(roar_run.write_config(changed, "epochs.yaml"))
    counts = pd.Series([rule for rule, _ in jobs]).value_counts().to_dict()
    roar = ROAR_TINY["roar"]
    assert counts == {
        "retrain": len(roar["methods"]) * len(roar["fractions"]) * 2 * roar["repeats"],
        "retrain_no_removal": roar["repeats"],
        "roar_report": 1,
        "report": 1,  # report.html shows the ROAR figure
    }
